"""Proxy pretraining (rc_adapter.demo.pretrain, tools/pretrain_proxy.py) and
the shipped backbone in assets/."""
import json
import os
import os.path as osp
import re

import pytest
import torch

from rc_adapter.core.errors import AnnotationError, CheckpointError
from rc_adapter.demo.pretrain import (ProxyDataset, asset_to_checkpoint,
                                      augment, classification_backbone_cfg,
                                      file_sha256, load_backbone_asset,
                                      pretrain_proxy, proxy_targets,
                                      save_backbone_asset, scene_objects)
from rc_adapter.synthetic import generate

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ASSETS = osp.join(ROOT, 'assets')
DEMO_CONFIG = osp.join(ROOT, 'mmseg_configs', 'rc_r18_synthetic_nyud.py')


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('proxy') / 'syn')
    generate('nyud', root, num_train=0, num_val=3, size=(32, 32), seed=3,
             extra_splits={'pretrain': 8})
    return root


def _tiny_backbone():
    from mmseg.registry import MODELS

    import rc_adapter  # noqa: F401  (registers MTDeepLabResNet)
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='MTDeepLabResNet', depth=18, stem_channels=8, base_channels=8,
        strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1),
        out_indices=(0, 1, 2, 3), norm_cfg=dict(type='BN')))


def _train(root, out, **kw):
    args = dict(size=32, iters=4, batch_size=4, lr=0.05, warmup=1,
                log_interval=1, log=lambda line: None, image_size=None)
    args.update(kw)
    return pretrain_proxy(_tiny_backbone(), root, out, **args)


# -- labels and augmentation -------------------------------------------------

def _theta(matrix, shift=(0.0, 0.0)):
    lin = torch.tensor(matrix, dtype=torch.float64)
    return torch.cat([lin, torch.tensor(shift, dtype=torch.float64)[:, None]],
                     1)[None]


def test_targets_follow_flip_rotation_and_crop():
    # One 'box' (type 1) right of and above the centre, one 'sphere' (0)
    # far left; a padding row.
    objects = torch.tensor([[[1, 0.5, -0.5, 0.1], [0, -0.9, 0.0, 0.05],
                             [-1, 0, 0, 0]]])
    present = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    ident = proxy_targets(objects, present, _theta([[1, 0], [0, 1]]), 4, 3)
    assert ident['count'].tolist() == [[1, 1, 0, 0]]
    assert ident['present'].tolist() == [[1.0, 1.0, 0.0, 0.0]]
    # Rows are y (top first), columns x: the box is top right.
    assert ident['position'][0, 1].nonzero().tolist() == [[0, 2]]
    assert ident['position'][0, 0].nonzero().tolist() == [[1, 0]]
    assert ident['position'].sum() == 2
    # Horizontal flip: output x = -input x.
    flipped = proxy_targets(objects, present, _theta([[-1, 0], [0, 1]]), 4, 3)
    assert flipped['position'][0, 1].nonzero().tolist() == [[0, 0]]
    # The map input = R o with R = [[0, -1], [1, 0]]: o = R^T i, so the box
    # at (0.5, -0.5) appears at (-0.5, -0.5), top left.
    rotated = proxy_targets(objects, present, _theta([[0, -1], [1, 0]]), 4, 3)
    assert rotated['position'][0, 1].nonzero().tolist() == [[0, 0]]
    # A 2x zoom on x in 0..1, y in -0.75..0.25: the box is at the view's
    # (0, -0.5); the sphere leaves the view and its disc does not reach in,
    # so it is neither counted nor present.
    crop = proxy_targets(objects, present,
                         _theta([[0.5, 0], [0, 0.5]], (0.5, -0.25)), 4, 3)
    assert crop['count'].tolist() == [[0, 1, 0, 0]]
    assert crop['present'].tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert crop['position'][0, 1].nonzero().tolist() == [[0, 1]]
    # A type absent from the whole image stays absent in every view.
    none = proxy_targets(objects, torch.zeros(1, 4), _theta([[1, 0], [0, 1]]),
                         4, 3)
    assert none['present'].sum() == 0
    # Counts saturate at MAX_COUNT (3).
    many = torch.tensor([[[2, 0.1 * k, 0.0, 0.01] for k in range(5)]])
    assert proxy_targets(many, torch.ones(1, 4), _theta([[1, 0], [0, 1]]),
                         4, 3)['count'][0, 2] == 3


