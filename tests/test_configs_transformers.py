"""The transformer and ConvNeXt configs: SegFormer (mmseg's
MixVisionTransformer, MiT-b0 on the synthetic benchmark, MiT-b2 on NYUD and
PASCAL-Context) and UPerNet on ConvNeXt-T (timm through mmseg's
TIMMBackbone). Each config, built at its real size: the heads are the stock
mmseg heads under the task adapter with the paper's task types, fields and
losses, and read the backbone's real feature channels; every weight
parameter of the backbone gets a per-task path (rc.summary's weight reach,
the issue's goal is >= 95 %); a forward in tensor mode and a loss with
every task trained run, gradients reaching every task's tensors and no
shared one. The converter takes their checkpoints: mmseg/mmengine files
(``backbone.`` keys under ``state_dict``) and, for the TIMMBackbone, timm's
own plain state dict (.pth and .safetensors); the bank's backbone computes
the checkpoint's function."""
import glob
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

import rc_adapter as rc
from rc_adapter.core.errors import ConversionError
from rc_adapter.mmseg.convert import (build_backbone,
                                      build_rc_backbone_from_bank,
                                      convert_checkpoint)
from rc_adapter.mmseg.models.task_head import MTHeadAdapter
from test_configs import (CONFIG_DIR, NUM_CLASSES, TASK_SETS,  # noqa: F401
                          layout_of, single_thread)

FAMILIES = ('segformer', 'convnext')
CONFIGS = sorted(
    p for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if '_base_' not in osp.relpath(p, CONFIG_DIR).split(os.sep)
    and any(f in osp.basename(p) for f in FAMILIES))
NAMES = [osp.basename(p) for p in CONFIGS]

# task -> (task_type, gt_field, output channels (None: the dataset's
# classes), loss type, loss weight): the paper's tasks (docs/method.md).
TASKS = {
    'semseg': ('segmentation', 'gt_sem_seg', None, 'CrossEntropyLoss', 1.0),
    'human_parts': ('segmentation', 'gt_parts_seg', 7, 'CrossEntropyLoss',
                    2.0),
    'sal': ('saliency', 'gt_sal_map', 1, 'MaskedBCEWithLogitsLoss', 5.0),
    'normals': ('normals', 'gt_normal_map', 3, 'MaskedL1Loss', 10.0),
    'edge': ('edge', 'gt_edge_map', 1, 'MaskedBCEWithLogitsLoss', 50.0),
    'depth': ('depth', 'gt_depth_map', 1, 'MaskedL1Loss', 1.0),
}
# name -> (backbone check, stock head type)
MIT_B0 = dict(type='MixVisionTransformer', embed_dims=32,
              num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8])
MIT_B2 = dict(MIT_B0, embed_dims=64, num_layers=[3, 4, 6, 3])
CONVNEXT_T = dict(type='TIMMBackbone', model_name='convnext_tiny',
                  features_only=True, out_indices=(0, 1, 2, 3))
EXPECTED = {
    'rc_segformer_mitb0_synthetic_nyud.py': (MIT_B0, 'SegformerHead'),
    'rc_segformer_mitb0_synthetic_pascal.py': (MIT_B0, 'SegformerHead'),
    'rc_segformer_mitb2_nyud.py': (MIT_B2, 'SegformerHead'),
    'rc_segformer_mitb2_pascal.py': (MIT_B2, 'SegformerHead'),
    'rc_upernet_convnext_t_nyud.py': (CONVNEXT_T, 'UPerHead'),
    'rc_upernet_convnext_t_pascal.py': (CONVNEXT_T, 'UPerHead'),
}
SIZE = 64


