"""Working the way an mmseg user works: a bank served through stock
``init_model`` (``model.bank`` in the config, or the bank folder as the
checkpoint), ``inference_model``, ``MMSegInferencer`` and
``show_result_pyplot``; work-dir checkpoints of RC runs read by stock
``init_model`` and mmseg's own ``tools/test.py`` under torch's weights-only
default, while unsafe pickles stay refused.

The workspace is a generated NYUD-layout set (32x32), a bank converted from
a tiny random backbone and two tasks trained for 2 iterations each by
``train_task`` (what ``tools/add_task.py`` runs)."""
import glob
import os
import os.path as osp
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from tool_helpers import (ROOT, small_config, tiny_backbone_checkpoint,
                          tool_env)

import rc_adapter as rc
from rc_adapter.core.errors import CheckpointError
from rc_adapter.mmseg.checkpoint import load_checkpoint_dict
from rc_adapter.mmseg.datasets.meta import NYU40_CLASSES, NYU40_PALETTE

TASKS = ('semseg', 'depth', 'normals', 'edge')
STORED = ['semseg', 'depth']
FIELDS = {'semseg': 'pred_sem_seg', 'depth': 'pred_depth_map'}


def make_workspace(tmp, seed, train=()):
    """Generated NYUD-layout data (32x32), the small config, a bank
    converted from a tiny random backbone (no RI) and the ``train`` tasks
    trained into it for 2 iterations each by ``train_task`` (work dirs
    ``wd_<task>``). Shared with ``test_engine.py``."""
    from rc_adapter.mmseg.apis import load_config, train_task
    from rc_adapter.mmseg.convert import convert_checkpoint
    from rc_adapter.synthetic import generate
    data = tmp / 'data'
    generate('nyud', str(data), num_train=4, num_val=2, size=(32, 32),
             seed=seed)
    config = small_config(tmp / 'small.py', data, 'rc_r18_synthetic_nyud.py',
                          TASKS)
    bank = str(tmp / 'bank')
    convert_checkpoint(config, tiny_backbone_checkpoint(tmp / 'bb.pth'),
                       bank, ri=False, progress=False, log=lambda line: None)
    for task in train:
        train_task(load_config(config, work_dir=str(tmp / f'wd_{task}')),
                   bank=bank, task=task)
    return dict(tmp=tmp, config=config, bank=bank,
                images=sorted(glob.glob(str(data / 'images' / '*.jpg'))))


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    space = make_workspace(tmp_path_factory.mktemp('habits'), 1, STORED)
    space['ckpt'] = str(space['tmp'] / 'wd_semseg' / 'iter_2.pth')
    return space


def _bank_cfg(workspace):
    cfg = Config.fromfile(workspace['config'])
    cfg.model.bank = workspace['bank']
    return cfg


def _val_reference(workspace):
    """What tools/test.py computes for the first validation image: the
    config's test dataset (annotations loaded) through test_step of a model
    built with the bank."""
    from mmseg.registry import DATASETS, MODELS
    cfg = _bank_cfg(workspace)
    model = MODELS.build(cfg.model).eval()
    item = DATASETS.build(cfg.test_dataloader.dataset)[0]
    with torch.no_grad():
        sample = model.test_step(pseudo_collate([item]))[0]
    return item['data_samples'].img_path, sample


def _assert_same_predictions(a, b, tasks=STORED):
    for task in tasks:
        assert torch.equal(a.get(FIELDS[task]).data,
                           b.get(FIELDS[task]).data), task