def test_augmented_image_and_targets_agree():
    # A bright 3x3 square at a known spot: wherever augment moves it, it
    # must lie in the grid cell the targets give (up to a pixel of
    # interpolation at the cell borders).
    images = torch.zeros(16, 3, 64, 64, dtype=torch.uint8)
    images[:, :, 15:18, 43:46] = 255
    x_c, y_c = (44.5 / 64) * 2 - 1, (16.5 / 64) * 2 - 1
    objects = torch.tensor([[0, x_c, y_c, 0.02]]).repeat(16, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out, theta, rotation = augment(images, 48, gen, min_area=0.5, jitter=0)
    assert out.shape == (16, 3, 48, 48) and rotation.shape == (16,)
    assert set(rotation.tolist()) == {0, 1, 2, 3}
    targets = proxy_targets(objects, torch.ones(16, 4), theta, 4, 4)
    seen = 0
    for i in range(16):
        bright = out[i].mean(0)
        if bright.max() < 0:  # the square was cropped away
            assert targets['count'][i, 0] == 0
            continue
        seen += 1
        weight = (bright - bright.min()).clamp(min=0)
        rows, cols = torch.meshgrid(torch.arange(48.) + 0.5,
                                    torch.arange(48.) + 0.5, indexing='ij')
        row = float((weight * rows).sum() / weight.sum())
        col = float((weight * cols).sum() / weight.sum())
        assert targets['count'][i, 0] == 1
        (cell_row, cell_col), = targets['position'][i, 0].nonzero().tolist()
        assert cell_row * 12 - 1 <= row <= cell_row * 12 + 13
        assert cell_col * 12 - 1 <= col <= cell_col * 12 + 13
    assert seen >= 8


def test_scene_objects_match_the_rendered_labels(tiny_root):
    data = ProxyDataset(tiny_root, 'pretrain')
    assert data.images.dtype == torch.uint8
    assert data.images.shape == (8, 3, 32, 32)
    assert data.objects.shape[0] == 8 and data.objects.shape[2] == 4
    # Every type the renderer says is visible has an object in the scene
    # description (ProxyDataset checks it); and some centres are in view.
    inside = (data.objects[..., 1:3].abs() < 1).all(-1) & \
        (data.objects[..., 0] >= 0)
    assert inside.any()
    again = scene_objects(tiny_root, data.ids[:2], data.types)
    assert len(again) == 2 and all(len(o) >= 1 for o in again)


def test_contradicting_labels_and_missing_metadata_are_errors(
        tiny_root, tmp_path):
    import shutil
    root = str(tmp_path / 'copy')
    shutil.copytree(tiny_root, root)
    path = osp.join(root, 'proxy_labels.json')
    with open(path) as f:
        labels = json.load(f)
    first = sorted(labels['labels'])[3]  # a pretrain image
    shown = set(labels['labels'][first])
    drawn = {labels['types'][int(o[0])] for o in scene_objects(
        root, [first], labels['types'])[0]}
    absent = [t for t in labels['types'] if t not in drawn]
    if not absent:
        pytest.skip('this scene holds every object type')
    labels['labels'][first] = sorted(shown | {absent[0]})
    with open(path, 'w') as f:
        json.dump(labels, f)
    with pytest.raises(AnnotationError, match=first):
        ProxyDataset(root, 'pretrain')
    # Presence/rotation alone do not need the scene descriptions.
    os.remove(osp.join(root, 'synthetic.json'))
    assert ProxyDataset(root, 'pretrain', objects=False).objects is None
    with pytest.raises(AnnotationError, match='synthetic.json'):
        ProxyDataset(root, 'pretrain')


# -- training ----------------------------------------------------------------

def test_pretraining_writes_a_torchvision_checkpoint(tiny_root, tmp_path):
    from rc_adapter.mmseg.convert import load_backbone_weights
    out = str(tmp_path / 'proxy.pth')
    lines = []
    stats = _train(tiny_root, out, val_split='val', log=lines.append)
    assert any(line.startswith('pretrain [4/4]') for line in lines)
    assert set(stats['val']) == {'present', 'rotation', 'count',
                                 'position_f1'}
    state = torch.load(out, map_location='cpu', weights_only=True)
    backbone = _tiny_backbone()
    assert set(state) == set(backbone.state_dict()) | {'fc.weight',
                                                       'fc.bias'}
    for key in ('conv1.weight', 'bn1.running_var', 'layer1.0.conv2.weight',
                'layer4.1.bn2.bias', 'layer2.0.downsample.0.weight'):
        assert key in state
    assert state['fc.weight'].shape == (4, 64)  # the four object types
    # It trained: the weights moved away from the seed's initialisation.
    assert not torch.equal(state['conv1.weight'],
                           backbone.state_dict()['conv1.weight'])
    report = load_backbone_weights(_tiny_backbone(), out,
                                   log=lambda line: None)
    assert report['match'] == 1.0 and report['ignored'] == ['fc.bias',
                                                             'fc.weight']


def test_resumed_run_equals_uninterrupted_run(tiny_root, tmp_path):
    full = str(tmp_path / 'full.pth')
    _train(tiny_root, full, objects=True)
    state_path = str(tmp_path / 'run.state')
    part = str(tmp_path / 'part.pth')

    def stop_at_three(line):
        if line.startswith('pretrain [3/4]'):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_root, part, state_path=state_path, save_interval=2,
               log=stop_at_three)
    assert osp.isfile(state_path) and not osp.exists(part)
    lines = []
    _train(tiny_root, part, state_path=state_path, save_interval=2,
           log=lines.append)
    assert 'resumed from' in lines[1] and 'iteration 2' in lines[1]
    assert not osp.exists(state_path)  # done: a rerun starts over
    a = torch.load(full, weights_only=True)
    b = torch.load(part, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A state written with other settings is refused, naming the difference.
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_root, part, state_path=state_path, save_interval=2,
               log=stop_at_three)
    with pytest.raises(CheckpointError, match='batch_size'):
        _train(tiny_root, part, state_path=state_path, save_interval=2,
               batch_size=2)


