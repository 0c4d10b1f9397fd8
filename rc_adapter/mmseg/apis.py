"""Library functions behind ``tools/``: train, add a task, evaluate, export.

Every tool is a thin command line over one function here, so anything a
tool does can be called from Python as well.
"""
import copy
import datetime
import json
import os
import os.path as osp
import sys
import traceback

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper
from mmengine.registry import init_default_scope

from .. import __version__
from .. import core as rc
from ..report import save_json
from .engine import RCRunner

__all__ = ['RCUserError', 'load_config', 'set_data_root', 'configure_run',
           'train', 'add_task', 'evaluate', 'export_task', 'run_cli']


class RCUserError(Exception):
    """A problem with the user's input (config, bank, data, arguments)."""


# -- configs --------------------------------------------------------------
def load_config(path, *, data_root=None, work_dir=None, cfg_options=None,
                launcher='none'):
    """Loads an mmseg config the way every tool does.

    Args:
        path (str): Config file.
        data_root (str, optional): Points every dataloader at this folder.
        work_dir (str, optional): Defaults to ``work_dirs/<config name>``.
        cfg_options (dict, optional): ``--cfg-options`` overrides.
        launcher (str): ``'none'`` or ``'pytorch'`` (torchrun).

    Returns:
        Config: the loaded config.
    """
    if not osp.isfile(path):
        raise RCUserError(f'config file {path} does not exist')
    cfg = Config.fromfile(path)
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
    if cfg.get('model', {}).get('type') != 'RCMultiTaskSegmentor':
        raise RCUserError(f'{path} is not an rc_adapter config: model.type '
                          f'must be RCMultiTaskSegmentor')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return cfg


def _datasets(cfg):
    """Yields every dataset config of the config's dataloaders."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        stack = [loader['dataset']]
        while stack:
            dataset = stack.pop()
            if 'datasets' in dataset:  # ConcatDataset
                stack.extend(dataset['datasets'])
            elif 'dataset' in dataset:  # RepeatDataset and other wrappers
                stack.append(dataset['dataset'])
            else:
                yield dataset


def set_data_root(cfg, root):
    """Points every dataset of ``cfg`` at ``root`` (no interpolation)."""
    if not osp.isdir(root):
        raise RCUserError(f'data root {root} does not exist or is not a '
                          f'folder')
    cfg.data_root = root
    for dataset in _datasets(cfg):
        dataset['data_root'] = root


def _heads(cfg):
    return cfg.model.get('decode_heads', {})


def _check_tasks(cfg, tasks, what='task'):
    heads = _heads(cfg)
    unknown = [t for t in tasks if t not in heads]
    if unknown:
        raise RCUserError(
            f'unknown {what} {", ".join(map(repr, unknown))}: the config '
            f'defines heads for {sorted(heads)}')


def configure_run(cfg, *, tasks, train_tasks, bank=None):
    """Restricts a config to ``tasks`` (built, loaded, evaluated) and
    ``train_tasks`` (trained), optionally on a task bank."""
    _check_tasks(cfg, tasks)
    cfg.model.tasks = list(tasks)
    cfg.model.train_tasks = list(train_tasks)
    cfg.model.bank = bank
    for dataset in _datasets(cfg):
        dataset['tasks'] = list(tasks)
    for key in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(key)
        if evaluator is None:
            continue
        metrics = evaluator if isinstance(evaluator, list) else [evaluator]
        kept = [m for m in metrics if m.get('prefix') in tasks]
        cfg[key] = kept
    if not cfg.get('test_dataloader') and cfg.get('val_dataloader'):
        cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    if not cfg.get('test_evaluator') and cfg.get('val_evaluator'):
        cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
    return cfg


def _open_bank(path):
    from ..core.bank import TaskBank
    if not osp.isdir(path):
        raise RCUserError(f'task bank {path} does not exist; create it with '
                          f'tools/convert_to_rc.py')
    return TaskBank(path)


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _task_info(cfg, model, task, metrics, config_path):
    head = cfg.model.decode_heads[task]
    return dict(
        type=head.get('task_type'),
        head=dict(type=head.get('type'),
                  num_classes=head.get('num_classes'),
                  gt_field=head.get('gt_field')),
        metrics=metrics,
        params=rc.task_parameter_count(model, task),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        tool_version=__version__,
        config=osp.basename(config_path) if config_path else None,
        iterations=cfg.get('train_cfg', {}).get('max_iters'))


def _task_metrics(metrics, task):
    prefix = task + '/'
    return {k[len(prefix):]: float(v) for k, v in metrics.items()
            if k.startswith(prefix)}


# -- train / add a task --------------------------------------------------
def train(cfg, *, bank=None, resume=False, replace=False, config_path=None):
    """Trains the config's ``train_tasks``; with ``bank``, from the bank's
    base state, writing each trained task to the bank (rank 0 only).

    Returns:
        dict: final validation metrics per trained task.
    """
    model_cfg = cfg.model
    tasks = list(model_cfg.get('tasks') or _heads(cfg))
    train_tasks = list(model_cfg.get('train_tasks') or tasks)
    _check_tasks(cfg, train_tasks, 'train task')
    task_bank = None
    if bank is not None:
        task_bank = _open_bank(bank)
        task_bank.verify()
        existing = [t for t in train_tasks if t in task_bank.tasks()]
        if existing and not replace:
            raise RCUserError(
                f'task(s) {existing} already exist in the bank {bank}; pass '
                f'--replace to train them again')
        tasks = train_tasks
    configure_run(cfg, tasks=tasks, train_tasks=train_tasks, bank=bank)
    cfg.resume = resume
    if cfg.get('launcher', 'none') == 'pytorch' and \
            not torch.cuda.is_available():
        _setup_cpu_distributed(cfg)
    runner = RCRunner.from_cfg(cfg)
    runner.train()
    metrics = runner.val() if cfg.get('val_dataloader') else {}
    model = _unwrap(runner.model)
    per_task = {t: _task_metrics(metrics or {}, t) for t in train_tasks}
    if task_bank is not None and is_main_process():
        for task in train_tasks:
            task_bank.write_task(
                task, rc.task_state_dict(model, task),
                info=_task_info(cfg, model, task, per_task[task],
                                config_path),
                replace=replace)
            print(f'wrote task {task!r} to {task_bank.path}')
    return per_task


def _setup_cpu_distributed(cfg):
    """DDP on CPUs (gloo): mmengine's launcher insists on CUDA devices, so
    start the process group here and wrap without ``device_ids``."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        # device_ids=None: CPU modules (mmengine would pass LOCAL_RANK).
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel',
                                     device_ids=None,
                                     broadcast_buffers=False,
                                     find_unused_parameters=False)


