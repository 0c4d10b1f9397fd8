"""Deciding what every module of a model becomes under reparameterization.

:func:`make_plan` walks a model once and returns a :class:`Plan`: for each
module it touches, whether it becomes an RC layer (and with which modulator
family and rank), an RC attention layer, a per-task copy, or a per-task
normalization layer -- plus what was skipped and why, and how many
parameters of each layer type got a per-task path ("reach").

The rules (see :class:`~rc_adapter.core.config.RCConfig`):

* weight layers are convs (1d/2d/3d), linear layers and
  ``nn.MultiheadAttention`` with a packed q/k/v projection; subclasses
  whose forward differs from the torch class's are skipped (a composed
  weight would not reproduce them), as are the projections of attention
  modules that read them directly (PyTorch's Transformer layers);
* a modulator family is used only where it holds fewer parameters than a
  copy of the layer; ``modulator='auto'`` takes the paper's full modulator
  on convs with a spatial kernel (k x k, and depthwise convs, where it is a
  per-channel scale), low-rank modulators on 1x1 convs, linear layers and
  attention, then diagonal ones; a copy is the last resort;
* a ``budget`` picks the largest uniform rank (and, where that is cheaper,
  low-rank instead of full modulators) whose per-task cost fits.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch.nn as nn

from .config import DEFAULT_RANK, RCConfig
from .errors import RCConfigError
from .layers.modulators import modulator_cost

__all__ = ['Plan', 'make_plan', 'NORM_TYPES', 'WEIGHT_LAYER_TYPES']

logger = logging.getLogger('rc_adapter')

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
if hasattr(nn, 'RMSNorm'):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)

#: Layer types whose parameters count as "weight parameters" for reach.
WEIGHT_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear,
                      nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag)

# Subclasses whose forward is the torch class's for every non-empty input
# (mmcv's wrappers only add an empty-tensor shortcut; timm's Linear only a
# TorchScript cast).
_EQUIVALENT_CLASSES = frozenset({
    'mmcv.cnn.bricks.wrappers.Conv2d', 'mmcv.cnn.bricks.wrappers.Conv3d',
    'mmcv.cnn.bricks.wrappers.Linear', 'timm.layers.linear.Linear',
})

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules that read their attention's projection weights directly (fast
# paths), bypassing any reparameterization of them.
_DIRECT_READERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@dataclass
class _Candidate:
    """One modulated weight (a layer, or one projection of attention)."""

    out: int
    groups: int
    copy: int
    shift: bool
    spatial: bool = False         # a conv with a kernel larger than 1
    family: Optional[str] = None  # fixed by modulator_pattern
    rank: Optional[int] = None    # fixed by rank_pattern

    @property
    def group_out(self) -> int:
        return self.out // self.groups

    def cost(self, family: str, rank: int, nff: bool) -> int:
        if family == 'copy':
            return self.copy
        return modulator_cost(family, out_channels=self.out,
                              groups=self.groups, nff=nff, rank=rank,
                              shift=self.shift)


@dataclass
class Plan:
    """What :func:`make_plan` decided.

    Attributes:
        entries: ``{module name: dict}`` with ``kind`` (``'rc'``, ``'mha'``,
            ``'ra'``, ``'copy'``, ``'norm'``) and, for ``'rc'``,
            ``family``/``rank``; for ``'mha'``, ``in``/``out`` dicts of
            ``family``/``rank``; for ``'ra'`` (residual adapters),
            ``mode``.
        skipped: ``{module name: reason}`` of weight layers left shared.
        reach: ``{layer type: {'params', 'per_task'}}`` over every module
            with parameters of its own.
        model_params: Parameters of the model before the surgery.
        budget: ``None`` or ``{'target', 'rank'}`` when a budget was fit.
    """

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reach: dict[str, dict[str, int]] = field(default_factory=dict)
    model_params: int = 0
    budget: Optional[dict[str, Any]] = None

    def kinds(self) -> dict[str, str]:
        """``{module name: kind}``."""
        return {name: e['kind'] for name, e in self.entries.items()}

    def weight_reach(self) -> tuple[int, int]:
        """``(weight params with a per-task path, all weight params)``."""
        reached = total = 0
        for label, counts in self.reach.items():
            if counts.get('weight'):
                reached += counts['per_task']
                total += counts['params']
        return reached, total


def _qualname(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def _skip_reason(module: nn.Module, parent: Optional[nn.Module]
                 ) -> Optional[str]:
    """Why a weight layer cannot be reparameterized (None if it can)."""
    cls = type(module)
    if isinstance(module, nn.MultiheadAttention):
        if isinstance(parent, _DIRECT_READERS):
            return (f'{_qualname(type(parent))} reads the attention '
                    f'projection weights directly in its fast path; kept '
                    f'shared and frozen')
        if not module._qkv_same_embed_dim:
            return ('separate q/k/v projections (kdim/vdim != embed_dim) '
                    'are not supported; kept shared and frozen')
        return None
    base = next(t for t in _CONV_TYPES + (nn.Linear,)
                if isinstance(module, t))
    if cls is base or _qualname(cls) in _EQUIVALENT_CLASSES:
        return None
    same = cls.forward is base.forward
    if base is not nn.Linear:
        same = same and cls._conv_forward is base._conv_forward
    if same:
        return None
    return (f'{_qualname(cls)} overrides the forward (e.g. same padding or '
            f'weight standardisation), so a composed weight would not '
            f'reproduce it; kept shared and frozen')


def _params(module: nn.Module, recurse: bool = True) -> int:
    return sum(p.numel() for p in module.parameters(recurse=recurse))


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(
        True for _ in module.buffers())


def _fixed(name: str, patterns: Optional[dict]) -> Any:
    for pattern, value in (patterns or {}).items():
        if re.search(pattern, name):
            return value
    return None


def _candidates(name: str, module: nn.Module, config: RCConfig
                ) -> list[_Candidate]:
    """The modulated weights of one layer (two for attention)."""
    family = _fixed(name, config.modulator_pattern)
    rank = _fixed(name, config.rank_pattern)
    if isinstance(module, nn.MultiheadAttention):
        e = module.embed_dim
        has_bias = module.in_proj_bias is not None
        in_copy = 3 * e * e + (3 * e if has_bias else 0)
        out_copy = _params(module.out_proj)
        return [_Candidate(3 * e, 3, in_copy, has_bias, False, family, rank),
                _Candidate(e, 1, out_copy, has_bias, False, family, rank)]
    if isinstance(module, _CONV_TYPES):
        return [_Candidate(module.out_channels, module.groups,
                           _params(module), module.bias is not None,
                           any(k > 1 for k in module.kernel_size), family,
                           rank)]
    return [_Candidate(module.out_features, 1, _params(module),
                       module.bias is not None, False, family, rank)]


def _choose(c: _Candidate, family: str, rank: int, nff: bool,
            prefer_full_upto: Optional[int] = None) -> tuple[str, int]:
    """Family and rank of one candidate (``'copy'`` if nothing is cheaper).

    ``family`` is a family or ``'auto'``: the paper's full modulator on
    convs with a spatial kernel (where it is cheaper than a copy), else a
    low-rank, else a diagonal modulator. With ``prefer_full_upto`` (budget
    fitting), a full modulator is kept only where it costs no more than a
    low-rank one of that rank.
    """
    r = max(1, min(rank, c.group_out))
    if family != 'auto':
        option = (family, r if family == 'lowrank' else 0)
        return option if c.cost(*option, nff) < c.copy else ('copy', 0)
    full = c.cost('full', 0, nff)
    if full < c.copy and (c.spatial or c.group_out == 1) and (
            prefer_full_upto is None or full <= c.cost('lowrank', r, nff)):
        return ('full', 0)
    for option in (('lowrank', r), ('diagonal', 0)):
        if c.cost(*option, nff) < c.copy:
            return option
    return ('copy', 0)


def _walk(model: nn.Module, config: RCConfig):
    """Yields ``(name, module, kind)`` for the modules the plan covers:
    kind is ``'weight'``, ``'copy'`` or ``'norm'``; records skips."""
    include = [re.compile(p) for p in config.include or []] or None
    exclude = [re.compile(p) for p in config.exclude or []]
    copies = [re.compile(p) for p in config.copy_modules or []]
    covered: list[str] = []
    parents = {name: None for name, _ in model.named_modules()}
    for name, module in model.named_modules():
        for child_name, _ in module.named_children():
            parents[f'{name}.{child_name}' if name else child_name] = module
    skipped: dict[str, str] = {}
    found = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + '.') for p in covered):
            continue
        if include is not None and not any(p.search(name) for p in include):
            continue
        if any(p.search(name) for p in exclude):
            continue
        if any(p.search(name) for p in copies):
            found.append((name, module, 'copy'))
            covered.append(name)
        elif isinstance(module, _CONV_TYPES + (nn.Linear,
                                               nn.MultiheadAttention)):
            reason = _skip_reason(module, parents.get(name))
            if reason is not None:
                skipped[name] = reason
                logger.warning('rc_adapter: skipping %s: %s', name, reason)
                if isinstance(module, nn.MultiheadAttention):
                    covered.append(name)  # never its out_proj alone
                continue
            found.append((name, module, 'weight'))
            if isinstance(module, nn.MultiheadAttention):
                covered.append(name)
        elif (config.task_norms and isinstance(module, NORM_TYPES)
              and _has_state(module)):
            found.append((name, module, 'norm'))
            covered.append(name)
    return found, skipped


def make_plan(model: nn.Module, config: RCConfig) -> Plan:
    """Decides what every module of ``model`` becomes (nothing changes).

    Raises:
        RCConfigError: the budget cannot be met (the message gives the
            smallest per-task cost possible and what dominates it).
    """
    found, skipped = _walk(model, config)
    plan = Plan(skipped=skipped, model_params=_params(model))
    nff = config.nff
    fixed_cost = 0
    layers = []  # (name, module, candidates)
    for name, module, kind in found:
        if kind in ('copy', 'norm'):
            plan.entries[name] = dict(kind=kind)
            fixed_cost += _params(module)
            continue
        layers.append((name, module, _candidates(name, module, config)))

    def choices(rank: int, fit: bool) -> list[list[tuple[str, int]]]:
        out = []
        for name, module, cands in layers:
            picks = []
            for c in cands:
                family = c.family or config.modulator
                r = c.rank or rank
                picks.append(_choose(c, family, r, nff,
                                     prefer_full_upto=r if fit and
                                     c.family is None else None))
            out.append(picks)
        return out

    def cost(picks_per_layer) -> int:
        total = fixed_cost
        for (name, module, cands), picks in zip(layers, picks_per_layer):
            if any(f == 'copy' for f, _ in picks):
                total += _params(module)
            else:
                total += sum(c.cost(f, r, nff)
                             for c, (f, r) in zip(cands, picks))
        return total

    if config.budget is None:
        picks = choices(config.rank or DEFAULT_RANK, fit=False)
    else:
        picks = _fit_budget(plan, config, layers, choices, cost, fixed_cost)
    for (name, module, cands), layer_picks in zip(layers, picks):
        if config.method != 'rc':
            plan.entries[name] = _adapter_entry(module, config.method)
        elif any(f == 'copy' for f, _ in layer_picks):
            plan.entries[name] = dict(kind='copy')
        elif isinstance(module, nn.MultiheadAttention):
            (fi, ri), (fo, ro) = layer_picks
            plan.entries[name] = dict(kind='mha',
                                      **{'in': dict(family=fi, rank=ri),
                                         'out': dict(family=fo, rank=ro)})
        else:
            (f, r), = layer_picks
            plan.entries[name] = dict(kind='rc', family=f, rank=r)
    plan.reach = _reach(model, plan)
    return plan


def _adapter_entry(module: nn.Module, method: str) -> dict[str, Any]:
    """Residual-adapter baselines: an adapter beside every dense conv with a
    spatial kernel (a parallel one needs "same" padding); a copy of every
    other weight layer."""
    if isinstance(module, nn.Conv2d) and module.groups == 1 and any(
            k > 1 for k in module.kernel_size):
        mode = method[len('ra_'):]
        same = module.padding == 'same' or (
            module.padding != 'valid' and all(
                k % 2 == 1 and 2 * p == d * (k - 1) for p, d, k in zip(
                    module.padding, module.dilation, module.kernel_size)))
        if mode == 'series' or same:
            return dict(kind='ra', mode=mode)
    return dict(kind='copy')


def _fit_budget(plan, config, layers, choices, cost, fixed_cost):
    target = config.budget * plan.model_params
    go_max = max([c.group_out for _, _, cands in layers for c in cands] or
                 [1])
    high = min(config.rank or go_max, go_max)
    if cost(choices(1, fit=True)) > target:
        diagonal = [[_choose(c, 'diagonal', 0, config.nff)
                     if c.family is None and c.rank is None
                     else _choose(c, c.family or config.modulator,
                                  c.rank or 1, config.nff)
                     for c in cands] for _, _, cands in layers]
        if cost(diagonal) > target:
            raise RCConfigError(
                f'RCConfig.budget={config.budget:g} cannot be met: the '
                f'smallest per-task cost is {cost(diagonal):,} parameters '
                f'({cost(diagonal) / plan.model_params:.1%} of the model), '
                f'of which {fixed_cost:,} are norms and whole-module copies '
                f'(task_norms, copy_modules)')
        plan.budget = dict(target=int(target), rank=0)
        return diagonal
    low = 1
    while low < high:  # largest rank whose plan fits
        mid = (low + high + 1) // 2
        if cost(choices(mid, fit=True)) <= target:
            low = mid
        else:
            high = mid - 1
    plan.budget = dict(target=int(target), rank=low)
    return choices(low, fit=True)


def _reach(model: nn.Module, plan: Plan) -> dict[str, dict[str, int]]:
    """Parameters per layer type, and how many have a per-task path."""
    reach: dict[str, dict[str, int]] = {}
    prefixes = list(plan.entries)
    attention = [n for n, m in model.named_modules()
                 if isinstance(m, nn.MultiheadAttention)]
    for name, module in model.named_modules():
        own = _params(module, recurse=False)
        if not own:
            continue
        label = type(module).__name__
        weight = isinstance(module, WEIGHT_LAYER_TYPES)
        if any(name.startswith(a + '.') for a in attention):
            label, weight = 'MultiheadAttention', True
        counts = reach.setdefault(label, dict(params=0, per_task=0,
                                              weight=int(weight)))
        counts['params'] += own
        if any(name == p or name.startswith(p + '.') for p in prefixes):
            counts['per_task'] += own
    return reach
