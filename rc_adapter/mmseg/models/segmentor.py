"""``RCMultiTaskSegmentor``: one RC backbone, one decode head per task."""
from __future__ import annotations

import json
from typing import Any, Optional, Union

import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import add_prefix

from ... import core as rc
from ...core.bank import TaskBank
from ...core.config import RCConfig
from ...core.errors import (BankError, RCConfigError, RCError,
                            UnknownTaskError)
from ...core.layers import TaskModule
from ..rc_cfg import bank_rc_config, parse_rc_cfg
from .utils import backbone_architecture, quiet_init_weights

__all__ = ['RCMultiTaskSegmentor', 'TaskHeads']


class TaskHeads(TaskModule):
    """Per-task decode heads, built from their configs when a task is added.

    Args:
        head_cfgs (dict[str, dict]): Head config per task name.
    """

    def __init__(self, head_cfgs: dict[str, dict]) -> None:
        super().__init__()
        self.head_cfgs = {task: dict(cfg) for task, cfg in head_cfgs.items()}
        self.tasks = nn.ModuleDict()

    def add_task(self, task: str) -> None:
        if task in self.tasks:
            raise RCConfigError(f'task {task!r} already exists')
        if task not in self.head_cfgs:
            raise UnknownTaskError(f'no decode head is configured for task '
                                   f'{task!r}; the config has heads for '
                                   f'{sorted(self.head_cfgs)}')
        head = MODELS.build(self.head_cfgs[task])
        head.init_weights()
        head.requires_grad_(False)
        head.train(self.training)
        self.tasks[task] = head

    def merged(self, task: str) -> nn.Module:
        return self.task_submodule(task)

    def forward(self, *args, **kwargs):
        return self._active_submodule()(*args, **kwargs)


