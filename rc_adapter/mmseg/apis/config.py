"""Loading a config the way every tool does, and restricting it to a run."""
from __future__ import annotations

import contextlib
import copy
import os
import os.path as osp
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

from mmengine.config import Config
from mmengine.registry import init_default_scope

from ...core.bank import TaskBank
from ...core.errors import BankError, RCConfigError, RCError, UnknownTaskError
from ...utils.config import iter_dataset_cfgs
from ..evaluation.multitask import evaluator_metrics

__all__ = ['read_config', 'load_config', 'set_data_root', 'configure_run',
           'iter_dataset_cfgs', 'config_heads', 'check_tasks', 'open_bank',
           'check_outputs', 'protected_inputs', 'component_error',
           'component_errors', 'enable_amp', 'AMP_OPTIM_WRAPPER']



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
        tasks: Tasks to build; datasets load and evaluators measure these
            (the evaluator keeps its form: a list of per-task metrics or an
            ``MTMultiTaskEvaluator``).
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
        metrics = [m for m in evaluator_metrics(evaluator)
                   if m.get('prefix') in tasks]
        if isinstance(evaluator, dict) and 'metrics' in evaluator:
            cfg[key] = dict(copy.deepcopy(evaluator), metrics=metrics)
        else:
            cfg[key] = metrics
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


# -- outputs never land on what the user owns --------------------------------
def _real(path: str) -> str:
    return osp.realpath(osp.abspath(os.fspath(path)))


