"""``TaskModule``: the protocol of every module that holds per-task tensors."""
from __future__ import annotations

import torch.nn as nn

from ..errors import UnknownTaskError

__all__ = ['TaskModule']


class TaskModule(nn.Module):
    """Base class of every module that holds per-task tensors.

    Subclasses keep one submodule per task in ``self.<task_container>`` (an
    ``nn.ModuleDict``) so that a task's tensors have stable state-dict keys
    ``<path>.<task_container>.<task>.<...>``. The surgery functions
    (:mod:`rc_adapter.core.surgery`) only use this protocol: add / remove a
    task, route the forward to a task (``active_task``), expose the module
    holding one task's tensors, and build the plain module one task merges
    into.
    """

    #: Name of the ``nn.ModuleDict`` attribute holding the per-task modules.
    task_container = 'tasks'

    def __init__(self) -> None:
        super().__init__()
        self.active_task = None

    def task_names(self) -> list[str]:
        """Returns the registered task names, in insertion order."""
        return list(getattr(self, self.task_container).keys())

    def task_submodule(self, task: str) -> nn.Module:
        """Returns the module that holds exactly ``task``'s tensors."""
        container = getattr(self, self.task_container)
        if task not in container:
            raise UnknownTaskError(
                f'task {task!r} is not registered in {type(self).__name__} '
                f'(registered: {list(container.keys())})')
        return container[task]

    def add_task(self, task: str) -> None:
        """Adds ``task`` initialised from the base state (frozen)."""
        raise NotImplementedError

    def remove_task(self, task: str) -> None:
        """Deletes ``task``'s tensors."""
        container = getattr(self, self.task_container)
        self.task_submodule(task)  # raises UnknownTaskError
        del container[task]
        if self.active_task == task:
            self.active_task = None

    def merged(self, task: str) -> nn.Module:
        """Returns a plain module computing ``task``'s function."""
        raise NotImplementedError

    def _active_submodule(self) -> nn.Module:
        if self.active_task is None:
            raise RuntimeError(
                f'{type(self).__name__}: no task is active; call '
                f'rc_adapter.set_task(model, task) before the forward pass '
                f'(registered tasks: {self.task_names()})')
        return self.task_submodule(self.active_task)
