"""Evaluating a bank's tasks (or a trained checkpoint) on a config's
validation split."""
from __future__ import annotations

import os.path as osp
from typing import Any, Optional, Sequence

from mmengine.config import Config

from ...core.errors import BankError, CheckpointError
from ...utils.io import save_json
from ..engine import RCRunner
from .config import config_heads, configure_run, open_bank

__all__ = ['evaluate', 'task_metrics']


def task_metrics(metrics: dict[str, Any], task: str) -> dict[str, float]:
    """One task's entries of an mmengine metrics dict (``'task/metric'``
    keys), without the prefix."""
    prefix = task + '/'
    return {k[len(prefix):]: float(v) for k, v in metrics.items()
            if k.startswith(prefix)}


def evaluate(cfg: Config, *, bank: Optional[str] = None,
             tasks: Optional[Sequence[str]] = None,
             checkpoint: Optional[str] = None, out: Optional[str] = None,
             show_dir: Optional[str] = None) -> dict[str, Any]:
    """Evaluates tasks on the config's validation split.

    With ``bank`` every stored task of the config (or ``tasks``) is loaded,
    verified and evaluated; with ``checkpoint`` a trained mmengine
    checkpoint of the config is evaluated instead (baselines).

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`
            (changed in place).
        bank: Task bank folder.
        tasks: Tasks to evaluate. Defaults to every bank task the config has
            a head for (with ``bank``), else the config's tasks.
        checkpoint: An mmengine checkpoint of the config (weights-only
            loading).
        out: Write the result as JSON here (atomically).
        show_dir: Write prediction images here.

    Returns:
        ``{"metrics": {task: {metric: value}}, "delta_m": float or None}``
        (Δm in %, positive = drop, against ``cfg.single_task_reference``).

    Raises:
        BankError: the bank is missing, damaged, or lacks a task.
        CheckpointError: ``checkpoint`` is missing or unsafe.
    """
    if bank is not None:
        task_bank = open_bank(bank)
        stored = task_bank.tasks()
        if tasks is None:
            tasks = [t for t in stored if t in config_heads(cfg)]
        missing = [t for t in tasks if t not in stored]
        if missing:
            raise BankError(f'task(s) {missing} are not in the bank {bank}; '
                            f'it holds {stored}')
        if not tasks:
            raise BankError(f'the bank {bank} holds no task of this config '
                            f'(bank: {stored}, config: '
                            f'{sorted(config_heads(cfg))})')
    elif tasks is None:
        tasks = list(cfg.model.get('tasks') or config_heads(cfg))
    tasks = list(tasks)
    configure_run(cfg, tasks=tasks, train_tasks=[], bank=bank)
    if checkpoint is not None:
        if not osp.isfile(checkpoint):
            raise CheckpointError(f'checkpoint {checkpoint} does not exist')
        cfg.load_from = checkpoint
    if show_dir is not None:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='MTPredictionSaverHook', out_dir=show_dir)]
    runner = RCRunner.from_cfg(cfg)
    metrics = runner.test()
    result = dict(metrics={t: task_metrics(metrics, t) for t in tasks})
    result['delta_m'] = _delta_m(cfg, result['metrics'])
    if out is not None:
        save_json(out, result)
    return result


def _delta_m(cfg: Config, metrics: dict[str, dict[str, float]]
             ) -> Optional[float]:
    """Δm (%, positive = drop) against ``cfg.single_task_reference``
    (task -> single-task value of its primary metric), over the evaluated
    tasks that have a reference; None without references."""
    from ..evaluation import delta_m_from_metrics
    reference = {t: v for t, v in (cfg.get('single_task_reference') or {})
                 .items() if t in metrics}
    if not reference:
        return None
    flat = {f'{t}/{k}': v for t, values in metrics.items()
            for k, v in values.items()}
    return delta_m_from_metrics(flat, reference)
