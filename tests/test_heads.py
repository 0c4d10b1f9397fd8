"""Task heads: stock mmseg decode heads (FCNHead, DepthwiseSeparableASPPHead,
SegformerHead, UPerHead) serve as segmentation and depth heads of the
multi-task segmentor through the head adapter; they train, validate through
mmengine's evaluator, and stay isolated from the other task."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.evaluator import Evaluator
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmseg.structures import SegDataSample

import rc_adapter as rc
from rc_adapter.core.errors import RCConfigError
from rc_adapter.mmseg.models.task_head import (MTHeadAdapter, head_protocol,
                                               plain_head, split_head_cfg)

WIDTH = 8  # stage channels 8, 16, 32, 64
NUM_CLASSES = 5
ALL = dict(in_channels=[WIDTH, 2 * WIDTH, 4 * WIDTH, 8 * WIDTH],
           in_index=[0, 1, 2, 3])
LAST = dict(in_channels=8 * WIDTH, in_index=3)
BN = dict(type='BN', requires_grad=True)
STOCK_HEADS = {
    'FCNHead': dict(type='FCNHead', num_convs=1, **LAST),
    'DepthwiseSeparableASPPHead': dict(
        type='DepthwiseSeparableASPPHead', dilations=(1, 2),
        c1_in_channels=WIDTH, c1_channels=4, **LAST),
    'SegformerHead': dict(type='SegformerHead', **ALL),
    'UPerHead': dict(type='UPerHead', pool_scales=(1, 2), **ALL),
}


def _model_cfg(body):
    init_default_scope('mmseg')
    semseg = dict(body, channels=8, num_classes=NUM_CLASSES, norm_cfg=BN)
    depth = dict(body, channels=8, num_classes=1, norm_cfg=BN,
                 task_type='depth',
                 loss_decode=dict(type='MaskedL1Loss', loss_weight=1.0))
    return dict(
        type='RCMultiTaskSegmentor',
        data_preprocessor=dict(type='MTSegDataPreProcessor', mean=[0] * 3,
                               std=[255] * 3),
        backbone=dict(type='MTDeepLabResNet', depth=18, stem_channels=WIDTH,
                      base_channels=WIDTH, strides=(1, 2, 2, 1),
                      dilations=(1, 1, 1, 2), out_indices=(0, 1, 2, 3)),
        rc_cfg=dict(modulator='full'),
        decode_heads=dict(semseg=semseg, depth=depth),
        allow_random_bank=True)


def _batch(n=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g,
                                    dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(ori_shape=(h, w),
                                             img_shape=(h, w)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, NUM_CLASSES, (1, h, w), generator=g))
        sample.set_data(dict(gt_depth_map=PixelData(
            data=torch.rand(1, h, w, generator=g) + 0.5)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _optim(model):
    return OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableOnlyOptimWrapperConstructor',
        optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(
            type='SGD', lr=0.01, momentum=0.9))))(model)


@pytest.mark.parametrize('name', list(STOCK_HEADS))
def test_stock_head_trains_and_validates_as_a_task_head(name):
    model = MODELS.build(_model_cfg(STOCK_HEADS[name]))
    for task in ('semseg', 'depth'):
        head = model.decode_heads.task_submodule(task)
        assert isinstance(head, MTHeadAdapter)
        assert type(plain_head(head)).__name__ == name
    semseg = model.decode_heads.task_submodule('semseg')
    depth = model.decode_heads.task_submodule('depth')
    assert (semseg.task_type, semseg.gt_field, semseg.pred_field) == (
        'segmentation', 'gt_sem_seg', 'pred_sem_seg')
    assert (depth.task_type, depth.gt_field, depth.pred_field) == (
        'depth', 'gt_depth_map', 'pred_depth_map')
    assert depth.out_channels == 1

    # Train semseg only: depth's tensors must not move.
    model.train_tasks = ['semseg']
    rc.set_trainable_tasks(model, ['semseg'])
    depth_before = copy.deepcopy(rc.task_state_dict(model, 'depth'))
    semseg_before = copy.deepcopy(rc.task_state_dict(model, 'semseg'))
    optim = _optim(model)
    model.train()
    for step in range(2):
        log = model.train_step(_batch(seed=step), optim)
        assert set(log) >= {'loss', 'semseg.loss_ce', 'semseg.acc_seg'}
        assert torch.isfinite(log['loss'])
    after = rc.task_state_dict(model, 'depth')
    assert all(torch.equal(depth_before[k], after[k]) for k in after)
    moved = rc.task_state_dict(model, 'semseg')
    assert any(not torch.equal(semseg_before[k], moved[k])
               for k in moved if k.endswith('conv_seg.weight'))

    # Depth trains through the same stock body with the masked L1 loss.
    model.train_tasks = ['depth']
    rc.set_trainable_tasks(model, ['depth'])
    log = model.train_step(_batch(seed=5), _optim(model))
    assert set(log) == {'loss', 'depth.loss_l1'}
    assert torch.isfinite(log['loss'])

    # Validation as the ValLoop does it: val_step and the evaluator.
    model.eval()
    evaluator = Evaluator([
        dict(type='MTSemSegMetric', num_classes=NUM_CLASSES,
             prefix='semseg'),
        dict(type='MTDepthMetric', prefix='depth')])
    data = _batch(seed=9)
    with torch.no_grad():
        outputs = model.val_step(copy.deepcopy(data))
    evaluator.process(outputs, data)
    metrics = evaluator.evaluate(len(outputs))
    assert 0 <= metrics['semseg/mIoU'] <= 100
    assert metrics['depth/rmse'] > 0
    # The predictions are the heads' own outputs at the input size.
    x = model.data_preprocessor(copy.deepcopy(data), False)['inputs']
    with torch.no_grad():
        dense = model(x, mode='tensor')
    for i, sample in enumerate(outputs):
        assert torch.equal(sample.pred_sem_seg.data,
                           dense['semseg'][i].argmax(0, keepdim=True))
        torch.testing.assert_close(sample.pred_depth_map.data,
                                   dense['depth'][i])


def test_adapted_segmentation_head_reads_its_own_label_field():
    """A stock head for human parts reads gt_parts_seg, not gt_sem_seg:
    its loss is the cross-entropy on that field."""
    init_default_scope('mmseg')
    cfg = _model_cfg(STOCK_HEADS['FCNHead'])
    cfg['decode_heads'] = dict(human_parts=dict(
        STOCK_HEADS['FCNHead'], channels=8, num_classes=7, norm_cfg=BN))
    model = MODELS.build(cfg)
    head = model.decode_heads.task_submodule('human_parts')
    assert (head.task_type, head.gt_field, head.pred_field) == (
        'segmentation', 'gt_parts_seg', 'pred_parts_seg')
    samples = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        s = SegDataSample(metainfo=dict(img_shape=(16, 16)))
        s.gt_sem_seg = PixelData(data=torch.zeros(1, 16, 16, dtype=torch.long))
        parts = torch.randint(0, 7, (1, 16, 16), generator=g)
        parts[:, :8] = 255
        s.set_data(dict(gt_parts_seg=PixelData(data=parts)))
        samples.append(s)
    logits = torch.randn(2, 7, 4, 4)
    losses = head.loss_by_feat(logits, samples)
    target = torch.stack([s.gt_parts_seg.data[0] for s in samples])
    up = F.interpolate(logits, size=(16, 16), mode='bilinear',
                       align_corners=False)
    expected = F.cross_entropy(up, target, ignore_index=255,
                               reduction='none').mean()
    torch.testing.assert_close(losses['loss_ce'], expected)
    # The batch itself is not changed.
    assert all(torch.equal(s.gt_sem_seg.data, torch.zeros(1, 16, 16,
                                                          dtype=torch.long))
               for s in samples)
    del samples[0].gt_parts_seg
    with pytest.raises(RCConfigError, match='gt_parts_seg'):
        head.loss_by_feat(logits, samples)


def test_head_protocol_defaults_and_errors():
    init_default_scope('mmseg')
    fcn = dict(type='FCNHead', in_channels=8, channels=8, num_classes=3)
    assert head_protocol(fcn, 'normals')['task_type'] == 'normals'
    assert head_protocol(fcn, 'normals')['gt_field'] == 'gt_normal_map'
    assert head_protocol(fcn, 'sal')['pred_field'] == 'pred_sal_map'
    assert head_protocol(fcn, 'cracks') == dict(
        task_type='segmentation', gt_field='gt_sem_seg',
        pred_field='pred_sem_seg', num_classes=3, out_channels=3,
        head_type='FCNHead', adapted=True)
    # An explicit type or field wins over the task name's.
    protocol = head_protocol(dict(fcn, task_type='depth'), 'semseg')
    assert protocol['gt_field'] == 'gt_depth_map'
    # The stock head gets neither protocol key; one channel gets a
    # threshold (mmseg warns without one).
    build_cfg, _ = split_head_cfg(dict(fcn, num_classes=1,
                                       task_type='depth'), 'depth')
    assert 'task_type' not in build_cfg and build_cfg['threshold'] == 0.5
    mt = dict(type='MTDeepLabV3PlusHead', in_channels=8, channels=8,
              num_classes=1, c1_in_channels=8)
    build_cfg, protocol = split_head_cfg(mt, 'edge')
    assert not protocol['adapted']
    assert (build_cfg['task_type'], build_cfg['gt_field']) == (
        'edge', 'gt_edge_map')
    with pytest.raises(RCConfigError, match=r'decode_heads\.x\.task_type'):
        head_protocol(dict(fcn, task_type='panoptic'), 'x')
    with pytest.raises(RCConfigError, match="gt_field must start with 'gt_'"):
        head_protocol(dict(fcn, gt_field='labels'), 'x')
    with pytest.raises(RCConfigError, match="unknown type 'NoSuchHead'"):
        head_protocol(dict(type='NoSuchHead'), 'x')
