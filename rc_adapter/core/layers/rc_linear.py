"""``RCLinear``: a reparameterized ``nn.Linear``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rc_layer import RCLayer

__all__ = ['RCLinear']


class RCLinear(RCLayer, nn.Linear):
    """A linear layer reparameterized as a frozen bank and per-task
    output-side modulators: ``y = Wt[task] (Ws x + b_s)``.

    With ``blocks > 1`` the modulator is block diagonal (the packed q/k/v
    projection of attention: each projection gets its own block).

    Works on any layout with features last (tokens ``(B, N, C)``,
    channel-last maps ``(B, H, W, C)``) without copies: the activation path
    applies the modulator to the last dimension. See
    :class:`~rc_adapter.core.layers.RCConv2d` for the execution paths and
    the eval-time cache, which are the same.
    """

    channel_dim = -1
    #: Cost weights of the training path choice
    #: (:func:`rc_adapter.core.execution.activation_path_cheaper`): the
    #: modulator pass is a GEMM on features-last tokens.
    mod_pass_cost = 1.0
    compose_cost = 1.2
    #: Eval always uses the cached composition: a low-rank pass over tokens
    #: is two thin GEMMs, far slower per multiply-add than the bank's (ViT-S
    #: rank 8: unmerged eval 1.47x plain without the cache).
    eval_activation_max_overhead = 0.0

    def __init__(self, in_features: int, out_features: int,
                 bias: bool = True, *, nff: bool = True,
                 execution: str = 'auto', family: str = 'full',
                 rank: int = 0, shift: bool = False, blocks: int = 1,
                 device=None, dtype=None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias,
                           device=device, dtype=dtype)
        self._init_rc(out_channels=out_features, groups=blocks, nff=nff,
                      execution_mode=execution, family=family, rank=rank,
                      shift=shift)

    @classmethod
    def from_linear(cls, linear: nn.Linear, nff: bool = True,
                    execution: str = 'auto', family: str = 'full',
                    rank: int = 0, shift: Optional[bool] = None,
                    blocks: int = 1) -> 'RCLinear':
        """Wraps a linear layer; the bank reuses its weight and bias.

        Args:
            linear: The layer to reparameterize (identity init).
            nff: Weight-normalised modulators.
            execution: Training execution path.
            family: ``'full'``, ``'lowrank'`` or ``'diagonal'``.
            rank: The low-rank family's rank.
            shift: The diagonal family's per-channel shift; by default only
                when the layer has a bias.
            blocks: Independent output blocks of the modulator (3 for a
                packed q/k/v projection).
        """
        if shift is None:
            shift = linear.bias is not None
        layer = cls(linear.in_features, linear.out_features,
                    bias=linear.bias is not None, nff=nff,
                    execution=execution, family=family, rank=rank,
                    shift=shift, blocks=blocks, device='meta')
        layer.weight = nn.Parameter(linear.weight.data, requires_grad=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        if layer.base_modulator is not None:
            go = linear.out_features // blocks
            layer.base_modulator = torch.eye(
                go, device=linear.weight.device,
                dtype=linear.weight.dtype).repeat(blocks, 1)
        layer.train(linear.training)
        return layer

    def reset_parameters(self) -> None:
        if self.weight.device.type != 'meta':
            super().reset_parameters()

    def _bank_forward(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def output_positions(self, x: torch.Tensor) -> int:
        return max(1, x.numel() // max(1, x.shape[-1]))

    def _plain_module(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features,
                         bias=self.bias is not None, device='meta')

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + ', ' + self.rc_repr()
