"""RCMultiTaskSegmentor: surgery in __init__, routing, losses, predictions,
the RCConfig it reads (and its deprecated keys), bank/config matching."""
import copy
import json
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import rc_adapter as rc
from rc_adapter.core import RCConv2d
from rc_adapter.core.errors import (BankError, RCConfigError, RCError,
                                    UnknownTaskError)

MODEL_BASE = 'mmseg_configs/_base_/models/rc_deeplabv3plus_r18_nyud.py'


def small_model_cfg(**overrides):
    """The NYUD model with narrow heads, so tests stay fast."""
    init_default_scope('mmseg')
    cfg = Config.fromfile(MODEL_BASE).model
    cfg.data_preprocessor = dict(type='SegDataPreProcessor',
                                 mean=[0, 0, 0], std=[1, 1, 1],
                                 size_divisor=16)
    for head in cfg.decode_heads.values():
        head.channels = 16
        head.c1_channels = 8
    cfg.update(overrides)
    return cfg


def make_samples(n, h, w, flip=False):
    samples = []
    for _ in range(n):
        meta = dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w),
                    padding_size=[0, 0, 0, 0], flip=flip,
                    flip_direction='horizontal')
        s = SegDataSample(metainfo=meta)
        s.gt_sem_seg = PixelData(data=torch.randint(0, 41, (1, h, w)))
        s.set_data(dict(
            gt_depth_map=PixelData(data=torch.rand(1, h, w) + 0.5),
            gt_normal_map=PixelData(
                data=F.normalize(torch.randn(3, h, w), dim=0)),
            gt_edge_map=PixelData(data=torch.randint(0, 2, (1, h, w)))))
        samples.append(s)
    return samples


def test_surgery_in_init_and_trainable_set():
    model = MODELS.build(small_model_cfg(train_tasks=['depth']))
    assert rc.list_tasks(model) == ['semseg', 'depth', 'normals', 'edge']
    convs = [m for m in model.backbone.modules() if isinstance(m, RCConv2d)]
    assert len(convs) == 17  # stem + 16 block convs, as in the paper
    # Both 3x3 convs of the dilated layer4 blocks are dilated.
    assert model.backbone.layer4[1].conv2.dilation == (2, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all('.depth.' in n for n in trainable)
    assert any(n.startswith('decode_heads.tasks.depth.') for n in trainable)
    assert any(n.startswith('backbone.') for n in trainable)


def test_loss_only_trains_train_tasks_and_prefixes_keys():
    model = MODELS.build(small_model_cfg(train_tasks=['depth', 'edge'],
                                         allow_random_bank=True))
    model.train()
    x = torch.randn(2, 3, 64, 64)
    losses = model(x, make_samples(2, 64, 64), mode='loss')
    assert set(losses) == {'depth.loss_l1', 'edge.loss_bce'}
    sum(losses.values()).backward()
    with_grad = {n for n, p in model.named_parameters()
                 if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters()
                         if p.requires_grad}
    assert all('.depth.' in n or '.edge.' in n for n in with_grad)


def test_tensor_mode_returns_every_task_at_input_size():
    model = MODELS.build(small_model_cfg())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 80), mode='tensor')
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        'semseg': (1, 41, 48, 80), 'depth': (1, 1, 48, 80),
        'normals': (1, 3, 48, 80), 'edge': (1, 1, 48, 80)}
    norms = out['normals'].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_predict_writes_each_field_unflipping_normals():
    model = MODELS.build(small_model_cfg())
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x, make_samples(1, 64, 64), mode='predict')[0]
        # The same image flipped, declared flipped: predictions must map
        # back, normals with x negated.
        flipped = model(x.flip(3), make_samples(1, 64, 64, flip=True),
                        mode='predict')[0]
    assert plain.pred_sem_seg.data.shape == (1, 64, 64)
    assert plain.pred_sem_seg.data.dtype == torch.int64
    assert plain.pred_depth_map.data.shape == (1, 64, 64)
    assert plain.pred_normal_map.data.shape == (3, 64, 64)
    edge = plain.pred_edge_map.data
    assert edge.min() >= 0 and edge.max() <= 1
    # Conv nets are not flip-equivariant, so compare against the model's
    # own tensor output on the flipped input.
    with torch.no_grad():
        normals = model(x.flip(3), mode='tensor')['normals'][0]
    expected = normals.flip(2) * torch.tensor([-1., 1., 1.]).view(3, 1, 1)
    torch.testing.assert_close(flipped.pred_normal_map.data, expected,
                               rtol=1e-5, atol=1e-5)


