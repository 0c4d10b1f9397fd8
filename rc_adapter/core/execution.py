"""How an RC layer runs in training: the execution paths and their choice.

An RC layer computes ``Wt (Ws x)``. Two paths give the same result:

* ``'activation'``: run the frozen bank ``Ws``, then the modulator ``Wt`` on
  its output (no weight gradient through the big frozen bank);
* ``'weight'``: compose ``Wt @ Ws`` and run one layer.

This module holds the choice between them -- the cost model's constants, the
process-wide cache of one-time measurements (``execution='measure'``),
:func:`set_execution` -- and :class:`Modulate` / :class:`LowRankModulate`,
the activation path's 1x1 modulators with a matmul backward.
"""
import statistics
import time

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import RCConfigError

__all__ = ['EXECUTION_MODES', 'set_execution', 'clear_execution_measurements',
           'Modulate', 'LowRankModulate', 'LowRankModulateLast',
           'low_rank_product',
           'activation_path_cheaper',
           'eval_uses_activation_path', 'measure_prefers_activation',
           'shape_key']

#: ``'auto'``: cost model; ``'measure'``: one-time timing per shape;
#: ``'activation'`` / ``'weight'``: force a path (in training and in eval).
EXECUTION_MODES = ('auto', 'measure', 'activation', 'weight')

# Relative cost per multiply-add of a modulator pass and of the weight
# composition, against the bank's own multiply-adds (see
# activation_path_cheaper). A layer type may set its own
# (``mod_pass_cost`` / ``compose_cost`` class attributes): on a conv the
# modulator is a memory-bound 1x1 pass over NCHW maps; on a Linear it is a
# GEMM as efficient as the bank's, and composing is relatively dearer.
_MOD_PASS_COST = 2.5
_COMPOSE_COST = 0.5

# In eval, a layer skips the composed-weight cache and runs the activation
# path when its modulator pass adds at most this fraction of the bank's
# multiply-adds (weighted by the modulator pass cost): low-rank and diagonal
# modulators on the widest layers, which hold most of the weights (ResNet-18
# rank 16: the 3x3 convs with 256 or 512 input channels);
# benchmarks/RESULTS.md has the measured trade (eval memory against time).
_EVAL_ACTIVATION_MAX_OVERHEAD = 0.05

# (conv geometry, input shape, input requires_grad, dtype, device, threads)
# -> True when the activation path measured faster. Shared by all layers.
_MEASURED = {}


def set_execution(model: nn.Module, mode: str) -> int:
    """Sets the training execution path of every RC layer.

    Args:
        model (nn.Module): A (partly) reparameterized model.
        mode (str): One of :data:`EXECUTION_MODES`.

    Returns:
        int: the number of layers changed.

    Raises:
        RCConfigError: for an unknown mode.
    """
    if mode not in EXECUTION_MODES:
        raise RCConfigError(f'execution must be one of {EXECUTION_MODES}, '
                         f'got {mode!r}')
    from .layers import RCLayer
    count = 0
    for module in model.modules():
        if isinstance(module, RCLayer):
            module.execution = mode
            count += 1
    return count


def clear_execution_measurements() -> None:
    """Forgets every per-shape timing made by ``execution='measure'``."""
    _MEASURED.clear()


class Modulate(torch.autograd.Function):
    """The 1x1 (block-diagonal) modulator ``z = Wt y`` of the activation
    path, with a matmul backward.

    Forward and backward are (batched) matrix products on the NCHW tensors,
    several times faster on the CPU than the generic 1x1 convolution and its
    ``convolution_backward``, which reorder to blocked layouts (a
    channels-last input keeps oneDNN's 1x1 conv forward). Only ``y`` (the
    bank output) is saved.

    Mixed precision: the product runs in ``y``'s dtype (the autocast dtype
    when the bank conv ran under autocast); the modulator's gradient is
    returned in the modulator's own dtype.
    """

    @staticmethod
    def forward(ctx, y, m, groups):
        ctx.groups = groups
        ctx.m_dtype = m.dtype
        m = m.to(y.dtype)
        ctx.save_for_backward(y if ctx.needs_input_grad[1] else None, m)
        n, c, h, w = y.shape
        go = c // groups
        if go == 1:  # depthwise: a per-channel scale
            return y * m.reshape(1, c, 1, 1)
        if not y.is_contiguous():  # e.g. channels_last: oneDNN's 1x1 conv
            return F.conv2d(y, m.reshape(c, go, 1, 1), groups=groups)
        # A (batched) matrix product on the NCHW tensor: several times
        # faster than the generic 1x1 convolution on the CPU. Written into
        # a tensor of the output's shape: a view returned from here could
        # not be changed in place (an inplace ReLU after the layer).
        out = y.new_empty((n, c, h, w))
        torch.matmul(m.reshape(groups, go, go),
                     y.reshape(n, groups, go, h * w),
                     out=out.view(n, groups, go, h * w))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, m = ctx.saved_tensors
        g = ctx.groups
        n, c, h, w = grad.shape
        go = c // g
        grad_y = grad_m = None
        if go == 1:  # depthwise: a per-channel scale, elementwise in any
            # memory layout (a contiguous copy would be a pass more)
            grad = grad.to(m.dtype)
            if ctx.needs_input_grad[0]:
                grad_y = grad * m.reshape(1, c, 1, 1)
            if ctx.needs_input_grad[1]:
                grad_m = (grad * y).sum((0, 2, 3)).reshape(c, 1).to(
                    ctx.m_dtype)
            return grad_y, grad_m, None
        grad = grad.contiguous().to(m.dtype)
        gv = grad.view(n, g, go, h * w)
        mg = m.reshape(g, go, go)
        if ctx.needs_input_grad[0]:
            grad_y = torch.matmul(mg.transpose(1, 2), gv).view(n, c, h, w)
        if ctx.needs_input_grad[1]:
            yv = y.reshape(n, g, go, h * w)
            grad_m = torch.matmul(gv, yv.transpose(2, 3)).sum(0)
            grad_m = grad_m.reshape(c, go).to(ctx.m_dtype)
        return grad_y, grad_m, None


