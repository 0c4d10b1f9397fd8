"""Model surgery: turn a network into a multi-task RC network and back.

The vocabulary follows PEFT's adapters: tasks are added, set, removed and
merged by name. Everything here works on any ``nn.Module`` (torchvision,
timm, mmseg backbones) and needs only torch.
"""
import copy
import logging
import re

import torch
import torch.nn as nn

from .config import RCConfig
from .errors import RCConfigError, UnknownTaskError
from .layers import (RCConv2d, TaskModule, TaskSpecific,
                     conv_parameter_count, modulator_parameter_count)
from .ri import call_with, collect_response_statistics

__all__ = [
    'reparameterize', 'add_task', 'remove_task', 'set_task',
    'set_trainable_tasks', 'list_tasks', 'task_state_dict',
    'load_task_state_dict', 'shared_state_dict', 'merge',
    'task_parameter_count', 'summary', 'task_modules', 'is_reparameterized',
    'output_change',
]

logger = logging.getLogger('rc_adapter')

# Conv subclasses whose forward is nn.Conv2d's for every non-empty input.
# mmcv's wrapper only adds an empty-tensor shortcut.
_EQUIVALENT_CONV_CLASSES = frozenset({
    'mmcv.cnn.bricks.wrappers.Conv2d',
})

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
if hasattr(nn, 'RMSNorm'):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)


