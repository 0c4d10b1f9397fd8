"""Helpers for the end-to-end tests that drive the real command lines on
generated data with tiny networks (seconds per tool run)."""
import hashlib
import os
import signal
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool_env(**extra):
    """The environment of a tool process a test starts: one torch thread
    (the test workers share two cores), plus ``extra``."""
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', **extra)


def run_tool(tool, *args, timeout=900):
    """Runs ``tools/<tool>`` (or ``torchrun`` with ``tool='torchrun'``)."""
    env = tool_env()
    if tool == 'torchrun':
        cmd = [sys.executable, '-m', 'torch.distributed.run'] + list(args)
    else:
        cmd = [sys.executable, os.path.join(ROOT, 'tools', tool)] + list(args)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


#: Runs several tool invocations in one interpreter (see ``run_tools``).
_BATCH_DRIVER = """\
import json, os, runpy, sys, tempfile, traceback
cases, out_path = json.loads(sys.argv[1]), sys.argv[2]
sys.path.insert(0, os.path.dirname(cases[0][0]))
results = []
for argv in cases:
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    sys.stdout.flush(); sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(files[0].fileno(), 1); os.dup2(files[1].fileno(), 2)
    sys.argv = list(argv)
    code = 0
    try:
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else int(
            stop.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(saved[0]); os.close(saved[1])
    texts = []
    for f in files:
        f.seek(0)
        texts.append(f.read().decode('utf-8', 'replace'))
        f.close()
    results.append([code] + texts)
with open(out_path, 'w') as f:
    json.dump(results, f)
"""


def run_tools(*invocations, timeout=900):
    """Runs several ``(tool, *args)`` invocations one after the other in a
    single Python process, each as ``python tools/<tool> args`` would run it
    (``__main__``, ``sys.argv``, its exit status and its own stdout/stderr
    captured at the file-descriptor level); the interpreter start-up and
    the imports (seconds each) are paid once. The runs share the process's
    state (modules, registries), as the library's callers do; a run that
    must be killed, interrupted or must start clean gets its own process
    (``run_tool``).

    Returns:
        One ``subprocess.CompletedProcess`` per invocation.
    """
    import json
    import tempfile
    cases = [[os.path.join(ROOT, 'tools', tool)] + [str(a) for a in args]
             for tool, *args in invocations]
    env = tool_env()
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, 'results.json')
        driver = subprocess.run(
            [sys.executable, '-c', _BATCH_DRIVER, json.dumps(cases),
             out_path], cwd=ROOT, capture_output=True, text=True,
            timeout=timeout, env=env)
        assert driver.returncode == 0 and os.path.exists(out_path), (
            driver.stdout[-3000:] + driver.stderr[-3000:])
        with open(out_path) as f:
            results = json.load(f)
    return [subprocess.CompletedProcess(case[1:], code, out, err)
            for case, (code, out, err) in zip(cases, results)]


def default_sigint():
    """``preexec_fn`` of a tool the test will interrupt: Ctrl-C's default
    action, even when the test run itself was started as a background job
    (a shell starts those with SIGINT ignored, and the child would inherit
    that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ok(result):
    """Asserts a tool run succeeded, showing its output otherwise."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


#: The run settings of the tiny test configs: 2 iterations, batch 2, no
#: scaling/cropping (tiny generated images), validation at the end.
TINY_RUN = """\
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadMTAnnotations'),
    dict(type='MTRandomFlip', prob=0.5),
    dict(type='MTPackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = [dict(type='PolyLR', power=0.9, begin=0, end=2,
                        by_epoch=False)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=2))
"""


def tiny_config(path, data_root, base_config, model, extra=''):
    """Writes a config inheriting ``mmseg_configs/<base_config>`` with the
    ``model`` delta (config source text), :data:`TINY_RUN`, then ``extra``."""
    path.write_text(
        f"_base_ = [{os.path.join(ROOT, 'mmseg_configs', base_config)!r}]\n"
        f"data_root = {str(data_root)!r}\n" + model + TINY_RUN + extra)
    return str(path)


def small_config(path, data_root, base_config, tasks, width=16, extra=''):
    """``mmseg_configs/<base_config>`` at ``width`` channels, 2 iterations,
    batch 2, no scaling/cropping (tiny generated images)."""
    heads = ', '.join(
        f'{t}=dict(in_channels={8 * width}, channels=16, '
        f'c1_in_channels={width}, c1_channels=8)' for t in tasks)
    model = (f'model = dict(\n'
             f'    backbone=dict(stem_channels={width}, '
             f'base_channels={width}),\n'
             f'    decode_heads=dict({heads}))\n')
    return tiny_config(path, data_root, base_config, model, extra)


def add_semseg_then_depth(config, bank, tmp):
    """``add_task.py`` semseg, then depth, into ``bank``; asserts that adding
    depth rewrote neither semseg's file nor the shared one, and returns
    their digests (``{path: sha256}``) for later checks."""
    from rc_adapter import TaskBank
    shared = os.path.join(bank, 'shared.safetensors')
    shared_digest = digest(shared)
    ok(run_tool('add_task.py', config, '--bank', bank, '--task', 'semseg',
                '--work-dir', str(tmp / 'wd_semseg')))
    semseg_file = TaskBank(bank).task_path('semseg')
    semseg_digest = digest(semseg_file)
    semseg_mtime = os.stat(semseg_file).st_mtime_ns
    ok(run_tool('add_task.py', config, '--bank', bank, '--task', 'depth',
                '--work-dir', str(tmp / 'wd_depth')))
    assert digest(semseg_file) == semseg_digest
    assert os.stat(semseg_file).st_mtime_ns == semseg_mtime
    assert digest(shared) == shared_digest
    return {semseg_file: semseg_digest, shared: shared_digest}


def tiny_backbone_checkpoint(path, width=16):
    """A random MTDeepLabResNet-18 at ``width`` saved torchvision-style."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import rc_adapter  # noqa: F401
    init_default_scope('mmseg')
    backbone = MODELS.build(dict(
        type='MTDeepLabResNet', depth=18, stem_channels=width,
        base_channels=width, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
        out_indices=(0, 1, 2, 3)))
    torch.save(backbone.state_dict(), path)
    return str(path)
