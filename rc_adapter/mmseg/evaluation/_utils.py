"""Small helpers shared by the multi-task metrics."""
import numpy as np
import torch


def get_field(data_sample, field: str, owner: str) -> np.ndarray:
    """Return ``data_sample[field]['data']`` as a float64/int numpy array.

    Works with the dicts the mmengine ``Evaluator`` passes to metrics and with
    ``SegDataSample`` objects.

    Args:
        data_sample: dict or ``SegDataSample``.
        field (str): e.g. ``'pred_normal_map'``.
        owner (str): metric name used in the error message.

    Raises:
        KeyError: naming the metric, the field and the image.
    """
    try:
        item = data_sample[field] if isinstance(
            data_sample, dict) else data_sample.get(field)
        if item is None:
            raise KeyError(field)
        data = item['data'] if isinstance(item, dict) else item.data
    except (KeyError, AttributeError):
        path = (data_sample.get('img_path') if isinstance(data_sample, dict)
                else data_sample.metainfo.get('img_path'))
        raise KeyError(f'{owner}: data sample has no {field!r} '
                       f'(image {path})') from None
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def squeeze_map(arr: np.ndarray, field: str, owner: str) -> np.ndarray:
    """1xHxW or HxW -> HxW, with a clear error otherwise."""
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f'{owner}: {field} must be 1xHxW or HxW, got '
                         f'{arr.shape}')
    return arr


def check_same_shape(pred: np.ndarray, gt: np.ndarray, owner: str,
                     data_sample) -> None:
    """Raise a clear error when prediction and GT sizes differ."""
    if pred.shape[-2:] != gt.shape[-2:]:
        path = (data_sample.get('img_path') if isinstance(data_sample, dict)
                else data_sample.metainfo.get('img_path'))
        raise ValueError(f'{owner}: prediction {pred.shape} and ground truth '
                         f'{gt.shape} differ in size (image {path})')


def pred_and_gt_maps(data_sample, pred_key: str, gt_key: str, owner: str):
    """The HxW prediction and ground-truth maps of one sample, checked to
    have the same size."""
    pred = squeeze_map(get_field(data_sample, pred_key, owner), pred_key,
                       owner)
    gt = squeeze_map(get_field(data_sample, gt_key, owner), gt_key, owner)
    check_same_shape(pred, gt, owner, data_sample)
    return pred, gt
