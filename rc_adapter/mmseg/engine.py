"""Runner glue: an optimizer constructor that sees only trainable tensors,
a hook that saves predictions and a runner that loads checkpoints safely."""
import os
import os.path as osp

import cv2
import numpy as np
from mmengine.hooks import Hook
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.runner import Runner
from mmseg.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, RUNNERS

from ..core.errors import RCConfigError
from .checkpoint import load_checkpoint_dict, safe_checkpoint_globals

__all__ = ['TrainableOnlyOptimWrapperConstructor', 'MTPredictionSaverHook',
           'RCRunner']


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
                    self._save(field, name, sample.get(field).data)

    def _save(self, field, name, data):
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
        folder = osp.join(self.out_dir, field)
        os.makedirs(folder, exist_ok=True)
        cv2.imwrite(osp.join(folder, name + '.png'), image)


@RUNNERS.register_module()
class RCRunner(Runner):
    """mmengine's ``Runner`` whose checkpoint loading works on torch >= 2.6
    and stays weights-only.

    mmengine calls ``torch.load`` without ``weights_only``; torch's default
    is now weights-only, which rejects the numpy scalars and message-hub
    objects mmengine stores. ``load_checkpoint`` and ``resume`` here first
    refuse any file that would need arbitrary unpickling (a clear
    ``CheckpointError``), then load it with only those few safe globals
    allowed, for the duration of the call (never process-wide).
    """

    def load_checkpoint(self, filename, *args, **kwargs):
        load_checkpoint_dict(filename)
        with safe_checkpoint_globals():
            return super().load_checkpoint(filename, *args, **kwargs)

    def resume(self, filename, *args, **kwargs):
        load_checkpoint_dict(filename)
        with safe_checkpoint_globals():
            return super().resume(filename, *args, **kwargs)
