"""RC side by side with HuggingFace PEFT's LoRA and full fine-tuning.

One process, one backbone at a time. For every backbone the methods are
built from the same randomly initialised network and measured against
baselines timed in the same run: the train steps and forward passes of all
variants are interleaved (the order rotates every repetition) and the
median of each is taken, so load from other processes hits every variant
alike. Printed as markdown tables; ``--out FILE`` also writes them as JSON.

Backbones (random init, backbone output only, a random regression target):

* ``resnet18_os32`` / ``resnet18_os16``: timm ResNet-18, output stride 32
  and 16 (layer4 dilated); LoRA on every ``Conv2d``;
* ``vit_s16``: timm ``vit_small_patch16_224`` at a smaller ``img_size``;
  LoRA on every ``nn.Linear``;
* ``mit_b0``: mmseg ``MixVisionTransformer`` at MiT-b0 size; LoRA on every
  ``nn.MultiheadAttention`` (PEFT adapts its packed q/k/v projection and the
  output projection) and every dense ``Conv2d`` (patch embeddings, the
  spatial-reduction convs and MixFFN's 1x1 convs, which are MiT's "linear"
  layers: its only ``nn.Linear`` modules are the attention output
  projections). The depthwise 3x3 convs of MixFFN are left out: PEFT needs
  the rank to be divisible by ``groups`` there.

Methods (rows):

* full fine-tuning (every parameter trains; the baseline of the train-step
  ratio);
* RC, ``modulator='auto'`` (default rank 8) and ``modulator='lowrank'``
  with the largest rank whose per-task parameters do not exceed LoRA r=8's
  (found by ``budget``);
* LoRA r=8 and LoRA at the rank whose adapter matches RC-auto's per-task
  parameters; on ResNet-18 also LoRA r=8 with every BatchNorm in
  ``modules_to_save`` (a BN copy per adapter), and at output stride 16 LoRA
  r=8 with the dilated convs excluded.

Columns: train step / full fine-tune step; per-task trainable parameters;
per-task stored elements (RC: ``rc.task_state_dict``, i.e. modulators, norm
copies with their running statistics; LoRA: ``get_peft_model_state_dict``,
what ``save_pretrained`` writes per adapter); merged inference / plain
(``rc.merge``, ``merge_and_unload``); unmerged inference / plain; the max
|difference| between merged and unmerged outputs.

Interference: train task A for a few SGD steps, record A's outputs (eval
mode) on fixed inputs, add task B (RC: ``rc.add_task``; LoRA:
``add_adapter``/``set_adapter``), train it, switch back to A and report the
max |change| of A's outputs, whether they are bit-identical, and which
tensors that existed before B was added changed.

When PEFT is not installed (``pip install -e ".[bench]"``) the LoRA rows
are skipped and the tables say so.

Usage::

    python benchmarks/bench_peft.py                 # full measurement
    python benchmarks/bench_peft.py --quick         # smoke run, tiny sizes
    python benchmarks/bench_peft.py --backbones resnet18_os32 vit_s16
    python benchmarks/bench_peft.py --out peft.json --threads 2
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import rc_adapter as rc  # noqa: E402  (before mmseg: mmcv-lite shims)
from rc_adapter.utils.io import save_json  # noqa: E402

try:  # optional: the `bench` extra of setup.py
    import peft
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
except ImportError:  # the LoRA rows are skipped
    peft = None

#: Why the LoRA rows are missing when PEFT cannot be imported.
NO_PEFT = 'PEFT is not installed (pip install -e ".[bench]")'

#: The first RC task / LoRA adapter and the one added after it (PEFT warns
#: about adapter names contained in its prefix 'lora_', such as 'a').
TASK_A, TASK_B = 'task_a', 'task_b'


# -- backbones ------------------------------------------------------------
@dataclass
class Backbone:
    """One backbone to measure.

    Attributes:
        name: Key used on the command line and in the tables.
        build: Returns the network (random init, seeded by the caller).
        lora_targets: ``model -> list of module names`` LoRA adapts.
        batch: Batch size of the full run.
        size: Input height and width of the full run.
        quick_batch: Batch size of ``--quick``.
        quick_size: Input size of ``--quick``.
        note: What the LoRA targets cover (printed under the table).
    """

    name: str
    build: Callable[[bool], nn.Module]
    lora_targets: Callable[[nn.Module], list[str]]
    batch: int = 8
    size: int = 128
    quick_batch: int = 2
    quick_size: int = 64
    note: str = ''


def _timm_resnet18(output_stride: int) -> Callable[[bool], nn.Module]:
    def build(quick: bool) -> nn.Module:
        import timm
        return timm.create_model('resnet18', pretrained=False, num_classes=0,
                                 global_pool='', output_stride=output_stride)
    return build


def _timm_vit_s16(quick: bool) -> nn.Module:
    import timm
    return timm.create_model('vit_small_patch16_224', pretrained=False,
                             num_classes=0, img_size=64 if quick else 112)


def _mit_b0(quick: bool) -> nn.Module:
    from mmseg.models.backbones import MixVisionTransformer
    return MixVisionTransformer(
        in_channels=3, embed_dims=32, num_stages=4, num_layers=[2, 2, 2, 2],
        num_heads=[1, 2, 5, 8], patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=4,
        qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
        drop_path_rate=0.0)


def conv_targets(model: nn.Module, *, dilated: bool = True) -> list[str]:
    """Names of every dense ``nn.Conv2d`` (``groups == 1``) of ``model``;
    with ``dilated=False`` without the dilated ones."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1
            and (dilated or all(d == 1 for d in m.dilation))]


