"""Incremental multi-task results: the ``results.json`` shape, forgetting,
Δm, the Markdown report and the plots of ``make demo``.

``results.json`` (read by other programs, keep the shape)::

    {"tasks": [...],
     "primary": {task: [metric, "higher" | "lower"]},
     "stages": {"rc": [{"added": task, "metrics": {task: {metric: value}}},
                       ...],
                "finetune": [...]}}

Each stage lists the metrics of every task registered so far.
"""
from ..mmseg.evaluation.delta_m import DEFAULT_DELTA_M_KEYS, delta_m
from ..utils.io import atomic_write_text

__all__ = ['PRIMARY_METRICS', 'build_results', 'forgetting',
           'just_trained', 'delta_m_vs', 'write_report', 'plot_stages',
           'plot_predictions']

#: task -> (primary metric, "higher" | "lower"): the Δm metrics.
PRIMARY_METRICS = {
    task: (key, 'higher' if higher else 'lower')
    for task, (key, higher) in DEFAULT_DELTA_M_KEYS.items()}


def build_results(tasks, stages):
    """Assembles the ``results.json`` dict.

    Args:
        tasks (list[str]): Tasks in the order they were added.
        stages (dict[str, list[tuple[str, dict]]]): method -> list of
            ``(added task, {task: {metric: value}})``.
    """
    return {
        'tasks': list(tasks),
        'primary': {t: list(PRIMARY_METRICS[t]) for t in tasks},
        'stages': {method: [{'added': added, 'metrics': metrics}
                            for added, metrics in entries]
                   for method, entries in stages.items()},
    }


def _primary(results, method, stage, task):
    metric = results['primary'][task][0]
    return results['stages'][method][stage]['metrics'][task][metric]


def just_trained(results, method):
    """Each task's primary metric in the stage where it was added."""
    return {entry['added']: _primary(results, method, i, entry['added'])
            for i, entry in enumerate(results['stages'][method])}


def forgetting(results, method):
    """Per task: primary metric when added minus at the last stage, signed
    so that a positive number means the task got worse."""
    last = len(results['stages'][method]) - 1
    out = {}
    for task, first in just_trained(results, method).items():
        final = _primary(results, method, last, task)
        sign = 1 if results['primary'][task][1] == 'higher' else -1
        out[task] = sign * (first - final)
    return out


def delta_m_vs(results, method, reference_values):
    """Δm (%, positive = drop) of ``method``'s last stage against
    ``reference_values`` (task -> primary metric)."""
    last = len(results['stages'][method]) - 1
    values = {t: _primary(results, method, last, t) for t in reference_values}
    higher = {t: results['primary'][t][1] == 'higher' for t in values}
    return delta_m(values, reference_values, higher)


