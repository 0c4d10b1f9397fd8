"""Per-task modulators ``Wt`` of an RC layer, one class per family.

A modulator maps the ``c_out`` outputs of a frozen filter bank ``Ws`` to the
layer's ``c_out`` outputs. It is block diagonal with ``groups`` blocks of
``go x go`` (``go = c_out / groups``): one block for a Linear or a plain conv,
``groups`` blocks for a grouped or depthwise conv, three (q, k, v) for the
packed input projection of multi-head attention. ``base`` is the frozen base
modulator ``B`` shared by all tasks -- the identity, or ``U`` from Response
Initialization -- given as a ``(c_out, go)`` tensor, or ``None`` for the
identity.

Families (per-task parameters for a layer of ``c_out`` outputs):

* :class:`FullModulator` -- the paper's ``c_out x go`` matrix, initialised to
  ``B``; ``c_out * go`` (+ ``c_out`` NFF gains).
* :class:`LowRankModulator` -- ``B + U V^T`` per block with rank ``r``; ``U``
  starts at zero so a new task computes the base function; ``2 r c_out``
  (+ ``c_out`` NFF gains).
* :class:`DiagonalModulator` -- ``diag(d) B`` plus an optional per-channel
  shift; ``c_out`` (+ ``c_out`` with the shift).

With NFF (normalized feature fusion, Kanakis et al. 2020) a full or low-rank
modulator's rows are ``g * m / ||m||``, with ``g`` initialised to the rows'
norms so the function is unchanged. A diagonal modulator is already a
per-channel gain and has no NFF.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ..config import FAMILIES
from ..execution import (LowRankModulate, LowRankModulateLast,
                         low_rank_product)

__all__ = ['FAMILIES', 'FAMILY_TYPES', 'FullModulator', 'LowRankModulator',
           'DiagonalModulator', 'Modulator', 'build_modulator',
           'modulator_cost', 'apply_blocks']

def apply_blocks(y: torch.Tensor, blocks: torch.Tensor,
                 channel_dim: int) -> torch.Tensor:
    """Applies a block-diagonal matrix to the channels of ``y``.

    Args:
        y: Tensor with ``groups * i`` channels along ``channel_dim`` (1 for
            NC... conv activations, -1 for channel-last tokens).
        blocks: ``(groups, o, i)``.
        channel_dim: 1 or -1.

    Returns:
        Tensor: ``y`` with ``groups * o`` channels.
    """
    g, o, i = blocks.shape
    if channel_dim == 1:
        n = y.shape[0]
        rest = y.shape[2:]
        out = torch.matmul(blocks, y.reshape(n, g, i, -1))
        return out.reshape((n, g * o) + tuple(rest))
    lead = y.shape[:-1]
    if g == 1:
        return torch.matmul(y, blocks[0].t())
    out = torch.einsum('goi,bgi->bgo', blocks, y.reshape(-1, g, i))
    return out.reshape(tuple(lead) + (g * o,))


def _channel_view(v: torch.Tensor, ndim: int, channel_dim: int
                  ) -> torch.Tensor:
    """Shapes a per-channel vector to broadcast over ``channel_dim``."""
    if channel_dim == 1:
        return v.reshape((1, -1) + (1,) * (ndim - 2))
    return v


def _scale(y: torch.Tensor, v: torch.Tensor, channel_dim: int
           ) -> torch.Tensor:
    """``y`` times a per-channel vector, in ``y``'s dtype (autocast)."""
    return y * _channel_view(v, y.dim(), channel_dim).to(y.dtype)


def _shift(y: torch.Tensor, v: torch.Tensor, channel_dim: int
           ) -> torch.Tensor:
    """``y`` plus a per-channel vector, in ``y``'s dtype (autocast)."""
    return y + _channel_view(v, y.dim(), channel_dim).to(y.dtype)


