"""The stages of ``make demo``, in one process.

Each stage calls the library function its tool calls, with the options the
tool would pass (the demo prints that command), so the demo is the
documented workflow without ~10 s of start-up per tool process:

=========================  ===============================================
stage                      library function (tool)
=========================  ===============================================
data                       ``rc_adapter.synthetic.generate``
                           (``tools/make_synthetic.py``)
backbone                   :func:`rc_adapter.demo.pretrain.asset_to_checkpoint`
                           of the shipped asset, or ``pretrain_proxy``
                           (``tools/pretrain_proxy.py``) with ``--pretrain``
bank                       ``rc_adapter.mmseg.convert.convert_checkpoint``
                           (``tools/convert_to_rc.py``)
RC: add a task             ``apis.train_task`` (``tools/add_task.py``)
RC: evaluate the bank      ``apis.evaluate`` (``tools/test.py``)
fine-tuning (both kinds)   ``apis.train`` (``tools/train.py``)
analyses                   ``rc_adapter.mmseg.analysis``
                           (``tools/analyze.py``)
=========================  ===============================================

What the functions here add to the tools is the demo's protocol: which
runs, in which order, with which schedule (:data:`DEFAULT_SCHEDULES`), the
check that RC's earlier tasks stay bit-identical at every stage
(:func:`check_unchanged`), and the prediction panels.

``tools/ablation.py`` can reuse the same pieces: :func:`prepare_data`,
:func:`backbone_checkpoint`, :func:`convert_bank`, :func:`add_rc_task`,
:func:`evaluate_bank`, :func:`train_finetune` and :data:`DATA`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import os.path as osp
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ..utils.io import save_json
from .stagelog import StageLog, tool_command

__all__ = ['ROOT', 'RC_CONFIG', 'FT_CONFIG', 'ASSET', 'TASKS', 'DATA',
           'QUICK_DATA', 'Schedule', 'DEFAULT_SCHEDULES', 'QUICK_SCHEDULES',
           'rel', 'prepare_data', 'backbone_checkpoint', 'convert_bank',
           'schedule_options', 'add_rc_task', 'evaluate_bank',
           'train_finetune', 'bank_record', 'task_outputs',
           'check_unchanged', 'probe_samples', 'draw_panels',
           'settings_record', 'MTDemoMetricsCaptureHook']

#: The repository (configs, assets and tools live there).
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RC_CONFIG = osp.join(ROOT, 'mmseg_configs', 'rc_r18_synthetic_nyud.py')
FT_CONFIG = osp.join(ROOT, 'mmseg_configs', 'finetune_r18_synthetic_nyud.py')
#: The shipped proxy-pretrained backbone (assets/README.md).
ASSET = osp.join(ROOT, 'assets', 'r18_half_proxy.safetensors')
#: The tasks, in the order they are added.
TASKS = ('semseg', 'depth', 'normals', 'edge')
#: The demo's synthetic benchmark (``rc_adapter.synthetic.generate``); the
#: ``pretrain`` split is what ``--pretrain`` trains the backbone on.
DATA = dict(layout='nyud', num_train=200, num_val=30, size=(128, 128),
            seed=0, extra_splits={'pretrain': 300})
#: ``--quick``: a few tiny images (a smoke test, not a result).
QUICK_DATA = dict(layout='nyud', num_train=16, num_val=6, size=(64, 64),
                  seed=0, extra_splits={'pretrain': 32})


@dataclass(frozen=True)
class Schedule:
    """One task's training: SGD iterations (batch 8, poly decay to 0) and
    the peak learning rate."""

    iters: int
    lr: float


#: Per method (``rc``: the RC bank; ``finetune``: every plain fine-tuned
#: network, single-task and sequential) and task.
DEFAULT_SCHEDULES = {
    'rc': {t: Schedule(200, 0.02) for t in TASKS},
    'finetune': {t: Schedule(200, 0.02) for t in TASKS},
}
QUICK_SCHEDULES = {
    method: {t: Schedule(4, 0.02) for t in TASKS}
    for method in ('rc', 'finetune')}


def rel(path: str) -> str:
    """``path`` relative to the repository when inside it (for the printed
    commands, which run from the repository)."""
    path = osp.abspath(path)
    inside = osp.relpath(path, ROOT)
    return path if inside.startswith('..') else inside


# -- data and backbone ------------------------------------------------------
def prepare_data(root: str, params: Mapping[str, Any], log: StageLog
                 ) -> bool:
    """The synthetic benchmark at ``root``, generated unless it is already
    there with these parameters.

    Returns:
        True when it was reused.
    """
    from ..synthetic import generate, is_current
    params = dict(params)
    command = tool_command(
        'tools/make_synthetic.py', '--layout', params['layout'], '--out',
        rel(root), '--num-train', params['num_train'], '--num-val',
        params['num_val'], '--size', *params['size'], '--seed',
        params['seed'], *[a for name, n in params['extra_splits'].items()
                          for a in ('--extra-split', f'{name}:{n}')])
    kwargs = {k: v for k, v in params.items() if k != 'layout'}
    with log.stage('data', command):
        if is_current(root, params['layout'], **kwargs):
            print(f'{rel(root)} is up to date (same parameters); reused')
            return True
        result = generate(params['layout'], root, **kwargs)
        print(f'generated {rel(root)} in {result["seconds"]:.1f} s')
        return False


def backbone_checkpoint(work: str, data: str, log: StageLog, *,
                        pretrain_iters: Optional[int] = None,
                        seed: int = 0) -> str:
    """The pretrained backbone as a torchvision-format float32 ``.pth``
    (what ``convert_to_rc`` and mmengine's ``init_cfg`` read).

    Without ``pretrain_iters``: the shipped asset
    (:data:`ASSET`, written out by ``asset_to_checkpoint``). With it: a
    backbone proxy-pretrained from scratch on the data's ``pretrain``
    split for that many iterations (``tools/pretrain_proxy.py``'s
    defaults otherwise).
    """
    if pretrain_iters is None:
        from .pretrain import asset_to_checkpoint
        out = osp.join(work, 'backbone_r18_half_proxy.pth')
        with log.stage('backbone: the shipped asset as a .pth'):
            asset_to_checkpoint(ASSET, out)
            print(f'wrote {rel(out)} from {rel(ASSET)}')
        return out
    import torch
    from mmseg.registry import MODELS

    from ..mmseg.apis import load_config
    from ..mmseg.models.utils import quiet_init_weights
    from .pretrain import classification_backbone_cfg, pretrain_proxy
    out = osp.join(work, 'pretrained_r18_half.pth')
    command = tool_command('tools/pretrain_proxy.py', rel(RC_CONFIG),
                           '--data-root', rel(data), '--out', rel(out),
                           '--iters', pretrain_iters, '--seed', seed)
    with log.stage('backbone: proxy pretraining from scratch', command):
        torch.manual_seed(seed)  # the backbone's random init too
        cfg = load_config(RC_CONFIG, data_root=data)
        backbone_cfg = dict(cfg.model.backbone)
        backbone_cfg.pop('init_cfg', None)
        backbone = MODELS.build(classification_backbone_cfg(backbone_cfg))
        quiet_init_weights(backbone)
        pretrain_proxy(backbone, data, out, iters=pretrain_iters, seed=seed,
                       log=print)
    return out


# -- the RC bank -------------------------------------------------------------
def convert_bank(checkpoint: str, bank: str, data: str, log: StageLog, *,
                 options: Optional[Mapping[str, Any]] = None,
                 calib_size: Optional[Sequence[int]] = None) -> str:
    """A new bank from ``checkpoint`` with Response Initialization on the
    train split (the config's ``convert_cfg``; ``options`` as
    ``--cfg-options``)."""
    from ..mmseg.apis import load_config
    from ..mmseg.convert import convert_checkpoint
    size = ['--calib-size', *calib_size] if calib_size else []
    command = tool_command('tools/convert_to_rc.py', rel(RC_CONFIG),
                           rel(checkpoint), '--out', rel(bank),
                           '--data-root', rel(data), *size, '--force',
                           options=dict(options or {}))
    with log.stage('RC: convert the backbone into a bank (RI)', command):
        cfg = load_config(RC_CONFIG, data_root=data,
                          cfg_options=dict(options or {}),
                          require_rc_model=False)
        convert_checkpoint(cfg, checkpoint, bank, force=True,
                           progress=False, calib_size=calib_size)
    return bank


def schedule_options(task: str, schedule: Schedule, seed: int
                     ) -> dict[str, Any]:
    """The ``--cfg-options`` of one task's run: its length (through the
    config's ``task_schedules``, which also ends the poly decay there),
    its learning rate and the seed."""
    return {f'task_schedules.{task}.max_iters': schedule.iters,
            'optim_wrapper.optimizer.lr': schedule.lr,
            'randomness.seed': seed}


def add_rc_task(bank: str, task: str, schedule: Schedule, data: str,
                work_dir: str, log: StageLog, *, seed: int = 0,
                options: Optional[Mapping[str, Any]] = None
                ) -> dict[str, float]:
    """Trains ``task`` into the bank (``tools/add_task.py``); ``options``
    are more ``--cfg-options``.

    Returns:
        The task's validation metrics at the end of training.
    """
    from ..mmseg.apis import load_config, train_task
    opts = dict(schedule_options(task, schedule, seed), **(options or {}))
    command = tool_command('tools/add_task.py', rel(RC_CONFIG), '--bank',
                           rel(bank), '--task', task, '--data-root',
                           rel(data), '--work-dir', rel(work_dir),
                           options=opts)
    with log.stage(f'RC: add {task}', command):
        cfg = load_config(RC_CONFIG, data_root=data, work_dir=work_dir,
                          cfg_options=opts)
        return train_task(cfg, bank=bank, task=task, config_path=RC_CONFIG,
                          overrides=opts)


def evaluate_bank(bank: str, data: str, work_dir: str, metrics_out: str,
                  log: StageLog, *, name: str = 'RC: evaluate the bank',
                  options: Optional[Mapping[str, Any]] = None
                  ) -> dict[str, dict[str, float]]:
    """Evaluates every task of the bank (``tools/test.py --bank``); the
    metrics also go to ``metrics_out`` as the tool writes them."""
    from ..mmseg.apis import evaluate, load_config
    command = tool_command('tools/test.py', rel(RC_CONFIG), '--bank',
                           rel(bank), '--data-root', rel(data),
                           '--work-dir', rel(work_dir), '--metrics-out',
                           rel(metrics_out), options=dict(options or {}))
    with log.stage(name, command):
        cfg = load_config(RC_CONFIG, data_root=data, work_dir=work_dir,
                          cfg_options=dict(options or {}))
        return evaluate(cfg, bank=bank, metrics_out=metrics_out)['metrics']


# -- the plain baselines -----------------------------------------------------
def train_finetune(name: str, task: str, tasks: Sequence[str],
                   schedule: Schedule, data: str, work_dir: str,
                   log: StageLog, *, init: Optional[str] = None,
                   load_from: Optional[str] = None, seed: int = 0,
                   options: Optional[Mapping[str, Any]] = None
                   ) -> tuple[dict[str, dict[str, float]], str]:
    """Fine-tunes a plain network on ``task`` (``tools/train.py`` with the
    fine-tuning config), its heads for ``tasks`` built.

    A single-task network: ``tasks=[task]`` and ``init`` the pretrained
    backbone. A stage of sequential fine-tuning: ``tasks`` every task so
    far and ``load_from`` the previous stage's checkpoint (its backbone and
    heads; the new head starts at random).

    ``options`` are more ``--cfg-options``.

    Returns:
        ``(metrics of every task of tasks after training, the checkpoint)``.
    """
    from ..mmseg.apis import load_config, train
    opts: dict[str, Any] = {'model.tasks': list(tasks),
                            'model.train_tasks': [task]}
    if init is not None:
        opts['model.backbone.init_cfg.type'] = 'Pretrained'
        opts['model.backbone.init_cfg.checkpoint'] = init
    if load_from is not None:
        opts['load_from'] = load_from
    opts.update(schedule_options(task, schedule, seed))
    opts.update(options or {})
    command = tool_command('tools/train.py', rel(FT_CONFIG), '--data-root',
                           rel(data), '--work-dir', rel(work_dir),
                           options={k: (rel(v) if k in (
                               'load_from',
                               'model.backbone.init_cfg.checkpoint')
                               else v) for k, v in opts.items()})
    captured = osp.join(work_dir, 'final_metrics.json')
    with log.stage(name, command):
        cfg = load_config(FT_CONFIG, data_root=data, work_dir=work_dir,
                          cfg_options=opts)
        # The run's final validation covers every task of `tasks` (as the
        # tool's log shows); keep all of them, not only the trained one's.
        if osp.exists(captured):
            os.remove(captured)
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
            dict(type='MTDemoMetricsCaptureHook', out=captured)]
        train(cfg, config_path=FT_CONFIG, overrides=opts)
    from ..mmseg.apis.evaluate import task_metrics
    with open(captured) as f:
        metrics = json.load(f)
    checkpoint = osp.join(work_dir, f'iter_{schedule.iters}.pth')
    return {t: task_metrics(metrics, t) for t in tasks}, checkpoint


@HOOKS.register_module()
class MTDemoMetricsCaptureHook(Hook):
    """Writes the metrics of every validation to ``out`` (JSON; the last
    validation's stay): a fine-tuning run's final validation covers every
    task the network has a head for, while ``apis.train`` returns only the
    trained task's."""

    priority = 'VERY_LOW'

    def __init__(self, out: str) -> None:
        self.out = out

    def after_val_epoch(self, runner, metrics=None) -> None:
        save_json(self.out, {k: float(v) for k, v in (metrics or {}).items()})


# -- zero interference, checked ----------------------------------------------
def bank_record(bank: str) -> dict[str, Any]:
    """What identifies the bank's contents: the shared file's and each
    task's current file and sha256 (from the verified manifest)."""
    from ..core.bank import TaskBank
    manifest = TaskBank(bank).manifest()
    return dict(shared=manifest['shared']['sha256'],
                tasks={t: dict(file=e['file'], sha256=e['sha256'])
                       for t, e in manifest['tasks'].items()})


def probe_samples(data: str, count: int) -> tuple[list, list[str]]:
    """``count`` validation images through the RC config's pipeline
    (evenly spread, first and last included), with their file names."""
    import numpy as np
    from mmseg.registry import DATASETS

    from ..mmseg.apis import load_config
    cfg = load_config(RC_CONFIG, data_root=data)
    dataset = DATASETS.build(copy.deepcopy(cfg.val_dataloader.dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round()
                        .astype(int))
    samples = [dataset[int(i)] for i in indices]
    return samples, [s['data_samples'].metainfo['img_path']
                     for s in samples]


def _bank_model(bank: str, data: str, tasks: Sequence[str]):
    from ..mmseg.analysis import build_segmentor
    from ..mmseg.apis import configure_run, load_config
    cfg = load_config(RC_CONFIG, data_root=data)
    configure_run(cfg, tasks=list(tasks), train_tasks=[], bank=bank)
    return build_segmentor(cfg)


def task_outputs(bank: str, data: str, samples: Sequence[Any],
                 tasks: Sequence[str]) -> dict[str, Any]:
    """Each task's raw output (after its output activation, at the input
    size) for ``samples``, from a model built on the bank as a user's
    would be."""
    import torch
    from mmengine.dataset import pseudo_collate
    model = _bank_model(bank, data, tasks)
    with torch.no_grad():
        batch = model.data_preprocessor(pseudo_collate(list(samples)), False)
        outputs = model(batch['inputs'], batch['data_samples'],
                        mode='tensor')
    return {t: outputs[t].detach().clone() for t in tasks}


def _digest(tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def check_unchanged(stage: str, before: Mapping[str, Any],
                    after: Mapping[str, Any], tasks: Sequence[str]
                    ) -> dict[str, Any]:
    """Checks that ``tasks`` are bit-identical between two moments of the
    bank: same shared file and task files (sha256), same outputs (every
    element equal), same metrics (exactly equal).

    Args:
        stage: The stage's name (in the error).
        before, after: ``{'record': bank_record(...), 'outputs': {task:
            tensor}, 'metrics': {task: {metric: value}}}``.
        tasks: The tasks that must not have changed.

    Returns:
        What was compared (for ``results.json``).

    Raises:
        AssertionError: anything differs (interference: a bug).
    """
    import torch
    problems = []
    if before['record']['shared'] != after['record']['shared']:
        problems.append('the shared file changed')
    for task in tasks:
        if before['record']['tasks'][task] != after['record']['tasks'][task]:
            problems.append(f'{task}: its task file changed')
        if not torch.equal(before['outputs'][task], after['outputs'][task]):
            diff = (before['outputs'][task] - after['outputs'][task]).abs()
            problems.append(f'{task}: outputs differ (max |delta| '
                            f'{diff.max().item():.3g})')
        if before['metrics'][task] != after['metrics'][task]:
            problems.append(f'{task}: metrics differ ('
                            f'{before["metrics"][task]} vs '
                            f'{after["metrics"][task]})')
    if problems:
        raise AssertionError(f'after {stage}, earlier RC tasks changed: '
                             + '; '.join(problems))
    return dict(stage=stage, tasks=list(tasks), shared_file=True,
                task_files=True, outputs_equal=True, metrics_equal=True,
                output_sha256={t: _digest(after['outputs'][t])
                               for t in tasks})


# -- pictures ------------------------------------------------------------------
def draw_panels(bank: str, data: str, samples: Sequence[Any],
                names: Sequence[str], out_dir: str, *,
                max_side: int = 256) -> list[str]:
    """One panel per sample (input; ground truth and prediction of every
    bank task) from the bank as it is, drawn with
    ``rc_adapter.mmseg.visualization``.

    Returns:
        The PNG files written (``<out_dir>/predictions_<image>.png``).
    """
    import mmcv
    import torch
    from mmengine.dataset import pseudo_collate

    from ..core.bank import TaskBank
    from ..mmseg.visualization import (draw_panel, sample_task_views,
                                       save_panel)
    tasks = [t for t in TASKS if t in TaskBank(bank).tasks()]
    model = _bank_model(bank, data, tasks)
    with torch.no_grad():
        predicted = model.test_step(pseudo_collate(
            [copy.deepcopy(s) for s in samples]))
    files = []
    for sample, name in zip(predicted, names):
        image = mmcv.imread(sample.metainfo['img_path'],
                            channel_order='rgb')
        stem = osp.splitext(osp.basename(name))[0]
        panel = draw_panel(image, sample_task_views(
            sample, model.task_meta, model.dataset_meta),
            title=f'{stem}: RC bank after the last task', max_side=max_side)
        path = osp.join(out_dir, f'predictions_{stem}.png')
        save_panel(panel, path)
        files.append(path)
    return files


def settings_record(schedules: Mapping[str, Mapping[str, Schedule]],
                    **extra: Any) -> dict[str, Any]:
    """The demo's settings for ``results.json``."""
    return dict(schedules={m: {t: asdict(s) for t, s in per.items()}
                           for m, per in schedules.items()}, **extra)
