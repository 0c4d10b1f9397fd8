"""How an RC layer runs in training: the execution paths and their choice.

An RC layer computes ``Wt (Ws x)``. Two paths give the same result:

* ``'activation'``: run the frozen bank ``Ws``, then the modulator ``Wt`` on
  its output (no weight gradient through the big frozen bank);
* ``'weight'``: compose ``Wt @ Ws`` and run one layer.

This module holds the choice between them -- the cost model's constants, the
process-wide cache of one-time measurements (``execution='measure'``),
:func:`set_execution` -- and :class:`Modulate`, the activation path's 1x1
modulator with a matmul backward.
"""
import torch
import torch.nn.functional as F

from .errors import RCConfigError

__all__ = ['EXECUTION_MODES', 'set_execution', 'clear_execution_measurements',
           'Modulate']

#: ``'auto'``: cost model; ``'measure'``: one-time timing per shape;
#: ``'activation'`` / ``'weight'``: force a path in training.
EXECUTION_MODES = ('auto', 'measure', 'activation', 'weight')

# Relative cost per multiply-add of a 1x1 modulator pass and of the weight
# composition, against the bank conv (see RCConv2d.prefers_activation_path).
_MOD_PASS_COST = 2.5
_COMPOSE_COST = 0.5

# (conv geometry, input shape, input requires_grad, dtype, device, threads)
# -> True when the activation path measured faster. Shared by all layers.
_MEASURED = {}


def set_execution(model, mode):
    """Sets the training execution path of every :class:`RCConv2d`.

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
    from .layers import RCConv2d
    count = 0
    for module in model.modules():
        if isinstance(module, RCConv2d):
            module.execution = mode
            count += 1
    return count


def clear_execution_measurements():
    """Forgets every per-shape timing made by ``execution='measure'``."""
    _MEASURED.clear()


class Modulate(torch.autograd.Function):
    """The 1x1 (block-diagonal) modulator ``z = Wt y`` of the activation
    path, with a matmul backward.

    The forward is a grouped 1x1 conv; the backward computes both gradients
    as (batched) matrix products on the NCHW tensors, several times faster on
    the CPU than the generic ``convolution_backward`` of a 1x1 conv, which
    reorders to blocked layouts. Only ``y`` (the bank output) is saved.
    """

    @staticmethod
    def forward(ctx, y, m, groups):
        out = m.shape[0]
        ctx.groups = groups
        ctx.save_for_backward(y if ctx.needs_input_grad[1] else None, m)
        return F.conv2d(y, m.reshape(out, -1, 1, 1), groups=groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, m = ctx.saved_tensors
        g = ctx.groups
        n, c, h, w = grad.shape
        go = c // g
        grad = grad.contiguous()
        grad_y = grad_m = None
        if go == 1:  # depthwise: a per-channel scale
            if ctx.needs_input_grad[0]:
                grad_y = grad * m.reshape(1, c, 1, 1)
            if ctx.needs_input_grad[1]:
                grad_m = (grad * y).sum((0, 2, 3)).reshape(c, 1)
            return grad_y, grad_m, None
        gv = grad.view(n, g, go, h * w)
        mg = m.reshape(g, go, go)
        if ctx.needs_input_grad[0]:
            grad_y = torch.matmul(mg.transpose(1, 2), gv).view(n, c, h, w)
        if ctx.needs_input_grad[1]:
            yv = y.reshape(n, g, go, h * w)
            grad_m = torch.matmul(gv, yv.transpose(2, 3)).sum(0)
            grad_m = grad_m.reshape(c, go)
        return grad_y, grad_m, None