def read(name):
    init_default_scope('mmseg')
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def make_samples(tasks, num_classes, n=2, size=SIZE):
    """Random labels of every field the tasks read (with ignore/invalid
    pixels where the field has them)."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        meta = dict(ori_shape=(size, size), img_shape=(size, size),
                    pad_shape=(size, size), padding_size=[0, 0, 0, 0])
        fields = {}
        shape = (1, size, size)
        for task in tasks:
            field = TASKS[task][1]
            if task in ('semseg', 'human_parts'):
                classes = num_classes if task == 'semseg' else 7
                data = torch.randint(0, classes, shape, generator=gen)
                data[:, :4] = 255
            elif task in ('sal', 'edge'):
                data = torch.randint(0, 2, shape, generator=gen)
                data[:, :4] = 255
            elif task == 'normals':
                data = F.normalize(torch.randn((3, size, size),
                                               generator=gen), dim=0)
                data[:, :4] = 0
            else:
                data = torch.rand(shape, generator=gen) + 0.5
                data[:, :4] = 0
            fields[field] = PixelData(data=data)
        samples.append(SegDataSample(metainfo=meta, **fields))
    return samples


def test_config_set_is_complete():
    assert sorted(NAMES) == sorted(EXPECTED)


@pytest.mark.parametrize('name', NAMES)
def test_config_structure(name):
    """What the config says, before anything is built."""
    cfg = read(name)
    layout = layout_of(name)
    tasks = TASK_SETS[layout]
    backbone_check, head_type = EXPECTED[name]
    assert cfg.get('custom_imports') == dict(
        imports=['rc_adapter'], allow_failed_imports=False)
    model = cfg.model
    assert model.type == 'RCMultiTaskSegmentor'
    assert model.get('baseline') is None
    for key, value in backbone_check.items():
        actual = model.backbone[key]
        if isinstance(value, (list, tuple)):
            actual, value = list(actual), list(value)
        assert actual == value, key
    # The default family rule, NFF and per-task norms: the full method.
    assert model.rc_cfg == dict(nff=True, task_norms=True, modulator='auto')
    assert cfg.convert_cfg.ri is True
    assert list(model.decode_heads) == tasks
    for task, head in model.decode_heads.items():
        task_type, gt_field, channels, loss, weight = TASKS[task]
        assert head.type == head_type, task
        assert (head.task_type, head.gt_field) == (task_type, gt_field)
        assert head.num_classes == (channels or NUM_CLASSES[layout]), task
        assert head.loss_decode.type == loss, task
        assert head.loss_decode.loss_weight == weight, task
        assert head.in_index == [0, 1, 2, 3], task
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[key].dataset.tasks == tasks, key
    for key in ('val_evaluator', 'test_evaluator'):
        # A list of metrics, or one MTMultiTaskEvaluator holding them.
        metrics = cfg[key]
        if isinstance(metrics, dict):
            assert metrics['type'] == 'MTMultiTaskEvaluator', key
            metrics = metrics['metrics']
        assert [m['prefix'] for m in metrics] == tasks, key
    # Only the task's own tensors are optimised; human_parts has its own
    # length on PASCAL, as in rc_r18_pascal.py.
    assert cfg.optim_wrapper.constructor == \
        'TrainableOnlyOptimWrapperConstructor'
    if layout == 'pascal' and 'synthetic' not in name:
        assert cfg.task_schedules == dict(human_parts=dict(max_iters=13020))
        assert cfg.train_cfg.max_iters == 37500
    elif 'synthetic' not in name:
        assert cfg.train_cfg.max_iters == 19875
    if 'synthetic' not in name:
        assert cfg.param_scheduler[-1]['end'] == cfg.train_cfg.max_iters
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'


def _feature_channels(backbone, size=SIZE):
    backbone.eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, size, size))
    return [f.shape[1] for f in feats]


@pytest.mark.parametrize('name', NAMES)
def test_config_builds_reaches_every_weight_and_trains(name):
    """The real config, at its real size: build, reach, tensor forward,
    loss and gradients of every task."""
    from mmseg.registry import MODELS
    cfg = read(name)
    layout = layout_of(name)
    tasks = TASK_SETS[layout]
    _, head_type = EXPECTED[name]

    # The heads read what the plain backbone gives.
    plain = build_backbone(cfg.model.backbone)
    channels = _feature_channels(plain)
    for task, head in cfg.model.decode_heads.items():
        assert list(head.in_channels) == channels, task

    cfg.model.allow_random_bank = True
    model = MODELS.build(cfg.model)
    info = rc.summary(model.backbone)
    assert info['weight_reach'] >= 0.95, info['reach']
    assert not info['skipped']
    assert any(f.startswith('lowrank') for f in info['modulators'])
    weights = {label: c for label, c in info['reach'].items()
               if c['weight_layer']}
    if 'segformer' in name:
        # The attention's packed q/k/v and output projections are reached.
        assert weights['MultiheadAttention']['shared'] == 0
        assert info['layers']['mha'] == sum(cfg.model.backbone.num_layers)
    else:
        # The MLPs (93 % of ConvNeXt's weights) are reached.
        assert weights['Linear']['shared'] == 0
    per_task = info['params_per_task']
    assert list(per_task) == tasks
    assert len(set(per_task.values())) == 1
    # A task costs a small share of the backbone (the issue: <= 15 %).
    assert next(iter(per_task.values())) <= 0.15 * info['model_params']
    for task in tasks:
        head = model.decode_heads.tasks[task]
        assert isinstance(head, MTHeadAdapter), task
        assert type(head.head).__name__ == head_type, task
        assert head.task_type == TASKS[task][0], task

    model.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x, mode='tensor')
    assert list(out) == tasks
    for task, value in out.items():
        expected = TASKS[task][2] or NUM_CLASSES[layout]
        assert value.shape == (1, expected, SIZE, SIZE), task
        assert torch.isfinite(value).all(), task
    norms = out['normals'].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)

    model.train()
    assert model.train_tasks == tasks
    losses = model(torch.randn(2, 3, SIZE, SIZE),
                   make_samples(tasks, NUM_CLASSES[layout]), mode='loss')
    loss_keys = [k for k in losses if 'loss' in k]
    assert sorted({k.split('.')[0] for k in loss_keys}) == sorted(tasks)
    for key in loss_keys:
        assert torch.isfinite(losses[key]) and losses[key] > 0, key
    sum(losses[k] for k in loss_keys).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters()
                 if p.grad is not None}
    assert with_grad == trainable
    for task in tasks:
        # The task's RC tensors in the backbone and its head got gradients.
        assert any(n.startswith('backbone.') and f'.{task}.' in n
                   for n in with_grad), task
        assert any(n.startswith(f'decode_heads.tasks.{task}.')
                   for n in with_grad), task


def _task_parts(template):
    keys = ('task_type', 'gt_field', 'num_classes', 'out_channels',
            'loss_decode')
    return {k: template[k] for k in keys if k in template}


def test_head_templates_agree_with_the_deeplab_ones():
    """One task table (mt_tasks.py) under every head body, with the values
    of the DeepLabv3+ templates; each stock body is the same for every
    task; each dataset's heads (mt_heads) are its dataset's tasks, in
    order, each its own copy."""
    base = osp.join(CONFIG_DIR, '_base_', 'models')
    table = Config.fromfile(osp.join(base, 'mt_tasks.py'))
    tasks = table.mt_tasks
    for layout, task_set in table.mt_task_sets.items():
        dataset = Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'datasets',
                                           f'{layout}_mt.py'))
        assert list(task_set) == dataset.tasks == TASK_SETS[layout]
    deeplab = Config.fromfile(osp.join(
        base, 'mt_deeplabv3plus_heads.py')).mt_head_templates
    assert sorted(tasks) == sorted(deeplab)
    for name, template in deeplab.items():
        assert _task_parts(template) == tasks[name], name
    for file, body_type in (('mt_segformer_heads.py', 'SegformerHead'),
                            ('mt_uper_heads.py', 'UPerHead')):
        heads = Config.fromfile(osp.join(base, file))
        templates = heads.mt_head_templates
        assert sorted(templates) == sorted(tasks)
        for layout, task_set in table.mt_task_sets.items():
            assert list(heads.mt_heads[layout]) == list(task_set)
            for task, entry in task_set.items():
                assert heads.mt_heads[layout][task] == templates[entry]
        heads.mt_heads.nyud.semseg.channels = 7
        assert heads.mt_heads.nyud.edge.channels == \
            templates.semseg_nyu40.channels != 7
        bodies = []
        for name, template in templates.items():
            assert _task_parts(template) == tasks[name], (file, name)
            body = {k: v for k, v in template.items()
                    if k not in _task_parts(template)}
            bodies.append(body)
            assert body['type'] == body_type
        assert all(b == bodies[0] for b in bodies), file


@pytest.mark.parametrize('layout', sorted(TASK_SETS))
def test_synthetic_configs_share_the_benchmark(layout):
    """The SegFormer synthetic configs train and evaluate exactly as the
    ResNet-18 ones (data, pipelines, evaluation, schedule, calibration):
    only the model differs."""
    resnet = read(f'rc_r18_synthetic_{layout}.py')
    segformer = read(f'rc_segformer_mitb0_synthetic_{layout}.py')
    data = Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'datasets',
                                    f'synthetic_{layout}.py'))
    for key in data:
        assert resnet[key] == data[key], key
    keys = set(resnet) - {'model', 'mt_head_templates', 'norm_cfg'}
    assert keys <= set(segformer)
    for key in keys:
        assert segformer[key] == resnet[key], key
    assert all(head.channels == 64
               for head in segformer.model.decode_heads.values())


# -- checkpoints -------------------------------------------------------------
def _randomize_norms(module, seed=0):
    """Norm affine parameters away from 1/0, so a wrong key shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen)
                               + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


