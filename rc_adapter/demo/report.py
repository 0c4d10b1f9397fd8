"""Incremental multi-task results: the ``results.json`` shape, forgetting,
Δm, number formatting, the Markdown report and the stage plot of
``make demo``.

``results.json`` (read by other programs; keys are only ever added)::

    {"tasks": [...],
     "primary": {task: [metric, "higher" | "lower"]},
     "stages": {"rc": [{"added": task, "metrics": {task: {metric: value}}},
                       ...],
                "finetune": [...]},          # sequential fine-tuning
     "single_task": {task: {metric: value}}, # one fine-tuned network each
     "delta_m": {...}, "forgetting": {...},  # see summarize()
     ...}                                    # settings, times, checks, ...

Each stage lists the metrics of every task registered so far.

Numbers are printed at one precision per metric (:data:`DECIMALS`):
``37.00`` never ``37``; a change that is exactly zero is ``0.00`` (no sign),
any other change carries its sign, and one too small to show at that
precision is written ``+<0.01`` / ``-<0.01`` rather than ``-0.00``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ..mmseg.evaluation.delta_m import DEFAULT_DELTA_M_KEYS, delta_m
from ..utils.io import atomic_write_text

__all__ = ['PRIMARY_METRICS', 'DECIMALS', 'UNITS', 'build_results',
           'forgetting', 'just_trained', 'final_values',
           'single_task_values', 'delta_m_vs',
           'relative_changes', 'summarize', 'format_metric',
           'format_change', 'format_percent', 'write_report',
           'plot_stages']

#: task -> (primary metric, "higher" | "lower"): the Δm metrics.
PRIMARY_METRICS = {
    task: (key, 'higher' if higher else 'lower')
    for task, (key, higher) in DEFAULT_DELTA_M_KEYS.items()}

#: Decimals per metric (percentages and degrees: 2; metres: 3).
DECIMALS = {'mIoU': 2, 'max_mIoU': 2, 'odsF': 2, 'mean_angle': 2,
            'rmse': 3}
_DEFAULT_DECIMALS = 3
#: How each primary metric is read.
UNITS = {'mIoU': '%', 'max_mIoU': '%', 'odsF': '%', 'mean_angle': '°',
         'rmse': 'm'}


# -- numbers -----------------------------------------------------------------
def _decimals(metric: Optional[str]) -> int:
    return DECIMALS.get(metric, _DEFAULT_DECIMALS)


def format_metric(metric: str, value: float) -> str:
    """A metric value at its precision: ``format_metric('mIoU', 37)`` is
    ``'37.00'``, ``format_metric('rmse', 1.5)`` ``'1.500'``."""
    return f'{value:.{_decimals(metric)}f}'


def _signed(value: float, decimals: int) -> str:
    if value == 0:
        return f'{0:.{decimals}f}'
    text = f'{value:+.{decimals}f}'
    if float(text) == 0:  # non-zero, below the shown precision
        return ('+' if value > 0 else '-') + f'<{10 ** -decimals:.{decimals}f}'
    return text


def format_change(metric: str, value: float) -> str:
    """A signed change of a metric at its precision; exactly zero is
    ``0.00`` (no sign), a non-zero change too small to show ``+<0.01``."""
    return _signed(value, _decimals(metric))


def format_percent(value: float) -> str:
    """A signed percentage with two decimals (Δm): ``+1.23 %``, ``0.00 %``,
    ``-<0.01 %``."""
    return _signed(value, 2) + ' %'


# -- the results -----------------------------------------------------------------
def build_results(tasks: Sequence[str],
                  stages: Mapping[str, Sequence[tuple[str, dict]]],
                  single_task: Optional[Mapping[str, dict]] = None
                  ) -> dict[str, Any]:
    """Assembles the ``results.json`` dict.

    Args:
        tasks: Tasks in the order they were added.
        stages: method -> list of ``(added task, {task: {metric: value}})``.
        single_task: task -> metrics of its single-task fine-tuned network.
    """
    results = {
        'tasks': list(tasks),
        'primary': {t: list(PRIMARY_METRICS[t]) for t in tasks},
        'stages': {method: [{'added': added, 'metrics': metrics}
                            for added, metrics in entries]
                   for method, entries in stages.items()},
    }
    if single_task is not None:
        results['single_task'] = {t: dict(single_task[t]) for t in tasks}
    return results


def _primary(results, method, stage, task):
    metric = results['primary'][task][0]
    return results['stages'][method][stage]['metrics'][task][metric]


def _higher(results, task) -> bool:
    return results['primary'][task][1] == 'higher'


def just_trained(results: Mapping[str, Any], method: str) -> dict:
    """Each task's primary metric in the stage where it was added."""
    return {entry['added']: _primary(results, method, i, entry['added'])
            for i, entry in enumerate(results['stages'][method])}


