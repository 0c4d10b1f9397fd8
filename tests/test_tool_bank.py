"""``tools/bank.py`` through the real command line: every subcommand on a
bank built in-process, the refusals and the exit statuses (2 for an error
the user can fix, 3 when the machine refuses, 130 when interrupted).

Every subcommand runs once or twice, each in its own process
(``run_tool``).
"""
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from rc_adapter.core.bank import TaskBank

from bank_helpers import shared_state, task_state
from tool_helpers import (ROOT, default_sigint, ok, run_tool, run_tools,
                          tool_env)

RC_CFG = {'modulator': 'lowrank', 'rank': 4, 'nff': True}


def _bank(path, shared=None):
    """Tasks 'a' (two versions) and 'b'."""
    bank = TaskBank.create(path, shared or shared_state(),
                           config={'rc_cfg': RC_CFG})
    bank.write_task('a', task_state(1), info={
        'type': 'semseg', 'metrics': {'mIoU': 0.25}})
    bank.write_task('a', task_state(2), info={
        'type': 'semseg', 'metrics': {'mIoU': 0.5}}, replace=True)
    bank.write_task('b', task_state(3), info={'type': 'depth'})
    return bank


def _bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def _user_error(result, *fragments):
    """Exit 2 with one ``error:`` paragraph naming ``fragments``."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stderr.startswith('error: ')
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_list_info_verify_prune(tmp_path):
    bank = _bank(tmp_path / 'bank')
    versions = bank.task_versions('a')
    # A leftover (an interrupted write): listed by verify, never a
    # failure, and prune deletes exactly it.
    leftover = os.path.join(bank.path, 'tasks', 'a.0badc0de.safetensors')
    with open(leftover, 'wb') as f:
        f.write(b'half a file')
    before = {p: _bytes(os.path.join(bank.path, 'tasks', p))
              for p in os.listdir(os.path.join(bank.path, 'tasks'))}
    listed, info, verify, prune = map(ok, run_tools(
        ('bank.py', 'list', bank.path, '--json'),
        ('bank.py', 'info', bank.path, 'a'),
        ('bank.py', 'verify', bank.path),
        ('bank.py', 'prune', bank.path)))

    desc = json.loads(listed.stdout)
    assert desc['fingerprint'] == bank.fingerprint
    assert desc['rc_cfg'] == RC_CFG
    assert sorted(desc['tasks']) == ['a', 'b']
    a = desc['tasks']['a']
    assert a['version'] == versions[0]['version'] and a['kept'] == 1
    assert a['size'] == versions[0]['size']
    assert a['stored_bytes'] == versions[0]['size'] + versions[1]['size']
    assert a['info']['metrics'] == {'mIoU': 0.5}

    for v in versions:
        assert v['version'] in info.stdout and v['file'] in info.stdout
    assert 'mIoU=0.5' in info.stdout and 'mIoU=0.25' in info.stdout
    assert f'tools/bank.py restore {bank.path} a --version INDEX' in \
        info.stdout

    assert f'bank {bank.path}: OK, 4 file(s) verified' in verify.stdout
    assert leftover in verify.stdout
    assert f'tools/bank.py prune {bank.path}' in verify.stdout

    assert 'deleted 1 leftover file(s)' in prune.stdout
    assert leftover in prune.stdout
    del before[os.path.basename(leftover)]
    assert {p: _bytes(os.path.join(bank.path, 'tasks', p))
            for p in os.listdir(os.path.join(bank.path, 'tasks'))} == before
    assert bank.verify() == []


def test_verify_fails_on_a_changed_byte(tmp_path):
    bank = _bank(tmp_path / 'bank')
    path = os.path.join(bank.path, bank.task_versions('a')[1]['file'])
    data = bytearray(_bytes(path))
    data[-1] ^= 1
    with open(path, 'r+b') as f:
        f.write(data)
    result = run_tool('bank.py', 'verify', bank.path, '--json')
    _user_error(result, 'failed verification', 'sha256 mismatch',
                "task 'a': previous version 1")
    report = json.loads(result.stdout)
    assert report['ok'] is False and len(report['problems']) == 1
    assert path in report['problems'][0]


def test_restore_and_remove(tmp_path):
    bank = _bank(tmp_path / 'bank')
    old, new = bank.task_versions('a')[1], bank.task_versions('a')[0]
    b_files = [os.path.join(bank.path, v['file'])
               for v in bank.task_versions('b')]
    restore, missing, remove = run_tools(
        ('bank.py', 'restore', bank.path, 'a', '--version', '1'),
        # A version that does not exist: refused, nothing changes.
        ('bank.py', 'restore', bank.path, 'a', '--version', 'ffff'),
        ('bank.py', 'remove', bank.path, 'b'))
    out = ok(restore).stdout
    assert old['version'] in out and new['version'] in out
    _user_error(missing, "task 'a'", "no version 'ffff'")
    now = bank.task_versions('a')
    assert [v['sha256'] for v in now] == [old['sha256'], new['sha256']]
    assert torch.equal(bank.read_task('a')['conv.modulators.t.weight'],
                       task_state(1)['conv.modulators.t.weight'])

    assert "removed task 'b'" in ok(remove).stdout
    assert bank.tasks() == ['a']
    assert not any(os.path.exists(p) for p in b_files)
    assert bank.verify() == []


def test_copy_task_only_between_banks_of_one_filter_bank(tmp_path):
    src = _bank(tmp_path / 'src')
    dst = TaskBank.create(tmp_path / 'dst', shared_state(),
                          config={'rc_cfg': RC_CFG})
    other = dict(shared_state(), **{'conv.weight': torch.zeros(4, 3, 3, 3)})
    foreign = TaskBank.create(tmp_path / 'foreign', other,
                              config={'rc_cfg': RC_CFG})
    copied, refused = run_tools(
        ('bank.py', 'copy-task', src.path, dst.path, 'a'),
        ('bank.py', 'copy-task', src.path, foreign.path, 'a'))
    assert f'from {src.path} to {dst.path}' in ok(copied).stdout
    assert _bytes(dst.task_path('a')) == _bytes(src.task_path('a'))
    assert dst.task_info('a')['copied_from']['bank'] == src.path
    dst.verify()

    _user_error(refused, src.fingerprint, foreign.fingerprint)
    assert foreign.tasks() == []
    assert os.listdir(os.path.join(foreign.path, 'tasks')) == []


def _limit_file_size():
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
    # like a write to a full disk or past a quota.
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))


def test_a_refusing_machine_exits_3_and_changes_nothing(tmp_path):
    src = TaskBank.create(tmp_path / 'src', shared_state(), config={})
    src.write_task('big', {'w': torch.ones(16384)})
    dst = TaskBank.create(tmp_path / 'dst', shared_state(), config={})
    manifest = _bytes(os.path.join(dst.path, 'manifest.json'))
    env = tool_env()
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'bank.py'),
         'copy-task', src.path, dst.path, 'big'], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=900,
        preexec_fn=_limit_file_size)
    assert result.returncode == 3, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert 'File too large' in result.stderr
    assert 'the bank is unchanged' in result.stderr
    assert _bytes(os.path.join(dst.path, 'manifest.json')) == manifest
    assert dst.tasks() == [] and dst.verify() == []


def _holds_open(pid, path):
    fd_dir = f'/proc/{pid}/fd'
    try:
        return any(os.readlink(os.path.join(fd_dir, fd)) == path
                   for fd in os.listdir(fd_dir))
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'),
                    reason='needs /proc to see the tool wait for the lock')
def test_ctrl_c_while_waiting_for_a_busy_bank_exits_130(tmp_path):
    bank = _bank(tmp_path / 'bank')
    before = _bytes(os.path.join(bank.path, 'manifest.json'))
    lock = os.path.join(bank.path, '.lock')
    env = tool_env()
    release = threading.Event()
    held = threading.Event()

    def writer():  # another process's commit in progress
        with bank._writing():
            held.set()
            release.wait(900)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        held.wait(60)
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'tools', 'bank.py'),
             'remove', bank.path, 'b'], cwd=ROOT, env=env, text=True,
            preexec_fn=default_sigint,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 900
        while not _holds_open(proc.pid, lock):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)              # in the lock's wait loop
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        release.set()
        thread.join()
    assert proc.returncode == 130, out + err
    assert 'Traceback' not in err
    assert err.startswith('interrupted; every change to a bank is one '
                          'atomic commit')
    assert _bytes(os.path.join(bank.path, 'manifest.json')) == before
    assert bank.tasks() == ['a', 'b']
