"""Multi-task datasets and LoadMTAnnotations over generated and hand-made
data in the PASCAL_MT / NYUD_MT layouts."""
import json
import os
import os.path as osp
import re
import shutil

import cv2
import numpy as np
import pytest
import scipy.io as sio

import rc_adapter  # noqa: F401  (before mmseg imports; registers modules)
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, TRANSFORMS

from rc_adapter.core.errors import (AnnotationError, RCConfigError,
                                    UnknownTaskError)
from rc_adapter.mmseg.datasets import (HUMAN_PART_IDS, TASKS_NYUD,
                                       TASKS_PASCAL, check_annotations)
from rc_adapter.mmseg.transforms import LoadMTAnnotations
from rc_adapter.synthetic import generate, make_pascal_anno

init_default_scope('mmseg')

PIPE = [dict(type='LoadImageFromFile'), dict(type='LoadMTAnnotations')]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('syn')
    nyud, pascal = str(root / 'nyud'), str(root / 'pascal')
    generate('nyud', nyud, num_train=3, num_val=2, size=(32, 40), seed=0)
    generate('pascal', pascal, num_train=6, num_val=2, size=(32, 40),
             seed=0, p_no_figure=0.5)
    return dict(nyud=nyud, pascal=pascal)


def _build(kind, root, tasks, split='train', **kw):
    typ = 'NYUDMTDataset' if kind == 'nyud' else 'PascalContextMTDataset'
    kw.setdefault('pipeline', PIPE)
    return DATASETS.build(dict(type=typ, data_root=root, split=split,
                               tasks=tasks, **kw))


def test_nyud_fields(data):
    ds = _build('nyud', data['nyud'], list(TASKS_NYUD), 'val', verify=True)
    assert len(ds) == 2
    assert len(ds.metainfo['classes']) == 41 == len(ds.metainfo['palette'])
    assert ds.metainfo['tasks'] == list(TASKS_NYUD)
    r = ds[0]
    assert r['tasks'] == list(TASKS_NYUD)
    assert r['seg_fields'] == ['gt_seg_map', 'gt_depth_map',
                               'gt_normal_map', 'gt_edge_map']
    assert r['reduce_zero_label'] is False
    assert r['img'].shape == (32, 40, 3)
    seg, dep = r['gt_seg_map'], r['gt_depth_map']
    nor, edg = r['gt_normal_map'], r['gt_edge_map']
    assert seg.shape == (32, 40) and seg.dtype == np.uint8 and seg.max() <= 40
    assert dep.shape == (32, 40) and dep.dtype == np.float32
    assert 0.3 < dep.min() and dep.max() < 15
    assert nor.shape == (32, 40, 3) and nor.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(nor, axis=2), 1, atol=1e-5)
    assert edg.dtype == np.uint8 and set(np.unique(edg)) == {0, 1}
    # seg_map_path is the semseg file; no semseg -> None.
    assert r['seg_map_path'].endswith('segmentation/000003.mat')
    assert _build('nyud', data['nyud'], ['depth'])[0]['seg_map_path'] is None


def test_pascal_fields(data):
    ds = _build('pascal', data['pascal'], list(TASKS_PASCAL), verify=True)
    assert len(ds) == 6
    meta = ds.metainfo
    assert len(meta['classes']) == 21
    assert len(meta['task_classes']['human_parts']) == 7
    seen_parts, seen_ignore = set(), False
    for i in range(len(ds)):
        r = ds[i]
        assert r['seg_fields'] == ['gt_seg_map', 'gt_parts_seg',
                                   'gt_sal_map', 'gt_normal_map',
                                   'gt_edge_map']
        for k in r['seg_fields']:
            assert r[k].shape[:2] == (32, 40)
        assert r['gt_seg_map'].dtype == np.uint8
        assert set(np.unique(r['gt_seg_map'])) <= {0, 5, 15, 16, 20}
        parts = r['gt_parts_seg']
        assert parts.dtype == np.uint8
        if np.all(parts == 255):
            seen_ignore = True
            assert 15 not in np.unique(r['gt_seg_map'])
        else:
            assert parts.max() <= 6
            # Parts live exactly on person pixels.
            np.testing.assert_array_equal(parts > 0, r['gt_seg_map'] == 15)
            seen_parts |= set(np.unique(parts))
        sal = r['gt_sal_map']
        assert sal.dtype == np.uint8
        np.testing.assert_array_equal(sal == 1, r['gt_seg_map'] > 0)
        nor = r['gt_normal_map']
        assert nor.dtype == np.float32 and nor.shape == (32, 40, 3)
        norm = np.linalg.norm(nor, axis=2)
        valid = norm > 0
        np.testing.assert_allclose(norm[valid], 1, atol=1e-5)
        # Masked (invalid) exactly on pottedplant and bottle pixels.
        np.testing.assert_array_equal(
            ~valid, np.isin(r['gt_seg_map'], [5, 16]))
        assert set(np.unique(r['gt_edge_map'])) <= {0, 1}
    assert seen_ignore and seen_parts >= {0, 1, 2, 3, 4, 5, 6}