def _same_file(a: str, b: str) -> bool:
    """Same path after resolving symlinks, or the same inode (hard link)."""
    if _real(a) == _real(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    real, root = _real(path), _real(folder)
    return real != root and real.startswith(root.rstrip(os.sep) + os.sep)


def check_outputs(outputs: Mapping[str, Optional[str]],
                  protected: Mapping[str, Optional[str]]) -> None:
    """Refuses, before any work, output paths that would write over what
    the user owns.

    An output is refused when it is a protected path (after resolving
    symlinks, or the same file through a hard link) or lies inside a
    protected folder (the task bank, the data root). Outputs may contain
    protected paths (e.g. ``--work-dir .`` holding the config): nothing
    there is overwritten by name.

    Args:
        outputs: What a tool writes, e.g. ``{'--out': 'r.json',
            '--work-dir': 'work_dirs/x'}``; None values are skipped.
        protected: What the user owns, e.g. ``{'the task bank': BANK,
            'the config': CONFIG, 'the checkpoint': CKPT, 'the data root':
            DATA}``; None values are skipped.

    Raises:
        RCConfigError: naming the output and the protected path.
    """
    for name, path in outputs.items():
        if not path:
            continue
        for owner, owned in protected.items():
            if not owned:
                continue
            if _same_file(path, owned):
                raise RCConfigError(
                    f'refusing to write {name} {path}: it is {owner} '
                    f'{owned}; choose another output path')
            if osp.isdir(owned) and _inside(path, owned):
                raise RCConfigError(
                    f'refusing to write {name} {path}: it is inside {owner} '
                    f'{owned}; choose an output path outside it')


def protected_inputs(cfg: Optional[Config] = None, *,
                     config_path: Optional[str] = None,
                     bank: Optional[str] = None,
                     checkpoint: Optional[str] = None,
                     extra: Optional[Mapping[str, Optional[str]]] = None
                     ) -> dict[str, str]:
    """What a tool run reads and must never overwrite: the task bank, the
    config file, the checkpoint (``checkpoint`` or ``cfg.load_from``) and
    every data root of the config's datasets.

    Args:
        cfg: The loaded config (for its data roots and ``load_from``).
        config_path: The config file.
        bank: The task bank folder.
        checkpoint: A checkpoint the tool loads.
        extra: More ``{description: path}`` entries (e.g. input images).

    Returns:
        ``{description: path}`` for :func:`check_outputs`.
    """
    found = {}
    if bank:
        found['the task bank'] = bank
    if config_path:
        found['the config'] = config_path
    load_from = checkpoint or (cfg.get('load_from') if cfg else None)
    if isinstance(load_from, str) and load_from:
        found['the checkpoint'] = load_from
    if cfg is not None:
        roots = [cfg.get('data_root')] + [d.get('data_root') for d in
                                          iter_dataset_cfgs(cfg)]
        seen = set()
        for root in roots:
            if isinstance(root, str) and root and _real(root) not in seen:
                seen.add(_real(root))
                key = 'the data root' if len(seen) == 1 else \
                    f'the data root #{len(seen)}'
                found[key] = root
    for key, value in (extra or {}).items():
        if value:
            found[key] = value
    return found


# -- mmengine/mmseg components that refuse a configuration -------------------
def _package_dirs() -> tuple[str, ...]:
    import importlib.util
    dirs = []
    for name in _MM_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            dirs.append(osp.dirname(osp.realpath(spec.origin)) + os.sep)
    return tuple(dirs)


_MM_PACKAGES = ('mmengine', 'mmseg', 'mmcv')
_REGISTRY_MISS = re.compile(r'(\S+) is not in the (\S+) registry')
_BAD_ARGUMENTS = re.compile(
    r'(got an unexpected keyword argument|missing \d+ required '
    r'(positional|keyword-only) argument|takes \d+ positional argument|'
    r'got multiple values for)')
#: Hints for components users commonly misconfigure.
_HINTS = {
    'AmpOptimWrapper': 'mmengine\'s AmpOptimWrapper needs a GPU; pass --amp '
                       '(rc_adapter\'s AMP optim wrapper: bfloat16 on a CPU, '
                       'float16 on a GPU) instead of setting '
                       'optim_wrapper.type',
}


def _frames(err: BaseException) -> list:
    import traceback
    return [frame for frame, _ in traceback.walk_tb(err.__traceback__)]


def _built_type(frames: list) -> Optional[str]:
    """The type the innermost mmengine ``build_from_cfg`` call was
    building, if the error passed through one."""
    for frame in reversed(frames):
        if frame.f_code.co_name == 'build_from_cfg' and \
                'mmengine' in frame.f_code.co_filename:
            obj_type = frame.f_locals.get('obj_type')
            obj_cls = frame.f_locals.get('obj_cls')
            if isinstance(obj_type, str):
                return obj_type
            if obj_cls is not None:
                return getattr(obj_cls, '__name__', str(obj_cls))
            return '?'
    return None


def component_error(err: BaseException) -> Optional[RCConfigError]:
    """The :class:`RCConfigError` for an exception by which an mmengine /
    mmseg / mmcv component refused the configuration, or None for any other
    exception (a bug keeps its traceback).

    User errors are exactly:

    * a ``KeyError`` of mmengine's registry: an unknown ``type`` (the type
      and the registry are named);
    * a ``TypeError`` binding a component's arguments while mmengine builds
      it from the config (an unknown or missing argument);
    * an ``AssertionError`` or ``ValueError`` raised in mmengine, mmseg or
      mmcv code while mmengine builds a component from the config (their
      argument checks, e.g. ``AmpOptimWrapper`` on a machine without a
      GPU).

    Args:
        err: The exception.

    Returns:
        The translated error, or None.
    """
    if isinstance(err, RCError):
        return None
    frames = _frames(err)
    if not frames:
        return None
    origin = frames[-1].f_code.co_filename
    in_mm = osp.realpath(origin).startswith(_package_dirs())
    text = str(err.args[0]) if err.args else str(err)
    built = _built_type(frames)
    if isinstance(err, KeyError):
        found = _REGISTRY_MISS.search(text)
        if not (found and in_mm):
            return None
        name, registry = found.group(1), found.group(2)
        return RCConfigError(
            f'unknown type {name!r}: it is not in the {registry} registry '
            f'(check the spelling in the config; a type from another package '
            f'needs that package in custom_imports)')
    if built is None:
        return None
    if isinstance(err, TypeError) and _BAD_ARGUMENTS.search(text):
        message = f'wrong arguments for {built} in the config: {text}'
    elif isinstance(err, (AssertionError, ValueError)) and in_mm:
        message = (f'{built} refused the configuration: '
                   f'{text or type(err).__name__}')
    else:
        return None
    hint = _HINTS.get(built)
    return RCConfigError(f'{message} ({hint})' if hint else message)


@contextlib.contextmanager
def component_errors() -> Iterator[None]:
    """Turns the exceptions :func:`component_error` recognises into
    :class:`RCConfigError` (one paragraph in the tools); anything else
    propagates unchanged."""
    try:
        yield
    except (KeyError, TypeError, AssertionError, ValueError) as err:
        translated = component_error(err)
        if translated is None:
            raise
        raise translated from err


# -- mixed precision ----------------------------------------------------------
#: The registered AMP optim wrapper of rc_adapter (bfloat16 on CPUs).
AMP_OPTIM_WRAPPER = 'MTAmpOptimWrapper'


def enable_amp(cfg: Config) -> Config:
    """Turns on automatic mixed precision (``--amp``): the optim wrapper
    becomes :data:`AMP_OPTIM_WRAPPER`, bfloat16 on a CPU, float16 with
    dynamic loss scaling on a GPU.

    Args:
        cfg: The config (changed in place).

    Returns:
        ``cfg``.

    Raises:
        RCConfigError: the config has no ``optim_wrapper``, or one of
            another type than mmengine's ``OptimWrapper`` (or an AMP
            wrapper already).
    """
    import torch
    wrapper = cfg.get('optim_wrapper')
    if not wrapper:
        raise RCConfigError('--amp: the config has no optim_wrapper')
    kind = wrapper.get('type', 'OptimWrapper')
    if kind not in ('OptimWrapper', 'AmpOptimWrapper', AMP_OPTIM_WRAPPER):
        raise RCConfigError(
            f'--amp works with optim_wrapper.type OptimWrapper, the config '
            f'has {kind!r}')
    wrapper['type'] = AMP_OPTIM_WRAPPER
    if torch.cuda.is_available():
        wrapper.setdefault('dtype', 'float16')
        wrapper.setdefault('loss_scale', 'dynamic')
    else:
        wrapper['dtype'] = 'bfloat16'
        wrapper.pop('loss_scale', None)
    return cfg