def linear_targets(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` of ``model``."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear)]


def mit_targets(model: nn.Module) -> list[str]:
    """Every ``nn.MultiheadAttention`` (not its ``out_proj`` alone: PEFT
    adapts both projections through the attention module) and every dense
    ``Conv2d``."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)] + conv_targets(model)


BACKBONES = {
    'resnet18_os32': Backbone(
        'resnet18_os32', _timm_resnet18(32), conv_targets,
        note='LoRA on all 20 Conv2d'),
    'resnet18_os16': Backbone(
        'resnet18_os16', _timm_resnet18(16), conv_targets,
        note='LoRA on all 20 Conv2d (3 of them dilated in layer4)'),
    'vit_s16': Backbone(
        'vit_s16', _timm_vit_s16, linear_targets, size=112, quick_size=64,
        note='LoRA on all 48 nn.Linear (qkv, proj, fc1, fc2)'),
    'mit_b0': Backbone(
        'mit_b0', _mit_b0, mit_targets,
        note='LoRA on the 8 nn.MultiheadAttention and the 26 dense Conv2d; '
             'the 8 depthwise Conv2d are not adapted (PEFT needs rank % '
             'groups == 0)'),
}


# -- methods --------------------------------------------------------------
def count_elements(state: dict) -> int:
    """Number of elements of every tensor in a state dict."""
    return sum(v.numel() for v in state.values() if torch.is_tensor(v))


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class Method:
    """How one row builds, switches, counts and merges its model."""

    key = ''
    label = ''

    def build(self, base: nn.Module) -> nn.Module:
        """A new model for task A from a copy of ``base``."""
        raise NotImplementedError

    def add_task(self, model: nn.Module, task: str) -> None:
        """Adds ``task`` (not made active)."""

    def set_task(self, model: nn.Module, task: str) -> None:
        """Routes the forward pass to ``task`` and makes only it train."""

    def trainable_count(self, model: nn.Module, task: str) -> int:
        """Per-task trainable parameters."""
        return sum(p.numel() for p in _trainable(model))

    def stored_count(self, model: nn.Module, task: str) -> int:
        """Elements that must be stored per task."""
        return count_elements(model.state_dict())

    def merged(self, model: nn.Module, task: str) -> Optional[nn.Module]:
        """A plain network computing ``task`` (None: nothing to merge)."""
        return None


class FullFineTune(Method):
    """Every parameter trains; one whole network per task."""

    key = 'full'
    label = 'full fine-tuning'

    def build(self, base: nn.Module) -> nn.Module:
        model = copy.deepcopy(base)
        model.requires_grad_(True)
        return model


class RCMethod(Method):
    """``rc.reparameterize`` with the given options."""

    def __init__(self, key: str, label: str, **options: Any) -> None:
        self.key, self.label, self.options = key, label, options

    def build(self, base: nn.Module) -> nn.Module:
        model = copy.deepcopy(base)
        rc.reparameterize(model, [TASK_A], **self.options)
        return model

    def add_task(self, model: nn.Module, task: str) -> None:
        rc.add_task(model, task)

    def set_task(self, model: nn.Module, task: str) -> None:
        rc.set_task(model, task)

    def trainable_count(self, model: nn.Module, task: str) -> int:
        return rc.task_parameter_count(model, task)

    def stored_count(self, model: nn.Module, task: str) -> int:
        return count_elements(rc.task_state_dict(model, task))

    def merged(self, model: nn.Module, task: str) -> nn.Module:
        return rc.merge(model, task)

    @staticmethod
    def describe(model: nn.Module) -> str:
        """The modulator families of a built model, e.g.
        ``full x17, lowrank(r=8) x3``."""
        families = rc.summary(model)['modulators']
        return ', '.join(f'{k} x{v}' for k, v in families.items())


class LoraMethod(Method):
    """PEFT LoRA on the given module names (named adapters per task)."""

    def __init__(self, key: str, label: str, rank: int,
                 targets: list[str], save_norms: bool = False) -> None:
        self.key, self.label, self.rank = key, label, rank
        self.targets = targets
        self.save_norms = save_norms
        self.norms: list[str] = []

    def config(self) -> 'LoraConfig':
        """The ``LoraConfig`` of one adapter (alpha = rank: scaling 1).

        The targets are passed as one regular expression of the exact
        names: PEFT matches a *list* by name suffix, so the stem's
        ``conv1`` in a list would also select every block's ``conv1``.
        """
        return LoraConfig(r=self.rank, lora_alpha=self.rank,
                          lora_dropout=0.0,
                          target_modules=exact_names(self.targets),
                          modules_to_save=self.norms or None)

    def build(self, base: nn.Module) -> nn.Module:
        self.norms = []
        if self.save_norms:
            self.norms = [name for name, m in base.named_modules()
                          if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return get_peft_model(copy.deepcopy(base), self.config(),
                              adapter_name=TASK_A)

    def add_task(self, model: nn.Module, task: str) -> None:
        model.add_adapter(task, self.config())

    def set_task(self, model: nn.Module, task: str) -> None:
        model.set_adapter(task)

    def stored_count(self, model: nn.Module, task: str) -> int:
        return count_elements(get_peft_model_state_dict(
            model, adapter_name=task))

    def merged(self, model: nn.Module, task: str) -> nn.Module:
        return copy.deepcopy(model).merge_and_unload()


def exact_names(names: list[str]) -> str:
    """A regular expression matching exactly ``names`` (PEFT full-matches a
    string ``target_modules`` against every module name)."""
    return '|'.join(re.escape(name) for name in names)


def lora_dilation_gaps(model: nn.Module) -> list[str]:
    """LoRA conv layers whose ``lora_A`` lacks the base conv's dilation or
    padding mode, as ``name: base dilation d, lora_A dilation d'``."""
    gaps = []
    for name, m in model.named_modules():
        if not hasattr(m, 'lora_A') or not hasattr(m, 'get_base_layer'):
            continue
        base = m.get_base_layer()
        if not isinstance(base, nn.Conv2d):
            continue
        for a in m.lora_A.values():
            if (a.dilation, a.padding_mode) != (base.dilation,
                                                base.padding_mode):
                short = name.replace('base_model.model.', '')
                gaps.append(f'{short}: conv dilation {base.dilation}, '
                            f'lora_A dilation {a.dilation}')
    return gaps


def has_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` holds a BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm)
               for m in model.modules())


