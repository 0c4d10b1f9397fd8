"""Small tensors shared by the task-bank tests (test_bank_*.py)."""
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