def test_config_bank_serves_every_stored_task_and_trains_none(workspace):
    from mmseg.apis import inference_model, init_model
    from rc_adapter import TaskBank
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = init_model(_bank_cfg(workspace), device='cpu')
    assert not [w for w in caught if 'bank' in str(w.message)]
    # Every stored task with a head is served, none trained, none loaded
    # before its first use.
    assert model.tasks == STORED and model.train_tasks == []
    assert not any(p.requires_grad for p in model.parameters())
    assert rc.list_tasks(model) == []
    img, reference = _val_reference(workspace)
    result = inference_model(model, img)
    assert sorted(rc.list_tasks(model)) == sorted(STORED)
    # One pred_* field per stored task, as tools/test.py predicts them.
    assert sorted(result.keys()) == ['pred_depth_map', 'pred_sem_seg']
    _assert_same_predictions(result, reference)
    # The served tensors are the bank's, bit for bit.
    bank = TaskBank(workspace['bank'])
    # The bank names semseg's classes and colours as its training data did.
    info = bank.task_info('semseg')
    assert info['classes'] == list(NYU40_CLASSES)
    assert info['palette'] == [list(c) for c in NYU40_PALETTE]
    assert bank.task_info('depth')['classes'] is None
    for task in STORED:
        stored = bank.read_task(task)
        served = rc.task_state_dict(model, task)
        assert stored.keys() == served.keys()
        assert all(torch.equal(stored[k], served[k]) for k in stored)
    # Class names of the segmentation task: the bank recorded those of the
    # dataset semseg was trained on.
    assert model.dataset_meta['classes'] == NYU40_CLASSES
    assert model.dataset_meta['palette'] == NYU40_PALETTE
    meta = model.task_meta
    assert meta['semseg']['classes_from'] == 'the bank manifest'
    assert meta['depth']['classes'] is None
    assert meta['depth']['pred_field'] == 'pred_depth_map'


def test_bank_folder_as_the_checkpoint_argument(workspace):
    from mmseg.apis import inference_model, init_model
    model = init_model(workspace['config'], workspace['bank'], device='cpu')
    assert model.bank.path == osp.abspath(workspace['bank'])
    assert model.tasks == STORED and model.train_tasks == []
    img, reference = _val_reference(workspace)
    _assert_same_predictions(inference_model(model, img), reference)
    assert model.dataset_meta['classes'] == NYU40_CLASSES


