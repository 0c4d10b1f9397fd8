"""Multi-task transforms, packer and data preprocessor (hand-built results)."""
import copy

import cv2
import numpy as np
import pytest
import torch

import rc_adapter  # noqa: F401  (must precede mmseg.models imports)
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample

from rc_adapter.core.errors import RCConfigError
from rc_adapter.mmseg.models import MTSegDataPreProcessor
from rc_adapter.mmseg.transforms import (MTPackSegInputs, MTPadToSize,
                                         MTRandomFlip, MTResize, flip_normals)

init_default_scope('mmseg')

H, W = 6, 8


def _results(h=H, w=W, seed=0):
    """A results dict as LoadImageFromFile + LoadMTAnnotations leave it."""
    rng = np.random.default_rng(seed)
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[0, 0] = 0  # invalid normal
    depth = rng.uniform(1, 5, size=(h, w)).astype(np.float32)
    depth[1, 1] = 0  # invalid depth
    r = dict(
        img=rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8),
        img_path='x.jpg', ori_shape=(h, w), img_shape=(h, w),
        gt_seg_map=rng.integers(0, 21, size=(h, w)).astype(np.uint8),
        gt_parts_seg=rng.integers(0, 7, size=(h, w)).astype(np.uint8),
        gt_sal_map=rng.integers(0, 2, size=(h, w)).astype(np.uint8),
        gt_edge_map=rng.integers(0, 2, size=(h, w)).astype(np.uint8),
        gt_normal_map=n, gt_depth_map=depth,
        tasks=['semseg', 'human_parts', 'sal', 'edge', 'normals', 'depth'])
    r['seg_fields'] = [k for k in r if k.startswith('gt_')]
    return r


def test_flip_negates_normals_x_and_flips_everything():
    r = _results()
    ref = copy.deepcopy(r)
    out = MTRandomFlip(prob=1.0)(r)
    assert out['flip'] and out['flip_direction'] == 'horizontal'
    np.testing.assert_array_equal(out['img'], ref['img'][:, ::-1])
    for k in ('gt_seg_map', 'gt_parts_seg', 'gt_sal_map', 'gt_edge_map',
              'gt_depth_map'):
        np.testing.assert_array_equal(out[k], ref[k][:, ::-1])
    n0, n1 = ref['gt_normal_map'], out['gt_normal_map']
    np.testing.assert_array_equal(n1[:, :, 0], -n0[:, ::-1, 0])
    np.testing.assert_array_equal(n1[:, :, 1:], n0[:, ::-1, 1:])
    assert np.all(n1[0, -1] == 0)  # invalid stays all-zero
    # flipping twice restores the sample exactly
    back = MTRandomFlip(prob=1.0)(out)
    np.testing.assert_array_equal(back['gt_normal_map'], n0)


def test_flip_vertical_negates_y_and_prob_zero_is_identity():
    r = _results()
    n0 = r['gt_normal_map'].copy()
    out = MTRandomFlip(prob=1.0, direction='vertical')(copy.deepcopy(r))
    np.testing.assert_array_equal(out['gt_normal_map'][..., 1],
                                  -n0[::-1, :, 1])
    np.testing.assert_array_equal(out['gt_normal_map'][..., 0],
                                  n0[::-1, :, 0])
    same = MTRandomFlip(prob=0.0)(copy.deepcopy(r))
    assert same['flip'] is False
    np.testing.assert_array_equal(same['gt_normal_map'], n0)


