"""RCMultiTaskSegmentor: surgery in __init__, routing, losses, predictions."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import rc_adapter as rc
from rc_adapter.core import RCConv2d

MODEL_BASE = 'mmseg_configs/_base_/models/rc_deeplabv3plus_r18_nyud.py'


def small_model_cfg(**overrides):
    """The NYUD model with narrow heads, so tests stay fast."""
    init_default_scope('mmseg')
    cfg = Config.fromfile(MODEL_BASE).model
    cfg.data_preprocessor = dict(type='SegDataPreProcessor',
                                 mean=[0, 0, 0], std=[1, 1, 1],
                                 size_divisor=16)
    for head in cfg.decode_heads.values():
        head.channels = 16
        head.c1_channels = 8
    cfg.update(overrides)
    return cfg


def make_samples(n, h, w, flip=False):
    samples = []
    for _ in range(n):
        meta = dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w),
                    padding_size=[0, 0, 0, 0], flip=flip,
                    flip_direction='horizontal')
        s = SegDataSample(metainfo=meta)
        s.gt_sem_seg = PixelData(data=torch.randint(0, 41, (1, h, w)))
        s.set_data(dict(
            gt_depth_map=PixelData(data=torch.rand(1, h, w) + 0.5),
            gt_normal_map=PixelData(
                data=F.normalize(torch.randn(3, h, w), dim=0)),
            gt_edge_map=PixelData(data=torch.randint(0, 2, (1, h, w)))))
        samples.append(s)
    return samples


def test_surgery_in_init_and_trainable_set():
    model = MODELS.build(small_model_cfg(train_tasks=['depth']))
    assert rc.list_tasks(model) == ['semseg', 'depth', 'normals', 'edge']
    convs = [m for m in model.backbone.modules() if isinstance(m, RCConv2d)]
    assert len(convs) == 17  # stem + 16 block convs, as in the paper
    # Both 3x3 convs of the dilated layer4 blocks are dilated.
    assert model.backbone.layer4[1].conv2.dilation == (2, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all('.depth.' in n for n in trainable)
    assert any(n.startswith('decode_heads.tasks.depth.') for n in trainable)
    assert any(n.startswith('backbone.') for n in trainable)


def test_loss_only_trains_train_tasks_and_prefixes_keys():
    model = MODELS.build(small_model_cfg(train_tasks=['depth', 'edge']))
    model.train()
    x = torch.randn(2, 3, 64, 64)
    losses = model(x, make_samples(2, 64, 64), mode='loss')
    assert set(losses) == {'depth.loss_l1', 'edge.loss_bce'}
    sum(losses.values()).backward()
    with_grad = {n for n, p in model.named_parameters()
                 if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters()
                         if p.requires_grad}
    assert all('.depth.' in n or '.edge.' in n for n in with_grad)


def test_tensor_mode_returns_every_task_at_input_size():
    model = MODELS.build(small_model_cfg())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 80), mode='tensor')
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        'semseg': (1, 41, 48, 80), 'depth': (1, 1, 48, 80),
        'normals': (1, 3, 48, 80), 'edge': (1, 1, 48, 80)}
    norms = out['normals'].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_predict_writes_each_field_unflipping_normals():
    model = MODELS.build(small_model_cfg())
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x, make_samples(1, 64, 64), mode='predict')[0]
        # The same image flipped, declared flipped: predictions must map
        # back, normals with x negated.
        flipped = model(x.flip(3), make_samples(1, 64, 64, flip=True),
                        mode='predict')[0]
    assert plain.pred_sem_seg.data.shape == (1, 64, 64)
    assert plain.pred_sem_seg.data.dtype == torch.int64
    assert plain.pred_depth_map.data.shape == (1, 64, 64)
    assert plain.pred_normal_map.data.shape == (3, 64, 64)
    edge = plain.pred_edge_map.data
    assert edge.min() >= 0 and edge.max() <= 1
    # Conv nets are not flip-equivariant, so compare against the model's
    # own tensor output on the flipped input.
    with torch.no_grad():
        normals = model(x.flip(3), mode='tensor')['normals'][0]
    expected = normals.flip(2) * torch.tensor([-1., 1., 1.]).view(3, 1, 1)
    torch.testing.assert_close(flipped.pred_normal_map.data, expected,
                               rtol=1e-5, atol=1e-5)


def test_unknown_tasks_and_modes_are_clear_errors():
    with pytest.raises(KeyError, match='no decode head'):
        MODELS.build(small_model_cfg(tasks=['semseg', 'sal']))
    with pytest.raises(ValueError, match='not in tasks'):
        MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=['depth']))
    with pytest.raises(ValueError, match='mode'):
        MODELS.build(small_model_cfg(rc_cfg=dict(mode='lora')))


@pytest.mark.parametrize('mode', ['finetune', 'shared'])
def test_baseline_modes_train_the_plain_backbone(mode):
    model = MODELS.build(small_model_cfg(rc_cfg=dict(mode=mode),
                                         tasks=['semseg'],
                                         train_tasks=['semseg']))
    assert not any(isinstance(m, RCConv2d) for m in model.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert rc.list_tasks(model) == ['semseg']


def test_runner_init_weights_does_not_touch_the_backbone():
    model = MODELS.build(small_model_cfg())
    before = copy.deepcopy(model.state_dict())
    model.init_weights()  # what mmengine's Runner does after DDP wrapping
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not [k for k in changed if k.startswith('backbone.')]
