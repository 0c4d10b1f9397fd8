"""``RCMultiheadAttention``: ``nn.MultiheadAttention`` with reparameterized
input and output projections."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rc_linear import RCLinear

__all__ = ['RCMultiheadAttention']


class RCMultiheadAttention(nn.Module):
    """Multi-head attention whose packed q/k/v projection and output
    projection are RC layers.

    ``in_proj`` is an :class:`RCLinear` ``E -> 3E`` with three modulator
    blocks (q, k and v each get their own), ``out_proj`` an
    :class:`RCLinear` ``E -> E``; both hold the per-task modulators (and
    are found by the task functions like any RC layer). The forward computes
    the active task's composed projection weights (cached in eval) and runs
    PyTorch's ``F.multi_head_attention_forward``, so the result is
    ``nn.MultiheadAttention``'s with those weights. :meth:`merged` gives back
    an ``nn.MultiheadAttention``. ``bias_k``/``bias_v`` (if any) stay shared
    and frozen.

    Only the packed layout (``kdim == vdim == embed_dim``) is supported;
    :meth:`from_mha` raises ``ValueError`` otherwise.
    """

    def __init__(self, mha: nn.MultiheadAttention, in_proj: RCLinear,
                 out_proj: RCLinear) -> None:
        super().__init__()
        self.embed_dim = mha.embed_dim
        self.kdim = mha.kdim
        self.vdim = mha.vdim
        self.num_heads = mha.num_heads
        self.head_dim = mha.head_dim
        self.dropout = mha.dropout
        self.batch_first = mha.batch_first
        self.add_zero_attn = mha.add_zero_attn
        self._qkv_same_embed_dim = True
        self.in_proj = in_proj
        self.out_proj = out_proj
        self.bias_k = mha.bias_k
        self.bias_v = mha.bias_v
        for p in (self.bias_k, self.bias_v):
            if p is not None:
                p.requires_grad_(False)
        self.train(mha.training)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, *, nff: bool = True,
                 execution: str = 'auto', in_family: str = 'full',
                 in_rank: int = 0, out_family: str = 'full',
                 out_rank: int = 0) -> 'RCMultiheadAttention':
        """Reparameterizes ``mha`` (identity init; its tensors are reused).

        Raises:
            ValueError: ``mha`` uses separate q/k/v projection weights.
        """
        if not mha._qkv_same_embed_dim:
            raise ValueError('separate q/k/v projection weights (kdim/vdim '
                             '!= embed_dim) are not supported')
        e = mha.embed_dim
        packed = nn.Linear(e, 3 * e, bias=mha.in_proj_bias is not None,
                           device='meta')
        packed.weight = nn.Parameter(mha.in_proj_weight.data)
        if mha.in_proj_bias is not None:
            packed.bias = nn.Parameter(mha.in_proj_bias.data)
        in_proj = RCLinear.from_linear(packed, nff=nff, execution=execution,
                                       family=in_family, rank=in_rank,
                                       blocks=3)
        out_proj = RCLinear.from_linear(mha.out_proj, nff=nff,
                                        execution=execution,
                                        family=out_family, rank=out_rank)
        return cls(mha, in_proj, out_proj)

    @property
    def active_task(self) -> Optional[str]:
        return self.out_proj.active_task

    def forward(self, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None,
                need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None,
                average_attn_weights: bool = True,
                is_causal: bool = False
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """As ``nn.MultiheadAttention.forward`` (without its fast path)."""
        w_in, b_in = self.in_proj.effective_weight()
        w_out, b_out = self.out_proj.effective_weight()
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (x.transpose(1, 0)
                                 for x in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, w_in, b_in,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
            w_out, b_out, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights,
            is_causal=is_causal)
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

    def merged(self, task: str) -> nn.MultiheadAttention:
        """A plain ``nn.MultiheadAttention`` computing ``task``'s function."""
        with torch.no_grad():
            w_in, b_in = self.in_proj.composed_weight(task)
            w_out, b_out = self.out_proj.composed_weight(task)
        mha = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout,
            bias=b_in is not None, add_bias_kv=self.bias_k is not None,
            add_zero_attn=self.add_zero_attn, batch_first=self.batch_first,
            device='meta')
        mha.in_proj_weight = nn.Parameter(w_in.detach().clone())
        if b_in is not None:
            mha.in_proj_bias = nn.Parameter(b_in.detach().clone())
        mha.out_proj.weight = nn.Parameter(w_out.detach().clone())
        if b_out is not None:
            mha.out_proj.bias = nn.Parameter(b_out.detach().clone())
        if self.bias_k is not None:
            mha.bias_k = nn.Parameter(self.bias_k.detach().clone())
            mha.bias_v = nn.Parameter(self.bias_v.detach().clone())
        mha.train(self.training)
        return mha

    def extra_repr(self) -> str:
        return f'embed_dim={self.embed_dim}, num_heads={self.num_heads}'