def test_unknown_tasks_and_modes_are_clear_errors():
    with pytest.raises(UnknownTaskError, match='no decode head'):
        MODELS.build(small_model_cfg(tasks=['semseg', 'sal']))
    with pytest.raises(RCConfigError, match='not in tasks'):
        MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=['depth']))
    with pytest.raises(RCConfigError, match='baseline'):
        MODELS.build(small_model_cfg(baseline='prompt_tuning'))
    with pytest.raises(RCConfigError, match='mode'):
        MODELS.build(small_model_cfg(rc_cfg=dict(mode='lora')))
    # Unknown rc_cfg keys are named, with the valid ones.
    with pytest.raises(RCConfigError, match=r"\['nf'\].*nff") as err:
        MODELS.build(small_model_cfg(rc_cfg=dict(nf=True)))
    assert isinstance(err.value, RCError)
    with pytest.raises(RCConfigError, match='execution'):
        MODELS.build(small_model_cfg(rc_cfg=dict(execution='fast')))


@pytest.mark.parametrize('baseline', ['finetune', 'shared'])
def test_baselines_train_the_plain_backbone(baseline):
    model = MODELS.build(small_model_cfg(baseline=baseline,
                                         tasks=['semseg'],
                                         train_tasks=['semseg']))
    assert model.baseline == baseline
    assert not any(isinstance(m, RCConv2d) for m in model.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert rc.list_tasks(model) == ['semseg']


def _deprecations(caught):
    return [str(w.message) for w in caught
            if issubclass(w.category, DeprecationWarning)
            and 'one more release' in str(w.message)]


@pytest.mark.parametrize('mode', ['finetune', 'shared'])
def test_deprecated_rc_cfg_mode_maps_to_baseline(mode):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = MODELS.build(small_model_cfg(rc_cfg=dict(mode=mode),
                                             tasks=['semseg']))
    assert model.baseline == mode
    assert not any(isinstance(m, RCConv2d) for m in model.modules())
    (message,) = _deprecations(caught)
    assert 'rc_cfg.mode' in message and f'baseline={mode!r}' in message
    # mode='rc' is the RC model; a contradiction is an error.
    with pytest.warns(DeprecationWarning, match='rc_cfg.mode'):
        model = MODELS.build(small_model_cfg(rc_cfg=dict(mode='rc', nff=False),
                                             tasks=['semseg']))
    assert model.baseline is None and model.rc_config.nff is False
    with pytest.raises(RCConfigError, match='contradicts'):
        MODELS.build(small_model_cfg(rc_cfg=dict(mode='shared'),
                                     baseline='finetune'))
    # mode='rc', the old default of base configs, yields to an explicit
    # baseline.
    with pytest.warns(DeprecationWarning, match='rc_cfg.mode'):
        model = MODELS.build(small_model_cfg(rc_cfg=dict(mode='rc'),
                                             baseline='shared',
                                             tasks=['semseg']))
    assert model.baseline == 'shared'


def test_deprecated_rc_cfg_ri_is_accepted_and_ignored_by_the_model():
    cfg = small_model_cfg(rc_cfg=dict(ri=False), tasks=['semseg'])
    with pytest.warns(DeprecationWarning, match='convert_cfg'):
        model = MODELS.build(cfg)
    rc_cfg = {k: v for k, v in cfg.rc_cfg.items() if k != 'ri'}
    assert model.rc_config == rc.RCConfig(**rc_cfg)


def test_rc_config_reaches_the_surgery_and_rc_info():
    cfg = small_model_cfg(rc_cfg=dict(nff=False, exclude=['layer4'],
                                      execution='weight'), tasks=['semseg'])
    model = MODELS.build(cfg)
    expected = rc.RCConfig(**cfg.rc_cfg)
    assert (expected.nff, expected.exclude, expected.execution) == (
        False, ['layer4'], 'weight')
    assert model.rc_config == expected
    assert model.backbone.rc_info['config'] == expected.to_dict()
    convs = [n for n, m in model.backbone.named_modules()
             if isinstance(m, RCConv2d)]
    assert convs and not any(n.startswith('layer4') for n in convs)
    assert all(not m.nff for m in model.backbone.modules()
               if isinstance(m, RCConv2d))
    # An RCConfig instance is taken as it is.
    again = MODELS.build(small_model_cfg(rc_cfg=expected, tasks=['semseg']))
    assert again.rc_config == expected


def test_old_backbone_name_builds_the_same_network_with_a_warning():
    cfg = dict(depth=18, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
               out_indices=(0, 1, 2, 3))
    new = MODELS.build(dict(cfg, type='MTDeepLabResNet'))
    with pytest.warns(DeprecationWarning, match="'MTDeepLabResNet'"):
        old = MODELS.build(dict(cfg, type='DeepLabResNet'))
    assert isinstance(old, type(new))
    assert old.layer4[1].conv2.dilation == (2, 2)
    old.load_state_dict(new.state_dict())  # the same keys and shapes
    x = torch.randn(1, 3, 32, 32)
    new.eval(), old.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(old(x), new(x)))


