"""Exporting one task of a bank as a plain network that mmseg loads
(``.pth`` + config, or ONNX), checked against the RC model.

What the export holds (``docs/tools.md``, "export.py"):

* ``FILE.pth``: ``{'state_dict', 'meta'}`` of a plain segmentor (plain
  convs and norms, the task's head); ``meta['dataset_meta']`` holds the
  task's class names and palette, which mmseg's ``init_model`` puts on the
  model.
* ``FILE.py``: its config -- ``model``, ``test_pipeline`` (the config's test
  pipeline without annotation loading), ``dataset_meta``, ``visualizer``
  -- which runs under mmseg's ``init_model`` / ``inference_model`` /
  ``MMSegInferencer``. A comment at its top lists every rc_adapter type it
  keeps and why.

**Stock types where a stock type computes the same function.** Every
component is written as a stock mmseg type when one computes the same
function, verified here by a parity check against the RC model; otherwise
the rc_adapter type is kept (and ``custom_imports = ['rc_adapter']`` added):

=====================  ==========================  ========================
component              stock type                  kept when
=====================  ==========================  ========================
segmentor              ``EncoderDecoder``          --
                       (segmentation),
                       ``DepthEstimator`` (depth)
                       none for saliency, edges,   ``RCMultiTaskSegmentor``
                       normals                     with ``baseline=
                                                   'finetune'`` (writes
                                                   ``pred_<field>``)
backbone               ``ResNet`` for              a dilated BasicBlock: its
                       ``MTDeepLabResNet``         conv2 is dilated too,
                                                   mmseg's is not
data preprocessor      ``SegDataPreProcessor``     the test pipeline pads
                                                   centred (``MTPadToSize``)
packing                ``PackSegInputs``           same
decode head, losses    stock heads stay stock      ``MTDeepLabV3PlusHead``,
                                                   the masked losses
=====================  ==========================  ========================

Backbones mmseg ships (``ResNetV1c``, ``MiT``, ``Swin``, ...) are stock
already: merging restores their plain layers.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import pprint
import textwrap
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config, ConfigDict

from ... import core as rc
from ...core.errors import BankError, RCConfigError
from ...core.version import __version__
from ...utils.config import to_plain
from ...utils.io import atomic_write_text
from ..models.utils import without_pretrained
from .config import (check_outputs, component_errors, configure_run,
                     open_bank, protected_inputs)

__all__ = ['export_task', 'run_onnx', 'ExportResult', 'ONNX_OPSET']

#: ONNX opset of the exported graphs (ONNX Runtime >= 1.14 runs it).
ONNX_OPSET = 17

#: rc_adapter backbone type -> the stock type tried in its place.
STOCK_BACKBONES = {'MTDeepLabResNet': 'ResNet', 'DeepLabResNet': 'ResNet'}
#: Task type -> the stock segmentor that writes its prediction.
STOCK_SEGMENTORS = {'segmentation': 'EncoderDecoder',
                    'depth': 'DepthEstimator'}
#: Transforms that load labels: not part of an inference pipeline.
ANNOTATION_LOADERS = ('LoadMTAnnotations', 'LoadAnnotations',
                      'LoadDepthAnnotation')
_PARITY_ATOL = 1e-5
#: Why rc_adapter heads are kept.
HEAD_REASONS = {
    'MTDeepLabV3PlusHead': (
        'MTDeepLabV3PlusHead: the paper\'s DeepLabv3+ decoder (ASPP with '
        'plain 3x3 convs, 48-channel low-level branch); no stock mmseg head '
        'computes it (DepthwiseSeparableASPPHead uses depthwise-separable '
        'convs)'),
}


@dataclass
class ExportResult:
    """What :func:`export_task` wrote.

    Attributes:
        task: The exported task.
        path: The ``.pth`` or ``.onnx`` file.
        config: The ``.py`` config (``.pth`` exports), else None.
        max_abs_diff: Max ``|Δ|`` between the RC model's output and the
            export's on a random input (for ONNX, the graph's own output).
        prediction_diff: Max ``|Δ|`` of the predictions of one image through
            both models' test pipelines (for class maps, the fraction of
            pixels that differ outside near-ties).
        types: Component -> registered type of the exported model.
        plugin: Component -> why an rc_adapter type is kept (empty: the
            export needs only stock mmseg).
        onnx_input_size: ``(H, W)`` when the ONNX graph takes only that
            input size (the TorchScript exporter fixes the token counts of
            attention and the sizes of adaptive pooling), else None (height
            and width are dynamic, checked on a second size).
    """

    task: str
    path: str
    config: Optional[str]
    max_abs_diff: float
    prediction_diff: float
    types: dict = field(default_factory=dict)
    plugin: dict = field(default_factory=dict)
    onnx_input_size: Optional[tuple] = None

    @property
    def stock_only(self) -> bool:
        """True when the export needs no rc_adapter type."""
        return not self.plugin


# -- which types ---------------------------------------------------------------
def _registered(registry, name: Any) -> Optional[type]:
    return registry.get(name) if isinstance(name, str) else name


def _is_plugin(registry, name: Any) -> bool:
    cls = _registered(registry, name)
    return cls is not None and cls.__module__.startswith('rc_adapter')


def _type_name(name: Any) -> str:
    return name if isinstance(name, str) else getattr(name, '__name__',
                                                      str(name))


def _dilated_basic_blocks(backbone: torch.nn.Module) -> list[str]:
    found = []
    for name in getattr(backbone, 'res_layers', []):
        for index, block in enumerate(getattr(backbone, name)):
            if hasattr(block, 'conv3'):
                continue
            if max(block.conv1.dilation) > 1:
                found.append(f'{name}.{index}')
    return found


def _max_diff(a: Any, b: Any) -> float:
    if torch.is_tensor(a):
        return (a.float() - b.float()).abs().max().item()
    return max(_max_diff(x, y) for x, y in zip(a, b))


def _backbone_choice(backbone_cfg: dict, merged: torch.nn.Module,
                     x: torch.Tensor) -> tuple[dict, Optional[str]]:
    """The stock backbone config computing ``merged``'s function, or the
    plugin config and why."""
    from mmseg.registry import MODELS
    kind = _type_name(backbone_cfg.get('type'))
    if not _is_plugin(MODELS, backbone_cfg.get('type')):
        return backbone_cfg, None
    stock_type = STOCK_BACKBONES.get(kind)
    if stock_type is None:
        return backbone_cfg, (f'{kind} is an rc_adapter backbone with no '
                              f'known stock equivalent')
    candidate = dict(backbone_cfg, type=stock_type)
    stock = MODELS.build(candidate)
    stock.eval()  # mmseg's ResNet.train() returns None
    stock.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        diff = _max_diff(stock(x), merged(x))
    if diff <= _PARITY_ATOL:
        return candidate, None
    blocks = _dilated_basic_blocks(merged)
    why = (f'its dilated BasicBlocks ({", ".join(blocks)}) dilate conv2 as '
           f'well as conv1 and mmseg\'s {stock_type} dilates only conv1, '
           f'so no stock {stock_type} config computes this function'
           if blocks else f'type={stock_type!r} does not reproduce it')
    return backbone_cfg, f'{kind}: {why} (parity with {stock_type}: max ' \
                         f'|Δ| = {diff:.3g})'


def _pipeline(cfg: Config) -> list:
    pipeline = cfg.get('test_pipeline')
    if not pipeline:
        loader = cfg.get('test_dataloader') or cfg.get('val_dataloader')
        pipeline = (loader or {}).get('dataset', {}).get('pipeline')
    if not pipeline:
        raise RCConfigError('the config has no test_pipeline (nor a test '
                            'dataloader pipeline) to export with the model')
    return [dict(copy.deepcopy(to_plain(t))) for t in pipeline]


def _pipeline_choice(cfg: Config) -> tuple[list, bool, dict]:
    """The inference pipeline (annotation loaders removed, stock packing
    when nothing needs the multi-task one), whether it pads centred, and
    why plugin transforms are kept."""
    from mmseg.registry import TRANSFORMS
    steps = [t for t in _pipeline(cfg)
             if _type_name(t.get('type')) not in ANNOTATION_LOADERS]
    centred = any(_type_name(t.get('type')) == 'MTPadToSize' for t in steps)
    kept = []
    for step in steps:
        kind = _type_name(step.get('type'))
        if kind == 'MTPackSegInputs' and not centred:
            step['type'] = 'PackSegInputs'
            step.pop('meta_keys', None)
        elif _is_plugin(TRANSFORMS, step.get('type')):
            kept.append(kind)
    reasons = {}
    if kept:
        reasons['test_pipeline'] = (
            f'{", ".join(kept)}: no stock transform does the same '
            f'(MTPadToSize pads the image centred to the training crop, as '
            f'the reference evaluates; MTPackSegInputs hands that padding '
            f'to the data preprocessor, which crops the predictions back)')
    return steps, centred, reasons


def _preprocessor_choice(pp_cfg: dict, centred: bool, x_shape: tuple
                         ) -> tuple[dict, Optional[str]]:
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    kind = _type_name(pp_cfg.get('type'))
    if not _is_plugin(MODELS, pp_cfg.get('type')):
        return pp_cfg, None
    if kind != 'MTSegDataPreProcessor':
        return pp_cfg, f'{kind} is an rc_adapter data preprocessor'
    if centred:
        return pp_cfg, ('MTSegDataPreProcessor: the test pipeline pads the '
                        'image centred (MTPadToSize) and this preprocessor '
                        'turns that padding into the crop-back of the '
                        'predictions; mmseg\'s SegDataPreProcessor does not '
                        'read it')
    candidate = {k: v for k, v in pp_cfg.items() if k != 'field_pad_vals'}
    candidate['type'] = 'SegDataPreProcessor'
    plugin, stock = MODELS.build(pp_cfg), MODELS.build(candidate)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3,) + tuple(x_shape), dtype=torch.uint8,
                          generator=generator)
    outputs = []
    for module in (plugin, stock):
        meta = dict(ori_shape=tuple(x_shape), img_shape=tuple(x_shape))
        data = module(dict(inputs=[image.clone()],
                           data_samples=[SegDataSample(metainfo=meta)]),
                      False)
        sample_meta = data['data_samples'][0].metainfo
        padding = sample_meta.get('img_padding_size',
                                  sample_meta.get('padding_size', [0] * 4))
        outputs.append((data['inputs'], [int(p) for p in padding]))
    same = (outputs[0][0].shape == outputs[1][0].shape
            and _max_diff(outputs[0][0], outputs[1][0]) <= _PARITY_ATOL
            and outputs[0][1] == outputs[1][1])
    if same:
        return candidate, None
    return pp_cfg, ('MTSegDataPreProcessor: SegDataPreProcessor with the '
                    'same settings prepares a test image differently')


def _segmentor_choice(task_type: str, pred_field: str
                      ) -> tuple[str, Optional[str]]:
    stock = STOCK_SEGMENTORS.get(task_type)
    if stock is not None:
        return stock, None
    return 'RCMultiTaskSegmentor', (
        f'RCMultiTaskSegmentor (baseline=\'finetune\', one task): no stock '
        f'mmseg segmentor writes a {task_type} prediction ({pred_field}); '
        f'its backbone and head are the plain ones')


def _head_reasons(head_cfg: dict) -> dict:
    """Why the head's rc_adapter types (the head, its losses) are kept."""
    from mmseg.registry import MODELS
    reasons = {}
    kind = _type_name(head_cfg.get('type'))
    if _is_plugin(MODELS, head_cfg.get('type')):
        reasons['decode_head'] = HEAD_REASONS.get(
            kind, f'{kind}: no stock mmseg decode head is known to compute '
                  f'it')
    losses = []
    _collect_types(head_cfg.get('loss_decode'), MODELS, losses)
    if losses:
        reasons['loss_decode'] = (
            f'{", ".join(sorted(set(losses)))}: rc_adapter\'s masked losses '
            f'(ignore invalid pixels); used in training only, inference '
            f'does not build on them')
    return reasons


