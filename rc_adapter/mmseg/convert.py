"""Turn a pretrained checkpoint into a task bank (and a bank back into a
backbone).

:func:`convert_checkpoint` is what ``tools/convert_to_rc.py`` runs: build the
plain backbone of an mmseg config, load the user's weights (weights-only),
stream calibration images for Response Initialization, reparameterize with no
task and write the shared state as a new :class:`~rc_adapter.TaskBank`.
:func:`build_rc_backbone_from_bank` rebuilds that RC backbone from a bank.

What the config provides:

* ``model.backbone``, ``model.data_preprocessor`` (mean/std/bgr_to_rgb of the
  calibration images) and ``model.rc_cfg`` (an :class:`rc_adapter.RCConfig`,
  read by :func:`rc_adapter.mmseg.rc_cfg.parse_rc_cfg` exactly as the
  segmentor reads it; ``model.baseline`` must be unset);
* ``convert_cfg = dict(ri=True, calib_images=256, calib_size=(224, 224))``
  (top level): whether Response Initialization runs, on how many images, at
  which crop. Command-line flags override it; the deprecated ``rc_cfg.ri``
  still switches RI off.

Calibration images (:func:`find_calibration_images`) never come from a
validation split:

* without ``calib_dir``, from the train split of the config's train dataset
  (at ``--data-root`` or the config's ``data_root``);
* ``calib_dir`` a dataset root (a folder holding the split files of a known
  layout, ``ImageSets/Context/train.txt`` or ``gt_sets/train.txt``) or that
  dataset's image folder: its train split only;
* any other ``calib_dir``: every ``.jpg``/``.jpeg``/``.png`` under it
  (recursive).

The images sorted by their path relative to the root, the first
``calib_images`` are used; the manifest records their count, split, source
and a sha256 of that list. Each is read with OpenCV (BGR), converted to RGB
when the data preprocessor has ``bgr_to_rgb``, its shorter side resized to
``size * 256 / 224`` and centre-cropped to ``calib_size`` (default 224 x 224:
the ImageNet evaluation transform the official RCM repository used for RI;
``docs/method.md``, "Response Initialization"), then normalised with the
preprocessor's mean/std.
"""
from __future__ import annotations

import copy
import hashlib
import os
import os.path as osp
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from .. import core as rc
from ..core.bank import TaskBank
from ..core.config import RCConfig
from ..core.errors import (BankError, CheckpointError, ConversionError,
                           RCError)
from ..utils.config import to_plain
from .apis.config import iter_dataset_cfgs, read_config, set_data_root
from .checkpoint import load_state_dict_file
from .models.utils import without_pretrained
from .rc_cfg import bank_rc_config, parse_rc_cfg

__all__ = ['ConversionError', 'convert_checkpoint', 'build_backbone',
           'load_backbone_weights', 'map_checkpoint_keys', 'find_images',
           'find_calibration_images', 'CalibrationSet', 'calibration_batches',
           'conversion_options', 'build_rc_backbone_from_bank',
           'DEFAULT_CONVERT_CFG', 'DEFAULT_CALIB_SIZE',
           'DEFAULT_CALIB_IMAGES']

DEFAULT_CALIB_SIZE = (224, 224)
DEFAULT_CALIB_IMAGES = 256
#: The defaults of the config's top-level ``convert_cfg``.
DEFAULT_CONVERT_CFG = dict(ri=True, calib_images=DEFAULT_CALIB_IMAGES,
                           calib_size=DEFAULT_CALIB_SIZE)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_CLASSIFIER_PREFIXES = ('fc.', 'head.', 'classifier.', 'timm_model.fc.',
                        'timm_model.head.', 'timm_model.classifier.')
#: Dataset layouts recognised in a ``calib_dir``: (registered dataset type,
#: folder of the split files, folder of the images).
DATASET_LAYOUTS = (
    ('PascalContextMTDataset', osp.join('ImageSets', 'Context'),
     'JPEGImages'),
    ('NYUDMTDataset', 'gt_sets', 'images'),
)
TRAIN_SPLIT = 'train'


