"""Task bank: versions and restore, leftovers and prune, confinement to the
bank folder, non-finite tensors, permissions from the umask, format 1."""
import json
import os
import stat
import threading
import warnings

import pytest
import torch
from safetensors.torch import save as st_save

from rc_adapter.core import bank as bank_module
from rc_adapter.core.bank import BankError, BankWarning, TaskBank

from bank_helpers import equal, shared_state, task_state


def _value(bank, name):
    return float(bank.read_task(name)['conv.modulators.t.weight'][0, 0])


def _files(bank):
    return sorted(os.listdir(os.path.join(bank.path, 'tasks')))


@pytest.fixture
def bank(tmp_path):
    return TaskBank.create(tmp_path / 'bank', shared_state(), config={'v': 1})


def _edit_manifest(bank, edit):
    path = os.path.join(bank.path, 'manifest.json')
    manifest = json.load(open(path))
    edit(manifest)
    with open(path, 'w') as f:
        json.dump(manifest, f)


# -- versions ----------------------------------------------------------------
def test_replace_keeps_the_previous_version_and_restore_swaps(bank):
    bank.write_task('a', task_state(1), info={'metrics': {'m': 1}})
    first = bank.task_path('a')
    bank.write_task('a', task_state(2), info={'metrics': {'m': 2}},
                    replace=True)
    versions = bank.task_versions('a')
    assert [v['index'] for v in versions] == [0, 1]
    assert [v['current'] for v in versions] == [True, False]
    assert versions[1]['file'] == os.path.relpath(first, bank.path)
    assert versions[1]['info']['metrics'] == {'m': 1}
    assert versions[1]['replaced'] and versions[0]['replaced'] is None
    assert versions[0]['version'] == versions[0]['sha256'][7:15]
    assert versions[0]['version'] in versions[0]['file']
    assert len(_files(bank)) == 2

    # A third version: the first is deleted (keep_versions=1).
    bank.write_task('a', task_state(3), replace=True)
    assert not os.path.exists(first)
    assert len(_files(bank)) == 2
    assert _value(bank, 'a') == 3

    # Restore: the replaced version is current again, with its info, and
    # the version it replaced is kept, so restoring twice is a no-op.
    restored = bank.restore_task('a')
    assert _value(bank, 'a') == 2 and restored['current']
    assert restored['info']['metrics'] == {'m': 2}
    assert bank.task_info('a')['metrics'] == {'m': 2}
    assert _value(bank, 'a') == 2
    bank.restore_task('a', version=1)
    assert _value(bank, 'a') == 3
    sha = bank.task_versions('a')[1]['sha256']
    bank.restore_task('a', version=sha[7:15])
    assert _value(bank, 'a') == 2
    bank.restore_task('a', version=bank.task_versions('a')[1]['sha256'])
    assert _value(bank, 'a') == 3
    assert len(_files(bank)) == 2
    assert bank.verify() == []

    with pytest.raises(BankError, match="task 'a'.*no previous version 2"):
        bank.restore_task('a', version=2)
    with pytest.raises(BankError, match='already current'):
        bank.restore_task('a', version=bank.task_versions('a')[0]['version'])
    with pytest.raises(BankError, match="no version 'ffffffff'"):
        bank.restore_task('a', version='ffffffff')
    with pytest.raises(BankError, match='at least 4 hex digits'):
        bank.restore_task('a', version='xyz')
    with pytest.raises(BankError, match="unknown task 'nope'"):
        bank.restore_task('nope')
    bank.write_task('b', task_state(5))
    with pytest.raises(BankError, match="task 'b'.*no previous version is "
                                        "kept"):
        bank.restore_task('b')


