"""``RCMultiTaskSegmentor``: one RC backbone, one decode head per task."""
from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
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
from ...core.errors import BankError, RCConfigError, UnknownTaskError
from ...core.layers import TaskModule
from ...core.serving import TaskCache, load_shared
from ..checkpoint import RC_BANK_STATE_KEY
from ..rc_cfg import bank_rc_config, parse_rc_cfg
from . import lora
from .task_head import HeadProtocol, build_task_head, head_protocol
from .task_meta import (bank_class_meta, config_class_meta,
                        meta_class_overrides, resolve_class_meta)
from .utils import (backbone_architecture, backbone_is_pretrained,
                    quiet_init_weights)

__all__ = ['RCMultiTaskSegmentor', 'TaskHeads']


class TaskHeads(TaskModule):
    """Per-task decode heads, built from their configs when a task is added.

    Any registered decode head works: heads written for rc_adapter
    (``MTDeepLabV3PlusHead``) are built as configured, stock mmseg heads
    are wrapped in :class:`~rc_adapter.mmseg.models.task_head.MTHeadAdapter`
    (see :func:`~rc_adapter.mmseg.models.task_head.build_task_head`). A
    head added after the model was moved (``.to(device)``) is built on that
    device.

    Args:
        head_cfgs (dict[str, dict]): Head config per task name.
    """

    def __init__(self, head_cfgs: Mapping[str, Mapping]) -> None:
        super().__init__()
        self.head_cfgs = {task: copy.deepcopy(dict(cfg))
                          for task, cfg in head_cfgs.items()}
        self.tasks = nn.ModuleDict()
        # Moves with .to()/.cuda(): the device new heads are built on.
        self.register_buffer('_device_probe', torch.empty(0),
                             persistent=False)
        self._protocols = {}

    def protocol(self, task: str) -> HeadProtocol:
        """The head protocol of ``task`` read from its config (the head
        need not be built)."""
        if task not in self._protocols:
            if task not in self.head_cfgs:
                raise UnknownTaskError(
                    f'no decode head is configured for task {task!r}; the '
                    f'config has heads for {sorted(self.head_cfgs)}')
            self._protocols[task] = head_protocol(self.head_cfgs[task], task)
        return self._protocols[task]

    def add_task(self, task: str) -> None:
        if task in self.tasks:
            raise RCConfigError(f'task {task!r} already exists')
        self.protocol(task)  # unknown task: a clear error
        head = build_task_head(self.head_cfgs[task], task)
        quiet_init_weights(head)
        head.requires_grad_(False)
        head.train(self.training)
        head.to(self._device_probe.device)
        self.tasks[task] = head

    def merged(self, task: str) -> nn.Module:
        return self.task_submodule(task)

    def forward(self, *args, **kwargs):
        return self._active_submodule()(*args, **kwargs)


def _task_list(value: Any, key: str) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise RCConfigError(f'model.{key} must be a list of task names, got '
                            f'{value!r}')
    tasks = list(value)
    duplicated = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicated:
        raise RCConfigError(f'model.{key} names {duplicated} more than once')
    return tasks


