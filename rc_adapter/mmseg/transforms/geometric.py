"""Geometric multi-task transforms: resize, flip and pad that know which
``seg_fields`` are class labels, which are depth and which are surface normals.

mmseg's ``Resize``/``RandomResize``, ``RandomCrop`` and ``RandomFlip`` iterate
``results['seg_fields']`` but treat every field as a label map: they resize
with nearest neighbour and flip without touching the normal vectors. The
transforms here fill the gaps and reuse mmseg wherever it is correct:

* :class:`MTResize` (subclass of mmseg ``Resize``): nearest for label maps,
  validity-aware bilinear for depth and normals; normals are renormalised
  (an all-zero = invalid normal stays zero); depth values are divided by the
  scale factor like the paper does (``depth_scale_mode='divide'``, default)
  or kept (``'keep'``, the usual mmseg behaviour).
* :class:`MTRandomScale`: the paper's RandomScaling, a random *relative*
  scale factor (discrete list or continuous range) applied through
  :class:`MTResize`. mmcv's ``RandomResize`` samples absolute target sizes;
  it also works with ``resize_type='MTResize'``.
* :class:`MTRandomFlip` (subclass of mmseg ``RandomFlip``): flips every field
  and negates the x component of normals on horizontal flips (y on vertical
  flips). With ``prob=1.0`` it is the test-time flip.
* :class:`MTPadToSize`: pads (centred, as the paper, or bottom/right) up to
  a minimum size with a pad value per field.
* Cropping: mmseg's ``RandomCrop`` is correct for multi-task data and is
  reused as is. It crops every ``seg_fields`` key with the same box, never
  pads (a smaller image stays smaller, which is why :class:`MTPadToSize`
  comes first), and its ``cat_max_ratio`` logic reads ``gt_seg_map`` only,
  so keep ``cat_max_ratio=1.0`` (the default) when semseg is not loaded.

Normals convention: ``gt_normal_map`` is float32 HxWx3, channel 0 = x
(pointing right in the image), 1 = y, 2 = z; an all-zero vector is invalid.
Depth: ``gt_depth_map`` float32 HxW in metres, 0 = invalid.

The paper's augmentations (``docs/datasets.md``) as an mmseg pipeline
(PASCAL; for NYUD use ``crop_size=(425, 560)``)::

    crop_size = (512, 512)
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadMTAnnotations', tasks=tasks),
        # RandomScaling: discrete scale in {0.5, 0.75, ..., 2.0};
        # linear for image/depth/normals, nearest for labels, depth / scale
        dict(type='MTRandomScale',
             scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)),
        # RandomCrop: pad (centred) up to the crop size, then random crop
        dict(type='MTPadToSize', size=crop_size),
        dict(type='RandomCrop', crop_size=crop_size),
        # horizontal flip, normals' x negated
        dict(type='MTRandomFlip', prob=0.5),
        dict(type='MTPackSegInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadMTAnnotations', tasks=tasks),
        # the paper pads val/test images (centred) to the crop size; the
        # GT stays at the original size for the metrics
        dict(type='MTPadToSize', size=crop_size, pad_seg_fields=False),
        dict(type='MTPackSegInputs'),
    ]

At test time the predictions are cropped back with the recorded
``center_padding`` (see :class:`MTPadToSize` and ``MTSegDataPreProcessor``)
and resized to ``ori_shape``, so they line up with the un-padded GT.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms.utils import cache_randomness

from mmseg.datasets.transforms import RandomFlip, Resize
from mmseg.registry import TRANSFORMS

from ...core.errors import RCConfigError
from ..datasets.meta import LABEL_PAD_VALUES, RESULT_KEYS

#: default ``seg_fields`` keys holding surface normals (HxWx3 float)
NORMAL_KEYS = ('gt_normal_map', )
#: default ``seg_fields`` keys holding metric depth (HxW float, 0 = invalid)
DEPTH_KEYS = ('gt_depth_map', )
#: default pad values per results key (255 for class labels, 0 = invalid
#: for normals and depth); other seg fields use 255
DEFAULT_SEG_PAD_VALS = {RESULT_KEYS[task]: value
                        for task, value in LABEL_PAD_VALUES.items()}
_CV2_INTERP = {
    'bilinear': cv2.INTER_LINEAR,
    'area': cv2.INTER_AREA,
    'bicubic': cv2.INTER_CUBIC,
}


def _resize_nearest(arr: np.ndarray, size_wh: Tuple[int, int]) -> np.ndarray:
    out = cv2.resize(arr, size_wh, interpolation=cv2.INTER_NEAREST)
    if arr.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def resize_masked(arr: np.ndarray, valid: np.ndarray, size_wh: Tuple[int,
                                                                     int],
                  interpolation: str = 'bilinear') -> Tuple[np.ndarray,
                                                            np.ndarray]:
    """Resize a dense map with interpolation that ignores invalid pixels.

    Values are interpolated as ``resize(arr * valid) / resize(valid)`` so an
    invalid pixel (value 0) never bleeds into its valid neighbours; the
    output validity is the nearest-neighbour resize of ``valid``.

    Args:
        arr (np.ndarray): HxW or HxWxC float map.
        valid (np.ndarray): HxW bool mask of valid pixels.
        size_wh (tuple[int, int]): output (width, height).
        interpolation (str): 'bilinear', 'area' or 'bicubic'.

    Returns:
        tuple[np.ndarray, np.ndarray]: the resized map (float32, 0 where
        invalid) and the resized HxW bool validity mask.
    """
    if interpolation not in _CV2_INTERP:
        raise RCConfigError(f'interpolation must be one of '
                            f'{list(_CV2_INTERP)}, got {interpolation!r}')
    flag = _CV2_INTERP[interpolation]
    arr = arr.astype(np.float32)
    w = valid.astype(np.float32)
    num = cv2.resize(arr * (w[..., None] if arr.ndim == 3 else w), size_wh,
                     interpolation=flag)
    den = cv2.resize(w, size_wh, interpolation=flag)
    if arr.ndim == 3 and num.ndim == 2:
        num = num[..., None]
    out_valid = _resize_nearest(valid.astype(np.uint8), size_wh) > 0
    out_valid &= den > 1e-6
    den_safe = np.where(den > 1e-6, den, 1.0)
    out = num / (den_safe[..., None] if num.ndim == 3 else den_safe)
    mask = out_valid[..., None] if out.ndim == 3 else out_valid
    return np.where(mask, out, 0).astype(np.float32), out_valid


def normalize_normals(normals: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Scale every HxWx3 vector to unit length; (near-)zero vectors become 0.

    Args:
        normals (np.ndarray): HxWx3 float array.
        eps (float): norms below this are treated as invalid (set to 0).

    Returns:
        np.ndarray: float32 HxWx3 unit vectors (0 where invalid).
    """
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    ok = norm > eps
    return np.where(ok, normals / np.where(ok, norm, 1.0),
                    0).astype(np.float32)


