"""PEFT LoRA as a baseline of the multi-task segmentor (``baseline='lora'``).

The peer a user would pick instead of RC: the plain backbone stays frozen
and every task gets its own named LoRA adapter (HuggingFace PEFT,
``peft.functional.inject_adapter_in_model``), trained per task as RC tasks
are. The decoder heads are per task as for every other model. PEFT is an
optional dependency (the ``bench`` extra, ``peft==0.21.2``).

``model.lora_cfg`` (all keys optional):

* ``r`` (8): the rank of every adapter;
* ``alpha`` (``r``): LoRA's ``lora_alpha`` (the update is scaled by
  ``alpha / r``; the default gives scale 1);
* ``norms`` (``'per_task'``): ``'per_task'`` puts every BatchNorm in
  PEFT's ``modules_to_save``, so each task has its own copy (affine
  parameters trained, running statistics its own) and tasks cannot
  interfere through BN; ``'shared'`` is PEFT's default: the BN layers stay
  frozen but their running statistics are updated by whichever task
  trains, so training a later task changes what earlier tasks compute;
* ``dilated`` (``'exclude'``): PEFT 0.21.2 builds a conv adapter's first
  convolution with the base conv's kernel, stride and padding but without
  its dilation, so a dilated conv's adapter output has the wrong size and
  the first forward pass fails (``benchmarks/PEFT.md``). ``'exclude'``
  leaves the dilated convs without an adapter (:func:`lora_summary` says
  how many parameters that leaves out); ``'match'`` gives the adapter's
  first convolution the base conv's dilation, which makes
  ``B(A_d(x)) = conv_d(x, B·A)``, the update LoRA's merge adds to the
  weight (``tests/test_lora_baseline.py`` checks it).

Targets: every dense ``nn.Conv2d`` (``groups == 1``) and every
``nn.Linear`` of the backbone (depthwise/grouped convs need a rank divisible
by ``groups`` in PEFT and are left out).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch.nn as nn

from ...core.config import check_task_name
from ...core.errors import RCConfigError

__all__ = ['LORA_DEFAULTS', 'NORM_MODES', 'DILATED_MODES', 'parse_lora_cfg',
           'lora_targets', 'add_lora_task', 'set_lora_task',
           'set_lora_trainable', 'lora_task_parameter_count',
           'lora_summary', 'require_peft']

#: The defaults of ``model.lora_cfg``.
LORA_DEFAULTS = dict(r=8, alpha=None, norms='per_task', dilated='exclude')
NORM_MODES = ('per_task', 'shared')
DILATED_MODES = ('exclude', 'match')

_ADAPTER_PARTS = ('lora_A', 'lora_B', 'modules_to_save')


def require_peft():
    """Imports ``peft.functional``.

    Raises:
        RCConfigError: PEFT is not installed (says how to install it).
    """
    try:
        from peft import functional
    except ImportError as err:
        raise RCConfigError(
            f"model.baseline='lora' needs HuggingFace PEFT, which is not "
            f"installed ({err}); install the optional extra: pip install "
            f"-e '.[bench]' (peft==0.21.2)") from None
    return functional


def parse_lora_cfg(lora_cfg: Optional[Mapping[str, Any]],
                   where: str = 'model.lora_cfg') -> dict[str, Any]:
    """Validates ``model.lora_cfg`` and fills in the defaults.

    Raises:
        RCConfigError: an unknown key or a bad value (both named).
    """
    if lora_cfg is not None and not isinstance(lora_cfg, Mapping):
        raise RCConfigError(f'{where} must be a dict, got '
                            f'{type(lora_cfg).__name__}')
    values = dict(lora_cfg or {})
    unknown = sorted(set(values) - set(LORA_DEFAULTS))
    if unknown:
        raise RCConfigError(f'{where}: unknown key(s) {unknown}; known: '
                            f'{sorted(LORA_DEFAULTS)}')
    cfg = dict(LORA_DEFAULTS, **values)
    r = cfg['r']
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise RCConfigError(f'{where}.r must be a positive integer, got '
                            f'{r!r}')
    if cfg['alpha'] is None:
        cfg['alpha'] = r
    if isinstance(cfg['alpha'], bool) or not isinstance(
            cfg['alpha'], (int, float)) or cfg['alpha'] <= 0:
        raise RCConfigError(f'{where}.alpha must be a positive number, got '
                            f'{cfg["alpha"]!r}')
    if cfg['norms'] not in NORM_MODES:
        raise RCConfigError(f'{where}.norms must be one of {NORM_MODES}, got '
                            f'{cfg["norms"]!r}')
    if cfg['dilated'] not in DILATED_MODES:
        raise RCConfigError(f'{where}.dilated must be one of '
                            f'{DILATED_MODES}, got {cfg["dilated"]!r}')
    return cfg


def _is_dilated(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and any(
        d != 1 for d in module.dilation)


def lora_targets(backbone: nn.Module, dilated: str = 'exclude'
                 ) -> tuple[list[str], list[str]]:
    """The modules that get an adapter, and the dilated convs left out.

    Args:
        backbone: The plain backbone (before any adapter).
        dilated: ``'exclude'`` or ``'match'`` (see the module docstring).

    Returns:
        ``(targets, excluded)``: module names.
    """
    targets, excluded = [], []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1 or \
                isinstance(module, nn.Linear):
            if dilated == 'exclude' and _is_dilated(module):
                excluded.append(name)
            else:
                targets.append(name)
    return targets, excluded


def _norm_names(backbone: nn.Module) -> list[str]:
    return [name for name, m in backbone.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _exact(names: Sequence[str]) -> str:
    """One regular expression matching exactly ``names`` (PEFT matches a
    list of names by suffix: ``conv1`` would select every block's
    ``conv1``)."""
    return '|'.join(re.escape(n) for n in names)


def _base_layer(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if hasattr(module, 'get_base_layer') \
        else module


def add_lora_task(backbone: nn.Module, task: str,
                  cfg: Mapping[str, Any]) -> None:
    """Adds an adapter named ``task`` (B = 0: the task starts from the
    plain backbone's function), frozen; the active adapter is unchanged.

    Args:
        backbone: The backbone (changed in place; the first call replaces
            the target modules by PEFT's LoRA layers).
        task: The task (a Python identifier).
        cfg: A :func:`parse_lora_cfg` result.

    Raises:
        RCConfigError: PEFT is missing, the task exists, or the backbone
            has no target.
    """
    peft = require_peft()
    from peft import LoraConfig
    check_task_name(task)
    state = getattr(backbone, '_rc_lora', None)
    if state is None:
        targets, excluded = lora_targets(backbone, cfg['dilated'])
        if not targets:
            raise RCConfigError(f'{type(backbone).__name__} has no dense '
                                f'Conv2d or Linear layer for LoRA')
        norms = _norm_names(backbone) if cfg['norms'] == 'per_task' else []
        state = dict(cfg=dict(cfg), targets=targets, excluded=excluded,
                     norms=norms, tasks=[], active=None,
                     excluded_params=sum(
                         p.numel() for n in excluded
                         for p in backbone.get_submodule(n).parameters()))
        backbone._rc_lora = state
    if task in state['tasks']:
        raise RCConfigError(f'task {task!r} already has a LoRA adapter')
    config = LoraConfig(r=cfg['r'], lora_alpha=cfg['alpha'],
                        lora_dropout=0.0,
                        target_modules=_exact(state['targets']),
                        modules_to_save=list(state['norms']) or None)
    with warnings.catch_warnings():
        # One adapter per task is the point here, not an accident.
        warnings.filterwarnings('ignore',
                                message='Already found a `peft_config`')
        peft.inject_adapter_in_model(config, backbone, adapter_name=task)
    if cfg['dilated'] == 'match':
        for name in state['targets']:
            layer = backbone.get_submodule(name)
            base = _base_layer(layer)
            if _is_dilated(base):
                layer.lora_A[task].dilation = base.dilation
    state['tasks'].append(task)
    # inject_adapter_in_model activates the new adapter: restore.
    if state['active'] is not None:
        set_lora_task(backbone, state['active'])
    set_lora_trainable(backbone, state.get('train_tasks', []))


def _state(backbone: nn.Module) -> dict[str, Any]:
    state = getattr(backbone, '_rc_lora', None)
    if state is None:
        raise RCConfigError(f'{type(backbone).__name__} has no LoRA adapter')
    return state


def set_lora_task(backbone: nn.Module, task: str) -> None:
    """Routes the forward pass through ``task``'s adapter (and its BN
    copies); which adapters train is unchanged."""
    peft = require_peft()
    state = _state(backbone)
    if task not in state['tasks']:
        raise RCConfigError(f'task {task!r} has no LoRA adapter (tasks: '
                            f'{state["tasks"]})')
    peft.set_adapter(backbone, task, inference_mode=True)
    state['active'] = task
    set_lora_trainable(backbone, state.get('train_tasks', []))


def _adapter_params(backbone: nn.Module, task: Optional[str] = None):
    pattern = re.compile(r'(^|\.)(' + '|'.join(_ADAPTER_PARTS) + r')\.' +
                         (re.escape(task) if task else r'[^.]+') + r'\.')
    return [(n, p) for n, p in backbone.named_parameters()
            if pattern.search(n)]


def set_lora_trainable(backbone: nn.Module, train_tasks: Sequence[str]
                       ) -> None:
    """Makes exactly the adapters (and BN copies) of ``train_tasks``
    trainable; the plain backbone stays frozen."""
    state = _state(backbone)
    state['train_tasks'] = list(train_tasks)
    trainable = {id(p) for t in train_tasks
                 for _, p in _adapter_params(backbone, t)}
    for _, p in backbone.named_parameters():
        p.requires_grad_(id(p) in trainable)


def lora_task_parameter_count(backbone: nn.Module, task: str) -> int:
    """Parameters of ``task``'s adapter, plus its BN copies with
    ``norms='per_task'`` (what trains for the task in the backbone)."""
    state = _state(backbone)
    if task not in state['tasks']:
        raise RCConfigError(f'task {task!r} has no LoRA adapter (tasks: '
                            f'{state["tasks"]})')
    return sum(p.numel() for _, p in _adapter_params(backbone, task))


def lora_summary(backbone: nn.Module) -> dict[str, Any]:
    """What the LoRA baseline adapted.

    Returns:
        ``{'cfg', 'tasks', 'targets', 'excluded', 'excluded_params',
        'norms', 'params_per_task': {task: count}}``; ``excluded`` are the
        dilated convs without an adapter (``dilated='exclude'``) and
        ``excluded_params`` their weight parameters.
    """
    state = _state(backbone)
    return dict(cfg=dict(state['cfg']), tasks=list(state['tasks']),
                targets=list(state['targets']),
                excluded=list(state['excluded']),
                excluded_params=state['excluded_params'],
                norms=list(state['norms']),
                params_per_task={t: lora_task_parameter_count(backbone, t)
                                 for t in state['tasks']})
