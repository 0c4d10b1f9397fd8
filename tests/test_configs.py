"""Every shipped ResNet config under mmseg_configs/ (not _base_): loads with
mmengine, imports rc_adapter, builds through mmseg MODELS without a
deprecation warning, has RC convs exactly when model.baseline is None,
defines the dataset's task set, has valid conversion options, and returns
one output per task at the input's size in tensor mode. The transformer and
ConvNeXt configs are checked in tests/test_configs_transformers.py; every
config is in one of the two."""
import glob
import os
import os.path as osp
import re
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import rc_adapter  # noqa: F401  (before mmseg.models: mmcv.ops fallback)
from rc_adapter.core import RCConv2d
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


def test_config_set_is_complete():
    names = {osp.basename(p) for p in CONFIGS}
    # The minimum: RC for both datasets and depths, the baselines
    # and the synthetic configs, for both layouts.
    for layout in TASK_SETS:
        for depth in ('r18', 'r34'):
            assert f'rc_{depth}_{layout}.py' in names
        for prefix in ('finetune', 'shared', 'rc_nori', 'rc_nonff'):
            assert f'{prefix}_r18_{layout}.py' in names
        assert f'rc_r18_synthetic_{layout}.py' in names


def test_every_config_is_tested():
    """Each shipped config is either a ResNet config (this file) or a
    transformer/ConvNeXt config (test_configs_transformers.py)."""
    from test_configs_transformers import CONFIGS as TRANSFORMER_CONFIGS
    assert sorted(CONFIGS + TRANSFORMER_CONFIGS) == ALL_CONFIGS
    assert not set(CONFIGS) & set(TRANSFORMER_CONFIGS)


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
    options = conversion_options(cfg, name)
    # The RI ablation converts with the identity init; every other config
    # with Response Initialization.
    assert options['ri'] == (not name.startswith('rc_nori_')), name
    if baseline is None:
        # Stem + two 3x3 convs in each of the BasicBlocks (2-2-2-2 for
        # R-18, 3-4-6-3 for R-34).
        blocks = 8 if depth[1] == '18' else 16
        assert len(rc_convs) == 1 + 2 * blocks, name
        assert rc_adapter.list_tasks(model) == TASK_SETS[layout], name
        nff = model_cfg.rc_cfg.get('nff', True)
        assert all(c.nff == nff for c in rc_convs), name
    else:
        assert baseline in ('finetune', 'shared'), name
        assert name.startswith(baseline + '_'), name
        assert not rc_convs, name

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
