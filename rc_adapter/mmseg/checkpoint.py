"""Loading checkpoints without unpickling arbitrary objects, and task banks
where mmseg expects a checkpoint.

**Weights-only, everywhere.** Every ``.pth``/``.pt`` file goes through
``torch.load(weights_only=True)`` -- ours explicitly, mmengine's (``Runner``,
``init_model``, ``MMSegInferencer``, mmseg's own ``tools/test.py``) by
torch's default. mmengine checkpoints hold a little more than tensors:
numpy scalars and arrays in ``meta``, mmengine ``HistoryBuffer`` objects in
``message_hub`` (pickled with ``getattr(HistoryBuffer, 'min')`` for their
statistics). :func:`register_safe_globals`, run when ``rc_adapter`` is
imported, adds exactly those data-only types to torch's weights-only
allow-list for the process (``torch.serialization.add_safe_globals``), with
``getattr`` restricted to the public methods of ``HistoryBuffer``. Anything
else (a class with a custom ``__reduce__``, ``os.system``, ``getattr`` on any
other object ...) is still refused by torch before any of it runs; our own
loader turns that refusal into a :class:`CheckpointError`.

Why register instead of writing checkpoints without those objects: the
loads that fail are mmengine's and mmseg's own (``init_model(cfg, ckpt)``,
``tools/test.py``, ``--resume``), which we cannot wrap in a scoped
``safe_globals`` block; checkpoints already written by earlier runs hold
them too; and ``resume`` needs the message hub's buffers back as
``HistoryBuffer`` objects, so stripping them would trade the failure for a
lossy resume. The allow-list holds only data types whose unpickling runs no
user-chosen code, so the process-wide registration widens nothing an
attacker can use.

**A bank where a checkpoint goes.** mmengine's checkpoint loader gets one more
scheme: a local path without a checkpoint file extension that is a task bank
folder (it holds ``manifest.json``) loads as ``{'state_dict':
{RC_BANK_STATE_KEY: path}}``, which ``RCMultiTaskSegmentor`` serves as
``model.bank=path`` would (its tasks load on first use). So
``init_model(cfg, BANK)``, ``MMSegInferencer(cfg, weights=BANK)`` and
``load_from = BANK`` (mmseg's ``tools/test.py CONFIG BANK``) run a bank. Any
other path goes to mmengine's own local loader unchanged.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import pickle
import re
from typing import Any, Iterator, Union

import torch

from ..core.errors import CheckpointError

__all__ = ['CheckpointError', 'RC_BANK_STATE_KEY', 'register_safe_globals',
           'safe_checkpoint_globals', 'load_checkpoint_dict',
           'load_state_dict_file', 'register_bank_checkpoint_loader',
           'load_from_local_or_task_bank']

#: The state-dict key through which a bank folder loaded as a checkpoint
#: reaches ``RCMultiTaskSegmentor`` (its value is the bank's path).
RC_BANK_STATE_KEY = '__rc_adapter_bank__'

# Local paths (no "scheme://") that do not end in a checkpoint file
# extension: the only paths the bank loader looks at.
_BANK_PATH_PATTERN = (r'(?![A-Za-z][\w+.-]*://)'
                      r'(?!.*\.(?:pth|pt|ckpt|bin|pkl|tar|safetensors)$)')

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


_REGISTERED = False


def register_safe_globals() -> None:
    """Adds the data-only globals of mmengine checkpoints to torch's
    weights-only allow-list for this process (idempotent; run by
    ``import rc_adapter``). See the module docstring for what is allowed
    and why process-wide."""
    global _REGISTERED
    if not _REGISTERED:
        torch.serialization.add_safe_globals(_allow_list())
        _REGISTERED = True


@contextlib.contextmanager
def safe_checkpoint_globals() -> Iterator[None]:
    """Allows the data-only globals of mmengine checkpoints, in this scope.

    Since :func:`register_safe_globals` runs on import this only matters
    where the process-wide list was changed by other code; kept for code
    written against earlier releases. Only the globals that are not
    registered already are added and then removed again (torch's
    ``safe_globals`` removes on exit whatever it was given, which would
    undo the process-wide registration). Nothing else becomes loadable.
    """
    present = set(torch.serialization.get_safe_globals())
    missing = [g for g in _allow_list() if g not in present]
    with torch.serialization.safe_globals(missing):
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


def load_from_local_or_task_bank(filename: str, map_location: Any = None
                                 ) -> dict:
    """mmengine checkpoint loader for local paths without a checkpoint
    extension: a task bank folder becomes ``{'state_dict':
    {RC_BANK_STATE_KEY: <absolute path>}, 'meta': {'dataset_meta': {},
    'rc_bank': <path>}}`` (the model finds its class names itself); any
    other path is loaded by mmengine's own local loader.

    Args:
        filename: The path given as checkpoint.
        map_location: As for ``torch.load``.
    """
    from mmengine.runner.checkpoint import load_from_local
    path = osp.expanduser(filename)
    if osp.isdir(path) and osp.isfile(osp.join(path, 'manifest.json')):
        path = osp.abspath(path)
        return {'state_dict': {RC_BANK_STATE_KEY: path},
                'meta': {'dataset_meta': {}, 'rc_bank': path}}
    return load_from_local(filename, map_location)


def register_bank_checkpoint_loader() -> None:
    """Registers :func:`load_from_local_or_task_bank` with mmengine's
    ``CheckpointLoader`` (run by ``import rc_adapter``; idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes=_BANK_PATH_PATTERN, loader=load_from_local_or_task_bank,
        force=True)
