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

__all__ = ['RCConfig', 'Patterns', 'check_task_name', 'MODULATOR_CHOICES',
           'DEFAULT_RANK', 'FAMILIES', 'METHODS']

#: A regular expression or a list of them, matched with ``re.search``
#: against dotted module names (``layer1.0.conv1``).
Patterns = Optional[Union[str, Sequence[str]]]

#: Fields that do not change which tensors exist (so a bank and a config
#: may differ in them).
_RUNTIME_FIELDS = ('execution',)

#: The modulator families (see :mod:`rc_adapter.core.layers.modulators`).
FAMILIES = ('full', 'lowrank', 'diagonal')

#: ``modulator`` values: ``'auto'`` or a family.
MODULATOR_CHOICES = ('auto',) + FAMILIES

#: ``method`` values: RC, or the residual-adapter baselines.
METHODS = ('rc', 'ra_series', 'ra_parallel')

#: Rank of low-rank modulators when neither ``rank`` nor ``budget`` is set.
DEFAULT_RANK = 8


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


def _positive_rank(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RCConfigError(f'{where} must be a positive integer rank, got '
                            f'{value!r}')
    return value


def _family(value: Any, where: str) -> str:
    if value not in FAMILIES:
        raise RCConfigError(f'{where} must be one of {FAMILIES}, got '
                            f'{value!r}')
    return value


def _mapping(value: Any, name: str, check) -> Optional[dict]:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RCConfigError(f'RCConfig.{name} must be a dict {{regex: '
                            f'value}}, got {value!r}')
    out = {}
    for pattern, item in value.items():
        _patterns(pattern, name)
        out[pattern] = check(item, f'RCConfig.{name}[{pattern!r}]')
    return out


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
        execution: Forward path of the RC layers: ``'auto'`` (cost
            model), ``'measure'`` (time both paths once per shape),
            ``'activation'`` or ``'weight'``. In eval, ``'auto'`` and
            ``'measure'`` cache the composed weight except where the
            modulator pass costs at most 5 % of the bank (wide low-rank
            and diagonal layers: no copy of their weight is kept);
            ``'weight'`` caches everywhere (fastest unmerged eval),
            ``'activation'`` nowhere (least memory). Does not change any
            tensor.
        modulator: The modulator family of every RC layer: ``'auto'``
            (default) takes the paper's full modulator on convs with a
            spatial kernel where it holds fewer parameters than a copy of
            the conv, a low-rank one on 1x1 convs, linear layers and
            attention (then a diagonal one, and a copy only where nothing
            is cheaper);
            ``'full'``, ``'lowrank'`` or ``'diagonal'`` force a family (a
            layer is still copied where the family is not cheaper than a
            copy: with ``'full'`` this is the paper's rule that copies
            ResNet's 1x1 downsample convs).
        rank: Rank of low-rank modulators (at most ``c_out/groups`` of each
            layer). Defaults to 8; with ``budget`` the largest rank that fits,
            up to ``rank``.
        budget: Per-task parameter budget as a fraction of the model's
            parameters (``0.05`` = 5 %); ranks (and, if needed, the choice
            between full and low-rank modulators) are set to fit. Needs
            ``modulator='auto'`` or ``'lowrank'``.
        rank_pattern: ``{regex: rank}`` per-layer ranks (PEFT's
            ``rank_pattern``); those layers are not resized by ``budget``.
        modulator_pattern: ``{regex: family}`` per-layer families, not
            changed by ``budget``.
        method: ``'rc'`` (default), or a residual-adapter baseline of the
            paper's comparison: ``'ra_series'`` / ``'ra_parallel'`` put a
            per-task adapter (zero-initialised) beside every dense conv with a
            spatial kernel, where RC would put a modulator; other weight
            layers are copied per task. The modulator fields are then unused.

    Raises:
        RCConfigError: a field has an invalid value (the message names it).
    """

    nff: bool = True
    task_norms: bool = True
    include: Patterns = None
    exclude: Patterns = None
    copy_modules: Patterns = None
    execution: str = 'auto'
    modulator: str = 'auto'
    rank: Optional[int] = None
    budget: Optional[float] = None
    rank_pattern: Optional[dict] = None
    modulator_pattern: Optional[dict] = None
    method: str = 'rc'

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
        if self.modulator not in MODULATOR_CHOICES:
            raise RCConfigError(f'RCConfig.modulator must be one of '
                                f'{MODULATOR_CHOICES}, got '
                                f'{self.modulator!r}')
        if self.rank is not None and (isinstance(self.rank, bool) or
                                      not isinstance(self.rank, int) or
                                      self.rank < 1):
            raise RCConfigError(f'RCConfig.rank must be a positive integer, '
                                f'got {self.rank!r}')
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(
                    self.budget, (int, float)) or not 0 < self.budget <= 1:
                raise RCConfigError(f'RCConfig.budget is a fraction of the '
                                    f'model in (0, 1], got {self.budget!r}')
            if self.modulator not in ('auto', 'lowrank'):
                raise RCConfigError(
                    f"RCConfig.budget sets ranks, so it needs modulator="
                    f"'auto' or 'lowrank', got {self.modulator!r}")
            self.budget = float(self.budget)
        if self.method not in METHODS:
            raise RCConfigError(f'RCConfig.method must be one of {METHODS}, '
                                f'got {self.method!r}')
        if self.method != 'rc' and self.budget is not None:
            raise RCConfigError('RCConfig.budget applies to RC modulators, '
                                f'not to method={self.method!r}')
        self.rank_pattern = _mapping(self.rank_pattern, 'rank_pattern',
                                     _positive_rank)
        self.modulator_pattern = _mapping(
            self.modulator_pattern, 'modulator_pattern', _family)

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
    def from_manifest(cls, values: Mapping[str, Any]) -> 'RCConfig':
        """Reads the ``rc_cfg`` a task bank (or ``rc_info``) stored.

        Banks written before modulator families existed hold no
        ``modulator`` key: they were made with the paper's full modulators
        (``modulator='full'``), not today's default.
        """
        values = dict(values)
        values.setdefault('modulator', 'full')
        return cls.from_dict(values)

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