@MODELS.register_module()
class RCMultiTaskSegmentor(EncoderDecoder):
    """Multi-task dense prediction on a reparameterized (RC) backbone.

    ``backbone`` is the plain backbone config a user already has; for the
    RC model (``baseline=None``) the surgery
    (:func:`rc_adapter.reparameterize` with ``rc_cfg``) runs here in
    ``__init__``, the trainable set is final here too (so the Runner's DDP
    wrapper needs no ``find_unused_parameters``), and the backbone is marked
    initialised so the Runner's ``init_weights`` cannot overwrite it.

    Args:
        backbone (dict): Plain backbone config (e.g. ``MTDeepLabResNet``).
        decode_heads (dict[str, dict]): Head config per task.
        tasks (list[str], optional): Tasks to build. Defaults to every task
            with a head.
        train_tasks (list[str], optional): Tasks trained in this run.
            Defaults to ``tasks``.
        rc_cfg (dict | RCConfig, optional): The fields of
            :class:`rc_adapter.RCConfig` (``nff``, ``task_norms``,
            ``include``, ``exclude``, ``copy_modules``, ``execution`` ...),
            validated once; unknown keys are named in the error. The keys
            ``mode`` and ``ri`` of earlier releases are still accepted with
            a ``DeprecationWarning`` (see :mod:`rc_adapter.mmseg.rc_cfg`).
        baseline (str, optional): ``None`` builds the RC model;
            ``'finetune'`` (single-task / sequential fine-tuning) and
            ``'shared'`` (shared-encoder multi-task learning) build the plain
            backbone, trained with the tasks.
        bank (str, optional): Task bank folder: the shared state (filter
            banks, RI base state) and every stored task not in
            ``train_tasks`` are loaded from it, verified. The bank's backbone
            and ``RCConfig.architecture()`` must equal the config's.
        neck, train_cfg, test_cfg, data_preprocessor, pretrained, init_cfg:
            As in mmseg's ``EncoderDecoder``.

    Attributes:
        rc_config (RCConfig): The RC configuration (also for baselines,
            where it is not applied).
        baseline (str | None): See ``baseline``.
    """

    def __init__(self, backbone: dict, decode_heads: dict[str, dict],
                 tasks: Optional[list[str]] = None,
                 train_tasks: Optional[list[str]] = None,
                 rc_cfg: Union[dict, RCConfig, None] = None,
                 baseline: Optional[str] = None,
                 bank: Optional[str] = None, neck: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Any] = None) -> None:
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor,
                               init_cfg=init_cfg)
        tasks = list(tasks if tasks is not None else decode_heads)
        train_tasks = list(tasks if train_tasks is None else train_tasks)
        unknown = [t for t in set(tasks) | set(train_tasks)
                   if t not in decode_heads]
        if unknown:
            raise UnknownTaskError(f'tasks {sorted(unknown)} have no decode '
                                   f'head; configured heads: '
                                   f'{sorted(decode_heads)}')
        not_built = [t for t in train_tasks if t not in tasks]
        if not_built:
            raise RCConfigError(f'train_tasks {not_built} are not in tasks '
                                f'{tasks}')
        parsed = parse_rc_cfg(rc_cfg, baseline=baseline)
        self.rc_config = parsed.config
        self.baseline = parsed.baseline
        if pretrained is not None:
            backbone = dict(backbone, init_cfg=dict(type='Pretrained',
                                                    checkpoint=pretrained))
        self.backbone_cfg = dict(backbone)
        self.backbone = MODELS.build(backbone)
        # Initialise (or load ``init_cfg`` weights) before the surgery; the
        # Runner's later init_weights must not touch the RC backbone.
        quiet_init_weights(self.backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.train_cfg = train_cfg
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))
        self.tasks = tasks
        self.train_tasks = train_tasks
        self.test_tasks = list(tasks)

        if self.baseline is None:
            rc.reparameterize(self.backbone, tasks=[],
                              config=self.rc_config)
        self.decode_heads = TaskHeads(decode_heads)
        self.bank = None
        if bank is not None:
            self._load_bank_shared(bank)
        for task in tasks:
            if self.bank is not None and task not in train_tasks \
                    and task in self.bank.tasks():
                self._load_bank_task(task)
            else:
                rc.add_task(self, task)
        self.set_active_task(tasks[0])
        rc.set_trainable_tasks(self, train_tasks)
        if self.baseline is not None and train_tasks:
            self.backbone.requires_grad_(True)

    # -- bank --------------------------------------------------------------
    def _load_bank_shared(self, path: str) -> None:
        if self.baseline is not None:
            raise RCConfigError(
                f'a task bank holds an RC model, but the config builds the '
                f'{self.baseline!r} baseline (model.baseline); drop '
                f'model.bank or model.baseline')
        bank = TaskBank(path)
        stored = backbone_architecture(bank.config.get('backbone'))
        own = backbone_architecture(self.backbone_cfg)
        if stored != own:
            raise BankError(
                f'config/bank architecture mismatch: the bank at {path} was '
                f'converted for backbone {json.dumps(stored)}, the config '
                f'builds {json.dumps(own)}')
        stored_rc = bank_rc_config(bank).architecture()
        own_rc = self.rc_config.architecture()
        if stored_rc != own_rc:
            raise BankError(
                f'config/bank mismatch: the bank at {path} uses rc_cfg '
                f'{json.dumps(stored_rc)}, the config has '
                f'{json.dumps(own_rc)}')
        try:
            self.backbone.load_state_dict(bank.read_shared(), strict=True)
        except RuntimeError as err:
            raise BankError(f'the shared state of the bank at {path} does '
                            f'not fit the configured backbone: {err}')
        self.bank = bank

    def _load_bank_task(self, task: str) -> None:
        state = self.bank.read_task(task)
        try:
            rc.load_task_state_dict(self, task, state)
        except RCError as err:
            raise BankError(f'task {task!r} in the bank at '
                            f'{self.bank.path} does not fit this model: '
                            f'{err}') from None

    # -- routing -----------------------------------------------------------
    def set_active_task(self, task):
        """Routes backbone and heads to ``task`` (trainable set unchanged)."""
        rc.set_task(self, task, update_trainable=False)

    @property
    def active_task(self):
        return self.decode_heads.active_task

    @property
    def decode_head(self):
        """The active task's head (what mmseg's inference code calls)."""
        return self.decode_heads.task_submodule(self.active_task)

    @property
    def align_corners(self):
        return self.decode_head.align_corners

    @property
    def num_classes(self):
        return self.decode_head.num_classes

    @property
    def out_channels(self):
        return self.decode_head.out_channels

    @property
    def with_decode_head(self):
        return True

    # -- modes ---------------------------------------------------------------
    def loss(self, inputs, data_samples):
        """One backbone pass and one head loss per train task, prefixed."""
        losses = {}
        for task in self.train_tasks:
            self.set_active_task(task)
            feats = self.extract_feat(inputs)
            head_losses = self.decode_head.loss(feats, data_samples,
                                                self.train_cfg)
            losses.update(add_prefix(head_losses, task))
        return losses

    def predict(self, inputs, data_samples=None):
        """Writes each test task's ``pred_*`` field (un-padded, un-flipped,
        at the original size)."""
        if data_samples is None:
            shape = tuple(inputs.shape[2:])
            metas = [dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                          padding_size=[0, 0, 0, 0])] * inputs.shape[0]
            data_samples = [SegDataSample(metainfo=m) for m in metas]
        metas = [sample.metainfo for sample in data_samples]
        for task in self.test_tasks:
            self.set_active_task(task)
            logits = self.inference(inputs, metas)
            self._write_predictions(logits, data_samples)
        return data_samples

    def _write_predictions(self, logits, data_samples):
        head = self.decode_head
        height, width = logits.shape[2:]
        for i, sample in enumerate(data_samples):
            meta = sample.metainfo
            left, right, top, bottom = meta.get(
                'img_padding_size', meta.get('padding_size', [0] * 4))
            out = logits[i:i + 1, :, top:height - bottom,
                         left:width - right]
            if meta.get('flip', False):
                if meta.get('flip_direction') == 'vertical':
                    out = out.flip(dims=(2,))
                    if head.task_type == 'normals':
                        out = out * out.new_tensor([1, -1, 1]).view(1, 3, 1,
                                                                    1)
                else:
                    out = out.flip(dims=(3,))
                    if head.task_type == 'normals':
                        out = out * out.new_tensor([-1, 1, 1]).view(1, 3, 1,
                                                                    1)
            out = resize(out, size=meta['ori_shape'][:2], mode='bilinear',
                         align_corners=head.align_corners, warning=False)
            sample.set_data({head.pred_field: PixelData(
                data=head.to_prediction(out)[0])})

    def _forward(self, inputs, data_samples=None):
        """``{task: output at the input's size}`` for every test task."""
        outputs = {}
        for task in self.test_tasks:
            self.set_active_task(task)
            logits = self.decode_head.forward(self.extract_feat(inputs))
            logits = resize(logits, size=inputs.shape[2:], mode='bilinear',
                            align_corners=self.align_corners)
            outputs[task] = self.decode_head.output_activation(logits)
        return outputs
