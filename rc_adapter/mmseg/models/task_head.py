"""The task-head protocol of the multi-task segmentor, and the adapter that
gives it to any stock mmseg decode head.

The segmentor asks each task's head for five things:

* ``task_type`` -- one of :data:`TASK_TYPES`, which decides how decoder
  outputs become predictions;
* ``gt_field`` -- the data-sample field holding the task's labels (e.g.
  ``gt_sem_seg``, ``gt_depth_map``);
* ``pred_field`` -- ``pred_`` + the rest of ``gt_field`` (the field contract
  of ``rc_adapter.mmseg.transforms.formatting``);
* ``output_activation(logits)`` -- the network's own output (unit normals);
* ``to_prediction(logits)`` -- the values of the ``pred_*`` field (class
  ids, probabilities, unit normals, metres).

plus mmseg's decode-head calls (``forward``, ``loss``, ``predict``,
``align_corners``, ``num_classes``, ``out_channels``).

Heads written for rc_adapter (:class:`MTTaskHeadMixin` subclasses such as
``MTDeepLabV3PlusHead``) take ``task_type`` and ``gt_field`` as arguments.
Any other registered decode head (``FCNHead``, ``DepthwiseSeparableASPPHead``,
``SegformerHead``, ``UPerHead`` ...) is built from its config without those
two keys and wrapped in :class:`MTHeadAdapter` (:func:`build_task_head`):
segmentation tasks keep the stock head's own loss (its ``loss_decode``,
sampler and accuracy) on labels read from ``gt_field``; dense regression
tasks (depth, normals) and binary maps (saliency, edge) use the same stock
head body with their ``loss_decode`` (e.g. ``MaskedL1Loss``) applied to the
activated output, as ``MTDeepLabV3PlusHead`` does.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from ...core.errors import RCConfigError
from ..transforms.formatting import TASK_GT_PRED_FIELDS

__all__ = ['TASK_TYPES', 'TASK_TYPE_GT_FIELDS', 'HEAD_PROTOCOL_KEYS',
           'HeadProtocol', 'head_protocol', 'split_head_cfg',
           'build_task_head', 'plain_head', 'output_activation',
           'to_prediction', 'stack_gt', 'dense_task_loss', 'MTTaskHeadMixin',
           'MTHeadAdapter']

#: How each task type turns decoder outputs into predictions.
TASK_TYPES = ('segmentation', 'saliency', 'edge', 'normals', 'depth')

#: The label field of each task type when a head config names none (and the
#: task is not one of the known task names of ``TASK_GT_PRED_FIELDS``).
TASK_TYPE_GT_FIELDS = {
    'segmentation': 'gt_sem_seg',
    'saliency': 'gt_sal_map',
    'edge': 'gt_edge_map',
    'normals': 'gt_normal_map',
    'depth': 'gt_depth_map',
}

# Task type of the task names the datasets know.
_TASK_NAME_TYPES = {
    'semseg': 'segmentation',
    'human_parts': 'segmentation',
    'sal': 'saliency',
    'edge': 'edge',
    'normals': 'normals',
    'depth': 'depth',
}

#: Head-config keys that belong to the protocol, not to a stock head.
HEAD_PROTOCOL_KEYS = ('task_type', 'gt_field')


class HeadProtocol(dict):
    """What the segmentor needs to know about one task's head, read from
    its config without building it: ``task_type``, ``gt_field``,
    ``pred_field``, ``num_classes``, ``out_channels`` and ``head_type``
    (the registered type), ``adapted`` (wrapped in :class:`MTHeadAdapter`).
    A plain ``dict`` so it can be logged and stored as JSON."""


def _head_class(cfg: dict, task: str) -> type:
    head_type = cfg.get('type')
    head_cls = head_type if isinstance(head_type, type) else \
        MODELS.get(head_type) if head_type else None
    if head_cls is None:
        raise RCConfigError(f'decode head of task {task!r}: unknown type '
                            f'{head_type!r} (not registered in mmseg\'s '
                            f'MODELS; is its package imported?)')
    return head_cls


def head_protocol(cfg: dict, task: str) -> HeadProtocol:
    """The protocol values of ``task``'s head config.

    ``task_type`` defaults to the known type of the task name (``semseg``,
    ``human_parts``: segmentation; ``sal``: saliency; ``edge``, ``normals``,
    ``depth``), else ``'segmentation'``; ``gt_field`` to the task name's
    field of the field contract, else the task type's
    (:data:`TASK_TYPE_GT_FIELDS`).

    Args:
        cfg: The head config (``model.decode_heads[task]``).
        task: The task name.

    Returns:
        The protocol.

    Raises:
        RCConfigError: unknown head type, ``task_type`` or a ``gt_field``
            that does not start with ``gt_`` (the key is named).
    """
    head_cls = _head_class(cfg, task)
    task_type = cfg.get('task_type') or _TASK_NAME_TYPES.get(
        task, 'segmentation')
    if task_type not in TASK_TYPES:
        raise RCConfigError(f'model.decode_heads.{task}.task_type must be '
                            f'one of {TASK_TYPES}, got {task_type!r}')
    gt_field = cfg.get('gt_field')
    if gt_field is None:
        known = TASK_GT_PRED_FIELDS.get(task)
        gt_field = known[0] if known and _TASK_NAME_TYPES.get(task) == \
            task_type else TASK_TYPE_GT_FIELDS[task_type]
    if not isinstance(gt_field, str) or not gt_field.startswith('gt_'):
        raise RCConfigError(f"model.decode_heads.{task}.gt_field must start "
                            f"with 'gt_', got {gt_field!r}")
    num_classes = cfg.get('num_classes')
    out_channels = cfg.get('out_channels')
    return HeadProtocol(
        task_type=task_type, gt_field=gt_field,
        pred_field='pred_' + gt_field[len('gt_'):],
        num_classes=num_classes,
        out_channels=out_channels if out_channels is not None
        else num_classes,
        head_type=getattr(head_cls, '__name__', str(cfg.get('type'))),
        adapted=not issubclass(head_cls, MTTaskHeadMixin))


def split_head_cfg(cfg: dict, task: str) -> tuple[dict, HeadProtocol]:
    """A head config as mmseg builds it, and its protocol.

    For heads that are not :class:`MTTaskHeadMixin` subclasses the protocol
    keys (:data:`HEAD_PROTOCOL_KEYS`) are removed (a stock head does not
    take them) and, for one-channel outputs, ``threshold`` defaults to 0.5
    (mmseg warns without one). For ``MTTaskHeadMixin`` heads the resolved
    ``task_type``/``gt_field`` are filled in. An exported task's config
    uses the returned config for its ``decode_head``.

    Returns:
        ``(build_cfg, protocol)``; ``cfg`` is not changed.
    """
    protocol = head_protocol(cfg, task)
    build_cfg = copy.deepcopy(dict(cfg))
    if protocol['adapted']:
        for key in HEAD_PROTOCOL_KEYS:
            build_cfg.pop(key, None)
        if protocol['out_channels'] == 1:
            build_cfg.setdefault('threshold', 0.5)
    else:
        build_cfg['task_type'] = protocol['task_type']
        build_cfg['gt_field'] = protocol['gt_field']
    return build_cfg, protocol


def build_task_head(cfg: dict, task: str) -> nn.Module:
    """Builds ``task``'s head: an :class:`MTTaskHeadMixin` head as
    configured, any other decode head wrapped in :class:`MTHeadAdapter`.

    Args:
        cfg: The head config; may carry ``task_type`` and ``gt_field``
            for any head type.
        task: The task name (for defaults and messages).

    Returns:
        A module with the task-head protocol (module docstring).
    """
    build_cfg, protocol = split_head_cfg(cfg, task)
    head = MODELS.build(build_cfg)
    if not protocol['adapted']:
        return head
    return MTHeadAdapter(head, protocol['task_type'], protocol['gt_field'])


def plain_head(head: nn.Module) -> nn.Module:
    """The mmseg decode head inside a task head (the stock head of an
    :class:`MTHeadAdapter`, else ``head`` itself): what a plain
    ``EncoderDecoder`` holds as its ``decode_head``."""
    return head.head if isinstance(head, MTHeadAdapter) else head


# -- the protocol's computations (one code path for every head) -----------
def output_activation(logits: torch.Tensor, task_type: str) -> torch.Tensor:
    """The network's own output for ``task_type``: normals are
    L2-normalised over channels, everything else is returned as is."""
    if task_type == 'normals':
        return F.normalize(logits, dim=1)
    return logits


def to_prediction(logits: torch.Tensor, task_type: str) -> torch.Tensor:
    """The ``pred_*`` values: class ids (argmax, N x 1 x H x W) for
    segmentation, sigmoid probabilities for saliency and edges, unit vectors
    for normals, the raw output (metres) for depth."""
    if task_type == 'segmentation':
        return logits.argmax(dim=1, keepdim=True)
    if task_type in ('saliency', 'edge'):
        return logits.sigmoid()
    return output_activation(logits, task_type)


def _require_field(batch_data_samples: list, gt_field: str) -> None:
    if any(sample.get(gt_field) is None for sample in batch_data_samples):
        raise RCConfigError(f'data samples have no {gt_field!r}; is the '
                            f'task loaded by the dataset (tasks=[...])?')


def stack_gt(batch_data_samples: list, gt_field: str) -> torch.Tensor:
    """Stacks the ``gt_field`` labels of a batch (N x C x H x W).

    Raises:
        RCConfigError: a sample has no ``gt_field`` (the task is not loaded
            by the dataset).
    """
    _require_field(batch_data_samples, gt_field)
    return torch.stack([sample.get(gt_field).data
                        for sample in batch_data_samples])


def dense_task_loss(seg_logits: torch.Tensor, target: torch.Tensor,
                    loss_decode: Any, task_type: str,
                    align_corners: bool) -> dict[str, torch.Tensor]:
    """The loss of a dense task that is not segmentation: the logits are
    resized to the labels, activated (:func:`output_activation`), and each
    module of ``loss_decode`` (e.g. ``MaskedL1Loss``,
    ``MaskedBCEWithLogitsLoss``) is applied; values of equal
    ``loss_name`` are summed."""
    pred = resize(seg_logits, size=target.shape[2:], mode='bilinear',
                  align_corners=align_corners)
    pred = output_activation(pred, task_type)
    modules = loss_decode if isinstance(loss_decode, nn.ModuleList) \
        else [loss_decode]
    losses = {}
    for module in modules:
        value = module(pred, target.to(pred.dtype))
        losses[module.loss_name] = losses.get(module.loss_name, 0) + value
    return losses


class MTTaskHeadMixin:
    """The protocol for decode heads written for rc_adapter (a subclass of
    mmseg's ``BaseDecodeHead`` that sets ``task_type``, ``gt_field`` and
    ``pred_field``; see ``MTDeepLabV3PlusHead``)."""

    task_type: str
    gt_field: str
    pred_field: str

    def _init_protocol(self, task_type: str, gt_field: str) -> None:
        if task_type not in TASK_TYPES:
            raise RCConfigError(f'task_type must be one of {TASK_TYPES}, '
                                f'got {task_type!r}')
        if not isinstance(gt_field, str) or not gt_field.startswith('gt_'):
            raise RCConfigError(f"gt_field must start with 'gt_', got "
                                f'{gt_field!r}')
        self.task_type = task_type
        self.gt_field = gt_field
        self.pred_field = 'pred_' + gt_field[len('gt_'):]

    def output_activation(self, logits: torch.Tensor) -> torch.Tensor:
        """The network's own output (see :func:`output_activation`)."""
        return output_activation(logits, self.task_type)

    def to_prediction(self, logits: torch.Tensor) -> torch.Tensor:
        """Turns (resized) logits into the ``pred_*`` field's values."""
        return to_prediction(logits, self.task_type)

    def _stack_batch_gt(self, batch_data_samples: list) -> torch.Tensor:
        return stack_gt(batch_data_samples, self.gt_field)

    def loss_by_feat(self, seg_logits: torch.Tensor,
                     batch_data_samples: list) -> dict:
        if self.task_type == 'segmentation':
            return super().loss_by_feat(seg_logits, batch_data_samples)
        return dense_task_loss(
            seg_logits, self._stack_batch_gt(batch_data_samples),
            self.loss_decode, self.task_type, self.align_corners)


