"""Runner glue: mixed precision on a CPU (bfloat16 autocast, no loss
scaling) for RC runs asking for mmengine's AmpOptimWrapper, and the hook
that stops a diverging run before it can become a task."""
import copy
import json
import os

import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmseg.structures import SegDataSample
from test_mmseg_habits import make_workspace

import rc_adapter as rc
from rc_adapter.core.errors import RCConfigError, RCError
from rc_adapter.mmseg.engine import (MTAmpOptimWrapper, NonFiniteLossError,
                                     RCRunner)

NO_GPU = not torch.cuda.is_available()


def _model(train_tasks):
    init_default_scope('mmseg')
    heads = dict(
        semseg=dict(type='MTDeepLabV3PlusHead', task_type='segmentation',
                    gt_field='gt_sem_seg', num_classes=5),
        depth=dict(type='MTDeepLabV3PlusHead', task_type='depth',
                   gt_field='gt_depth_map', num_classes=1,
                   loss_decode=dict(type='MaskedL1Loss')))
    for head in heads.values():
        head.update(in_channels=64, in_index=3, channels=8, c1_in_channels=8,
                    c1_channels=4, dilations=(1, 2),
                    norm_cfg=dict(type='BN', requires_grad=True))
    return MODELS.build(dict(
        type='RCMultiTaskSegmentor',
        data_preprocessor=dict(type='MTSegDataPreProcessor', mean=[0] * 3,
                               std=[255] * 3),
        backbone=dict(type='MTDeepLabResNet', depth=18, stem_channels=8,
                      base_channels=8, strides=(1, 2, 2, 1),
                      dilations=(1, 1, 1, 2), out_indices=(0, 1, 2, 3)),
        rc_cfg=dict(modulator='full'), decode_heads=heads,
        train_tasks=train_tasks, allow_random_bank=True))


def _batch(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        s = SegDataSample(metainfo=dict(img_shape=(size, size)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, size, size),
                                                    generator=g))
        s.set_data(dict(gt_depth_map=PixelData(
            data=torch.rand(1, size, size, generator=g) + 0.5)))
        samples.append(s)
    inputs = [torch.randint(0, 256, (3, size, size), generator=g,
                            dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=inputs, data_samples=samples)


def _amp_wrapper(model, **kwargs):
    return OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='TrainableOnlyOptimWrapperConstructor',
        optim_wrapper_cfg=dict(type='MTAmpOptimWrapper', optimizer=dict(
            type='SGD', lr=0.01, momentum=0.9), **kwargs)))(model)


@pytest.mark.skipif(not NO_GPU, reason='the CPU path of the wrapper')
def test_cpu_bf16_training_iteration_of_an_rc_segmentor():
    model = _model(train_tasks=['semseg'])
    wrapper = _amp_wrapper(model)
    assert isinstance(wrapper, MTAmpOptimWrapper)
    assert wrapper.loss_scaler is None and wrapper.cast_dtype == torch.bfloat16
    others = copy.deepcopy(rc.task_state_dict(model, 'depth'))
    shared = copy.deepcopy(rc.shared_state_dict(model))
    before = copy.deepcopy(rc.task_state_dict(model, 'semseg'))
    dtypes = []
    hook = model.backbone.layer1[0].conv1.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype))
    model.train()
    log = model.train_step(_batch(), wrapper)
    hook.remove()
    assert dtypes == [torch.bfloat16]  # the RC conv ran under autocast
    assert torch.isfinite(log['loss']) and log['loss'] > 0
    trained = rc.task_state_dict(model, 'semseg')
    assert all(v.dtype == before[k].dtype for k, v in trained.items())
    assert any(not torch.equal(before[k], trained[k]) for k in trained)
    # Nothing of the other task or of the shared bank moved.
    after = rc.task_state_dict(model, 'depth')
    assert all(torch.equal(others[k], after[k]) for k in others)
    now = rc.shared_state_dict(model)
    assert all(torch.equal(shared[k], now[k]) for k in shared)
    # Its state has no loss scaler; a GPU run's state still loads.
    state = wrapper.state_dict()
    assert 'loss_scaler' not in state
    wrapper.load_state_dict(dict(copy.deepcopy(state),
                                 loss_scaler={'scale': 1024.0}))


@pytest.mark.skipif(not NO_GPU, reason='the CPU path of the wrapper')
def test_cpu_amp_refuses_float16():
    model = _model(train_tasks=['semseg'])
    with pytest.raises(RCConfigError, match="dtype='bfloat16'"):
        _amp_wrapper(model, dtype='float16')


def test_non_finite_loss_hook_names_task_iteration_and_value():
    hook = HOOKS.build(dict(type='MTNonFiniteLossHook'))
    runner = type('Runner', (), {'iter': 6})()
    hook.after_train_iter(runner, 0, outputs={
        'loss': torch.tensor(1.5), 'semseg.loss_ce': torch.tensor(1.5),
        'semseg.acc_seg': torch.tensor(float('nan'))})  # not a loss
    with pytest.raises(NonFiniteLossError) as err:
        hook.after_train_iter(runner, 0, outputs={
            'loss': torch.tensor(float('inf')),
            'depth.loss_l1': torch.tensor(float('inf')),
            'edge.loss_bce': torch.tensor(0.3)})
    assert isinstance(err.value, RCError)
    message = str(err.value)
    assert 'iteration 7' in message and "task 'depth'" in message
    assert 'depth.loss_l1 = inf' in message and 'learning rate' in message


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp('engine'), 2)


