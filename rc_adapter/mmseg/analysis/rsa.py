"""Representation similarity analysis (RSA) between tasks, per layer.

The paper's picture of task interference (Kanakis et al., ECCV 2020,
section 5): run the same images through the encoder as each task sees it,
and ask per layer how similar the tasks' representations are.

1. For each task and chosen layer, each image's feature map is average-
   pooled to a fixed ``grid x grid`` (``grid=1``: global average pooling)
   and flattened: one vector per image.
2. The task's **representational dissimilarity matrix** (RDM) at that layer
   is ``1 - Pearson correlation`` between the images' vectors (N x N).
3. Two tasks' representations are compared by **Spearman's rank
   correlation** between the upper triangles of their RDMs (the image
   pairs): 1 means the tasks order all image pairs alike.

In the RC bank each task has its own modulators and norms, so the tasks'
representations can differ layer by layer; in the shared multi-task
baseline every task sees the same encoder, so the similarity is 1 at every
layer: the encoder is forced into one representation for all tasks, which
is where the interference comes from. ``docs/analysis.md`` shows how to
read the plots.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import core as rc
from ...core.errors import CheckpointError, RCConfigError

__all__ = ['MIN_IMAGES', 'DEFAULT_IMAGES', 'DEFAULT_GRID', 'rdm',
           'rdm_similarity', 'similarity_matrix', 'pool_features',
           'default_layers', 'validation_samples', 'backbone_features',
           'rsa_from_rdms', 'rsa']

#: Fewest images: three give three image pairs, the least Spearman's rank
#: correlation can be computed from.
MIN_IMAGES = 3
#: Images the tool uses by default (1225 image pairs).
DEFAULT_IMAGES = 50
#: Default pooling grid: 4 x 4 cells per channel (see :func:`pool_features`).
DEFAULT_GRID = 4

#: The models compared, in plot order, and their labels.
MODEL_LABELS = {'rc': 'RC bank', 'shared': 'shared multi-task baseline',
                'finetune': 'single-task fine-tuned models'}


# -- the mathematics ----------------------------------------------------------
def rdm(features: np.ndarray) -> np.ndarray:
    """The representational dissimilarity matrix of N images.

    Args:
        features: ``(N, D)``: one feature vector per image.

    Returns:
        ``(N, N)`` float64: ``1 - r(i, j)``, with ``r`` the Pearson
        correlation between the vectors of images ``i`` and ``j`` (0 for
        identical patterns, 1 for uncorrelated ones, 2 for opposite ones);
        the diagonal is 0. Rows of an image whose vector is constant (no
        correlation defined) are NaN off the diagonal.

    Raises:
        RCConfigError: ``features`` is not 2-D with at least two rows.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise RCConfigError(f'an RDM needs features of shape (images, '
                            f'dims) with at least 2 images, got {x.shape}')
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        corr = (x @ x.T) / np.outer(norms, norms)
    out = 1.0 - np.clip(corr, -1.0, 1.0)
    np.fill_diagonal(out, 0.0)
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(values, method='average')


def rdm_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation between the upper triangles (without
    the diagonal) of two RDMs of the same images.

    Ties get their average rank; the correlation of the ranks is computed
    as ``Σ u v / sqrt(Σ u² Σ v²)`` of the centred ranks, so two equal RDMs
    give exactly 1.

    Args:
        a: ``(N, N)`` RDM.
        b: ``(N, N)`` RDM of the same images, in the same order.

    Returns:
        The correlation in [-1, 1]; NaN if either triangle holds a NaN or
        is constant (no ranking).

    Raises:
        RCConfigError: the RDMs differ in shape or hold fewer than
            :data:`MIN_IMAGES` images.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise RCConfigError(f'RDMs of the same images needed, got shapes '
                            f'{a.shape} and {b.shape}')
    if a.shape[0] < MIN_IMAGES:
        raise RCConfigError(f'comparing RDMs needs at least {MIN_IMAGES} '
                            f'images (3 image pairs), got {a.shape[0]}')
    upper = np.triu_indices(a.shape[0], k=1)
    u, v = a[upper], b[upper]
    if np.isnan(u).any() or np.isnan(v).any():
        return float('nan')
    u = _ranks(u)
    v = _ranks(v)
    u -= u.mean()
    v -= v.mean()
    su, sv = float(u @ u), float(v @ v)
    if su == 0.0 or sv == 0.0:
        return float('nan')
    return float(np.clip((u @ v) / np.sqrt(su * sv), -1.0, 1.0))


def similarity_matrix(rdms: Sequence[np.ndarray]) -> np.ndarray:
    """``(T, T)``: :func:`rdm_similarity` of every pair of RDMs."""
    count = len(rdms)
    out = np.ones((count, count))
    for i in range(count):
        for j in range(count):
            if i != j:
                out[i, j] = rdm_similarity(rdms[i], rdms[j])
    return out


