"""``MTPackSegInputs``: pack a multi-task sample into one ``SegDataSample``.

The field contract (used by heads, tools, metrics and tests):

=================  =====================  ==============  ==================
results key        SegDataSample field    dtype / shape   values
=================  =====================  ==============  ==================
``gt_seg_map``     ``gt_sem_seg``         int64 1xHxW     classes, 255 ign.
``gt_parts_seg``   ``gt_parts_seg``       int64 1xHxW     0 bg, 1..6, 255
``gt_sal_map``     ``gt_sal_map``         int64 1xHxW     0/1, 255 ignore
``gt_normal_map``  ``gt_normal_map``      float32 3xHxW   unit, 0 = invalid
``gt_edge_map``    ``gt_edge_map``        int64 1xHxW     0/1, 255 ignore
``gt_depth_map``   ``gt_depth_map``       float32 1xHxW   metres, 0 = inv.
=================  =====================  ==============  ==================

Each is a ``PixelData(data=...)``, present only if the results hold the key.
Predictions written by the segmentor use ``pred_`` instead of ``gt_``:
``pred_sem_seg``, ``pred_parts_seg`` (int64 class maps 1xHxW),
``pred_sal_map``, ``pred_edge_map`` (float32 probabilities in [0, 1],
1xHxW), ``pred_normal_map`` (3xHxW unit float32), ``pred_depth_map``
(1xHxW float32 metres).
"""
import numpy as np
import torch
from mmengine.structures import PixelData

from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import TRANSFORMS
from mmseg.structures import SegDataSample

#: results key -> (data sample field, 'label' | 'normal' | 'depth')
MT_GT_FIELDS = {
    'gt_seg_map': ('gt_sem_seg', 'label'),
    'gt_parts_seg': ('gt_parts_seg', 'label'),
    'gt_sal_map': ('gt_sal_map', 'label'),
    'gt_normal_map': ('gt_normal_map', 'normal'),
    'gt_edge_map': ('gt_edge_map', 'label'),
    'gt_depth_map': ('gt_depth_map', 'depth'),
}

#: task name -> (gt field, pred field) in a SegDataSample
TASK_GT_PRED_FIELDS = {
    'semseg': ('gt_sem_seg', 'pred_sem_seg'),
    'human_parts': ('gt_parts_seg', 'pred_parts_seg'),
    'sal': ('gt_sal_map', 'pred_sal_map'),
    'normals': ('gt_normal_map', 'pred_normal_map'),
    'edge': ('gt_edge_map', 'pred_edge_map'),
    'depth': ('gt_depth_map', 'pred_depth_map'),
}

MT_META_KEYS = ('img_path', 'seg_map_path', 'ori_shape', 'img_shape',
                'pad_shape', 'scale_factor', 'flip', 'flip_direction',
                'reduce_zero_label', 'tasks', 'center_padding')


def _to_chw(arr: np.ndarray, kind: str, key: str) -> torch.Tensor:
    if kind == 'label':
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(f'MTPackSegInputs: {key} must be HxW, got shape '
                             f'{arr.shape}')
        out = arr[None].astype(np.int64)
    elif kind == 'depth':
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(f'MTPackSegInputs: {key} must be HxW, got shape '
                             f'{arr.shape}')
        out = arr[None].astype(np.float32)
    else:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f'MTPackSegInputs: {key} must be HxWx3, got '
                             f'shape {arr.shape}')
        out = arr.transpose(2, 0, 1).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out))


@TRANSFORMS.register_module()
class MTPackSegInputs(PackSegInputs):
    """Pack the image and all multi-task labels (see the module table).

    The image is packed by mmseg ``PackSegInputs`` (CxHxW uint8 tensor);
    the labels of :data:`MT_GT_FIELDS` present in ``results`` become
    ``PixelData`` fields of the one ``SegDataSample``. Meta keys default to
    :data:`MT_META_KEYS` (mmseg's plus ``tasks`` and ``center_padding``).

    Args:
        meta_keys (Sequence[str]): keys copied into the sample's metainfo
            when present.
    """

    def __init__(self, meta_keys=MT_META_KEYS):
        super().__init__(meta_keys=meta_keys)

    def transform(self, results: dict) -> dict:
        """Pack ``results`` into ``dict(inputs=..., data_samples=...)``."""
        # the parent packs the image and the meta keys; labels are ours
        img_only = {k: v for k, v in results.items() if k not in MT_GT_FIELDS}
        packed = super().transform(img_only)
        sample: SegDataSample = packed['data_samples']
        for key, (field, kind) in MT_GT_FIELDS.items():
            arr = results.get(key, None)
            if arr is None:
                continue
            sample.set_data(
                {field: PixelData(data=_to_chw(np.asarray(arr), kind, key))})
        return packed
