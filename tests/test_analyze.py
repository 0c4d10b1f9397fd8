"""The paper's two analyses (rc_adapter.mmseg.analysis, tools/analyze.py):
RDMs and their Spearman comparison on hand-made features, the size table
of a tiny bank against hand-computed sums, and the real tool on a bank
built from generated data (RC tasks that differ, a shared baseline whose
tasks see one encoder)."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from tool_helpers import ok, run_tool, small_config, tiny_backbone_checkpoint

import rc_adapter as rc
from rc_adapter import RCConfigError, TaskBank
from rc_adapter.mmseg.analysis import (Size, measure_bank, rdm,
                                       rdm_similarity, similarity_matrix,
                                       size_table)
from rc_adapter.mmseg.analysis.rsa import rsa_from_rdms

# -- RDM and Spearman on hand-made features -----------------------------------
# Four images, three dimensions. Centred, x0 = (-1, 0, 1); x1 = 2 x0 (r = 1);
# x2 reverses x0 (r = -1); x3 centres to (1, -2, 1), orthogonal to x0 (r = 0).
FEATURES = np.array([[1., 2., 3.], [2., 4., 6.], [3., 2., 1.], [2., -1., 2.]])
RDM_BY_HAND = np.array([[0., 0., 2., 1.],
                        [0., 0., 2., 1.],
                        [2., 2., 0., 1.],
                        [1., 1., 1., 0.]])


def test_rdm_is_one_minus_pearson_by_hand():
    np.testing.assert_allclose(rdm(FEATURES), RDM_BY_HAND, atol=1e-12)
    # Scaling or shifting an image's vector changes no correlation.
    moved = FEATURES * np.array([[3.], [0.5], [2.], [1.]]) + 7
    np.testing.assert_allclose(rdm(moved), RDM_BY_HAND, atol=1e-12)


def test_identical_features_give_similarity_exactly_one():
    a = rdm(FEATURES)
    b = rdm(FEATURES.copy())
    assert rdm_similarity(a, b) == 1.0
    assert (similarity_matrix([a, b, a]) == 1.0).all()


def test_permuted_images_give_the_hand_computed_spearman():
    # Task B sees images 0 and 3 swapped: RDM_B[i, j] = RDM_A[p(i), p(j)].
    a = rdm(FEATURES)
    b = rdm(FEATURES[[3, 1, 2, 0]])
    # Upper triangles (pairs 01 02 03 12 13 23): A = 0 2 1 2 1 1,
    # B = 1 1 1 2 0 2. Average ranks: A = 1 5.5 3 5.5 3 3,
    # B = 3 3 3 5.5 1 5.5; centred (mean 3.5), Σuv = 4.75, Σu² = Σv² = 15.
    assert rdm_similarity(a, b) == pytest.approx(4.75 / 15, abs=1e-12)
    assert rdm_similarity(b, a) == pytest.approx(19 / 60, abs=1e-12)
    assert rdm_similarity(a, a[::-1, ::-1].copy()) == pytest.approx(
        rdm_similarity(a[::-1, ::-1].copy(), a))


def test_degenerate_inputs():
    # A constant triangle ranks nothing: NaN, reported as None.
    flat = np.ones((4, 4)) - np.eye(4)
    assert np.isnan(rdm_similarity(flat, rdm(FEATURES)))
    # An image whose vector is constant has no correlation.
    dead = rdm(np.vstack([FEATURES, np.zeros(3)]))
    assert np.isnan(dead[4, :4]).all() and dead[4, 4] == 0
    with pytest.raises(RCConfigError, match='at least 3'):
        rdm_similarity(rdm(FEATURES[:2]), rdm(FEATURES[:2]))
    with pytest.raises(RCConfigError, match='same images'):
        rdm_similarity(rdm(FEATURES), rdm(FEATURES[:3]))
    result = rsa_from_rdms({'m': {'t': {'l': rdm(FEATURES)},
                                  'u': {'l': flat}}}, ['l'])
    entry = result['models']['m']
    assert entry['similarity']['l'] == [[1.0, None], [None, 1.0]]
    assert entry['mean_pairwise']['l'] is None


def test_rsa_from_rdms_pairs_and_same_task():
    a, b = rdm(FEATURES), rdm(FEATURES[[3, 1, 2, 0]])
    result = rsa_from_rdms({'rc': {'x': {'l': a}, 'y': {'l': b}},
                            'shared': {'x': {'l': a}, 'y': {'l': a}}}, ['l'])
    assert result['models']['rc']['mean_pairwise']['l'] == \
        pytest.approx(19 / 60)
    assert result['models']['shared']['mean_pairwise']['l'] == 1.0
    assert result['same_task']['rc~shared']['l'] == {
        'x': 1.0, 'y': pytest.approx(19 / 60)}


# -- the size table of a tiny bank, by hand -----------------------------------
class Tiny(nn.Module):
    """conv1 3->8 3x3 (no bias), bn1, conv2 8->4 1x1 (bias)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(self.bn1(self.conv1(x)).relu())