def _collect_types(value: Any, registry, found: list) -> None:
    if isinstance(value, dict):
        if 'type' in value and _is_plugin(registry, value['type']):
            found.append(_type_name(value['type']))
        for item in value.values():
            _collect_types(item, registry, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_types(item, registry, found)


# -- the exported model -------------------------------------------------------
def _active(model: torch.nn.Module, task: str) -> None:
    if hasattr(model, 'set_active_task'):
        model.set_active_task(task)
    else:
        rc.set_task(model, task, update_trainable=False)


def _head_module(model: torch.nn.Module, task: str) -> torch.nn.Module:
    """The exported model's head module for ``task`` (the stock head of a
    plain segmentor, or the task head of the plugin segmentor)."""
    if hasattr(model, 'decode_heads'):
        return model.decode_heads.tasks[task]
    return model.decode_head


def _tensor_output(model: torch.nn.Module, x: torch.Tensor, task: str,
                   task_type: str) -> torch.Tensor:
    """The task's output at the input size after the output activation
    (what ``mode='tensor'`` of the RC segmentor returns for it)."""
    from mmseg.models.utils import resize

    from ..models.task_head import output_activation
    if hasattr(model, 'decode_heads'):
        return model._forward(x, tasks=[task])[task]
    logits = model._forward(x)
    logits = resize(logits, size=x.shape[2:], mode='bilinear',
                    align_corners=model.align_corners)
    return output_activation(logits, task_type)


def _predictions(model: torch.nn.Module, cfg: Config, image: np.ndarray,
                 field_name: str) -> tuple[torch.Tensor, Optional[Any]]:
    """``inference_model`` on one image: the prediction field (and the
    segmentation logits when the model writes them)."""
    from mmseg.apis import inference_model
    model.cfg = copy.deepcopy(cfg)
    model.cfg.test_pipeline = _pipeline(cfg)
    sample = inference_model(model, image.copy())
    logits = sample.get('seg_logits')
    return sample.get(field_name).data, \
        None if logits is None else logits.data


def _prediction_diff(task_type: str, expected: torch.Tensor,
                     got: torch.Tensor, logits: Optional[torch.Tensor]
                     ) -> float:
    if task_type != 'segmentation':
        return _max_diff(expected, got)
    differ = expected.reshape(got.shape) != got
    if logits is not None and differ.any():
        top2 = logits.topk(2, dim=0).values
        near_tie = (top2[0] - top2[1]) < 1e-3
        differ = differ & ~near_tie
    return differ.float().mean().item()


def export_task(cfg: Config, *, bank: str, task: str, out: str,
                input_size: Sequence[int] = (256, 256)) -> ExportResult:
    """Merges ``task`` into a plain network and saves it (module doc).

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`
            (changed in place).
        bank: Task bank folder.
        task: The task to export.
        out: Output file, ``.pth`` (with ``.py`` config beside it) or
            ``.onnx``.
        input_size: ``(H, W)`` of the parity checks (and the ONNX trace).

    Returns:
        What was written, the parity and the types (:class:`ExportResult`).

    Raises:
        BankError: the bank is missing or lacks ``task``.
        RCConfigError: ``out`` has another extension or would overwrite an
            input (the bank, the config, the data), the ``onnx`` package is
            missing for an ONNX export, or the export does not reproduce the
            RC model (a bug, reported with the numbers).
    """
    from mmseg.registry import MODELS

    from ..models.task_head import head_protocol, plain_head, split_head_cfg
    ext = osp.splitext(out)[1]
    if ext not in ('.pth', '.onnx'):
        raise RCConfigError(f'--out must end in .pth or .onnx, got {out}')
    config_out = osp.splitext(out)[0] + '.py' if ext == '.pth' else None
    check_outputs({'--out': out, 'the exported config': config_out},
                  protected_inputs(cfg, config_path=cfg.filename, bank=bank))
    configure_run(cfg, tasks=[task], train_tasks=[], bank=bank)
    task_bank = open_bank(bank)
    if task not in task_bank.tasks():
        raise BankError(f'task {task!r} is not in the bank {bank}; it '
                        f'holds {task_bank.tasks()}')
    with component_errors():
        model = MODELS.build(cfg.model)
    model.eval()
    _active(model, task)
    merged = rc.merge(model, task)
    merged.eval()
    head_cfg = cfg.model.decode_heads[task]
    protocol = head_protocol(head_cfg, task)
    task_type = protocol['task_type']
    x = torch.randn(1, 3, *input_size)

    plugin = {}
    backbone_cfg = without_pretrained(copy.deepcopy(to_plain(
        cfg.model.backbone)))
    backbone_cfg, why = _backbone_choice(backbone_cfg, merged.backbone, x)
    if why:
        plugin['backbone'] = why
    pipeline, centred, reasons = _pipeline_choice(cfg)
    plugin.update(reasons)
    pp_cfg, why = _preprocessor_choice(
        copy.deepcopy(to_plain(cfg.model.data_preprocessor)), centred,
        tuple(input_size))
    if why:
        plugin['data_preprocessor'] = why
    segmentor, why = _segmentor_choice(task_type, protocol['pred_field'])
    if why:
        plugin['segmentor'] = why
    common = dict(data_preprocessor=pp_cfg, backbone=backbone_cfg,
                  test_cfg=copy.deepcopy(to_plain(
                      cfg.model.get('test_cfg') or dict(mode='whole'))))
    if cfg.model.get('neck'):
        common['neck'] = copy.deepcopy(to_plain(cfg.model.neck))
    if segmentor == 'RCMultiTaskSegmentor':
        model_cfg = dict(type=segmentor, baseline='finetune', tasks=[task],
                         train_tasks=[],
                         decode_heads={task: copy.deepcopy(to_plain(
                             head_cfg))}, **common)
        head_for_types = model_cfg['decode_heads'][task]
    else:
        model_cfg = dict(type=segmentor, decode_head=to_plain(
            split_head_cfg(head_cfg, task)[0]), **common)
        head_for_types = model_cfg['decode_head']
    plugin.update(_head_reasons(head_for_types))

    with component_errors():
        exported = MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))
    exported.backbone.load_state_dict(merged.backbone.state_dict())
    if getattr(merged, 'neck', None) is not None:
        exported.neck.load_state_dict(merged.neck.state_dict())
    source_head = merged.decode_heads
    if segmentor != 'RCMultiTaskSegmentor':
        source_head = plain_head(source_head)
    _head_module(exported, task).load_state_dict(source_head.state_dict())
    exported.eval()

    with torch.no_grad():
        expected = model(x, mode='tensor')[task]
        got = _tensor_output(exported, x, task, task_type)
    max_diff = _max_diff(expected, got)
    onnx_size = None
    meta = _dataset_meta(model, task, task_type)
    export_cfg = dict(model=model_cfg, test_pipeline=pipeline,
                      dataset_meta=meta, default_scope='mmseg',
                      visualizer=dict(type='SegLocalVisualizer',
                                      vis_backends=[dict(
                                          type='LocalVisBackend')],
                                      name='visualizer'))
    if plugin:
        export_cfg['custom_imports'] = dict(imports=['rc_adapter'],
                                            allow_failed_imports=False)
    image = np.random.default_rng(0).integers(
        0, 256, tuple(input_size) + (3,), dtype=np.uint8)
    field_name = protocol['pred_field'] if segmentor == \
        'RCMultiTaskSegmentor' else STOCK_FIELDS[segmentor]
    reference, _ = _predictions(model, cfg, image, protocol['pred_field'])
    pred, logits = _predictions(exported, Config(export_cfg), image,
                                field_name)
    prediction_diff = _prediction_diff(task_type, reference, pred, logits)
    if max_diff > 1e-3 or prediction_diff > 1e-3:
        raise RCConfigError(
            f'export of task {task!r} does not reproduce the RC model (max '
            f'|Δ| of the outputs {max_diff:.3g}, of the predictions '
            f'{prediction_diff:.3g}); nothing was written. Please report '
            f'this with the config')
    types = dict(segmentor=segmentor,
                 backbone=_type_name(backbone_cfg['type']),
                 decode_head=_type_name(head_for_types['type']),
                 data_preprocessor=_type_name(pp_cfg['type']))
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp-{os.getpid()}{ext}'
    try:
        if ext == '.pth':
            config_text = _config_text(export_cfg, task, bank, max_diff,
                                       plugin)
            torch.save({'state_dict': exported.state_dict(),
                        'meta': dict(dataset_meta=meta, config=config_text,
                                     task=task, task_type=task_type,
                                     rc_adapter_version=__version__,
                                     parity_max_abs_diff=max_diff)}, tmp)
            os.replace(tmp, out)
            atomic_write_text(config_out, config_text)
        else:
            # The graph's own outputs (ONNX Runtime, or onnx's reference
            # evaluator) are compared with the RC model's: the parity
            # reported is the worse of the torch and ONNX ones.
            onnx_out, dynamic = _export_onnx(exported, x, tmp, task,
                                             task_type)
            if not dynamic:
                onnx_size = tuple(input_size)
            max_diff = max(max_diff, _max_diff(expected, onnx_out))
            os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return ExportResult(task=task, path=out, config=config_out,
                        max_abs_diff=max_diff,
                        prediction_diff=prediction_diff, types=types,
                        plugin=plugin, onnx_input_size=onnx_size)


