"""Loading checkpoints without unpickling arbitrary objects.

Every ``.pth``/``.pt`` file goes through ``torch.load(weights_only=True)``.
mmengine checkpoints hold a little more than tensors (numpy scalars in
``meta``, mmengine ``HistoryBuffer`` objects in ``message_hub``), so a short
allow-list of data-only globals is enabled for the duration of each load with
``torch.serialization.safe_globals`` -- never globally, and never by turning
weights-only loading off. A file that needs anything else (a class with a
custom ``__reduce__``, ``os.system`` ...) is refused with
:class:`CheckpointError` before any of it runs.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from typing import Any, Iterator, Union

import torch

from ..core.errors import CheckpointError

__all__ = ['CheckpointError', 'safe_checkpoint_globals',
           'load_checkpoint_dict', 'load_state_dict_file']

_CONTAINER_KEYS = ('state_dict', 'model', 'module')


def _history_buffer():
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:  # pragma: no cover - mmengine is a dependency
        return None
    return HistoryBuffer


def _restricted_getattr(obj, name):
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine pickles the statistics functions of ``HistoryBuffer``
    (``min``, ``max``, ``mean``, ``current`` ...) as
    ``getattr(HistoryBuffer, 'min')``. Only that exact pattern is allowed.
    """
    buffer_cls = _history_buffer()
    if (buffer_cls is not None and obj is buffer_cls
            and isinstance(name, str) and not name.startswith('_')
            and callable(getattr(buffer_cls, name, None))):
        return getattr(buffer_cls, name)
    raise pickle.UnpicklingError(
        f'getattr({type(obj).__name__}, {name!r}) is not allowed in a '
        f'weights-only checkpoint')


def _allow_list():
    import numpy as np
    allowed = [np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    allowed += [_reconstruct, scalar]
    # numpy >= 1.25 pickles dtypes as instances of numpy.dtypes.*DType.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                allowed.append(obj)
    buffer_cls = _history_buffer()
    if buffer_cls is not None:
        allowed.append(buffer_cls)
    allowed.append((_restricted_getattr, 'builtins.getattr'))
    return allowed


@contextlib.contextmanager
def safe_checkpoint_globals() -> Iterator[None]:
    """Allows the data-only globals of mmengine checkpoints, in this scope.

    Use it around mmengine calls that ``torch.load`` a checkpoint themselves
    (``runner.resume(...)``, ``runner.load_checkpoint(...)``,
    ``mmengine.runner.load_checkpoint``): with torch >= 2.6 those loads are
    weights-only and would otherwise fail on numpy scalars in ``meta``.
    Nothing else becomes loadable.
    """
    with torch.serialization.safe_globals(_allow_list()):
        yield


def _refusal(path, err):
    text = str(err)
    found = sorted(set(re.findall(r'GLOBAL ([\w.]+)', text)))
    if not found:
        found = sorted(set(re.findall(r'Unsupported global: ([\w.]+)',
                                      text)))
    detail = re.search(r'WeightsUnpickler error:\s*(.*?)\s*(?:Check the|$)',
                       text, re.S)
    detail = (detail.group(1) if detail else text).strip()
    what = (f'it references {", ".join(found)}' if found
            else f'unpickler: {" ".join(detail.split())[:200]}')
    return CheckpointError(
        f'{path}: refused to load: this file is not a weights-only '
        f'checkpoint and loading it would run arbitrary code ({what}). '
        f'Nothing from it was executed. If you trust its origin, re-save '
        f'its tensors as a state dict (or .safetensors) and pass that file.')


def load_checkpoint_dict(path: Union[str, os.PathLike],
                         map_location: Any = 'cpu') -> Any:
    """Loads a whole checkpoint (e.g. an mmengine one) weights-only.

    Args:
        path (str | os.PathLike): ``.pth``/``.pt`` (torch zip or legacy
            format) or ``.safetensors``.
        map_location: Passed to ``torch.load``. Defaults to ``'cpu'``.

    Returns:
        dict | object: what the file holds (tensors, dicts, lists, numbers,
        strings, numpy scalars/arrays, mmengine ``HistoryBuffer``).

    Raises:
        CheckpointError: the file is missing, unreadable, or would need
            arbitrary unpickling.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such checkpoint file')
    if path.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device=str(map_location))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f'{path}: not a readable safetensors file '
                                  f'({err})')
    try:
        with safe_checkpoint_globals():
            return torch.load(path, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as err:
        if 'weights only' in str(err).lower() or 'GLOBAL' in str(err):
            raise _refusal(path, err) from None
        raise CheckpointError(f'{path}: unreadable checkpoint ({err})') \
            from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError,
            AttributeError, TypeError) as err:
        raise CheckpointError(f'{path}: unreadable checkpoint '
                              f'({type(err).__name__}: {err})') from None


def _unwrap(obj):
    while isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        else:
            return obj
    return obj


def load_state_dict_file(path: Union[str, os.PathLike]
                         ) -> dict[str, torch.Tensor]:
    """Loads the tensors of a weights file as a flat state dict.

    ``.safetensors`` files are read with safetensors, anything else with
    :func:`load_checkpoint_dict` (weights-only). ``state_dict``/``model``/
    ``module`` containers are unwrapped (mmengine, DeiT-style and DDP
    checkpoints); non-tensor entries are dropped. Key prefixes are left as
    they are.

    Args:
        path (str | os.PathLike): The checkpoint.

    Returns:
        dict[str, Tensor]: the tensors, on the CPU.

    Raises:
        CheckpointError: missing/unreadable/unsafe file, or no tensors.
    """
    obj = _unwrap(load_checkpoint_dict(path))
    if not isinstance(obj, dict):
        raise CheckpointError(f'{os.fspath(path)}: holds a '
                              f'{type(obj).__name__}, not a state dict')
    state = {k: v for k, v in obj.items()
             if isinstance(k, str) and torch.is_tensor(v)}
    if not state:
        raise CheckpointError(f'{os.fspath(path)}: no tensors found (keys: '
                              f'{list(obj)[:8]})')
    return state

