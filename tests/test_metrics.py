"""Multi-task metrics on hand-computed cases."""
import math

import numpy as np
import pytest
import torch

import rc_adapter  # noqa: F401  (must precede mmseg.models imports)
from mmengine.evaluator import Evaluator
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.evaluation.metrics import DepthMetric
from mmseg.structures import SegDataSample

from rc_adapter.mmseg.evaluation import (EdgeMetric, HumanPartsMetric,
                                         MTDepthMetric, MTIoUMetric,
                                         NormalsMetric, SaliencyMetric,
                                         delta_m, delta_m_from_metrics,
                                         edge_counts)

init_default_scope('mmseg')


def _sample(**fields):
    ds = SegDataSample()
    ds.set_metainfo(dict(img_path='img.jpg'))
    for k, v in fields.items():
        t = torch.as_tensor(np.asarray(v))
        if t.ndim == 2:
            t = t[None]
        ds.set_data({k: PixelData(data=t)})
    return ds


def _run(metric, samples):
    metric.process({}, [s.to_dict() for s in samples])
    return metric.compute_metrics(metric.results)


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
    m = HumanPartsMetric(num_classes=3)
    base = [_sample(gt_parts_seg=GT_A, pred_parts_seg=PRED_A),
            _sample(gt_parts_seg=GT_B, pred_parts_seg=PRED_B)]
    extra = [_sample(gt_parts_seg=[[0, 0, 0]], pred_parts_seg=[[1, 2, 1]]),
             _sample(gt_parts_seg=[[255, 255]], pred_parts_seg=[[1, 1]])]
    assert _run(m, base + extra)['mIoU'] == pytest.approx(400 / 9)
    # without skipping, the all-background image changes the result
    m2 = MTIoUMetric(pred_key='pred_parts_seg', gt_key='gt_parts_seg',
                     num_classes=3)
    assert _run(m2, base + extra)['mIoU'] != pytest.approx(400 / 9)


def test_missing_field_error_names_it():
    m = MTIoUMetric(num_classes=3)
    with pytest.raises(KeyError, match='pred_sem_seg'):
        m.process({}, [_sample(gt_sem_seg=GT_A).to_dict()])


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
    res = _run(SaliencyMetric(thresholds=[0.3, 0.6]), [a, b])
    assert res['max_mIoU'] == pytest.approx(75.0)
    assert res['max_mIoU_thr'] == pytest.approx(0.6)
    assert res['maxF'] == pytest.approx(40.0)
    assert res['maxF_thr'] == pytest.approx(0.3)


def test_saliency_default_thresholds_are_the_papers():
    np.testing.assert_allclose(SaliencyMetric().thresholds,
                               np.linspace(0.2, 0.9, 15))


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
    res = _run(NormalsMetric(median_bin_width=bin_width), _normals_case())
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
    res = _run(NormalsMetric(median_bin_width=None),
               [_sample(gt_normal_map=gt, pred_normal_map=pred)])
    assert res['median_angle'] == pytest.approx(30.0, abs=1e-4)


# ---------------------------------------------------------------- depth
def _depth_case():
    a = _sample(gt_depth_map=np.array([[2, 2], [0, 4]], np.float32),
                pred_depth_map=np.array([[3, 2], [5, 4]], np.float32))
    b = _sample(gt_depth_map=np.ones((2, 2), np.float32),
                pred_depth_map=np.array([[1, 1], [1, 3]], np.float32))
    return [a, b]


def test_depth_rmse_pooled_and_per_image():
    # valid squared errors: A (1, 0, 0), B (0, 0, 0, 4)
    pooled = _run(MTDepthMetric(), _depth_case())
    assert pooled['rmse'] == pytest.approx(math.sqrt(5 / 7))
    per = _run(MTDepthMetric(per_image=True), _depth_case())
    assert per['rmse'] == pytest.approx((math.sqrt(1 / 3) + 1) / 2)
    # the reference bug counts A's GT-0 pixel (gt 1e-9, pred 5)
    bug = _run(MTDepthMetric(per_image=True, reference_zero_mask_bug=True),
               _depth_case())
    assert bug['rmse'] == pytest.approx((math.sqrt(26 / 4) + 1) / 2,
                                        rel=1e-6)
    with pytest.raises(ValueError, match='per_image'):
        MTDepthMetric(reference_zero_mask_bug=True)


def test_depth_pooled_matches_mmseg_depthmetric_formulas():
    gt = torch.tensor([2., 2., 4., 1., 1., 1., 1.], dtype=torch.float64)
    pred = torch.tensor([3., 2., 4., 1., 1., 1., 3.], dtype=torch.float64)
    ref = DepthMetric._calc_all_metrics(gt, pred)
    pooled = _run(MTDepthMetric(), _depth_case())
    for k, v in ref.items():
        # mmseg casts the d1..d3 counts to float32 (``.float()``)
        rel = 1e-7 if k in ('d1', 'd2', 'd3') else 1e-9
        assert pooled[k] == pytest.approx(v, rel=rel, abs=1e-12), k


