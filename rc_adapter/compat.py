"""Compatibility fallbacks that must run before mmseg is imported.

mmsegmentation 1.2.2 imports ``mmcv.ops`` unconditionally in a few modules
(``mmseg.utils``, ``mmseg.models``). On ``mmcv-lite`` there are no compiled
ops, so ``mmcv/ops/__init__.py`` fails on ``mmcv._ext`` and mmseg cannot be
imported at all. :func:`install_mmcv_ops_fallback` registers a narrow stand-in
``mmcv.ops`` module that offers the two pure-PyTorch ops mmseg imports at
module level and raises ``ModuleNotFoundError`` for everything else, which
mmseg's own optional-import guards already catch.

Nothing happens when full mmcv (with ``mmcv._ext``) is installed.
"""
import importlib.util
import os
import sys
import types
import warnings

__all__ = ['install_mmcv_ops_fallback', 'sigmoid_focal_loss',
           'FALLBACK_MODULE_ATTR']

# Marks the stand-in so callers and tests can tell it from the real package.
FALLBACK_MODULE_ATTR = '__rc_adapter_fallback__'


def sigmoid_focal_loss(pred, target, gamma=2.0, alpha=0.25, weight=None,
                       reduction='mean'):
    """Pure-PyTorch sigmoid focal loss with mmcv's ``sigmoid_focal_loss``
    signature.

    Args:
        pred (Tensor): Logits of shape (N, C).
        target (Tensor): Class indices of shape (N,). Index ``C`` (one past
            the last class) means background: every class is negative.
        gamma (float): Focusing parameter. Defaults to 2.0.
        alpha (float): Weight of positives. Defaults to 0.25.
        weight (Tensor, optional): Per-sample weights of shape (N,).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
            Defaults to ``'mean'``.

    Returns:
        Tensor: The loss (shape (N, C) for ``'none'``, a scalar otherwise).
    """
    import torch
    import torch.nn.functional as F

    num_classes = pred.size(1)
    # One column more than the classes so that index C (background) is legal.
    one_hot = F.one_hot(target.long(), num_classes + 1)[:, :num_classes]
    one_hot = one_hot.to(pred.dtype)
    prob = pred.sigmoid()
    p_t = prob * one_hot + (1 - prob) * (1 - one_hot)
    alpha_t = alpha * one_hot + (1 - alpha) * (1 - one_hot)
    ce = F.binary_cross_entropy_with_logits(pred, one_hot, reduction='none')
    loss = alpha_t * (1 - p_t).pow(gamma) * ce
    if weight is not None:
        loss = loss * weight.view(-1, 1).to(loss.dtype)
    if reduction == 'none':
        return loss
    if reduction == 'sum':
        return loss.sum()
    if reduction == 'mean':
        # mmcv's CPU/GPU kernels divide the summed loss by the sample count.
        return loss.sum() / pred.size(0)
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', "
                     f"got {reduction!r}")


def _load_point_sample(mmcv_dir):
    """Loads mmcv's pure-Python ``point_sample.py`` without ``mmcv.ops``."""
    path = os.path.join(mmcv_dir, 'ops', 'point_sample.py')
    spec = importlib.util.spec_from_file_location(
        'mmcv.ops.point_sample', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_fallback(mmcv_dir):
    ops = types.ModuleType('mmcv.ops')
    ops.__doc__ = ('rc_adapter stand-in for mmcv.ops on mmcv-lite: only '
                   'point_sample and sigmoid_focal_loss are available.')
    ops.__path__ = []  # a package, so "import mmcv.ops.x" fails cleanly
    setattr(ops, FALLBACK_MODULE_ATTR, True)
    point_sample_module = _load_point_sample(mmcv_dir)
    sys.modules['mmcv.ops.point_sample'] = point_sample_module
    ops.point_sample = point_sample_module.point_sample
    ops.bilinear_grid_sample = point_sample_module.bilinear_grid_sample
    ops.sigmoid_focal_loss = sigmoid_focal_loss

    def __getattr__(name):
        if name.startswith('__') and name.endswith('__'):
            raise AttributeError(name)
        # ModuleNotFoundError (not AttributeError/ImportError) because
        # mmseg guards its optional ops with "except ModuleNotFoundError".
        raise ModuleNotFoundError(
            f"mmcv.ops.{name} needs full mmcv with compiled ops "
            f"(mmcv._ext); this environment has mmcv-lite, where "
            f"rc_adapter provides only point_sample and "
            f"sigmoid_focal_loss. Install mmcv==2.1.0 built with "
            f"MMCV_WITH_OPS=1 to use {name}.", name='mmcv._ext')

    ops.__getattr__ = __getattr__
    return ops


def install_mmcv_ops_fallback():
    """Registers the ``mmcv.ops`` stand-in if mmcv has no compiled ops.

    Returns:
        bool: True if the stand-in was installed (now or earlier), False if
        mmcv is missing or full mmcv is present (nothing is changed then).
    """
    existing = sys.modules.get('mmcv.ops')
    if existing is not None:
        return bool(getattr(existing, FALLBACK_MODULE_ATTR, False))
    mmcv_spec = importlib.util.find_spec('mmcv')
    if mmcv_spec is None:
        return False
    if importlib.util.find_spec('mmcv._ext') is not None:
        return False
    import mmcv
    ops = _make_fallback(os.path.dirname(mmcv_spec.origin))
    sys.modules['mmcv.ops'] = ops
    mmcv.ops = ops
    # mmcv's transformer module warns once that this op is missing; with
    # the stand-in that is expected, so keep the import quiet.
    warnings.filterwarnings(
        'ignore', message='Fail to import ``MultiScaleDeformableAttention``')
    return True
