"""Evaluating a bank's tasks (or a trained checkpoint) on a config's
validation split."""
from __future__ import annotations

import os
import os.path as osp
import warnings
from typing import Any, Optional, Sequence

from mmengine.config import Config

from ...core.errors import BankError, CheckpointError, RCConfigError
from ...utils.io import save_json
from ..engine import RCRunner
from ..evaluation.multitask import EVALUATOR_TYPE, evaluator_metrics
from .config import (check_outputs, component_errors, config_heads,
                     configure_run, open_bank, protected_inputs)

__all__ = ['evaluate', 'task_metrics', 'resolve_tasks', 'TTA_UNSUPPORTED']

#: Why ``--tta`` is refused (mmseg's ``SegTTAModel`` merges one head's
#: ``seg_logits``; the multi-task segmentor writes one field per task).
TTA_UNSUPPORTED = (
    '--tta is not supported for multi-task models: mmseg\'s test-time '
    'augmentation (SegTTAModel with the config\'s tta_pipeline) averages the '
    'seg_logits of a single segmentation head, while this model predicts one '
    'field per task (class maps, depth, normals, probabilities) without '
    'seg_logits; evaluate without --tta')


def task_metrics(metrics: dict[str, Any], task: str) -> dict[str, float]:
    """One task's entries of an mmengine metrics dict (``'task/metric'``
    keys), without the prefix."""
    prefix = task + '/'
    return {k[len(prefix):]: float(v) for k, v in metrics.items()
            if k.startswith(prefix)}


def resolve_tasks(cfg: Config, bank: Optional[str],
                  tasks: Optional[Sequence[str]]) -> list[str]:
    """The tasks a run evaluates or predicts: ``tasks``, else every bank
    task the config has a head for (with ``bank``), else the config's.

    Raises:
        BankError: the bank is missing, lacks a task of ``tasks``, or holds
            no task of the config.
    """
    if bank is not None:
        stored = open_bank(bank).tasks()
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
    return list(tasks)


def _split_out(out: Optional[str], metrics_out: Optional[str]
               ) -> tuple[Optional[str], Optional[str]]:
    """``out`` naming a ``.json`` file is the metrics file of earlier
    releases (one more release, with a warning)."""
    if out is not None and out.lower().endswith('.json'):
        if metrics_out is not None:
            raise RCConfigError(
                f'--out {out} names a JSON file (the metrics file of earlier '
                f'releases) and --metrics-out {metrics_out} is given too; '
                f'--out is now a predictions folder')
        warnings.warn(
            f'--out {out}: writing the metrics JSON with --out is deprecated '
            f'(accepted for one more release); --out is now the predictions '
            f'folder, as in mmseg: use --metrics-out {out}',
            DeprecationWarning, stacklevel=3)
        return None, out
    return out, metrics_out


def evaluate(cfg: Config, *, bank: Optional[str] = None,
             tasks: Optional[Sequence[str]] = None,
             checkpoint: Optional[str] = None, out: Optional[str] = None,
             metrics_out: Optional[str] = None,
             show_dir: Optional[str] = None, show: bool = False,
             wait_time: float = 2.0, tta: bool = False) -> dict[str, Any]:
    """Evaluates tasks on the config's validation split.

    With ``bank`` every stored task of the config (or ``tasks``) is loaded,
    verified and evaluated; with ``checkpoint`` a trained mmengine
    checkpoint of the config is evaluated instead (baselines).

    Every output is checked before any work: none may be the bank, the
    config, the checkpoint or the data root, or lie inside the bank or the
    data root (:func:`~rc_adapter.mmseg.apis.config.check_outputs`).

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`
            (changed in place).
        bank: Task bank folder.
        tasks: Tasks to evaluate. Defaults to every bank task the config has
            a head for (with ``bank``), else the config's tasks.
        checkpoint: An mmengine checkpoint of the config (weights-only
            loading).
        out: Predictions folder, as mmseg's ``--out``: every prediction of
            every image as ``out/<field>/<image>.png`` (the raw encodings of
            ``docs/tools.md``). A path ending in ``.json`` is taken as
            ``metrics_out`` for one more release (``DeprecationWarning``).
        metrics_out: Write ``{"metrics": ..., "delta_m": ...}`` here as JSON
            (atomically; rank 0 only).
        show_dir: Write one panel per image (input, ground truth and
            prediction of every task) and the raw encodings under
            ``show_dir/raw/``.
        show: Show each panel in a window.
        wait_time: Seconds each shown panel stays.
        tta: Test-time augmentation; refused (:data:`TTA_UNSUPPORTED`).

    Returns:
        ``{"metrics": {task: {metric: value}}, "delta_m": float or None}``
        (Δm in %, positive = drop, against ``cfg.single_task_reference``).

    Raises:
        BankError: the bank is missing, damaged, or lacks a task.
        CheckpointError: ``checkpoint`` is missing or unsafe.
        RCConfigError: ``tta``, ``show`` without a display, or an output
            that would overwrite an input.
    """
    from .. import visualization
    if tta:
        raise RCConfigError(TTA_UNSUPPORTED)
    metrics_flag = '--out' if out is not None and metrics_out is None \
        else '--metrics-out'
    out, metrics_out = _split_out(out, metrics_out)
    check_outputs({'--out': out, metrics_flag: metrics_out,
                   '--show-dir': show_dir,
                   '--work-dir': cfg.get('work_dir')},
                  protected_inputs(cfg, config_path=cfg.filename, bank=bank,
                                   checkpoint=checkpoint))
    if show:
        visualization.check_display()
    tasks = resolve_tasks(cfg, bank, tasks)
    configure_run(cfg, tasks=tasks, train_tasks=[], bank=bank)
    if checkpoint is not None:
        if not osp.isfile(checkpoint):
            raise CheckpointError(f'checkpoint {checkpoint} does not exist')
        cfg.load_from = checkpoint
    if out is not None:
        cfg.test_evaluator = dict(type=EVALUATOR_TYPE,
                                  metrics=evaluator_metrics(
                                      cfg.get('test_evaluator')),
                                  output_dir=out)
    if show_dir is not None or show:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='MTVisualizationHook', out_dir=show_dir, show=show,
                 wait_time=wait_time)]
    if cfg.get('launcher', 'none') == 'pytorch':
        _setup_launcher(cfg)
    with component_errors():
        runner = RCRunner.from_cfg(cfg)
        metrics = runner.test()
    result = dict(metrics={t: task_metrics(metrics, t) for t in tasks})
    result['delta_m'] = _delta_m(cfg, result['metrics'])
    if metrics_out is not None and _is_main_process():
        save_json(metrics_out, result)
    return result


def _is_main_process() -> bool:
    from mmengine.dist import is_main_process
    return is_main_process()


def _setup_launcher(cfg: Config) -> None:
    """``--launcher pytorch`` for evaluation: the process group is started
    here (gloo on CPUs, the config's backend on GPUs) and the runner runs
    with ``launcher='none'``, so the model is not wrapped in DDP (which
    refuses a model with nothing to train); mmengine's sampler and the
    metrics' result collection split and gather across the processes of
    the group all the same."""
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = 'gloo'
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
            backend = ((cfg.get('env_cfg') or {}).get('dist_cfg') or
                       {}).get('backend', 'nccl')
        dist.init_process_group(backend=backend)
    cfg.launcher = 'none'


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
