"""Serving tasks from a bank: load/unload, the LRU cache, remembered digests,
and the bank under concurrent writers, removers and crashes.

The model is a small CNN reparameterized with each modulator family (per
task: modulators, norms with running statistics, a copied classifier);
every task's tensors are random, so tasks compute visibly different
functions.
"""
import hashlib
import os
import time
import warnings

import pytest
import torch
import torch.nn as nn

import rc_adapter as rc
from rc_adapter.core import bank as bank_module
from rc_adapter.core.bank import BankError, TaskBank, copy_task
from rc_adapter.core.errors import RCConfigError, UnknownTaskError
from rc_adapter.core.serving import (TaskCache, load_shared, load_task,
                                     unload_task)

from bank_helpers import fork_call, killed_child, wait_call

_X = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(7))


def _model(modulator='lowrank'):
    """The RC model without tasks (shared tensors from a fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    rc.reparameterize(net, [], rc.RCConfig(modulator=modulator, rank=2,
                                           copy_modules=['8']))
    return net.eval()


def _random_task(model, name, seed):
    """Random tensors for task ``name`` (the model is left unchanged)."""
    gen = torch.Generator().manual_seed(seed)
    rc.add_task(model, name)
    state = {}
    for key, value in rc.task_state_dict(model, name).items():
        if value.is_floating_point():
            value = value + 0.5 * torch.randn(value.shape, generator=gen)
            if key.endswith('running_var'):
                value = value.abs() + 0.1
        state[key] = value.clone()
    rc.remove_task(model, name)
    return state


def _output(model, task):
    rc.set_task(model, task, update_trainable=False)
    with torch.no_grad():
        return model(_X)


def _file_digests(folder):
    """sha256 and stat of every file below ``folder``."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            st = os.stat(path)
            with open(path, 'rb') as f:
                digests[path] = (hashlib.sha256(f.read()).hexdigest(),
                                 st.st_size, st.st_mtime_ns)
    return digests


_TASKS = ('a', 'b', 'c', 'd')


def _make_bank(path, modulator='lowrank'):
    """A bank with four random tasks; returns it, the states and each
    task's reference output (a model holding all four)."""
    model = _model(modulator)
    bank = TaskBank.create(path, rc.shared_state_dict(model), config={
        'rc_cfg': rc.RCConfig(modulator=modulator, rank=2,
                              copy_modules=['8']).to_dict()})
    states = {t: _random_task(model, t, seed) for seed, t in
              enumerate(_TASKS)}
    for task, state in states.items():
        bank.write_task(task, state, info={'type': 'cls'})
    for task, state in states.items():
        rc.load_task_state_dict(model, task, state)
    reference = {t: _output(model, t) for t in _TASKS}
    # The tasks really differ.
    assert not torch.allclose(reference['a'], reference['b'])
    return bank, states, reference


@pytest.fixture
def served(tmp_path):
    bank, states, reference = _make_bank(tmp_path / 'bank')
    model = _model()
    load_shared(model, bank)
    return bank, model, states, reference


