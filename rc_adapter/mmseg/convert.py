"""Turn a pretrained checkpoint into a task bank (and a bank back into a
backbone).

:func:`convert_checkpoint` is what ``tools/convert_to_rc.py`` runs: build the
plain backbone of an mmseg config, load the user's weights (weights-only),
stream calibration images for Response Initialization, reparameterize with no
task and write the shared state as a new :class:`~rc_adapter.core.bank.TaskBank`.
:func:`build_rc_backbone_from_bank` rebuilds that RC backbone from a bank.

Calibration images: every ``.jpg``/``.jpeg``/``.png`` under the folder
(recursive, sorted by path, the first ``calib_images``), read with OpenCV
(BGR), converted to RGB when the data preprocessor has ``bgr_to_rgb``, the
shorter side resized to ``size * 256 / 224`` and centre-cropped to
``calib_size`` (default 224 x 224: the ImageNet evaluation transform the RCM
reference used for RI), then normalised with the preprocessor's mean/std.
"""
import copy
import os

import numpy as np
import torch

from rc_adapter.core import surgery
from rc_adapter.core.bank import BankError, TaskBank

from .checkpoint import CheckpointError, load_state_dict_file

__all__ = ['ConversionError', 'convert_checkpoint', 'build_backbone',
           'load_backbone_weights', 'map_checkpoint_keys', 'find_images',
           'calibration_batches', 'build_rc_backbone_from_bank',
           'DEFAULT_CALIB_SIZE', 'DEFAULT_CALIB_IMAGES']

DEFAULT_CALIB_SIZE = (224, 224)
DEFAULT_CALIB_IMAGES = 256
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_CLASSIFIER_PREFIXES = ('fc.', 'head.', 'classifier.', 'timm_model.fc.',
                        'timm_model.head.', 'timm_model.classifier.')
_RC_CFG_KEYS = ('nff', 'task_norms', 'include', 'exclude', 'copy_modules',
                'execution')


