"""Models registered in mmseg's MODELS registry."""
from .backbones import DeepLabResNet
from .data_preprocessor import MTSegDataPreProcessor  # noqa: F401
from .heads import TASK_TYPES, MTDeepLabV3PlusHead
from .losses import MaskedBCEWithLogitsLoss, MaskedL1Loss
from .segmentor import RC_MODES, RCMultiTaskSegmentor, TaskHeads

__all__ = ['DeepLabResNet', 'MTDeepLabV3PlusHead', 'TASK_TYPES', 'MaskedBCEWithLogitsLoss', 'MaskedL1Loss',
           'RC_MODES', 'RCMultiTaskSegmentor', 'TaskHeads']
