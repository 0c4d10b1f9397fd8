"""A run that does not finish well never writes, and every failure is one
paragraph: the checks before the first iteration (bank permissions and
room, annotations), a refused write at the end that ``--resume`` recovers
without training again, per-task schedules, image decoding failures (also
from a DataLoader worker) and the exit statuses of ``run_cli``.

The bank is built and trained in-process (``train_helpers``); every run
is a few iterations of a width-16 network on 32x32 images.
"""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from torch.utils.data import DataLoader, Dataset
from train_helpers import evaluate, file_digests, make_workspace, train

from rc_adapter import AnnotationError, ResourceError, TaskBank
from rc_adapter.core.errors import RCConfigError
from rc_adapter.mmseg.apis import run_cli
from rc_adapter.mmseg.apis.cli import image_decode_error
from rc_adapter.mmseg.apis.preflight import (check_bank_writable,
                                             estimate_task_file_bytes)
from rc_adapter.mmseg.apis.train import apply_task_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    workspace = make_workspace(tmp_path_factory.mktemp('safety'))
    workspace['metrics'] = evaluate(workspace, ['semseg'])
    workspace['files'] = file_digests(workspace['bank'])
    return workspace


def _unchanged(workspace):
    """The bank holds exactly the files it held after semseg was added,
    byte for byte."""
    assert file_digests(workspace['bank']) == workspace['files']


def _checkpoints(folder):
    return [f for f in os.listdir(folder) if f.endswith('.pth')] \
        if os.path.isdir(folder) else []


def _cli(capsys, main):
    """``run_cli(main)`` in-process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, interrupted='the bank is unchanged')
    return exit_info.value.code, capsys.readouterr().err


def _one_paragraph(err, *fragments):
    assert err.startswith('error: ') and 'Traceback' not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# -- before the first iteration -------------------------------------------
def test_a_bank_without_room_is_refused_before_training(workspace,
                                                        monkeypatch,
                                                        capsys):
    real = os.statvfs

    def full(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks,
                                  st.f_bfree, 3, st.f_files, st.f_ffree,
                                  st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, 'statvfs', full)
    work_dir = workspace['tmp'] / 'wd_full'
    code, err = _cli(capsys, lambda: train(workspace, 'depth', 'wd_full'))
    assert code == 3
    _one_paragraph(err, workspace['bank'], 'not enough free space',
                   'nothing was trained')
    assert not _checkpoints(work_dir)  # refused before the first iteration
    _unchanged(workspace)


def test_a_bank_this_user_cannot_write_is_refused_before_training(
        workspace, monkeypatch):
    real = os.open

    def denied(path, *args, **kwargs):
        if '.tmp-probe-' in os.fspath(path):
            raise PermissionError(errno.EACCES, 'Permission denied', path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, 'open', denied)
    with pytest.raises(ResourceError, match='cannot create a file') as info:
        train(workspace, 'depth', 'wd_denied')
    assert info.value.errno == errno.EACCES
    assert workspace['bank'] in str(info.value)
    assert not _checkpoints(workspace['tmp'] / 'wd_denied')
    _unchanged(workspace)


def test_the_room_estimate_covers_the_real_task_file(workspace):
    bank = TaskBank(workspace['bank'])
    size = os.path.getsize(bank.task_path('semseg'))
    estimate = estimate_task_file_bytes(bank.read_task('semseg'))
    assert size <= estimate <= size * 1.1 + 4096
    check_bank_writable(bank, estimate)  # the real bank has room
    assert not [f for f in os.listdir(bank.path) if f.startswith('.tmp')]


def test_a_bad_validation_label_is_found_before_training(workspace):
    data = workspace['tmp'] / 'data_bad_label'
    shutil.copytree(workspace['data'], data)
    with open(data / 'gt_sets' / 'val.txt') as f:
        name = f.readline().strip()
    label = data / 'edge' / f'{name}.png'
    label.write_bytes(b'not a png')
    from rc_adapter.mmseg.apis import load_config, train_task
    cfg = load_config(workspace['config'], data_root=str(data),
                      work_dir=str(workspace['tmp'] / 'wd_bad_label'))
    with pytest.raises(AnnotationError, match=str(label)):
        train_task(cfg, bank=workspace['bank'], task='edge')
    assert not _checkpoints(workspace['tmp'] / 'wd_bad_label')
    _unchanged(workspace)


# -- image decoding --------------------------------------------------------
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize('workers', [0, 1])
def test_a_truncated_training_image_is_one_paragraph(workspace, workers,
                                                     capsys):
    """The image header is intact (the pre-flight passes), its body is
    cut: mmcv's loader fails in the middle of the run, in this process or
    in a DataLoader worker; the message names the file, nothing is
    written."""
    data = workspace['tmp'] / f'data_truncated_{workers}'
    shutil.copytree(workspace['data'], data)
    with open(data / 'gt_sets' / 'train.txt') as f:
        name = f.readline().strip()
    image = data / 'images' / f'{name}.jpg'
    _truncate(image)
    from rc_adapter.mmseg.apis import load_config, train_task
    # Three iterations of two images visit all six training images.
    options = {'train_cfg.max_iters': 3,
               'train_dataloader.num_workers': workers,
               'train_dataloader.persistent_workers': False}
    cfg = load_config(workspace['config'], data_root=str(data),
                      work_dir=str(workspace['tmp'] / f'wd_trunc{workers}'),
                      cfg_options=options)
    code, err = _cli(capsys, lambda: train_task(
        cfg, bank=workspace['bank'], task='depth', overrides=options))
    assert code == 2
    _one_paragraph(err, str(image), 'cannot be decoded')
    assert err.count('\n') == 1
    _unchanged(workspace)


class _Images(Dataset):
    """mmcv's LoadImageFromFile over the given files."""

    def __init__(self, paths):
        from mmcv.transforms import LoadImageFromFile
        self.paths, self.load = paths, LoadImageFromFile()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.load(dict(img_path=str(self.paths[i])))['img']


