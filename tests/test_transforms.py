"""Multi-task transforms, packer and data preprocessor (hand-built results)."""
import copy

import numpy as np
import pytest
import torch

import rc_adapter  # noqa: F401  (must precede mmseg.models imports)
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample

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
