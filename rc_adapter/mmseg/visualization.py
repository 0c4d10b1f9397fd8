"""Pictures a person reads: one panel per image with every task's ground
truth and prediction, and the raw encodings beside it for programs.

A panel (:func:`draw_panel`) holds the input image and, per task, the ground
truth (when there is one) and the prediction side by side, each with the
task's colour map:

* segmentation (``semseg``, ``human_parts``): the task's palette, with a
  legend naming the classes present (``ignored`` for label 255);
* depth: one colour scale shared by ground truth and prediction (the valid
  values of both), with a colour bar in metres; invalid ground truth (0) is
  black;
* normals: ``(n + 1) / 2`` as RGB (x red, y green, z blue); invalid (zero)
  vectors are black;
* saliency and edges: a heat map of the probability in [0, 1] with a colour
  bar; ignored label pixels are drawn in the ignore colour.

Images are placed pixel for pixel (``Figure.figimage``: no resampling by
matplotlib), so two equal maps give two equal regions of the panel, and
:class:`Panel` records where each region is. Drawing uses matplotlib's Agg
canvas directly (no ``pyplot``, no global backend change).

:class:`MTVisualizationHook` writes ``<out_dir>/<image>.png`` panels and
``<out_dir>/raw/<field>/<image>.png`` raw encodings (those of
``MTPredictionSaverHook``) during testing (``tools/test.py --show-dir``);
:class:`MTSegLocalVisualizer` draws the same panel for mmseg's
``SegVisualizationHook`` (mmseg's own ``tools/test.py --show-dir``).
"""
from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmseg.registry import HOOKS, VISUALIZERS
from mmseg.visualization import SegLocalVisualizer

from ..core.errors import RCConfigError
from ..utils.palette import voc_palette
from .evaluation._utils import squeeze_map

__all__ = ['TaskView', 'Panel', 'FIELD_TASK_TYPES', 'IGNORE_COLOUR',
           'colorize', 'draw_panel', 'sample_task_views', 'save_panel',
           'write_raw', 'check_display', 'show_panel',
           'MTVisualizationHook', 'MTSegLocalVisualizer']

#: The task type of each prediction/label field (without ``pred_``/``gt_``).
FIELD_TASK_TYPES = {
    'sem_seg': 'segmentation',
    'parts_seg': 'segmentation',
    'sal_map': 'saliency',
    'edge_map': 'edge',
    'normal_map': 'normals',
    'depth_map': 'depth',
}

#: Colour of ignored label pixels (255), as in the VOC label images.
IGNORE_COLOUR = (224, 224, 192)
_INVALID_COLOUR = (0, 0, 0)
_DEPTH_CMAP = 'viridis'
_HEAT_CMAP = 'inferno'
_MARGIN = 8
_TITLE = 18
_LEGEND = 190
_MAX_LEGEND_ROWS = 24


@dataclass
class TaskView:
    """One task of one image, as the panel draws it.

    Attributes:
        task: The task name.
        task_type: One of ``segmentation``, ``saliency``, ``edge``,
            ``normals``, ``depth``.
        pred: The prediction, HxW (class ids, probabilities, metres) or
            3xHxW (normals); None if absent.
        gt: The ground truth in the same form; None without labels.
        classes: Class names (segmentation).
        palette: RGB colour per class (segmentation).
    """

    task: str
    task_type: str
    pred: Optional[np.ndarray] = None
    gt: Optional[np.ndarray] = None
    classes: Optional[Sequence[str]] = None
    palette: Optional[Sequence[Sequence[int]]] = None


@dataclass
class Panel:
    """A drawn panel.

    Attributes:
        image: The panel, HxWx3 uint8 RGB.
        regions: Where each picture is: ``'input'``, ``'<task>/gt'`` and
            ``'<task>/pred'`` -> ``(top, left, height, width)`` in pixels.
    """

    image: np.ndarray
    regions: dict = field(default_factory=dict)

    def crop(self, name: str) -> np.ndarray:
        """The pixels of one region (e.g. ``'semseg/pred'``)."""
        top, left, height, width = self.regions[name]
        return self.image[top:top + height, left:left + width]


# -- colour maps ----------------------------------------------------------------
def _as_numpy(data: Any) -> np.ndarray:
    if isinstance(data, Mapping):
        data = data['data']
    if hasattr(data, 'data') and not isinstance(data, (np.ndarray,
                                                       torch.Tensor)):
        data = data.data
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().float().numpy() \
            if data.is_floating_point() else data.detach().cpu().numpy()
    return np.asarray(data)


