"""Task-aware layers, one per file.

* :class:`TaskModule` -- the protocol of every module holding per-task
  tensors (:mod:`.task_module`).
* :class:`RCLayer` -- what every reparameterized weight layer shares: a frozen
  bank plus per-task modulators (:mod:`.rc_layer`), with the modulator
  families in :mod:`.modulators`.
* :class:`RCConv1d`, :class:`RCConv2d`, :class:`RCConv3d` (:mod:`.rc_conv`),
  :class:`RCLinear` (:mod:`.rc_linear`) and :class:`RCMultiheadAttention`
  (:mod:`.rc_attention`).
* :class:`RAConv2d` -- the residual-adapter baselines
  (:mod:`.residual_adapter`).
* :class:`TaskSpecific` -- a frozen base module plus one full copy per task:
  norms, and layers copied whole (:mod:`.task_specific`).
"""
from .modulators import (FAMILIES, DiagonalModulator, FullModulator,
                         LowRankModulator, Modulator, build_modulator,
                         modulator_cost)
from .rc_attention import RCMultiheadAttention
from .rc_conv import RCConv1d, RCConv2d, RCConv3d
from .rc_layer import RCLayer
from .rc_linear import RCLinear
from .residual_adapter import RA_MODES, RAConv2d
from .task_module import TaskModule
from .task_specific import TaskSpecific

__all__ = ['TaskModule', 'RCLayer', 'RCConv1d', 'RCConv2d', 'RCConv3d',
           'RCLinear', 'RCMultiheadAttention', 'RAConv2d', 'RA_MODES',
           'TaskSpecific', 'FAMILIES', 'FullModulator', 'LowRankModulator',
           'DiagonalModulator', 'Modulator', 'build_modulator',
           'modulator_cost']

