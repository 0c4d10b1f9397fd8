"""Deprecated module, kept for one release so old imports keep working.

``LoadMTAnnotations`` is now in :mod:`rc_adapter.mmseg.transforms.loading`
(where mmseg keeps its loaders), the label readers and decoders in
:mod:`rc_adapter.mmseg.datasets.labels`, and ``MTAnnotationError`` is
:class:`rc_adapter.core.errors.AnnotationError`. Nothing is defined here.
"""
import warnings

from ...core.errors import AnnotationError as MTAnnotationError  # noqa: F401
from ..transforms.loading import LoadMTAnnotations  # noqa: F401
from .labels import (decode_human_parts, decode_normals,  # noqa: F401
                     edges_from_labelmap, image_size, person_class_ids,
                     read_image_file, read_mat)

warnings.warn('rc_adapter.mmseg.datasets.loading is deprecated: import '
              'LoadMTAnnotations from rc_adapter.mmseg.transforms and the '
              'label decoders from rc_adapter.mmseg.datasets.labels',
              DeprecationWarning, stacklevel=2)
