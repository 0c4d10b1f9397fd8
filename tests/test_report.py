"""The demo's results.json shape, forgetting and Δm on hand-made stages."""
import json

import pytest

from rc_adapter.demo.report import (build_results, delta_m_vs, forgetting,
                               just_trained, write_report)


def make_results():
    rc = [('semseg', {'semseg': {'mIoU': 40.0}}),
          ('depth', {'semseg': {'mIoU': 40.0}, 'depth': {'rmse': 2.0}})]
    ft = [('semseg', {'semseg': {'mIoU': 50.0}}),
          ('depth', {'semseg': {'mIoU': 30.0}, 'depth': {'rmse': 1.0}})]
    return build_results(['semseg', 'depth'], {'rc': rc, 'finetune': ft})


def test_results_shape_is_the_documented_one():
    results = make_results()
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


def test_forgetting_and_delta_m_by_hand():
    results = make_results()
    assert forgetting(results, 'rc') == {'semseg': 0.0, 'depth': 0.0}
    # semseg fell from 50 to 30: +20 (positive = worse).
    assert forgetting(results, 'finetune') == {'semseg': 20.0, 'depth': 0.0}
    reference = just_trained(results, 'finetune')
    assert reference == {'semseg': 50.0, 'depth': 1.0}
    # semseg: (50 - 40) / 50 = +20 %; depth (lower is better): 2 vs 1 m =
    # +100 %; mean +60 % (a drop).
    assert delta_m_vs(results, 'rc', reference) == pytest.approx(60.0)


def test_write_report(tmp_path):
    results = make_results()
    costs = dict(rc={'semseg': dict(params=10, bytes=2e6),
                     'depth': dict(params=11, bytes=2e6)},
                 shared_bytes=5e6, shared_params=100, plain_params=90)
    dm = write_report(str(tmp_path / 'report.md'), results, costs=costs,
                      times={'total': 1.0})
    text = (tmp_path / 'report.md').read_text()
    assert dm == pytest.approx(60.0)
    assert '| semseg | +0 | +20 |' in text
    assert '+60.00%' in text