@TRANSFORMS.register_module()
class MTResize(Resize):
    """mmseg ``Resize`` that resamples each multi-task field correctly.

    Image: as mmseg ``Resize`` (``interpolation``, default bilinear).
    Label maps (every ``seg_fields`` key that is not in ``normal_keys`` or
    ``depth_keys``): nearest. Depth and normals: ``dense_interpolation``
    (bilinear or area) restricted to valid pixels (see
    :func:`resize_masked`), so invalid zeros do not blur into valid values;
    normals are renormalised to unit length and invalid ones stay all-zero.

    Depth scaling: when the image is magnified by ``s`` the scene looks ``s``
    times closer, so the paper divides depth values by ``s`` on random
    scaling (``depth_scale_mode='divide'``, the default). ``'keep'`` leaves
    values untouched (what mmseg does). For an anisotropic resize the
    geometric mean ``sqrt(sx * sy)`` is used as ``s``.

    Accepts every argument of mmseg ``Resize`` (``scale``, ``scale_factor``,
    ``keep_ratio``, ...), so it can be used through mmcv's ``RandomResize``
    with ``resize_type='MTResize'``.

    Args:
        normal_keys (Sequence[str]): keys holding HxWx3 normals.
        depth_keys (Sequence[str]): keys holding HxW metric depth.
        dense_interpolation (str): 'bilinear' (default) or 'area'.
        depth_scale_mode (str): 'divide' (paper, default) or 'keep'.
        **kwargs: forwarded to mmseg ``Resize``.
    """

    def __init__(self,
                 *args,
                 normal_keys: Sequence[str] = NORMAL_KEYS,
                 depth_keys: Sequence[str] = DEPTH_KEYS,
                 dense_interpolation: str = 'bilinear',
                 depth_scale_mode: str = 'divide',
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if dense_interpolation not in _CV2_INTERP:
            raise RCConfigError('MTResize: dense_interpolation must be one of '
                                f'{list(_CV2_INTERP)}, got '
                                f'{dense_interpolation!r}')
        if depth_scale_mode not in ('divide', 'keep'):
            raise RCConfigError("MTResize: depth_scale_mode must be 'divide' "
                                f"or 'keep', got {depth_scale_mode!r}")
        self.normal_keys = tuple(normal_keys)
        self.depth_keys = tuple(depth_keys)
        self.dense_interpolation = dense_interpolation
        self.depth_scale_mode = depth_scale_mode

    def _resize_seg(self, results: dict) -> None:
        """Resize every ``seg_fields`` map to the (already resized) image."""
        h, w = results['img'].shape[:2]
        sx, sy = results.get('scale_factor', (1.0, 1.0))
        for key in results.get('seg_fields', []):
            arr = results.get(key, None)
            if arr is None:
                continue
            if key in self.normal_keys:
                if arr.ndim != 3 or arr.shape[-1] != 3:
                    raise ValueError(f'MTResize: {key} must be HxWx3, got '
                                     f'shape {arr.shape}')
                valid = np.any(arr != 0, axis=-1)
                out, _ = resize_masked(arr, valid, (w, h),
                                       self.dense_interpolation)
                results[key] = normalize_normals(out)
            elif key in self.depth_keys:
                valid = arr > 0
                out, _ = resize_masked(arr, valid, (w, h),
                                       self.dense_interpolation)
                if self.depth_scale_mode == 'divide':
                    out = out / np.float32(np.sqrt(sx * sy))
                results[key] = out.astype(np.float32)
            else:
                results[key] = _resize_nearest(arr, (w, h))

    def __repr__(self) -> str:
        return (super().__repr__() + f', normal_keys={self.normal_keys}, '
                f'depth_keys={self.depth_keys}, dense_interpolation='
                f'{self.dense_interpolation}, depth_scale_mode='
                f'{self.depth_scale_mode})')


@TRANSFORMS.register_module()
class MTRandomScale(BaseTransform):
    """Random relative rescaling (the paper's RandomScaling).

    Samples a scale factor ``s`` (from ``scales`` uniformly if given, else
    uniformly in ``ratio_range``) and resizes image and fields by ``s`` with
    :class:`MTResize` (``keep_ratio`` irrelevant: both sides scale by ``s``).

    Args:
        scales (Sequence[float], optional): discrete factors, e.g. the paper's
            ``(0.5, 0.75, ..., 2.0)``.
        ratio_range (tuple[float, float], optional): continuous range, used
            when ``scales`` is None.
        **resize_kwargs: forwarded to :class:`MTResize`
            (``depth_scale_mode``, ``dense_interpolation``, ...).
    """

    def __init__(self,
                 scales: Optional[Sequence[float]] = (0.5, 0.75, 1.0, 1.25,
                                                      1.5, 1.75, 2.0),
                 ratio_range: Optional[Tuple[float, float]] = None,
                 **resize_kwargs) -> None:
        if scales is None and ratio_range is None:
            raise RCConfigError('MTRandomScale: give scales or ratio_range')
        if scales is not None and (len(scales) == 0
                                   or min(scales) <= 0):
            raise RCConfigError('MTRandomScale: scales must be positive, got '
                                f'{scales}')
        self.scales = None if scales is None else tuple(
            float(s) for s in scales)
        self.ratio_range = ratio_range
        self.resize_kwargs = resize_kwargs
        self.resize = MTResize(scale_factor=1.0, **resize_kwargs)

    @cache_randomness
    def _sample(self) -> float:
        if self.scales is not None:
            return float(self.scales[np.random.randint(len(self.scales))])
        lo, hi = self.ratio_range
        return float(np.random.uniform(lo, hi))

    def transform(self, results: dict) -> dict:
        """Rescale ``results`` by a random factor."""
        s = self._sample()
        h, w = results['img'].shape[:2]
        self.resize.scale = (max(1, int(round(w * s))),
                             max(1, int(round(h * s))))
        return self.resize(results)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(scales={self.scales}, '
                f'ratio_range={self.ratio_range}, {self.resize_kwargs})')


def flip_normals(normals, direction: str, channel_axis: int = -1):
    """Return normals flipped spatially *and* with the mirrored component
    negated (x for horizontal, y for vertical, both for diagonal).

    Works on numpy arrays (HxWx3, ``channel_axis=-1``) and torch tensors
    (e.g. Bx3xHxW with ``channel_axis=1``); spatial axes are the last two
    non-channel axes.

    Args:
        normals: array or tensor holding 3-vectors along ``channel_axis``.
        direction (str): 'horizontal', 'vertical' or 'diagonal'.
        channel_axis (int): axis of the 3 components.

    Returns:
        Same type as ``normals``.
    """
    ndim = normals.ndim
    ch = channel_axis % ndim
    spatial = [a for a in range(ndim) if a != ch][-2:]
    if direction == 'horizontal':
        axes, comps = [spatial[1]], [0]
    elif direction == 'vertical':
        axes, comps = [spatial[0]], [1]
    elif direction == 'diagonal':
        axes, comps = spatial, [0, 1]
    else:
        raise RCConfigError(f'flip_normals: unknown direction {direction!r}')
    sign_shape = [1] * ndim
    sign_shape[ch] = 3
    sign = np.ones(3, dtype=np.float32)
    sign[comps] = -1
    sign = sign.reshape(sign_shape)
    if isinstance(normals, np.ndarray):
        return (np.flip(normals, axis=axes) * sign).astype(normals.dtype)
    import torch
    return normals.flip(axes) * torch.as_tensor(
        sign, dtype=normals.dtype, device=normals.device)


@TRANSFORMS.register_module()
class MTRandomFlip(RandomFlip):
    """mmseg ``RandomFlip`` that also negates the mirrored normal component.

    All ``seg_fields`` are flipped by the parent; then for each key in
    ``normal_keys`` the x component is negated (horizontal flip), the y
    component (vertical) or both (diagonal). A ``center_padding`` entry
    written by :class:`MTPadToSize` is mirrored too, so predictions can be
    un-padded in the flipped frame. Use ``prob=1.0`` for test-time flip.

    Args:
        prob (float | list[float]): flip probability (as mmcv).
        direction (str | list[str]): as mmcv, default 'horizontal'.
        normal_keys (Sequence[str]): keys holding HxWx3 normals.
        **kwargs: forwarded to mmseg ``RandomFlip``.
    """

    def __init__(self,
                 prob=None,
                 direction='horizontal',
                 normal_keys: Sequence[str] = NORMAL_KEYS,
                 **kwargs) -> None:
        super().__init__(prob=prob, direction=direction, **kwargs)
        self.normal_keys = tuple(normal_keys)

    def _flip(self, results: dict) -> None:
        """Flip everything, then fix the normal vectors' components."""
        direction = results['flip_direction']
        super()._flip(results)
        for key in self.normal_keys:
            arr = results.get(key, None)
            if arr is None:
                continue
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise ValueError(f'MTRandomFlip: {key} must be HxWx3, got '
                                 f'shape {arr.shape}')
            arr = np.array(arr, dtype=np.float32, copy=True)
            if direction in ('horizontal', 'diagonal'):
                arr[..., 0] *= -1
            if direction in ('vertical', 'diagonal'):
                arr[..., 1] *= -1
            arr[arr == 0] = 0.0  # no -0.0 left behind
            results[key] = arr
        if results.get('center_padding') is not None:
            left, right, top, bottom = results['center_padding']
            if direction in ('horizontal', 'diagonal'):
                left, right = right, left
            if direction in ('vertical', 'diagonal'):
                top, bottom = bottom, top
            results['center_padding'] = (left, right, top, bottom)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f', normal_keys={self.normal_keys})'


@TRANSFORMS.register_module()
class MTPadToSize(BaseTransform):
    """Pad image and every seg field up to at least ``size`` (h, w).

    The paper pads centred before cropping (training) and for evaluation.
    Sides already at least ``size`` are left alone (no crop here).

    Pad values: image ``img_pad_val`` given in **RGB** order (default the
    ImageNet mean on 0-255: (123, 116, 103)); it is reversed when
    ``img_channel_order='bgr'`` (what mmseg's ``LoadImageFromFile`` gives).
    Seg fields use ``seg_pad_vals[key]``, falling back to
    ``default_seg_pad_val`` (255): semseg, parts, sal, edge 255; normals and
    depth 0 (0 = invalid).

    Writes ``img_shape`` (padded size), ``pad_shape`` and
    ``center_padding = (left, right, top, bottom)`` (the same order as
    mmseg's ``padding_size``); when packed, :class:`MTSegDataPreProcessor`
    adds it to ``padding_size`` at test time so mmseg's
    ``postprocess_result`` crops predictions back to the unpadded image.

    Args:
        size (int | tuple[int, int]): minimum (h, w).
        center (bool): centre the content (paper) or pad bottom/right.
        img_pad_val (Sequence[float]): RGB pad colour of the image.
        img_channel_order (str): 'bgr' or 'rgb', channel order of
            ``results['img']``.
        seg_pad_vals (dict, optional): per-key pad values, merged over
            :data:`DEFAULT_SEG_PAD_VALS`.
        default_seg_pad_val (float): pad value of unknown seg fields.
        pad_seg_fields (bool): pad the ``seg_fields`` too (training). Use
            False in test pipelines: the GT then stays at ``ori_shape``,
            where predictions are compared with it.
    """

    def __init__(self,
                 size: Union[int, Tuple[int, int]],
                 center: bool = True,
                 img_pad_val: Sequence[float] = (123, 116, 103),
                 img_channel_order: str = 'bgr',
                 seg_pad_vals: Optional[Dict[str, float]] = None,
                 default_seg_pad_val: float = 255,
                 pad_seg_fields: bool = True) -> None:
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or min(size) <= 0:
            raise RCConfigError(f'MTPadToSize: size must be (h, w) > 0, got '
                                f'{size}')
        if img_channel_order not in ('bgr', 'rgb'):
            raise RCConfigError("MTPadToSize: img_channel_order must be 'bgr' "
                                f"or 'rgb', got {img_channel_order!r}")
        self.size = tuple(int(s) for s in size)
        self.center = center
        self.img_pad_val = tuple(img_pad_val)
        self.img_channel_order = img_channel_order
        self.seg_pad_vals = dict(DEFAULT_SEG_PAD_VALS)
        self.seg_pad_vals.update(seg_pad_vals or {})
        self.default_seg_pad_val = default_seg_pad_val
        self.pad_seg_fields = pad_seg_fields

    @staticmethod
    def _pad(arr: np.ndarray, pads: Tuple[int, int, int, int],
             value) -> np.ndarray:
        """Constant-pad the two spatial axes (scalar or per-channel value)."""
        left, right, top, bottom = pads
        out = np.empty((arr.shape[0] + top + bottom,
                        arr.shape[1] + left + right) + arr.shape[2:],
                       dtype=arr.dtype)
        out[...] = np.asarray(value, dtype=arr.dtype)
        out[top:top + arr.shape[0], left:left + arr.shape[1]] = arr
        return out

    def transform(self, results: dict) -> dict:
        """Pad ``img`` and every ``seg_fields`` key."""
        img = results['img']
        h, w = img.shape[:2]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if self.center:
            top, left = ph // 2, pw // 2
        else:
            top, left = 0, 0
        pads = (left, pw - left, top, ph - top)
        img_val = list(self.img_pad_val)
        if self.img_channel_order == 'bgr':
            img_val = img_val[::-1]
        if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
            img_val = float(np.mean(img_val))
        elif len(img_val) != img.shape[2]:
            raise RCConfigError(f'MTPadToSize: img has {img.shape[2]} '
                                f'channels but img_pad_val has '
                                f'{len(img_val)}')
        results['img'] = self._pad(img, pads, img_val)
        for key in (results.get('seg_fields', [])
                    if self.pad_seg_fields else []):
            arr = results.get(key, None)
            if arr is None:
                continue
            if arr.shape[:2] != (h, w):
                raise ValueError(f'MTPadToSize: {key} has shape '
                                 f'{arr.shape[:2]} but the image is '
                                 f'{(h, w)} ({results.get("img_path")})')
            val = self.seg_pad_vals.get(key, self.default_seg_pad_val)
            results[key] = self._pad(arr, pads, val)
        results['img_shape'] = results['img'].shape[:2]
        results['pad_shape'] = results['img'].shape[:2]
        prev = results.get('center_padding') or (0, 0, 0, 0)
        results['center_padding'] = tuple(
            int(a + b) for a, b in zip(prev, pads))
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(size={self.size}, center='
                f'{self.center}, pad_seg_fields={self.pad_seg_fields}, '
                f'img_pad_val={self.img_pad_val}, '
                f'img_channel_order={self.img_channel_order}, seg_pad_vals='
                f'{self.seg_pad_vals})')