@MODELS.register_module()
class RCMultiTaskSegmentor(EncoderDecoder):
    """Multi-task dense prediction on a reparameterized (RC) backbone.

    ``backbone`` is the plain backbone config a user already has; for the
    RC model (``baseline=None``) the surgery
    (:func:`rc_adapter.reparameterize` with ``rc_cfg``) runs here in
    ``__init__``, the trainable set is final here too (so the Runner's DDP
    wrapper needs no ``find_unused_parameters``), and the backbone is marked
    initialised so the Runner's ``init_weights`` cannot overwrite it.

    **Serving a task bank.** With ``bank`` the model holds the bank's shared
    state plus the tasks in use: every stored task with a head in
    ``decode_heads`` is served, each loaded (verified) from the bank on its
    first use (:class:`rc_adapter.core.serving.TaskCache`; at most
    ``max_resident`` at a time), and none is trained unless ``train_tasks``
    says so. ``cfg.model.bank = BANK; init_model(cfg)`` is therefore the
    mmseg way to run a bank, and so is ``init_model(cfg, BANK)``: a bank
    folder passed where a checkpoint is expected is loaded the same way
    (:mod:`rc_adapter.mmseg.checkpoint`). Route to a task with
    :meth:`set_active_task` (which loads it), not
    ``rc_adapter.set_task``.

    **A random filter bank is never trained.** The shared weights are
    frozen, so an RC model whose shared weights come from neither a bank,
    nor pretrained backbone weights (``init_cfg=dict(type='Pretrained',
    ...)``), nor a loaded checkpoint refuses to train
    (:class:`rc_adapter.RCConfigError` at the first training iteration)
    unless ``allow_random_bank=True``.

    Args:
        backbone (dict): Plain backbone config (e.g. ``MTDeepLabResNet``).
        decode_heads (dict[str, dict]): Head config per task: any registered
            decode head, optionally with ``task_type`` and ``gt_field``
            (see :mod:`rc_adapter.mmseg.models.task_head`).
        tasks (list[str], optional): Tasks to build. Defaults to every task
            with a head; with ``bank``, to the stored tasks with a head plus
            ``train_tasks``.
        train_tasks (list[str], optional): Tasks trained in this run.
            Defaults to ``tasks`` without a bank and to none with a bank. A
            stored task listed here starts from the base state (the stored
            version is not loaded; a warning names it).
        rc_cfg (dict | RCConfig, optional): The fields of
            :class:`rc_adapter.RCConfig` (``nff``, ``task_norms``,
            ``include``, ``exclude``, ``copy_modules``, ``execution`` ...),
            validated once; unknown keys are named in the error. The keys
            ``mode`` and ``ri`` of earlier releases are still accepted with
            a ``DeprecationWarning`` (see :mod:`rc_adapter.mmseg.rc_cfg`).
        baseline (str, optional): ``None`` builds the RC model;
            ``'finetune'`` (single-task / sequential fine-tuning) and
            ``'shared'`` (shared-encoder multi-task learning) build the plain
            backbone, trained with the tasks; ``'lora'`` freezes the plain
            backbone and gives each task a PEFT LoRA adapter
            (:mod:`rc_adapter.mmseg.models.lora`).
        lora_cfg (dict, optional): The LoRA settings of ``baseline='lora'``
            (``r``, ``alpha``, ``norms``, ``dilated``; see
            :func:`~rc_adapter.mmseg.models.lora.parse_lora_cfg`).
        bank (str, optional): Task bank folder (see above). The bank's
            backbone and ``RCConfig.architecture()`` must equal the config's.
        max_resident (int, optional): Most bank tasks held at once (least
            recently used ones are unloaded). Defaults to no limit.
        allow_random_bank (bool): Train an RC model whose frozen shared
            weights are random (tests and experiments). Defaults to False.
        neck, train_cfg, test_cfg, data_preprocessor, pretrained, init_cfg:
            As in mmseg's ``EncoderDecoder``.

    Attributes:
        rc_config (RCConfig): The RC configuration (also for baselines,
            where it is not applied).
        baseline (str | None): See ``baseline``.
        tasks, train_tasks, test_tasks (list[str]): Tasks built, trained,
            and predicted by default.
        bank (TaskBank | None): The bank served.
        dataset_meta (dict): ``classes`` and ``palette`` of the
            segmentation task drawn as ``pred_sem_seg`` (mmseg's
            convention); :attr:`task_meta` has every task's.
    """

    def __init__(self, backbone: dict, decode_heads: dict[str, dict],
                 tasks: Optional[list[str]] = None,
                 train_tasks: Optional[list[str]] = None,
                 rc_cfg: Union[dict, RCConfig, None] = None,
                 baseline: Optional[str] = None,
                 bank: Optional[str] = None,
                 max_resident: Optional[int] = None,
                 allow_random_bank: bool = False,
                 lora_cfg: Optional[dict] = None,
                 neck: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Any] = None) -> None:
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor,
                               init_cfg=init_cfg)
        if not decode_heads:
            raise RCConfigError('model.decode_heads is empty: configure one '
                                'decode head per task')
        if max_resident is not None and (
                isinstance(max_resident, bool)
                or not isinstance(max_resident, int) or max_resident < 1):
            raise RCConfigError(f'model.max_resident must be a positive '
                                f'integer or None, got {max_resident!r}')
        self._task_args = (_task_list(tasks, 'tasks'),
                           _task_list(train_tasks, 'train_tasks'))
        parsed = parse_rc_cfg(rc_cfg, baseline=baseline)
        self.rc_config = parsed.config
        self.baseline = parsed.baseline
        self.lora_cfg = None
        if self.baseline == 'lora':
            self.lora_cfg = lora.parse_lora_cfg(lora_cfg)
            lora.require_peft()
        elif lora_cfg is not None:
            raise RCConfigError("model.lora_cfg is set but model.baseline is "
                                f"{self.baseline!r}; LoRA settings need "
                                "model.baseline='lora'")
        self.max_resident = max_resident
        self.allow_random_bank = bool(allow_random_bank)
        if pretrained is not None:
            backbone = dict(backbone, init_cfg=dict(type='Pretrained',
                                                    checkpoint=pretrained))
        self.backbone_cfg = dict(backbone)
        self.backbone = MODELS.build(backbone)
        # Initialise (or load ``init_cfg`` weights) before the surgery; the
        # Runner's later init_weights must not touch the RC backbone.
        quiet_init_weights(self.backbone)
        # Where the frozen shared weights came from (None: random).
        self._shared_source = 'pretrained' if backbone_is_pretrained(
            self.backbone_cfg) else None
        self.neck = MODELS.build(neck) if neck is not None else None
        self.train_cfg = train_cfg
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))

        if self.baseline is None:
            rc.reparameterize(self.backbone, tasks=[],
                              config=self.rc_config)
        self.decode_heads = TaskHeads(decode_heads)
        self._reset_bank()
        self._meta_override = {}
        if bank is not None:
            self._load_bank_shared(bank)
        self._setup_tasks()

    # -- tasks and the bank ------------------------------------------------
    def _reset_bank(self) -> None:
        self.bank = None
        self._task_cache = None
        self._lazy_tasks = set()
        self._bank_classes = {}

    def _setup_tasks(self) -> None:
        """Builds the tasks from the constructor's ``tasks``/``train_tasks``
        and the bank (see the class docstring)."""
        tasks_arg, train_arg = self._task_args
        heads = list(self.decode_heads.head_cfgs)
        stored = self.bank.tasks() if self.bank is not None else []
        train_tasks = list(train_arg) if train_arg is not None else None
        if self.bank is None:
            tasks = list(tasks_arg) if tasks_arg is not None else heads
            if train_tasks is None:
                train_tasks = list(tasks)
        else:
            train_tasks = train_tasks or []
            if tasks_arg is not None:
                tasks = list(tasks_arg)
            else:
                tasks = [t for t in heads if t in stored or t in train_tasks]
                headless = [t for t in stored if t not in heads]
                if headless:
                    warnings.warn(
                        f'the bank at {self.bank.path} holds tasks '
                        f'{headless} that have no decode head in the '
                        f'config; they are not loaded (add a head to '
                        f'model.decode_heads to serve them)')
        unknown = [t for t in tasks + train_tasks if t not in heads]
        if unknown:
            raise UnknownTaskError(f'tasks {sorted(set(unknown))} have no '
                                   f'decode head; configured heads: '
                                   f'{sorted(heads)}')
        not_built = [t for t in train_tasks if t not in tasks]
        if not_built:
            raise RCConfigError(f'train_tasks {not_built} are not in tasks '
                                f'{tasks}')
        if not tasks:
            raise RCConfigError(
                f'the bank at {self.bank.path} holds none of the config\'s '
                f'tasks (bank: {stored}, heads: {heads}); set '
                f'model.train_tasks to train one')
        if self.bank is not None:
            shadowed = [t for t in train_tasks if t in stored]
            if shadowed:
                warnings.warn(
                    f'tasks {shadowed} are stored in the bank at '
                    f'{self.bank.path} but listed in model.train_tasks: they '
                    f'start from the base state and the stored versions are '
                    f'not loaded')
            untrained = [t for t in tasks
                         if t not in stored and t not in train_tasks]
            if untrained:
                warnings.warn(
                    f'tasks {untrained} are neither in the bank at '
                    f'{self.bank.path} nor in model.train_tasks: they '
                    f'predict from the untrained base state')
        lazy = [t for t in tasks if t in stored and t not in train_tasks]
        for task in tasks:
            if task not in lazy:
                rc.add_task(self, task)
                if self.lora_cfg is not None:
                    lora.add_lora_task(self.backbone, task, self.lora_cfg)
        self.tasks = tasks
        self.train_tasks = train_tasks
        self.test_tasks = list(tasks)
        self._lazy_tasks = set(lazy)
        if self.bank is not None:
            self._task_cache = TaskCache(
                self, self.bank, max_resident=self.max_resident
                or max(1, len(lazy)))
        resident = [t for t in tasks if t not in lazy]
        if resident:
            rc.set_task(self, resident[0], update_trainable=False)
        rc.set_trainable_tasks(self, train_tasks)
        if self.lora_cfg is not None:
            lora.set_lora_trainable(self.backbone, train_tasks)
            if resident:
                lora.set_lora_task(self.backbone, resident[0])
        elif self.baseline is not None and train_tasks:
            self.backbone.requires_grad_(True)

    def _refuse_bank_for_baseline(self) -> None:
        if self.baseline is not None:
            raise RCConfigError(
                f'a task bank holds an RC model, but the config builds the '
                f'{self.baseline!r} baseline (model.baseline); drop '
                f'model.bank or model.baseline')

    def _load_bank_shared(self, path: str) -> None:
        self._refuse_bank_for_baseline()
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
        load_shared(self.backbone, bank)
        self.bank = bank
        self._bank_classes = bank_class_meta(bank.manifest()['tasks'])
        self._shared_source = 'bank'

    def load_bank(self, path: str) -> None:
        """Serves the task bank at ``path``, as if the model had been built
        with ``bank=path``: every task is removed, the bank's shared state
        is loaded and the tasks are set up again from the constructor's
        ``tasks``/``train_tasks`` (stored tasks load on first use).

        This is what loading a bank folder as a checkpoint does
        (``init_model(cfg, BANK)``, ``load_from = BANK``).

        Raises:
            RCConfigError: the model is a baseline.
            BankError: the folder is not a bank, or does not match the
                config (the model then holds no task: discard it).
        """
        self._refuse_bank_for_baseline()
        for task in rc.list_tasks(self):
            rc.remove_task(self, task)
        self._reset_bank()
        self._shared_source = None
        self._load_bank_shared(path)
        self._setup_tasks()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Checkpoint loading: a bank (:data:`RC_BANK_STATE_KEY`) is served
        (:meth:`load_bank`); bank tasks whose tensors the checkpoint holds
        are loaded from the checkpoint instead of the bank; backbone
        tensors count as loaded shared weights."""
        bank_path = state_dict.pop(prefix + RC_BANK_STATE_KEY, None)
        if bank_path is not None:
            self.load_bank(str(bank_path))
            # The model's own tensors stand in for the checkpoint's, so
            # nothing is reported missing.
            for key, value in self.state_dict(prefix=prefix).items():
                state_dict.setdefault(key, value)
        else:
            for task in sorted(self._lazy_tasks):
                head_prefix = f'{prefix}decode_heads.tasks.{task}.'
                if any(k.startswith(head_prefix) for k in state_dict):
                    self._pin_from_checkpoint(task)
            if any(k.startswith(prefix + 'backbone.') for k in state_dict):
                self._shared_source = 'checkpoint'
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _pin_from_checkpoint(self, task: str) -> None:
        if task in self._task_cache.resident():
            self._task_cache.evict(task)
        if task not in rc.list_tasks(self):
            rc.add_task(self, task)
        self._lazy_tasks.discard(task)

    # -- routing -----------------------------------------------------------
    def set_active_task(self, task: str) -> None:
        """Routes backbone and heads to ``task``, loading it from the bank
        on first use (trainable set unchanged).

        Raises:
            UnknownTaskError: the model has no such task.
            BankError: the bank's file fails verification.
        """
        if task not in self.tasks:
            raise UnknownTaskError(f'task {task!r} is not one of the '
                                   f'model\'s tasks {self.tasks}')
        if task in self._lazy_tasks:
            self._task_cache.activate(task)
        else:
            rc.set_task(self, task, update_trainable=False)
        if self.lora_cfg is not None:
            lora.set_lora_task(self.backbone, task)

    @property
    def active_task(self) -> Optional[str]:
        """str | None: The task the forward pass runs."""
        return self.decode_heads.active_task

    @property
    def decode_head(self) -> nn.Module:
        """The active task's head (what mmseg's inference code calls); the
        first task is activated if none is."""
        if self.active_task is None:
            self.set_active_task(self.tasks[0])
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

    def _resolve_tasks(self, tasks: Union[str, Sequence[str], None]
                       ) -> list[str]:
        if tasks is None:
            return list(self.test_tasks)
        if tasks == 'all':
            return list(self.tasks)
        if isinstance(tasks, str):
            tasks = [tasks]
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise UnknownTaskError(f'tasks {unknown} are not among the '
                                   f'model\'s tasks {self.tasks}')
        return list(tasks)

    # -- metadata ------------------------------------------------------------
    def _primary_task(self) -> Optional[str]:
        segmentation = [t for t in self.tasks
                        if self.decode_heads.protocol(t)['task_type']
                        == 'segmentation']
        for task in segmentation:
            if self.decode_heads.protocol(task)['pred_field'] == \
                    'pred_sem_seg':
                return task
        return segmentation[0] if segmentation else None

    @property
    def task_meta(self) -> dict[str, dict[str, Any]]:
        """Every task's head protocol and labels, for pictures and tools.

        ``{task: {'task_type', 'gt_field', 'pred_field', 'num_classes',
        'out_channels', 'head_type', 'adapted', 'resident', 'classes',
        'palette', 'classes_from'}}``; ``classes``/``palette`` (lists) only
        for segmentation tasks (else None), found as
        :mod:`rc_adapter.mmseg.models.task_meta` describes
        (``classes_from`` names the source).
        """
        primary = self._primary_task()
        sources = [
            ('model.dataset_meta',
             meta_class_overrides(self._meta_override, primary)),
            ('the bank manifest', self._bank_classes),
            ('the config\'s dataset',
             config_class_meta(getattr(self, 'cfg', None))),
        ]
        resident = set(rc.list_tasks(self))
        meta = {}
        for task in self.tasks:
            info = dict(self.decode_heads.protocol(task))
            info.update(resident=task in resident, classes=None,
                        palette=None, classes_from=None)
            if info['task_type'] == 'segmentation':
                classes, palette, source = resolve_class_meta(
                    task, int(info['num_classes']), sources)
                info.update(classes=list(classes), palette=palette,
                            classes_from=source)
            meta[task] = info
        return meta

    @property
    def dataset_meta(self) -> dict[str, Any]:
        """``{'classes', 'palette'}`` of the segmentation task predicted
        as ``pred_sem_seg`` (None without one), what mmseg's
        ``show_result_pyplot`` and ``MMSegInferencer`` draw with.

        Setting it (mmseg's ``init_model`` does, from a checkpoint's meta)
        overrides the names per task: ``classes``/``palette`` for that task,
        ``task_classes``/``task_palettes`` (dicts) for any task; a list
        whose length is not the head's number of classes is ignored with a
        warning (e.g. mmseg's Cityscapes default). ``None`` removes the
        overrides."""
        primary = self._primary_task()
        if primary is None:
            return dict(classes=None, palette=None)
        info = self.task_meta[primary]
        return dict(classes=tuple(info['classes']), palette=info['palette'])

    @dataset_meta.setter
    def dataset_meta(self, meta: Optional[Mapping[str, Any]]) -> None:
        if not meta:
            self._meta_override = {}
            return
        primary = self._primary_task()
        accepted = {}
        for task, (classes, palette) in meta_class_overrides(
                meta, primary).items():
            if task not in self.tasks:
                continue
            protocol = self.decode_heads.protocol(task)
            if protocol['task_type'] != 'segmentation':
                continue  # class names only label class maps
            if len(classes) != protocol['num_classes']:
                warnings.warn(
                    f'dataset_meta with {len(classes)} class names ignored '
                    f'for task {task!r}, whose head has '
                    f'{protocol["num_classes"]} classes')
                continue
            accepted[task] = (classes, palette)
        self._meta_override = dict(
            task_classes={t: c for t, (c, _) in accepted.items()},
            task_palettes={t: p for t, (_, p) in accepted.items()})

    # -- modes ---------------------------------------------------------------
    def _check_shared_weights(self) -> None:
        if self.baseline is not None or self._shared_source is not None \
                or self.allow_random_bank:
            return
        raise RCConfigError(
            'refusing to train an RC model on a random filter bank: the '
            'frozen shared weights were loaded from neither a task bank, nor '
            'pretrained backbone weights, nor a checkpoint, so the task would '
            'learn on random features that can never change. Pass a bank '
            'made by tools/convert_to_rc.py (--bank BANK, or model.bank='
            'BANK in the config), or pretrained weights (model.backbone.'
            "init_cfg=dict(type='Pretrained', checkpoint=...)), or "
            'load_from=CHECKPOINT; for tests and experiments set '
            'model.allow_random_bank=True')

    def loss(self, inputs, data_samples):
        """One backbone pass and one head loss per train task, prefixed.

        Raises:
            RCConfigError: the RC model's shared weights are random (see the
                class docstring).
        """
        self._check_shared_weights()
        losses = {}
        for task in self.train_tasks:
            self.set_active_task(task)
            feats = self.extract_feat(inputs)
            head_losses = self.decode_head.loss(feats, data_samples,
                                                self.train_cfg)
            losses.update(add_prefix(head_losses, task))
        return losses

    def predict(self, inputs, data_samples=None, tasks=None):
        """Every requested task's prediction for one batch.

        The batch is pre-processed once; the tasks run back to back on it
        (each its own backbone pass, with the composed weights of the eval
        cache), and each writes its ``pred_*`` field (un-padded, un-flipped,
        at the original size) into the same data samples.

        Args:
            inputs (Tensor): The pre-processed batch (N, 3, H, W).
            data_samples (list[SegDataSample], optional): Their metainfo
                (padding, flips, original size).
            tasks (str | list[str], optional): ``None``: ``test_tasks``;
                ``'all'``: every task of the model (bank tasks are loaded
                on first use); or the task names.

        Returns:
            list[SegDataSample]: ``data_samples`` with one ``pred_*`` field
            per task.
        """
        tasks = self._resolve_tasks(tasks)
        if data_samples is None:
            shape = tuple(inputs.shape[2:])
            metas = [dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                          padding_size=[0, 0, 0, 0])] * inputs.shape[0]
            data_samples = [SegDataSample(metainfo=m) for m in metas]
        metas = [sample.metainfo for sample in data_samples]
        for task in tasks:
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

    def _forward(self, inputs, data_samples=None, tasks=None):
        """``{task: output at the input's size}`` for every test task (or
        ``tasks``, as in :meth:`predict`)."""
        outputs = {}
        for task in self._resolve_tasks(tasks):
            self.set_active_task(task)
            logits = self.decode_head.forward(self.extract_feat(inputs))
            logits = resize(logits, size=inputs.shape[2:], mode='bilinear',
                            align_corners=self.align_corners)
            outputs[task] = self.decode_head.output_activation(logits)
        return outputs
