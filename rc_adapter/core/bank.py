"""The task bank: one shared filter bank plus versioned per-task files.

Layout of a bank folder (format version 2; ``docs/bank.md`` has the full
description, the commit protocol and why every crash point is safe)::

    BANK/manifest.json                   the only mutable file: format
                                         version, model config, fingerprint,
                                         per task its current file, sha256,
                                         size, info and kept previous versions
    BANK/shared.safetensors              the frozen filter banks, base state
    BANK/tasks/<task>.<sha8>.safetensors one version of one task, named by
                                         its content and never rewritten
    BANK/.lock                           POSIX record lock (readers, writers)

Guarantees:

* safetensors only, never a pickle;
* a task version becomes current only when the manifest -- written to a
  temporary file, fsynced, renamed over the old one, folder fsynced -- names
  it; a crash at any point leaves the old or the new version current, the
  previous version is kept (``keep_versions``) and can be restored;
* readers hold a shared lock while they read the manifest and the files it
  names, writers an exclusive one, so a reader never sees half a commit and
  no file is deleted under a reader;
* files the manifest does not name are ignored (one warning; :meth:`prune`
  removes them); stale temporary files are removed by the next writer;
* every path comes from the manifest and must stay inside the bank and be a
  regular file of the recorded size before a byte is read or deleted;
* every read is verified (size, sha256, fingerprint, the file parses) by
  one function, :meth:`TaskBank._open_verified`, which memory-maps the file
  (``safe_open``); serving loads (:meth:`TaskBank.open_task` with
  ``trust_digest``) skip the sha256 of a file this process already verified
  while its device, inode, size, mtime and ctime are unchanged;
* non-finite tensors are never written;
* new files and folders follow the umask (and default ACLs) like any tool.

Only torch, safetensors and the standard library are used here.
"""
import collections
import contextlib
import copy
import datetime
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import threading
import time
import warnings
from typing import Any, Iterator, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

from .config import RCConfig, check_task_name
from .errors import BankError, RCConfigError, RCError, ResourceError
from .version import __version__

__all__ = ['TaskBank', 'BankError', 'BankWarning', 'fingerprint', 'copy_task',
           'forget_digests', 'FORMAT_VERSION', 'DEFAULT_KEEP_VERSIONS']

#: Version of the on-disk layout written by this module.
FORMAT_VERSION = 2
#: Layout versions this module reads (version 1 banks are upgraded to 2 by
#: the first write).
READABLE_FORMAT_VERSIONS = (1, 2)
#: Previous versions of each task kept by a new bank (see ``keep_versions``).
DEFAULT_KEEP_VERSIONS = 1

MANIFEST = 'manifest.json'
SHARED = 'shared.safetensors'
TASKS_DIR = 'tasks'
LOCK = '.lock'
_TMP_PREFIX = '.tmp-'
_SUFFIX = '.safetensors'
_MAX_MANIFEST_BYTES = 64 << 20

_META_FINGERPRINT = 'rc_adapter.fingerprint'
_META_TASK = 'rc_adapter.task'
_META_KIND = 'rc_adapter.kind'

# Byte ranges of LOCK (length, start): writers hold both exclusively;
# readers pass the gate (shared, a moment) and hold the data byte shared.
# A waiting writer holds the gate, so new readers queue behind it.
_GATE = (1, 0)
_DATA = (1, 1)

_PRUNE_HINT = 'TaskBank(path).prune() removes them'


