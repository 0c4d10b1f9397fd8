"""PASCAL-Context and NYUD-v2 multi-task datasets (PASCAL_MT / NYUD_MT
layouts, ``docs/datasets.md``)."""
from __future__ import annotations

import json
import os
import os.path as osp

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ...core.errors import AnnotationError, RCConfigError, UnknownTaskError
from .check import check_samples
from .labels import person_class_ids
from .meta import (BINARY_CLASSES, BINARY_PALETTE, HUMAN_PART_CLASSES,
                   HUMAN_PART_PALETTE, NYU40_CLASSES, NYU40_PALETTE,
                   PERSON_CLASS_ID, TASKS_NYUD, TASKS_PASCAL, VOC_CLASSES,
                   VOC_PALETTE)


class _MTDatasetMixin:
    """Shared argument handling, split reading and ``verify``."""

    VALID_TASKS: tuple = ()
    LAYOUT = ''
    SEG_MAP_SUFFIX = ''

    def __init__(self, data_root, split='train', tasks=('semseg',),
                 pipeline=(), verify=False, **kwargs):
        self._init_tasks(split, tasks)
        self.verify = verify
        kwargs.setdefault('img_suffix', '.jpg')
        kwargs.setdefault('seg_map_suffix', self.SEG_MAP_SUFFIX)
        kwargs.setdefault('reduce_zero_label', False)
        super().__init__(data_root=data_root, pipeline=list(pipeline),
                         **kwargs)
        self._metainfo['tasks'] = list(self.tasks)

    def _init_tasks(self, split, tasks):
        if isinstance(tasks, str):
            tasks = [tasks]
        tasks = list(tasks)
        if not tasks:
            raise RCConfigError(f'{type(self).__name__}: tasks is empty; '
                                f'valid tasks: {list(self.VALID_TASKS)}')
        bad = [t for t in tasks if t not in self.VALID_TASKS]
        if bad:
            raise UnknownTaskError(
                f'{type(self).__name__}: unknown task(s) {bad}; valid tasks: '
                f'{list(self.VALID_TASKS)}')
        if len(set(tasks)) != len(tasks):
            raise RCConfigError(f'{type(self).__name__}: duplicate tasks in '
                                f'{tasks}')
        self.split = split
        self.tasks = tasks

    def _read_split(self, rel):
        path = osp.join(self.data_root or '', rel, f'{self.split}.txt')
        if not osp.isfile(path):
            raise AnnotationError(
                f'{type(self).__name__}: split file not found: {path}')
        with open(path) as f:
            ids = [ln.strip() for ln in f if ln.strip()]
        if not ids:
            raise AnnotationError(f'{type(self).__name__}: split file {path} '
                                  'lists no image')
        return ids

    def _entry(self, sid, img_path, ann_paths, **extra):
        info = dict(img_path=img_path,
                    seg_map_path=ann_paths.get('semseg')
                    if 'semseg' in self.tasks else None,
                    reduce_zero_label=False, seg_fields=[], img_id=sid,
                    layout=self.LAYOUT, tasks=list(self.tasks),
                    ann_paths=ann_paths)
        info.update(extra)
        return info

    def verify_data(self, data_list: list) -> None:
        """Check every sample of ``data_list`` up front (``verify=True``):
        the header checks of :func:`~rc_adapter.mmseg.datasets.check.
        check_annotations` on this dataset's tasks.

        Raises:
            AnnotationError: Listing the problems (the first 50 in full).
        """
        check_samples(self, data_list, self.tasks, max_listed=50)