#: Stock segmentor -> the field its prediction is written to.
STOCK_FIELDS = {'EncoderDecoder': 'pred_sem_seg',
                'DepthEstimator': 'pred_depth_map'}


def _dataset_meta(model: torch.nn.Module, task: str, task_type: str
                  ) -> dict:
    """``classes``/``palette`` of a segmentation task (None for the other
    task types), plus the task's name and type."""
    info = (getattr(model, 'task_meta', None) or {}).get(task) or {}
    classes, palette = info.get('classes'), info.get('palette')
    return dict(classes=list(classes) if classes else None,
                palette=[list(map(int, c)) for c in palette]
                if classes and palette else None,
                task=task, task_type=task_type)


def _config_text(export_cfg: dict, task: str, bank: str, max_diff: float,
                 plugin: dict) -> str:
    lines = [f'# Task {task!r} of the task bank {osp.abspath(bank)},',
             f'# exported by rc_adapter {__version__} (tools/export.py): '
             f'the merged plain network;',
             f'# parity with the RC model: max |Δ| = {max_diff:.3g}.']
    if plugin:
        lines.append('# rc_adapter types kept (custom_imports imports '
                     'rc_adapter), and why:')
        for component, why in plugin.items():
            lines += textwrap.wrap(f'{component}: {why}', width=77,
                                   initial_indent='#   ',
                                   subsequent_indent='#     ')
    else:
        lines.append('# Every type is a stock mmseg type: it loads without '
                     'rc_adapter.')
    rest = {k: v for k, v in export_cfg.items() if k != 'dataset_meta'}
    meta = pprint.pformat(export_cfg['dataset_meta'], width=64,
                          compact=True, sort_dicts=False)
    return '\n'.join(lines) + '\n' + Config(rest).pretty_text + \
        '\n# The task\'s labels (init_model reads them from the ' \
        'checkpoint\'s meta).\ndataset_meta = ' + meta + '\n'


