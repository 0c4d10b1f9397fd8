"""Models registered in mmseg's MODELS registry."""
from .backbones import DeepLabResNet

__all__ = ['DeepLabResNet']