@pytest.fixture(scope='module')
def calib_data(tmp_path_factory):
    from rc_adapter.synthetic import generate
    root = tmp_path_factory.mktemp('calib') / 'nyud'
    generate('nyud', str(root), num_train=4, num_val=1, size=(48, 48),
             seed=1)
    return str(root)


def _bank_outputs(bank, x):
    """The outputs of a new task on the bank's backbone (its base
    state)."""
    backbone = build_rc_backbone_from_bank(bank)
    rc.add_task(backbone, 'probe')
    rc.set_task(backbone, 'probe')
    backbone.eval()
    with torch.no_grad():
        return backbone(x)


def _assert_same(outputs, expected, atol):
    assert len(outputs) == len(expected)
    for a, b in zip(outputs, expected):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= atol * max(
            1.0, b.abs().max().item())


def _convert(cfg, checkpoint, out, **kwargs):
    lines = []
    bank = convert_checkpoint(cfg, checkpoint, str(out), progress=False,
                              log=lines.append, calib_images=4,
                              calib_size=(32, 32), batch_size=2, **kwargs)
    return bank, '\n'.join(lines)


def test_convert_segformer_mmseg_checkpoint(tmp_path, calib_data):
    """An mmseg checkpoint of a SegFormer (``backbone.`` keys next to a
    decode head's, under ``state_dict``, with ``meta``): identity init gives
    the checkpoint's function exactly; Response Initialization (attention
    included) within float tolerance, calibrated on the train split."""
    cfg = read('rc_segformer_mitb0_synthetic_nyud.py')
    plain = build_backbone(cfg.model.backbone)
    _randomize_norms(plain)
    state = {'backbone.' + k: v for k, v in plain.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.randn(41, 64, 1, 1)
    checkpoint = tmp_path / 'segformer_mitb0.pth'
    torch.save({'state_dict': state, 'meta': dict(epoch=3)}, checkpoint)
    x = torch.randn(2, 3, 64, 64)
    plain.eval()
    with torch.no_grad():
        expected = plain(x)

    # The packed q/k/v projection of the first attention.
    weight = plain.state_dict()['layers.0.1.0.attn.attn.in_proj_weight']
    bank_key = 'layers.0.1.0.attn.attn.in_proj.weight'

    bank, log = _convert(cfg, checkpoint, tmp_path / 'bank_id', ri=False)
    n = len(plain.state_dict())
    assert f'loaded {n}/{n}' in log
    assert torch.equal(bank.read_shared()[bank_key], weight)
    _assert_same(_bank_outputs(bank, x), expected, 1e-5)

    bank, log = _convert(cfg, checkpoint, tmp_path / 'bank_ri',
                         data_root=calib_data)
    ri = bank.config['ri']
    assert ri['enabled'] and ri['calibration']['split'] == 'train'
    assert ri['calibration']['count'] == 4
    assert ri['max_abs_diff'] < 1e-3
    _assert_same(_bank_outputs(bank, x), expected, 1e-3)
    # RI changed the bank: the attention's filter bank is Uᵀ W, not W.
    assert not torch.allclose(bank.read_shared()[bank_key], weight)


def _tiny_convnext():
    """ConvNeXt-T's structure (stem, 4 stages, downsampling, blocks) at
    small widths and depths: timm kwargs the config passes through."""
    return dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1))