def test_human_parts_only_drops_images_without_person(data):
    root = data['pascal']
    full = _build('pascal', root, ['human_parts', 'semseg'])
    with_person = [full[i]['img_id'] for i in range(len(full))
                   if 15 in full[i]['gt_seg_map']]
    assert 0 < len(with_person) < len(full)
    ds = _build('pascal', root, ['human_parts'])
    assert [ds[i]['img_id'] for i in range(len(ds))] == with_person
    # Without the ImageSets/Parts cache the loader rebuilds it.
    cache = osp.join(root, 'ImageSets', 'Parts', 'train.txt')
    with open(cache) as f:
        before = json.load(f)
    os.remove(cache)
    ds2 = _build('pascal', root, ['human_parts'])
    assert [ds2[i]['img_id'] for i in range(len(ds2))] == with_person
    with open(cache) as f:
        assert json.load(f) == before


def test_unknown_or_empty_task(data):
    with pytest.raises(UnknownTaskError,
                       match=r"unknown task.*'depth'.*human_parts"):
        _build('pascal', data['pascal'], ['semseg', 'depth'])
    with pytest.raises(UnknownTaskError, match=r'valid tasks'):
        _build('nyud', data['nyud'], ['sal'])
    with pytest.raises(RCConfigError, match='empty'):
        _build('nyud', data['nyud'], [])


# ---------------------------------------------------------------- hand-made

def _hand_pascal(root, parts_objects, with_json=True):
    """One 6x8 PASCAL_MT sample 'img1' written by hand."""
    for d in ('JPEGImages', 'ImageSets/Context', 'Context/trainval',
              'SemanticSegmentation/Context', 'PascalParts', 'json',
              'NormalsDistill', 'SaliencyDistill'):
        os.makedirs(osp.join(root, d), exist_ok=True)
    h, w = 6, 8
    cv2.imwrite(osp.join(root, 'JPEGImages', 'img1.jpg'),
                np.full((h, w, 3), 90, np.uint8))
    with open(osp.join(root, 'ImageSets/Context/train.txt'), 'w') as f:
        f.write('img1\n')
    lm = np.full((h, w), 440, np.uint16)   # wall
    lm[:, 4:] = 34                          # bottle (not an NYU class)
    lm[0, 0] = 427                          # tvmonitor (added by hand)
    sio.savemat(osp.join(root, 'Context/trainval/img1.mat'), {'LabelMap': lm})
    sem = np.zeros((h, w), np.uint8)
    sem[:, 4:] = 5
    sem[5, 7] = 255
    cv2.imwrite(osp.join(root, 'SemanticSegmentation/Context/img1.png'), sem)
    sio.savemat(osp.join(root, 'PascalParts/img1.mat'),
                make_pascal_anno('img1', parts_objects))
    nrm = np.zeros((h, w, 3), np.uint8)
    nrm[...] = (255, 128, 0)                # RGB -> x=1, y~0, z=-1
    nrm[:, 1] = (128, 128, 255)             # -> (0.0039, 0.0039, 1)
    cv2.imwrite(osp.join(root, 'NormalsDistill/img1.png'), nrm[..., ::-1])
    sal = np.zeros((h, w), np.uint8)
    sal[0, :4] = (100, 127, 128, 255)
    cv2.imwrite(osp.join(root, 'SaliencyDistill/img1.png'), sal)
    if with_json:
        with open(osp.join(root, 'json/context_classes.json'), 'w') as f:
            json.dump({'wall': 440, 'bottle': 34, 'tvmonitor': 427,
                       'unknown': 431, 'floor': 158}, f)
        with open(osp.join(root, 'json/nyu_classes.json'), 'w') as f:
            json.dump(['unknown', 'wall', 'floor', 'lamp'], f)
    return lm, sem


