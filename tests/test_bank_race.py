"""Readers racing writers: every read sees a whole commit, never an error.

Real processes (forked) commit one task over and over (``keep_versions=0``,
so every commit deletes the version it replaced) while other processes read
and verify it in a loop; threads of one process do the same.
"""
import os
import threading
import time

import torch

from rc_adapter.core.bank import TaskBank

from bank_helpers import fork_call, wait_call

_N = 64 * 1024  # 256 KiB per tensor: a read takes a while


def _state(value):
    return {'w': torch.full((_N,), float(value)),
            'b': torch.full((3,), float(value)),
            'n': torch.tensor(int(value))}


def _value(state):
    """The value of a consistent state; raises if the tensors disagree."""
    v = float(state['b'][0])
    assert torch.equal(state['w'], torch.full((_N,), v)), 'torn state'
    assert torch.equal(state['b'], torch.full((3,), v)), 'torn state'
    assert int(state['n']) == int(v), 'torn state'
    return v


def _writer(path, wid, rounds, out):
    bank = TaskBank(path)
    for i in range(rounds):
        v = wid * 1000 + i
        bank.write_task('t', _state(v), info={'v': v}, replace=True)
        if i % 4 == 0:
            bank.update_task_info('t', touched=i)
    return dict(commits=rounds)


def _reader(path, stop, out, locked=True):
    bank = TaskBank(path)
    if not locked:  # only for checking by hand that the test can fail
        import contextlib
        bank._reading = contextlib.nullcontext
    result = dict(reads=0, verifies=0, errors=[], values=set())
    i = 0
    while not os.path.exists(stop) or result['reads'] < 20:
        i += 1
        try:
            result['values'].add(_value(bank.read_task('t')))
            result['reads'] += 1
            if i % 3 == 0:
                leftovers = bank.verify()
                # Under the read lock no commit is half-done: no temporary
                # or unnamed file is ever visible.
                assert leftovers == [], leftovers
                result['verifies'] += 1
        except Exception as err:  # noqa: BLE001 - counted and reported
            result['errors'].append(f'{type(err).__name__}: {err}')
    result['values'] = sorted(result['values'])
    return result


def test_readers_racing_writers_across_processes(tmp_path):
    bank = TaskBank.create(tmp_path / 'bank', {'s': torch.ones(8)},
                           config={}, keep_versions=0)
    bank.write_task('t', _state(0), info={'v': 0})
    stop = str(tmp_path / 'stop')
    readers = [fork_call(_reader, bank.path, stop,
                         str(tmp_path / f'r{k}.json'))
               for k in range(2)]
    writers = [fork_call(_writer, bank.path, wid, 40,
                         str(tmp_path / f'w{wid}.json'))
               for wid in (1, 2)]
    for wid, pid in zip((1, 2), writers):
        assert wait_call(pid, tmp_path / f'w{wid}.json') == dict(commits=40)
    open(stop, 'w').close()
    results = [wait_call(pid, tmp_path / f'r{k}.json')
               for k, pid in enumerate(readers)]
    for result in results:
        assert result['errors'] == []
        assert result['reads'] >= 20 and result['verifies'] >= 6
    # The readers saw many versions, i.e. they really raced the writers.
    seen = set().union(*(r['values'] for r in results))
    assert len(seen) > 3, seen
    # 81 commits later: one current version, nothing kept, nothing left.
    assert bank.verify() == []
    assert os.listdir(os.path.join(bank.path, 'tasks')) == [
        os.path.basename(bank.task_path('t'))]
    assert bank.task_versions('t')[0]['info']['v'] in (1039, 2039)


def test_threads_of_one_process_share_the_lock(tmp_path):
    bank = TaskBank.create(tmp_path / 'bank', {'s': torch.ones(8)},
                           config={}, keep_versions=0)
    bank.write_task('t', _state(0))
    errors, done = [], threading.Event()

    def write(wid):
        try:
            for i in range(15):
                bank.write_task('t', _state(wid * 1000 + i), replace=True)
                bank.write_task(f'x{wid}_{i}', _state(i))
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    def read():
        reads = 0
        while not done.is_set() or reads < 5:
            try:
                _value(TaskBank(bank.path).read_task('t'))
                if reads % 4 == 0:
                    assert bank.verify() == []
                reads += 1
            except Exception as err:  # noqa: BLE001
                errors.append(repr(err))
                return

    threads = [threading.Thread(target=write, args=(w,)) for w in (1, 2)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join(timeout=300)
    done.set()
    for t in readers:
        t.join(timeout=300)
    assert errors == []
    assert len(bank.tasks()) == 31
    bank.verify()


def _gate_taken(path):
    """True if another process holds the lock's gate byte (a writer)."""
    import fcntl
    pid = os.fork()
    if pid == 0:
        fd = os.open(os.path.join(path, '.lock'), os.O_RDONLY)
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 0)
        except OSError:
            os._exit(1)
        os._exit(0)
    return os.waitpid(pid, 0)[1] != 0


def _read_once(path, out):
    return dict(value=_value(TaskBank(path).read_task('t')))


def test_a_waiting_writer_goes_before_new_readers(tmp_path):
    """A reader holding the shared lock delays a writer, which then
    commits; a reader arriving while the writer waits queues behind it (so
    a stream of readers cannot starve a writer)."""
    bank = TaskBank.create(tmp_path / 'bank', {'s': torch.ones(8)},
                           config={})
    bank.write_task('t', _state(1))
    with bank._reading():
        writer = fork_call(_writer, bank.path, 5, 1, str(tmp_path / 'w.json'))
        deadline = time.monotonic() + 60
        while not _gate_taken(bank.path):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Still the old version: the writer waits for this reader.
        assert _value(bank.read_task('t')) == 1.0
        reader = fork_call(_read_once, bank.path, str(tmp_path / 'r.json'))
        time.sleep(0.5)
    assert wait_call(writer, tmp_path / 'w.json') == dict(commits=1)
    # The later reader read after the commit, though a shared lock was
    # free for it all along.
    assert wait_call(reader, tmp_path / 'r.json') == dict(value=5000.0)
    assert _value(bank.read_task('t')) == 5000.0
