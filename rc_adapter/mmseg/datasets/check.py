"""Annotation pre-flight: find bad label files before a run starts.

A training run evaluates at its end; a missing or damaged validation label
found then throws the run away. :func:`check_annotations` reads only file
headers (PIL for PNG/JPEG, ``scipy.io.whosmat`` for MATLAB files), so a
whole validation split is checked in seconds, and reports every problem in
one :class:`~rc_adapter.core.errors.AnnotationError`.
"""
import copy
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from mmengine.dataset import BaseDataset

from mmseg.registry import DATASETS

from ...core.errors import AnnotationError, RCConfigError, UnknownTaskError
from .labels import image_size, mat_variables
from .meta import MAT_VARIABLES

__all__ = ['check_annotations', 'check_samples']

#: MATLAB classes of numeric arrays (what ``whosmat`` reports)
_NUMERIC_MAT = ('double', 'single', 'int8', 'uint8', 'int16', 'uint16',
                'int32', 'uint32', 'int64', 'uint64', 'logical')


def _label_files(info: dict, tasks: Sequence[str]
                 ) -> Tuple[List[Tuple[str, str, Optional[str]]], List[str]]:
    """(task, role, path) of each file the tasks read, and the tasks the
    sample lists no file for. ``role`` names the MATLAB variable to expect
    (``context``: the PASCAL-Context label map behind normals and edges)."""
    paths = info.get('ann_paths')
    if paths is None:  # a stock single-task sample
        paths = {'semseg': info.get('seg_map_path')}
    files, missing, seen = [], [], set()
    for task in tasks:
        if task not in paths:
            missing.append(task)
            continue
        wanted = [(task, task, paths[task])]
        if 'context' in paths and task in ('normals', 'edge'):
            wanted.insert(0, (task, 'context', paths['context']))
        for entry in wanted:
            if entry[2] not in seen:
                seen.add(entry[2])
                files.append(entry)
    return files, missing


def _check_header(task: str, role: str, path: Optional[str],
                  shape: Tuple[int, int]) -> None:
    """Header check of one label file against the image size."""
    if path is not None and str(path).endswith('.mat'):
        variables = mat_variables(task, path)
        key = MAT_VARIABLES.get(role)
        if key is None:
            raise AnnotationError(f'[{task}] {path}: a MATLAB file where the '
                                  f'{role} label is an image')
        if key not in variables:
            raise AnnotationError(f'[{task}] {path} has no variable {key!r} '
                                  f'(it has {sorted(variables)})')
        got, cls = variables[key]
        if role == 'human_parts':
            if cls != 'struct':
                raise AnnotationError(f'[{task}] {path}: {key!r} is a {cls}, '
                                      'expected a PASCAL-Part struct')
            return  # part mask sizes are checked when decoded
        if cls not in _NUMERIC_MAT or len(got) != 2:
            raise AnnotationError(
                f'[{task}] {path}: {key!r} must be a 2-D numeric array, got '
                f'{cls} {got}')
    else:
        got = image_size(task, path)
    if tuple(got[:2]) != tuple(shape):
        raise AnnotationError(f'[{task}] {path}: label size {tuple(got[:2])} '
                              f'differs from image size {tuple(shape)}')


def _sample_problems(info: dict, tasks: Optional[Sequence[str]],
                     loader) -> List[str]:
    try:
        shape = image_size('image', info['img_path'])
    except AnnotationError as exc:
        return [str(exc)]
    use = list(tasks) if tasks is not None else list(
        info.get('tasks') or info.get('ann_paths') or ['semseg'])
    files, missing = _label_files(info, use)
    found = [f'[{task}] {info["img_path"]}: the sample lists no annotation '
             'file for this task' for task in missing]
    for task, role, path in files:
        try:
            _check_header(task, role, path, shape)
        except AnnotationError as exc:
            found.append(str(exc))
    if loader is not None and not found and 'ann_paths' in info:
        try:
            loader(copy.deepcopy(info))
        except AnnotationError as exc:
            found.append(str(exc))
    return found


