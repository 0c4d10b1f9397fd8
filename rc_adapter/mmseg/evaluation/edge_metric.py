"""Boundary ODS/OIS F-measure and AP, computed as the seism benchmark does.

The RCM reference scores edges with the MATLAB seism toolbox (measure
``fb``, reader ``read_one_cont_png``), which calls Piotr Dollar's
``edgesEvalImg``. Per image and threshold ``t`` (see ``docs/metrics.md``):

1. the prediction is the sigmoid map saved as an 8-bit PNG and read back
   (values ``k/255``);
2. non-maximum suppression along the edge normal (:mod:`.edge_nms`);
3. binarisation ``E >= max(eps, t)``;
4. thinning, ``bwmorph(E, 'thin', Inf)`` (:mod:`.edge_thin`);
5. one-to-one correspondence with the GT boundary pixels within
   ``maxDist = 0.0075`` of the image diagonal (:mod:`.edge_match`), giving
   ``cntR``/``sumR`` (matched/all GT pixels) and ``cntP``/``sumP``
   (matched/all predicted pixels).

Counts are summed over the dataset per threshold. **ODS**: the best F over
the thresholds of the pooled P and R (seism takes the maximum, it does not
interpolate between thresholds). **OIS**: each image's best-F threshold, its
counts pooled. **AP**: precision interpolated linearly at recall 0, 0.01,
..., 1 along the pooled curve, summed over the covered recall range / 100.
The thresholds are the 101 values of seism's public HED parameter file:
0.001, 0.01, 0.02, ..., 0.99, 0.999.

``protocol='seism'`` (default) runs exactly that pipeline.
``protocol='fast_approx'`` is a much faster approximation for quick runs:
no PNG round trip and no NMS, ``skeletonize`` thinning, distance-transform
matching (over-estimates precision: not one-to-one), 25 thresholds
``linspace(1/26, 25/26, 25)`` and ODS interpolated between neighbouring
thresholds (as Dollar's ``edgesEvalDir``). Explicit arguments override
single steps of a protocol; the result is then neither of the two.

Ignored GT pixels (``ignore_index``, e.g. padding) are excluded: both maps
are cropped to the bounding box of the non-ignored pixels (so NMS border
damping and the tolerance's diagonal refer to the real image, as in the
reference, which evaluates un-padded images), and ignored pixels left
inside that box are removed from both maps after binarisation.

Reported: ``odsF``, ``odsP``, ``odsR`` (x100), ``odsT`` (the ODS threshold),
``oisF`` (x100, with ``ois=True``) and ``AP`` (x100).
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.evaluator import BaseMetric
from scipy import ndimage

from mmseg.registry import METRICS
from rc_adapter.core.errors import RCConfigError

from ._utils import png_roundtrip as to_png_levels
from ._utils import pred_and_gt_maps
from .edge_match import OneToOneMatcher, distance_counts
from .edge_nms import edge_nms
from .edge_thin import thin as bw_thin

__all__ = ['SEISM_THRESHOLDS', 'EDGE_PROTOCOLS', 'edge_counts',
           'edge_thresholds', 'precision_recall', 'f_measure', 'ods', 'ois',
           'average_precision', 'MTEdgeMetric']

#: seism's ``parameters/HED_VOC_Khoreva.txt``: 0.001, 0.01 ... 0.99, 0.999.
SEISM_THRESHOLDS = np.concatenate([[0.001], np.arange(1, 100) / 100,
                                   [0.999]])

#: The settings of each protocol (any of them can be overridden).
EDGE_PROTOCOLS: Dict[str, dict] = {
    'seism': dict(max_dist=0.0075, thresholds=SEISM_THRESHOLDS, nms=True,
                  png_roundtrip=True, thin_method='thin',
                  matching='bipartite', ods_interp=False),
    'fast_approx': dict(max_dist=0.0075, thresholds=25, nms=False,
                        png_roundtrip=False, thin_method='skeletonize',
                        matching='distance', ods_interp=True),
}


def sk_skeletonize(image: np.ndarray) -> np.ndarray:
    """``skimage.morphology.skeletonize`` (imported on first use: skimage's
    morphology takes ~0.4 s to import, paid by every tool otherwise)."""
    from skimage.morphology import skeletonize
    return skeletonize(image)


_THIN = {'thin': bw_thin, 'skeletonize': sk_skeletonize, 'none': None}
_MATCHING = ('bipartite', 'distance')


def edge_thresholds(thresholds: Union[int, Sequence[float]]) -> np.ndarray:
    """Threshold values: an explicit list, or K values
    ``linspace(1/(K+1), 1-1/(K+1), K)`` for an integer K (``edgesEvalImg``).

    Raises:
        RCConfigError: K < 1, an empty list or values outside [0, 1].
    """
    if isinstance(thresholds, (int, np.integer)):
        if thresholds < 1:
            raise RCConfigError(f'edge metric: thresholds must be >= 1, got '
                                f'{thresholds}')
        k = int(thresholds)
        return np.linspace(1 / (k + 1), 1 - 1 / (k + 1), k)
    values = np.asarray(thresholds, dtype=np.float64).ravel()
    if values.size == 0 or values.min() < 0 or values.max() > 1:
        raise RCConfigError('edge metric: thresholds must be a non-empty '
                            'list of values in [0, 1] or a count')
    return values


def _check_steps(thin_method: str, matching: str) -> None:
    if thin_method not in _THIN:
        raise RCConfigError(f'edge metric: thin_method must be one of '
                            f'{sorted(_THIN)}, got {thin_method!r}')
    if matching not in _MATCHING:
        raise RCConfigError(f'edge metric: matching must be one of '
                            f'{list(_MATCHING)}, got {matching!r}')


def _crop_to_valid(valid: np.ndarray) -> Tuple[slice, slice]:
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def edge_counts(pred: np.ndarray,
                gt: np.ndarray,
                thresholds: np.ndarray,
                max_dist: float = 0.0075,
                *,
                nms: bool = True,
                png_roundtrip: bool = False,
                thin_method: str = 'thin',
                matching: str = 'bipartite',
                ignore_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Boundary match counts of one image for every threshold.

    Args:
        pred (np.ndarray): HxW soft edge map in [0, 1].
        gt (np.ndarray): HxW bool GT boundary map.
        thresholds (np.ndarray): K thresholds; a pixel is an edge when
            ``pred >= max(eps, t)``.
        max_dist (float): tolerance as a fraction of the image diagonal.
        nms (bool): non-maximum suppression before binarisation.
        png_roundtrip (bool): quantise ``pred`` as the reference's 8-bit PNG.
        thin_method (str): 'thin' (bwmorph thin), 'skeletonize' or 'none'.
        matching (str): 'bipartite' (one-to-one) or 'distance'.
        ignore_mask (np.ndarray, optional): HxW bool, pixels to exclude
            (see the module docstring).

    Returns:
        np.ndarray: Kx4 int64 array of (cntR, sumR, cntP, sumP).
    """
    _check_steps(thin_method, matching)
    thresholds = np.asarray(thresholds, np.float64)
    out = np.zeros((len(thresholds), 4), dtype=np.int64)
    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, bool)
    ignore = None
    if ignore_mask is not None and ignore_mask.any():
        valid = ~ignore_mask
        if not valid.any():
            return out
        box = _crop_to_valid(valid)
        pred, gt, ignore = pred[box], gt[box] & valid[box], ignore_mask[box]
        if not ignore.any():
            ignore = None
    if png_roundtrip:
        pred = to_png_levels(pred)
    if nms:
        pred = edge_nms(pred)
    radius = max_dist * float(np.hypot(*gt.shape))
    sum_r = int(np.count_nonzero(gt))
    if matching == 'bipartite':
        matcher = OneToOneMatcher(gt, radius)
    elif sum_r:
        dist_to_gt = ndimage.distance_transform_edt(~gt)
    thin_fn = _THIN[thin_method]
    eps = np.finfo(np.float64).eps
    prev = None
    for k, t in enumerate(thresholds):
        e = pred >= max(eps, float(t))
        if ignore is not None:
            e &= ~ignore
        if prev is not None and np.array_equal(e, prev):
            out[k] = out[k - 1]
            continue
        prev = e
        if thin_fn is not None and e.any():
            e = thin_fn(e)
        sum_p = int(np.count_nonzero(e))
        if sum_p == 0 or sum_r == 0:
            out[k] = (0, sum_r, 0, sum_p)
        elif matching == 'bipartite':
            n = matcher.count(e)
            out[k] = (n, sum_r, n, sum_p)
        else:
            cnt_r, cnt_p = distance_counts(e, gt, dist_to_gt, radius)
            out[k] = (cnt_r, sum_r, cnt_p, sum_p)
    return out


