"""Linear probes: how much a frozen backbone's features already know.

For each checkpoint, the config's backbone (as the RC model runs it:
dilated, eval-mode batch norm) is frozen; its features at stride 8 (layer2
with layer3 and layer4 bilinearly resized to it, concatenated, standardised
per channel with the train split's statistics) feed one 1x1 convolution per
task, trained with Adam on the train split of a synthetic NYUD-layout
dataset; outputs are bilinearly upsampled to the image. Reported on the val
split: semantic segmentation mIoU over the classes present and pixel
accuracy (%), depth RMSE (m, mean over images), surface normals mean angle
(degrees). A 1x1 probe cannot add features, so better numbers mean a better
frozen filter bank (docs/demo.md, "The embedded filter bank").

    python benchmarks/probe_backbone.py random old=OLD.pth \\
        new=assets/FILE.safetensors [--data-root data/synthetic_nyud_demo] \\
        [--config mmseg_configs/rc_r18_synthetic_nyud.py] [--steps 400] \\
        [--out probe.json]

``random`` probes the seed-0 initialisation. Runs on one thread.
"""
import argparse
import json
import os.path as osp
import sys
import time

import cv2
import numpy as np
import scipy.io as sio
import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

#: NYU-40 ids of the synthetic surface types (rc_adapter.synthetic.writers).
CLASSES = (1, 2, 22, 29, 31, 39, 40)
MEAN = torch.tensor((123.675, 116.28, 103.53)).view(1, 3, 1, 1)
STD = torch.tensor((58.395, 57.12, 57.375)).view(1, 3, 1, 1)


def load_split(root, split):
    """Images (normalised), class indices (255: unlabeled), depth, unit
    normals of one split."""
    with open(osp.join(root, 'gt_sets', split + '.txt')) as f:
        ids = [line.strip() for line in f if line.strip()]
    lut = np.full(256, 255, np.int64)
    for i, c in enumerate(CLASSES):
        lut[c] = i
    images, seg, depth, normals = [], [], [], []
    for i in ids:
        images.append(cv2.imread(osp.join(root, 'images', i + '.jpg'))[
            ..., ::-1])
        seg.append(lut[sio.loadmat(osp.join(
            root, 'segmentation', i + '.mat'))['segmentation']])
        depth.append(sio.loadmat(osp.join(root, 'depth', i + '.mat'))[
            'depth'])
        normals.append(cv2.imread(osp.join(root, 'normals', i + '.jpg'))[
            ..., ::-1].astype(np.float32) / 127.5 - 1)
    x = torch.from_numpy(np.stack(images).astype(np.float32))
    n = torch.from_numpy(np.stack(normals)).permute(0, 3, 1, 2)
    return ((x.permute(0, 3, 1, 2) - MEAN) / STD,
            torch.from_numpy(np.stack(seg)),
            torch.from_numpy(np.stack(depth)).float()[:, None],
            F.normalize(n, dim=1))


def stride8_features(backbone, x):
    """layer2 and the deeper stages resized to it, concatenated."""
    outs = []
    with torch.no_grad():
        for s in range(0, len(x), 25):
            f = backbone(x[s:s + 25])
            size = f[1].shape[-2:]
            outs.append(torch.cat([f[1]] + [
                F.interpolate(t, size, mode='bilinear', align_corners=False)
                for t in f[2:]], 1))
    return torch.cat(outs)


def _up(y, size):
    return F.interpolate(y, size, mode='bilinear', align_corners=False)


def _fit(feat, loss_fn, out_channels, steps):
    conv = torch.nn.Conv2d(feat.shape[1], out_channels, 1)
    opt = torch.optim.Adam(conv.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(feat), (50,), generator=gen)
        loss = loss_fn(conv(feat[idx]), idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return conv


def probe(backbone, train, val, steps):
    """The three probes; returns their val metrics."""
    backbone.eval()
    f_train = stride8_features(backbone, train[0])
    f_val = stride8_features(backbone, val[0])
    mu = f_train.mean((0, 2, 3), keepdim=True)
    sd = f_train.std((0, 2, 3), keepdim=True) + 1e-5
    f_train, f_val = (f_train - mu) / sd, (f_val - mu) / sd
    size = train[1].shape[-2:]
    res = {}
    seg = _fit(f_train, lambda y, i: F.cross_entropy(
        _up(y, size), train[1][i], ignore_index=255), len(CLASSES), steps)
    with torch.no_grad():
        pred = _up(seg(f_val), size).argmax(1)
    gt = val[1]
    labelled = gt != 255
    ious = [((pred == c) & (gt == c)).sum().item()
            / (((pred == c) | (gt == c)) & labelled).sum().item()
            for c in range(len(CLASSES)) if (gt == c).any()]
    res['semseg_miou'] = 100 * float(np.mean(ious))
    res['pixel_acc'] = 100 * ((pred == gt) & labelled).sum().item() / \
        labelled.sum().item()
    dep = _fit(f_train, lambda y, i: F.l1_loss(_up(y, size), train[2][i]),
               1, steps)
    with torch.no_grad():
        d = _up(dep(f_val), size)
    res['depth_rmse'] = float(torch.sqrt(((d - val[2]) ** 2).mean(
        (1, 2, 3))).mean())
    nor = _fit(f_train, lambda y, i: (1 - F.cosine_similarity(
        _up(y, size), train[3][i], dim=1)).mean(), 3, steps)
    with torch.no_grad():
        n = F.normalize(_up(nor(f_val), size), dim=1)
    cos = (n * val[3]).sum(1).clamp(-1, 1)
    res['normals_mean_deg'] = float(torch.rad2deg(torch.acos(cos)).mean())
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoints', nargs='+',
                        help='NAME=PATH (.pth/.safetensors) or random')
    parser.add_argument('--config', default=osp.join(
        ROOT, 'mmseg_configs', 'rc_r18_synthetic_nyud.py'))
    parser.add_argument('--data-root', default=osp.join(
        ROOT, 'data', 'synthetic_nyud_demo'))
    parser.add_argument('--steps', type=int, default=400,
                        help='Adam steps per probe (batch 50)')
    parser.add_argument('--out', help='write the numbers as JSON here')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import rc_adapter  # noqa: F401  (registers the backbone)
    from rc_adapter.mmseg.convert import load_backbone_weights
    from rc_adapter.mmseg.models.utils import quiet_init_weights
    init_default_scope('mmseg')
    cfg = dict(Config.fromfile(args.config).model.backbone)
    cfg.pop('init_cfg', None)
    train = load_split(args.data_root, 'train')
    val = load_split(args.data_root, 'val')
    results = {}
    for spec in args.checkpoints:
        name, _, path = spec.partition('=')
        start = time.time()
        torch.manual_seed(0)
        backbone = MODELS.build(cfg)
        quiet_init_weights(backbone)
        if path:
            load_backbone_weights(backbone, path, log=lambda line: None)
        elif name != 'random':
            parser.error(f'{spec!r}: expected NAME=PATH or random')
        results[name] = probe(backbone, train, val, args.steps)
        print(f'{name}: ' + ', '.join(
            f'{k} {v:.2f}' for k, v in results[name].items())
            + f' ({time.time() - start:.0f}s)', flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