def _load_config(config: Union[str, os.PathLike, Config, Mapping]
                 ) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return Config(copy.deepcopy(dict(config)))
    return read_config(os.fspath(config))


def _backbone_cfg(cfg: Config, where: str) -> dict[str, Any]:
    model = cfg.get('model')
    if not isinstance(model, dict) or not isinstance(
            model.get('backbone'), dict):
        raise ConversionError(f'{where}: the config has no model.backbone '
                              f'dict')
    return without_pretrained(to_plain(model['backbone']))


def _preprocessor_cfg(cfg: Config, where: str) -> dict[str, Any]:
    pre = cfg.get('model', {}).get('data_preprocessor') or {}
    mean = pre.get('mean')
    std = pre.get('std')
    if mean is None or std is None:
        raise ConversionError(f'{where}: model.data_preprocessor needs mean '
                              f'and std to normalise calibration images')
    if len(mean) != len(std):
        raise ConversionError(f'{where}: data_preprocessor mean and std '
                              f'have different lengths')
    return dict(mean=[float(m) for m in mean], std=[float(s) for s in std],
                bgr_to_rgb=bool(pre.get('bgr_to_rgb', False)))


def conversion_options(cfg: Config, where: str = 'config', *,
                       ri: Optional[bool] = None,
                       calib_images: Optional[int] = None,
                       calib_size: Optional[Sequence[int]] = None,
                       legacy_ri: Optional[bool] = None) -> dict[str, Any]:
    """The conversion options: the config's ``convert_cfg`` over
    :data:`DEFAULT_CONVERT_CFG`, then the given arguments (command-line
    flags) over both.

    Args:
        cfg: The config.
        where: The config's name in error messages.
        ri: Response Initialization on/off (None: from the config).
        calib_images: At most this many calibration images.
        calib_size: Calibration crop ``(H, W)``.
        legacy_ri: The deprecated ``model.rc_cfg.ri``; False switches RI off
            unless ``ri`` is given.

    Returns:
        ``dict(ri=bool, calib_images=int, calib_size=(H, W))``.

    Raises:
        ConversionError: an unknown ``convert_cfg`` key or an invalid value
            (both named).
    """
    given = cfg.get('convert_cfg') or {}
    if not isinstance(given, Mapping):
        raise ConversionError(f'{where}: convert_cfg must be a dict, got '
                              f'{type(given).__name__}')
    unknown = sorted(set(given) - set(DEFAULT_CONVERT_CFG))
    if unknown:
        raise ConversionError(f'{where}: unknown convert_cfg key(s) '
                              f'{unknown}; valid keys: '
                              f'{list(DEFAULT_CONVERT_CFG)}')
    options = dict(DEFAULT_CONVERT_CFG, **to_plain(dict(given)))
    if legacy_ri is False:
        options['ri'] = False
    for key, value in (('ri', ri), ('calib_images', calib_images),
                       ('calib_size', calib_size)):
        if value is not None:
            options[key] = value
    if not isinstance(options['ri'], bool):
        raise ConversionError(f'{where}: convert_cfg.ri must be True or '
                              f'False, got {options["ri"]!r}')
    count = options['calib_images']
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConversionError(f'{where}: the number of calibration images '
                              f'(convert_cfg.calib_images, --calib-images) '
                              f'must be a positive integer, got {count!r}')
    size = options['calib_size']
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool)
                       and v > 0 for v in size)):
        raise ConversionError(f'{where}: the calibration crop '
                              f'(convert_cfg.calib_size, --calib-size) must '
                              f'be two positive integers (H, W), got '
                              f'{size!r}')
    options['calib_size'] = tuple(size)
    return options


