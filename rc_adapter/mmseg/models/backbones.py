"""Backbones registered in mmseg's ``MODELS`` registry."""
import warnings

from mmseg.models.backbones import ResNet
from mmseg.registry import MODELS

__all__ = ['MTDeepLabResNet', 'DEPRECATED_BACKBONE_NAMES']

#: Registered names of earlier releases -> their current name. The old
#: names still build (with a ``DeprecationWarning``) for one release, and a
#: bank converted under an old name matches a config using the new one.
DEPRECATED_BACKBONE_NAMES = {'DeepLabResNet': 'MTDeepLabResNet'}


@MODELS.register_module()
class MTDeepLabResNet(ResNet):
    """mmseg ``ResNet`` whose dilated BasicBlocks dilate *both* 3x3 convs.

    mmseg's ``BasicBlock`` dilates only ``conv1``; torchvision/timm ResNets
    and the DeepLabv3+ encoder of Kanakis et al. (ECCV 2020; see
    ``docs/method.md``, "DeepLabv3+ on ResNet-18") dilate ``conv2`` too.
    Keys are identical to ``ResNet`` (torchvision names), so torchvision
    checkpoints load unchanged. Bottleneck blocks are left as mmseg builds
    them.

    Args:
        **kwargs: Arguments of mmseg's ``ResNet``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for layer_name in self.res_layers:
            for block in getattr(self, layer_name):
                if hasattr(block, 'conv3'):  # Bottleneck: unchanged
                    continue
                dilation = block.conv1.dilation
                block.conv2.dilation = dilation
                block.conv2.padding = dilation


@MODELS.register_module(name='DeepLabResNet')
class DeepLabResNet(MTDeepLabResNet):
    """Deprecated registered name of :class:`MTDeepLabResNet` (one more
    release); builds the same network and warns."""

    def __init__(self, **kwargs):
        warnings.warn("the backbone type 'DeepLabResNet' is deprecated "
                      "(accepted for one more release): use "
                      "type='MTDeepLabResNet'", DeprecationWarning,
                      stacklevel=2)
        super().__init__(**kwargs)
