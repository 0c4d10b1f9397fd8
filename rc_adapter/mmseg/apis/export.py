"""Exporting one task of a bank as a plain network (``.pth`` + config, or
ONNX), checked against the RC model."""
from __future__ import annotations

import copy
import os
import os.path as osp
import warnings
from types import ModuleType
from typing import Sequence

import torch
from mmengine.config import Config

from ... import core as rc
from ...core.errors import BankError, RCConfigError
from ...core.version import __version__
from ...utils.io import atomic_write_text
from .config import configure_run, open_bank

__all__ = ['export_task', 'run_onnx', 'ONNX_OPSET']

#: ONNX opset of the exported graphs (ONNX Runtime >= 1.14 runs it).
ONNX_OPSET = 17


def export_task(cfg: Config, *, bank: str, task: str, out: str,
                input_size: Sequence[int] = (256, 256)) -> float:
    """Merges ``task`` into a plain network and saves it.

    ``FILE.pth`` holds ``{'state_dict', 'meta': {'config': ...}}`` of an
    mmseg ``EncoderDecoder`` (plain convs and norms, the task's head) and a
    ``FILE.py`` config next to it; ``FILE.onnx`` an ONNX graph returning
    the task's output at the input size.

    Args:
        cfg: A config from :func:`~rc_adapter.mmseg.apis.load_config`
            (changed in place).
        bank: Task bank folder.
        task: The task to export.
        out: Output file, ``.pth`` or ``.onnx``.
        input_size: ``(H, W)`` of the parity check (and the ONNX trace).

    Returns:
        Max ``|Δ|`` between the RC model and the exported network on a
        random input (the parity check; for ONNX, the graph's own output).

    Raises:
        BankError: the bank is missing or lacks ``task``.
        RCConfigError: ``out`` has another extension, or the ``onnx``
            package is missing for an ONNX export.
    """
    from mmseg.registry import MODELS
    ext = osp.splitext(out)[1]
    if ext not in ('.pth', '.onnx'):
        raise RCConfigError(f'--out must end in .pth or .onnx, got {out}')
    configure_run(cfg, tasks=[task], train_tasks=[], bank=bank)
    task_bank = open_bank(bank)
    if task not in task_bank.tasks():
        raise BankError(f'task {task!r} is not in the bank {bank}; it '
                        f'holds {task_bank.tasks()}')
    model = MODELS.build(cfg.model)
    model.eval()
    merged = rc.merge(model, task)
    plain_cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=copy.deepcopy(cfg.model.data_preprocessor),
        backbone=copy.deepcopy(cfg.model.backbone),
        decode_head=copy.deepcopy(cfg.model.decode_heads[task]),
        test_cfg=copy.deepcopy(cfg.model.get('test_cfg',
                                             dict(mode='whole'))))
    plain_cfg['backbone'].pop('init_cfg', None)
    plain = MODELS.build(plain_cfg)
    state = {}
    for key, value in merged.state_dict().items():
        if key.startswith('decode_heads.'):
            key = 'decode_head.' + key[len('decode_heads.'):]
        state[key] = value
    plain.load_state_dict(state, strict=True)
    plain.eval()
    x = torch.randn(1, 3, *input_size)
    with torch.no_grad():
        expected = model(x, mode='tensor')[task]
        got = _plain_output(plain, x)
    max_diff = (expected - got).abs().max().item()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp-{os.getpid()}{ext}'
    try:
        if ext == '.pth':
            config_text = Config(dict(
                model=plain_cfg, custom_imports=cfg.get('custom_imports'),
                default_scope='mmseg')).pretty_text
            torch.save({'state_dict': plain.state_dict(),
                        'meta': dict(config=config_text, task=task,
                                     rc_adapter_version=__version__,
                                     parity_max_abs_diff=max_diff)}, tmp)
            os.replace(tmp, out)
            atomic_write_text(osp.splitext(out)[0] + '.py', config_text)
        else:
            # The graph's own outputs (ONNX Runtime, or onnx's reference
            # evaluator) are compared with the RC model's: the parity
            # reported is the worse of the torch and ONNX ones.
            onnx_out = _export_onnx(plain, x, tmp, task)
            max_diff = max(max_diff,
                           (expected - onnx_out).abs().max().item())
            os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return max_diff


class _PlainOutput(torch.nn.Module):
    """The exported network's output: the task head at the input size.

    Wraps a plain mmseg ``EncoderDecoder`` so that ``forward(image)`` is a
    single tensor ``(N, C, H, W)`` at the image's size, after the head's
    output activation (the ``mode='tensor'`` output of the RC segmentor for
    that task). The image is the data preprocessor's output (normalized,
    RGB), as for ``mode='tensor'``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _plain_output(self.model, x)


def _import_for_onnx(name: str, purpose: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError:
        raise RCConfigError(
            f'ONNX export needs the {name!r} package for {purpose}, which is '
            f'not installed: pip install {name} (or export to .pth)') from None


def _export_onnx(plain: torch.nn.Module, x: torch.Tensor, path: str,
                 task: str) -> torch.Tensor:
    """Traces ``plain`` to an ONNX file and runs the file on ``x``.

    The graph has one input ``image`` (N, 3, H, W) with dynamic batch,
    height and width and one output named after the task. It is validated
    with ``onnx.checker`` (full check, shape inference included) and run
    with ONNX Runtime when installed, else with onnx's reference evaluator.

    Returns:
        The ONNX graph's output on ``x``.
    """
    onnx = _import_for_onnx('onnx', 'writing the graph')
    wrapper = _PlainOutput(plain).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter (onnx only; the dynamo exporter
        # would add onnxscript) warns that it is the legacy path.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(
            wrapper, (x,), path, input_names=['image'], output_names=[task],
            opset_version=ONNX_OPSET, dynamo=False,
            dynamic_axes={'image': {0: 'batch', 2: 'height', 3: 'width'},
                          task: {0: 'batch', 2: 'height', 3: 'width'}})
    onnx.checker.check_model(path, full_check=True)
    return run_onnx(path, x)


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


def _plain_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from mmseg.models.utils import resize
    logits = model._forward(x)
    logits = resize(logits, size=x.shape[2:], mode='bilinear',
                    align_corners=model.align_corners)
    return model.decode_head.output_activation(logits)
