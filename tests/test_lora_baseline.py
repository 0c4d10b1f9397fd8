"""The PEFT LoRA baseline of the segmentor (``baseline='lora'``).

The settings checks run everywhere; everything that builds adapters is
skipped when PEFT (the optional ``bench`` extra) is not installed.
"""
import copy
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rc_adapter.core.errors import RCConfigError
from rc_adapter.mmseg.models import lora

try:
    import peft  # noqa: F401
    HAVE_PEFT = True
except ImportError:
    HAVE_PEFT = False

needs_peft = pytest.mark.skipif(not HAVE_PEFT, reason='peft not installed')

CONFIG = 'mmseg_configs/finetune_r18_synthetic_nyud.py'
# The synthetic config at an eighth of its width (fast to build and run).
_HEAD = dict(in_channels=64, channels=16, c1_in_channels=8, c1_channels=8)
TINY = {'model.backbone.stem_channels': 8, 'model.backbone.base_channels': 8,
        **{f'model.decode_heads.{t}': _HEAD
           for t in ('semseg', 'depth', 'normals', 'edge')}}


# -- settings (no PEFT needed) -------------------------------------------
def test_defaults_and_alpha():
    cfg = lora.parse_lora_cfg(None)
    assert cfg == dict(r=8, alpha=8, norms='per_task', dilated='exclude')
    assert lora.parse_lora_cfg(dict(r=4, alpha=16))['alpha'] == 16


@pytest.mark.parametrize('bad,key', [
    (dict(rank=4), 'unknown key'), (dict(r=0), '.r'), (dict(r=True), '.r'),
    (dict(norms='per_layer'), '.norms'), (dict(dilated='skip'), '.dilated'),
    (dict(alpha=-1), '.alpha')])
def test_bad_settings_are_named(bad, key):
    with pytest.raises(RCConfigError, match=key.replace('.', r'\.')):
        lora.parse_lora_cfg(bad)


def test_missing_peft_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'peft', None)
    with pytest.raises(RCConfigError, match=r"\.\[bench\]"):
        lora.require_peft()


def _segmentor(tasks, train_tasks, **lora_cfg):
    from mmseg.registry import MODELS

    from rc_adapter.mmseg.apis import load_config
    options = dict(TINY, **{'model.baseline': 'lora',
                            'model.lora_cfg': lora_cfg})
    cfg = load_config(CONFIG, cfg_options=options)
    cfg.model.update(tasks=list(tasks), train_tasks=list(train_tasks))
    return MODELS.build(cfg.model)


def test_lora_cfg_without_the_lora_baseline_is_refused():
    from mmseg.registry import MODELS

    from rc_adapter.mmseg.apis import load_config
    cfg = load_config(CONFIG, cfg_options=dict(
        TINY, **{'model.lora_cfg': dict(r=4)}))
    with pytest.raises(RCConfigError, match="baseline='lora'"):
        MODELS.build(cfg.model)


