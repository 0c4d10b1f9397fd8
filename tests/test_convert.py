"""Checkpoint loading (weights-only), conversion to a bank (config keys,
calibration images never from a validation split), the CLI's exit codes."""
import copy
import hashlib
import os
import pickle
import warnings

import cv2
import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from tool_helpers import run_tools

import rc_adapter as rc
from rc_adapter.core.bank import BankError, TaskBank
from rc_adapter.core.errors import RCConfigError, RCError
from rc_adapter.mmseg.checkpoint import (CheckpointError, load_checkpoint_dict,
                                         load_state_dict_file)
from rc_adapter.mmseg.convert import (ConversionError, build_backbone,
                                      build_rc_backbone_from_bank,
                                      calibration_batches, convert_checkpoint,
                                      find_calibration_images, find_images)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
RESNET = dict(type='MTDeepLabResNet', depth=18, strides=(1, 2, 2, 1),
              dilations=(1, 1, 1, 2), out_indices=(0, 1, 2, 3),
              norm_cfg=dict(type='BN', requires_grad=True), style='pytorch')


def _config(backbone=RESNET, **rc_cfg):
    return dict(model=dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=MEAN,
                               std=STD, bgr_to_rgb=True),
        backbone=copy.deepcopy(backbone),
        # The paper's modulators, as the shipped configs.
        rc_cfg=dict(dict(nff=True, task_norms=True, include=None,
                         exclude=None, modulator='full'), **rc_cfg)))


def _write_config(path, backbone=RESNET):
    path.write_text(f'model = {_config(backbone)["model"]!r}\n')
    return str(path)


@pytest.fixture(scope='module')
def tv_state():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.state_dict()


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('calib')
    rng = np.random.default_rng(0)
    (root / 'sub').mkdir()
    for i, rel in enumerate(['b.png', 'sub/a.jpg', 'c.png']):
        img = rng.integers(0, 256, (36 + 4 * i, 44, 3), dtype=np.uint8)
        cv2.imwrite(str(root / rel), img)
    (root / 'notes.txt').write_text('not an image')
    return root


def _list_digest(relative_paths):
    text = '\n'.join(sorted(relative_paths))
    return 'sha256:' + hashlib.sha256(text.encode()).hexdigest()


def _convert(cfg, ckpt, out, images, **kw):
    kw.setdefault('calib_size', (32, 32))
    kw.setdefault('batch_size', 2)
    return convert_checkpoint(cfg, ckpt, out, calib_dir=str(images),
                              progress=False, log=lambda *a: None, **kw)


def test_three_checkpoint_formats_give_the_same_bank(tmp_path, tv_state,
                                                     images):
    tv = tmp_path / 'resnet18-tv.pth'
    torch.save(tv_state, tv)
    # An mmseg/mmengine checkpoint: 'state_dict', 'backbone.' prefixes, a
    # decode head, and numpy scalars in 'meta' (weights_only needs the
    # allow-list for them).
    mm = tmp_path / 'iter_100.pth'
    state = {'backbone.' + k: v for k, v in tv_state.items()
             if not k.startswith('fc.')}
    state['decode_head.conv_seg.weight'] = torch.randn(21, 256, 1, 1)
    torch.save({'meta': {'iter': np.int64(100), 'best': np.float64(0.5),
                         'hist': np.arange(3.0), 'dtype': np.dtype('f4'),
                         'cfg': 'model = dict()'},
                'state_dict': state}, mm)
    st = tmp_path / 'resnet18.safetensors'
    save_file({k: v.contiguous() for k, v in tv_state.items()}, str(st))

    banks = [_convert(_config(), str(p), tmp_path / f'bank{i}', images)
             for i, p in enumerate((tv, mm, st))]
    # Same weights, same images: bit-identical shared state.
    assert len({b.fingerprint for b in banks}) == 1
    bank = banks[0]
    assert bank.tasks() == []
    cfg = bank.config
    assert cfg['backbone']['type'] == 'MTDeepLabResNet'
    # The manifest holds the whole RCConfig.
    assert cfg['rc_cfg'] == rc.RCConfig(modulator='full').to_dict()
    assert cfg['data_preprocessor'] == dict(mean=MEAN, std=STD,
                                            bgr_to_rgb=True)
    assert cfg['ri']['enabled'] and cfg['ri']['images'] == 3
    assert cfg['ri']['num_batches'] == 2
    assert cfg['ri']['max_abs_diff'] < 1e-3
    # Which images: every image of the folder (not a dataset), listed by
    # the hash of their sorted relative paths.
    calib = cfg['ri']['calibration']
    assert calib['source'] == 'folder' and calib['split'] is None
    assert calib['count'] == 3
    assert calib['sha256'] == _list_digest(['b.png', 'c.png', 'sub/a.jpg'])
    # The paper's per-task encoder cost on ResNet-18 (docs/method.md,
    # "What is per task").
    assert cfg['params_per_task'] == 1582272
    bank.verify()

    # The bank rebuilds an RC backbone whose fresh task is the pretrained
    # network (I3).
    plain = build_backbone(RESNET)
    plain.load_state_dict({k: v for k, v in tv_state.items()
                           if not k.startswith('fc.')})
    model = build_rc_backbone_from_bank(bank.path)
    assert rc.list_tasks(model) == []
    rc.add_task(model, 'semseg')
    rc.set_task(model, 'semseg')
    model.eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        for a, b in zip(model(x), plain(x)):
            assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max())
    # RI really happened: the stem's bank is not the plain conv1 weight.
    assert not torch.allclose(model.conv1.weight, plain.conv1.weight)