def add_task(cfg, *, bank, task, replace=False, config_path=None):
    """Trains exactly ``task`` from the bank's base state and stores it.

    Nothing else in the bank is touched.
    """
    _check_tasks(cfg, [task])
    cfg.model.tasks = [task]
    cfg.model.train_tasks = [task]
    return train(cfg, bank=bank, replace=replace,
                 config_path=config_path)[task]


# -- evaluate ------------------------------------------------------------
def evaluate(cfg, *, bank=None, tasks=None, checkpoint=None, out=None,
             show_dir=None):
    """Evaluates tasks on the config's validation split.

    With ``bank`` every stored task (or ``tasks``) is loaded, verified,
    and evaluated; with ``checkpoint`` a trained mmengine checkpoint of the
    config is evaluated instead (baselines).

    Returns:
        dict: ``{"metrics": {task: {metric: value}}, "delta_m": float or
        None}``.
    """
    if bank is not None:
        task_bank = _open_bank(bank)
        stored = task_bank.tasks()
        if tasks is None:
            tasks = [t for t in stored if t in _heads(cfg)]
        missing = [t for t in tasks if t not in stored]
        if missing:
            raise RCUserError(f'task(s) {missing} are not in the bank '
                              f'{bank}; it holds {stored}')
        if not tasks:
            raise RCUserError(f'the bank {bank} holds no task of this '
                              f'config (bank: {stored}, config: '
                              f'{sorted(_heads(cfg))})')
    elif tasks is None:
        tasks = list(cfg.model.get('tasks') or _heads(cfg))
    configure_run(cfg, tasks=tasks, train_tasks=[], bank=bank)
    if checkpoint is not None:
        if not osp.isfile(checkpoint):
            raise RCUserError(f'checkpoint {checkpoint} does not exist')
        cfg.load_from = checkpoint
    if show_dir is not None:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='MTPredictionSaverHook', out_dir=show_dir)]
    runner = RCRunner.from_cfg(cfg)
    metrics = runner.test()
    result = dict(metrics={t: _task_metrics(metrics, t) for t in tasks})
    result['delta_m'] = _delta_m(cfg, result['metrics'])
    if out is not None:
        save_json(out, result)
    return result


def _delta_m(cfg, metrics):
    """Δm (%, positive = drop) against ``cfg.single_task_reference``
    (task -> single-task value of its primary metric), over the evaluated
    tasks that have a reference; None without references."""
    from .evaluation import delta_m_from_metrics
    reference = {t: v for t, v in (cfg.get('single_task_reference') or {})
                 .items() if t in metrics}
    if not reference:
        return None
    flat = {f'{t}/{k}': v for t, values in metrics.items()
            for k, v in values.items()}
    return delta_m_from_metrics(flat, reference)


