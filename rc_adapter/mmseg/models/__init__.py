"""Models registered in mmseg's MODELS registry."""
from .backbones import DeepLabResNet  # noqa: F401  (deprecated name)
from .backbones import MTDeepLabResNet
from .data_preprocessor import MTSegDataPreProcessor  # noqa: F401
from .heads import TASK_TYPES, MTDeepLabV3PlusHead
from .losses import MaskedBCEWithLogitsLoss, MaskedL1Loss
from .segmentor import RCMultiTaskSegmentor, TaskHeads

__all__ = ['MTDeepLabResNet', 'MTDeepLabV3PlusHead', 'TASK_TYPES',
           'MaskedBCEWithLogitsLoss', 'MaskedL1Loss', 'RCMultiTaskSegmentor',
           'TaskHeads']