def test_timm_backbone_from_safetensors(tmp_path, images):
    import timm
    src = timm.create_model('resnet18', pretrained=False)
    st = tmp_path / 'timm_resnet18.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(st))
    backbone = dict(type='TIMMBackbone', model_name='resnet18',
                    features_only=True, pretrained=True,
                    out_indices=(1, 2, 3, 4), output_stride=8)
    lines = []
    bank = convert_checkpoint(_config(backbone), str(st), tmp_path / 'bank',
                              calib_dir=str(images), calib_size=(32, 32),
                              batch_size=3, progress=False, log=lines.append)
    assert any('loaded 120/120' in line for line in lines), lines
    assert bank.config['backbone']['pretrained'] is False
    assert bank.config['ri']['max_abs_diff'] < 1e-3
    model = build_rc_backbone_from_bank(bank)
    assert any(k.startswith('timm_model.') for k in model.state_dict())


def test_wrong_architecture_and_unsafe_checkpoint_refused(tmp_path, images):
    other = tmp_path / 'mobilenet.pth'
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), other)
    with pytest.raises(ConversionError, match='another architecture'):
        _convert(_config(), str(other), tmp_path / 'bank', images)
    assert not (tmp_path / 'bank').exists()

    marker = tmp_path / 'PWNED'

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), 'w'))

    evil_zip = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'conv1.weight': torch.ones(1)},
                'x': Evil()}, evil_zip)
    evil_legacy = tmp_path / 'evil.pkl'
    with open(evil_legacy, 'wb') as f:
        pickle.dump({'x': Evil()}, f)
    for path in (evil_zip, evil_legacy):
        with pytest.raises(CheckpointError) as err:
            load_state_dict_file(path)
        assert str(path) in str(err.value)
        assert 'refused' in str(err.value)
        with pytest.raises(ConversionError, match='refused'):
            _convert(_config(), str(path), tmp_path / 'bank', images)
    assert 'io.open' in str(
        pytest.raises(CheckpointError, load_state_dict_file, evil_zip).value)
    assert not marker.exists()
    assert not (tmp_path / 'bank').exists()


def test_mmengine_history_buffer_and_restricted_getattr(tmp_path):
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(1.5)
    buf.update(2.5)
    path = tmp_path / 'ckpt.pth'
    torch.save({'meta': {'seed': np.int64(3)},
                'message_hub': {'log_scalars': {'loss': buf}},
                'state_dict': {'w': torch.ones(2)}}, path)
    ck = load_checkpoint_dict(path)
    assert ck['message_hub']['log_scalars']['loss'].mean() == 2.0
    assert load_state_dict_file(path).keys() == {'w'}

    class Sneaky:  # getattr on HistoryBuffer, but a private attribute
        def __reduce__(self):
            return (getattr, (HistoryBuffer, '_statistics_methods'))

    torch.save({'x': Sneaky()}, tmp_path / 'sneaky.pth')
    with pytest.raises(CheckpointError, match='refused'):
        load_checkpoint_dict(tmp_path / 'sneaky.pth')