def test_inferencer_returns_every_task_with_the_models_classes(workspace):
    from mmseg.apis import MMSegInferencer
    img, reference = _val_reference(workspace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        inferencer = MMSegInferencer(model=_bank_cfg(workspace),
                                     device='cpu')
    # mmseg falls back to Cityscapes' 19 names; the 41-class head keeps
    # its own.
    assert any('19 class names ignored' in str(w.message) for w in caught)
    assert inferencer.model.dataset_meta['classes'] == NYU40_CLASSES
    sample = inferencer(img, return_datasamples=True)
    _assert_same_predictions(sample, reference)
    # The bank as weights, and the inferencer's own drawing.
    inferencer = MMSegInferencer(model=workspace['config'],
                                 weights=workspace['bank'], device='cpu')
    out = inferencer(img, return_datasamples=True)
    _assert_same_predictions(out, reference)
    drawn = inferencer(img, return_vis=True)['visualization']
    # The config's visualizer (MTSegLocalVisualizer) draws the multi-task
    # panel: image and one tile per task, named by the file.
    import mmcv
    from rc_adapter.mmseg.visualization import draw_panel, sample_task_views
    views = sample_task_views(out, None, inferencer.model.dataset_meta)
    for view in views:
        view.gt = None
    expected = draw_panel(mmcv.imread(img)[:, :, ::-1], views,
                          title=osp.basename(img)).image
    assert drawn.dtype == np.uint8 and drawn.shape == expected.shape
    assert np.array_equal(drawn, expected)


def test_show_result_pyplot_draws_segmentation_with_the_palette(workspace):
    from mmseg.apis import inference_model, init_model, show_result_pyplot
    model = init_model(_bank_cfg(workspace), device='cpu')
    img = workspace['images'][0]
    result = inference_model(model, img)
    out_file = str(workspace['tmp'] / 'shown.png')
    drawn = show_result_pyplot(model, img, result, opacity=1.0, show=False,
                               with_labels=False, draw_gt=False,
                               out_file=out_file)
    assert osp.isfile(out_file)
    # Top: the class map in the NYU-40 palette; below: the depth map.
    assert drawn.shape == (64, 32, 3)
    classes = result.pred_sem_seg.data[0].numpy()
    expected = np.asarray(NYU40_PALETTE, np.uint8)[classes]
    assert np.array_equal(drawn[:32], expected)


def test_shadowed_and_untrained_tasks_warn(workspace):
    from mmseg.registry import MODELS
    cfg = _bank_cfg(workspace)
    cfg.model.train_tasks = ['semseg']
    cfg.model.allow_random_bank = False
    with pytest.warns(UserWarning, match=r"\['semseg'\] are stored in the "
                                         r'bank.*train_tasks'):
        model = MODELS.build(cfg.model)
    assert model.tasks == STORED and model.train_tasks == ['semseg']
    # semseg starts from the base state; depth is still served.
    assert rc.list_tasks(model) == ['semseg']
    cfg = _bank_cfg(workspace)
    cfg.model.tasks = ['semseg', 'normals']
    with pytest.warns(UserWarning, match=r"\['normals'\] are neither in the "
                                         r'bank.*untrained'):
        MODELS.build(cfg.model)


def test_work_dir_checkpoint_loads_with_stock_init_model(workspace):
    """Stock torch.load (weights-only by default) reads the checkpoint an
    RC run wrote, and stock init_model serves it."""
    from mmseg.apis import inference_model, init_model
    raw = torch.load(workspace['ckpt'])  # weights-only: torch's default
    assert {'meta', 'state_dict', 'message_hub'} <= set(raw)
    # Our scoped loader leaves the process-wide allow-list in place.
    load_checkpoint_dict(workspace['ckpt'])
    assert set(torch.load(workspace['ckpt'])) == set(raw)
    model = init_model(workspace['config'], workspace['ckpt'], device='cpu')
    assert model.dataset_meta['classes'] == NYU40_CLASSES
    img, reference = _val_reference(workspace)
    _assert_same_predictions(inference_model(model, img), reference,
                             tasks=['semseg'])


def test_stock_mmseg_test_tool_reads_a_work_dir_checkpoint(workspace):
    import mmseg
    tool = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'test.py')
    if not osp.isfile(tool):
        pytest.skip('mmseg was installed without its tools/')
    env = tool_env(PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, tool, workspace['config'], workspace['ckpt'],
         '--work-dir', str(workspace['tmp'] / 'stock_test')],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + \
        result.stderr[-3000:]
    assert 'semseg/mIoU' in result.stdout + result.stderr


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _GetattrOnAnArray:
    def __reduce__(self):
        return getattr, (np.ndarray, 'tofile')


@pytest.mark.parametrize('payload', ['os.system', 'getattr'])
def test_unsafe_pickles_are_still_refused(tmp_path, payload):
    """The process-wide allow-list admits mmengine's data types only: a
    pickle that would run a command (or reach a method through getattr) is
    refused by stock torch.load and by our loader, and nothing runs."""
    marker = tmp_path / 'ran'
    evil = _RunsCommand(f'touch {marker}') if payload == 'os.system' \
        else _GetattrOnAnArray()
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': evil}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)  # torch's default is weights-only
    with pytest.raises(CheckpointError, match='refused to load'):
        load_checkpoint_dict(path)
    assert not marker.exists()


def test_bank_loader_leaves_other_paths_to_mmengine(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader
    from rc_adapter.mmseg.checkpoint import load_from_local_or_task_bank
    loader = CheckpointLoader._get_checkpoint_loader
    assert loader(str(tmp_path / 'bank')) is load_from_local_or_task_bank
    assert loader(str(tmp_path / 'x.pth')).__name__ == 'load_from_local'
    assert loader('https://host/x').__name__ == 'load_from_http'
    # A folder that is not a bank goes to mmengine's own loader (its own
    # error for a missing file).
    with pytest.raises(FileNotFoundError):
        load_from_local_or_task_bank(str(tmp_path), 'cpu')
    state = {'w': torch.ones(2)}
    torch.save(state, tmp_path / 'plain')
    got = load_from_local_or_task_bank(str(tmp_path / 'plain'), 'cpu')
    assert torch.equal(got['w'], state['w'])
