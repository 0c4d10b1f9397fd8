"""The residual-adapter baselines of the paper's comparison (series and
parallel): per-task adapters beside a frozen conv."""
import copy

import pytest
import torch
import torch.nn as nn

import rc_adapter as rc
from rc_adapter.core import RAConv2d


def _resnet18():
    from mmseg.models.backbones import ResNet
    return ResNet(depth=18, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                  out_indices=(0, 1, 2, 3))


def _randomize_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features,
                                                 generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features,
                                               generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen)
                               + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen)
                             * 0.1)


@pytest.mark.parametrize('method', ['ra_series', 'ra_parallel'])
def test_adapters_start_at_the_base_and_never_interfere(method):
    model = _resnet18()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        ref = model(x)
    rc.reparameterize(model, ['a', 'b'], method=method)
    kinds = model.rc_info['layers']
    assert kinds['conv1'] == 'ra' and kinds['layer4.1.conv2'] == 'ra'
    assert kinds['layer2.0.downsample.0'] == 'copy'  # 1x1: a copy
    assert isinstance(model.layer3[0].conv1, RAConv2d)
    model.eval()
    with torch.no_grad():
        for a, b in zip(model(x), ref):
            assert torch.equal(a, b)  # zero-initialised adapters
    # Give task a an adapter of its own, then train b.
    with torch.no_grad():
        for p in rc.task_state_dict(model, 'a').values():
            if p.is_floating_point() and p.dim() == 4:
                p.normal_(0, 0.01)
        before = [o.clone() for o in model(x)]
    state_a = {k: v.clone() for k, v in rc.task_state_dict(model, 'a')
               .items()}
    rc.set_task(model, 'b')
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                          weight_decay=1e-3)
    for _ in range(2):
        loss = sum(o.pow(2).mean() for o in model(torch.randn(2, 3, 40, 48)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rc.set_task(model, 'a')
    model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), before))
    assert all(torch.equal(v, rc.task_state_dict(model, 'a')[k])
               for k, v in state_a.items())


@pytest.mark.parametrize('mode', ['series', 'parallel'])
def test_merge_equivalence(mode):
    conv = nn.Conv2d(6, 8, 3, padding=2, dilation=2, stride=2)
    layer = RAConv2d.from_conv(copy.deepcopy(conv), mode=mode)
    layer.add_task('t')
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.adapters['t'].parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        if mode == 'series':
            bn = layer.adapters['t'].bn
            bn.running_mean.normal_(0, 0.2, generator=gen)
            bn.running_var.uniform_(0.5, 1.5, generator=gen)
    layer.active_task = 't'
    layer.eval()
    x = torch.randn(2, 6, 11, 13)
    with torch.no_grad():
        expected = layer(x)
        merged = layer.merged('t')
        assert type(merged) is nn.Conv2d
        torch.testing.assert_close(merged(x), expected, rtol=1e-4,
                                   atol=1e-5)


def test_adapter_parameter_counts():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    for mode, count in (('series', 32 * 32 + 2 * 32),
                        ('parallel', 16 * 32)):
        layer = RAConv2d.from_conv(conv, mode=mode)
        layer.add_task('t')
        assert sum(p.numel() for p in
                   layer.adapters['t'].parameters()) == count


def test_parallel_adapter_needs_same_padding():
    with pytest.raises(rc.RCConfigError, match='same'):
        RAConv2d.from_conv(nn.Conv2d(3, 4, 3), mode='parallel')
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding=1))
    rc.reparameterize(model, ['a'], method='ra_parallel')
    assert model.rc_info['layers'] == {'0': 'copy', '1': 'ra'}
    with pytest.raises(rc.RCConfigError, match='budget'):
        rc.RCConfig(method='ra_series', budget=0.1)
