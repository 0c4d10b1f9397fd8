"""RCConv2d execution paths: equivalence, path choice, eval-time weight cache."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rc_adapter as rc
from rc_adapter.core import RCConv2d
from rc_adapter.core import execution as rc_execution
from rc_adapter.core.execution import (_MEASURED, LowRankModulate,
                                       LowRankModulateLast,
                                       Modulate,
                                       clear_execution_measurements,
                                       set_execution)


def _layer(cin=4, cout=6, k=3, nff=True, family='full', rank=0,
           **conv_kwargs):
    conv = nn.Conv2d(cin, cout, k, **conv_kwargs)
    layer = RCConv2d.from_conv(conv, nff=nff, family=family, rank=rank)
    layer.add_task('t')
    layer.active_task = 't'
    with torch.no_grad():
        for p in layer.modulators['t'].parameters():
            p.add_(torch.randn_like(p) * 0.3)
    layer.modulators['t'].requires_grad_(True)
    layer.train()
    return layer


def _reference(layer, x):
    """The plain conv with the composed weight, written out by hand."""
    m = layer.modulator('t').detach()
    g = layer.groups
    go = layer.out_channels // g
    ws = layer.weight.detach().reshape(g, go, -1)
    w = torch.stack([m.reshape(g, go, go)[i] @ ws[i] for i in range(g)])
    w = w.reshape_as(layer.weight)
    b = None
    if layer.bias is not None:
        b = torch.cat([m.reshape(g, go, go)[i] @ layer.bias.reshape(g, go)[i]
                       for i in range(g)])
    if layer.padding_mode != 'zeros':
        if layer.padding == 'same':  # odd kernels: symmetric padding
            ph, pw = (d * (k - 1) // 2 for d, k in
                      zip(layer.dilation, layer.kernel_size))
        else:
            ph, pw = layer.padding
        x = F.pad(x, (pw, pw, ph, ph), mode=layer.padding_mode)
        padding = 0
    else:
        padding = layer.padding
    return F.conv2d(x, w, b, layer.stride, padding, layer.dilation, g)


def _run(layer, x, mode):
    layer.execution = mode
    layer.zero_grad()
    x.grad = None
    y = layer(x)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)
    (y * weights).sum().backward()
    return (y.detach(), None if x.grad is None else x.grad.clone(),
            [p.grad.clone() for p in layer.modulators['t'].parameters()])


CASES = [
    dict(cin=4, cout=6, k=3, padding=1),                       # plain
    dict(cin=4, cout=6, k=3, stride=2, padding=2, dilation=2,
         padding_mode='reflect'),                              # strided, dilated, reflect
    dict(cin=6, cout=8, k=3, groups=2, padding=1, bias=False),  # grouped
    dict(cin=8, cout=8, k=3, groups=8, padding=1),             # depthwise
    dict(cin=8, cout=16, k=3, groups=8, stride=2, padding=1),  # depthwise x2
    dict(cin=3, cout=5, k=(3, 1), padding='same',
         padding_mode='circular'),                             # 'same', circular
]


@pytest.mark.parametrize('nff', [True, False])
@pytest.mark.parametrize('case', range(len(CASES)))
@pytest.mark.parametrize('input_grad', [True, False])
def test_paths_agree_with_each_other_and_the_plain_conv(nff, case,
                                                        input_grad):
    layer = _layer(nff=nff, **CASES[case])
    x = torch.randn(2, layer.in_channels, 9, 11, requires_grad=input_grad)
    ya, gxa, gpa = _run(layer, x, 'activation')
    yw, gxw, gpw = _run(layer, x, 'weight')
    expected = _reference(layer, x.detach())
    torch.testing.assert_close(ya, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(yw, expected, rtol=1e-5, atol=1e-5)
    if input_grad:
        torch.testing.assert_close(gxa, gxw, rtol=1e-5, atol=1e-5)
    else:
        assert gxa is None and gxw is None
    assert len(gpa) == (2 if nff else 1)
    for a, b in zip(gpa, gpw):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The gradient-free (cached composed) forward gives the same output.
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('groups,cout', [(1, 6), (2, 6), (6, 6), (3, 12)])
def test_modulate_gradcheck(groups, cout):
    y = torch.randn(2, cout, 3, 4, dtype=torch.float64, requires_grad=True)
    m = torch.randn(cout, cout // groups, dtype=torch.float64,
                    requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: Modulate.apply(a, b, groups), (y, m))
    out = Modulate.apply(y, m, groups)
    ref = F.conv2d(y, m.reshape(cout, -1, 1, 1), groups=groups)
    torch.testing.assert_close(out, ref)


def test_modulate_saves_only_what_the_gradients_need():
    y = torch.randn(2, 4, 5, 5, requires_grad=True)
    m = torch.randn(4, 4)  # frozen modulator: no need to keep y
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        Modulate.apply(y, m, 1)
    assert saved == [torch.Size([4, 4])]


def _lowrank_reference(y, u, v, scale):
    """``s * (y + U V^T y)`` per block, written out with autograd ops."""
    n, c = y.shape[:2]
    g, go, _ = u.shape
    yv = y.reshape(n, g, go, -1)
    out = yv + torch.matmul(u, torch.matmul(v.transpose(1, 2), yv))
    if scale is not None:
        out = out * scale.reshape(1, g, go, 1)
    return out.reshape(y.shape)


@pytest.mark.parametrize('groups,nff', [(1, True), (2, True), (1, False),
                                        (4, True)])
def test_lowrank_modulate_gradcheck_and_reference(groups, nff):
    _check_low_rank_node(LowRankModulate, _lowrank_reference, (2, 8, 3, 4),
                         groups, 2, nff, seed=groups)


def _check_low_rank_node(node, reference, y_shape, groups, r, nff, seed):
    """``node`` (a low-rank autograd node) on float64 inputs: gradients
    checked numerically, output and gradients equal to ``reference``."""
    g = torch.Generator().manual_seed(seed)
    c = y_shape[1] if node is LowRankModulate else y_shape[-1]
    y = torch.randn(*y_shape, dtype=torch.float64, generator=g,
                    requires_grad=True)
    u = torch.randn(groups, c // groups, r, dtype=torch.float64,
                    generator=g, requires_grad=True)
    v = torch.randn(groups, c // groups, r, dtype=torch.float64,
                    generator=g, requires_grad=True)
    scale = (torch.rand(c, dtype=torch.float64, generator=g) + 0.5
             ).requires_grad_() if nff else None
    inputs = (y, u, v, scale)
    assert torch.autograd.gradcheck(node.apply, inputs)
    out = node.apply(*inputs)
    ref = reference(*inputs)
    torch.testing.assert_close(out, ref)
    wrt = [t for t in inputs if t is not None]
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, wrt, grad),
                    torch.autograd.grad(ref, wrt, grad)):
        torch.testing.assert_close(a, b)


def test_lowrank_modulate_in_a_layer_matches_the_plain_expression():
    """A low-rank RC conv trains through LowRankModulate: same output and
    modulator gradients as the plain expression (an image input: no
    gradient into the bank's output needed)."""
    torch.manual_seed(0)
    layer = _layer(cin=6, cout=8, family='lowrank', rank=3, padding=1,
                   bias=False)
    layer.execution = 'activation'
    mod = layer.modulators['t']
    x = torch.randn(2, 6, 5, 5)  # an image: no gradient into the bank
    out = layer(x)
    assert 'LowRankModulate' in type(out.grad_fn).__name__
    params = [mod.weight_u, mod.weight_v, mod.weight_g]
    grads = torch.autograd.grad(out.square().sum(), params)
    y = F.conv2d(x, layer.weight, padding=1)
    ref = _lowrank_reference(y, mod.weight_u, mod.weight_v,
                             mod._row_scale(None))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(a, b)


def test_lowrank_modulate_on_a_bfloat16_map():
    """As under autocast: the bank's output in bfloat16, the modulator's
    tensors in float32; the gradients come back in each input's dtype."""
    y = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    u = torch.randn(1, 8, 2, requires_grad=True)
    v = torch.randn(1, 8, 2, requires_grad=True)
    scale = torch.rand(8, requires_grad=True)
    out = LowRankModulate.apply(y, u, v, scale)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), (y, u, v, scale))
    assert [t.dtype for t in grads] == [torch.bfloat16] + [torch.float32] * 3
    assert all(torch.isfinite(t).all() for t in grads)


