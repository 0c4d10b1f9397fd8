"""Every weight layer of every backbone: RC for convs (1d/2d/3d), Linear and
multi-head attention, with full, low-rank and diagonal modulators."""
import copy
import logging

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import rc_adapter as rc
from rc_adapter.core import (RCConv1d, RCConv2d, RCConv3d, RCLinear,
                             RCMultiheadAttention, TaskSpecific)
from rc_adapter.core.layers import FAMILIES

# -- single layers --------------------------------------------------------


def _layers():
    return {
        'conv1d': nn.Conv1d(6, 8, 3, padding=1),
        'conv2d_grouped': nn.Conv2d(8, 12, 3, padding=2, dilation=2,
                                    groups=2, bias=False),
        'conv2d_1x1': nn.Conv2d(16, 24, 1),
        'conv3d': nn.Conv3d(4, 6, 3, padding=1, stride=(1, 2, 2)),
        'linear': nn.Linear(20, 12),
    }


def _input(name):
    shapes = {'conv1d': (2, 6, 11), 'conv2d_grouped': (2, 8, 9, 7),
              'conv2d_1x1': (2, 16, 5, 6), 'conv3d': (1, 4, 4, 6, 6),
              'linear': (3, 5, 20)}
    return torch.randn(*shapes[name])


def _wrap(layer, family, nff, rank=3):
    common = dict(nff=nff, family=family, rank=rank)
    if isinstance(layer, nn.Linear):
        return RCLinear.from_linear(layer, **common)
    cls = {nn.Conv1d: RCConv1d, nn.Conv2d: RCConv2d,
           nn.Conv3d: RCConv3d}[type(layer)]
    return cls.from_conv(layer, **common)


def _perturb(module, scale=0.3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.mark.parametrize('nff', [True, False])
@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('name', list(_layers()))
def test_layer_paths_identity_and_merge(name, family, nff):
    plain = _layers()[name]
    x = _input(name)
    with torch.no_grad():
        ref = plain(x)
    layer = _wrap(copy.deepcopy(plain), family, nff)
    layer.add_task('t')
    layer.active_task = 't'
    # A new task computes the plain layer's function (identity init).
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-6)
    _perturb(layer.modulators['t'])
    layer.modulators['t'].requires_grad_(True)
    results = {}
    for mode in ('activation', 'weight'):
        layer.execution = mode
        layer.zero_grad()
        xin = x.clone().requires_grad_(True)
        y = layer(xin)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results[mode] = (y.detach(), xin.grad.clone(),
                         [p.grad.clone() for p in
                          layer.modulators['t'].parameters()])
    ya, gxa, gpa = results['activation']
    yw, gxw, gpw = results['weight']
    torch.testing.assert_close(ya, yw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gxa, gxw, rtol=1e-4, atol=1e-5)
    for a, b in zip(gpa, gpw):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Merge gives the plain type with the task's function.
    merged = layer.merged('t')
    assert type(merged) is type(plain)
    assert sum(p.numel() for p in merged.parameters()) == sum(
        p.numel() for p in plain.parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), yw, rtol=1e-4, atol=1e-5)


def _orthogonal_base(layer, seed=0):
    """A random orthogonal block per group, as Response Initialization
    gives: ``(c_out, go)``."""
    gen = torch.Generator().manual_seed(seed)
    go = layer.rc_out // layer.mod_groups
    blocks = [torch.linalg.qr(torch.randn(go, go, generator=gen,
                                          dtype=torch.float64))[0]
              for _ in range(layer.mod_groups)]
    return torch.cat(blocks).float()


