"""Nothing a user owns is lost, through the real tools: ``tools/add_task.py``
SIGKILLed at each point of its commit (before the task-file write, between
the task file and the manifest, after the manifest), for a new task and for
``--replace``; a diverged run; ``tools/test.py --out`` aimed at the
manifest. After each: ``tools/bank.py verify`` passes, the earlier task's
files and manifest entry are unchanged (and at the end it evaluates to the
same numbers), the next run succeeds, and a replaced task is the old or the
new version, never neither.
Last, four concurrent ``add_task.py`` runs (two of them ``--replace``)
register all four.

The kill comes from a test-only ``sitecustomize`` module written to a
temporary folder and put on the tool's ``PYTHONPATH``: it wraps
``os.replace`` / ``os.open`` and SIGKILLs the process at the Nth call on a
path in the bank (``RC_TEST_KILL_AT=call:N:before|after``); the product
code knows nothing of it; these launches start a new interpreter each (the
hook must be imported at its start-up), so the bank is built in-process and
every launch counts.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from tool_helpers import ROOT, ok, run_tool, run_tools, tool_env
from train_helpers import evaluate, file_digests, make_workspace

from rc_adapter import TaskBank

KILL_HOOK = textwrap.dedent('''\
    import os
    import signal

    _spec = os.environ.get('RC_TEST_KILL_AT')
    if _spec:
        _call, _nth, _when = _spec.split(':')
        _nth = int(_nth)
        _bank = os.path.realpath(os.environ['RC_TEST_KILL_BANK'])
        _seen = [0]

        def _in_bank(path):
            path = os.path.realpath(os.fspath(path))
            return path.startswith(_bank + os.sep)

        def _wrap(real, target):
            def call(*args, **kwargs):
                hit = False
                path = target(args)
                if path is not None and _in_bank(path):
                    _seen[0] += 1
                    hit = _seen[0] == _nth
                if hit and _when == 'before':
                    os.kill(os.getpid(), signal.SIGKILL)
                result = real(*args, **kwargs)
                if hit and _when == 'after':
                    os.kill(os.getpid(), signal.SIGKILL)
                return result
            return call

        def _commit_temp(args):
            name = os.path.basename(os.fspath(args[0]))
            if name.startswith('.tmp-') and not name.startswith(
                    '.tmp-probe-'):
                return args[0]
            return None

        if _call == 'replace':
            os.replace = _wrap(os.replace, lambda args: args[1])
        elif _call == 'open':
            os.open = _wrap(os.open, _commit_temp)
    ''')

#: (where the kill hits, is the new version current afterwards)
POINTS = [
    # The task file's temporary file is about to be created.
    ('open:1:before', False),
    # The task file is renamed into place; the manifest is not written.
    ('replace:1:after', False),
    # The manifest naming the new version is renamed into place.
    ('replace:2:after', True),
]


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('crash')
    workspace = make_workspace(tmp)
    hook = tmp / 'kill_hook'
    hook.mkdir()
    (hook / 'sitecustomize.py').write_text(KILL_HOOK)
    workspace['hook'] = str(hook)
    workspace['metrics'] = evaluate(workspace, ['semseg'])
    bank = TaskBank(workspace['bank'])
    workspace['semseg_file'] = os.path.relpath(bank.task_path('semseg'),
                                               bank.path)
    workspace['files'] = file_digests(bank.path)
    return workspace


def _add_task(workspace, work_dir, *args, kill=None):
    env = tool_env()
    if kill is not None:
        env.update(PYTHONPATH=workspace['hook'], RC_TEST_KILL_AT=kill,
                   RC_TEST_KILL_BANK=workspace['bank'])
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'add_task.py'),
           workspace['config'], '--bank', workspace['bank'], '--work-dir',
           str(workspace['tmp'] / work_dir)] + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


class _Checks:
    """What must hold after every failure; ``tools/bank.py verify`` runs on
    a snapshot of the bank taken then, all snapshots at the end
    (``run_tools``)."""

    def __init__(self, workspace):
        self.workspace = workspace
        self.snapshots = []

    def __call__(self, label, evaluate_semseg=False):
        """Checks the bank; ``evaluate_semseg`` also evaluates the earlier
        task (same files and same manifest entry already imply the same
        numbers; the evaluation shows it end to end, once per test)."""
        workspace = self.workspace
        bank = TaskBank(workspace['bank'])
        leftovers = bank.verify()  # raises on any problem
        files = file_digests(bank.path)
        for name in (workspace['semseg_file'], 'shared.safetensors'):
            assert files[name] == workspace['files'][name], (label, name)
        assert os.path.relpath(bank.task_path('semseg'), bank.path) == \
            workspace['semseg_file'], label
        if evaluate_semseg:
            assert evaluate(workspace, ['semseg']) == workspace['metrics'], \
                label
        snapshot = workspace['tmp'] / f'snapshot_{len(self.snapshots)}'
        shutil.copytree(bank.path, snapshot)
        self.snapshots.append((label, snapshot))
        return bank, leftovers

    def wait(self):
        results = run_tools(*(('bank.py', 'verify', snapshot)
                              for _, snapshot in self.snapshots))
        for (label, _), result in zip(self.snapshots, results):
            assert result.returncode == 0, (label, result.stdout,
                                            result.stderr)
            assert ': OK,' in result.stdout, (label, result.stdout)


def test_sigkill_at_each_point_of_a_commit(workspace):
    checks = _Checks(workspace)
    # A new task: each run is the rerun of the one killed before it.
    for kill, committed in POINTS:
        result = _add_task(workspace, 'wd_new', '--task', 'depth',
                           kill=kill)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        bank, leftovers = checks(f'new task, {kill}')
        assert ('depth' in bank.tasks()) == committed, kill
        if kill == 'open:1:before':
            assert leftovers == []  # nothing of depth was written
        if kill == 'replace:1:after':
            # The complete, unnamed task file blocks nothing.
            assert [os.path.basename(p) for p in leftovers] == [
                n for n in os.listdir(os.path.join(bank.path, 'tasks'))
                if n.startswith('depth.')]
    bank = TaskBank(workspace['bank'])
    old = bank.task_versions('depth')[0]
    old_metrics = evaluate(workspace, ['depth'])
    # --replace: the old version stays current until the manifest commit.
    for kill, committed in POINTS:
        result = _add_task(workspace, 'wd_replace', '--task', 'depth',
                           '--replace', kill=kill)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        bank, _ = checks(f'--replace, {kill}')
        versions = bank.task_versions('depth')
        if committed:
            assert versions[0]['sha256'] != old['sha256']
            assert versions[1]['sha256'] == old['sha256']  # kept
        else:
            assert versions[0]['sha256'] == old['sha256'], kill
            assert evaluate(workspace, ['depth']) == old_metrics, kill
    # A run to the end succeeds; the leftovers go with prune.
    result = ok(_add_task(workspace, 'wd_final', '--task', 'depth',
                          '--replace'))
    assert "wrote task 'depth'" in result.stdout
    bank, _ = checks('final --replace', evaluate_semseg=True)
    bank.prune()
    assert bank.leftovers() == []
    checks.wait()


def test_a_diverged_run_never_reaches_the_bank(workspace):
    files = file_digests(workspace['bank'])
    result = _add_task(workspace, 'wd_diverged', '--task', 'semseg',
                       '--replace', '--cfg-options',
                       'optim_wrapper.optimizer.lr=1e30',
                       'train_cfg.max_iters=4')
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.rstrip().splitlines()[-1]  # after warnings
    assert error.startswith('error: training stopped at iteration ')
    assert "task 'semseg'" in error and 'not finite' in error
    assert 'Traceback' not in result.stderr
    assert 'wrote task' not in result.stdout
    assert file_digests(workspace['bank']) == files
    assert evaluate(workspace, ['semseg']) == workspace['metrics']


def test_test_out_onto_the_manifest_is_refused(workspace):
    files = file_digests(workspace['bank'])
    manifest = os.path.join(workspace['bank'], 'manifest.json')
    result = run_tool('test.py', workspace['config'], '--bank',
                      workspace['bank'], '--out', manifest)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.rstrip().splitlines()[-1]
    assert error.startswith('error: ') and manifest in error
    assert 'Traceback' not in result.stderr
    assert file_digests(workspace['bank']) == files


def test_four_concurrent_runs_register_all_four(workspace):
    """Two new tasks and two --replace runs at once on one bank: the lock
    serialises the commits, no entry is lost."""
    bank = TaskBank(workspace['bank'])
    before = {t: bank.task_versions(t)[0]['sha256'] for t in bank.tasks()}
    assert set(before) == {'semseg', 'depth'}
    env = tool_env()
    runs = [('normals',), ('edge',), ('depth', '--replace'),
            ('semseg', '--replace')]
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'tools', 'add_task.py'),
         workspace['config'], '--bank', workspace['bank'], '--work-dir',
         str(workspace['tmp'] / f'wd_concurrent_{run[0]}'), '--task',
         *run], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE) for run in runs]
    for run, proc in zip(runs, procs):
        out, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, (run, err[-3000:])
        assert f"wrote task '{run[0]}'" in out
    bank.verify()
    assert sorted(bank.tasks()) == ['depth', 'edge', 'normals', 'semseg']
    for task, sha in before.items():  # replaced, the old version kept
        versions = bank.task_versions(task)
        assert versions[0]['sha256'] != sha and versions[1]['sha256'] == sha
