"""Building the models the analyses look at: the RC segmentor on a bank,
and the plain baselines (shared multi-task, single-task fine-tuned) from
their mmengine checkpoints."""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from mmseg.registry import MODELS

from ...core.errors import CheckpointError
from ..apis.config import component_errors
from ..checkpoint import load_state_dict_file

__all__ = ['build_segmentor', 'load_baseline', 'checkpoint_tasks']

#: Where a segmentor checkpoint keeps each task's decoder.
HEAD_PREFIX = 'decode_heads.tasks.'


def build_segmentor(cfg: Any) -> nn.Module:
    """Builds ``cfg.model`` (e.g. an ``RCMultiTaskSegmentor`` on a bank:
    ``model.bank`` loaded and checked against the config) in eval mode.

    Raises:
        BankError: the bank is missing, damaged, or does not match the
            config.
        RCConfigError: the config's model refuses its settings.
    """
    with component_errors():
        model = MODELS.build(copy.deepcopy(cfg.model))
    return model.eval()


def checkpoint_tasks(state: dict) -> list[str]:
    """The tasks whose decoders a segmentor state dict holds."""
    return sorted({key[len(HEAD_PREFIX):].split('.', 1)[0]
                   for key in state if key.startswith(HEAD_PREFIX)})


def load_baseline(cfg: Any, checkpoint: str, *, baseline: str,
                  tasks: Sequence[str]) -> tuple[nn.Module, list[str]]:
    """A plain baseline segmentor with a trained checkpoint's weights.

    The config's model is built as ``baseline`` (``'shared'``: one plain
    backbone for all tasks; ``'finetune'``: a single-task fine-tuned
    network) for the tasks of ``tasks`` the checkpoint has a decoder for,
    without a bank and without pretrained initialisation (the checkpoint
    provides every weight); the checkpoint is loaded weights-only and must
    hold every tensor of that model with the same shape (its decoders for
    other tasks are ignored).

    Args:
        cfg: The baseline's config (e.g. ``mmseg_configs/shared_*.py``, or
            the RC config: ``model.baseline`` is set here).
        checkpoint: An mmengine checkpoint written by ``tools/train.py``.
        baseline: ``'shared'`` or ``'finetune'``.
        tasks: The tasks wanted.

    Returns:
        ``(model in eval mode, the tasks of ``tasks`` it was built for)``.

    Raises:
        CheckpointError: missing, unsafe or foreign checkpoint, or one that
            holds a decoder for none of ``tasks``.
    """
    state = load_state_dict_file(checkpoint)
    trained = checkpoint_tasks(state)
    use = [t for t in tasks if t in trained]
    if not use:
        raise CheckpointError(
            f'{checkpoint}: holds decoders for {trained or "no task"}, none '
            f'of the analysed tasks {list(tasks)}; pass a checkpoint of the '
            f'{baseline!r} baseline trained on them (tools/train.py)')
    model_cfg = copy.deepcopy(cfg.model)
    backbone = dict(model_cfg['backbone'])
    for key in ('init_cfg', 'pretrained'):
        backbone.pop(key, None)
    model_cfg.update(backbone=backbone, baseline=baseline, tasks=use,
                     train_tasks=[], bank=None, pretrained=None)
    with component_errors():
        model = MODELS.build(model_cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state
             and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise CheckpointError(
            f'{checkpoint}: does not fit the {baseline!r} baseline of the '
            f'config ({os.path.basename(str(getattr(cfg, "filename", "")))}'
            f'): {len(missing)} tensor(s) missing {missing[:3]}, '
            f'{len(wrong)} of another shape {wrong[:3]}')
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model.eval(), use