def _lowrank_last_reference(y, u, v, scale):
    """``s * (y + U (V^T y))`` over the last dim, plain autograd."""
    out = y + torch.matmul(torch.matmul(y, v[0]), u[0].t())
    return out if scale is None else out * scale


@pytest.mark.parametrize('nff', [True, False])
def test_lowrank_modulate_last_gradcheck_and_reference(nff):
    """The channel-last node (a Linear's tokens): gradients checked
    numerically, output and gradients equal to the plain expression."""
    _check_low_rank_node(LowRankModulateLast, _lowrank_last_reference,
                         (2, 5, 8), 1, 3, nff, seed=1)


def test_a_lowrank_linear_trains_through_the_channel_last_node():
    """A low-rank RC Linear on the activation path: one LowRankModulateLast
    node, the output and every gradient (input included) equal to the
    plain expression; under bfloat16 autocast the output is bfloat16 and
    the parameter gradients float32."""
    from rc_adapter.core import RCLinear
    torch.manual_seed(0)
    layer = RCLinear.from_linear(nn.Linear(6, 10), family='lowrank',
                                 rank=3)
    layer.add_task('t')
    layer.active_task = 't'
    mod = layer.modulators['t']
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    mod.requires_grad_(True)
    layer.execution = 'activation'
    layer.train()
    x = torch.randn(4, 7, 6, requires_grad=True)
    out = layer(x)
    assert type(out.grad_fn).__name__ == 'LowRankModulateLastBackward'
    params = [x, mod.weight_u, mod.weight_v, mod.weight_g]
    grads = torch.autograd.grad(out.square().sum(), params)
    ref = _lowrank_last_reference(F.linear(x, layer.weight, layer.bias),
                                  mod.weight_u, mod.weight_v,
                                  mod._row_scale(None))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(a, b)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), params[1:])
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all()
               for t in grads)


