"""The task bank: one shared filter bank plus per-task files on disk.

Layout of a bank folder::

    BANK/manifest.json             format version, model config, fingerprint of
                                   the shared tensors, sha256 of every file,
                                   one entry per task (file, sha256, info)
    BANK/shared.safetensors        the frozen filter banks and base state
    BANK/tasks/<task>.safetensors  one task's tensors; its safetensors
                                   metadata repeats the fingerprint and name
    BANK/.lock                     lock file for manifest updates

Guarantees:

* safetensors only, never a pickle;
* every file write is atomic: a temporary file in the same folder, ``fsync``,
  ``os.replace``, then ``fsync`` of the folder;
* the manifest is changed only under an exclusive lock, by re-reading it and
  changing one entry, so concurrent writers never lose each other's entries.
  The lock is a POSIX record lock (``fcntl.lockf``) on ``BANK/.lock``: unlike
  ``flock`` it is forwarded to the server on NFS (v3 via lockd, v4 natively),
  so writers on several machines sharing the folder exclude each other too.
  POSIX locks belong to a process, so a per-folder ``threading.Lock`` also
  serialises the threads of one process;
* writing task ``k`` never rewrites another task's file or the shared file;
* every read is verified (sha256 against the manifest, the fingerprint in
  the file's metadata, the file parses) and errors name the task or file.

Only torch, safetensors and the standard library are used here.
"""
import datetime
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .config import check_task_name
from .errors import BankError, RCConfigError
from .version import __version__

__all__ = ['TaskBank', 'BankError', 'fingerprint', 'FORMAT_VERSION']

#: Version of the on-disk layout written by this module.
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
SHARED = 'shared.safetensors'
TASKS_DIR = 'tasks'
LOCK = '.lock'
_TMP_PREFIX = '.tmp-'

_META_FINGERPRINT = 'rc_adapter.fingerprint'
_META_TASK = 'rc_adapter.task'
_META_KIND = 'rc_adapter.kind'

_thread_locks = {}
_thread_locks_guard = threading.Lock()


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds')


def _tensor_bytes(tensor):
    flat = tensor.detach().to('cpu').contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def fingerprint(state):
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


