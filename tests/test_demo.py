"""`tools/demo.py --quick` end to end: tiny data, a few iterations per task,
every stage in one process, the report files with their structure, the
published copy, and the bit-identity check of RC's earlier tasks."""
import json
import os
import re

import pytest
import torch

from rc_adapter.demo import pipeline as P
from tool_helpers import ok, run_tool


@pytest.fixture(scope='module')
def quick_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    work, data, docs = root / 'work', root / 'data', root / 'docs'
    result = ok(run_tool('demo.py', '--quick', '--threads', '1',
                         '--work-dir', str(work), '--data-root', str(data),
                         '--publish', str(docs)))
    return dict(work=work, data=data, docs=docs, stdout=result.stdout)


def test_results_json(quick_demo):
    results = json.loads((quick_demo['work'] / 'results.json').read_text())
    tasks = list(P.TASKS)
    assert results['tasks'] == tasks
    for method in ('rc', 'finetune'):
        stages = results['stages'][method]
        assert [s['added'] for s in stages] == tasks
        for k, stage in enumerate(stages):  # every task so far, evaluated
            assert sorted(stage['metrics']) == sorted(tasks[:k + 1])
    assert sorted(results['single_task']) == sorted(tasks)
    # The first stage of sequential fine-tuning is the single-task run.
    assert results['single_task']['semseg'] == \
        results['stages']['finetune'][0]['metrics']['semseg']
    # RC: every earlier task's metrics identical at every later stage.
    rc = results['stages']['rc']
    for k in range(1, len(rc)):
        for task in tasks[:k]:
            assert rc[k]['metrics'][task] == rc[k - 1]['metrics'][task]
    assert [c['stage'] for c in results['checks']] == [
        f'adding {t}' for t in tasks[1:]]
    assert all(c['outputs_equal'] and c['task_files'] and c['shared_file']
               for c in results['checks'])
    summary = results['summary']
    assert summary['forgetting']['rc'] == {t: 0.0 for t in tasks}
    for method in ('rc', 'finetune'):
        assert isinstance(summary['delta_m'][method], float)
        assert sorted(summary['delta_m']['per_task'][method]) == \
            sorted(tasks)
    assert set(results['rsa']) == {'rc', 'shared', 'finetune'}
    assert results['rsa']['shared'] == {
        layer: 1.0 for layer in results['rsa']['shared']}
    assert [r['tasks'] for r in results['model_size']] == list(range(1, 11))
    names = [s['name'] for s in results['stage_times']]
    assert 'RC: add semseg' in names and 'single-task fine-tuning: edge' \
        in names
    assert all(s['cpu'] >= 0 and s['wall'] > 0
               for s in results['stage_times'])


def test_report_and_pictures(quick_demo):
    work = quick_demo['work']
    text = (work / 'report.md').read_text()
    for heading in ('## Forgetting', '## Every stage', '## Predictions',
                    '## Task interference, seen: RSA between tasks',
                    '## Model size against the number of tasks',
                    '## Cost per task', '## Time per stage'):
        assert heading in text
    assert re.search(r'Δm of the RC bank \(RC\+RI\+NFF\) against '
                     r'single-task fine-tuning: [+-]?(<)?\d+\.\d\d %', text)
    # Every linked picture exists and is a PNG.
    links = re.findall(r'!\[[^]]*\]\(([^)]+)\)', text)
    assert len(links) == 4  # stages, one panel (--quick), RSA, size
    for link in links:
        with open(work / link, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    # Forgetting: RC's row is exactly zero at each metric's precision.
    for task, zero in (('semseg', '0.00'), ('depth', '0.000'),
                       ('normals', '0.00'), ('edge', '0.00')):
        assert re.search(rf'\| {task} \| \w+ \([^)]*\) \| {zero} \|', text)
    for name in ('rsa.json', 'rsa_layers.png', 'rsa_heatmaps.png',
                 'model_size.json', 'model_size.md', 'model_size.png'):
        assert (work / 'analysis' / name).is_file()
    log = (work / 'demo.log').read_text()
    # Each stage names the tool command that does the same.
    for command in ('python tools/make_synthetic.py', 'python '
                    'tools/convert_to_rc.py', 'python tools/add_task.py',
                    'python tools/test.py', 'python tools/train.py',
                    'python tools/analyze.py rsa',
                    'python tools/analyze.py size'):
        assert command in log
    assert 'Δm of RC against single-task fine-tuning' in \
        quick_demo['stdout']


def test_published_copy(quick_demo):
    docs = quick_demo['docs']
    text = (docs / 'demo_report.md').read_text()
    links = re.findall(r'!\[[^]]*\]\(([^)]+)\)', text)
    assert links and all(link.startswith('demo_') for link in links)
    for link in links:
        assert (docs / link).is_file()
    assert json.loads((docs / 'demo_results.json').read_text()) == \
        json.loads((quick_demo['work'] / 'results.json').read_text())


def test_data_is_reused(quick_demo):
    log_line = next(line for line in (quick_demo['work'] / 'demo.log')
                    .read_text().splitlines() if 'generated' in line
                    or 'up to date' in line)
    assert 'generated' in log_line  # the first run made it
    stamp = os.path.getmtime(quick_demo['data'] / 'synthetic.json')
    from rc_adapter.demo.stagelog import StageLog
    log = StageLog(str(quick_demo['work'] / 'reuse.log'))
    try:
        assert P.prepare_data(str(quick_demo['data']), P.QUICK_DATA, log)
    finally:
        log.close()
    assert os.path.getmtime(quick_demo['data'] / 'synthetic.json') == stamp


def _state(outputs):
    return dict(record=dict(shared='s', tasks={'a': dict(file='f',
                                                         sha256='x')}),
                outputs=outputs, metrics={'a': {'m': 1.0}})


def test_check_unchanged_refuses_any_difference():
    before = _state({'a': torch.zeros(2, 3)})
    assert P.check_unchanged('adding b', before,
                             _state({'a': torch.zeros(2, 3)}),
                             ['a'])['outputs_equal']
    # One element off by the smallest normal float is a difference.
    nudged = torch.zeros(2, 3)
    nudged[1, 2] = torch.finfo(torch.float32).tiny
    with pytest.raises(AssertionError, match='a: outputs differ'):
        P.check_unchanged('adding b', before, _state({'a': nudged}), ['a'])
    changed = _state({'a': torch.zeros(2, 3)})
    changed['record']['tasks']['a']['sha256'] = 'y'
    changed['metrics']['a']['m'] = 1.0 + 1e-12
    with pytest.raises(AssertionError, match='task file changed.*metrics '
                       'differ'):
        P.check_unchanged('adding b', before, changed, ['a'])


def test_tool_command_round_trips_through_dictaction():
    import argparse
    import shlex

    from mmengine.config import DictAction

    from rc_adapter.demo.stagelog import tool_command
    command = tool_command('tools/train.py', 'cfg.py', options={
        'model.tasks': ['semseg', 'depth'], 'optim_wrapper.optimizer.lr':
        0.02, 'load_from': 'work_dirs/iter_4.pth'})
    words = shlex.split(command)
    assert words[:3] == ['python', 'tools/train.py', 'cfg.py']
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parsed = parser.parse_args(words[3:]).cfg_options
    assert parsed == {'model.tasks': ['semseg', 'depth'],
                      'optim_wrapper.optimizer.lr': 0.02,
                      'load_from': 'work_dirs/iter_4.pth'}