# -- load / unload -----------------------------------------------------------
@pytest.mark.parametrize('modulator', ['full', 'lowrank', 'diagonal'])
def test_load_unload_never_change_other_tasks_or_files(tmp_path, modulator):
    bank, states, reference = _make_bank(tmp_path / 'bank', modulator)
    model = _model(modulator)
    load_shared(model, bank)
    before = _file_digests(bank.path)

    load_task(model, bank, 'a')
    assert rc.list_tasks(model) == ['a']
    out_a = _output(model, 'a')
    assert torch.equal(out_a, reference['a'])
    for task in ('b', 'c'):
        load_task(model, bank, task)
        assert torch.equal(_output(model, 'a'), out_a)
    assert torch.equal(_output(model, 'b'), reference['b'])
    unload_task(model, 'b')
    assert rc.list_tasks(model) == ['a', 'c']
    assert torch.equal(_output(model, 'a'), out_a)
    assert torch.equal(_output(model, 'c'), reference['c'])
    # Loading a resident task again overwrites it with the same tensors.
    load_task(model, bank, 'a', reverify=True)
    assert torch.equal(_output(model, 'a'), out_a)
    assert torch.equal(_output(model, 'c'), reference['c'])
    # The tensors are the bank's, bit for bit, and owned by the model.
    for key, value in rc.task_state_dict(model, 'c').items():
        assert torch.equal(value, states['c'][key]), key
    # The active task stays routed while another one is loaded and unloaded.
    rc.set_task(model, 'c', update_trainable=False)
    load_task(model, bank, 'd')
    unload_task(model, 'd')
    with torch.no_grad():
        assert torch.equal(model(_X), reference['c'])
    assert _file_digests(bank.path) == before
    with pytest.raises(UnknownTaskError):
        unload_task(model, 'd')


def test_a_failed_load_leaves_the_model_unchanged(served, tmp_path):
    bank, model, states, reference = served
    load_task(model, bank, 'a')
    with pytest.raises(BankError, match="unknown task 'zz'"):
        load_task(model, bank, 'zz')
    # A task whose tensors do not fit (another model's): refused, named.
    other = TaskBank.create(tmp_path / 'other', bank.read_shared(),
                            config={})
    other.write_task('b', {'nope.weight': torch.ones(3)})
    with pytest.raises(BankError, match="task 'b' in bank .* does not fit"):
        load_task(model, other, 'b')
    assert rc.list_tasks(model) == ['a']
    assert torch.equal(_output(model, 'a'), reference['a'])


def test_load_shared_refuses_another_layout_or_a_model_with_tasks(served):
    bank, model = served[:2]
    with pytest.raises(BankError, match='does not fit this model'):
        load_shared(_model('full'), bank)
    load_task(model, bank, 'a')
    with pytest.raises(RCConfigError, match=r"already holds tasks \['a'\]"):
        load_shared(model, bank)


# -- the cache ---------------------------------------------------------------
def test_lru_cache_loads_on_first_use_and_evicts_the_least_recent(served,
                                                                  monkeypatch):
    bank, model, _, reference = served
    reads = []
    real = TaskBank.open_task

    def counting(self, name, **kwargs):
        reads.append(name)
        return real(self, name, **kwargs)

    monkeypatch.setattr(TaskBank, 'open_task', counting)
    with pytest.raises(RCConfigError):
        TaskCache(model, bank, max_resident=0)
    cache = TaskCache(model, bank, max_resident=2)

    def check(task, resident):
        cache.activate(task)
        assert cache.active == task
        assert cache.resident() == resident
        assert sorted(rc.list_tasks(model)) == sorted(resident)
        with torch.no_grad():
            assert torch.equal(model(_X), reference[task])

    check('a', ['a'])
    check('b', ['a', 'b'])
    check('a', ['b', 'a'])         # a hit: no read, a becomes most recent
    check('c', ['a', 'c'])         # b was least recent: evicted
    check('b', ['c', 'b'])         # b loaded again, a evicted
    check('b', ['c', 'b'])
    assert reads == ['a', 'b', 'c', 'b']
    # Trainable flags are not touched by routing.
    assert not any(p.requires_grad for p in model.parameters())

    cache.evict('c')
    assert cache.resident() == ['b'] and rc.list_tasks(model) == ['b']
    cache.evict('b')
    assert cache.active is None and rc.list_tasks(model) == []
    with pytest.raises(UnknownTaskError, match="'b' is not resident"):
        cache.evict('b')
    # A failed load changes nothing resident.
    check('d', ['d'])
    with pytest.raises(BankError, match="unknown task 'zz'"):
        cache.activate('zz')
    assert cache.resident() == ['d'] and rc.list_tasks(model) == ['d']
    cache.clear()
    assert cache.resident() == [] and rc.list_tasks(model) == []