def _masks(h=6, w=8):
    person = np.zeros((h, w), np.uint8)
    person[1:5, 1:4] = 1
    parts = []
    for name, (r, c) in (('hair', (1, 1)), ('neck', (1, 2)),
                         ('ruarm', (2, 1)), ('lhand', (2, 2)),
                         ('ruleg', (3, 1)), ('lfoot', (4, 3))):
        m = np.zeros((h, w), np.uint8)
        m[r, c] = 1
        parts.append((name, m))
    return person, parts


def test_pascal_hand_made_round_trip(tmp_path):
    root = str(tmp_path)
    person, parts = _masks()
    other = np.zeros_like(person)
    other[:, 4:] = 1
    lm, sem = _hand_pascal(root, [
        {'class': 'bottle', 'class_ind': 5, 'mask': other, 'parts': []},
        {'class': 'person', 'class_ind': 15, 'mask': person,
         'parts': parts}])
    ds = _build('pascal', root, list(TASKS_PASCAL), verify=True)
    r = ds[0]
    np.testing.assert_array_equal(r['gt_seg_map'], sem)
    exp = np.zeros((6, 8), np.uint8)
    for (name, m), pid in zip(parts, (1, 2, 3, 4, 5, 6)):
        assert HUMAN_PART_IDS[name] == pid
        exp[m.astype(bool)] = pid
    np.testing.assert_array_equal(r['gt_parts_seg'], exp)
    np.testing.assert_array_equal(r['gt_sal_map'][0, :4], [0, 0, 1, 1])
    assert r['gt_sal_map'][1:].sum() == 0
    # Normals: 2 v / 255 - 1, renormalized; valid only on wall (NYU class)
    # and tvmonitor pixels, zero on bottle.
    n = r['gt_normal_map']
    v = np.array([255, 128, 0]) * 2 / 255 - 1
    np.testing.assert_allclose(n[2, 0], v / np.linalg.norm(v), atol=1e-6)
    v1 = np.array([128, 128, 255]) * 2 / 255 - 1
    np.testing.assert_allclose(n[3, 1], v1 / np.linalg.norm(v1), atol=1e-6)
    assert np.all(n[:, 4:] == 0)
    assert np.all(np.linalg.norm(n[:, :4], axis=2) > 0.999)
    assert ds[0]['normals_valid_classes'] == [158, 427, 440]
    # Exact reference decoding without renormalization.
    t = LoadMTAnnotations(tasks=['normals'], renormalize_normals=False)
    r2 = t(dict(ds.get_data_info(0), img=np.zeros((6, 8, 3), np.uint8)))
    np.testing.assert_allclose(r2['gt_normal_map'][2, 0], v, atol=1e-6)
    # Edges: |Laplacian| > 0 marks (by hand) cols 3 and 4 (the wall|bottle
    # step) and the tvmonitor pixel (0, 0) with its neighbours (0, 1),
    # (1, 0); thinning keeps a subset, one pixel wide along the step.
    e = r['gt_edge_map']
    assert e.dtype == np.uint8
    band = np.zeros((6, 8), bool)
    band[:, 3:5] = True
    band[0, :2] = band[1, 0] = True
    assert not np.any(e[~band])
    np.testing.assert_array_equal(e[1:, 3:5].sum(axis=1), 1)


def test_human_parts_rules(tmp_path):
    person, parts = _masks()
    bottle = np.zeros_like(person)
    bottle[0, 0] = 1
    cases = {
        'no_person': ([{'class': 'bottle', 'class_ind': 5, 'mask': bottle,
                        'parts': []}], 255),
        'person_no_parts': ([{'class': 'person', 'class_ind': 15,
                              'mask': person, 'parts': []}], 0),
    }
    for name, (objs, fill) in cases.items():
        root = str(tmp_path / name)
        _hand_pascal(root, objs)
        r = _build('pascal', root, ['human_parts', 'semseg'])[0]
        assert np.all(r['gt_parts_seg'] == fill), name
        assert r['gt_parts_seg'].shape == (6, 8)
        # Only task: an image without a person is dropped (here: all).
        if name == 'no_person':
            with pytest.raises(AnnotationError,
                               match='no image with a person'):
                _build('pascal', root, ['human_parts'])
        else:
            assert len(_build('pascal', root, ['human_parts'])) == 1
    root = str(tmp_path / 'bad_part')
    _hand_pascal(root, [{'class': 'person', 'class_ind': 15, 'mask': person,
                         'parts': [('tail', person)]}])
    with pytest.raises(AnnotationError,
                       match=r"human_parts.*img1\.mat.*'tail'"):
        _build('pascal', root, ['human_parts', 'sal'])[0]