def test_calibration_images_and_normalisation(tmp_path, images):
    paths = find_images(images)
    assert [os.path.relpath(p, images) for p in paths] == [
        'b.png', 'c.png', 'sub/a.jpg']
    assert len(find_images(images, limit=2)) == 2
    with pytest.raises(ConversionError, match='folder not found') as err:
        find_images(tmp_path / 'nope')
    assert isinstance(err.value, RCError)
    with pytest.raises(ConversionError, match='no .jpg/.png'):
        find_images(tmp_path)
    # A constant BGR image (10, 20, 30): RGB (30, 20, 10), then mean/std.
    img = np.zeros((30, 50, 3), np.uint8)
    img[:] = (10, 20, 30)
    cv2.imwrite(str(tmp_path / 'flat.png'), img)
    (batch,) = calibration_batches([str(tmp_path / 'flat.png')], (16, 24),
                                   4, MEAN, STD, True)
    assert batch.shape == (1, 3, 16, 24)
    expected = [(30 - MEAN[0]) / STD[0], (20 - MEAN[1]) / STD[1],
                (10 - MEAN[2]) / STD[2]]
    for c in range(3):
        assert torch.allclose(batch[0, c], torch.full((16, 24), expected[c]),
                              atol=1e-5)
    (bgr,) = calibration_batches([str(tmp_path / 'flat.png')], (8, 8), 1,
                                 MEAN, STD, False)
    assert torch.allclose(bgr[0, 0], torch.full((8, 8), (10 - MEAN[0]) /
                                                STD[0]), atol=1e-5)


def test_existing_bank_force_and_no_ri(tmp_path, tv_state, images):
    ckpt = tmp_path / 'tv.pth'
    torch.save(tv_state, ckpt)
    out = tmp_path / 'bank'
    first = _convert(_config(), str(ckpt), out, images)
    first.write_task('t', {'w': torch.ones(1)})
    with pytest.raises(ConversionError, match='--force'):
        _convert(_config(), str(ckpt), out, images)
    assert TaskBank(out).tasks() == ['t']
    with pytest.raises(ConversionError, match='needs calibration images'):
        convert_checkpoint(_config(), str(ckpt), tmp_path / 'b2',
                           progress=False, log=lambda *a: None)
    bank = convert_checkpoint(_config(), str(ckpt), out, ri=False,
                              force=True, log=lambda *a: None,
                              calib_size=(32, 32))
    assert bank.tasks() == [] and bank.config['ri']['enabled'] is False
    assert bank.config['ri']['max_abs_diff'] == 0.0  # identity init: exact
    model = build_rc_backbone_from_bank(bank)
    plain = build_backbone(RESNET)
    plain.load_state_dict({k: v for k, v in tv_state.items()
                           if not k.startswith('fc.')})
    assert torch.equal(model.conv1.weight, plain.conv1.weight)
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.')]
    # A tampered shared file is refused when rebuilding.
    shared = out / 'shared.safetensors'
    data = bytearray(shared.read_bytes())
    data[-1] ^= 1
    shared.write_bytes(bytes(data))
    with pytest.raises(BankError, match='sha256 mismatch'):
        build_rc_backbone_from_bank(out)


def test_cli_exit_codes(tmp_path, tv_state, images):
    """One exit-status convention, through the real convert_to_rc.py (the
    invocations in turn, ``run_tools``):
    an RCError is one paragraph and 2, the machine refusing (an OSError) is
    one paragraph naming the path and 3, a bug keeps its traceback (1), an
    interruption says what was written (130)."""
    cfg = _write_config(tmp_path / 'cfg.py')
    ckpt = tmp_path / 'mobilenet.pth'
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), ckpt)
    good = tmp_path / 'tv.pth'
    torch.save(tv_state, good)
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    (tmp_path / 'bug.py').write_text('model = dict()\n1 / 0\n')
    (tmp_path / 'interrupt.py').write_text('raise KeyboardInterrupt\n')
    runs = {
        'no_calib': [cfg, str(ckpt), '--out', str(tmp_path / 'b1')],
        'wrong_arch': [cfg, str(ckpt), '--out', str(tmp_path / 'b2'),
                       '--calib-dir', str(images), '--calib-size', '32',
                       '32'],
        'bad_count': [cfg, str(good), '--out', str(tmp_path / 'b3'),
                      '--calib-dir', str(images), '--calib-images', '0'],
        'not_a_folder': [cfg, str(good), '--out',
                         str(blocker / 'bank'), '--no-ri',
                         '--calib-size', '32', '32'],
        'bug': [str(tmp_path / 'bug.py'), str(good), '--out',
                str(tmp_path / 'b4')],
        'interrupt': [str(tmp_path / 'interrupt.py'), str(good), '--out',
                      str(tmp_path / 'b5')],
    }
    done = run_tools(*(['convert_to_rc.py'] + a for a in runs.values()))
    results = {k: (r.returncode, r.stderr) for k, r in zip(runs, done)}
    code, err = results['no_calib']
    assert code == 2 and '--calib-dir' in err and '--no-ri' in err
    assert '--data-root' in err
    code, err = results['wrong_arch']
    # Exit 2 like every other RCError (before: 1, convert_to_rc.py had its
    # own codes).
    assert code == 2 and 'another architecture' in err
    assert 'mobilenet.pth' in err
    code, err = results['bad_count']
    assert code == 2 and '--calib-images' in err
    code, err = results['not_a_folder']
    assert code == 3, err
    assert str(blocker) in err
    for name in ('no_calib', 'wrong_arch', 'bad_count', 'not_a_folder'):
        err = results[name][1]
        assert err.startswith('error: '), (name, err)
        assert 'Traceback' not in err, name
    code, err = results['bug']
    assert code == 1
    assert 'Traceback' in err and 'ZeroDivisionError' in err
    code, err = results['interrupt']
    assert code == 130 and 'Traceback' not in err
    assert err.strip() == ('interrupted; nothing was written (the bank is '
                           'built in a temporary folder and renamed into '
                           'place only when complete)')
    # Nothing was written: no bank, no temporary folder.
    left = set(os.listdir(tmp_path)) - {'cfg.py', 'mobilenet.pth', 'tv.pth',
                                        'a_file', 'bug.py', 'interrupt.py'}
    assert not left, left