class MTHeadAdapter(nn.Module):
    """Any mmseg decode head as one task's head of the segmentor.

    Holds the stock head as ``head`` (its tensors are ``head.*`` in the
    state dict) and adds the protocol (module docstring). Attributes the
    adapter does not define (``align_corners``, ``num_classes``,
    ``out_channels``, ``loss_decode``, ``conv_seg`` ...) are the stock
    head's.

    Args:
        head (nn.Module): A built mmseg decode head (``BaseDecodeHead``).
        task_type (str): One of :data:`TASK_TYPES`.
        gt_field (str): The data-sample field of the labels.
    """

    def __init__(self, head: nn.Module, task_type: str,
                 gt_field: str) -> None:
        super().__init__()
        if task_type not in TASK_TYPES:
            raise RCConfigError(f'task_type must be one of {TASK_TYPES}, '
                                f'got {task_type!r}')
        self.head = head
        self.task_type = task_type
        self.gt_field = gt_field
        self.pred_field = 'pred_' + gt_field[len('gt_'):]

    def init_weights(self) -> None:
        """The stock head's own initialisation."""
        self.head.init_weights()

    def forward(self, inputs: list) -> torch.Tensor:
        """Decoder logits of the stock head."""
        return self.head(inputs)

    def predict(self, inputs: list, batch_img_metas: list,
                test_cfg: Optional[dict]) -> torch.Tensor:
        """The stock head's ``predict`` (logits at the padded input size)."""
        return self.head.predict(inputs, batch_img_metas, test_cfg)

    def loss(self, inputs: list, batch_data_samples: list,
             train_cfg: Optional[dict]) -> dict:
        """The task's losses (see :meth:`loss_by_feat`)."""
        return self.loss_by_feat(self.head(inputs), batch_data_samples)

    def loss_by_feat(self, seg_logits: torch.Tensor,
                     batch_data_samples: list) -> dict:
        """Segmentation: the stock head's own ``loss_by_feat`` on labels
        read from ``gt_field``; other task types: :func:`dense_task_loss`
        with the head's ``loss_decode``."""
        if self.task_type != 'segmentation':
            return dense_task_loss(
                seg_logits, stack_gt(batch_data_samples, self.gt_field),
                self.head.loss_decode, self.task_type,
                self.head.align_corners)
        if self.gt_field != 'gt_sem_seg':
            # Stock heads read gt_sem_seg: hand them the task's labels
            # under that name (new samples; the batch is not changed).
            _require_field(batch_data_samples, self.gt_field)
            batch_data_samples = [
                SegDataSample(metainfo=s.metainfo,
                              gt_sem_seg=s.get(self.gt_field))
                for s in batch_data_samples]
        return self.head.loss_by_feat(seg_logits, batch_data_samples)

    def output_activation(self, logits: torch.Tensor) -> torch.Tensor:
        """The network's own output (see :func:`output_activation`)."""
        return output_activation(logits, self.task_type)

    def to_prediction(self, logits: torch.Tensor) -> torch.Tensor:
        """Turns (resized) logits into the ``pred_*`` field's values."""
        return to_prediction(logits, self.task_type)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get('_modules', {})
            if 'head' in modules and not name.startswith('_'):
                return getattr(modules['head'], name)
            raise

    def extra_repr(self) -> str:
        return f'task_type={self.task_type!r}, gt_field={self.gt_field!r}'