def _hand_nyud(root):
    for d in ('images', 'gt_sets', 'segmentation', 'depth', 'normals',
              'edge'):
        os.makedirs(osp.join(root, d), exist_ok=True)
    h, w = 8, 8
    cv2.imwrite(osp.join(root, 'images/a.jpg'), np.zeros((h, w, 3), np.uint8))
    with open(osp.join(root, 'gt_sets/val.txt'), 'w') as f:
        f.write('a\n')
    seg = (np.arange(h * w).reshape(h, w) % 41).astype(np.float64)
    sio.savemat(osp.join(root, 'segmentation/a.mat'), {'segmentation': seg})
    dep = np.linspace(0.5, 4.0, h * w).reshape(h, w)
    dep[0, 0] = np.nan
    dep[0, 1] = 0
    sio.savemat(osp.join(root, 'depth/a.mat'), {'depth': dep})
    nrm = np.zeros((h, w, 3), np.uint8)
    nrm[...] = (128, 64, 200)  # uniform: survives JPEG up to +-1
    cv2.imwrite(osp.join(root, 'normals/a.jpg'), nrm[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 100])
    edge = np.zeros((h, w), np.uint8)
    edge[2, :4] = (127, 128, 255, 1)
    cv2.imwrite(osp.join(root, 'edge/a.png'), edge)
    return seg, dep


def test_nyud_hand_made_round_trip(tmp_path):
    root = str(tmp_path)
    seg, dep = _hand_nyud(root)
    r = _build('nyud', root, list(TASKS_NYUD), 'val', verify=True)[0]
    np.testing.assert_array_equal(r['gt_seg_map'], seg.astype(np.uint8))
    assert r['gt_seg_map'].max() == 40 and r['gt_seg_map'].min() == 0
    exp = dep.astype(np.float32)
    exp[0, 0] = 0  # NaN -> invalid
    np.testing.assert_array_equal(r['gt_depth_map'], exp)
    v = np.array([128, 64, 200]) * 2 / 255 - 1
    np.testing.assert_allclose(r['gt_normal_map'],
                               np.broadcast_to(v / np.linalg.norm(v),
                                               (8, 8, 3)), atol=0.01)
    e = r['gt_edge_map']
    np.testing.assert_array_equal(e[2, :4], [0, 1, 1, 0])
    assert e.sum() == 2


# ---------------------------------------------------------------- bad input

def test_missing_file_raises_at_load_naming_file_and_task(tmp_path):
    root = str(tmp_path)
    _hand_nyud(root)
    os.remove(osp.join(root, 'depth/a.mat'))
    ds = _build('nyud', root, ['semseg', 'depth'], 'val')  # lazy: builds
    with pytest.raises(AnnotationError, match=r'\[depth\].*depth/a\.mat'):
        ds[0]
    with pytest.raises(AnnotationError,
                       match=r'(?s)1 problem.*\[depth\].*depth/a\.mat'):
        _build('nyud', root, ['semseg', 'depth'], 'val', verify=True)


def test_size_mismatch_and_unreadable(tmp_path):
    root = str(tmp_path)
    _hand_nyud(root)
    sio.savemat(osp.join(root, 'segmentation/a.mat'),
                {'segmentation': np.zeros((8, 9))})
    with open(osp.join(root, 'edge/a.png'), 'wb') as f:
        f.write(b'not a png')
    ds = _build('nyud', root, ['semseg'], 'val')
    with pytest.raises(AnnotationError,
                       match=r'\[semseg\].*segmentation/a\.mat.*\(8, 9\).*'
                             r'\(8, 8\)'):
        ds[0]
    with pytest.raises(AnnotationError, match=r'\[edge\].*edge/a\.png'):
        _build('nyud', root, ['edge'], 'val')[0]
    with pytest.raises(AnnotationError) as ei:
        _build('nyud', root, ['semseg', 'edge', 'depth'], 'val', verify=True)
    msg = str(ei.value)
    assert '2 problem' in msg and 'segmentation/a.mat' in msg
    assert 'edge/a.png' in msg and 'depth' not in msg.split('problem')[1]


