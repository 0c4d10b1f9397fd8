"""Checks made before a training run starts, so that a run is never thrown
away at its end: the labels it will evaluate on load, and the bank it will
write to accepts a file of the task's size."""
from __future__ import annotations

import errno
import os
import os.path as osp
import secrets
from typing import Mapping, Sequence

import torch
from mmengine.config import Config

from ...core.bank import LOCK, TASKS_DIR, TaskBank
from ...core.errors import ResourceError
from .config import iter_dataset_cfgs

__all__ = ['check_run_annotations', 'estimate_task_file_bytes',
           'check_bank_writable']

#: Room kept free beyond the task file and the new manifest (bytes): file
#: system metadata, the logs of the run's last moments.
_SLACK = 1 << 20
#: safetensors header bytes per tensor beyond its name (dtype, shape and
#: offsets as JSON), rounded up.
_HEADER_PER_TENSOR = 96
_PROBE_PREFIX = '.tmp-probe-'


def _multitask_dataset(dataset_cfg: Mapping) -> bool:
    """Whether the dataset config builds one of the multi-task datasets
    (which take ``tasks``); stock mmseg datasets load one label."""
    from mmseg.registry import DATASETS
    kind = dataset_cfg.get('type')
    cls = kind if isinstance(kind, type) else DATASETS.get(kind) \
        if isinstance(kind, str) else None
    return cls is not None and hasattr(cls, 'VALID_TASKS')


def check_run_annotations(cfg: Config, tasks: Sequence[str],
                          loaders: Sequence[str] = ('val_dataloader',
                                                    'train_dataloader')
                          ) -> None:
    """Checks the image and label files of ``tasks`` in the config's
    validation and training splits (headers only: about a millisecond per
    sample, see ``docs/datasets.md``).

    A bad validation label would otherwise be found by the evaluation at
    the end of the run, a bad training label somewhere in its middle.

    Args:
        cfg: The run's config (after
            :func:`~rc_adapter.mmseg.apis.configure_run`).
        tasks: The tasks the run trains.
        loaders: The dataloaders whose datasets are checked.

    Raises:
        AnnotationError: listing the problems, each naming task and file.
    """
    from ..datasets import check_annotations
    for dataset in iter_dataset_cfgs(cfg, loaders):
        check_annotations(dataset, tasks=list(tasks)
                          if _multitask_dataset(dataset) else None)


def estimate_task_file_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """The size of the bank file holding ``state`` (tensor bytes plus the
    safetensors header, rounded up).

    Args:
        state: A task's tensors (``rc_adapter.task_state_dict``).
    """
    return 8 + 1024 + sum(
        t.numel() * t.element_size() + len(name) + _HEADER_PER_TENSOR
        for name, t in state.items())


def _refused(bank: TaskBank, message: str, code: int) -> ResourceError:
    error = ResourceError(
        f'task bank {bank.path}: {message}; nothing was trained and the '
        f'bank is unchanged')
    error.errno = code
    return error


def _probe(bank: TaskBank, folder: str) -> None:
    """Creates and removes an empty temporary file in ``folder``."""
    path = osp.join(folder, f'{_PROBE_PREFIX}{os.getpid()}-'
                            f'{secrets.token_hex(4)}')
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise _refused(bank, f'cannot create a file in {folder} '
                             f'({err.strerror}): the trained task could '
                             f'not be stored; fix the folder\'s permissions '
                             f'or write to another bank', err.errno) from err
    os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # a writer of the bank removed it as a stale temporary file


def check_bank_writable(bank: TaskBank, nbytes: int) -> None:
    """Checks that ``bank`` accepts a new task file of ``nbytes`` bytes.

    The folders the commit writes to (the bank folder for the manifest,
    ``tasks/`` for the task file) must let this user create files (an
    empty temporary file is created and removed in each: that also finds a
    read-only file system), the lock file must be writable, and the file
    system must have room for the task file, a new manifest and 1 MiB
    (``os.statvfs``: the space available to this user).

    This is a check at the start of a run, not a reservation: the commit
    itself still fails cleanly (a ``ResourceError``, the bank unchanged) if
    the disk fills meanwhile.

    Args:
        bank: The bank the run will write to.
        nbytes: The task file's size
            (:func:`estimate_task_file_bytes`).

    Raises:
        ResourceError: naming the folder and what is missing (its
            ``errno`` is ``EACCES``, ``EROFS``, ``ENOSPC`` ...).
    """
    tasks_dir = osp.join(bank.path, TASKS_DIR)
    folders = [bank.path] + ([tasks_dir] if osp.isdir(tasks_dir) else [])
    for folder in folders:
        _probe(bank, folder)
    lock = osp.join(bank.path, LOCK)
    if osp.exists(lock) and not os.access(lock, os.W_OK):
        raise _refused(bank, f'the lock file {lock} is not writable for '
                             f'this user: the trained task could not be '
                             f'stored', errno.EACCES)
    try:
        manifest = os.stat(osp.join(bank.path, 'manifest.json')).st_size
    except OSError:
        manifest = 0
    # Bytes needed per file system (tasks/ may be a mount of its own).
    need: dict[int, list] = {}
    for folder, size in ((bank.path, manifest + _SLACK),
                         (folders[-1], nbytes)):
        entry = need.setdefault(os.stat(folder).st_dev, [folder, 0])
        entry[1] += size
    for folder, size in need.values():
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if free < size:
            raise _refused(
                bank, f'not enough free space in {folder}: '
                      f'{free / 2**20:.1f} MiB available, the task file and '
                      f'the new manifest need about {size / 2**20:.1f} MiB; '
                      f'free some space first', errno.ENOSPC)