def test_image_decode_errors_name_the_file(tmp_path):
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    garbage = tmp_path / 'garbage.jpg'
    garbage.write_bytes(b'\xff\xd8\xff' + b'x' * 100)
    for path in (empty, garbage):
        with pytest.raises(Exception) as info:
            _Images([path])[0]
        mapped = image_decode_error(info.value)
        assert isinstance(mapped, AnnotationError)
        assert str(path) in str(mapped)
    # A missing file stays the machine's error (exit 3, naming it).
    with pytest.raises(FileNotFoundError) as info:
        _Images([tmp_path / 'missing.jpg'])[0]
    assert image_decode_error(info.value) is None
    # Not every AssertionError is an image: a bug keeps its traceback.
    try:
        assert False, 'a bug'
    except AssertionError as err:
        assert image_decode_error(err) is None


class _Failing(Dataset):

    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise self.error


def _in_worker(dataset):
    def main():
        for _ in DataLoader(dataset, num_workers=1):
            pass
    return main


def test_errors_from_dataloader_workers_are_one_paragraph(tmp_path,
                                                          capsys):
    code, err = _cli(capsys, _in_worker(_Failing(AnnotationError(
        '[edge] /data/edge/7.png: label size (3, 4) differs from image size '
        '(4, 4)'))))
    assert code == 2
    assert err == ('error: [edge] /data/edge/7.png: label size (3, 4) '
                   'differs from image size (4, 4) (in a DataLoader '
                   'worker)\n')
    code, err = _cli(capsys, _in_worker(_Failing(OSError(
        errno.EACCES, 'Permission denied', '/data/images/7.jpg'))))
    assert code == 3
    _one_paragraph(err, "Permission denied: '/data/images/7.jpg'",
                   'check the permissions', 'in a DataLoader worker')
    garbage = tmp_path / 'garbage.jpg'
    garbage.write_bytes(b'\xff\xd8\xff' + b'x' * 100)
    code, err = _cli(capsys, _in_worker(_Images([garbage])))
    assert code == 2
    _one_paragraph(err, f'image {garbage} cannot be decoded')


