"""Task-aware layers: the reparameterized convolution and per-task copies.

Two layer types carry every task-specific tensor of a reparameterized model:

* :class:`RCConv2d` -- a frozen shared filter bank ``Ws`` (kept as ``.weight``
  and ``.bias``) followed by one 1x1 modulator ``Wt`` per task, so that
  ``y = Wt(Ws x)``. Modulators of grouped convs are block diagonal.
* :class:`TaskSpecific` -- a frozen base module plus one full copy per task.
  Used for normalization layers (per-task affine parameters *and* running
  statistics) and for convs where a modulator would not be cheaper than a copy
  of the conv itself (e.g. ResNet's 1x1 downsample convs).

Both derive from :class:`TaskModule`, the small protocol the surgery functions
in :mod:`rc_adapter.core.surgery` use: add / remove a task, route the forward
to a task, expose the module holding one task's tensors, and build the plain
module one task merges into.
"""
import copy
import statistics
import time

import torch
import torch.nn as nn

from .config import check_task_name
from .errors import RCConfigError, UnknownTaskError
from .execution import (_COMPOSE_COST, _MEASURED, _MOD_PASS_COST,
                        EXECUTION_MODES, Modulate)

__all__ = ['TaskModule', 'RCConv2d', 'TaskSpecific', 'Modulator']

class TaskModule(nn.Module):
    """Base class of every module that holds per-task tensors.

    Subclasses keep one submodule per task in ``self.<task_container>`` (an
    ``nn.ModuleDict``) so that a task's tensors have stable state-dict keys
    ``<path>.<task_container>.<task>.<...>``.
    """

    #: Name of the ``nn.ModuleDict`` attribute holding the per-task modules.
    task_container = 'tasks'

    def __init__(self):
        super().__init__()
        self.active_task = None

    # -- task registry -------------------------------------------------
    def task_names(self):
        """Returns the registered task names, in insertion order."""
        return list(getattr(self, self.task_container).keys())

    def task_submodule(self, task):
        """Returns the module that holds exactly ``task``'s tensors."""
        container = getattr(self, self.task_container)
        if task not in container:
            raise UnknownTaskError(f'task {task!r} is not registered in '
                           f'{type(self).__name__} (registered: '
                           f'{list(container.keys())})')
        return container[task]

    def add_task(self, task):
        """Adds ``task`` initialised from the base state (frozen)."""
        raise NotImplementedError

    def remove_task(self, task):
        """Deletes ``task``'s tensors."""
        container = getattr(self, self.task_container)
        self.task_submodule(task)  # raises UnknownTaskError
        del container[task]
        if self.active_task == task:
            self.active_task = None

    def merged(self, task):
        """Returns a plain module computing ``task``'s function."""
        raise NotImplementedError

    def _active_submodule(self):
        if self.active_task is None:
            raise RuntimeError(
                f'{type(self).__name__}: no task is active; call '
                f'rc_adapter.set_task(model, task) before the forward pass '
                f'(registered tasks: {self.task_names()})')
        return self.task_submodule(self.active_task)


class Modulator(nn.Module):
    """One task's 1x1 modulator ``Wt`` of a :class:`RCConv2d`.

    The matrix has shape ``(out_channels, out_channels // groups)``: row ``o``
    mixes the outputs of the filter bank inside ``o``'s group. With NFF
    (normalized feature fusion) each row is ``g * v / ||v||``.

    Args:
        init (Tensor): The initial effective matrix.
        nff (bool): Weight-normalise the rows.
    """

    def __init__(self, init, nff):
        super().__init__()
        self.nff = nff
        if nff:
            self.weight_v = nn.Parameter(init.detach().clone())
            self.weight_g = nn.Parameter(
                init.detach().norm(dim=1).clone())
        else:
            self.weight = nn.Parameter(init.detach().clone())

    def forward(self):
        """Returns the effective modulator matrix."""
        if self.nff:
            v = self.weight_v
            return v * (self.weight_g / v.norm(dim=1)).unsqueeze(1)
        return self.weight

    def cache_key(self):
        """A key that changes whenever a parameter is modified."""
        return tuple((p.data_ptr(), p._version) for p in self.parameters())


