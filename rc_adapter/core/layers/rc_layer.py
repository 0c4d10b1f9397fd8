"""``RCLayer``: what every reparameterized weight layer shares.

A weight layer ``W`` (conv or linear) becomes a frozen filter bank ``Ws``
(kept as the layer's own ``.weight``/``.bias``, so checkpoint keys do not
move) and one modulator ``Wt`` per task (``modulators.<task>``), so that
``y = Wt (Ws x + b_s)``. The family of the modulators (full, low-rank,
diagonal; :mod:`.modulators`) is fixed per layer. The frozen base modulator
``B`` every new task starts from is the buffer ``base_modulator`` -- the
identity or Response Initialization's ``U`` -- or ``None`` for an identity
the family does not need to store.

The concrete layers (:mod:`.rc_conv`, :mod:`.rc_linear`) add the bank
operation itself; the execution paths and their choice live in
:mod:`rc_adapter.core.execution`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .. import execution
from ..config import check_task_name
from ..errors import RCConfigError
from .modulators import FAMILIES, FAMILY_TYPES, build_modulator
from .task_module import TaskModule

__all__ = ['RCLayer']


def _autocast_state(device_type: str) -> tuple:
    if not torch.is_autocast_enabled(device_type):
        return (False,)
    return (True, torch.get_autocast_dtype(device_type))


def _snapshot(tensors: list[torch.Tensor]) -> list[tuple]:
    """Aliases and version counters of ``tensors``, for :func:`_unchanged`.
    The aliases keep the storages alive, so an old storage cannot be freed
    and its address reused by a ``.data`` assignment."""
    return [(t.detach(), t._version) for t in tensors]


def _unchanged(state: list[tuple], tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor still has the storage (``data_ptr``), version
    counter (bumped by every in-place op: optimizer steps, ``copy_`` in
    ``load_state_dict``), dtype and device it had in ``state``."""
    if len(state) != len(tensors):
        return False
    return all(t.data_ptr() == alias.data_ptr() and t._version == version
               and t.dtype == alias.dtype and t.device == alias.device
               for t, (alias, version) in zip(tensors, state))


