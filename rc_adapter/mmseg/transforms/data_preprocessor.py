"""Deprecated module, kept for one release so old imports keep working.

``MTSegDataPreProcessor`` (a model component, registered in ``MODELS``) is
now in :mod:`rc_adapter.mmseg.models.data_preprocessor`, where mmseg keeps
its own ``SegDataPreProcessor``. Nothing is defined here.
"""
import warnings

from ..models.data_preprocessor import (MT_FIELD_PAD_VALS,  # noqa: F401
                                        MTSegDataPreProcessor,
                                        mt_stack_batch)

warnings.warn('rc_adapter.mmseg.transforms.data_preprocessor is deprecated: '
              'import MTSegDataPreProcessor from rc_adapter.mmseg.models',
              DeprecationWarning, stacklevel=2)