def test_cost_model_hand_computed():
    # activation = P*(K*bank_passes + 2.5*mod_passes*go),
    # weight = P*K*(bank_passes + 1) + 0.5*2*go*K, with P output pixels,
    # K = k*k*c_in/g, go = c_out/g, bank_passes = 1 + input needs grad,
    # mod_passes = 2 + input needs grad.
    # Stem-like 7x7 conv on an image: output 16x16, P = 512, K = 147,
    # go = 64: activation = 512*(147 + 320) = 239104 > weight = 512*294
    # + 64*147 = 159936 -> weight path.
    stem = RCConv2d.from_conv(nn.Conv2d(3, 64, 7, stride=2, padding=3))
    assert not stem.prefers_activation_path(torch.randn(2, 3, 32, 32))
    # 16 -> 8 3x3 on an image: K = 144, go = 8, P = 64:
    # activation = 64*(144 + 40) = 11776 < weight = 64*288 + 1152 = 19584.
    wide = RCConv2d.from_conv(nn.Conv2d(16, 8, 3, padding=1))
    assert wide.prefers_activation_path(torch.randn(1, 16, 8, 8))
    # 64 -> 64 3x3, input needs grad, P = 64, K = 576: activation =
    # 64*(1152 + 480) = 104448 < weight = 64*1728 + 36864 = 147456.
    body = RCConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1))
    assert body.prefers_activation_path(
        torch.randn(1, 64, 8, 8, requires_grad=True))
    # 8 -> 64 3x3, input needs grad, K = 72: activation = P*(144 + 480) =
    # 624P > weight = 216P + 4608 for P = 64.
    narrow = RCConv2d.from_conv(nn.Conv2d(8, 64, 3, padding=1))
    assert not narrow.prefers_activation_path(
        torch.randn(1, 8, 8, 8, requires_grad=True))
    # Grayscale 1 -> 16: K = 9, go = 16: activation = 89P, weight = 18P +
    # 144: weight at P = 64, activation at P = 1.
    gray = RCConv2d.from_conv(nn.Conv2d(1, 16, 3, padding=1))
    assert not gray.prefers_activation_path(torch.randn(1, 1, 8, 8))
    assert gray.prefers_activation_path(torch.randn(1, 1, 1, 1))