# -- the exit statuses -----------------------------------------------------
def _raise(error):
    def main():
        raise error
    return main


def test_run_cli_statuses(capsys):
    code, err = _cli(capsys, _raise(MemoryError()))
    assert code == 3
    _one_paragraph(err, 'out of memory', 'lower the batch size')
    cpu_oom = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
        "can't allocate memory: you tried to allocate 10000000000000 bytes. "
        "Error code 12 (Cannot allocate memory)")
    code, err = _cli(capsys, _raise(cpu_oom))
    assert code == 3
    _one_paragraph(err, 'out of memory', '10000000000000 bytes')
    code, err = _cli(capsys, _raise(RuntimeError(
        'DataLoader worker (pid 4242) is killed by signal: Killed. ')))
    assert code == 3
    _one_paragraph(err, 'pid 4242', 'ran out of memory', 'num_workers')
    code, err = _cli(capsys, _raise(OSError(errno.ENOSPC,
                                            'No space left on device',
                                            '/bank/tasks/x')))
    assert code == 3
    _one_paragraph(err, "'/bank/tasks/x'", 'the disk is full')
    code, err = _cli(capsys, _raise(KeyboardInterrupt()))
    assert code == 130
    assert err == 'interrupted; the bank is unchanged\n'
    with pytest.raises(ValueError, match='a bug'):
        run_cli(_raise(ValueError('a bug')))
    with pytest.raises(RuntimeError, match='shape mismatch'):
        run_cli(_raise(RuntimeError('shape mismatch')))


# -- a refused write at the end, recovered by --resume ---------------------
def test_a_refused_write_keeps_the_run_and_resume_stores_it(workspace,
                                                            monkeypatch):
    """The disk fills after training: the error says how to keep the run;
    ``resume=True`` then stores the checkpoint's task without training
    (the task schedule of the config sets the length: 3 iterations)."""
    extra = workspace['tmp'] / 'scheduled.py'
    extra.write_text(f'_base_ = [{workspace["config"]!r}]\n'
                     'task_schedules = dict(depth=dict(max_iters=3))\n')
    copy = str(workspace['tmp'] / 'bank_resume')
    shutil.copytree(workspace['bank'], copy)
    scheduled = dict(workspace, config=str(extra), bank=copy)

    def disk_full(self, name, state, info=None, replace=False):
        error = ResourceError(f'writing task {name!r} to bank {self.path}: '
                              f'no space left on device; the bank is '
                              f'unchanged')
        error.errno = errno.ENOSPC
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(TaskBank, 'write_task', disk_full)
        with pytest.raises(ResourceError, match='--resume') as info:
            train(scheduled, 'depth', 'wd_resume')
    assert info.value.errno == errno.ENOSPC
    assert file_digests(copy) == workspace['files']
    work_dir = workspace['tmp'] / 'wd_resume'
    assert _checkpoints(work_dir) == ['iter_3.pth']
    checkpoint = work_dir / 'iter_3.pth'
    before = file_digests(work_dir)['iter_3.pth']
    metrics = train(scheduled, 'depth', 'wd_resume', resume=True)
    assert file_digests(work_dir)['iter_3.pth'] == before  # no new training
    bank = TaskBank(copy)
    stored = bank.read_task('depth')
    saved = torch.load(checkpoint, weights_only=False,
                       map_location='cpu')['state_dict']
    assert stored.keys() <= saved.keys()
    for key, value in stored.items():
        assert torch.equal(value, saved[key]), key
    info = bank.task_info('depth')
    assert info['iterations'] == 3
    assert info['schedule'] == dict(max_iters=3, val_interval=3,
                                    checkpoint_interval=3)
    assert info['metrics'] == pytest.approx(metrics)
    assert evaluate(scheduled, ['semseg']) == workspace['metrics']
    semseg = bank.task_versions('semseg')[0]['file']
    assert file_digests(copy)[semseg] == workspace['files'][semseg]