def _manifest(bank):
    with open(os.path.join(bank, 'manifest.json')) as f:
        return json.load(f)


def test_a_diverging_run_stops_and_never_becomes_a_task(workspace):
    from rc_adapter.mmseg.apis import load_config, train_task
    cfg = load_config(workspace['config'],
                      work_dir=str(workspace['tmp'] / 'wd_nan'),
                      cfg_options={'optim_wrapper.optimizer.lr': 1e30,
                                   'train_cfg.max_iters': 4,
                                   'param_scheduler': []})
    before = _manifest(workspace['bank'])
    with pytest.raises(NonFiniteLossError,
                       match=r"iteration 2: .*task 'normals'.* = nan"):
        train_task(cfg, bank=workspace['bank'], task='normals')
    assert _manifest(workspace['bank']) == before
    assert not os.path.exists(workspace['tmp'] / 'wd_nan' / 'iter_2.pth')


def test_runner_adds_the_hook_once(monkeypatch):
    from mmengine.runner import Runner
    seen = []
    monkeypatch.setattr(Runner, 'register_hooks',
                        lambda self, default, custom: seen.append(custom))
    runner = RCRunner.__new__(RCRunner)
    user = [dict(type='MTNonFiniteLossHook'), dict(type='EmptyCacheHook')]
    runner.register_hooks(None, user)
    runner.register_hooks(None, None)
    assert seen[0] == user and user[1:] == [dict(type='EmptyCacheHook')]
    assert seen[1] == [dict(type='MTNonFiniteLossHook')]


def test_amp_optim_wrapper_config_trains_an_rc_task_on_a_cpu(workspace):
    """``optim_wrapper.type='AmpOptimWrapper'`` (what mmseg's --amp sets)
    trains an RC task under RCRunner on any device."""
    from rc_adapter.mmseg.apis import load_config, train_task
    cfg = load_config(workspace['config'],
                      work_dir=str(workspace['tmp'] / 'wd_amp'),
                      cfg_options={'optim_wrapper.type': 'AmpOptimWrapper'})
    metrics = train_task(cfg, bank=workspace['bank'], task='depth')
    assert metrics['rmse'] > 0
    assert 'depth' in _manifest(workspace['bank'])['tasks']


def test_runner_config_text_skips_yapf_and_loads_back(workspace,
                                                      monkeypatch):
    """RCRunner's config text (log, work-dir dump, checkpoints) is
    mmengine's layout without the yapf pass, which cost a fraction of a
    second of every run's start; it loads back to the same config, and the
    caller's config is not changed."""
    import mmengine.config.config as mmengine_config
    from mmengine.config import Config
    from mmengine.runner import Runner

    from rc_adapter.mmseg.apis import load_config
    cfg = load_config(workspace['config'],
                      work_dir=str(workspace['tmp'] / 'wd_text'))
    assert type(cfg) is Config
    calls = []
    real = mmengine_config.FormatCode
    monkeypatch.setattr(mmengine_config, 'FormatCode',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    built = []
    monkeypatch.setattr(Runner, '__init__',
                        lambda self, **kw: built.append(kw['cfg']))
    RCRunner.from_cfg(cfg)
    run_cfg = built[0]
    text = run_cfg.pretty_text
    assert calls == []
    assert run_cfg.to_dict() == cfg.to_dict()
    assert Config.fromstring(text, '.py').to_dict() == cfg.to_dict()
    assert copy.deepcopy(run_cfg).pretty_text == text  # Runner's own copy
    assert calls == []
    assert cfg.pretty_text != text and len(calls) == 1  # the caller's: yapf


def test_two_runs_started_in_the_same_second_log_apart(workspace,
                                                      monkeypatch):
    """mmengine names a run's logger and message hub after the config and
    the start time in seconds and reuses an instance of that name; two runs
    of one config started in the same second in one process must still
    each log into their own work_dir and history."""
    import time

    from rc_adapter.mmseg.apis import load_config
    monkeypatch.setattr(time, 'time', lambda: 1_800_000_000.0)
    runners = []
    for name in ('wd_same_second_a', 'wd_same_second_b'):
        cfg = load_config(workspace['config'],
                          work_dir=str(workspace['tmp'] / name))
        runners.append(RCRunner.from_cfg(cfg))
    first, second = runners
    assert first.experiment_name != second.experiment_name
    assert first.logger is not second.logger
    assert first.message_hub is not second.message_hub
    assert first.visualizer is not second.visualizer
    assert second.log_dir.startswith(str(workspace['tmp'] /
                                         'wd_same_second_b'))
    log_files = [h.baseFilename for h in second.logger.handlers
                 if hasattr(h, 'baseFilename')]
    assert log_files and all('wd_same_second_b' in f for f in log_files)