def _tiny_bank(path):
    """A bank of Tiny with tasks t1 (a 2-class decoder) and t2 (3
    classes), keyed as the mmseg segmentor keys them."""
    net = Tiny()
    rc.reparameterize(net, [], rc.RCConfig(modulator='full', nff=True))
    bank = TaskBank.create(path, rc.shared_state_dict(net),
                           config=dict(backbone=dict(type='Tiny')))
    names = set()
    for task, classes in (('t1', 2), ('t2', 3)):
        rc.add_task(net, task)
        state = {'backbone.' + k: v
                 for k, v in rc.task_state_dict(net, task).items()}
        head = nn.Conv2d(4, classes, 1)
        for key, value in head.state_dict().items():
            state[f'decode_heads.tasks.{task}.conv_seg.{key}'] = value
            names.add(f'decode_heads.tasks.{task}.conv_seg.{key}')
        bank.write_task(task, state)
    names.update('backbone.' + n for n, _ in net.named_parameters())
    return bank, names


def test_size_table_of_a_tiny_bank_by_hand(tmp_path):
    bank, names = _tiny_bank(tmp_path / 'bank')
    sizes = measure_bank(bank, Tiny(), parameter_names=names)
    # Shared: conv1 Ws 8*3*3*3 = 216 and its base modulator 8*8 = 64
    # (buffer); base BN: weight, bias, running mean/var 4*8 + 1 counter;
    # conv2 Ws 8*4 + bias 4 and base modulator 4*4 (buffer).
    assert sizes.shared == Size(values=216 + 64 + 33 + 32 + 4 + 16,
                                bytes=364 * 4 + 8,
                                parameters=216 + 16 + 32 + 4)
    # Per task: conv1 modulator 8*8 + NFF gains 8; BN 33 (16 parameters);
    # conv2 modulator 4*4 + gains 4.
    encoder = Size(values=72 + 33 + 20, bytes=124 * 4 + 8,
                   parameters=72 + 16 + 20)
    assert sizes.tasks['t1']['encoder'] == encoder
    assert sizes.tasks['t2']['encoder'] == encoder
    assert sizes.tasks['t1']['decoder'] == Size(10, 40, 10)
    assert sizes.tasks['t2']['decoder'] == Size(15, 60, 15)
    # The plain backbone: 216 + BN 33 + conv2 36.
    assert sizes.backbone == Size(285, 284 * 4 + 8, 216 + 16 + 36)
    manifest = bank.manifest()
    assert sizes.files['shared'] == manifest['shared']['size']
    assert sizes.files['t2'] == manifest['tasks']['t2']['size']

    table = size_table(sizes, tasks_up_to=4)
    rows = table['rows']
    assert [r['task'] for r in rows] == ['t1', 't2', None, None]
    assert [r['extrapolated'] for r in rows] == [False, False, True, True]
    shared, enc, back = 365, 125, 285
    # RC: shared + n encoders + decoders; independent: n (backbone +
    # decoder); shared baseline: backbone + decoders. Past t2, a task costs
    # the mean: encoder 125, decoder 12.5.
    decoders = [10, 25, 37.5, 50]
    for n, (row, heads) in enumerate(zip(rows, decoders), start=1):
        assert row['rc']['values'] == shared + n * enc + heads
        assert row['independent']['values'] == n * back + heads
        assert row['shared']['values'] == back + heads
        assert row['rc_encoder']['values'] == shared + n * enc
        assert row['independent_encoder']['values'] == n * back
        assert row['shared_encoder']['values'] == back
        assert row['reduction'] == pytest.approx(
            1 - (shared + n * enc + heads) / (n * back + heads))
    assert rows[3]['rc']['parameters'] == 268 + 4 * 108 + 50
    assert rows[0]['independent']['bytes'] == 1144 + 40
    assert table['mean_task']['decoder']['values'] == 12.5
    with pytest.raises(RCConfigError, match='tasks-up-to'):
        size_table(sizes, tasks_up_to=0)


# -- the real tool on generated data ------------------------------------------
TASKS = ('semseg', 'depth')
BASE = 'rc_r18_synthetic_nyud.py'