def build_backbone(backbone_cfg: Mapping[str, Any]) -> nn.Module:
    """Builds a plain backbone from an mmseg config dict (random weights).

    Args:
        backbone_cfg (dict): e.g. ``dict(type='MTDeepLabResNet', depth=18,
            ...)`` or ``dict(type='TIMMBackbone', model_name=...)``.

    Returns:
        nn.Module: the backbone, in eval mode.
    """
    from mmengine.registry import init_default_scope

    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    try:
        backbone = MODELS.build(copy.deepcopy(dict(backbone_cfg)))
    except Exception as err:
        raise ConversionError(
            f'cannot build backbone {backbone_cfg.get("type")!r}: '
            f'{type(err).__name__}: {err}')
    backbone.eval()
    return backbone


def map_checkpoint_keys(state: dict[str, torch.Tensor],
                        model_keys: Iterable[str]
                        ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Renames checkpoint keys to the backbone's keys.

    Handles DDP ``module.`` prefixes, mmseg/mmengine ``backbone.`` prefixes
    (only those keys are kept when present) and timm/torchvision keys for a
    ``TIMMBackbone`` (``timm_model.`` is added, and the names of modules
    that timm's ``features_only`` wrapper flattens are renamed: see
    :func:`_timm_feature_key`). Classifier tensors (``fc.*``, ``head.*``,
    ``classifier.*``) are set aside.

    Args:
        state (dict[str, Tensor]): The checkpoint's tensors.
        model_keys (Iterable[str]): The backbone's state-dict keys.

    Returns:
        tuple[dict, list]: the renamed tensors and the ignored classifier
        keys.
    """
    model_keys = set(model_keys)
    state = {(k[len('module.'):] if k.startswith('module.') else k): v
             for k, v in state.items()}
    if any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items()
                 if k.startswith('backbone.')}
    wants_timm = bool(model_keys) and all(
        k.startswith('timm_model.') for k in model_keys)
    if wants_timm:
        if not any(k.startswith('timm_model.') for k in state):
            state = {'timm_model.' + k: v for k, v in state.items()}
        state = {_timm_feature_key(k, model_keys): v
                 for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(_CLASSIFIER_PREFIXES)
                     and k not in model_keys)
    state = {k: v for k, v in state.items() if k not in set(ignored)}
    return state, ignored


def _timm_feature_key(key: str, model_keys: set[str]) -> str:
    """The backbone's name for a ``timm_model.`` key of a plain timm model.

    timm's ``features_only`` wrapper (``FeatureListNet``) lifts the children
    of top-level ``nn.Sequential`` modules to its own level, joining the two
    names with ``_``: a convnext_tiny's ``stem.0.weight`` is
    ``stem_0.weight`` there, ``stages.1.blocks...`` is ``stages_1.blocks...``.
    A key the backbone does not have is renamed that way when the renamed
    key exists; any other key is returned unchanged.
    """
    if key in model_keys or not key.startswith('timm_model.'):
        return key
    parts = key[len('timm_model.'):].split('.')
    if len(parts) < 3:
        return key
    flattened = 'timm_model.' + '_'.join(parts[:2]) + '.' + '.'.join(
        parts[2:])
    return flattened if flattened in model_keys else key


def load_backbone_weights(backbone: nn.Module,
                          checkpoint: Union[str, os.PathLike],
                          min_match: float = 0.9,
                          log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Loads a checkpoint into a plain backbone, refusing a poor match.

    Args:
        backbone (nn.Module): From :func:`build_backbone`.
        checkpoint (str): torchvision/timm ``.pth``, ``.safetensors`` or an
            mmseg/mmengine checkpoint.
        min_match (float): Least fraction of the backbone's tensors
            (``num_batches_tracked`` aside) that must load.
        log (callable): Printer for the loaded/missing/unexpected report.

    Returns:
        dict: ``loaded``, ``missing``, ``unexpected``, ``mismatched``,
        ``ignored`` key lists and the ``match`` fraction.

    Raises:
        ConversionError: unsafe/unreadable file or too little matched.
    """
    try:
        state = load_state_dict_file(checkpoint)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    target = backbone.state_dict()
    state, ignored = map_checkpoint_keys(state, target)
    loaded, mismatched = {}, []
    for key, value in state.items():
        if key in target:
            if tuple(value.shape) == tuple(target[key].shape):
                loaded[key] = value
            else:
                mismatched.append(f'{key} {tuple(value.shape)} vs '
                                  f'{tuple(target[key].shape)}')
    unexpected = sorted(k for k in state if k not in target)
    missing = sorted(k for k in target if k not in loaded)
    counted = [k for k in target if not k.endswith('num_batches_tracked')]
    match = (sum(k in loaded for k in counted) / len(counted)
             if counted else 0.0)

    def few(keys):
        return ', '.join(keys[:4]) + (' ...' if len(keys) > 4 else '')

    log(f'checkpoint {checkpoint}: loaded {len(loaded)}/{len(target)} '
        f'backbone tensors ({match:.1%} of the non-counter tensors)')
    log(f'  missing {len(missing)}' + (f': {few(missing)}' if missing
                                        else ''))
    log(f'  unexpected {len(unexpected)}'
        + (f': {few(unexpected)}' if unexpected else ''))
    if mismatched:
        log(f'  shape mismatch {len(mismatched)}: {few(mismatched)}')
    if ignored:
        log(f'  ignored classifier tensors {len(ignored)}: {few(ignored)}')
    if match < min_match:
        raise ConversionError(
            f'{checkpoint}: only {match:.1%} of the backbone\'s tensors '
            f'matched (need {min_match:.0%}); the checkpoint is probably '
            f'for another architecture than the config\'s backbone '
            f'({len(missing)} missing, e.g. {few(missing)}; '
            f'{len(unexpected)} unexpected, e.g. {few(unexpected)}; '
            f'{len(mismatched)} with another shape)')
    backbone.load_state_dict(loaded, strict=False)
    return dict(loaded=sorted(loaded), missing=missing,
                unexpected=unexpected, mismatched=mismatched,
                ignored=ignored, match=match)


def find_images(calib_dir: Union[str, os.PathLike],
                limit: Optional[int] = DEFAULT_CALIB_IMAGES) -> list[str]:
    """Lists up to ``limit`` images under ``calib_dir`` (recursive, sorted).

    Raises:
        ConversionError: the folder is missing or holds no image.
    """
    calib_dir = os.fspath(calib_dir)
    if not osp.isdir(calib_dir):
        raise ConversionError(f'{calib_dir}: calibration folder not found')
    paths = []
    for root, dirs, files in os.walk(calib_dir):
        dirs.sort()
        paths += [osp.join(root, f) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    paths.sort()
    if not paths:
        raise ConversionError(f'{calib_dir}: no .jpg/.png images found '
                              f'(searched recursively)')
    return paths[:limit] if limit else paths


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration images of a conversion and where they came from.

    Attributes:
        paths: The image files, sorted by their path relative to ``root``.
        root: The dataset root or image folder.
        source: ``'dataset'`` (a split of a dataset) or ``'folder'`` (every
            image under a folder).
        split: The dataset split (``'train'``), None for a folder.
        dataset: The registered dataset type, None for a folder.
    """

    paths: tuple[str, ...]
    root: str
    source: str
    split: Optional[str] = None
    dataset: Optional[str] = None

    def relative_paths(self) -> list[str]:
        """The images' paths relative to ``root`` (``/``-separated)."""
        return [osp.relpath(p, self.root).replace(os.sep, '/')
                for p in self.paths]

    def digest(self) -> str:
        """``'sha256:<hex>'`` of the sorted relative paths, one per line."""
        text = '\n'.join(sorted(self.relative_paths()))
        return 'sha256:' + hashlib.sha256(text.encode('utf-8')).hexdigest()

    def describe(self) -> str:
        """E.g. ``'the train split of NYUDMTDataset at data/nyud'``."""
        if self.source == 'dataset':
            return (f'the {self.split} split of {self.dataset} at '
                    f'{self.root}')
        return f'the folder {self.root}'

    def manifest_entry(self) -> dict[str, Any]:
        """What a bank's manifest records (``config.ri.calibration``)."""
        return dict(source=self.source, dataset=self.dataset,
                    split=self.split, root=self.root, count=len(self.paths),
                    sha256=self.digest())


def _layout_of(folder: str) -> Optional[tuple[str, str, str]]:
    """The known dataset layout whose split folder ``folder`` holds."""
    for layout in DATASET_LAYOUTS:
        if osp.isdir(osp.join(folder, layout[1])):
            return layout
    return None


def _dataset_images(dataset_cfg: dict, what: str
                    ) -> tuple[list[str], list[str]]:
    """Builds a dataset (no pipeline) and lists its image files.

    Returns:
        The distinct image paths and the data roots of its leaf datasets.
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    wrapped = Config(dict(train_dataloader=dict(
        dataset=copy.deepcopy(to_plain(dataset_cfg)))))
    leaves = list(iter_dataset_cfgs(wrapped, ['train_dataloader']))
    for leaf in leaves:  # only the file lists are needed
        leaf['pipeline'] = []
        leaf.pop('lazy_init', None)
    try:
        dataset = DATASETS.build(wrapped.train_dataloader.dataset)
        paths = {dataset.get_data_info(i)['img_path']
                 for i in range(len(dataset))}
    except (RCError, OSError, ValueError, KeyError) as err:
        raise ConversionError(f'cannot list the calibration images of '
                              f'{what}: {type(err).__name__}: {err}') \
            from None
    roots = [os.fspath(leaf.get('data_root') or '') for leaf in leaves]
    return sorted(paths), roots


def _split_set(root: str, layout: tuple[str, str, str],
               limit: int) -> CalibrationSet:
    dataset_type, split_dir, _ = layout
    split_file = osp.join(root, split_dir, f'{TRAIN_SPLIT}.txt')
    if not osp.isfile(split_file):
        raise ConversionError(
            f'{root} is a {dataset_type} dataset root but has no train '
            f'split ({split_file} is missing); calibration never uses '
            f'validation images: pass a folder of training images as '
            f'--calib-dir')
    paths, _ = _dataset_images(
        dict(type=dataset_type, data_root=root, split=TRAIN_SPLIT,
             tasks=['semseg']), f'the train split at {root}')
    return _selected(paths, root, 'dataset', TRAIN_SPLIT, dataset_type,
                     limit)


def _selected(paths: Iterable[str], root: str, source: str,
              split: Optional[str], dataset: Optional[str],
              limit: int) -> CalibrationSet:
    paths = sorted(paths, key=lambda p: osp.relpath(p, root))
    if not paths:
        raise ConversionError(f'{root}: no calibration image found')
    return CalibrationSet(tuple(paths[:limit]), root, source, split, dataset)


def find_calibration_images(cfg: Optional[Config] = None,
                            calib_dir: Optional[str] = None,
                            limit: int = DEFAULT_CALIB_IMAGES
                            ) -> CalibrationSet:
    """Chooses the calibration images of a conversion, never from a
    validation split (see the module docstring for the rules).

    Args:
        cfg: The config; its train dataset is used when ``calib_dir`` is
            not given.
        calib_dir: A dataset root, a dataset's image folder, or any folder
            of images.
        limit: At most this many images (the first by relative path).

    Returns:
        The images and their provenance.

    Raises:
        ConversionError: no calibration source, a dataset root without a
            train split, or no image found.
    """
    if calib_dir is not None:
        calib_dir = os.fspath(calib_dir)
        if not osp.isdir(calib_dir):
            raise ConversionError(f'{calib_dir}: calibration folder not '
                                  f'found')
        layout = _layout_of(calib_dir)
        if layout is not None:
            return _split_set(calib_dir, layout, limit)
        parent = osp.dirname(osp.abspath(calib_dir))
        layout = _layout_of(parent)
        if layout is not None and osp.basename(
                osp.normpath(calib_dir)) == layout[2]:
            # The image folder of a dataset: its train images only.
            return _split_set(parent, layout, limit)
        return _selected(find_images(calib_dir, None), calib_dir, 'folder',
                         None, None, limit)
    dataset_cfg = (cfg.get('train_dataloader') or {}).get('dataset') \
        if cfg is not None else None
    hint = ('pass --calib-dir DIR (a dataset root, whose train split is '
            'used, or a folder of .jpg/.png images, e.g. a few hundred '
            'ImageNet training images), --data-root DIR (the train split '
            'of the config\'s dataset), or --no-ri to keep the identity '
            'initialisation (Ws = W, Wt = I)')
    if not dataset_cfg:
        raise ConversionError(f'Response Initialization needs calibration '
                              f'images: {hint}')
    leaves = list(iter_dataset_cfgs(cfg, ['train_dataloader']))
    roots = [os.fspath(leaf.get('data_root') or '') for leaf in leaves]
    missing = [r for r in roots if not osp.isdir(r)]
    if missing:
        raise ConversionError(
            f'Response Initialization needs calibration images; they come '
            f'from the train split of the config\'s train dataset, whose '
            f'data root {missing[0]!r} does not exist: {hint}')
    # Datasets without a ``split`` argument are named by their loader.
    splits = sorted({str(leaf.get('split') or 'train_dataloader')
                     for leaf in leaves})
    types = sorted({str(leaf.get('type')) for leaf in leaves})
    paths, roots = _dataset_images(
        dataset_cfg, f'the config\'s train dataset at {", ".join(roots)}')
    root = roots[0] if len(set(roots)) == 1 else osp.commonpath(roots)
    return _selected(paths, root, 'dataset', ','.join(splits),
                     ','.join(types), limit)


def _load_image(path: str, size: Sequence[int], mean: Sequence[float],
                std: Sequence[float], bgr_to_rgb: bool) -> torch.Tensor:
    import cv2
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ConversionError(f'{path}: cannot read the image')
    if bgr_to_rgb:
        img = img[..., ::-1]
    h, w = size
    scale = max(h, w) * 256 / 224 / min(img.shape[:2])
    rh = max(h, round(img.shape[0] * scale))
    rw = max(w, round(img.shape[1] * scale))
    img = cv2.resize(np.ascontiguousarray(img), (rw, rh),
                     interpolation=cv2.INTER_LINEAR)
    top, left = (rh - h) // 2, (rw - w) // 2
    img = img[top:top + h, left:left + w].astype(np.float32)
    img = (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def calibration_batches(paths: Sequence[str],
                        size: Sequence[int] = DEFAULT_CALIB_SIZE,
                        batch_size: int = 16,
                        mean: Sequence[float] = (123.675, 116.28, 103.53),
                        std: Sequence[float] = (58.395, 57.12, 57.375),
                        bgr_to_rgb: bool = True) -> Iterator[torch.Tensor]:
    """Yields normalised ``(B, 3, H, W)`` float batches of ``paths``.

    Images are loaded lazily, one batch at a time.
    """
    if batch_size < 1:
        raise ConversionError(f'batch size must be >= 1, got {batch_size}')
    for start in range(0, len(paths), batch_size):
        yield torch.stack([_load_image(p, size, mean, std, bgr_to_rgb)
                           for p in paths[start:start + batch_size]])



class _Progress:
    """A sized iterable of batches wrapped in a tqdm bar."""

    def __init__(self, batches: Iterable[torch.Tensor], total: int,
                 desc: str) -> None:
        self.batches, self.total, self.desc = batches, total, desc

    def __iter__(self) -> Iterator[torch.Tensor]:
        from tqdm import tqdm
        yield from tqdm(self.batches, total=self.total, desc=self.desc,
                        unit='batch')


def _task_cost(model: nn.Module) -> tuple[int, dict[str, Any]]:
    probe = copy.deepcopy(model)
    rc.add_task(probe, 'cost_probe')
    info = rc.summary(probe)
    return info['params_per_task']['cost_probe'], info


def convert_checkpoint(config: Union[str, os.PathLike, Config, Mapping],
                       checkpoint: Union[str, os.PathLike],
                       out: Union[str, os.PathLike],
                       calib_dir: Optional[str] = None,
                       calib_images: Optional[int] = None,
                       calib_size: Optional[Sequence[int]] = None,
                       batch_size: int = 16, ri: Optional[bool] = None,
                       force: bool = False, min_match: float = 0.9,
                       progress: bool = True,
                       log: Callable[[str], Any] = print,
                       data_root: Optional[str] = None) -> TaskBank:
    """Converts a pretrained checkpoint into a new task bank (no tasks).

    Args:
        config: mmseg config (file, ``Config`` or dict) with
            ``model.backbone``, ``model.data_preprocessor``, optionally
            ``model.rc_cfg`` and the top-level ``convert_cfg``.
        checkpoint: The pretrained weights.
        out: The bank folder to create.
        calib_dir: Calibration images for RI (see
            :func:`find_calibration_images`); by default the train split of
            the config's train dataset.
        calib_images: At most this many images (None: ``convert_cfg``).
        calib_size: Calibration crop ``(H, W)`` (None: ``convert_cfg``).
        batch_size: Calibration batch size.
        ri: Response Initialization on/off (None: ``convert_cfg.ri``);
            False keeps the identity init (``Ws = W``, ``Wt = I``).
        force: Replace an existing bank at ``out``.
        min_match: See :func:`load_backbone_weights`.
        progress: Show a tqdm bar during calibration.
        log: Where the report lines go.
        data_root: Points the config's datasets at this folder first.

    Returns:
        The new bank. Its manifest's ``config`` holds ``backbone``,
        ``rc_cfg`` (``RCConfig.to_dict()``), ``data_preprocessor``, ``ri``
        (with ``calibration``: count, split, source, sha256 of the image
        list), ``source`` and ``params_per_task``.

    Raises:
        ConversionError: every user error, before anything is written to
            ``out`` (a bad config key, a baseline config, an unsafe or
            foreign checkpoint, no calibration images ...).
    """
    cfg = _load_config(config)
    where = getattr(cfg, 'filename', None) or 'config'
    if data_root is not None:
        set_data_root(cfg, data_root)
    backbone_cfg = _backbone_cfg(cfg, where)
    model_cfg = cfg.get('model') or {}
    parsed = parse_rc_cfg(model_cfg.get('rc_cfg'),
                          baseline=model_cfg.get('baseline'),
                          where=f'{where}: model')
    if parsed.baseline is not None:
        raise ConversionError(
            f'{where}: the config builds the {parsed.baseline!r} baseline '
            f'(model.baseline); a task bank holds an RC model, convert '
            f'with an RC config (no model.baseline)')
    rc_config = parsed.config
    options = conversion_options(cfg, where, ri=ri,
                                 calib_images=calib_images,
                                 calib_size=calib_size,
                                 legacy_ri=parsed.ri)
    if batch_size < 1:
        raise ConversionError(f'the calibration batch size must be >= 1, '
                              f'got {batch_size}')
    pre = _preprocessor_cfg(cfg, where)
    out = osp.abspath(os.fspath(out))
    if osp.isdir(out) and os.listdir(out) and not force:
        raise ConversionError(f'{out} exists and is not empty; choose '
                              f'another --out or pass --force to replace it')
    size = options['calib_size']
    calib = None
    if options['ri']:
        calib = find_calibration_images(cfg, calib_dir,
                                        options['calib_images'])

    backbone = build_backbone(backbone_cfg)
    load_report = load_backbone_weights(backbone, checkpoint,
                                        min_match=min_match, log=log)
    ri_info: dict[str, Any] = dict(enabled=options['ri'])
    if calib is not None:
        nb = (len(calib.paths) + batch_size - 1) // batch_size
        batches = calibration_batches(list(calib.paths), size, batch_size,
                                      **pre)
        calibration = (_Progress(batches, nb, 'RI calibration')
                       if progress else batches)
        log(f'Response Initialization on {len(calib.paths)} images of '
            f'{calib.describe()} ({size[0]}x{size[1]}, batches of '
            f'{batch_size})')
        rc.reparameterize(backbone, [], rc_config, calibration=calibration)
        stats = backbone.rc_info['ri']
        ri_info.update(images=len(calib.paths), size=list(size),
                       batch_size=batch_size,
                       num_batches=stats['num_batches'],
                       max_abs_diff=stats['max_abs_diff'],
                       calibration=calib.manifest_entry())
        log(f'function preserved: max |delta| of backbone outputs on the '
            f'first calibration batch = {stats["max_abs_diff"]:.3g}')
    else:
        x = torch.randn((2, 3) + tuple(size),
                        generator=torch.Generator().manual_seed(0))
        backbone.eval()
        with torch.no_grad():
            reference = backbone(x)
        rc.reparameterize(backbone, [], rc_config)
        diff = rc.output_change(backbone, x, reference)
        ri_info.update(max_abs_diff=diff)
        log(f'no RI (identity init); max |delta| of backbone outputs on a '
            f'random batch = {diff:.3g}')
    per_task, info = _task_cost(backbone)
    log(f'per-task parameter cost: {per_task:,} '
        f'({per_task / max(info["shared_params"], 1):.1%} of the '
        f'{info["shared_params"]:,} shared); layers: {info["layers"]}')
    if info['skipped']:
        log(f'skipped convs (kept shared): {sorted(info["skipped"])}')
    bank_config = dict(
        backbone=backbone_cfg, rc_cfg=rc_config.to_dict(),
        data_preprocessor=pre, ri=ri_info,
        source=dict(checkpoint=osp.basename(os.fspath(checkpoint)),
                    loaded=len(load_report['loaded']),
                    missing=len(load_report['missing']),
                    unexpected=len(load_report['unexpected'])),
        params_per_task=per_task)
    try:
        bank = TaskBank.create(out, rc.shared_state_dict(backbone),
                               config=bank_config, force=force)
    except BankError as err:
        raise ConversionError(str(err)) from None
    log(f'wrote task bank {bank.path} (fingerprint {bank.fingerprint})')
    return bank


def build_rc_backbone_from_bank(bank: Union[TaskBank, str, os.PathLike]
                                ) -> nn.Module:
    """Rebuilds the RC backbone (no tasks) whose shared state is ``bank``'s.

    Args:
        bank: The bank (or its folder).

    Returns:
        The backbone with the bank's filter banks and base state loaded
        (strictly, verified); add tasks with ``rc_adapter.add_task`` or
        ``rc_adapter.load_task_state_dict``.

    Raises:
        BankError: the bank is invalid or does not fit its own config.
    """
    if not isinstance(bank, TaskBank):
        bank = TaskBank(bank)
    config = bank.config
    if 'backbone' not in config:
        raise BankError(f'bank {bank.path}: the manifest config has no '
                        f'backbone entry')
    backbone = build_backbone(config['backbone'])
    rc.reparameterize(backbone, [], bank_rc_config(bank))
    shared = bank.read_shared()
    try:
        backbone.load_state_dict(shared, strict=True)
    except RuntimeError as err:
        raise BankError(f'bank {bank.path}: shared state does not fit the '
                        f'backbone of its config: {err}') from None
    return backbone
