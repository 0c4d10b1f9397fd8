"""Proxy pretraining of a backbone on synthetic images.

The demo stands in for ImageNet pretraining: a ResNet is trained on a
separate synthetic split with image-level labels only, never the dense
labels (segmentation, depth, normals, edges) of that split:

* **presence**: which object types the image shows (multi-label, from
  ``proxy_labels.json`` written by :func:`rc_adapter.synthetic.generate`);
* **count**: how many objects of each type have their centre in view
  (0, 1, 2, 3+);
* **position**: in which cell of a coarse ``grid`` x ``grid`` layout each
  type has an object centre (a weak localisation label, like a detector's
  objectness at stride 32);
* **rotation**: by how much the image was rotated (0/90/180/270 degrees),
  a self-supervised signal.

Counts and positions are read from the scene descriptions: the generator
draws scene ``k`` of a dataset from ``numpy.random.default_rng([seed, k])``
(``synthetic.json`` records the seed), so :func:`scene_objects` draws the
same scenes again (no rendering) and projects each object's bounding sphere
into the image; the presence labels of ``proxy_labels.json`` check that the
two agree. Augmentation, all in one affine resampling per image: random
resized crops, horizontal flips, the rotation, then colour jitter; the
count/position/presence targets follow the crop, flip and rotation.

The backbone is trained at output stride 32 (as ImageNet classifiers are;
:func:`classification_backbone_cfg`) with SGD, warm-up and cosine decay;
a run can be resumed from its periodic state file. The result is a
torchvision-format ResNet state dict (``conv1``, ``bn1``, ``layer*``,
``fc``), the file ``tools/convert_to_rc.py`` takes, and optionally a
float16 safetensors copy of the backbone for shipping
(:func:`save_backbone_asset`, read back in float32 by
:func:`load_backbone_asset`). See ``docs/demo.md``, "The embedded filter
bank".
"""
import hashlib
import io
import json
import math
import os
import os.path as osp
import time
from typing import Any, Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import AnnotationError, CheckpointError, RCConfigError
from ..utils.io import atomic_write_bytes

__all__ = ['ProxyDataset', 'scene_objects', 'classification_backbone_cfg',
           'augment', 'proxy_targets', 'pretrain_proxy', 'evaluate_proxy',
           'save_backbone_asset', 'load_backbone_asset',
           'asset_to_checkpoint', 'file_sha256']

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: Count classes per type: 0, 1, 2 and "MAX_COUNT or more".
MAX_COUNT = 3
#: Tensors of a torchvision ResNet that are not the backbone's.
_CLASSIFIER_KEYS = ('fc.weight', 'fc.bias')


# ----------------------------------------------------------------------------
# Data.

