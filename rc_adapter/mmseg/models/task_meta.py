"""Class names and palettes of a multi-task model's segmentation tasks.

mmseg's inference and visualisation read ``model.dataset_meta`` (``classes``
and ``palette`` of the ``pred_sem_seg`` map). A multi-task model has one
class list per segmentation task, found here, per task, in this order:

1. set on the model (``model.dataset_meta = ...``, which mmseg's
   ``init_model`` does from a checkpoint's ``meta['dataset_meta']``);
2. the task's entry in the task bank's manifest (``info['classes']`` and
   ``info['palette']``, written when the task was trained);
3. the config the model was built from (``model.cfg``, set by mmseg's
   ``init_model`` and ``MMSegInferencer``): the metainfo of its test, val
   or train dataset (``task_classes``/``task_palettes`` of the multi-task
   datasets, ``classes``/``palette`` for ``semseg``);
4. the tables of the known tasks (NYUD's 41 ``semseg`` classes, PASCAL's
   21, the 7 human parts);
5. ``'0'``, ``'1'`` ... with the VOC palette.

A class list is used only if it has as many names as the task's head has
classes, so a 41-class head is never labelled with another dataset's names.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Optional

from mmseg.registry import DATASETS

from ...utils.config import iter_dataset_cfgs, to_plain
from ...utils.palette import voc_palette
from ..datasets.meta import (HUMAN_PART_CLASSES, HUMAN_PART_PALETTE,
                             NYU40_CLASSES, NYU40_PALETTE, VOC_CLASSES,
                             VOC_PALETTE)

__all__ = ['KNOWN_TASK_CLASSES', 'ClassMeta', 'config_class_meta',
           'bank_class_meta', 'meta_class_overrides', 'resolve_class_meta']

#: (task name, number of classes) -> (class names, palette).
KNOWN_TASK_CLASSES = {
    ('semseg', len(NYU40_CLASSES)): (NYU40_CLASSES, NYU40_PALETTE),
    ('semseg', len(VOC_CLASSES)): (VOC_CLASSES, VOC_PALETTE),
    ('human_parts', len(HUMAN_PART_CLASSES)): (HUMAN_PART_CLASSES,
                                               HUMAN_PART_PALETTE),
}

#: task -> (classes, palette or None)
ClassMeta = dict

_LOADERS = ('test_dataloader', 'val_dataloader', 'train_dataloader')


def _pairs(classes: Any, palette: Any) -> Optional[tuple]:
    if not classes:
        return None
    return (tuple(str(c) for c in classes),
            [list(map(int, c)) for c in palette] if palette else None)


def _from_metainfo(meta: Mapping) -> ClassMeta:
    found = {}
    task_classes = meta.get('task_classes') or {}
    task_palettes = meta.get('task_palettes') or {}
    for task, classes in task_classes.items():
        pair = _pairs(classes, task_palettes.get(task))
        if pair:
            found[task] = pair
    if 'semseg' not in found:
        pair = _pairs(meta.get('classes'), meta.get('palette'))
        if pair:
            found['semseg'] = pair
    return found


def config_class_meta(cfg: Any) -> ClassMeta:
    """Class names per task from a config's datasets, without building
    them: the dataset class's ``METAINFO`` updated with the dataset
    config's ``metainfo``. The test, val and train datasets are read in
    that order; the first one naming a task wins.

    Args:
        cfg: An mmseg ``Config`` or config dict (or None).

    Returns:
        ``{task: (classes, palette or None)}``.
    """
    found: ClassMeta = {}
    if cfg is None or not hasattr(cfg, 'get'):  # a Config is no Mapping
        return found
    for dataset in iter_dataset_cfgs(cfg, _LOADERS):
        if isinstance(dataset, Mapping):
            dataset_type = dataset.get('type')
            dataset_cls = DATASETS.get(dataset_type) if isinstance(
                dataset_type, str) else dataset_type
            meta = dict(getattr(dataset_cls, 'METAINFO', None) or {})
            meta.update(to_plain(dataset.get('metainfo') or {}))
            for task, pair in _from_metainfo(meta).items():
                found.setdefault(task, pair)
    return found


def bank_class_meta(manifest_tasks: Mapping[str, Mapping]) -> ClassMeta:
    """Class names per task from a bank manifest's task entries
    (``info['classes']``, ``info['palette']``).

    Args:
        manifest_tasks: ``manifest['tasks']`` of a task bank.
    """
    found: ClassMeta = {}
    for task, entry in manifest_tasks.items():
        info = (entry or {}).get('info') or {}
        pair = _pairs(info.get('classes'), info.get('palette'))
        if pair:
            found[task] = pair
    return found


def meta_class_overrides(meta: Optional[Mapping], primary: Optional[str]
                         ) -> ClassMeta:
    """Class names per task from a ``dataset_meta`` dict set on a model:
    ``task_classes``/``task_palettes`` per task, and ``classes``/
    ``palette`` for the ``primary`` task (the one drawn as
    ``pred_sem_seg``)."""
    if not meta:
        return {}
    found = {task: pair for task, pair in _from_metainfo(
        {'task_classes': meta.get('task_classes'),
         'task_palettes': meta.get('task_palettes')}).items()}
    pair = _pairs(meta.get('classes'), meta.get('palette'))
    if pair and primary is not None:
        found[primary] = pair
    return found


def resolve_class_meta(task: str, num_classes: int,
                       sources: list[tuple[str, ClassMeta]]
                       ) -> tuple[tuple, list, str]:
    """The class names and palette of one segmentation task.

    Args:
        task: The task name.
        num_classes: Classes of its head.
        sources: ``(name, {task: (classes, palette)})`` in priority order
            (see the module docstring); a source whose list has another
            length is skipped with a warning naming it.

    Returns:
        ``(classes, palette, source name)``.
    """
    for name, found in sources:
        pair = found.get(task)
        if pair is None:
            continue
        classes, palette = pair
        if len(classes) != num_classes:
            warnings.warn(f'{name}: {len(classes)} class names for task '
                          f'{task!r}, whose head has {num_classes} classes; '
                          f'not used')
            continue
        if palette is None or len(palette) != num_classes:
            palette = voc_palette(num_classes).tolist()
        return classes, palette, name
    known = KNOWN_TASK_CLASSES.get((task, num_classes))
    if known is not None:
        return tuple(known[0]), [list(c) for c in known[1]], 'known tables'
    return (tuple(str(i) for i in range(num_classes)),
            voc_palette(num_classes).tolist(), 'class ids')
