"""Multi-task transforms, packer and data preprocessor, registered in mmseg's
``TRANSFORMS`` / ``MODELS`` registries on import.

The label loader (``LoadMTAnnotations``) lives with the datasets.
"""
from .data_preprocessor import (MT_FIELD_PAD_VALS, MTSegDataPreProcessor,
                                mt_stack_batch)
from .formatting import (MT_GT_FIELDS, TASK_GT_PRED_FIELDS,
                         MTPackSegInputs)
from .geometric import (DEFAULT_SEG_PAD_VALS, MTPadToSize, MTRandomFlip,
                        MTRandomScale, MTResize, flip_normals,
                        normalize_normals, resize_masked)

__all__ = [
    'MTResize', 'MTRandomScale', 'MTRandomFlip', 'MTPadToSize',
    'MTPackSegInputs', 'MTSegDataPreProcessor', 'mt_stack_batch',
    'flip_normals', 'normalize_normals', 'resize_masked', 'MT_GT_FIELDS',
    'TASK_GT_PRED_FIELDS', 'MT_FIELD_PAD_VALS', 'DEFAULT_SEG_PAD_VALS'
]
