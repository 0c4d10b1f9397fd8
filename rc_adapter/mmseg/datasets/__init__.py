"""Registered in mmseg's registries on import: the multi-task datasets
(``PascalContextMTDataset``, ``NYUDMTDataset``) and their label loader
(``LoadMTAnnotations``)."""
from .loading import (LoadMTAnnotations, MTAnnotationError, decode_human_parts,
                      decode_normals, edges_from_labelmap)
from .meta import (HUMAN_PART_CLASSES, HUMAN_PART_IDS, NYU40_CLASSES,
                   RESULT_KEYS, TASKS_NYUD, TASKS_PASCAL, VOC_CLASSES)
from .multitask import NYUDMTDataset, PascalContextMTDataset

__all__ = ['PascalContextMTDataset', 'NYUDMTDataset', 'LoadMTAnnotations',
           'MTAnnotationError', 'decode_human_parts', 'decode_normals',
           'edges_from_labelmap', 'RESULT_KEYS', 'TASKS_PASCAL', 'TASKS_NYUD',
           'VOC_CLASSES', 'NYU40_CLASSES', 'HUMAN_PART_CLASSES',
           'HUMAN_PART_IDS']
