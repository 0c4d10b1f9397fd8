"""Label decoding of PASCAL_MT / NYUD_MT and the ``LoadMTAnnotations``
transform.

Every decoder follows ``rcm-spec.md`` section 4. Errors name the file and the
task: a missing file raises ``FileNotFoundError``, an unreadable one or a
label whose size differs from its image raises ``ValueError``.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import scipy.io as sio
from mmcv.transforms import BaseTransform
from PIL import Image
from skimage.morphology import thin

from mmseg.registry import TRANSFORMS

from .meta import HUMAN_PART_IDS, PERSON_CLASS_ID, RESULT_KEYS


class MTAnnotationError(ValueError):
    """A label file is unreadable, malformed or of the wrong size."""


def _missing(task, path):
    return FileNotFoundError(f'[{task}] label file not found: {path}')


def _check(task, path):
    if path is None or not os.path.isfile(path):
        raise _missing(task, path)


def read_image_file(task, path, flags=cv2.IMREAD_UNCHANGED):
    """Read an image file with OpenCV; colour images come back RGB.

    Args:
        task (str): Task name for error messages.
        path (str): File path.
        flags (int): ``cv2.imread`` flags.

    Returns:
        np.ndarray: HxW or HxWxC array.
    """
    _check(task, path)
    img = cv2.imread(path, flags)
    if img is None:
        raise MTAnnotationError(f'[{task}] cannot read image file {path}')
    if img.ndim == 3 and img.shape[2] >= 3:
        img = np.ascontiguousarray(img[..., 2::-1])
    return img


def image_size(task, path):
    """(H, W) of an image file from its header (no full decode)."""
    _check(task, path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:
        raise MTAnnotationError(
            f'[{task}] cannot read image file {path}: {exc}') from exc
    return h, w


def read_mat(task, path, key):
    """Load one variable of a MATLAB file.

    Args:
        task (str): Task name for error messages.
        path (str): ``.mat`` path.
        key (str): Variable name.

    Returns:
        np.ndarray: The variable.
    """
    _check(task, path)
    try:
        mat = sio.loadmat(path, variable_names=[key])
    except Exception as exc:  # scipy raises several types on bad files
        raise MTAnnotationError(
            f'[{task}] cannot read MATLAB file {path}: {exc}') from exc
    if key not in mat:
        raise MTAnnotationError(f'[{task}] {path} has no variable {key!r}')
    return mat[key]


def decode_normals(rgb, mask=None, renormalize=True):
    """8-bit normals -> float32 HxWx3 via ``2 * v / 255 - 1``.

    Args:
        rgb (np.ndarray): uint8 HxWx3, channels x, y, z.
        mask (np.ndarray, optional): bool HxW; pixels outside are zeroed
            (invalid).
        renormalize (bool): Rescale every vector to unit length. Vectors
            shorter than 0.5 after decoding carry no direction (8-bit
            quantisation and JPEG noise stay far below that) and are set to
            zero, i.e. invalid. The reference does not renormalize the
            ground truth (spec section 4); pass False for its exact values.

    Returns:
        np.ndarray: float32 HxWx3; all-zero means invalid.
    """
    n = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
    if renormalize:
        norm = np.linalg.norm(n, axis=2, keepdims=True)
        n = np.where(norm >= 0.5, n / np.maximum(norm, 1e-12), 0.0)
    if mask is not None:
        n = n * mask[..., None]
    return n.astype(np.float32)


def edges_from_labelmap(label_map):
    """PASCAL edges: Laplacian of the Context label map, |.| > 0, thinned.

    Args:
        label_map (np.ndarray): HxW integer Context labels.

    Returns:
        np.ndarray: uint8 HxW in {0, 1}.
    """
    lap = cv2.Laplacian(np.ascontiguousarray(label_map, dtype=np.float64),
                        cv2.CV_64F)
    return thin(np.abs(lap) > 0).astype(np.uint8)


def _as_str(x):
    a = np.asarray(x)
    while a.dtype == object and a.size == 1:
        a = np.asarray(a.ravel()[0])
    if a.dtype.kind in 'US':
        return str(a.ravel()[0]) if a.ndim else str(a)
    raise TypeError(f'not a string: {x!r}')


def _field(rec, name, index):
    """A struct field by name (or by position, as public loaders index)."""
    names = rec.dtype.names or ()
    return rec[name] if name in names else rec[index]


def decode_human_parts(path, shape=None, task='human_parts'):
    """PASCAL-Part ``anno`` -> coarse human-part map (spec section 4).

    Rules: only person objects (class 15) with part annotations are
    painted, using ``HUMAN_PART_IDS``; an image with no person gets all 255
    (ignored); an image whose persons carry no parts gets all 0.

    Args:
        path (str): ``PascalParts/<id>.mat``.
        shape (tuple[int, int], optional): Image (H, W) for the all-255 map
            and the mask size check.
        task (str): Task name for error messages.

    Returns:
        tuple[np.ndarray, bool]: uint8 HxW map (0 bg, 1..6 parts, 255
        ignore) and whether the image has a person.
    """
    anno = read_mat(task, path, 'anno')
    try:
        objects = _field(anno[0, 0], 'objects', 1)
        objects = objects.ravel() if objects.size else []
    except Exception as exc:
        raise MTAnnotationError(
            f'[{task}] {path}: unexpected anno layout ({exc})') from exc
    target = None
    has_person = False
    for obj in objects:
        cls = int(np.asarray(_field(obj, 'class_ind', 1)).ravel()[0])
        if cls != PERSON_CLASS_ID:
            continue
        has_person = True
        parts = _field(obj, 'parts', 3)
        if parts.size == 0:
            continue
        for part in parts.ravel():
            name = _as_str(_field(part, 'part_name', 0))
            if name not in HUMAN_PART_IDS:
                raise MTAnnotationError(
                    f'[{task}] {path}: unknown part name {name!r}')
            mask = np.asarray(_field(part, 'mask', 1)).astype(bool)
            if shape is not None and mask.shape != tuple(shape):
                raise MTAnnotationError(
                    f'[{task}] {path}: part mask {mask.shape} differs from '
                    f'image {tuple(shape)}')
            if target is None:
                target = np.zeros(mask.shape, np.uint8)
            elif mask.shape != target.shape:
                raise MTAnnotationError(
                    f'[{task}] {path}: part masks of different sizes')
            target[mask] = HUMAN_PART_IDS[name]
    if target is None:
        if shape is None:
            if not len(objects):
                raise MTAnnotationError(
                    f'[{task}] {path}: no objects and no image size given')
            shape = np.asarray(_field(objects[0], 'mask', 2)).shape
        fill = 0 if has_person else 255
        target = np.full(tuple(shape), fill, np.uint8)
    return target, has_person


def person_class_ids(path, task='human_parts'):
    """Class ids of the objects (with a non-empty mask) of a PascalParts
    file, as the reference's ``ImageSets/Parts`` cache lists them."""
    anno = read_mat(task, path, 'anno')
    objects = _field(anno[0, 0], 'objects', 1)
    ids = []
    for obj in (objects.ravel() if objects.size else []):
        if np.asarray(_field(obj, 'mask', 2)).sum() > 0:
            ids.append(int(np.asarray(_field(obj, 'class_ind', 1)).ravel()[0]))
    return ids


