"""The mmcv.ops fallback: active on mmcv-lite, absent with full mmcv."""
import importlib.machinery
import importlib.util
import math
import sys

import pytest
import torch

import rc_adapter  # noqa: F401  (installs the fallback)
from rc_adapter import compat


def test_fallback_makes_mmseg_importable_on_mmcv_lite():
    if importlib.util.find_spec('mmcv._ext') is not None:
        pytest.skip('full mmcv is installed here')
    ops = sys.modules['mmcv.ops']
    assert getattr(ops, compat.FALLBACK_MODULE_ATTR)
    import mmseg.apis  # noqa: F401
    import mmseg.datasets  # noqa: F401
    import mmseg.models  # noqa: F401
    import mmseg.utils  # noqa: F401
    # point_sample is mmcv's own pure-PyTorch implementation.
    assert ops.point_sample.__module__ == 'mmcv.ops.point_sample'
    feats = torch.arange(16.).view(1, 1, 4, 4)
    centre = torch.tensor([[[0.5, 0.5]]])
    assert ops.point_sample(feats, centre).item() == pytest.approx(7.5)


def test_other_ops_raise_module_not_found_naming_the_op():
    if importlib.util.find_spec('mmcv._ext') is not None:
        pytest.skip('full mmcv is installed here')
    with pytest.raises(ModuleNotFoundError, match='DeformConv2d.*full mmcv'):
        from mmcv.ops import DeformConv2d  # noqa: F401
    import mmcv.ops
    with pytest.raises(AttributeError):
        mmcv.ops.__wrapped__  # dunders stay AttributeError


def test_sigmoid_focal_loss_hand_computed():
    pred = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    target = torch.tensor([1, 2])  # sample 2: background (index C)
    gamma, alpha = 2.0, 0.25

    def term(logit, positive):
        p = 1 / (1 + math.exp(-logit))
        p_t = p if positive else 1 - p
        a_t = alpha if positive else 1 - alpha
        return a_t * (1 - p_t) ** gamma * -math.log(p_t)

    expected = [[term(0.0, False), term(1.0, True)],
                [term(2.0, False), term(-1.0, False)]]
    loss = compat.sigmoid_focal_loss(pred, target, gamma, alpha,
                                     reduction='none')
    torch.testing.assert_close(loss, torch.tensor(expected))
    total = sum(map(sum, expected))
    mean = compat.sigmoid_focal_loss(pred, target, gamma, alpha)
    assert mean.item() == pytest.approx(total / 2, rel=1e-6)
    # Known value for the first element: 0.75 * 0.5**2 * ln 2.
    assert loss[0, 0].item() == pytest.approx(0.1875 * math.log(2))


def test_noop_when_full_mmcv_is_installed(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name == 'mmcv._ext':
            return importlib.machinery.ModuleSpec('mmcv._ext', None)
        return real_find_spec(name, *args, **kwargs)

    sentinel = object()
    previous = sys.modules.pop('mmcv.ops', sentinel)
    try:
        monkeypatch.setattr(compat.importlib.util, 'find_spec',
                            fake_find_spec)
        assert compat.install_mmcv_ops_fallback() is False
        assert 'mmcv.ops' not in sys.modules
    finally:
        if previous is not sentinel:
            sys.modules['mmcv.ops'] = previous


def test_core_imports_only_torch():
    import pathlib
    core = pathlib.Path(rc_adapter.__file__).parent / 'core'
    for path in core.glob('*.py'):
        text = path.read_text()
        for banned in ('mmseg', 'mmengine', 'mmcv'):
            assert f'import {banned}' not in text, path
            assert f'from {banned}' not in text, path


def _rc_imports(path, package):
    """The ``rc_adapter`` modules a file imports (absolute names)."""
    import ast
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module
                                          else []))
            else:
                module = node.module or ''
            # ``from .. import core`` imports rc_adapter.core.
            names += [f'{module}.{a.name}' for a in node.names]
    return [n for n in names if n == 'rc_adapter'
            or n.startswith('rc_adapter.')]


def test_layers_import_only_downwards():
    """core imports nothing of rc_adapter outside core; utils neither
    mmseg nor demo; mmseg never the demo code (no import cycle)."""
    import pathlib
    root = pathlib.Path(rc_adapter.__file__).parent
    allowed = {
        'core': ('rc_adapter.core',),
        'utils': ('rc_adapter.utils',),
        'mmseg': ('rc_adapter.core', 'rc_adapter.utils',
                  'rc_adapter.mmseg'),
    }
    for layer, prefixes in allowed.items():
        for path in (root / layer).rglob('*.py'):
            rel = path.relative_to(root.parent).with_suffix('')
            package = '.'.join(rel.parts[:-1]) if path.name != \
                '__init__.py' else '.'.join(rel.parts[:-1])
            for name in _rc_imports(path, package):
                assert name.startswith(prefixes), (str(path), name)