def _squeeze(arr: np.ndarray, task_type: str) -> np.ndarray:
    if task_type != 'normals':
        return squeeze_map(arr, f'a {task_type} map', 'draw_panel')
    if arr.ndim == 3 and arr.shape[0] == 3:
        return arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr.transpose(2, 0, 1).astype(np.float32)
    raise RCConfigError(f'draw_panel: normals must be 3xHxW, got '
                        f'{arr.shape}')


def _palette_array(view: TaskView) -> np.ndarray:
    values = [a for a in (view.gt, view.pred) if a is not None]
    top = max([int(a.max()) for a in values if a.size and
               np.issubdtype(a.dtype, np.integer)] + [0])
    n = len(view.classes) if view.classes else top + 1
    palette = np.asarray(view.palette, np.uint8).reshape(-1, 3) \
        if view.palette is not None and len(view.palette) >= n \
        else voc_palette(n)
    return palette


def _depth_range(view: TaskView) -> tuple[float, float]:
    """The colour scale of a depth task: the valid ground truth (> 0) and
    every finite predicted value."""
    valid = [a[np.isfinite(a) & ((a > 0) if which == 'gt' else True)]
             for which, a in (('gt', view.gt), ('pred', view.pred))
             if a is not None]
    valid = np.concatenate([v.ravel() for v in valid]) if valid else \
        np.zeros(0)
    if valid.size == 0:
        return 0.0, 1.0
    low, high = float(valid.min()), float(valid.max())
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    return low, high


def colorize(view: TaskView, which: str) -> np.ndarray:
    """One map of a task as an RGB picture (module docstring).

    Args:
        view: The task view (``pred``/``gt`` already squeezed).
        which: ``'pred'`` or ``'gt'``.

    Returns:
        HxWx3 uint8 RGB.
    """
    from matplotlib import colormaps
    arr = getattr(view, which)
    kind = view.task_type
    if kind == 'segmentation':
        palette = _palette_array(view)
        ids = np.asarray(arr).astype(np.int64)
        out = np.empty(ids.shape + (3,), np.uint8)
        known = (ids >= 0) & (ids < len(palette))
        out[known] = palette[ids[known]]
        out[~known] = IGNORE_COLOUR
        return out
    if kind == 'normals':
        vec = np.asarray(arr, np.float32)
        norm = np.linalg.norm(vec, axis=0)
        out = ((np.clip(vec, -1, 1) + 1) / 2 * 255).round().astype(np.uint8)
        out = out.transpose(1, 2, 0).copy()
        out[norm < 1e-6] = _INVALID_COLOUR
        return out
    values = np.asarray(arr, np.float64)
    if kind == 'depth':
        low, high = _depth_range(view)
        scaled = (values - low) / (high - low)
        out = colormaps[_DEPTH_CMAP](np.clip(scaled, 0, 1), bytes=True)
        out = out[..., :3].copy()
        if which == 'gt':
            out[~(np.isfinite(values) & (values > 0))] = _INVALID_COLOUR
        return out
    # saliency, edge: probabilities (pred) or {0, 1} with 255 ignored (gt)
    ignored = values > 1
    out = colormaps[_HEAT_CMAP](np.clip(values, 0, 1), bytes=True)
    out = out[..., :3].copy()
    out[ignored] = IGNORE_COLOUR
    return out


