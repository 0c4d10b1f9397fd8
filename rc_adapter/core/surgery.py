"""Model surgery: turn a network into a multi-task RC network and back.

The vocabulary follows PEFT's adapters: tasks are added, set, removed and
merged by name. Everything here works on any ``nn.Module`` (torchvision,
timm, mmseg backbones) and needs only torch.
"""
import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from .config import RCConfig
from .errors import RCConfigError, UnknownTaskError
from .layers import (RAConv2d, RCConv1d, RCConv2d, RCConv3d, RCLayer,
                     RCLinear, RCMultiheadAttention, TaskModule, TaskSpecific)
from .plan import make_plan
from .ri import ResponseTarget, call_with, collect_response_statistics

__all__ = [
    'reparameterize', 'add_task', 'remove_task', 'set_task',
    'set_trainable_tasks', 'list_tasks', 'task_state_dict',
    'load_task_state_dict', 'shared_state_dict', 'merge',
    'task_parameter_count', 'summary', 'task_modules', 'is_reparameterized',
    'output_change',
]

logger = logging.getLogger('rc_adapter')

def task_modules(model: nn.Module) -> list[tuple[str, TaskModule]]:
    """Lists ``(name, module)`` of every task-aware module in ``model``."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, TaskModule)]


def is_reparameterized(model: nn.Module) -> bool:
    """True if ``model`` already holds task-aware layers."""
    return any(isinstance(m, TaskModule) for m in model.modules())


def _require_task_modules(model):
    modules = task_modules(model)
    if not modules:
        raise RCConfigError(
            f'{type(model).__name__} has no task-specific layers; call '
            f'rc_adapter.reparameterize(model, tasks=[...]) first')
    return modules


def list_tasks(model: nn.Module) -> list[str]:
    """Returns the task names registered in ``model``, in insertion order."""
    return _require_task_modules(model)[0][1].task_names()


def _check_known(model, task):
    tasks = list_tasks(model)
    if task not in tasks:
        raise UnknownTaskError(f'unknown task {task!r}; the model has tasks '
                               f'{tasks}')


def _replace(model, name, new):
    parent_name, _, child = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _flat_tensors(output):
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat_tensors(item)]
    return []


def _max_abs_diff(a, b):
    pairs = list(zip(_flat_tensors(a), _flat_tensors(b)))
    if not pairs:
        return float('nan')
    return max((x.float() - y.float()).abs().max().item() for x, y in pairs)


def reparameterize(model: nn.Module, tasks: Sequence[str],
                   config: Union[RCConfig, Mapping[str, Any], None] = None, *,
                   calibration: Optional[Iterable[Any]] = None,
                   **options: Any) -> nn.Module:
    """Turns ``model`` into a multi-task RC network, in place.

    Every weight layer -- ``nn.Conv1d/2d/3d``, ``nn.Linear`` (and subclasses
    with the same forward), ``nn.MultiheadAttention`` -- becomes an RC layer:
    its weight becomes a frozen filter bank shared by all tasks, and each
    task gets a modulator of the family the config picks (full, low-rank or
    diagonal; :class:`~rc_adapter.core.config.RCConfig`). Where no modulator
    holds fewer parameters than the layer itself, the layer is copied per
    task instead (with ``modulator='full'``: ResNet's 1x1 downsample convs,
    as in the paper). With ``task_norms`` every normalization layer becomes a
    per-task copy with its own affine parameters and running statistics.
    Everything else stays shared and frozen: after :func:`set_task` only that
    task's tensors train.

    Layers whose forward differs from the torch layer's (timm
    ``Conv2dSame``/``StdConv2d`` ...) are skipped with a logged reason
    (``model.rc_info['skipped']``). A warning says when more than half of the
    model's weight parameters got no per-task path (:func:`summary` lists
    them per layer type).

    Args:
        model (nn.Module): The network (modified in place).
        tasks (list[str]): Tasks to create; the first becomes active. May
            be empty (e.g. to write a task bank's shared state).
        config (RCConfig | dict, optional): How to reparameterize. Defaults
            to ``RCConfig()``.
        calibration (Iterable, optional): Input batches for Response
            Initialization (PCA of every RC layer's responses, over every
            output position or token). Without it the init is the identity
            (``Ws = W``, ``Wt = I``).
        **options: :class:`RCConfig` fields overriding ``config`` (e.g.
            ``nff=False``, ``modulator='lowrank'``, ``budget=0.05``).

    Returns:
        nn.Module: ``model``, with ``model.rc_info`` describing the surgery
        (the config as a dict, the layer plan, modulator families, skipped
        layers, reach per layer type, RI statistics).

    Raises:
        RCConfigError: ``model`` was already reparameterized, task names
            repeat, the config is invalid or its budget cannot be met.
    """
    config = RCConfig.from_any(config, **options)
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if len(set(tasks)) != len(tasks):
        raise RCConfigError(f'duplicate task names in {tasks}')
    if is_reparameterized(model):
        raise RCConfigError(f'{type(model).__name__} is already '
                            f'reparameterized (tasks {list_tasks(model)}); '
                            f'use rc_adapter.add_task to add tasks')
    plan = make_plan(model, config)
    modules = dict(model.named_modules())

    ri = None
    reference = {}
    if calibration is not None:
        def keep_first(batch, output):
            reference['batch'] = batch
            reference['output'] = output
        stats, num_batches = collect_response_statistics(
            model, _response_targets(plan, modules), calibration,
            on_first_batch=keep_first)
        ri = dict(num_batches=num_batches,
                  samples={n: s.count for n, s in stats.items()})

    for name, entry in plan.entries.items():
        new = _build_layer(modules[name], entry, config)
        if ri is not None:
            for suffix, layer in _rc_parts(new):
                _apply_ri(layer, stats[name + suffix])
        _replace(model, name, new)

    # Everything shared is frozen; only task tensors ever train.
    model.requires_grad_(False)
    for task in tasks:
        add_task(model, task)
    reached, weight_total = plan.weight_reach()
    model.rc_info = dict(
        config=config.to_dict(), layers=plan.kinds(),
        modulators=_modulator_plan(plan), skipped=dict(plan.skipped),
        reach=plan.reach, model_params=plan.model_params,
        budget=plan.budget, ri=ri)
    if weight_total and reached < 0.5 * weight_total:
        logger.warning(
            'rc_adapter: only %.0f%% of the weight parameters of %s have a '
            'per-task path (%s); the rest stays shared and frozen: see '
            'rc_adapter.summary(model)["reach"]', 100 * reached /
            weight_total, type(model).__name__,
            'include/exclude patterns or skipped layers'
            if plan.skipped or config.include or config.exclude else
            'layer types the surgery does not reparameterize')
    if tasks:
        set_task(model, tasks[0])
    if ri is not None:
        ri['max_abs_diff'] = output_change(
            model, reference['batch'], reference['output'],
            tasks[0] if tasks else None)
        logger.info('rc_adapter: Response Initialization over %d batches; '
                    'max |output change| = %.3g', ri['num_batches'],
                    ri['max_abs_diff'])
    return model


_RC_CONV = {nn.Conv1d: RCConv1d, nn.Conv2d: RCConv2d, nn.Conv3d: RCConv3d}


def _build_layer(module, entry, config):
    """The replacement of one planned module."""
    kind = entry['kind']
    if kind in ('copy', 'norm'):
        return TaskSpecific(module)
    if kind == 'ra':
        return RAConv2d.from_conv(module, mode=entry['mode'])
    common = dict(nff=config.nff, execution=config.execution)
    if kind == 'mha':
        return RCMultiheadAttention.from_mha(
            module, in_family=entry['in']['family'],
            in_rank=entry['in']['rank'], out_family=entry['out']['family'],
            out_rank=entry['out']['rank'], **common)
    common.update(family=entry['family'], rank=entry['rank'])
    if isinstance(module, nn.Linear):
        return RCLinear.from_linear(module, **common)
    cls = next(rc for base, rc in _RC_CONV.items()
               if isinstance(module, base))
    return cls.from_conv(module, **common)


def _rc_parts(layer):
    """``(name suffix, RC layer)`` of a replacement (RI targets)."""
    if isinstance(layer, RCMultiheadAttention):
        return [('.in_proj', layer.in_proj), ('.out_proj', layer.out_proj)]
    if isinstance(layer, RCLayer):
        return [('', layer)]
    return []


def _response_targets(plan, modules):
    """Where each RC layer's responses are read during calibration."""
    targets = {}
    for name, entry in plan.entries.items():
        module = modules[name]
        if entry['kind'] == 'mha':
            e = module.embed_dim
            targets[name + '.in_proj'] = ResponseTarget(module, 3 * e, 3,
                                                        'mha_in')
            targets[name + '.out_proj'] = ResponseTarget(module, e, 1,
                                                         'mha_out')
        elif entry['kind'] == 'rc':
            if isinstance(module, nn.Linear):
                targets[name] = ResponseTarget(module, module.out_features,
                                               1, 'output', -1)
            else:
                targets[name] = ResponseTarget(module, module.out_channels,
                                               module.groups)
    return targets


def _modulator_plan(plan):
    out = {}
    for name, entry in plan.entries.items():
        if entry['kind'] == 'rc':
            out[name] = dict(family=entry['family'], rank=entry['rank'])
        elif entry['kind'] == 'mha':
            out[name + '.in_proj'] = dict(entry['in'])
            out[name + '.out_proj'] = dict(entry['out'])
    return out


def output_change(model: nn.Module, batch: Any, reference: Any,
                  task: Optional[str] = None) -> float:
    """Max ``|model(batch) - reference|`` over every output tensor, in eval
    mode and without gradients: the check that a reparameterization kept
    the function (``reference`` is the plain model's output on ``batch``).

    Args:
        model (nn.Module): A reparameterized model.
        batch: Its input (a tensor, a tuple of positional arguments or a
            dict of keyword arguments).
        reference: The expected output (tensor, or a list/tuple/dict of
            tensors).
        task (str, optional): The task to run. By default the base state
            runs, through a temporary task removed afterwards.

    Returns:
        float: the largest absolute difference (NaN if the outputs hold no
        tensor).
    """
    probe = task is None
    if probe:
        task = '_rc_probe'
        add_task(model, task)
    active = [(m, m.active_task) for _, m in task_modules(model)]
    set_task(model, task, update_trainable=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = call_with(model, batch)
    finally:
        model.train(was_training)
        for module, name in active:
            module.active_task = name
        if probe:
            remove_task(model, task)
    return _max_abs_diff(reference, output)


def _apply_ri(layer, stats):
    """Sets ``Ws = U^T W``, ``b_s = U^T b`` and base modulator ``U``."""
    u, _ = stats.principal_directions()
    g, go = layer.mod_groups, layer.rc_out // layer.mod_groups
    u_blocks = u.reshape(g, go, go)
    ut = u_blocks.transpose(1, 2)
    w = layer.weight.detach().to(torch.float64).reshape(g, go, -1)
    new_w = torch.bmm(ut, w).reshape(layer.weight.shape)
    new_b = None
    if layer.bias is not None:
        b = layer.bias.detach().to(torch.float64).reshape(g, go, 1)
        new_b = torch.bmm(ut, b).reshape(-1)
    dtype = layer.weight.dtype
    layer.set_base(new_w.to(dtype),
                   None if new_b is None else new_b.to(dtype),
                   u.to(dtype))


def add_task(model: nn.Module, task: str) -> nn.Module:
    """Adds ``task``, initialised from the base (pretrained or RI) state.

    The new task is frozen until :func:`set_task` selects it.
    """
    modules = _require_task_modules(model)
    if task in modules[0][1].task_names():
        raise RCConfigError(f'task {task!r} already exists; remove it first '
                         f'or choose another name')
    added = []
    try:
        for _, module in modules:
            module.add_task(task)
            added.append(module)
    except Exception:
        for module in added:
            module.remove_task(task)
        raise
    return model


def remove_task(model: nn.Module, task: str) -> nn.Module:
    """Deletes ``task``'s tensors from every task-aware module."""
    _check_known(model, task)
    for _, module in task_modules(model):
        module.remove_task(task)
    return model


def set_task(model: nn.Module, task: str, *,
             update_trainable: bool = True) -> nn.Module:
    """Routes the forward pass to ``task``.

    Args:
        model (nn.Module): A reparameterized model.
        task (str): A registered task.
        update_trainable (bool): Also make exactly ``task``'s tensors
            require grad (and clear the gradients of everything else).
            Pass False to switch routing only, e.g. inside a DDP-wrapped
            model whose trainable set is fixed. Defaults to True.
    """
    _check_known(model, task)
    for _, module in task_modules(model):
        module.active_task = task
    if update_trainable:
        set_trainable_tasks(model, [task])
    return model


def set_trainable_tasks(model: nn.Module, tasks: Iterable[str]) -> int:
    """Makes exactly the tensors of ``tasks`` trainable.

    Every other parameter gets ``requires_grad=False`` and its ``.grad``
    cleared, so an optimizer holding it cannot move it (no stale gradient for
    momentum or weight decay to act on).

    Returns:
        int: the number of trainable parameters.
    """
    for task in tasks:
        _check_known(model, task)
    trainable = set()
    for _, module in task_modules(model):
        for task in tasks:
            trainable.update(
                id(p) for p in module.task_submodule(task).parameters())
    count = 0
    for p in model.parameters():
        keep = id(p) in trainable
        p.requires_grad_(keep)
        if keep:
            count += p.numel()
        else:
            p.grad = None
    return count


def _task_items(model, task):
    for name, module in task_modules(model):
        prefix = f'{name}.' if name else ''
        prefix += f'{module.task_container}.{task}.'
        yield prefix, module.task_submodule(task)


def task_state_dict(model: nn.Module, task: str) -> dict[str, torch.Tensor]:
    """Returns only ``task``'s tensors (parameters and buffers), keyed as in
    ``model.state_dict()``."""
    _check_known(model, task)
    state = {}
    for prefix, sub in _task_items(model, task):
        for key, value in sub.state_dict().items():
            state[prefix + key] = value
    return state


def task_parameter_count(model: nn.Module, task: str) -> int:
    """Number of trainable parameters that belong to ``task``."""
    _check_known(model, task)
    return sum(p.numel() for _, sub in _task_items(model, task)
               for p in sub.parameters())


def shared_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything in ``model.state_dict()`` that belongs to no task."""
    task_keys = set()
    for task in list_tasks(model):
        task_keys.update(task_state_dict(model, task))
    return {k: v for k, v in model.state_dict().items()
            if k not in task_keys}


def load_task_state_dict(model: nn.Module, task: str,
                         state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Loads ``task``'s tensors from ``state`` (strict).

    The task is added first if the model does not have it yet.

    Raises:
        RCConfigError: missing or unexpected keys (both listed), or a
            tensor of the wrong shape.
    """
    created = task not in list_tasks(model)
    if created:
        add_task(model, task)
    try:
        expected = task_state_dict(model, task)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise RCConfigError(
                f'task {task!r}: state does not match the model: '
                f'{len(missing)} missing key(s) {missing[:5]}, '
                f'{len(unexpected)} unexpected key(s) {unexpected[:5]}')
        for key, target in expected.items():
            value = state[key]
            if tuple(value.shape) != tuple(target.shape):
                raise RCConfigError(
                    f'task {task!r}: tensor {key!r} has shape '
                    f'{tuple(value.shape)}, the model expects '
                    f'{tuple(target.shape)}')
        with torch.no_grad():
            for key, target in expected.items():
                target.copy_(state[key])
    except Exception:
        if created:
            remove_task(model, task)
        raise
    return model


def merge(model: nn.Module, task: str) -> nn.Module:
    """Returns a plain copy of ``model`` computing ``task``'s function.

    RC layers become the plain layer (``nn.Conv1d/2d/3d``, ``nn.Linear``,
    ``nn.MultiheadAttention``) with the composed weight ``Wt @ Ws`` -- for
    every modulator family -- and the same geometry; per-task copies become
    the task's module. The result has the original architecture and
    parameter count, and every parameter is trainable again. ``model`` is not
    changed.
    """
    _check_known(model, task)
    merged = copy.deepcopy(model)
    done = []
    for name, module in list(merged.named_modules()):
        if not isinstance(module, (TaskModule, RCMultiheadAttention)) or any(
                name.startswith(prefix + '.') for prefix in done):
            continue
        if not name:
            return module.merged(task)
        _replace(merged, name, module.merged(task))
        done.append(name)
    merged.requires_grad_(True)
    if 'rc_info' in merged.__dict__:
        del merged.rc_info
    return merged


def summary(model: nn.Module) -> dict[str, Any]:
    """Describes a reparameterized model.

    Returns:
        dict: ``tasks``; ``layers`` (counts by kind: ``rc``, ``mha``,
        ``copy``, ``norm``); ``modulators`` (counts by family, e.g.
        ``{'full': 17, 'lowrank(r=8)': 3}``); ``params_per_task`` (task ->
        trainable parameter count); ``shared_params``; ``skipped`` layers
        with reasons; ``reach`` (per layer type: ``params``, ``per_task`` =
        those with a per-task path, ``shared`` = shared and frozen) and
        ``weight_reach`` (the fraction of weight-layer parameters with a
        per-task path); ``model_params`` (before the surgery).
    """
    tasks = list_tasks(model)
    info = getattr(model, 'rc_info', {}) or {}
    kinds = {}
    for kind in (info.get('layers') or {}).values():
        kinds[kind] = kinds.get(kind, 0) + 1
    task_ids = set()
    for task in tasks:
        task_ids.update(id(p) for _, sub in _task_items(model, task)
                        for p in sub.parameters())
    shared = sum(p.numel() for p in model.parameters()
                 if id(p) not in task_ids)
    families = {}
    for entry in (info.get('modulators') or {}).values():
        label = entry['family'] + (f'(r={entry["rank"]})'
                                   if entry.get('rank') else '')
        families[label] = families.get(label, 0) + 1
    reach = {label: dict(params=c['params'], per_task=c['per_task'],
                         shared=c['params'] - c['per_task'],
                         weight_layer=bool(c.get('weight')))
             for label, c in (info.get('reach') or {}).items()}
    weights = [c for c in reach.values() if c['weight_layer']]
    total = sum(c['params'] for c in weights)
    return dict(tasks=tasks, layers=kinds, modulators=families,
                params_per_task={t: task_parameter_count(model, t)
                                 for t in tasks},
                shared_params=shared,
                skipped=dict(info.get('skipped') or {}), reach=reach,
                weight_reach=(sum(c['per_task'] for c in weights) / total
                              if total else None),
                model_params=info.get('model_params'))