@pytest.mark.parametrize('fmt', ['timm_pth', 'timm_safetensors', 'mmseg'])
def test_convert_convnext_checkpoints(tmp_path, fmt):
    """timm's plain convnext state dict (stem.0, stages.N ...; the
    features_only backbone names them timm_model.stem_0,
    timm_model.stages_N ...; the classifier set aside), as .pth or
    .safetensors, and an mmseg checkpoint of the TIMMBackbone: the bank's
    backbone computes timm's own stage outputs."""
    import timm
    cfg = read('rc_upernet_convnext_t_nyud.py')
    cfg.model.backbone.update(_tiny_convnext())
    source = timm.create_model('convnext_tiny', pretrained=False,
                               **_tiny_convnext())
    _randomize_norms(source)
    source.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.forward_intermediates(x, intermediates_only=True)
    if fmt == 'timm_pth':
        checkpoint = tmp_path / 'convnext_tiny.pth'
        torch.save(source.state_dict(), checkpoint)
    elif fmt == 'timm_safetensors':
        from safetensors.torch import save_file
        checkpoint = tmp_path / 'model.safetensors'
        save_file({k: v.contiguous() for k, v in
                   source.state_dict().items()}, str(checkpoint))
    else:
        from rc_adapter.mmseg.convert import load_backbone_weights
        plain = build_backbone(cfg.model.backbone)
        timm_file = tmp_path / 'timm.pth'
        torch.save(source.state_dict(), timm_file)
        load_backbone_weights(plain, str(timm_file), log=lambda s: None)
        checkpoint = tmp_path / 'upernet_convnext.pth'
        torch.save({'state_dict': {'backbone.' + k: v for k, v in
                                   plain.state_dict().items()}},
                   checkpoint)
    bank, log = _convert(cfg, checkpoint, tmp_path / 'bank', ri=False)
    n = len(build_backbone(cfg.model.backbone).state_dict())
    assert f'loaded {n}/{n}' in log
    if fmt != 'mmseg':
        assert 'ignored classifier tensors 4' in log  # head.norm, head.fc
    _assert_same(_bank_outputs(bank, x), expected, 1e-5)


def test_convert_refuses_another_architecture(tmp_path):
    """A MiT checkpoint for the ConvNeXt config: refused, nothing
    written."""
    mit = build_backbone(read('rc_segformer_mitb0_synthetic_nyud.py')
                         .model.backbone)
    checkpoint = tmp_path / 'mit.pth'
    torch.save(mit.state_dict(), checkpoint)
    cfg = read('rc_upernet_convnext_t_nyud.py')
    cfg.model.backbone.update(_tiny_convnext())
    with pytest.raises(ConversionError, match='matched'):
        _convert(cfg, checkpoint, tmp_path / 'bank', ri=False)
    assert not (tmp_path / 'bank').exists()