def test_cost_model_on_a_linear_hand_computed():
    # On a Linear the modulator pass weighs 1 and composing 1.2: the packed
    # q/k/v projection of ViT-S (384 -> 3 x 384, go = 384, K = 384), input
    # needing grad: activation = P*(2*384 + 3*384) = 1920P; weight =
    # 3*384P + 1.2*2*384*384 = 1152P + 353894.4. Activation at 400 tokens
    # (768000 < 814694), weight at 1576 (3025920 > 2169446).
    from rc_adapter.core import RCLinear
    qkv = RCLinear.from_linear(nn.Linear(384, 1152), blocks=3)
    assert qkv.prefers_activation_path(
        torch.randn(8, 50, 384, requires_grad=True))
    assert not qkv.prefers_activation_path(
        torch.randn(8, 197, 384, requires_grad=True))


def _count_compose(layer, monkeypatch):
    calls = []
    original = layer._compose

    def counting(m, shift=None):
        calls.append(1)
        return original(m, shift)
    monkeypatch.setattr(layer, '_compose', counting)
    return calls


def test_auto_follows_cost_model_and_override(monkeypatch):
    layer = _layer(cin=1, cout=16, k=3, padding=1)
    calls = _count_compose(layer, monkeypatch)
    x = torch.randn(1, 1, 8, 8)
    layer.execution = 'auto'
    layer(x)
    assert len(calls) == 1  # weight path (see the hand computation)
    layer(torch.randn(1, 1, 1, 1))
    assert len(calls) == 1  # activation path
    layer.execution = 'activation'
    layer(x)
    assert len(calls) == 1
    model = nn.Sequential(layer, nn.ReLU())
    assert set_execution(model, 'weight') == 1
    assert layer.execution == 'weight'
    layer(torch.randn(1, 1, 1, 1))
    assert len(calls) == 2
    with pytest.raises(ValueError, match='execution must be one of'):
        set_execution(model, 'fastest')


