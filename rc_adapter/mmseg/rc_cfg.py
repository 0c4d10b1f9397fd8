"""Reading ``model.rc_cfg`` of an mmseg config into an :class:`RCConfig`.

The segmentor and the checkpoint converter both read the config's RC
settings through :func:`parse_rc_cfg`, so they accept exactly the same keys:
the fields of :class:`rc_adapter.RCConfig` (unknown keys are named in the
error). Two keys of earlier releases are still accepted for one release,
each with a ``DeprecationWarning``:

* ``rc_cfg.mode`` (``'rc'``, ``'finetune'``, ``'shared'``) -- now the
  segmentor's own ``baseline`` argument (``None`` = RC);
* ``rc_cfg.ri`` -- now the conversion option ``convert_cfg.ri`` read by
  ``tools/convert_to_rc.py``.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ..core.config import RCConfig
from ..core.errors import BankError, RCConfigError

__all__ = ['BASELINES', 'ParsedRCCfg', 'parse_rc_cfg', 'check_baseline',
           'bank_rc_config']

#: The segmentor's ``baseline`` values: ``'finetune'`` trains the plain
#: backbone with the task (single-task fine-tuning, and sequential
#: fine-tuning with ``load_from``); ``'shared'`` trains one plain backbone
#: for all tasks jointly (shared-encoder multi-task learning); ``'lora'``
#: freezes the plain backbone and gives every task its own PEFT LoRA adapter
#: (``model.lora_cfg``, :mod:`rc_adapter.mmseg.models.lora`). ``None``
#: builds the RC model.
BASELINES = ('finetune', 'shared', 'lora')

_LEGACY_MODES = {'rc': None, 'finetune': 'finetune', 'shared': 'shared'}


@dataclass(frozen=True)
class ParsedRCCfg:
    """What a config's ``model.rc_cfg`` (and ``model.baseline``) say.

    Attributes:
        config: The validated RC configuration.
        baseline: ``None`` (the RC model) or one of :data:`BASELINES`.
        ri: The deprecated ``rc_cfg.ri`` (None when the key is absent).
    """

    config: RCConfig
    baseline: Optional[str]
    ri: Optional[bool]


def check_baseline(baseline: Any, where: str = 'model.baseline'
                   ) -> Optional[str]:
    """Returns ``baseline`` if valid (None or one of :data:`BASELINES`).

    Raises:
        RCConfigError: naming the key and the valid values.
    """
    if baseline is not None and baseline not in BASELINES:
        raise RCConfigError(f'{where} must be None (the RC model) or one of '
                            f'{BASELINES}, got {baseline!r}')
    return baseline


def _deprecated(message: str) -> None:
    warnings.warn(message + ' (deprecated; accepted for one more release)',
                  DeprecationWarning, stacklevel=3)


def parse_rc_cfg(rc_cfg: Optional[Mapping[str, Any]], *,
                 baseline: Optional[str] = None,
                 where: str = 'model') -> ParsedRCCfg:
    """Validates a config's ``rc_cfg`` and ``baseline``.

    Args:
        rc_cfg: The ``model.rc_cfg`` dict (or an ``RCConfig``, or None for
            the defaults).
        baseline: The ``model.baseline`` value.
        where: Prefix of the keys in error messages (e.g. the config file).

    Returns:
        The parsed settings.

    Raises:
        RCConfigError: an unknown key or an invalid value (both named), or
            ``rc_cfg.mode`` contradicting ``baseline``.
    """
    check_baseline(baseline, f'{where}.baseline')
    if isinstance(rc_cfg, RCConfig):
        return ParsedRCCfg(rc_cfg, baseline, None)
    if rc_cfg is not None and not isinstance(rc_cfg, Mapping):
        raise RCConfigError(f'{where}.rc_cfg must be a dict, got '
                            f'{type(rc_cfg).__name__}')
    values = dict(rc_cfg or {})
    ri = None
    if 'mode' in values:
        mode = values.pop('mode')
        if mode not in _LEGACY_MODES:
            raise RCConfigError(f'{where}.rc_cfg.mode must be one of '
                                f'{tuple(_LEGACY_MODES)}, got {mode!r} '
                                f'(rc_cfg.mode is deprecated: use '
                                f'{where}.baseline)')
        mapped = _LEGACY_MODES[mode]
        if mapped is not None and baseline is not None \
                and mapped != baseline:
            raise RCConfigError(f'{where}.rc_cfg.mode={mode!r} contradicts '
                                f'{where}.baseline={baseline!r}; drop the '
                                f'deprecated rc_cfg.mode')
        _deprecated(f'{where}.rc_cfg.mode={mode!r}: use {where}.baseline='
                    f'{mapped!r} instead')
        if baseline is None:
            # mode='rc' (the old default, often inherited from a base
            # config) leaves an explicit baseline in force.
            baseline = mapped
    if 'ri' in values:
        ri = values.pop('ri')
        if not isinstance(ri, bool):
            raise RCConfigError(f'{where}.rc_cfg.ri must be True or False, '
                                f'got {ri!r}')
        _deprecated(f'{where}.rc_cfg.ri={ri!r}: Response Initialization is '
                    f'a conversion option now, set convert_cfg = dict('
                    f'ri={ri!r}) at the top level of the config')
    try:
        config = RCConfig.from_dict(values)
    except RCConfigError as err:
        raise RCConfigError(f'{where}.rc_cfg: {err}') from None
    return ParsedRCCfg(config, baseline, ri)


def bank_rc_config(bank: Any) -> RCConfig:
    """The :class:`RCConfig` a task bank was converted with.

    The manifest's ``config.rc_cfg`` is ``RCConfig.to_dict()``; banks written
    by earlier releases hold only some of the fields (``nff``,
    ``task_norms``, ``include``, ``exclude``): read by
    :meth:`RCConfig.from_manifest`, the others take the values those banks
    were made with (``modulator='full'``) or the defaults, so they still
    load. Compare banks and configs with ``RCConfig.architecture()``.

    Args:
        bank: A :class:`rc_adapter.TaskBank`.

    Returns:
        The bank's RC configuration.

    Raises:
        BankError: the stored ``rc_cfg`` is not a valid ``RCConfig``.
    """
    stored = bank.config.get('rc_cfg') or {}
    try:
        return RCConfig.from_manifest(stored)
    except (RCConfigError, TypeError) as err:
        raise BankError(f'bank {bank.path}: the manifest\'s rc_cfg '
                        f'{stored!r} is not a valid RCConfig: {err}') from None