def undilated_targets(backbone: Backbone,
                      model: nn.Module) -> Optional[list[str]]:
    """The conv targets without the dilated convs, or None where the
    backbone's LoRA targets hold no dilated conv."""
    if backbone.lora_targets is not conv_targets:
        return None
    undilated = conv_targets(model, dilated=False)
    return undilated if len(undilated) < len(conv_targets(model)) else None


def lora_rank_excess(model: nn.Module, targets: list[str], rank: int) -> int:
    """How many target layers have a rank below ``rank`` (LoRA's product is
    then over-parameterized there)."""
    excess = 0
    for name in targets:
        m = model.get_submodule(name)
        if isinstance(m, nn.MultiheadAttention):
            full = m.embed_dim
        elif isinstance(m, nn.Conv2d):
            full = min(m.in_channels // m.groups * m.kernel_size[0] *
                       m.kernel_size[1], m.out_channels)
        else:
            full = min(m.in_features, m.out_features)
        excess += rank > full
    return excess


# -- one step -------------------------------------------------------------
def _tensors(output: Any) -> list[torch.Tensor]:
    if torch.is_tensor(output):
        return [output]
    return [t for item in output for t in _tensors(item)]


def regression_loss(output: Any, target: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error of every output tensor against its target."""
    return sum(F.mse_loss(o, t) for o, t in zip(_tensors(output), target))


def random_target(model: nn.Module, x: torch.Tensor,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """A random regression target shaped like ``model(x)``."""
    model.eval()
    with torch.no_grad():
        out = _tensors(model(x))
    return [torch.randn(o.shape, generator=generator) for o in out]


def train_steps(model: nn.Module, x: torch.Tensor, target: list,
                steps: int, lr: float = 0.01) -> None:
    """``steps`` SGD steps (momentum 0.9) of the trainable parameters."""
    opt = torch.optim.SGD(_trainable(model), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        regression_loss(model(x), target).backward()
        opt.step()


def eval_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of ``model`` on ``x`` in eval mode, without grad."""
    model.eval()
    with torch.no_grad():
        return [t.clone() for t in _tensors(model(x))]


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Max |a - b| over lists of tensors."""
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# -- the method list of one backbone ---------------------------------------
@dataclass
class Built:
    """One method built on one backbone (task A active)."""

    method: Method
    model: Optional[nn.Module] = None
    label: str = ''
    trainable: Optional[int] = None
    stored: Optional[int] = None
    notes: list[str] = field(default_factory=list)
    error: Optional[str] = None
    skipped: Optional[str] = None


def _error_text(err: BaseException) -> str:
    return f'{type(err).__name__}: {str(err).splitlines()[0][:160]}'


def build_method(method: Method, base: nn.Module, x: torch.Tensor,
                 target: list) -> Built:
    """Builds ``method``, counts its parameters and runs one train step;
    an exception (PEFT on dilated convs) is recorded, not raised."""
    built = Built(method, label=method.label)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            built.model = method.build(base)
            method.set_task(built.model, TASK_A)
            built.trainable = method.trainable_count(built.model, TASK_A)
            built.stored = method.stored_count(built.model, TASK_A)
            train_steps(built.model, x, target, 1)
        except Exception as err:  # noqa: BLE001  (reported as the result)
            built.error = _error_text(err)
    if built.model is not None and isinstance(method, LoraMethod):
        gaps = lora_dilation_gaps(built.model)
        if gaps:
            built.notes.append(f'{len(gaps)} LoRA convs without the base '
                               f'dilation ({gaps[0]}, ...)')
    seen = set()
    for w in caught:
        text = str(w.message).splitlines()[0][:120]
        if issubclass(w.category, (UserWarning, RuntimeWarning)) and \
                text not in seen and 'peft' in w.filename:
            seen.add(text)
            built.notes.append(f'PEFT warns: {text}')
    return built


def methods_for(backbone: Backbone, base: nn.Module, x: torch.Tensor,
                target: list) -> list[Built]:
    """Builds every row of one backbone, matching ranks across methods."""
    rows = [build_method(FullFineTune(), base, x, target)]
    rc_auto = build_method(RCMethod('rc_auto', "RC modulator='auto'"),
                           base, x, target)
    rc_auto.label += f' ({RCMethod.describe(rc_auto.model)})'
    rows.append(rc_auto)
    if peft is None:
        rows.append(Built(Method(), label='LoRA (all rows)',
                          skipped=NO_PEFT))
        return rows
    targets = backbone.lora_targets(base)
    lora8 = build_method(LoraMethod('lora8', 'LoRA r=8', 8, targets),
                         base, x, target)
    model_params = sum(p.numel() for p in base.parameters())
    rc_low = build_method(
        RCMethod('rc_lowrank', "RC modulator='lowrank'",
                 modulator='lowrank',
                 budget=min(1.0, lora8.trainable / model_params)),
        base, x, target)
    if rc_low.model is not None:
        rank = rc.summary(rc_low.model)['modulators']
        rc_low.label += (f' ({", ".join(f"{k} x{v}" for k, v in rank.items())}'
                         f'; largest rank with per-task <= LoRA r=8)')
    rows.append(rc_low)
    rows.append(lora8)
    per_rank = lora8.trainable / 8
    match = max(1, round(rc_auto.trainable / per_rank))
    lora_match = build_method(
        LoraMethod('lora_match', f'LoRA r={match} (matches RC auto)', match,
                   targets), base, x, target)
    excess = lora_rank_excess(base, targets, match)
    if excess:
        lora_match.notes.append(
            f'r={match} exceeds the full rank of {excess} of '
            f'{len(targets)} target layers')
    rows.append(lora_match)
    if has_batchnorm(base):
        rows.append(build_method(
            LoraMethod('lora8_bn', 'LoRA r=8, BN in modules_to_save', 8,
                       targets, save_norms=True), base, x, target))
    undilated = undilated_targets(backbone, base)
    if undilated is not None:
        label = (f'LoRA r=8, the {len(targets) - len(undilated)} dilated '
                 f'convs excluded')
        rows.append(build_method(
            LoraMethod('lora8_nodil', label, 8, undilated), base, x, target))
    return rows


# -- speed and size -------------------------------------------------------
def _eval_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def run() -> None:
        with torch.no_grad():
            model(x)
    return run


def _train_fn(model: nn.Module, x: torch.Tensor,
              target: list) -> Callable[[], None]:
    opt = torch.optim.SGD(_trainable(model), lr=1e-4, momentum=0.9)

    def run() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        regression_loss(model(x), target).backward()
        opt.step()
    return run


def interleaved_medians(fns: dict[str, Callable[[], None]], reps: int,
                        warmup: int = 2) -> dict[str, float]:
    """Median seconds of every function over ``reps`` interleaved rounds
    (the order rotates each round) after ``warmup`` untimed rounds."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def speed(backbone: Backbone, quick: bool, reps: int,
          seed: int = 0) -> dict[str, Any]:
    """Speed and size rows of one backbone (see the module docstring)."""
    batch = backbone.quick_batch if quick else backbone.batch
    size = backbone.quick_size if quick else backbone.size
    torch.manual_seed(seed)
    base = backbone.build(quick)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    target = random_target(base, x, gen)
    model_params = sum(p.numel() for p in base.parameters())
    rows = methods_for(backbone, base, x, target)

    fns = {'plain_eval': _eval_fn(copy.deepcopy(base), x)}
    merge_diff = {}
    for row in rows:
        if row.model is None:
            continue
        key = row.method.key
        if row.error is None:
            fns[f'{key}/train'] = _train_fn(row.model, x, target)
        if isinstance(row.method, FullFineTune):
            continue
        # Eval copies are snapshots after the build's train step (adapters
        # no longer at their identity init), so the merge is not trivial.
        try:
            merged = row.method.merged(row.model, TASK_A)
        except Exception as err:  # noqa: BLE001
            row.notes.append(f'merge fails: {_error_text(err)}')
            continue
        if row.error is not None:
            row.notes.append('merging works (adapter at its zero init: the '
                             'train step failed)')
        fns[f'{key}/merged'] = _eval_fn(merged, x)
        if row.error is None:
            unmerged = copy.deepcopy(row.model)
            fns[f'{key}/unmerged'] = _eval_fn(unmerged, x)
            merge_diff[key] = max_abs_diff(eval_outputs(merged, x),
                                           eval_outputs(unmerged, x))
    t = interleaved_medians(fns, reps)
    full = t.get('full/train')
    out_rows = []
    for row in rows:
        key = row.method.key
        out_rows.append(dict(
            key=key or 'lora', label=row.label, error=row.error,
            skipped=row.skipped, notes=row.notes,
            trainable=row.trainable, stored=row.stored,
            trainable_fraction=(row.trainable / model_params
                                if row.trainable is not None else None),
            train_ratio=(t[f'{key}/train'] / full
                         if f'{key}/train' in t and full else None),
            merged_ratio=(t[f'{key}/merged'] / t['plain_eval']
                          if f'{key}/merged' in t else None),
            unmerged_ratio=(t[f'{key}/unmerged'] / t['plain_eval']
                            if f'{key}/unmerged' in t else None),
            merge_max_abs_diff=merge_diff.get(key)))
    return dict(backbone=backbone.name, batch=batch, size=size, reps=reps,
                model_params=model_params, note=backbone.note,
                full_train_ms=full * 1e3 if full else None,
                plain_eval_ms=t['plain_eval'] * 1e3, rows=out_rows)


