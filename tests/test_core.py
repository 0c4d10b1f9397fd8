"""The RC core: zero interference, identity init, merge, task state moves."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

import rc_adapter as rc
from rc_adapter.core import RCConv2d, TaskSpecific


def _randomize_norm_stats(model):
    """Random BN statistics and affine params so merges are non-trivial."""
    gen = torch.Generator().manual_seed(123)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features,
                                                 generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features,
                                               generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features,
                                              generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features,
                                             generator=gen) * 0.1)


def _outputs(model, x):
    out = model(x)
    if torch.is_tensor(out):
        return [out]
    return list(out)


def _mmseg_resnet18():
    from mmseg.models.backbones import ResNet
    # DeepLab style: dilated stages 3 and 4 (output stride 8).
    return ResNet(depth=18, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                  out_indices=(0, 1, 2, 3))


def _timm_resnet18_os8():
    return timm.create_model('resnet18', features_only=True,
                             output_stride=8, pretrained=False)


def _timm_mobilenet():
    # Depthwise convs and BatchNormAct2d (a _BatchNorm subclass with an act).
    return timm.create_model('mobilenetv3_small_050', pretrained=False)


MODELS = {
    'mmseg_resnet18_dilated': _mmseg_resnet18,
    'timm_resnet18_os8': _timm_resnet18_os8,
    'timm_mobilenetv3_depthwise': _timm_mobilenet,
}


@pytest.mark.parametrize('name', list(MODELS))
def test_zero_interference_bit_exact(name):
    model = MODELS[name]()
    _randomize_norm_stats(model)
    rc.reparameterize(model, ['a', 'b'])
    x = torch.randn(2, 3, 48, 64)

    def snapshot():
        rc.set_task(model, 'a')
        model.eval()
        with torch.no_grad():
            outs = [o.clone() for o in _outputs(model, x)]
        state = {k: v.clone() for k, v in rc.task_state_dict(model, 'a')
                 .items()}
        return outs, state

    outs_before, state_before = snapshot()
    shared_before = {k: v.clone()
                     for k, v in rc.shared_state_dict(model).items()}

    # Train task b in train mode with momentum and weight decay; give the
    # optimizer *every* parameter to show frozen ones still cannot move.
    rc.set_task(model, 'b')
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                          weight_decay=1e-3)
    for _ in range(3):
        loss = sum(o.pow(2).mean() for o in _outputs(
            model, torch.randn(2, 3, 48, 64)))
        opt.zero_grad()
        loss.backward()
        opt.step()

    outs_after, state_after = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(outs_before, outs_after))
    assert state_before.keys() == state_after.keys()
    assert all(torch.equal(state_before[k], state_after[k])
               for k in state_before)
    shared_after = rc.shared_state_dict(model)
    assert all(torch.equal(shared_before[k], shared_after[k])
               for k in shared_before)
    # ... while task b did change.
    rc.set_task(model, 'b')
    model.eval()
    with torch.no_grad():
        outs_b = _outputs(model, x)
    assert any(not torch.equal(a, b) for a, b in zip(outs_before, outs_b))


@pytest.mark.parametrize('name', list(MODELS))
def test_identity_init_reproduces_model(name):
    model = MODELS[name]()
    _randomize_norm_stats(model)
    model.eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = _outputs(model, x)
    rc.reparameterize(model, ['a'])
    model.eval()
    with torch.no_grad():
        for a, b in zip(ref, _outputs(model, x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Train task a, then add b later: b still starts from the base state.
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                          lr=0.1)
    loss = sum(o.pow(2).mean() for o in _outputs(model, x))
    loss.backward()
    opt.step()
    rc.add_task(model, 'b')
    rc.set_task(model, 'b')
    model.eval()
    with torch.no_grad():
        for a, b in zip(ref, _outputs(model, x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _GeometryNet(nn.Module):
    """Dilated, strided, grouped, depthwise, biased and reflect-padded."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2, padding_mode='reflect',
                      bias=True),
            nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=4),
            nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=(2, 1), padding=1, groups=32,
                      bias=True),
            nn.GroupNorm(4, 32), nn.ReLU(),
            nn.Conv2d(32, 24, (3, 1), padding=(1, 0),
                      padding_mode='circular'),
            nn.Conv2d(24, 48, 1),  # 1x1 expansion: per-task copy
        )

    def forward(self, x):
        return self.body(x)


