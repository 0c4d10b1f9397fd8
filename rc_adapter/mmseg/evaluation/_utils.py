"""Small helpers shared by the multi-task metrics."""
from typing import Tuple

import numpy as np
import torch

from rc_adapter.core.errors import RCConfigError


def _img_path(data_sample) -> str:
    return (data_sample.get('img_path') if isinstance(data_sample, dict)
            else data_sample.metainfo.get('img_path'))


def get_field(data_sample, field: str, owner: str) -> np.ndarray:
    """Return ``data_sample[field]['data']`` as a numpy array.

    Works with the dicts the mmengine ``Evaluator`` passes to metrics and with
    ``SegDataSample`` objects.

    Args:
        data_sample: dict or ``SegDataSample``.
        field (str): e.g. ``'pred_normal_map'``.
        owner (str): metric name used in the error message.

    Raises:
        RCConfigError: naming the metric, the field and the image (the
            metric's ``pred_key``/``gt_key`` or the model's tasks do not
            match).
    """
    try:
        item = data_sample[field] if isinstance(
            data_sample, dict) else data_sample.get(field)
        if item is None:
            raise KeyError(field)
        data = item['data'] if isinstance(item, dict) else item.data
    except (KeyError, AttributeError):
        raise RCConfigError(
            f'{owner}: data sample has no {field!r} (image '
            f'{_img_path(data_sample)}); check the metric\'s pred_key/gt_key '
            'and that the model predicts this task') from None
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def squeeze_map(arr: np.ndarray, field: str, owner: str) -> np.ndarray:
    """1xHxW or HxW -> HxW, with a clear error otherwise."""
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise RCConfigError(f'{owner}: {field} must be 1xHxW or HxW, got '
                            f'{arr.shape}')
    return arr


def check_same_shape(pred: np.ndarray, gt: np.ndarray, owner: str,
                     data_sample) -> None:
    """Raise a clear error when prediction and GT sizes differ."""
    if pred.shape[-2:] != gt.shape[-2:]:
        raise RCConfigError(
            f'{owner}: prediction {pred.shape} and ground truth {gt.shape} '
            f'differ in size (image {_img_path(data_sample)}); the test '
            'pipeline must bring predictions back to the label size')


def pred_and_gt_maps(data_sample, pred_key: str, gt_key: str,
                     owner: str) -> Tuple[np.ndarray, np.ndarray]:
    """The HxW prediction and ground-truth maps of one sample, checked to
    have the same size."""
    pred = squeeze_map(get_field(data_sample, pred_key, owner), pred_key,
                       owner)
    gt = squeeze_map(get_field(data_sample, gt_key, owner), gt_key, owner)
    check_same_shape(pred, gt, owner, data_sample)
    return pred, gt


def png_roundtrip(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as read back from the 8-bit PNG the reference writes.

    The RCM code saves sigmoid outputs (edge, saliency) and ``(n + 1) / 2``
    (normals) with ``scipy.misc.toimage(x, cmin=0, cmax=1)``, whose byte
    scaling is ``uint8(clip(255 x, 0, 255) + 0.5)``, and its evaluation reads
    them back as ``byte / 255``. This function does both steps.

    Args:
        values (np.ndarray): any shape, nominally in [0, 1].

    Returns:
        np.ndarray: float32 array of multiples of 1/255.
    """
    scaled = np.clip(np.asarray(values, np.float32) * np.float32(255), 0,
                     255) + np.float32(0.5)
    return scaled.astype(np.uint8).astype(np.float32) / np.float32(255)
