"""Multi-task metrics (mIoU, saliency, normals, depth, Δm, registry names)
on hand-computed cases; the edge metric is in test_metrics_edge.py."""
import math
import warnings

import numpy as np
import pytest
import torch

import rc_adapter  # noqa: F401  (must precede mmseg.models imports)
from mmengine.evaluator import Evaluator
from mmengine.structures import PixelData
from mmseg.evaluation.metrics import DepthMetric
from mmseg.registry import METRICS

from metric_helpers import run_metric as _run
from metric_helpers import sample as _sample
from rc_adapter.core.errors import RCConfigError, UnknownTaskError
from rc_adapter.mmseg.evaluation import (MTDepthMetric, MTEdgeMetric,
                                         MTHumanPartsMetric, MTIoUMetric,
                                         MTNormalsMetric, MTSaliencyMetric,
                                         MTSemSegMetric, delta_m,
                                         delta_m_from_metrics)


# ---------------------------------------------------------------- mIoU
# pairs (gt, pred) over valid pixels: (0,0)x2 (0,1) (1,1) (1,2) (2,2)x2 (2,0)
# class 0: TP 2 FP 1 FN 1 -> 1/2; class 1: TP 1 FP 1 FN 1 -> 1/3;
# class 2: TP 2 FP 1 FN 1 -> 1/2; mIoU = 4/9; aAcc = 5/8
GT_A, PRED_A = [[0, 0, 0, 1]], [[0, 0, 1, 1]]
GT_B, PRED_B = [[1, 2, 2, 2, 255]], [[2, 2, 2, 0, 1]]


def test_miou_known_confusion_matrix_over_two_images():
    m = MTIoUMetric(num_classes=3)
    res = _run(m, [_sample(gt_sem_seg=GT_A, pred_sem_seg=PRED_A),
                   _sample(gt_sem_seg=GT_B, pred_sem_seg=PRED_B)])
    assert res['mIoU'] == pytest.approx(400 / 9)
    assert res['aAcc'] == pytest.approx(500 / 8)


def test_human_parts_skips_all_background_and_all_ignore_images():
    m = MTHumanPartsMetric(num_classes=3)
    base = [_sample(gt_parts_seg=GT_A, pred_parts_seg=PRED_A),
            _sample(gt_parts_seg=GT_B, pred_parts_seg=PRED_B)]
    extra = [_sample(gt_parts_seg=[[0, 0, 0]], pred_parts_seg=[[1, 2, 1]]),
             _sample(gt_parts_seg=[[255, 255]], pred_parts_seg=[[1, 1]])]
    assert _run(m, base + extra)['mIoU'] == pytest.approx(400 / 9)
    # without skipping, the all-background image changes the result
    m2 = MTIoUMetric(pred_key='pred_parts_seg', gt_key='gt_parts_seg',
                     num_classes=3)
    assert _run(m2, base + extra)['mIoU'] != pytest.approx(400 / 9)


def test_human_parts_keeps_background_plus_ignore_images():
    # GT: background and ignored pixels, no part. The reference skips only
    # GT that is entirely 0 or entirely 255, so this image counts: its two
    # valid pixels add (gt 0, pred 0) and (gt 0, pred 1).
    # class 0: TP 3 FP 1 FN 2 -> 1/2; class 1: TP 1 FP 2 FN 1 -> 1/4;
    # class 2: 1/2 (unchanged) -> mIoU = 5/12
    mixed = _sample(gt_parts_seg=[[0, 0, 255, 255]],
                    pred_parts_seg=[[0, 1, 2, 2]])
    res = _run(MTHumanPartsMetric(num_classes=3),
               [_sample(gt_parts_seg=GT_A, pred_parts_seg=PRED_A),
                _sample(gt_parts_seg=GT_B, pred_parts_seg=PRED_B), mixed])
    assert res['mIoU'] == pytest.approx(500 / 12)


def test_miou_absent_class_skip_or_zero():
    # class 2 never occurs in GT or prediction: mmseg's nanmean skips it,
    # the reference counts it as IoU 0.
    # class 0: TP 1 FP 0 FN 1 -> 1/2; class 1: TP 1 FP 1 FN 0 -> 1/2
    s = [_sample(gt_sem_seg=[[0, 0, 1]], pred_sem_seg=[[0, 1, 1]])]
    assert _run(MTSemSegMetric(num_classes=3), s)['mIoU'] == pytest.approx(
        50.0)
    zero = MTSemSegMetric(num_classes=3, absent_classes='zero')
    assert _run(zero, s)['mIoU'] == pytest.approx(100 / 3)
    with pytest.raises(RCConfigError, match='absent_classes'):
        MTSemSegMetric(absent_classes='nan')