def _write_bank(tmp_path, rc_cfg_stored=None,
                backbone_type='MTDeepLabResNet', **model_overrides):
    """A bank holding the shared state of a freshly built model, with the
    given manifest ``rc_cfg`` and backbone type (as older releases wrote)."""
    cfg = small_model_cfg(tasks=['semseg'], **model_overrides)
    model = MODELS.build(cfg)
    if rc_cfg_stored is None:
        rc_cfg_stored = rc.RCConfig(**cfg.rc_cfg).to_dict()
    backbone = json.loads(json.dumps(dict(cfg.backbone), default=list))
    backbone['type'] = backbone_type
    bank = rc.TaskBank.create(
        tmp_path / 'bank', rc.shared_state_dict(model.backbone),
        config=dict(backbone=backbone, rc_cfg=rc_cfg_stored))
    rc.set_task(model, 'semseg')
    bank.write_task('semseg', rc.task_state_dict(model, 'semseg'))
    return bank, model


def test_bank_written_by_an_earlier_release_still_loads(tmp_path):
    """Manifests of earlier releases hold an rc_cfg subset and the old
    backbone name; they load into a config using the new name and the
    full RCConfig (the missing fields are those banks' values: the paper's
    full modulators, the other defaults)."""
    old_rc_cfg = dict(nff=True, task_norms=True, include=None, exclude=None)
    bank, model = _write_bank(tmp_path, old_rc_cfg,
                              backbone_type='DeepLabResNet')
    loaded = MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=[],
                                          bank=bank.path))
    loaded.set_active_task('semseg')  # bank tasks load on first use
    expected = rc.task_state_dict(model, 'semseg')
    got = rc.task_state_dict(loaded, 'semseg')
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_bank_match_compares_the_architecture_only(tmp_path):
    bank, model = _write_bank(tmp_path)
    assert bank.config['rc_cfg'] == model.rc_config.to_dict()
    assert model.rc_config.modulator == 'full'  # the shipped configs'
    # The default RCConfig (modulator='auto') is another architecture.
    with pytest.raises(BankError, match='mismatch.*modulator'):
        MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=[],
                                     bank=bank.path,
                                     rc_cfg=dict(modulator='auto')))
    # The execution path changes no tensor: the bank loads.
    MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=[],
                                 bank=bank.path,
                                 rc_cfg=dict(execution='weight')))
    with pytest.raises(BankError, match='mismatch.*nff'):
        MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=[],
                                     bank=bank.path,
                                     rc_cfg=dict(nff=False)))
    with pytest.raises(RCConfigError, match='baseline'):
        MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=[],
                                     bank=bank.path, baseline='shared'))
    # A manifest whose rc_cfg is not an RCConfig names the bank.
    manifest_path = os.path.join(bank.path, 'manifest.json')
    manifest = json.load(open(manifest_path))
    manifest['config']['rc_cfg']['nf'] = True
    with open(manifest_path, 'w') as f:
        json.dump(manifest, f)
    with pytest.raises(BankError, match=r"manifest's rc_cfg.*'nf'"):
        MODELS.build(small_model_cfg(tasks=['semseg'], train_tasks=[],
                                     bank=bank.path))


def test_runner_init_weights_does_not_touch_the_backbone():
    model = MODELS.build(small_model_cfg())
    before = copy.deepcopy(model.state_dict())
    model.init_weights()  # what mmengine's Runner does after DDP wrapping
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not [k for k in changed if k.startswith('backbone.')]