def test_measure_mode_times_once_per_shape_and_leaves_grads_alone(
        monkeypatch):
    clear_execution_measurements()
    layer = _layer(cin=4, cout=6, k=3, padding=1)
    layer.execution = 'measure'
    timings = []
    original = layer._measure_prefers_activation

    def spy(x, mod, repeats=3):
        timings.append(tuple(x.shape))
        return original(x, mod, repeats)
    monkeypatch.setattr(layer, '_measure_prefers_activation', spy)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    y = layer(x)
    # The measurement did not accumulate into .grad.
    assert all(p.grad is None for p in layer.parameters())
    assert x.grad is None
    layer(x)
    assert timings == [(2, 4, 8, 8)]
    assert layer._shape_key(x) in _MEASURED
    layer(torch.randn(3, 4, 8, 8))  # new shape (and no input grad)
    assert timings == [(2, 4, 8, 8), (3, 4, 8, 8)]
    # Same result as the forced paths.
    torch.testing.assert_close(y, _reference(layer, x.detach()))
    clear_execution_measurements()
    assert not _MEASURED


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def _fresh_outputs(model, x):
    """Reference: every RC layer composed from scratch, no cache."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, RCConv2d):
            m._cached_composed = lambda task, m=m: m._compose(m.modulator(task))
    with torch.no_grad():
        return ref(x)


def test_eval_cache_is_never_stale():
    model = _Net()
    rc.reparameterize(model, ['a', 'b'], task_norms=False)
    x = torch.randn(2, 3, 7, 7)
    layers = [m for m in model.modules() if isinstance(m, RCConv2d)]
    model.eval()

    def check():
        with torch.no_grad():
            out = model(x)
        torch.testing.assert_close(out, _fresh_outputs(model, x))
        return out

    base = check()
    cached = layers[0]._cache[2]
    check()
    assert layers[0]._cache[2] is cached  # nothing changed: reused
    # An optimizer step (in place) in train mode, then eval.
    rc.set_task(model, 'b')
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                          lr=0.5)
    model(x).square().mean().backward()
    opt.step()
    model.eval()
    out_b = check()
    assert not torch.allclose(out_b, base)
    # An optimizer step while in eval mode (validation-time update).
    model(x).square().mean().backward()
    opt.step()
    out_b2 = check()
    assert not torch.allclose(out_b2, out_b)
    # Task switch back: 'a' still gives its untouched function.
    rc.set_task(model, 'a')
    torch.testing.assert_close(check(), base)
    # load_state_dict copies into the same storages (version bump).
    state_b = {k.replace('modulators.b.', 'modulators.a.'): v
               for k, v in rc.task_state_dict(model, 'b').items()}
    rc.load_task_state_dict(model, 'a', state_b)
    torch.testing.assert_close(check(), out_b2)
    # .data assignment, repeatedly (storages are swapped, not modified).
    for i in range(5):
        for layer in layers:
            v = layer.modulators['a'].weight_v
            v.data = torch.randn_like(v) * (i + 1)
        check()
    # The bank itself changing in place (not allowed through the API, but
    # the cache must still notice).
    with torch.no_grad():
        layers[0].weight.mul_(2)
    check()
    # train()/eval() drop the cache; .to() changes dtype and device.
    model.train()
    assert all(layer._cache is None for layer in layers)
    model.eval()
    check()
    model.double()
    assert all(layer._cache is None for layer in layers)
    with torch.no_grad():
        out = model(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _fresh_outputs(model, x.double()))


def test_no_grad_in_train_mode_uses_cache_and_frozen_task_still_routes_grad():
    layer = _layer(cin=4, cout=6, k=3, padding=1)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    with torch.no_grad():
        y0 = layer(x)
    assert layer._cache is not None
    torch.testing.assert_close(y0, _reference(layer, x.detach()))
    # Frozen task, input needing grad (e.g. training a later task-specific
    # part): the cached weight is used and the input gradient is right.
    layer.modulators['t'].requires_grad_(False)
    layer(x).sum().backward()
    expected = torch.autograd.grad(
        _reference(layer, x).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


def test_merged_model_is_plain_and_equal():
    model = _Net()
    rc.reparameterize(model, ['a'], task_norms=False)
    layer = [m for m in model.modules() if isinstance(m, RCConv2d)][0]
    with torch.no_grad():
        layer.modulators['a'].weight_g.mul_(1.5)
    model.eval()
    merged = rc.merge(model, 'a')
    assert not any(isinstance(m, RCConv2d) for m in merged.modules())
    assert all(type(m) in (nn.Conv2d, _Net) for m in merged.modules())
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x))


def test_activation_path_does_not_change_state_dict_keys():
    layer = _layer()
    keys = set(layer.state_dict())
    assert keys == {'weight', 'bias', 'base_modulator',
                    'modulators.t.weight_v', 'modulators.t.weight_g'}
    assert rc_execution.EXECUTION_MODES[0] == 'auto'


def _cached_numel(layer):
    """Elements the layer's eval cache holds."""
    if layer._cache is None:
        return 0
    value = layer._cache[2]
    items = value if isinstance(value, tuple) else (value,)
    return sum(t.numel() for t in items if isinstance(t, torch.Tensor))


def test_eval_path_skips_the_cache_where_the_modulator_is_nearly_free():
    """Eval: low-rank modulators on a wide layer run bank + modulator and
    keep no composed copy (only the modulator's small operands); full
    modulators (and narrow low-rank layers) keep the cached composition; a
    forced path is obeyed in eval too."""
    x = torch.randn(2, 64, 6, 6)

    def build(family, cin, rank=0):
        return _layer(cin=cin, cout=64, padding=1, family=family,
                      rank=rank).eval()

    # rank 2: modulator pass 2.5 * 2r = 10 multiply-adds per output value,
    # <= 5 % of the bank's K = 576 (28.8): activation path, no cache.
    wide = build('lowrank', 64, rank=2)
    assert rc_execution.eval_uses_activation_path(wide)
    with torch.no_grad():
        out = wide(x)
    # V^T, s U and s: 2 * 64 * 2 + 64 values, against 64 * 576 composed.
    assert _cached_numel(wide) == 2 * 64 * 2 + 64
    merged = wide.merged('t')
    torch.testing.assert_close(out, merged(x), rtol=1e-5, atol=1e-5)
    # K = 9 * 4 = 36: 10 > 1.8, so the narrow layer keeps the cache.
    narrow = build('lowrank', 4, rank=2)
    assert not rc_execution.eval_uses_activation_path(narrow)
    with torch.no_grad():
        narrow(x[:, :4])
    assert narrow._cache is not None
    full = build('full', 64)
    assert not rc_execution.eval_uses_activation_path(full)
    with torch.no_grad():
        full(x)
    assert full._cache is not None
    full.execution = 'activation'
    full._cache = None
    with torch.no_grad():
        out = full(x)
    assert _cached_numel(full) == 0
    torch.testing.assert_close(out, full.merged('t')(x), rtol=1e-5,
                               atol=1e-5)
    wide.execution = 'weight'
    with torch.no_grad():
        wide(x)
    assert wide._cache is not None


