"""Training: a config's tasks, or one new task into a task bank."""
from __future__ import annotations

import datetime
import os.path as osp
import warnings
from typing import Any, Optional

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper

from ... import core as rc
from ...core.errors import BankError
from ...core.version import __version__
from ..engine import RCRunner
from .config import check_tasks, config_heads, configure_run, open_bank
from .evaluate import task_metrics

__all__ = ['train', 'train_task', 'add_task']


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


def _task_info(cfg: Config, model: torch.nn.Module, task: str,
               metrics: dict[str, float],
               config_path: Optional[str]) -> dict[str, Any]:
    head = cfg.model.decode_heads[task]
    return dict(
        type=head.get('task_type'),
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
          replace: bool = False, config_path: Optional[str] = None
          ) -> dict[str, dict[str, float]]:
    """Trains the config's ``train_tasks``.

    With ``bank`` the model starts from the bank's shared state (filter
    banks, RI base state) and each trained task is written to the bank
    (rank 0 only) with its validation metrics; nothing else in the bank is
    touched.

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`
            (changed in place).
        bank: Task bank folder.
        resume: Resume from the latest checkpoint in the work dir.
        replace: Retrain tasks the bank already holds.
        config_path: The config's file name, recorded in the bank.

    Returns:
        The final validation metrics per trained task.

    Raises:
        UnknownTaskError: a train task has no decode head.
        BankError: the bank is missing or damaged, or already holds a train
            task (without ``replace``).
    """
    tasks = list(cfg.model.get('tasks') or config_heads(cfg))
    train_tasks = list(cfg.model.get('train_tasks') or tasks)
    check_tasks(cfg, train_tasks, 'train task')
    task_bank = None
    if bank is not None:
        task_bank = open_bank(bank)
        task_bank.verify()
        existing = [t for t in train_tasks if t in task_bank.tasks()]
        if existing and not replace:
            raise BankError(
                f'task(s) {existing} already exist in the bank {bank}; pass '
                f'--replace to train them again')
        tasks = train_tasks
    configure_run(cfg, tasks=tasks, train_tasks=train_tasks, bank=bank)
    cfg.resume = resume
    if cfg.get('launcher', 'none') == 'pytorch' and \
            not torch.cuda.is_available():
        _setup_cpu_distributed(cfg)
    runner = RCRunner.from_cfg(cfg)
    runner.train()
    metrics = runner.val() if cfg.get('val_dataloader') else {}
    model = _unwrap(runner.model)
    per_task = {t: task_metrics(metrics or {}, t) for t in train_tasks}
    if task_bank is not None and is_main_process():
        for task in train_tasks:
            task_bank.write_task(
                task, rc.task_state_dict(model, task),
                info=_task_info(cfg, model, task, per_task[task],
                                config_path),
                replace=replace)
            print(f'wrote task {task!r} to {task_bank.path}')
    return per_task


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
               resume: bool = False, config_path: Optional[str] = None
               ) -> dict[str, float]:
    """Trains exactly ``task`` from the bank's base state and stores it.

    Nothing else in the bank is touched (the other tasks' files, the shared
    file). This is ``tools/add_task.py``; the model-level counterpart is
    :func:`rc_adapter.add_task` (which adds a task to a network in memory).

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`.
        bank: Task bank folder.
        task: The task to train (it needs a decode head in the config).
        replace: Retrain a task the bank already holds.
        resume: Resume from the latest checkpoint in the work dir.
        config_path: The config's file name, recorded in the bank.

    Returns:
        The task's final validation metrics.
    """
    check_tasks(cfg, [task])
    cfg.model.tasks = [task]
    cfg.model.train_tasks = [task]
    return train(cfg, bank=bank, replace=replace, resume=resume,
                 config_path=config_path)[task]


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
