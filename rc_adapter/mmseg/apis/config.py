"""Loading a config the way every tool does, and restricting it to a run."""
from __future__ import annotations

import copy
import os
import os.path as osp
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

from mmengine.config import Config
from mmengine.registry import init_default_scope

from ...core.bank import TaskBank
from ...core.errors import BankError, RCConfigError, UnknownTaskError

__all__ = ['read_config', 'load_config', 'set_data_root', 'configure_run',
           'iter_dataset_cfgs', 'config_heads', 'check_tasks', 'open_bank']

_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def read_config(path: str) -> Config:
    """Reads a config file (any mmseg config).

    Args:
        path: The ``.py`` config.

    Returns:
        The config.

    Raises:
        RCConfigError: the file does not exist or is not valid Python.
    """
    if not osp.isfile(path):
        raise RCConfigError(f'config file {path} does not exist')
    try:
        return Config.fromfile(path)
    except SyntaxError as err:
        raise RCConfigError(f'config file {path} is not valid Python: '
                            f'{err}') from None


def load_config(path: str, *, data_root: Optional[str] = None,
                work_dir: Optional[str] = None,
                cfg_options: Optional[dict[str, Any]] = None,
                launcher: str = 'none',
                require_rc_model: bool = True) -> Config:
    """Loads an mmseg config the way every tool does.

    Args:
        path: Config file.
        data_root: Points every dataloader at this folder (``--data-root``).
        work_dir: Defaults to ``work_dirs/<config name>``.
        cfg_options: ``--cfg-options`` overrides.
        launcher: ``'none'`` or ``'pytorch'`` (torchrun).
        require_rc_model: Refuse configs whose ``model.type`` is not
            ``RCMultiTaskSegmentor`` (``tools/convert_to_rc.py`` reads only
            ``model.backbone`` and ``model.data_preprocessor``, so it takes
            any mmseg config).

    Returns:
        The loaded config, with the default registry scope set.

    Raises:
        RCConfigError: missing or unreadable file, missing data root, or not
            an rc_adapter config.
    """
    cfg = read_config(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs',
                                osp.splitext(osp.basename(path))[0])
    if data_root is not None:
        set_data_root(cfg, data_root)
    if require_rc_model and cfg.get('model', {}).get('type') != \
            'RCMultiTaskSegmentor':
        raise RCConfigError(f'{path} is not an rc_adapter config: '
                            f'model.type must be RCMultiTaskSegmentor')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return cfg


def iter_dataset_cfgs(cfg: Config, loaders: Sequence[str] = _LOADERS
                      ) -> Iterator[dict]:
    """Yields the leaf dataset configs of the config's dataloaders.

    Wrappers are looked through: ``ConcatDataset`` (``datasets``) and
    ``RepeatDataset``-style wrappers (``dataset``).

    Args:
        cfg: The config.
        loaders: Dataloader keys to visit. Defaults to train, val and test.
    """
    seen = set()
    for key in loaders:
        loader = cfg.get(key)
        if not loader or 'dataset' not in loader:
            continue
        stack = [loader['dataset']]
        while stack:
            dataset = stack.pop()
            if id(dataset) in seen:  # test_dataloader = val_dataloader
                continue
            seen.add(id(dataset))
            if 'datasets' in dataset:
                stack.extend(dataset['datasets'])
            elif 'dataset' in dataset:
                stack.append(dataset['dataset'])
            else:
                yield dataset


def set_data_root(cfg: Config, root: str) -> None:
    """Points every dataset of ``cfg`` (and ``cfg.data_root``) at ``root``.

    Raises:
        RCConfigError: ``root`` is not a folder.
    """
    if not osp.isdir(root):
        raise RCConfigError(f'data root {root} does not exist or is not a '
                            f'folder')
    cfg.data_root = root
    for dataset in iter_dataset_cfgs(cfg):
        dataset['data_root'] = root


def config_heads(cfg: Config) -> dict[str, Any]:
    """The config's decode heads (task -> head config)."""
    return cfg.model.get('decode_heads', {})


def check_tasks(cfg: Config, tasks: Iterable[str], what: str = 'task'
                ) -> None:
    """Raises :class:`UnknownTaskError` for tasks without a decode head."""
    heads = config_heads(cfg)
    unknown = [t for t in tasks if t not in heads]
    if unknown:
        raise UnknownTaskError(
            f'unknown {what} {", ".join(map(repr, unknown))}: the config '
            f'defines heads for {sorted(heads)}')


def configure_run(cfg: Config, *, tasks: Sequence[str],
                  train_tasks: Sequence[str],
                  bank: Optional[str] = None) -> Config:
    """Restricts a config to ``tasks`` (built, loaded, evaluated) and
    ``train_tasks`` (trained), optionally on a task bank.

    Args:
        cfg: The config (changed in place).
        tasks: Tasks to build; datasets load and evaluators measure these.
        train_tasks: Tasks trained in this run.
        bank: Task bank folder the model loads from.

    Returns:
        ``cfg``.

    Raises:
        UnknownTaskError: a task has no decode head.
    """
    check_tasks(cfg, tasks)
    cfg.model.tasks = list(tasks)
    cfg.model.train_tasks = list(train_tasks)
    cfg.model.bank = bank
    for dataset in iter_dataset_cfgs(cfg):
        dataset['tasks'] = list(tasks)
    for key in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(key)
        if evaluator is None:
            continue
        metrics = evaluator if isinstance(evaluator, list) else [evaluator]
        cfg[key] = [m for m in metrics if m.get('prefix') in tasks]
    if not cfg.get('test_dataloader') and cfg.get('val_dataloader'):
        cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    if not cfg.get('test_evaluator') and cfg.get('val_evaluator'):
        cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
    return cfg


def open_bank(path: str) -> TaskBank:
    """Opens a task bank, with a hint when the folder does not exist.

    Raises:
        BankError: ``path`` is not a bank.
    """
    if not osp.isdir(path):
        raise BankError(f'task bank {path} does not exist; create it with '
                        f'tools/convert_to_rc.py')
    return TaskBank(os.fspath(path))