def test_missing_field_error_names_it():
    m = MTIoUMetric(num_classes=3)
    with pytest.raises(RCConfigError, match='pred_sem_seg'):
        m.process({}, [_sample(gt_sem_seg=GT_A).to_dict()])


def test_size_mismatch_error_names_the_image():
    m = MTIoUMetric(num_classes=3)
    with pytest.raises(RCConfigError, match='img.jpg'):
        m.process({}, [_sample(gt_sem_seg=[[0, 1]],
                               pred_sem_seg=[[0, 1, 1]]).to_dict()])


# ---------------------------------------------------------------- saliency
def test_saliency_max_miou_and_maxf_hand_case():
    # image A (last pixel ignored), image B (empty GT); thresholds .3/.6
    # t=.3: A IoU 2/3 P 2/3 R 1; B IoU 0 P 0 R 0 -> mIoU 1/3, F 0.4
    # t=.6: A IoU 1/2 P 1 R 1/2; B IoU 1 (both empty) P 0 R 0
    #       -> mIoU 3/4, P 1/2, R 1/4, F 1/3
    a = _sample(gt_sal_map=[[1, 1, 0, 0, 255]],
                pred_sal_map=np.array([[.9, .5, .4, .1, .9]], np.float32))
    b = _sample(gt_sal_map=[[0, 0, 0, 0]],
                pred_sal_map=np.array([[.5, .1, .1, .1]], np.float32))
    res = _run(MTSaliencyMetric(thresholds=[0.3, 0.6]), [a, b])
    assert res['max_mIoU'] == pytest.approx(75.0)
    assert res['max_mIoU_thr'] == pytest.approx(0.6)
    assert res['maxF'] == pytest.approx(40.0)
    assert res['maxF_thr'] == pytest.approx(0.3)


def test_saliency_default_thresholds_are_the_papers():
    np.testing.assert_allclose(MTSaliencyMetric().thresholds,
                               np.linspace(0.2, 0.9, 15))


def test_saliency_png_roundtrip_as_the_reference():
    # 0.201 is saved as byte 51 and read back as 51/255 = 0.2, which the
    # reference does not count as > 0.2 (float32 comparison); the float
    # prediction does count.
    s = [_sample(gt_sal_map=[[1, 0]],
                 pred_sal_map=np.array([[0.201, 0.1]], np.float32))]
    res = _run(MTSaliencyMetric(thresholds=[0.2]), s)
    assert res['max_mIoU'] == pytest.approx(100.0)
    png = _run(MTSaliencyMetric(thresholds=[0.2], png_roundtrip=True), s)
    assert png['max_mIoU'] == pytest.approx(0.0)


# ---------------------------------------------------------------- normals
def _rot_x(deg):
    r = math.radians(deg)
    return [0.0, -math.sin(r), math.cos(r)]


def _normals_case():
    # image A errors 0, 10, 20 deg (+1 invalid GT pixel); B errors 45, 90
    gt_a = np.zeros((3, 1, 4), np.float32)
    gt_a[2, 0, :3] = 1
    pred_a = np.stack([_rot_x(0), _rot_x(10), _rot_x(20), [1, 0, 0]],
                      1)[:, None].astype(np.float32) * 2  # not unit
    gt_b = np.zeros((3, 1, 2), np.float32)
    gt_b[2] = 1
    pred_b = np.stack([_rot_x(45), _rot_x(90)], 1)[:, None].astype(
        np.float32)
    return [_sample(gt_normal_map=gt_a, pred_normal_map=pred_a),
            _sample(gt_normal_map=gt_b, pred_normal_map=pred_b)]


@pytest.mark.parametrize('bin_width', [None, 0.01])
def test_normals_known_angles_pooled(bin_width):
    res = _run(MTNormalsMetric(median_bin_width=bin_width), _normals_case())
    assert res['mean_angle'] == pytest.approx(33.0, abs=1e-4)
    # pooled median of (0, 10, 20, 45, 90); per-image medians would give
    # (10 + 67.5) / 2
    tol = 1e-4 if bin_width is None else bin_width / 2 + 1e-4
    assert res['median_angle'] == pytest.approx(20.0, abs=tol)
    assert res['rmse'] == pytest.approx(math.sqrt(2125), abs=1e-4)
    assert res['within_11.25'] == pytest.approx(40.0)
    assert res['within_22.5'] == pytest.approx(60.0)
    assert res['within_30'] == pytest.approx(60.0)