@pytest.mark.parametrize('nff', [True, False])
@pytest.mark.parametrize('family', ['lowrank', 'diagonal'])
@pytest.mark.parametrize('name', list(_layers()))
def test_the_base_folds_into_the_bank_on_the_activation_path(name, family,
                                                             nff):
    """With an orthogonal base (Response Initialization's ``U``) the
    activation path runs the bank with the base folded in (``B Ws``) and
    then only the task's part: same output and gradients as the modulator
    applied after the plain bank, nothing new in the state dict, the
    folded bank follows a bank loaded later and is not kept in eval."""
    layer = _wrap(_layers()[name], family, nff)
    base = _orthogonal_base(layer)
    layer.set_base(layer.weight.detach().clone(), layer.bias, base)
    layer.add_task('t')
    layer.active_task = 't'
    _perturb(layer.modulators['t'])
    mod = layer.modulators['t'].requires_grad_(True)
    assert layer.base_folds()
    layer.execution = 'activation'
    x = _input(name)
    params = list(mod.parameters())

    def unfolded():
        """The modulator after the plain bank."""
        y = layer._bank_forward(x, layer.weight, layer.bias)
        return mod.modulate(y, layer.base_modulator, layer.channel_dim)

    out = layer(x)
    reference = unfolded()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    for a, b in zip(torch.autograd.grad((out * weights).sum(), params),
                    torch.autograd.grad((reference * weights).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    shared = {'weight', 'base_modulator'} | (
        {'bias'} if layer.bias is not None else set())
    assert set(layer.state_dict()) == shared | {
        'modulators.t.' + n for n, _ in mod.named_parameters()}
    # A new bank (load_state_dict copies in place): the fold follows.
    state = layer.state_dict()
    state['weight'] = state['weight'] * 2
    if layer.bias is not None:
        state['bias'] = state['bias'] * 2
    layer.load_state_dict(state)
    torch.testing.assert_close(layer(x), unfolded(), rtol=1e-5, atol=1e-5)
    # The folded bank is a second copy of the bank: eval() drops it, and
    # a forward without gradients (eval on the activation path) makes none.
    assert layer._fold[2] is not None
    layer.eval()
    assert layer._fold is None
    with torch.no_grad():
        torch.testing.assert_close(layer(x), unfolded(), rtol=1e-5,
                                   atol=1e-5)
    assert layer._fold is None or layer._fold[2] is None


def test_a_base_that_is_not_orthogonal_is_not_folded():
    """Low-rank: ``B + U V^T = (I + U (B V)^T) B`` needs ``B^T B = I``;
    another base keeps the modulator pass for ``B`` and the same result."""
    layer = _wrap(nn.Conv2d(4, 6, 3, padding=1), 'lowrank', True)
    base = _orthogonal_base(layer) * 1.5
    layer.set_base(layer.weight.detach().clone(), layer.bias, base)
    layer.add_task('t')
    layer.active_task = 't'
    _perturb(layer.modulators['t'])
    layer.modulators['t'].requires_grad_(True)
    assert not layer.base_folds()
    x = torch.randn(2, 4, 5, 5)
    layer.execution = 'activation'
    ya = layer(x)  # training: the activation path, unfolded
    assert layer._fold[2] is None
    layer.execution = 'weight'
    torch.testing.assert_close(ya, layer(x), rtol=1e-5, atol=1e-5)


def test_family_parameter_counts():
    conv = nn.Conv2d(16, 32, 3, groups=2)
    counts = {}
    for family in FAMILIES:
        layer = RCConv2d.from_conv(conv, family=family, rank=4, nff=True)
        layer.add_task('t')
        counts[family] = sum(p.numel() for p in
                             layer.modulators['t'].parameters())
    assert counts['full'] == 32 * 16 + 32          # c_out * go + gains
    assert counts['lowrank'] == 2 * 4 * 32 + 32    # 2 r c_out + gains
    assert counts['diagonal'] == 32 + 32           # gain + shift (bias)


def test_lowrank_zero_init_gives_gradient_to_u_only():
    layer = RCLinear.from_linear(nn.Linear(10, 10), family='lowrank',
                                 rank=2, nff=False)
    layer.add_task('t')
    layer.active_task = 't'
    layer.modulators['t'].requires_grad_(True)
    layer(torch.randn(4, 10)).pow(2).sum().backward()
    mod = layer.modulators['t']
    assert torch.count_nonzero(mod.weight_u) == 0
    assert mod.weight_u.grad.abs().sum() > 0
    assert mod.weight_v.grad.abs().sum() == 0


# -- attention ------------------------------------------------------------


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('family', FAMILIES)
def test_multihead_attention(family, batch_first):
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    mha.eval()
    q = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    kv = torch.randn(2, 7, 16) if batch_first else torch.randn(7, 2, 16)
    with torch.no_grad():
        ref = mha(q, kv, kv)[0]
    layer = RCMultiheadAttention.from_mha(
        copy.deepcopy(mha), in_family=family, in_rank=3,
        out_family=family, out_rank=3)
    for part in (layer.in_proj, layer.out_proj):
        part.add_task('t')
        part.active_task = 't'
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(q, kv, kv)[0], ref, rtol=1e-5,
                                   atol=1e-5)
    # q, k and v each get their own block.
    assert layer.in_proj.mod_groups == 3
    _perturb(layer, seed=3)
    with torch.no_grad():
        got = layer(q, kv, kv)[0]
        merged = layer.merged('t')
    assert type(merged) is nn.MultiheadAttention
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(q, kv, kv)[0], got, rtol=1e-4,
                                   atol=1e-5)
    # Training: gradients reach the modulators of both projections.
    layer.train()
    for part in (layer.in_proj, layer.out_proj):
        part.modulators['t'].requires_grad_(True)
    layer(q, kv, kv)[0].pow(2).sum().backward()
    assert all(p.grad is not None for p in
               layer.in_proj.modulators['t'].parameters())