class RCConv2d(nn.Conv2d, TaskModule):
    """A convolution reparameterized as a frozen filter bank and per-task
    1x1 modulators (Kanakis et al., ECCV 2020).

    ``y = Wt[task] (Ws * x + b_s)``, where ``Ws``/``b_s`` are this module's
    ``weight``/``bias`` (frozen, shared by all tasks) and ``Wt[task]`` is
    ``modulators[task]``. The module keeps every geometry attribute of
    ``nn.Conv2d`` (stride, padding, padding_mode, dilation, groups).

    Two execution paths give the same result:

    * ``'activation'``: run the bank conv, then the 1x1 modulator (no weight
      gradient through the big frozen conv);
    * ``'weight'``: compose ``Wt @ Ws`` and run one conv.

    In training the path is chosen per layer by ``execution``: ``'auto'``
    (a FLOP cost model, :meth:`prefers_activation_path`), ``'measure'`` (both
    paths timed once per input shape, cached process-wide), or forced with
    ``'activation'`` / ``'weight'``. Whenever no gradient reaches the
    modulator (eval mode, ``torch.no_grad()``, frozen task), the forward is a
    single conv with the composed weight, cached until the task, a parameter
    (in-place update, ``.data`` assignment, ``load_state_dict``), the mode or
    the device/dtype changes.

    Build it with :meth:`from_conv`; ``rc_adapter.reparameterize`` does so for
    a whole model.
    """

    task_container = 'modulators'

    def __init__(self, *args, nff=True, execution='auto', **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self.active_task = None
        self.nff = nff
        if execution not in EXECUTION_MODES:
            raise RCConfigError(f'execution must be one of {EXECUTION_MODES}, '
                             f'got {execution!r}')
        self.execution = execution
        self.modulators = nn.ModuleDict()
        group_out = self.out_channels // self.groups
        # The base modulator every new task starts from: identity, or U from
        # Response Initialization. Part of the shared state.
        self.register_buffer(
            'base_modulator',
            torch.eye(group_out, device=self.weight.device,
                      dtype=self.weight.dtype).repeat(self.groups, 1))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self._cache = None

    @classmethod
    def from_conv(cls, conv, nff=True, execution='auto'):
        """Wraps an ``nn.Conv2d``; the bank reuses its weight and bias tensors.

        Args:
            conv (nn.Conv2d): The conv to reparameterize (identity init).
            nff (bool): Weight-normalised modulators. Defaults to True.
            execution (str): ``'auto'``, ``'activation'`` or ``'weight'``.

        Returns:
            RCConv2d: the new layer, with no task yet.
        """
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size,
                    stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, nff=nff,
                    execution=execution, device='meta')
        layer.weight = nn.Parameter(conv.weight.data, requires_grad=False)
        if conv.bias is not None:
            layer.bias = nn.Parameter(conv.bias.data, requires_grad=False)
        group_out = conv.out_channels // conv.groups
        layer.base_modulator = torch.eye(
            group_out, device=conv.weight.device,
            dtype=conv.weight.dtype).repeat(conv.groups, 1)
        layer.train(conv.training)
        return layer

    def reset_parameters(self):
        # nn.Conv2d.__init__ calls this; the bank comes from from_conv, so
        # skip the (slow, pointless) random init on the meta device.
        if self.weight.device.type != 'meta':
            super().reset_parameters()

    # -- tasks ---------------------------------------------------------
    def add_task(self, task):
        check_task_name(task)
        if task in self.modulators:
            raise RCConfigError(f'task {task!r} already exists')
        mod = Modulator(self.base_modulator, self.nff)
        mod.requires_grad_(False)
        mod.train(self.training)
        self.modulators[task] = mod
        self._cache = None

    def remove_task(self, task):
        super().remove_task(task)
        self._cache = None

    def set_base(self, weight, bias, base_modulator):
        """Replaces the bank and the base modulator (Response Initialization).

        Only allowed before any task is added, so no task ever sees its
        shared bank change.
        """
        if len(self.modulators):
            raise RuntimeError('the filter bank of an RCConv2d cannot change '
                               'once tasks exist')
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
            self.base_modulator.copy_(base_modulator)
        self._cache = None

    def modulator(self, task=None):
        """The effective modulator of ``task`` (the active one by default).

        Returns:
            Tensor: shape ``(out_channels, out_channels // groups)``, NFF
            applied.
        """
        task = self.active_task if task is None else task
        if task is None:
            self._active_submodule()  # raises the "no task active" error
        return self.task_submodule(task)()

    # -- composition ---------------------------------------------------
    def _compose(self, m):
        """Composes modulator ``m`` with the bank: ``(Wt @ Ws, Wt @ b_s)``."""
        g = self.groups
        out = self.out_channels
        go = out // g
        ws = self.weight.reshape(g, go, -1)
        mg = m.reshape(g, go, go)
        weight = torch.bmm(mg, ws).reshape_as(self.weight)
        bias = None
        if self.bias is not None:
            bias = torch.bmm(mg, self.bias.reshape(g, go, 1)).reshape(out)
        return weight, bias

    def composed_weight(self, task=None):
        """Returns ``(weight, bias)`` of the plain conv equal to ``task``."""
        return self._compose(self.modulator(task))

    def merged(self, task):
        with torch.no_grad():
            weight, bias = self.composed_weight(task)
        conv = nn.Conv2d(self.in_channels, self.out_channels,
                         self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation,
                         groups=self.groups, bias=self.bias is not None,
                         padding_mode=self.padding_mode, device='meta')
        conv.weight = nn.Parameter(weight.detach().clone())
        if bias is not None:
            conv.bias = nn.Parameter(bias.detach().clone())
        conv.train(self.training)
        return conv

    # -- forward -------------------------------------------------------
    def _apply_modulator(self, y, m):
        return Modulate.apply(y, m, self.groups)

    def prefers_activation_path(self, x):
        """Cost model for training: is the two-conv path cheaper?

        Counts multiply-adds of one training step. With ``P`` output pixels,
        ``K = k*k*c_in/g`` and ``go = c_out/g``: the bank conv costs
        ``P*c_out*K`` per pass; the activation path runs it forward and for
        the input gradient (if the input needs one) plus two or three 1x1
        passes ``P*c_out*go`` (forward, modulator gradient, and the gradient
        into the bank output if the input needs one); the weight path runs it forward, for the weight
        gradient and for the input gradient, plus composing ``Wt @ Ws`` and
        its backward (``2*c_out*go*K``), which dominates deep layers at small
        inputs. Measured on the CPU (ResNet-18 layers, oneDNN), a
        multiply-add of the memory-bound 1x1 pass costs about 2.5 times one
        of the bank conv and one of the batched matmul of the composition
        about half: the terms are weighted by ``_MOD_PASS_COST`` and
        ``_COMPOSE_COST``.

        Args:
            x (Tensor): The layer input (NCHW).

        Returns:
            bool: True if the activation path is predicted cheaper.
        """
        pixels = x.shape[0]
        for i, size in enumerate(x.shape[-2:]):
            if self.padding == 'same':
                pixels *= size
                continue
            pad = 0 if self.padding == 'valid' else self.padding[i]
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            pixels *= max(1, (size + 2 * pad - span) // self.stride[i] + 1)
        per_bank = self.weight[0].numel()            # K
        per_mod = self.out_channels // self.groups   # go
        bank_passes = 1 + int(x.requires_grad)
        # 1x1 forward and weight gradient; its input gradient only feeds
        # the bank's input gradient.
        mod_passes = 2 + int(x.requires_grad)
        activation = pixels * (per_bank * bank_passes
                               + _MOD_PASS_COST * mod_passes * per_mod)
        weight = (pixels * per_bank * (bank_passes + 1)
                  + _COMPOSE_COST * 2 * per_mod * per_bank)
        return activation < weight

    def _shape_key(self, x):
        return (self.in_channels, self.out_channels, self.kernel_size,
                self.stride, self.padding, self.dilation, self.groups,
                self.padding_mode, self.bias is not None,
                tuple(x.shape), x.requires_grad, x.dtype, x.device.type,
                torch.get_num_threads())

    def _measure_prefers_activation(self, x, mod, repeats=3):
        """Times one forward+backward of both paths on ``x``; no side
        effects on gradients (uses ``torch.autograd.grad``)."""
        params = [p for p in mod.parameters() if p.requires_grad]
        probe = x.detach().requires_grad_(x.requires_grad)
        inputs = params + ([probe] if probe.requires_grad else [])

        def run(activation):
            y = self._run_path(probe, mod, activation)
            torch.autograd.grad(y, inputs, torch.ones_like(y))

        times = {}
        for activation in (True, False):
            run(activation)  # warm-up (allocator, oneDNN primitives)
        samples = {True: [], False: []}
        for _ in range(repeats):
            for activation in (True, False):  # interleaved
                start = time.perf_counter()
                run(activation)
                samples[activation].append(time.perf_counter() - start)
        for activation, ts in samples.items():
            times[activation] = statistics.median(ts)
        return times[True] <= times[False]

    def _uses_activation_path(self, x, mod=None):
        if not torch.is_grad_enabled():
            return False
        if self.execution in ('activation', 'weight'):
            return self.execution == 'activation'
        if self.execution == 'measure':
            key = self._shape_key(x)
            if key not in _MEASURED:
                mod = self._active_submodule() if mod is None else mod
                if not any(p.requires_grad for p in mod.parameters()):
                    return self.prefers_activation_path(x)
                _MEASURED[key] = self._measure_prefers_activation(x, mod)
            return _MEASURED[key]
        return self.prefers_activation_path(x)

    def _run_path(self, x, mod, activation):
        if activation:
            y = self._conv_forward(x, self.weight, self.bias)
            return self._apply_modulator(y, mod())
        weight, bias = self._compose(mod())
        return self._conv_forward(x, weight, bias)

    def _cache_state(self, mod):
        tensors = list(mod._parameters.values()) + [self.weight]
        if self.bias is not None:
            tensors.append(self.bias)
        return tensors

    def _cached_composed(self, task):
        """``(weight, bias)`` of ``task`` composed without autograd, cached.

        The cache is valid while every tensor it was built from has the same
        storage (``data_ptr``) and version counter (bumped by every in-place
        op: optimizer steps, ``copy_`` in ``load_state_dict``). The cache
        keeps aliases of those tensors, so an old storage cannot be freed
        and its address reused by a ``.data`` assignment.
        """
        mod = self.task_submodule(task)
        tensors = self._cache_state(mod)
        cache = self._cache
        if cache is not None and cache[0] == task and len(cache[1]) == len(
                tensors):
            for t, (alias, version) in zip(tensors, cache[1]):
                if t.data_ptr() != alias.data_ptr() or t._version != version \
                        or t.dtype != alias.dtype or t.device != alias.device:
                    break
            else:
                return cache[2], cache[3]
        with torch.no_grad():
            weight, bias = self._compose(mod())
        state = [(t.detach(), t._version) for t in tensors]
        self._cache = (task, state, weight, bias)
        return weight, bias

    def forward(self, x):
        mod = self._active_submodule()
        task = self.active_task
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in mod._parameters.values())
        if not needs_grad:
            weight, bias = self._cached_composed(task)
            return self._conv_forward(x, weight, bias)
        return self._run_path(x, mod, self._uses_activation_path(x, mod))

    def _apply(self, fn, *args, **kwargs):
        # .to()/.half()/.cuda() ...: never reuse a weight of the old dtype.
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode=True):
        self._cache = None
        return super().train(mode)

    def extra_repr(self):
        return (super().extra_repr() + f', nff={self.nff}, '
                f'execution={self.execution!r}, tasks={self.task_names()}')