def test_missing_split_and_generated_file(data, tmp_path):
    with pytest.raises(AnnotationError, match='test.txt'):
        _build('nyud', data['nyud'], ['semseg'], 'test')
    root = str(tmp_path / 'p')
    shutil.copytree(data['pascal'], root)
    os.remove(osp.join(root, 'SaliencyDistill', '000001.png'))
    with pytest.raises(AnnotationError, match=r'(?s)\[sal\].*000001\.png'):
        _build('pascal', root, ['sal', 'semseg'], verify=True)
    ds = _build('pascal', root, ['sal', 'semseg'])
    ds[0]
    with pytest.raises(AnnotationError, match=r'\[sal\]'):
        ds[1]


def test_transform_registered_and_repr():
    t = TRANSFORMS.build(dict(type='LoadMTAnnotations', tasks=['edge']))
    assert isinstance(t, LoadMTAnnotations)
    assert 'edge' in repr(t)


# ------------------------------------------------- shipped dataset configs

def _base_cfg(name):
    from mmengine.config import Config
    return Config.fromfile(f'mmseg_configs/_base_/datasets/{name}.py')


@pytest.mark.parametrize('name, crop', [('nyud_mt', (425, 560)),
                                        ('pascal_mt', (512, 512))])
def test_config_pipelines_pad_to_the_training_crop(data, name, crop):
    """Evaluation pads (centred, mean colour) to the training crop and
    keeps the labels at the original size; training yields exactly the
    crop, never a bottom pad on top of it."""
    from mmengine.dataset import Compose
    cfg = _base_cfg(name)
    assert tuple(cfg.crop_size) == crop
    kind = 'nyud' if name == 'nyud_mt' else 'pascal'
    tasks = list(TASKS_NYUD if kind == 'nyud' else TASKS_PASCAL)
    test = _build(kind, data[kind], tasks, 'val',
                  pipeline=cfg.test_pipeline)[0]
    sample = test['data_samples']
    assert tuple(test['inputs'].shape) == (3, ) + crop
    top, left = (crop[0] - 32) // 2, (crop[1] - 40) // 2
    pads = (left, crop[1] - 40 - left, top, crop[0] - 32 - top)
    assert sample.metainfo['center_padding'] == pads
    assert sample.metainfo['ori_shape'] == (32, 40)
    assert tuple(sample.gt_sem_seg.data.shape) == (1, 32, 40)
    # BGR image, padded with the ImageNet mean (123, 116, 103) in RGB
    assert test['inputs'][:, 0, 0].tolist() == [103, 116, 123]
    # inference: only an image path (what inference_model passes)
    img_path = sample.metainfo['img_path']
    inf = Compose(cfg.test_pipeline)(dict(img_path=img_path))
    assert tuple(inf['inputs'].shape) == (3, ) + crop
    assert torch_equal(inf['inputs'], test['inputs'])
    assert inf['data_samples'].metainfo['center_padding'] == pads
    assert not [k for k in inf['data_samples'].keys() if k.startswith('gt_')]
    # training: exactly the crop, labels padded with their ignore values
    np.random.seed(0)
    train = _build(kind, data[kind], tasks, 'train',
                   pipeline=cfg.train_pipeline)
    for i in range(2):
        packed = train[i]
        assert tuple(packed['inputs'].shape) == (3, ) + crop
        seg = packed['data_samples'].gt_sem_seg.data
        assert tuple(seg.shape) == (1, ) + crop and (seg == 255).any()


def torch_equal(a, b):
    import torch
    return bool(torch.equal(a, b))


def test_metainfo_palettes_are_the_voc_palette(data):
    from rc_adapter.utils.palette import voc_palette
    meta = _build('pascal', data['pascal'], ['semseg']).metainfo
    assert meta['palette'] == voc_palette(21).tolist()
    assert meta['task_palettes']['human_parts'] == voc_palette(7).tolist()
    meta = _build('nyud', data['nyud'], ['semseg']).metainfo
    assert meta['palette'] == voc_palette(41).tolist()
    assert meta['palette'][15] == [192, 128, 128]


# ------------------------------------------------------ LoadMTAnnotations

