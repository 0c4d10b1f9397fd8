"""Exported tasks that stock mmseg loads: stock types where a stock type
computes the same function (checked by the export's parity check), the
rc_adapter type kept with its reason where not, and predictions equal to the
RC model's -- for a segmentation task in a fresh Python that never imports
rc_adapter.

The bank is made in-process (convert, then task tensors perturbed away from
the base state and written with ``TaskBank.write_task``): export needs a
bank, not a trained one, and every task then computes its own function.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tool_helpers import ROOT, digest, tiny_backbone_checkpoint, tool_env

import rc_adapter
from rc_adapter import RCConfigError, TaskBank
from rc_adapter.mmseg.apis import configure_run, export_task, load_config
from rc_adapter.mmseg.datasets.meta import NYU40_CLASSES

WIDTH = 16


def _config(path, data, *, dilated):
    """A tiny NYUD config: a stock FCNHead for semseg, the paper's head for
    depth and normals, a test pipeline without centred padding; the
    backbone MTDeepLabResNet with (``dilated``) or without dilated
    blocks."""
    strides, dilations = ((1, 2, 2, 1), (1, 1, 1, 2)) if dilated else \
        ((1, 2, 2, 2), (1, 1, 1, 1))
    small = (f'dict(in_channels={8 * WIDTH}, channels=16, '
             f'c1_in_channels={WIDTH}, c1_channels=8)')
    path.write_text(textwrap.dedent(f"""\
        _base_ = [{os.path.join(ROOT, 'mmseg_configs',
                                'rc_r18_synthetic_nyud.py')!r}]
        data_root = {str(data)!r}
        model = dict(
            backbone=dict(stem_channels={WIDTH}, base_channels={WIDTH},
                          strides={strides}, dilations={dilations}),
            decode_heads=dict(
                semseg=dict(_delete_=True, type='FCNHead',
                            in_channels={8 * WIDTH}, in_index=3,
                            channels=16, num_convs=1, concat_input=False,
                            num_classes=41, align_corners=False,
                            norm_cfg=dict(type='BN', requires_grad=True),
                            loss_decode=dict(type='CrossEntropyLoss')),
                depth={small}, normals={small}))
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadMTAnnotations'),
            dict(type='MTPackSegInputs'),
        ]
        train_dataloader = dict(dataset=dict(data_root=data_root))
        val_dataloader = dict(dataset=dict(data_root=data_root,
                                           pipeline=test_pipeline))
        test_dataloader = val_dataloader
        """))
    return str(path)


def _bank(config, checkpoint, bank, tasks):
    from mmseg.registry import MODELS

    from rc_adapter.mmseg.convert import convert_checkpoint
    convert_checkpoint(config, checkpoint, bank, calib_images=4,
                       calib_size=(32, 32), batch_size=2, progress=False,
                       log=lambda line: None)
    for index, task in enumerate(tasks):
        cfg = load_config(config)
        configure_run(cfg, tasks=[task], train_tasks=[task], bank=bank)
        model = MODELS.build(cfg.model)
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:  # heads far from their tiny init
                    scale = 0.5 if name.startswith('decode_heads') else 0.05
                    param.add_(scale * torch.randn(param.shape,
                                                   generator=generator))
        TaskBank(bank).write_task(task, rc_adapter.task_state_dict(
            model, task), info={})
    return bank


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    from rc_adapter.synthetic import generate
    tmp = tmp_path_factory.mktemp('export')
    data = tmp / 'data'
    generate('nyud', str(data), num_train=4, num_val=2, size=(40, 48),
             seed=7)
    checkpoint = tiny_backbone_checkpoint(tmp / 'r18.pth', width=WIDTH)
    config = _config(tmp / 'plain.py', data, dilated=False)
    bank = _bank(config, checkpoint, str(tmp / 'bank'),
                 ('semseg', 'depth', 'normals'))
    image = str(data / 'images' / sorted(os.listdir(data / 'images'))[0])
    return dict(tmp=tmp, data=data, config=config, bank=bank, image=image,
                checkpoint=checkpoint)


def _rc_prediction(config, bank, task, image):
    """The RC model's prediction for ``image``, the mmseg way
    (``init_model`` on the bank, ``inference_model``)."""
    from mmseg.apis import inference_model, init_model
    cfg = load_config(config)
    configure_run(cfg, tasks=[task], train_tasks=[], bank=bank)
    model = init_model(cfg, device='cpu')
    return inference_model(model, image)


# A fresh interpreter that never imports rc_adapter. On mmcv-lite (no
# compiled ops, as on the project machine) mmseg cannot be imported at all
# without a stand-in mmcv.ops; the test loads rc_adapter/compat.py as a
# stand-alone module for that stand-in only, which registers nothing.
STOCK_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location(
    'mmcv_ops_fallback', {compat!r})
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
compat.install_mmcv_ops_fallback()

import numpy as np
import torch
from mmengine.config import Config
from mmseg.apis import inference_model, init_model
from mmseg.registry import MODELS, TRANSFORMS

cfg = Config.fromfile({config!r})
types = []
def walk(value, registry):
    if isinstance(value, dict):
        if 'type' in value:
            types.append(value['type'])
            assert registry.get(value['type']) is not None, value['type']
        for item in value.values():
            walk(item, registry)
    elif isinstance(value, (list, tuple)):
        for item in value:
            walk(item, registry)
walk(cfg.model, MODELS)
walk(cfg.test_pipeline, TRANSFORMS)
model = init_model({config!r}, {checkpoint!r}, device='cpu')
result = inference_model(model, {image!r})
np.save({out!r}, result.pred_sem_seg.data.numpy())
print(json.dumps(dict(
    types=types,
    model=type(model).__name__, backbone=type(model.backbone).__name__,
    head=type(model.decode_head).__name__,
    preprocessor=type(model.data_preprocessor).__name__,
    pipeline=[t['type'] for t in cfg.test_pipeline],
    classes=list(model.dataset_meta['classes']),
    custom_imports=cfg.get('custom_imports'),
    rc_adapter_imported=any(m.split('.')[0] == 'rc_adapter'
                            for m in sys.modules))))
"""


