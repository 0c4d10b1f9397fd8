"""The paper's DeepLabv3+ decoder as one mmseg decode head per task."""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.aspp_head import ASPPModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from .task_head import TASK_TYPES, MTTaskHeadMixin

__all__ = ['MTDeepLabV3PlusHead', 'TASK_TYPES']


@MODELS.register_module()
class MTDeepLabV3PlusHead(MTTaskHeadMixin, BaseDecodeHead):
    """The DeepLabv3+ decoder of Kanakis et al. (ECCV 2020, arXiv
    2007.12540) for one task, as ``docs/method.md`` ("DeepLabv3+ on
    ResNet-18") describes it.

    Image pooling + ASPP (1x1 and 3x3 convs at ``dilations``) on the last
    feature map, a 1x1 fusion to ``channels``, bilinear upsampling to the
    low-level (stride-4) features reduced to ``c1_channels`` by a 1x1 conv,
    two 3x3 convs and a 1x1 predictor with bias. All convs are initialised
    N(0, 0.01) as in the paper; there is no dropout by default.

    The head reads its ground truth from ``gt_field`` of each data sample
    and the segmentor writes its prediction to ``pred_<...>`` (the field
    contract: ``rc_adapter.mmseg.transforms.TASK_GT_PRED_FIELDS``); the
    protocol (outputs, predictions, dense losses) is
    :class:`~rc_adapter.mmseg.models.task_head.MTTaskHeadMixin`.

    Args:
        task_type (str): One of :data:`TASK_TYPES`: ``segmentation``
            (logits, argmax), ``saliency``/``edge`` (one logit, sigmoid),
            ``normals`` (3 channels, L2-normalised), ``depth`` (raw).
        gt_field (str): Data-sample field with this task's labels, e.g.
            ``'gt_sem_seg'``.
        dilations (tuple[int]): ASPP rates. Defaults to (1, 6, 12, 18).
        c1_in_channels (int): Channels of the low-level features.
        c1_channels (int): Reduced low-level channels. Defaults to 48.
        c1_index (int): Index of the low-level features. Defaults to 0.
        **kwargs: ``BaseDecodeHead`` arguments (``in_channels``,
            ``channels``, ``num_classes``, ``in_index``, ``loss_decode``...).
    """

    def __init__(self, task_type, gt_field, dilations=(1, 6, 12, 18),
                 c1_in_channels=64, c1_channels=48, c1_index=0, **kwargs):
        kwargs.setdefault('dropout_ratio', 0.0)
        kwargs.setdefault('init_cfg', None)
        if task_type != 'segmentation':
            kwargs.setdefault('threshold', 0.5)
        super().__init__(**kwargs)
        self._init_protocol(task_type, gt_field)
        self.c1_index = c1_index
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                      act_cfg=self.act_cfg)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvModule(self.in_channels, self.channels, 1, **common))
        self.aspp_modules = ASPPModule(dilations, self.in_channels,
                                       self.channels, **common)
        self.bottleneck = ConvModule((len(dilations) + 1) * self.channels,
                                     self.channels, 1, **common)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1,
                                        **common)
        self.fuse = nn.Sequential(
            ConvModule(self.channels + c1_channels, self.channels, 3,
                       padding=1, **common),
            ConvModule(self.channels, self.channels, 3, padding=1,
                       **common))

    def init_weights(self):
        """Paper init: every conv weight N(0, 0.01) (the predictor's bias
        keeps PyTorch's default); norms 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._is_init = True

    def forward(self, inputs):
        """Decoder output (logits) at the low-level features' resolution."""
        x = self._transform_inputs(inputs)
        pooled = resize(self.image_pool(x), size=x.shape[2:],
                        mode='bilinear', align_corners=self.align_corners)
        x = self.bottleneck(torch.cat([pooled] + self.aspp_modules(x),
                                      dim=1))
        low = self.c1_bottleneck(inputs[self.c1_index])
        x = resize(x, size=low.shape[2:], mode='bilinear',
                   align_corners=self.align_corners)
        return self.cls_seg(self.fuse(torch.cat([x, low], dim=1)))
