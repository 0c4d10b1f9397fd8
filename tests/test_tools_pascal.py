"""The PASCAL layout end to end through the real command lines, on generated
data: convert -> add_task human_parts -> add_task sal -> test --bank (both
tasks) -> export (ONNX when the onnx package is installed), with the
config mmseg_configs/rc_r18_synthetic_pascal.py shrunk to seconds."""
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ('semseg', 'human_parts', 'sal', 'normals', 'edge')
WIDTH = 16


def run_tool(tool, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    cmd = [sys.executable, os.path.join(ROOT, 'tools', tool)] + list(args)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def small_config(path, data_root):
    """rc_r18_synthetic_pascal.py at width 16, 32x32, 2 iterations."""
    heads = ', '.join(
        f'{t}=dict(in_channels={8 * WIDTH}, channels=16, '
        f'c1_in_channels={WIDTH}, c1_channels=8)' for t in TASKS)
    path.write_text(textwrap.dedent(f"""\
        _base_ = [{os.path.join(ROOT, 'mmseg_configs',
                                'rc_r18_synthetic_pascal.py')!r}]
        data_root = {str(data_root)!r}
        model = dict(
            backbone=dict(stem_channels={WIDTH}, base_channels={WIDTH}),
            decode_heads=dict({heads}))
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadMTAnnotations'),
            dict(type='MTRandomFlip', prob=0.5),
            dict(type='MTPackSegInputs'),
        ]
        train_dataloader = dict(
            batch_size=2,
            dataset=dict(data_root=data_root, pipeline=train_pipeline))
        val_dataloader = dict(dataset=dict(data_root=data_root))
        test_dataloader = val_dataloader
        train_cfg = dict(max_iters=2, val_interval=2)
        param_scheduler = [dict(type='PolyLR', power=0.9, begin=0, end=2,
                                by_epoch=False)]
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(interval=2))
        """))
    return str(path)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import rc_adapter  # noqa: F401
    from rc_adapter.synthetic import generate
    tmp = tmp_path_factory.mktemp('tools_pascal')
    data = tmp / 'data'
    generate('pascal', str(data), num_train=6, num_val=3, size=(32, 32),
             seed=5)
    config = small_config(tmp / 'small.py', data)
    init_default_scope('mmseg')
    backbone = MODELS.build(dict(
        type='DeepLabResNet', depth=18, stem_channels=WIDTH,
        base_channels=WIDTH, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
        out_indices=(0, 1, 2, 3)))
    checkpoint = tmp / 'resnet18-small.pth'
    torch.save(backbone.state_dict(), checkpoint)
    bank = tmp / 'bank'
    result = ok(run_tool('convert_to_rc.py', config, str(checkpoint),
                         '--out', str(bank), '--calib-dir',
                         str(data / 'JPEGImages'), '--calib-images', '4',
                         '--calib-size', '32', '32', '--batch-size', '2'))
    assert 'function preserved' in result.stdout
    return dict(tmp=tmp, data=data, config=config, bank=str(bank))


def test_pascal_add_two_tasks_and_test(workspace):
    config, bank, tmp = (workspace['config'], workspace['bank'],
                         workspace['tmp'])
    shared = os.path.join(bank, 'shared.safetensors')
    shared_digest = digest(shared)
    ok(run_tool('add_task.py', config, '--bank', bank, '--task',
                'human_parts', '--work-dir', str(tmp / 'wd_parts')))
    parts_file = os.path.join(bank, 'tasks', 'human_parts.safetensors')
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
    result = ok(run_tool('test.py', config, '--bank', bank, '--out',
                         str(out)))
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
