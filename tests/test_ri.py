"""Response Initialization: PCA of pre-norm responses, streamed."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import rc_adapter as rc
from rc_adapter.core import RCConv2d
from rc_adapter.core.ri import ResponseStatistics, collect_response_statistics


class Small(nn.Module):
    """conv-bn-relu x3; conv2 is grouped, conv3 has a bias."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 10, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


def _randomize_bn(model, seed=3):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
    return model.eval()


def _batches(n=3, size=12, seed=5):
    gen = torch.Generator().manual_seed(seed)
    # Correlated channels so the principal directions are far from the axes.
    mix = torch.randn(3, 3, generator=gen)
    return [torch.einsum('ij,bjhw->bihw', mix,
                         torch.randn(2, 3, size, size, generator=gen))
            for _ in range(n)]


def _ri(model, batches, tasks=('a',), **kwargs):
    rc.reparameterize(model, list(tasks), calibration=batches, **kwargs)
    return model


def _responses(model, name, batches):
    """Every spatial response of conv ``name`` as (samples, C), float64."""
    out = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda m, i, o: out.append(
            o.detach().double().permute(0, 2, 3, 1).reshape(-1, o.shape[1])))
    with torch.no_grad():
        for b in batches:
            model(b)
    handle.remove()
    return torch.cat(out).numpy()


def test_function_preserved_and_reported():
    ref = _randomize_bn(Small())
    model = _ri(copy.deepcopy(ref), _batches())
    info = model.rc_info['ri']
    assert info['num_batches'] == 3
    assert info['samples']['conv1'] == 3 * 2 * 12 * 12
    assert info['samples']['conv3'] == 3 * 2 * 6 * 6
    print(f"RI max |delta| (small net) = {info['max_abs_diff']:.3g}")
    assert 0 <= info['max_abs_diff'] < 1e-4
    x = torch.randn(2, 3, 16, 16)  # an input RI never saw
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-4, rtol=0)


def test_u_orthonormal_ws_is_ut_w_and_nff_gain_is_one():
    ref = _randomize_bn(Small())
    model = _ri(copy.deepcopy(ref), _batches())
    for name in ('conv1', 'conv3'):
        layer = dict(model.named_modules())[name]
        assert isinstance(layer, RCConv2d)
        u = layer.base_modulator.double()
        c = u.shape[0]
        assert torch.allclose(u.T @ u, torch.eye(c, dtype=torch.float64),
                              atol=1e-5)
        assert not torch.allclose(u.abs(), torch.eye(c, dtype=torch.float64),
                                  atol=0.1)  # RI really moved the basis
        w = dict(ref.named_modules())[name].weight.double().reshape(c, -1)
        ws = layer.weight.double().reshape(c, -1)
        assert torch.allclose(ws, u.T @ w, atol=1e-5)
        mod = layer.modulators['a']
        assert torch.allclose(mod.weight_v.double(), u)
        assert torch.allclose(mod.weight_g, torch.ones(c), atol=1e-5)
    # b_s = U^T b for the conv with a bias.
    layer = model.conv3
    u = layer.base_modulator.double()
    assert torch.allclose(layer.bias.double(), u.T @ ref.conv3.bias.double(),
                          atol=1e-6)


def test_u_diagonalizes_covariance_and_matches_numpy_pca():
    ref = _randomize_bn(Small())
    batches = _batches()
    y = _responses(ref, 'conv1', batches)            # (samples, 8)
    model = _ri(copy.deepcopy(ref), batches)
    u = model.conv1.base_modulator.double().numpy()
    # Independent PCA: SVD of the centred raw responses.
    centred = y - y.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2 / len(y)
    assert np.all(np.diff(var) < 0)  # distinct eigenvalues, so unique dirs
    # Same directions up to sign, same (descending) order.
    np.testing.assert_allclose(np.abs(np.sum(u * vt.T, axis=0)), 1.0,
                               atol=1e-4)
    # U^T C U is diagonal with the descending eigenvalues.
    cov = centred.T @ centred / len(y)
    d = u.T @ cov @ u
    np.testing.assert_allclose(np.diag(d), var, rtol=1e-4)
    off = d - np.diag(np.diag(d))
    assert np.abs(off).max() < 1e-5 * var[0]


def test_streaming_statistics_equal_one_pass():
    gen = torch.Generator().manual_seed(0)
    ys = [torch.randn(2, 6, 5, 4, generator=gen) * 3 + 1 for _ in range(4)]
    streamed, single = ResponseStatistics(6), ResponseStatistics(6)
    for y in ys:
        streamed.update(y)
    single.update(torch.cat(ys))
    assert streamed.count == single.count == 4 * 2 * 5 * 4
    assert torch.allclose(streamed.covariance(), single.covariance(),
                          atol=1e-12)
    flat = torch.cat(ys).permute(0, 2, 3, 1).reshape(-1, 6).double()
    expected = torch.cov(flat.T, correction=0)
    assert torch.allclose(streamed.covariance()[0], expected, atol=1e-10)


