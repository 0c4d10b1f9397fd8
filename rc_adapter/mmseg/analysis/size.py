"""Model size against the number of tasks, from the real tensors of a bank.

Three ways to serve ``n`` dense prediction tasks are compared (the paper's
model-size analysis, Kanakis et al., ECCV 2020, section 5):

* **RC bank** -- the bank's shared file (frozen filter banks and base state)
  once, plus each task's file (modulators, norms with their running
  statistics, per-task copies, decoder);
* **independent models** -- one fine-tuned network per task: ``n`` times
  the whole plain backbone plus that task's decoder;
* **shared multi-task baseline** -- one plain backbone for all tasks plus
  ``n`` decoders.

Every figure counts what must be stored: parameters *and* buffers (BN
running statistics, ``num_batches_tracked``), as values and as bytes of
their dtype. Tasks past the bank's real ones are extrapolated with the mean
per-task cost of the real tasks (rows marked ``extrapolated``).

``docs/analysis.md`` explains the numbers and the commands.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn as nn

from ...core.bank import TaskBank
from ...core.errors import BankError, RCConfigError

__all__ = ['Size', 'BankSizes', 'measure_tensors', 'measure_bank',
           'size_table', 'format_size_table', 'size_summary',
           'model_size_table', 'PAPER_TASKS', 'PAPER_REDUCTION']

#: The paper's comparison point: at 10 tasks on ResNet-18 the RC model is
#: 64 % smaller than independent fine-tuned models (Kanakis et al., 2020).
PAPER_TASKS = 10
PAPER_REDUCTION = 0.64

#: The three ways of serving n tasks, in table order.
SCHEMES = ('rc', 'independent', 'shared')


@dataclasses.dataclass(frozen=True)
class Size:
    """What a set of stored tensors costs.

    Attributes:
        values: Stored numbers (parameters + buffers). A float for
            extrapolated means.
        bytes: Bytes of the tensor data (``numel * element_size``; file
            headers not included).
        parameters: How many of ``values`` are parameters (the rest are
            buffers), or None when unknown.
    """

    values: float
    bytes: float
    parameters: Optional[float] = None

    def __add__(self, other: 'Size') -> 'Size':
        params = (None if self.parameters is None or other.parameters is None
                  else self.parameters + other.parameters)
        return Size(self.values + other.values, self.bytes + other.bytes,
                    params)

    def __mul__(self, factor: float) -> 'Size':
        return Size(self.values * factor, self.bytes * factor,
                    None if self.parameters is None
                    else self.parameters * factor)

    __rmul__ = __mul__

    def to_dict(self) -> dict[str, Optional[float]]:
        """``{'values', 'parameters', 'bytes'}`` (ints where exact)."""
        return {k: _number(v) for k, v in (
            ('values', self.values), ('parameters', self.parameters),
            ('bytes', self.bytes))}


ZERO = Size(0, 0, 0)


def _number(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else float(value)


def _mean(sizes: Sequence[Size]) -> Size:
    total = ZERO
    for size in sizes:
        total = total + size
    return total * (1.0 / len(sizes))


def measure_tensors(tensors: Mapping[str, torch.Tensor],
                    parameter_names: Optional[Collection[str]] = None,
                    prefix: str = '') -> Size:
    """The stored size of ``tensors``.

    Args:
        tensors: Name -> tensor (a state dict, a bank file's tensors).
        parameter_names: Names (with ``prefix``) that are parameters; the
            other tensors are buffers. None: parameters unknown.
        prefix: Prepended to every name before looking it up in
            ``parameter_names`` (e.g. ``'backbone.'`` for a bank's shared
            tensors, which are keyed relative to the backbone).

    Returns:
        The values, bytes and (if known) parameters.
    """
    values = nbytes = params = 0
    for name, tensor in tensors.items():
        values += tensor.numel()
        nbytes += tensor.numel() * tensor.element_size()
        if parameter_names is not None and prefix + name in parameter_names:
            params += tensor.numel()
    return Size(values, nbytes,
                params if parameter_names is not None else None)


@dataclasses.dataclass
class BankSizes:
    """The measured parts of a bank (see :func:`measure_bank`).

    Attributes:
        shared: The bank's shared file (frozen filter banks and base state).
        backbone: One plain backbone (what each fine-tuned model and the
            shared baseline hold as encoder).
        tasks: Task -> ``{'encoder': Size, 'decoder': Size}`` of its file,
            in the order the tasks were added to the bank.
        files: File sizes in bytes as the manifest records them
            (``'shared'`` and each task; None where format 1 recorded none).
    """

    shared: Size
    backbone: Size
    tasks: dict[str, dict[str, Size]]
    files: dict[str, Optional[int]]


def _task_order(bank: TaskBank, tasks: Optional[Sequence[str]]
                ) -> list[str]:
    """``tasks`` (validated), else the bank's tasks in the order they were
    added (the ``created`` time of their info, then the name)."""
    described = bank.describe()['tasks']
    if tasks is not None:
        missing = [t for t in tasks if t not in described]
        if missing:
            raise BankError(f'task(s) {missing} are not in the bank '
                            f'{bank.path}; it holds {sorted(described)}')
        return list(tasks)
    return sorted(described, key=lambda t: (
        str(described[t]['info'].get('created') or ''), t))


def measure_bank(bank: TaskBank, backbone: nn.Module, *,
                 tasks: Optional[Sequence[str]] = None,
                 parameter_names: Optional[Collection[str]] = None,
                 encoder_prefix: str = 'backbone.') -> BankSizes:
    """Measures a bank's shared file, its task files and the plain backbone.

    The task files are read through the bank's verified path
    (:meth:`TaskBank.open_task`: size, sha256 and fingerprint checked,
    memory-mapped, not copied); the shared file through
    :meth:`TaskBank.read_shared`.

    In banks written by ``tools/convert_to_rc.py`` and ``tools/add_task.py``
    the shared tensors are the backbone's (keyed relative to it) and a task
    file holds ``backbone.*`` (encoder: modulators, norms, copies) and
    ``decode_heads.*`` (the task's decoder) tensors; a task tensor whose
    name does not start with ``encoder_prefix`` counts as decoder.

    Args:
        bank: The task bank.
        backbone: The plain backbone of the bank's architecture (e.g.
            ``build_backbone(bank.config['backbone'])``); its state dict
            is one fine-tuned encoder.
        tasks: Tasks to measure; defaults to every task of the bank, in the
            order they were added.
        parameter_names: Parameter names in the segmentor's namespace
            (``backbone.…``, ``decode_heads.…``), to split values into
            parameters and buffers; None leaves ``parameters`` unknown for
            the bank's files.
        encoder_prefix: Task tensors under this prefix are encoder tensors;
            ``''`` counts every task tensor as encoder.

    Returns:
        The sizes.

    Raises:
        BankError: a task is not in the bank, the bank holds no task, or a
            file fails verification.
    """
    order = _task_order(bank, tasks)
    if not order:
        raise BankError(f'the bank {bank.path} holds no task: the size '
                        f'analysis needs at least one task\'s real tensors '
                        f'(add one with tools/add_task.py)')
    described = bank.describe()
    plain = {n for n, _ in backbone.named_parameters()}
    backbone_size = measure_tensors(backbone.state_dict(), plain)
    shared = measure_tensors(bank.read_shared(), parameter_names,
                             prefix=encoder_prefix)
    sizes = {}
    for task in order:
        with bank.open_task(task) as (tensors, _):
            encoder = {k: v for k, v in tensors.items()
                       if k.startswith(encoder_prefix)}
            decoder = {k: v for k, v in tensors.items()
                       if not k.startswith(encoder_prefix)}
            sizes[task] = dict(
                encoder=measure_tensors(encoder, parameter_names),
                decoder=measure_tensors(decoder, parameter_names))
    files = dict(shared=described['shared'].get('size'))
    files.update({t: described['tasks'][t].get('size') for t in order})
    return BankSizes(shared=shared, backbone=backbone_size, tasks=sizes,
                     files=files)


def _check_tasks_up_to(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RCConfigError(f'--tasks-up-to must be a positive integer, got '
                            f'{value!r}')


def size_table(sizes: BankSizes, tasks_up_to: Optional[int] = None
               ) -> dict[str, Any]:
    """Model size for 1..N tasks: RC bank, independent models, shared
    multi-task baseline, with and without decoders.

    For ``n`` tasks (the first ``n`` of ``sizes.tasks``; past the real ones,
    tasks costing the mean of the real tasks):

    * RC: ``shared + Σ (encoder_i + decoder_i)``;
    * independent: ``Σ (backbone + decoder_i)``;
    * shared baseline: ``backbone + Σ decoder_i``;

    and the same without the ``decoder_i`` terms (encoders only).

    Args:
        sizes: From :func:`measure_bank`.
        tasks_up_to: Largest ``n``; defaults to
            ``max(PAPER_TASKS, number of real tasks)``.

    Returns:
        ``{'real_tasks': [...], 'tasks_up_to': N, 'mean_task':
        {'encoder', 'decoder'}, 'shared', 'backbone', 'files',
        'rows': [...]}``; each row has ``tasks`` (n), ``task`` (the task
        added, None if extrapolated), ``extrapolated``, and for each of
        ``rc``, ``independent``, ``shared`` (and ``*_encoder``) a size dict
        (:meth:`Size.to_dict`), plus ``reduction`` and
        ``reduction_encoder``: how much smaller the RC bank is than the
        independent models (a fraction, by stored values).

    Raises:
        RCConfigError: ``tasks_up_to`` is below 1.
    """
    real = list(sizes.tasks)
    if tasks_up_to is None:
        tasks_up_to = max(PAPER_TASKS, len(real))
    _check_tasks_up_to(tasks_up_to)
    mean = {part: _mean([sizes.tasks[t][part] for t in real])
            for part in ('encoder', 'decoder')}
    totals = {key: ZERO for key in ('rc', 'rc_encoder', 'heads',
                                    'encoders')}
    rows = []
    for n in range(1, tasks_up_to + 1):
        extrapolated = n > len(real)
        cost = mean if extrapolated else sizes.tasks[real[n - 1]]
        totals['rc_encoder'] = totals['rc_encoder'] + cost['encoder']
        totals['heads'] = totals['heads'] + cost['decoder']
        rc_enc = sizes.shared + totals['rc_encoder']
        schemes = dict(
            rc=rc_enc + totals['heads'],
            independent=sizes.backbone * n + totals['heads'],
            shared=sizes.backbone + totals['heads'],
            rc_encoder=rc_enc,
            independent_encoder=sizes.backbone * n,
            shared_encoder=sizes.backbone)
        row = dict(tasks=n, task=None if extrapolated else real[n - 1],
                   extrapolated=extrapolated)
        row.update({k: v.to_dict() for k, v in schemes.items()})
        row['reduction'] = 1 - schemes['rc'].values / \
            schemes['independent'].values
        row['reduction_encoder'] = 1 - schemes['rc_encoder'].values / \
            schemes['independent_encoder'].values
        rows.append(row)
    return dict(real_tasks=real, tasks_up_to=tasks_up_to,
                mean_task={k: v.to_dict() for k, v in mean.items()},
                tasks={t: {k: v.to_dict() for k, v in parts.items()}
                       for t, parts in sizes.tasks.items()},
                shared=sizes.shared.to_dict(),
                backbone=sizes.backbone.to_dict(), files=dict(sizes.files),
                rows=rows)


def _millions(size: Mapping[str, Any]) -> str:
    return f'{size["values"] / 1e6:.2f}'


def format_size_table(table: Mapping[str, Any]) -> str:
    """The table as Markdown (millions of stored values), with a note on
    the extrapolated rows."""
    lines = [
        '| tasks | task added | RC bank | independent | shared MTL | RC '
        'smaller | RC (enc.) | independent (enc.) | shared MTL (enc.) | RC '
        'smaller (enc.) |',
        '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for row in table['rows']:
        task = row['task'] if row['task'] is not None else '*(mean)*'
        lines.append(
            f'| {row["tasks"]} | {task} | {_millions(row["rc"])} | '
            f'{_millions(row["independent"])} | {_millions(row["shared"])} | '
            f'{row["reduction"]:.1%} | {_millions(row["rc_encoder"])} | '
            f'{_millions(row["independent_encoder"])} | '
            f'{_millions(row["shared_encoder"])} | '
            f'{row["reduction_encoder"]:.1%} |')
    real = len(table['real_tasks'])
    lines += [
        '',
        'Millions of stored values (parameters + buffers such as BN running '
        'statistics). "enc.": encoders only, without the decoders. '
        '"RC smaller": 1 - RC bank / independent models.']
    if table['tasks_up_to'] > real:
        lines.append(
            f'Rows after {real} task(s) are extrapolated: each further task '
            f'costs the mean of the bank\'s {real} real task(s) '
            f'({_millions(table["mean_task"]["encoder"])} M encoder + '
            f'{_millions(table["mean_task"]["decoder"])} M decoder values).')
    return '\n'.join(lines)


def size_summary(table: Mapping[str, Any]) -> str:
    """One paragraph: our reduction at :data:`PAPER_TASKS` tasks next to
    the paper's figure."""
    rows = {row['tasks']: row for row in table['rows']}
    if PAPER_TASKS not in rows:
        return (f'(pass --tasks-up-to {PAPER_TASKS} or more for the '
                f'comparison with the paper at {PAPER_TASKS} tasks)')
    row = rows[PAPER_TASKS]
    how = ('extrapolated from the mean task' if row['extrapolated']
           else 'all real tasks')
    return (f'At {PAPER_TASKS} tasks ({how}) the RC bank is '
            f'{row["reduction"]:.1%} smaller than {PAPER_TASKS} independent '
            f'fine-tuned models with decoders and '
            f'{row["reduction_encoder"]:.1%} smaller counting encoders only '
            f'({_millions(row["rc"])} M vs '
            f'{_millions(row["independent"])} M stored values); the paper '
            f'reports {PAPER_REDUCTION:.0%} on ResNet-18.')


def model_size_table(cfg: Any, bank: str, *,
                     tasks: Optional[Sequence[str]] = None,
                     tasks_up_to: Optional[int] = None) -> dict[str, Any]:
    """The size analysis of a bank served by a config (``tools/analyze.py
    size``).

    The config's segmentor is built on the bank (which checks that the
    bank's backbone and ``rc_cfg`` match the config's) and every analysed
    task is loaded in turn (one in memory at a time), so the
    parameter/buffer split comes from the model; the
    plain backbone of the independent and shared baselines is the config's
    ``model.backbone`` built without the surgery.

    Args:
        cfg: A config from :func:`rc_adapter.mmseg.apis.load_config`
            (changed in place).
        bank: The task bank folder.
        tasks: Tasks to count (default: every bank task the config has a
            head for, in the order they were added).
        tasks_up_to: Largest number of tasks in the table (default
            ``max(10, real tasks)``).

    Returns:
        :func:`size_table`'s dict plus ``bank`` and ``config``.

    Raises:
        BankError: missing or damaged bank, a task it lacks, no task, or a
            bank/config mismatch.
        UnknownTaskError: a task without a decode head in the config.
        RCConfigError: a bad ``tasks_up_to``.
    """
    from ..apis.config import configure_run
    from ..apis.evaluate import resolve_tasks
    from ..convert import build_backbone
    from .models import build_segmentor
    if tasks_up_to is not None:
        _check_tasks_up_to(tasks_up_to)
    chosen = resolve_tasks(cfg, bank, tasks)
    configure_run(cfg, tasks=chosen, train_tasks=[], bank=bank)
    cfg.model.max_resident = 1  # one task in memory at a time
    model = build_segmentor(cfg)
    names = set()
    for task in chosen:
        model.set_active_task(task)  # loads it: its parameter names
        names.update(n for n, _ in model.named_parameters())
    if tasks is None:
        chosen = [t for t in _task_order(model.bank, None) if t in chosen]
    sizes = measure_bank(model.bank, build_backbone(cfg.model.backbone),
                         tasks=chosen, parameter_names=names)
    table = size_table(sizes, tasks_up_to)
    table.update(bank=os.path.abspath(bank),
                 config=getattr(cfg, 'filename', None))
    return table
