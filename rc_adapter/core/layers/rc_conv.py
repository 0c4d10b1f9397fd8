"""Reparameterized convolutions: ``RCConv1d``, ``RCConv2d``, ``RCConv3d``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..execution import Modulate
from .rc_layer import RCLayer

__all__ = ['RCConv1d', 'RCConv2d', 'RCConv3d']


class _RCConvNd(RCLayer):
    """The conv part of an RC conv: the bank is the conv itself."""

    _plain_type: type = nn.Conv2d
    channel_dim = 1

    def __init__(self, *args, nff: bool = True, execution: str = 'auto',
                 family: str = 'full', rank: int = 0, shift: bool = False,
                 **kwargs) -> None:
        self._plain_type.__init__(self, *args, **kwargs)
        self._init_rc(out_channels=self.out_channels, groups=self.groups,
                      nff=nff, execution_mode=execution, family=family,
                      rank=rank, shift=shift)

    @classmethod
    def from_conv(cls, conv: nn.Module, nff: bool = True,
                  execution: str = 'auto', family: str = 'full',
                  rank: int = 0, shift: Optional[bool] = None) -> 'RCLayer':
        """Wraps a conv; the bank reuses its weight and bias tensors.

        Args:
            conv: The conv to reparameterize (identity init).
            nff: Weight-normalised modulators. Defaults to True.
            execution: ``'auto'``, ``'measure'``, ``'activation'`` or
                ``'weight'``.
            family: ``'full'``, ``'lowrank'`` or ``'diagonal'``.
            rank: The low-rank family's rank.
            shift: The diagonal family's per-channel shift; by default
                only when the conv has a bias.

        Returns:
            The new layer, with no task yet.
        """
        if shift is None:
            shift = conv.bias is not None
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size,
                    stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, nff=nff,
                    execution=execution, family=family, rank=rank,
                    shift=shift, device='meta')
        layer.weight = nn.Parameter(conv.weight.data, requires_grad=False)
        if conv.bias is not None:
            layer.bias = nn.Parameter(conv.bias.data, requires_grad=False)
        if layer.base_modulator is not None:
            go = conv.out_channels // conv.groups
            layer.base_modulator = torch.eye(
                go, device=conv.weight.device,
                dtype=conv.weight.dtype).repeat(conv.groups, 1)
        layer.train(conv.training)
        return layer

    def reset_parameters(self) -> None:
        # The conv's __init__ calls this; the bank comes from from_conv, so
        # skip the (slow, pointless) random init on the meta device.
        if self.weight.device.type != 'meta':
            super().reset_parameters()

    def _bank_forward(self, x, weight, bias):
        return self._conv_forward(x, weight, bias)

    def output_positions(self, x: torch.Tensor) -> int:
        positions = x.shape[0] if x.dim() == len(self.kernel_size) + 2 else 1
        for i, size in enumerate(x.shape[-len(self.kernel_size):]):
            if self.padding == 'same':
                positions *= size
                continue
            pad = 0 if self.padding == 'valid' else self.padding[i]
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            positions *= max(1, (size + 2 * pad - span) // self.stride[i] + 1)
        return positions

    def _apply_modulator(self, y, mod):
        if self.family != 'full':
            return super()._apply_modulator(y, mod)
        m = mod.matrix(self.base_modulator)
        if y.dim() == 4:
            return Modulate.apply(y, m, self.mod_groups)
        shape = y.shape
        out = Modulate.apply(y.reshape(shape[0], shape[1], -1, 1), m,
                             self.mod_groups)
        return out.reshape(shape)

    def _plain_module(self) -> nn.Module:
        return self._plain_type(
            self.in_channels, self.out_channels, self.kernel_size,
            stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups,
            bias=self.bias is not None, padding_mode=self.padding_mode,
            device='meta')

    def extra_repr(self) -> str:
        return self._plain_type.extra_repr(self) + ', ' + self.rc_repr()


class RCConv1d(_RCConvNd, nn.Conv1d):
    """A ``Conv1d`` reparameterized as a frozen bank and per-task
    modulators (see :class:`RCConv2d`)."""

    _plain_type = nn.Conv1d


class RCConv2d(_RCConvNd, nn.Conv2d):
    """A convolution reparameterized as a frozen filter bank and per-task
    modulators (Kanakis et al., ECCV 2020).

    ``y = Wt[task] (Ws * x + b_s)``, where ``Ws``/``b_s`` are this module's
    ``weight``/``bias`` (frozen, shared by all tasks) and ``Wt[task]`` is
    ``modulators[task]`` -- a full, low-rank or diagonal modulator
    (:mod:`.modulators`), block diagonal for grouped convs. The module keeps
    every geometry attribute of ``nn.Conv2d`` (stride, padding,
    padding_mode, dilation, groups).

    Two execution paths give the same result: ``'activation'`` runs the
    bank conv, then the modulator (no weight gradient through the big
    frozen conv); ``'weight'`` composes ``Wt @ Ws`` and runs one conv. In
    training the path is chosen per layer by ``execution`` (a cost model,
    a one-time measurement, or forced; :mod:`rc_adapter.core.execution`).
    Whenever no gradient reaches the modulator (eval mode, ``no_grad``,
    frozen task), the forward is a single conv with the composed weight,
    cached until the task, a parameter, the mode or the device/dtype
    changes -- except where the modulator pass is nearly free (low-rank and
    diagonal modulators on wide layers, or ``execution='activation'``):
    those layers run the bank and the modulator and keep no copy of the
    weight, only (low-rank family) the modulator's small operands
    (:func:`rc_adapter.core.execution.eval_uses_activation_path`).

    Build it with :meth:`from_conv`; ``rc_adapter.reparameterize`` does so
    for a whole model.
    """

    _plain_type = nn.Conv2d


class RCConv3d(_RCConvNd, nn.Conv3d):
    """A ``Conv3d`` reparameterized as a frozen bank and per-task
    modulators (see :class:`RCConv2d`)."""

    _plain_type = nn.Conv3d
