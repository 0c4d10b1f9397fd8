"""Multi-task datasets, registered in mmseg's ``DATASETS`` on import
(``PascalContextMTDataset``, ``NYUDMTDataset``), their label files
(:mod:`.labels`), label tables (:mod:`.meta`) and the annotation pre-flight
(:func:`check_annotations`). The label loader ``LoadMTAnnotations`` is a
transform: :mod:`rc_adapter.mmseg.transforms.loading`.
"""
import importlib
import warnings

from .check import check_annotations
from .labels import decode_human_parts, decode_normals, edges_from_labelmap
from .meta import (HUMAN_PART_CLASSES, HUMAN_PART_IDS, LABEL_PAD_VALUES,
                   NYU40_CLASSES, RESULT_KEYS, TASKS_NYUD, TASKS_PASCAL,
                   VOC_CLASSES)
from .multitask import NYUDMTDataset, PascalContextMTDataset

__all__ = ['PascalContextMTDataset', 'NYUDMTDataset', 'check_annotations',
           'decode_human_parts', 'decode_normals', 'edges_from_labelmap',
           'RESULT_KEYS', 'LABEL_PAD_VALUES', 'TASKS_PASCAL', 'TASKS_NYUD',
           'VOC_CLASSES', 'NYU40_CLASSES', 'HUMAN_PART_CLASSES',
           'HUMAN_PART_IDS']

# Old names, kept importable from here for one release (deprecated).
_MOVED = {
    'LoadMTAnnotations': ('rc_adapter.mmseg.transforms', 'LoadMTAnnotations'),
    'MTAnnotationError': ('rc_adapter.core.errors', 'AnnotationError'),
}


def __getattr__(name: str):
    if name in _MOVED:
        module, attr = _MOVED[name]
        warnings.warn(f'rc_adapter.mmseg.datasets.{name} is deprecated: use '
                      f'{module}.{attr}', DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