def test_loader_without_annotation_paths_is_a_no_op():
    """Inference: a sample without ann_paths passes through unchanged."""
    r = dict(img=np.zeros((4, 5, 3), np.uint8), img_path=None)
    out = LoadMTAnnotations()(dict(r))
    assert set(out) == set(r)
    out = LoadMTAnnotations(tasks=['semseg'])(dict(r))
    assert 'gt_seg_map' not in out and 'seg_fields' not in out


def test_loader_requires_listed_task(data):
    ds = _build('nyud', data['nyud'], ['depth'], 'val')
    with pytest.raises(AnnotationError, match=r'\[semseg\].*no annotation'):
        LoadMTAnnotations(tasks=['semseg'])(
            dict(ds.get_data_info(0), img=np.zeros((32, 40, 3), np.uint8)))


def test_old_import_paths_still_work_and_warn():
    import importlib
    import rc_adapter.mmseg.datasets as datasets
    import rc_adapter.mmseg.transforms as transforms
    from rc_adapter.mmseg.models import MTSegDataPreProcessor
    with pytest.warns(DeprecationWarning, match='transforms'):
        assert datasets.LoadMTAnnotations is LoadMTAnnotations
    with pytest.warns(DeprecationWarning, match='AnnotationError'):
        assert datasets.MTAnnotationError is AnnotationError
    with pytest.warns(DeprecationWarning, match='models'):
        assert transforms.MTSegDataPreProcessor is MTSegDataPreProcessor
    for name in ('rc_adapter.mmseg.datasets.loading',
                 'rc_adapter.mmseg.transforms.data_preprocessor'):
        with pytest.warns(DeprecationWarning):
            mod = importlib.reload(importlib.import_module(name))
    old = importlib.import_module('rc_adapter.mmseg.datasets.loading')
    assert old.LoadMTAnnotations is LoadMTAnnotations
    assert old.MTAnnotationError is AnnotationError
    assert mod.MTSegDataPreProcessor is MTSegDataPreProcessor
    with pytest.raises(AttributeError):
        datasets.NoSuchName


# ---------------------------------------------------- check_annotations

def _nyud_cfg(root, split='val', tasks=TASKS_NYUD):
    return dict(type='NYUDMTDataset', data_root=root, split=split,
                tasks=list(tasks), pipeline=PIPE)


def test_check_annotations_passes_on_good_data(data):
    check_annotations(_nyud_cfg(data['nyud']))
    check_annotations(_build('pascal', data['pascal'], list(TASKS_PASCAL)))
    check_annotations(dict(type='PascalContextMTDataset',
                           data_root=data['pascal'], split='val',
                           tasks=['semseg'], pipeline=PIPE),
                      tasks=['human_parts', 'normals', 'edge'], decode=True)


def test_check_annotations_lists_first_problems_and_counts(data, tmp_path):
    root = str(tmp_path / 'n')
    generate('nyud', root, num_train=1, num_val=12, size=(16, 20), seed=1)
    ids = sorted(f[:-4] for f in os.listdir(osp.join(root, 'depth')))[1:]
    for sid in ids[:7]:
        os.remove(osp.join(root, 'depth', sid + '.mat'))
    sio.savemat(osp.join(root, 'segmentation', ids[7] + '.mat'),
                {'segmentation': np.zeros((16, 21))})
    sio.savemat(osp.join(root, 'segmentation', ids[8] + '.mat'),
                {'labels': np.zeros((16, 20))})
    with open(osp.join(root, 'edge', ids[9] + '.png'), 'wb') as f:
        f.write(b'\x89PNG broken')
    cv2.imwrite(osp.join(root, 'normals', ids[10] + '.jpg'),
                np.zeros((17, 20, 3), np.uint8))
    with pytest.raises(AnnotationError) as ei:
        check_annotations(_nyud_cfg(root), max_listed=3)
    msg = str(ei.value)
    assert "NYUDMTDataset(data_root='" in msg and "split='val'" in msg
    assert '11 problem(s)' in msg and 'of 11 of 12 samples' in msg
    assert msg.count('[depth]') == 3 and '... and 8 more' in msg
    with pytest.raises(AnnotationError) as ei:
        check_annotations(_nyud_cfg(root), max_listed=20)
    msg = str(ei.value)
    assert re.search(r'\[semseg\] .*%s\.mat: label size \(16, 21\) differs '
                     r'from image size \(16, 20\)' % ids[7], msg)
    assert re.search(r"\[semseg\] .*%s\.mat has no variable 'segmentation'"
                     % ids[8], msg)
    assert re.search(r'\[edge\] cannot read image file .*%s\.png' % ids[9],
                     msg)
    assert re.search(r'\[normals\] .*%s\.jpg: label size \(17, 20\)'
                     % ids[10], msg)
    # only the requested tasks are checked; a config's tasks are replaced
    with pytest.raises(AnnotationError,
                       match=r'(?s)1 problem.*\[normals\].*%s' % ids[10]):
        check_annotations(_nyud_cfg(root, tasks=['semseg']),
                          tasks=['normals'])
    ds = _build('nyud', root, ['semseg', 'normals'], 'val')
    with pytest.raises(AnnotationError, match=r'2 problem\(s\)'):
        check_annotations(ds, tasks=['semseg'])
    with pytest.raises(UnknownTaskError, match=r"\['edge'\]"):
        check_annotations(ds, tasks=['edge'])
    ok = str(tmp_path / 'ok')
    generate('nyud', ok, num_train=1, num_val=2, size=(16, 20), seed=1)
    check_annotations(_nyud_cfg(ok), tasks=['edge', 'depth'])


