"""End to end through the real command lines, on generated data:
convert (--data-root: RI on the train split) -> add_task (two tasks, then
one under 2-process DDP, one interrupted) -> test -> export, with the bank's
earlier files staying byte-identical."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from tool_helpers import (ROOT, digest, ok, run_tool, small_config,
                          tiny_backbone_checkpoint)

from rc_adapter import TaskBank

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
    # No --calib-dir: RI calibrates on the train split of the config's
    # dataset at --data-root (the config's own data root is elsewhere).
    result = ok(run_tool('convert_to_rc.py', config, checkpoint,
                         '--out', str(bank), '--data-root', str(data),
                         '--calib-images', '4', '--calib-size', '32', '32',
                         '--batch-size', '2', '--cfg-options',
                         'train_dataloader.dataset.data_root=nowhere'))
    assert 'function preserved' in result.stdout
    assert 'train split' in result.stdout
    calib = json.load(open(bank / 'manifest.json'))['config']['ri'][
        'calibration']
    with open(data / 'gt_sets' / 'train.txt') as f:
        train = sorted(f'images/{line.strip()}.jpg' for line in f)
    assert calib['split'] == 'train' and calib['count'] == 4
    expected = hashlib.sha256('\n'.join(train[:4]).encode()).hexdigest()
    assert calib['sha256'] == 'sha256:' + expected
    return dict(tmp=tmp, data=data, config=config, bank=bank)


def test_add_tasks_test_and_export(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    shared = os.path.join(bank, 'shared.safetensors')
    shared_digest = digest(shared)
    ok(run_tool('add_task.py', config, '--bank', bank, '--task', 'semseg',
                '--work-dir', str(tmp / 'wd_semseg')))
    semseg_file = TaskBank(bank).task_path('semseg')
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
    assert 'normals' in TaskBank(bank).tasks()
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
              'model.baseline=shared', "model.tasks=['semseg']"]
    ok(run_tool('train.py', config, *common))
    assert os.path.exists(os.path.join(work_dir, 'iter_2.pth'))
    resumed = ok(run_tool('train.py', config, '--resume', *common,
                          'train_cfg.max_iters=4'))
    assert 'resumed' in (resumed.stdout + resumed.stderr).lower()
    assert os.path.exists(os.path.join(work_dir, 'iter_4.pth'))
    result = ok(run_tool('test.py', config, '--checkpoint',
                         os.path.join(work_dir, 'iter_4.pth'),
                         '--cfg-options', 'model.baseline=shared',
                         "model.tasks=['semseg']"))
    assert re.search(r'semseg\s+mIoU', result.stdout)


def test_interrupted_add_task_leaves_the_bank_unchanged(workspace):
    """Ctrl-C during training: exit 130, one line saying the bank is
    unchanged, and it is (no task file, the same manifest)."""
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    manifest = os.path.join(bank, 'manifest.json')
    before = digest(manifest), sorted(os.listdir(os.path.join(bank,
                                                              'tasks')))
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'tools', 'add_task.py'), config,
         '--bank', bank, '--task', 'edge', '--work-dir',
         str(tmp / 'wd_interrupted'), '--cfg-options',
         'train_cfg.max_iters=100000', 'train_cfg.val_interval=100000'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        for line in proc.stdout:  # mmengine logs each iteration
            if 'Iter(train)' in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert 'interrupted; the bank is unchanged' in err
    assert 'Traceback' not in err
    assert (digest(manifest), sorted(os.listdir(os.path.join(
        bank, 'tasks')))) == before
