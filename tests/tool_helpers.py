"""Helpers for the end-to-end tests that drive the real command lines on
generated data with tiny networks (seconds per tool run)."""
import hashlib
import json
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
    """Runs ``tools/<tool>`` (or ``torchrun`` with ``tool='torchrun'``) as
    ``python tools/<tool> args`` would, in its own process, and returns the
    ``subprocess.CompletedProcess`` (text output, a negative status for a
    signal).

    A tool's process is forked from a per-test-process interpreter that has
    already imported the tools' modules (:class:`_ToolForkServer`): the
    tool's ``__main__``, arguments, environment, working directory, exit
    status, signals and stdout/stderr are its own; the seconds of imports
    are paid once. ``RC_TEST_FRESH_TOOLS=1`` starts a new interpreter for
    every run instead (as a user's shell does). ``torchrun`` always gets a
    new one.
    """
    env = tool_env()
    if tool == 'torchrun':
        cmd = [sys.executable, '-m', 'torch.distributed.run'] + list(args)
    else:
        cmd = [sys.executable, os.path.join(ROOT, 'tools', tool)] + \
            [str(a) for a in args]
        if os.environ.get('RC_TEST_FRESH_TOOLS') != '1':
            return _ToolForkServer.get().run(cmd[1:], env, timeout)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_tools(*invocations, timeout=900):
    """``run_tool`` for each ``(tool, *args)`` in turn.

    Returns:
        One ``subprocess.CompletedProcess`` per invocation.
    """
    return [run_tool(*invocation, timeout=timeout)
            for invocation in invocations]


#: The fork server: imports what the tools import, then for each request
#: line (JSON: argv, env, cwd, out, err) forks a child that runs the tool
#: as ``__main__`` with its stdout/stderr on the given files, and answers
#: with the child's pid, then its wait status. It uses no thread, so
#: forking it is safe.
_FORK_SERVER = """\
import json, os, runpy, sys
requests = os.fdopen(os.dup(0), 'r')
answers = os.fdopen(os.dup(1), 'w')
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1):
    os.dup2(null, fd)
sys.path[0] = sys.argv[1]  # as for python tools/<tool>, not -c's ''
import _common  # noqa: F401  (puts the checkout first, as in a tool)
import rc_adapter  # noqa: F401
import mmengine.runner, mmseg.apis, rc_adapter.mmseg.apis  # noqa: F401,E401
for line in requests:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        requests.close()
        answers.close()
        os.dup2(null, 0)
        for fd, path in ((1, request['out']), (2, request['err'])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                            0o600), fd)
        os.close(null)
        os.environ.clear()
        os.environ.update(request['env'])
        os.chdir(request['cwd'])
        sys.argv = request['argv']
        runpy.run_path(sys.argv[0], run_name='__main__')
        sys.exit(0)
    answers.write(json.dumps(pid) + '\\n')
    answers.flush()
    answers.write(json.dumps(os.waitpid(pid, 0)[1]) + '\\n')
    answers.flush()
"""


class _ToolForkServer:
    """The fork server of this test process, started at its first use."""

    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, '-c', _FORK_SERVER, os.path.join(ROOT, 'tools')],
            cwd=ROOT, env=tool_env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)

    def _answer(self):
        line = self.proc.stdout.readline()
        assert line, 'the tool fork server stopped'
        return json.loads(line)

    def run(self, argv, env, timeout):
        """Runs ``argv`` (script and arguments) in a forked child; kills it
        after ``timeout`` seconds (``subprocess.TimeoutExpired``)."""
        import tempfile
        import threading
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, 'out'), os.path.join(tmp, 'err')
            self.proc.stdin.write(json.dumps(dict(
                argv=argv, env=env, cwd=ROOT, out=out, err=err)) + '\n')
            self.proc.stdin.flush()
            pid = self._answer()
            killed = []

            def kill():
                killed.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it has just ended
                    pass
            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                status = self._answer()  # the child's wait status
            finally:
                timer.cancel()
            if killed:
                raise subprocess.TimeoutExpired(argv, timeout)
            texts = []
            for path in (out, err):
                with open(path, encoding='utf-8', errors='replace') as f:
                    texts.append(f.read())
        code = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                else os.WEXITSTATUS(status))
        return subprocess.CompletedProcess([sys.executable] + argv, code,
                                           *texts)


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