def test_config_keys_and_their_deprecated_forms(tmp_path, tv_state, images):
    ckpt = tmp_path / 'tv.pth'
    torch.save(tv_state, ckpt)
    # convert_cfg.ri=False: identity init, like --no-ri.
    bank = _convert(dict(_config(), convert_cfg=dict(ri=False)), str(ckpt),
                    tmp_path / 'a', images)
    assert bank.config['ri'] == dict(enabled=False, max_abs_diff=0.0)
    # The deprecated rc_cfg.ri=False still switches RI off (with a warning).
    with pytest.warns(DeprecationWarning, match='convert_cfg'):
        bank = _convert(_config(ri=False), str(ckpt), tmp_path / 'b', images)
    assert bank.config['ri']['enabled'] is False
    assert bank.config['rc_cfg'] == rc.RCConfig(modulator='full').to_dict()
    # convert_cfg.calib_images and calib_size, overridden by arguments.
    cfg = dict(_config(), convert_cfg=dict(calib_images=2,
                                           calib_size=(24, 24)))
    bank = convert_checkpoint(cfg, str(ckpt), tmp_path / 'c',
                              calib_dir=str(images), batch_size=2,
                              progress=False, log=lambda *a: None)
    assert bank.config['ri']['images'] == 2
    assert bank.config['ri']['size'] == [24, 24]
    bank = _convert(cfg, str(ckpt), tmp_path / 'd', images, calib_images=3)
    assert bank.config['ri']['images'] == 3
    assert bank.config['ri']['size'] == [32, 32]
    # The RCConfig of the config goes to the manifest and rebuilds.
    cfg = _config(nff=False, exclude=['layer4'])
    bank = _convert(cfg, str(ckpt), tmp_path / 'e', images)
    expected = rc.RCConfig(nff=False, exclude=['layer4'], modulator='full')
    assert bank.config['rc_cfg'] == expected.to_dict()
    model = build_rc_backbone_from_bank(bank)
    assert model.rc_info['config'] == expected.to_dict()
    with pytest.raises(ConversionError, match="convert_cfg key.*'rii'"):
        _convert(dict(_config(), convert_cfg=dict(rii=False)), str(ckpt),
                 tmp_path / 'f', images)
    with pytest.raises(ConversionError, match='baseline'):
        _convert(dict(_config(), model=dict(_config()['model'],
                                            baseline='finetune')),
                 str(ckpt), tmp_path / 'f', images)
    with pytest.warns(DeprecationWarning, match='rc_cfg.mode'), \
            pytest.raises(ConversionError, match='baseline'):
        _convert(_config(mode='finetune'), str(ckpt), tmp_path / 'f', images)
    with pytest.raises(RCConfigError,
                       match=r"rc_cfg.*unknown RCConfig key.*'nf'"):
        _convert(_config(nf=True), str(ckpt), tmp_path / 'f', images)
    assert not (tmp_path / 'f').exists()
    # The project's own DeepLabv3+ config converts (an
    # MTSegDataPreProcessor with extra keys, convert_cfg).
    repo_cfg = os.path.join(REPO, 'mmseg_configs', '_base_', 'models',
                            'rc_deeplabv3plus_r18.py')
    with warnings.catch_warnings():
        warnings.simplefilter('error', DeprecationWarning)
        bank = _convert(repo_cfg, str(ckpt), tmp_path / 'g', images)
    assert bank.config['ri']['enabled'] is True
    assert bank.config['params_per_task'] == 1582272


