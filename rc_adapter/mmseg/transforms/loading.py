"""``LoadMTAnnotations``: decode the multi-task labels of one sample.

The file formats and decoding rules live in
:mod:`rc_adapter.mmseg.datasets.labels` (and ``docs/datasets.md``); this
transform applies them inside an mmseg pipeline, as mmseg's own
``LoadAnnotations`` does for single-task data.
"""
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from mmseg.registry import TRANSFORMS

from ...core.errors import AnnotationError, UnknownTaskError
from ..datasets.labels import (decode_human_parts, decode_normals,
                               edges_from_labelmap, image_size,
                               read_image_file, read_mat)
from ..datasets.meta import MAT_VARIABLES, RESULT_KEYS

__all__ = ['LoadMTAnnotations']


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

    Inference: a sample without ``ann_paths`` -- what mmseg's
    ``inference_model`` and ``MMSegInferencer`` pass through the config's
    ``test_pipeline`` (only ``img_path`` or ``img``) -- is returned
    unchanged, so the same ``test_pipeline`` serves evaluation and
    inference. A sample that lists its annotations must have every file:
    a missing one is an ``AnnotationError``.

    Args:
        tasks: Subset of the sample's tasks to load; default: all of
            ``results['tasks']``.
        renormalize_normals: See
            :func:`~rc_adapter.mmseg.datasets.labels.decode_normals`.
    """

    def __init__(self, tasks: Optional[Sequence[str]] = None,
                 renormalize_normals: bool = True) -> None:
        self.tasks = list(tasks) if tasks is not None else None
        self.renormalize_normals = renormalize_normals

    @staticmethod
    def _image_shape(results: dict) -> Tuple[int, int]:
        if 'img' in results:
            return tuple(results['img'].shape[:2])
        return image_size('image', results['img_path'])

    def transform(self, results: dict) -> dict:
        """Decode the labels; see the class docstring."""
        if 'ann_paths' not in results:
            return results  # inference: an image without annotations
        paths = results['ann_paths']
        tasks: List[str] = self.tasks if self.tasks is not None else list(
            results.get('tasks', paths.keys()))
        shape = self._image_shape(results)
        fields = results.setdefault('seg_fields', [])
        cache: dict = {}
        for task in tasks:
            if task not in paths:
                raise AnnotationError(
                    f'[{task}] {results.get("img_path")}: no annotation path '
                    f'for this sample (it lists {sorted(paths)})')
            lab, path = self._decode(task, results, shape, cache)
            self._check_shape(task, path, lab.shape, shape)
            key = RESULT_KEYS[task]
            results[key] = lab
            if key not in fields:
                fields.append(key)
        results['tasks'] = list(tasks)
        return results

    def _decode(self, task: str, results: dict, shape: Tuple[int, int],
                cache: dict) -> Tuple[np.ndarray, str]:
        """One task's label array and the file it came from."""
        layout, paths = results['layout'], results['ann_paths']
        path = paths[task]

        def label_map() -> np.ndarray:
            # PASCAL-Context label map: source of the normals mask and edges
            if 'context' not in cache:
                cache['context'] = read_mat(task, paths['context'],
                                            MAT_VARIABLES['context'])
                self._check_shape(task, paths['context'],
                                  cache['context'].shape, shape)
            return cache['context']

        if task == 'semseg':
            if layout == 'nyud':
                lab = read_mat(task, path, MAT_VARIABLES['semseg'])
            else:
                lab = read_image_file(task, path)
            return self._as_labels(task, path, lab), path
        if task == 'human_parts':
            return decode_human_parts(path, shape, task)[0], path
        if task == 'sal':
            img = read_image_file(task, path)
            if img.ndim == 3:
                img = img[..., 0]
            return self._binary(img), path
        if task == 'edge':
            if layout == 'pascal':  # from the Context label map
                return edges_from_labelmap(label_map()), paths['context']
            return self._binary(
                read_image_file(task, path, cv2.IMREAD_GRAYSCALE)), path
        if task == 'normals':
            rgb = read_image_file(task, path, cv2.IMREAD_COLOR)
            mask = None
            if layout == 'pascal':
                mask = np.isin(label_map(), results['normals_valid_classes'])
            return decode_normals(rgb, mask, self.renormalize_normals), path
        if task == 'depth':
            lab = read_mat(task, path, MAT_VARIABLES['depth'])
            if lab.dtype.kind not in 'fiu' or lab.ndim != 2:
                raise AnnotationError(
                    f'[{task}] {path}: depth must be a 2-D numeric array, '
                    f'got {lab.dtype} {lab.shape}')
            lab = lab.astype(np.float32)
            lab[~np.isfinite(lab)] = 0.0
            return lab, path
        raise UnknownTaskError(
            f'LoadMTAnnotations: unknown task {task!r}; known tasks: '
            f'{sorted(RESULT_KEYS)}')

    @staticmethod
    def _binary(img: np.ndarray) -> np.ndarray:
        """8-bit map -> {0, 1} by ``v / 255 > 0.5``."""
        return (img.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)

    @staticmethod
    def _as_labels(task: str, path: str, lab: np.ndarray) -> np.ndarray:
        if lab.ndim != 2:
            raise AnnotationError(
                f'[{task}] {path}: expected a single-channel label map, got '
                f'shape {lab.shape}')
        if lab.dtype.kind == 'f' and not np.all(lab == np.round(lab)):
            raise AnnotationError(f'[{task}] {path}: non-integer labels')
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise AnnotationError(
                f'[{task}] {path}: labels outside 0..255')
        return lab.astype(np.uint8)

    @staticmethod
    def _check_shape(task: str, path: str, got: tuple,
                     want: Tuple[int, int]) -> None:
        if tuple(got[:2]) != tuple(want):
            raise AnnotationError(
                f'[{task}] {path}: label size {tuple(got[:2])} differs from '
                f'image size {tuple(want)}')

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(tasks={self.tasks}, '
                f'renormalize_normals={self.renormalize_normals})')