def test_normals_even_count_median_averages_middle_values():
    gt = np.zeros((3, 1, 4), np.float32)
    gt[2] = 1
    pred = np.stack([_rot_x(a) for a in (10, 20, 40, 80)], 1)[:, None]
    res = _run(MTNormalsMetric(median_bin_width=None),
               [_sample(gt_normal_map=gt, pred_normal_map=pred)])
    assert res['median_angle'] == pytest.approx(30.0, abs=1e-4)


def test_normals_png_roundtrip_as_the_reference():
    # A perfect prediction n = GT = (0, 0, 1): the reference saves
    # (n + 1) / 2 as bytes (128, 128, 255), reads back (1/255, 1/255, 1)
    # and so reports atan(sqrt(2) / 255) = 0.318 deg; the float default 0.
    # The GT (0, 0, 2) is not unit: both renormalise it (the reference does
    # inside its evaluation), so its length does not matter.
    gt = np.zeros((3, 1, 2), np.float32)
    gt[2] = [1.0, 2.0]
    pred = np.zeros((3, 1, 2), np.float32)
    pred[2] = 1.0
    s = [_sample(gt_normal_map=gt, pred_normal_map=pred)]
    assert _run(MTNormalsMetric(), s)['mean_angle'] == pytest.approx(
        0.0, abs=1e-6)
    res = _run(MTNormalsMetric(png_roundtrip=True), s)
    expected = math.degrees(math.atan(math.sqrt(2) / 255))
    # the bytes are decoded in float32, as the reference does: 1e-5 deg off
    assert res['mean_angle'] == pytest.approx(expected, abs=1e-4)
    assert expected == pytest.approx(0.3177, abs=1e-4)


# ---------------------------------------------------------------- depth
def _depth_case():
    a = _sample(gt_depth_map=np.array([[2, 2], [0, 4]], np.float32),
                pred_depth_map=np.array([[3, 2], [5, 4]], np.float32))
    b = _sample(gt_depth_map=np.ones((2, 2), np.float32),
                pred_depth_map=np.array([[1, 1], [1, 3]], np.float32))
    return [a, b]


def test_depth_default_is_the_reference_per_image_mean():
    # valid squared errors: A (1, 0, 0) -> RMSE sqrt(1/3); B (0, 0, 0, 4)
    # -> RMSE 1. Per-image mean (default) and pooled over the 7 pixels.
    res = _run(MTDepthMetric(), _depth_case())
    assert res['rmse'] == pytest.approx((math.sqrt(1 / 3) + 1) / 2)
    assert res['rmse_pooled'] == pytest.approx(math.sqrt(5 / 7))
    # log RMSE: A (log 1.5, 0, 0) -> |log 1.5| / sqrt(3); B (0, 0, 0,
    # log 3) -> log 3 / 2; the reference takes the median over images,
    # which for two images is their mean.
    log_a = math.log(1.5) / math.sqrt(3)
    log_b = math.log(3) / 2
    assert res['rmse_log'] == pytest.approx((log_a + log_b) / 2)
    pooled = _run(MTDepthMetric(per_image=False), _depth_case())
    assert pooled['rmse'] == pytest.approx(math.sqrt(5 / 7))
    assert pooled['rmse_pooled'] == pytest.approx(math.sqrt(5 / 7))


def test_depth_log_rmse_is_the_median_over_images():
    # per-image log RMSE: 0, log 2, log 4 -> median log 2 (mean would be
    # log 2 as well for this set, so add a fourth at 0: median (0+log2)/2)
    gts = [np.ones((1, 2), np.float32)] * 4
    preds = [np.full((1, 2), v, np.float32) for v in (1, 2, 4, 1)]
    res = _run(MTDepthMetric(), [_sample(gt_depth_map=g, pred_depth_map=p)
                                 for g, p in zip(gts, preds)])
    assert res['rmse_log'] == pytest.approx(math.log(2) / 2)
    assert res['rmse'] == pytest.approx((0 + 1 + 3 + 0) / 4)


def test_depth_reference_zero_mask_quirk():
    # the reference sets GT 0 to 1e-9 before its valid mask, so A's invalid
    # pixel counts (gt 1e-9, pred 5): A's RMSE is sqrt(26 / 4)
    bug = _run(MTDepthMetric(reference_zero_mask_bug=True), _depth_case())
    assert bug['rmse'] == pytest.approx((math.sqrt(26 / 4) + 1) / 2,
                                        rel=1e-6)
    assert bug['rmse_pooled'] == pytest.approx(math.sqrt(30 / 8), rel=1e-6)
    with pytest.raises(RCConfigError, match='per_image'):
        MTDepthMetric(reference_zero_mask_bug=True, per_image=False)
    # non-positive predictions become 1e-9, as in the reference
    neg = _sample(gt_depth_map=np.ones((1, 1), np.float32),
                  pred_depth_map=np.full((1, 1), -3, np.float32))
    assert _run(MTDepthMetric(), [neg])['rmse'] == pytest.approx(1 - 1e-9)