@TRANSFORMS.register_module()
class LoadMTAnnotations(BaseTransform):
    """Load the selected multi-task labels of a PASCAL_MT / NYUD_MT sample.

    Reads ``results['ann_paths']`` (task -> file) and ``results['layout']``
    ('pascal' or 'nyud') set by ``PascalContextMTDataset`` /
    ``NYUDMTDataset`` and writes (and appends to ``results['seg_fields']``):

    - semseg -> ``gt_seg_map`` uint8 HxW (255 ignore)
    - human_parts -> ``gt_parts_seg`` uint8 HxW (0 bg, 1..6, 255 ignore)
    - sal -> ``gt_sal_map`` uint8 HxW (0/1; PNG / 255 > 0.5)
    - normals -> ``gt_normal_map`` float32 HxWx3 (all-zero = invalid)
    - edge -> ``gt_edge_map`` uint8 HxW (0/1)
    - depth -> ``gt_depth_map`` float32 HxW metres (0 = invalid)

    and ``results['tasks']``. Every label must have the image's size (from
    ``results['img']`` if loaded, else read from ``img_path``).

    Args:
        tasks (list[str], optional): Subset of the sample's tasks to load;
            default: all of ``results['tasks']``.
        renormalize_normals (bool): See :func:`decode_normals`.
    """

    def __init__(self, tasks=None, renormalize_normals=True):
        self.tasks = list(tasks) if tasks is not None else None
        self.renormalize_normals = renormalize_normals

    def _image_shape(self, results):
        if 'img' in results:
            return tuple(results['img'].shape[:2])
        return image_size('image', results['img_path'])

    def transform(self, results):
        """Decode the labels; see the class docstring."""
        tasks = self.tasks if self.tasks is not None else list(
            results.get('tasks', results['ann_paths'].keys()))
        layout = results['layout']
        paths = results['ann_paths']
        shape = self._image_shape(results)
        cache = {}

        def label_map(task):
            if 'label_map' not in cache:
                cache['label_map'] = read_mat(task, paths['context'],
                                              'LabelMap')
            return cache['label_map']

        fields = results.setdefault('seg_fields', [])
        for task in tasks:
            if task not in paths:
                raise KeyError(f'[{task}] no annotation path for this sample '
                               f'(tasks available: {sorted(paths)})')
            path = paths[task]
            if task == 'semseg':
                if layout == 'nyud':
                    lab = read_mat(task, path, 'segmentation')
                else:
                    lab = read_image_file(task, path)
                lab = self._as_labels(task, path, lab)
            elif task == 'human_parts':
                lab, _ = decode_human_parts(path, shape, task)
            elif task == 'sal':
                img = read_image_file(task, path)
                if img.ndim == 3:
                    img = img[..., 0]
                lab = (img.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
            elif task == 'normals':
                rgb = read_image_file(task, path, cv2.IMREAD_COLOR)
                mask = None
                if layout == 'pascal':
                    lm = label_map(task)
                    self._check_shape(task, paths['context'], lm.shape, shape)
                    mask = np.isin(lm, results['normals_valid_classes'])
                lab = decode_normals(rgb, mask, self.renormalize_normals)
            elif task == 'edge':
                if layout == 'pascal':
                    path = paths['context']
                    lab = edges_from_labelmap(label_map(task))
                else:
                    img = read_image_file(task, path, cv2.IMREAD_GRAYSCALE)
                    lab = (img.astype(np.float32) / 255.0 > 0.5).astype(
                        np.uint8)
            elif task == 'depth':
                lab = read_mat(task, path, 'depth')
                if lab.dtype.kind not in 'fiu' or lab.ndim != 2:
                    raise MTAnnotationError(
                        f'[{task}] {path}: depth must be a 2-D numeric array,'
                        f' got {lab.dtype} {lab.shape}')
                lab = lab.astype(np.float32)
                lab[~np.isfinite(lab)] = 0.0
            else:
                raise KeyError(f'unknown task {task!r}')
            self._check_shape(task, path, lab.shape, shape)
            key = RESULT_KEYS[task]
            results[key] = lab
            if key not in fields:
                fields.append(key)
        results['tasks'] = list(tasks)
        return results

    @staticmethod
    def _as_labels(task, path, lab):
        if lab.ndim != 2:
            raise MTAnnotationError(
                f'[{task}] {path}: expected a single-channel label map, got '
                f'shape {lab.shape}')
        if lab.dtype.kind == 'f' and not np.all(lab == np.round(lab)):
            raise MTAnnotationError(f'[{task}] {path}: non-integer labels')
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise MTAnnotationError(
                f'[{task}] {path}: labels outside 0..255')
        return lab.astype(np.uint8)

    @staticmethod
    def _check_shape(task, path, got, want):
        if tuple(got[:2]) != tuple(want):
            raise MTAnnotationError(
                f'[{task}] {path}: label size {tuple(got[:2])} differs from '
                f'image size {tuple(want)}')

    def __repr__(self):
        return (f'{self.__class__.__name__}(tasks={self.tasks}, '
                f'renormalize_normals={self.renormalize_normals})')
