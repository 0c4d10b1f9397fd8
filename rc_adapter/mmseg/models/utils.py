"""Helpers of the multi-task segmentor and the tools that build its parts."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

import torch.nn as nn
from mmengine.logging import MMLogger

from ...utils.config import to_plain
from .backbones import DEPRECATED_BACKBONE_NAMES

__all__ = ['backbone_architecture', 'backbone_is_pretrained',
           'quiet_init_weights', 'without_pretrained']

# Backbone config keys that do not change the architecture.
_NON_ARCH_KEYS = ('init_cfg', 'pretrained', 'checkpoint_path',
                  'pretrained_cfg_overlay')


def backbone_architecture(cfg: Optional[Mapping[str, Any]]
                          ) -> Optional[dict[str, Any]]:
    """The part of a backbone config that decides its tensors.

    A plain-JSON copy (:func:`rc_adapter.utils.config.to_plain`) without the
    keys that only affect initialisation (``init_cfg``, ``pretrained`` ...),
    with deprecated registered names replaced by their current ones, so a
    bank's stored backbone and a config's compare equal exactly when they
    build interchangeable networks.

    Args:
        cfg: A backbone config (e.g. ``cfg.model.backbone``), or None.

    Returns:
        The comparable dict (None for None).
    """
    if cfg is None:
        return None
    plain = to_plain(cfg)
    for key in _NON_ARCH_KEYS:
        plain.pop(key, None)
    if plain.get('type') in DEPRECATED_BACKBONE_NAMES:
        plain['type'] = DEPRECATED_BACKBONE_NAMES[plain['type']]
    return plain


def backbone_is_pretrained(cfg: Mapping[str, Any]) -> bool:
    """Whether a backbone config loads pretrained weights when it is
    initialised: an ``init_cfg`` (or one of a list) of type
    ``'Pretrained'`` with a ``checkpoint``, a ``pretrained`` value (mmseg's
    deprecated key, ``TIMMBackbone(pretrained=True)``) or timm's
    ``checkpoint_path``.

    Args:
        cfg: A backbone config.
    """
    init_cfgs = cfg.get('init_cfg') or []
    if isinstance(init_cfgs, Mapping):
        init_cfgs = [init_cfgs]
    if any(isinstance(c, Mapping) and c.get('type') == 'Pretrained'
           and c.get('checkpoint') for c in init_cfgs):
        return True
    return bool(cfg.get('pretrained')) or bool(cfg.get('checkpoint_path'))


def quiet_init_weights(module: nn.Module) -> None:
    """``module.init_weights()`` without mmengine's per-tensor INFO dump,
    then marks it initialised so a Runner cannot re-initialise it."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        module.init_weights()
    finally:
        logger.setLevel(level)
    module._is_init = True


def without_pretrained(backbone: dict[str, Any]) -> dict[str, Any]:
    """A backbone config that builds random weights: no ``init_cfg``, no
    ``pretrained`` download (``TIMMBackbone`` defaults to downloading).

    The weights always come from a checkpoint or a bank, never from the
    backbone's own init/download logic.
    """
    backbone = dict(backbone)
    backbone.pop('init_cfg', None)
    if backbone.get('type') == 'TIMMBackbone':
        backbone['pretrained'] = False
        backbone['checkpoint_path'] = ''
    elif 'pretrained' in backbone:
        backbone['pretrained'] = None
    return backbone