def _read_split(data_root: str, split: str) -> tuple[list[str], str]:
    split_files = [osp.join(data_root, 'gt_sets', f'{split}.txt'),
                   osp.join(data_root, 'ImageSets', 'Context', f'{split}.txt')]
    split_file = next((p for p in split_files if osp.isfile(p)), None)
    if split_file is None:
        raise RCConfigError(f'no split file for {split!r} under {data_root} '
                            f'(looked for {" and ".join(split_files)})')
    with open(split_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise RCConfigError(f'{split_file} lists no image')
    image_dir = 'images' if 'gt_sets' in split_file else 'JPEGImages'
    return ids, osp.join(data_root, image_dir)


def scene_objects(data_root: str, ids: list[str], types: list[str]
                  ) -> list[list[tuple[int, float, float, float]]]:
    """The objects of generated images, projected into the image.

    Draws the scenes of ``ids`` again as :func:`rc_adapter.synthetic.generate`
    drew them (seed and parameters from ``data_root/synthetic.json``; image
    ``k``'s id is ``'%06d' % k``) and projects every object's bounding
    sphere with the scene's camera.

    Args:
        data_root (str): A synthetic dataset root.
        ids (list[str]): Image ids.
        types (list[str]): Object type names, the order of the type indices.

    Returns:
        list[list[tuple]]: per image, ``(type_index, x, y, radius)`` per
        object in front of the camera, in normalised image coordinates
        (``-1..1`` across the width and height, ``radius`` in units of the
        half-width).

    Raises:
        AnnotationError: ``synthetic.json`` is missing, or from another
            generator version than the one this code mirrors.
    """
    from ..synthetic.render import OBJECT_TYPES, TYPE_NAMES, sample_scene
    from ..synthetic.writers import GENERATOR_VERSION
    meta_path = osp.join(data_root, 'synthetic.json')
    try:
        with open(meta_path) as f:
            params = json.load(f)['params']
    except (OSError, ValueError, KeyError) as err:
        raise AnnotationError(f'{meta_path}: cannot read the generator '
                              f'parameters ({err}); count/position labels '
                              f'need a dataset from tools/make_synthetic.py'
                              ) from None
    if params.get('generator_version') != GENERATOR_VERSION:
        raise AnnotationError(
            f'{meta_path}: generator version '
            f'{params.get("generator_version")} is not the current '
            f'{GENERATOR_VERSION}; regenerate the dataset')
    hgt, wid = params['size']
    type_index = {name: i for i, name in enumerate(types)}
    unknown = sorted({TYPE_NAMES[t] for t in OBJECT_TYPES}
                     - set(type_index))
    if unknown:
        raise AnnotationError(f'{data_root}: object types {unknown} of the '
                              f'generator are not in the proxy labels\' '
                              f'types {types}; regenerate the dataset')
    out = []
    for image_id in ids:
        rng = np.random.default_rng([params['seed'], int(image_id)])
        scene = sample_scene(
            rng, hgt, wid, p_no_figure=params['p_no_figure'],
            p_unannotated_figure=params['p_unannotated_figure'])
        cam = scene.camera
        objects = []
        for obj in scene.objects:
            centre, radius = obj.bound
            p = np.asarray(centre, np.float64) - cam.origin
            z = float(p @ cam.forward)
            if z <= 1e-3:
                continue
            u = cam.focal * float(p @ cam.right) / z + wid / 2
            v = cam.focal * float(p @ cam.down) / z + hgt / 2
            r = cam.focal * float(radius) / z
            objects.append((type_index[TYPE_NAMES[obj.otype]],
                            2 * u / wid - 1, 2 * v / hgt - 1, 2 * r / wid))
        out.append(objects)
    return out


class ProxyDataset:
    """Images of one split with their image-level proxy labels.

    Images are kept as uint8 at their stored size (or resized to
    ``image_size``); augmentation happens per batch (:func:`augment`).

    Args:
        data_root (str): A synthetic dataset root (NYUD or PASCAL layout).
        split (str): Split name, e.g. ``'pretrain'``.
        image_size (int, optional): Resize images to this square size when
            loading (tests); by default they are kept as stored.
        objects (bool): Also read the projected objects
            (:func:`scene_objects`) for the count/position labels.

    Attributes:
        types (list[str]): Object type names (label order).
        images (Tensor): uint8 ``N x 3 x H x W``, RGB.
        present (Tensor): float ``N x T`` multi-hot presence.
        objects (Tensor): float ``N x K x 4`` rows ``(type, x, y, radius)``
            (type ``-1``: padding), or None.

    Raises:
        AnnotationError: missing ``proxy_labels.json``, unreadable image, or
            presence labels that the scene descriptions contradict.
        RCConfigError: no such split.
    """

    def __init__(self, data_root: str, split: str,
                 image_size: Optional[int] = None, objects: bool = True):
        labels_path = osp.join(data_root, 'proxy_labels.json')
        if not osp.isfile(labels_path):
            raise AnnotationError(
                f'{labels_path} not found: proxy labels come from '
                f'tools/make_synthetic.py')
        with open(labels_path) as f:
            proxy = json.load(f)
        self.types = list(proxy['types'])
        ids, image_dir = _read_split(data_root, split)
        self.ids = ids
        images, present = [], []
        for image_id in ids:
            path = osp.join(image_dir, image_id + '.jpg')
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise AnnotationError(f'cannot read image {path}')
            if image_size is not None:
                image = cv2.resize(image, (image_size, image_size),
                                   interpolation=cv2.INTER_AREA)
            if images and image.shape != images[0].shape:
                raise AnnotationError(
                    f'{path}: size {image.shape[:2]} differs from the '
                    f'split\'s first image {images[0].shape[:2]}')
            images.append(image[..., ::-1])  # BGR -> RGB
            labels = proxy['labels'].get(image_id, [])
            present.append([float(t in labels) for t in self.types])
        self.images = torch.from_numpy(
            np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))
        self.present = torch.tensor(present)
        self.objects = None
        if objects:
            self.objects = self._objects(data_root, labels_path)

    def _objects(self, data_root, labels_path):
        per_image = scene_objects(data_root, self.ids, self.types)
        width = max(1, max(len(o) for o in per_image))
        table = torch.full((len(per_image), width, 4), -1.0)
        for i, objs in enumerate(per_image):
            if objs:
                table[i, :len(objs)] = torch.tensor(objs)
            drawn = {int(o[0]) for o in objs}
            shown = {t for t in range(len(self.types)) if self.present[i, t]}
            if not shown <= drawn:
                raise AnnotationError(
                    f'{labels_path}: image {self.ids[i]} shows '
                    f'{sorted(self.types[t] for t in shown - drawn)}, which '
                    f'its scene description (drawn again from '
                    f'synthetic.json) does not contain: the dataset and the '
                    f'generator disagree; regenerate the dataset')
        return table

    def __len__(self) -> int:
        return len(self.images)


