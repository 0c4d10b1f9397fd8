"""End to end through the real command lines, on generated data:
convert (--data-root: RI on the train split) -> add_task (two tasks, then
one under 2-process DDP, one interrupted) -> test -> export, with the bank's
earlier files staying byte-identical."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from tool_helpers import (ROOT, add_semseg_then_depth, default_sigint,
                          digest, ok, run_tool, run_tools, small_config,
                          tiny_backbone_checkpoint, tool_env)

from rc_adapter import TaskBank

TASKS = ('semseg', 'depth', 'normals', 'edge')
BASE = 'rc_r18_synthetic_nyud.py'
GLOO = "env_cfg = dict(dist_cfg=dict(backend='gloo'))\n"


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    from rc_adapter.synthetic import generate
    tmp = tmp_path_factory.mktemp('tools')
    data = tmp / 'data'
    generate('nyud', str(data), num_train=6, num_val=3, size=(32, 32),
             seed=3)
    config = small_config(tmp / 'small.py', data, BASE, TASKS, extra=GLOO)
    checkpoint = tiny_backbone_checkpoint(tmp / 'resnet18-small.pth')
    bank = tmp / 'bank'
    # No --calib-dir: RI calibrates on the train split of the config's
    # dataset at --data-root (the config's own data root is elsewhere).
    result = ok(run_tool('convert_to_rc.py', config, checkpoint,
                         '--out', str(bank), '--data-root', str(data),
                         '--calib-images', '4', '--calib-size', '32', '32',
                         '--batch-size', '2', '--cfg-options',
                         'train_dataloader.dataset.data_root=nowhere'))
    assert 'function preserved' in result.stdout
    assert 'train split' in result.stdout
    calib = json.load(open(bank / 'manifest.json'))['config']['ri'][
        'calibration']
    with open(data / 'gt_sets' / 'train.txt') as f:
        train = sorted(f'images/{line.strip()}.jpg' for line in f)
    assert calib['split'] == 'train' and calib['count'] == 4
    expected = hashlib.sha256('\n'.join(train[:4]).encode()).hexdigest()
    assert calib['sha256'] == 'sha256:' + expected
    return dict(tmp=tmp, data=data, config=config, bank=bank)


def test_add_tasks_test_and_export(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    kept = add_semseg_then_depth(config, bank, tmp)
    manifest = json.load(open(os.path.join(bank, 'manifest.json')))
    assert set(manifest['tasks']) == {'semseg', 'depth'}
    assert 'mIoU' in manifest['tasks']['semseg']['info']['metrics']
    assert 'rmse' in manifest['tasks']['depth']['info']['metrics']

    # The tools that read the bank, one after the other (run_tools): an
    # existing task refused without --replace, test.py, infer.py on the
    # user's own pictures (here the dataset's image folder), export.py.
    out = tmp / 'results.json'
    images = workspace['data'] / 'images'
    pth = tmp / 'export' / 'depth.pth'
    again, tested, inferred, exported = run_tools(
        ('add_task.py', config, '--bank', bank, '--task', 'semseg',
         '--work-dir', tmp / 'wd_again'),
        ('test.py', config, '--bank', bank, '--metrics-out', out, '--out',
         tmp / 'pred', '--show-dir', tmp / 'show', '--work-dir',
         tmp / 'wd_test'),
        ('infer.py', images, '--bank', bank, config, '--out-dir',
         tmp / 'infer'),
        ('export.py', config, '--bank', bank, '--task', 'depth', '--out',
         pth, '--input-size', '64', '64'))

    assert again.returncode == 2
    assert '--replace' in again.stderr and 'Traceback' not in again.stderr
    assert all(digest(path) == value for path, value in kept.items())

    result = ok(tested)
    results = json.load(open(out))
    assert set(results['metrics']) == {'semseg', 'depth'}
    # The evaluation reproduces what add_task measured for each task.
    for task in ('semseg', 'depth'):
        stored = manifest['tasks'][task]['info']['metrics']
        for key, value in stored.items():
            assert results['metrics'][task][key] == pytest.approx(value)
    assert re.search(r'semseg\s+mIoU', result.stdout)
    # --out: every prediction of every image, as mmseg's --out folder.
    with open(workspace['data'] / 'gt_sets' / 'val.txt') as f:
        names = sorted(f'{line.strip()}.png' for line in f)
    for field in ('pred_sem_seg', 'pred_depth_map'):
        assert sorted(os.listdir(tmp / 'pred' / field)) == names
    # --show-dir: one panel per image, the raw encodings under raw/.
    assert sorted(os.listdir(tmp / 'show')) == names + ['raw']
    assert sorted(os.listdir(tmp / 'show' / 'raw' / 'pred_depth_map')) == \
        names

    # infer.py: one panel per picture, and for the validation images the
    # same predictions as test.py's.
    ok(inferred)
    pictures = sorted(f'{os.path.splitext(n)[0]}.png'
                      for n in os.listdir(images))
    assert sorted(os.listdir(tmp / 'infer')) == pictures + ['raw']
    for field in ('pred_sem_seg', 'pred_depth_map'):
        for name in names:
            assert digest(tmp / 'infer' / 'raw' / field / name) == \
                digest(tmp / 'pred' / field / name), (field, name)

    result = ok(exported)
    max_diff = float(re.search(r'max \|Δ\| = (\S+)', result.stdout)[1])
    assert max_diff < 1e-4
    # The paper's dilated backbone and head are kept, and the tool says why.
    assert 'segmentor=DepthEstimator' in result.stdout
    assert 'backbone: MTDeepLabResNet: its dilated BasicBlocks' in \
        result.stdout
    saved = torch.load(pth, weights_only=True)
    assert not any('modulators' in k or '.tasks.' in k
                   for k in saved['state_dict'])
    assert saved['meta']['dataset_meta']['task'] == 'depth'
    assert (tmp / 'export' / 'depth.py').exists()


def test_outputs_never_overwrite_the_bank(workspace):
    """A slip of the tab key: --out or --metrics-out naming the bank's
    manifest is refused before any work, naming both paths; the manifest is
    byte-identical. --out FILE.json still writes the metrics (deprecated)."""
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    manifest = os.path.join(bank, 'manifest.json')
    before = digest(manifest)
    flags = ('--out', '--metrics-out')
    legacy = tmp / 'legacy_metrics.json'
    *results, written = run_tools(
        *(('test.py', config, '--bank', bank, flag, manifest, '--work-dir',
           str(tmp / 'wd_refused')) for flag in flags),
        ('test.py', config, '--bank', bank, '--out', legacy, '--work-dir',
         str(tmp / 'wd_legacy')))
    assert written.returncode == 0, written.stderr[-2000:]
    assert 'deprecated' in written.stderr and '--metrics-out' in \
        written.stderr
    assert set(json.load(open(legacy))['metrics']) == {'semseg', 'depth'}
    for flag, result in zip(flags, results):
        assert result.returncode == 2, (flag, result.stderr[-2000:])
        assert 'refusing to write' in result.stderr
        assert manifest in result.stderr and 'the task bank' in \
            result.stderr
        assert 'Traceback' not in result.stderr
        assert digest(manifest) == before
    assert not (tmp / 'wd_refused').exists()  # refused before any work


def test_two_process_ddp_test(workspace):
    """test.py --launcher pytorch under torchrun: the metrics of two
    processes are those of one."""
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    single = tmp / 'results.json'
    assert single.exists(), 'needs test_add_tasks_test_and_export first'
    out = tmp / 'results_ddp.json'
    ok(run_tool('torchrun', '--nproc_per_node=2', '--master_port=29534',
                os.path.join(ROOT, 'tools', 'test.py'), config, '--bank',
                bank, '--tasks', 'semseg', 'depth', '--metrics-out', str(out),
                '--work-dir', str(tmp / 'wd_ddp_test'), '--launcher',
                'pytorch'))
    expected = json.load(open(single))['metrics']
    got = json.load(open(out))['metrics']
    assert set(got) == set(expected)
    for task, values in expected.items():
        for key, value in values.items():
            assert got[task][key] == pytest.approx(value, rel=1e-5), (task,
                                                                      key)


def test_two_process_ddp_add_task(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    before = {name: digest(os.path.join(bank, 'tasks', name))
              for name in os.listdir(os.path.join(bank, 'tasks'))}
    result = ok(run_tool(
        'torchrun', '--nproc_per_node=2', '--master_port=29533',
        os.path.join(ROOT, 'tools', 'add_task.py'), config, '--bank', bank,
        '--task', 'normals', '--work-dir', str(tmp / 'wd_ddp'),
        '--launcher', 'pytorch'))
    assert result.stdout.count("wrote task 'normals'") == 1  # rank 0 only
    assert 'normals' in TaskBank(bank).tasks()
    for name, value in before.items():
        assert digest(os.path.join(bank, 'tasks', name)) == value


def test_bad_input_is_one_clear_paragraph(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    cases = [
        (('add_task.py', config, '--bank', bank, '--task', 'sal'),
         'unknown task'),
        (('test.py', config, '--bank', bank, '--data-root',
          str(tmp / 'nowhere')), 'does not exist'),
        (('add_task.py', config, '--bank', str(tmp / 'no_bank'), '--task',
          'edge'), 'does not exist'),
    ]
    # A config whose backbone differs from the bank's.
    wide = small_config(tmp / 'wide.py', workspace['data'], BASE, TASKS,
                        width=32)
    cases.append((('test.py', wide, '--bank', bank), 'mismatch'))
    # mmengine/mmseg components refusing the configuration: an unknown
    # type, an argument check of mmengine's OptimWrapper (while add_task
    # builds it), and --tta, which multi-task heads cannot merge.
    cases += [
        (('test.py', config, '--bank', bank, '--cfg-options',
          'model.backbone.type=NoSuchNet'), "unknown type 'NoSuchNet'"),
        (('add_task.py', config, '--bank', bank, '--task', 'edge',
          '--work-dir', str(tmp / 'wd_refused_optim'), '--cfg-options',
          'optim_wrapper.accumulative_counts=0'),
         'OptimWrapper refused the configuration'),
        (('test.py', config, '--bank', bank, '--tta'), '--tta is not '
         'supported'),
    ]
    results = run_tools(*(args for args, _ in cases))
    for (args, message), result in zip(cases, results):
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr, (args, result.stderr[-2000:])
        assert 'Traceback' not in result.stderr, args


def test_baseline_train_resume_and_checkpoint_test(workspace):
    """A plain (shared-encoder) baseline: train, resume, evaluate its
    mmengine checkpoint; all loads stay weights-only on torch >= 2.6."""
    config, tmp = workspace['config'], workspace['tmp']
    work_dir = str(tmp / 'wd_shared')
    common = ['--work-dir', work_dir, '--cfg-options',
              'model.baseline=shared', "model.tasks=['semseg']"]
    ok(run_tool('train.py', config, '--amp', *common))
    assert os.path.exists(os.path.join(work_dir, 'iter_2.pth'))
    # --amp: rc_adapter's AMP optim wrapper, bfloat16 on a CPU.
    dumped = open(os.path.join(work_dir, 'small.py')).read()
    assert "type='MTAmpOptimWrapper'" in dumped
    if not torch.cuda.is_available():
        assert "dtype='bfloat16'" in dumped
    resumed = ok(run_tool('train.py', config, '--resume', *common,
                          'train_cfg.max_iters=4'))
    assert 'resumed' in (resumed.stdout + resumed.stderr).lower()
    assert os.path.exists(os.path.join(work_dir, 'iter_4.pth'))
    result = ok(run_tool('test.py', config, '--checkpoint',
                         os.path.join(work_dir, 'iter_4.pth'),
                         '--cfg-options', 'model.baseline=shared',
                         "model.tasks=['semseg']"))
    assert re.search(r'semseg\s+mIoU', result.stdout)


def test_interrupted_add_task_leaves_the_bank_unchanged(workspace):
    """Ctrl-C during training: exit 130, one line saying the bank is
    unchanged, and it is (no task file, the same manifest)."""
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    manifest = os.path.join(bank, 'manifest.json')
    before = digest(manifest), sorted(os.listdir(os.path.join(bank,
                                                              'tasks')))
    env = tool_env()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'tools', 'add_task.py'), config,
         '--bank', bank, '--task', 'edge', '--work-dir',
         str(tmp / 'wd_interrupted'), '--cfg-options',
         'train_cfg.max_iters=100000', 'train_cfg.val_interval=100000'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=default_sigint)
    try:
        for line in proc.stdout:  # mmengine logs each iteration
            if 'Iter(train)' in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert 'interrupted; the bank is unchanged' in err
    assert 'Traceback' not in err
    assert (digest(manifest), sorted(os.listdir(os.path.join(
        bank, 'tasks')))) == before


# -- the library functions behind the tools' refusals (no subprocess) ------
def test_check_outputs_refuses_what_the_user_owns(tmp_path):
    from rc_adapter import RCConfigError
    from rc_adapter.mmseg.apis import check_outputs
    bank = tmp_path / 'bank'
    bank.mkdir()
    (bank / 'manifest.json').write_text('{}')
    config = tmp_path / 'cfg.py'
    config.write_text('x = 1\n')
    data = tmp_path / 'data'
    data.mkdir()
    (tmp_path / 'link').symlink_to(bank)
    os.link(config, tmp_path / 'hard.py')
    protected = {'the task bank': str(bank), 'the config': str(config),
                 'the data root': str(data)}
    refused = {
        str(bank / 'manifest.json'): 'inside the task bank',
        str(bank): 'it is the task bank',
        str(tmp_path / 'link' / 'manifest.json'): 'inside the task bank',
        str(tmp_path / 'hard.py'): 'it is the config',
        str(config): 'it is the config',
        str(data / 'show'): 'inside the data root',
        str(bank / 'new' / 'deeper.png'): 'inside the task bank',
    }
    for path, message in refused.items():
        with pytest.raises(RCConfigError, match=message) as err:
            check_outputs({'--out': path}, protected)
        assert path in str(err.value) and '--out' in str(err.value)
    # Beside or above what the user owns is fine (nothing overwritten).
    check_outputs({'--out': str(tmp_path / 'bank2'),
                   '--work-dir': str(tmp_path),
                   '--show-dir': None}, protected)


def test_component_errors_are_user_errors_and_bugs_are_not():
    from mmseg.registry import MODELS, OPTIM_WRAPPERS

    from rc_adapter import RCConfigError
    from rc_adapter.mmseg.apis import component_errors
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cases = [
        (lambda: MODELS.build(dict(type='NoSuchNet')),
         "unknown type 'NoSuchNet'.*registry"),
        (lambda: MODELS.build(dict(type='MTDeepLabResNet', depth=18,
                                   no_such_arg=1)),
         "wrong arguments for MTDeepLabResNet.*no_such_arg"),
        (lambda: OPTIM_WRAPPERS.build(dict(type='OptimWrapper',
                                           optimizer=sgd,
                                           accumulative_counts=0)),
         'OptimWrapper refused the configuration: _?accumulative_counts'),
    ]
    if not torch.cuda.is_available():
        cases.append((lambda: OPTIM_WRAPPERS.build(dict(
            type='AmpOptimWrapper', optimizer=sgd)),
            'AmpOptimWrapper refused the configuration.*--amp'))
    for build, message in cases:
        with pytest.raises(RCConfigError, match=message):
            with component_errors():
                build()

    # Our own code failing while mmengine builds it is a bug: unchanged.
    @MODELS.register_module(name='_BuggyForTest', force=True)
    class Buggy(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            if kind == 'assert':
                assert False, 'internal invariant'
            if kind == 'key':
                {}['missing']
            self.nothing.attribute
    for kind, error in (('assert', AssertionError), ('key', KeyError),
                        ('attr', AttributeError)):
        with pytest.raises(error):
            with component_errors():
                MODELS.build(dict(type='_BuggyForTest', kind=kind))
    # A ValueError outside any config building is not translated either.
    with pytest.raises(ValueError):
        with component_errors():
            int('x')
