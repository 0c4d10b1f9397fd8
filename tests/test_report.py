"""The demo's results.json shape, forgetting, Δm and number formatting on
hand-made stages."""
import json
import math
import re

import pytest

from rc_adapter.demo.report import (build_results, delta_m_vs,
                                    format_change, format_metric,
                                    format_percent, forgetting,
                                    just_trained, relative_changes,
                                    summarize, write_report)


def make_results(single=True):
    rc = [('semseg', {'semseg': {'mIoU': 40.0}}),
          ('depth', {'semseg': {'mIoU': 40.0}, 'depth': {'rmse': 2.0}})]
    ft = [('semseg', {'semseg': {'mIoU': 50.0}}),
          ('depth', {'semseg': {'mIoU': 30.0}, 'depth': {'rmse': 1.0}})]
    single_task = {'semseg': {'mIoU': 50.0}, 'depth': {'rmse': 1.6}}
    return build_results(['semseg', 'depth'], {'rc': rc, 'finetune': ft},
                         single_task if single else None)


def test_results_shape_is_the_documented_one():
    results = make_results(single=False)
    assert json.loads(json.dumps(results)) == {
        'tasks': ['semseg', 'depth'],
        'primary': {'semseg': ['mIoU', 'higher'], 'depth': ['rmse', 'lower']},
        'stages': {
            'rc': [{'added': 'semseg', 'metrics': {'semseg': {'mIoU': 40.0}}},
                   {'added': 'depth', 'metrics': {
                       'semseg': {'mIoU': 40.0}, 'depth': {'rmse': 2.0}}}],
            'finetune': [
                {'added': 'semseg', 'metrics': {'semseg': {'mIoU': 50.0}}},
                {'added': 'depth', 'metrics': {
                    'semseg': {'mIoU': 30.0}, 'depth': {'rmse': 1.0}}}]}}
    assert make_results()['single_task'] == {
        'semseg': {'mIoU': 50.0}, 'depth': {'rmse': 1.6}}


def test_forgetting_by_hand_and_never_negative_zero():
    results = make_results()
    rc = forgetting(results, 'rc')
    assert rc == {'semseg': 0.0, 'depth': 0.0}
    # An unchanged lower-is-better metric gives final - first = +0.0, an
    # unchanged higher-is-better one first - final = +0.0: never -0.0.
    assert all(math.copysign(1.0, v) == 1.0 for v in rc.values())
    # semseg fell from 50 to 30: +20 (positive = worse).
    assert forgetting(results, 'finetune') == {'semseg': 20.0, 'depth': 0.0}


def test_delta_m_against_single_task_by_hand():
    results = make_results()
    # Against the just-trained sequential values (the old reference):
    # semseg (50 - 40) / 50 = +20 %; depth 2 vs 1 m = +100 %; mean +60 %.
    assert just_trained(results, 'finetune') == {'semseg': 50.0,
                                                 'depth': 1.0}
    assert delta_m_vs(results, 'rc', {'semseg': 50.0, 'depth': 1.0}) == \
        pytest.approx(60.0)
    summary = summarize(results)
    dm = summary['delta_m']
    # RC vs single-task: semseg +20 %; depth (2.0 - 1.6) / 1.6 = +25 %.
    assert dm['per_task']['rc'] == pytest.approx({'semseg': 20.0,
                                                  'depth': 25.0})
    assert dm['rc'] == pytest.approx(22.5)
    # Sequential (final 30 mIoU, 1.0 m) vs single-task: semseg +40 %,
    # depth (1.0 - 1.6) / 1.6 = -37.5 % (better); mean +1.25 %.
    assert dm['per_task']['finetune'] == pytest.approx(
        {'semseg': 40.0, 'depth': -37.5})
    assert dm['finetune'] == pytest.approx(1.25)
    assert summary['forgetting']['finetune']['semseg'] == 20.0
    assert summarize(make_results(single=False))['delta_m'] is None
    # No change is +0.0, not -0.0.
    same = relative_changes(results, {'semseg': 50.0}, {'semseg': 50.0})
    assert math.copysign(1.0, same['semseg']) == 1.0


@pytest.mark.parametrize('metric,value,text', [
    ('mIoU', 37, '37.00'),
    ('mIoU', 37.0, '37.00'),
    ('odsF', 63.6449, '63.64'),
    ('mean_angle', 34.049, '34.05'),
    ('rmse', 1.5, '1.500'),
    ('rmse', 1.5594, '1.559'),
    ('something_else', 2.0, '2.000'),
])
def test_metric_precision(metric, value, text):
    assert format_metric(metric, value) == text


@pytest.mark.parametrize('metric,value,text', [
    ('mIoU', 0.0, '0.00'),
    ('mIoU', -0.0, '0.00'),          # the old report printed '-0'
    ('rmse', 0.0, '0.000'),
    ('mIoU', 1.717, '+1.72'),
    ('mIoU', 20, '+20.00'),
    ('mean_angle', -0.5, '-0.50'),
    ('rmse', 0.01027, '+0.010'),
    ('mIoU', 0.003, '+<0.01'),       # not zero, below the precision
    ('rmse', -0.0004, '-<0.001'),
])
def test_change_formatting(metric, value, text):
    assert format_change(metric, value) == text


@pytest.mark.parametrize('value,text', [
    (5.8612, '+5.86 %'), (0.0, '0.00 %'), (-0.0, '0.00 %'),
    (-1.25, '-1.25 %'), (0.001, '+<0.01 %')])
def test_percent_formatting(value, text):
    assert format_percent(value) == text


def test_write_report(tmp_path):
    results = make_results()
    results['summary'] = summarize(results)
    results['costs'] = dict(rc={'semseg': dict(params=10, bytes=2e6),
                                'depth': dict(params=11, bytes=2e6)},
                            shared_bytes=5e6, plain_params=90)
    results['checks'] = [dict(stage='adding depth', tasks=['semseg'])]
    results['stage_times'] = [dict(name='RC: add semseg', wall=2.0, cpu=1.5,
                                   load_start=0.5, load_end=1.0)]
    path = tmp_path / 'report.md'
    write_report(str(path), results, images=dict(
        stages='stages.png', predictions=['p1.png', 'p2.png']),
        sections=dict(rsa='RSA TEXT'))
    text = path.read_text()
    assert 'single-task fine-tuning: +22.50 %' in text
    assert 'sequential fine-tuning of one network: +1.25 %' in text
    # Comparison rows: the reference, the values and the Δm terms.
    assert '| semseg | mIoU ↑ | 50.00 | 40.00 | +20.00 % | 30.00 | ' \
        '+40.00 % |' in text
    assert '| depth | rmse ↓ | 1.600 | 2.000 | +25.00 % | 1.000 | ' \
        '-37.50 % |' in text
    # Forgetting at the metric's precision, zero without a sign.
    assert '| semseg | mIoU (%) | 0.00 | +20.00 |' in text
    assert '| depth | rmse (m) | 0.000 | 0.000 |' in text
    # Stage tables: 40.00, never 40.
    assert '| depth | 40.00 | 2.000 |' in text
    assert not re.search(r'\| -?0 \|', text)
    assert '-0.0' not in text and '| 40 |' not in text
    assert '![primary metric per task across stages](stages.png)' in text
    assert '(p1.png)' in text and '(p2.png)' in text
    assert 'RSA TEXT' in text
    assert '| RC: add semseg | 2.0 | 1.5 | 0.5 → 1.0 |' in text
    assert 'checked after each of the 1 later stage(s)' in text