def final_values(results: Mapping[str, Any], method: str) -> dict:
    """Each task's primary metric after the last stage."""
    last = len(results['stages'][method]) - 1
    return {t: _primary(results, method, last, t)
            for t in results['stages'][method][last]['metrics']}


def single_task_values(results: Mapping[str, Any]) -> dict:
    """Each task's primary metric of its single-task network."""
    return {t: results['single_task'][t][results['primary'][t][0]]
            for t in results['tasks']}


def forgetting(results: Mapping[str, Any], method: str) -> dict:
    """Per task: primary metric when added minus at the last stage, signed
    so that a positive number means the task got worse (0 when unchanged,
    never -0)."""
    final = final_values(results, method)
    out = {}
    for task, first in just_trained(results, method).items():
        change = (first - final[task]) if _higher(results, task) \
            else (final[task] - first)
        out[task] = change + 0.0  # -0.0 -> 0.0
    return out


def delta_m_vs(results: Mapping[str, Any], method: str,
               reference_values: Mapping[str, float]) -> float:
    """Δm (%, positive = drop) of ``method``'s last stage against
    ``reference_values`` (task -> primary metric)."""
    values = final_values(results, method)
    higher = {t: _higher(results, t) for t in reference_values}
    return delta_m(values, reference_values, higher)


def relative_changes(results: Mapping[str, Any],
                     values: Mapping[str, float],
                     reference_values: Mapping[str, float]) -> dict:
    """Per task, the term of Δm: the relative drop in % against the
    reference (positive = worse)."""
    out = {}
    for task, base in reference_values.items():
        rel = (base - values[task]) / base * 100
        out[task] = (rel if _higher(results, task) else -rel) + 0.0
    return out


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """Δm and forgetting, as ``results.json`` stores them.

    Returns:
        ``{'delta_m': {'rc', 'finetune'} against single-task fine-tuning
        (final stage; with per-task terms under ``per_task``),
        'forgetting': {'rc', 'finetune'}}``; without single-task results,
        Δm is None.
    """
    summary: dict[str, Any] = dict(
        forgetting={m: forgetting(results, m) for m in ('rc', 'finetune')})
    if 'single_task' not in results:
        summary['delta_m'] = None
        return summary
    reference = single_task_values(results)
    summary['delta_m'] = dict(
        reference='single-task fine-tuning',
        rc=delta_m_vs(results, 'rc', reference),
        finetune=delta_m_vs(results, 'finetune', reference),
        per_task=dict(
            rc=relative_changes(results, final_values(results, 'rc'),
                                reference),
            finetune=relative_changes(
                results, final_values(results, 'finetune'), reference)))
    return summary


# -- the Markdown report ---------------------------------------------------------
def _header(results, task) -> str:
    metric = results['primary'][task][0]
    arrow = '↑' if _higher(results, task) else '↓'
    return f'{task} {metric} ({UNITS.get(metric, "")}) {arrow}'


