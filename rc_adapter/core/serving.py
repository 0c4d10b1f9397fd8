"""Serving tasks from a task bank: tasks loaded on demand, an LRU of them.

A model holds the bank's shared filter banks plus only the tasks in use:

* :func:`load_shared` loads the bank's shared tensors into a
  reparameterized model without tasks (``rc.reparameterize(model, [],
  config)``); models built by the mmseg layer from a bank already hold them;
* :func:`load_task` / :func:`unload_task` add and remove one task's tensors;
* :class:`TaskCache` keeps at most ``max_resident`` tasks in the model and
  loads a task on first use, evicting the least recently used one.

A load reads the task file through :meth:`TaskBank.open_task`: under the
bank's shared lock, verified (size, sha256, fingerprint, task name),
memory-mapped, so a switch costs a copy of that task's tensors and never a
parse of the bank. The sha256 of a file this process already verified is
not computed again while the file's device, inode, size, mtime and ctime
are unchanged (``docs/bank.md``, "Serving", has the trade-off;
``reverify=True`` hashes on every load).

Loading or unloading a task never changes another task's tensors, hence
its outputs (bit for bit), and never writes a file.

Only torch, safetensors and the standard library are used here.
"""
import collections
from typing import Optional

import torch.nn as nn

from .bank import TaskBank
from .errors import BankError, RCConfigError, UnknownTaskError
from .surgery import list_tasks, load_task_state_dict, remove_task, set_task

__all__ = ['load_shared', 'load_task', 'unload_task', 'TaskCache']


def load_shared(model: nn.Module, bank: TaskBank) -> None:
    """Loads ``bank``'s shared tensors (filter banks, base state) into
    ``model``, verified, before any task is loaded.

    ``model`` must be reparameterized as the bank was (same architecture
    and ``RCConfig``) and hold no task, e.g. ``rc.reparameterize(net, [],
    config)``: changing the shared tensors under a task would change what
    it computes.

    Raises:
        RCConfigError: the model holds tasks.
        BankError: the shared file fails verification, or its tensors do
            not fit the model (then the model is only fit to be discarded).
    """
    tasks = list_tasks(model)
    if tasks:
        raise RCConfigError(f'load_shared: the model already holds tasks '
                            f'{tasks}; load the shared state into a model '
                            f'without tasks')
    shared = bank.read_shared()
    try:
        model.load_state_dict(shared, strict=True)
    except RuntimeError as err:
        raise BankError(f'bank {bank.path}: the shared state does not fit '
                        f'this model (reparameterized with another config?)'
                        f': {err}') from None


def _load(model: nn.Module, bank: TaskBank, task: str,
          trust_digest: bool) -> str:
    """Loads one task; returns the sha256 of the version loaded."""
    with bank.open_task(task, trust_digest=trust_digest) as (tensors,
                                                             version):
        try:
            load_task_state_dict(model, task, tensors)
        except RCConfigError as err:
            raise BankError(f'task {task!r} in bank {bank.path} does not '
                            f'fit this model: {err}') from None
    return version['sha256']


def load_task(model: nn.Module, bank: TaskBank, task: str, *,
              reverify: bool = False) -> None:
    """Loads task ``task``'s current version from ``bank`` into ``model``.

    The task is added if the model does not hold it, else its tensors are
    overwritten with the bank's version. The file is verified before a
    tensor is copied (a failure leaves the model as it was); the tensors are
    copied from a memory map of the file under the bank's shared lock. No
    other task's tensors change and no file is written. The active task is
    not changed (see :func:`rc_adapter.set_task`).

    The model must hold the bank's shared tensors (:func:`load_shared`, or
    a model built from the bank); this is not checked here, only that the
    task's tensor names and shapes fit the model.

    Args:
        model (nn.Module): A reparameterized model.
        bank (TaskBank): The bank.
        task (str): The task to load.
        reverify (bool): Hash the file even if this process already
            verified it unchanged (see the module docstring).

    Raises:
        BankError: unknown task, the file fails verification, or its
            tensors do not fit the model.
        ResourceError: the file could not be read.
    """
    _load(model, bank, task, trust_digest=not reverify)


def unload_task(model: nn.Module, task: str) -> None:
    """Removes task ``task``'s tensors from ``model`` (the bank is not
    touched; other tasks are unchanged).

    Raises:
        UnknownTaskError: the model does not hold ``task``.
    """
    remove_task(model, task)


