"""Smoke tests of ``benchmarks/bench_peft.py`` at tiny size.

The functions the PEFT comparison is built from, on a small conv net with
BatchNorm (and one dilated conv), so the whole file runs in seconds once
PEFT is imported. Skipped when PEFT (the ``bench`` extra) is not installed.
The dilated-conv failure pinned here is PEFT 0.21.2's (``lora_A`` is built
without the conv's dilation); a PEFT release that fixes it fails
``test_dilated_conv_failure_is_reported``, and ``benchmarks/PEFT.md`` must
then be updated.
"""
import importlib.util
import json
import os
import sys

import pytest
import torch
import torch.nn as nn

pytest.importorskip('peft')

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'benchmarks', 'bench_peft.py')


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load('bench_peft')


class TinyNet(nn.Module):
    """A stem conv and a block whose conv is also called ``conv1`` (the
    name-suffix trap), BatchNorm after each, optionally dilated."""

    def __init__(self, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.block = nn.Sequential()
        self.block.conv1 = nn.Conv2d(32, 32, 3, padding=dilation,
                                     dilation=dilation, bias=False)
        self.block.bn = nn.BatchNorm2d(32)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.block.bn(self.block.conv1(x)))
        return self.head(x)


def _backbone(dilation=1):
    return bench.Backbone('tiny', lambda quick: TinyNet(dilation),
                          bench.conv_targets, quick_batch=2, quick_size=12,
                          note='tiny')


def _rows(result):
    return {row['key']: row for row in result['rows']}


def test_interference_rc_exact_lora_moves_shared_bn():
    rows = _rows(bench.interference(_backbone(), quick=True, steps=2))
    for key in ('rc_auto', 'rc_lowrank'):
        assert rows[key]['max_abs_change'] == 0.0
        assert rows[key]['bit_exact'] and rows[key]['changed'] == {}
    # PEFT's default LoRA shares BN: training B moves A's statistics.
    lora = rows['lora8']
    assert lora['max_abs_change'] > 0 and not lora['bit_exact']
    assert lora['changed'] == {'running_mean': 2, 'running_var': 2,
                               'num_batches_tracked': 2}
    # BN in modules_to_save: one copy per adapter, A untouched.
    assert rows['lora8_bn']['bit_exact']
    assert rows['lora8_bn']['changed'] == {}
    assert rows['full']['max_abs_change'] > 0


def test_counts_and_matched_ranks():
    torch.manual_seed(0)
    base = TinyNet()
    x = torch.randn(2, 3, 12, 12)
    target = bench.random_target(base, x, torch.Generator().manual_seed(0))
    built = {b.method.key: b for b in bench.methods_for(
        _backbone(), base, x, target)}
    # LoRA on a k x k conv: r * (c_in k^2 + c_out) per adapter.
    per_rank = (3 * 9 + 32) + (32 * 9 + 32) + (32 * 1 + 4)
    assert built['lora8'].trainable == 8 * per_rank
    assert built['lora8'].stored == 8 * per_rank
    # BN in modules_to_save adds its affine parameters to the trainable
    # count and its running statistics (+ counters) to the stored one.
    assert built['lora8_bn'].trainable == 8 * per_rank + 2 * (2 * 32)
    assert built['lora8_bn'].stored == 8 * per_rank + 2 * (4 * 32 + 1)
    assert built['rc_lowrank'].trainable <= built['lora8'].trainable
    auto = built['rc_auto'].trainable
    match = built['lora_match']
    assert match.method.rank == max(1, round(auto / per_rank))
    assert match.trainable == match.method.rank * per_rank
    assert built['full'].trainable == sum(p.numel() for p in base.parameters())
    assert all(b.error is None for b in built.values())


def test_targets_are_exact_names_not_suffixes():
    base = TinyNet()
    lora = bench.LoraMethod('l', 'l', 2, ['conv1'])
    model = lora.build(base)
    adapted = [n for n, m in model.named_modules() if hasattr(m, 'lora_A')]
    assert adapted == ['base_model.model.conv1']


def test_dilated_conv_failure_is_reported():
    result = bench.speed(_backbone(dilation=2), quick=True, reps=1)
    rows = _rows(result)
    lora = rows['lora8']
    assert lora['error'].startswith('RuntimeError')
    assert lora['train_ratio'] is None
    assert any('without the base dilation' in n and 'block.conv1' in n
               for n in lora['notes'])
    # Excluding the dilated conv makes LoRA run; RC handles it.
    assert rows['lora8_nodil']['error'] is None
    assert rows['lora8_nodil']['train_ratio'] > 0
    assert rows['rc_auto']['error'] is None
    assert rows['rc_auto']['merge_max_abs_diff'] < 1e-4


def test_main_writes_tables_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.BACKBONES, 'tiny', _backbone())
    out = tmp_path / 'peft.json'
    assert bench.main(['--quick', '--backbones', 'tiny', '--reps', '1',
                       '--steps', '1', '--threads', '1',
                       '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '| LoRA r=8 |' in printed and 'load average' in printed
    data = json.loads(out.read_text())
    assert data['quick'] is True
    speed_rows = _rows(data['speed'][0])
    assert speed_rows['full']['train_ratio'] == 1.0
    assert speed_rows['lora8']['merged_ratio'] > 0
    assert _rows(data['interference'][0])['rc_auto']['bit_exact'] is True


def test_without_peft_the_lora_rows_say_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, 'peft', None)  # import fails
    # registered first so that teardown removes the module again
    monkeypatch.setitem(sys.modules, 'bench_peft_without_peft', None)
    no_peft = _load('bench_peft_without_peft')
    assert no_peft.peft is None
    backbone = no_peft.Backbone('tiny', lambda quick: TinyNet(),
                                no_peft.conv_targets, quick_batch=2,
                                quick_size=12)
    rows = _rows(no_peft.interference(backbone, quick=True, steps=1))
    assert set(rows) == {'full', 'rc_auto', 'rc_lowrank', 'lora'}
    assert 'not installed' in rows['lora']['skipped']
    assert rows['rc_auto']['bit_exact']
    table = no_peft.interference_table(dict(
        backbone='tiny', steps=1, batch=2, size=12, rows=list(rows.values())))
    assert '**skipped**: PEFT is not installed' in table
