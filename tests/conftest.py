import gc
import os

import pytest
import torch

import rc_adapter  # noqa: F401  (torch, mmengine, mmseg: ~500k objects)

# Those objects live as long as the test process: keep them out of every
# later full collection (mmengine's datasets run one each, ~0.4 s).
gc.freeze()

# Two cores: keep torch from oversubscribing them in the test processes
# (one thread per pytest-xdist worker when the suite runs in parallel).
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


#: Test modules that run the real tools end to end (subprocesses, training
#: runs, real kills); ``make test-quick`` (``-m "not slow"``) leaves them out,
#: ``make test`` (and CI) runs everything.
SLOW_MODULES = frozenset({
    'test_ablation', 'test_analyze', 'test_crash_e2e', 'test_demo',
    'test_e2e_segformer', 'test_stock_tools', 'test_tool_bank', 'test_tools',
    'test_tools_pascal', 'test_training_safety', 'test_warm_start',
})


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: end-to-end through the real tools (make test-quick '
        'skips it)')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition('.')[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