def _perturb_task(model, task, scale=0.2):
    """Moves a task's tensors away from the base state."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for key, value in rc.task_state_dict(model, task).items():
            if value.is_floating_point() and 'running_var' not in key:
                value.add_(torch.randn(value.shape, generator=gen) * scale)


def test_merge_equivalence_and_parameter_count():
    model = _GeometryNet()
    _randomize_norm_stats(model)
    n_params = sum(p.numel() for p in model.parameters())
    # The paper's rule: full modulators, a copy where they are not cheaper.
    rc.reparameterize(model, ['a', 'b'], modulator='full')
    kinds = model.rc_info['layers']
    assert kinds['body.0'] == 'rc' and kinds['body.6'] == 'rc'
    assert kinds['body.10'] == 'copy'
    _perturb_task(model, 'a')
    _perturb_task(model, 'b', 0.3)
    rc.set_task(model, 'a')
    model.eval()
    x = torch.randn(2, 3, 37, 29)  # odd, non-square
    with torch.no_grad():
        expected = model(x)
    merged = rc.merge(model, 'a')
    merged.eval()
    assert not rc.is_reparameterized(merged)
    assert all(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm, nn.ReLU,
                           nn.Sequential, nn.Identity, _GeometryNet)
               for m in merged.modules())
    assert sum(p.numel() for p in merged.parameters()) == n_params
    assert all(p.requires_grad for p in merged.parameters())
    with torch.no_grad():
        got = merged(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # Geometry is copied, including the padding mode.
    assert merged.body[0].padding_mode == 'reflect'
    assert merged.body[3].dilation == (2, 2)
    assert merged.body[6].groups == 32 and merged.body[6].stride == (2, 1)
    # Merging does not touch the RC model.
    assert rc.list_tasks(model) == ['a', 'b']


def test_merge_equivalence_on_resnet():
    model = _mmseg_resnet18()
    _randomize_norm_stats(model)
    n_params = sum(p.numel() for p in model.parameters())
    rc.reparameterize(model, ['a'])
    _perturb_task(model, 'a', 0.05)
    model.eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        expected = model(x)
        merged = rc.merge(model, 'a')
        merged.eval()  # mmseg's ResNet.train() returns None
        got = merged(x)
    assert sum(p.numel() for p in merged.parameters()) == n_params
    assert set(merged.state_dict()) == set(_mmseg_resnet18().state_dict())
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_grouped_modulators_are_block_diagonal():
    conv = nn.Conv2d(8, 12, 3, groups=4)
    layer = RCConv2d.from_conv(conv)
    layer.add_task('t')
    assert layer.modulator('t').shape == (12, 3)
    assert layer.modulators['t'].weight_v.shape == (12, 3)
    depthwise = RCConv2d.from_conv(nn.Conv2d(16, 16, 3, groups=16))
    depthwise.add_task('t')
    assert depthwise.modulator('t').shape == (16, 1)


@pytest.mark.parametrize('nff', [True, False])
@pytest.mark.parametrize('groups', [1, 2])
def test_activation_and_weight_paths_agree(nff, groups):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, bias=True,
                     groups=groups, padding_mode='reflect')
    layer = RCConv2d.from_conv(conv, nff=nff)
    layer.add_task('t')
    layer.active_task = 't'
    with torch.no_grad():
        for p in layer.modulators['t'].parameters():
            p.add_(torch.randn_like(p) * 0.3)
    layer.modulators['t'].requires_grad_(True)
    layer.train()
    x = torch.randn(2, 4, 11, 9, requires_grad=True)
    results = {}
    for mode in ('activation', 'weight'):
        layer.execution = mode
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results[mode] = (y.detach(), x.grad.clone(),
                         [p.grad.clone() for p in
                          layer.modulators['t'].parameters()])
    ya, gxa, gpa = results['activation']
    yw, gxw, gpw = results['weight']
    torch.testing.assert_close(ya, yw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gxa, gxw, rtol=1e-5, atol=1e-5)
    for a, b in zip(gpa, gpw):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Both equal the plain conv at identity init (+ the perturbation).
    expected = nn.functional.conv2d(
        nn.functional.pad(x.detach(), (1, 1, 1, 1), mode='reflect'),
        *layer.composed_weight('t'), stride=2, groups=groups)
    torch.testing.assert_close(ya, expected.detach(), rtol=1e-5, atol=1e-5)


def test_eval_cache_is_invalidated():
    layer = RCConv2d.from_conv(nn.Conv2d(3, 5, 3, padding=1))
    layer.add_task('a')
    layer.add_task('b')
    with torch.no_grad():
        layer.modulators['b'].weight_v.mul_(-1)
    layer.eval()
    x = torch.randn(1, 3, 6, 6)
    layer.active_task = 'a'
    with torch.no_grad():
        ya = layer(x)
        layer.active_task = 'b'
        yb = layer(x)
    torch.testing.assert_close(yb, -ya)  # task change invalidates
    # A parameter update (in place, as optimizers do) invalidates.
    with torch.no_grad():
        layer.modulators['b'].weight_g.mul_(2)
        torch.testing.assert_close(layer(x), -2 * ya)
    # Loading a task state (copy_) invalidates.
    state = {'modulators.b.weight_g': torch.ones(5),
             'modulators.b.weight_v': torch.eye(5)}
    layer.load_state_dict({**layer.state_dict(), **state})
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ya)
    # A mode change drops the cache; in train mode gradients flow.
    layer.train()
    layer.modulators['b'].requires_grad_(True)
    layer(x).sum().backward()
    assert layer.modulators['b'].weight_v.grad is not None


def test_task_state_roundtrip_between_models():
    src = _timm_resnet18_os8()
    dst = copy.deepcopy(src)
    rc.reparameterize(src, ['a', 'b'])
    rc.reparameterize(dst, ['c'])
    _perturb_task(src, 'b')
    state = {k: v.clone() for k, v in rc.task_state_dict(src, 'b').items()}
    assert all('.b.' in k for k in state)
    rc.load_task_state_dict(dst, 'b', state)  # adds 'b' to dst
    assert rc.list_tasks(dst) == ['c', 'b']
    for model in (src, dst):
        rc.set_task(model, 'b')
        model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            assert torch.equal(a, b)


def test_load_task_state_dict_is_strict():
    model = _timm_resnet18_os8()
    rc.reparameterize(model, ['a'])
    state = dict(rc.task_state_dict(model, 'a'))
    key = next(iter(state))
    # Every user error is an RCError (one family the tools catch).
    with pytest.raises(rc.RCError, match='missing'):
        rc.load_task_state_dict(model, 'a',
                                {k: v for k, v in state.items() if k != key})
    with pytest.raises(rc.RCError, match='unexpected'):
        rc.load_task_state_dict(model, 'a', {**state, 'nope.x': state[key]})
    conv_key = next(k for k in state if k.endswith('weight_v'))
    bad = dict(state)
    bad[conv_key] = torch.zeros(3, 3)
    with pytest.raises(rc.RCError, match='shape'):
        rc.load_task_state_dict(model, 'a', bad)
    # A failed load into a new task leaves no half-added task behind.
    with pytest.raises(ValueError):
        rc.load_task_state_dict(model, 'b', {
            k.replace('.a.', '.b.'): v for k, v in bad.items()})
    assert rc.list_tasks(model) == ['a']


def test_trainable_parameters_are_exactly_the_tasks():
    model = _mmseg_resnet18()
    rc.reparameterize(model, ['a', 'b'], modulator='full')
    rc.set_task(model, 'b')
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    task_keys = set(rc.task_state_dict(model, 'b'))
    assert trainable and trainable <= task_keys
    # Every parameter of the task (not its buffers) trains.
    params_b = {n for n, _ in model.named_parameters() if n in task_keys}
    assert trainable == params_b
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == rc.task_parameter_count(model, 'b')
    # The paper's per-task encoder cost on ResNet-18 (full modulators with
    # NFF on the 17 3x3/7x7 convs, downsample copies, per-task BN; see
    # docs/method.md).
    assert count == 1_582_272
    print(f'trainable parameters of one ResNet-18 task: {count:,}')
    assert rc.summary(model)['params_per_task'] == {'a': count, 'b': count}


def test_stale_gradients_are_cleared_by_set_task():
    model = _timm_resnet18_os8()
    rc.reparameterize(model, ['a', 'b'])
    model.train()
    sum(o.mean() for o in model(torch.randn(2, 3, 32, 32))).backward()
    grads = [p for p in model.parameters() if p.grad is not None]
    assert grads
    rc.set_task(model, 'b')
    assert all(p.grad is None for p in grads)


def test_task_norms_cover_bn_subclasses_and_keep_behaviour():
    model = _timm_mobilenet()
    rc.reparameterize(model, ['a'])
    wrapped = [m for m in model.modules() if isinstance(m, TaskSpecific)]
    bn_act = [m for m in wrapped
              if type(m.base).__name__ == 'BatchNormAct2d']
    assert bn_act
    copy_ = bn_act[0].tasks['a']
    assert type(copy_).__name__ == 'BatchNormAct2d'
    assert type(copy_.act) is type(bn_act[0].base.act)
    assert bn_act[0].num_features == bn_act[0].base.num_features


def test_skips_convs_with_a_different_forward():
    model = timm.create_model('tf_efficientnet_b0', pretrained=False)
    model.eval()
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        ref = model(x)
    rc.reparameterize(model, ['a'], exclude=['classifier'])
    skipped = model.rc_info['skipped']
    assert skipped and all('Conv2dSame' in r for r in skipped.values())
    for name in skipped:
        assert not isinstance(model.get_submodule(name), RCConv2d)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_include_exclude_patterns():
    model = _timm_resnet18_os8()
    rc.reparameterize(model, ['a'], include=[r'^layer[34]\.'],
                      exclude=[r'downsample'], task_norms=False)
    layers = model.rc_info['layers']
    assert layers and all(n.startswith(('layer3.', 'layer4.'))
                          for n in layers)
    assert not any('downsample' in n for n in layers)
    assert set(layers.values()) == {'rc'}
    assert not isinstance(model.conv1, RCConv2d)


def test_errors_are_clear():
    model = _timm_resnet18_os8()
    with pytest.raises(ValueError, match='reparameterize'):
        rc.set_task(model, 'a')
    rc.reparameterize(model, ['a'])
    with pytest.raises(ValueError, match='already reparameterized'):
        rc.reparameterize(model, ['b'])
    with pytest.raises(ValueError, match='already exists'):
        rc.add_task(model, 'a')
    with pytest.raises(rc.UnknownTaskError, match='unknown task'):
        rc.set_task(model, 'nope')
    with pytest.raises(KeyError, match='unknown task'):
        rc.remove_task(model, 'nope')
    with pytest.raises(KeyError, match='unknown task'):
        rc.merge(model, 'nope')
    with pytest.raises(ValueError, match='identifier'):
        rc.add_task(model, 'bad name')
    with pytest.raises(rc.RCConfigError, match='invalid regular'):
        rc.reparameterize(_timm_resnet18_os8(), ['a'], include=['('])
    rc.add_task(model, 'b')
    rc.remove_task(model, 'a')
    assert rc.list_tasks(model) == ['b']
    with pytest.raises(RuntimeError, match='no task is active'):
        model(torch.randn(1, 3, 32, 32))


def test_reparameterize_keeps_eval_mode():
    model = _timm_resnet18_os8()
    model.eval()
    rc.reparameterize(model, ['a'])
    assert not any(m.training for m in model.modules())