def _stage_table(results, method) -> str:
    tasks = results['tasks']
    lines = ['| after adding | ' + ' | '.join(_header(results, t)
                                              for t in tasks) + ' |',
             '|---|' + '---:|' * len(tasks)]
    for i, entry in enumerate(results['stages'][method]):
        cells = [format_metric(results['primary'][t][0],
                               _primary(results, method, i, t))
                 if t in entry['metrics'] else '–' for t in tasks]
        lines.append(f'| {entry["added"]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _comparison_table(results, summary) -> str:
    tasks = results['tasks']
    reference = single_task_values(results)
    rc, ft = final_values(results, 'rc'), final_values(results, 'finetune')
    per = summary['delta_m']['per_task']
    lines = ['| task | metric | single-task fine-tuning | RC bank (final) '
             '| RC vs single-task | sequential fine-tuning (final) | '
             'sequential vs single-task |',
             '|---|---|---:|---:|---:|---:|---:|']
    for t in tasks:
        metric = results['primary'][t][0]
        lines.append(
            f'| {t} | {metric} {"↑" if _higher(results, t) else "↓"} | '
            f'{format_metric(metric, reference[t])} | '
            f'{format_metric(metric, rc[t])} | '
            f'{format_percent(per["rc"][t])} | '
            f'{format_metric(metric, ft[t])} | '
            f'{format_percent(per["finetune"][t])} |')
    lines.append(f'| **Δm** | | | | **{format_percent(summary["delta_m"]["rc"])}'
                 f'** | | **{format_percent(summary["delta_m"]["finetune"])}'
                 f'** |')
    return '\n'.join(lines)


def _forgetting_table(results, summary) -> str:
    lines = ['| task | metric | RC | sequential fine-tuning |',
             '|---|---|---:|---:|']
    for t in results['tasks']:
        metric = results['primary'][t][0]
        lines.append(
            f'| {t} | {metric} ({UNITS.get(metric, "")}) | '
            f'{format_change(metric, summary["forgetting"]["rc"][t])} | '
            f'{format_change(metric, summary["forgetting"]["finetune"][t])}'
            f' |')
    return '\n'.join(lines)


def _times_table(stages: Sequence[Mapping[str, Any]]) -> str:
    lines = ['| stage | wall (s) | CPU (s) | load at start → end |',
             '|---|---:|---:|---|']
    for s in stages:
        lines.append(f'| {s["name"]} | {s["wall"]:.1f} | {s["cpu"]:.1f} | '
                     f'{s["load_start"]:.1f} → {s["load_end"]:.1f} |')
    wall = sum(s['wall'] for s in stages)
    cpu = sum(s['cpu'] for s in stages)
    lines.append(f'| **total** | **{wall:.1f}** | **{cpu:.1f}** | |')
    return '\n'.join(lines)


def _section(title: str, text: Optional[str], image: Optional[str],
             alt: str) -> list[str]:
    """A report section with its text and picture (nothing without
    either)."""
    if not text and not image:
        return []
    lines = [f'## {title}', '']
    if text:
        lines += [text, '']
    if image:
        lines += [f'![{alt}]({image})', '']
    return lines


def write_report(path: str, results: Mapping[str, Any], *,
                 images: Mapping[str, str],
                 sections: Optional[Mapping[str, str]] = None,
                 notes: Sequence[str] = ()) -> None:
    """Writes the Markdown report.

    Args:
        path: Output ``report.md``.
        results: As built by :func:`build_results`, with ``summary``
            (:func:`summarize`), ``settings``, ``costs``, ``stage_times``
            and ``checks`` added by the demo.
        images: Links (relative to the report) of ``stages``,
            ``predictions`` (a list, one per image, comma-joined),
            ``rsa`` and ``model_size``; missing keys are left out.
        sections: Extra Markdown under ``rsa`` and ``model_size`` (what
            the plot shows, the size table).
        notes: Lines appended at the end.
    """
    sections = sections or {}
    summary = results['summary']
    settings = results.get('settings', {})
    lines = ['# Incremental multi-task learning on the embedded benchmark',
             '']
    if settings.get('setup'):
        lines += [settings['setup'], '']
    if summary.get('delta_m') is not None:
        dm = summary['delta_m']
        lines += [
            f'**Δm of the RC bank (RC+RI+NFF) against single-task '
            f'fine-tuning: {format_percent(dm["rc"])}**; sequential '
            f'fine-tuning of one network: {format_percent(dm["finetune"])} '
            f'(positive = worse than a separate fine-tuned network per '
            f'task, averaged over the tasks).', '',
            _comparison_table(results, summary), '']
    lines += ['## Forgetting', '',
              'Each task\'s primary metric right after it was added minus '
              'after the last task, signed so that **positive = worse**.',
              '', _forgetting_table(results, summary), '']
    checks = results.get('checks') or []
    if checks:
        lines += [
            f'RC\'s earlier tasks were checked after each of the '
            f'{len(checks)} later stage(s): shared file and task files '
            f'unchanged (sha256), raw outputs on the probe images equal '
            f'element for element, metrics exactly equal.', '']
    lines += ['## Every stage', '',
              'After each task is added, every task registered so far is '
              'evaluated on the validation split.', '',
              '### RC (frozen filter bank, per-task modulators; RI + NFF)',
              '', _stage_table(results, 'rc'), '',
              '### Sequential fine-tuning (one plain network trained task '
              'after task, per-task heads kept)', '',
              _stage_table(results, 'finetune'), '']
    if 'stages' in images:
        lines += [f'![primary metric per task across stages]'
                  f'({images["stages"]})', '']
    if images.get('predictions'):
        lines += ['## Predictions', '',
                  'Validation images through the RC bank after the last '
                  'stage: the input, then per task the ground truth (left) '
                  'and the prediction (right).', '']
        lines += [f'![RC predictions and ground truth]({p})'
                  for p in images['predictions']] + ['']
    for key, title, alt in (
            ('rsa', 'Task interference, seen: RSA between tasks',
             'RSA: similarity between tasks per layer'),
            ('model_size', 'Model size against the number of tasks',
             'stored values against the number of tasks')):
        lines += _section(title, sections.get(key), images.get(key), alt)
    costs = results.get('costs')
    if costs:
        lines += ['## Cost per task', '',
                  '| task | RC trainable/stored parameters | RC task file |',
                  '|---|---:|---:|']
        for task in results['tasks']:
            cost = costs['rc'][task]
            lines.append(f'| {task} | {cost["params"]:,} | '
                         f'{cost["bytes"] / 1e6:.2f} MB |')
        lines += ['', f'Shared filter bank and base state: '
                      f'{costs["shared_bytes"] / 1e6:.2f} MB, stored once; '
                      f'a fine-tuned network stores its whole backbone '
                      f'({costs["plain_params"]:,} parameters) per task.', '']
    if results.get('stage_times'):
        lines += ['## Time per stage', '',
                  'Wall time, and CPU time of the process (all its '
                  'threads); the load average says how busy the machine '
                  'was.', '', _times_table(results['stage_times']), '']
    lines += list(notes)
    atomic_write_text(path, '\n'.join(lines).rstrip('\n') + '\n')


# -- plot ------------------------------------------------------------------------
def plot_stages(path: str, results: Mapping[str, Any]) -> None:
    """One panel per task: its primary metric across stages for RC and
    sequential fine-tuning, and the single-task network as a line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = results['tasks']
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.9 * len(tasks), 2.7))
    axes = list(axes) if len(tasks) > 1 else [axes]
    names = [e['added'] for e in results['stages']['rc']]
    for ax, task in zip(axes, tasks):
        metric, direction = results['primary'][task]
        for method, style, label in (('rc', 'o-', 'RC'),
                                     ('finetune', 's--',
                                      'sequential fine-tuning')):
            xs, ys = [], []
            for i, entry in enumerate(results['stages'][method]):
                if task in entry['metrics']:
                    xs.append(i)
                    ys.append(entry['metrics'][task][metric])
            ax.plot(xs, ys, style, label=label)
        if 'single_task' in results:
            ax.axhline(results['single_task'][task][metric], color='0.4',
                       linestyle=':', label='single-task fine-tuning')
        ax.set_title(f'{task}: {metric} '
                     f'({"↑" if direction == "higher" else "↓"})',
                     fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f'+{s}' for s in names], rotation=30,
                           fontsize=7)
        ax.tick_params(axis='y', labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