# -- the panel -------------------------------------------------------------------
def _tile_scale(height: int, width: int, max_side: int) -> float:
    side = max(height, width)
    if side > max_side:
        return max_side / side
    return float(max(1, max_side // side))


def _fit(picture: np.ndarray, size: tuple[int, int], scale: float
         ) -> np.ndarray:
    """``picture`` at the image size ``size`` (h, w), then scaled for the
    panel (integer upscaling by repetition, else area downscaling)."""
    if picture.shape[:2] != tuple(size):
        picture = cv2.resize(picture, (size[1], size[0]),
                             interpolation=cv2.INTER_NEAREST)
    if scale >= 1:
        k = int(scale)
        return np.ascontiguousarray(picture.repeat(k, 0).repeat(k, 1))
    height = max(1, round(size[0] * scale))
    width = max(1, round(size[1] * scale))
    return cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)


def _legend(fig, view: TaskView, x: int, y: int, height: int,
            size: tuple[int, int]) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch
    width, total_h = size
    if view.task_type == 'segmentation':
        palette = _palette_array(view)
        ids, counts = np.unique(np.concatenate(
            [np.asarray(a).ravel().astype(np.int64)
             for a in (view.gt, view.pred) if a is not None]),
            return_counts=True)
        order = np.argsort(-counts, kind='stable')
        rows = max(1, min(_MAX_LEGEND_ROWS, (height - 4) // 11))
        handles = []
        shown = [i for i in ids[order]]
        extra = max(0, len(shown) - rows)
        if extra:
            shown = shown[:rows - 1]
        for i in shown:
            if 0 <= i < len(palette):
                name = view.classes[i] if view.classes and \
                    i < len(view.classes) else str(i)
                colour = palette[i] / 255
            else:
                name, colour = 'ignored', np.asarray(IGNORE_COLOUR) / 255
            handles.append(Patch(facecolor=colour, edgecolor='0.5',
                                 label=f'{i}: {name}' if name != 'ignored'
                                 else name))
        if extra:
            handles.append(Patch(facecolor='none', edgecolor='none',
                                 label=f'+{extra + 1} more classes'))
        fig.legend(handles=handles, loc='upper left', fontsize=7,
                   frameon=False, handlelength=1.2, borderaxespad=0,
                   labelspacing=0.25,
                   bbox_to_anchor=(x / width, 1 - y / total_h))
        return
    if view.task_type == 'normals':
        fig.text(x / width, 1 - y / total_h,
                 'unit normal (n + 1) / 2:\nx -> red, y -> green,\n'
                 'z -> blue; black: invalid', fontsize=7, va='top')
        return
    if view.task_type == 'depth':
        low, high = _depth_range(view)
        norm, cmap, label = Normalize(low, high), _DEPTH_CMAP, 'depth (m)'
    else:
        norm, cmap, label = Normalize(0, 1), _HEAT_CMAP, 'probability'
    cax = fig.add_axes([x / width, 1 - (y + height) / total_h, 12 / width,
                        height / total_h])
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def draw_panel(image: np.ndarray, views: Sequence[TaskView], *,
               title: Optional[str] = None, max_side: int = 256) -> Panel:
    """Draws one image's panel.

    The input is at the top left; below it one row per task: ground truth
    and prediction side by side (only the prediction when ``gt`` is None),
    then the task's legend or colour bar.

    Args:
        image: The input, HxWx3 uint8 RGB.
        views: The tasks (see :func:`sample_task_views`).
        title: Text above the input (e.g. the image name).
        max_side: Longest side of each picture in the panel (smaller images
            are enlarged by an integer factor, larger ones reduced).

    Returns:
        The panel and where each picture is.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise RCConfigError(f'draw_panel: the image must be HxWx3 RGB, got '
                            f'{image.shape}')
    size = image.shape[:2]
    scale = _tile_scale(size[0], size[1], max_side)
    tile_in = _fit(image.astype(np.uint8), size, scale)
    tile_h, tile_w = tile_in.shape[:2]
    with_gt = any(v.gt is not None for v in views)
    columns = 2 if with_gt else 1
    width = _MARGIN + columns * (tile_w + _MARGIN) + _LEGEND
    row_h = _TITLE + tile_h + _MARGIN
    height = _MARGIN + (1 + len(views)) * row_h
    fig = Figure(figsize=(width / 100, height / 100), dpi=100,
                 facecolor='white')
    FigureCanvasAgg(fig)
    regions = {}

    def place(picture, name, top, left, caption):
        fig.text(left / width, 1 - (top - _TITLE + 3) / height, caption,
                 fontsize=8, va='top', ha='left')
        fig.figimage(picture, xo=left, yo=height - top - picture.shape[0],
                     origin='upper')
        regions[name] = (top, left, picture.shape[0], picture.shape[1])

    top = _MARGIN + _TITLE
    place(tile_in, 'input', top, _MARGIN,
          title if title else f'input ({size[1]}x{size[0]})')
    for row, view in enumerate(views, start=1):
        top = _MARGIN + row * row_h + _TITLE
        left = _MARGIN
        for which, caption in (('gt', 'ground truth'), ('pred',
                                                        'prediction')):
            arr = getattr(view, which)
            if arr is None:
                if which == 'gt' and with_gt:
                    fig.text(left / width, 1 - (top + 4) / height,
                             f'{view.task}: no ground truth', fontsize=8,
                             va='top', color='0.4')
                    left += tile_w + _MARGIN
                continue
            place(_fit(colorize(view, which), size, scale),
                  f'{view.task}/{which}', top, left,
                  f'{view.task}: {caption}')
            left += tile_w + _MARGIN
        _legend(fig, view, _MARGIN + columns * (tile_w + _MARGIN) + 4, top,
                tile_h, (width, height))
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return Panel(image=pixels, regions=regions)


def save_panel(panel: Panel, path: str) -> None:
    """Writes a panel as PNG (folders created)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, panel.image[..., ::-1]):
        raise OSError(f'could not write the picture {path}')


# -- from data samples ----------------------------------------------------------
def _sample_get(sample: Any, name: str) -> Any:
    if isinstance(sample, Mapping):
        return sample.get(name)
    return sample.get(name) if hasattr(sample, 'get') else None


def _meta_classes(dataset_meta: Optional[Mapping], task: str,
                  pred_field: str) -> tuple:
    if not dataset_meta:
        return None, None
    classes = (dataset_meta.get('task_classes') or {}).get(task)
    palette = (dataset_meta.get('task_palettes') or {}).get(task)
    if classes is None and pred_field == 'pred_sem_seg':
        classes, palette = dataset_meta.get('classes'), \
            dataset_meta.get('palette')
    return classes, palette


def sample_task_views(sample: Any,
                      task_meta: Optional[Mapping[str, Mapping]] = None,
                      dataset_meta: Optional[Mapping] = None
                      ) -> list[TaskView]:
    """The task views of one data sample (a ``SegDataSample`` or the dict
    mmengine's evaluator passes).

    Args:
        sample: The sample with ``pred_*`` (and ``gt_*``) fields.
        task_meta: The model's ``task_meta`` (task -> ``task_type``,
            ``gt_field``, ``pred_field``, ``classes``, ``palette``); without
            it the tasks are read off the sample's ``pred_*`` fields (named
            as the datasets name them: ``pred_sem_seg`` is ``semseg``).
        dataset_meta: ``classes``/``palette`` (of ``pred_sem_seg``) and
            ``task_classes``/``task_palettes``, used when ``task_meta``
            gives no classes.

    Returns:
        One view per task that has a prediction in the sample.
    """
    if task_meta:
        entries = [(task, dict(info)) for task, info in task_meta.items()]
    else:
        from .transforms.formatting import TASK_GT_PRED_FIELDS
        names = {pred: task for task, (_, pred) in
                 TASK_GT_PRED_FIELDS.items()}
        keys = sample.keys() if hasattr(sample, 'keys') else []
        entries = []
        for key in keys:
            suffix = key[len('pred_'):]
            if key.startswith('pred_') and suffix in FIELD_TASK_TYPES:
                entries.append((names.get(key, suffix), dict(
                    task_type=FIELD_TASK_TYPES[suffix], pred_field=key,
                    gt_field='gt_' + suffix)))
    views = []
    for task, info in entries:
        pred = _sample_get(sample, info['pred_field'])
        if pred is None:
            continue
        kind = info['task_type']
        gt = _sample_get(sample, info.get('gt_field') or '')
        classes, palette = info.get('classes'), info.get('palette')
        if kind == 'segmentation' and classes is None:
            classes, palette = _meta_classes(dataset_meta, task,
                                             info['pred_field'])
        views.append(TaskView(
            task=task, task_type=kind,
            pred=_squeeze(_as_numpy(pred), kind),
            gt=None if gt is None else _squeeze(_as_numpy(gt), kind),
            classes=classes, palette=palette))
    return views


def write_raw(out_dir: str, sample: Any, name: str) -> None:
    """Writes every ``pred_*`` field of ``sample`` as
    ``out_dir/<field>/<name>.png`` in ``MTPredictionSaverHook``'s
    encodings (class ids as 8-bit indices, probabilities x255, normals as
    RGB, depth as 16-bit millimetres)."""
    from .engine import write_prediction_png
    for key in list(sample.keys()):
        if key.startswith('pred_'):
            value = _sample_get(sample, key)
            data = value['data'] if isinstance(value, Mapping) else \
                value.data
            write_prediction_png(out_dir, key, name, data)


# -- showing on screen ----------------------------------------------------------
def check_display() -> None:
    """Raises :class:`RCConfigError` unless a window can be opened
    (``--show``)."""
    if os.name == 'posix' and not (os.environ.get('DISPLAY')
                                   or os.environ.get('WAYLAND_DISPLAY')):
        raise RCConfigError('--show needs a display (DISPLAY is not set); '
                            'write the pictures with --show-dir DIR instead')
    try:
        cv2.namedWindow('rc_adapter')
        cv2.destroyWindow('rc_adapter')
    except cv2.error:
        raise RCConfigError('--show: this OpenCV build cannot open windows '
                            '(opencv-python-headless?); write the pictures '
                            'with --show-dir DIR instead') from None


def show_panel(panel: Panel, name: str, wait_time: float) -> None:
    """Shows a panel in a window for ``wait_time`` seconds (0: until a key
    is pressed)."""
    cv2.imshow(name, panel.image[..., ::-1])
    cv2.waitKey(int(wait_time * 1000))


def _image_of(sample: Any) -> np.ndarray:
    import mmcv
    path = _sample_get(sample, 'img_path')
    if path is None and hasattr(sample, 'metainfo'):
        path = sample.metainfo.get('img_path')
    if path is None:
        raise RCConfigError('a test sample has no img_path; cannot draw its '
                            'input image')
    return mmcv.imread(path, channel_order='rgb')


def _image_name(sample: Any, index: int) -> str:
    path = _sample_get(sample, 'img_path')
    if path is None and hasattr(sample, 'metainfo'):
        path = sample.metainfo.get('img_path')
    return osp.splitext(osp.basename(path))[0] if path else f'{index:06d}'


@HOOKS.register_module()
class MTVisualizationHook(Hook):
    """Writes one panel per test image (``<out_dir>/<image>.png``) and
    the raw encodings of every prediction (``<out_dir>/raw/<field>/
    <image>.png``); optionally shows the panels.

    Args:
        out_dir (str, optional): Output folder (``--show-dir``).
        show (bool): Show each panel in a window (``--show``).
        wait_time (float): Seconds each shown panel stays (``--wait-time``).
        raw (bool): Also write the raw encodings. Defaults to True.
        max_side (int): Longest side of each picture in a panel.
    """

    def __init__(self, out_dir: Optional[str] = None, show: bool = False,
                 wait_time: float = 2.0, raw: bool = True,
                 max_side: int = 256) -> None:
        self.out_dir = out_dir
        self.show = show
        self.wait_time = wait_time
        self.raw = raw
        self.max_side = max_side
        self._task_meta = None
        self._dataset_meta = None

    def before_test(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        self._task_meta = getattr(model, 'task_meta', None)
        dataset = getattr(runner.test_dataloader, 'dataset', None)
        self._dataset_meta = getattr(dataset, 'metainfo', None)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None,
                        outputs=None) -> None:
        for index, sample in enumerate(outputs or []):
            name = _image_name(sample, batch_idx * 1000 + index)
            views = sample_task_views(sample, self._task_meta,
                                      self._dataset_meta)
            panel = draw_panel(_image_of(sample), views, title=name,
                               max_side=self.max_side)
            if self.out_dir:
                save_panel(panel, osp.join(self.out_dir, name + '.png'))
                if self.raw:
                    write_raw(osp.join(self.out_dir, 'raw'), sample, name)
            if self.show:
                show_panel(panel, name, self.wait_time)


@VISUALIZERS.register_module()
class MTSegLocalVisualizer(SegLocalVisualizer):
    """mmseg's ``SegLocalVisualizer`` drawing the multi-task panel.

    mmseg's ``SegVisualizationHook`` (``tools/test.py --show/--show-dir`` of
    mmseg itself) calls :meth:`add_datasample` with each test sample; the
    panel of :func:`draw_panel` goes to the visualizer's backends (with
    ``save_dir``, ``<save_dir>/<timestamp>/vis_data/vis_image/``) or, with
    ``out_file``, to that file. Class names come from the dataset's
    metainfo (``task_classes``/``task_palettes``, ``classes``/``palette``),
    which the runner sets.
    """

    def add_datasample(self, name: str, image: np.ndarray,
                       data_sample: Optional[Any] = None,
                       draw_gt: bool = True, draw_pred: bool = True,
                       show: bool = False, wait_time: float = 0,
                       out_file: Optional[str] = None, step: int = 0,
                       with_labels: Optional[bool] = True) -> None:
        """Draws ``data_sample``'s panel (``image`` is RGB)."""
        views = sample_task_views(data_sample, None, self.dataset_meta) \
            if data_sample is not None else []
        if not draw_gt:
            for view in views:
                view.gt = None
        panel = draw_panel(image, views, title=name)
        self.set_image(panel.image)
        if show:
            self.show(panel.image, win_name=name, wait_time=wait_time)
        if out_file is not None:
            save_panel(panel, out_file)
        else:
            self.add_image(name, panel.image, step)
