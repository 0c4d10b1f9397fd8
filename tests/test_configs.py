"""Every shipped ResNet config under mmseg_configs/ (not _base_): loads with
mmengine, imports rc_adapter, builds through mmseg MODELS without a
deprecation warning, has RC convs (or residual adapters) exactly when
model.baseline is None, with the NFF, Response Initialization and method of
its comparison row, defines the dataset's task set, has valid conversion
options, and returns one output per task at the input's size in tensor mode.
The transformer and ConvNeXt configs are checked in
tests/test_configs_transformers.py; every config is in one of the two."""
import glob
import os
import os.path as osp
import re
import warnings

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope

import rc_adapter  # noqa: F401  (before mmseg.models: mmcv.ops fallback)
from rc_adapter.core import RAConv2d, RCConv2d
from rc_adapter.mmseg.convert import conversion_options

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'mmseg_configs')
ALL_CONFIGS = sorted(
    p for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if '_base_' not in osp.relpath(p, CONFIG_DIR).split(os.sep))
# Backbone families of the names; the ResNet configs are tested here.
OTHER_BACKBONES = ('segformer', 'convnext')
CONFIGS = [p for p in ALL_CONFIGS
           if not any(b in osp.basename(p) for b in OTHER_BACKBONES)]
# The comparison row of each name prefix (the part before _r18/_r34):
# Response Initialization at conversion, NFF, and the per-task layers.
VARIANTS = {
    'rc': dict(ri=True, nff=True, method='rc'),  # RC+RI+NFF (the paper)
    'rc_ri': dict(ri=True, nff=False, method='rc'),  # RC+RI
    'rc_plain': dict(ri=False, nff=False, method='rc'),  # RC
    'ra_series': dict(ri=False, nff=False, method='ra_series'),
    'ra_parallel': dict(ri=False, nff=False, method='ra_parallel'),
    # Deprecated names, kept for one release, building what they always
    # built: rc_nonff is rc_ri; rc_nori is RC+NFF without RI.
    'rc_nonff': dict(ri=True, nff=False, method='rc'),
    'rc_nori': dict(ri=False, nff=True, method='rc'),
    # The baselines convert as the full method (never used by them).
    'finetune': dict(ri=True),
    'shared': dict(ri=True),
}
TASK_SETS = {
    'nyud': ['semseg', 'depth', 'normals', 'edge'],
    'pascal': ['semseg', 'human_parts', 'sal', 'normals', 'edge'],
}
# Channels each task's tensor-mode output has (paper task types).
OUT_CHANNELS = {'semseg': None, 'human_parts': 7, 'sal': 1, 'normals': 3,
                'edge': 1, 'depth': 1}
NUM_CLASSES = {'nyud': 41, 'pascal': 21}


def layout_of(path):
    name = osp.basename(path)
    layouts = [k for k in TASK_SETS if k in name]
    assert len(layouts) == 1, f'{name}: name must contain pascal or nyud'
    return layouts[0]


def variant_of(name):
    prefix = re.match(r'(.*?)_r(18|34)_', name)
    assert prefix, f'{name}: name must be PREFIX_r18_... or PREFIX_r34_...'
    assert prefix[1] in VARIANTS, f'{name}: unknown prefix {prefix[1]!r}'
    return prefix[1]


def test_config_set_is_complete():
    names = {osp.basename(p) for p in CONFIGS}
    # The minimum: RC for both datasets and depths, the baselines,
    # the paper's comparison rows (RC, RC+RI, RC+RI+NFF, series and parallel
    # residual adapters), the deprecated names, the multi-GPU recipe and the
    # synthetic configs, for both layouts.
    for layout in TASK_SETS:
        for depth in ('r18', 'r34'):
            assert f'rc_{depth}_{layout}.py' in names
        for prefix in VARIANTS:
            assert f'{prefix}_r18_{layout}.py' in names
        assert f'rc_r18_{layout}_4xb2.py' in names
        assert f'rc_r18_synthetic_{layout}.py' in names


def test_every_config_is_tested():
    """Each shipped config is either a ResNet config (this file) or a
    transformer/ConvNeXt config (test_configs_transformers.py)."""
    from test_configs_transformers import CONFIGS as TRANSFORMER_CONFIGS
    assert sorted(CONFIGS + TRANSFORMER_CONFIGS) == ALL_CONFIGS
    assert not set(CONFIGS) & set(TRANSFORMER_CONFIGS)