def _stage_table(results, method):
    tasks = results['tasks']
    header = '| after adding | ' + ' | '.join(
        f'{t} {results["primary"][t][0]} '
        f'({"↑" if results["primary"][t][1] == "higher" else "↓"})'
        for t in tasks) + ' |'
    lines = [header, '|' + '---|' * (len(tasks) + 1)]
    for i, entry in enumerate(results['stages'][method]):
        cells = []
        for task in tasks:
            if task in entry['metrics']:
                cells.append(f'{_primary(results, method, i, task):.4g}')
            else:
                cells.append('–')
        lines.append(f'| {entry["added"]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_report(path, results, *, costs, times, notes=()):
    """Writes the Markdown report.

    Args:
        path (str): Output ``report.md``.
        results (dict): As built by :func:`build_results`.
        costs (dict): ``{'rc': {task: {'params', 'bytes'}}, 'shared_bytes',
            'shared_params', 'plain_params'}``.
        times (dict[str, float]): Step name -> wall seconds.
        notes (Iterable[str]): Extra lines appended at the end.
    """
    tasks = results['tasks']
    lines = ['# Incremental multi-task learning: RC vs sequential '
             'fine-tuning', '']
    lines += ['Tasks are added one after another; after each addition every '
              'task registered so far is evaluated on the validation split.',
              '']
    for method, title in (('rc', 'RC (frozen filter bank, per-task '
                                 'modulators; RI + NFF)'),
                          ('finetune', 'Fine-tuning one plain backbone task '
                                       'after task (per-task heads kept)')):
        lines += [f'## {title}', '', _stage_table(results, method), '']
    lines += ['## Forgetting', '',
              'Primary metric when the task was added minus at the end '
              '(signed so that **positive = worse**).', '',
              '| task | RC | fine-tuning |', '|---|---|---|']
    f_rc, f_ft = forgetting(results, 'rc'), forgetting(results, 'finetune')
    for task in tasks:
        lines.append(f'| {task} | {f_rc[task]:+.4g} | {f_ft[task]:+.4g} |')
    reference = just_trained(results, 'finetune')
    dm = delta_m_vs(results, 'rc', reference)
    lines += ['', f'**Δm of RC (final bank) against the baseline\'s '
                  f'just-trained metrics: {dm:+.2f}%** (positive = RC is '
                  f'worse on average; per task, the baseline\'s metric '
                  f'right after fine-tuning that task is the reference).',
              '']
    lines += ['## Cost per task', '',
              '| task | RC trainable/stored params | RC task file |',
              '|---|---|---|']
    for task in tasks:
        cost = costs['rc'][task]
        lines.append(f'| {task} | {cost["params"]:,} | '
                     f'{cost["bytes"] / 1e6:.2f} MB |')
    lines += ['',
              f'Shared filter bank + base state: '
              f'{costs["shared_params"]:,} elements, '
              f'{costs["shared_bytes"] / 1e6:.2f} MB, stored once. '
              f'Single-task fine-tuning would store a whole backbone '
              f'({costs["plain_params"]:,} parameters) per task, plus its '
              f'head.', '']
    lines += ['## Wall times', '', '| step | seconds |', '|---|---|']
    for step, seconds in times.items():
        lines.append(f'| {step} | {seconds:.1f} |')
    lines += [''] + list(notes)
    atomic_write_text(path, '\n'.join(lines) + '\n')
    return dm


def plot_stages(path, results):
    """One panel per task: its primary metric across stages, both
    methods."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = results['tasks']
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3))
    stage_names = [e['added'] for e in results['stages']['rc']]
    for ax, task in zip(axes, tasks):
        metric, direction = results['primary'][task]
        for method, style in (('rc', 'o-'), ('finetune', 's--')):
            xs, ys = [], []
            for i, entry in enumerate(results['stages'][method]):
                if task in entry['metrics']:
                    xs.append(i)
                    ys.append(entry['metrics'][task][metric])
            ax.plot(xs, ys, style, label='RC' if method == 'rc'
                    else 'fine-tuning')
        ax.set_title(f'{task}: {metric} ({"↑" if direction == "higher" else "↓"})')
        ax.set_xticks(range(len(stage_names)))
        ax.set_xticklabels([f'+{s}' for s in stage_names], rotation=30,
                           fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_predictions(path, image, panels):
    """One validation image with every task's prediction and ground truth.

    Args:
        path (str): Output PNG.
        image (ndarray): RGB image, HxWx3 uint8.
        panels (list[tuple[str, ndarray, ndarray]]): ``(task, prediction,
            ground truth)`` as displayable arrays (HxW or HxWx3).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(panels) + 1,
                             figsize=(2.4 * (len(panels) + 1), 5))
    axes[0, 0].imshow(image)
    axes[0, 0].set_title('image')
    axes[1, 0].axis('off')
    for col, (task, pred, gt) in enumerate(panels, start=1):
        style = {}
        if pred.ndim == 2:  # one colour scale for prediction and truth
            style = dict(cmap='viridis', vmin=min(pred.min(), gt.min()),
                         vmax=max(pred.max(), gt.max()))
        axes[0, col].imshow(pred, **style)
        axes[0, col].set_title(f'{task}: RC')
        axes[1, col].imshow(gt, **style)
        axes[1, col].set_title(f'{task}: ground truth')
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

