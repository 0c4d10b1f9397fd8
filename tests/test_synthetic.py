"""Synthetic benchmark: geometry of the renderer, writers, determinism, CLI."""
import importlib.util
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import scipy.io as sio

from rc_adapter.synthetic import (edges_from_render, generate, is_current,
                                  make_pascal_anno, render, sample_scene)
from rc_adapter.synthetic.render import (PART_CODE_TO_ID, T_FIGURE,
                                         T_SPHERE)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _scenes(n=6, h=48, w=64):
    out = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        sc = sample_scene(rng, h, w, p_no_figure=0.0)
        out.append((sc, render(sc, rng)))
    return out


@pytest.fixture(scope='module')
def scenes():
    return _scenes()


def _rays(cam):
    v, u = np.mgrid[0:cam.height, 0:cam.width]
    return np.stack([(u + 0.5 - cam.width / 2) / cam.focal,
                     (v + 0.5 - cam.height / 2) / cam.focal,
                     np.ones(u.shape)], axis=2)


def test_render_outputs_valid_everywhere(scenes):
    for sc, r in scenes:
        h, w = sc.camera.height, sc.camera.width
        assert r['image'].shape == (h, w, 3) and r['image'].dtype == np.uint8
        assert np.all(np.isfinite(r['depth'])) and r['depth'].min() > 0
        # Inside a room of at most ~9 m the depth stays bounded.
        assert r['depth'].max() < 15
        n = r['normals']
        np.testing.assert_allclose(np.linalg.norm(n, axis=2), 1.0,
                                   atol=1e-4)
        # Normals face the camera: n . ray < 0 (camera frame, y down).
        assert np.all(np.einsum('ijk,ijk->ij', n, _rays(sc.camera)) < 0)


def test_depth_and_normals_agree_on_planes_and_spheres(scenes):
    """Back-projected points of one plane satisfy n . P = const, and sphere
    points minus r * n give the same centre: depth (z, metres) and camera-
    frame normals describe one geometry."""
    checked_sphere = False
    for sc, r in scenes:
        pts = r['depth'][..., None] * _rays(sc.camera)
        for s in range(6):
            m = r['surface'] == s
            if m.sum() < 10:
                continue
            nn = r['normals'][m]
            assert np.ptp(nn, axis=0).max() < 1e-4  # a plane: one normal
            off = np.einsum('ij,ij->i', nn, pts[m])
            assert np.ptp(off) < 1e-3 * max(1.0, abs(off).max())
        for k, obj in enumerate(sc.objects, start=1):
            if obj.otype != T_SPHERE:
                continue
            m = r['instance'] == k
            if m.sum() < 10:
                continue
            rad = obj.prims[0].params['r']
            ctr = pts[m] - rad * r['normals'][m]
            assert np.ptp(ctr, axis=0).max() < 1e-3
            checked_sphere = True
    assert checked_sphere


def test_edges_sit_on_surface_discontinuities(scenes):
    for _, r in scenes:
        e = edges_from_render(r)
        s = r['surface']
        right = np.zeros_like(e)
        down = np.zeros_like(e)
        right[:, :-1] = s[:, 1:] != s[:, :-1]
        down[:-1] = s[1:] != s[:-1]
        np.testing.assert_array_equal(e, right | down)
        # Every semantic (type) boundary is an edge, every edge is a
        # surface boundary with a depth or label change or a crease.
        t = r['stype']
        tb = np.zeros_like(e)
        tb[:, :-1] |= t[:, 1:] != t[:, :-1]
        tb[:-1] |= t[1:] != t[:-1]
        assert np.all(e[tb])
        assert 0 < e.mean() < 0.5


def test_figure_parts_and_classes(scenes):
    saw_parts = set()
    for sc, r in scenes:
        fig = r['stype'] == T_FIGURE
        assert np.all(r['part_code'][~fig] == 0)
        assert np.all(r['part_code'][fig] > 0)
        saw_parts |= set(np.unique(PART_CODE_TO_ID[r['part_code'][fig]]))
    assert saw_parts == {1, 2, 3, 4, 5, 6}