# ----------------------------------------------------------------------------
# Augmentation and targets.

def _rotation_matrices(k: torch.Tensor) -> torch.Tensor:
    angle = k.double() * (math.pi / 2)
    c, s = torch.cos(angle).round(), torch.sin(angle).round()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def augment(images: torch.Tensor, size: int, generator: torch.Generator,
            *, min_area: float = 0.35, flip: bool = True,
            rotate: bool = True, jitter: float = 0.4,
            grayscale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    """Random resized crop, flip, 90-degree rotation and colour jitter.

    Args:
        images (Tensor): uint8 ``B x 3 x H x W`` RGB.
        size (int): Output side.
        generator (torch.Generator): The randomness.
        min_area (float): Least crop area, as a fraction of the image
            (``1.0``: no cropping).
        flip (bool): Random horizontal flips.
        rotate (bool): Random 0/90/180/270 degree rotations.
        jitter (float): Brightness/contrast/saturation factors are drawn
            from ``1 +- jitter``.
        grayscale (float): Probability of a grey image.

    Returns:
        tuple: the normalised float images ``B x 3 x size x size``, the
        affine maps ``B x 2 x 3`` (output -> input normalised coordinates,
        as :func:`torch.nn.functional.affine_grid` takes them) and the
        rotation classes ``B``.
    """
    batch = images.shape[0]

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(batch, generator=generator,
                                           dtype=torch.float64)

    area = uniform(min_area, 1.0)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    cw = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    ch = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = (1 - cw) * uniform(-1.0, 1.0)
    cy = (1 - ch) * uniform(-1.0, 1.0)
    fx = torch.ones(batch, dtype=torch.float64)
    if flip:
        fx = torch.where(torch.rand(batch, generator=generator) < 0.5,
                         -fx, fx)
    rotation = (torch.randint(4, (batch,), generator=generator) if rotate
                else torch.zeros(batch, dtype=torch.long))
    scale = torch.zeros(batch, 2, 2, dtype=torch.float64)
    scale[:, 0, 0] = cw * fx
    scale[:, 1, 1] = ch
    theta = torch.cat([scale @ _rotation_matrices(rotation),
                       torch.stack([cx, cy], -1)[..., None]], -1)
    x = _resample(images, theta, size)
    if jitter > 0:
        shape = (batch, 1, 1, 1)

        def factor():
            return 1 + jitter * (2 * torch.rand(shape, generator=generator)
                                 - 1)
        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                ).sum(1, keepdim=True)
        x = x * factor()
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factor() + mean
        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                ).sum(1, keepdim=True)
        x = gray + (x - gray) * factor()
        if grayscale > 0:
            to_gray = torch.rand(shape, generator=generator) < grayscale
            x = torch.where(to_gray, gray.expand_as(x), x)
        x = x.clamp(0, 1)
    return _normalise(x), theta, rotation


def _resample(images, theta, size):
    """uint8 images -> float ``0..1`` images sampled through ``theta``."""
    grid = F.affine_grid(theta.float(), (len(images), 3, size, size),
                         align_corners=False)
    return F.grid_sample(images.float() / 255, grid, mode='bilinear',
                         padding_mode='border', align_corners=False)


def _normalise(x):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / 255
    return (x - mean) / std