def test_keep_versions_policy(tmp_path):
    bank = TaskBank.create(tmp_path / 'b', shared_state(), config={},
                           keep_versions=2)
    for v in range(1, 5):
        bank.write_task('a', task_state(v), replace=True)
    assert [_value_of(bank, f) for f in _version_files(bank)] == [4, 3, 2]
    assert len(_files(bank)) == 3
    bank.restore_task('a', version=2)
    assert _value(bank, 'a') == 2
    assert [_value_of(bank, f) for f in _version_files(bank)] == [2, 4, 3]
    bank.set_keep_versions(0)
    assert bank.manifest()['keep_versions'] == 0
    assert len(_files(bank)) == 1 and _value(bank, 'a') == 2
    bank.write_task('a', task_state(7), replace=True)
    assert len(_files(bank)) == 1 and _value(bank, 'a') == 7
    with pytest.raises(BankError, match='keep_versions must be'):
        bank.set_keep_versions(-1)
    with pytest.raises(BankError, match='keep_versions must be'):
        TaskBank.create(tmp_path / 'c', shared_state(), config={},
                        keep_versions='1')
    assert not os.path.exists(tmp_path / 'c')
    # Writing the same tensors again keeps one file, not two "versions".
    bank.set_keep_versions(1)
    bank.write_task('a', task_state(7), replace=True)
    assert bank.verify() == []
    assert len(bank.task_versions('a')) <= 2
    for v in bank.task_versions('a'):
        assert os.path.isfile(os.path.join(bank.path, v['file']))


def _version_files(bank):
    return [v['file'] for v in bank.task_versions('a')]


def _value_of(bank, rel):
    from safetensors.torch import load_file
    return float(load_file(os.path.join(bank.path, rel))[
        'conv.modulators.t.weight'][0, 0])


def test_restore_verifies_the_kept_file_first(bank):
    bank.write_task('a', task_state(1))
    bank.write_task('a', task_state(2), replace=True)
    old = os.path.join(bank.path, bank.task_versions('a')[1]['file'])
    data = bytearray(open(old, 'rb').read())
    data[-1] ^= 1
    open(old, 'wb').write(bytes(data))
    before = bank.manifest()
    with pytest.raises(BankError, match="task 'a': version .*sha256 "
                                        "mismatch"):
        bank.restore_task('a')
    assert bank.manifest() == before and _value(bank, 'a') == 2
    # verify checks kept versions too.
    with pytest.raises(BankError, match="previous version 1"):
        bank.verify()


def test_remove_task_deletes_all_its_versions_only(bank):
    bank.write_task('a', task_state(1))
    bank.write_task('a', task_state(2), replace=True)
    bank.write_task('b', task_state(3))
    b_file = bank.task_path('b')
    bank.remove_task('a')
    assert bank.tasks() == ['b'] and _files(bank) == [
        os.path.basename(b_file)]
    assert bank.verify() == []


# -- leftovers ---------------------------------------------------------------
def test_leftovers_block_nothing_and_prune_removes_them(bank):
    bank.write_task('a', task_state(1))
    a_bytes = open(bank.task_path('a'), 'rb').read()
    tasks = os.path.join(bank.path, 'tasks')
    orphan = os.path.join(tasks, 'b.0123abcd.safetensors')   # a killed run
    old_style = os.path.join(tasks, 'c.safetensors')          # ... format 1
    temps = [os.path.join(tasks, '.tmp-1-dead'),
             os.path.join(bank.path, '.tmp-2-dead')]
    for path in [orphan, old_style] + temps:
        with open(path, 'wb') as f:
            f.write(b'partial')
    notes = os.path.join(tasks, 'README.txt')   # not ours: never touched
    open(notes, 'w').write('my notes')

    # Reads ignore them without a word.
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert equal(bank.read_task('a'), task_state(1))
        TaskBank(bank.path).read_shared()
    # verify lists them in one warning (naming prune) and passes.
    with pytest.warns(BankWarning, match=r'4 file\(s\).*prune\(\)') as rec:
        leftovers = bank.verify()
    assert len(rec) == 1
    assert sorted(leftovers) == sorted([orphan, old_style] + temps)
    # A write (even of the orphan's task) works, removes the stale
    # temporary files and warns about the unnamed ones.
    with pytest.warns(BankWarning, match='b.0123abcd.safetensors'):
        bank.write_task('b', task_state(2))
    assert not any(os.path.exists(t) for t in temps)
    assert os.path.exists(orphan) and os.path.exists(old_style)
    assert _value(bank, 'b') == 2
    removed = bank.prune()
    assert sorted(removed) == sorted([orphan, old_style])
    assert open(notes).read() == 'my notes'
    assert open(bank.task_path('a'), 'rb').read() == a_bytes
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert bank.verify() == []
    assert bank.prune() == []