# -- adapters --------------------------------------------------------------
class _Net(nn.Module):
    """conv(3->4, 3x3) - BN - conv(4->6, 3x3, dilation 2) - Linear(6->5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dil = nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.dil(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


@needs_peft
def test_targets_and_parameter_count_by_hand():
    net = _Net()
    targets, excluded = lora.lora_targets(net, 'exclude')
    assert (targets, excluded) == (['conv', 'fc'], ['dil'])
    cfg = lora.parse_lora_cfg(dict(r=2))
    lora.add_lora_task(net, 'a', cfg)
    # r * (c_in k^2 + c_out) per layer, plus the BN copy's 2 x 4 affine.
    assert lora.lora_task_parameter_count(net, 'a') == \
        2 * (3 * 9 + 4) + 2 * (6 + 5) + 8
    summary = lora.lora_summary(net)
    assert summary['excluded_params'] == 4 * 6 * 9
    matched = _Net()
    lora.add_lora_task(matched, 'a', lora.parse_lora_cfg(
        dict(r=2, dilated='match', norms='shared')))
    assert lora.lora_task_parameter_count(matched, 'a') == \
        2 * (3 * 9 + 4) + 2 * (4 * 9 + 6) + 2 * (6 + 5)


@needs_peft
@pytest.mark.parametrize('dilated', ['exclude', 'match'])
def test_new_task_reproduces_the_plain_network(dilated):
    net = _Net().eval()
    x = torch.randn(2, 3, 12, 12)
    expected = net(x)
    lora.add_lora_task(net, 'a', lora.parse_lora_cfg(dict(dilated=dilated)))
    lora.set_lora_task(net, 'a')
    assert torch.equal(net.eval()(x), expected)


@needs_peft
def test_matched_dilation_computes_the_merged_conv():
    net = _Net()
    lora.add_lora_task(net, 'a', lora.parse_lora_cfg(
        dict(r=3, alpha=6, dilated='match')))
    lora.set_lora_task(net, 'a')
    layer = net.dil
    nn.init.normal_(layer.lora_B['a'].weight)
    x = torch.randn(2, 4, 11, 13)
    base = layer.get_base_layer()
    a = layer.lora_A['a'].weight.flatten(1)           # r x (c_in k k)
    b = layer.lora_B['a'].weight.flatten(1)           # c_out x r
    delta = (b @ a).view_as(base.weight) * 2.0        # alpha / r = 2
    expected = F.conv2d(x, base.weight + delta, None, base.stride,
                        base.padding, base.dilation)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def _train_steps(net, task, steps=3):
    lora.set_lora_trainable(net, [task])
    lora.set_lora_task(net, task)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(4, 3, 12, 12)).pow(2).mean().backward()
        opt.step()


@needs_peft
@pytest.mark.parametrize('norms', ['per_task', 'shared'])
def test_interference_through_batchnorm(norms):
    """Per-task BN keeps task a bit-identical while b trains; PEFT's default
    (shared BN statistics) changes a's outputs."""
    net = _Net()
    cfg = lora.parse_lora_cfg(dict(r=2, norms=norms))
    lora.add_lora_task(net, 'a', cfg)
    _train_steps(net, 'a')
    x = torch.randn(2, 3, 12, 12)
    lora.set_lora_task(net, 'a')
    before = net.eval()(x)
    lora.add_lora_task(net, 'b', cfg)
    _train_steps(net, 'b')
    lora.set_lora_task(net, 'a')
    after = net.eval()(x)
    if norms == 'per_task':
        assert torch.equal(before, after)
    else:
        assert not torch.equal(before, after)


@needs_peft
def test_segmentor_trains_only_its_train_tasks_adapters():
    model = _segmentor(['semseg', 'depth'], ['depth'], r=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, 'nothing trains'
    for name in trainable:
        assert ('.depth.' in name and ('lora_' in name or
                                       'modules_to_save' in name)) or \
            name.startswith('decode_heads.tasks.depth.'), name
    # Routing and evaluation keep the trainable set.
    model.eval()
    model.set_active_task('semseg')
    model._forward(torch.randn(1, 3, 32, 32), tasks=['semseg'])
    assert trainable == {n for n, p in model.named_parameters()
                         if p.requires_grad}
    assert model.backbone._rc_lora['excluded'] == [
        'layer4.0.conv1', 'layer4.0.conv2', 'layer4.1.conv1',
        'layer4.1.conv2']


@needs_peft
def test_segmentor_state_round_trip():
    """What a LoRA run's checkpoint holds rebuilds the same model (the
    ablation chains tasks through checkpoints)."""
    model = _segmentor(['semseg', 'depth'], ['semseg', 'depth'], r=2)
    for name, p in model.named_parameters():
        if p.requires_grad:
            nn.init.normal_(p, std=0.1)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    expected = model._forward(x, tasks=['semseg', 'depth'])
    other = _segmentor(['semseg', 'depth'], [], r=2).eval()
    other.load_state_dict(copy.deepcopy(model.state_dict()))
    got = other._forward(x, tasks=['semseg', 'depth'])
    for task in expected:
        assert torch.equal(expected[task], got[task])
    assert not torch.equal(expected['semseg'].mean(), torch.tensor(0.))