@pytest.mark.parametrize('nff', [True, False])
def test_eval_operands_follow_the_parameters_and_the_input_layout(nff):
    """The low-rank family's eval operands (V^T, s U, s) are rebuilt when a
    parameter changes in place and dropped by train(); under bf16 autocast
    they take the autocast dtype; a channels-last map, whose bank output
    is not NC...-contiguous, runs the modulator from its parameters. Every
    output equals the merged conv's."""
    layer = _layer(cin=64, cout=64, padding=1, family='lowrank', rank=2,
                   nff=nff).eval()
    assert rc_execution.eval_uses_activation_path(layer)
    x = torch.randn(2, 64, 6, 6)

    def check(inp=x, **tol):
        with torch.no_grad():
            out = layer(inp)
        torch.testing.assert_close(out, layer.merged('t')(inp), **(
            tol or dict(rtol=1e-5, atol=1e-5)))
        return out

    check()
    assert layer._cache[0][1] == 'operands'
    cached = layer._cache[2]
    check()
    assert layer._cache[2] is cached  # nothing changed: reused
    mod = layer.modulators['t']
    with torch.no_grad():  # an optimizer's in-place step
        mod.weight_u.add_(torch.randn_like(mod.weight_u))
    check()
    assert layer._cache[2] is not cached
    layer.train()
    assert layer._cache is None
    layer.eval()
    check(x.contiguous(memory_format=torch.channels_last))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with torch.no_grad():
            out = layer(x)
        operands = layer._cache[2]
    assert out.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in operands)
    torch.testing.assert_close(out.float(), layer.merged('t')(x),
                               rtol=0.05, atol=0.05)


def test_eval_of_a_linear_keeps_the_cached_composition():
    """Low-rank passes over tokens are thin GEMMs: a Linear's eval uses the
    cached composition even where the multiply-adds would be few."""
    from rc_adapter.core import RCLinear
    layer = RCLinear.from_linear(nn.Linear(1536, 384), family='lowrank',
                                 rank=2)
    layer.add_task('t')
    layer.active_task = 't'
    layer.eval()
    assert not rc_execution.eval_uses_activation_path(layer)
    with torch.no_grad():
        layer(torch.randn(3, 1536))
    assert layer._cache is not None


@pytest.mark.parametrize('family,options', [('full', {}),
                                            ('lowrank', {'rank': 2})])
def test_an_inplace_activation_may_follow_the_activation_path(family,
                                                              options):
    """conv -> ReLU(inplace=True) with no norm between (VGG-like nets,
    ConvModules without a norm): the modulator's output is changed in
    place; training works and matches the weight path."""
    torch.manual_seed(0)
    nets = {}
    for path in ('activation', 'weight'):
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True),
                            nn.Conv2d(8, 8, 3), nn.ReLU(inplace=True))
        torch.manual_seed(1)
        for p in net.parameters():
            nn.init.normal_(p, std=0.3)
        rc.reparameterize(net, ['a'], modulator=family, execution=path,
                          **options)
        rc.set_task(net, 'a')
        nets[path] = net
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    results = []
    for net in nets.values():
        out = net(x)
        params = [p for p in net.parameters() if p.requires_grad]
        results.append((out,) + torch.autograd.grad(out.sum(), params + [x]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
