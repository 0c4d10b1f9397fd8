"""mIoU for semseg and human parts, reusing mmseg's ``IoUMetric`` code."""
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import MMLogger, print_log

from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS
from rc_adapter.core.errors import RCConfigError

from ._utils import pred_and_gt_maps

ABSENT_CLASS_RULES = ('skip', 'zero')


@METRICS.register_module()
class MTIoUMetric(IoUMetric):
    """mIoU of one class-map task of a multi-task sample.

    Per image mmseg's ``IoUMetric.intersect_and_union`` is used (pixels with
    GT == ``ignore_index`` dropped), areas are summed over the whole set and
    ``IoUMetric.total_area_to_metrics`` gives per-class IoU = TP/(TP+FP+FN).
    The mean runs over all classes; a class absent from both the GT and the
    predictions of the whole set has no IoU: ``absent_classes='skip'``
    (default, mmseg's ``nanmean``) leaves it out, ``'zero'`` counts it as 0
    (the RCM reference, which divides by ``max(TP+FP+FN, 1e-8)``). The two
    agree whenever every class occurs, as on the full validation sets.

    Reported keys (x100, not rounded): ``mIoU``, ``mAcc``, ``aAcc``.

    Args:
        pred_key (str): prediction field, e.g. ``'pred_sem_seg'``.
        gt_key (str): ground-truth field, e.g. ``'gt_sem_seg'``.
        num_classes (int, optional): number of classes; default
            ``len(dataset_meta['classes'])``.
        class_names (Sequence[str], optional): names for the log table.
        skip_trivial_gt (bool): skip an image whose GT is entirely
            background (all 0) or entirely ``ignore_index`` (the reference's
            human-parts rule: an image without people, or with a person but
            no part annotation). An image mixing background and ignored
            pixels is evaluated.
        absent_classes (str): 'skip' or 'zero', see above.
        ignore_index (int): ignored GT value (255).
        **kwargs: ``collect_device``, ``prefix`` of ``BaseMetric``.
    """

    def __init__(self,
                 pred_key: str = 'pred_sem_seg',
                 gt_key: str = 'gt_sem_seg',
                 num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None,
                 skip_trivial_gt: bool = False,
                 absent_classes: str = 'skip',
                 ignore_index: int = 255,
                 **kwargs) -> None:
        super().__init__(ignore_index=ignore_index, iou_metrics=['mIoU'],
                         **kwargs)
        self.pred_key = pred_key
        self.gt_key = gt_key
        self.num_classes = num_classes
        self.class_names = None if class_names is None else list(class_names)
        self.skip_trivial_gt = skip_trivial_gt
        if absent_classes not in ABSENT_CLASS_RULES:
            raise RCConfigError(f'{type(self).__name__}: absent_classes must '
                                f'be one of {ABSENT_CLASS_RULES}, got '
                                f'{absent_classes!r}')
        self.absent_classes = absent_classes
        if (num_classes is not None and self.class_names is not None
                and len(self.class_names) != num_classes):
            raise RCConfigError(f'{type(self).__name__}: {len(class_names)} '
                                f'class names for {num_classes} classes')

    def _num_classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if self.class_names is not None:
            return len(self.class_names)
        if not self.dataset_meta or 'classes' not in self.dataset_meta:
            raise RCConfigError(f'{type(self).__name__}: give num_classes '
                                "(no dataset_meta['classes'] available)")
        return len(self.dataset_meta['classes'])

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Accumulate intersection/union areas of each image."""
        name = type(self).__name__
        num_classes = self._num_classes()
        for ds in data_samples:
            pred, gt = pred_and_gt_maps(ds, self.pred_key, self.gt_key, name)
            if self.skip_trivial_gt and (np.all(gt == 0) or np.all(
                    gt == self.ignore_index)):
                continue
            self.results.append(
                self.intersect_and_union(
                    torch.from_numpy(pred.astype(np.int64)),
                    torch.from_numpy(gt.astype(np.int64)), num_classes,
                    self.ignore_index))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """Sum areas over images and compute mIoU / mAcc / aAcc (x100)."""
        if not results:
            raise RCConfigError(f'{type(self).__name__}: no image was '
                                f'evaluated for {self.gt_key}')
        inter, union, pred_area, label_area = (sum(x) for x in zip(*results))
        ret = self.total_area_to_metrics(inter, union, pred_area, label_area,
                                         ['mIoU'], self.nan_to_num)
        iou = ret['IoU']
        if self.absent_classes == 'zero':
            iou = np.nan_to_num(iou, nan=0.0)
        metrics = OrderedDict(
            mIoU=float(np.nanmean(iou) * 100),
            mAcc=float(np.nanmean(ret['Acc']) * 100),
            aAcc=float(ret['aAcc'] * 100))
        names = self.class_names or (self.dataset_meta or {}).get('classes')
        if names is None or len(names) != len(ret['IoU']):
            names = [str(i) for i in range(len(ret['IoU']))]
        lines = [f'{n}: IoU {i * 100:.2f}' for n, i in zip(names, ret['IoU'])]
        print_log(f'{self.gt_key} per class:\n' + '\n'.join(lines),
                  logger=MMLogger.get_current_instance())
        return metrics


@METRICS.register_module()
class MTSemSegMetric(MTIoUMetric):
    """mIoU of ``pred_sem_seg`` vs ``gt_sem_seg`` (PASCAL 21, NYUD 41)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault('pred_key', 'pred_sem_seg')
        kwargs.setdefault('gt_key', 'gt_sem_seg')
        super().__init__(**kwargs)


@METRICS.register_module()
class MTHumanPartsMetric(MTIoUMetric):
    """mIoU of ``pred_parts_seg`` vs ``gt_parts_seg`` over 7 classes
    (background + 6 parts); images whose GT is all 0 or all 255 are skipped
    as in the reference evaluation (``skip_trivial_gt=True``)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault('pred_key', 'pred_parts_seg')
        kwargs.setdefault('gt_key', 'gt_parts_seg')
        kwargs.setdefault('num_classes', 7)
        kwargs.setdefault('skip_trivial_gt', True)
        super().__init__(**kwargs)
