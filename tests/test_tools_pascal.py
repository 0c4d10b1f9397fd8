"""The PASCAL layout end to end through the real command lines, on generated
data: convert -> add_task human_parts -> add_task sal -> test --bank (both
tasks) -> export (ONNX when the onnx package is installed), with the
config mmseg_configs/rc_r18_synthetic_pascal.py shrunk to seconds."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from tool_helpers import (ROOT, digest, ok, run_tool, small_config,
                          tiny_backbone_checkpoint, tool_env)

from rc_adapter import TaskBank

TASKS = ('semseg', 'human_parts', 'sal', 'normals', 'edge')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    from rc_adapter.synthetic import generate
    tmp = tmp_path_factory.mktemp('tools_pascal')
    data = tmp / 'data'
    generate('pascal', str(data), num_train=6, num_val=3, size=(32, 32),
             seed=5)
    config = small_config(tmp / 'small.py', data,
                          'rc_r18_synthetic_pascal.py', TASKS)
    checkpoint = tiny_backbone_checkpoint(tmp / 'resnet18-small.pth')
    bank = tmp / 'bank'
    result = ok(run_tool('convert_to_rc.py', config, checkpoint,
                         '--out', str(bank), '--calib-dir',
                         str(data / 'JPEGImages'), '--calib-images', '4',
                         '--calib-size', '32', '32', '--batch-size', '2'))
    assert 'function preserved' in result.stdout
    # The dataset's image folder holds train and val images: only the
    # train split calibrates.
    calib = json.load(open(bank / 'manifest.json'))['config']['ri'][
        'calibration']
    assert calib['dataset'] == 'PascalContextMTDataset'
    assert calib['split'] == 'train' and calib['count'] == 4
    return dict(tmp=tmp, data=data, config=config, bank=str(bank))


def test_pascal_add_two_tasks_and_test(workspace):
    config, bank, tmp = (workspace['config'], workspace['bank'],
                         workspace['tmp'])
    shared = os.path.join(bank, 'shared.safetensors')
    shared_digest = digest(shared)
    ok(run_tool('add_task.py', config, '--bank', bank, '--task',
                'human_parts', '--work-dir', str(tmp / 'wd_parts')))
    parts_file = TaskBank(bank).task_path('human_parts')
    parts_digest = digest(parts_file)
    ok(run_tool('add_task.py', config, '--bank', bank, '--task', 'sal',
                '--work-dir', str(tmp / 'wd_sal')))
    # Adding sal rewrote neither human_parts' file nor the shared one.
    assert digest(parts_file) == parts_digest
    assert digest(shared) == shared_digest
    manifest = json.load(open(os.path.join(bank, 'manifest.json')))
    assert set(manifest['tasks']) == {'human_parts', 'sal'}
    assert 'mIoU' in manifest['tasks']['human_parts']['info']['metrics']
    assert 'max_mIoU' in manifest['tasks']['sal']['info']['metrics']

    out = tmp / 'results.json'
    result = ok(run_tool('test.py', config, '--bank', bank,
                         '--metrics-out', str(out)))
    results = json.load(open(out))
    assert set(results['metrics']) == {'human_parts', 'sal'}
    # The evaluation reproduces what add_task measured for each task.
    for task in ('human_parts', 'sal'):
        stored = manifest['tasks'][task]['info']['metrics']
        assert stored
        for key, value in stored.items():
            assert results['metrics'][task][key] == pytest.approx(value)
    assert re.search(r'human_parts\s+mIoU', result.stdout)
    assert re.search(r'sal\s+max_mIoU', result.stdout)


def _onnx_dims(value_info):
    return [d.dim_param or d.dim_value
            for d in value_info.type.tensor_type.shape.dim]


def test_pascal_export_onnx_parity(workspace):
    onnx = pytest.importorskip(
        'onnx', reason='ONNX export needs the onnx package (not installed)')
    from mmseg.registry import MODELS

    from rc_adapter.mmseg.apis import configure_run, load_config, run_onnx
    config, bank, tmp = (workspace['config'], workspace['bank'],
                         workspace['tmp'])
    manifest = json.load(open(os.path.join(bank, 'manifest.json')))
    assert 'sal' in manifest['tasks'], 'needs the add_task test first'
    out = tmp / 'export' / 'sal.onnx'
    result = ok(run_tool('export.py', config, '--bank', bank, '--task',
                         'sal', '--out', str(out), '--input-size', '32',
                         '48'))
    max_diff = float(re.search(r'max \|Δ\| = (\S+)', result.stdout)[1])
    assert max_diff < 1e-4
    assert os.listdir(out.parent) == ['sal.onnx']  # no temporary left

    graph = onnx.load(str(out)).graph
    onnx.checker.check_model(str(out), full_check=True)
    assert [i.name for i in graph.input] == ['image']
    assert [o.name for o in graph.output] == ['sal']
    assert _onnx_dims(graph.input[0]) == ['batch', 3, 'height', 'width']
    ops = {n.op_type for n in graph.node}
    assert 'Conv' in ops and 'Resize' in ops  # output at the input size
    # Plain convs only: the stem, 16 block convs and 3 downsample convs of
    # the backbone (no 1x1 modulator after a 3x3) and the 10 head convs
    # (image pool, 4 ASPP, bottleneck, low-level, 2 fuse, predictor).
    convs = [n for n in graph.node if n.op_type == 'Conv']
    backbone = [n for n in convs if n.name.startswith('/backbone/')]
    assert len(backbone) == 20 and len(convs) == 30
    assert not any('modulator' in n.name for n in graph.node)
    dilations = {n.name: list(a.ints) for n in backbone
                 for a in n.attribute if a.name == 'dilations'}
    # Both 3x3 convs of the dilated layer4 blocks stay dilated (output
    # stride 16); layer3 is not.
    for block in ('layer4.0', 'layer4.1'):
        for conv in ('conv1', 'conv2'):
            assert dilations[f'/backbone/layer4/{block}/{conv}/Conv'] == [2, 2]
    assert dilations['/backbone/layer3/layer3.1/conv2/Conv'] == [1, 1]

    # Parity with the RC model itself at another batch and size (the
    # graph's batch, height and width are dynamic).
    cfg = load_config(config)
    configure_run(cfg, tasks=['sal'], train_tasks=[], bank=bank)
    model = MODELS.build(cfg.model).eval()
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        expected = model(x, mode='tensor')['sal']
    got = run_onnx(str(out), x)
    assert got.shape == expected.shape == (2, 1, 40, 24)
    assert (got - expected).abs().max().item() < 1e-4


def test_export_onnx_without_onnx_is_a_clear_error(workspace):
    """With the onnx package missing (shadowed by a package that fails to
    import), export names the package, exits 2 and writes nothing."""
    config, bank, tmp = (workspace['config'], workspace['bank'],
                         workspace['tmp'])
    blocker = tmp / 'no_onnx' / 'onnx'
    blocker.mkdir(parents=True)
    (blocker / '__init__.py').write_text(
        "raise ImportError('onnx blocked by the test')\n")
    env = tool_env(PYTHONPATH=str(blocker.parent))
    out = tmp / 'export_blocked' / 'sal.onnx'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'export.py'), config,
         '--bank', bank, '--task', 'sal', '--out', str(out),
         '--input-size', '32', '32'],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'onnx' package" in result.stderr
    assert 'Traceback' not in result.stderr
    assert not out.exists()
    assert not out.parent.exists() or not os.listdir(out.parent)