# -- per-task schedules ----------------------------------------------------
def _pascal():
    return Config.fromfile(os.path.join(ROOT, 'mmseg_configs',
                                        'rc_r18_pascal.py'))


def test_the_pascal_config_gives_human_parts_its_schedule():
    cfg = _pascal()
    assert apply_task_schedule(cfg, 'semseg') is None
    assert cfg.train_cfg.max_iters == 37500
    applied = apply_task_schedule(cfg, 'human_parts')
    assert applied == dict(max_iters=13020, val_interval=13020,
                           checkpoint_interval=5000)
    assert cfg.train_cfg.max_iters == 13020
    assert cfg.train_cfg.val_interval == 13020
    assert [s['end'] for s in cfg.param_scheduler] == [13020]
    assert cfg.default_hooks.checkpoint.interval == 5000


def test_cfg_options_win_over_the_schedule():
    cfg = _pascal()
    options = {'train_cfg.max_iters': 40, 'param_scheduler': [dict(
        type='PolyLR', power=0.9, begin=0, end=40, by_epoch=False)]}
    cfg.merge_from_dict(options)
    applied = apply_task_schedule(cfg, 'human_parts', options)
    assert applied['max_iters'] == 40 and cfg.train_cfg.max_iters == 40
    assert cfg.param_scheduler[0]['end'] == 40
    assert cfg.train_cfg.val_interval == 37500  # left to the config
    cfg = _pascal()
    cfg.task_schedules = dict(human_parts=dict(
        max_iters=100, val_interval=10, checkpoint_interval=50))
    options = {'default_hooks.checkpoint.interval': 7}
    cfg.merge_from_dict(options)
    assert apply_task_schedule(cfg, 'human_parts', options) == dict(
        max_iters=100, val_interval=10, checkpoint_interval=7)
    assert cfg.param_scheduler[0]['end'] == 100


@pytest.mark.parametrize('schedules, message', [
    (dict(human_parts=dict(iters=5)), "unknown key(s) ['iters']"),
    (dict(human_parts=dict(max_iters=0)), 'max_iters must be a positive'),
    (dict(human_parts=dict(max_iters=1.5)), 'max_iters must be a positive'),
    (dict(parts=dict(max_iters=5)), "task(s) ['parts'] without a decode"),
    ([5], 'task_schedules must be a dict'),
])
def test_malformed_schedules_name_the_key(schedules, message):
    cfg = _pascal()
    cfg.task_schedules = schedules
    with pytest.raises(RCConfigError) as info:
        apply_task_schedule(cfg, 'human_parts')
    assert message in str(info.value)
    assert cfg.train_cfg.max_iters == 37500


def test_the_manifest_records_a_base_start(workspace):
    info = json.load(open(os.path.join(workspace['bank'], 'manifest.json')))
    assert info['tasks']['semseg']['info']['init_from'] == {'task': None}


_DISTRIBUTED_TOOL = """\
import atexit, os, socket, sys
import torch.distributed as dist
from rc_adapter.mmseg.apis import run_cli
with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
dist.init_process_group('gloo', rank=0, world_size=1)
marker = sys.argv[1]

def record():  # an exit handler, as logging's and tempfile's are
    with open(marker, 'w') as f:
        f.write(f'initialized={dist.is_initialized()}')

atexit.register(record)

def main():
    print('done, not flushed yet', end='')
    return int(sys.argv[2])

run_cli(main)
"""


@pytest.mark.parametrize('status', [0, 2])
def test_run_cli_ends_a_distributed_run_without_interpreter_teardown(
        tmp_path, status):
    """A tool under torchrun ends its process group when it is done and
    leaves without the interpreter's teardown (where gloo's threads can
    abort the process): the exit handlers still run after the group has
    ended, the output is flushed and the tool's status is the process's.
    """
    marker = tmp_path / 'marker'
    result = subprocess.run(
        [sys.executable, '-c', _DISTRIBUTED_TOOL, str(marker), str(status)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == status, result.stderr[-3000:]
    assert result.stdout == 'done, not flushed yet'
    assert marker.read_text() == 'initialized=False'