# -- confinement -------------------------------------------------------------
def _point_task_at(bank, name, rel, size=None):
    def edit(manifest):
        manifest['tasks'][name]['file'] = rel
        if size is not None:
            manifest['tasks'][name]['size'] = size
    _edit_manifest(bank, edit)


@pytest.mark.filterwarnings('ignore::rc_adapter.core.bank.BankWarning')
@pytest.mark.parametrize('rel', [
    '{outside}',                              # absolute
    '../outside.safetensors',                 # ..
    'tasks/../../outside.safetensors',
    'tasks/sub/x.safetensors',                # not directly in tasks/
    'shared.safetensors',                     # the shared file
    'manifest.json',
    '/dev/zero',
    'tasks/.tmp-123',
])
def test_manifest_entries_outside_the_bank_are_refused(bank, tmp_path, rel):
    outside = tmp_path / 'outside.safetensors'
    outside.write_bytes(b'precious')
    bank.write_task('a', task_state(1))
    bank.write_task('a', task_state(2), replace=True)
    bank.write_task('b', task_state(3))
    rel = rel.format(outside=outside)
    _point_task_at(bank, 'a', rel)
    shared_before = open(os.path.join(bank.path, 'shared.safetensors'),
                         'rb').read()
    manifest_before = bank.manifest()
    for call in (lambda: bank.read_task('a'),
                 lambda: bank.remove_task('a'),
                 lambda: bank.write_task('a', task_state(4), replace=True),
                 lambda: bank.restore_task('a'),
                 lambda: bank.task_path('a')):
        with pytest.raises(BankError) as err:
            call()
        assert "task 'a'" in str(err.value) and rel in str(err.value)
        assert 'refusing' in str(err.value)
    with pytest.raises(BankError, match=f"task 'a'.*{rel}"):
        bank.verify()
    # Nothing was deleted, written or changed.
    assert outside.read_bytes() == b'precious'
    assert bank.manifest() == manifest_before
    assert open(os.path.join(bank.path, 'shared.safetensors'),
                'rb').read() == shared_before
    assert _value(bank, 'b') == 3


def test_symbolic_links_out_of_the_bank_are_refused(bank, tmp_path):
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    bank.write_task('a', task_state(1))
    real = bank.task_path('a')
    # The task file replaced by a link to a copy outside the bank.
    copy = outside / os.path.basename(real)
    copy.write_bytes(open(real, 'rb').read())
    os.unlink(real)
    os.symlink(copy, real)
    with pytest.raises(BankError, match='outside the bank.*refusing'):
        bank.read_task('a')
    with pytest.raises(BankError, match='outside the bank.*refusing'):
        bank.remove_task('a')
    assert copy.exists() and os.path.islink(real)
    # A link that stays inside the bank is still not a regular file.
    os.unlink(real)
    os.symlink(os.path.join(bank.path, 'shared.safetensors'), real)
    with pytest.raises(BankError, match='symbolic link'):
        bank.read_task('a')
    # The whole tasks/ folder a link to another folder.
    os.unlink(real)
    os.rename(os.path.join(bank.path, 'tasks'), outside / 'tasks')
    os.symlink(outside / 'tasks', os.path.join(bank.path, 'tasks'))
    with pytest.raises(BankError, match='outside the bank'):
        bank.read_task('a')


