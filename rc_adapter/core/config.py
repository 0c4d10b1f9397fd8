"""``RCConfig``: the one description of how a model is reparameterized.

The same object is taken by :func:`rc_adapter.reparameterize`, read by the
mmseg segmentor (``model.rc_cfg``) and the checkpoint converter, stored in
``model.rc_info['config']`` and serialised into a task bank's manifest. It is
validated once, when it is made.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import RCConfigError
from .execution import EXECUTION_MODES

__all__ = ['RCConfig', 'Patterns', 'check_task_name']

#: A regular expression or a list of them, matched with ``re.search``
#: against dotted module names (``layer1.0.conv1``).
Patterns = Optional[Union[str, Sequence[str]]]

#: Fields that do not change which tensors exist (so a bank and a config
#: may differ in them).
_RUNTIME_FIELDS = ('execution',)


def check_task_name(task: Any) -> str:
    """Returns ``task`` if it is a valid task name, else raises.

    Task names become state-dict keys and file names, so they must be
    Python identifiers (letters, digits, underscores).

    Raises:
        RCConfigError: naming the bad value.
    """
    if not isinstance(task, str) or not task.isidentifier():
        raise RCConfigError(f'task names must be Python identifiers (letters, '
                            f'digits, underscores; they become state-dict '
                            f'keys and file names), got {task!r}')
    return task


def _patterns(value: Any, name: str) -> Optional[list[str]]:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) for v in value):
        raise RCConfigError(f'RCConfig.{name} must be a regular expression '
                            f'or a list of them, got {value!r}')
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as err:
            raise RCConfigError(f'RCConfig.{name}: invalid regular '
                                f'expression {pattern!r}: {err}') from None
    return list(value)


@dataclass
class RCConfig:
    """How to reparameterize a model (PEFT's ``LoraConfig`` for RC).

    Args:
        nff: Weight-normalised modulator rows (normalized feature fusion).
            Defaults to True.
        task_norms: Per-task copies of every normalization layer, running
            statistics included. Defaults to True.
        include: Only modules whose name matches are touched.
        exclude: Modules whose name matches stay shared and frozen.
        copy_modules: Whole modules copied per task (PEFT's
            ``modules_to_save``), e.g. a classifier.
        execution: Training forward path of the RC layers: ``'auto'``
            (cost model), ``'measure'`` (time both paths once per shape),
            ``'activation'`` or ``'weight'``. Does not change any tensor.

    Raises:
        RCConfigError: a field has an invalid value (the message names it).
    """

    nff: bool = True
    task_norms: bool = True
    include: Patterns = None
    exclude: Patterns = None
    copy_modules: Patterns = None
    execution: str = 'auto'

    def __post_init__(self) -> None:
        for name in ('nff', 'task_norms'):
            if not isinstance(getattr(self, name), bool):
                raise RCConfigError(f'RCConfig.{name} must be True or False, '
                                    f'got {getattr(self, name)!r}')
        for name in ('include', 'exclude', 'copy_modules'):
            setattr(self, name, _patterns(getattr(self, name), name))
        if self.execution not in EXECUTION_MODES:
            raise RCConfigError(f'RCConfig.execution must be one of '
                                f'{EXECUTION_MODES}, got {self.execution!r}')

    # -- conversions ---------------------------------------------------
    @classmethod
    def from_any(cls, value: Union['RCConfig', Mapping[str, Any], None],
                 **overrides: Any) -> 'RCConfig':
        """An ``RCConfig`` from an instance, a dict or None (defaults),
        with keyword ``overrides`` applied on top."""
        if value is None:
            base: dict[str, Any] = {}
        elif isinstance(value, RCConfig):
            base = value.to_dict()
        elif isinstance(value, Mapping):
            base = dict(value)
        else:
            raise RCConfigError(f'expected an RCConfig or a dict, got '
                                f'{type(value).__name__}')
        base.update(overrides)
        return cls.from_dict(base)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> 'RCConfig':
        """Builds a config from a dict (a config file's ``rc_cfg``, a bank
        manifest), refusing unknown keys by name."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise RCConfigError(f'unknown RCConfig key(s) {unknown}; valid '
                                f'keys: {names}')
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, no tuples) of every field."""
        return {f.name: _jsonable(getattr(self, f.name))
                for f in dataclasses.fields(self)}

    def architecture(self) -> dict[str, Any]:
        """The fields that decide which tensors a model has: two configs
        with equal ``architecture()`` build interchangeable models."""
        return {k: v for k, v in self.to_dict().items()
                if k not in _RUNTIME_FIELDS}

    def replace(self, **changes: Any) -> 'RCConfig':
        """A validated copy with ``changes`` applied."""
        return RCConfig.from_any(self, **changes)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value