# -- interference ---------------------------------------------------------
def _changed_tensors(before: dict, after: dict) -> tuple[dict, float]:
    """Which tensors of ``before`` differ in ``after`` (bit for bit),
    counted per key suffix (``running_mean``, ``weight`` ...), and the
    largest absolute change of a floating-point one."""
    changed: dict[str, int] = {}
    largest = 0.0
    for key, value in before.items():
        if not torch.equal(value, after[key]):
            suffix = key.rsplit('.', 1)[-1]
            changed[suffix] = changed.get(suffix, 0) + 1
            if value.is_floating_point():
                largest = max(largest,
                              (value - after[key]).abs().max().item())
    return changed, largest


def interference_of(method: Method, base: nn.Module, x_a: torch.Tensor,
                    t_a: list, x_b: torch.Tensor, t_b: list,
                    x_eval: torch.Tensor, steps: int) -> dict[str, Any]:
    """Trains A, then B, and measures how far A's outputs moved.

    Returns:
        dict: ``max_abs_change`` and ``relative`` (over max |A output|),
        ``bit_exact``, ``changed`` (tensors present before B was added that
        changed, counted per name suffix) and ``max_tensor_change`` (the
        largest change among them), or ``error``.
    """
    try:
        model = method.build(base)
        method.set_task(model, TASK_A)
        train_steps(model, x_a, t_a, steps)
        before = eval_outputs(model, x_eval)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        method.add_task(model, TASK_B)
        method.set_task(model, TASK_B)
        train_steps(model, x_b, t_b, steps)
        method.set_task(model, TASK_A)
        after = eval_outputs(model, x_eval)
        changed, largest = _changed_tensors(state, model.state_dict())
    except Exception as err:  # noqa: BLE001  (reported as the result)
        return dict(error=_error_text(err))
    scale = max(t.abs().max().item() for t in before)
    change = max_abs_diff(before, after)
    return dict(max_abs_change=change, relative=change / scale,
                bit_exact=all(torch.equal(a, b)
                              for a, b in zip(before, after)),
                changed=changed, max_tensor_change=largest)