@pytest.mark.parametrize('layout', sorted(TASK_SETS))
def test_deprecated_row_names_build_what_they_built(layout):
    """rc_nonff_* is rc_ri_* (RC+RI); rc_nori_* still has NFF on and no
    RI (its banks keep loading); the new row configs differ from the full
    method only in NFF and RI."""
    def read(prefix):
        cfg = Config.fromfile(osp.join(CONFIG_DIR,
                                       f'{prefix}_r18_{layout}.py'))
        return cfg.model.to_dict(), conversion_options(cfg)

    full_model, full_options = read('rc')
    assert read('rc_nonff') == read('rc_ri')
    for prefix, nff, ri in (('rc_ri', False, True), ('rc_plain', False, False),
                            ('rc_nori', True, False)):
        model, options = read(prefix)
        assert options == dict(full_options, ri=ri), prefix
        assert model == dict(full_model, rc_cfg=dict(full_model['rc_cfg'],
                                                     nff=nff)), prefix


@pytest.fixture(scope='module', autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize('path', CONFIGS,
                         ids=[osp.basename(p) for p in CONFIGS])
def test_config_builds_and_runs(path):
    from mmseg.registry import MODELS
    name = osp.basename(path)
    layout = layout_of(path)
    depth = re.search(r'(?<![a-z0-9])r(18|34)(?![0-9])', name)
    assert depth, f'{name}: name must contain r18 or r34'
    if 'synthetic' in name:
        assert depth[1] == '18', name

    cfg = Config.fromfile(path)
    assert cfg.get('custom_imports') == dict(
        imports=['rc_adapter'], allow_failed_imports=False), name
    init_default_scope(cfg.get('default_scope', 'mmseg'))

    model_cfg = cfg.model
    assert model_cfg.type == 'RCMultiTaskSegmentor', name
    assert model_cfg.backbone.depth == int(depth[1]), name
    assert list(model_cfg.decode_heads) == TASK_SETS[layout], name
    # The datasets and evaluators agree with the heads.
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[key].dataset.tasks == TASK_SETS[layout], (name, key)
    for key in ('val_evaluator', 'test_evaluator'):
        # A list of metrics, or one MTMultiTaskEvaluator holding them.
        metrics = cfg[key]
        if isinstance(metrics, dict):
            assert metrics['type'] == 'MTMultiTaskEvaluator', (name, key)
            metrics = metrics['metrics']
        assert [m['prefix'] for m in metrics] == TASK_SETS[layout], (
            name, key)

    init_cfg = model_cfg.backbone.get('init_cfg')
    if init_cfg and init_cfg.get('type') == 'Pretrained':
        # The baselines point at an ImageNet checkpoint the user downloads;
        # building must not need it (weights load in init_weights only).
        checkpoint = init_cfg['checkpoint']
        assert checkpoint.endswith('.pth'), name
        if not osp.exists(osp.join(ROOT, checkpoint)):
            model_cfg.backbone.pop('init_cfg')
    # Shipped configs use no deprecated key or name.
    assert 'mode' not in model_cfg.rc_cfg and 'ri' not in model_cfg.rc_cfg
    variant = VARIANTS[variant_of(name)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = MODELS.build(model_cfg)
    deprecated = [str(w.message) for w in caught
                  if issubclass(w.category, DeprecationWarning)
                  and 'one more release' in str(w.message)]
    assert not deprecated, (name, deprecated)
    model.eval()

    baseline = model_cfg.get('baseline')
    assert model.baseline == baseline, name
    assert model.tasks == TASK_SETS[layout], name
    rc_convs = [m for m in model.backbone.modules()
                if isinstance(m, RCConv2d)]
    adapters = [m for m in model.backbone.modules()
                if isinstance(m, RAConv2d)]
    options = conversion_options(cfg, name)
    # RC and the residual adapters convert with the identity init; RC+RI
    # and RC+RI+NFF with Response Initialization.
    assert options['ri'] == variant['ri'], name
    if baseline is None:
        # Stem + two 3x3 convs in each of the BasicBlocks (2-2-2-2 for
        # R-18, 3-4-6-3 for R-34): modulated (RC) or with an adapter.
        blocks = 8 if depth[1] == '18' else 16
        assert model.rc_config.method == variant['method'], name
        assert model.rc_config.nff == variant['nff'], name
        assert rc_adapter.list_tasks(model) == TASK_SETS[layout], name
        if variant['method'] == 'rc':
            assert len(rc_convs) == 1 + 2 * blocks, name
            assert not adapters, name
            assert all(c.nff == variant['nff'] for c in rc_convs), name
        else:
            assert len(adapters) == 1 + 2 * blocks, name
            assert not rc_convs, name
            mode = variant['method'][len('ra_'):]
            assert all(a.mode == mode for a in adapters), name
    else:
        assert baseline in ('finetune', 'shared'), name
        assert name.startswith(baseline + '_'), name
        assert not rc_convs and not adapters, name

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, mode='tensor')
    assert isinstance(out, dict), name
    assert list(out) == TASK_SETS[layout], name
    for task, value in out.items():
        channels = OUT_CHANNELS[task] or NUM_CLASSES[layout]
        assert value.shape == (1, channels, 64, 64), (name, task)
        assert torch.isfinite(value).all(), (name, task)
    if 'normals' in out:  # unit-normalized output
        norms = out['normals'].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def test_head_templates_are_shared_and_copied():
    """The dataset model files take their heads from one template file;
    each task gets its own copy (changing one head leaves the others)."""
    nyud = Config.fromfile(osp.join(
        CONFIG_DIR, '_base_', 'models', 'rc_deeplabv3plus_r18_nyud.py'))
    pascal = Config.fromfile(osp.join(
        CONFIG_DIR, '_base_', 'models', 'rc_deeplabv3plus_r18_pascal.py'))
    templates = nyud.mt_head_templates
    for task in ('normals', 'edge'):
        assert nyud.model.decode_heads[task] == templates[task]
        assert pascal.model.decode_heads[task] == templates[task]
    assert nyud.model.decode_heads.depth == templates.depth
    assert nyud.model.decode_heads.semseg.num_classes == 41
    assert pascal.model.decode_heads.semseg.num_classes == 21
    heads = nyud.model.decode_heads
    heads.semseg.channels = 7
    assert heads.edge.channels == templates.edge.channels == 256


def test_synthetic_configs_share_the_short_schedule():
    short = Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'schedules',
                                     'synthetic_short.py'))
    paper = Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'schedules',
                                     'paper_sgd.py'))
    assert short.train_cfg.max_iters == 300
    assert short.optim_wrapper.optimizer.lr == 0.02
    # Everything else is the paper's recipe.
    assert short.optim_wrapper.optimizer.momentum == \
        paper.optim_wrapper.optimizer.momentum
    assert short.optim_wrapper.constructor == paper.optim_wrapper.constructor
    for layout in TASK_SETS:
        cfg = Config.fromfile(osp.join(
            CONFIG_DIR, f'rc_r18_synthetic_{layout}.py'))
        for key in ('optim_wrapper', 'param_scheduler', 'train_cfg',
                    'default_hooks'):
            assert cfg[key] == short[key], (layout, key)


