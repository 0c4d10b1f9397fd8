"""The paper's DeepLabv3+ decoder as one mmseg decode head per task."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.aspp_head import ASPPModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from ...core.errors import RCConfigError

__all__ = ['MTDeepLabV3PlusHead', 'TASK_TYPES']

#: How each task type turns decoder outputs into predictions.
TASK_TYPES = ('segmentation', 'saliency', 'edge', 'normals', 'depth')


@MODELS.register_module()
class MTDeepLabV3PlusHead(BaseDecodeHead):
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
    contract: ``rc_adapter.mmseg.transforms.TASK_GT_PRED_FIELDS``).

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
        if task_type not in TASK_TYPES:
            raise RCConfigError(f'task_type must be one of {TASK_TYPES}, '
                                f'got {task_type!r}')
        if not gt_field.startswith('gt_'):
            raise RCConfigError(f"gt_field must start with 'gt_', got "
                                f'{gt_field!r}')
        kwargs.setdefault('dropout_ratio', 0.0)
        kwargs.setdefault('init_cfg', None)
        if task_type != 'segmentation':
            kwargs.setdefault('threshold', 0.5)
        super().__init__(**kwargs)
        self.task_type = task_type
        self.gt_field = gt_field
        self.pred_field = 'pred_' + gt_field[len('gt_'):]
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

    # -- outputs ---------------------------------------------------------
    def output_activation(self, logits):
        """The network's own output: normals are unit vectors."""
        if self.task_type == 'normals':
            return F.normalize(logits, dim=1)
        return logits

    def to_prediction(self, logits):
        """Turns (resized) logits into the ``pred_*`` field's values."""
        if self.task_type == 'segmentation':
            return logits.argmax(dim=1, keepdim=True)
        if self.task_type in ('saliency', 'edge'):
            return logits.sigmoid()
        return self.output_activation(logits)

    # -- losses ----------------------------------------------------------
    def _stack_batch_gt(self, batch_data_samples):
        try:
            return torch.stack([sample.get(self.gt_field).data
                                for sample in batch_data_samples])
        except AttributeError:
            raise RCConfigError(f'data samples have no {self.gt_field!r}; '
                                f'is the task loaded by the dataset '
                                f'(tasks=[...])?') from None

    def loss_by_feat(self, seg_logits, batch_data_samples):
        if self.task_type == 'segmentation':
            return super().loss_by_feat(seg_logits, batch_data_samples)
        target = self._stack_batch_gt(batch_data_samples)
        pred = resize(seg_logits, size=target.shape[2:], mode='bilinear',
                      align_corners=self.align_corners)
        pred = self.output_activation(pred)
        losses = {}
        loss_modules = self.loss_decode if isinstance(
            self.loss_decode, nn.ModuleList) else [self.loss_decode]
        for loss_module in loss_modules:
            value = loss_module(pred, target.to(pred.dtype))
            name = loss_module.loss_name
            losses[name] = losses.get(name, 0) + value
        return losses
