"""Small tensors and process helpers shared by the task-bank tests
(test_bank_*.py, test_serving.py, test_tool_bank.py)."""
import json
import os
import signal
import traceback

import torch


def shared_state():
    """A tiny 'shared filter bank'."""
    gen = torch.Generator().manual_seed(1)
    return {'conv.weight': torch.randn(4, 3, 3, 3, generator=gen),
            'bn.base.running_var': torch.ones(4)}


def task_state(value):
    """A task state whose every element is ``value``."""
    return {'conv.modulators.t.weight': torch.full((4, 4), float(value)),
            'bn.tasks.t.num_batches_tracked': torch.tensor(int(value))}


def equal(a, b):
    """Same keys, dtypes and values."""
    return sorted(a) == sorted(b) and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# -- processes ---------------------------------------------------------------
def fork_call(fn, *args):
    """Runs ``fn(*args)`` in a forked process (one torch thread); the last
    argument is the path of a JSON file receiving its result (or the
    traceback). Returns the pid (see :func:`wait_call`)."""
    out = args[-1]
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            torch.set_num_threads(1)
            result = fn(*args)
        except BaseException:  # noqa: BLE001 - reported to the parent
            result, code = dict(crash=traceback.format_exc()), 1
        with open(out, 'w') as f:
            json.dump(result, f)
        os._exit(code)
    return pid


def wait_call(pid, out):
    """Waits for a :func:`fork_call` process; asserts it succeeded and
    returns its result."""
    _, status = os.waitpid(pid, 0)
    result = json.load(open(out))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, result
    return result


# The file-system calls of a commit, counted by killed_child.
FS_CALLS = ('open', 'write', 'fsync', 'replace', 'unlink', 'mkdir')


def killed_child(path, op, step):
    """Forks a process that opens the bank at ``path``, runs ``op(bank)``
    and SIGKILLs itself right before its ``step``-th file-system call
    (:data:`FS_CALLS`); ``step`` 0 kills it right after ``op`` returned.
    Returns True if it was killed, False if it finished."""
    from rc_adapter.core.bank import TaskBank
    pid = os.fork()
    if pid == 0:  # the child
        try:
            count = [0]

            def hook(real):
                def call(*args, **kwargs):
                    count[0] += 1
                    if count[0] == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)
                return call

            bank = TaskBank(path)
            for name in FS_CALLS:
                setattr(os, name, hook(getattr(os, name)))
            op(bank)
            if step == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, f'the child failed (status {status})'
    return False