def test_pinned_tasks_and_refresh(served):
    bank, model, states, reference = served
    # A task the model held before the cache is routed to, never evicted.
    rc.load_task_state_dict(model, 'a', states['a'])
    cache = TaskCache(model, bank, max_resident=1)
    assert cache.pinned == {'a'}
    for task in ('a', 'b', 'c', 'a'):
        cache.activate(task)
        with torch.no_grad():
            assert torch.equal(model(_X), reference[task])
    assert cache.resident() == ['c']
    assert rc.list_tasks(model) == ['a', 'c']
    with pytest.raises(UnknownTaskError, match='pinned'):
        cache.evict('a')
    # A new version of c in the bank: refresh unloads the stale copy and
    # the next activation serves the new version.
    assert cache.refresh() == []
    bank.write_task('c', {k: v * 0.5 if v.is_floating_point() else v
                          for k, v in states['c'].items()}, replace=True)
    assert cache.refresh() == ['c']
    assert rc.list_tasks(model) == ['a']
    cache.activate('c')
    with torch.no_grad():
        new = model(_X)
    assert not torch.equal(new, reference['c'])
    for key, value in rc.task_state_dict(model, 'c').items():
        expected = states['c'][key]
        if expected.is_floating_point():
            expected = expected * 0.5
        assert torch.equal(value, expected)


# -- remembered digests --------------------------------------------------------
def test_switches_do_not_rehash_an_unchanged_file(served, monkeypatch):
    bank, model, _, reference = served
    other_model = _served_model(bank)
    hashed = []
    real = bank_module._sha256_fd

    def counting(fd):
        hashed.append(fd)
        return real(fd)

    monkeypatch.setattr(bank_module, '_sha256_fd', counting)
    bank_module.forget_digests()
    cache = TaskCache(model, bank, max_resident=1)
    for task in ('a', 'b', 'a', 'b', 'a'):
        cache.activate(task)
    assert len(hashed) == 2                     # a and b once each
    cache_re = TaskCache(other_model, bank, max_resident=1, reverify=True)
    for task in ('a', 'b', 'a'):
        cache_re.activate(task)
    assert len(hashed) == 5                     # every load hashed
    # read_task and verify always hash.
    bank.read_task('a')
    assert len(hashed) == 6
    bank.verify()
    assert len(hashed) == 6 + 1 + len(_TASKS)   # shared + every task


def _served_model(bank):
    model = _model()
    load_shared(model, bank)
    return model


def _tamper(path, keep_times=False):
    """Flips one byte of the last tensor's data in place (same size)."""
    st = os.stat(path)
    time.sleep(0.05)  # past the file system's time stamp granularity
    with open(path, 'r+b') as f:
        f.seek(st.st_size - 1)
        byte = f.read(1)
        f.seek(st.st_size - 1)
        f.write(bytes([byte[0] ^ 0x40]))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert os.stat(path).st_size == st.st_size


@pytest.mark.parametrize('keep_times', [False, True])
def test_a_tampered_file_is_refused_despite_a_remembered_digest(served,
                                                                keep_times):
    bank, model, _, reference = served
    cache = TaskCache(model, bank, max_resident=1)
    cache.activate('a')
    cache.activate('b')                         # a evicted, digest remembered
    _tamper(bank.task_path('a'), keep_times)    # mtime (or only ctime) moves
    with pytest.raises(BankError, match="task 'a'.*sha256 mismatch"):
        cache.activate('a')
    assert cache.resident() == ['b']
    with torch.no_grad():
        assert torch.equal(model(_X), reference['b'])
    with pytest.raises(BankError, match='sha256 mismatch'):
        load_task(model, bank, 'a')
    assert rc.list_tasks(model) == ['b']


# -- concurrency and crashes ---------------------------------------------------
def _writer(path, prefix, count, out):
    bank = TaskBank(path)
    for i in range(count):
        bank.write_task(f'{prefix}{i}', {'w': torch.full((64,), float(i))},
                        info={'i': i})
    return dict(written=count)