def low_rank_product(y: torch.Tensor, v_t: torch.Tensor,
                     u_scaled: torch.Tensor, scale: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``s * y + (s U) (V^T y)`` per block of channels of a contiguous
    ``(n, c, ...)`` map: two thin products and one fused multiply-add.

    Args:
        y: ``(n, c, ...)``, contiguous.
        v_t: ``V^T``, ``(groups, r, c // groups)``.
        u_scaled: ``s U``, ``(groups, c // groups, r)``.
        scale: ``s`` as ``(1, groups, c // groups, 1)``.

    Returns:
        The output (a new tensor of ``y``'s shape, not a view: inplace ops
        may follow) and ``V^T y``, ``(n, groups, r, positions)``.
    """
    g, go, _ = u_scaled.shape
    yv = y.reshape(y.shape[0], g, go, -1)
    low = torch.matmul(v_t, yv)
    out = torch.empty_like(y)
    ov = out.view(yv.shape)
    torch.matmul(u_scaled, low, out=ov)
    ov.addcmul_(yv, scale)
    return out, low


def _in_map_dtype(ctx, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                  scale: Optional[torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``u``, ``v`` and ``scale`` (ones when None) in the map ``y``'s dtype
    for a low-rank node's forward; their own dtypes, those of the
    gradients, are kept in ``ctx.dtypes``."""
    ctx.dtypes = (u.dtype, v.dtype, None if scale is None else scale.dtype)
    if scale is None:
        scale = torch.ones(u.shape[0] * u.shape[1], dtype=y.dtype,
                           device=y.device)
    return u.to(y.dtype), v.to(y.dtype), scale.to(y.dtype)


class LowRankModulate(torch.autograd.Function):
    """The low-rank modulator of the activation path on NC... maps:
    ``z = s * (y + U (V^T y))`` per block of channels, ``s`` the NFF row
    scale (or None), in one autograd node.

    Autograd through the plain expression keeps ``y + U (V^T y)`` for the
    scale's gradient and makes a separate pass over the activations for
    the sum, the scale and each of their gradients; here the forward is
    two thin products and one fused multiply-add, and the backward gets
    the scale's gradient from the products it already has
    (``sum(g * (y + U low)) = sum(g * y) + rowdot(U, g low^T)``). Only
    ``y`` and the rank-``r`` ``V^T y`` are saved.

    Args (of ``apply``):
        y: ``(n, c, ...)``, contiguous.
        u, v: ``(groups, c // groups, r)``.
        scale: ``(c,)`` or None.

    Mixed precision: computed in ``y``'s dtype; the gradients of ``u``,
    ``v`` and ``scale`` in their own dtypes.
    """

    @staticmethod
    def forward(ctx, y, u, v, scale):
        g, go, _ = u.shape
        u, v, scale = _in_map_dtype(ctx, y, u, v, scale)
        out, low = low_rank_product(y, v.transpose(1, 2),
                                    u * scale.reshape(g, go, 1),
                                    scale.reshape(1, g, go, 1))
        ctx.save_for_backward(y, low, u, v, scale)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, low, u, v, scale = ctx.saved_tensors
        g, go, _ = u.shape
        n = y.shape[0]
        dt_u, dt_v, dt_s = ctx.dtypes
        gv = grad.contiguous().to(y.dtype).reshape(n, g, go, -1)
        yv = y.reshape(n, g, go, -1)
        s_rows = scale.reshape(g, go, 1)
        # t = (s U)^T g: the gradient into V^T y.
        t = torch.matmul((u * s_rows).transpose(1, 2), gv)
        grad_y = grad_u = grad_v = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_y = torch.matmul(v, t)
            grad_y.addcmul_(gv, scale.reshape(1, g, go, 1))
            grad_y = grad_y.reshape(y.shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            g_low = torch.matmul(gv, low.transpose(2, 3)).sum(0)  # (g,go,r)
            if ctx.needs_input_grad[1]:
                grad_u = (g_low * s_rows).to(dt_u)
            if ctx.needs_input_grad[3]:
                grad_s = ((gv * yv).sum((0, 3)) + (u * g_low).sum(-1))
                grad_s = grad_s.reshape(-1).to(dt_s)
        if ctx.needs_input_grad[2]:
            grad_v = torch.matmul(yv, t.transpose(2, 3)).sum(0).to(dt_v)
        return grad_y, grad_u, grad_v, grad_s


class LowRankModulateLast(torch.autograd.Function):
    """:class:`LowRankModulate` for channel-last maps (a Linear's tokens,
    ``(..., c)``) with one block: ``z = s * (y + U (V^T y))`` as
    ``y * s`` plus ``low (s U)^T`` accumulated into it, in one autograd
    node. Only ``y`` and the ``(tokens, r)`` ``low = y V`` are saved; the
    backward makes one pass over the gradient for the input gradient's sum
    and one for the scale's gradient, instead of the separate sum, scale
    and gradient passes of the plain expression.

    Args (of ``apply``):
        y: ``(..., c)``, contiguous.
        u, v: ``(1, c, r)``.
        scale: ``(c,)`` or None.
    """

    @staticmethod
    def forward(ctx, y, u, v, scale):
        c = y.shape[-1]
        u, v, scale = _in_map_dtype(ctx, y, u, v, scale)
        u, v = u[0], v[0]
        y2 = y.reshape(-1, c)
        low = torch.mm(y2, v)                                   # (T, r)
        out = y2 * scale
        out.addmm_(low, (u * scale.unsqueeze(1)).t())
        ctx.save_for_backward(y, low, u, v, scale)
        return out.view(y.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, low, u, v, scale = ctx.saved_tensors
        c = y.shape[-1]
        dt_u, dt_v, dt_s = ctx.dtypes
        g2 = grad.contiguous().to(y.dtype).reshape(-1, c)
        y2 = y.reshape(-1, c)
        # t = g (s U): the gradient into low = y V.
        t = torch.mm(g2, u * scale.unsqueeze(1))                 # (T, r)
        grad_y = grad_u = grad_v = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_y = torch.mm(t, v.t())
            grad_y.addcmul_(g2, scale)
            grad_y = grad_y.view(y.shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            g_low = torch.mm(g2.t(), low)                        # (c, r)
            if ctx.needs_input_grad[1]:
                grad_u = (g_low * scale.unsqueeze(1)).unsqueeze(0).to(dt_u)
            if ctx.needs_input_grad[3]:
                grad_s = ((g2 * y2).sum(0) + (u * g_low).sum(-1)).to(dt_s)
        if ctx.needs_input_grad[2]:
            grad_v = torch.mm(y2.t(), t).unsqueeze(0).to(dt_v)
        return grad_y, grad_u, grad_v, grad_s


def _modulator_macs(layer, folded: bool = False):
    """Multiply-adds per output value of the activation path's modulator
    pass, and of composing the weight (both per output channel). With
    ``folded`` the pass runs on the bank with the base folded in (no pass
    for the base; :meth:`RCLayer.base_folds`)."""
    go = layer.rc_out // layer.mod_groups
    k = layer.fan_in
    base = 0 if layer.base_modulator is None or folded else go
    if layer.family == 'full':
        return go, go * k
    if layer.family == 'lowrank':
        return 2 * layer.rank + base, go * layer.rank + go * k
    # diagonal: a per-channel scale, composed by scaling rows
    return 1 + base, (k if layer.base_modulator is None else go * k)


def _costs(layer: nn.Module) -> tuple[float, float]:
    """The layer type's (modulator pass, composition) cost weights."""
    return (getattr(layer, 'mod_pass_cost', _MOD_PASS_COST),
            getattr(layer, 'compose_cost', _COMPOSE_COST))


def activation_path_cheaper(layer: nn.Module, x: torch.Tensor,
                            mod: Optional[nn.Module] = None) -> bool:
    """Cost model for training: is the two-step (activation) path cheaper?

    Counts multiply-adds of one training step, per output channel. With
    ``P`` output positions (pixels x batch, or tokens), ``K`` the bank's
    multiply-adds per output value and ``m`` those of the modulator pass:
    the bank costs ``P*K`` per pass; the activation path runs it forward and
    for the input gradient (if the input needs one) plus two or three
    modulator passes ``P*m`` (forward, modulator gradient, and the gradient
    into the bank output if the input needs one); the weight path runs the
    composed layer forward, for the weight gradient and for the input
    gradient, plus composing ``Wt @ Ws`` (``c``) and its backward, which
    dominates deep layers at small inputs. Measured on the CPU (ResNet-18
    layers, oneDNN), a multiply-add of the memory-bound 1x1 pass costs about
    2.5 times one of the bank conv and one of the batched matmul of the
    composition about half: the terms are weighted by ``_MOD_PASS_COST``
    and ``_COMPOSE_COST``. On a Linear (tokens x features) the modulator
    pass is an ordinary GEMM (weight 1) and composing costs about 1.2
    (ViT-S layers at 400-6400 tokens); the layer type's ``mod_pass_cost``
    and ``compose_cost`` attributes override the conv defaults.

    Args:
        layer (RCLayer): The layer.
        x (Tensor): Its input.
        mod (nn.Module, optional): Unused; the layer's family decides.

    Returns:
        bool: True if the activation path is predicted cheaper.
    """
    positions = layer.output_positions(x)
    per_bank = layer.fan_in
    per_mod, compose = _modulator_macs(layer, layer.base_folds())
    bank_passes = 1 + int(x.requires_grad)
    # modulator forward and weight gradient; its input gradient only feeds
    # the bank's input gradient.
    mod_passes = 2 + int(x.requires_grad)
    mod_cost, compose_cost = _costs(layer)
    activation = positions * (per_bank * bank_passes
                              + mod_cost * mod_passes * per_mod)
    weight = (positions * per_bank * (bank_passes + 1)
              + compose_cost * 2 * compose)
    return activation < weight


def eval_uses_activation_path(layer: nn.Module) -> bool:
    """Whether ``layer`` runs the activation path when no gradient reaches
    its modulator (eval, ``no_grad``, a frozen task).

    The weight path composes ``Wt @ Ws`` once and caches it: the forward
    then costs exactly the plain layer's, but the cache holds a second copy
    of the layer's weight. The activation path needs no cache and costs one
    modulator pass more. ``'weight'`` and ``'activation'`` force the path;
    ``'auto'`` and ``'measure'`` take the activation path where the
    modulator pass adds at most ``_EVAL_ACTIVATION_MAX_OVERHEAD`` of the
    bank's cost (per output value, independent of the input size; a layer
    type may set its own ``eval_activation_max_overhead``) -- low-rank and
    diagonal convs on the wide layers -- and the cached composition
    elsewhere (and on every Linear).

    Args:
        layer (RCLayer): The layer.

    Returns:
        bool: True for the activation path.
    """
    if layer.execution in ('activation', 'weight'):
        return layer.execution == 'activation'
    # Unfolded: with a base, the folded bank would be a second copy of the
    # weight like the cache, and the cached path costs no modulator pass.
    per_mod, _ = _modulator_macs(layer)
    limit = getattr(layer, 'eval_activation_max_overhead',
                    _EVAL_ACTIVATION_MAX_OVERHEAD)
    return _costs(layer)[0] * per_mod <= limit * layer.fan_in


def shape_key(layer: nn.Module, x: torch.Tensor) -> tuple:
    """The key of one measurement in the process-wide cache."""
    geometry = tuple(getattr(layer, name, None) for name in (
        'in_channels', 'out_channels', 'in_features', 'out_features',
        'kernel_size', 'stride', 'padding', 'dilation', 'groups',
        'padding_mode'))
    return (type(layer).__name__, geometry, layer.family, layer.rank,
            layer.base_modulator is not None, layer.bias is not None,
            tuple(x.shape), x.requires_grad, x.dtype, x.device.type,
            torch.get_num_threads())


def measure_prefers_activation(layer: nn.Module, x: torch.Tensor,
                               mod: nn.Module, repeats: int = 3) -> bool:
    """Times one forward+backward of both paths of ``layer`` on ``x``; no
    side effects on gradients (uses ``torch.autograd.grad``).

    Returns:
        bool: True if the activation path was at least as fast.
    """
    params = [p for p in mod.parameters() if p.requires_grad]
    probe = x.detach().requires_grad_(x.requires_grad)
    inputs = params + ([probe] if probe.requires_grad else [])

    def run(activation):
        y = layer._run_path(probe, mod, activation)
        torch.autograd.grad(y, inputs, torch.ones_like(y))

    for activation in (True, False):
        run(activation)  # warm-up (allocator, oneDNN primitives)
    samples = {True: [], False: []}
    for _ in range(repeats):
        for activation in (True, False):  # interleaved
            start = time.perf_counter()
            run(activation)
            samples[activation].append(time.perf_counter() - start)
    times = {a: statistics.median(ts) for a, ts in samples.items()}
    return times[True] <= times[False]