class TaskCache:
    """At most ``max_resident`` tasks of a bank resident in one model.

    :meth:`activate` routes the model to a task, loading it on first use
    (:func:`load_task`) and then unloading the least recently used tasks
    beyond ``max_resident``; a task already resident costs only the
    routing. While a task is being loaded, ``max_resident + 1`` tasks are
    in memory.

    Tasks the model already held when the cache was made are *pinned*:
    :meth:`activate` routes to them without reading the bank, and they are
    neither counted nor evicted.

    A resident task stays the version that was loaded; :meth:`refresh`
    unloads those whose bank version has changed since (they are loaded
    again on their next use).

    Not thread-safe: one thread (or a lock held by the caller) per cache,
    and the model must not run a forward pass while :meth:`activate`
    switches it.

    Args:
        model (nn.Module): A reparameterized model holding the bank's shared
            tensors (see :func:`load_shared`).
        bank (TaskBank): The bank to load tasks from.
        max_resident (int): Tasks kept in the model (>= 1).
        reverify (bool): Hash the task file on every load (see
            :func:`load_task`).

    Raises:
        RCConfigError: ``max_resident`` is not a positive integer, or the
            model is not reparameterized.
    """

    def __init__(self, model: nn.Module, bank: TaskBank,
                 max_resident: int = 1, *, reverify: bool = False):
        if isinstance(max_resident, bool) or not isinstance(
                max_resident, int) or max_resident < 1:
            raise RCConfigError(f'TaskCache: max_resident must be a '
                                f'positive integer, got {max_resident!r}')
        self.model = model
        self.bank = bank
        self.max_resident = max_resident
        self.reverify = reverify
        self.pinned = frozenset(list_tasks(model))
        self._lru = collections.OrderedDict()  # task -> sha256, LRU first
        self._active = None

    @property
    def active(self) -> Optional[str]:
        """str | None: The task the cache last activated (None after it
        was evicted)."""
        return self._active

    def resident(self) -> list:
        """Returns the tasks the cache loaded, least recently used first
        (pinned tasks are not listed)."""
        return list(self._lru)

    def activate(self, task: str) -> None:
        """Routes the model to ``task``, loading it first if needed.

        Routing only: which tensors are trainable does not change
        (``set_task(..., update_trainable=False)``).

        Raises:
            BankError: unknown task, the file fails verification or does
                not fit the model (the resident tasks are unchanged).
            ResourceError: the file could not be read.
        """
        if task not in self.pinned:
            if task in self._lru and task in list_tasks(self.model):
                self._lru.move_to_end(task)
            else:
                self._lru.pop(task, None)
                sha = _load(self.model, self.bank, task,
                            trust_digest=not self.reverify)
                self._lru[task] = sha
                while len(self._lru) > self.max_resident:
                    self._unload(next(iter(self._lru)))
        set_task(self.model, task, update_trainable=False)
        self._active = task

    def _unload(self, task: str) -> None:
        del self._lru[task]
        if task in list_tasks(self.model):
            unload_task(self.model, task)
        if self._active == task:
            self._active = None

    def evict(self, task: str) -> None:
        """Unloads a resident task now.

        Raises:
            UnknownTaskError: ``task`` is not resident (or is pinned).
        """
        if task not in self._lru:
            pinned = ' (it is pinned: the model held it before the cache)' \
                if task in self.pinned else ''
            raise UnknownTaskError(f'task {task!r} is not resident{pinned}; '
                                   f'resident: {self.resident()}')
        self._unload(task)

    def clear(self) -> None:
        """Unloads every resident task (pinned tasks stay)."""
        for task in list(self._lru):
            self._unload(task)

    def refresh(self) -> list:
        """Unloads the resident tasks whose current version in the bank is
        not the one loaded (replaced, restored or removed since).

        Returns:
            list[str]: the tasks unloaded.
        """
        current = self.bank.manifest()['tasks']
        stale = [task for task, sha in self._lru.items()
                 if (current.get(task) or {}).get('sha256') != sha]
        for task in stale:
            self._unload(task)
        return stale

    def __repr__(self) -> str:
        return (f'TaskCache({self.bank.path!r}, max_resident='
                f'{self.max_resident}, resident={self.resident()}, '
                f'active={self._active!r})')