def pool_features(output: Any, grid: int, layer: str = 'layer'
                  ) -> np.ndarray:
    """One vector per image from a layer's output.

    The ``(B, C, H, W)`` map is average-pooled to ``grid x grid`` cells
    (adaptive pooling, so images of any size give vectors of the same
    length ``C * grid²``) and flattened. ``grid=1`` is global average
    pooling: only which channels respond, not where. The default grid of 4
    keeps the coarse layout that dense prediction is about, while the
    vectors stay small enough to correlate (a full-resolution map would
    give tens of thousands of dimensions per image, dominated by pixel
    alignment).

    Raises:
        RCConfigError: the output is not a 4-D tensor.
    """
    if not torch.is_tensor(output) or output.dim() != 4:
        shape = tuple(output.shape) if torch.is_tensor(output) else \
            type(output).__name__
        raise RCConfigError(
            f'RSA pools feature maps of shape (N, C, H, W); layer {layer!r} '
            f'gives {shape}: choose another --layers entry')
    pooled = F.adaptive_avg_pool2d(output.float(), grid)
    return pooled.flatten(1).double().cpu().numpy()


# -- the models' features -----------------------------------------------------
def default_layers(backbone: nn.Module) -> list[str]:
    """The backbone's stages (``res_layers`` of mmseg's ResNets:
    ``layer1`` ... ``layer4``).

    Raises:
        RCConfigError: the backbone names no stages (pass ``layers``).
    """
    stages = getattr(backbone, 'res_layers', None)
    if stages:
        return list(stages)
    children = [name for name, _ in backbone.named_children()]
    raise RCConfigError(
        f'{type(backbone).__name__} names no stages: choose the layers '
        f'with --layers (module names inside the backbone, e.g. '
        f'{children[:6]})')


def _layer_modules(backbone: nn.Module, layers: Sequence[str], what: str
                   ) -> dict[str, nn.Module]:
    modules = {}
    for name in layers:
        try:
            modules[name] = backbone.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in backbone.named_children()]
            raise RCConfigError(
                f'layer {name!r} is not a module of the {what}\'s backbone '
                f'({type(backbone).__name__}); its top-level modules are '
                f'{children}') from None
    return modules


def _check_images(count: Any) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or \
            count < MIN_IMAGES:
        raise RCConfigError(f'--images must be at least {MIN_IMAGES} (an '
                            f'RDM comparison needs 3 image pairs), got '
                            f'{count!r}')


def validation_samples(cfg: Any, count: int) -> tuple[list, list[str]]:
    """``count`` images of the config's validation split, through its
    pipeline, spread evenly over the split (first and last included).

    Args:
        cfg: The config (its ``val_dataloader``, else ``test_dataloader``).
        count: Number of images, at least :data:`MIN_IMAGES`.

    Returns:
        ``(samples, names)``: the pipeline's packed samples and the image
        file names.

    Raises:
        RCConfigError: too few images asked for or available, or no
            validation dataloader.
    """
    from mmseg.registry import DATASETS

    from ..apis.config import component_errors
    _check_images(count)
    loader = cfg.get('val_dataloader') or cfg.get('test_dataloader')
    if not loader or 'dataset' not in loader:
        raise RCConfigError('the config has no val_dataloader (or '
                            'test_dataloader) to take images from')
    with component_errors():
        dataset = DATASETS.build(copy.deepcopy(loader['dataset']))
    total = len(dataset)
    if total < count:
        root = loader['dataset'].get('data_root')
        raise RCConfigError(
            f'--images {count}: the validation split of the dataset at '
            f'{root} has only {total} image(s); pass --images {total} or '
            f'fewer (at least {MIN_IMAGES})')
    indices = np.unique(np.linspace(0, total - 1, count).round()
                        .astype(int))
    samples = [dataset[int(i)] for i in indices]
    names = [str(s['data_samples'].metainfo.get('img_path', i))
             for s, i in zip(samples, indices)]
    return samples, names


