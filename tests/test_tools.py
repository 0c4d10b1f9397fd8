"""End to end through the real command lines, on generated data:
convert -> add_task (two tasks, then one under 2-process DDP) -> test ->
export, with the bank's earlier files staying byte-identical."""
import json
import os
import re

import pytest
import torch
from tool_helpers import (ROOT, digest, ok, run_tool, small_config,
                          tiny_backbone_checkpoint)

TASKS = ('semseg', 'depth', 'normals', 'edge')
BASE = 'rc_r18_synthetic_nyud.py'
GLOO = "env_cfg = dict(dist_cfg=dict(backend='gloo'))\n"


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    from rc_adapter.synthetic import generate
    tmp = tmp_path_factory.mktemp('tools')
    data = tmp / 'data'
    generate('nyud', str(data), num_train=6, num_val=3, size=(32, 32),
             seed=3)
    config = small_config(tmp / 'small.py', data, BASE, TASKS, extra=GLOO)
    checkpoint = tiny_backbone_checkpoint(tmp / 'resnet18-small.pth')
    bank = tmp / 'bank'
    result = ok(run_tool('convert_to_rc.py', config, checkpoint,
                         '--out', str(bank), '--calib-dir',
                         str(data / 'images'), '--calib-images', '4',
                         '--calib-size', '32', '32', '--batch-size', '2'))
    assert 'function preserved' in result.stdout
    return dict(tmp=tmp, data=data, config=config, bank=bank)


def test_add_tasks_test_and_export(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    shared = os.path.join(bank, 'shared.safetensors')
    shared_digest = digest(shared)
    ok(run_tool('add_task.py', config, '--bank', bank, '--task', 'semseg',
                '--work-dir', str(tmp / 'wd_semseg')))
    semseg_file = os.path.join(bank, 'tasks', 'semseg.safetensors')
    semseg_digest = digest(semseg_file)
    semseg_mtime = os.stat(semseg_file).st_mtime_ns
    ok(run_tool('add_task.py', config, '--bank', bank, '--task', 'depth',
                '--work-dir', str(tmp / 'wd_depth')))
    # Adding depth rewrote neither semseg's file nor the shared one.
    assert digest(semseg_file) == semseg_digest
    assert os.stat(semseg_file).st_mtime_ns == semseg_mtime
    assert digest(shared) == shared_digest
    manifest = json.load(open(os.path.join(bank, 'manifest.json')))
    assert set(manifest['tasks']) == {'semseg', 'depth'}
    assert 'mIoU' in manifest['tasks']['semseg']['info']['metrics']
    assert 'rmse' in manifest['tasks']['depth']['info']['metrics']

    # An existing task is refused without --replace; nothing changes.
    again = run_tool('add_task.py', config, '--bank', bank, '--task',
                     'semseg', '--work-dir', str(tmp / 'wd_again'))
    assert again.returncode == 2
    assert '--replace' in again.stderr and 'Traceback' not in again.stderr
    assert digest(semseg_file) == semseg_digest

    out = tmp / 'results.json'
    result = ok(run_tool('test.py', config, '--bank', bank, '--out',
                         str(out), '--show-dir', str(tmp / 'show')))
    results = json.load(open(out))
    assert set(results['metrics']) == {'semseg', 'depth'}
    # The evaluation reproduces what add_task measured for each task.
    for task in ('semseg', 'depth'):
        stored = manifest['tasks'][task]['info']['metrics']
        for key, value in stored.items():
            assert results['metrics'][task][key] == pytest.approx(value)
    assert re.search(r'semseg\s+mIoU', result.stdout)
    assert os.listdir(tmp / 'show' / 'pred_depth_map')

    pth = tmp / 'export' / 'depth.pth'
    result = ok(run_tool('export.py', config, '--bank', bank, '--task',
                         'depth', '--out', str(pth), '--input-size', '64',
                         '64'))
    max_diff = float(re.search(r'max \|Δ\| = (\S+)', result.stdout)[1])
    assert max_diff < 1e-4
    exported = torch.load(pth, weights_only=True)
    assert not any('modulators' in k or '.tasks.' in k
                   for k in exported['state_dict'])
    assert (tmp / 'export' / 'depth.py').exists()


def test_two_process_ddp_add_task(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    before = {name: digest(os.path.join(bank, 'tasks', name))
              for name in os.listdir(os.path.join(bank, 'tasks'))}
    result = ok(run_tool(
        'torchrun', '--nproc_per_node=2', '--master_port=29533',
        os.path.join(ROOT, 'tools', 'add_task.py'), config, '--bank', bank,
        '--task', 'normals', '--work-dir', str(tmp / 'wd_ddp'),
        '--launcher', 'pytorch'))
    assert result.stdout.count("wrote task 'normals'") == 1  # rank 0 only
    after = os.listdir(os.path.join(bank, 'tasks'))
    assert 'normals.safetensors' in after
    for name, value in before.items():
        assert digest(os.path.join(bank, 'tasks', name)) == value


def test_bad_input_is_one_clear_paragraph(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    cases = [
        (('add_task.py', config, '--bank', bank, '--task', 'sal'),
         'unknown task'),
        (('test.py', config, '--bank', bank, '--data-root',
          str(tmp / 'nowhere')), 'does not exist'),
        (('add_task.py', config, '--bank', str(tmp / 'no_bank'), '--task',
          'edge'), 'does not exist'),
    ]
    # A config whose backbone differs from the bank's.
    wide = small_config(tmp / 'wide.py', workspace['data'], BASE, TASKS,
                        width=32)
    cases.append((('test.py', wide, '--bank', bank), 'mismatch'))
    for args, message in cases:
        result = run_tool(*args)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr[-2000:])
        assert 'Traceback' not in result.stderr, args


def test_baseline_train_resume_and_checkpoint_test(workspace):
    """A plain (shared-encoder) baseline: train, resume, evaluate its
    mmengine checkpoint; all loads stay weights-only on torch >= 2.6."""
    config, tmp = workspace['config'], workspace['tmp']
    work_dir = str(tmp / 'wd_shared')
    common = ['--work-dir', work_dir, '--cfg-options',
              'model.rc_cfg.mode=shared', "model.tasks=['semseg']"]
    ok(run_tool('train.py', config, *common))
    assert os.path.exists(os.path.join(work_dir, 'iter_2.pth'))
    resumed = ok(run_tool('train.py', config, '--resume', *common,
                          'train_cfg.max_iters=4'))
    assert 'resumed' in (resumed.stdout + resumed.stderr).lower()
    assert os.path.exists(os.path.join(work_dir, 'iter_4.pth'))
    result = ok(run_tool('test.py', config, '--checkpoint',
                         os.path.join(work_dir, 'iter_4.pth'),
                         '--cfg-options', 'model.rc_cfg.mode=shared',
                         "model.tasks=['semseg']"))
    assert re.search(r'semseg\s+mIoU', result.stdout)
