"""Runner glue: an optimizer constructor that sees only trainable tensors,
mixed precision on any device, a hook that stops a diverging run, a hook
that saves predictions and the runner that puts them together."""
from __future__ import annotations

import copy
import math
import os
import os.path as osp
from collections.abc import Mapping
from typing import Any, Optional, Union

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.optim import (AmpOptimWrapper, DefaultOptimWrapperConstructor,
                            OptimWrapper)
from mmengine.runner import Runner
from mmengine.visualization import Visualizer
from mmseg.registry import (HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                            RUNNERS)

from ..core.errors import RCConfigError, RCError
from .checkpoint import load_checkpoint_dict, safe_checkpoint_globals

__all__ = ['TrainableOnlyOptimWrapperConstructor', 'MTAmpOptimWrapper',
           'NonFiniteLossError', 'MTNonFiniteLossHook',
           'MTPredictionSaverHook', 'write_prediction_png', 'RCRunner']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableOnlyOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, keeping only parameters that
    require grad.

    Frozen tensors (the shared filter banks, other tasks) then never enter
    the optimizer, so no momentum buffer or weight decay can touch them.
    """

    def __call__(self, model):
        wrapper = super().__call__(model)
        optimizer = wrapper.optimizer
        groups = []
        for group in optimizer.param_groups:
            group['params'] = [p for p in group['params'] if p.requires_grad]
            if group['params']:
                groups.append(group)
        if not groups:
            raise RCConfigError('the model has no trainable parameters; '
                                'check train_tasks in the config')
        optimizer.param_groups = groups
        return wrapper


def _accelerator_available() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@OPTIM_WRAPPERS.register_module()
class MTAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` that also runs on CPUs.

    With a GPU (or NPU/MLU/MUSA) it *is* ``AmpOptimWrapper``: autocast to
    ``dtype`` (float16 by default, or bfloat16) with a ``GradScaler``
    configured by ``loss_scale``. On a CPU, where mmengine's class asserts
    a GPU, it autocasts to bfloat16 (the only dtype of CPU autocast) and
    uses no loss scaling: bfloat16 has float32's exponent range, so
    gradients do not underflow; ``loss_scale`` is ignored. The RC layers
    keep their frozen banks in their stored dtype and compose the weights
    in the autocast dtype (``docs/method.md``).

    ``RCRunner`` builds this class where a config asks for
    ``type='AmpOptimWrapper'``, so RC configs (and ``--amp``) train with
    mixed precision on every device.

    Args:
        loss_scale: As for ``AmpOptimWrapper`` (GPU only).
        dtype (str | torch.dtype, optional): ``'float16'`` or
            ``'bfloat16'`` (GPU; default float16), ``'bfloat16'`` or None
            (CPU).
        use_fsdp (bool): As for ``AmpOptimWrapper`` (GPU only).
        **kwargs: ``OptimWrapper`` arguments.

    Raises:
        RCConfigError: a dtype other than bfloat16 on a CPU.
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Union[str, torch.dtype, None] = None,
                 use_fsdp: bool = False, **kwargs) -> None:
        if _accelerator_available():
            super().__init__(loss_scale=loss_scale, dtype=dtype,
                             use_fsdp=use_fsdp, **kwargs)
            return
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, dtype)
        if dtype not in (None, torch.bfloat16):
            raise RCConfigError(
                f'optim_wrapper.dtype={dtype!r}: mixed precision on a CPU '
                f'autocasts to bfloat16 only; set '
                f"optim_wrapper.dtype='bfloat16' (or leave it unset)")
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = None
        self.cast_dtype = torch.bfloat16

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if self.loss_scaler is None:
            return OptimWrapper.backward(self, loss, **kwargs)
        return super().backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        if self.loss_scaler is None:
            return OptimWrapper.step(self, **kwargs)
        return super().step(**kwargs)

    def state_dict(self) -> dict:
        if self.loss_scaler is None:
            return OptimWrapper.state_dict(self)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if self.loss_scaler is None:
            # A checkpoint written on a GPU: the scaler's state has no use.
            state_dict = dict(state_dict)
            state_dict.pop('loss_scaler', None)
        super().load_state_dict(state_dict)


class NonFiniteLossError(RCError, FloatingPointError):
    """Training produced a NaN or infinite loss (names task, iteration and
    value)."""


@HOOKS.register_module()
class MTNonFiniteLossHook(Hook):
    """Stops training at the first iteration whose loss is not finite.

    After every training iteration the logged losses (``'<task>.loss_*'``
    and their total ``'loss'``) are checked; a NaN or infinite value raises
    :class:`NonFiniteLossError` naming the task, the iteration and the value,
    before any later hook of that iteration (checkpointing, logging) runs,
    so a diverged run ends with an error instead of a saved task. Its
    priority runs it first after each iteration. ``RCRunner`` adds it to
    every run (unless the config lists it in ``custom_hooks``).
    """

    priority = 'VERY_HIGH'

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Any = None,
                         outputs: Optional[Mapping] = None) -> None:
        for name, value in (outputs or {}).items():
            if name == 'loss':
                continue
            self._check(runner, name, value)
        if outputs and 'loss' in outputs:
            self._check(runner, 'loss', outputs['loss'])

    @staticmethod
    def _check(runner, name: str, value: Any) -> None:
        if 'loss' not in name:
            return
        number = float(value.detach().float().mean()) if torch.is_tensor(
            value) else float(value)
        if math.isfinite(number):
            return
        task = name.split('.', 1)[0] if '.' in name else None
        which = f'task {task!r}, {name}' if task else name
        raise NonFiniteLossError(
            f'training stopped at iteration {runner.iter + 1}: the loss is '
            f'not finite ({which} = {number}). The run diverged, so nothing '
            f'of it is kept as a task; lower the learning rate '
            f'(optim_wrapper.optimizer.lr), add gradient clipping '
            f'(optim_wrapper.clip_grad=dict(max_norm=...)) or check the '
            f'labels of this task, then train again')


def write_prediction_png(out_dir: str, field: str, name: str,
                         data: torch.Tensor) -> str:
    """Writes one predicted map as ``out_dir/<field>/<name>.png``.

    Encodings: normals (``pred_normal_map``) as RGB ``(n + 1) / 2 * 255``,
    depth (``pred_depth_map``) as 16-bit millimetres, other floating-point
    maps (probabilities) as 8-bit ``x255``, class maps as 8-bit indices.

    Args:
        out_dir: Output folder (``<field>/`` is created in it).
        field: The data-sample field, e.g. ``'pred_sem_seg'``.
        name: The file name without extension.
        data: The field's tensor, ``CxHxW``.

    Returns:
        The path written.
    """
    data = data.detach().cpu()
    if field == 'pred_normal_map':
        image = ((data.permute(1, 2, 0).numpy() + 1) / 2 * 255)
        image = image.clip(0, 255).round().astype(np.uint8)[..., ::-1]
    elif field == 'pred_depth_map':
        image = (data[0].numpy() * 1000).clip(0, 65535).round()
        image = image.astype(np.uint16)
    elif data.is_floating_point():
        image = (data[0].numpy() * 255).clip(0, 255).round()
        image = image.astype(np.uint8)
    else:
        image = data[0].numpy().astype(np.uint8)
    folder = osp.join(out_dir, field)
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, name + '.png')
    if not cv2.imwrite(path, image):
        raise OSError(f'could not write {path}')
    return path


@HOOKS.register_module()
class MTPredictionSaverHook(Hook):
    """Writes every ``pred_*`` field of the test outputs as PNG files.

    Files go to ``out_dir/<field>/<image name>.png``: class maps as 8-bit
    indices, saliency/edge probabilities as 8-bit (x255), normals as RGB
    ``(n + 1) / 2 * 255``, depth as 16-bit millimetres.

    Args:
        out_dir (str): Output folder.
    """

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None):
        for sample in outputs or []:
            name = osp.splitext(osp.basename(
                sample.metainfo.get('img_path', f'{batch_idx}')))[0]
            for field in sample.keys():
                if field.startswith('pred_'):
                    write_prediction_png(self.out_dir, field, name,
                                         sample.get(field).data)


@RUNNERS.register_module()
class RCRunner(Runner):
    """mmengine's ``Runner`` for RC runs (``runner_type = 'RCRunner'`` makes
    mmseg's own ``tools/train.py`` use it too).

    * Checkpoints: ``load_checkpoint`` and ``resume`` first refuse any file
      that would need arbitrary unpickling (a clear ``CheckpointError``)
      and load weights-only (:mod:`rc_adapter.mmseg.checkpoint`); a task
      bank folder loads as the model's bank.
    * Mixed precision: ``optim_wrapper.type='AmpOptimWrapper'`` builds
      :class:`MTAmpOptimWrapper` (bfloat16 autocast on CPUs).
    * Safety: :class:`MTNonFiniteLossHook` is added to every run.
    * Runs apart: mmengine names a run's logger, message hub and default
      scope after the config and its start second, and mmseg's configs name
      every visualizer ``'visualizer'``; an existing instance of that name
      is reused, so a second run in one process would log into the first
      run's file, history and ``vis_data``. The start stamp and the
      visualizer's name get a suffix when the name is taken.
    * Start-up: the run's config text (logged at the start, dumped to the
      work dir, stored in every checkpoint) is mmengine's own layout, one
      key per line, without the yapf pass (``format_python_code=False``),
      which took 0.2-0.5 s of every run's start on a multi-task config; the
      text loads back to the same config. The caller's config is left as
      it was.
    """

    @classmethod
    def from_cfg(cls, cfg: Any) -> 'RCRunner':
        if isinstance(cfg, Config) and cfg._format_python_code:
            cfg = copy.copy(cfg)  # Runner deep-copies it again
            object.__setattr__(cfg, '_format_python_code', False)
        return super().from_cfg(cfg)

    def setup_env(self, env_cfg: dict) -> None:
        super().setup_env(env_cfg)
        stamp, taken = self._timestamp, set(MessageHub._instance_dict)
        number = 1
        while any(name == self._timestamp
                  or name.endswith('_' + self._timestamp) for name in taken):
            number += 1
            self._timestamp = f'{stamp}_{number}'

    def build_visualizer(self, visualizer=None):
        name = visualizer.get('name', self._experiment_name) if isinstance(
            visualizer, Mapping) else None
        if name is not None and Visualizer.check_instance_created(name):
            visualizer = dict(visualizer,
                              name=f'{name}_{self._experiment_name}')
        return super().build_visualizer(visualizer)

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        custom_hooks = list(custom_hooks or [])
        if not any(_hook_type(h) == 'MTNonFiniteLossHook'
                   for h in custom_hooks):
            custom_hooks.append(dict(type='MTNonFiniteLossHook'))
        super().register_hooks(default_hooks, custom_hooks)

    def build_optim_wrapper(self, optim_wrapper):
        if isinstance(optim_wrapper, Mapping) and optim_wrapper.get(
                'type') in ('AmpOptimWrapper', AmpOptimWrapper):
            optim_wrapper = copy.copy(optim_wrapper)
            optim_wrapper['type'] = 'MTAmpOptimWrapper'
        return super().build_optim_wrapper(optim_wrapper)

    def load_checkpoint(self, filename, *args, **kwargs):
        if not _is_bank(filename):
            load_checkpoint_dict(filename)
        with safe_checkpoint_globals():
            return super().load_checkpoint(filename, *args, **kwargs)

    def resume(self, filename, *args, **kwargs):
        load_checkpoint_dict(filename)
        with safe_checkpoint_globals():
            return super().resume(filename, *args, **kwargs)


def _hook_type(hook: Any) -> Optional[str]:
    if isinstance(hook, Mapping):
        hook_type = hook.get('type')
        return hook_type if isinstance(hook_type, str) else getattr(
            hook_type, '__name__', None)
    return type(hook).__name__


def _is_bank(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and osp.isfile(
        osp.join(os.fspath(path), 'manifest.json'))