@torch.no_grad()
def backbone_features(model: nn.Module, samples: Sequence[Any],
                      tasks: Sequence[str], layers: Sequence[str], *,
                      grid: int = DEFAULT_GRID, what: str = 'model'
                      ) -> tuple[dict[str, dict[str, np.ndarray]], bool]:
    """Pooled features of ``layers`` of a segmentor's backbone, per task.

    Each sample goes through the model's data preprocessor once, then
    through the backbone once per task (``model.set_active_task``: an RC
    backbone computes each task's function; a bank task is loaded when it
    is activated, so a model serving one resident task at a time reads
    each task once). A plain backbone (the baselines) has no per-task path,
    so one pass serves every task.

    Args:
        model: A segmentor (``RCMultiTaskSegmentor``) in eval mode.
        samples: Packed samples (:func:`validation_samples`).
        tasks: Tasks to run.
        layers: Module names inside ``model.backbone``.
        grid: Pooling grid (:func:`pool_features`).
        what: The model's name in error messages.

    Returns:
        ``({task: {layer: (N, D) array}}, per_task)``, ``per_task`` False
        when the backbone is plain (the same arrays for every task).

    Raises:
        RCConfigError: an unknown layer or one whose output is not a map.
    """
    from mmengine.dataset import pseudo_collate
    backbone = model.backbone
    modules = _layer_modules(backbone, layers, what)
    per_task = rc.is_reparameterized(backbone)
    runs = list(tasks) if per_task else list(tasks)[:1]
    captured: dict[str, Any] = {}
    handles = [module.register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name, module in modules.items()]
    found = {t: {layer: [] for layer in layers} for t in runs}
    inputs = [model.data_preprocessor(pseudo_collate([s]), False)['inputs']
              for s in samples]
    try:
        for task in runs:  # one task switch (bank read) per task
            if per_task:
                model.set_active_task(task)
            for x in inputs:
                captured.clear()
                backbone(x)
                for layer in layers:
                    found[task][layer].append(
                        pool_features(captured[layer], grid, layer))
    finally:
        for handle in handles:
            handle.remove()
    result = {t: {layer: np.concatenate(v) for layer, v in per.items()}
              for t, per in found.items()}
    for task in tasks:
        result.setdefault(task, result[runs[0]])
    return result, per_task


def _check_grid(grid: Any) -> None:
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise RCConfigError(f'--grid must be a positive integer (1 = global '
                            f'average pooling), got {grid!r}')


# -- from RDMs to the result --------------------------------------------------
def _plain(value: float) -> Optional[float]:
    return None if np.isnan(value) else float(value)


def rsa_from_rdms(rdms: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                  layers: Sequence[str]) -> dict[str, Any]:
    """Compares tasks within each model, and each task across models.

    Args:
        rdms: ``{model: {task: {layer: RDM}}}`` (models such as ``'rc'``,
            ``'shared'``, ``'finetune'``).
        layers: The layers, in order.

    Returns:
        ``{'models': {model: {'tasks', 'similarity': {layer: T x T list},
        'mean_pairwise', 'min_pairwise', 'max_pairwise': {layer: value}}},
        'same_task': {'a~b': {layer: {task: value}}}}``: the task-pair
        similarities of each model (Spearman of RDMs, NaN as None; pair
        statistics None with fewer than two tasks), and for each pair of
        models the similarity of the same task's RDMs in both.
    """
    models = {}
    for name, per_task in rdms.items():
        tasks = list(per_task)
        entry = dict(tasks=tasks, similarity={}, mean_pairwise={},
                     min_pairwise={}, max_pairwise={})
        for layer in layers:
            matrix = similarity_matrix([per_task[t][layer] for t in tasks])
            entry['similarity'][layer] = [[_plain(v) for v in row]
                                          for row in matrix]
            pairs = matrix[np.triu_indices(len(tasks), k=1)]
            pairs = pairs[~np.isnan(pairs)]
            for key, fn in (('mean_pairwise', np.mean),
                            ('min_pairwise', np.min),
                            ('max_pairwise', np.max)):
                entry[key][layer] = float(fn(pairs)) if pairs.size else None
        models[name] = entry
    same_task = {}
    names = list(rdms)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            common = [t for t in rdms[first] if t in rdms[second]]
            if not common:
                continue
            same_task[f'{first}~{second}'] = {
                layer: {t: _plain(rdm_similarity(rdms[first][t][layer],
                                                 rdms[second][t][layer]))
                        for t in common} for layer in layers}
    return dict(models=models, same_task=same_task)


def _rdms(features: Mapping[str, Mapping[str, np.ndarray]]
          ) -> dict[str, dict[str, np.ndarray]]:
    return {t: {layer: rdm(x) for layer, x in per.items()}
            for t, per in features.items()}