def test_flip_normals_helper_numpy_and_torch_agree():
    n = np.random.default_rng(1).normal(size=(4, 5, 3)).astype(np.float32)
    a = flip_normals(n, 'horizontal')
    t = flip_normals(torch.from_numpy(n).permute(2, 0, 1)[None],
                     'horizontal', channel_axis=1)
    np.testing.assert_array_equal(a, t[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(a[..., 0], -n[:, ::-1, 0])


def test_resize_labels_nearest_normals_unit_depth_divided():
    r = _results()
    labels_before = {k: set(np.unique(r[k]))
                     for k in ('gt_seg_map', 'gt_parts_seg', 'gt_sal_map')}
    t = TRANSFORMS.build(dict(type='MTResize', scale=(2 * W, 2 * H)))
    ref = copy.deepcopy(r)
    out = t(r)
    assert out['img'].shape[:2] == (2 * H, 2 * W)
    for k in ('gt_seg_map', 'gt_parts_seg', 'gt_sal_map', 'gt_edge_map'):
        assert out[k].shape == (2 * H, 2 * W) and out[k].dtype == np.uint8
        # exact 2x nearest upsampling = pixel replication
        np.testing.assert_array_equal(
            out[k], np.repeat(np.repeat(ref[k], 2, 0), 2, 1))
    for k, vals in labels_before.items():
        assert set(np.unique(out[k])) <= vals
    n = out['gt_normal_map']
    norms = np.linalg.norm(n, axis=-1)
    valid = norms > 0
    np.testing.assert_allclose(norms[valid], 1.0, atol=1e-5)
    assert not valid[0, 0] and valid.mean() > 0.9  # invalid corner kept
    d = out['gt_depth_map']
    assert d.dtype == np.float32 and d[2, 2] == 0 and d[3, 3] == 0
    # paper: depth divided by the scale factor (2); value range halves
    v = d[d > 0]
    assert v.min() >= ref['gt_depth_map'][ref['gt_depth_map'] > 0].min() / 2
    assert v.max() <= ref['gt_depth_map'].max() / 2 + 1e-6


def test_resize_depth_constant_and_keep_mode():
    r = _results()
    r['gt_depth_map'][:] = 3.0
    r['gt_depth_map'][0, :] = 0  # invalid row must not pull values down
    out = MTResize(scale=(W // 2, H // 2), depth_scale_mode='keep')(
        copy.deepcopy(r))
    d = out['gt_depth_map']
    np.testing.assert_allclose(d[d > 0], 3.0, rtol=1e-6)
    out2 = MTResize(scale=(W // 2, H // 2))(copy.deepcopy(r))
    d2 = out2['gt_depth_map']
    np.testing.assert_allclose(d2[d2 > 0], 6.0, rtol=1e-6)  # 3 / 0.5


def test_random_scale_is_registered_and_scales():
    r = _results()
    t = TRANSFORMS.build(dict(type='MTRandomScale', scales=(2.0, )))
    out = t(r)
    assert out['img'].shape[:2] == (2 * H, 2 * W)
    assert out['gt_normal_map'].shape == (2 * H, 2 * W, 3)


def test_pad_to_size_centered_per_field_values():
    r = _results()
    out = MTPadToSize(size=(10, 11))(copy.deepcopy(r))
    top, left = (10 - H) // 2, (11 - W) // 2  # 2, 1
    assert out['center_padding'] == (left, 11 - W - left, top, 10 - H - top)
    assert out['img'].shape == (10, 11, 3)
    np.testing.assert_array_equal(out['img'][0, 0], [103, 116, 123])  # BGR
    np.testing.assert_array_equal(out['img'][top:top + H, left:left + W],
                                  r['img'])
    for k in ('gt_seg_map', 'gt_parts_seg', 'gt_sal_map', 'gt_edge_map'):
        assert out[k][0, 0] == 255 and out[k][-1, -1] == 255
    assert np.all(out['gt_normal_map'][0] == 0)
    assert np.all(out['gt_depth_map'][:, 0] == 0)
    np.testing.assert_array_equal(
        out['gt_normal_map'][top:top + H, left:left + W], r['gt_normal_map'])
    # then mmseg's RandomCrop crops every field with one box
    crop = TRANSFORMS.build(dict(type='RandomCrop', crop_size=(10, 11)))
    c = crop(out)
    assert all(c[k].shape[:2] == (10, 11) for k in r['seg_fields'])


def test_flip_mirrors_center_padding():
    out = MTPadToSize(size=(6, 13))(_results())
    assert out['center_padding'] == (2, 3, 0, 0)
    out = MTRandomFlip(prob=1.0)(out)
    assert out['center_padding'] == (3, 2, 0, 0)


def test_pack_contract():
    r = _results()
    packed = MTPackSegInputs()(r)
    assert packed['inputs'].shape == (3, H, W)
    ds = packed['data_samples']
    assert isinstance(ds, SegDataSample)
    expect = dict(gt_sem_seg=(1, torch.int64), gt_parts_seg=(1, torch.int64),
                  gt_sal_map=(1, torch.int64), gt_edge_map=(1, torch.int64),
                  gt_normal_map=(3, torch.float32),
                  gt_depth_map=(1, torch.float32))
    for field, (c, dtype) in expect.items():
        data = ds.get(field).data
        assert isinstance(ds.get(field), PixelData)
        assert data.shape == (c, H, W) and data.dtype == dtype, field
    np.testing.assert_array_equal(ds.gt_sem_seg.data[0].numpy(),
                                  r['gt_seg_map'])
    np.testing.assert_array_equal(ds.gt_normal_map.data.permute(1, 2,
                                                                0).numpy(),
                                  r['gt_normal_map'])
    assert ds.metainfo['tasks'] == r['tasks']
    assert ds.metainfo['img_path'] == 'x.jpg'
    # only present fields are packed
    r2 = _results()
    del r2['gt_parts_seg'], r2['gt_depth_map']
    ds2 = MTPackSegInputs()(r2)['data_samples']
    assert 'gt_parts_seg' not in ds2 and 'gt_depth_map' not in ds2
    assert 'gt_sal_map' in ds2


def _packed(h, w, seed):
    return MTPackSegInputs()(_results(h, w, seed))


def test_preprocessor_pads_each_field_with_its_value():
    pre = MODELS.build(dict(type='MTSegDataPreProcessor',
                            mean=[0., 0., 0.], std=[1., 1., 1.],
                            size=(8, 10), pad_val=0, bgr_to_rgb=True))
    a, b = _packed(H, W, 0), _packed(5, 7, 1)
    batch = dict(inputs=[a['inputs'], b['inputs']],
                 data_samples=[a['data_samples'], b['data_samples']])
    out = pre(batch, training=True)
    assert out['inputs'].shape == (2, 3, 8, 10)
    s = out['data_samples'][1]
    assert s.metainfo['padding_size'] == (0, 3, 0, 3)
    assert tuple(s.metainfo['img_shape']) == (5, 7)
    assert tuple(s.metainfo['pad_shape']) == (8, 10)
    expect = dict(gt_sem_seg=255, gt_parts_seg=255, gt_sal_map=255,
                  gt_edge_map=255, gt_normal_map=0, gt_depth_map=0)
    for field, val in expect.items():
        data = s.get(field).data
        assert data.shape[-2:] == (8, 10), field
        assert torch.all(data[..., 5:, :] == val), field
        assert torch.all(data[..., :, 7:] == val), field
    # content kept, image bgr->rgb
    assert torch.equal(s.gt_depth_map.data[0, :5, :7],
                       torch.from_numpy(_results(5, 7, 1)['gt_depth_map']))
    assert torch.equal(out['inputs'][1, 0, :5, :7],
                       b['inputs'][2].float())


def test_preprocessor_test_mode_adds_center_padding():
    pre = MTSegDataPreProcessor(mean=[0., 0., 0.], std=[1., 1., 1.],
                                test_cfg=dict(size_divisor=4))
    r = MTPadToSize(size=(7, 9))(_results())
    p = MTPackSegInputs()(r)
    out = pre(dict(inputs=[p['inputs']], data_samples=[p['data_samples']]),
              training=False)
    assert out['inputs'].shape == (1, 3, 8, 12)
    s = out['data_samples'][0]
    # centre pad (0, 1, 0, 1) + batch pad (0, 3, 0, 1)
    assert s.metainfo['padding_size'] == (0, 4, 0, 2)
    assert s.metainfo['img_padding_size'] == (0, 4, 0, 2)
    assert s.gt_sem_seg.data.shape[-2:] == (7, 9)  # GT untouched at test


def test_preprocessor_rejects_mismatched_field():
    pre = MTSegDataPreProcessor(size_divisor=4)
    p = _packed(H, W, 0)
    p['data_samples'].gt_depth_map = PixelData(data=torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match='gt_depth_map'):
        pre(dict(inputs=[p['inputs']], data_samples=[p['data_samples']]),
            training=True)


def test_center_pad_flip_roundtrip_through_preprocessor():
    """Cropping the batch with img_padding_size then un-flipping (what
    mmseg's postprocess_result does) gives back the original image."""
    r = _results()
    orig = r['img'].copy()
    r = MTPadToSize(size=(9, 13), pad_seg_fields=False)(r)  # (2, 3, 1, 2)
    assert r['gt_normal_map'].shape[:2] == (H, W)  # GT not padded
    r = MTRandomFlip(prob=1.0)(r)
    p = MTPackSegInputs()(r)
    pre = MTSegDataPreProcessor(test_cfg=dict(size_divisor=8))
    out = pre(dict(inputs=[p['inputs']], data_samples=[p['data_samples']]),
              training=False)
    x = out['inputs'][0]
    left, right, top, bottom = out['data_samples'][0].img_padding_size
    crop = x[:, top:x.shape[1] - bottom, left:x.shape[2] - right]
    crop = crop.flip(dims=(2, ))
    np.testing.assert_array_equal(crop.permute(1, 2, 0).numpy(), orig)


def test_mmcv_random_resize_accepts_mtresize():
    t = TRANSFORMS.build(dict(type='RandomResize', scale=(2 * W, 2 * H),
                              ratio_range=(1.0, 1.0), resize_type='MTResize',
                              keep_ratio=False))
    out = t(_results())
    assert out['gt_normal_map'].shape == (2 * H, 2 * W, 3)
    n = np.linalg.norm(out['gt_normal_map'], axis=-1)
    np.testing.assert_allclose(n[n > 0], 1.0, atol=1e-5)


# ------------------------------------------- batch padding and test padding

def test_preprocessor_without_size_pads_to_batch_max_only():
    """The reference trains on the crop itself: a batch of 425x560 crops
    must reach the network as 425x560 (size_divisor=16 would make it 432)."""
    crops = [torch.zeros(3, 425, 560, dtype=torch.uint8) for _ in range(2)]
    samples = [SegDataSample(metainfo=dict(img_path=f'{i}.jpg'))
               for i in range(2)]
    for s in samples:
        s.gt_depth_map = PixelData(data=torch.ones(1, 425, 560))
    pre = MTSegDataPreProcessor(mean=[0., 0., 0.], std=[1., 1., 1.])
    out = pre(dict(inputs=crops, data_samples=samples), training=True)
    assert out['inputs'].shape == (2, 3, 425, 560)
    assert out['data_samples'][0].metainfo['padding_size'] == (0, 0, 0, 0)
    div = MTSegDataPreProcessor(mean=[0., 0., 0.], std=[1., 1., 1.],
                                size_divisor=16)
    out16 = div(dict(inputs=crops, data_samples=[
        SegDataSample(metainfo=dict(img_path='a.jpg')) for _ in range(2)]),
        training=True)
    assert out16['inputs'].shape == (2, 3, 432, 560)
    # a mixed batch is padded bottom/right to its largest image only
    a, b = _packed(H, W, 0), _packed(5, 7, 1)
    out = pre(dict(inputs=[a['inputs'], b['inputs']],
                   data_samples=[a['data_samples'], b['data_samples']]),
              training=True)
    assert out['inputs'].shape == (2, 3, H, W)
    assert out['data_samples'][1].metainfo['padding_size'] == (0, 1, 0, 1)
    assert torch.all(out['data_samples'][1].gt_sem_seg.data[0, 5:] == 255)


def test_preprocessor_rejects_size_and_size_divisor_together():
    pre = MTSegDataPreProcessor(size=(8, 8), size_divisor=4)
    p = _packed(H, W, 0)
    with pytest.raises(RCConfigError, match='size_divisor'):
        pre(dict(inputs=[p['inputs']], data_samples=[p['data_samples']]),
            training=True)


def test_test_mode_pads_mixed_sizes_and_records_it():
    pre = MTSegDataPreProcessor(mean=[0., 0., 0.], std=[1., 1., 1.])
    a = MTPackSegInputs()(MTPadToSize(size=(7, 9))(_results()))
    b = _packed(5, 7, 1)
    out = pre(dict(inputs=[a['inputs'], b['inputs']],
                   data_samples=[a['data_samples'], b['data_samples']]),
              training=False)
    assert out['inputs'].shape == (2, 3, 7, 9)
    sa, sb = out['data_samples']
    assert sa.metainfo['img_padding_size'] == (0, 1, 0, 1)  # centre only
    assert sb.metainfo['img_padding_size'] == (0, 2, 0, 2)  # batch only
    assert sb.metainfo['img_shape'] == (5, 7)


NYUD_MODEL = 'mmseg_configs/_base_/models/rc_deeplabv3plus_r18_nyud.py'
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


@pytest.fixture(scope='module')
def model():
    """The shipped NYUD multi-task segmentor (narrow heads) with the
    multi-task preprocessor as the real-data configs use it."""
    cfg = Config.fromfile(NYUD_MODEL).model
    cfg.data_preprocessor = dict(type='MTSegDataPreProcessor', mean=MEAN,
                                 std=STD, bgr_to_rgb=True, pad_val=0)
    for head in cfg.decode_heads.values():
        head.channels = 16
        head.c1_channels = 8
    torch.manual_seed(0)
    net = MODELS.build(cfg)
    # untrained heads predict almost constant depth/edge maps: spread their
    # conv weights so every output varies from pixel to pixel
    for name, param in net.decode_heads.named_parameters():
        if param.dim() == 4:
            param.data.normal_(0, 0.1)
    net.eval()
    return net


def test_predict_on_centre_padded_sample_covers_exactly_the_image(model):
    """Test-time padding as the reference: a 21x27 image padded, centred,
    with the mean colour to 32x36; every task's prediction must be the
    network output on exactly the original pixels (no shift, no resize)."""
    h, w = 21, 27
    r = _results(h, w, seed=3)
    img = r['img'].copy()
    r = MTPadToSize(size=(32, 36), pad_seg_fields=False)(r)
    top, left = (32 - h) // 2, (36 - w) // 2  # 5, 4
    assert r['center_padding'] == (left, 36 - w - left, top, 32 - h - top)
    packed = MTPackSegInputs()(r)
    data = dict(inputs=[packed['inputs']],
                data_samples=[packed['data_samples']])
    with torch.no_grad():
        preds = model.test_step(copy.deepcopy(data))
        x = model.data_preprocessor(copy.deepcopy(data), False)['inputs']
        dense = model(x, mode='tensor')
    # the padding is the mean colour: normalised, (pad - mean) / std
    pad = (torch.tensor([123., 116., 103.]) - torch.tensor(MEAN)) / \
        torch.tensor(STD)
    border = torch.cat([x[0, :, :top].flatten(1), x[0, :, top + h:].flatten(1),
                        x[0, :, :, :left].flatten(1)], 1)
    torch.testing.assert_close(border, pad[:, None].expand_as(border))
    rgb = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1).float()
    torch.testing.assert_close(x[0, :, top:top + h, left:left + w],
                               (rgb - torch.tensor(MEAN)[:, None, None]) /
                               torch.tensor(STD)[:, None, None])
    sample = preds[0]
    assert sample.metainfo['ori_shape'] == (h, w)
    inside = (slice(None), slice(top, top + h), slice(left, left + w))
    shifted = (slice(None), slice(top + 1, top + 1 + h),
               slice(left, left + w))
    depth = sample.pred_depth_map.data
    assert depth.shape == (1, h, w)
    torch.testing.assert_close(depth, dense['depth'][0][inside])
    assert not torch.allclose(depth, dense['depth'][0][shifted], atol=1e-3)
    torch.testing.assert_close(sample.pred_normal_map.data,
                               dense['normals'][0][inside])
    torch.testing.assert_close(sample.pred_edge_map.data,
                               dense['edge'][0][inside].sigmoid())
    assert torch.equal(sample.pred_sem_seg.data,
                       dense['semseg'][0][inside].argmax(0, keepdim=True))


def test_stock_inference_model_runs_the_multitask_test_pipeline(model,
                                                                 tmp_path):
    """mmseg's inference_model feeds the config's test_pipeline with only
    an image path: the annotation loader must step aside."""
    from mmseg.apis import inference_model
    img = np.random.default_rng(0).integers(0, 255, (21, 27, 3), np.uint8)
    path = str(tmp_path / 'x.png')
    cv2.imwrite(path, img)
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadMTAnnotations'),
                dict(type='MTPadToSize', size=(32, 36),
                     pad_seg_fields=False),
                dict(type='MTPackSegInputs')]
    model.cfg = Config(dict(test_pipeline=pipeline))
    try:
        result = inference_model(model, path)
    finally:
        del model.cfg
    assert result.metainfo['ori_shape'] == (21, 27)
    assert result.metainfo['img_padding_size'] == (4, 5, 5, 6)
    for field, c in (('pred_sem_seg', 1), ('pred_depth_map', 1),
                     ('pred_normal_map', 3), ('pred_edge_map', 1)):
        assert result.get(field).data.shape == (c, 21, 27), field
