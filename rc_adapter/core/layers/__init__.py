"""Task-aware layers, one per file.

* :class:`TaskModule` -- the protocol of every module holding per-task
  tensors (:mod:`.task_module`).
* :class:`RCLayer` -- what every reparameterized weight layer shares: a frozen
  bank plus per-task modulators (:mod:`.rc_layer`), with the modulator
  families in :mod:`.modulators`.
* :class:`RCConv1d`, :class:`RCConv2d`, :class:`RCConv3d` (:mod:`.rc_conv`),
  :class:`RCLinear` (:mod:`.rc_linear`) and :class:`RCMultiheadAttention`
  (:mod:`.rc_attention`).
* :class:`TaskSpecific` -- a frozen base module plus one full copy per task:
  norms, and layers copied whole (:mod:`.task_specific`).
"""
from .modulators import (FAMILIES, DiagonalModulator, FullModulator,
                         LowRankModulator, Modulator, build_modulator,
                         modulator_cost)
from .rc_conv import RCConv1d, RCConv2d, RCConv3d
from .rc_layer import RCLayer
from .task_module import TaskModule
from .task_specific import TaskSpecific

__all__ = ['TaskModule', 'RCLayer', 'RCConv1d', 'RCConv2d', 'RCConv3d',
           'TaskSpecific', 'FAMILIES', 'FullModulator', 'LowRankModulator',
           'DiagonalModulator', 'Modulator', 'build_modulator',
           'modulator_cost', 'conv_parameter_count',
           'modulator_parameter_count']


def conv_parameter_count(conv):
    """Parameters of a weight layer (weight and bias)."""
    return sum(p.numel() for p in conv.parameters(recurse=False))


def modulator_parameter_count(conv, nff):
    """Parameters one task's full modulator of ``conv`` would have."""
    return modulator_cost('full', out_channels=conv.out_channels,
                          groups=conv.groups, nff=nff)