def test_segmentation_export_runs_in_stock_mmseg(workspace):
    tmp, bank = workspace['tmp'], workspace['bank']
    out = tmp / 'export' / 'semseg.pth'
    result = export_task(load_config(workspace['config']), bank=bank,
                         task='semseg', out=str(out), input_size=(40, 48))
    assert result.stock_only, result.plugin
    assert result.types == dict(segmentor='EncoderDecoder', backbone='ResNet',
                                decode_head='FCNHead',
                                data_preprocessor='SegDataPreProcessor')
    assert result.max_abs_diff < 1e-5 and result.prediction_diff == 0
    text = (tmp / 'export' / 'semseg.py').read_text()
    assert 'Every type is a stock mmseg type' in text
    assert 'rc_adapter' not in text.split('\n', 4)[-1]  # beyond the header

    prediction = tmp / 'stock_prediction.npy'
    script = STOCK_SCRIPT.format(
        compat=os.path.join(ROOT, 'rc_adapter', 'compat.py'),
        config=str(tmp / 'export' / 'semseg.py'), checkpoint=str(out),
        image=workspace['image'], out=str(prediction))
    run = subprocess.run(
        [sys.executable, '-c', script], cwd=str(tmp), capture_output=True,
        text=True, timeout=600,
        env=tool_env(PYTHONPATH=''))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert not report['rc_adapter_imported']
    assert report['custom_imports'] is None
    assert (report['model'], report['backbone'], report['head'],
            report['preprocessor']) == ('EncoderDecoder', 'ResNet',
                                        'FCNHead', 'SegDataPreProcessor')
    assert report['pipeline'] == ['LoadImageFromFile', 'PackSegInputs']
    assert set(report['types']) <= {
        'EncoderDecoder', 'ResNet', 'FCNHead', 'SegDataPreProcessor', 'BN',
        'CrossEntropyLoss', 'LoadImageFromFile', 'PackSegInputs'}
    # The task's own 41 class names, not Cityscapes' 19.
    assert report['classes'] == list(NYU40_CLASSES)

    # The same prediction as the RC model serving the bank.
    expected = _rc_prediction(workspace['config'], bank, 'semseg',
                              workspace['image']).pred_sem_seg.data.numpy()
    got = np.load(prediction)
    assert got.shape == expected.shape == (1, 40, 48)
    assert (got == expected).all()
    assert len(np.unique(expected)) > 1  # not a constant map


@pytest.mark.parametrize('task, segmentor', [
    ('depth', 'DepthEstimator'), ('normals', 'RCMultiTaskSegmentor')])
