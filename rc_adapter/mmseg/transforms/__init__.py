"""Multi-task pipeline transforms, registered in mmseg's ``TRANSFORMS`` on
import: the label loader (``LoadMTAnnotations``), resize / scale / flip /
pad that know depth and normals, and the packer (``MTPackSegInputs``).

The data preprocessor ``MTSegDataPreProcessor`` is a model component:
:mod:`rc_adapter.mmseg.models.data_preprocessor`.
"""
import importlib
import warnings

from .formatting import MT_GT_FIELDS, TASK_GT_PRED_FIELDS, MTPackSegInputs
from .geometric import (DEFAULT_SEG_PAD_VALS, MTPadToSize, MTRandomFlip,
                        MTRandomScale, MTResize, flip_normals,
                        normalize_normals, resize_masked)
from .loading import LoadMTAnnotations

__all__ = [
    'LoadMTAnnotations', 'MTResize', 'MTRandomScale', 'MTRandomFlip',
    'MTPadToSize', 'MTPackSegInputs', 'flip_normals', 'normalize_normals',
    'resize_masked', 'MT_GT_FIELDS', 'TASK_GT_PRED_FIELDS',
    'DEFAULT_SEG_PAD_VALS'
]

# Old names, kept importable from here for one release (deprecated).
_MOVED = ('MTSegDataPreProcessor', 'mt_stack_batch', 'MT_FIELD_PAD_VALS')


def __getattr__(name: str):
    if name in _MOVED:
        module = 'rc_adapter.mmseg.models.data_preprocessor'
        warnings.warn(f'rc_adapter.mmseg.transforms.{name} is deprecated: '
                      f'use {module}.{name}', DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
