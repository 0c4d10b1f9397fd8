"""A task-bank commit survives every failure and crash point.

In-process fault injection (a failing ``os.open``/``write``/``fsync``/
``replace``/``unlink`` at each call of a commit: permission denied, disk
full, I/O error) and real processes SIGKILLed at each step of a commit.
After each: the bank verifies, every earlier task reads back byte-identical,
the task being replaced is the old or the new version (never neither) and a
retry succeeds.
"""
import errno
import os
import warnings

import pytest

from rc_adapter.core.bank import BankWarning, TaskBank
from rc_adapter.core.errors import RCError, ResourceError

from bank_helpers import equal, killed_child, shared_state, task_state


def _make_bank(path):
    """Task 'a' (replaced once, so it has a kept previous version) and
    task 'b'."""
    bank = TaskBank.create(path, shared_state(), config={'v': 1})
    bank.write_task('a', task_state(1))
    bank.write_task('a', task_state(2), replace=True)
    bank.write_task('b', task_state(3))
    return bank


def _snapshot(bank):
    """Per task: its manifest entry and the bytes of every file it names."""
    snap = {}
    for name, entry in bank.manifest()['tasks'].items():
        files = {}
        for version in [entry] + entry['previous']:
            with open(os.path.join(bank.path, version['file']), 'rb') as f:
                files[version['file']] = f.read()
        snap[name] = (entry, files)
    return snap


def _check_unchanged(bank, before, expected, skip=()):
    """Every task of ``before`` but ``skip`` is still there, entry and
    bytes identical, and reads back ``expected``."""
    now = bank.manifest()['tasks']
    for name, (entry, files) in before.items():
        if name in skip:
            continue
        assert now[name] == entry, name
        assert equal(bank.read_task(name), expected[name])
        for rel, data in files.items():
            with open(os.path.join(bank.path, rel), 'rb') as f:
                assert f.read() == data, rel


_EXPECTED = {'a': task_state(2), 'b': task_state(3)}


# (operation, call that fails, errno): a new task and a replace, with
# permission denied on any open (lock, temporary file, folder), a full disk
# on write and fsync, an I/O error on rename, and a failing deletion.
_OPS = ['new', 'replace']
_FAULTS = [('open', errno.EACCES), ('write', errno.ENOSPC),
           ('fsync', errno.ENOSPC), ('replace', errno.EIO),
           ('unlink', errno.EACCES)]
# A new task deletes nothing: no unlink to fail.
_CASES = [(op, func, code) for op in _OPS for func, code in _FAULTS
          if not (op == 'new' and func == 'unlink')]


def _run(bank, op):
    if op == 'new':
        bank.write_task('c', task_state(9))
    else:
        bank.write_task('a', task_state(9), replace=True)


@pytest.mark.parametrize('op,func,code', _CASES)
def test_failure_at_each_call_leaves_the_bank_consistent(tmp_path, op, func,
                                                         code):
    real = getattr(os, func)
    at, outcomes = 0, []
    while True:
        at += 1
        bank = _make_bank(tmp_path / f'bank{at}')
        before = _snapshot(bank)
        calls = [0]

        def fake(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                raise OSError(code, os.strerror(code), args[0]
                              if args and isinstance(args[0], str) else None)
            return real(*args, **kwargs)

        setattr(os, func, fake)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                try:
                    _run(bank, op)
                    failed = None
                except RCError as err:
                    failed = err
        finally:
            setattr(os, func, real)
        if calls[0] < at:          # the fault was never reached: done
            assert failed is None
            break
        leftovers = bank.verify()
        if failed is not None:
            # Before the commit point: one clear error, nothing changed,
            # nothing left behind, and a retry succeeds.
            outcomes.append('unchanged')
            msg = str(failed)
            assert bank.path in msg and os.strerror(code) in msg
            if isinstance(failed, ResourceError):
                assert failed.errno == code
            assert bank.tasks() == ['a', 'b']
            _check_unchanged(bank, before, _EXPECTED)
            assert leftovers == []
            _run(bank, op)
        else:
            # After the commit point (folder fsync, deleting the superseded
            # version): committed. A failed folder fsync keeps the
            # superseded file (a listed leftover) and says so.
            outcomes.append('committed')
            if leftovers:
                assert [w for w in caught if w.category is BankWarning]
        # Now (retried or committed) the new version is current; the
        # version it replaced is kept; the other tasks are untouched.
        name = 'c' if op == 'new' else 'a'
        assert equal(bank.read_task(name), task_state(9))
        if op == 'replace':
            prev = bank.task_versions('a')[1]
            assert prev['sha256'] == before['a'][0]['sha256']
            assert equal(bank.read_task('a'), task_state(9))
        _check_unchanged(bank, before, _EXPECTED, skip=name)
        bank.verify()
    # The loop ran past every call of that kind in the commit.
    assert outcomes
    if func in ('write', 'replace'):
        assert set(outcomes) == {'unchanged'}
    if func in ('open', 'fsync'):
        # Some before the commit point (bank unchanged), some after.
        assert set(outcomes) == {'unchanged', 'committed'}


def _killed_child(path, op, step):
    """``op`` run by a process SIGKILLed before its ``step``-th file-system
    call (0: after the commit); True if it was killed."""
    return killed_child(path, lambda bank: _run(bank, op), step)


@pytest.mark.filterwarnings('ignore::rc_adapter.core.bank.BankWarning')
@pytest.mark.parametrize('op', _OPS)
def test_sigkill_at_each_step_of_a_commit(tmp_path, op):
    step, states = 0, set()
    while True:
        bank = _make_bank(tmp_path / f'bank{step}')
        before = _snapshot(bank)
        killed = _killed_child(bank.path, op, step)
        if not killed:
            break
        name = 'c' if op == 'new' else 'a'
        # The bank verifies; leftovers (a complete but uncommitted task
        # file, a temporary file) are listed, never a problem.
        bank.verify()
        _check_unchanged(bank, before, _EXPECTED, skip=name)
        # The old or the new version is current, never neither.
        if op == 'new' and 'c' not in bank.tasks():
            states.add('old')
        else:
            current = bank.read_task(name)
            if equal(current, task_state(9)):
                states.add('new')
            else:
                assert op == 'replace'
                _check_unchanged(bank, before, _EXPECTED)
                states.add('old')
        # A rerun succeeds (retrying a replace, or the new task again).
        bank.write_task(name, task_state(9), replace=True)
        assert equal(bank.read_task(name), task_state(9))
        bank.verify()
        step += 1
    # Killed before the commit point (old version) and after it (new).
    assert states == {'old', 'new'} and step > 8
