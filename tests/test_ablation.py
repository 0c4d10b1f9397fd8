"""The seeded ablation (``make ablation``): statistics on hand-made cases,
stored runs, the report, and ``tools/ablation.py --quick`` end to end."""
import json
import math
import os

import pytest

from rc_adapter.core.errors import RCConfigError
from rc_adapter.demo import ablation as ab
from tool_helpers import ok, run_tool, run_tools

# Primary metrics: semseg mIoU, edge odsF (higher is better); depth rmse,
# normals mean_angle (lower is better).
REF_RUNS = [  # the reference row, two seeds
    dict(seed=0, metrics=dict(semseg=dict(mIoU=40.0), depth=dict(rmse=2.0),
                              normals=dict(mean_angle=30.0),
                              edge=dict(odsF=60.0))),
    dict(seed=1, metrics=dict(semseg=dict(mIoU=60.0), depth=dict(rmse=1.0),
                              normals=dict(mean_angle=20.0),
                              edge=dict(odsF=40.0))),
]
# Reference means: mIoU 50, rmse 1.5, mean_angle 25, odsF 50.


def _run(seed, miou, rmse, angle, odsf):
    return dict(seed=seed, metrics=dict(
        semseg=dict(mIoU=miou), depth=dict(rmse=rmse),
        normals=dict(mean_angle=angle), edge=dict(odsF=odsf)))


def test_mean_std_by_hand():
    assert ab.mean_std([1, 2, 3]) == (2.0, 1.0)
    mean, std = ab.mean_std([4.0, 8.0])
    assert mean == 6.0 and std == pytest.approx(math.sqrt(8))
    mean, std = ab.mean_std([5.0])
    assert mean == 5.0 and math.isnan(std)
    with pytest.raises(RCConfigError):
        ab.mean_std([])


def test_beyond_spread_by_hand():
    a = [0.0, 0.5, 1.0]            # 0.5 +- 0.5
    assert ab.beyond_spread(a, [2.0, 2.5, 3.0]) is True     # 2 > 1
    assert ab.beyond_spread(a, [1.0, 1.5, 2.0]) is False    # 1 = 1: touch
    assert ab.beyond_spread(a, [1.1, 1.6, 2.1]) is True     # 1.1 > 1
    assert ab.beyond_spread([1.0], a) is None               # no spread


def test_summary_delta_m_by_hand():
    runs = {ab.REFERENCE: REF_RUNS,
            'X': [_run(0, 45.0, 1.5, 25.0, 50.0),    # semseg -10 % only
                  _run(1, 50.0, 1.8, 25.0, 50.0)]}  # depth -20 % only
    summary = ab.summarise(runs)
    assert summary['reference'] == dict(semseg=50.0, depth=1.5,
                                        normals=25.0, edge=50.0)
    x = summary['rows']['X']
    # Δm = mean over tasks of the relative drop: +10/4 and +20/4 percent.
    assert x['delta_m_runs'] == pytest.approx([2.5, 5.0])
    assert x['delta_m'][0] == pytest.approx(3.75)
    assert x['delta_m'][1] == pytest.approx(math.sqrt(2 * 1.25 ** 2))
    assert x['metrics']['semseg']['mIoU'] == pytest.approx(
        [47.5, math.sqrt(12.5)])
    ref = summary['rows'][ab.REFERENCE]
    assert ref['delta_m'][0] == pytest.approx(0.0, abs=1e-12)
    # Each reference run against the reference means, signed drops.
    r0 = ((50 - 40) / 50 + (2.0 - 1.5) / 1.5 + (30 - 25) / 25 +
          (50 - 60) / 50) / 4 * 100
    assert ref['delta_m_runs'][0] == pytest.approx(r0)
    assert ref['delta_m_runs'][1] == pytest.approx(-r0)


def test_summary_keeps_the_metrics_every_run_has():
    """A restored run may hold fewer metrics than a newly trained one."""
    richer = _run(1, 60.0, 1.0, 20.0, 40.0)
    richer['metrics']['semseg']['mAcc'] = 70.0
    summary = ab.summarise({ab.REFERENCE: [REF_RUNS[0], richer]})
    assert list(summary['rows'][ab.REFERENCE]['metrics']['semseg']) == [
        'mIoU']