def test_colour_is_independent_of_type():
    """Mean object colour must not give the class: per type, the mean RGB of
    objects over many scenes is close to the mean of the other types."""
    per_type = {}
    for i in range(40):
        rng = np.random.default_rng(i)
        sc = sample_scene(rng, 16, 16)
        k = 6
        for obj in sc.objects:
            per_type.setdefault(obj.otype, []).append(
                sc.materials[k]['color'])
            k += len(obj.prims)
    means = {t: np.mean(v, axis=0) for t, v in per_type.items()
             if len(v) >= 8}
    assert len(means) >= 3
    vals = np.array(list(means.values()))
    assert np.ptp(vals, axis=0).max() < 0.2


def _tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = osp.join(d, f)
            with open(p, 'rb') as fh:
                out[osp.relpath(p, root)] = fh.read()
    return out


@pytest.mark.parametrize('layout', ['nyud', 'pascal'])
def test_generate_is_deterministic_and_atomic(tmp_path, layout):
    kw = dict(num_train=3, num_val=2, size=(24, 32))
    a = generate(layout, str(tmp_path / 'a'), seed=7, **kw)
    generate(layout, str(tmp_path / 'b'), seed=7, **kw)
    generate(layout, str(tmp_path / 'c'), seed=8, **kw)
    ta, tb, tc = (_tree(tmp_path / x) for x in 'abc')
    assert ta == tb
    assert ta.keys() == tc.keys() and ta != tc
    assert a['splits'] == {'train': ['000000', '000001', '000002'],
                           'val': ['000003', '000004']}
    assert sorted(os.listdir(tmp_path)) == ['a', 'b', 'c']  # no tmp left
    assert is_current(str(tmp_path / 'a'), layout, seed=7, **kw)
    assert not is_current(str(tmp_path / 'a'), layout, seed=8, **kw)
    assert not is_current(str(tmp_path / 'nope'), layout, seed=7, **kw)
    split_dir = 'gt_sets' if layout == 'nyud' else 'ImageSets/Context'
    with open(tmp_path / 'a' / split_dir / 'val.txt') as f:
        assert f.read() == '000003\n000004\n'