def rsa(cfg: Any, bank: str, *, tasks: Optional[Sequence[str]] = None,
        images: int = DEFAULT_IMAGES,
        layers: Optional[Sequence[str]] = None, grid: int = DEFAULT_GRID,
        baseline_checkpoint: Optional[str] = None,
        baseline_cfg: Any = None,
        finetune_checkpoints: Optional[Mapping[str, str]] = None,
        log: Callable[[str], Any] = print) -> dict[str, Any]:
    """The RSA of a bank's tasks, optionally beside the shared multi-task
    baseline and single-task fine-tuned models (``tools/analyze.py rsa``).

    Args:
        cfg: The RC config, from :func:`rc_adapter.mmseg.apis.load_config`
            (changed in place); its validation split provides the images.
        bank: The task bank folder.
        tasks: Tasks to compare (default: every bank task the config has a
            head for); at least two.
        images: Validation images (evenly spread over the split), at least
            :data:`MIN_IMAGES`.
        layers: Module names inside the backbone (default: its stages,
            :func:`default_layers`).
        grid: Pooling grid per feature map (:func:`pool_features`).
        baseline_checkpoint: A checkpoint of the shared multi-task baseline
            (``mmseg_configs/shared_*.py`` trained by ``tools/train.py``).
        baseline_cfg: The baseline's config (default: a copy of ``cfg`` as
            it was passed, with ``model.baseline='shared'``).
        finetune_checkpoints: ``{task: checkpoint}`` of single-task
            fine-tuned models (``finetune_*.py``), built from
            ``baseline_cfg`` with ``model.baseline='finetune'``.
        log: Where progress lines go.

    Returns:
        ``{'tasks', 'layers', 'grid', 'images' (file names), 'bank',
        'config', 'encoder_per_task': {model: bool}, 'checkpoints',
        'models', 'same_task'}`` (:func:`rsa_from_rdms` for the last two).

    Raises:
        BankError: missing or damaged bank, a task it lacks, or a
            bank/config mismatch.
        UnknownTaskError: a task without a decode head in the config.
        CheckpointError: a baseline checkpoint is missing (checked before
            any work), unsafe, or does not fit its config.
        RCConfigError: fewer than two tasks, too few images, an unknown
            layer, a bad grid.
    """
    from ..apis.config import configure_run
    from ..apis.evaluate import resolve_tasks
    from .models import build_segmentor, load_baseline
    _check_grid(grid)
    _check_images(images)
    original = copy.deepcopy(cfg)
    chosen = resolve_tasks(cfg, bank, tasks)
    if len(chosen) < 2:
        raise RCConfigError(
            f'RSA compares tasks: at least two are needed, got {chosen} '
            f'(the bank {bank} holds {len(chosen)} task(s) of this config)')
    for task in finetune_checkpoints or {}:
        if task not in chosen:
            raise RCConfigError(
                f'--finetune-checkpoint {task}=...: {task!r} is not one of '
                f'the analysed tasks {chosen}')
    for path in [baseline_checkpoint, *(finetune_checkpoints or {}).values()]:
        if path is not None and not os.path.isfile(path):
            raise CheckpointError(f'checkpoint {path} does not exist')
    configure_run(cfg, tasks=chosen, train_tasks=[], bank=bank)
    cfg.model.max_resident = 1  # tasks are visited one after the other
    model = build_segmentor(cfg)
    layers = list(layers) if layers else default_layers(model.backbone)
    _layer_modules(model.backbone, layers, 'RC bank')
    samples, names = validation_samples(cfg, images)
    log(f'RSA: {len(samples)} validation images, tasks {chosen}, layers '
        f'{layers}, {grid}x{grid} pooling')
    rdms, per_task, checkpoints = {}, {}, {}
    features, per_task['rc'] = backbone_features(
        model, samples, chosen, layers, grid=grid, what='RC bank')
    rdms['rc'] = _rdms(features)
    del model, features
    log('RSA: RC bank done')
    base_cfg = baseline_cfg if baseline_cfg is not None else original
    if baseline_checkpoint is not None:
        shared, used = load_baseline(base_cfg, baseline_checkpoint,
                                     baseline='shared', tasks=chosen)
        features, per_task['shared'] = backbone_features(
            shared, samples, used, layers, grid=grid,
            what='shared baseline')
        rdms['shared'] = _rdms(features)
        checkpoints['shared'] = {t: baseline_checkpoint for t in used}
        del shared, features
        log(f'RSA: shared baseline done (tasks {used})')
    if finetune_checkpoints:
        rdms['finetune'], checkpoints['finetune'] = {}, {}
        for task in chosen:
            if task not in finetune_checkpoints:
                continue
            path = finetune_checkpoints[task]
            single, _ = load_baseline(base_cfg, path, baseline='finetune',
                                      tasks=[task])
            features, _ = backbone_features(
                single, samples, [task], layers, grid=grid,
                what=f'fine-tuned {task} model')
            rdms['finetune'][task] = _rdms(features)[task]
            checkpoints['finetune'][task] = path
            del single, features
        per_task['finetune'] = True  # one network per task
        log(f'RSA: fine-tuned models done (tasks '
            f'{list(rdms["finetune"])})')
    result = dict(tasks=chosen, layers=layers, grid=grid, images=names,
                  bank=bank, config=getattr(original, 'filename', None),
                  encoder_per_task=per_task, checkpoints=checkpoints)
    result.update(rsa_from_rdms(rdms, layers))
    return result
