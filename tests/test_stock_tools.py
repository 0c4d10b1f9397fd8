"""mmseg's own command lines on an rc_adapter config, as an mmseg user runs
them: ``tools/train.py`` (a task trained from a bank set in the config),
``--resume``, and ``tools/test.py CHECKPOINT --out DIR --show-dir DIR``,
whose predictions are byte-identical to rc_adapter's ``tools/test.py``.

mmsegmentation 1.2.2 ships its tools inside the package
(``mmseg/.mim/tools``); they are run from there, unchanged. The config is
the shipped ``rc_r18_nyud.py`` shrunk to seconds (``small_config``) and
restricted to one task. Four process launches (about 9 s of imports each).
"""
import os
import re
import textwrap

import cv2
import numpy as np
import pytest
from tool_helpers import (digest, ok, run_tool, small_config,
                          tiny_backbone_checkpoint)

import mmseg

MMSEG_TOOLS = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools')
TASKS = ('semseg', 'depth', 'normals', 'edge')


def _stock(tool, *args):
    path = os.path.join(MMSEG_TOOLS, tool)
    return run_tool(path, *args)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    from rc_adapter.mmseg.convert import convert_checkpoint
    from rc_adapter.synthetic import generate
    if not os.path.isfile(os.path.join(MMSEG_TOOLS, 'train.py')):
        pytest.skip(f'mmseg ships no tools in {MMSEG_TOOLS}')
    tmp = tmp_path_factory.mktemp('stock_tools')
    data = tmp / 'data'
    generate('nyud', str(data), num_train=6, num_val=3, size=(32, 32),
             seed=11)
    small = small_config(tmp / 'small.py', data, 'rc_r18_nyud.py', TASKS)
    bank = tmp / 'bank'
    convert_checkpoint(small, tiny_backbone_checkpoint(tmp / 'r18.pth'),
                       str(bank), calib_images=4, calib_size=(32, 32),
                       batch_size=2, progress=False, log=lambda line: None)
    # One task, the bank named in the config (the mmseg way to train from
    # it), every test image drawn. The shipped evaluator is one
    # MTMultiTaskEvaluator dict, which mmseg's test.py --out needs; only its
    # metrics list is narrowed here.
    # MTSegLocalVisualizer draws the multi-task panel for mmseg's
    # SegVisualizationHook.
    config = tmp / 'stock.py'
    config.write_text(textwrap.dedent(f"""\
        _base_ = ['./small.py']
        tasks = ['semseg']
        model = dict(bank={str(bank)!r}, tasks=tasks, train_tasks=tasks)
        train_dataloader = dict(dataset=dict(tasks=tasks))
        val_dataloader = dict(dataset=dict(tasks=tasks))
        test_dataloader = val_dataloader
        val_evaluator = dict(metrics=[
            dict(type='MTSemSegMetric', prefix='semseg')])
        test_evaluator = val_evaluator
        default_hooks = dict(visualization=dict(interval=1))
        """))
    with open(data / 'gt_sets' / 'val.txt') as f:
        names = sorted(line.strip() for line in f)
    return dict(tmp=tmp, config=str(config), bank=str(bank), names=names)


def test_mmseg_train_resume_and_test_on_an_rc_config(workspace):
    tmp, config, names = (workspace['tmp'], workspace['config'],
                          workspace['names'])
    manifest = os.path.join(workspace['bank'], 'manifest.json')
    before = digest(manifest)
    work_dir = str(tmp / 'work')
    ok(_stock('train.py', config, '--work-dir', work_dir))
    assert os.path.exists(os.path.join(work_dir, 'iter_2.pth'))
    resumed = ok(_stock('train.py', config, '--work-dir', work_dir,
                        '--resume', '--cfg-options',
                        'train_cfg.max_iters=4'))
    log = resumed.stdout + resumed.stderr
    assert re.search(r'resumed epoch: 0, iter: 2', log), log[-3000:]
    checkpoint = os.path.join(work_dir, 'iter_4.pth')
    assert os.path.exists(checkpoint)
    assert digest(manifest) == before  # mmseg's tools never write a bank

    # mmseg's test.py --out DIR --show-dir DIR on the trained checkpoint
    # (weights-only loading of an mmengine checkpoint with rc_adapter
    # imported by the config).
    result = ok(_stock('test.py', config, checkpoint, '--out',
                       str(tmp / 'pred'), '--show-dir', str(tmp / 'show'),
                       '--work-dir', str(tmp / 'work_test')))
    assert re.search(r'semseg/mIoU: \d', result.stdout + result.stderr)
    files = sorted(os.listdir(tmp / 'pred' / 'pred_sem_seg'))
    assert files == [f'{n}.png' for n in names]
    # One panel per image, drawn by MTSegLocalVisualizer (input, ground
    # truth and prediction: taller than two image rows of 32 px).
    panels = sorted(os.listdir(tmp / 'show' / 'vis_data' / 'vis_image'))
    assert len(panels) == len(names)
    for name, panel in zip(names, panels):
        assert panel.startswith(f'test_{name}.jpg')
        picture = cv2.imread(str(tmp / 'show' / 'vis_data' / 'vis_image' /
                                 panel))
        assert picture.shape[0] > 2 * 256

    # rc_adapter's test.py on the same checkpoint writes the same files.
    ok(run_tool('test.py', config, '--checkpoint', checkpoint, '--out',
                str(tmp / 'pred_rc'), '--work-dir', str(tmp / 'work_rc')))
    for name in files:
        ours = cv2.imread(str(tmp / 'pred_rc' / 'pred_sem_seg' / name),
                          cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(tmp / 'pred' / 'pred_sem_seg' / name),
                            cv2.IMREAD_UNCHANGED)
        assert ours.shape == (32, 32) and np.array_equal(ours, theirs)