def interference(backbone: Backbone, quick: bool, steps: int,
                 seed: int = 0) -> dict[str, Any]:
    """Interference rows of one backbone: full fine-tuning of one shared
    network (reference), RC auto and low-rank, LoRA r=8 (and its BN /
    dilation variants where they apply)."""
    batch = backbone.quick_batch if quick else backbone.batch
    size = backbone.quick_size if quick else backbone.size
    torch.manual_seed(seed)
    base = backbone.build(quick)
    gen = torch.Generator().manual_seed(seed + 1)
    x_a, x_b, x_eval = (torch.randn(batch, 3, size, size, generator=gen)
                        for _ in range(3))
    t_a, t_b = (random_target(base, x, gen) for x in (x_a, x_b))
    methods: list[Method] = [
        FullFineTune(),
        RCMethod('rc_auto', "RC modulator='auto'"),
        RCMethod('rc_lowrank', "RC modulator='lowrank' r=8",
                 modulator='lowrank', rank=8)]
    if peft is not None:
        targets = backbone.lora_targets(base)
        methods.append(LoraMethod(
            'lora8', 'LoRA r=8 (PEFT defaults: BN shared)'
            if has_batchnorm(base) else 'LoRA r=8', 8, targets))
        if has_batchnorm(base):
            methods.append(LoraMethod(
                'lora8_bn', 'LoRA r=8, BN in modules_to_save', 8, targets,
                save_norms=True))
        undilated = undilated_targets(backbone, base)
        if undilated is not None:
            methods.append(LoraMethod(
                'lora8_nodil', 'LoRA r=8, dilated convs excluded', 8,
                undilated))
    rows = []
    for method in methods:
        result = interference_of(method, base, x_a, t_a, x_b, t_b, x_eval,
                                 steps)
        label = method.label
        if isinstance(method, FullFineTune):
            label = 'full fine-tuning, one network trained on A then B'
        rows.append(dict(key=method.key, label=label, **result))
    if peft is None:
        rows.append(dict(key='lora', label='LoRA (all rows)',
                         skipped=NO_PEFT))
    return dict(backbone=backbone.name, batch=batch, size=size, steps=steps,
                rows=rows)