class _Modulator(nn.Module):
    """Common interface of the families."""

    family = ''

    def __init__(self, out_channels: int, groups: int):
        super().__init__()
        self.out_channels = out_channels
        self.groups = groups

    @property
    def group_out(self) -> int:
        return self.out_channels // self.groups

    def matrix(self, base: Optional[torch.Tensor]) -> torch.Tensor:
        """The effective modulator, ``(c_out, go)``."""
        raise NotImplementedError

    def bias_shift(self) -> Optional[torch.Tensor]:
        """A per-task additive output shift (``c_out``), if the family has
        one."""
        return None

    def compose(self, ws: torch.Tensor, base: Optional[torch.Tensor]
                ) -> torch.Tensor:
        """``Wt @ Ws`` for the bank's rows grouped as ``(groups, go, K)``."""
        return torch.bmm(self.matrix(base).reshape(
            self.groups, self.group_out, self.group_out), ws)

    @staticmethod
    def folds_base(base: torch.Tensor) -> bool:
        """Whether :meth:`modulate_folded` can run with base ``B``: the
        family writes ``Wt = M B`` with a per-task ``M`` cheaper than ``B``.
        """
        return False

    def modulate_folded(self, yb: torch.Tensor, base: torch.Tensor,
                        channel_dim: int) -> torch.Tensor:
        """``Wt y`` given ``yb = B y``: the output of the bank with the
        frozen base folded in (``B Ws``, shared by all tasks), so the
        activation path makes no ``c_out x go`` pass for ``B``. Only called
        when :meth:`folds_base` holds."""
        raise NotImplementedError

    def eval_operands(self, base: Optional[torch.Tensor],
                      dtype: torch.dtype) -> Optional[tuple]:
        """The small tensors :meth:`modulate_prepared` applies, derived from
        the parameters once (no autograd) so that a layer without gradients
        caches them instead of deriving them every forward (the NFF row
        norms, the products of the parameters). None: the family has no
        such form for ``base``, and :meth:`modulate` runs."""
        return None

    def modulate_prepared(self, y: torch.Tensor, operands: tuple
                          ) -> torch.Tensor:
        """:meth:`modulate` on a contiguous ``(n, c, ...)`` map from
        :meth:`eval_operands` (called only when that was not None)."""
        raise NotImplementedError

    def modulate(self, y: torch.Tensor, base: Optional[torch.Tensor],
                 channel_dim: int) -> torch.Tensor:
        """``Wt y`` on the bank's output ``y`` (the activation path). (Not
        ``apply``: that is ``nn.Module.apply``.)"""
        out = apply_blocks(y, self.matrix(base).reshape(
            self.groups, self.group_out, self.group_out).to(y.dtype),
            channel_dim)
        shift = self.bias_shift()
        if shift is not None:
            out = _shift(out, shift, channel_dim)
        return out


def _identity_rows(out_channels: int, groups: int, like: torch.Tensor
                   ) -> torch.Tensor:
    go = out_channels // groups
    return torch.eye(go, dtype=like.dtype, device=like.device).repeat(
        groups, 1)


