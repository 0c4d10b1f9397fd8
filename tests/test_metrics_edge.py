"""Edge odsF: the seism pipeline (NMS, thinning, one-to-one matching,
thresholds) and the fast approximation, on hand-made maps."""
import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree
from skimage.morphology import thin as sk_thin

import rc_adapter  # noqa: F401  (registers the metrics)
from metric_helpers import run_metric, sample
from rc_adapter.core.errors import RCConfigError
from rc_adapter.mmseg.evaluation import (EDGE_PROTOCOLS, SEISM_THRESHOLDS,
                                         MTEdgeMetric, edge_counts)
from rc_adapter.mmseg.evaluation._utils import png_roundtrip
from rc_adapter.mmseg.evaluation.edge_match import (OneToOneMatcher,
                                                    max_matching_size)
from rc_adapter.mmseg.evaluation.edge_metric import (average_precision, ods,
                                                     ois)
from rc_adapter.mmseg.evaluation.edge_nms import edge_nms, edge_orientation
from rc_adapter.mmseg.evaluation.edge_thin import thin

# 40x40 maps: diagonal 56.57 px; max_dist 0.04 -> tolerance 2.26 px
TOL = 0.04
ONE = np.array([0.5])


def _line(col, rows=slice(5, 35), size=40, width=1):
    m = np.zeros((size, size), np.float32)
    m[rows, col:col + width] = 1
    return m


def _edge_sample(gt, pred):
    return sample(gt_edge_map=gt.astype(np.uint8),
                  pred_edge_map=(0.8 * pred).astype(np.float32))


# ---------------------------------------------------------------- protocol
def test_seism_thresholds_are_the_hed_parameter_file():
    # seism's parameters/HED_VOC_Khoreva.txt: 0.001, 0.01 ... 0.99, 0.999
    assert len(SEISM_THRESHOLDS) == 101
    assert SEISM_THRESHOLDS[0] == 0.001 and SEISM_THRESHOLDS[-1] == 0.999
    np.testing.assert_allclose(SEISM_THRESHOLDS[1:-1],
                               np.arange(1, 100) / 100)
    # not linspace(0.001, 0.999, 101), whose step is 0.00998
    assert not np.allclose(SEISM_THRESHOLDS, np.linspace(0.001, 0.999, 101))
    m = MTEdgeMetric()
    np.testing.assert_array_equal(m.thresholds, SEISM_THRESHOLDS)
    assert (m.max_dist, m.nms, m.png_roundtrip, m.thin_method, m.matching,
            m.ods_interp) == (0.0075, True, True, 'thin', 'bipartite', False)


def test_fast_approx_protocol_and_overrides():
    m = MTEdgeMetric(protocol='fast_approx')
    assert (m.nms, m.png_roundtrip, m.thin_method, m.matching) == (
        False, False, 'skeletonize', 'distance')
    np.testing.assert_allclose(m.thresholds, np.linspace(1 / 26, 25 / 26, 25))
    assert m.max_dist == 0.0075
    # an explicit argument replaces one step only
    m = MTEdgeMetric(protocol='fast_approx', max_dist=0.011, thresholds=9)
    assert m.max_dist == 0.011 and len(m.thresholds) == 9
    assert m.matching == 'distance'
    assert set(EDGE_PROTOCOLS) == {'seism', 'fast_approx'}


@pytest.mark.parametrize('kwargs, word', [
    (dict(protocol='matlab'), 'protocol'),
    (dict(thin_method='nms'), 'thin_method'),
    (dict(matching='greedy'), 'matching'),
    (dict(max_dist=0), 'max_dist'),
    (dict(thresholds=0), 'thresholds'),
    (dict(thresholds=[0.5, 1.5]), 'thresholds'),
])
def test_bad_arguments_raise_config_errors(kwargs, word):
    with pytest.raises(RCConfigError, match=word):
        MTEdgeMetric(**kwargs)


def test_png_roundtrip_is_the_reference_byte_scaling():
    # uint8(clip(255 x, 0, 255) + 0.5) / 255
    got = png_roundtrip(np.array([0.0, 0.0019, 0.002, 0.5, 1.0, 1.3, -1]))
    np.testing.assert_allclose(got * 255, [0, 0, 1, 128, 255, 255, 0],
                               atol=1e-4)
    # a faint edge below half a byte vanishes from the reference's PNG
    pred = np.zeros((20, 20), np.float32)
    pred[:, 10] = 0.0015
    gt = pred > 0
    kw = dict(nms=False, thin_method='none')
    assert edge_counts(pred, gt, [0.001], 0.1, **kw)[0, 3] == 20
    assert edge_counts(pred, gt, [0.001], 0.1, png_roundtrip=True,
                       **kw)[0, 3] == 0