def test_comparisons_and_goals_by_hand():
    runs = {ab.REFERENCE: REF_RUNS,
            ab.FULL: [_run(0, 50.0, 1.5, 25.0, 50.0),
                      _run(1, 49.0, 1.5, 25.0, 50.0)],      # 0, +0.5
            'lowrank r=8': [_run(0, 48.0, 1.5, 25.0, 50.0),
                            _run(1, 47.0, 1.5, 25.0, 50.0)]}  # +1, +1.5
    summary = ab.summarise(runs)
    pairs = ab.comparisons(summary, [(ab.FULL, 'lowrank r=8'),
                                     (ab.FULL, 'missing row')])
    assert len(pairs) == 1
    assert pairs[0]['difference'] == pytest.approx(-1.0)
    # std 0.354 each: 1.0 > 0.707
    assert pairs[0]['beyond_spread'] is True
    params = {ab.FULL: dict(encoder=1000), 'lowrank r=8': dict(encoder=400)}
    goals = ab.goals(summary, params)
    assert goals['full_delta_m'] == dict(value=pytest.approx(0.25), met=True)
    (row,) = goals['lowrank_near_full']['rows']
    assert row['share'] == 0.4 and row['gap'] == pytest.approx(1.0)
    assert row['met'] is True and goals['lowrank_near_full']['met'] is True
    params['lowrank r=8'] = dict(encoder=401)
    assert ab.goals(summary, params)['lowrank_near_full']['met'] is False


def test_report_precision_and_no_negative_zero(tmp_path):
    runs = {ab.REFERENCE: REF_RUNS}
    summary = ab.summarise(runs)
    rows = ab.select_rows([ab.REFERENCE, ab.FULL])
    text = ab.write_report(
        str(tmp_path / 'r.md'), rows=rows, summary=summary,
        params={ab.REFERENCE: dict(encoder=10, head=1, backbone=10)},
        settings=ab.QUICK, seeds=[0, 1], times={})
    ref_line = next(line for line in text.splitlines()
                    if line.startswith(f'| paper | {ab.REFERENCE} |'))
    assert '| 50.00 ± 14.14 |' in ref_line and '| 1.500 ± 0.707 |' in \
        ref_line
    assert '+0.00 ±' in ref_line and '-0.00' not in text
    assert f'| paper | {ab.FULL} | 0 | not run' in text


def test_unknown_row_is_named():
    with pytest.raises(RCConfigError, match='RC\\+RI\\+NF'):
        ab.select_rows(['RC+RI+NF'])
    assert set(ab.RUN_ORDER) == {r.name for r in ab.ROWS}


def test_stored_runs_are_reused_only_with_the_same_settings(tmp_path):
    row = ab.select_rows([ab.REFERENCE])[0]
    path = tmp_path / 'runs' / 'single_task_FT' / 'seed3.json'
    path.parent.mkdir(parents=True)
    stored = dict(row=row.name, seed=3, settings=ab.QUICK.key(),
                  definition=ab._row_key(row), metrics=REF_RUNS[0]['metrics'],
                  seconds=1.0)
    path.write_text(json.dumps(stored))
    found = ab.load_runs(str(tmp_path), [row], [3, 4], ab.QUICK)
    assert [r['seed'] for r in found[row.name]] == [3]
    other = ab.Settings(iters=3, num_train=16, num_val=4, calib_images=8)
    assert ab.load_runs(str(tmp_path), [row], [3], other)[row.name] == []