# -- the random-bank guard --------------------------------------------------
def test_training_on_a_random_filter_bank_is_refused():
    model = MODELS.build(small_model_cfg(train_tasks=['depth']))
    model.train()
    x, samples = torch.randn(2, 3, 32, 32), make_samples(2, 32, 32)
    with pytest.raises(RCConfigError) as err:
        model(x, samples, mode='loss')
    message = str(err.value)
    for hint in ('random filter bank', 'tools/convert_to_rc.py',
                 'model.bank', "init_cfg=dict(type='Pretrained'",
                 'allow_random_bank=True'):
        assert hint in message
    # The opt-out, and the baselines (nothing frozen), train.
    for overrides in (dict(allow_random_bank=True),
                      dict(baseline='finetune')):
        model = MODELS.build(small_model_cfg(train_tasks=['depth'],
                                             **overrides))
        model.train()
        assert set(model(x, samples, mode='loss')) == {'depth.loss_l1'}


def test_pretrained_weights_or_a_checkpoint_lift_the_guard(tmp_path):
    cfg = small_model_cfg(tasks=['depth'])
    backbone = MODELS.build(dict(cfg.backbone))
    path = str(tmp_path / 'backbone.pth')
    torch.save(backbone.state_dict(), path)
    x, samples = torch.randn(2, 3, 32, 32), make_samples(2, 32, 32)
    pretrained = small_model_cfg(tasks=['depth'])
    pretrained.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    model = MODELS.build(pretrained).train()
    assert set(model(x, samples, mode='loss')) == {'depth.loss_l1'}
    # A checkpoint holding the backbone (load_from, --resume, init_model).
    model = MODELS.build(small_model_cfg(tasks=['depth'])).train()
    state = MODELS.build(small_model_cfg(tasks=['depth'])).state_dict()
    model.load_state_dict(state)
    assert set(model(x, samples, mode='loss')) == {'depth.loss_l1'}


# -- serving a bank -----------------------------------------------------------
def _trained_bank(tmp_path, tasks=('semseg', 'depth')):
    """A bank whose tasks differ from the base state (perturbed tensors)."""
    cfg = small_model_cfg(tasks=list(tasks))
    model = MODELS.build(cfg).eval()
    backbone = json.loads(json.dumps(dict(cfg.backbone), default=list))
    bank = rc.TaskBank.create(
        tmp_path / 'bank', rc.shared_state_dict(model.backbone),
        config=dict(backbone=backbone,
                    rc_cfg=rc.RCConfig(**cfg.rc_cfg).to_dict()))
    generator = torch.Generator().manual_seed(1)
    for task in tasks:
        state = rc.task_state_dict(model, task)
        for key, value in state.items():
            if value.is_floating_point():
                value.add_(0.05 * torch.randn(value.shape,
                                              generator=generator))
        bank.write_task(task, state, info=dict(
            classes=[f'c{i}' for i in range(41)] if task == 'semseg'
            else None))
    return bank, model


