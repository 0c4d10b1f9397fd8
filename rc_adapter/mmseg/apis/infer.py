"""Predicting every task of a bank on the user's own pictures, drawn as the
panels of ``tools/test.py --show-dir`` (without ground truth)."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config

from ...core.errors import RCConfigError
from .config import (check_outputs, component_errors, configure_run,
                     protected_inputs)
from .evaluate import resolve_tasks

__all__ = ['infer', 'IMAGE_EXTENSIONS', 'list_images']

#: Files taken as pictures when a folder is given.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff',
                    '.webp')


def list_images(source: str) -> list[tuple[str, str]]:
    """The pictures of ``source``: ``[(path, name)]`` for a file, or every
    picture below a folder (sorted), named by their path relative to it
    without the extension.

    Raises:
        RCConfigError: ``source`` does not exist or holds no picture.
    """
    if osp.isfile(source):
        return [(source, osp.splitext(osp.basename(source))[0])]
    if not osp.isdir(source):
        raise RCConfigError(f'{source}: no such picture or folder')
    found = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = osp.join(root, name)
                found.append((path, osp.splitext(
                    osp.relpath(path, source))[0]))
    if not found:
        raise RCConfigError(f'{source} holds no picture '
                            f'({", ".join(IMAGE_EXTENSIONS)})')
    return found


def infer(cfg: Config, source: str, *, out_dir: str,
          bank: Optional[str] = None, checkpoint: Optional[str] = None,
          tasks: Optional[Sequence[str]] = None, show: bool = False,
          wait_time: float = 2.0, raw: bool = True,
          device: str = 'cpu') -> list[str]:
    """Predicts every task on the pictures of ``source`` and writes one
    panel per picture (``out_dir/<name>.png``: the picture and each task's
    prediction with its colour map and legend) and the raw encodings
    (``out_dir/raw/<field>/<name>.png``).

    The model is built as mmseg's ``init_model`` builds it, serving the
    bank (``model.bank``; every stored task with a head in the config,
    none trained) or loading ``checkpoint``; the pictures go through the
    config's ``test_pipeline`` with mmseg's ``inference_model``.

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`
            (changed in place).
        source: A picture or a folder of pictures.
        out_dir: Where the panels go.
        bank: Task bank folder.
        checkpoint: An mmengine checkpoint of the config (instead of
            ``bank``).
        tasks: Tasks to predict (default: every bank task the config has a
            head for, or the config's tasks).
        show: Also show each panel in a window.
        wait_time: Seconds each shown panel stays.
        raw: Also write the raw encodings.
        device: Torch device.

    Returns:
        The panel files written.

    Raises:
        RCConfigError: no picture, an output over an input, or neither
            ``bank`` nor ``checkpoint``.
        BankError: the bank is missing, damaged or lacks a task.
        CheckpointError: ``checkpoint`` is missing or unsafe.
    """
    import mmcv
    from mmseg.apis import inference_model, init_model

    from .. import visualization
    if (bank is None) == (checkpoint is None):
        raise RCConfigError('give the task bank (--bank) or a checkpoint '
                            '(--checkpoint), one of them')
    images = list_images(source)
    check_outputs({'--out-dir': out_dir}, protected_inputs(
        cfg, config_path=cfg.filename, bank=bank, checkpoint=checkpoint,
        extra={'the input pictures': source}))
    if show:
        visualization.check_display()
    tasks = resolve_tasks(cfg, bank, tasks)
    configure_run(cfg, tasks=tasks, train_tasks=[], bank=bank)
    if not cfg.get('test_pipeline'):
        raise RCConfigError('the config has no test_pipeline (mmseg\'s '
                            'inference_model runs it on each picture)')
    with component_errors():
        model = init_model(cfg, checkpoint, device=device)
    task_meta = getattr(model, 'task_meta', None)
    written = []
    for path, name in images:
        image = mmcv.imread(path, channel_order='rgb')
        if image is None:
            raise RCConfigError(f'{path}: not a readable picture')
        with component_errors():
            sample = inference_model(model, path)
        views = visualization.sample_task_views(sample, task_meta,
                                                model.dataset_meta)
        panel = visualization.draw_panel(image, views, title=name)
        target = osp.join(out_dir, name + '.png')
        visualization.save_panel(panel, target)
        written.append(target)
        if raw:
            visualization.write_raw(osp.join(out_dir, 'raw'), sample, name)
        if show:
            visualization.show_panel(panel, name, wait_time)
    return written