def test_interrupted_generation_leaves_nothing(tmp_path):
    def boom(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate('nyud', str(tmp_path / 'x'), num_train=4, num_val=1,
                 size=(16, 16), progress=boom)
    assert os.listdir(tmp_path) == []
    # An existing dataset survives an interrupted regeneration.
    generate('nyud', str(tmp_path / 'x'), num_train=1, num_val=1,
             size=(16, 16))
    with pytest.raises(KeyboardInterrupt):
        generate('nyud', str(tmp_path / 'x'), num_train=4, num_val=1,
                 size=(16, 16), progress=boom)
    assert os.listdir(tmp_path) == ['x']
    assert is_current(str(tmp_path / 'x'), 'nyud', 1, 1, (16, 16), 0)


def test_nyud_files_match_render(tmp_path):
    out = str(tmp_path / 'n')
    generate('nyud', out, num_train=1, num_val=0, size=(24, 32), seed=3)
    rng = np.random.default_rng([3, 0])
    r = render(sample_scene(rng, 24, 32), rng)
    depth = sio.loadmat(osp.join(out, 'depth', '000000.mat'))['depth']
    np.testing.assert_array_equal(depth, r['depth'])
    seg = sio.loadmat(osp.join(out, 'segmentation', '000000.mat'))[
        'segmentation']
    assert seg.shape == (24, 32) and set(np.unique(seg)) <= {
        1, 2, 22, 29, 31, 39, 40}
    edge = cv2.imread(osp.join(out, 'edge', '000000.png'), 0)
    np.testing.assert_array_equal(edge, edges_from_render(r) * 255)


def test_pascal_anno_struct_matches_public_indexing(tmp_path):
    """The PASCAL-Part struct nesting as public PASCAL-MT loaders index it:
    anno[0][0][1][0] = objects; obj[1][0][0] = class id; obj[2] = mask;
    obj[3] = parts (empty without annotation); part[0][0] = name,
    part[1] = mask."""
    m1 = np.zeros((4, 5), np.uint8)
    m1[1:3, 1:3] = 1
    head = np.zeros_like(m1)
    head[1, 1] = 1
    objs = [dict({'class': 'person', 'class_ind': 15, 'mask': m1,
                  'parts': [('head', head), ('luarm', m1 - head)]}),
            dict({'class': 'bottle', 'class_ind': 5, 'mask': 1 - m1,
                  'parts': []})]
    p = str(tmp_path / 'a.mat')
    sio.savemat(p, make_pascal_anno('x', objs))
    pm = sio.loadmat(p)['anno'][0][0][1][0]
    assert len(pm) == 2
    assert pm[0][1][0][0] == 15 and pm[1][1][0][0] == 5
    np.testing.assert_array_equal(pm[0][2], m1)
    assert len(pm[0][3]) != 0 and len(pm[1][3]) == 0
    assert [str(pm[0][3][0][j][0][0]) for j in range(2)] == ['head', 'luarm']
    np.testing.assert_array_equal(pm[0][3][0][0][1], head)


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        'make_synthetic', osp.join(ROOT, 'tools', 'make_synthetic.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_extra_split_proxy_labels_and_preview(tmp_path, capsys):
    cli = _load_cli()
    out, prev = str(tmp_path / 'p'), str(tmp_path / 'prev.png')
    argv = ['--layout', 'pascal', '--out', out, '--num-train', '2',
            '--num-val', '1', '--size', '20', '28', '--seed', '1',
            '--extra-split', 'pretrain:3', '--preview', prev]
    assert cli.main(argv) == 0
    with open(osp.join(out, 'ImageSets', 'Context', 'pretrain.txt')) as f:
        assert f.read().split() == ['000003', '000004', '000005']
    with open(osp.join(out, 'proxy_labels.json')) as f:
        proxy = json.load(f)
    assert sorted(proxy['labels']) == [f'{i:06d}' for i in range(6)]
    assert all(set(v) <= {'sphere', 'box', 'cylinder', 'figure'}
               for v in proxy['labels'].values())
    sheet = cv2.imread(prev)
    # 4 rows max (here 4 of 6 images), 6 columns of 28 px + 5 separators.
    assert sheet.shape == (4 * 20, 6 * 28 + 5 * 2, 3)
    # Rerun without changes: reported current, nothing rewritten.
    mtime = os.path.getmtime(osp.join(out, 'synthetic.json'))
    assert cli.main(argv[:-2]) == 0
    assert 'up to date' in capsys.readouterr().out
    assert os.path.getmtime(osp.join(out, 'synthetic.json')) == mtime
    with pytest.raises(SystemExit):
        cli.main(['--layout', 'pascal', '--out', out, '--extra-split', 'x'])


def test_voc_palette_values_and_preview_colours(tmp_path):
    """One VOC palette (numpy only) for the dataset metainfo and the
    synthetic preview sheets: the bit-interleaved VOC colours."""
    from rc_adapter.synthetic.writers import _VOC_LUT, write_preview
    from rc_adapter.utils.palette import voc_palette
    pal = voc_palette(256)
    assert pal.dtype == np.uint8 and pal.shape == (256, 3)
    assert pal[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0],
                                [128, 128, 0]]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[20].tolist() == [0, 64, 128]  # tvmonitor
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal.tolist()}) == 256
    np.testing.assert_array_equal(voc_palette(21), pal[:21])
    sc, r = _scenes(1)[0]
    prev = str(tmp_path / 'prev.png')
    write_preview(prev, [(r, edges_from_render(r))], 'pascal')
    sheet = cv2.imread(prev)[..., ::-1]
    w = r['image'].shape[1]
    semseg = sheet[:, w + 2:2 * w + 2]
    np.testing.assert_array_equal(semseg, pal[_VOC_LUT[r['stype']]])