def test_dense_task_exports_predict_like_the_rc_model(workspace, task,
                                                      segmentor):
    """Depth goes to mmseg's DepthEstimator (pred_depth_map); normals keep
    the plugin segmentor, whose reason the config states; both predict what
    the RC model predicts."""
    from mmseg.apis import inference_model, init_model
    tmp, bank = workspace['tmp'], workspace['bank']
    out = tmp / 'export' / f'{task}.pth'
    result = export_task(load_config(workspace['config']), bank=bank,
                         task=task, out=str(out), input_size=(40, 48))
    assert result.types['segmentor'] == segmentor
    assert result.types['backbone'] == 'ResNet'
    assert 'MTDeepLabV3PlusHead' in result.plugin['decode_head']
    text = (tmp / 'export' / f'{task}.py').read_text()
    assert "imports=[\n        'rc_adapter'," in text
    assert 'no stock mmseg head' in text
    if segmentor == 'RCMultiTaskSegmentor':
        assert 'no stock mmseg segmentor writes a normals prediction' in \
            result.plugin['segmentor']
    model = init_model(str(tmp / 'export' / f'{task}.py'), str(out),
                       device='cpu')
    assert type(model).__name__ == segmentor
    field = {'depth': 'pred_depth_map', 'normals': 'pred_normal_map'}[task]
    got = inference_model(model, workspace['image']).get(field).data
    expected = _rc_prediction(workspace['config'], bank, task,
                              workspace['image']).get(field).data
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert expected.std() > 0


def test_backbone_parity_check_picks_the_stock_type_only_when_equal():
    """MTDeepLabResNet without dilated blocks is mmseg's ResNet; with
    dilated BasicBlocks it is not (conv2 is dilated too), and the export
    keeps it, naming the blocks and the measured difference."""
    from mmseg.registry import MODELS

    from rc_adapter.mmseg.apis.export import _backbone_choice
    x = torch.randn(1, 3, 48, 48)
    for dilated in (False, True):
        cfg = dict(type='MTDeepLabResNet', depth=18, stem_channels=8,
                   base_channels=8, out_indices=(0, 1, 2, 3),
                   strides=(1, 2, 2, 1) if dilated else (1, 2, 2, 2),
                   dilations=(1, 1, 1, 2) if dilated else (1, 1, 1, 1))
        backbone = MODELS.build(cfg)
        backbone.eval()
        chosen, why = _backbone_choice(dict(cfg), backbone, x)
        if dilated:
            assert chosen['type'] == 'MTDeepLabResNet'
            assert 'layer4.0, layer4.1' in why and 'conv2' in why
            assert float(why.rsplit('= ', 1)[1].rstrip(')')) > 1e-3
        else:
            assert chosen == dict(cfg, type='ResNet') and why is None


def test_dilated_export_keeps_the_plugin_backbone_and_matches(workspace):
    tmp = workspace['tmp']
    config = _config(tmp / 'dilated.py', workspace['data'], dilated=True)
    bank = _bank(config, workspace['checkpoint'], str(tmp / 'bank_dilated'),
                 ('semseg',))
    out = tmp / 'export_dilated' / 'semseg.pth'
    result = export_task(load_config(config), bank=bank, task='semseg',
                         out=str(out), input_size=(40, 48))
    assert result.types['backbone'] == 'MTDeepLabResNet'
    assert set(result.plugin) == {'backbone'}
    assert result.max_abs_diff < 1e-5 and result.prediction_diff == 0
    text = (tmp / 'export_dilated' / 'semseg.py').read_text()
    assert '#   backbone: MTDeepLabResNet: its dilated BasicBlocks' in text
    assert "type='MTDeepLabResNet'" in text


def test_export_never_overwrites_an_input(workspace):
    """--out in the bank, or a FILE.pth whose FILE.py is the config: refused
    before any work, naming both paths; the files are byte-identical."""
    tmp, bank = workspace['tmp'], workspace['bank']
    config_copy = tmp / 'user.py'
    config_copy.write_text(open(workspace['config']).read())
    before = {p: digest(p) for p in (os.path.join(bank, 'manifest.json'),
                                     str(config_copy))}
    cases = [(os.path.join(bank, 'semseg.pth'), 'inside the task bank'),
             (str(tmp / 'user.pth'), 'it is the config')]
    for out, message in cases:
        with pytest.raises(RCConfigError, match=message) as err:
            export_task(load_config(str(config_copy)), bank=bank,
                        task='semseg', out=out)
        assert out.replace('.pth', '') in str(err.value)
    assert {p: digest(p) for p in before} == before
    assert not os.path.exists(os.path.join(bank, 'semseg.pth'))

