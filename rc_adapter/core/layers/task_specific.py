"""``TaskSpecific``: a frozen base module plus one full copy per task."""
from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from ..config import check_task_name
from ..errors import RCConfigError
from .task_module import TaskModule

__all__ = ['TaskSpecific']


class TaskSpecific(TaskModule):
    """A frozen base module plus one trainable full copy per task.

    The forward runs the active task's copy, so a task's parameters *and*
    buffers (e.g. BatchNorm running statistics) are its own. Copies are deep
    copies, so subclasses keep their behaviour (timm ``BatchNormAct2d``'s
    activation, mmcv ``SyncBN`` ...). Attributes not found on this wrapper are
    read from the base module (``num_features``, ``eps`` ...). Used for
    normalization layers and for layers copied whole (``copy_modules``, or
    where no modulator is cheaper than a copy).

    Args:
        base: The module to copy per task; kept frozen as the base state.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.tasks = nn.ModuleDict()
        # A new module starts in train mode; follow the wrapped one instead.
        self.train(base.training)

    def add_task(self, task: str) -> None:
        check_task_name(task)
        if task in self.tasks:
            raise RCConfigError(f'task {task!r} already exists')
        module = copy.deepcopy(self.base)
        module.requires_grad_(False)
        module.train(self.training)
        self.tasks[task] = module

    def merged(self, task: str) -> nn.Module:
        module = copy.deepcopy(self.task_submodule(task))
        module.requires_grad_(True)
        return module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._active_submodule()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get('_modules', {})
            if 'base' in modules and not name.startswith('_'):
                return getattr(modules['base'], name)
            raise

    def extra_repr(self) -> str:
        return f'tasks={self.task_names()}'