def test_grouped_conv_gets_block_diagonal_u():
    ref = _randomize_bn(Small())
    batches = _batches()
    model = _ri(copy.deepcopy(ref), batches)
    u = model.conv2.base_modulator.double()          # (12, 6)
    assert u.shape == (12, 6)
    blocks = u.reshape(2, 6, 6)
    for g in range(2):
        assert torch.allclose(blocks[g].T @ blocks[g],
                              torch.eye(6, dtype=torch.float64), atol=1e-5)
    # Each group's block is that group's own PCA.
    y = _responses(ref, 'conv2', batches)
    for g in range(2):
        yg = y[:, 6 * g:6 * g + 6]
        yg = yg - yg.mean(axis=0)
        _, _, vt = np.linalg.svd(yg, full_matrices=False)
        np.testing.assert_allclose(
            np.abs(np.sum(blocks[g].numpy() * vt.T, axis=0)), 1.0,
            atol=1e-4)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), ref(x), atol=1e-4)


def test_dead_channel_and_rank_deficient_responses():
    ref = _randomize_bn(Small())
    with torch.no_grad():
        ref.conv1.weight[2] = 0          # dead output channel
        ref.conv3.weight[:, :, :, :] = ref.conv3.weight[:1]  # rank 1 + bias
    # Constant images: conv1's responses have (almost) no variance at all
    # away from the border.
    batches = [torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)]
    model = _ri(copy.deepcopy(ref), batches)
    for layer in (model.conv1, model.conv2, model.conv3):
        u = layer.base_modulator.double()
        g = layer.groups
        go = u.shape[1]
        assert torch.isfinite(u).all() and torch.isfinite(layer.weight).all()
        for block in u.reshape(g, go, go):
            assert torch.allclose(block.T @ block,
                                  torch.eye(go, dtype=torch.float64),
                                  atol=1e-5)
    assert model.rc_info['ri']['max_abs_diff'] < 1e-4
    # All-zero responses (every sample zero): still orthonormal, no NaN.
    stats = ResponseStatistics(4)
    stats.update(torch.zeros(3, 4, 2, 2))
    u, eig = stats.principal_directions()
    assert torch.isfinite(u).all() and torch.isfinite(eig).all()
    assert torch.allclose(u.T @ u, torch.eye(4, dtype=torch.float64))


def test_statistics_memory_does_not_grow_with_batches():
    model = Small().eval()
    convs = {'conv1': model.conv1, 'conv2': model.conv2}

    def footprint(stats):
        return {n: sorted((k, tuple(v.shape)) for k, v in vars(s).items()
                          if torch.is_tensor(v)) for n, s in stats.items()}

    few, _ = collect_response_statistics(model, convs, _batches(1))
    many, n = collect_response_statistics(model, convs, _batches(12))
    assert n == 12
    assert footprint(few) == footprint(many)
    assert footprint(many)['conv1'] == [('gram', (1, 8, 8)), ('sum', (1, 8))]
    assert footprint(many)['conv2'] == [('gram', (2, 6, 6)), ('sum', (2, 6))]
    # Only tensors and integer counts (one per group) are kept (no
    # response lists).
    for s in many.values():
        others = {k: v for k, v in vars(s).items() if not torch.is_tensor(v)}
        assert all(isinstance(v, int) or (
            isinstance(v, list) and len(v) == s.groups
            and all(isinstance(c, int) for c in v))
            for v in others.values()), others
    assert many['conv1'].count == 12 * 2 * 12 * 12


def test_tasks_added_later_start_from_ri_base_state():
    ref = _randomize_bn(Small())
    model = _ri(copy.deepcopy(ref), _batches(), tasks=[])
    assert model.rc_info['ri']['max_abs_diff'] < 1e-4
    assert rc.list_tasks(model) == []
    rc.add_task(model, 'later')
    rc.set_task(model, 'later')
    u = model.conv1.base_modulator
    assert torch.equal(model.conv1.modulators['later'].weight_v, u)
    x = torch.randn(2, 3, 10, 10)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-4)
    # A second task after the first has trained still starts from RI.
    with torch.no_grad():
        model.conv1.modulators['later'].weight_v.add_(0.5)
    rc.add_task(model, 'second')
    assert torch.equal(model.conv1.modulators['second'].weight_v, u)


def test_resnet18_function_preserved():
    from mmengine.registry import init_default_scope

    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    backbone = MODELS.build(dict(
        type='MTDeepLabResNet', depth=18, strides=(1, 2, 2, 1),
        dilations=(1, 1, 1, 2), out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True), style='pytorch'))
    _randomize_bn(backbone)
    ref = copy.deepcopy(backbone)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 48, 48, generator=gen) for _ in range(2)]
    _ri(backbone, batches, tasks=[], modulator='full')
    info = backbone.rc_info['ri']
    print(f"RI max |delta| (ResNet-18, 4 outputs) = {info['max_abs_diff']:.3g}")
    assert len(info['samples']) == 17   # stem + 16 block convs
    assert info['max_abs_diff'] < 1e-3
    rc.add_task(backbone, 't')
    rc.set_task(backbone, 't')
    x = torch.randn(1, 3, 40, 40, generator=gen)
    with torch.no_grad():
        backbone.eval()
        for a, b in zip(backbone(x), ref(x)):
            scale = b.abs().max().item()
            assert (a - b).abs().max().item() <= 1e-4 * max(scale, 1.0)
