"""Warm start (``train_task(init_from=...)``, ``add_task.py --init-from``):
which tensors a new task takes from a stored one, that the run then trains
from them, that the source task stays bit-identical, that ``'auto'``
picks the lowest score without disturbing the run, and what the manifest
records.

Runs are a few iterations of a width-16 network on 32x32 images, in-process
(``train_helpers``).
"""
import os
import shutil

import pytest
import torch
from mmengine.registry import init_default_scope
from train_helpers import evaluate, file_digests, make_workspace, train

import rc_adapter as rc
from rc_adapter import TaskBank, UnknownTaskError
from rc_adapter.core.errors import RCConfigError
from rc_adapter.mmseg.apis import load_config
from rc_adapter.mmseg.apis import warm_start as warm
from rc_adapter.mmseg.apis.warm_start import warm_start_tensors

# The same seed for every run, so two runs differ only by their start.
SEEDED = {'randomness': dict(seed=0)}


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp('warm'))


def _copy_bank(workspace, name):
    """A copy of the workspace (its bank holds semseg only)."""
    path = str(workspace['tmp'] / name)
    shutil.copytree(workspace['bank'], path)
    return dict(workspace, bank=path)


def _parameters(state):
    """Trainable tensors only (norm statistics move in training mode
    even at learning rate 0)."""
    return {k: v for k, v in state.items()
            if 'running_' not in k and 'num_batches_tracked' not in k}


def _model(workspace, tasks, bank=None):
    from mmseg.registry import MODELS
    cfg = load_config(workspace['config'])
    cfg.model.tasks = list(tasks)
    cfg.model.train_tasks = [] if bank else list(tasks)
    cfg.model.bank = bank
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