def precision_recall(counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Recall and precision from ``(..., 4)`` counts, with seism's
    conventions for empty sets (no GT: R 1, P 0; no prediction: R 0, P 1;
    both empty: R 0, P 1).

    Returns:
        tuple: (R, P) arrays of shape ``counts.shape[:-1]``.
    """
    cnt_r, sum_r, cnt_p, sum_p = (counts[..., i].astype(np.float64)
                                  for i in range(4))
    rec = np.divide(cnt_r, sum_r, out=np.zeros_like(cnt_r),
                    where=sum_r > 0)
    prec = np.divide(cnt_p, sum_p, out=np.zeros_like(cnt_p),
                     where=sum_p > 0)
    no_gt = sum_r == 0
    rec[no_gt], prec[no_gt] = 1.0, 0.0
    no_pred = sum_p == 0
    rec[no_pred], prec[no_pred] = 0.0, 1.0
    return rec, prec


def f_measure(rec: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """F = 2PR / (P + R), 0 where P + R = 0."""
    total = rec + prec
    return np.divide(2 * prec * rec, total, out=np.zeros_like(total),
                     where=total > 0)


def ods(thresholds: np.ndarray, counts: np.ndarray,
        interpolate: bool = False, steps: int = 100) -> Tuple[float, ...]:
    """Optimal dataset scale from the dataset-summed Kx4 ``counts``.

    Args:
        thresholds (np.ndarray): the K thresholds.
        counts (np.ndarray): Kx4 counts summed over images.
        interpolate (bool): also search linearly between neighbouring
            thresholds, as Dollar's ``edgesEvalDir`` (which takes P = R = 0
            for empty sets); seism does not interpolate.
        steps (int): interpolation points per interval.

    Returns:
        tuple: (F, P, R, T) at the best point (the first on ties).
    """
    rec, prec = precision_recall(counts)
    f = f_measure(rec, prec)
    k = int(np.argmax(f))
    best = (f[k], prec[k], rec[k], thresholds[k])
    if interpolate and len(thresholds) > 1:
        cnt_r, sum_r, cnt_p, sum_p = (counts[:, i].astype(np.float64)
                                      for i in range(4))
        rec = cnt_r / np.maximum(sum_r, 1)
        prec = cnt_p / np.maximum(sum_p, 1)
        a = np.linspace(0, 1, steps)[:, None]
        r = rec[1:] * a + rec[:-1] * (1 - a)
        p = prec[1:] * a + prec[:-1] * (1 - a)
        t = thresholds[1:] * a + thresholds[:-1] * (1 - a)
        fi = f_measure(r, p)
        i, j = np.unravel_index(int(np.argmax(fi)), fi.shape)
        if fi[i, j] > best[0]:
            best = (fi[i, j], p[i, j], r[i, j], t[i, j])
    return tuple(float(v) for v in best)


def ois(counts: np.ndarray) -> float:
    """Optimal image scale F from the per-image NxKx4 ``counts``: each
    image's best-F threshold (the first on ties), counts pooled."""
    rec, prec = precision_recall(counts)
    best = np.argmax(f_measure(rec, prec), axis=1)
    pooled = counts[np.arange(len(counts)), best].sum(0)
    r, p = precision_recall(pooled)
    return float(f_measure(r, p))