# -- whole backbones ------------------------------------------------------


def _vit():
    return timm.create_model('vit_small_patch16_224', img_size=32,
                             num_classes=0)


def _convnext():
    return timm.create_model('convnext_tiny', num_classes=0)


def _mit():
    from mmseg.models.backbones import MixVisionTransformer
    return MixVisionTransformer(embed_dims=32, num_heads=[1, 2, 5, 8],
                                num_layers=[2, 2, 2, 2])


def _swin():
    from mmseg.models.backbones import SwinTransformer
    return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2),
                           num_heads=(3, 6, 12, 24), window_size=7)


BACKBONES = {'vit_small_patch16_224': (_vit, (2, 3, 32, 32)),
             'convnext_tiny': (_convnext, (2, 3, 32, 32)),
             'mmseg_mit_b0': (_mit, (2, 3, 32, 32)),
             'mmseg_swin_t': (_swin, (1, 3, 32, 32))}


def _outputs(model, x):
    out = model(x)
    return [out] if torch.is_tensor(out) else list(out)


def _randomize_norms(model):
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                if getattr(m, 'weight', None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen)
                                   + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen)
                                 * 0.1)


# Every backbone with the default plan (a mix of families over its layer
# types), and every family forced on MiT (convs, linear layers and
# attention); the single-layer tests above cover each family on each layer
# type.
@pytest.mark.parametrize('name,family', [(n, 'auto') for n in BACKBONES] + [
    ('mmseg_mit_b0', f) for f in FAMILIES])