# ---------------------------------------------------------------- matching
def test_max_matching_size_beats_greedy():
    # left 0 - {0, 1}, left 1 - {0}: greedy 0-0 leaves left 1 unmatched
    assert max_matching_size(np.array([0, 1, 0]), np.array([2, 1]), 2) == 2
    # left 0, 1, 2 all - {0}: one pair only
    assert max_matching_size(np.array([0, 0, 0]), np.array([1, 1, 1]),
                             1) == 1


def test_one_to_one_matcher_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = rng.integers(5, 30, 2)
        gt = rng.random((h, w)) < rng.uniform(0.02, 0.4)
        pred = rng.random((h, w)) < rng.uniform(0.02, 0.4)
        radius = rng.uniform(0.5, 4)
        gp, pp = np.argwhere(gt), np.argwhere(pred)
        expected = 0
        if len(gp) and len(pp):
            pairs = cKDTree(pp).sparse_distance_matrix(
                cKDTree(gp), radius, output_type='ndarray')
            graph = csr_matrix((np.ones(len(pairs)), (pairs['i'],
                                                      pairs['j'])),
                               shape=(len(pp), len(gp)))
            expected = int(np.sum(maximum_bipartite_matching(
                graph, perm_type='column') >= 0))
        assert OneToOneMatcher(gt, radius).count(pred) == expected


def test_two_parallel_lines_one_to_one_counts_one():
    # Two predicted lines at distance 1 on either side of one GT line.
    # Distance matching counts both as correct (P = 60/60), the one-to-one
    # correspondence pairs each GT pixel once (P = 30/60).
    gt = _line(20) > 0
    double = 0.8 * (_line(19) + _line(21))
    kw = dict(nms=False, thin_method='none')
    d = edge_counts(double, gt, ONE, TOL, matching='distance', **kw)
    b = edge_counts(double, gt, ONE, TOL, matching='bipartite', **kw)
    np.testing.assert_array_equal(d[0], [30, 30, 60, 60])  # cntR sumR cntP
    np.testing.assert_array_equal(b[0], [30, 30, 30, 60])  # sumP
    # the same through the metrics: NMS and thinning keep both lines
    pair = [_edge_sample(_line(20), _line(19) + _line(21))]
    seism = run_metric(MTEdgeMetric(max_dist=TOL), pair)
    assert seism['odsP'] == pytest.approx(50.0)
    assert seism['odsR'] == pytest.approx(100.0)
    fast = run_metric(MTEdgeMetric(protocol='fast_approx', max_dist=TOL),
                      pair)
    assert fast['odsP'] == pytest.approx(100.0)


@pytest.mark.parametrize('protocol', ['seism', 'fast_approx'])
def test_edge_shift_inside_and_outside_tolerance(protocol):
    gt = _line(20)
    inside = run_metric(MTEdgeMetric(protocol, max_dist=TOL),
                        [_edge_sample(gt, _line(22))])
    assert inside['odsF'] == pytest.approx(100.0)
    outside = run_metric(MTEdgeMetric(protocol, max_dist=TOL),
                         [_edge_sample(gt, _line(24))])
    assert outside['odsF'] == pytest.approx(0.0)
    # Half the edge (rows 20..34) shifted out of tolerance: P = 15/30.
    # Distance matching also recalls GT rows 20 and 21 (within 2.26 px of
    # the kept end pixel (19, 20)): R = 17/30, F = 17/32; one-to-one
    # matching cannot reuse that pixel: R = 15/30, F = 1/2.
    half = _line(20, rows=slice(5, 20)) + _line(24, rows=slice(20, 35))
    res = run_metric(MTEdgeMetric(protocol, max_dist=TOL),
                     [_edge_sample(gt, half)])
    assert res['odsP'] == pytest.approx(50.0)
    if protocol == 'fast_approx':
        assert res['odsR'] == pytest.approx(1700 / 30)
        assert res['odsF'] == pytest.approx(1700 / 32)
    else:
        assert res['odsR'] == pytest.approx(50.0)
        assert res['odsF'] == pytest.approx(50.0)