# -- report ---------------------------------------------------------------
def machine_line() -> str:
    """Load average, torch threads and versions, for every table."""
    load = os.getloadavg()
    version = peft.__version__ if peft is not None else 'not installed'
    return (f'load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, '
            f'{os.cpu_count()} cores, torch {torch.__version__} with '
            f'{torch.get_num_threads()} threads, peft {version}')


def _num(value: Optional[float], fmt: str = '{:.3f}') -> str:
    return '-' if value is None else fmt.format(value)


def speed_table(result: dict[str, Any]) -> str:
    """Markdown table of one backbone's speed and size rows."""
    lines = [
        f'### {result["backbone"]}: batch {result["batch"]}, '
        f'{result["size"]}x{result["size"]}, {result["reps"]} reps; full FT '
        f'step {_num(result["full_train_ms"], "{:.1f}")} ms, plain eval '
        f'{_num(result["plain_eval_ms"], "{:.1f}")} ms; '
        f'{result["model_params"]:,} parameters',
        '',
        '| method | train step / full FT | trainable per task | stored per '
        'task | merged / plain | unmerged / plain | merged vs unmerged '
        'max abs diff | notes |',
        '|---|---|---|---|---|---|---|---|']
    for row in result['rows']:
        notes = list(row['notes'])
        if row['error']:
            notes.insert(0, f'**fails**: {row["error"]}')
        if row['skipped']:
            notes.insert(0, f'**skipped**: {row["skipped"]}')
        trainable = ('-' if row['trainable'] is None else
                     f'{row["trainable"]:,} '
                     f'({100 * row["trainable_fraction"]:.2f} %)')
        stored = '-' if row['stored'] is None else f'{row["stored"]:,}'
        lines.append(
            f'| {row["label"]} | {_num(row["train_ratio"])} | {trainable} | '
            f'{stored} | {_num(row["merged_ratio"])} | '
            f'{_num(row["unmerged_ratio"])} | '
            f'{_num(row["merge_max_abs_diff"], "{:.2g}")} | '
            f'{"; ".join(notes)} |')
    if result.get('note'):
        lines.append(f'\n{result["note"]}.')
    return '\n'.join(lines)