def test_backbone_zero_interference_bit_exact(name, family):
    build, shape = BACKBONES[name]
    model = build()
    _randomize_norms(model)
    model.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = _outputs(model, x)
    rc.reparameterize(model, ['a', 'b'], modulator=family, rank=4)
    info = rc.summary(model)
    if family != 'full':  # 'full' copies layers it cannot beat
        assert info['weight_reach'] == 1.0
    # A new task reproduces the base function (attention's slow path
    # differs from PyTorch's fused fast path by float rounding).
    model.eval()
    with torch.no_grad():
        for a, b in zip(_outputs(model, x), ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        before = [o.clone() for o in _outputs(model, x)]
    state_a = {k: v.clone() for k, v in rc.task_state_dict(model, 'a')
               .items()}
    shared = {k: v.clone() for k, v in rc.shared_state_dict(model).items()}
    # Train task b with every parameter handed to the optimizer.
    rc.set_task(model, 'b')
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                          weight_decay=1e-3)
    for _ in range(2):
        loss = sum(o.float().pow(2).mean()
                   for o in _outputs(model, torch.randn(*shape)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rc.set_task(model, 'a')
    model.eval()
    with torch.no_grad():
        after = _outputs(model, x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(v, rc.task_state_dict(model, 'a')[k])
               for k, v in state_a.items())
    now = rc.shared_state_dict(model)
    assert all(torch.equal(v, now[k]) for k, v in shared.items())
    rc.set_task(model, 'b')
    with torch.no_grad():
        assert any(not torch.equal(a, b)
                   for a, b in zip(before, _outputs(model, x)))
    # Merge: the original architecture with task b's outputs.
    merged = rc.merge(model, 'b')
    merged.eval()
    assert not rc.is_reparameterized(merged)
    assert not any(isinstance(m, RCMultiheadAttention)
                   for m in merged.modules())
    with torch.no_grad():
        for a, b in zip(_outputs(merged, x), _outputs(model, x)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('name', ['mmseg_mit_b0', 'vit_small_patch16_224'])
def test_response_initialization_on_linear_and_attention(name):
    build, shape = BACKBONES[name]
    model = build()
    _randomize_norms(model)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(*shape, generator=gen) for _ in range(2)]
    rc.reparameterize(model, ['a'], calibration=batches, rank=4)
    info = model.rc_info['ri']
    kinds = model.rc_info['layers']
    if name == 'mmseg_mit_b0':
        attn = [n for n, k in kinds.items() if k == 'mha']
        assert attn and f'{attn[0]}.in_proj' in info['samples']
    assert any(isinstance(m, RCLinear) and m.base_modulator is not None
               for m in model.modules())
    assert info['max_abs_diff'] < 1e-3, info['max_abs_diff']


def test_ri_on_linear_matches_numpy_pca():
    lin = nn.Linear(6, 5)
    x = torch.randn(40, 7, 6)
    with torch.no_grad():
        y = lin(x).reshape(-1, 5).double().numpy()
    model = nn.Sequential(lin)
    rc.reparameterize(model, ['a'], calibration=[x], modulator='full',
                      task_norms=False)
    layer = model[0]
    u = layer.base_modulator.double().numpy()
    cov = np.cov(y, rowvar=False, bias=True)
    eigvals, eigvecs = np.linalg.eigh(cov)
    expected = eigvecs[:, ::-1]
    # Columns agree up to sign.
    np.testing.assert_allclose(np.abs(np.sum(u * expected, axis=0)),
                               np.ones(5), atol=1e-5)


def test_ri_base_of_lowrank_layers_loads_into_a_fresh_model():
    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(),
                        nn.Linear(10, 12))
    ref = copy.deepcopy(src)
    batches = [torch.randn(2, 3, 6, 10)]
    rc.reparameterize(src, [], calibration=batches, modulator='lowrank',
                      rank=2)
    assert src.rc_info['layers'] == {'0': 'rc', '2': 'rc'}
    assert src[0].base_modulator is not None
    assert src[2].base_modulator is not None
    dst = copy.deepcopy(ref)
    rc.reparameterize(dst, [], modulator='lowrank', rank=2)
    assert dst[0].base_modulator is None
    dst.load_state_dict(rc.shared_state_dict(src), strict=True)
    rc.add_task(dst, 't')
    rc.set_task(dst, 't')
    with torch.no_grad():
        torch.testing.assert_close(dst(batches[0]), ref(batches[0]),
                                   rtol=1e-4, atol=1e-5)


# -- the plan: auto, budget, patterns, reach ------------------------------


def test_auto_uses_full_on_spatial_convs_and_lowrank_elsewhere():
    model = timm.create_model('resnet50', num_classes=0)
    n = sum(p.numel() for p in model.parameters())
    rc.reparameterize(model, ['a'])
    mods = model.rc_info['modulators']
    assert mods['layer1.0.conv2']['family'] == 'full'      # 3x3
    assert mods['layer1.0.conv1'] == dict(family='lowrank', rank=8)  # 1x1
    assert mods['layer1.0.downsample.0']['family'] == 'lowrank'
    info = rc.summary(model)
    assert info['weight_reach'] == 1.0
    assert info['params_per_task']['a'] <= 0.15 * n


def test_full_reproduces_the_paper_rule():
    model = timm.create_model('resnet50', num_classes=0)
    rc.reparameterize(model, ['a'], modulator='full')
    kinds = model.rc_info['layers']
    # 1x1 expansions and downsamples: a full modulator is not cheaper.
    assert kinds['layer1.0.conv3'] == 'copy'
    assert kinds['layer1.0.downsample.0'] == 'copy'
    assert kinds['layer1.0.conv2'] == 'rc'


@pytest.mark.parametrize('budget', [0.02, 0.05])
def test_budget_sets_ranks_to_fit(budget):
    model = _vit()
    n = sum(p.numel() for p in model.parameters())
    rc.reparameterize(model, ['a'], budget=budget)
    per_task = rc.task_parameter_count(model, 'a')
    assert per_task <= budget * n
    rank = model.rc_info['budget']['rank']
    assert rank >= 1
    # One more rank would not fit.
    bigger = _vit()
    rc.reparameterize(bigger, ['a'], modulator='auto', rank=rank + 1)
    assert rc.task_parameter_count(bigger, 'a') > per_task


def test_budget_that_cannot_be_met_names_the_minimum():
    with pytest.raises(rc.RCConfigError, match='cannot be met'):
        rc.reparameterize(_vit(), ['a'], budget=0.0001)


def test_rank_and_modulator_patterns():
    model = _vit()
    rc.reparameterize(model, ['a'], rank=4,
                      rank_pattern={r'blocks\.0\.attn\.qkv': 16},
                      modulator_pattern={r'mlp\.fc2': 'diagonal'})
    mods = model.rc_info['modulators']
    assert mods['blocks.0.attn.qkv'] == dict(family='lowrank', rank=16)
    assert mods['blocks.1.attn.qkv'] == dict(family='lowrank', rank=4)
    assert mods['blocks.3.mlp.fc2'] == dict(family='diagonal', rank=0)


def test_summary_reports_reach_and_warns(caplog):
    model = _vit()
    with caplog.at_level(logging.WARNING, logger='rc_adapter'):
        rc.reparameterize(model, ['a'], include=[r'^patch_embed\.'])
    assert any('weight parameters' in r.message for r in caplog.records)
    info = rc.summary(model)
    assert info['weight_reach'] < 0.05
    assert info['reach']['Linear']['per_task'] == 0
    assert info['reach']['Linear']['shared'] > 0
    assert info['reach']['Conv2d']['per_task'] > 0


def test_attention_inside_torch_transformer_layers_is_skipped():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32,
                                       batch_first=True)
    model = nn.Sequential(layer)
    rc.reparameterize(model, ['a'])
    assert '0.self_attn' in model.rc_info['skipped']
    assert not isinstance(layer.self_attn, RCMultiheadAttention)
    assert not isinstance(layer.self_attn.out_proj, RCLinear)
    assert isinstance(layer.linear1, RCLinear)
    assert isinstance(layer.norm1, TaskSpecific)


def test_module_apply_and_to_reach_every_rc_layer():
    # Modulators must not shadow nn.Module.apply (used by init functions
    # and mmengine).
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1),
                          nn.Linear(6, 6))
    rc.reparameterize(model, ['a'], modulator='auto', rank=2)
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert 'LowRankModulator' in seen and 'FullModulator' in seen
    model.to(torch.float64)
    assert model[1].modulators['a'].weight_u.dtype == torch.float64