def test_devices_fifos_and_wrong_sizes_are_refused_unread(bank):
    bank.write_task('a', task_state(1))
    path = bank.task_path('a')
    size = os.path.getsize(path)
    # A file far larger than recorded (sparse: 1e11 bytes) is refused by
    # its size before a byte is read.
    os.truncate(path, 10 ** 11)
    with pytest.raises(BankError, match=f'has {10 ** 11} bytes, the '
                                        f'manifest records {size}'):
        bank.read_task('a')
    # A FIFO (reading it would hang) is refused without blocking.
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(BankError, match='not a regular file'):
        bank.read_task('a')
    with pytest.raises(BankError, match='not a regular file'):
        bank.verify()
    os.unlink(path)
    # A character device (like /dev/zero) inside the bank, where root can
    # make one.
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except (PermissionError, OSError):
        pytest.skip('cannot create a device node here')
    with pytest.raises(BankError, match='not a regular file'):
        bank.read_task('a')
    # Removing the task never opens the node, nor deletes it (only
    # regular files are deleted); a warning names it.
    with pytest.warns(BankWarning, match='not a regular file: left alone'):
        bank.remove_task('a')
    assert bank.tasks() == [] and stat.S_ISCHR(os.lstat(path).st_mode)


def test_a_symlinked_manifest_or_bank_folder(bank, tmp_path):
    bank.write_task('a', task_state(1))
    # The bank folder itself may be reached through a link.
    link = tmp_path / 'link'
    os.symlink(bank.path, link)
    via = TaskBank(link)
    assert _value(via, 'a') == 1
    via.write_task('b', task_state(2))
    assert via.verify() == [] and bank.tasks() == ['a', 'b']
    # manifest.json as a link to a device is refused unread.
    manifest = os.path.join(bank.path, 'manifest.json')
    os.rename(manifest, manifest + '.bak')
    os.symlink('/dev/zero', manifest)
    with pytest.raises(BankError, match='manifest.*symbolic link'):
        TaskBank(bank.path)


# -- non-finite tensors ------------------------------------------------------
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_tensors_are_never_written(bank, bad):
    bank.write_task('a', task_state(1))
    before = _files(bank), bank.manifest()
    state = task_state(2)
    state['z.later'] = torch.ones(3)
    state['conv.modulators.t.weight'][1, 2] = bad
    with pytest.raises(BankError, match=r"task 'b': tensor "
                                        r"'conv.modulators.t.weight' holds "
                                        r"1 non-finite"):
        bank.write_task('b', state)
    with pytest.raises(BankError, match="task 'a'.*non-finite"):
        bank.write_task('a', state, replace=True)
    half = {'h': torch.tensor([1.0, bad], dtype=torch.float16)}
    with pytest.raises(BankError, match="tensor 'h'"):
        bank.write_task('b', half)
    assert (_files(bank), bank.manifest()) == before
    assert _value(bank, 'a') == 1
    # Integer tensors cannot be non-finite; any tensor names are fine.
    bank.write_task('c', {'any.new.family.weight': torch.ones(2),
                          'counter': torch.tensor(3)})
    with pytest.raises(BankError, match='shared state.*non-finite'):
        TaskBank.create(bank.path + '2', {'w': torch.tensor([bad])},
                        config={})


# -- permissions -------------------------------------------------------------
@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_files_and_folders_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        bank = TaskBank.create(tmp_path / 'b', shared_state(), config={})
        bank.write_task('a', task_state(1))
        bank.write_task('a', task_state(2), replace=True)
    finally:
        os.umask(old)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for folder in (bank.path, os.path.join(bank.path, 'tasks')):
        assert stat.S_IMODE(os.stat(folder).st_mode) == dir_mode, folder
    for name in ('manifest.json', 'shared.safetensors', '.lock'):
        path = os.path.join(bank.path, name)
        assert stat.S_IMODE(os.stat(path).st_mode) == file_mode, name
    for v in bank.task_versions('a'):
        path = os.path.join(bank.path, v['file'])
        assert stat.S_IMODE(os.stat(path).st_mode) == file_mode, path


