"""Config helpers without mmseg: values as plain JSON data, the datasets of
a config's dataloaders."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ['LOADERS', 'to_plain', 'iter_dataset_cfgs']

#: The dataloader keys of an mmengine config.
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


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


def iter_dataset_cfgs(cfg: Any, loaders: Sequence[str] = LOADERS
                      ) -> Iterator[dict]:
    """Yields the leaf dataset configs of the config's dataloaders.

    Wrappers are looked through: ``ConcatDataset`` (``datasets``) and
    ``RepeatDataset``-style wrappers (``dataset``).

    Args:
        cfg: An mmengine ``Config`` or config dict.
        loaders: Dataloader keys to visit. Defaults to train, val and test.
    """
    seen = set()
    for key in loaders:
        loader = cfg.get(key)
        if not loader or 'dataset' not in loader:
            continue
        stack = [loader['dataset']]
        while stack:
            dataset = stack.pop()
            if id(dataset) in seen:  # test_dataloader = val_dataloader
                continue
            seen.add(id(dataset))
            if 'datasets' in dataset:
                stack.extend(dataset['datasets'])
            elif 'dataset' in dataset:
                stack.append(dataset['dataset'])
            else:
                yield dataset
