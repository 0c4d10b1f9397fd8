"""Saliency, surface-normal and depth metrics of the multi-task benchmark."""
from typing import Dict, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from mmseg.registry import METRICS
from rc_adapter.core.errors import RCConfigError

from ._utils import (check_same_shape, get_field, pred_and_gt_maps,
                     png_roundtrip)


@METRICS.register_module()
class MTSaliencyMetric(BaseMetric):
    """Max-mIoU and maxF of binary saliency, as the RCM reference.

    For every image and threshold ``t`` the prediction (probabilities in
    [0, 1]) is binarised as ``pred > t``; GT is 0/1 (255 ignored; the
    reference's GT has no ignored pixel). Per image and threshold: IoU =
    TP/(TP+FP+FN), 1 when both masks are empty; precision TP/(TP+FP) (0 when
    nothing is predicted); recall TP/(TP+FN) (0 when the GT is empty). Per
    threshold, IoU, P and R are averaged over images and F = 2PR/(P+R) is
    computed from the averaged P and R.

    Reported (x100): ``max_mIoU`` (max over thresholds of the mean IoU, the
    number ASTMT/TSN/RCM report), ``maxF``; plus ``max_mIoU_thr``/
    ``maxF_thr`` (the arg-max thresholds, not x100).

    The reference reads the prediction back from an 8-bit PNG;
    ``png_roundtrip=True`` does the same (values ``k/255``), the default
    thresholds the float probability (differences only at pixels within
    1/255 of a threshold).

    Args:
        thresholds (Sequence[float]): default ``linspace(0.2, 0.9, 15)``.
        png_roundtrip (bool): quantise predictions as the reference's PNG.
        pred_key (str): default ``'pred_sal_map'``.
        gt_key (str): default ``'gt_sal_map'``.
        ignore_index (int): ignored GT value.
        **kwargs: ``collect_device``, ``prefix`` of ``BaseMetric``.
    """

    def __init__(self,
                 thresholds: Optional[Sequence[float]] = None,
                 png_roundtrip: bool = False,
                 pred_key: str = 'pred_sal_map',
                 gt_key: str = 'gt_sal_map',
                 ignore_index: int = 255,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = np.asarray(
            np.linspace(0.2, 0.9, 15) if thresholds is None else thresholds,
            dtype=np.float64).ravel()
        if self.thresholds.size == 0:
            raise RCConfigError(f'{type(self).__name__}: thresholds is empty')
        self.png_roundtrip = png_roundtrip
        self.pred_key, self.gt_key = pred_key, gt_key
        self.ignore_index = ignore_index

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Store per-threshold IoU, precision and recall of each image."""
        name = type(self).__name__
        for ds in data_samples:
            pred, gt = pred_and_gt_maps(ds, self.pred_key, self.gt_key, name)
            if self.png_roundtrip:
                # The reference compares its float32 PNG values with the
                # thresholds in float32 (numpy's casting of that time).
                pred, thresholds = (png_roundtrip(pred),
                                    self.thresholds.astype(np.float32))
            else:
                pred, thresholds = pred.astype(np.float64), self.thresholds
            valid = gt != self.ignore_index
            g = (gt == 1) & valid
            p = pred[valid]
            gv = g[valid]
            n_gt = gv.sum()
            out = np.zeros((3, len(thresholds)))
            for j, t in enumerate(thresholds):
                pm = p > t
                tp = np.sum(pm & gv)
                fp = np.sum(pm) - tp
                fn = n_gt - tp
                union = tp + fp + fn
                out[0, j] = 1.0 if union == 0 else tp / union
                out[1, j] = tp / (tp + fp) if tp + fp > 0 else 0.0
                out[2, j] = tp / n_gt if n_gt > 0 else 0.0
            self.results.append(out)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """Average over images per threshold, then take the maxima."""
        if not results:
            raise RCConfigError(f'{type(self).__name__}: no image was '
                                'evaluated')
        mean = np.mean(np.stack(results), axis=0)
        iou, prec, rec = mean
        f = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(
            prec + rec, 1e-12), 0.0)
        return dict(
            max_mIoU=float(iou.max() * 100),
            maxF=float(f.max() * 100),
            max_mIoU_thr=float(self.thresholds[int(iou.argmax())]),
            maxF_thr=float(self.thresholds[int(f.argmax())]))


@METRICS.register_module()
class MTNormalsMetric(BaseMetric):
    """Angular error of surface normals, pooled over all valid pixels.

    Valid pixels are those whose GT vector is non-zero (0 = invalid /
    padding). Prediction and GT are renormalised (the reference also
    renormalises the GT inside its evaluation) and the error is
    arccos(clip(dot, -1, 1)) in degrees. Reported over the valid pixels of
    *all* images: ``mean_angle`` (the headline mErr), ``median_angle``,
    ``rmse`` (root of the mean squared angle, degrees), ``within_11.25``,
    ``within_22.5``, ``within_30`` (% of pixels).

    ``png_roundtrip=False`` (default) scores the float prediction.
    ``png_roundtrip=True`` reproduces the reference, which scores the 8-bit
    PNG it saved: the unit prediction ``n`` is written as ``(n + 1) / 2``
    in bytes, read back as ``2 * byte / 255 - 1`` and renormalised. A
    component of 0 becomes byte 128 -> +1/255, so even a perfect prediction
    is off by a few tenths of a degree (0.32 deg for n = (0, 0, 1)); the
    default avoids that quantisation error.

    Memory: per image only sums, counts and a sparse histogram of the error
    (bin ``median_bin_width`` degrees) are kept, so the pooled median is
    exact to within half a bin (0.005 deg by default). ``median_bin_width=
    None`` keeps every error value and gives the exact median (small sets).

    Args:
        png_roundtrip (bool): decode predictions as from the reference's
            8-bit PNG (see above).
        pred_key (str): default ``'pred_normal_map'`` (3xHxW).
        gt_key (str): default ``'gt_normal_map'`` (3xHxW).
        median_bin_width (float, optional): histogram bin in degrees.
        **kwargs: ``collect_device``, ``prefix`` of ``BaseMetric``.
    """

    THRESHOLDS = (11.25, 22.5, 30.0)

    def __init__(self,
                 png_roundtrip: bool = False,
                 pred_key: str = 'pred_normal_map',
                 gt_key: str = 'gt_normal_map',
                 median_bin_width: Optional[float] = 0.01,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if median_bin_width is not None and median_bin_width <= 0:
            raise RCConfigError(f'{type(self).__name__}: median_bin_width '
                                f'must be > 0, got {median_bin_width}')
        self.png_roundtrip = png_roundtrip
        self.pred_key, self.gt_key = pred_key, gt_key
        self.median_bin_width = median_bin_width

    @staticmethod
    def decode_png(pred: np.ndarray) -> np.ndarray:
        """3xHxW prediction as the reference reads it from its PNG: unit
        normal -> ``(n + 1) / 2`` -> bytes -> ``2 * byte / 255 - 1``."""
        pred = pred.astype(np.float64)
        pred = pred / np.maximum(np.linalg.norm(pred, axis=0), 1e-12)
        return 2 * png_roundtrip((pred + 1) / 2) - 1

    @staticmethod
    def angular_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Degrees between 3xHxW ``pred`` and ``gt`` at valid GT pixels.

        Returns:
            np.ndarray: 1-D array of errors (valid pixels only).
        """
        pred = pred.reshape(3, -1).astype(np.float64)
        gt = gt.reshape(3, -1).astype(np.float64)
        gn = np.linalg.norm(gt, axis=0)
        valid = gn > 0
        pn = np.linalg.norm(pred[:, valid], axis=0)
        dot = np.sum(pred[:, valid] * gt[:, valid], axis=0) / (
            np.maximum(pn, 1e-12) * gn[valid])
        return np.degrees(np.arccos(np.clip(dot, -1.0, 1.0)))

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Store sufficient statistics of each image's angular errors."""
        name = type(self).__name__
        for ds in data_samples:
            pred = get_field(ds, self.pred_key, name)
            gt = get_field(ds, self.gt_key, name)
            for arr, key in ((pred, self.pred_key), (gt, self.gt_key)):
                if arr.ndim != 3 or arr.shape[0] != 3:
                    raise RCConfigError(f'{name}: {key} must be 3xHxW, got '
                                        f'{arr.shape}')
            check_same_shape(pred, gt, name, ds)
            if self.png_roundtrip:
                pred = self.decode_png(pred)
            err = self.angular_error(pred, gt)
            stats = dict(
                n=err.size, sum=float(err.sum()),
                sum_sq=float(np.sum(err**2)),
                within=[int(np.sum(err < t)) for t in self.THRESHOLDS])
            if self.median_bin_width is None:
                stats['values'] = err.astype(np.float32)
            else:
                bins, counts = np.unique(
                    np.floor(err / self.median_bin_width).astype(np.int64),
                    return_counts=True)
                stats['bins'], stats['counts'] = bins, counts
            self.results.append(stats)

    def _median(self, results: list, n: int) -> float:
        if self.median_bin_width is None:
            return float(np.median(np.concatenate(
                [r['values'] for r in results]).astype(np.float64)))
        bins = np.concatenate([r['bins'] for r in results])
        counts = np.concatenate([r['counts'] for r in results])
        ub, inv = np.unique(bins, return_inverse=True)
        tot = np.bincount(inv, weights=counts)
        cum = np.cumsum(tot)
        # bins holding the two middle order statistics (0-based)
        lo = ub[np.searchsorted(cum, (n - 1) // 2 + 1)]
        hi = ub[np.searchsorted(cum, n // 2 + 1)]
        return float((lo + hi + 1) / 2 * self.median_bin_width)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """Pool the statistics of all images."""
        n = sum(r['n'] for r in results)
        if n == 0:
            raise RCConfigError(f'{type(self).__name__}: no valid GT normal '
                                'in the set')
        within = np.sum([r['within'] for r in results], axis=0)
        out = dict(
            mean_angle=sum(r['sum'] for r in results) / n,
            median_angle=self._median(results, n),
            rmse=float(np.sqrt(sum(r['sum_sq'] for r in results) / n)))
        for t, c in zip(self.THRESHOLDS, within):
            out[f'within_{t:g}'] = float(c / n * 100)
        return out


@METRICS.register_module()
class MTDepthMetric(BaseMetric):
    """Depth metrics in metres, by default as the RCM reference computes
    them.

    Valid pixels: GT in (``min_depth_eval``, ``max_depth_eval``) (GT 0 =
    invalid / padding). Predictions <= 0 are set to ``pred_min`` (1e-9, as
    the reference) so the log metrics are defined.

    Keys: ``rmse``, ``rmse_log``, ``abs_rel``, ``sq_rel``, ``log10``,
    ``silog``, ``d1``, ``d2``, ``d3`` (the formulas of mmseg's
    ``DepthMetric._calc_all_metrics``, evaluated from per-image sufficient
    statistics so no pixel array is kept; the tests check equality with
    mmseg's function), and ``rmse_pooled``.

    ``per_image=True`` (default, the reference): each metric is computed per
    image and averaged over images, except ``rmse_log``, which is the
    *median* over images, as in the reference; images without a valid pixel
    are skipped. ``rmse_pooled`` is the RMSE over the same pixels pooled
    over all images (a pixel-weighted RMSE, what ``per_image=False`` reports
    for every key). The two are not interchangeable: a per-image mean of
    RMSEs is smaller than the pooled RMSE when errors concentrate in a few
    images.

    The reference's code also replaces GT zeros by 1e-9 *before* building
    its valid mask, so invalid pixels count (with GT ~ 0, which inflates
    ``rmse_log`` enormously). ``reference_zero_mask_bug=True`` (needs
    ``per_image=True``) reproduces that; by default invalid pixels are
    excluded, as the reference intended.

    Args:
        pred_key (str): default ``'pred_depth_map'``.
        gt_key (str): default ``'gt_depth_map'``.
        per_image (bool): see above.
        reference_zero_mask_bug (bool): see above.
        min_depth_eval (float): GT must be > this (default 0).
        max_depth_eval (float): GT must be < this (default inf).
        pred_min (float): value of predictions <= 0.
        **kwargs: ``collect_device``, ``prefix`` of ``BaseMetric``.
    """

    KEYS = ('rmse', 'rmse_log', 'abs_rel', 'sq_rel', 'log10', 'silog', 'd1',
            'd2', 'd3')

    def __init__(self,
                 pred_key: str = 'pred_depth_map',
                 gt_key: str = 'gt_depth_map',
                 per_image: bool = True,
                 reference_zero_mask_bug: bool = False,
                 min_depth_eval: float = 0.0,
                 max_depth_eval: float = float('inf'),
                 pred_min: float = 1e-9,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if reference_zero_mask_bug and not per_image:
            raise RCConfigError(f'{type(self).__name__}: '
                                'reference_zero_mask_bug=True requires '
                                'per_image=True (the reference is per image)')
        if not pred_min > 0:
            raise RCConfigError(f'{type(self).__name__}: pred_min must be '
                                f'> 0, got {pred_min}')
        self.pred_key, self.gt_key = pred_key, gt_key
        self.per_image = per_image
        self.reference_zero_mask_bug = reference_zero_mask_bug
        self.min_depth_eval = min_depth_eval
        self.max_depth_eval = max_depth_eval
        self.pred_min = pred_min

    @staticmethod
    def sufficient_stats(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Additive statistics of valid (1-D) ``gt``/``pred`` pixels.

        Returns:
            np.ndarray: [n, sum d^2, sum |d|/g, sum d^2/g, sum dl^2, sum dl,
            sum |log10 diff|, #(thr<1.25), #(<1.25^2), #(<1.25^3)], with
            d = pred - gt, dl = log pred - log gt, thr = max(g/p, p/g).
        """
        gt = gt.astype(np.float64)
        pred = pred.astype(np.float64)
        d = pred - gt
        dl = np.log(pred) - np.log(gt)
        thr = np.maximum(gt / pred, pred / gt)
        return np.array([
            gt.size, np.sum(d**2), np.sum(np.abs(d) / gt), np.sum(d**2 / gt),
            np.sum(dl**2), np.sum(dl),
            np.sum(np.abs(np.log10(pred) - np.log10(gt))),
            np.sum(thr < 1.25), np.sum(thr < 1.25**2), np.sum(thr < 1.25**3)
        ])

    @staticmethod
    def stats_to_metrics(s: np.ndarray) -> Dict[str, float]:
        """Metrics from (summed) :meth:`sufficient_stats`."""
        n = s[0]
        mean_dl2, mean_dl = s[4] / n, s[5] / n
        return dict(
            rmse=float(np.sqrt(s[1] / n)),
            rmse_log=float(np.sqrt(mean_dl2)),
            abs_rel=float(s[2] / n), sq_rel=float(s[3] / n),
            log10=float(s[6] / n),
            silog=float(np.sqrt(max(mean_dl2 - 0.5 * mean_dl**2, 0.0))),
            d1=float(s[7] / n), d2=float(s[8] / n), d3=float(s[9] / n))

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Store each image's sufficient statistics."""
        name = type(self).__name__
        for ds in data_samples:
            pred, gt = pred_and_gt_maps(ds, self.pred_key, self.gt_key, name)
            pred = pred.astype(np.float64)
            gt = gt.astype(np.float64)
            pred = np.where(pred <= 0, self.pred_min, pred)
            if self.reference_zero_mask_bug:
                gt = np.where(gt == 0, 1e-9, gt)
            valid = (gt > self.min_depth_eval) & (gt < self.max_depth_eval)
            if not valid.any():
                self.results.append(np.zeros(10))
                continue
            self.results.append(self.sufficient_stats(gt[valid],
                                                      pred[valid]))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """Average per image (default) or pool; ``rmse_pooled`` always."""
        stats = np.stack(results)
        stats = stats[stats[:, 0] > 0]
        if len(stats) == 0:
            raise RCConfigError(f'{type(self).__name__}: no valid GT depth '
                                'in the set')
        pooled = self.stats_to_metrics(stats.sum(0))
        if self.per_image:
            per = [self.stats_to_metrics(s) for s in stats]
            out = {k: float(np.mean([p[k] for p in per])) for k in self.KEYS}
            out['rmse_log'] = float(np.median([p['rmse_log'] for p in per]))
        else:
            out = dict(pooled)
        out['rmse_pooled'] = pooled['rmse']
        return out
