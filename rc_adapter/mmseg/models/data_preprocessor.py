"""``MTSegDataPreProcessor``: mmseg's preprocessor with per-field padding.

mmseg's ``stack_batch`` pads only ``gt_sem_seg``, ``gt_edge_map`` and
``gt_depth_map``, all with ``seg_pad_val`` (255), so padded depth becomes
"255 m, valid". Here every ``PixelData`` field of the multi-task contract is
padded with its own value (``LABEL_PAD_VALUES``):

* class-label maps ``gt_sem_seg``, ``gt_parts_seg``, ``gt_sal_map``,
  ``gt_edge_map``: 255 (ignored by losses and metrics);
* ``gt_normal_map`` and ``gt_depth_map``: 0, which *means invalid*: the heads
  build their valid masks from it (normals: vector != 0, depth: value > 0),
  so no separate mask field is carried.

Batch geometry: with neither ``size`` nor ``size_divisor`` a batch is padded
only up to its largest image, so fixed-size training crops (425x560 on
NYUD) reach the network unchanged, as in the reference. It lives in mmseg's
``MODELS`` registry (like ``SegDataPreProcessor``).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mmseg.models import SegDataPreProcessor
from mmseg.registry import MODELS

from ...core.errors import RCConfigError
from ..datasets.meta import LABEL_PAD_VALUES
from ..transforms.formatting import TASK_GT_PRED_FIELDS

__all__ = ['MT_FIELD_PAD_VALS', 'mt_stack_batch', 'MTSegDataPreProcessor']

#: data sample field -> pad value used by MTSegDataPreProcessor
MT_FIELD_PAD_VALS = {TASK_GT_PRED_FIELDS[task][0]: value
                     for task, value in LABEL_PAD_VALUES.items()}


def mt_stack_batch(inputs: List[torch.Tensor],
                   data_samples: Optional[Sequence] = None,
                   size: Optional[Tuple[int, int]] = None,
                   size_divisor: Optional[int] = None,
                   pad_val: float = 0,
                   field_pad_vals: Optional[Dict[str, float]] = None
                   ) -> Tuple[torch.Tensor, list]:
    """Pad (bottom/right) and stack images; pad every label field per key.

    Target size: ``size`` if given, else the batch's largest height and
    width, rounded up to a multiple of ``size_divisor`` if that is given
    (at most one of the two). Each ``PixelData`` field listed in
    ``field_pad_vals`` is padded with its own value.

    Args:
        inputs: CxHxW images.
        data_samples: Samples to pad in place (None: return padding dicts).
        size: Fixed (h, w) to pad to.
        size_divisor: Pad to a multiple of this.
        pad_val: Image pad value.
        field_pad_vals: Field -> pad value; defaults to
            :data:`MT_FIELD_PAD_VALS`.

    Returns:
        The BxCxHxW tensor and the list of samples (or, without samples, of
        ``dict(img_padding_size=..., pad_shape=...)``).
    """
    if not isinstance(inputs, list) or len(inputs) == 0:
        raise TypeError('mt_stack_batch: inputs must be a non-empty list of '
                        'CxHxW tensors')
    if any(t.ndim != 3 for t in inputs) or len(
            {t.shape[0] for t in inputs}) != 1:
        raise ValueError('mt_stack_batch: inputs must be CxHxW with equal C, '
                         f'got {[tuple(t.shape) for t in inputs]}')
    if size is not None and size_divisor is not None:
        raise RCConfigError('MTSegDataPreProcessor: give at most one of size '
                            f'({size}) and size_divisor ({size_divisor})')
    vals = MT_FIELD_PAD_VALS if field_pad_vals is None else field_pad_vals
    max_size = np.stack([t.shape[-2:] for t in inputs]).max(0)
    if size_divisor is not None and size_divisor > 1:
        max_size = (max_size + size_divisor - 1) // size_divisor * size_divisor
    target = max_size if size is None else np.asarray(size[-2:])
    padded_inputs, padded_samples = [], []
    for i, tensor in enumerate(inputs):
        height = max(int(target[0]) - tensor.shape[-2], 0)
        width = max(int(target[1]) - tensor.shape[-1], 0)
        padding_size = (0, width, 0, height)  # left, right, top, bottom
        padded_inputs.append(F.pad(tensor, padding_size, value=pad_val))
        if data_samples is None:
            padded_samples.append(dict(img_padding_size=padding_size,
                                       pad_shape=padded_inputs[-1].shape[-2:]))
            continue
        sample = data_samples[i]
        for field, value in vals.items():
            if field not in sample:
                continue
            data = sample.get(field).data
            if data.shape[-2:] != tensor.shape[-2:]:
                raise ValueError(
                    f'mt_stack_batch: {field} is {tuple(data.shape[-2:])} but '
                    f'the image is {tuple(tensor.shape[-2:])} '
                    f'({sample.metainfo.get("img_path")})')
            pixel = sample.get(field)
            del pixel.data
            pixel.data = F.pad(data, padding_size, value=value)
        sample.set_metainfo({
            'img_shape': tuple(tensor.shape[-2:]),
            'pad_shape': tuple(padded_inputs[-1].shape[-2:]),
            'padding_size': padding_size,
        })
        padded_samples.append(sample)
    return torch.stack(padded_inputs, dim=0), padded_samples


@MODELS.register_module()
class MTSegDataPreProcessor(SegDataPreProcessor):
    """``SegDataPreProcessor`` that pads every multi-task field correctly.

    Images: cast, BGR->RGB (``bgr_to_rgb``), normalised with ``mean``/``std``
    and padded with ``pad_val`` like the parent, but to the batch's largest
    image when neither ``size`` nor ``size_divisor`` is given (mmseg
    requires one). Training: labels are padded with
    :data:`MT_FIELD_PAD_VALS` (override per field with ``field_pad_vals``):
    255 for class labels, 0 (= invalid) for depth and normals. Sets
    ``img_shape``/``pad_shape``/``padding_size`` metainfo.

    Test: ground truth is not padded (metrics compare with un-padded GT at
    ``ori_shape``); images are padded by ``test_cfg`` (``size`` or
    ``size_divisor``) if given, else to the batch's largest image. A
    ``center_padding`` meta entry (from ``MTPadToSize``) is added to the
    batch padding and written as both ``img_padding_size`` and
    ``padding_size`` (left, right, top, bottom), so the segmentor (and
    mmseg's ``postprocess_result``, which reads ``img_padding_size`` first)
    crops predictions back to the original image.

    Args:
        field_pad_vals: Field -> pad value, merged over
            :data:`MT_FIELD_PAD_VALS`.
        **kwargs: Every argument of ``SegDataPreProcessor`` (``mean``,
            ``std``, ``size``, ``size_divisor``, ``pad_val``,
            ``bgr_to_rgb``, ``test_cfg``, ...). ``seg_pad_val`` is accepted
            but only used as the pad value of ``gt_sem_seg`` if given
            explicitly.
    """

    def __init__(self,
                 field_pad_vals: Optional[Dict[str, float]] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.field_pad_vals = dict(MT_FIELD_PAD_VALS)
        if 'seg_pad_val' in kwargs:
            self.field_pad_vals['gt_sem_seg'] = kwargs['seg_pad_val']
        self.field_pad_vals.update(field_pad_vals or {})

    def forward(self, data: dict, training: bool = False) -> Dict[str, Any]:
        """Normalise, pad and stack; see the class docstring."""
        data = self.cast_data(data)
        inputs = data['inputs']
        data_samples = data.get('data_samples', None)
        if self.channel_conversion and inputs[0].size(0) == 3:
            inputs = [x[[2, 1, 0], ...] for x in inputs]
        inputs = [x.float() for x in inputs]
        if self._enable_normalize:
            inputs = [(x - self.mean) / self.std for x in inputs]

        if training:
            if data_samples is None:
                raise ValueError('MTSegDataPreProcessor: data_samples are '
                                 'required in training')
            inputs, data_samples = mt_stack_batch(
                inputs, data_samples, size=self.size,
                size_divisor=self.size_divisor, pad_val=self.pad_val,
                field_pad_vals=self.field_pad_vals)
            if self.batch_augments is not None:
                inputs, data_samples = self.batch_augments(
                    inputs, data_samples)
            return dict(inputs=inputs, data_samples=data_samples)

        shapes = [tuple(x.shape[-2:]) for x in inputs]
        test_cfg = self.test_cfg or {}
        inputs, pads = mt_stack_batch(
            inputs, None, size=test_cfg.get('size', None),
            size_divisor=test_cfg.get('size_divisor', None),
            pad_val=self.pad_val)
        if data_samples is not None:
            for sample, pad, shape in zip(data_samples, pads, shapes):
                center = sample.metainfo.get('center_padding', None)
                total = tuple(int(a) + int(b) for a, b in zip(
                    pad['img_padding_size'], center or (0, 0, 0, 0)))
                sample.set_metainfo({
                    'img_shape': shape,
                    'pad_shape': tuple(pad['pad_shape']),
                    # the segmentor and mmseg's postprocess_result read
                    # img_padding_size first: both hold the total
                    'img_padding_size': total,
                    'padding_size': total,
                })
        return dict(inputs=inputs, data_samples=data_samples)