def test_classification_backbone_cfg_strides_instead_of_dilating():
    cfg = dict(type='MTDeepLabResNet', strides=(1, 2, 2, 1),
               dilations=(1, 1, 1, 2), depth=18)
    out = classification_backbone_cfg(cfg)
    assert out['strides'] == (1, 2, 2, 2) and out['dilations'] == (1,) * 4
    assert cfg['strides'] == (1, 2, 2, 1)  # the input is not changed
    assert classification_backbone_cfg(dict(type='X')) == dict(type='X')


# -- float16 asset -----------------------------------------------------------

def test_asset_round_trip_in_float32(tmp_path):
    state = dict(_tiny_backbone().state_dict())
    state['fc.weight'] = torch.randn(4, 64)
    state['fc.bias'] = torch.zeros(4)
    path = str(tmp_path / 'b.safetensors')
    digest = save_backbone_asset(state, path, metadata=dict(note='x'))
    assert digest == file_sha256(path) and re.fullmatch('[0-9a-f]{64}',
                                                        digest)
    back = load_backbone_asset(path)
    assert set(back) == set(state) - {'fc.weight', 'fc.bias'}
    for key, value in back.items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            assert torch.equal(value, state[key].half().float())
        else:
            assert torch.equal(value, state[key])
    pth = asset_to_checkpoint(path, str(tmp_path / 'b.pth'))
    again = torch.load(pth, map_location='cpu', weights_only=True)
    assert set(again) == set(back)
    assert all(torch.equal(again[k], back[k]) for k in back)
    state['conv1.weight'] = state['conv1.weight'] * 1e6
    with pytest.raises(CheckpointError, match='conv1.weight'):
        save_backbone_asset(state, str(tmp_path / 'c.safetensors'))
    with pytest.raises(CheckpointError):
        load_backbone_asset(str(tmp_path / 'missing.safetensors'))


def _shipped_asset():
    readme = osp.join(ASSETS, 'README.md')
    with open(readme) as f:
        text = f.read()
    match = re.search(r'`(\w[\w.-]*\.safetensors)`.*?sha256 `([0-9a-f]{64})`',
                      text, re.S)
    assert match, f'{readme} names no .safetensors file with its sha256'
    return osp.join(ASSETS, match.group(1)), match.group(2)


def test_shipped_backbone_matches_the_demo_backbone():
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from safetensors import safe_open

    import rc_adapter  # noqa: F401
    path, sha = _shipped_asset()
    assert file_sha256(path) == sha
    assert os.path.getsize(path) < 8 * 2**20
    with safe_open(path, 'pt') as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {d for k, d in stored.items()
            if not k.endswith('num_batches_tracked')} == {'F16'}
    cfg = Config.fromfile(DEMO_CONFIG).model.backbone
    cfg = {k: v for k, v in cfg.items() if k != 'init_cfg'}
    backbone = MODELS.build(cfg)
    target = backbone.state_dict()
    state = load_backbone_asset(path)
    assert set(state) == set(target)
    for key, value in state.items():
        assert value.shape == target[key].shape, key
        assert value.dtype == target[key].dtype, key
        assert torch.isfinite(value.float()).all(), key
    backbone.load_state_dict(state)