def proxy_targets(objects: torch.Tensor, present: torch.Tensor,
                  theta: torch.Tensor, num_types: int, grid: int
                  ) -> dict[str, torch.Tensor]:
    """Count, position and presence targets of augmented images.

    An object counts (and marks its grid cell) when its centre lies inside
    the augmented view; a type is present when ``present`` says it is shown
    in the whole image and one of its objects' bounding discs reaches into
    the view.

    Args:
        objects (Tensor): ``B x K x 4`` ``(type, x, y, radius)`` rows
            (type ``-1``: padding) in the input's normalised coordinates.
        present (Tensor): ``B x T`` presence in the whole image.
        theta (Tensor): ``B x 2 x 3`` from :func:`augment`.
        num_types (int): ``T``.
        grid (int): Cells per side of the position map.

    Returns:
        dict: ``present`` float ``B x T``, ``count`` long ``B x T`` (0..
        ``MAX_COUNT``), ``position`` float ``B x T x grid x grid``.
    """
    batch = objects.shape[0]
    lin = theta[:, :, :2]
    inverse = torch.linalg.inv(lin)
    centres = objects[..., 1:3].double() - theta[:, None, :, 2]
    view = torch.einsum('bij,bkj->bki', inverse, centres)
    # Radius in the view: the crop's larger magnification (an upper bound).
    gain = torch.linalg.matrix_norm(inverse, ord=2)
    radius = objects[..., 3].double() * gain[:, None]
    valid = objects[..., 0] >= 0
    kind = objects[..., 0].long().clamp(min=0)
    inside = valid & (view.abs() < 1).all(-1)
    reaches = valid & (view.abs() < 1 + radius[..., None]).all(-1)
    onehot = F.one_hot(kind, num_types).bool()  # B x K x T
    count = (onehot & inside[..., None]).sum(1).clamp(max=MAX_COUNT)
    visible = (onehot & reaches[..., None]).any(1).float() * present
    cell = ((view + 1) / 2 * grid).floor().long().clamp(0, grid - 1)
    position = torch.zeros(batch, num_types, grid * grid)
    flat = cell[..., 1] * grid + cell[..., 0]
    b_idx, k_idx = torch.nonzero(inside, as_tuple=True)
    position[b_idx, kind[b_idx, k_idx], flat[b_idx, k_idx]] = 1.0
    return dict(present=visible, count=count,
                position=position.view(batch, num_types, grid, grid))


# ----------------------------------------------------------------------------
# Network, training.

def classification_backbone_cfg(backbone_cfg: dict) -> dict:
    """The same backbone at output stride 32, as classifiers are trained.

    A segmentation config dilates the last stage(s) instead of striding
    them (DeepLab); the weights are the same either way, so pretraining
    runs the cheaper, classifier-shaped network: every stage after the
    first gets stride 2 and dilation 1. Configs without ``strides`` are
    returned unchanged.

    Args:
        backbone_cfg (dict): ``model.backbone`` of a config.

    Returns:
        dict: A copy with ``strides``/``dilations`` replaced.
    """
    cfg = dict(backbone_cfg)
    if 'strides' in cfg:
        n = len(cfg['strides'])
        cfg['strides'] = (1,) + (2,) * (n - 1)
        cfg['dilations'] = (1,) * n
    return cfg


class _ProxyNet(nn.Module):

    def __init__(self, backbone, channels, num_types, grid):
        super().__init__()
        self.backbone = backbone
        self.grid = grid
        self.fc = nn.Linear(channels, num_types)  # presence: saved as 'fc'
        self.count_head = nn.Linear(channels, num_types * (MAX_COUNT + 1))
        self.position_head = nn.Conv2d(channels, num_types, 1)
        self.rotation_head = nn.Linear(channels, 4)

    def forward(self, x):
        feats = self.backbone(x)
        feats = feats[-1] if isinstance(feats, (list, tuple)) else feats
        pooled = feats.mean(dim=(2, 3))
        position = F.adaptive_avg_pool2d(self.position_head(feats),
                                         self.grid)
        count = self.count_head(pooled).view(len(x), -1, MAX_COUNT + 1)
        return dict(present=self.fc(pooled), count=count, position=position,
                    rotation=self.rotation_head(pooled))