def test_bank_tasks_are_served_lazily_and_none_is_trained(tmp_path):
    bank, reference = _trained_bank(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = MODELS.build(small_model_cfg(bank=bank.path)).eval()
    # The config's heads normals/edge are not in the bank: not built.
    assert model.tasks == ['semseg', 'depth'] and model.train_tasks == []
    assert not [w for w in caught if 'bank' in str(w.message)]
    assert rc.list_tasks(model) == [] and model.active_task is None
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        got = model(x, mode='tensor')
        expected = reference(x, mode='tensor')
    assert set(got) == {'semseg', 'depth'}
    for task in got:
        assert torch.equal(got[task], expected[task]), task
    # A stored task with no head in the config is named.
    config = small_model_cfg(bank=bank.path)
    config.decode_heads.pop('depth')
    with pytest.warns(UserWarning, match=r"\['depth'\] that have no "
                                         r'decode head'):
        model = MODELS.build(config)
    assert model.tasks == ['semseg']
    # An empty selection is an error naming what to do.
    empty = small_model_cfg(bank=bank.path)
    for task in ('semseg', 'depth'):
        empty.decode_heads.pop(task)
    with pytest.warns(UserWarning), \
            pytest.raises(RCConfigError, match='model.train_tasks'):
        MODELS.build(empty)


def test_max_resident_unloads_the_least_recently_used_task(tmp_path):
    bank, reference = _trained_bank(tmp_path)
    model = MODELS.build(small_model_cfg(bank=bank.path,
                                         max_resident=1)).eval()
    x = torch.randn(1, 3, 32, 32)
    samples = make_samples(1, 32, 32)
    with torch.no_grad():
        both = model.predict(x, copy.deepcopy(samples), tasks='all')[0]
        assert rc.list_tasks(model) == ['depth']  # semseg evicted
        expected = reference.predict(x, copy.deepcopy(samples))[0]
        again = model.predict(x, copy.deepcopy(samples), tasks=['semseg'])[0]
    assert rc.list_tasks(model) == ['semseg']
    assert torch.equal(both.pred_sem_seg.data, expected.pred_sem_seg.data)
    assert torch.equal(both.pred_depth_map.data, expected.pred_depth_map.data)
    assert torch.equal(again.pred_sem_seg.data, expected.pred_sem_seg.data)
    assert 'pred_depth_map' not in again
    with pytest.raises(UnknownTaskError, match="'edge'"):
        model.predict(x, copy.deepcopy(samples), tasks=['edge'])
    with pytest.raises(RCConfigError, match='max_resident'):
        MODELS.build(small_model_cfg(max_resident=0))


def test_predict_all_tasks_in_one_call_equals_one_task_at_a_time():
    model = MODELS.build(small_model_cfg()).eval()
    x = torch.randn(2, 3, 32, 32)
    samples = make_samples(2, 32, 32, flip=True)
    with torch.no_grad():
        together = model.predict(x, copy.deepcopy(samples), tasks='all')
        for task, field in (('semseg', 'pred_sem_seg'),
                            ('depth', 'pred_depth_map'),
                            ('normals', 'pred_normal_map'),
                            ('edge', 'pred_edge_map')):
            alone = model.predict(x, copy.deepcopy(samples), tasks=task)
            assert [[k for k in s.keys() if k.startswith('pred_')]
                    for s in alone] == [[field]] * 2
            for a, b in zip(together, alone):
                assert torch.equal(a.get(field).data, b.get(field).data)
        tensors = model(x, mode='tensor')
    assert set(tensors) == {'semseg', 'depth', 'normals', 'edge'}


def test_a_bank_folder_loaded_as_a_checkpoint_is_served(tmp_path):
    """init_model(cfg, BANK) and load_from=BANK: mmengine's loader hands the
    segmentor the bank through load_state_dict."""
    from mmengine.runner import load_checkpoint
    bank, reference = _trained_bank(tmp_path)
    model = MODELS.build(small_model_cfg()).eval()
    assert model.tasks == ['semseg', 'depth', 'normals', 'edge']
    load_checkpoint(model, bank.path, map_location='cpu')
    assert model.bank.path == bank.path and model.train_tasks == []
    assert model.tasks == ['semseg', 'depth'] and rc.list_tasks(model) == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got, expected = model(x, mode='tensor'), reference(x, mode='tensor')
    assert all(torch.equal(got[t], expected[t]) for t in got)
    # The bank's class names reach dataset_meta.
    assert model.dataset_meta['classes'] == tuple(f'c{i}' for i in range(41))
    assert model.task_meta['semseg']['classes_from'] == 'the bank manifest'
    with pytest.raises(RCConfigError, match='baseline'):
        MODELS.build(small_model_cfg(baseline='shared')).load_bank(bank.path)


def test_a_checkpoint_overrides_the_bank_version_of_its_tasks(tmp_path):
    bank, reference = _trained_bank(tmp_path)
    model = MODELS.build(small_model_cfg(bank=bank.path)).eval()
    state = {k: v.clone() + 1.0 if v.is_floating_point() else v
             for k, v in rc.task_state_dict(reference, 'depth').items()}
    model.load_state_dict(state, strict=False)
    assert rc.list_tasks(model) == ['depth']
    model.set_active_task('depth')
    served = rc.task_state_dict(model, 'depth')
    assert all(torch.equal(served[k], state[k]) for k in state)


def test_dataset_meta_is_per_segmentation_task_and_checked():
    model = MODELS.build(small_model_cfg())
    # Known tables for NYUD's 41 classes when nothing else is known.
    assert len(model.dataset_meta['classes']) == 41
    assert model.task_meta['semseg']['classes_from'] == 'known tables'
    assert model.task_meta['normals']['classes'] is None
    names = tuple(f'n{i}' for i in range(41))
    model.dataset_meta = dict(classes=names, palette=[[i, i, i]
                                                      for i in range(41)])
    assert model.dataset_meta['classes'] == names
    assert model.dataset_meta['palette'][3] == [3, 3, 3]
    # A list of the wrong length (mmseg's Cityscapes default) is ignored.
    with pytest.warns(UserWarning, match='19 class names ignored'):
        model.dataset_meta = dict(classes=tuple('x' * 19), palette=None)
    assert len(model.dataset_meta['classes']) == 41
    model.dataset_meta = None
    assert model.task_meta['semseg']['classes_from'] == 'known tables'