class BankWarning(UserWarning):
    """Something in a bank needs attention but blocks nothing (leftover
    files, a commit whose clean-up step failed)."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds')


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to('cpu').contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def fingerprint(state: dict) -> str:
    """Hashes a dict of tensors: names, dtypes, shapes and bytes.

    Keys are visited in sorted order, so the result does not depend on the
    dict's order; every field is length-prefixed so no two different states
    share a byte stream.

    Args:
        state (dict[str, Tensor]): The tensors (e.g. a bank's shared state).

    Returns:
        str: ``'sha256:<hex>'``.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not torch.is_tensor(tensor):
            raise BankError(f'fingerprint: {name!r} is a '
                            f'{type(tensor).__name__}, not a tensor')
        data = _tensor_bytes(tensor)
        for part in (name.encode(), str(tensor.dtype).encode(),
                     json.dumps(list(tensor.shape)).encode(), data):
            h.update(len(part).to_bytes(8, 'little'))
            h.update(part)
    return 'sha256:' + h.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return 'sha256:' + hashlib.sha256(data).hexdigest()


# -- files -----------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    """fsyncs a folder (makes renames and deletions in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some file systems cannot fsync a folder; nothing more to do there.
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_file(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename.

    The temporary file is created with mode 0o666, so the umask (and the
    folder's default ACL) decides its permissions, as for any other tool.
    It is fsynced before the rename, so ``path`` holds either its old bytes
    or all of ``data``. The caller fsyncs the folder. On failure the
    temporary file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f'{_TMP_PREFIX}{os.getpid()}-'
                               f'{secrets.token_hex(6)}')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _resource_error(message: str, err: OSError) -> ResourceError:
    """A :class:`ResourceError` carrying ``err``'s errno."""
    error = ResourceError(message)
    error.errno = err.errno
    return error


def _make_dir(path: str) -> None:
    """``mkdir`` with mode 0o777, i.e. permissions from the umask."""
    os.mkdir(path, 0o777)


def _cpu_tensors(state: dict, what: str) -> dict:
    tensors = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise BankError(f'{what}: tensor names must be strings, got '
                            f'{name!r}')
        if not torch.is_tensor(value):
            raise BankError(f'{what}: {name!r} is a {type(value).__name__}, '
                            f'not a tensor')
        # Fresh contiguous CPU copies: safetensors refuses shared storage.
        tensors[name] = value.detach().to('cpu').contiguous().clone()
    return tensors


def _check_finite(tensors: dict, what: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int(finite.numel() - finite.sum())
                raise BankError(
                    f'{what}: tensor {name!r} holds {bad} non-finite '
                    f'value(s) (NaN/Inf), e.g. from a diverged run; it is '
                    f'not written to the bank')


def _serialize(state: dict, metadata: dict, what: str) -> bytes:
    tensors = _cpu_tensors(state, what)
    _check_finite(tensors, what)
    return _st_save(tensors, metadata=metadata)


def _check_task_name(name: Any) -> None:
    try:
        check_task_name(name)
    except RCConfigError as err:
        raise BankError(str(err)) from None


def _check_json(obj: Any, what: str) -> None:
    try:
        json.dumps(obj, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise BankError(f'{what} must be JSON-serializable: {err}')


def _check_keep(keep: Any) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise BankError(f'keep_versions must be an integer >= 0, got '
                        f'{keep!r}')
    return keep


def _read_metadata(fd: int, size: int) -> dict:
    """Reads the metadata of the safetensors file open as ``fd`` (``size``
    bytes) from its header only."""
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise ValueError('file shorter than a safetensors header')
    length = int.from_bytes(head, 'little')
    if length > size - 8:
        raise ValueError('header runs past the end of the file')
    header = json.loads(os.pread(fd, length, 8).decode())
    if not isinstance(header, dict):
        raise ValueError('the header is not a JSON object')
    metadata = header.get('__metadata__') or {}
    if not isinstance(metadata, dict):
        raise ValueError('the header\'s metadata is not a JSON object')
    return dict(metadata)


def _sha256_fd(fd: int) -> str:
    """sha256 of the whole file open as ``fd``, read in chunks (the file
    is never held in memory whole)."""
    with os.fdopen(os.dup(fd), 'rb') as f:
        return 'sha256:' + hashlib.file_digest(f, 'sha256').hexdigest()


# -- digests of verified files ---------------------------------------------
# Files this process has hashed and found to match their manifest entry:
# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) -> 'sha256:...'. Bank
# files are named by their content and never rewritten in place, so a file
# with the same identity, size and time stamps holds the same bytes. Any
# write changes mtime and ctime (ctime cannot be set back by utime), a
# replaced file has another inode. Only reads that ask for it
# (``trust_digest``) use this; ``verify`` and ``read_task`` always hash.
_DIGESTS = collections.OrderedDict()
_DIGESTS_MAX = 1 << 16
_DIGESTS_GUARD = threading.Lock()


def _file_key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def _known_digest(key: tuple) -> Optional[str]:
    with _DIGESTS_GUARD:
        return _DIGESTS.get(key)


def _remember_digest(key: tuple, sha: str) -> None:
    with _DIGESTS_GUARD:
        _DIGESTS[key] = sha
        _DIGESTS.move_to_end(key)
        while len(_DIGESTS) > _DIGESTS_MAX:
            _DIGESTS.popitem(last=False)


def forget_digests() -> None:
    """Forgets every file digest this process remembered, so the next
    read of every bank file hashes it again (see ``trust_digest`` of
    :meth:`TaskBank.open_task`)."""
    with _DIGESTS_GUARD:
        _DIGESTS.clear()


# -- locking ---------------------------------------------------------------
class _FolderLock:
    """The readers-writer lock of one bank folder, for one process.

    Between processes (and machines sharing the folder over NFS) it is a
    POSIX record lock (``fcntl.lockf``) on two bytes of ``BANK/.lock``.
    POSIX locks belong to a process -- a second lock request by another
    thread converts the first, and closing any descriptor of the file drops
    them all -- so the threads of one process share one descriptor and are
    coordinated here: any number of reading threads or one writing thread
    (re-entrant; a writer may read).
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK)
        self.cond = threading.Condition()
        self.readers = 0
        self.writer = None
        self.depth = 0
        self.fd = None

    def _timeout(self, timeout: float, why: str) -> BankError:
        return BankError(f'{self.path}: timed out after {timeout}s waiting '
                         f'for the bank lock ({why})')

    def _open(self, exclusive: bool) -> Optional[int]:
        flags = (os.O_RDWR if exclusive else os.O_RDONLY) | os.O_CLOEXEC
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            pass
        except OSError as err:
            if not exclusive and err.errno in (errno.EACCES, errno.EPERM):
                return None  # a bank this user may only read: see docs
            raise _resource_error(
                f'{self.path}: cannot open the bank lock file '
                f'({err.strerror}); writing needs write access to the bank '
                f'folder; the bank is unchanged', err) from None
        # Banks made before the lock existed: create it, but only in a bank
        # (never leave a lock file in a folder that merely was named).
        if not os.path.isfile(os.path.join(self.folder, MANIFEST)):
            if exclusive:
                raise BankError(f'{self.folder} is not a task bank: '
                                f'{MANIFEST} is missing')
            return None
        try:
            return os.open(self.path, flags | os.O_CREAT, 0o666)
        except OSError as err:
            if not exclusive and err.errno in (errno.EACCES, errno.EPERM,
                                               errno.EROFS, errno.ENOENT):
                return None
            raise _resource_error(
                f'{self.path}: cannot create the bank lock file '
                f'({err.strerror}); the bank is unchanged', err) from None

    def _lockf(self, fd: int, cmd: int, span: tuple, deadline: float,
               timeout: float) -> None:
        delay = 0.001
        while True:
            try:
                fcntl.lockf(fd, cmd | fcntl.LOCK_NB, *span)
                return
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise BankError(
                        f'{self.path}: cannot lock the bank '
                        f'({err.strerror}); on NFS the lock service (lockd '
                        f'for v3) must run, and the share must not be '
                        f'mounted with "nolock" on only some machines'
                    ) from None
            if time.monotonic() > deadline:
                raise self._timeout(timeout, 'another process is writing'
                                    if cmd == fcntl.LOCK_SH else
                                    'another process holds it')
            time.sleep(delay)
            delay = min(2 * delay, 0.02)

    def _acquire(self, exclusive: bool, deadline: float,
                 timeout: float) -> None:
        fd = self._open(exclusive)
        if fd is None:
            return
        try:
            if exclusive:
                self._lockf(fd, fcntl.LOCK_EX, _GATE, deadline, timeout)
                self._lockf(fd, fcntl.LOCK_EX, _DATA, deadline, timeout)
            else:
                self._lockf(fd, fcntl.LOCK_SH, _GATE, deadline, timeout)
                self._lockf(fd, fcntl.LOCK_SH, _DATA, deadline, timeout)
                fcntl.lockf(fd, fcntl.LOCK_UN, *_GATE)
        except BaseException:
            os.close(fd)  # drops whatever this process held on the file
            raise
        self.fd = fd

    def _release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def shared(self, timeout: float) -> Iterator[None]:
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        with self.cond:
            nested = self.writer == me
            if not nested:
                while self.writer is not None:
                    if not self.cond.wait(deadline - time.monotonic()):
                        raise self._timeout(timeout, 'a thread of this '
                                            'process is writing')
                if self.readers == 0:
                    self._acquire(False, deadline, timeout)
                self.readers += 1
        try:
            yield
        finally:
            if not nested:
                with self.cond:
                    self.readers -= 1
                    if self.readers == 0:
                        self._release()
                        self.cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        with self.cond:
            if self.writer == me:
                self.depth += 1
            else:
                while self.writer is not None or self.readers:
                    if not self.cond.wait(deadline - time.monotonic()):
                        raise self._timeout(timeout, 'another thread of '
                                            'this process uses the bank')
                self._acquire(True, deadline, timeout)
                self.writer, self.depth = me, 1
        try:
            yield
        finally:
            with self.cond:
                self.depth -= 1
                if self.depth == 0:
                    try:
                        self._release()
                    finally:
                        self.writer = None
                        self.cond.notify_all()


_folder_locks = {}
_folder_locks_guard = threading.Lock()


def _folder_lock(folder: str) -> _FolderLock:
    # Keyed by pid too: a forked child must not inherit its parent's state
    # (POSIX locks are not inherited across fork).
    key = (os.getpid(), os.path.realpath(folder))
    with _folder_locks_guard:
        lock = _folder_locks.get(key)
        if lock is None:
            lock = _folder_locks[key] = _FolderLock(folder)
        return lock


# -- manifest helpers --------------------------------------------------------
def _versions(entry: dict) -> list:
    """The entry's current version followed by its kept previous ones."""
    current = {k: v for k, v in entry.items() if k != 'previous'}
    return [current] + list(entry.get('previous') or [])


def _named_files(manifest: dict) -> set:
    named = {manifest['shared'].get('file')}
    for entry in manifest['tasks'].values():
        named.update(v.get('file') for v in _versions(entry))
    return named


def _upgrade(manifest: dict) -> dict:
    """A deep copy of ``manifest`` in the current format (v1 -> v2)."""
    new = copy.deepcopy(manifest)
    new['format_version'] = FORMAT_VERSION
    new.setdefault('keep_versions', DEFAULT_KEEP_VERSIONS)
    for entry in new['tasks'].values():
        entry.setdefault('previous', [])
    return new


def _short(sha: str) -> str:
    return sha.split(':', 1)[-1][:8]


def _describe(index: int, version: dict) -> dict:
    """One version as listed by :meth:`TaskBank.task_versions`."""
    return dict(index=index, version=_short(version['sha256']),
                current=index == 0, file=version.get('file'),
                sha256=version['sha256'], size=version.get('size'),
                tensors=version.get('tensors'),
                info=dict(version.get('info') or {}),
                replaced=version.get('replaced'))


class TaskBank:
    """A task bank folder (``docs/bank.md`` describes format and protocol).

    Open an existing bank with ``TaskBank(path)``; make a new one with
    :meth:`TaskBank.create`. Every call reads the manifest afresh, so
    several processes (and machines sharing the folder) may use one bank at
    the same time.

    Args:
        path (str | os.PathLike): The bank folder.
        lock_timeout (float): Seconds to wait for the bank lock.

    Raises:
        BankError: ``path`` is not a readable bank.
    """

    def __init__(self, path: Union[str, os.PathLike],
                 lock_timeout: float = 300.0):
        self.path = os.path.abspath(os.fspath(path))
        self.lock_timeout = lock_timeout
        with self._reading():
            manifest = self._read_manifest()
        self._config = manifest['config']
        self._fingerprint = manifest['fingerprint']

    # -- creation --------------------------------------------------------
    @classmethod
    def create(cls, path: Union[str, os.PathLike], shared_state: dict,
               config: dict, force: bool = False,
               keep_versions: int = DEFAULT_KEEP_VERSIONS) -> 'TaskBank':
        """Writes a new bank holding ``shared_state`` and no tasks.

        The bank is built in a temporary folder next to ``path`` and renamed
        into place at the end, so a failure leaves nothing half-written.

        Args:
            path (str | os.PathLike): The bank folder to create.
            shared_state (dict[str, Tensor]): The frozen filter banks and
                base state (e.g. ``rc_adapter.shared_state_dict(model)``).
            config (dict): JSON-serializable model description stored in
                the manifest (what is needed to rebuild the model).
            force (bool): Replace an existing non-empty folder, but only if
                it is a task bank (a folder holding ``manifest.json``).
            keep_versions (int): Previous versions kept per task (see
                :meth:`set_keep_versions`).

        Returns:
            TaskBank: the new bank.

        Raises:
            BankError: ``path`` exists and is not empty (without ``force``),
                or the inputs are invalid.
            ResourceError: the folder could not be written (permission,
                disk space).
        """
        path = os.path.abspath(os.fspath(path))
        keep_versions = _check_keep(keep_versions)
        if not isinstance(config, dict):
            raise BankError(f'{path}: config must be a dict, got '
                            f'{type(config).__name__}')
        _check_json(config, f'{path}: config')
        if not isinstance(shared_state, dict) or not shared_state:
            raise BankError(f'{path}: shared_state must be a non-empty dict '
                            f'of tensors')
        exists = os.path.exists(path)
        if exists and not os.path.isdir(path):
            raise BankError(f'{path} exists and is not a folder')
        is_bank = exists and os.path.isfile(os.path.join(path, MANIFEST))
        if exists and os.listdir(path):
            if not force:
                raise BankError(f'{path} exists and is not empty; choose '
                                f'another folder or pass force=True '
                                f'(--force) to replace the bank')
            if not is_bank:
                raise BankError(f'{path} is not empty and is not a task '
                                f'bank (no {MANIFEST}); refusing to replace '
                                f'it even with force')
        fp = fingerprint(shared_state)
        data = _serialize(shared_state, {_META_FINGERPRINT: fp,
                                         _META_KIND: 'shared'},
                          f'{path}: shared state')
        manifest = dict(
            format_version=FORMAT_VERSION, tool='rc_adapter',
            tool_version=__version__, created=_now(), config=config,
            fingerprint=fp, keep_versions=keep_versions,
            shared=dict(file=SHARED, sha256=_sha256_bytes(data),
                        size=len(data), tensors=len(shared_state)),
            tasks={})
        parent, base = os.path.split(path)
        tmp = None
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f'.{base}.tmp-{secrets.token_hex(6)}')
            _make_dir(tmp)
            _write_file(os.path.join(tmp, SHARED), data)
            _make_dir(os.path.join(tmp, TASKS_DIR))
            os.close(os.open(os.path.join(tmp, LOCK),
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666))
            _write_file(os.path.join(tmp, MANIFEST), _dump(manifest))
            _fsync_dir(tmp)
            # Writers of the old bank finish first; afterwards they find a
            # new fingerprint and refuse to write (see write_task).
            held = (_folder_lock(path).exclusive(300.0) if is_bank
                    else contextlib.nullcontext())
            with held:
                old = None
                if exists:
                    old = os.path.join(parent,
                                       f'.{base}.old-{secrets.token_hex(6)}')
                    os.rename(path, old)
                os.rename(tmp, path)
                tmp = None
                _fsync_dir(parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as err:
            raise _resource_error(f'{path}: could not create the task bank '
                                  f'({err.strerror or err}: '
                                  f'{err.filename or path})', err) from err
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return cls(path)

    # -- paths -----------------------------------------------------------
    def _file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def _confined(self, rel: Any, what: str, kind: str) -> str:
        """Checks a file name from the manifest; returns its full path.

        ``kind`` 'task': ``tasks/<name>.safetensors``; 'shared':
        ``<name>.safetensors`` at the top of the bank. The path must also
        resolve (symbolic links included) inside the bank.
        """
        expected = (f'{TASKS_DIR}/<file>{_SUFFIX}' if kind == 'task'
                    else f'<file>{_SUFFIX}')
        parts = rel.split('/') if isinstance(rel, str) else []
        want = 2 if kind == 'task' else 1
        leaf = parts[-1] if parts else ''
        if (len(parts) != want or (kind == 'task' and parts[0] != TASKS_DIR)
                or '\x00' in rel or '\\' in rel
                or not leaf.endswith(_SUFFIX) or leaf.startswith('.')):
            raise BankError(f'{what}: the manifest names the file {rel!r}, '
                            f'which is not a plain relative path inside the '
                            f'bank {self.path} (expected {expected}); '
                            f'refusing to touch it')
        path = self._file(*parts)
        real, root = os.path.realpath(path), os.path.realpath(self.path)
        if os.path.commonpath([real, root]) != root:
            raise BankError(f'{what}: the manifest entry {rel!r} resolves to '
                            f'{real}, outside the bank {self.path} (a '
                            f'symbolic link?); refusing to touch it')
        return path

    @staticmethod
    def _unreadable(what: str, path: str, err: OSError) -> ResourceError:
        return _resource_error(f'{what}: file {path} is unreadable '
                               f'({err.strerror or err})', err)

    @contextlib.contextmanager
    def _open_file(self, path: str, what: str, size: Optional[int] = None,
                   max_size: Optional[int] = None
                   ) -> Iterator[tuple[int, os.stat_result]]:
        """Opens a regular file (no symbolic link, device or FIFO) whose
        size is ``size`` (when given), checked before a byte is read.

        Yields:
            tuple[int, os.stat_result]: the descriptor and its ``fstat``
            (closed after the block).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BankError(f'{what}: file {path} is missing') from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise BankError(f'{what}: {path} is a symbolic link; bank '
                                f'files must be regular files') from None
            raise self._unreadable(what, path, err) from None
        try:
            try:
                st = os.fstat(fd)
            except OSError as err:
                raise self._unreadable(what, path, err) from None
            if not stat.S_ISREG(st.st_mode):
                raise BankError(f'{what}: {path} is not a regular file '
                                f'(a device, FIFO or folder); refusing to '
                                f'read it')
            if size is not None and st.st_size != size:
                raise BankError(
                    f'{what}: {path} has {st.st_size} bytes, the manifest '
                    f'records {size}: the file was truncated, extended or '
                    f'replaced after it was written')
            if max_size is not None and st.st_size > max_size:
                raise BankError(f'{what}: {path} has {st.st_size} bytes, '
                                f'more than a manifest can have')
            yield fd, st
        finally:
            os.close(fd)

    def _read_bytes(self, path: str, what: str,
                    max_size: Optional[int] = None) -> bytes:
        """Reads a whole regular file (the manifest), checked as by
        :meth:`_open_file`."""
        with self._open_file(path, what, max_size=max_size) as (fd, _):
            try:
                with os.fdopen(fd, 'rb', closefd=False) as f:
                    return f.read()
            except OSError as err:
                raise self._unreadable(what, path, err) from None

    # -- locking ---------------------------------------------------------
    def _reading(self):
        return _folder_lock(self.path).shared(self.lock_timeout)

    def _writing(self):
        return _folder_lock(self.path).exclusive(self.lock_timeout)

    # -- manifest --------------------------------------------------------
    def _read_manifest(self) -> dict:
        """Reads and checks the manifest; the caller holds a lock."""
        path = self._file(MANIFEST)
        if not os.path.isdir(self.path):
            raise BankError(f'{self.path}: no such task bank folder')
        if not os.path.lexists(path):
            raise BankError(f'{self.path} is not a task bank: {MANIFEST} is '
                            f'missing')
        data = self._read_bytes(path, f'bank {self.path}: manifest',
                                max_size=_MAX_MANIFEST_BYTES)
        try:
            manifest = json.loads(data.decode())
        except ValueError as err:
            raise BankError(f'{path}: unreadable manifest ({err})') from None
        if not isinstance(manifest, dict):
            raise BankError(f'{path}: the manifest is not a JSON object')
        version = manifest.get('format_version')
        if version not in READABLE_FORMAT_VERSIONS:
            raise BankError(f'{path}: unsupported bank format version '
                            f'{version!r} (this rc_adapter {__version__} '
                            f'reads versions '
                            f'{list(READABLE_FORMAT_VERSIONS)}; a newer '
                            f'rc_adapter wrote it?)')
        for key in ('config', 'fingerprint', 'shared', 'tasks'):
            if key not in manifest:
                raise BankError(f'{path}: the manifest has no {key!r} entry')
        if not isinstance(manifest['tasks'], dict) or not isinstance(
                manifest['shared'], dict):
            raise BankError(f'{path}: the manifest\'s "tasks" and "shared" '
                            f'entries must be JSON objects')
        for name, entry in manifest['tasks'].items():
            versions = _versions(entry) if isinstance(entry, dict) else [None]
            if not all(isinstance(v, dict) and isinstance(v.get('sha256'),
                                                          str)
                       for v in versions):
                raise BankError(f'{path}: malformed manifest entry for task '
                                f'{name!r} (every version needs "file" and '
                                f'"sha256")')
        return manifest

    def _lock(self):
        """The exclusive bank lock (kept for callers of the old name)."""
        return self._writing()

    @property
    def config(self) -> dict:
        """dict: The model config given to :meth:`create`."""
        return self._config

    @property
    def fingerprint(self) -> str:
        """str: Fingerprint of the shared tensors (``'sha256:...'``)."""
        return self._fingerprint

    def manifest(self) -> dict:
        """Returns the current manifest (a fresh read) as a dict.

        A bank written by rc_adapter < 0.2 shows ``format_version`` 1
        until its first write.
        """
        with self._reading():
            return self._read_manifest()

    def tasks(self) -> list:
        """Returns the sorted names of the tasks in the bank."""
        return sorted(self.manifest()['tasks'])

    def describe(self) -> dict:
        """Summarises the bank from one manifest read (no other file is
        read or checked; see :meth:`verify`).

        Returns:
            dict: ``path``, ``format_version``, ``fingerprint``,
            ``keep_versions``, ``created``, ``tool_version``, ``rc_cfg``
            (the config's, or None), ``shared`` (``file``, ``size``,
            ``tensors``) and ``tasks``: per task (sorted) its current
            ``version`` (the ``<sha8>``), ``file``, ``size``, ``tensors``,
            ``kept`` (previous versions kept), ``stored_bytes`` (all its
            versions; sizes format 1 did not record count as 0) and the
            current version's ``info``.
        """
        manifest = self.manifest()
        tasks = {}
        for name, entry in sorted(manifest['tasks'].items()):
            versions = _versions(entry)
            tasks[name] = dict(
                version=_short(entry['sha256']), file=entry.get('file'),
                size=entry.get('size'), tensors=entry.get('tensors'),
                kept=len(versions) - 1,
                stored_bytes=sum(v.get('size') or 0 for v in versions),
                info=dict(entry.get('info') or {}))
        rc_cfg = manifest['config'].get('rc_cfg')
        shared = manifest['shared']
        return dict(
            path=self.path, format_version=manifest.get('format_version'),
            fingerprint=manifest['fingerprint'],
            keep_versions=manifest.get('keep_versions',
                                       DEFAULT_KEEP_VERSIONS),
            created=manifest.get('created'),
            tool_version=manifest.get('tool_version'),
            rc_cfg=dict(rc_cfg) if isinstance(rc_cfg, dict) else None,
            shared=dict(file=shared.get('file'), size=shared.get('size'),
                        tensors=shared.get('tensors')),
            tasks=tasks)

    def _entry(self, name: str, manifest: dict) -> dict:
        tasks = manifest['tasks']
        if name not in tasks:
            raise BankError(f'unknown task {name!r} in bank {self.path} '
                            f'(tasks: {sorted(tasks)})')
        return tasks[name]

    def task_info(self, name: str) -> dict:
        """Returns the ``info`` dict of task ``name``'s current version."""
        with self._reading():
            return dict(self._entry(name, self._read_manifest()).get('info')
                        or {})

    def task_path(self, name: str) -> str:
        """Returns the absolute path of task ``name``'s current file.

        The path is only valid until the task's next commit; read the
        tensors with :meth:`read_task`, which holds the read lock.
        """
        with self._reading():
            entry = self._entry(name, self._read_manifest())
            return self._confined(entry['file'], f'task {name!r}', 'task')

    def task_versions(self, name: str) -> list:
        """Lists task ``name``'s versions, current first.

        Returns:
            list[dict]: one dict per version with ``index`` (0 = current,
            1 = the version it replaced, ...), ``version`` (the first 8 hex
            digits of its sha256, also in its file name), ``current``,
            ``file`` (relative to the bank), ``sha256``, ``size`` (None for
            files written by format 1), ``tensors``, ``info`` and
            ``replaced`` (when it stopped being current; None for the
            current one).
        """
        with self._reading():
            entry = self._entry(name, self._read_manifest())
        return [_describe(i, v) for i, v in enumerate(_versions(entry))]

    # -- reading ---------------------------------------------------------
    @contextlib.contextmanager
    def _open_verified(self, version: dict, what: str, kind: str,
                       task: Optional[str] = None,
                       trust_digest: bool = False) -> Iterator[Any]:
        """The one verified read of a file named by the manifest.

        Checks, before the content is used: the name is confined to the
        bank; the file is a regular file of the recorded size; its
        safetensors metadata carries this bank's fingerprint (and the
        task's name); its sha256 matches the manifest; it parses. Then it
        is memory-mapped (``safe_open``) and checked to be still the file
        that was hashed (same device, inode, size and time stamps).

        Args:
            version (dict): A manifest entry (current or kept version).
            what (str): What the file is, for messages.
            kind (str): ``'task'`` or ``'shared'`` (see :meth:`_confined`).
            task (str, optional): The task the metadata must name.
            trust_digest (bool): Skip hashing when this process already
                hashed a file with the same (device, inode, size, mtime,
                ctime) and found the manifest's sha256 (``docs/bank.md``,
                "Serving"). The caller holds a lock.

        Yields:
            safetensors ``safe_open`` handle (``keys()``, ``get_tensor``):
            tensors are views of a private, copy-on-write map of the file.
        """
        path = self._confined(version.get('file'), what, kind)
        with self._open_file(path, what, size=version.get('size')) as (fd,
                                                                       st):
            try:
                metadata, header_error = _read_metadata(fd, st.st_size), None
            except (ValueError, UnicodeDecodeError) as err:
                metadata, header_error = None, err
            except OSError as err:
                raise self._unreadable(what, path, err) from None
            fp = None if metadata is None else metadata.get(
                _META_FINGERPRINT)
            if metadata is not None and fp != self.fingerprint:
                raise BankError(
                    f'{what}: fingerprint mismatch: {path} was made for '
                    f'filter bank {fp}, this bank is {self.fingerprint} (a '
                    f'task from another bank or another pretrained model)')
            key, expected = _file_key(st), version['sha256']
            hashed = not (trust_digest and _known_digest(key) == expected)
            if hashed:
                try:
                    actual = _sha256_fd(fd)
                except OSError as err:
                    raise self._unreadable(what, path, err) from None
                if actual != expected:
                    raise BankError(
                        f'{what}: sha256 mismatch for {path} (manifest '
                        f'{expected}, file {actual}): the file was '
                        f'modified, truncated or replaced after it was '
                        f'written')
            if metadata is None:
                raise BankError(f'{what}: {path} is truncated or not a '
                                f'safetensors file ({header_error})')
            if task is not None and metadata.get(_META_TASK) != task:
                raise BankError(f'{what}: {path} holds task '
                                f'{metadata.get(_META_TASK)!r}, not {task!r}')
            try:
                handle = safe_open(path, framework='pt')
                now = _file_key(os.stat(path, follow_symlinks=False))
            except (SafetensorError, ValueError, RuntimeError) as err:
                raise BankError(f'{what}: {path} is truncated or not a '
                                f'safetensors file ({err})') from None
            except OSError as err:
                raise self._unreadable(what, path, err) from None
            if now != key:
                raise BankError(f'{what}: {path} was modified or replaced '
                                f'while it was read')
            if hashed:
                _remember_digest(key, expected)
            with handle:
                yield handle

    def _load(self, version: dict, what: str, kind: str,
              task: Optional[str] = None) -> dict:
        """Reads and verifies one file named by the manifest; returns its
        tensors (copies owning their memory)."""
        with self._open_verified(version, what, kind, task) as f:
            return {name: f.get_tensor(name).clone() for name in f.keys()}

    def _load_shared(self, manifest: dict, tensors: bool = True
                     ) -> Optional[dict]:
        """Reads and verifies the shared file, including the fingerprint of
        its tensors; returns copies of them (None without ``tensors``)."""
        what = f'bank {self.path}: shared state'
        with self._open_verified(manifest['shared'], what, 'shared') as f:
            views = {name: f.get_tensor(name) for name in f.keys()}
            actual = fingerprint(views)
            if actual != self.fingerprint:
                raise BankError(f'{what}: fingerprint mismatch (manifest '
                                f'{self.fingerprint}, tensors {actual})')
            if not tensors:
                return None
            return {name: t.clone() for name, t in views.items()}

    def read_shared(self) -> dict:
        """Returns the shared tensors, verified (size, sha256, fingerprint).

        Raises:
            BankError: the file is missing, modified, truncated, not a
                regular file inside the bank, or does not match the bank's
                fingerprint.
        """
        with self._reading():
            return self._load_shared(self._read_manifest())

    def read_task(self, name: str) -> dict:
        """Returns task ``name``'s current tensors, verified.

        The manifest is read once, under the shared lock, and only the file
        it names is read: a commit running at the same time is seen either
        completely or not at all. Checks the file's place and type, its
        size and sha256 against the manifest, that it parses (not
        truncated) and that its metadata carries this bank's fingerprint and
        the task's name.

        Raises:
            BankError: unknown task, or a check failed (the message names the
                task and the reason).
        """
        with self._reading():
            entry = self._entry(name, self._read_manifest())
            return self._load(entry, f'task {name!r}', 'task', task=name)

    def _task_file_bytes(self, name: str) -> tuple[bytes, dict]:
        """Task ``name``'s current file as bytes, verified, and its
        manifest entry (one read under the shared lock)."""
        what = f'task {name!r}'
        with self._reading():
            entry = self._entry(name, self._read_manifest())
            with self._open_verified(entry, what, 'task', task=name):
                path = self._confined(entry['file'], what, 'task')
                data = self._read_bytes(path, what)
        if _sha256_bytes(data) != entry['sha256']:
            raise BankError(f'{what}: {path} changed while it was read')
        return data, entry

    @contextlib.contextmanager
    def open_task(self, name: str, *, trust_digest: bool = False
                  ) -> Iterator[tuple[dict, dict]]:
        """Memory-maps task ``name``'s current version, verified, for
        copying its tensors somewhere (the serving path).

        Holds the shared lock for the whole block, so the file cannot be
        deleted or superseded while it is read. The checks are those of
        :meth:`read_task`; the file is not read into memory but mapped, so
        the tensors cost a copy where they are copied to.

        Args:
            name (str): The task.
            trust_digest (bool): Do not hash the file again if this process
                already verified a file with the same device, inode, size,
                mtime and ctime against the same sha256 (bank files are
                never rewritten in place; ``docs/bank.md``, "Serving", has
                the trade-off). ``False`` hashes every time.

        Yields:
            tuple[dict, dict]: ``(tensors, version)``: the tensors are
            read-only-by-contract views of a private map of the file (a
            write to them never reaches the file), to be copied inside the
            block and not kept after it; ``version`` describes the version
            as :meth:`task_versions` lists it (index 0).

        Raises:
            BankError: unknown task, or a check failed.
            ResourceError: the file could not be read.
        """
        with self._reading():
            entry = self._entry(name, self._read_manifest())
            with self._open_verified(entry, f'task {name!r}', 'task',
                                     task=name,
                                     trust_digest=trust_digest) as f:
                yield ({key: f.get_tensor(key) for key in f.keys()},
                       _describe(0, entry))

    # -- writing ---------------------------------------------------------
    def _leftovers(self, manifest: dict) -> tuple:
        """Temporary files and unnamed task files (caller holds a lock).

        Returns:
            tuple[list[str], list[str]]: absolute paths of ``.tmp-*`` files
            (top folder and ``tasks/``) and of ``tasks/*.safetensors``
            files the manifest does not name; regular files only.
        """
        named = _named_files(manifest)
        temps, unnamed = [], []
        for folder in ('', TASKS_DIR):
            full = self._file(folder) if folder else self.path
            try:
                names = sorted(os.listdir(full))
            except OSError:  # no tasks/ folder, or not listable: no leftovers
                continue
            for fname in names:
                path = os.path.join(full, fname)
                try:
                    regular = stat.S_ISREG(os.lstat(path).st_mode)
                except FileNotFoundError:
                    continue
                rel = f'{folder}/{fname}' if folder else fname
                if not regular:
                    continue
                if fname.startswith(_TMP_PREFIX):
                    temps.append(path)
                elif (folder and fname.endswith(_SUFFIX)
                      and not fname.startswith('.') and rel not in named):
                    unnamed.append(path)
        return temps, unnamed

    def _warn_unnamed(self, unnamed: list) -> None:
        if unnamed:
            warnings.warn(
                f'bank {self.path}: {len(unnamed)} file(s) not named by the '
                f'manifest are ignored (left by an interrupted or failed '
                f'write): {", ".join(unnamed)}; {_PRUNE_HINT}',
                BankWarning, stacklevel=1)

    def _start_write(self, manifest: dict, skip: str = '') -> None:
        """Under the exclusive lock: removes stale temporary files (no live
        writer can own them) and warns about unnamed files."""
        temps, unnamed = self._leftovers(manifest)
        for path in temps:
            _unlink_quietly(path)
        self._warn_unnamed([p for p in unnamed if p != self._file(skip)])

    def _commit(self, old: dict, new: dict, what: str,
                task: Optional[str], write: Optional[tuple] = None) -> None:
        """Makes ``new`` the manifest; the caller holds the exclusive lock.

        Steps: (0) check that every file of ``task`` in ``old`` lies inside
        the bank; (1) write ``write`` = (relative path, bytes) if given,
        under its content-addressed name, fsync it and its folder; (2) write
        the manifest to a temporary file, fsync, rename it over the old one
        (the commit point), fsync the folder; (3) delete the files ``old``
        names and ``new`` does not (regular files only). A failure before
        the commit point leaves ``old`` current and removes what (1) wrote;
        (3) only warns.
        """
        old_named, new_named = _named_files(old), _named_files(new)
        # Every file of the task (in particular each one about to be
        # deleted) is checked before anything changes.
        entry = old['tasks'].get(task) if task else None
        for i, version in enumerate(_versions(entry) if entry else []):
            self._confined(version.get('file'), f'task {task!r}' + (
                f': previous version {i}' if i else ''), 'task')
        doomed = sorted(f for f in old_named - new_named if f)
        doomed_paths = [self._confined(f, f'{what}: superseded file', 'task')
                        for f in doomed]
        written = None
        try:
            if write is not None:
                rel, data = write
                path = self._confined(rel, what, 'task')
                if not os.path.isdir(self._file(TASKS_DIR)):
                    _make_dir(self._file(TASKS_DIR))
                    _fsync_dir(self.path)
                if rel not in old_named:
                    written = path
                _write_file(path, data)
                _fsync_dir(self._file(TASKS_DIR))
            _write_file(self._file(MANIFEST), _dump(new))
        except BaseException as err:
            if written is not None:
                _unlink_quietly(written)
            if isinstance(err, OSError) and not isinstance(err, RCError):
                raise _resource_error(
                    f'bank {self.path}: {what} failed: '
                    f'{err.strerror or err} ({err.filename or self.path}); '
                    f'the bank is unchanged', err) from err
            raise
        # Committed: from here on failures only warn.
        try:
            _fsync_dir(self.path)
        except OSError as err:
            warnings.warn(f'bank {self.path}: {what} is committed but the '
                          f'folder could not be synced ({err}); superseded '
                          f'files are kept', BankWarning, stacklevel=3)
            return
        failed = []
        for path in doomed_paths:
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                else:
                    failed.append(f'{path} (not a regular file: left alone)')
            except FileNotFoundError:
                pass
            except OSError as err:
                failed.append(f'{path} ({err.strerror})')
        if doomed_paths:
            try:
                _fsync_dir(self._file(TASKS_DIR))
            except OSError:
                pass
        if failed:
            warnings.warn(f'bank {self.path}: {what} is committed but '
                          f'superseded files could not be deleted: '
                          f'{", ".join(failed)}; {_PRUNE_HINT}',
                          BankWarning, stacklevel=3)

    def _task_file(self, name: str, sha: str, manifest: dict) -> str:
        rel = f'{TASKS_DIR}/{name}.{_short(sha)}{_SUFFIX}'
        for entry in manifest['tasks'].values():
            for v in _versions(entry):
                if v.get('file') == rel and v['sha256'] != sha:
                    # Eight hex digits collide (about once in 4e9 writes of
                    # one task): never reuse a named file for new bytes.
                    return f'{TASKS_DIR}/{name}.{sha.split(":")[-1]}{_SUFFIX}'
        return rel

    def _check_fingerprint(self, manifest: dict, what: str) -> None:
        if manifest['fingerprint'] != self.fingerprint:
            raise BankError(f'{what}: bank {self.path} was replaced since '
                            f'it was opened; reopen it')

    def write_task(self, name: str, state: dict, info: Optional[dict] = None,
                   replace: bool = False) -> None:
        """Commits a new version of task ``name``.

        The tensors go to a new file named by their content
        (``tasks/<name>.<sha8>.safetensors``); the version becomes current
        when the manifest naming it has been renamed into place. With
        ``replace`` the version it replaces stays on disk as a previous
        version (see :meth:`restore_task`, :meth:`set_keep_versions`). A
        failure or a crash at any point leaves the old version current and
        every other task untouched. Concurrent writers are serialised by the
        bank lock and never lose each other's entries.

        Args:
            name (str): The task (an identifier).
            state (dict[str, Tensor]): The task's tensors only (e.g.
                ``rc_adapter.task_state_dict(model, name)``); any tensor
                names, all floating tensors finite.
            info (dict, optional): JSON-serializable description (task type,
                head summary, metrics ...). ``created`` and
                ``tool_version`` are added.
            replace (bool): Replace an existing task's current version.

        Raises:
            BankError: invalid name/state/info, a non-finite tensor, the
                task exists and ``replace`` is False, or the manifest names
                a file outside the bank.
            ResourceError: the bank could not be written (permission, disk
                space); the bank is unchanged.
        """
        _check_task_name(name)
        what = f'task {name!r}'
        if not isinstance(state, dict) or not state:
            raise BankError(f'{what}: state must be a non-empty dict of '
                            f'tensors')
        info = dict(info or {})
        _check_json(info, f'{what}: info')
        data = _serialize(state, {_META_FINGERPRINT: self.fingerprint,
                                  _META_TASK: name, _META_KIND: 'task'},
                          what)
        self._commit_task(name, data, len(state), info, replace)

    def _commit_task(self, name: str, data: bytes, tensors: int, info: dict,
                     replace: bool) -> None:
        """Commits serialized task bytes (made for this bank) as the new
        current version of ``name``; ``info`` gets ``created`` and
        ``tool_version`` if missing."""
        what = f'task {name!r}'
        info = dict(info)
        info.setdefault('created', _now())
        info.setdefault('tool_version', __version__)
        sha = _sha256_bytes(data)
        with self._writing():
            manifest = self._read_manifest()
            self._check_fingerprint(manifest, what)
            if name in manifest['tasks'] and not replace:
                raise BankError(f'{what} already exists in bank {self.path}; '
                                f'pass replace=True to overwrite it')
            rel = self._task_file(name, sha, manifest)
            self._start_write(manifest, skip=rel)
            new = _upgrade(manifest)
            entry = dict(file=rel, sha256=sha, size=len(data),
                         tensors=tensors, info=info)
            old = new['tasks'].get(name)
            kept = [] if old is None else _versions(old)
            if kept:
                kept[0]['replaced'] = _now()
            entry['previous'] = self._kept(kept, rel, new['keep_versions'])
            new['tasks'][name] = entry
            self._commit(manifest, new, f'writing {what}', name,
                         write=(rel, data))

    @staticmethod
    def _kept(versions: list, current_file: str, keep: int) -> list:
        """The previous versions to keep: newest first, without the current
        file and duplicates, at most ``keep``."""
        kept, seen = [], {current_file}
        for v in versions:
            if v.get('file') not in seen:
                seen.add(v.get('file'))
                kept.append(v)
        return kept[:keep]

    def update_task_info(self, name: str, **fields: Any) -> dict:
        """Merges ``fields`` into the info of task ``name``'s current
        version (e.g. metrics).

        Returns:
            dict: the updated info.
        """
        _check_json(fields, f'task {name!r}: info')
        with self._writing():
            manifest = self._read_manifest()
            self._entry(name, manifest)
            new = _upgrade(manifest)
            entry = new['tasks'][name]
            entry.setdefault('info', {}).update(fields)
            self._commit(manifest, new, f'updating task {name!r}\'s info',
                         name)
            return dict(entry['info'])

    def remove_task(self, name: str) -> None:
        """Deletes task ``name`` with all its kept versions.

        The manifest entry goes first (the commit), then the files. Every
        file is checked to lie inside the bank before anything changes.
        """
        with self._writing():
            manifest = self._read_manifest()
            self._entry(name, manifest)
            new = _upgrade(manifest)
            del new['tasks'][name]
            self._commit(manifest, new, f'removing task {name!r}', name)

    def restore_task(self, name: str,
                     version: Union[int, str, None] = None) -> dict:
        """Makes a kept previous version of task ``name`` current again.

        The version that was current becomes the newest previous version,
        so a restore can itself be undone with another restore. The
        restored file is fully verified first.

        Args:
            name (str): The task.
            version (int | str | None): ``None`` for the version the current
                one replaced; an ``int`` index as listed by
                :meth:`task_versions` (1 = newest previous); or a ``str``:
                the start of the version's sha256 (at least 4 hex digits,
                ``'sha256:'`` optional), e.g. the ``<sha8>`` of its file
                name.

        Returns:
            dict: the restored version as listed by :meth:`task_versions`.

        Raises:
            BankError: unknown task, no such previous version, or the kept
                file fails verification (nothing changes).
            ResourceError: the manifest could not be written (unchanged).
        """
        what = f'task {name!r}'
        with self._writing():
            manifest = self._read_manifest()
            versions = _versions(self._entry(name, manifest))
            index = self._pick_version(name, versions, version)
            target = versions[index]
            with self._open_verified(
                    target, f'{what}: version {_short(target["sha256"])}',
                    'task', task=name):
                pass
            new = _upgrade(manifest)
            versions = _versions(new['tasks'][name])
            target = versions.pop(index)
            target.pop('replaced', None)
            versions[0]['replaced'] = _now()
            target['previous'] = self._kept(versions, target['file'],
                                            new['keep_versions'])
            new['tasks'][name] = target
            self._commit(manifest, new, f'restoring {what}', name)
            return _describe(0, target)

    def _pick_version(self, name: str, versions: list,
                      version: Union[int, str, None]) -> int:
        listed = ', '.join(f'{i}: {_short(v["sha256"])}'
                           for i, v in enumerate(versions))
        where = (f'task {name!r} in bank {self.path} (versions, 0 = '
                 f'current: {listed})')
        if len(versions) < 2:
            raise BankError(f'{where}: no previous version is kept')
        if version is None:
            return 1
        if isinstance(version, int) and not isinstance(version, bool):
            if 1 <= version < len(versions):
                return version
            raise BankError(f'{where}: no previous version {version}')
        if isinstance(version, str):
            prefix = version.lower()
            prefix = prefix[7:] if prefix.startswith('sha256:') else prefix
            if len(prefix) >= 4 and all(c in '0123456789abcdef'
                                        for c in prefix):
                hits = [i for i, v in enumerate(versions)
                        if v['sha256'].split(':')[-1].startswith(prefix)]
                if hits == [0]:
                    raise BankError(f'{where}: version {version!r} is '
                                    f'already current')
                if len(hits) == 1:
                    return hits[0]
                if len(hits) > 1:
                    raise BankError(f'{where}: version {version!r} is '
                                    f'ambiguous; give more digits')
                raise BankError(f'{where}: no version {version!r}')
        raise BankError(f'{where}: version must be None, an index >= 1 or '
                        f'at least 4 hex digits of a sha256, got '
                        f'{version!r}')

    def set_keep_versions(self, keep: int) -> None:
        """Sets how many previous versions of each task are kept.

        Stored in the manifest, so every writer applies the same policy;
        versions beyond the new number are deleted now. ``0`` keeps none:
        a replaced version is deleted right after the commit.
        """
        keep = _check_keep(keep)
        with self._writing():
            manifest = self._read_manifest()
            new = _upgrade(manifest)
            new['keep_versions'] = keep
            for entry in new['tasks'].values():
                entry['previous'] = entry['previous'][:keep]
            self._commit(manifest, new, 'setting keep_versions', None)

    def prune(self) -> list:
        """Deletes the files the manifest does not name.

        These are ``tasks/*.safetensors`` files left by an interrupted or
        failed write (a complete file whose commit never happened; its
        metadata names its task) and stale ``.tmp-*`` files. Runs under the
        exclusive lock, so no live writer's file is touched. Named files
        (current and kept previous versions) are never deleted.

        Returns:
            list[str]: the deleted paths.
        """
        with self._writing():
            manifest = self._read_manifest()
            temps, unnamed = self._leftovers(manifest)
            removed = []
            for path in temps + unnamed:
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise _resource_error(f'bank {self.path}: cannot delete '
                                          f'{path} ({err.strerror})',
                                          err) from err
            for folder in (self.path, self._file(TASKS_DIR)):
                if os.path.isdir(folder):
                    _fsync_dir(folder)
            return removed

    # -- checking --------------------------------------------------------
    def verify(self) -> list:
        """Checks every file of the bank, kept previous versions included.

        Every file is hashed (remembered digests are not used). Runs under
        the shared lock, so it sees no commit half-done. Files the manifest
        does not name do not fail verification: they are listed in one
        :class:`BankWarning` and returned.

        Returns:
            list[str]: absolute paths of leftover files (unnamed task files
            and stale ``.tmp-*`` files); :meth:`prune` removes them.

        Raises:
            BankError: listing every problem found (one per line); its
                ``problems`` attribute is the list of messages.
        """
        problems = []
        with self._reading():
            try:
                manifest = self._read_manifest()
            except RCError as err:
                error = BankError(f'bank {self.path} failed verification:'
                                  f'\n  {err}')
                error.problems = [str(err)]
                raise error from None
            try:
                self._load_shared(manifest, tensors=False)
            except RCError as err:
                problems.append(str(err))
            for name, entry in sorted(manifest['tasks'].items()):
                for i, version in enumerate(_versions(entry)):
                    what = f'task {name!r}' + (
                        '' if i == 0 else f': previous version {i} '
                        f'({_short(version["sha256"])})')
                    try:
                        with self._open_verified(version, what, 'task',
                                                 task=name):
                            pass
                    except RCError as err:
                        problems.append(str(err))
            temps, unnamed = self._leftovers(manifest)
        if problems:
            error = BankError(f'bank {self.path} failed verification '
                              f'({len(problems)} problem(s)):\n  '
                              + '\n  '.join(problems))
            error.problems = problems
            raise error
        self._warn_unnamed(unnamed + temps)
        return unnamed + temps

    def leftovers(self) -> list:
        """Lists the files the manifest does not name, without checking or
        deleting anything (what :meth:`prune` would delete).

        Returns:
            list[str]: absolute paths of unnamed ``tasks/*.safetensors``
            files and stale ``.tmp-*`` files.
        """
        with self._reading():
            temps, unnamed = self._leftovers(self._read_manifest())
        return unnamed + temps

    def __repr__(self) -> str:
        return f'TaskBank({self.path!r})'


def _rc_architecture(bank: TaskBank) -> Optional[dict]:
    """The ``rc_cfg`` a bank's config records, as the fields that decide
    which tensors a task has (None when the config records none)."""
    stored = bank.config.get('rc_cfg')
    if not isinstance(stored, dict):
        return None
    try:
        return RCConfig.from_manifest(stored).architecture()
    except RCConfigError as err:
        raise BankError(f'bank {bank.path}: the manifest\'s rc_cfg is not a '
                        f'valid RCConfig: {err}') from None


def copy_task(src: TaskBank, dst: TaskBank, name: str, *,
              replace: bool = False) -> dict:
    """Copies task ``name``'s current version from bank ``src`` to ``dst``.

    Only between banks of the same filter bank (equal fingerprints) and,
    when both configs record an ``rc_cfg``, the same per-task tensor layout:
    a task trained on other shared tensors would compute garbage. The file
    is verified on reading and committed to ``dst`` as any write (crash
    safe, under ``dst``'s lock) byte for byte, so its sha256 (and file
    name) is the source's. The info is the source version's plus ``copied_from`` (bank,
    sha256).

    Args:
        src (TaskBank): The bank holding the task.
        dst (TaskBank): The bank to copy it to.
        name (str): The task.
        replace (bool): Replace a task ``dst`` already holds (its current
            version is kept as a previous version).

    Returns:
        dict: the copied version in ``dst`` as :meth:`TaskBank.task_versions`
        lists it.

    Raises:
        BankError: the banks are the same folder, their fingerprints (or
            rc_cfg layouts) differ (both named), the task is unknown in
            ``src``, exists in ``dst`` without ``replace``, or fails
            verification.
        ResourceError: ``dst`` could not be written (unchanged).
    """
    if os.path.realpath(src.path) == os.path.realpath(dst.path):
        raise BankError(f'cannot copy task {name!r}: source and destination '
                        f'are the same bank {src.path}')
    if src.fingerprint != dst.fingerprint:
        raise BankError(
            f'cannot copy task {name!r}: bank {src.path} has filter-bank '
            f'fingerprint {src.fingerprint}, bank {dst.path} has '
            f'{dst.fingerprint}; a task only runs on the filter bank it was '
            f'trained on')
    layouts = _rc_architecture(src), _rc_architecture(dst)
    if None not in layouts and layouts[0] != layouts[1]:
        diff = ', '.join(
            f'{k} ({layouts[0].get(k)!r} vs {layouts[1].get(k)!r})'
            for k in sorted(set(layouts[0]) | set(layouts[1]))
            if layouts[0].get(k) != layouts[1].get(k))
        raise BankError(
            f'cannot copy task {name!r}: banks {src.path} and {dst.path} '
            f'share the filter bank but their rc_cfg differ in {diff}, so '
            f'their tasks have other tensors')
    # Read (under src's lock), then write (under dst's): never both locks
    # at once, so copies in opposite directions cannot deadlock.
    data, entry = src._task_file_bytes(name)
    info = dict(entry.get('info') or {})
    info['copied_from'] = dict(bank=src.path, sha256=entry['sha256'])
    dst._commit_task(name, data, entry.get('tensors'), info, replace)
    return dst.task_versions(name)[0]


def _dump(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()