def task_modules(model):
    """Lists ``(name, module)`` of every task-aware module in ``model``."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, TaskModule)]


def is_reparameterized(model):
    """True if ``model`` already holds task-aware layers."""
    return any(isinstance(m, TaskModule) for m in model.modules())


def _require_task_modules(model):
    modules = task_modules(model)
    if not modules:
        raise RCConfigError(
            f'{type(model).__name__} has no task-specific layers; call '
            f'rc_adapter.reparameterize(model, tasks=[...]) first')
    return modules


def list_tasks(model):
    """Returns the task names registered in ``model``, in insertion order."""
    return _require_task_modules(model)[0][1].task_names()


def _check_known(model, task):
    tasks = list_tasks(model)
    if task not in tasks:
        raise UnknownTaskError(f'unknown task {task!r}; the model has tasks '
                               f'{tasks}')


def _as_patterns(patterns):
    if patterns is None:
        return None
    return [re.compile(p) for p in patterns]  # validated by RCConfig


def _matches(name, patterns):
    return any(p.search(name) for p in patterns)


def _conv_skip_reason(module):
    """Why a Conv2d subclass cannot be reparameterized (None if it can)."""
    cls = type(module)
    if cls is nn.Conv2d:
        return None
    qualname = f'{cls.__module__}.{cls.__qualname__}'
    if qualname in _EQUIVALENT_CONV_CLASSES:
        return None
    if (cls.forward is nn.Conv2d.forward
            and cls._conv_forward is nn.Conv2d._conv_forward):
        return None
    return (f'{qualname} overrides the convolution forward (e.g. same '
            f'padding or weight standardisation), so a composed weight '
            f'would not reproduce it; kept shared and frozen')


def _has_state(module):
    return any(True for _ in module.parameters(recurse=True)) or any(
        True for _ in module.buffers(recurse=True))


def _plan(model, task_norms, nff, include, exclude, copy_patterns):
    """Decides what happens to each module: 'rc', 'copy', 'norm', skip."""
    plan, skipped = {}, {}
    covered = []  # prefixes of modules already copied whole

    def inside_covered(name):
        return any(name.startswith(prefix + '.') for prefix in covered)

    for name, module in model.named_modules():
        if not name or inside_covered(name):
            continue
        if include is not None and not _matches(name, include):
            continue
        if exclude is not None and _matches(name, exclude):
            continue
        if copy_patterns is not None and _matches(name, copy_patterns):
            plan[name] = 'copy'
            covered.append(name)
        elif isinstance(module, nn.Conv2d):
            reason = _conv_skip_reason(module)
            if reason is not None:
                skipped[name] = reason
                logger.warning('rc_adapter: skipping %s: %s', name, reason)
            elif (modulator_parameter_count(module, nff)
                  >= conv_parameter_count(module)):
                # Cheaper-of rule: a modulator would not save parameters.
                plan[name] = 'copy'
            else:
                plan[name] = 'rc'
        elif (task_norms and isinstance(module, _NORM_TYPES)
              and _has_state(module)):
            plan[name] = 'norm'
            covered.append(name)
    return plan, skipped


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


def reparameterize(model, tasks, config=None, *, calibration=None,
                   **options):
    """Turns ``model`` into a multi-task RC network, in place.

    Every plain ``nn.Conv2d`` becomes an :class:`RCConv2d` (frozen bank,
    per-task 1x1 modulator) unless a modulator would hold at least as many
    parameters as the conv (``c_out * c_out/groups (+ c_out gains) >= conv
    params``, e.g. 1x1 expansions and ResNet downsample convs): those become
    per-task full copies, as the paper does for downsample layers. With
    ``task_norms`` every normalization layer (all ``_BatchNorm`` subclasses,
    GroupNorm, LayerNorm ...) becomes a per-task copy with its own affine
    parameters and running statistics. Everything else stays shared and
    frozen: after :func:`set_task` only that task's tensors train.

    Conv subclasses whose forward differs from ``nn.Conv2d`` (timm
    ``Conv2dSame``/``StdConv2d``, weight-standardised convs ...) are skipped
    with a logged reason and listed in ``model.rc_info['skipped']``.

    Args:
        model (nn.Module): The network (modified in place).
        tasks (list[str]): Tasks to create; the first becomes active. May
            be empty (e.g. to write a task bank's shared state).
        config (RCConfig | dict, optional): How to reparameterize (see
            :class:`~rc_adapter.core.config.RCConfig`). Defaults to
            ``RCConfig()``.
        calibration (Iterable, optional): Input batches for Response
            Initialization. Without it the init is the identity (``Ws = W``,
            ``Wt = I``).
        **options: :class:`RCConfig` fields overriding ``config`` (e.g.
            ``nff=False``, ``exclude=['head']``).

    Returns:
        nn.Module: ``model``, with ``model.rc_info`` describing the surgery
        (the config as a dict, converted layers, skipped convs, RI
        statistics).

    Raises:
        RCConfigError: ``model`` was already reparameterized, task names
            repeat, or the config is invalid.
    """
    config = RCConfig.from_any(config, **options)
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if len(set(tasks)) != len(tasks):
        raise RCConfigError(f'duplicate task names in {tasks}')
    if is_reparameterized(model):
        raise RCConfigError(f'{type(model).__name__} is already '
                         f'reparameterized (tasks {list_tasks(model)}); use '
                         f'rc_adapter.add_task to add tasks')
    plan, skipped = _plan(model, config.task_norms, config.nff,
                          _as_patterns(config.include),
                          _as_patterns(config.exclude),
                          _as_patterns(config.copy_modules))
    modules = dict(model.named_modules())
    rc_convs = {n: modules[n] for n, kind in plan.items() if kind == 'rc'}

    ri = None
    reference = {}
    if calibration is not None:
        def keep_first(batch, output):
            reference['batch'] = batch
            reference['output'] = output
        stats, num_batches = collect_response_statistics(
            model, rc_convs, calibration, on_first_batch=keep_first)
        ri = dict(num_batches=num_batches,
                  samples={n: s.count for n, s in stats.items()})

    for name, kind in plan.items():
        module = modules[name]
        if kind == 'rc':
            new = RCConv2d.from_conv(module, nff=config.nff,
                                     execution=config.execution)
            if ri is not None:
                _apply_ri(new, stats[name])
        else:
            new = TaskSpecific(module)
        _replace(model, name, new)

    # Everything shared is frozen; only task tensors ever train.
    model.requires_grad_(False)
    for task in tasks:
        add_task(model, task)
    model.rc_info = dict(
        config=config.to_dict(),
        layers=plan, skipped=skipped, ri=ri)
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


def output_change(model, batch, reference, task=None):
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
    g, go = layer.groups, layer.out_channels // layer.groups
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


def add_task(model, task):
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


def remove_task(model, task):
    """Deletes ``task``'s tensors from every task-aware module."""
    _check_known(model, task)
    for _, module in task_modules(model):
        module.remove_task(task)
    return model


def set_task(model, task, *, update_trainable=True):
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


def set_trainable_tasks(model, tasks):
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


def task_state_dict(model, task):
    """Returns only ``task``'s tensors (parameters and buffers), keyed as in
    ``model.state_dict()``."""
    _check_known(model, task)
    state = {}
    for prefix, sub in _task_items(model, task):
        for key, value in sub.state_dict().items():
            state[prefix + key] = value
    return state


def task_parameter_count(model, task):
    """Number of trainable parameters that belong to ``task``."""
    _check_known(model, task)
    return sum(p.numel() for _, sub in _task_items(model, task)
               for p in sub.parameters())


def shared_state_dict(model):
    """Everything in ``model.state_dict()`` that belongs to no task."""
    task_keys = set()
    for task in list_tasks(model):
        task_keys.update(task_state_dict(model, task))
    return {k: v for k, v in model.state_dict().items()
            if k not in task_keys}


def load_task_state_dict(model, task, state):
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


def merge(model, task):
    """Returns a plain copy of ``model`` computing ``task``'s function.

    RC convs become ``nn.Conv2d`` with the composed weight ``Wt @ Ws`` (same
    stride, padding, padding mode, dilation and groups); per-task copies
    become the task's module. The result has the original architecture and
    parameter count, and every parameter is trainable again. ``model`` is not
    changed.
    """
    _check_known(model, task)
    merged = copy.deepcopy(model)
    for name, module in task_modules(merged):
        if not name:
            return module.merged(task)
        _replace(merged, name, module.merged(task))
    merged.requires_grad_(True)
    if 'rc_info' in merged.__dict__:
        del merged.rc_info
    return merged


def summary(model):
    """Describes a reparameterized model.

    Returns:
        dict: ``tasks``, ``layers`` (counts by kind: ``rc``, ``copy``,
        ``norm``), ``params_per_task`` (task -> trainable parameter count),
        ``shared_params`` and ``skipped`` convs with reasons.
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
    return dict(tasks=tasks, layers=kinds,
                params_per_task={t: task_parameter_count(model, t)
                                 for t in tasks},
                shared_params=shared,
                skipped=dict(info.get('skipped') or {}))