def _build(config, **model):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from rc_adapter.mmseg.apis import load_config
    cfg = load_config(config)
    init_default_scope('mmseg')
    cfg.model.update(model)
    return MODELS.build(cfg.model)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A converted bank with two trained-looking tasks (their per-task
    tensors moved away from the base state, so the tasks compute different
    functions) and a shared-baseline checkpoint."""
    from rc_adapter.mmseg.convert import convert_checkpoint
    from rc_adapter.synthetic import generate
    tmp = tmp_path_factory.mktemp('analyze')
    data = tmp / 'data'
    generate('nyud', str(data), num_train=2, num_val=5, size=(48, 48),
             seed=5)
    config = small_config(tmp / 'small.py', data, BASE,
                          TASKS + ('normals', 'edge'))
    checkpoint = tiny_backbone_checkpoint(tmp / 'backbone.pth')
    bank = tmp / 'bank'
    convert_checkpoint(config, checkpoint, bank, ri=False, progress=False,
                       log=lambda line: None)
    model = _build(config, bank=str(bank), tasks=list(TASKS),
                   train_tasks=list(TASKS))
    generator = torch.Generator().manual_seed(0)
    task_bank = TaskBank(bank)
    for task in TASKS:
        rc.set_task(model, task)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.3 * torch.randn(param.shape,
                                                 generator=generator))
        task_bank.write_task(task, rc.task_state_dict(model, task),
                             info=dict(type=task))
    shared = _build(config, baseline='shared', tasks=list(TASKS))
    baseline = tmp / 'shared.pth'
    torch.save({'meta': {}, 'state_dict': shared.state_dict()}, baseline)
    return dict(tmp=tmp, data=data, config=config, bank=str(bank),
                baseline=str(baseline))


def test_size_tool(workspace):
    from rc_adapter.mmseg.convert import build_backbone
    tmp, bank = workspace['tmp'], workspace['bank']
    out = tmp / 'size'
    result = ok(run_tool('analyze.py', 'size', workspace['config'],
                         '--bank', bank, '--out-dir', str(out)))
    table = json.load(open(out / 'model_size.json'))
    assert set(table['real_tasks']) == set(TASKS)
    assert len(table['rows']) == 10 and table['rows'][2]['extrapolated']
    # Against the model: the bank's files hold what the segmentor holds.
    model = _build(workspace['config'], bank=bank, tasks=list(TASKS))
    first = table['real_tasks'][0]
    model.set_active_task(first)
    task_state = rc.task_state_dict(model, first)
    shared = sum(v.numel() for v in rc.shared_state_dict(
        model.backbone).values())
    row = table['rows'][0]
    assert row['rc']['values'] == shared + sum(v.numel() for v in
                                               task_state.values())
    task = table['tasks'][first]
    assert task['encoder']['parameters'] + task['decoder']['parameters'] \
        == rc.task_parameter_count(model, first)
    plain = sum(v.numel() for v in build_backbone(
        model.backbone_cfg).state_dict().values())
    assert row['independent']['values'] == plain + task['decoder']['values']
    assert 'the paper reports 64%' in result.stdout
    assert (out / 'model_size.md').read_text().count('|') > 20
    assert (out / 'model_size.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_rsa_tool(workspace):
    tmp, bank = workspace['tmp'], workspace['bank']
    out = tmp / 'rsa'
    ok(run_tool('analyze.py', 'rsa', workspace['config'], '--bank', bank,
                '--images', '5', '--grid', '2', '--baseline-checkpoint',
                workspace['baseline'], '--out-dir', str(out)))
    result = json.load(open(out / 'rsa.json'))
    layers = ['layer1', 'layer2', 'layer3', 'layer4']
    assert result['layers'] == layers and len(result['images']) == 5
    assert result['encoder_per_task'] == {'rc': True, 'shared': False}
    shared, ours = result['models']['shared'], result['models']['rc']
    for layer in layers:
        # One encoder for every task: identical RDMs, similarity exactly 1.
        assert shared['similarity'][layer] == [[1.0, 1.0], [1.0, 1.0]]
        value = ours['similarity'][layer][0][1]
        assert -1.0 <= value <= 1.0
    # The tasks' own modulators and norms give them different
    # representations.
    assert min(ours['mean_pairwise'][layer] for layer in layers) < 0.999
    for name in ('rsa_heatmaps.png', 'rsa_layers.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_errors_are_one_paragraph(workspace):
    from rc_adapter.mmseg.analysis import rsa
    from rc_adapter.mmseg.apis import load_config
    tmp, bank, config = (workspace['tmp'], workspace['bank'],
                         workspace['config'])
    with pytest.raises(RCConfigError, match='only 5 image'):
        rsa(load_config(config), bank, images=6, log=lambda line: None)
    with pytest.raises(RCConfigError, match='at least 3'):
        rsa(load_config(config), bank, images=2, log=lambda line: None)
    with pytest.raises(RCConfigError, match='at least two'):
        rsa(load_config(config), bank, tasks=['semseg'],
            log=lambda line: None)
    with pytest.raises(rc.BankError, match='not in the bank'):
        rsa(load_config(config), bank, tasks=['semseg', 'edge'],
            log=lambda line: None)
    with pytest.raises(rc.CheckpointError, match='does not exist'):
        rsa(load_config(config), bank, log=lambda line: None,
            baseline_checkpoint=str(tmp / 'missing.pth'))
    with pytest.raises(RCConfigError, match='not a module'):
        rsa(load_config(config), bank, images=3, layers=['layer9'],
            log=lambda line: None)
    # Through the tool: a config whose backbone differs from the bank's.
    wide = small_config(tmp / 'wide.py', workspace['data'], BASE,
                        TASKS, width=32)
    result = run_tool('analyze.py', 'size', wide, '--bank', bank,
                      '--out-dir', str(tmp / 'wide_out'))
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'mismatch' in result.stderr and 'Traceback' not in result.stderr
    assert not os.path.exists(tmp / 'wide_out')
