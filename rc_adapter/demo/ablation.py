"""The seeded ablation behind ``make ablation`` (``tools/ablation.py``).

Every row trains the four tasks of the embedded synthetic benchmark (NYUD
layout) from the shipped proxy-pretrained backbone
(``assets/r18_half_proxy.safetensors``), once per seed, in this process,
through the library functions the tools call:
:func:`~rc_adapter.mmseg.convert.convert_checkpoint` (``convert_to_rc.py``),
:func:`~rc_adapter.mmseg.apis.train_task` (``add_task.py``),
:func:`~rc_adapter.mmseg.apis.train` (``train.py``) and
:func:`~rc_adapter.mmseg.apis.evaluate` (``test.py``).

How each kind of row runs:

* ``finetune`` -- one plain network per task (``baseline='finetune'``), its
  final validation is its result;
* ``shared`` -- one plain backbone with all heads, trained jointly
  (``baseline='shared'``), evaluated at the end;
* ``rc`` -- a bank converted with the row's ``rc_cfg`` (RI on or off), the
  tasks added one after the other (``train_task``), then the bank
  evaluated with every task (the incremental multi-task model);
* ``lora`` -- the plain backbone with one PEFT LoRA adapter per task
  (``baseline='lora'``), the tasks trained one after the other in the same
  model (each run starts from the previous run's checkpoint), then every
  task evaluated on the final model: with shared BatchNorm, later tasks
  move the statistics earlier tasks use.

Each finished (row, seed) is stored in ``WORK/runs/<row>/seed<k>.json`` with
the settings it ran with; a rerun with the same settings reuses it, so an
interrupted ablation continues, and several processes may share a work dir
(``--shard``). The runs of an earlier ablation's ``results.json`` (the
published ``docs/ablation_results.json``) can be restored into
``WORK/runs/`` under the same check (:func:`restore_runs`,
``--reuse-results``), so that after a change only the affected rows are
trained again (``--rerun``) and the report covers every row.

Statistics: per row and metric the mean and the sample standard deviation
(n - 1) over seeds; Δm of every run against the mean over seeds of
single-task fine-tuning (positive = drop, :mod:`rc_adapter.mmseg.evaluation.
delta_m`), so the reference row's own Δm has mean 0 and shows the noise. Two
rows differ by more than the spread when their means differ by more than
the sum of their standard deviations (:func:`beyond_spread`).
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from ..core.errors import RCConfigError
from ..mmseg.evaluation.delta_m import DEFAULT_DELTA_M_KEYS, delta_m
from ..utils.io import atomic_write_text, save_json

__all__ = ['ROOT', 'TASKS', 'RC_CONFIG', 'FT_CONFIG', 'ASSET', 'REFERENCE',
           'FULL', 'Row', 'ROWS', 'Settings', 'QUICK', 'mean_std',
           'beyond_spread', 'select_rows', 'parameter_counts',
           'resolve_rows', 'run_row', 'summarise', 'comparisons',
           'goals', 'write_report', 'run_ablation', 'load_runs',
           'read_results', 'restore_runs']

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TASKS = ('semseg', 'depth', 'normals', 'edge')
RC_CONFIG = 'mmseg_configs/rc_r18_synthetic_nyud.py'
FT_CONFIG = 'mmseg_configs/finetune_r18_synthetic_nyud.py'
ASSET = 'assets/r18_half_proxy.safetensors'
#: The Δm reference row and the paper's full method.
REFERENCE = 'single-task FT'
FULL = 'RC+RI+NFF'
#: LoRA settings shared by the LoRA rows: PEFT's conv LoRA cannot run on the
#: dilated 3x3 convs of layer4 (benchmarks/PEFT.md), so they are excluded.
_LORA = dict(dilated='exclude')


@dataclass(frozen=True)
class Row:
    """One method of the ablation.

    Attributes:
        name: The row's name (the paper's where it has one); ``--rows``
            selects by it.
        kind: ``'finetune'``, ``'shared'``, ``'rc'`` or ``'lora'``.
        group: ``'paper'`` (the paper's comparison), ``'family'``
            (modulator families) or ``'peft'`` (LoRA at equal budgets).
        rc_cfg: Merged into ``model.rc_cfg`` (``rc`` rows). ``budget`` may
            name a LoRA row: the budget is then that row's per-task
            parameters over the backbone's (see :func:`resolve_rows`).
        ri: Response Initialization at conversion (``rc`` rows).
        lora: ``model.lora_cfg`` (``lora`` rows); ``r='match'`` takes the
            rank whose per-task parameters come closest to
            :data:`FULL`'s.
        note: What the row is, for the report.
    """

    name: str
    kind: str
    group: str
    rc_cfg: Mapping[str, Any] = field(default_factory=dict)
    ri: bool = True
    lora: Mapping[str, Any] = field(default_factory=dict)
    note: str = ''


ROWS: tuple[Row, ...] = (
    Row(REFERENCE, 'finetune', 'paper',
        note='one plain network per task, every weight trained (the Δm '
             'reference)'),
    Row('shared encoder', 'shared', 'paper',
        note='one plain backbone for all tasks, trained jointly'),
    Row('RC', 'rc', 'paper', rc_cfg=dict(nff=False), ri=False,
        note='identity init, no NFF, no RI'),
    Row('RC+RI', 'rc', 'paper', rc_cfg=dict(nff=False),
        note='Response Initialization, no NFF'),
    Row(FULL, 'rc', 'paper',
        note='the full method (= modulator family `full`)'),
    Row('Series RA', 'rc', 'paper',
        rc_cfg=dict(method='ra_series', nff=False), ri=False,
        note='series residual adapters (1x1, zero init)'),
    Row('Parallel RA', 'rc', 'paper',
        rc_cfg=dict(method='ra_parallel', nff=False), ri=False,
        note='parallel residual adapters (1x1, zero init)'),
    Row('lowrank r=8', 'rc', 'family',
        rc_cfg=dict(modulator='lowrank', rank=8), note='RI + NFF'),
    Row('lowrank r=16', 'rc', 'family',
        rc_cfg=dict(modulator='lowrank', rank=16), note='RI + NFF'),
    Row('lowrank r=32', 'rc', 'family',
        rc_cfg=dict(modulator='lowrank', rank=32), note='RI + NFF'),
    Row('diagonal', 'rc', 'family', rc_cfg=dict(modulator='diagonal'),
        note='RI; a per-channel gain per task'),
    Row('LoRA r=8', 'lora', 'peft', lora=dict(_LORA, r=8, norms='per_task'),
        note='PEFT LoRA, BN per task (modules_to_save)'),
    Row('RC lowrank at LoRA r=8 budget', 'rc', 'peft',
        rc_cfg=dict(modulator='lowrank', budget='LoRA r=8'),
        note='RI + NFF; the largest uniform rank within LoRA r=8\'s '
             'per-task parameters'),
    Row('LoRA at RC budget', 'lora', 'peft',
        lora=dict(_LORA, r='match', norms='per_task'),
        note=f'PEFT LoRA, BN per task, rank matching {FULL}\'s per-task '
             f'parameters'),
    Row('LoRA r=8, BN shared', 'lora', 'peft',
        lora=dict(_LORA, r=8, norms='shared'),
        note='PEFT LoRA with its defaults: BN statistics shared by the '
             'tasks'),
    Row('LoRA at RC budget, dilated adapted', 'lora', 'peft',
        lora=dict(r='match', norms='per_task', dilated='match'),
        note=f'PEFT LoRA, BN per task, the dilated convs adapted too (their '
             f'adapter given the conv\'s dilation), rank matching {FULL}\'s '
             f'per-task parameters'),
)

#: The order a full run trains the rows in (most informative first, so an
#: interrupted run has the rows that matter): the reference and the paper's
#: rows, the goal's families, LoRA at equal budgets, then the rest.
RUN_ORDER: tuple[str, ...] = (
    REFERENCE, FULL, 'RC', 'RC+RI', 'Parallel RA', 'Series RA',
    'lowrank r=32', 'lowrank r=8', 'diagonal', 'LoRA r=8',
    'RC lowrank at LoRA r=8 budget', 'LoRA at RC budget', 'shared encoder',
    'lowrank r=16', 'LoRA r=8, BN shared',
    'LoRA at RC budget, dilated adapted')


@dataclass(frozen=True)
class Settings:
    """What every run of one ablation shares (and what a cached run must
    have been made with).

    Attributes:
        iters: Training iterations per task (the shared encoder: joint
            iterations).
        num_train: Training images of the generated benchmark.
        num_val: Validation images (every row is evaluated on all).
        size: Image size ``(H, W)``.
        data_seed: Seed of the generated benchmark.
        calib_images: Images for Response Initialization (train split).
    """

    iters: int = 200
    num_train: int = 200
    num_val: int = 150
    size: tuple[int, int] = (128, 128)
    data_seed: int = 0
    calib_images: int = 64

    def key(self) -> dict[str, Any]:
        """The settings as a JSON-able dict."""
        return dict(iters=self.iters, num_train=self.num_train,
                    num_val=self.num_val, size=list(self.size),
                    data_seed=self.data_seed,
                    calib_images=self.calib_images)


#: ``--quick``: tiny sizes, for smoke tests.
QUICK = Settings(iters=2, num_train=16, num_val=4, calib_images=8)


# -- statistics ---------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of ``values``.

    Args:
        values: One value per seed.

    Returns:
        ``(mean, std)``; ``std`` is ``nan`` for a single value.

    Raises:
        RCConfigError: no value.
    """
    values = [float(v) for v in values]
    if not values:
        raise RCConfigError('mean_std: no value')
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float('nan')
    return mean, std


def beyond_spread(a: Sequence[float], b: Sequence[float]
                  ) -> Optional[bool]:
    """Whether two rows differ by more than their spread.

    The rule: ``|mean(a) - mean(b)| > std(a) + std(b)`` (the mean ± std
    intervals do not touch).

    Args:
        a, b: One value per seed for each row.

    Returns:
        True or False; None when either row has fewer than two values (no
        spread to compare with).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return abs(ma - mb) > sa + sb


# -- rows ---------------------------------------------------------------
def select_rows(names: Optional[Iterable[str]] = None,
                rows: Sequence[Row] = ROWS) -> list[Row]:
    """The rows named (all without names), in the table's order.

    Raises:
        RCConfigError: an unknown row name (the known ones are listed).
    """
    if names is None:
        return list(rows)
    names = list(names)
    known = {r.name for r in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RCConfigError(f'unknown ablation row(s) {unknown}; the rows '
                            f'are {[r.name for r in rows]}')
    return [r for r in rows if r.name in names]


def _slug(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')


def _row_options(row: Row) -> dict[str, Any]:
    """The row's ``--cfg-options`` (model keys) on its config."""
    if row.kind == 'rc':
        return {'model.rc_cfg': dict(row.rc_cfg)}
    if row.kind == 'lora':
        return {'model.baseline': 'lora', 'model.lora_cfg': dict(row.lora)}
    return {'model.baseline': row.kind}


def _row_config(row: Row) -> str:
    return RC_CONFIG if row.kind == 'rc' else FT_CONFIG


def _build_segmentor(row: Row, task: str):
    """The row's segmentor for one task with random weights (counting)."""
    from mmseg.registry import MODELS

    from ..mmseg.apis import load_config
    cfg = load_config(osp.join(ROOT, _row_config(row)),
                      cfg_options=_row_options(row))
    cfg.model.update(tasks=[task], train_tasks=[task],
                     allow_random_bank=True)
    cfg.model.backbone.pop('init_cfg', None)
    return MODELS.build(cfg.model)


def parameter_counts(row: Row, task: str = TASKS[0]) -> dict[str, Any]:
    """Per-task trainable parameters of a (resolved) row.

    Returns:
        ``{'encoder': ..., 'head': ..., 'backbone': ..., 'layers': ...}``:
        the backbone parameters that train for one task and for nobody
        else (a whole backbone for single-task fine-tuning, 0 for the
        shared encoder, whose backbone all tasks train), the task's decoder
        head, the plain backbone's size, and what the backbone's weight
        layers got (RC: modulator families and copies, e.g.
        ``{'lowrank(r=16)': 19, 'copy': 1}``; LoRA: adapted and excluded
        layers).
    """
    import rc_adapter as rc
    model = _build_segmentor(row, task)
    head = rc.task_parameter_count(model.decode_heads, task)
    backbone = _plain_backbone_params()
    layers = {}
    if row.kind == 'rc':
        encoder = rc.task_parameter_count(model.backbone, task)
        info = rc.summary(model.backbone)
        layers = dict(info['modulators'])
        for kind in ('ra', 'copy'):
            if info['layers'].get(kind):
                layers[kind] = info['layers'][kind]
    elif row.kind == 'lora':
        from ..mmseg.models.lora import lora_summary
        info = lora_summary(model.backbone)
        encoder = info['params_per_task'][task]
        layers = dict(adapted=len(info['targets']),
                      excluded=len(info['excluded']),
                      excluded_params=info['excluded_params'])
    elif row.kind == 'finetune':
        encoder = backbone
    else:
        encoder = 0
    return dict(encoder=int(encoder), head=int(head),
                backbone=int(backbone), layers=layers)


def _plain_backbone_params() -> int:
    from mmseg.registry import MODELS

    from ..mmseg.apis.config import read_config
    backbone = dict(read_config(osp.join(ROOT, FT_CONFIG)).model.backbone)
    backbone.pop('init_cfg', None)
    return sum(p.numel() for p in MODELS.build(backbone).parameters())


def resolve_rows(rows: Sequence[Row]) -> list[Row]:
    """Turns the budget-matched settings into concrete ones.

    * a LoRA row with ``r='match'`` gets the rank whose per-task
      parameters come closest to :data:`FULL`'s (LoRA's count is linear in
      the rank: measured at ranks 1 and 2);
    * an RC row whose ``budget`` names a LoRA row gets that row's per-task
      parameters over the plain backbone's as its budget (the planner then
      takes the largest uniform rank that fits).

    Returns:
        The rows, with the resolved values in ``rc_cfg``/``lora`` and the
        matching recorded in ``note``.
    """
    out = []
    by_name = {r.name: r for r in ROWS}
    for row in rows:
        if row.kind == 'lora' and row.lora.get('r') == 'match':
            target = parameter_counts(by_name[FULL])['encoder']
            one, two = (parameter_counts(replace(
                row, lora=dict(row.lora, r=r)))['encoder'] for r in (1, 2))
            per_rank, fixed = two - one, 2 * one - two
            rank = max(1, round((target - fixed) / per_rank))
            row = replace(row, lora=dict(row.lora, r=rank),
                          note=f'{row.note} (r={rank}: {fixed + rank * per_rank:,}'
                               f' vs {target:,})')
        elif row.kind == 'rc' and isinstance(row.rc_cfg.get('budget'), str):
            source = resolve_rows([by_name[row.rc_cfg['budget']]])[0]
            target = parameter_counts(source)['encoder']
            budget = target / _plain_backbone_params()
            row = replace(row, rc_cfg=dict(row.rc_cfg, budget=budget),
                          note=f'{row.note} ({target:,} parameters)')
        out.append(row)
    return out


# -- running one row ----------------------------------------------------
def _cfg_options(settings: Settings, seed: int, *, validate: bool,
                 checkpoint: bool) -> dict[str, Any]:
    n = settings.iters
    options = {'train_cfg.max_iters': n, 'train_cfg.val_interval': n,
               'param_scheduler.0.end': n, 'randomness.seed': seed,
               'log_level': 'WARNING'}
    options['default_hooks.checkpoint'] = dict(
        type='CheckpointHook', interval=n) if checkpoint else None
    if not validate:
        options.update({'val_dataloader': None, 'val_cfg': None,
                        'val_evaluator': None})
    return options


def _schedule_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule keys, so a config's ``task_schedules`` cannot change
    the ablation's length."""
    return {k: v for k, v in options.items()
            if k.startswith(('train_cfg.', 'param_scheduler'))}


class _Context:
    """Paths and helpers one ablation's runs share."""

    def __init__(self, work: str, data_root: str, pretrained: str,
                 settings: Settings, log: Callable[[str], None]) -> None:
        self.work, self.data_root = work, data_root
        self.pretrained, self.settings, self.log = pretrained, settings, log

    def config(self, path: str, work_dir: str, seed: int, *,
               validate: bool = True, checkpoint: bool = False,
               extra: Optional[Mapping[str, Any]] = None):
        from ..mmseg.apis import load_config
        options = _cfg_options(self.settings, seed, validate=validate,
                               checkpoint=checkpoint)
        options.update(extra or {})
        cfg = load_config(osp.join(ROOT, path), data_root=self.data_root,
                          work_dir=work_dir, cfg_options=options)
        return cfg, _schedule_overrides(options)

    def pretrained_options(self) -> dict[str, Any]:
        return {'model.backbone.init_cfg': dict(
            type='Pretrained', checkpoint=self.pretrained)}


def _timed(ctx: _Context, label: str, fn: Callable[[], Any]) -> Any:
    start = time.time()
    result = fn()
    ctx.log(f'    {label}: {time.time() - start:.0f} s')
    return result


def _run_finetune(row: Row, seed: int, scratch: str, ctx: _Context
                  ) -> dict[str, dict[str, float]]:
    from ..mmseg.apis import train
    metrics = {}
    for task in TASKS:
        cfg, overrides = ctx.config(
            FT_CONFIG, osp.join(scratch, task), seed,
            extra=dict(ctx.pretrained_options(),
                       **{'model.tasks': [task],
                          'model.train_tasks': [task]}))
        metrics[task] = _timed(ctx, f'train {task}', lambda: train(
            cfg, overrides=overrides))[task]
    return metrics


def _run_shared(row: Row, seed: int, scratch: str, ctx: _Context
                ) -> dict[str, dict[str, float]]:
    from ..mmseg.apis import train
    cfg, overrides = ctx.config(
        FT_CONFIG, scratch, seed,
        extra=dict(ctx.pretrained_options(),
                   **{'model.baseline': 'shared', 'model.tasks': list(TASKS),
                      'model.train_tasks': list(TASKS)}))
    return _timed(ctx, 'train all tasks jointly',
                  lambda: train(cfg, overrides=overrides))


def _run_rc(row: Row, seed: int, scratch: str, ctx: _Context
            ) -> dict[str, dict[str, float]]:
    from ..mmseg.apis import evaluate, load_config, train_task
    from ..mmseg.convert import convert_checkpoint
    rc_options = _row_options(row)
    bank = osp.join(scratch, 'bank')
    convert_cfg = load_config(osp.join(ROOT, RC_CONFIG),
                              data_root=ctx.data_root,
                              cfg_options=rc_options)
    _timed(ctx, 'convert', lambda: convert_checkpoint(
        convert_cfg, osp.join(ROOT, ASSET), bank, ri=row.ri, force=True,
        calib_images=ctx.settings.calib_images, progress=False,
        log=lambda *_: None, data_root=ctx.data_root))
    for task in TASKS:
        cfg, overrides = ctx.config(RC_CONFIG, osp.join(scratch, task), seed,
                                    validate=False, extra=rc_options)
        _timed(ctx, f'add_task {task}', lambda: train_task(
            cfg, bank=bank, task=task, overrides=overrides))
    cfg, _ = ctx.config(RC_CONFIG, osp.join(scratch, 'test'), seed,
                        extra=rc_options)
    return _timed(ctx, 'evaluate the bank', lambda: evaluate(
        cfg, bank=bank))['metrics']


def _run_lora(row: Row, seed: int, scratch: str, ctx: _Context
              ) -> dict[str, dict[str, float]]:
    from ..mmseg.apis import evaluate, train
    model = _row_options(row)
    previous = None
    for k, task in enumerate(TASKS):
        extra = dict(model, **{'model.tasks': list(TASKS[:k + 1]),
                               'model.train_tasks': [task]})
        if previous is None:
            extra.update(ctx.pretrained_options())
        else:
            extra['load_from'] = previous
        wd = osp.join(scratch, task)
        cfg, overrides = ctx.config(FT_CONFIG, wd, seed, validate=False,
                                    checkpoint=True, extra=extra)
        _timed(ctx, f'train adapter {task}', lambda: train(
            cfg, overrides=overrides))
        previous = osp.join(wd, f'iter_{ctx.settings.iters}.pth')
    cfg, _ = ctx.config(FT_CONFIG, osp.join(scratch, 'test'), seed,
                        extra=dict(model, **{'model.tasks': list(TASKS)}))
    return _timed(ctx, 'evaluate every task on the final model',
                  lambda: evaluate(cfg, checkpoint=previous))['metrics']


_RUNNERS = dict(finetune=_run_finetune, shared=_run_shared, rc=_run_rc,
                lora=_run_lora)


def _row_key(row: Row) -> dict[str, Any]:
    return dict(kind=row.kind, rc_cfg=dict(row.rc_cfg), ri=row.ri,
                lora=dict(row.lora))


def _run_path(work: str, row: Row, seed: int) -> str:
    return osp.join(work, 'runs', _slug(row.name), f'seed{seed}.json')


def _cached(path: str, expect: Mapping[str, Any]) -> Optional[dict]:
    run = _read_json(path)
    return run if _matches(run, expect) else None


def _expect(row: Row, seed: int, settings: Settings) -> dict[str, Any]:
    """What a stored run of ``row`` (resolved) and ``seed`` must hold to be
    reused under ``settings``."""
    return dict(row=row.name, seed=seed, settings=settings.key(),
                definition=_row_key(row))


def _matches(run: Any, expect: Mapping[str, Any]) -> bool:
    """Whether a stored run was made as ``expect`` says (:func:`_expect`):
    the one rule for the runs in ``WORK/runs/`` and for those restored
    from a results file."""
    return isinstance(run, dict) and all(run.get(k) == v
                                         for k, v in expect.items())


def run_row(row: Row, seed: int, ctx: _Context, *, keep: bool = False,
            record: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Trains and evaluates one row for one seed (or reuses the stored run
    made with the same settings).

    Args:
        row: The row (resolved, :func:`resolve_rows`).
        seed: The training seed.
        ctx: The ablation's paths, settings and log.
        keep: Keep the run's scratch folder (banks, logs).
        record: Extra fields stored with a newly trained run.

    Returns:
        ``{'row', 'seed', 'settings', 'definition', 'metrics': {task:
        {metric: value}}, 'seconds'}`` (and ``record``'s fields).
    """
    path = _run_path(ctx.work, row, seed)
    expect = _expect(row, seed, ctx.settings)
    run = _cached(path, expect)
    if run is not None:
        ctx.log(f'  {row.name}, seed {seed}: stored run reused '
                f'({osp.relpath(path, ctx.work)})')
        return run
    ctx.log(f'  {row.name}, seed {seed}:')
    scratch = osp.join(ctx.work, 'scratch', _slug(row.name), f'seed{seed}')
    if osp.isdir(scratch):
        shutil.rmtree(scratch)
    os.makedirs(scratch)
    start = time.time()
    metrics = _RUNNERS[row.kind](row, seed, scratch, ctx)
    run = dict(expect, metrics={t: metrics[t] for t in TASKS},
               seconds=time.time() - start, **(record or {}))
    save_json(path, run)
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)
    primary = ', '.join(
        f'{t} {DEFAULT_DELTA_M_KEYS[t][0]} {metrics[t][DEFAULT_DELTA_M_KEYS[t][0]]:.3f}'
        for t in TASKS)
    ctx.log(f'    done in {run["seconds"]:.0f} s: {primary}')
    return run


def load_runs(work: str, rows: Sequence[Row], seeds: Sequence[int],
              settings: Settings) -> dict[str, list[dict]]:
    """The stored runs of ``rows`` x ``seeds`` made with ``settings``
    (row name -> runs in seed order; missing runs are left out)."""
    out = {}
    for row in rows:
        runs = []
        for seed in seeds:
            run = _cached(_run_path(work, row, seed),
                          _expect(row, seed, settings))
            if run is not None:
                runs.append(run)
        out[row.name] = runs
    return out


#: The fields of a row that key its stored runs (:func:`_row_key`).
_DEFINITION = (('kind', str), ('rc_cfg', dict), ('ri', bool), ('lora', dict))


def _results_problem(data: Any) -> Optional[str]:
    """What keeps ``data`` from being an ablation's ``results.json`` whose
    runs can be restored (None: nothing)."""
    if not isinstance(data, dict):
        return 'the file holds no JSON object'
    if not isinstance(data.get('settings'), dict):
        return "no 'settings' object"
    if not isinstance(data.get('rows'), list):
        return "no 'rows' list"
    names = set()
    for k, row in enumerate(data['rows']):
        if not isinstance(row, dict) or not isinstance(row.get('name'), str):
            return f'rows[{k}] has no name'
        for key, kind in _DEFINITION:
            if not isinstance(row.get(key), kind):
                return (f'row {row["name"]!r} has no {key!r} '
                        f'({kind.__name__})')
        if row['name'] in names:
            return f'row {row["name"]!r} is listed twice'
        names.add(row['name'])
    if not isinstance(data.get('runs'), dict):
        return "no 'runs' object (row name -> runs)"
    for name, runs in data['runs'].items():
        if not isinstance(runs, list):
            return f'runs[{name!r}] is not a list'
        seeds = set()
        for k, run in enumerate(runs):
            where = f'runs[{name!r}][{k}]'
            seed = run.get('seed') if isinstance(run, dict) else None
            if not isinstance(seed, int) or isinstance(seed, bool):
                return f'{where} has no integer seed'
            if seed in seeds:
                return f'{where}: seed {seed} is listed twice'
            seeds.add(seed)
            metrics = run.get('metrics')
            for task in TASKS:
                key = _primary(task)[0]
                value = metrics.get(task) if isinstance(metrics, dict) \
                    else None
                value = value.get(key) if isinstance(value, dict) else None
                if not isinstance(value, (int, float)) or \
                        isinstance(value, bool):
                    return f'{where} has no {task} {key}'
            seconds = run.get('seconds')
            if seconds is not None and (not isinstance(seconds, (int, float))
                                        or isinstance(seconds, bool)):
                return f'{where}: seconds is not a number'
    return None


def read_results(path: str) -> dict[str, Any]:
    """Reads the ``results.json`` of an ablation (:func:`run_ablation`; the
    published one is ``docs/ablation_results.json``) for
    :func:`restore_runs`, and checks it holds what restoring needs.

    Args:
        path: The file.

    Returns:
        Its contents; the keys restoring reads: ``settings``, ``rows``
        (each row's name and resolved definition: ``kind``, ``rc_cfg``,
        ``ri``, ``lora``) and ``runs`` (row name -> ``[{'seed', 'metrics',
        'seconds'}]``).

    Raises:
        RCConfigError: the file is missing, unreadable, not JSON, or not an
            ablation's results (what is missing is named).
    """
    import json
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except OSError as err:
        raise RCConfigError(
            f'ablation results {path} cannot be read '
            f'({err.strerror or err}); give the results.json an ablation '
            f'wrote (e.g. docs/ablation_results.json)') from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise RCConfigError(
            f'ablation results {path} is not valid JSON ({err}); give the '
            f'results.json an ablation wrote (e.g. '
            f'docs/ablation_results.json)') from err
    problem = _results_problem(data)
    if problem is not None:
        raise RCConfigError(
            f'ablation results {path} is malformed: {problem}; a '
            f'results.json written by tools/ablation.py holds settings, '
            f'rows with their definitions and runs with seeds and metrics')
    return data


def _difference(stored: Mapping[str, Any], current: Mapping[str, Any]
                ) -> str:
    """``key: A in the file, B now`` for every key whose value differs."""
    keys = list(stored) + [k for k in current if k not in stored]
    return '; '.join(f'{k}: {stored.get(k)!r} in the file, '
                     f'{current.get(k)!r} now' for k in keys
                     if stored.get(k) != current.get(k))


def _seed_list(seeds: Iterable[int]) -> str:
    seeds = sorted(seeds)
    return f'seed{"s" if len(seeds) > 1 else ""} ' + \
        ' '.join(map(str, seeds))


def restore_runs(results: Mapping[str, Any], work: str, rows: Sequence[Row],
                 seeds: Sequence[int], settings: Settings, *,
                 skip: Iterable[str] = (), source: str = 'the results file',
                 log: Callable[[str], None] = print) -> dict[str, list[int]]:
    """Stores the runs of an ablation's results in ``WORK/runs/``, where
    they match this ablation, so that it reuses them instead of training.

    A run of the file is restored only when it passes the check every
    stored run passes before it is reused (:func:`run_row`,
    :func:`load_runs`): same row name, seed among ``seeds``, the file's
    settings equal to ``settings`` and the row's definition in the file
    equal to the resolved row's. A restored run replaces the stored run of
    its (row, seed), if any; each file is written atomically. Every row of
    the file that is not restored is logged with the reason (one line per
    row: to be trained again, unknown, not among ``rows``, settings or
    definition changed, no run of ``seeds``), and so is every row of
    ``rows`` the file has no run of.

    Args:
        results: The results (:func:`read_results`).
        work: The work dir.
        rows: This ablation's rows, resolved (:func:`resolve_rows`).
        seeds: Its seeds.
        settings: Its settings.
        skip: Names of rows to train again: none of their runs is
            restored.
        source: The file's name, for the log and recorded in each
            restored run (``restored_from``).
        log: Progress lines.

    Returns:
        Row name -> the seeds restored (rows with none left out).
    """
    skip = set(skip)
    known = {r.name for r in ROWS}
    ours = {r.name: r for r in rows}
    definitions = {r['name']: r for r in results['rows']}
    restored = {}
    for name, runs in results['runs'].items():
        row = ours.get(name)
        why = None
        if name in skip:
            why = 'to be trained again'
        elif row is None:
            why = ('not among the rows run' if name in known else
                   'unknown row (the ablation has no row of that name)')
        elif name not in definitions:
            why = 'the file has no definition of the row'
        if why is not None:
            log(f'  {name}: not reused: {why}')
            continue
        definition = {k: definitions[name][k] for k, _ in _DEFINITION}
        candidates = [dict(row=name, seed=run['seed'],
                           settings=results['settings'],
                           definition=definition, metrics=run['metrics'],
                           **({} if run.get('seconds') is None else
                              dict(seconds=run['seconds'])),
                           restored_from=source)
                      for run in runs if run['seed'] in seeds]
        matching = [c for c in candidates
                    if _matches(c, _expect(row, c['seed'], settings))]
        if len(matching) < len(candidates):
            reasons = []
            if results['settings'] != settings.key():
                reasons.append('settings differ (' + _difference(
                    results['settings'], settings.key()) + ')')
            if definition != _row_key(row):
                reasons.append('row definition changed (' + _difference(
                    definition, _row_key(row)) + ')')
            log(f'  {name}: not reused: ' +
                ('; '.join(reasons) or 'the runs do not match'))
            continue
        if not matching:
            log(f'  {name}: not reused: the file has no run of '
                f'{_seed_list(seeds)}')
            continue
        for run in matching:
            path = _run_path(work, row, run['seed'])
            if _read_json(path) != run:
                save_json(path, run)
        done = [c['seed'] for c in matching]
        missing = [s for s in seeds if s not in done]
        log(f'  {name}: {_seed_list(done)} restored' + (
            f' ({_seed_list(missing)} not in the file)' if missing else ''))
        restored[name] = done
    for row in rows:
        if row.name not in results['runs'] and row.name not in skip:
            log(f'  {row.name}: no run in the file')
    return restored


def _read_json(path: str) -> Any:
    """The JSON in ``path``; None when missing or unreadable."""
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _clear_for_rerun(work: str, row: Row, seeds: Iterable[int],
                     settings: Settings, against: Optional[str]
                     ) -> tuple[list[int], list[int]]:
    """Removes the stored runs of ``row`` (resolved) for ``seeds``, except
    those trained again against the same results file (``rerun_against``
    equal to ``against``, a SHA-256; None keeps none).

    Returns:
        ``(removed, kept)``: the seeds whose stored run was removed and
        those whose run was kept.
    """
    removed, kept = [], []
    for seed in seeds:
        path = _run_path(work, row, seed)
        run = _read_json(path)
        if against is not None and \
                _matches(run, _expect(row, seed, settings)) and \
                run.get('rerun_against') == against:
            kept.append(seed)
            continue
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append(seed)
    return removed, kept


# -- summaries ----------------------------------------------------------
def _primary(task: str) -> tuple[str, bool]:
    return DEFAULT_DELTA_M_KEYS[task]


def run_delta_m(metrics: Mapping[str, Mapping[str, float]],
                reference: Mapping[str, float]) -> float:
    """Δm (%) of one run's metrics against per-task reference values."""
    return delta_m({t: metrics[t][_primary(t)[0]] for t in reference},
                   reference, {t: _primary(t)[1] for t in reference})


def summarise(runs: Mapping[str, Sequence[Mapping[str, Any]]],
              reference: str = REFERENCE) -> dict[str, Any]:
    """Mean ± std over seeds of every metric and of Δm.

    Args:
        runs: Row name -> its runs (``{'seed', 'metrics'}``).
        reference: The Δm reference row; its mean over seeds per task is
            the reference value.

    Returns:
        ``{'reference': {task: value} or None, 'rows': {row: {'seeds':
        [...], 'metrics': {task: {metric: [mean, std]}}, 'delta_m':
        [mean, std] or None, 'delta_m_runs': [...]}}}``.
    """
    ref_runs = runs.get(reference) or []
    ref = None
    if ref_runs:
        ref = {t: mean_std([r['metrics'][t][_primary(t)[0]]
                            for r in ref_runs])[0] for t in TASKS}
    rows = {}
    for name, row_runs in runs.items():
        if not row_runs:
            continue
        metrics = {}
        for task in TASKS:
            # The metrics every run has (restored runs may hold fewer).
            keys = [k for k in row_runs[0]['metrics'][task] if all(
                k in r['metrics'][task] for r in row_runs)]
            metrics[task] = {k: list(mean_std(
                [r['metrics'][task][k] for r in row_runs])) for k in keys}
        dms = [run_delta_m(r['metrics'], ref) for r in row_runs] \
            if ref else []
        rows[name] = dict(
            seeds=[r['seed'] for r in row_runs], metrics=metrics,
            delta_m=list(mean_std(dms)) if dms else None,
            delta_m_runs=dms,
            seconds=sum(r.get('seconds', 0.0) for r in row_runs))
    return dict(reference=ref, rows=rows)


#: Pairs the report compares (row, row): the paper's steps, the adapters
#: against the full method, the families against ``full``, LoRA against RC
#: at equal budgets.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ('RC', 'RC+RI'), ('RC+RI', FULL), ('RC', FULL), (FULL, REFERENCE),
    ('shared encoder', REFERENCE), (FULL, 'Series RA'),
    (FULL, 'Parallel RA'), (FULL, 'lowrank r=8'), (FULL, 'lowrank r=16'),
    (FULL, 'lowrank r=32'), (FULL, 'diagonal'),
    ('RC lowrank at LoRA r=8 budget', 'LoRA r=8'),
    (FULL, 'LoRA at RC budget'), ('LoRA r=8', 'LoRA r=8, BN shared'),
    (FULL, 'LoRA at RC budget, dilated adapted'),
    ('LoRA at RC budget', 'LoRA at RC budget, dilated adapted'),
)


def comparisons(summary: Mapping[str, Any],
                pairs: Sequence[tuple[str, str]] = COMPARISONS
                ) -> list[dict[str, Any]]:
    """Δm differences of row pairs, and whether each exceeds the spread.

    Returns:
        One dict per pair whose rows both have Δm: ``{'a', 'b',
        'difference'  (mean Δm of a minus b), 'beyond_spread': bool or
        None}``.
    """
    rows = summary['rows']
    out = []
    for a, b in pairs:
        if a not in rows or b not in rows or rows[a]['delta_m'] is None \
                or rows[b]['delta_m'] is None:
            continue
        da, db = rows[a]['delta_m_runs'], rows[b]['delta_m_runs']
        out.append(dict(a=a, b=b,
                        difference=rows[a]['delta_m'][0] -
                        rows[b]['delta_m'][0],
                        beyond_spread=beyond_spread(da, db)))
    return out


def goals(summary: Mapping[str, Any], params: Mapping[str, Mapping]
          ) -> dict[str, Any]:
    """The issues' goals on the embedded benchmark.

    * ``full_delta_m``: Δm of :data:`FULL` (mean over seeds) <= 1 %;
    * ``lowrank_near_full``: a low-rank row within 1 point of
      :data:`FULL`'s Δm at <= 40 % of its per-task encoder parameters.

    Returns:
        ``{goal: {'met': bool or None, ...}}`` (None: rows missing).
    """
    rows = summary['rows']
    out = {}
    full = rows.get(FULL)
    if full and full['delta_m'] is not None:
        out['full_delta_m'] = dict(value=full['delta_m'][0],
                                   met=full['delta_m'][0] <= 1.0)
    else:
        out['full_delta_m'] = dict(value=None, met=None)
    candidates = []
    if full and full['delta_m'] is not None and FULL in params:
        budget = params[FULL]['encoder']
        for name, row in rows.items():
            if not name.startswith('lowrank') or row['delta_m'] is None \
                    or name not in params:
                continue
            share = params[name]['encoder'] / budget
            gap = row['delta_m'][0] - full['delta_m'][0]
            candidates.append(dict(row=name, share=share, gap=gap,
                                   met=share <= 0.4 and gap <= 1.0))
    out['lowrank_near_full'] = dict(
        rows=candidates,
        met=any(c['met'] for c in candidates) if candidates else None)
    return out


# -- the report ---------------------------------------------------------
def _pm(pair: Optional[Sequence[float]], digits: int = 2,
        sign: bool = False) -> str:
    if pair is None:
        return '—'
    mean, std = pair
    if abs(mean) < 0.5 * 10 ** -digits:
        mean = 0.0  # never "-0.00"
    fmt = f'{{:{"+" if sign else ""}.{digits}f}}'
    text = fmt.format(mean)
    if not (isinstance(std, float) and std != std):  # not nan
        text += f' ± {std:.{digits}f}'
    return text


def _params_cell(counts: Optional[Mapping[str, int]], full: Optional[int]
                 ) -> str:
    if counts is None:
        return '—'
    if counts['encoder'] == 0:
        return '0 (backbone shared, trained by all tasks)'
    if counts['encoder'] == counts['backbone']:
        return f'{counts["encoder"]:,} (a whole backbone)'
    text = f'{counts["encoder"]:,}'
    if full:
        text += f' ({counts["encoder"] / full:.0%})'
    return text


def _layers_text(layers: Mapping[str, Any]) -> str:
    if 'adapted' in layers:  # LoRA
        text = f'{layers["adapted"]} with an adapter'
        if layers['excluded']:
            text += (f', {layers["excluded"]} dilated convs without one '
                     f'({layers["excluded_params"]:,} parameters)')
        return text
    return ', '.join(f'{k} ×{v}' for k, v in layers.items())


def write_report(path: str, *, rows: Sequence[Row],
                 summary: Mapping[str, Any], params: Mapping[str, Mapping],
                 settings: Settings, seeds: Sequence[int],
                 times: Mapping[str, float], notes: Sequence[str] = ()
                 ) -> str:
    """Writes the Markdown report; returns its text."""
    srows = summary['rows']
    full = params.get(FULL, {}).get('encoder')
    primaries = [f'{t} {_primary(t)[0]} {"↑" if _primary(t)[1] else "↓"}'
                 for t in TASKS]
    lines = [
        '# Ablation on the embedded synthetic benchmark (seeded)', '',
        f'Synthetic NYUD layout, {settings.num_train} train / '
        f'{settings.num_val} val images at {settings.size[0]}x'
        f'{settings.size[1]}; half-width ResNet-18 (DeepLabv3+, output '
        f'stride 16) from the shipped proxy-pretrained backbone '
        f'(`{ASSET}`); {settings.iters} iterations per task, batch 8. '
        f'Seeds {", ".join(map(str, seeds))}: mean ± sample std over '
        f'seeds. Δm against the mean over seeds of single-task fine-tuning '
        f'(positive = drop). Per-task encoder parameters: what trains for '
        f'one task alone in the backbone (% of {FULL}\'s); every task also '
        f'has its own decoder head.', '']
    lines += notes and [*notes, ''] or []
    lines += ['| group | method | seeds | ' + ' | '.join(primaries) +
              ' | Δm % | per-task encoder params |',
              '|' + '---|' * (len(TASKS) + 5)]
    for row in rows:
        if row.name not in srows:
            lines.append(f'| {row.group} | {row.name} | 0 | ' +
                         ' | '.join('not run' for _ in TASKS) +
                         f' | — | {_params_cell(params.get(row.name), full)}'
                         f' |')
            continue
        s = srows[row.name]
        cells = [_pm(s['metrics'][t][_primary(t)[0]],
                     3 if t == 'depth' else 2) for t in TASKS]
        lines.append(f'| {row.group} | {row.name} | {len(s["seeds"])} | ' +
                     ' | '.join(cells) + f' | {_pm(s["delta_m"], sign=True)}'
                     f' | {_params_cell(params.get(row.name), full)} |')
    lines += ['', '## Which differences are larger than the spread', '',
              'Rule: |mean Δm(a) − mean Δm(b)| > std(a) + std(b).', '',
              '| a | b | Δm(a) − Δm(b) | larger than the spread |',
              '|---|---|---|---|']
    for c in comparisons(summary):
        verdict = {True: 'yes', False: 'no', None: 'n/a (one seed)'}[
            c['beyond_spread']]
        lines.append(f'| {c["a"]} | {c["b"]} | {c["difference"]:+.2f} | '
                     f'{verdict} |')
    g = goals(summary, params)
    lines += ['', '## Goals', '']
    fd = g['full_delta_m']
    lines.append(f'- Δm of {FULL} ≤ 1 % (mean over seeds): ' + (
        'not measured' if fd['met'] is None else
        f'{fd["value"]:+.2f} % — {"met" if fd["met"] else "missed"}'))
    for c in g['lowrank_near_full']['rows']:
        lines.append(f'- {c["row"]}: {c["share"]:.0%} of {FULL}\'s per-task '
                     f'encoder parameters, Δm {c["gap"]:+.2f} points from '
                     f'{FULL} — {"meets" if c["met"] else "misses"} the goal '
                     f'(within 1 point at ≤ 40 %)')
    lines += ['', '## Rows', '']
    for row in rows:
        layers = (params.get(row.name) or {}).get('layers') or {}
        lines.append(f'- **{row.name}**: {row.note}.' + (
            f' Backbone layers: {_layers_text(layers)}.' if layers else ''))
    lines += ['', f'Wall time: {times.get("total", 0):.0f} s in this '
                  f'invocation; the stored runs took '
                  f'{sum(s.get("seconds", 0) for s in srows.values()):.0f} s '
                  f'of training and evaluation in all.']
    text = '\n'.join(lines) + '\n'
    atomic_write_text(path, text)
    return text


# -- the whole ablation -------------------------------------------------
def ensure_data(data_root: str, settings: Settings,
                log: Callable[[str], None] = print) -> None:
    """Generates the benchmark at ``data_root`` unless it is current."""
    from ..synthetic import generate, is_current
    kw = dict(layout='nyud', num_train=settings.num_train,
              num_val=settings.num_val, size=tuple(settings.size),
              seed=settings.data_seed, extra_splits={})
    if is_current(data_root, **kw):
        return
    start = time.time()
    generate(out=data_root, **kw)
    log(f'generated {data_root} ({settings.num_train} train / '
        f'{settings.num_val} val) in {time.time() - start:.0f} s')


def run_ablation(*, work: str, data_root: str, rows: Sequence[Row],
                 seeds: Sequence[int], settings: Settings,
                 shard: tuple[int, int] = (0, 1), keep: bool = False,
                 report_only: bool = False,
                 reuse_results: Optional[str] = None,
                 rerun: Iterable[str] = (),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs (or reuses) every (row, seed), then writes
    ``WORK/results.json`` and ``WORK/report.md``.

    With ``reuse_results``, the matching runs of that results file are
    restored into ``WORK/runs/`` first (:func:`restore_runs`) and reused.
    The rows named in ``rerun`` are trained again: none of their runs is
    restored, and their stored runs (of the pairs this process trains) are
    removed before training, except those already trained again against
    the same results file (a run trained for ``rerun`` records the file's
    SHA-256 as ``rerun_against``), so the same call continues an
    interrupted re-run.

    Args:
        work: Work dir (runs, scratch, results).
        data_root: Where the benchmark is (generated when not current).
        rows: The rows (unresolved: see :func:`resolve_rows`).
        seeds: Training seeds.
        settings: Sizes and schedule.
        shard: ``(i, n)``: run only the (row, seed) pairs whose index
            (rows outer in :data:`RUN_ORDER`, seeds inner) is ``i`` modulo
            ``n``; the report covers every stored run.
        keep: Keep each run's scratch folder (banks, logs).
        report_only: Train nothing; summarise the stored runs.
        reuse_results: A ``results.json`` of an earlier ablation (e.g.
            ``docs/ablation_results.json``) whose runs to reuse.
        rerun: Names of rows to train again (among ``rows``).
        log: Progress lines.

    Returns:
        The results dict written to ``results.json``.

    Raises:
        RCConfigError: ``reuse_results`` is missing, unreadable or
            malformed (:func:`read_results`); ``rerun`` names a row not
            among ``rows``, or comes with ``report_only``.
    """
    from ..demo.pretrain import asset_to_checkpoint, file_sha256
    started = time.time()
    rerun = list(rerun)
    outside = [n for n in rerun if n not in {r.name for r in rows}]
    if outside:
        raise RCConfigError(f'rows to train again {outside} are not among '
                            f'the rows run {[r.name for r in rows]}')
    if rerun and report_only:
        raise RCConfigError(f'rows to train again {rerun} cannot be trained '
                            f'when only the report is made (report_only)')
    previous = against = None
    if reuse_results:
        previous = read_results(reuse_results)
        against = file_sha256(reuse_results)
    os.makedirs(work, exist_ok=True)
    rows = resolve_rows(rows)
    params = {r.name: parameter_counts(r) for r in rows}
    if previous is not None:
        log(f'runs of {reuse_results}:')
        restore_runs(previous, work, rows, seeds, settings, skip=rerun,
                     source=reuse_results, log=log)
    if not report_only:
        ensure_data(data_root, settings, log)
        pretrained = osp.join(work, 'r18_half_proxy.pth')
        if not osp.isfile(pretrained):
            asset_to_checkpoint(osp.join(ROOT, ASSET), pretrained)
        ctx = _Context(work, data_root, pretrained, settings, log)
        index, count = shard
        order = {name: k for k, name in enumerate(RUN_ORDER)}
        pairs = [(r, s) for r in sorted(rows, key=lambda r: order.get(
            r.name, len(order))) for s in seeds]
        for row in rows:
            if row.name in rerun:
                removed, kept = _clear_for_rerun(work, row, [
                    s for k, (r, s) in enumerate(pairs)
                    if r is row and k % count == index], settings, against)
                notes = [f'stored {_seed_list(removed)} removed'] * \
                    bool(removed) + [f'{_seed_list(kept)} already trained '
                                     f'again'] * bool(kept)
                log(f'  {row.name}: trained again' + (
                    f' ({"; ".join(notes)})' if notes else ''))
        record = dict(rerun_against=against) if against else {}
        for k, (row, seed) in enumerate(pairs):
            if k % count == index:
                run_row(row, seed, ctx, keep=keep,
                        record=record if row.name in rerun else None)
    runs = load_runs(work, rows, seeds, settings)
    summary = summarise(runs)
    times = dict(total=time.time() - started)
    results = dict(
        settings=settings.key(), seeds=list(seeds), tasks=list(TASKS),
        primary={t: [_primary(t)[0], 'higher' if _primary(t)[1] else
                     'lower'] for t in TASKS},
        rows=[dict(name=r.name, group=r.group, kind=r.kind,
                   rc_cfg=dict(r.rc_cfg), ri=r.ri, lora=dict(r.lora),
                   note=r.note, params_per_task=params[r.name])
              for r in rows],
        summary=summary, comparisons=comparisons(summary),
        goals=goals(summary, params),
        runs={name: [dict(seed=r['seed'], metrics=r['metrics'],
                          seconds=r.get('seconds')) for r in rr]
              for name, rr in runs.items()},
        times=times)
    save_json(osp.join(work, 'results.json'), results)
    write_report(osp.join(work, 'report.md'), rows=rows, summary=summary,
                 params=params, settings=settings, seeds=seeds, times=times)
    return results