# ---------------------------------------------------------------- NMS
def _ridge(axis, slope=0.002):
    """A 5-pixel-thick ridge along rows 18..22 (axis 0) or columns, its
    height changing slowly along the ridge."""
    profile = np.array([0.3, 0.6, 0.9, 0.6, 0.3], np.float32)
    m = np.zeros((40, 40), np.float32)
    m[18:23, :] = profile[:, None] * (1 + slope * np.arange(40))
    return m if axis == 0 else m.T.copy()


def _crest(axis):
    crest = np.zeros((40, 40), bool)
    crest[20, 5:35] = True  # outside the 5-pixel damped border
    return crest if axis == 0 else crest.T


INNER = np.zeros((40, 40), bool)
INNER[5:35, 5:35] = True


@pytest.mark.parametrize('axis', [0, 1])
def test_nms_keeps_the_crest_of_a_thick_ridge(axis):
    ridge = _ridge(axis)
    out = edge_nms(ridge)
    crest = _crest(axis)
    np.testing.assert_array_equal(out[INNER] > 0, crest[INNER])
    np.testing.assert_array_equal(out[crest], ridge[crest])
    # On the flanks the normal of a horizontal ridge is vertical (pi/2),
    # that of a vertical ridge horizontal (0). (On the crest of this
    # symmetric profile Oy = 0 exactly, so Oxy = 0 and the formula gives 0:
    # harmless, the crest is the maximum across the ridge anyway.)
    flanks = np.roll(crest, 1, axis=axis) | np.roll(crest, -1, axis=axis)
    angle = edge_orientation(ridge)[flanks]
    expected = np.pi / 2 if axis == 0 else 0.0
    gap = np.abs(angle - expected)
    assert np.allclose(np.minimum(gap, np.pi - gap), 0, atol=1e-3)


def test_nms_orientation_formula_quirk_on_exactly_flat_ridges():
    # O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi) is 0 wherever
    # Oxy is exactly 0: a perfectly constant horizontal ridge gets a
    # horizontal "normal" and is not thinned by NMS (only by the thinning
    # step), exactly as the benchmark's formula; a vertical one is.
    flat = _ridge(0, slope=0.0)
    assert np.all(edge_orientation(flat)[_crest(0)] == 0)
    assert np.array_equal(edge_nms(flat)[INNER] > 0, flat[INNER] > 0)
    out = edge_nms(_ridge(1, slope=0.0))
    np.testing.assert_array_equal(out[INNER] > 0, _crest(1)[INNER])


def test_nms_damps_the_border():
    ridge = _ridge(0)
    out = edge_nms(ridge)
    # columns 0..4 are multiplied by 0/5 .. 4/5 (and 39..35 likewise)
    np.testing.assert_allclose(out[20, :5], ridge[20, :5] * np.arange(5) / 5,
                               rtol=1e-6)
    np.testing.assert_allclose(out[20, 35:],
                               ridge[20, 35:] * np.arange(5)[::-1] / 5,
                               rtol=1e-6)


def test_nms_then_counts_a_thick_ridge_once():
    # 3-pixel ridge on the GT line: without NMS or thinning every pixel is
    # predicted (P = 1/3 at t = 0.5); NMS keeps the crest only.
    gt = _line(20) > 0
    ridge = 0.5 * _line(19, width=3) + 0.4 * _line(20)
    kw = dict(thin_method='none', matching='bipartite')
    raw = edge_counts(ridge, gt, ONE, TOL, nms=False, **kw)[0]
    np.testing.assert_array_equal(raw, [30, 30, 30, 90])
    crest = edge_counts(ridge, gt, ONE, TOL, nms=True, **kw)[0]
    np.testing.assert_array_equal(crest, [30, 30, 30, 30])


# ---------------------------------------------------------------- thinning
def test_thin_is_bwmorph_thin():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((25, 30)) < rng.uniform(0.1, 0.9)
        np.testing.assert_array_equal(thin(mask), sk_thin(mask))
    # a 3-pixel line becomes its centre line (minus one pixel at each end)
    thick = _line(19, width=3) > 0
    expected = np.zeros((40, 40), bool)
    expected[6:34, 20] = True
    np.testing.assert_array_equal(thin(thick), expected)


def test_thinning_options():
    gt = _line(20) > 0
    thick = 0.8 * _line(19, width=3)
    kw = dict(nms=False, matching='bipartite')
    no_thin = edge_counts(thick, gt, ONE, TOL, thin_method='none', **kw)[0]
    assert no_thin[3] == 90 and no_thin[2] == 30
    for method in ('thin', 'skeletonize'):
        c = edge_counts(thick, gt, ONE, TOL, thin_method=method, **kw)[0]
        assert c[3] <= 32 and c[2] == c[3], method