def _losses(out, targets, rotation):
    losses = dict(
        present=F.binary_cross_entropy_with_logits(out['present'],
                                                   targets['present']),
        rotation=F.cross_entropy(out['rotation'], rotation))
    if 'count' in targets:
        losses['count'] = F.cross_entropy(out['count'].flatten(0, 1),
                                          targets['count'].flatten())
        losses['position'] = F.binary_cross_entropy_with_logits(
            out['position'], targets['position'])
    return losses


def _batch(data, idx, size, generator, grid, **aug):
    x, theta, rotation = augment(data.images[idx], size, generator, **aug)
    if data.objects is None:
        targets = dict(present=data.present[idx])
    else:
        targets = proxy_targets(data.objects[idx], data.present[idx], theta,
                                len(data.types), grid)
    return x, targets, rotation


def _lr_at(it, iters, lr, warmup):
    if it < warmup:
        return lr * (it + 1) / warmup
    progress = (it - warmup) / max(1, iters - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * progress))


def _param_groups(net, weight_decay):
    decay, no_decay = [], []
    for p in net.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.0)]


def evaluate_proxy(net: nn.Module, data: ProxyDataset, size: int,
                   grid: int, batch_size: int = 64,
                   limit: Optional[int] = None) -> dict[str, float]:
    """Proxy accuracies on whole, unjittered images (each image once per
    rotation class, cycling).

    Args:
        net (nn.Module): The proxy network of :func:`pretrain_proxy`.
        data (ProxyDataset): The images.
        size (int): Images are resampled to ``size`` x ``size``.
        grid (int): Position grid side.
        batch_size (int): Images per forward pass.
        limit (int, optional): Only the first ``limit`` images.

    Returns:
        dict: ``present`` (per-label accuracy), ``rotation`` accuracy and,
        with object labels, ``count`` accuracy and ``position_f1``.
    """
    was_training = net.training
    net.eval()
    sums = dict(present=0.0, rotation=0.0, count=0.0, tp=0.0, fp=0.0,
                fn=0.0)
    n = len(data) if limit is None else min(limit, len(data))
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(n, start + batch_size))
            rotation = idx % 4
            theta = torch.cat([_rotation_matrices(rotation),
                               torch.zeros(len(idx), 2, 1,
                                           dtype=torch.float64)], -1)
            out = net(_normalise(_resample(data.images[idx], theta, size)))
            sums['rotation'] += (out['rotation'].argmax(1) == rotation
                                 ).sum().item()
            if data.objects is None:
                present = data.present[idx]
            else:
                t = proxy_targets(data.objects[idx], data.present[idx], theta,
                                  len(data.types), grid)
                present = t['present']
                sums['count'] += (out['count'].argmax(-1) == t['count']
                                  ).float().mean(1).sum().item()
                pred = out['position'] > 0
                truth = t['position'] > 0.5
                sums['tp'] += (pred & truth).sum().item()
                sums['fp'] += (pred & ~truth).sum().item()
                sums['fn'] += (~pred & truth).sum().item()
            sums['present'] += ((out['present'] > 0) == (present > 0.5)
                                ).float().mean(1).sum().item()
    net.train(was_training)
    result = dict(present=sums['present'] / n, rotation=sums['rotation'] / n)
    if data.objects is not None:
        result['count'] = sums['count'] / n
        result['position_f1'] = 2 * sums['tp'] / max(
            1.0, 2 * sums['tp'] + sums['fp'] + sums['fn'])
    return result