# -- export --------------------------------------------------------------
def export_task(cfg, *, bank, task, out, input_size=(256, 256)):
    """Merges ``task`` into a plain network and saves it.

    ``FILE.pth`` holds ``{'state_dict', 'meta': {'config': ...}}`` of an
    mmseg ``EncoderDecoder`` (plain convs and norms, the task's head) and a
    ``FILE.py`` config next to it; ``FILE.onnx`` an ONNX graph returning
    the task's output at the input size.

    Returns:
        float: max |Δ| between the RC model and the exported network on a
        random input (the parity check).
    """
    from mmseg.registry import MODELS
    configure_run(cfg, tasks=[task], train_tasks=[], bank=bank)
    task_bank = _open_bank(bank)
    if task not in task_bank.tasks():
        raise RCUserError(f'task {task!r} is not in the bank {bank}; it '
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
    ext = osp.splitext(out)[1]
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp-{os.getpid()}{ext}'
    if ext == '.pth':
        config_text = Config(dict(model=plain_cfg,
                                  custom_imports=cfg.get('custom_imports'),
                                  default_scope='mmseg')).pretty_text
        torch.save({'state_dict': plain.state_dict(),
                    'meta': dict(config=config_text, task=task,
                                 rc_adapter_version=__version__,
                                 parity_max_abs_diff=max_diff)}, tmp)
        os.replace(tmp, out)
        with open(osp.splitext(out)[0] + '.py', 'w') as f:
            f.write(config_text)
    elif ext == '.onnx':
        # The graph's own outputs (ONNX Runtime, or onnx's reference
        # evaluator) are compared with the RC model's: the parity reported
        # is the worse of the torch and ONNX ones.
        try:
            onnx_out = _export_onnx(plain, x, tmp, task)
            max_diff = max(max_diff, (expected - onnx_out).abs().max().item())
            os.replace(tmp, out)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
    else:
        raise RCUserError(f'--out must end in .pth or .onnx, got {out}')
    return max_diff


class _PlainOutput(torch.nn.Module):
    """The exported network's output: the task head at the input size.

    Wraps a plain mmseg ``EncoderDecoder`` so that ``forward(image)`` is a
    single tensor ``(N, C, H, W)`` at the image's size, after the head's
    output activation (the ``mode='tensor'`` output of the RC segmentor for
    that task). The image is the data preprocessor's output (normalized,
    RGB), as for ``mode='tensor'``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return _plain_output(self.model, x)


#: ONNX opset of the exported graphs (ONNX Runtime >= 1.14 runs it).
ONNX_OPSET = 17


def _import_for_onnx(name, purpose):
    try:
        return __import__(name)
    except ImportError:
        raise RCUserError(
            f'ONNX export needs the {name!r} package for {purpose}, which is '
            f'not installed: pip install {name} (or export to .pth)') from None


def _export_onnx(plain, x, path, task):
    """Traces ``plain`` to an ONNX file and runs the file on ``x``.

    The graph has one input ``image`` (N, 3, H, W) with dynamic batch,
    height and width and one output named after the task. It is validated
    with ``onnx.checker`` (full check, shape inference included) and run
    with ONNX Runtime when installed, else with onnx's reference evaluator.

    Returns:
        torch.Tensor: the ONNX graph's output on ``x``.
    """
    import warnings
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


def run_onnx(path, x):
    """Runs an exported graph on ``x`` (ONNX Runtime if installed, else
    onnx's reference evaluator, which is slow but has no extra dependency).

    Args:
        path (str): ``.onnx`` file written by :func:`export_task`.
        x (torch.Tensor): Input image batch (N, 3, H, W), float32.

    Returns:
        torch.Tensor: the graph's single output.
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


def _plain_output(model, x):
    from mmseg.models.utils import resize
    logits = model._forward(x)
    logits = resize(logits, size=x.shape[2:], mode='bilinear',
                    align_corners=model.align_corners)
    return model.decode_head.output_activation(logits)


# -- command lines -------------------------------------------------------
def run_cli(main):
    """Runs a tool's ``main``: user errors become one paragraph on stderr
    and exit code 2, without a traceback (set ``RC_DEBUG=1`` to see it)."""
    from ..core.bank import BankError
    try:
        result = main()
    except (RCUserError, BankError, FileNotFoundError, KeyError,
            ValueError) as err:
        if os.environ.get('RC_DEBUG'):
            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args \
            else str(err)
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)
    sys.exit(result or 0)
