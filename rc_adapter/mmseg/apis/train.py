"""Training: a config's tasks, or one new task into a task bank.

A run that does not finish well never writes to the bank: a non-finite
loss stops it (``MTNonFiniteLossHook``, which ``RCRunner`` adds to every
run), the bank refuses non-finite tensors, and before the first iteration
the run checks what it would otherwise find only at its end -- that the
bank accepts a file of the task's size and that every validation (and
training) annotation loads.
"""
from __future__ import annotations

import datetime
import os.path as osp
import warnings
from typing import Any, Mapping, Optional

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ... import core as rc
from ...core.errors import BankError, RCConfigError, ResourceError
from ...core.version import __version__
from ..engine import RCRunner
from ..models.task_meta import config_class_meta
from .cli import data_errors
from .config import (check_tasks, component_errors, config_heads,
                     configure_run, open_bank)
from .evaluate import task_metrics
from .preflight import (check_bank_writable, check_run_annotations,
                        estimate_task_file_bytes)
from .warm_start import AUTO, head_task_type, warm_start_hook

__all__ = ['train', 'train_task', 'add_task', 'apply_task_schedule',
           'SCHEDULE_KEYS', 'AUTO']

#: Keys of one entry of the config's ``task_schedules``.
SCHEDULE_KEYS = ('max_iters', 'val_interval', 'checkpoint_interval')


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


# -- per-task schedules -------------------------------------------------
def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RCConfigError(f'{key} must be a positive integer, got '
                            f'{value!r}')
    return value


def _overridden(overrides: Optional[Mapping[str, Any]], *prefixes: str
                ) -> bool:
    """Whether a ``--cfg-options`` key sets one of ``prefixes`` (or a
    parent of it)."""
    for key in overrides or {}:
        for prefix in prefixes:
            if key == prefix or key.startswith(prefix + '.') or \
                    prefix.startswith(key + '.'):
                return True
    return False


def apply_task_schedule(cfg: Config, task: str,
                        overrides: Optional[Mapping[str, Any]] = None
                        ) -> Optional[dict[str, int]]:
    """Applies ``cfg.task_schedules[task]`` to the run's schedule.

    ``task_schedules = dict(human_parts=dict(max_iters=13020))`` gives one
    task its own length. With a new ``max_iters``:

    * ``train_cfg.max_iters`` becomes it;
    * every iteration-based ``param_scheduler`` entry whose ``end`` was the
      old ``max_iters`` (the PolyLR decay) ends there too;
    * ``train_cfg.val_interval`` and ``default_hooks.checkpoint.interval``
      follow it when they were the old ``max_iters`` (or more), else stay
      (at most the new length).

    ``val_interval`` and ``checkpoint_interval`` in the entry set those
    two directly. Settings the user gave with ``--cfg-options`` win: a
    part of the schedule whose config key ``overrides`` sets is skipped
    (an overridden ``train_cfg.max_iters`` also leaves the decay and the
    intervals to the config and the user).

    Args:
        cfg: The config (changed in place).
        task: The task the run trains alone.
        overrides: The ``--cfg-options`` already merged into ``cfg``.

    Returns:
        The values applied (``max_iters``, ``val_interval``,
        ``checkpoint_interval``), or None when the config has no schedule
        for ``task``.

    Raises:
        RCConfigError: a malformed ``task_schedules`` (the key is named).
    """
    schedules = cfg.get('task_schedules') or {}
    if not isinstance(schedules, Mapping):
        raise RCConfigError(f'task_schedules must be a dict of task -> '
                            f'dict({", ".join(SCHEDULE_KEYS)}), got '
                            f'{schedules!r}')
    unknown_tasks = sorted(set(schedules) - set(config_heads(cfg)))
    if unknown_tasks:
        raise RCConfigError(f'task_schedules names task(s) {unknown_tasks} '
                            f'without a decode head; the config has heads '
                            f'for {sorted(config_heads(cfg))}')
    schedule = schedules.get(task)
    if not schedule:
        return None
    if not isinstance(schedule, Mapping):
        raise RCConfigError(f'task_schedules.{task} must be a dict, got '
                            f'{schedule!r}')
    unknown = sorted(set(schedule) - set(SCHEDULE_KEYS))
    if unknown:
        raise RCConfigError(f'task_schedules.{task}: unknown key(s) '
                            f'{unknown}; known: {list(SCHEDULE_KEYS)}')
    values = {k: _positive_int(v, f'task_schedules.{task}.{k}')
              for k, v in schedule.items()}
    train_cfg = cfg.setdefault('train_cfg', {})
    old_max = train_cfg.get('max_iters')
    new_max = old_max
    if 'max_iters' in values and not _overridden(
            overrides, 'train_cfg.max_iters'):
        new_max = values['max_iters']
        train_cfg['max_iters'] = new_max
        if 'max_iters' in cfg:
            cfg.max_iters = new_max
        if not _overridden(overrides, 'param_scheduler'):
            schedulers = cfg.get('param_scheduler') or []
            if isinstance(schedulers, Mapping):
                schedulers = [schedulers]
            for scheduler in schedulers:
                if not scheduler.get('by_epoch', True) and \
                        scheduler.get('end') == old_max:
                    scheduler['end'] = new_max

    def follow(current: Optional[int]) -> Optional[int]:
        """An interval after the length changed from old_max to new_max."""
        if current is None or new_max == old_max:
            return current
        if old_max is not None and current >= old_max:
            return new_max
        return min(current, new_max)

    applied = dict(max_iters=new_max)
    if not _overridden(overrides, 'train_cfg.val_interval'):
        interval = values.get('val_interval',
                              follow(train_cfg.get('val_interval')))
        if interval is not None:
            train_cfg['val_interval'] = interval
    applied['val_interval'] = train_cfg.get('val_interval')
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if checkpoint is not None and not _overridden(
            overrides, 'default_hooks.checkpoint.interval'):
        interval = values.get('checkpoint_interval',
                              follow(checkpoint.get('interval')))
        if interval is not None:
            checkpoint['interval'] = interval
    if checkpoint is not None:
        applied['checkpoint_interval'] = checkpoint.get('interval')
    return applied


