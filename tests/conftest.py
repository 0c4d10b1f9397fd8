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


#: Seconds each of the longest test modules takes (2 workers, this 2-core
#: machine), for scheduling only: ``make test`` hands whole modules to the
#: workers (``--dist loadfile --no-loadscope-reorder``) in collection order,
#: so collecting the longest first keeps one worker from finishing a long
#: module alone at the end. Modules not listed follow in file order.
MODULE_SECONDS = {
    'test_crash_e2e': 61, 'test_tools': 55, 'test_convert': 50,
    'test_ablation': 45, 'test_families': 41, 'test_demo': 39,
    'test_configs': 38, 'test_amp_compile': 37, 'test_mmseg_habits': 28,
    'test_segmentor': 27, 'test_tool_bank': 21, 'test_training_safety': 21,
    'test_configs_transformers': 18, 'test_bank': 18, 'test_export': 15,
    'test_tools_pascal': 15, 'test_warm_start': 14, 'test_stock_tools': 13,
    'test_serving': 12, 'test_e2e_segformer': 10, 'test_analyze': 10,
}


def _module(item):
    return item.module.__name__.rpartition('.')[2]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _module(item) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    # A stable sort: each module's tests keep their order.
    items.sort(key=lambda item: -MODULE_SECONDS.get(_module(item), 0))