# ---------------------------------------------------------------- ignore
@pytest.mark.parametrize('protocol', ['seism', 'fast_approx'])
def test_padding_is_excluded_exactly(protocol):
    # An image padded with ignored GT (255) and arbitrary predictions in
    # the padding scores exactly as the unpadded image: the maps are
    # cropped back, so NMS borders and the diagonal are the image's.
    rng = np.random.default_rng(3)
    gt = _line(20) > 0
    pred = np.clip(0.8 * _line(21) + 0.3 * rng.random((40, 40)), 0, 1)
    gt_pad = np.full((52, 47), 255, np.uint8)
    gt_pad[5:45, 3:43] = gt
    pred_pad = rng.random((52, 47)).astype(np.float32)
    pred_pad[5:45, 3:43] = pred
    plain = MTEdgeMetric(protocol, max_dist=TOL)
    padded = MTEdgeMetric(protocol, max_dist=TOL)
    run_metric(plain, [sample(gt_edge_map=gt.astype(np.uint8),
                              pred_edge_map=pred.astype(np.float32))])
    run_metric(padded, [sample(gt_edge_map=gt_pad, pred_edge_map=pred_pad)])
    np.testing.assert_array_equal(plain.results[0], padded.results[0])


def test_predictions_inside_an_ignored_region_are_not_counted():
    gt_map = _line(20).astype(np.uint8)
    gt_map[:, 30:33] = 255  # an ignored band inside the image
    pred = _line(20) + _line(31)
    res = run_metric(MTEdgeMetric(max_dist=TOL), [sample(
        gt_edge_map=gt_map, pred_edge_map=(0.8 * pred).astype(np.float32))])
    assert res['odsF'] == pytest.approx(100.0)


# ---------------------------------------------------------------- ODS
# counts (cntR, sumR, cntP, sumP) at thresholds 0.2, 0.5, 0.8:
# R = 1, 0.5, 0 and P = 0.5, 1, 1 (nothing predicted: P = 1 in seism)
THR = np.array([0.2, 0.5, 0.8])
COUNTS = np.array([[10, 10, 10, 20], [5, 10, 5, 5], [0, 10, 0, 0]])


def test_ods_takes_the_best_threshold_without_interpolation():
    f, p, r, t = ods(THR, COUNTS)
    assert (f, p, r, t) == pytest.approx((2 / 3, 0.5, 1.0, 0.2))
    # edgesEvalDir-style interpolation finds R = P = 0.75 between them
    f_i, _, _, t_i = ods(THR, COUNTS, interpolate=True)
    assert f_i == pytest.approx(0.75, abs=1e-3)
    assert t_i == pytest.approx(0.35, abs=0.01)


def test_average_precision_as_seism():
    # P(R) through (0, 1), (0.5, 1), (1, 0.5): 51 points at 1 and
    # 1 - k/100 for k = 1..50 -> (51 + 50 - 12.75) / 100
    assert average_precision(COUNTS) == pytest.approx(0.8825)
    assert average_precision(COUNTS[:1]) == 0.0


def test_ois_uses_each_images_best_threshold():
    # image 1 is best at t0 (F 2/3 vs 0.4), image 2 at t1 (F 1 vs 2/3)
    per_image = np.array([[[10, 10, 10, 20], [2, 10, 2, 2]],
                          [[4, 4, 4, 8], [4, 4, 4, 4]]])
    # pooled at (t0, t1): R = 14/14, P = 14/24 -> F = 2 * 7/12 / (19/12)
    assert ois(per_image) == pytest.approx(14 / 19)


def test_metric_reports_ods_ois_ap_over_images():
    gt = _line(20)
    good = _edge_sample(gt, _line(21))
    bad = _edge_sample(gt, _line(30))
    res = run_metric(MTEdgeMetric(max_dist=TOL), [good, bad])
    # counts summed: R = 30/60, P = 30/60 at every threshold up to 0.8
    assert res['odsF'] == pytest.approx(50.0)
    assert res['odsT'] == pytest.approx(0.001)
    assert res['oisF'] == pytest.approx(50.0)
    assert set(res) == {'odsF', 'odsP', 'odsR', 'odsT', 'oisF', 'AP'}
    with pytest.raises(RCConfigError, match='no image'):
        MTEdgeMetric().compute_metrics([])