def _tiny_r18(cfg):
    """``cfg``'s model at 8 channels (same structure: the norms, their
    per-task copies and the heads' norms are all there)."""
    model_cfg = cfg.model
    model_cfg.backbone.update(stem_channels=8, base_channels=8)
    for head in model_cfg.decode_heads.values():
        head.update(in_channels=64, channels=8, c1_in_channels=8,
                    c1_channels=8)
    model_cfg.allow_random_bank = True
    return model_cfg


def _norms(model):
    """(name, module) of every BatchNorm-family module."""
    from torch.nn.modules.batchnorm import _BatchNorm
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _BatchNorm)]


@pytest.mark.parametrize('layout', sorted(TASK_SETS))
def test_multi_gpu_recipe_keeps_the_bank_and_syncs_per_task_norms(layout):
    """rc_r18_<layout>_4xb2.py: 4 x 2 images = the paper's batch of 8;
    otherwise rc_r18_<layout>.py (same backbone and rc_cfg, so the same
    banks). Under a launcher mmengine's Runner converts every BatchNorm with
    convert_sync_batchnorm(model, cfg.sync_bn) (wrap_model): the per-task
    copies the segmentor made become SyncBatchNorm each, still one per task
    with its own tensors, and training one task (in one process SyncBN
    computes as BatchNorm) changes that task's tensors only, under the same
    state-dict keys (same task files). Without a launcher the Runner reverts
    SyncBN to BatchNorm (revert_sync_batchnorm): a backbone built with
    norm_cfg SyncBN keeps its per-task copies, as _BatchNormXd, but would
    not share banks with the BN configs (its backbone config differs)."""
    from mmengine.model.utils import (convert_sync_batchnorm,
                                      revert_sync_batchnorm)
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from rc_adapter.core.layers import TaskSpecific
    from rc_adapter.mmseg.models.utils import backbone_architecture

    init_default_scope('mmseg')
    recipe = Config.fromfile(osp.join(CONFIG_DIR,
                                      f'rc_r18_{layout}_4xb2.py'))
    single = Config.fromfile(osp.join(CONFIG_DIR, f'rc_r18_{layout}.py'))
    assert recipe.sync_bn == 'torch'
    assert 'sync_bn' not in single
    assert recipe.train_dataloader.batch_size * 4 == \
        single.train_dataloader.batch_size == 8
    recipe_dict = recipe.to_dict()
    recipe_dict.pop('sync_bn')
    recipe_dict['train_dataloader']['batch_size'] = 8
    assert recipe_dict == single.to_dict()

    tasks = TASK_SETS[layout]
    model = MODELS.build(_tiny_r18(recipe))
    keys = {task: sorted(rc_adapter.task_state_dict(model, task))
            for task in tasks}
    model = convert_sync_batchnorm(model, recipe.sync_bn)
    norms = _norms(model)
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for _, m in norms)
    wrappers = [m for m in model.backbone.modules()
                if isinstance(m, TaskSpecific)
                and isinstance(m.base, nn.SyncBatchNorm)]
    assert len(wrappers) == 20  # stem BN + 2 per block + 3 downsample BNs
    for wrapper in wrappers:
        assert list(wrapper.tasks) == tasks
        copies = [wrapper.base] + list(wrapper.tasks.values())
        assert all(isinstance(c, nn.SyncBatchNorm) for c in copies)
        storages = {c.weight.data_ptr() for c in copies} | {
            c.running_mean.data_ptr() for c in copies}
        assert len(storages) == 2 * len(copies)  # nothing shared
    assert {t: sorted(rc_adapter.task_state_dict(model, t))
            for t in tasks} == keys

    # One training step of one task, in one process.
    trained = tasks[1]
    model.train_tasks = [trained]
    rc_adapter.set_trainable_tasks(model, [trained])
    model.train()
    before = {t: {k: v.clone() for k, v in
                  rc_adapter.task_state_dict(model, t).items()}
              for t in tasks}
    shared_before = {k: v.clone() for k, v in
                     rc_adapter.shared_state_dict(model.backbone).items()}
    gt = 'gt_parts_seg' if trained == 'human_parts' else 'gt_depth_map'
    label = (torch.randint(0, 7, (1, 32, 32)) if trained == 'human_parts'
             else torch.rand(1, 32, 32) + 0.5)
    samples = [SegDataSample(metainfo=dict(img_shape=(32, 32),
                                           pad_shape=(32, 32)),
                             **{gt: PixelData(data=label)})
               for _ in range(2)]
    losses = model.loss(torch.randn(2, 3, 32, 32), samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.step()
    for task in tasks:
        after = rc_adapter.task_state_dict(model, task)
        same = all(torch.equal(after[k], v)
                   for k, v in before[task].items())
        assert same == (task != trained), task
    # The trained task's SyncBN statistics moved.
    assert any(not torch.equal(v, before[trained][k])
               for k, v in rc_adapter.task_state_dict(model,
                                                      trained).items()
               if k.endswith('running_mean'))
    for key, value in rc_adapter.shared_state_dict(model.backbone).items():
        assert torch.equal(value, shared_before[key]), key

    # Single process, SyncBN in the backbone config itself.
    sync_cfg = Config.fromfile(osp.join(CONFIG_DIR, f'rc_r18_{layout}.py'))
    sync_cfg.model.backbone.norm_cfg = dict(type='SyncBN',
                                            requires_grad=True)
    sync_model = MODELS.build(_tiny_r18(sync_cfg))
    wrappers = [m for m in sync_model.backbone.modules()
                if isinstance(m, TaskSpecific)
                and isinstance(m.base, nn.SyncBatchNorm)]
    assert len(wrappers) == 20
    assert all(isinstance(c, nn.SyncBatchNorm) and c is not wrapper.base
               for wrapper in wrappers for c in wrapper.tasks.values())
    reverted = revert_sync_batchnorm(sync_model)
    backbone_norms = _norms(reverted.backbone)
    assert backbone_norms and not any(isinstance(m, nn.SyncBatchNorm)
                                      for _, m in backbone_norms)
    for wrapper in wrappers:
        copies = [wrapper.base] + list(wrapper.tasks.values())
        assert len({id(c) for c in copies}) == len(copies)
    assert backbone_architecture(sync_cfg.model.backbone) != \
        backbone_architecture(single.model.backbone)