def _outputs(workspace, task):
    """The stored task's outputs on a fixed batch, through the bank."""
    model = _model(workspace, [task], bank=workspace['bank']).eval()
    inputs = torch.rand(2, 3, 32, 32,
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(inputs, mode='tensor')
    return [t.clone() for t in (out.values() if isinstance(out, dict)
                                else [out])]


def test_backbone_always_head_only_of_the_same_type_and_shape(workspace):
    model = _model(workspace, ['semseg', 'depth'])
    source = rc.task_state_dict(model, 'semseg')
    target = rc.task_state_dict(model, 'depth')
    heads = {k for k in target if k.startswith('decode_heads.')}
    assert heads and len(heads) < len(target)
    # depth's classifier has 1 channel, semseg's 41: only it differs.
    differ = {k for k in heads if target[k].shape !=
              source[k.replace('.depth.', '.semseg.')].shape}
    assert differ and all('conv_seg' in k for k in differ)

    taken, counts = warm_start_tensors(model, 'depth', 'semseg', source,
                                       same_type=True)
    assert set(taken) == set(target) - differ
    assert counts == dict(backbone=len(target) - len(heads),
                          head=len(heads) - len(differ),
                          skipped=len(differ))
    for key, value in taken.items():
        stored = source[key.replace('.depth.', '.semseg.')]
        assert value is stored
    taken, counts = warm_start_tensors(model, 'depth', 'semseg', source,
                                       same_type=False)
    assert set(taken) == set(target) - heads
    assert counts['head'] == 0 and counts['skipped'] == len(heads)


def test_a_task_restarted_from_itself_takes_every_tensor(workspace):
    """``--replace --init-from semseg`` at learning rate 0: the new version
    has the old version's parameters exactly (backbone and head: same type,
    same shapes), and the manifest says where it started."""
    copy = _copy_bank(workspace, 'bank_self')
    bank = TaskBank(copy['bank'])
    old = bank.task_versions('semseg')[0]
    before = bank.read_task('semseg')
    train(copy, 'semseg', 'wd_self', replace=True, init_from='semseg',
          cfg_options={'optim_wrapper.optimizer.lr': 0.0})
    after = bank.read_task('semseg')
    assert bank.task_versions('semseg')[0]['sha256'] != old['sha256']
    for key, value in _parameters(before).items():
        assert torch.equal(after[key], value), key
    record = bank.task_info('semseg')['init_from']
    assert record == dict(task='semseg', requested='semseg',
                          sha256=old['sha256'], version=old['version'],
                          backbone=record['backbone'],
                          head=record['head'], skipped=0)
    assert record['backbone'] > 0 and record['head'] > 0


def test_a_warm_started_task_leaves_its_source_bit_identical(workspace):
    copy = _copy_bank(workspace, 'bank_isolated')
    bank = TaskBank(copy['bank'])
    files = file_digests(copy['bank'])
    tensors = bank.read_task('semseg')
    outputs = _outputs(copy, 'semseg')
    metrics = evaluate(copy, ['semseg'])
    train(copy, 'depth', 'wd_isolated', init_from='semseg')
    after = file_digests(copy['bank'])
    assert {k: v for k, v in after.items() if k in files
            and k != 'manifest.json'} == \
        {k: v for k, v in files.items() if k != 'manifest.json'}
    for key, value in bank.read_task('semseg').items():
        assert torch.equal(value, tensors[key]), key
    for new, old in zip(_outputs(copy, 'semseg'), outputs):
        assert torch.equal(new, old)
    assert evaluate(copy, ['semseg']) == metrics
    record = bank.task_info('depth')['init_from']
    assert record['task'] == 'semseg' and record['head'] == 0
    assert record['skipped'] > 0  # depth's head is not semseg's type
    assert bank.task_info('semseg')['init_from'] == {'task': None}


def test_auto_scoring_leaves_the_run_as_it_would_have_been(workspace,
                                                           monkeypatch):
    """Scores rigged to prefer the base state (the candidates are still
    trained and scored): the task is bit-identical to a run without warm
    start, so scoring restores the task's tensors, the random state and
    the run's data order."""
    plain = _copy_bank(workspace, 'bank_plain')
    train(plain, 'depth', 'wd_plain', cfg_options=SEEDED)
    expected = TaskBank(plain['bank']).read_task('depth')

    real = warm.WarmStartHook._score
    calls = []

    def rigged(self, runner, model, steps, held):
        calls.append(real(self, runner, model, steps, held))
        return 0.0 if len(calls) == 1 else 1.0  # base is scored first

    monkeypatch.setattr(warm.WarmStartHook, '_score', rigged)
    auto = _copy_bank(workspace, 'bank_rigged')
    train(auto, 'depth', 'wd_rigged', cfg_options=SEEDED, init_from='auto')
    assert len(calls) == 2  # base and semseg
    bank = TaskBank(auto['bank'])
    assert bank.task_info('depth')['init_from'] == dict(
        task=None, requested='auto', scores={'base': 0.0, 'semseg': 1.0},
        score='mean training loss on 2 batch(es) after 5 step(s) from each '
              'candidate')
    stored = bank.read_task('depth')
    assert stored.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(stored[key], value), key


def test_auto_picks_the_lowest_score(workspace):
    copy = _copy_bank(workspace, 'bank_auto')
    train(copy, 'depth', 'wd_auto_depth', init_from='semseg')
    train(copy, 'normals', 'wd_auto', init_from='auto',
          cfg_options={'warm_start': dict(score_steps=2, score_batches=1,
                                          candidates=['depth'])})
    record = TaskBank(copy['bank']).task_info('normals')['init_from']
    scores = record['scores']
    assert set(scores) == {'base', 'depth'}  # only the listed candidates
    assert all(isinstance(v, float) for v in scores.values())
    best = min(scores, key=scores.get)
    assert record['task'] == (None if best == 'base' else best)
    assert record['score'] == ('mean training loss on 1 batch(es) after 2 '
                               'step(s) from each candidate')


def test_bad_init_from_is_refused_before_training(workspace):
    with pytest.raises(UnknownTaskError, match="'edge'.*holds no such"):
        train(workspace, 'depth', 'wd_bad_init', init_from='edge')
    assert not os.path.exists(workspace['tmp'] / 'wd_bad_init' / 'iter_2.pth')
    from rc_adapter.mmseg.apis import train as train_all
    cfg = load_config(workspace['config'])
    cfg.model.train_tasks = ['depth', 'normals']
    with pytest.raises(RCConfigError, match='exactly one train task'):
        train_all(cfg, bank=workspace['bank'], init_from='semseg')
    bank = TaskBank(workspace['bank'])
    with pytest.raises(RCConfigError, match='score_steps'):
        warm.warm_start_hook(bank, 'depth', 'auto', {'score_steps': -1})
    with pytest.raises(RCConfigError, match=r"unknown key\(s\) \['steps'\]"):
        warm.warm_start_hook(bank, 'depth', 'auto', {'steps': 3})
    with pytest.raises(UnknownTaskError, match=r"candidates.*\['edge'\]"):
        warm.warm_start_hook(bank, 'depth', 'auto', {'candidates': ['edge']})
    hook = warm.warm_start_hook(bank, 'depth', 'auto', {
        'candidates': ['semseg'], 'score_steps': 1})
    assert (hook.candidates, hook.score_steps, hook.score_batches) == (
        ['semseg'], 1, warm.DEFAULT_SCORE_BATCHES)
    assert warm.warm_start_hook(bank, 'depth', None) is None