def test_check_annotations_human_parts_header_and_decode(tmp_path):
    person, parts = _masks()
    root = str(tmp_path / 'bad_part')
    _hand_pascal(root, [{'class': 'person', 'class_ind': 15, 'mask': person,
                         'parts': [('tail', person)]}])
    cfg = dict(type='PascalContextMTDataset', data_root=root,
               split='train', tasks=['human_parts', 'semseg'])
    check_annotations(cfg)  # the header is a valid PASCAL-Part struct
    with pytest.raises(AnnotationError, match=r"(?s)1 problem.*'tail'"):
        check_annotations(cfg, decode=True)
    sio.savemat(osp.join(root, 'PascalParts/img1.mat'),
                {'anno': np.zeros((6, 8))})
    with pytest.raises(AnnotationError, match=r"img1\.mat: 'anno' is a "
                                              r'double'):
        check_annotations(cfg)


def test_mat_headers_match_whosmat_and_catch_truncation(tmp_path):
    """The MATLAB 5 header reader agrees with scipy's whosmat (compressed
    or not, every class the datasets meet, v4 files via scipy) and finds a
    truncated file from its tags alone."""
    import scipy.sparse
    from rc_adapter.mmseg.datasets.labels import mat_variables
    person, parts = _masks()
    variables = dict(
        a=np.zeros((3, 4)), longer_variable_name=np.ones((2, 5, 6),
                                                         np.uint16),
        flag=np.ones((2, 2), bool), txt='hello', i8=np.zeros((7, 1), np.int8),
        e=np.zeros((0, 3)), f32=np.float32(1), sp=scipy.sparse.eye(4).tocsc(),
        cel=np.array([1, 'x'], dtype=object), s={'f': 1, 'g': np.zeros(3)})
    files = []
    for compress in (False, True):
        files.append(str(tmp_path / f'all{int(compress)}.mat'))
        sio.savemat(files[-1], variables, do_compression=compress)
        files.append(str(tmp_path / f'parts{int(compress)}.mat'))
        sio.savemat(files[-1], make_pascal_anno('x', [
            {'class': 'person', 'class_ind': 15, 'mask': person,
             'parts': parts}]), do_compression=compress)
    files.append(str(tmp_path / 'v4.mat'))
    sio.savemat(files[-1], dict(a=np.zeros((3, 4))), format='4')
    for path in files:
        expect = {n: (tuple(s), c) for n, s, c in sio.whosmat(path)}
        assert mat_variables('t', path) == expect, path
    with open(files[3], 'rb') as f:
        raw = f.read()
    cut = str(tmp_path / 'cut.mat')
    with open(cut, 'wb') as f:
        f.write(raw[:-20])
    with pytest.raises(AnnotationError, match=r'\[human_parts\] cannot read '
                                              r'MATLAB file .*cut\.mat: trunc'):
        mat_variables('human_parts', cut)
    with open(cut, 'wb') as f:
        f.write(raw[:136] + b'\0' * (len(raw) - 136))  # zlib stream zeroed
    with pytest.raises(AnnotationError, match=r'cut\.mat'):
        mat_variables('human_parts', cut)
