"""Config values as plain JSON data."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ['to_plain']


def to_plain(value: Any) -> Any:
    """A JSON-ready copy of a config value.

    Mappings (``dict``, mmengine ``ConfigDict``) become dicts with string
    keys, tuples and lists become lists, numpy scalars and arrays become
    Python numbers and lists; everything else is returned as it is.

    Args:
        value: A config value (e.g. ``cfg.model.backbone``).

    Returns:
        The same data built from dicts, lists, strings, numbers, booleans and
        None only (when ``value`` holds nothing else).
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