def average_precision(counts: np.ndarray) -> float:
    """seism's AP of the dataset-summed Kx4 ``counts``: precision at the
    first threshold of each distinct recall, interpolated linearly at
    recall 0, 0.01, ..., 1 inside the covered range, summed / 100."""
    rec, prec = precision_recall(counts)
    r_u, first = np.unique(rec, return_index=True)
    if len(r_u) < 2:
        return 0.0
    grid = np.arange(101) / 100
    inside = (grid >= r_u[0]) & (grid <= r_u[-1])
    return float(np.interp(grid[inside], r_u, prec[first]).sum() / 100)


@METRICS.register_module()
class MTEdgeMetric(BaseMetric):
    """ODS/OIS boundary F-measure and AP of ``pred_edge_map``.

    See the module docstring and ``docs/metrics.md`` for the procedure.

    Args:
        protocol (str): 'seism' (default: the reference benchmark) or
            'fast_approx' (see the module docstring).
        max_dist (float, optional): tolerance as a fraction of the image
            diagonal (both protocols: 0.0075, seism's default, which the
            reference uses on PASCAL-Context and NYUD alike).
        thresholds (int | Sequence[float], optional): count or values.
        nms (bool, optional): non-maximum suppression.
        png_roundtrip (bool, optional): 8-bit quantisation of predictions.
        thin_method (str, optional): 'thin', 'skeletonize' or 'none'.
        matching (str, optional): 'bipartite' (one-to-one) or 'distance'.
        ods_interp (bool, optional): interpolate ODS between thresholds.
        ois (bool): also report ``oisF``.
        pred_key (str): default ``'pred_edge_map'`` (1xHxW in [0, 1]).
        gt_key (str): default ``'gt_edge_map'`` (1xHxW 0/1, 255 ignore).
        ignore_index (int): ignored GT value.
        **kwargs: ``collect_device``, ``prefix`` of ``BaseMetric``.

    Arguments left at ``None`` take the protocol's value.
    """

    def __init__(self,
                 protocol: str = 'seism',
                 max_dist: Optional[float] = None,
                 thresholds: Union[int, Sequence[float], None] = None,
                 nms: Optional[bool] = None,
                 png_roundtrip: Optional[bool] = None,
                 thin_method: Optional[str] = None,
                 matching: Optional[str] = None,
                 ods_interp: Optional[bool] = None,
                 ois: bool = True,
                 pred_key: str = 'pred_edge_map',
                 gt_key: str = 'gt_edge_map',
                 ignore_index: int = 255,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if protocol not in EDGE_PROTOCOLS:
            raise RCConfigError(f'{type(self).__name__}: protocol must be '
                                f'one of {sorted(EDGE_PROTOCOLS)}, got '
                                f'{protocol!r}')
        given = dict(max_dist=max_dist, thresholds=thresholds, nms=nms,
                     png_roundtrip=png_roundtrip, thin_method=thin_method,
                     matching=matching, ods_interp=ods_interp)
        cfg = {k: EDGE_PROTOCOLS[protocol][k] if v is None else v
               for k, v in given.items()}
        _check_steps(cfg['thin_method'], cfg['matching'])
        if not cfg['max_dist'] > 0:
            raise RCConfigError(f'{type(self).__name__}: max_dist must be '
                                f'> 0, got {cfg["max_dist"]}')
        self.protocol = protocol
        self.max_dist = float(cfg['max_dist'])
        self.thresholds = edge_thresholds(cfg['thresholds'])
        self.nms = bool(cfg['nms'])
        self.png_roundtrip = bool(cfg['png_roundtrip'])
        self.thin_method = cfg['thin_method']
        self.matching = cfg['matching']
        self.ods_interp = bool(cfg['ods_interp'])
        self.ois = ois
        self.pred_key, self.gt_key = pred_key, gt_key
        self.ignore_index = ignore_index

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Store the per-threshold match counts of each image."""
        name = type(self).__name__
        for ds in data_samples:
            pred, gt = pred_and_gt_maps(ds, self.pred_key, self.gt_key, name)
            ignore = gt == self.ignore_index
            self.results.append(edge_counts(
                pred, (gt > 0) & ~ignore, self.thresholds, self.max_dist,
                nms=self.nms, png_roundtrip=self.png_roundtrip,
                thin_method=self.thin_method, matching=self.matching,
                ignore_mask=ignore))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """ODS (and OIS) F, P, R and AP from the stored counts."""
        if not results:
            raise RCConfigError(f'{type(self).__name__}: no image was '
                                'evaluated (empty validation set?)')
        counts = np.stack(results)  # N x K x 4
        total = counts.sum(0)
        f, p, r, t = ods(self.thresholds, total, self.ods_interp)
        out = dict(odsF=f * 100, odsP=p * 100, odsR=r * 100, odsT=t)
        if self.ois:
            out['oisF'] = ois(counts) * 100
        out['AP'] = average_precision(total) * 100
        return out