def _sha256_bytes(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without dir fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path, data):
    """Writes ``data`` (bytes) to ``path`` atomically and durably."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _serialize(state, metadata, what):
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
    return _st_save(tensors, metadata=metadata)


def _check_task_name(name):
    try:
        check_task_name(name)
    except RCConfigError as err:
        raise BankError(str(err)) from None


def _check_json(obj, what):
    try:
        json.dumps(obj, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise BankError(f'{what} must be JSON-serializable: {err}')


class _BankLock:
    """Exclusive lock of a bank folder (thread lock + ``fcntl.lockf``)."""

    def __init__(self, folder, timeout):
        self.path = os.path.join(folder, LOCK)
        self.timeout = timeout
        key = os.path.realpath(folder)
        with _thread_locks_guard:
            self.thread_lock = _thread_locks.setdefault(key, threading.Lock())
        self.fd = None

    def __enter__(self):
        import fcntl
        deadline = time.monotonic() + self.timeout
        if not self.thread_lock.acquire(timeout=self.timeout):
            raise BankError(f'{self.path}: timed out after {self.timeout}s '
                            f'waiting for the bank lock')
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            while True:
                try:
                    fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return self
                except OSError:
                    if time.monotonic() > deadline:
                        raise BankError(
                            f'{self.path}: timed out after {self.timeout}s '
                            f'waiting for the bank lock (another writer '
                            f'holds it)')
                    time.sleep(0.02)
        except BaseException:
            self._release()
            raise

    def _release(self):
        if self.fd is not None:
            try:
                import fcntl
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None
        self.thread_lock.release()

    def __exit__(self, *exc):
        self._release()


class TaskBank:
    """A task bank folder (see the module docstring for the layout).

    Open an existing bank with ``TaskBank(path)``; make a new one with
    :meth:`TaskBank.create`. The manifest is re-read on every call, so
    several processes may use one bank at the same time.

    Args:
        path (str | os.PathLike): The bank folder.
        lock_timeout (float): Seconds to wait for the manifest lock.

    Raises:
        BankError: ``path`` is not a readable bank.
    """

    def __init__(self, path, lock_timeout=300.0):
        self.path = os.path.abspath(os.fspath(path))
        self.lock_timeout = lock_timeout
        manifest = self._read_manifest()
        self._config = manifest['config']
        self._fingerprint = manifest['fingerprint']

    # -- creation --------------------------------------------------------
    @classmethod
    def create(cls, path, shared_state, config, force=False):
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

        Returns:
            TaskBank: the new bank.

        Raises:
            BankError: ``path`` exists and is not empty (without ``force``),
                or the inputs are invalid.
        """
        path = os.path.abspath(os.fspath(path))
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
        if exists and os.listdir(path):
            if not force:
                raise BankError(f'{path} exists and is not empty; choose '
                                f'another folder or pass force=True '
                                f'(--force) to replace the bank')
            if not os.path.isfile(os.path.join(path, MANIFEST)):
                raise BankError(f'{path} is not empty and is not a task '
                                f'bank (no {MANIFEST}); refusing to replace '
                                f'it even with force')
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent,
                               prefix=f'.{os.path.basename(path)}.tmp-')
        try:
            fp = fingerprint(shared_state)
            data = _serialize(shared_state, {_META_FINGERPRINT: fp,
                                             _META_KIND: 'shared'},
                              f'{path}: shared state')
            _atomic_write(os.path.join(tmp, SHARED), data)
            os.makedirs(os.path.join(tmp, TASKS_DIR))
            manifest = dict(
                format_version=FORMAT_VERSION, tool='rc_adapter',
                tool_version=__version__, created=_now(),
                config=config, fingerprint=fp,
                shared=dict(file=SHARED, sha256=_sha256_bytes(data),
                            tensors=len(shared_state)),
                tasks={})
            _atomic_write(os.path.join(tmp, MANIFEST),
                          json.dumps(manifest, indent=2,
                                     sort_keys=True).encode())
            _fsync_dir(tmp)
            old = None
            if exists:
                old = tempfile.mkdtemp(
                    dir=parent, prefix=f'.{os.path.basename(path)}.old-')
                os.rmdir(old)
                os.rename(path, old)
            os.rename(tmp, path)
            _fsync_dir(parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path)

    # -- manifest --------------------------------------------------------
    def _file(self, *parts):
        return os.path.join(self.path, *parts)

    def _read_manifest(self):
        path = self._file(MANIFEST)
        if not os.path.isdir(self.path):
            raise BankError(f'{self.path}: no such task bank folder')
        try:
            with open(path, 'rb') as f:
                manifest = json.loads(f.read().decode())
        except FileNotFoundError:
            raise BankError(f'{self.path} is not a task bank: {MANIFEST} is '
                            f'missing')
        except (OSError, ValueError) as err:
            raise BankError(f'{path}: unreadable manifest ({err})')
        if not isinstance(manifest, dict):
            raise BankError(f'{path}: the manifest is not a JSON object')
        version = manifest.get('format_version')
        if version != FORMAT_VERSION:
            raise BankError(f'{path}: unsupported bank format version '
                            f'{version!r} (this rc_adapter reads '
                            f'{FORMAT_VERSION})')
        for key in ('config', 'fingerprint', 'shared', 'tasks'):
            if key not in manifest:
                raise BankError(f'{path}: the manifest has no {key!r} entry')
        return manifest

    def _write_manifest(self, manifest):
        _atomic_write(self._file(MANIFEST),
                      json.dumps(manifest, indent=2, sort_keys=True).encode())

    def _lock(self):
        return _BankLock(self.path, self.lock_timeout)

    @property
    def config(self):
        """dict: The model config given to :meth:`create`."""
        return self._config

    @property
    def fingerprint(self):
        """str: Fingerprint of the shared tensors (``'sha256:...'``)."""
        return self._fingerprint

    def manifest(self):
        """Returns the current manifest (a fresh read) as a dict."""
        return self._read_manifest()

    def tasks(self):
        """Returns the sorted names of the tasks in the bank."""
        return sorted(self._read_manifest()['tasks'])

    def _entry(self, name, manifest=None):
        manifest = manifest or self._read_manifest()
        tasks = manifest['tasks']
        if name not in tasks:
            raise BankError(f'unknown task {name!r} in bank {self.path} '
                            f'(tasks: {sorted(tasks)})')
        return tasks[name]

    def task_info(self, name):
        """Returns the ``info`` dict of task ``name``'s manifest entry."""
        return dict(self._entry(name).get('info') or {})

    # -- reading ---------------------------------------------------------
    def _load_verified(self, rel_path, expected_sha, what, task=None):
        path = self._file(rel_path)
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except FileNotFoundError:
            raise BankError(f'{what}: file {path} is missing')
        except OSError as err:
            raise BankError(f'{what}: file {path} is unreadable ({err})')
        try:
            metadata = _metadata(data)
        except (ValueError, UnicodeDecodeError) as err:
            metadata, header_error = None, err
        fp = None if metadata is None else metadata.get(_META_FINGERPRINT)
        if metadata is not None and fp != self.fingerprint:
            raise BankError(
                f'{what}: fingerprint mismatch: {path} was made for filter '
                f'bank {fp}, this bank is {self.fingerprint} (a task from '
                f'another bank or another pretrained model)')
        actual = _sha256_bytes(data)
        if actual != expected_sha:
            raise BankError(
                f'{what}: sha256 mismatch for {path} (manifest '
                f'{expected_sha}, file {actual}): the file was modified, '
                f'truncated or replaced after it was written')
        if metadata is None:
            raise BankError(f'{what}: {path} is truncated or not a '
                            f'safetensors file ({header_error})')
        try:
            state = _st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise BankError(f'{what}: {path} is truncated or not a '
                            f'safetensors file ({err})')
        if task is not None and metadata.get(_META_TASK) != task:
            raise BankError(f'{what}: {path} holds task '
                            f'{metadata.get(_META_TASK)!r}, not {task!r}')
        return state

    def read_shared(self):
        """Returns the shared tensors, verified (sha256 and fingerprint).

        Raises:
            BankError: the file is missing, modified, truncated or does not
                match the bank's fingerprint.
        """
        manifest = self._read_manifest()
        shared = manifest['shared']
        what = f'bank {self.path}: shared state'
        state = self._load_verified(shared['file'], shared['sha256'], what)
        actual = fingerprint(state)
        if actual != self.fingerprint:
            raise BankError(f'{what}: fingerprint mismatch (manifest '
                            f'{self.fingerprint}, tensors {actual})')
        return state

    def read_task(self, name):
        """Returns task ``name``'s tensors, verified.

        Checks the sha256 against the manifest, that the file parses (not
        truncated) and that its metadata carries this bank's fingerprint and
        the task's name.

        Raises:
            BankError: unknown task, or a check failed (the message names the
                task and the reason).
        """
        entry = self._entry(name)
        return self._load_verified(entry['file'], entry['sha256'],
                                   f'task {name!r}', task=name)

    # -- writing ---------------------------------------------------------
    def write_task(self, name, state, info=None, replace=False):
        """Writes one task's tensors and its manifest entry.

        Only ``tasks/<name>.safetensors`` and ``manifest.json`` are written
        (each atomically); the manifest is re-read and updated under the
        bank lock, so concurrent writers of other tasks keep their entries.

        Args:
            name (str): The task (an identifier).
            state (dict[str, Tensor]): The task's tensors only (e.g.
                ``rc_adapter.task_state_dict(model, name)``).
            info (dict, optional): JSON-serializable description (task type,
                head summary, metrics ...). ``created`` and
                ``tool_version`` are added.
            replace (bool): Overwrite an existing task.

        Raises:
            BankError: invalid name/state/info, or the task exists and
                ``replace`` is False.
        """
        _check_task_name(name)
        if not isinstance(state, dict) or not state:
            raise BankError(f'task {name!r}: state must be a non-empty dict '
                            f'of tensors')
        info = dict(info or {})
        _check_json(info, f'task {name!r}: info')
        info.setdefault('created', _now())
        info.setdefault('tool_version', __version__)
        data = _serialize(state, {_META_FINGERPRINT: self.fingerprint,
                                  _META_TASK: name, _META_KIND: 'task'},
                          f'task {name!r}')
        rel = f'{TASKS_DIR}/{name}.safetensors'
        os.makedirs(self._file(TASKS_DIR), exist_ok=True)
        with self._lock():
            manifest = self._read_manifest()
            if manifest['fingerprint'] != self.fingerprint:
                raise BankError(f'task {name!r}: bank {self.path} was '
                                f'replaced since it was opened; reopen it')
            if name in manifest['tasks'] and not replace:
                raise BankError(f'task {name!r} already exists in bank '
                                f'{self.path}; pass replace=True to '
                                f'overwrite it')
            _atomic_write(self._file(rel), data)
            manifest['tasks'][name] = dict(
                file=rel, sha256=_sha256_bytes(data), tensors=len(state),
                info=info)
            self._write_manifest(manifest)

    def update_task_info(self, name, **fields):
        """Merges ``fields`` into task ``name``'s info (e.g. metrics).

        Returns:
            dict: the updated info.
        """
        _check_json(fields, f'task {name!r}: info')
        with self._lock():
            manifest = self._read_manifest()
            entry = self._entry(name, manifest)
            entry.setdefault('info', {}).update(fields)
            self._write_manifest(manifest)
            return dict(entry['info'])

    def remove_task(self, name):
        """Deletes task ``name`` (manifest entry first, then its file)."""
        with self._lock():
            manifest = self._read_manifest()
            entry = self._entry(name, manifest)
            del manifest['tasks'][name]
            self._write_manifest(manifest)
            try:
                os.unlink(self._file(entry['file']))
            except FileNotFoundError:
                pass
            _fsync_dir(self._file(TASKS_DIR))

    # -- checking --------------------------------------------------------
    def verify(self):
        """Checks every file of the bank.

        Raises:
            BankError: listing every problem found (one per line).
        """
        problems = []
        try:
            manifest = self._read_manifest()
        except BankError as err:
            raise BankError(f'bank {self.path} failed verification:\n  '
                            f'{err}')
        try:
            self.read_shared()
        except BankError as err:
            problems.append(str(err))
        listed = set()
        for name in sorted(manifest['tasks']):
            entry = manifest['tasks'][name]
            listed.add(os.path.normpath(entry.get('file', '')))
            try:
                self.read_task(name)
            except BankError as err:
                problems.append(str(err))
        tasks_dir = self._file(TASKS_DIR)
        if os.path.isdir(tasks_dir):
            for fname in sorted(os.listdir(tasks_dir)):
                rel = os.path.normpath(f'{TASKS_DIR}/{fname}')
                if fname.endswith('.safetensors') and rel not in listed:
                    problems.append(f'file {self._file(rel)} is not listed '
                                    f'in the manifest')
        if problems:
            raise BankError(f'bank {self.path} failed verification '
                            f'({len(problems)} problem(s)):\n  '
                            + '\n  '.join(problems))

    def __repr__(self):
        return f'TaskBank({self.path!r})'


def _metadata(data):
    """Reads the metadata of serialized safetensors bytes."""
    if len(data) < 8:
        raise ValueError('file shorter than a safetensors header')
    size = int.from_bytes(data[:8], 'little')
    if size > len(data) - 8:
        raise ValueError('header runs past the end of the file')
    header = json.loads(data[8:8 + size].decode())
    return dict(header.get('__metadata__') or {})