def _remover(path, names, out):
    bank = TaskBank(path)
    for name in names:
        bank.remove_task(name)
    return dict(removed=len(names))


def _server(path, names, rounds, out):
    """Loads and unloads tasks into a model while the others write."""
    bank = TaskBank(path)
    model = _served_model(bank)
    cache = TaskCache(model, bank, max_resident=2)
    for i in range(rounds):
        cache.activate(names[i % len(names)])
        with torch.no_grad():
            model(_X)
    return dict(rounds=rounds)


def test_concurrent_writers_removers_and_a_server_lose_no_entry(served,
                                                                tmp_path):
    bank = served[0]
    doomed = [f'r{i}' for i in range(12)]
    for name in doomed:
        bank.write_task(name, {'w': torch.zeros(64)})
    pids = [fork_call(_writer, bank.path, prefix, 12,
                      str(tmp_path / f'{prefix}.json')) for prefix in 'xy']
    pids.append(fork_call(_remover, bank.path, doomed,
                          str(tmp_path / 'rm.json')))
    pids.append(fork_call(_server, bank.path, list(_TASKS), 24,
                          str(tmp_path / 'srv.json')))
    results = [wait_call(pid, tmp_path / f'{name}.json')
               for pid, name in zip(pids, ['x', 'y', 'rm', 'srv'])]
    assert results == [dict(written=12), dict(written=12),
                       dict(removed=12), dict(rounds=24)]
    expected = sorted(list(_TASKS) + [f'{p}{i}' for p in 'xy'
                                      for i in range(12)])
    assert bank.tasks() == expected
    for name in expected[len(_TASKS):]:
        assert torch.equal(bank.read_task(name)['w'],
                           torch.full((64,), float(name[1:])))
    assert bank.verify() == []


def _copy_into(src_path):
    def op(bank):
        copy_task(TaskBank(src_path), bank, 'a', replace=True)
    return op


@pytest.mark.filterwarnings('ignore::rc_adapter.core.bank.BankWarning')
@pytest.mark.parametrize('op', ['remove', 'copy'])
def test_a_crash_at_any_step_leaves_a_bank_that_verifies(tmp_path, op):
    # The source of the copy holds another version of 'a'.
    source, states, _ = _make_bank(tmp_path / 'source')
    new_a = {k: v * 0.5 if v.is_floating_point() else v
             for k, v in states['a'].items()}
    source.write_task('a', new_a, replace=True)
    model = _served_model(source)
    rc.load_task_state_dict(model, 'a', new_a)
    new_output = _output(model, 'a')
    step, outcomes = 0, set()
    while True:
        bank, _, own = _make_bank(tmp_path / f'bank{step}')
        before = {t: bank.task_versions(t)[0]['sha256'] for t in _TASKS}
        killed = killed_child(
            bank.path, (lambda b: b.remove_task('a')) if op == 'remove'
            else _copy_into(source.path), step)
        if not killed:
            break
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            bank.verify()
        # The other tasks are untouched and load as before.
        model = _served_model(bank)
        for task in _TASKS[1:]:
            assert bank.task_versions(task)[0]['sha256'] == before[task]
            load_task(model, bank, task, reverify=True)
            assert torch.equal(_output(model, task), own[task])
        # 'a' is the old or the new state, never neither.
        if 'a' not in bank.tasks():
            outcomes.add('removed')
        else:
            load_task(model, bank, 'a', reverify=True)
            old = bank.task_versions('a')[0]['sha256'] == before['a']
            outcomes.add('old' if old else 'new')
            assert torch.equal(_output(model, 'a'),
                               own['a'] if old else new_output)
        bank.prune()
        assert bank.verify() == []
        step += 1
    assert step > 4
    assert outcomes == ({'old', 'removed'} if op == 'remove'
                        else {'old', 'new'})