def pretrain_proxy(backbone: nn.Module, data_root: str, out: str, *,
                   split: str = 'pretrain', val_split: Optional[str] = None,
                   size: int = 96, iters: int = 300, batch_size: int = 16,
                   lr: float = 0.05, weight_decay: float = 1e-4,
                   warmup: int = 0, min_area: float = 0.35,
                   objects: bool = True, grid: int = 3, seed: int = 0,
                   image_size: Optional[int] = None,
                   state_path: Optional[str] = None, save_interval: int = 0,
                   log_interval: int = 50,
                   log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Pretrains ``backbone`` on the proxy tasks and saves it.

    Args:
        backbone (nn.Module): A ResNet-style backbone with torchvision key
            names (e.g. mmseg ``ResNet``/``MTDeepLabResNet``) returning a
            feature map or a tuple whose last entry is the deepest one.
        data_root (str): Synthetic dataset root with ``proxy_labels.json``.
        out (str): Output ``.pth`` (torchvision format, incl. ``fc``).
        split (str): Split to train on. Defaults to ``'pretrain'``.
        val_split (str, optional): Split to report proxy accuracies on at
            the end (e.g. ``'val'`` of the pretraining dataset).
        size (int): Training crop side. Defaults to 96.
        iters (int): SGD iterations. Defaults to 300.
        batch_size (int): Defaults to 16.
        lr (float): Peak learning rate (warm-up, then cosine decay to 0).
            Defaults to 0.05.
        weight_decay (float): On weights, not on norms/biases. Defaults to
            1e-4.
        warmup (int): Linear warm-up iterations. Defaults to 0.
        min_area (float): Least random-crop area (fraction). Defaults to
            0.35.
        objects (bool): Count and position tasks too (they need the
            dataset's ``synthetic.json``). Defaults to True.
        grid (int): Position grid side. Defaults to 3.
        seed (int): Data order and augmentation. Defaults to 0.
        image_size (int, optional): Resize stored images to this square
            size when loading (tests).
        state_path (str, optional): Resumable training state, written every
            ``save_interval`` iterations and read at the start when present
            (with the same settings, the run continues where it stopped);
            removed once ``out`` is written.
        save_interval (int): 0: never write ``state_path``.
        log_interval (int): Iterations between progress lines.
        log (callable): Progress printer.

    Returns:
        dict: ``seconds`` (this process), ``total_seconds`` (with the runs
        it resumed), ``final_loss``, ``train_accuracy`` (presence, on the
        first 1000 unaugmented training images), ``val`` (proxy accuracies
        on ``val_split`` or None), ``iters``.

    Raises:
        AnnotationError, RCConfigError: as :class:`ProxyDataset`;
            RCConfigError also when the loss stops being finite.
        CheckpointError: an unreadable ``state_path``, or one written with
            other settings.
    """
    torch.manual_seed(seed)
    data = ProxyDataset(data_root, split, image_size=image_size,
                        objects=objects)
    log(f'pretrain: {len(data)} images of {data_root} ({split}), types '
        f'{data.types}, tasks presence, rotation'
        + (', count, position' if objects else ''))
    backbone.eval()
    with torch.no_grad():
        probe = backbone(torch.zeros(1, 3, size, size))
        channels = (probe[-1] if isinstance(probe, (list, tuple))
                    else probe).shape[1]
    backbone.train()
    net = _ProxyNet(backbone, channels, len(data.types), grid)
    net.train()
    opt = torch.optim.SGD(_param_groups(net, weight_decay), lr=lr,
                          momentum=0.9, nesterov=True)
    settings = dict(split=split, size=size, iters=iters,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                    warmup=warmup, min_area=min_area, objects=objects,
                    grid=grid, seed=seed, images=len(data))
    start_it, loss_avg, spent = 0, None, 0.0
    if state_path and osp.isfile(state_path):
        start_it, loss_avg, spent = _resume(state_path, net, opt, settings)
        log(f'pretrain: resumed from {state_path} at iteration {start_it}')
    start = time.time()
    for it in range(start_it, iters):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + it)
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x, targets, rotation = _batch(data, idx, size, gen, grid,
                                      min_area=min_area)
        for group in opt.param_groups:
            group['lr'] = _lr_at(it, iters, lr, warmup)
        losses = _losses(net(x), targets, rotation)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RCConfigError(f'pretrain: the loss became {loss.item()} at '
                                f'iteration {it + 1}; lower --lr')
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_avg = loss.item() if loss_avg is None else \
            0.98 * loss_avg + 0.02 * loss.item()
        done = it + 1
        if done % log_interval == 0 or done == iters:
            elapsed = time.time() - start
            eta = elapsed / (done - start_it) * (iters - done)
            parts = ' '.join(f'{k} {v.item():.3f}' for k, v in losses.items())
            log(f'pretrain [{done}/{iters}] loss {loss_avg:.3f} ({parts}) '
                f'lr {opt.param_groups[0]["lr"]:.4f} '
                f'({spent + elapsed:.0f}s, eta {eta:.0f}s)')
        if state_path and save_interval and done % save_interval == 0 \
                and done < iters:
            _save_state(state_path, net, opt, settings, done, loss_avg,
                        spent + time.time() - start)
    seconds = time.time() - start
    train_eval = evaluate_proxy(net, data, size, grid, limit=1000)
    val = None
    if val_split:
        val_data = ProxyDataset(data_root, val_split, image_size=image_size,
                                objects=objects)
        val = evaluate_proxy(net, val_data, size, grid)
        log('pretrain: ' + val_split + ' proxy accuracy ' + ', '.join(
            f'{k} {100 * v:.1f}%' for k, v in val.items()))
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    state['fc.weight'] = net.fc.weight.detach().clone()
    state['fc.bias'] = net.fc.bias.detach().clone()
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out, buf.getvalue())
    if state_path and osp.isfile(state_path):
        os.remove(state_path)
    return dict(seconds=seconds, total_seconds=spent + seconds,
                final_loss=loss_avg, train_accuracy=train_eval['present'],
                val=val, iters=iters)


def _save_state(path, net, opt, settings, done, loss_avg, spent):
    buf = io.BytesIO()
    torch.save(dict(settings=settings, iteration=done, loss_avg=loss_avg,
                    seconds=spent, net=net.state_dict(),
                    opt=opt.state_dict()), buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(path, net, opt, settings):
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
        saved = state['settings']
    except Exception as err:  # noqa: BLE001 -- any unreadable state file
        raise CheckpointError(f'{path}: unreadable pretraining state '
                              f'({type(err).__name__}: {err}); delete it to '
                              f'start over') from None
    if saved != settings:
        diff = {k: (saved.get(k), v) for k, v in settings.items()
                if saved.get(k) != v}
        raise CheckpointError(f'{path}: written with other settings '
                              f'(saved vs now: {diff}); delete it to start '
                              f'over or pass the same options')
    net.load_state_dict(state['net'])
    opt.load_state_dict(state['opt'])
    return state['iteration'], state['loss_avg'], state['seconds']


# ----------------------------------------------------------------------------
# The shipped backbone.

def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (as ``sha256sum`` prints it)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def save_backbone_asset(state: dict[str, torch.Tensor], path: str,
                        metadata: Optional[dict[str, str]] = None) -> str:
    """Writes a backbone's tensors as float16 safetensors (atomically).

    Classifier tensors (``fc.*``) are dropped; floating tensors are stored
    as float16, integer ones (``num_batches_tracked``) as they are.

    Args:
        state (dict[str, Tensor]): A torchvision-format state dict.
        path (str): The ``.safetensors`` file.
        metadata (dict[str, str], optional): Stored in the file's header.

    Returns:
        str: The file's sha256 (hex).

    Raises:
        CheckpointError: a stored float does not fit float16.
    """
    from safetensors.torch import save
    tensors = {}
    for key, value in state.items():
        if key in _CLASSIFIER_KEYS:
            continue
        value = value.detach().cpu().contiguous()
        if value.is_floating_point():
            half = value.to(torch.float16)
            if not torch.isfinite(half).all():
                raise CheckpointError(f'{path}: {key} does not fit float16 '
                                      f'(max |x| {value.abs().max():.3g})')
            value = half
        tensors[key] = value
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return file_sha256(path)


def load_backbone_asset(path: str) -> dict[str, torch.Tensor]:
    """Reads a :func:`save_backbone_asset` file back in float32.

    Args:
        path (str): The ``.safetensors`` file.

    Returns:
        dict[str, Tensor]: The backbone's state dict, floating tensors as
        float32.

    Raises:
        CheckpointError: missing or unreadable file.
    """
    from ..mmseg.checkpoint import load_state_dict_file
    state = load_state_dict_file(path)
    return {k: v.float() if v.is_floating_point() else v
            for k, v in state.items()}


def asset_to_checkpoint(asset: str, out: str) -> str:
    """Writes a :func:`save_backbone_asset` file as a float32 ``.pth``.

    For consumers that read only torch checkpoints (mmengine's
    ``init_cfg=dict(type='Pretrained')``); ``tools/convert_to_rc.py`` reads
    the ``.safetensors`` file directly.

    Args:
        asset (str): The ``.safetensors`` backbone.
        out (str): The torchvision-format ``.pth`` to write (atomically).

    Returns:
        str: ``out``.

    Raises:
        CheckpointError: missing or unreadable ``asset``.
    """
    buf = io.BytesIO()
    torch.save(load_backbone_asset(asset), buf)
    atomic_write_bytes(out, buf.getvalue())
    return out