def test_depth_pooled_matches_mmseg_depthmetric_formulas():
    gt = torch.tensor([2., 2., 4., 1., 1., 1., 1.], dtype=torch.float64)
    pred = torch.tensor([3., 2., 4., 1., 1., 1., 3.], dtype=torch.float64)
    ref = DepthMetric._calc_all_metrics(gt, pred)
    pooled = _run(MTDepthMetric(per_image=False), _depth_case())
    for k, v in ref.items():
        # mmseg casts the d1..d3 counts to float32 (``.float()``)
        rel = 1e-7 if k in ('d1', 'd2', 'd3') else 1e-9
        assert pooled[k] == pytest.approx(v, rel=rel, abs=1e-12), k


# ---------------------------------------------------------------- Δm
def test_delta_m_signs():
    ref = {'semseg': 50.0, 'normals': 20.0}
    hib = {'semseg': True, 'normals': False}
    worse = delta_m({'semseg': 45.0, 'normals': 22.0}, ref, hib)
    assert worse == pytest.approx(10.0)  # positive = drop
    better = delta_m({'semseg': 55.0, 'normals': 18.0}, ref, hib)
    assert better == pytest.approx(-10.0)
    mixed = delta_m({'semseg': 55.0, 'normals': 22.0}, ref, hib)
    assert mixed == pytest.approx(0.0)
    metrics = {'semseg/mIoU': 45.0, 'normals/mean_angle': 22.0,
               'normals/median_angle': 1.0}
    assert delta_m_from_metrics(metrics, ref) == pytest.approx(10.0)
    with pytest.raises(UnknownTaskError, match='depth'):
        delta_m_from_metrics(metrics, {'depth': 0.5})
    with pytest.raises(RCConfigError, match='semseg'):
        delta_m({'semseg': 1.0}, {'semseg': 0.0}, {'semseg': True})


# ---------------------------------------------------------------- evaluator
def test_evaluator_prefixes_task_names():
    ev = Evaluator([
        dict(type='MTIoUMetric', num_classes=3, prefix='semseg'),
        dict(type='MTDepthMetric', prefix='depth'),
    ])
    s = _depth_case()
    for x, (g, p) in zip(s, [(GT_A, PRED_A), (GT_B, PRED_B)]):
        x.gt_sem_seg = PixelData(data=torch.tensor(g)[None])
        x.pred_sem_seg = PixelData(data=torch.tensor(p)[None])
    ev.process(s, {})
    res = ev.evaluate(2)
    assert res['semseg/mIoU'] == pytest.approx(400 / 9)
    assert res['depth/rmse'] == pytest.approx((math.sqrt(1 / 3) + 1) / 2)
    assert res['depth/rmse_pooled'] == pytest.approx(math.sqrt(5 / 7))


# ---------------------------------------------------------------- names
NEW_NAMES = {'SemSegMetric': MTSemSegMetric,
             'HumanPartsMetric': MTHumanPartsMetric,
             'SaliencyMetric': MTSaliencyMetric,
             'NormalsMetric': MTNormalsMetric,
             'EdgeMetric': MTEdgeMetric}


@pytest.mark.parametrize('old', sorted(NEW_NAMES))
def test_old_registry_names_are_deprecated_aliases(old):
    new = NEW_NAMES[old]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the new name does not warn
        assert type(METRICS.build(dict(type=new.__name__))) is new
    with pytest.warns(DeprecationWarning, match=f"type='{new.__name__}'"):
        metric = METRICS.build(dict(type=old, prefix='x'))
    assert isinstance(metric, new) and metric.prefix == 'x'


def test_alias_computes_the_same_as_the_new_name():
    samples = [_sample(gt_sem_seg=GT_A, pred_sem_seg=PRED_A),
               _sample(gt_sem_seg=GT_B, pred_sem_seg=PRED_B)]
    with pytest.warns(DeprecationWarning):
        old = METRICS.build(dict(type='SemSegMetric', num_classes=3))
    assert _run(old, samples) == _run(MTSemSegMetric(num_classes=3), samples)