def test_tool_quick_end_to_end(tmp_path):
    """tools/ablation.py --quick: two rows, two seeds, tiny sizes; a rerun
    reuses the stored runs; --reuse-results in a fresh work dir restores
    them from results.json and trains nothing; a missing file is an error
    naming it."""
    work, data = tmp_path / 'work', tmp_path / 'data'
    args = ['--quick', '--rows', ab.REFERENCE, ab.FULL, '--seeds', '0', '1',
            '--work-dir', str(work), '--data-root', str(data)]
    result = ok(run_tool('ablation.py', *args))
    assert 'stored run reused' not in result.stdout
    results = json.loads((work / 'results.json').read_text())
    assert results['seeds'] == [0, 1]
    rows = results['summary']['rows']
    assert rows[ab.REFERENCE]['seeds'] == [0, 1]
    assert rows[ab.REFERENCE]['delta_m'][0] == pytest.approx(0, abs=1e-9)
    full = rows[ab.FULL]
    assert len(full['delta_m_runs']) == 2 and full['delta_m'] is not None
    for task in ab.TASKS:
        metric = ab.DEFAULT_DELTA_M_KEYS[task][0]
        values = [r['metrics'][task][metric]
                  for r in results['runs'][ab.FULL]]
        assert full['metrics'][task][metric] == pytest.approx(
            list(ab.mean_std(values)))
    params = {r['name']: r['params_per_task'] for r in results['rows']}
    assert params[ab.FULL]['encoder'] == 398944    # docs/ablation_report.md
    report = (work / 'report.md').read_text()
    assert f'| paper | {ab.FULL} | 2 |' in report
    assert sorted(os.listdir(work / 'runs')) == ['RC_RI_NFF',
                                                'single_task_FT']
    assert not (work / 'scratch' / 'RC_RI_NFF' / 'seed0').exists()
    fresh = tmp_path / 'fresh'
    again, reuse, missing = run_tools(
        ('ablation.py', *args),
        ('ablation.py', '--quick', '--reuse-results', work / 'results.json',
         '--work-dir', fresh, '--data-root', data),
        ('ablation.py', '--quick', '--reuse-results', tmp_path / 'no.json',
         '--work-dir', tmp_path / 'unused'))
    assert ok(again).stdout.count('stored run reused') == 4
    # The file's rows and seeds by default; every run restored, none trained.
    assert ok(reuse).stdout.count('stored run reused') == 4, reuse.stdout
    assert 'done in' not in reuse.stdout
    for name in (ab.REFERENCE, ab.FULL):
        assert f'{name}: seeds 0 1 restored' in reuse.stdout
    assert json.loads((fresh / 'results.json').read_text())['runs'] == \
        results['runs']
    assert missing.returncode == 2 and 'Traceback' not in missing.stderr
    assert f'{tmp_path / "no.json"} cannot be read' in missing.stderr
    assert not (tmp_path / 'unused').exists()


# -- --reuse-results: restoring the runs of a results file ---------------
def _results_file(path, runs, rows, settings=ab.QUICK):
    """A results.json as run_ablation writes it (the keys restoring reads):
    ``rows`` holds each row's (resolved) definition, ``runs`` its runs."""
    path.write_text(json.dumps(dict(
        settings=settings.key(), seeds=[0, 1],
        rows=[dict(name=r.name, group=r.group, kind=r.kind,
                   rc_cfg=dict(r.rc_cfg), ri=r.ri, lora=dict(r.lora),
                   note=r.note) for r in rows],
        runs=runs)))
    return str(path)