@DATASETS.register_module()
class PascalContextMTDataset(_MTDatasetMixin, BaseSegDataset):
    """PASCAL-Context multi-task (PASCAL_MT layout, ``data_root`` = its root).

    Tasks: ``semseg`` (21 VOC classes, 255 ignore), ``human_parts`` (6 parts
    + background), ``sal``, ``normals`` (distilled; masked to the Context
    classes shared with NYU plus tvmonitor), ``edge`` (from the Context
    label map). Labels are decoded by ``LoadMTAnnotations``.

    When ``human_parts`` is the only task, images without a person are
    dropped (their object classes come from the ``ImageSets/Parts/<split>
    .txt`` JSON cache, built from the PascalParts files when absent or
    stale and written back when the folder is writable).

    Args:
        data_root (str): Dataset root.
        split (str): Split file name under ``ImageSets/Context``.
        tasks (list[str]): Labels to load.
        pipeline (list): mmseg pipeline (put ``LoadMTAnnotations`` after
            ``LoadImageFromFile``).
        verify (bool): Scan the split up front (see ``verify_data``).
        **kwargs: Other ``BaseSegDataset`` arguments.

    metainfo: ``classes``/``palette`` (semseg) plus ``task_classes`` and
    ``task_palettes`` (dicts task -> names / colours) and ``tasks``.
    """
    VALID_TASKS = TASKS_PASCAL
    LAYOUT = 'pascal'
    SEG_MAP_SUFFIX = '.png'
    METAINFO = dict(
        classes=VOC_CLASSES, palette=VOC_PALETTE,
        task_classes=dict(semseg=VOC_CLASSES, human_parts=HUMAN_PART_CLASSES,
                          sal=BINARY_CLASSES, edge=BINARY_CLASSES),
        task_palettes=dict(semseg=VOC_PALETTE,
                           human_parts=HUMAN_PART_PALETTE,
                           sal=BINARY_PALETTE, edge=BINARY_PALETTE))

    def _normals_valid_classes(self):
        root = self.data_root
        files = {}
        for name in ('nyu_classes.json', 'context_classes.json'):
            p = osp.join(root, 'json', name)
            if not osp.isfile(p):
                raise AnnotationError(f'[normals] class list not found: {p}')
            try:
                with open(p) as f:
                    files[name] = json.load(f)
            except ValueError as exc:
                raise AnnotationError(f'[normals] {p}: {exc}') from exc
        nyu, ctx = files['nyu_classes.json'], files['context_classes.json']
        valid = [int(ctx[c]) for c in nyu if c in ctx and c != 'unknown']
        valid.append(int(ctx['tvmonitor']))
        return sorted(set(valid))

    def _object_classes(self, ids, parts_dir):
        cache_path = osp.join(self.data_root, 'ImageSets', 'Parts',
                              f'{self.split}.txt')
        cache = None
        if osp.isfile(cache_path):
            try:
                with open(cache_path) as f:
                    cache = json.load(f)
            except ValueError:
                cache = None
        if cache is None or not set(ids) <= set(cache):
            cache = {sid: person_class_ids(osp.join(parts_dir, sid + '.mat'))
                     for sid in ids}
            try:  # best effort, as the reference's first-use cache
                tmp = f'{cache_path}.tmp-{os.getpid()}'
                os.makedirs(osp.dirname(cache_path), exist_ok=True)
                with open(tmp, 'w') as f:
                    json.dump(cache, f, sort_keys=True)
                os.replace(tmp, cache_path)
            except OSError:
                pass
        return cache

    def load_data_list(self):
        """Entries: ``img_path``, ``seg_map_path``, ``ann_paths`` (task ->
        file, plus ``context`` for normals/edge), ``layout``, ``tasks``,
        ``normals_valid_classes`` (normals only), ``img_id``."""
        root = self.data_root
        ids = self._read_split(osp.join('ImageSets', 'Context'))
        parts_dir = osp.join(root, 'PascalParts')
        if self.tasks == ['human_parts']:
            objs = self._object_classes(ids, parts_dir)
            ids = [i for i in ids if PERSON_CLASS_ID in objs[i]]
            if not ids:
                raise AnnotationError(
                    f'{type(self).__name__}({root!r}, split={self.split!r}):'
                    ' human_parts is the only task and the split has no '
                    'image with a person')
        extra = {}
        if 'normals' in self.tasks:
            extra['normals_valid_classes'] = self._normals_valid_classes()
        data_list = []
        for sid in ids:
            ann = {}
            for t in self.tasks:
                if t == 'semseg':
                    ann[t] = osp.join(root, 'SemanticSegmentation', 'Context',
                                      sid + '.png')
                elif t == 'human_parts':
                    ann[t] = osp.join(parts_dir, sid + '.mat')
                elif t == 'sal':
                    ann[t] = osp.join(root, 'SaliencyDistill', sid + '.png')
                elif t == 'normals':
                    ann[t] = osp.join(root, 'NormalsDistill', sid + '.png')
                if t in ('normals', 'edge'):
                    ann['context'] = osp.join(root, 'Context', 'trainval',
                                              sid + '.mat')
            if 'edge' in self.tasks:
                ann['edge'] = ann['context']
            data_list.append(self._entry(
                sid, osp.join(root, 'JPEGImages', sid + '.jpg'), ann,
                **extra))
        if self.verify:
            self.verify_data(data_list)
        return data_list


@DATASETS.register_module()
class NYUDMTDataset(_MTDatasetMixin, BaseSegDataset):
    """NYUD-v2 multi-task (NYUD_MT layout, ``data_root`` = its root).

    Tasks: ``semseg``, ``depth`` (metres, 0 invalid), ``normals``, ``edge``.

    semseg convention: 41 classes, class 0 (NYU-40 'unlabeled') is trained
    and evaluated like any other class, as the reference does; we keep it so
    numbers are comparable with RCM's (related works use 40 classes with 0
    ignored: set ``reduce_zero_label`` yourself in a metric/loss to get
    that). 255 appears only from padding.

    Args:
        data_root (str): Dataset root.
        split (str): Split file name under ``gt_sets``.
        tasks (list[str]): Labels to load.
        pipeline (list): mmseg pipeline.
        verify (bool): Scan the split up front (see ``verify_data``).
        **kwargs: Other ``BaseSegDataset`` arguments.
    """
    VALID_TASKS = TASKS_NYUD
    LAYOUT = 'nyud'
    SEG_MAP_SUFFIX = '.mat'
    METAINFO = dict(
        classes=NYU40_CLASSES, palette=NYU40_PALETTE,
        task_classes=dict(semseg=NYU40_CLASSES, edge=BINARY_CLASSES),
        task_palettes=dict(semseg=NYU40_PALETTE, edge=BINARY_PALETTE))

    def load_data_list(self):
        """Entries: ``img_path``, ``seg_map_path``, ``ann_paths``,
        ``layout``, ``tasks``, ``img_id``."""
        root = self.data_root
        sub = dict(semseg=('segmentation', '.mat'), depth=('depth', '.mat'),
                   normals=('normals', '.jpg'), edge=('edge', '.png'))
        data_list = []
        for sid in self._read_split('gt_sets'):
            ann = {t: osp.join(root, sub[t][0], sid + sub[t][1])
                   for t in self.tasks}
            data_list.append(self._entry(
                sid, osp.join(root, 'images', sid + '.jpg'), ann))
        if self.verify:
            self.verify_data(data_list)
        return data_list
