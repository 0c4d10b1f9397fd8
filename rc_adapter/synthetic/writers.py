"""Write synthetic scenes in the on-disk layouts of NYUD_MT and PASCAL_MT.

The label conventions (``docs/datasets.md``) are the ones of the real data,
so the real loaders read these folders unchanged:

NYUD (``--layout nyud``): ``images/<id>.jpg``, ``gt_sets/<split>.txt``,
``segmentation/<id>.mat`` (``segmentation``, NYU-40 ids, 0 = unlabeled),
``depth/<id>.mat`` (``depth``, float metres), ``normals/<id>.jpg``
((n + 1) / 2 * 255, RGB = xyz, JPEG as the real data), ``edge/<id>.png``
(0/255).

PASCAL (``--layout pascal``): ``JPEGImages/<id>.jpg``,
``ImageSets/Context/<split>.txt``, ``Context/trainval/<id>.mat``
(``LabelMap``, PASCAL-Context ids), ``SemanticSegmentation/Context/<id>.png``
(VOC 21 ids), ``PascalParts/<id>.mat`` (``anno`` in the PASCAL-Part MATLAB
struct layout), ``json/{pascal_part,context_classes,nyu_classes}.json``,
``NormalsDistill/<id>.png``, ``SaliencyDistill/<id>.png`` (0/255) and the
``ImageSets/Parts/<split>.txt`` JSON cache of object class ids per image.

Class mapping of the synthetic surface types (documented choice):

============  ===========  ==================  =====================
type          NYU-40 id    VOC-21 id           PASCAL-Context id
============  ===========  ==================  =====================
floor         2 floor      0 background        158 floor
wall          1 wall       0 background        440 wall
ceiling       22 ceiling   0 background        68 ceiling
sphere        40 otherprop 16 pottedplant      308 pottedplant
box           29 box       20 tvmonitor        427 tvmonitor
cylinder      39 otherfurn 5 bottle            34 bottle
figure        31 person    15 person           284 person
============  ===========  ==================  =====================

On PASCAL the normals of pottedplant and bottle pixels are masked by the
loader (those Context classes are not NYU classes), as on the real data.
Saliency is every foreground object (spheres, boxes, cylinders, figures).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time

import cv2
import numpy as np
import scipy.io as sio

from .render import (OBJECT_TYPES, PART_CODE_TO_ID, PART_NAME_TO_ID,
                     PART_NAMES, T_BOX, T_CEILING, T_CYLINDER, T_FIGURE,
                     T_FLOOR, T_SPHERE, T_WALL, TYPE_NAMES, edges_from_render,
                     render, sample_scene)
from ..core.errors import RCConfigError
from ..utils.palette import voc_palette

GENERATOR_VERSION = 1
LAYOUTS = ('nyud', 'pascal')

NYU40_OF_TYPE = {T_FLOOR: 2, T_WALL: 1, T_CEILING: 22, T_SPHERE: 40,
                 T_BOX: 29, T_CYLINDER: 39, T_FIGURE: 31}
VOC_OF_TYPE = {T_FLOOR: 0, T_WALL: 0, T_CEILING: 0, T_SPHERE: 16,
               T_BOX: 20, T_CYLINDER: 5, T_FIGURE: 15}
VOC_NAMES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle',
             'bus', 'car', 'cat', 'chair', 'cow', 'diningtable', 'dog',
             'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
             'train', 'tvmonitor')
CONTEXT_OF_TYPE = {T_FLOOR: 158, T_WALL: 440, T_CEILING: 68, T_SPHERE: 308,
                   T_BOX: 427, T_CYLINDER: 34, T_FIGURE: 284}
CONTEXT_CLASSES = {'bottle': 34, 'ceiling': 68, 'floor': 158, 'person': 284,
                   'pottedplant': 308, 'tvmonitor': 427, 'unknown': 431,
                   'wall': 440}
NYU40_NAMES = ('wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table',
               'door', 'window', 'bookshelf', 'picture', 'counter', 'blinds',
               'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
               'floor mat', 'clothes', 'ceiling', 'books', 'refrigerator',
               'television', 'paper', 'towel', 'shower curtain', 'box',
               'whiteboard', 'person', 'night stand', 'toilet', 'sink',
               'lamp', 'bathtub', 'bag', 'otherstructure', 'otherfurniture',
               'otherprop')


def _lut(table, default=0):
    lut = np.full(256, default, np.int64)
    for k, v in table.items():
        lut[k] = v
    return lut


_NYU_LUT = _lut(NYU40_OF_TYPE).astype(np.uint8)
_VOC_LUT = _lut(VOC_OF_TYPE).astype(np.uint8)
_CTX_LUT = _lut(CONTEXT_OF_TYPE).astype(np.uint16)


# ----------------------------------------------------------------------------
# Deterministic file writers.

def _write_bytes(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def _savemat(path, mdict):
    """``scipy.io.savemat`` with a fixed header (the stock header carries
    the creation time, which would break byte-identical reruns)."""
    buf = io.BytesIO()
    sio.savemat(buf, mdict, do_compression=True)
    data = bytearray(buf.getvalue())
    text = b'MATLAB 5.0 MAT-file, written by rc_adapter.synthetic'
    data[:116] = text.ljust(116, b' ')
    _write_bytes(path, bytes(data))


def _imwrite(path, img, params=()):
    ext = os.path.splitext(path)[1]
    ok, enc = cv2.imencode(ext, img, list(params))
    if not ok:
        raise OSError(f'could not encode {path}')
    _write_bytes(path, enc.tobytes())


def encode_normals(n):
    """Unit normals (HxWx3, xyz) -> uint8 RGB via (n + 1) / 2 * 255."""
    return np.clip(np.rint((n + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _jpg(path, rgb, quality=92, full_chroma=False):
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if full_chroma:  # 4:4:4: chroma subsampling would wreck normals at edges
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    _imwrite(path, np.ascontiguousarray(rgb[..., ::-1]), params)


def _png(path, img):
    if img.ndim == 3:
        img = np.ascontiguousarray(img[..., ::-1])
    _imwrite(path, img, (cv2.IMWRITE_PNG_COMPRESSION, 3))


def make_pascal_anno(imname, objects):
    """Build the ``anno`` struct of a PASCAL-Part ``.mat`` file.

    Args:
        imname (str): Image id.
        objects (list[dict]): Each with ``class`` (str), ``class_ind`` (int,
            VOC id; 15 = person), ``mask`` (HxW uint8/bool) and ``parts``: a
            list of ``(part_name, mask)``; an empty list gives the empty
            ``parts`` field of objects without part annotation.

    Returns:
        dict: ``{'anno': ...}`` ready for :func:`scipy.io.savemat`. Loaded
        back with ``loadmat``, ``anno[0][0]['objects'][0][i]`` is object i,
        with fields ``class``, ``class_ind``, ``mask``, ``parts`` (in this
        order, as in PASCAL-Part), and each part has ``part_name``, ``mask``.
    """
    obj_dt = [('class', 'O'), ('class_ind', 'O'), ('mask', 'O'),
              ('parts', 'O')]
    part_dt = [('part_name', 'O'), ('mask', 'O')]
    objs = np.zeros((1, len(objects)), dtype=obj_dt)
    for i, o in enumerate(objects):
        objs[0, i]['class'] = o['class']
        objs[0, i]['class_ind'] = np.array([[o['class_ind']]], np.uint8)
        objs[0, i]['mask'] = np.asarray(o['mask'], np.uint8)
        if o['parts']:
            parts = np.zeros((1, len(o['parts'])), dtype=part_dt)
            for j, (name, m) in enumerate(o['parts']):
                parts[0, j]['part_name'] = name
                parts[0, j]['mask'] = np.asarray(m, np.uint8)
        else:
            parts = np.zeros((0, 0))
        objs[0, i]['parts'] = parts
    anno = np.zeros((1, 1), dtype=[('imname', 'O'), ('objects', 'O')])
    anno[0, 0]['imname'] = imname
    anno[0, 0]['objects'] = objs
    return {'anno': anno}


# ----------------------------------------------------------------------------
# Per-layout sample writers. ``r`` is the output of ``render``.

def _write_nyud(root, sid, r, edge):
    _jpg(os.path.join(root, 'images', sid + '.jpg'), r['image'])
    _savemat(os.path.join(root, 'segmentation', sid + '.mat'),
             {'segmentation': _NYU_LUT[r['stype']]})
    _savemat(os.path.join(root, 'depth', sid + '.mat'),
             {'depth': r['depth'].astype(np.float32)})
    _jpg(os.path.join(root, 'normals', sid + '.jpg'),
         encode_normals(r['normals']), quality=95, full_chroma=True)
    _png(os.path.join(root, 'edge', sid + '.png'),
         edge.astype(np.uint8) * 255)


def _pascal_objects(r, scene):
    objects = []
    for k, obj in enumerate(scene.objects, start=1):
        mask = r['instance'] == k
        if not mask.any():
            continue
        voc = VOC_OF_TYPE[obj.otype]
        parts = []
        if obj.otype == T_FIGURE and obj.annotated:
            for code in sorted(set(obj.part_codes)):
                pm = mask & (r['part_code'] == code)
                if pm.any():
                    parts.append((PART_NAMES[code - 1], pm))
        objects.append({'class': VOC_NAMES[voc], 'class_ind': voc,
                        'mask': mask, 'parts': parts})
    return objects


def _write_pascal(root, sid, r, scene):
    _jpg(os.path.join(root, 'JPEGImages', sid + '.jpg'), r['image'])
    _savemat(os.path.join(root, 'Context', 'trainval', sid + '.mat'),
             {'LabelMap': _CTX_LUT[r['stype']]})
    _png(os.path.join(root, 'SemanticSegmentation', 'Context', sid + '.png'),
         _VOC_LUT[r['stype']])
    objects = _pascal_objects(r, scene)
    _savemat(os.path.join(root, 'PascalParts', sid + '.mat'),
             make_pascal_anno(sid, objects))
    _png(os.path.join(root, 'NormalsDistill', sid + '.png'),
         encode_normals(r['normals']))
    sal = np.isin(r['stype'], OBJECT_TYPES)
    _png(os.path.join(root, 'SaliencyDistill', sid + '.png'),
         sal.astype(np.uint8) * 255)
    return [o['class_ind'] for o in objects]  # per object, as the cache


_NYUD_DIRS = ('images', 'gt_sets', 'segmentation', 'depth', 'normals', 'edge')
_PASCAL_DIRS = ('JPEGImages', 'ImageSets/Context', 'ImageSets/Parts',
                'Context/trainval', 'SemanticSegmentation/Context',
                'PascalParts', 'json', 'NormalsDistill', 'SaliencyDistill')


def _write_pascal_json(root):
    def dump(name, obj):
        with open(os.path.join(root, 'json', name), 'w') as f:
            json.dump(obj, f, indent=1, sort_keys=True)
    dump('pascal_part.json', {'15': dict(sorted(PART_NAME_TO_ID.items()))})
    dump('context_classes.json', CONTEXT_CLASSES)
    dump('nyu_classes.json',
         {n: i for i, n in enumerate(NYU40_NAMES, start=1)})


# ----------------------------------------------------------------------------
# Public API.

def _params(layout, num_train, num_val, size, seed, extra_splits,
            p_no_figure, p_unannotated_figure):
    if layout not in LAYOUTS:
        raise RCConfigError(f'unknown layout {layout!r}; valid: {LAYOUTS}')
    size = [int(size[0]), int(size[1])]
    if min(size) < 8:
        raise RCConfigError(f'size {size} too small (min 8x8)')
    extra = {str(k): int(v) for k, v in sorted((extra_splits or {}).items())}
    for k in extra:
        if k in ('train', 'val'):
            raise RCConfigError(f'extra split name {k!r} clashes with '
                                'train/val')
    return dict(generator_version=GENERATOR_VERSION, layout=layout,
                num_train=int(num_train), num_val=int(num_val), size=size,
                seed=int(seed), extra_splits=extra,
                p_no_figure=float(p_no_figure),
                p_unannotated_figure=float(p_unannotated_figure))


def is_current(out, layout, num_train, num_val, size, seed,
               extra_splits=None, p_no_figure=0.3, p_unannotated_figure=0.0):
    """Whether ``out`` holds a complete dataset made with these parameters.

    Args:
        out (str): Dataset root.
        layout, num_train, num_val, size, seed, extra_splits, p_no_figure,
            p_unannotated_figure: As for :func:`generate`.

    Returns:
        bool: True when ``out/synthetic.json`` exists and records exactly
        these parameters and the current generator version.
    """
    want = _params(layout, num_train, num_val, size, seed, extra_splits,
                   p_no_figure, p_unannotated_figure)
    try:
        with open(os.path.join(out, 'synthetic.json')) as f:
            have = json.load(f)
    except (OSError, ValueError):
        return False
    return have.get('params') == want


def generate(layout, out, num_train=100, num_val=20, size=(128, 128), seed=0,
             extra_splits=None, p_no_figure=0.3, p_unannotated_figure=0.0,
             preview=None, progress=None):
    """Render a synthetic multi-task dataset into ``out``.

    The dataset is written to ``<out>.tmp-<pid>`` and renamed to ``out`` at
    the end (replacing an existing ``out``), so an interrupted run never
    leaves a complete-looking folder; ``out/synthetic.json`` is written last
    and records the parameters (see :func:`is_current`).

    Args:
        layout (str): 'nyud' or 'pascal'.
        out (str): Dataset root to create.
        num_train (int): Images in the ``train`` split.
        num_val (int): Images in the ``val`` split.
        size (tuple[int, int]): Image (height, width).
        seed (int): Seed; the same seed gives byte-identical files.
        extra_splits (dict[str, int], optional): More splits (e.g.
            ``{'pretrain': 500}``), written as further split files with
            their own images.
        p_no_figure (float): Probability that an image has no figure.
        p_unannotated_figure (float): Probability that a figure carries no
            part annotation (PASCAL; exercises the all-0 parts rule).
        preview (str, optional): Write a PNG contact sheet of the first few
            images and their labels here.
        progress (callable, optional): Called as ``progress(done, total)``.

    Returns:
        dict: ``{'params': ..., 'splits': {name: [ids]}, 'seconds': float}``.
    """
    params = _params(layout, num_train, num_val, size, seed, extra_splits,
                     p_no_figure, p_unannotated_figure)
    hgt, wid = params['size']
    splits = [('train', params['num_train']), ('val', params['num_val'])]
    splits += list(params['extra_splits'].items())
    total = sum(n for _, n in splits)
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = f'{out}.tmp-{os.getpid()}'
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    dirs = _NYUD_DIRS if layout == 'nyud' else _PASCAL_DIRS
    t0 = time.time()
    ids = {}
    proxy = {}
    shown = []
    try:
        for d in dirs:
            os.makedirs(os.path.join(tmp, d))
        if layout == 'pascal':
            _write_pascal_json(tmp)
        gidx = 0
        for split, n in splits:
            ids[split] = []
            parts_cache = {}
            for _ in range(n):
                sid = f'{gidx:06d}'
                rng = np.random.default_rng([params['seed'], gidx])
                scene = sample_scene(
                    rng, hgt, wid, p_no_figure=params['p_no_figure'],
                    p_unannotated_figure=params['p_unannotated_figure'])
                r = render(scene, rng)
                edge = edges_from_render(r)
                if layout == 'nyud':
                    _write_nyud(tmp, sid, r, edge)
                else:
                    parts_cache[sid] = _write_pascal(tmp, sid, r, scene)
                present = sorted({TYPE_NAMES[int(t)]
                                  for t in np.unique(r['stype'])
                                  if int(t) in OBJECT_TYPES})
                proxy[sid] = present
                if preview and len(shown) < 4:
                    shown.append((r, edge))
                ids[split].append(sid)
                gidx += 1
                if progress is not None:
                    progress(gidx, total)
            list_dir = 'gt_sets' if layout == 'nyud' else 'ImageSets/Context'
            with open(os.path.join(tmp, list_dir, split + '.txt'), 'w') as f:
                f.write(''.join(s + '\n' for s in ids[split]))
            if layout == 'pascal':
                with open(os.path.join(tmp, 'ImageSets', 'Parts',
                                       split + '.txt'), 'w') as f:
                    json.dump(parts_cache, f, sort_keys=True)
        with open(os.path.join(tmp, 'proxy_labels.json'), 'w') as f:
            json.dump({'types': [TYPE_NAMES[t] for t in OBJECT_TYPES],
                       'labels': proxy}, f, indent=0, sort_keys=True)
        with open(os.path.join(tmp, 'synthetic.json'), 'w') as f:
            json.dump({'params': params}, f, indent=1, sort_keys=True)
        old = None
        if os.path.exists(out):
            old = f'{out}.old-{os.getpid()}'
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if preview:
        write_preview(preview, shown, layout)
    return dict(params=params, splits=ids, seconds=time.time() - t0)


def write_preview(path, shown, layout):
    """Write a contact sheet: one row per image, one column per label.

    Columns: image, semseg, depth (nyud) / human parts (pascal), normals,
    edge, saliency (pascal).

    Args:
        path (str): Output PNG.
        shown (list[tuple[dict, np.ndarray]]): ``(render output, edge)``.
        layout (str): 'nyud' or 'pascal'.
    """
    rows = []
    pal = voc_palette(256)
    for r, edge in shown:
        if layout == 'nyud':
            sem = pal[_NYU_LUT[r['stype']]]
            z = r['depth']
            zc = cv2.applyColorMap(
                (np.clip(z / max(float(z.max()), 1e-6), 0, 1) * 255
                 ).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            cols = [r['image'], sem, zc]
        else:
            sem = pal[_VOC_LUT[r['stype']]]
            parts = pal[PART_CODE_TO_ID[r['part_code']]]
            cols = [r['image'], sem, parts]
        cols.append(encode_normals(r['normals']))
        cols.append(np.repeat(edge[..., None].astype(np.uint8) * 255, 3, 2))
        if layout == 'pascal':
            sal = np.isin(r['stype'], OBJECT_TYPES).astype(np.uint8) * 255
            cols.append(np.repeat(sal[..., None], 3, 2))
        sep = np.full((r['image'].shape[0], 2, 3), 255, np.uint8)
        row = []
        for c in cols:
            row += [c, sep]
        rows.append(np.concatenate(row[:-1], 1))
    if not rows:
        return
    sheet = np.concatenate(rows, 0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _png(path, sheet)