class TaskSpecific(TaskModule):
    """A frozen base module plus one trainable full copy per task.

    The forward runs the active task's copy, so a task's parameters *and*
    buffers (e.g. BatchNorm running statistics) are its own. Copies are deep
    copies, so subclasses keep their behaviour (timm ``BatchNormAct2d``'s
    activation, mmcv ``SyncBN`` ...). Attributes not found on this wrapper are
    read from the base module (``num_features``, ``eps`` ...).

    Args:
        base (nn.Module): The module to copy per task; kept frozen as the
            base state.
    """

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.tasks = nn.ModuleDict()
        # A new module starts in train mode; follow the wrapped one instead.
        self.train(base.training)

    def add_task(self, task):
        check_task_name(task)
        if task in self.tasks:
            raise RCConfigError(f'task {task!r} already exists')
        module = copy.deepcopy(self.base)
        module.requires_grad_(False)
        module.train(self.training)
        self.tasks[task] = module

    def merged(self, task):
        module = copy.deepcopy(self.task_submodule(task))
        module.requires_grad_(True)
        return module

    def forward(self, *args, **kwargs):
        return self._active_submodule()(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get('_modules', {})
            if 'base' in modules and not name.startswith('_'):
                return getattr(modules['base'], name)
            raise

    def extra_repr(self):
        return f'tasks={self.task_names()}'


def conv_parameter_count(conv):
    """Parameters of a conv layer (weight and bias)."""
    return sum(p.numel() for p in conv.parameters(recurse=False))


def modulator_parameter_count(conv, nff):
    """Parameters one task's modulator of ``conv`` would have."""
    count = conv.out_channels * (conv.out_channels // conv.groups)
    return count + (conv.out_channels if nff else 0)