def interference_table(result: dict[str, Any]) -> str:
    """Markdown table of one backbone's interference rows."""
    lines = [
        f'### {result["backbone"]}: {result["steps"]} SGD steps on A, then '
        f'{result["steps"]} on B; batch {result["batch"]}, '
        f'{result["size"]}x{result["size"]}',
        '',
        '| method | max abs change of A\'s outputs | relative to max abs '
        'output | bit-exact | tensors of A / shared that changed (max abs '
        'change) |',
        '|---|---|---|---|---|']
    for row in result['rows']:
        if row.get('error') or row.get('skipped'):
            why = (f'**fails**: {row["error"]}' if row.get('error') else
                   f'**skipped**: {row["skipped"]}')
            lines.append(f'| {row["label"]} | {why} | - | - | - |')
            continue
        changed = ', '.join(f'{k} x{v}' for k, v in row['changed'].items())
        if changed:
            changed += f' ({row["max_tensor_change"]:.3g})'
        lines.append(
            f'| {row["label"]} | {row["max_abs_change"]:.3g} | '
            f'{row["relative"]:.3g} | {"yes" if row["bit_exact"] else "no"} '
            f'| {changed or "none"} |')
    return '\n'.join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: tiny inputs, few repetitions')
    parser.add_argument('--backbones', nargs='+', choices=list(BACKBONES),
                        default=list(BACKBONES))
    parser.add_argument('--reps', type=int, default=None,
                        help='interleaved repetitions (default 15, quick 3)')
    parser.add_argument('--steps', type=int, default=None,
                        help='SGD steps per task for the interference '
                             'measurement (default 5, quick 2)')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch threads (default 2)')
    parser.add_argument('--skip', nargs='*', default=[],
                        choices=['speed', 'interference'])
    parser.add_argument('--out', default=None,
                        help='also write every table as JSON to this file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 15)
    steps = args.steps or (2 if args.quick else 5)
    print(f'# bench_peft: {machine_line()}'
          f'{"; --quick (smoke run)" if args.quick else ""}', flush=True)
    if peft is None:
        print(f'# {NO_PEFT}: the LoRA rows are skipped', flush=True)
    parts = (('speed', 'Speed and size (ratios against baselines in the '
                       'same run)', lambda b: speed(b, args.quick, reps),
              speed_table),
             ('interference', "Interference: A's outputs after training B",
              lambda b: interference(b, args.quick, steps),
              interference_table))
    results: dict[str, Any] = {}
    for part, title, measure, table in parts:
        results[part] = []
        if part in args.skip:
            continue
        print(f'\n## {title}\n', flush=True)
        for name in args.backbones:
            result = measure(BACKBONES[name])
            result['machine'] = machine_line()
            results[part].append(result)
            print(table(result), flush=True)
            print(f'\n_{result["machine"]}_\n', flush=True)
    results['machine'] = machine_line()
    results['quick'] = args.quick
    if args.out:
        save_json(args.out, results)
        print(f'# wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