# -- ONNX ---------------------------------------------------------------------
class _TensorOutput(torch.nn.Module):
    """The exported network's output: the task head at the input size.

    ``forward(image)`` is a single tensor ``(N, C, H, W)`` at the image's
    size, after the head's output activation (the ``mode='tensor'`` output
    of the RC segmentor for that task). The image is the data
    preprocessor's output (normalized, RGB), as for ``mode='tensor'``.
    """

    def __init__(self, model: torch.nn.Module, task: str,
                 task_type: str) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.task_type = task_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _tensor_output(self.model, x, self.task, self.task_type)


def _import_for_onnx(name: str, purpose: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError:
        raise RCConfigError(
            f'ONNX export needs the {name!r} package for {purpose}, which is '
            f'not installed: pip install {name} (or export to .pth)') from None


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, path: str,
                 task: str, task_type: str) -> tuple[torch.Tensor, bool]:
    """Traces the exported model to an ONNX file and runs the file on ``x``.

    The graph has one input ``image`` (N, 3, H, W) and one output named after
    the task, with a dynamic batch and, where the graph supports it, dynamic
    height and width: the TorchScript exporter bakes some sizes into the
    graph (the token counts of attention's reshapes, adaptive pooling), so
    the dynamic graph is run on a second input size and compared with the
    model; when that fails, the graph is exported again for ``x``'s size
    only. It is validated with ``onnx.checker`` (full check, shape
    inference included) and run with ONNX Runtime when installed, else with
    onnx's reference evaluator.

    Returns:
        The ONNX graph's output on ``x``, and whether height and width are
        dynamic.
    """
    onnx = _import_for_onnx('onnx', 'writing the graph')
    wrapper = _TensorOutput(model, task, task_type).eval()

    def export(dynamic: bool) -> torch.Tensor:
        axes = {0: 'batch'}
        if dynamic:
            axes.update({2: 'height', 3: 'width'})
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter (onnx only; the dynamo exporter
            # would add onnxscript) warns that it is the legacy path.
            warnings.simplefilter('ignore', DeprecationWarning)
            torch.onnx.export(
                wrapper, (x,), path, input_names=['image'],
                output_names=[task], opset_version=ONNX_OPSET, dynamo=False,
                dynamic_axes={'image': axes, task: dict(axes)})
        onnx.checker.check_model(path, full_check=True)
        return run_onnx(path, x)

    out = export(dynamic=True)
    probe = torch.randn(x.shape[0], x.shape[1], x.shape[2] + 32,
                        x.shape[3] + 16)
    try:
        with torch.no_grad():
            expected = wrapper(probe)
        resized = _max_diff(expected, run_onnx(path, probe))
        if resized <= max(1e-3, 1e-3 * float(expected.abs().max())):
            return out, True
    except Exception:  # noqa: BLE001 -- the runtime refusing the second
        # size (its exception types vary by runtime): not a dynamic graph.
        pass
    return export(dynamic=False), False


def run_onnx(path: str, x: torch.Tensor) -> torch.Tensor:
    """Runs an exported graph on ``x`` (ONNX Runtime if installed, else
    onnx's reference evaluator, which is slow but has no extra dependency).

    Args:
        path: ``.onnx`` file written by :func:`export_task`.
        x: Input image batch (N, 3, H, W), float32.

    Returns:
        The graph's single output.

    Raises:
        RCConfigError: neither ``onnxruntime`` nor ``onnx`` is installed.
    """
    feed = {'image': x.detach().cpu().numpy()}
    try:
        import onnxruntime
    except ImportError:
        onnx = _import_for_onnx('onnx', 'running the graph')
        from onnx.reference import ReferenceEvaluator
        outputs = ReferenceEvaluator(onnx.load(path)).run(None, feed)
    else:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(
            path, options, providers=['CPUExecutionProvider'])
        outputs = session.run(None, feed)
    return torch.from_numpy(outputs[0])
