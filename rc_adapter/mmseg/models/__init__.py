"""Models registered in mmseg's MODELS registry, and the task-head
protocol that lets any mmseg decode head serve a task."""
from .backbones import DeepLabResNet  # noqa: F401  (deprecated name)
from .backbones import MTDeepLabResNet
from .data_preprocessor import MTSegDataPreProcessor  # noqa: F401
from .heads import MTDeepLabV3PlusHead
from .losses import MaskedBCEWithLogitsLoss, MaskedL1Loss
from .segmentor import RCMultiTaskSegmentor, TaskHeads
from .task_head import (TASK_TYPES, MTHeadAdapter, MTTaskHeadMixin,
                        build_task_head, head_protocol, output_activation,
                        plain_head, split_head_cfg, to_prediction)

__all__ = ['MTDeepLabResNet', 'MTDeepLabV3PlusHead', 'TASK_TYPES',
           'MaskedBCEWithLogitsLoss', 'MaskedL1Loss', 'RCMultiTaskSegmentor',
           'TaskHeads', 'MTHeadAdapter', 'MTTaskHeadMixin', 'build_task_head',
           'head_protocol', 'split_head_cfg', 'plain_head',
           'output_activation', 'to_prediction']