class RCLayer(TaskModule):
    """Mixin of the reparameterized weight layers (see the module docstring).

    Subclasses also derive from the torch layer they replace, call its
    ``__init__`` and then :meth:`_init_rc`, and implement
    :meth:`_bank_forward`, :meth:`output_positions` and
    :meth:`_plain_module`.
    """

    task_container = 'modulators'
    #: Where the channels of the bank's output are (1: NC..., -1: tokens).
    channel_dim = 1

    def _init_rc(self, *, out_channels: int, groups: int, nff: bool,
                 execution_mode: str, family: str, rank: int,
                 shift: bool) -> None:
        self.active_task = None
        if execution_mode not in execution.EXECUTION_MODES:
            raise RCConfigError(f'execution must be one of '
                                f'{execution.EXECUTION_MODES}, got '
                                f'{execution_mode!r}')
        if family not in FAMILIES:
            raise RCConfigError(f'modulator family must be one of '
                                f'{FAMILIES}, got {family!r}')
        go = out_channels // groups
        if family == 'lowrank' and not 1 <= rank <= go:
            raise RCConfigError(f'low-rank modulators need 1 <= rank <= '
                                f'{go} here, got {rank}')
        self.rc_out = out_channels
        self.mod_groups = groups
        self.nff = nff
        self.execution = execution_mode
        self.family = family
        self.rank = rank if family == 'lowrank' else 0
        self.shift = bool(shift) and family == 'diagonal'
        self.modulators = nn.ModuleDict()
        if family == 'full':
            # The paper's layout: the base is always stored (identity or U).
            self.register_buffer('base_modulator', torch.eye(
                go, device=self.weight.device,
                dtype=self.weight.dtype).repeat(groups, 1))
        else:
            self.register_buffer('base_modulator', None)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self._cache = None
        self._fold = None
        self._eval_choice = None

    # -- the layer type's part -------------------------------------------
    def _bank_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The plain layer's operation with ``weight``/``bias``."""
        raise NotImplementedError

    def output_positions(self, x: torch.Tensor) -> int:
        """Output positions (pixels x batch, or tokens) for input ``x``."""
        raise NotImplementedError

    def _plain_module(self) -> nn.Module:
        """A plain layer of the original type and geometry (meta device)."""
        raise NotImplementedError

    @property
    def fan_in(self) -> int:
        """Multiply-adds per output value of the bank (``K``)."""
        weight = self.weight
        return weight.numel() // weight.shape[0]

    # -- tasks -------------------------------------------------------------
    def add_task(self, task: str) -> None:
        check_task_name(task)
        if task in self.modulators:
            raise RCConfigError(f'task {task!r} already exists')
        mod = build_modulator(
            self.family, out_channels=self.rc_out, groups=self.mod_groups,
            base=self.base_modulator, nff=self.nff, rank=self.rank,
            shift=self.shift, like=self.weight)
        mod.requires_grad_(False)
        mod.train(self.training)
        self.modulators[task] = mod
        self._cache = None

    def remove_task(self, task: str) -> None:
        super().remove_task(task)
        self._cache = None

    def set_base(self, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 base_modulator: Optional[torch.Tensor]) -> None:
        """Replaces the bank and the base modulator (Response
        Initialization).

        Only allowed before any task is added, so no task ever sees its
        shared bank change.
        """
        if len(self.modulators):
            raise RuntimeError('the filter bank of an RC layer cannot change '
                               'once tasks exist')
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
            if base_modulator is None:
                if self.family == 'full':
                    raise RuntimeError('a full-modulator layer keeps its '
                                       'base modulator')
                self.base_modulator = None
            elif self.base_modulator is None:
                self.base_modulator = base_modulator.detach().clone().to(
                    self.weight)
            else:
                self.base_modulator.copy_(base_modulator)
        self._cache = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A low-rank/diagonal layer built with an identity base (no buffer)
        # receives the stored base of a Response-Initialized bank.
        key = prefix + 'base_modulator'
        if self.base_modulator is None and key in state_dict:
            self.base_modulator = torch.empty_like(
                state_dict[key], device=self.weight.device,
                dtype=self.weight.dtype)
            self._cache = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- composition ---------------------------------------------------------
    def modulator(self, task: Optional[str] = None) -> torch.Tensor:
        """The effective modulator of ``task`` (the active one by default).

        Returns:
            Tensor: ``(c_out, c_out // groups)``, NFF applied.
        """
        task = self.active_task if task is None else task
        if task is None:
            self._active_submodule()  # raises the "no task is active" error
        return self.task_submodule(task).matrix(self.base_modulator)

    def _compose(self, m: torch.Tensor, shift: Optional[torch.Tensor] = None
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Composes the effective modulator ``m`` with the bank:
        ``(Wt @ Ws, Wt @ b_s + shift)``."""
        g = self.mod_groups
        go = self.rc_out // g
        ws = self.weight.reshape(g, go, -1)
        mg = m.reshape(g, go, go)
        weight = torch.bmm(mg, ws).reshape_as(self.weight)
        bias = None
        if self.bias is not None:
            bias = torch.bmm(mg, self.bias.reshape(g, go, 1)).reshape(-1)
        if shift is not None:
            bias = shift if bias is None else bias + shift
        return weight, bias

    def _compose_module(self, mod: nn.Module
                        ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(weight, bias)`` of the plain layer equal to modulator ``mod``.

        Low-rank and diagonal modulators compose without forming their
        ``c_out x go`` matrix (``Ws + U (V^T Ws)``, ``diag(d) Ws``)."""
        if mod.family == 'full':
            return self._compose(mod.matrix(self.base_modulator))
        g = self.mod_groups
        go = self.rc_out // g
        base = self.base_modulator
        weight = mod.compose(self.weight.reshape(g, go, -1), base)
        bias = None
        if self.bias is not None:
            bias = mod.compose(self.bias.reshape(g, go, 1), base).reshape(-1)
        shift = mod.bias_shift()
        if shift is not None:
            bias = shift if bias is None else bias + shift
        return weight.reshape_as(self.weight), bias

    def composed_weight(self, task: Optional[str] = None
                        ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns ``(weight, bias)`` of the plain layer equal to ``task``."""
        task = self.active_task if task is None else task
        if task is None:
            self._active_submodule()
        return self._compose_module(self.task_submodule(task))

    def effective_weight(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The active task's composed ``(weight, bias)``: differentiable
        when the task trains, else the cached composition (eval)."""
        mod = self._active_submodule()
        if torch.is_grad_enabled() and any(p.requires_grad
                                           for p in mod.parameters()):
            return self._compose_module(mod)
        return self._cached_composed(self.active_task)

    def merged(self, task: str) -> nn.Module:
        with torch.no_grad():
            weight, bias = self.composed_weight(task)
        plain = self._plain_module()
        plain.weight = nn.Parameter(weight.detach().clone())
        if bias is not None:
            plain.bias = nn.Parameter(bias.detach().clone())
        plain.train(self.training)
        return plain

    # -- forward -------------------------------------------------------------
    def _apply_modulator(self, y: torch.Tensor, mod: nn.Module
                         ) -> torch.Tensor:
        return mod.modulate(y, self.base_modulator, self.channel_dim)

    def _run_path(self, x: torch.Tensor, mod: nn.Module, activation: bool
                  ) -> torch.Tensor:
        """One forward with gradients on the activation or the weight path;
        the activation path runs the bank with the base folded in where it
        folds (:meth:`_folded_bank`)."""
        if activation:
            folded = self._folded_bank()
            if folded is not None:
                return mod.modulate_folded(self._bank_forward(x, *folded),
                                           self.base_modulator,
                                           self.channel_dim)
            y = self._bank_forward(x, self.weight, self.bias)
            return self._apply_modulator(y, mod)
        weight, bias = self._compose_module(mod)
        return self._bank_forward(x, weight, bias)

    def prefers_activation_path(self, x: torch.Tensor) -> bool:
        """The cost model's choice for input ``x`` (see
        :func:`rc_adapter.core.execution.activation_path_cheaper`)."""
        mod = (self.task_submodule(self.active_task)
               if self.active_task is not None else None)
        return execution.activation_path_cheaper(self, x, mod)

    def _shape_key(self, x: torch.Tensor) -> tuple:
        return execution.shape_key(self, x)

    def _measure_prefers_activation(self, x: torch.Tensor, mod: nn.Module,
                                    repeats: int = 3) -> bool:
        return execution.measure_prefers_activation(self, x, mod, repeats)

    def _uses_activation_path(self, x: torch.Tensor, mod: nn.Module
                              ) -> bool:
        if not torch.is_grad_enabled():
            return False
        if self.execution in ('activation', 'weight'):
            return self.execution == 'activation'
        if self.execution == 'measure':
            key = self._shape_key(x)
            if key not in execution._MEASURED:
                if not any(p.requires_grad for p in mod.parameters()):
                    return self.prefers_activation_path(x)
                execution._MEASURED[key] = self._measure_prefers_activation(
                    x, mod)
            return execution._MEASURED[key]
        return self.prefers_activation_path(x)

    def _cache_state(self, mod: nn.Module) -> list[torch.Tensor]:
        tensors = [p for p in mod._parameters.values() if p is not None]
        tensors.append(self.weight)
        if self.bias is not None:
            tensors.append(self.bias)
        if self.base_modulator is not None:
            tensors.append(self.base_modulator)
        return tensors

    def _cached(self, task: str, kind: str, build: Callable[[], Any]
                ) -> Any:
        """``build()`` for ``task`` (``kind``: what it builds), computed
        without autograd and cached while the tensors it is built from are
        unchanged (:func:`_unchanged`). One entry: the active task's."""
        mod = self.task_submodule(task)
        tensors = self._cache_state(mod)
        cache = self._cache
        # Built under autocast, the tensors have the autocast dtype: a
        # cached entry is only valid in the same autocast state.
        key = (task, kind, _autocast_state(self.weight.device.type))
        if cache is not None and cache[0] == key and _unchanged(cache[1],
                                                                tensors):
            return cache[2]
        with torch.no_grad():
            value = build()
        self._cache = (key, _snapshot(tensors), value)
        return value

    def _cached_composed(self, task: str
                         ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(weight, bias)`` of ``task`` composed, cached (:meth:`_cached`).
        """
        return self._cached(task, 'weight', lambda: self._compose_module(
            self.task_submodule(task)))

    def _eval_activation(self, x: torch.Tensor, mod: nn.Module
                         ) -> torch.Tensor:
        """The activation path without gradients: the bank, then the
        modulator from its cached small operands
        (:meth:`~.modulators._Modulator.eval_operands`) where the family
        has them and the map is a contiguous NC... one."""
        y = self._bank_forward(x, self.weight, self.bias)
        if self.channel_dim == 1 and y.is_contiguous():
            operands = self._cached(
                self.active_task, 'operands',
                lambda: mod.eval_operands(self.base_modulator, y.dtype))
            if operands is not None:
                return mod.modulate_prepared(y, operands)
        return self._apply_modulator(y, mod)

    def base_folds(self) -> bool:
        """Whether the activation path in training runs on the bank with
        the frozen base folded in (:meth:`_folded_bank`): a low-rank layer
        with an orthogonal base (Response Initialization's), a diagonal
        layer with any base."""
        if self.base_modulator is None or self.family == 'full':
            return False  # nothing to fold / the full matrix stays whole
        if torch.compiler.is_compiling():
            # The folded bank is a cache kept between steps, checked by
            # storage and version: not traceable without graph breaks.
            return False
        return self._fold_state()[1]

    def _fold_state(self) -> list:
        """``[snapshot, folds, folded]`` for the current bank and (not
        None) base: whether the base folds (checked once), and the folded
        bank once the activation path has needed it (else None)."""
        tensors = [t for t in (self.weight, self.bias, self.base_modulator)
                   if t is not None]
        if self._fold is None or not _unchanged(self._fold[0], tensors):
            folds = FAMILY_TYPES[self.family].folds_base(self.base_modulator)
            self._fold = [_snapshot(tensors), folds, None]
        return self._fold

    def _folded_bank(self) -> Optional[tuple[torch.Tensor,
                                             Optional[torch.Tensor]]]:
        """``(B Ws, B b_s)``: the bank with the frozen base ``B`` folded in.

        Shared by every task and frozen like the bank, so a task's
        activation path runs this bank and then only its per-task part
        (:meth:`~.modulators._Modulator.modulate_folded`) instead of a
        ``c_out x go`` pass for ``B``. It is a second copy of the bank:
        built when training first needs it, kept while the bank and the
        base are unchanged, dropped by ``eval()``, never saved (derived
        from saved tensors).

        Returns:
            The folded ``(weight, bias)``, or None when the base does not
            fold (:meth:`base_folds`).
        """
        if not self.base_folds():
            return None
        state = self._fold
        if state[2] is None:
            with torch.no_grad(), torch.autocast(self.weight.device.type,
                                                 enabled=False):
                state[2] = self._compose(self.base_modulator)
        return state[2]

    def _eval_uses_activation_path(self) -> bool:
        """:func:`~rc_adapter.core.execution.eval_uses_activation_path`,
        kept per execution mode and base (it is fixed by the layer's
        geometry and family; every eval forward asks)."""
        key = (self.execution, self.base_modulator is None)
        choice = self._eval_choice
        if choice is None or choice[0] != key:
            choice = self._eval_choice = (
                key, execution.eval_uses_activation_path(self))
        return choice[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mod = self._active_submodule()
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in mod.parameters())
        if not needs_grad:
            if self._eval_uses_activation_path():
                return self._eval_activation(x, mod)
            weight, bias = self._cached_composed(self.active_task)
            return self._bank_forward(x, weight, bias)
        return self._run_path(x, mod, self._uses_activation_path(x, mod))

    def _apply(self, fn, *args, **kwargs):
        # .to()/.half()/.cuda() ...: never reuse a weight of the old dtype.
        self._cache = self._fold = None
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> 'RCLayer':
        self._cache = None
        if not mode:
            self._fold = None
        return super().train(mode)

    def rc_repr(self) -> str:
        family = self.family + (f'(r={self.rank})' if self.rank else '')
        return (f'modulator={family}, nff={self.nff}, '
                f'execution={self.execution!r}, tasks={self.task_names()}')