# -- format 1 ----------------------------------------------------------------
def _make_v1_bank(path):
    """A bank exactly as rc_adapter 0.1 wrote it (format_version 1)."""
    from rc_adapter.core.bank import fingerprint
    os.makedirs(os.path.join(path, 'tasks'))
    shared = shared_state()
    fp = fingerprint(shared)
    data = st_save(shared, metadata={'rc_adapter.fingerprint': fp,
                                     'rc_adapter.kind': 'shared'})
    open(os.path.join(path, 'shared.safetensors'), 'wb').write(data)
    tasks = {}
    for name, v in (('a', 1), ('b', 2)):
        tdata = st_save(task_state(v), metadata={
            'rc_adapter.fingerprint': fp, 'rc_adapter.task': name,
            'rc_adapter.kind': 'task'})
        rel = f'tasks/{name}.safetensors'
        open(os.path.join(path, rel), 'wb').write(tdata)
        tasks[name] = dict(file=rel, sha256=bank_module._sha256_bytes(tdata),
                           tensors=2, info={'v': v})
    manifest = dict(format_version=1, tool='rc_adapter', tool_version='0.1.0',
                    created='2026-01-01T00:00:00+00:00', config={'v': 1},
                    fingerprint=fp,
                    shared=dict(file='shared.safetensors',
                                sha256=bank_module._sha256_bytes(data),
                                tensors=len(shared)),
                    tasks=tasks)
    with open(os.path.join(path, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


def test_format_1_banks_load_read_and_upgrade_on_write(tmp_path):
    path = str(tmp_path / 'v1')
    v1 = _make_v1_bank(path)
    raw = open(os.path.join(path, 'manifest.json'), 'rb').read()
    bank = TaskBank(path)
    assert bank.tasks() == ['a', 'b'] and bank.config == {'v': 1}
    assert equal(bank.read_shared(), shared_state())
    assert _value(bank, 'a') == 1 and bank.task_info('b') == {'v': 2}
    assert bank.verify() == []
    assert bank.task_versions('a')[0]['size'] is None
    # Reading never rewrites the manifest.
    assert open(os.path.join(path, 'manifest.json'), 'rb').read() == raw

    bank.write_task('a', task_state(5), replace=True)
    manifest = bank.manifest()
    assert manifest['format_version'] == 2
    assert manifest['keep_versions'] == 1
    assert manifest['tasks']['b'] == dict(v1['tasks']['b'], previous=[])
    prev = manifest['tasks']['a']['previous']
    assert [p['file'] for p in prev] == ['tasks/a.safetensors']
    assert _value(bank, 'a') == 5 and _value(bank, 'b') == 2
    assert bank.verify() == []
    bank.restore_task('a')
    assert _value(bank, 'a') == 1 and bank.task_info('a') == {'v': 1}
    bank.remove_task('b')
    assert not os.path.exists(os.path.join(path, 'tasks', 'b.safetensors'))


def test_newer_format_is_refused(bank):
    _edit_manifest(bank, lambda m: m.update(format_version=3))
    with pytest.raises(BankError, match='unsupported bank format version 3'):
        TaskBank(bank.path)


def test_reading_creates_no_lock_file_outside_a_bank(tmp_path):
    folder = tmp_path / 'home'
    folder.mkdir()
    with pytest.raises(BankError, match='not a task bank'):
        TaskBank(folder)
    assert os.listdir(folder) == []


def test_lock_is_reentrant_for_the_writing_thread(bank):
    lock = bank_module._folder_lock(bank.path)
    with bank._writing():
        assert lock.writer == threading.get_ident()
        with bank._reading():
            assert bank.tasks() == []
        with bank._writing():
            assert lock.depth == 2
    assert lock.writer is None and lock.fd is None and lock.readers == 0