# -- the run ------------------------------------------------------------
class _FinalMetrics(Hook):
    """Remembers the last validation's metrics and iteration, so a run
    that validated at its last iteration is not validated again."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.metrics: Optional[dict] = None
        self.iteration: Optional[int] = None

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = dict(metrics or {})
        self.iteration = runner.iter


def _task_info(cfg: Config, model: torch.nn.Module, task: str,
               metrics: dict[str, float],
               config_path: Optional[str]) -> dict[str, Any]:
    head = cfg.model.decode_heads[task]
    # Class names and colours travel with the task (init_model on the bank
    # names the classes as the data the task was trained on did).
    classes, palette = config_class_meta(cfg).get(task, (None, None))
    return dict(
        type=head_task_type(model, task) or head.get('task_type'),
        classes=list(classes) if classes else None,
        palette=palette,
        head=dict(type=head.get('type'),
                  num_classes=head.get('num_classes'),
                  gt_field=head.get('gt_field')),
        metrics=metrics,
        params=rc.task_parameter_count(model, task),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        tool_version=__version__,
        config=osp.basename(config_path) if config_path else None,
        iterations=cfg.get('train_cfg', {}).get('max_iters'))


def train(cfg: Config, *, bank: Optional[str] = None, resume: bool = False,
          replace: bool = False, config_path: Optional[str] = None,
          init_from: Optional[str] = None,
          overrides: Optional[Mapping[str, Any]] = None
          ) -> dict[str, dict[str, float]]:
    """Trains the config's ``train_tasks``.

    With ``bank`` the model starts from the bank's shared state (filter
    banks, RI base state) and each trained task is written to the bank
    (rank 0 only) with its validation metrics; nothing else in the bank is
    touched.

    Before the first iteration: the validation and training annotations of
    the trained tasks are checked (headers), and with ``bank`` the bank
    must accept a file of each task's size (permissions, free space). A
    non-finite loss stops the run (``MTNonFiniteLossHook``, in every
    ``RCRunner``). A run that trains one task applies the
    config's ``task_schedules`` entry for it
    (:func:`apply_task_schedule`).

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`
            (changed in place).
        bank: Task bank folder.
        resume: Resume from the latest checkpoint in the work dir.
        replace: Retrain tasks the bank already holds.
        config_path: The config's file name, recorded in the bank.
        init_from: Warm start (one train task, with ``bank``): a stored
            task, or ``'auto'``; see :func:`train_task`.
        overrides: The ``--cfg-options`` already merged into ``cfg``
            (they win over ``task_schedules``).

    Returns:
        The final validation metrics per trained task.

    Raises:
        UnknownTaskError: a train task has no decode head, or ``init_from``
            names a task the bank does not hold.
        BankError: the bank is missing or damaged, or already holds a train
            task (without ``replace``).
        AnnotationError: a label or image of the splits does not load.
        ResourceError: the bank is not writable or its disk lacks room (the
            bank is unchanged).
        NonFiniteLossError: the loss became non-finite (an ``RCError``
            naming task, iteration and value); nothing is written.
    """
    tasks = list(cfg.model.get('tasks') or config_heads(cfg))
    train_tasks = list(cfg.model.get('train_tasks') or tasks)
    check_tasks(cfg, train_tasks, 'train task')
    if init_from is not None and (bank is None or len(train_tasks) != 1):
        raise RCConfigError('init_from (warm start) needs a bank and '
                            'exactly one train task')
    schedule = apply_task_schedule(cfg, train_tasks[0], overrides) \
        if len(train_tasks) == 1 else None
    task_bank = warm = None
    if bank is not None:
        task_bank = open_bank(bank)
        task_bank.verify()
        existing = [t for t in train_tasks if t in task_bank.tasks()]
        if existing and not replace:
            raise BankError(
                f'task(s) {existing} already exist in the bank {bank}; pass '
                f'--replace to train them again')
        warm = warm_start_hook(task_bank, train_tasks[0], init_from,
                               cfg.get('warm_start'))
        tasks = train_tasks
    configure_run(cfg, tasks=tasks, train_tasks=train_tasks, bank=bank)
    check_run_annotations(cfg, train_tasks)
    cfg.resume = resume
    if cfg.get('launcher', 'none') == 'pytorch' and \
            not torch.cuda.is_available():
        _setup_cpu_distributed(cfg)
    with component_errors():
        runner = RCRunner.from_cfg(cfg)
    model = _unwrap(runner.model)
    if task_bank is not None:
        check_bank_writable(task_bank, sum(
            estimate_task_file_bytes(rc.task_state_dict(model, t))
            for t in train_tasks))
    final = _FinalMetrics()
    runner.register_hook(final)
    if warm is not None:
        runner.register_hook(warm)
    with data_errors(), component_errors():
        runner.train()
        if not cfg.get('val_dataloader'):
            metrics = {}
        elif final.metrics is not None and final.iteration == runner.iter:
            metrics = final.metrics
        else:
            metrics = runner.val()
    per_task = {t: task_metrics(metrics or {}, t) for t in train_tasks}
    if task_bank is not None and is_main_process():
        for task in train_tasks:
            info = _task_info(cfg, model, task, per_task[task], config_path)
            info['init_from'] = warm.record if warm is not None else \
                dict(task=None)
            if schedule is not None:
                info['schedule'] = schedule
            _write(task_bank, task, model, info, replace)
    return per_task


def _write(task_bank: rc.TaskBank, task: str, model: torch.nn.Module,
           info: dict[str, Any], replace: bool) -> None:
    """Commits ``task``; a refused write says how to keep the run."""
    try:
        task_bank.write_task(task, rc.task_state_dict(model, task),
                             info=info, replace=replace)
    except ResourceError as err:
        error = ResourceError(
            f'{err}; the trained weights are in the work dir\'s last '
            f'checkpoint: once the bank is writable, rerun the same command '
            f'with --resume to store the task without training it again')
        error.errno = err.errno
        raise error from err
    print(f'wrote task {task!r} to {task_bank.path}')


def _setup_cpu_distributed(cfg: Config) -> None:
    """DDP on CPUs (gloo): mmengine's launcher insists on CUDA devices, so
    start the process group here and wrap without ``device_ids``."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        # device_ids=None: CPU modules (mmengine would pass LOCAL_RANK).
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel',
                                     device_ids=None,
                                     broadcast_buffers=False,
                                     find_unused_parameters=False)


def train_task(cfg: Config, *, bank: str, task: str, replace: bool = False,
               resume: bool = False, config_path: Optional[str] = None,
               init_from: Optional[str] = None,
               overrides: Optional[Mapping[str, Any]] = None
               ) -> dict[str, float]:
    """Trains exactly ``task`` and stores it in the bank.

    Nothing else in the bank is touched (the other tasks' files, the shared
    file). This is ``tools/add_task.py``; the model-level counterpart is
    :func:`rc_adapter.add_task` (which adds a task to a network in memory).

    The task starts from the bank's base state, or with ``init_from`` from
    a stored task's tensors (backbone modulators and norms; the decode head
    where the task types agree, tensor by tensor where shapes agree):
    ``init_from=TASK`` names it, ``init_from='auto'`` trains a few steps
    from each stored task and from the base state on the same training
    batches and takes the one with the lowest loss
    (:mod:`~rc_adapter.mmseg.apis.warm_start`; the config key
    ``warm_start = dict(score_steps=5, score_batches=2, candidates=None)``
    sets how many, and which stored tasks are scored).
    The source is read from the bank and copied; it is never trained or
    rewritten. The task's info records where it started (``init_from``)
    and the schedule applied from ``task_schedules``.

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`.
        bank: Task bank folder.
        task: The task to train (it needs a decode head in the config).
        replace: Retrain a task the bank already holds.
        resume: Resume from the latest checkpoint in the work dir.
        config_path: The config's file name, recorded in the bank.
        init_from: ``None`` (the base state), a stored task, or ``'auto'``.
        overrides: The ``--cfg-options`` already merged into ``cfg``
            (they win over ``task_schedules``).

    Returns:
        The task's final validation metrics.
    """
    check_tasks(cfg, [task])
    cfg.model.tasks = [task]
    cfg.model.train_tasks = [task]
    return train(cfg, bank=bank, replace=replace, resume=resume,
                 config_path=config_path, init_from=init_from,
                 overrides=overrides)[task]


def add_task(cfg: Config, *, bank: str, task: str, replace: bool = False,
             config_path: Optional[str] = None) -> dict[str, float]:
    """Deprecated name of :func:`train_task` (one more release); it
    collided with :func:`rc_adapter.add_task`."""
    warnings.warn('rc_adapter.mmseg.apis.add_task is deprecated (accepted '
                  'for one more release): use '
                  'rc_adapter.mmseg.apis.train_task', DeprecationWarning,
                  stacklevel=2)
    return train_task(cfg, bank=bank, task=task, replace=replace,
                      config_path=config_path)

