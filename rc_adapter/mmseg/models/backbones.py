"""Backbones."""
from mmseg.models.backbones import ResNet
from mmseg.registry import MODELS


@MODELS.register_module()
class DeepLabResNet(ResNet):
    """mmseg ``ResNet`` whose dilated BasicBlocks dilate *both* 3x3 convs.

    mmseg's ``BasicBlock`` dilates only ``conv1``; torchvision/timm ResNets
    and the RCM paper's DeepLabv3+ encoder dilate ``conv2`` too. Keys are
    identical to ``ResNet`` (torchvision names), so torchvision checkpoints
    load unchanged. Bottleneck blocks are left as mmseg builds them.

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
