"""End to end with the SegFormer config, through the real command lines on
generated data: make_synthetic -> convert_to_rc (an mmseg checkpoint of the
plain MixVisionTransformer; Response Initialization of every conv, linear
and attention layer on the train split) -> add_task x2 -> test -> export
(.pth and .onnx). The first task's file and the shared file stay
byte-identical when the second task is added; the evaluation reproduces
what add_task measured; the exports compute the RC model's function.

The config is rc_segformer_mitb0_synthetic_nyud.py at a tiny width
(embed_dims 8: stages of 8-16-40-64 channels; the MiT-b0 depth, heads,
strides and attention layout are kept), 2 iterations per task, 32x32
images.

The ONNX graph is checked at the size it was traced at (--input-size):
torch's TorchScript-based exporter records nn.MultiheadAttention's reshapes
with the trace's token count, so a SegFormer graph runs at that input size
only (another size fails in the graph's Reshape)."""
import json
import os
import re

import pytest
import torch
from tool_helpers import (add_semseg_then_depth, digest, ok, run_tool,
                          tiny_config)

from rc_adapter import TaskBank

TASKS = ('semseg', 'depth', 'normals', 'edge')
CONFIG = 'rc_segformer_mitb0_synthetic_nyud.py'
CHANNELS = [8, 16, 40, 64]  # embed 8 x num_heads [1, 2, 5, 8]


def segformer_config(path, data_root):
    """The SegFormer MiT-b0 synthetic config at embed width 8, tiny run."""
    heads = ', '.join(f'{task}=dict(in_channels={CHANNELS!r}, channels=16)'
                      for task in TASKS)
    model = ('model = dict(\n'
             '    backbone=dict(embed_dims=8),\n'
             f'    decode_heads=dict({heads}))\n')
    return tiny_config(path, data_root, CONFIG, model)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    from mmengine.config import Config

    from rc_adapter.mmseg.convert import build_backbone
    tmp = tmp_path_factory.mktemp('segformer')
    data = tmp / 'data'
    ok(run_tool('make_synthetic.py', '--layout', 'nyud', '--out', str(data),
                '--num-train', '6', '--num-val', '3', '--size', '32', '32',
                '--seed', '5'))
    config = segformer_config(tmp / 'tiny_segformer.py', data)
    # An mmseg checkpoint of the plain backbone (mmengine layout: the
    # backbone's tensors under backbone., next to a decode head's).
    backbone = build_backbone(Config.fromfile(config).model.backbone)
    state = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(41, 16, 1, 1)
    checkpoint = tmp / 'segformer_mitb0_tiny.pth'
    torch.save({'state_dict': state, 'meta': dict(iter=160000)}, checkpoint)
    bank = tmp / 'bank'
    result = ok(run_tool('convert_to_rc.py', config, str(checkpoint),
                         '--out', str(bank), '--calib-images', '4',
                         '--calib-size', '32', '32', '--batch-size', '2'))
    count = len(backbone.state_dict())
    assert f'loaded {count}/{count} backbone tensors' in result.stdout
    manifest = json.load(open(bank / 'manifest.json'))
    ri = manifest['config']['ri']
    assert ri['enabled'] and ri['calibration']['split'] == 'train'
    assert ri['max_abs_diff'] < 1e-3
    assert manifest['config']['rc_cfg']['modulator'] == 'auto'
    return dict(tmp=tmp, data=data, config=config, bank=bank)


def test_convert_add_two_tasks_test_export(workspace):
    config, bank, tmp = (workspace['config'], str(workspace['bank']),
                         workspace['tmp'])
    kept = add_semseg_then_depth(config, bank, tmp)
    bank_obj = TaskBank(bank)
    assert sorted(bank_obj.tasks()) == ['depth', 'semseg']
    # The task files hold the attention's per-task modulators.
    depth_state = bank_obj.read_task('depth')
    assert any('attn.attn.in_proj.' in k and 'modulators.depth' in k
               for k in depth_state), sorted(depth_state)[:10]
    manifest = json.load(open(os.path.join(bank, 'manifest.json')))
    assert 'mIoU' in manifest['tasks']['semseg']['info']['metrics']
    assert 'rmse' in manifest['tasks']['depth']['info']['metrics']

    out = tmp / 'results.json'
    ok(run_tool('test.py', config, '--bank', bank, '--metrics-out',
                str(out), '--work-dir', str(tmp / 'wd_test')))
    results = json.load(open(out))
    assert set(results['metrics']) == {'semseg', 'depth'}
    for task in ('semseg', 'depth'):
        stored = manifest['tasks'][task]['info']['metrics']
        for key, value in stored.items():
            assert results['metrics'][task][key] == pytest.approx(value), (
                task, key)

    # .pth: the stock mmseg segmentor, backbone and head, plain layers.
    pth = tmp / 'export' / 'semseg.pth'
    result = ok(run_tool('export.py', config, '--bank', bank, '--task',
                         'semseg', '--out', str(pth), '--input-size', '64',
                         '64'))
    assert float(re.search(r'max \|Δ\| = (\S+)', result.stdout)[1]) < 1e-4
    assert 'segmentor=EncoderDecoder' in result.stdout
    assert 'backbone=MixVisionTransformer' in result.stdout
    assert 'decode_head=SegformerHead' in result.stdout
    exported = torch.load(pth, weights_only=True)['state_dict']
    assert not any('modulators' in k or '.tasks.' in k or '.base.' in k
                   for k in exported)
    # The attention is nn.MultiheadAttention again (packed in_proj_weight).
    assert 'backbone.layers.0.1.0.attn.attn.in_proj_weight' in exported
    assert (tmp / 'export' / 'semseg.py').exists()

    # .onnx: the graph's own output against the RC model.
    onnx_file = tmp / 'export' / 'depth.onnx'
    result = ok(run_tool('export.py', config, '--bank', bank, '--task',
                         'depth', '--out', str(onnx_file), '--input-size',
                         '64', '64'))
    assert float(re.search(r'max \|Δ\| = (\S+)', result.stdout)[1]) < 1e-4
    assert onnx_file.exists()
    # The TorchScript exporter fixes attention's token counts: the tool
    # exports for the traced size and says so.
    assert 'takes only 64x64 images' in result.stdout
    assert all(digest(path) == value for path, value in kept.items())