@pytest.fixture(scope='module')
def nyud_data(tmp_path_factory):
    from rc_adapter.synthetic import generate
    root = tmp_path_factory.mktemp('calib_data') / 'nyud'
    generate('nyud', str(root), num_train=5, num_val=3, size=(24, 24),
             seed=1)
    return root


def _split_images(root, split, split_dir='gt_sets', image_dir='images'):
    with open(os.path.join(root, split_dir, f'{split}.txt')) as f:
        ids = [line.strip() for line in f if line.strip()]
    return [f'{image_dir}/{i}.jpg' for i in ids]


def _dataset_config(root):
    dataset = dict(type='NYUDMTDataset', data_root=str(root),
                   tasks=['semseg', 'depth'],
                   pipeline=[dict(type='LoadImageFromFile')])
    return dict(_config(),
                train_dataloader=dict(dataset=dict(dataset, split='train')),
                val_dataloader=dict(dataset=dict(dataset, split='val')))


def test_calibration_never_uses_validation_images(tmp_path, nyud_data):
    train = _split_images(nyud_data, 'train')
    val = _split_images(nyud_data, 'val')
    assert len(train) == 5 and len(val) == 3
    # The images folder holds both splits.
    assert len(find_images(nyud_data / 'images', None)) == 8
    from mmengine.config import Config
    cfg = Config(_dataset_config(nyud_data))
    sources = {
        'config dataset': find_calibration_images(cfg, None, 256),
        'dataset root': find_calibration_images(None, str(nyud_data), 256),
        'image folder': find_calibration_images(
            None, str(nyud_data / 'images'), 256),
    }
    for name, calib in sources.items():
        assert calib.source == 'dataset', name
        assert calib.split == 'train', name
        assert calib.dataset == 'NYUDMTDataset', name
        assert sorted(calib.relative_paths()) == sorted(train), name
        assert not set(calib.relative_paths()) & set(val), name
        assert calib.digest() == _list_digest(train), name
    # At most `limit`, the first by relative path.
    first = find_calibration_images(cfg, None, 2)
    assert first.relative_paths() == sorted(train)[:2]
    # A dataset root without a train split is refused, not scanned.
    no_train = tmp_path / 'no_train'
    (no_train / 'gt_sets').mkdir(parents=True)
    (no_train / 'images').mkdir()
    (no_train / 'gt_sets' / 'val.txt').write_text('000000\n')
    with pytest.raises(ConversionError, match='no train split'):
        find_calibration_images(None, str(no_train), 256)
    # A config whose data root is missing says what to pass.
    missing = Config(_dataset_config(tmp_path / 'nowhere'))
    with pytest.raises(ConversionError, match='--data-root'):
        find_calibration_images(missing, None, 256)


def test_conversion_records_the_train_split(tmp_path, tv_state, nyud_data):
    ckpt = tmp_path / 'tv.pth'
    torch.save(tv_state, ckpt)
    bank = convert_checkpoint(_dataset_config(nyud_data), str(ckpt),
                              tmp_path / 'bank', calib_size=(24, 24),
                              batch_size=4, progress=False,
                              log=lambda *a: None)
    calib = bank.config['ri']['calibration']
    train = _split_images(nyud_data, 'train')
    assert calib == dict(source='dataset', dataset='NYUDMTDataset',
                         split='train', root=str(nyud_data), count=5,
                         sha256=_list_digest(train))
    assert bank.config['ri']['num_batches'] == 2


def test_pascal_dataset_root_uses_its_train_split(tmp_path_factory):
    from rc_adapter.synthetic import generate
    root = tmp_path_factory.mktemp('calib_pascal') / 'pascal'
    generate('pascal', str(root), num_train=3, num_val=2, size=(24, 24),
             seed=2)
    train = _split_images(root, 'train', os.path.join('ImageSets',
                                                      'Context'),
                          'JPEGImages')
    for calib_dir in (root, root / 'JPEGImages'):
        calib = find_calibration_images(None, str(calib_dir), 256)
        assert calib.dataset == 'PascalContextMTDataset'
        assert calib.digest() == _list_digest(train)
