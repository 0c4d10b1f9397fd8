"""Synthetic multi-task benchmark: procedural 3D rooms rendered by numpy ray
casting, written in the on-disk layouts of NYUD_MT and PASCAL_MT.

Depends on numpy, scipy and OpenCV only (no mmseg; from rc_adapter only
the error classes and the VOC palette), so it can run anywhere.
"""
from .render import (PART_NAME_TO_ID, PART_NAMES, TYPE_NAMES,
                     edges_from_render, render, sample_scene)
from .writers import (LAYOUTS, encode_normals, generate, is_current,
                      make_pascal_anno, write_preview)

__all__ = ['generate', 'is_current', 'sample_scene', 'render',
           'edges_from_render', 'make_pascal_anno', 'encode_normals',
           'write_preview', 'LAYOUTS', 'PART_NAMES', 'PART_NAME_TO_ID',
           'TYPE_NAMES']