class ConversionError(ValueError):
    """A user error during conversion (bad config, checkpoint, images ...).

    Attributes:
        exit_code (int): The exit status a command line should use.
    """

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def _plain(obj):
    """ConfigDict/tuples -> JSON-ready dicts/lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _load_config(config):
    from mmengine.config import Config
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return Config(copy.deepcopy(config))
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise ConversionError(f'{path}: no such config file')
    try:
        return Config.fromfile(path)
    except Exception as err:
        raise ConversionError(f'{path}: cannot read the config '
                              f'({type(err).__name__}: {err})')


def _backbone_cfg(cfg, where):
    model = cfg.get('model')
    if not isinstance(model, dict) or not isinstance(
            model.get('backbone'), dict):
        raise ConversionError(f'{where}: the config has no model.backbone '
                              f'dict')
    backbone = _plain(model['backbone'])
    # The weights come from CHECKPOINT (or the bank), never from the
    # backbone's own init/download logic.
    backbone.pop('init_cfg', None)
    if backbone.get('type') == 'TIMMBackbone':
        backbone['pretrained'] = False
        backbone['checkpoint_path'] = ''
    elif 'pretrained' in backbone:
        backbone['pretrained'] = None
    return backbone


def _rc_cfg(cfg, where):
    """Splits ``model.rc_cfg`` into reparameterize kwargs and the RI flag.

    Besides the :func:`rc_adapter.reparameterize` options, the segmentor's
    ``mode`` (must be ``'rc'``) and ``ri`` (False = identity init, like
    ``--no-ri``) keys are accepted.
    """
    rc_cfg = _plain(cfg.get('model', {}).get('rc_cfg') or {})
    unknown = sorted(set(rc_cfg) - set(_RC_CFG_KEYS) - {'mode', 'ri'})
    if unknown:
        raise ConversionError(f'{where}: unknown model.rc_cfg key(s) '
                              f'{unknown} (allowed: '
                              f'{list(_RC_CFG_KEYS) + ["mode", "ri"]})')
    mode = rc_cfg.pop('mode', 'rc')
    if mode != 'rc':
        raise ConversionError(f"{where}: model.rc_cfg.mode is {mode!r}; a "
                              f"task bank needs mode='rc'")
    ri = bool(rc_cfg.pop('ri', True))
    return rc_cfg, ri


def _preprocessor_cfg(cfg, where):
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


def build_backbone(backbone_cfg):
    """Builds a plain backbone from an mmseg config dict (random weights).

    Args:
        backbone_cfg (dict): e.g. ``dict(type='DeepLabResNet', depth=18,
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


def map_checkpoint_keys(state, model_keys):
    """Renames checkpoint keys to the backbone's keys.

    Handles DDP ``module.`` prefixes, mmseg/mmengine ``backbone.`` prefixes
    (only those keys are kept when present) and timm/torchvision keys for a
    ``TIMMBackbone`` (``timm_model.`` is added). Classifier tensors
    (``fc.*``, ``head.*``, ``classifier.*``) are set aside.

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
    if wants_timm and not any(k.startswith('timm_model.') for k in state):
        state = {'timm_model.' + k: v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(_CLASSIFIER_PREFIXES)
                     and k not in model_keys)
    state = {k: v for k, v in state.items() if k not in set(ignored)}
    return state, ignored


def load_backbone_weights(backbone, checkpoint, min_match=0.9, log=print):
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
        raise ConversionError(str(err))
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


def find_images(calib_dir, limit=DEFAULT_CALIB_IMAGES):
    """Lists up to ``limit`` images under ``calib_dir`` (recursive, sorted).

    Raises:
        ConversionError: the folder is missing or holds no image.
    """
    calib_dir = os.fspath(calib_dir)
    if not os.path.isdir(calib_dir):
        raise ConversionError(f'{calib_dir}: calibration folder not found',
                              exit_code=2)
    paths = []
    for root, dirs, files in os.walk(calib_dir):
        dirs.sort()
        paths += [os.path.join(root, f) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    paths.sort()
    if not paths:
        raise ConversionError(f'{calib_dir}: no .jpg/.png images found '
                              f'(searched recursively)', exit_code=2)
    return paths[:limit] if limit else paths


def _load_image(path, size, mean, std, bgr_to_rgb):
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


def calibration_batches(paths, size=DEFAULT_CALIB_SIZE, batch_size=16,
                        mean=(123.675, 116.28, 103.53),
                        std=(58.395, 57.12, 57.375), bgr_to_rgb=True):
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

    def __init__(self, batches, total, desc):
        self.batches, self.total, self.desc = batches, total, desc

    def __iter__(self):
        from tqdm import tqdm
        yield from tqdm(self.batches, total=self.total, desc=self.desc,
                        unit='batch')


def _task_cost(model):
    probe = copy.deepcopy(model)
    surgery.add_task(probe, 'cost_probe')
    info = surgery.summary(probe)
    return info['params_per_task']['cost_probe'], info


def convert_checkpoint(config, checkpoint, out, calib_dir=None,
                       calib_images=DEFAULT_CALIB_IMAGES,
                       calib_size=DEFAULT_CALIB_SIZE, batch_size=16,
                       ri=True, force=False, min_match=0.9, progress=True,
                       log=print):
    """Converts a pretrained checkpoint into a new task bank (no tasks).

    Args:
        config (str | Config | dict): mmseg config with ``model.backbone``,
            ``model.rc_cfg`` and ``model.data_preprocessor``.
        checkpoint (str): The pretrained weights.
        out (str): The bank folder to create.
        calib_dir (str, optional): Calibration images for RI.
        calib_images (int): Use at most this many images.
        calib_size (tuple[int, int]): Calibration crop ``(H, W)``.
        batch_size (int): Calibration batch size.
        ri (bool): Response Initialization; False (or ``rc_cfg.ri=False``
            in the config) keeps the identity init.
        force (bool): Replace an existing bank at ``out``.
        min_match (float): See :func:`load_backbone_weights`.
        progress (bool): Show a tqdm bar during calibration.
        log (callable): Where the report lines go.

    Returns:
        TaskBank: the new bank.

    Raises:
        ConversionError: every user error (``exit_code`` 2 when RI has no
            images), before anything is written to ``out``.
    """
    where = config if isinstance(config, (str, os.PathLike)) else 'config'
    cfg = _load_config(config)
    backbone_cfg = _backbone_cfg(cfg, where)
    rc_cfg, cfg_ri = _rc_cfg(cfg, where)
    ri = ri and cfg_ri
    pre = _preprocessor_cfg(cfg, where)
    out = os.path.abspath(os.fspath(out))
    if (os.path.isdir(out) and os.listdir(out) and not force):
        raise ConversionError(f'{out} exists and is not empty; choose '
                              f'another --out or pass --force to replace it')
    paths = None
    if ri:
        if calib_dir is None:
            raise ConversionError(
                'Response Initialization needs calibration images: pass '
                '--calib-dir DIR (a folder of .jpg/.png images, e.g. a few '
                'hundred ImageNet validation images), or --no-ri to keep '
                'the identity initialisation (Ws = W, Wt = I)', exit_code=2)
        paths = find_images(calib_dir, calib_images)
    size = tuple(int(s) for s in calib_size)

    backbone = build_backbone(backbone_cfg)
    load_report = load_backbone_weights(backbone, checkpoint,
                                        min_match=min_match, log=log)
    ri_info = dict(enabled=bool(ri))
    if ri:
        nb = (len(paths) + batch_size - 1) // batch_size
        batches = calibration_batches(paths, size, batch_size, **pre)
        calibration = (_Progress(batches, nb, 'RI calibration')
                       if progress else batches)
        log(f'Response Initialization on {len(paths)} images from '
            f'{calib_dir} ({size[0]}x{size[1]}, batches of {batch_size})')
        surgery.reparameterize(backbone, [], calibration=calibration,
                               **rc_cfg)
        stats = backbone.rc_info['ri']
        ri_info.update(images=len(paths), size=list(size),
                       batch_size=batch_size,
                       num_batches=stats['num_batches'],
                       max_abs_diff=stats['max_abs_diff'])
        log(f'function preserved: max |delta| of backbone outputs on the '
            f'first calibration batch = {stats["max_abs_diff"]:.3g}')
    else:
        reference = copy.deepcopy(backbone)
        surgery.reparameterize(backbone, [], **rc_cfg)
        x = torch.randn((2, 3) + size, generator=torch.Generator()
                        .manual_seed(0))
        diff = _identity_check(reference, backbone, x)
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
        backbone=backbone_cfg, rc_cfg=rc_cfg, data_preprocessor=pre,
        ri=ri_info,
        source=dict(checkpoint=os.path.basename(os.fspath(checkpoint)),
                    loaded=len(load_report['loaded']),
                    missing=len(load_report['missing']),
                    unexpected=len(load_report['unexpected'])),
        params_per_task=per_task)
    try:
        bank = TaskBank.create(out, surgery.shared_state_dict(backbone),
                               config=bank_config, force=force)
    except BankError as err:
        raise ConversionError(str(err))
    log(f'wrote task bank {bank.path} (fingerprint {bank.fingerprint})')
    return bank


def _identity_check(reference, model, x):
    surgery.add_task(model, 'cost_probe')
    surgery.set_task(model, 'cost_probe', update_trainable=False)
    reference.eval()
    model.eval()
    try:
        with torch.no_grad():
            return surgery._max_abs_diff(reference(x), model(x))
    finally:
        surgery.remove_task(model, 'cost_probe')


def build_rc_backbone_from_bank(bank):
    """Rebuilds the RC backbone (no tasks) whose shared state is ``bank``'s.

    Args:
        bank (TaskBank | str): The bank (or its folder).

    Returns:
        nn.Module: the backbone with the bank's filter banks and base state
        loaded (strictly, verified); add tasks with ``rc_adapter.add_task``
        or ``rc_adapter.load_task_state_dict``.

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
    rc_cfg = {k: v for k, v in (config.get('rc_cfg') or {}).items()
              if k in _RC_CFG_KEYS}
    surgery.reparameterize(backbone, [], **rc_cfg)
    shared = bank.read_shared()
    try:
        backbone.load_state_dict(shared, strict=True)
    except RuntimeError as err:
        raise BankError(f'bank {bank.path}: shared state does not fit the '
                        f'backbone of its config: {err}')
    return backbone
