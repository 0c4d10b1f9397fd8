"""Masked dense losses for the non-segmentation tasks, as the official RCM
repository (github.com/menelaoskanakis/RCM) computes them; see
``docs/method.md``, "Losses"."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

__all__ = ['MaskedL1Loss', 'MaskedBCEWithLogitsLoss']


@MODELS.register_module()
class MaskedL1Loss(nn.Module):
    """L1 over valid pixels: the depth and surface-normal loss.

    A pixel is valid when its target is non-zero in any channel (0 marks
    invalid depth and invalid/padded normals). The loss is the mean absolute
    error over the valid elements, i.e. ``sum |p - t| / (C * #valid)`` as
    the reference computes it.

    Args:
        loss_weight (float): Multiplier. Defaults to 1.0.
        loss_name (str): Key in the loss dict. Defaults to ``'loss_l1'``.
    """

    def __init__(self, loss_weight=1.0, loss_name='loss_l1'):
        super().__init__()
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    def forward(self, pred, target, **kwargs):
        """Args: pred, target (Tensor): (N, C, H, W)."""
        valid = (target != 0).any(dim=1, keepdim=True).expand_as(target)
        count = valid.sum()
        if count == 0:
            return pred.sum() * 0.0
        loss = (pred - target).abs()[valid].sum() / count
        return self.loss_weight * loss

    @property
    def loss_name(self):
        return self._loss_name


@MODELS.register_module()
class MaskedBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on logits over non-ignored pixels.

    With ``pos_weight=w`` it is the reference's balanced edge loss:
    ``(w * sum_pos + (1 - w) * sum_neg) / #valid`` with a fixed ``w`` (0.95
    for edges); without it, the plain mean over valid pixels (saliency).
    Targets are binarised at 0.5; ``ignore_index`` pixels do not count.

    Args:
        pos_weight (float, optional): Weight of positive pixels.
        ignore_index (int): Ignored label value. Defaults to 255.
        loss_weight (float): Multiplier. Defaults to 1.0.
        loss_name (str): Key in the loss dict. Defaults to ``'loss_bce'``.
    """

    def __init__(self, pos_weight=None, ignore_index=255, loss_weight=1.0,
                 loss_name='loss_bce'):
        super().__init__()
        self.pos_weight = pos_weight
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    def forward(self, pred, target, **kwargs):
        """Args: pred (Tensor): logits (N, 1, H, W); target: labels."""
        target = target.to(pred.dtype)
        valid = target != self.ignore_index
        count = valid.sum()
        if count == 0:
            return pred.sum() * 0.0
        binary = (target > 0.5).to(pred.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(
            pred, binary, reduction='none')
        if self.pos_weight is not None:
            weight = torch.where(binary > 0, self.pos_weight,
                                 1.0 - self.pos_weight)
            per_pixel = per_pixel * weight
        loss = per_pixel[valid].sum() / count
        return self.loss_weight * loss

    @property
    def loss_name(self):
        return self._loss_name