class FullModulator(_Modulator):
    """The paper's modulator: a full ``(c_out, go)`` matrix per task.

    Args:
        init: The initial effective matrix ``(c_out, go)`` (the base).
        groups: Diagonal blocks.
        nff: Weight-normalised rows. Parameters are then ``weight_v``
            (directions) and ``weight_g`` (row norms); else ``weight``.
    """

    family = 'full'

    def __init__(self, init: torch.Tensor, groups: int, nff: bool):
        super().__init__(init.shape[0], groups)
        self.nff = nff
        init = init.detach()
        if nff:
            self.weight_v = nn.Parameter(init.clone())
            self.weight_g = nn.Parameter(init.norm(dim=1).clone())
        else:
            self.weight = nn.Parameter(init.clone())

    def matrix(self, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.nff:
            v = self.weight_v
            return v * (self.weight_g / v.norm(dim=1)).unsqueeze(1)
        return self.weight

    # Backwards compatible call: ``modulator()`` is the effective matrix.
    def forward(self) -> torch.Tensor:
        return self.matrix()


#: The name of the full family's class before families existed.
Modulator = FullModulator


class LowRankModulator(_Modulator):
    """``B + U V^T`` per block, rank ``r``: ``U`` is ``(groups, go, r)``
    (zero at init), ``V`` is ``(groups, go, r)`` (random at init, scaled
    ``1/sqrt(go)``). With NFF the rows are normalised and scaled by the
    per-task gain ``weight_g``, initialised to ``B``'s row norms.

    Args:
        out_channels: ``c_out``.
        groups: Diagonal blocks.
        rank: ``r`` (at most ``go``).
        nff: Weight-normalised rows.
        base: ``B`` (``(c_out, go)``) for the NFF gain init; None = identity.
        generator: Random generator for ``V``'s init.
    """

    family = 'lowrank'

    def __init__(self, out_channels: int, groups: int, rank: int,
                 nff: bool, base: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None,
                 device=None, dtype=None):
        super().__init__(out_channels, groups)
        go = out_channels // groups
        if not 1 <= rank <= go:
            raise ValueError(f'rank must be in [1, {go}], got {rank}')
        self.rank = rank
        self.nff = nff
        kw = dict(device=device, dtype=dtype)
        self.weight_u = nn.Parameter(torch.zeros(groups, go, rank, **kw))
        v = torch.randn(groups, go, rank, generator=generator,
                        dtype=torch.float32).to(**kw) / math.sqrt(go)
        self.weight_v = nn.Parameter(v)
        if nff:
            norms = (torch.ones(out_channels, **kw) if base is None
                     else base.detach().norm(dim=1).to(**kw))
            self.weight_g = nn.Parameter(norms.clone())

    def _dense(self, base: Optional[torch.Tensor]) -> torch.Tensor:
        delta = torch.matmul(self.weight_u, self.weight_v.transpose(1, 2))
        delta = delta.reshape(self.out_channels, self.group_out)
        if base is None:
            base = _identity_rows(self.out_channels, self.groups, delta)
        return base + delta

    def _row_norms(self, base: Optional[torch.Tensor]) -> torch.Tensor:
        """Row norms of ``B + U V^T``."""
        if base is not None:
            return self._dense(base).norm(dim=1)
        return self._identity_row_norms(self.weight_v)

    def _identity_row_norms(self, v: torch.Tensor) -> torch.Tensor:
        """Row norms of ``I + U v^T`` in closed form
        (``||e_i + u_i v^T||^2 = 1 + 2 u_i.v_i + u_i v^T v u_i^T``), without
        forming the ``c_out x go`` matrix."""
        u = self.weight_u
        gram = torch.matmul(v.transpose(1, 2), v)          # (g, r, r)
        sq = (1 + 2 * (u * v).sum(-1)
              + (torch.matmul(u, gram) * u).sum(-1))
        return sq.clamp_min(0).sqrt().reshape(-1)

    def _row_scale(self, base: Optional[torch.Tensor]) -> torch.Tensor:
        return self.weight_g / self._row_norms(base)

    def matrix(self, base: Optional[torch.Tensor]) -> torch.Tensor:
        dense = self._dense(base)
        if self.nff:
            return dense * (self.weight_g / dense.norm(dim=1)).unsqueeze(1)
        return dense

    def compose(self, ws: torch.Tensor, base: Optional[torch.Tensor]
                ) -> torch.Tensor:
        g, go = self.groups, self.group_out
        out = ws if base is None else torch.bmm(base.reshape(g, go, go), ws)
        out = out + torch.bmm(self.weight_u,
                              torch.bmm(self.weight_v.transpose(1, 2), ws))
        if self.nff:
            out = out * self._row_scale(base).reshape(g, go, 1)
        return out

    @staticmethod
    def folds_base(base: torch.Tensor) -> bool:
        """True for an orthogonal base (Response Initialization's ``U``) in
        a dtype of at least float32 precision: then
        ``B + U V^T = (I + U (B V)^T) B`` and the rows of both sides have
        the same norms."""
        if torch.finfo(base.dtype).eps > 1e-6:
            return False
        go = base.shape[1]
        blocks = base.detach().double().reshape(-1, go, go)
        eye = torch.eye(go, dtype=torch.float64, device=base.device)
        error = torch.matmul(blocks, blocks.transpose(1, 2)) - eye
        return bool(error.abs().max() <= 1e-4)

    def modulate_folded(self, yb: torch.Tensor, base: torch.Tensor,
                        channel_dim: int) -> torch.Tensor:
        g, go = self.groups, self.group_out
        with torch.autocast(base.device.type, enabled=False):
            v = torch.matmul(base.reshape(g, go, go).to(self.weight_v.dtype),
                             self.weight_v)
        return self._modulate_identity(yb, v, channel_dim)

    def _modulate_identity(self, y: torch.Tensor, v: torch.Tensor,
                           channel_dim: int) -> torch.Tensor:
        """``(I + U v^T) y``, rows NFF-normalised."""
        scale = (self.weight_g / self._identity_row_norms(v) if self.nff
                 else None)
        if channel_dim == 1 and y.is_contiguous():
            # conv maps: one autograd node (fewer passes over ``y``)
            return LowRankModulate.apply(y, self.weight_u, v, scale)
        if channel_dim == -1 and self.groups == 1 and y.is_contiguous():
            return LowRankModulateLast.apply(y, self.weight_u, v, scale)
        out = y + self._low_rank(y, v, channel_dim)
        if scale is not None:
            out = _scale(out, scale, channel_dim)
        return out

    @torch.no_grad()
    def eval_operands(self, base: Optional[torch.Tensor],
                      dtype: torch.dtype) -> Optional[tuple]:
        """``(V^T, s U, s)`` of ``s * (I + U V^T)`` (``s`` the NFF row
        scale, or ones) in ``dtype``; None with a base."""
        if base is not None:
            return None
        g, go = self.groups, self.group_out
        v = self.weight_v
        scale = (self._row_scale(None) if self.nff
                 else torch.ones_like(v[..., 0])).reshape(g, go, 1)
        return ((v.transpose(1, 2).to(dtype).contiguous(),
                 (self.weight_u * scale).to(dtype),
                 scale.to(dtype).reshape(1, g, go, 1)))

    def modulate_prepared(self, y: torch.Tensor, operands: tuple
                          ) -> torch.Tensor:
        return low_rank_product(y, *operands)[0]

    def _low_rank(self, y: torch.Tensor, v: torch.Tensor,
                  channel_dim: int) -> torch.Tensor:
        """``U (v^T y)`` as two thin products over the channels."""
        low = apply_blocks(y, v.transpose(1, 2).to(y.dtype), channel_dim)
        return apply_blocks(low, self.weight_u.to(y.dtype), channel_dim)

    def modulate(self, y: torch.Tensor, base: Optional[torch.Tensor],
                 channel_dim: int) -> torch.Tensor:
        if base is None:
            return self._modulate_identity(y, self.weight_v, channel_dim)
        g, go = self.groups, self.group_out
        out = apply_blocks(y, base.reshape(g, go, go).to(y.dtype),
                           channel_dim)
        out = out + self._low_rank(y, self.weight_v, channel_dim)
        if self.nff:
            out = _scale(out, self._row_scale(base), channel_dim)
        return out


class DiagonalModulator(_Modulator):
    """``diag(d) B`` plus an optional per-channel shift.

    Args:
        out_channels: ``c_out``.
        groups: Diagonal blocks of ``B``.
        shift: Also learn a per-channel additive shift (``weight_shift``).
    """

    family = 'diagonal'

    def __init__(self, out_channels: int, groups: int, shift: bool,
                 device=None, dtype=None):
        super().__init__(out_channels, groups)
        kw = dict(device=device, dtype=dtype)
        self.weight_d = nn.Parameter(torch.ones(out_channels, **kw))
        if shift:
            self.weight_shift = nn.Parameter(torch.zeros(out_channels, **kw))
        else:
            self.weight_shift = None

    def matrix(self, base: Optional[torch.Tensor]) -> torch.Tensor:
        if base is None:
            base = _identity_rows(self.out_channels, self.groups,
                                  self.weight_d)
        return base * self.weight_d.unsqueeze(1)

    def bias_shift(self) -> Optional[torch.Tensor]:
        return self.weight_shift

    def compose(self, ws: torch.Tensor, base: Optional[torch.Tensor]
                ) -> torch.Tensor:
        g, go = self.groups, self.group_out
        out = ws if base is None else torch.bmm(base.reshape(g, go, go), ws)
        return out * self.weight_d.reshape(g, go, 1)

    def modulate(self, y: torch.Tensor, base: Optional[torch.Tensor],
                 channel_dim: int) -> torch.Tensor:
        if base is None:
            out = _scale(y, self.weight_d, channel_dim)
            if self.weight_shift is not None:
                out = _shift(out, self.weight_shift, channel_dim)
            return out
        return super().modulate(y, base, channel_dim)

    @staticmethod
    def folds_base(base: torch.Tensor) -> bool:
        """Always: ``diag(d) B y = d * (B y)``."""
        return True

    def modulate_folded(self, yb: torch.Tensor, base: torch.Tensor,
                        channel_dim: int) -> torch.Tensor:
        return self.modulate(yb, None, channel_dim)


#: The modulator class of each family.
FAMILY_TYPES = {cls.family: cls for cls in (
    FullModulator, LowRankModulator, DiagonalModulator)}


def build_modulator(family: str, *, out_channels: int, groups: int,
                    base: Optional[torch.Tensor], nff: bool, rank: int = 0,
                    shift: bool = False, like: torch.Tensor,
                    generator: Optional[torch.Generator] = None
                    ) -> _Modulator:
    """A new task's modulator of ``family``, computing ``B`` at init.

    Args:
        family: One of :data:`FAMILIES`.
        out_channels: ``c_out``.
        groups: Diagonal blocks.
        base: ``B`` (``(c_out, go)``) or None for the identity.
        nff: NFF for the full and low-rank families.
        rank: The low-rank family's rank.
        shift: The diagonal family's per-channel shift.
        like: A tensor giving the dtype and device.
        generator: For the low-rank family's random ``V``.
    """
    kw = dict(device=like.device, dtype=like.dtype)
    if family == 'full':
        init = (base if base is not None
                else _identity_rows(out_channels, groups, like))
        return FullModulator(init, groups, nff)
    if family == 'lowrank':
        return LowRankModulator(out_channels, groups, rank, nff, base,
                                generator=generator, **kw)
    if family == 'diagonal':
        return DiagonalModulator(out_channels, groups, shift, **kw)
    raise ValueError(f'unknown modulator family {family!r}; expected one '
                     f'of {FAMILIES}')


def modulator_cost(family: str, *, out_channels: int, groups: int,
                   nff: bool, rank: int = 0, shift: bool = False) -> int:
    """Per-task parameters of one modulator (no module is built)."""
    go = out_channels // groups
    if family == 'full':
        return out_channels * go + (out_channels if nff else 0)
    if family == 'lowrank':
        return 2 * rank * out_channels + (out_channels if nff else 0)
    if family == 'diagonal':
        return out_channels * (2 if shift else 1)
    raise ValueError(f'unknown modulator family {family!r}')