def test_reuse_results_restores_matching_runs_and_retrains_the_rest(
        tmp_path, monkeypatch):
    """run_ablation(reuse_results=...): the reference's runs come from the
    file (nothing trains for them), the row named in ``rerun`` and the row
    whose definition changed train, an unknown row is named; a stale stored
    run of the rerun row is removed first."""
    ref, rc, full = ab.select_rows([ab.REFERENCE, ab.FULL, 'RC'])
    old_rc = ab.Row('RC', 'rc', 'paper', rc_cfg=dict(nff=True), ri=False)
    published = dict(
        (name, [dict(run, seconds=7.0) for run in REF_RUNS])
        for name in (ab.REFERENCE, ab.FULL, 'RC'))
    published['RC+RI+NF'] = REF_RUNS
    source = _results_file(tmp_path / 'published.json', published,
                           [ref, full, old_rc])
    work = tmp_path / 'work'
    stale = work / 'runs' / 'RC_RI_NFF' / 'seed0.json'
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(dict(
        row=ab.FULL, seed=0, settings=ab.QUICK.key(),
        definition=ab._row_key(full), metrics=REF_RUNS[1]['metrics'])))
    (work / 'r18_half_proxy.pth').write_text('')   # no asset conversion
    trained = []

    def fake_training(row, seed, scratch, ctx):
        trained.append((row.name, seed))
        return _run(seed, 50.0, 1.5, 25.0, 50.0)['metrics']

    for kind in ('finetune', 'rc'):
        monkeypatch.setitem(ab._RUNNERS, kind, fake_training)
    monkeypatch.setattr(ab, 'ensure_data', lambda *a, **k: None)
    monkeypatch.setattr(ab, 'parameter_counts', lambda row: dict(
        encoder=10, head=1, backbone=100, layers={}))
    lines = []
    results = ab.run_ablation(
        work=str(work), data_root=str(tmp_path / 'data'),
        rows=[ref, full, rc], seeds=[0, 1], settings=ab.QUICK,
        reuse_results=source, rerun=[ab.FULL], log=lines.append)
    log = '\n'.join(lines)
    assert sorted(trained) == sorted([(ab.FULL, 0), (ab.FULL, 1),
                                      ('RC', 0), ('RC', 1)]), log
    assert f'{ab.REFERENCE}: seeds 0 1 restored' in log
    assert log.count('stored run reused') == 2
    assert f'{ab.FULL}: not reused: to be trained again' in log
    assert f'{ab.FULL}: trained again (stored seed 0 removed)' in log
    assert ("RC: not reused: row definition changed (rc_cfg: {'nff': True} "
            "in the file, {'nff': False} now)") in log
    assert 'RC+RI+NF: not reused: unknown row' in log
    assert [r['metrics'] for r in results['runs'][ab.REFERENCE]] == \
        [r['metrics'] for r in REF_RUNS]
    assert results['summary']['rows'][ab.REFERENCE]['seconds'] == 14.0
    assert all(r['metrics']['semseg']['mIoU'] == 50.0
               for r in results['runs'][ab.FULL] + results['runs']['RC'])
    assert sorted(os.listdir(work / 'runs' / 'single_task_FT')) == [
        'seed0.json', 'seed1.json']     # atomic writes: no temporary left
    restored = json.loads(
        (work / 'runs' / 'single_task_FT' / 'seed0.json').read_text())
    assert restored['restored_from'] == source
    assert ab.load_runs(str(work), [ref], [0, 1], ab.QUICK)[ref.name] \
        == [restored, json.loads((work / 'runs' / 'single_task_FT' /
                                  'seed1.json').read_text())]
    # The same call again (an interrupted re-run continues): the runs
    # trained again against this file are kept, nothing trains.
    trained.clear()
    lines.clear()
    ab.run_ablation(
        work=str(work), data_root=str(tmp_path / 'data'),
        rows=[ref, full, rc], seeds=[0, 1], settings=ab.QUICK,
        reuse_results=source, rerun=[ab.FULL], log=lines.append)
    assert trained == [] and lines.count(
        f'  {ab.FULL}: trained again (seeds 0 1 already trained again)') \
        == 1, lines
    with pytest.raises(RCConfigError, match='not among the rows run'):
        ab.run_ablation(work=str(work), data_root='', rows=[ref],
                        seeds=[0], settings=ab.QUICK, rerun=[ab.FULL])


def test_reuse_results_refuses_other_settings(tmp_path):
    ref = ab.select_rows([ab.REFERENCE])[0]
    source = _results_file(tmp_path / 'r.json', {ab.REFERENCE: REF_RUNS},
                           [ref], settings=ab.Settings())
    lines = []
    restored = ab.restore_runs(ab.read_results(source), str(tmp_path),
                               [ref], [0, 1], ab.QUICK, log=lines.append)
    assert restored == {} and not (tmp_path / 'runs').exists()
    assert lines == [f'  {ab.REFERENCE}: not reused: settings differ '
                     f'(iters: 200 in the file, 2 now; num_train: 200 in '
                     f'the file, 16 now; num_val: 150 in the file, 4 now; '
                     f'calib_images: 64 in the file, 8 now)']


@pytest.mark.parametrize('content, problem', [
    (None, 'cannot be read'),
    ('{"settings": ', 'is not valid JSON'),
    ('[]', 'malformed: the file holds no JSON object'),
    (json.dumps(dict(settings={}, rows=[], runs={'X': [dict(
        seed=0, metrics=dict(semseg=dict(mIoU=1.0)))]})),
     "malformed: runs\\['X'\\]\\[0\\] has no depth rmse"),
])
def test_reuse_results_bad_file_is_named(tmp_path, content, problem):
    path = tmp_path / 'results.json'
    if content is not None:
        path.write_text(content)
    with pytest.raises(RCConfigError, match=f'{tmp_path}.*{problem}'):
        ab.read_results(str(path))
