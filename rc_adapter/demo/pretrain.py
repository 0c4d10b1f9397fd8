"""Proxy pretraining of a backbone on synthetic images.

The demo stands in for ImageNet pretraining: a ResNet is trained on a
separate synthetic split to recognise which object types an image contains
(multi-label, from ``proxy_labels.json`` written by
:func:`rc_adapter.synthetic.generate`) and, as a second self-supervised
signal, by how much the image was rotated (0/90/180/270 degrees). The result
is saved as a torchvision-format ResNet state dict (``conv1``, ``bn1``,
``layer*``, ``fc``), the file ``tools/convert_to_rc.py`` takes.
"""
import json
import os
import os.path as osp
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import AnnotationError, RCConfigError

__all__ = ['ProxyDataset', 'pretrain_proxy']

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class ProxyDataset:
    """Images of one split with their multi-hot object-type labels.

    Args:
        data_root (str): A synthetic dataset root (NYUD or PASCAL layout).
        split (str): Split name, e.g. ``'pretrain'``.
        size (int): Images are resized to ``size`` x ``size``.
    """

    def __init__(self, data_root, split, size):
        labels_path = osp.join(data_root, 'proxy_labels.json')
        if not osp.isfile(labels_path):
            raise AnnotationError(
                f'{labels_path} not found: proxy labels come from '
                f'tools/make_synthetic.py')
        with open(labels_path) as f:
            proxy = json.load(f)
        self.types = list(proxy['types'])
        split_files = [osp.join(data_root, 'gt_sets', f'{split}.txt'),
                       osp.join(data_root, 'ImageSets', 'Context',
                                f'{split}.txt')]
        split_file = next((p for p in split_files if osp.isfile(p)), None)
        if split_file is None:
            raise RCConfigError(f'no split file for {split!r} under '
                                f'{data_root} (looked for '
                                f'{" and ".join(split_files)})')
        with open(split_file) as f:
            ids = [line.strip() for line in f if line.strip()]
        image_dir = 'images' if 'gt_sets' in split_file else 'JPEGImages'
        images, targets = [], []
        for image_id in ids:
            path = osp.join(data_root, image_dir, image_id + '.jpg')
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise AnnotationError(f'cannot read image {path}')
            image = cv2.resize(image, (size, size),
                               interpolation=cv2.INTER_AREA)
            images.append(image[..., ::-1])  # BGR -> RGB
            present = proxy['labels'].get(image_id, [])
            targets.append([float(t in present) for t in self.types])
        array = np.stack(images).astype(np.float32)
        array = (array - IMAGENET_MEAN) / IMAGENET_STD
        self.images = torch.from_numpy(array).permute(0, 3, 1, 2).float()
        self.targets = torch.tensor(targets)

    def __len__(self):
        return len(self.images)


class _ProxyNet(nn.Module):
    def __init__(self, backbone, channels, num_types):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(channels, num_types)
        self.rotation_head = nn.Linear(channels, 4)

    def forward(self, x):
        feats = self.backbone(x)
        feats = feats[-1] if isinstance(feats, (list, tuple)) else feats
        pooled = feats.mean(dim=(2, 3))
        return self.fc(pooled), self.rotation_head(pooled)


def pretrain_proxy(backbone, data_root, out, *, split='pretrain', size=96,
                   iters=300, batch_size=16, lr=0.05, seed=0, log=print):
    """Pretrains ``backbone`` on the proxy tasks and saves it.

    Args:
        backbone (nn.Module): A ResNet-style backbone with torchvision key
            names (e.g. mmseg ``ResNet``/``DeepLabResNet``) returning a
            feature map or a tuple whose last entry is the deepest one.
        data_root (str): Synthetic dataset root with ``proxy_labels.json``.
        out (str): Output ``.pth`` (torchvision format, incl. ``fc``).
        split (str): Split to train on. Defaults to ``'pretrain'``.
        size (int): Training resolution. Defaults to 96.
        iters (int): SGD iterations. Defaults to 300.
        batch_size (int): Defaults to 16.
        lr (float): Initial learning rate (cosine decay). Defaults to 0.05.
        seed (int): Defaults to 0.
        log (callable): Progress printer.

    Returns:
        dict: ``{'seconds', 'final_loss', 'train_accuracy'}``.
    """
    torch.manual_seed(seed)
    data = ProxyDataset(data_root, split, size)
    backbone.train()
    with torch.no_grad():
        channels = backbone(data.images[:1])[-1].shape[1]
    net = _ProxyNet(backbone, channels, len(data.types))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9,
                          weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    loss_avg = None
    for it in range(1, iters + 1):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x = data.images[idx]
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(3)
        rotation = torch.randint(4, (batch_size,), generator=gen)
        x = torch.stack([torch.rot90(img, int(k), dims=(1, 2))
                         for img, k in zip(x, rotation)])
        logits, rot_logits = net(x)
        loss = F.binary_cross_entropy_with_logits(logits, data.targets[idx])
        loss = loss + F.cross_entropy(rot_logits, rotation)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_avg = loss.item() if loss_avg is None else \
            0.9 * loss_avg + 0.1 * loss.item()
        if it % 50 == 0 or it == iters:
            log(f'pretrain [{it}/{iters}] loss {loss_avg:.3f} '
                f'({time.time() - start:.0f}s)')
    net.eval()
    with torch.no_grad():
        logits, _ = net(data.images)
        accuracy = ((logits > 0) == (data.targets > 0.5)).float().mean()
    state = {k: v for k, v in backbone.state_dict().items()}
    state['fc.weight'] = net.fc.weight.detach().clone()
    state['fc.bias'] = net.fc.bias.detach().clone()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp-{os.getpid()}'
    torch.save(state, tmp)
    os.replace(tmp, out)
    return dict(seconds=time.time() - start, final_loss=loss_avg,
                train_accuracy=accuracy.item())