def _describe(dataset: object) -> str:
    root = getattr(dataset, 'data_root', None)
    split = getattr(dataset, 'split', None)
    extra = f', split={split!r}' if split is not None else ''
    return f'{type(dataset).__name__}(data_root={root!r}{extra})'


def check_samples(dataset: object, samples: Iterable[dict],
                  tasks: Optional[Sequence[str]] = None, max_listed: int = 10,
                  decode: bool = False) -> None:
    """Check the image and label files of data samples (the body of
    :func:`check_annotations`; datasets call it on their data list).

    Args:
        dataset: The dataset the samples belong to (named in the message).
        samples: Data infos as ``BaseDataset.get_data_info`` returns them
            (``img_path`` and ``ann_paths`` for the multi-task datasets,
            ``seg_map_path`` for stock ones).
        tasks: Tasks whose labels to check; default: each sample's
            ``tasks`` (or every file it lists).
        max_listed: How many problems the error spells out.
        decode: Also decode every label with ``LoadMTAnnotations``.

    Raises:
        AnnotationError: Listing the number of problems and of bad samples
            and the first ``max_listed`` problems.
    """
    loader = None
    if decode:
        from ..transforms.loading import LoadMTAnnotations
        loader = LoadMTAnnotations(tasks=tasks)
    problems: List[str] = []
    bad = total = 0
    for info in samples:
        total += 1
        found = _sample_problems(info, tasks, loader)
        bad += bool(found)
        problems.extend(found)
    if not problems:
        return
    listed = '\n  '.join(problems[:max_listed])
    more = (f'\n  ... and {len(problems) - max_listed} more'
            if len(problems) > max_listed else '')
    raise AnnotationError(
        f'{_describe(dataset)}: {len(problems)} problem(s) with the '
        f'annotation files of {bad} of {total} samples:\n  {listed}{more}')


def _build(cfg: dict, tasks: Optional[Sequence[str]]) -> BaseDataset:
    """Build a dataset config without its pipeline (labels are not read)."""
    cfg = copy.deepcopy(dict(cfg))
    if 'type' not in cfg:
        raise RCConfigError(f'check_annotations: the dataset config has no '
                            f'type: {cfg}')
    cls = DATASETS.get(cfg['type']) if isinstance(cfg['type'], str) \
        else cfg['type']
    cfg['pipeline'] = []
    if cls is not None and hasattr(cls, 'VALID_TASKS'):
        cfg['verify'] = False
        if tasks is not None:
            cfg['tasks'] = list(tasks)
    return DATASETS.build(cfg)


def check_annotations(dataset: Union[BaseDataset, dict],
                      tasks: Optional[Sequence[str]] = None,
                      max_listed: int = 10, decode: bool = False) -> None:
    """Check, before training, that every annotation of a split loads.

    For every sample: the image and each label file of ``tasks`` exist,
    their headers are readable (PIL for PNG/JPEG, ``scipy.io.whosmat`` for
    ``.mat``), MATLAB files hold the expected variable (2-D numeric, or the
    PASCAL-Part struct) and every label has its image's size. Only headers
    are read; ``decode=True`` also decodes every label like training does.

    Args:
        dataset: A built dataset, or a dataset config such as
            ``cfg.val_dataloader.dataset`` (built without its pipeline).
        tasks: Tasks to check (a config's ``tasks`` is replaced by them);
            default: the dataset's tasks.
        max_listed: How many problems the error spells out.
        decode: Decode every label too (slower; finds damaged bodies).

    Raises:
        AnnotationError: Listing the count of problems and of bad samples
            and the first ``max_listed`` problems, each naming its task and
            file.
        UnknownTaskError: ``tasks`` holds a task the built dataset does not
            load.
    """
    if not isinstance(dataset, BaseDataset):
        dataset = _build(dataset, tasks)
    dataset.full_init()
    held = getattr(dataset, 'tasks', None)
    if tasks is not None and held is not None:
        unknown = [t for t in tasks if t not in held]
        if unknown:
            raise UnknownTaskError(
                f'check_annotations: {_describe(dataset)} does not load '
                f'task(s) {unknown}; it loads {list(held)}')
    samples = (dataset.get_data_info(i) for i in range(len(dataset)))
    check_samples(dataset, samples, tasks, max_listed, decode)