# ---------------------------------------------------------------- edge
def _line(col, rows=slice(5, 35), size=40, width=1):
    m = np.zeros((size, size), np.float32)
    m[rows, col:col + width] = 1
    return m


def _edge_sample(gt, pred):
    return _sample(gt_edge_map=gt.astype(np.uint8),
                   pred_edge_map=(0.8 * pred).astype(np.float32))


# 40x40 image, diagonal 56.57; max_dist 0.04 -> tolerance 2.26 px
@pytest.mark.parametrize('matching', ['distance', 'bipartite'])
def test_edge_shift_inside_and_outside_tolerance(matching):
    gt = _line(20)
    inside = _run(EdgeMetric(max_dist=0.04, matching=matching),
                  [_edge_sample(gt, _line(22))])
    assert inside['odsF'] == pytest.approx(100.0)
    outside = _run(EdgeMetric(max_dist=0.04, matching=matching),
                   [_edge_sample(gt, _line(24))])
    assert outside['odsF'] == pytest.approx(0.0)
    # half the edge (rows 20..34) shifted out of tolerance: P = 15/30.
    # Recall: distance matching also recalls GT rows 20 and 21 (within
    # 2.26 px of the kept end pixel (19, 20)): R = 17/30, F = 17/32;
    # one-to-one matching cannot reuse that pixel: R = 15/30, F = 1/2.
    half = _line(20, rows=slice(5, 20)) + _line(24, rows=slice(20, 35))
    res = _run(EdgeMetric(max_dist=0.04, matching=matching),
               [_edge_sample(gt, half)])
    assert res['odsP'] == pytest.approx(50.0)
    if matching == 'distance':
        assert res['odsR'] == pytest.approx(1700 / 30)
        assert res['odsF'] == pytest.approx(1700 / 32)
    else:
        assert res['odsR'] == pytest.approx(50.0)
        assert res['odsF'] == pytest.approx(50.0)


def test_edge_one_to_one_matching_penalises_double_edges():
    gt = _line(20)
    double = _line(19) + _line(21)
    th = np.array([0.5])
    d = edge_counts(0.8 * double, gt > 0, th, max_dist=0.04,
                    matching='distance')
    b = edge_counts(0.8 * double, gt > 0, th, max_dist=0.04,
                    matching='bipartite')
    # (cntR, sumR, cntP, sumP)
    np.testing.assert_array_equal(d[0], [30, 30, 60, 60])
    np.testing.assert_array_equal(b[0], [30, 30, 30, 60])


def test_edge_thinning_and_ignore():
    gt = _line(20)
    thick = _line(19, width=3)
    th = np.array([0.5])
    no_thin = edge_counts(0.8 * thick, gt > 0, th, 0.04, thin=False,
                          matching='bipartite')[0]
    assert no_thin[3] == 90 and no_thin[2] == 30
    thinned = edge_counts(0.8 * thick, gt > 0, th, 0.04, thin=True,
                          matching='bipartite')[0]
    assert thinned[3] <= 32 and thinned[2] == thinned[3]
    # predictions inside the ignore region do not count as false positives
    gt_map = gt.astype(np.uint8)
    gt_map[:, 30:] = 255
    pred = _line(20) + _line(33)
    res = _run(EdgeMetric(max_dist=0.04), [_sample(
        gt_edge_map=gt_map, pred_edge_map=(0.8 * pred).astype(np.float32))])
    assert res['odsF'] == pytest.approx(100.0)


def test_edge_ods_ois_two_images():
    gt = _line(20)
    good = _edge_sample(gt, _line(21))
    bad = _edge_sample(gt, _line(30))
    res = _run(EdgeMetric(max_dist=0.04, thresholds=9), [good, bad])
    # counts summed: R = 30/60, P = 30/60
    assert res['odsF'] == pytest.approx(50.0)
    assert res['oisF'] >= res['odsF']
    assert EdgeMetric(thresholds=99).thresholds[0] == pytest.approx(0.01)


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
    with pytest.raises(KeyError, match='depth'):
        delta_m_from_metrics(metrics, {'depth': 0.5})


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
    assert res['depth/rmse'] == pytest.approx(math.sqrt(5 / 7))


def test_edge_skeletonize_option_agrees_on_thin_lines():
    gt = _line(20)
    for method in ('thin', 'skeletonize'):
        res = _run(EdgeMetric(max_dist=0.04, thin_method=method,
                              thresholds=9),
                   [_edge_sample(gt, _line(19, width=3))])
        assert res['odsR'] == pytest.approx(100.0), method
        assert res['odsP'] == pytest.approx(100.0), method
    with pytest.raises(ValueError, match='thin_method'):
        EdgeMetric(thin_method='nms')
