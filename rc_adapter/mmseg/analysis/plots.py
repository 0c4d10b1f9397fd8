"""The analyses' plots, drawn with matplotlib's Agg canvas (no display,
no global pyplot state) and returned as PNG bytes."""
from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ['plot_model_size', 'plot_rsa_heatmaps', 'plot_rsa_layers']

_COLOURS = {'rc': '#1f77b4', 'independent': '#d62728', 'shared': '#2ca02c',
            'finetune': '#9467bd'}
_SCHEME_LABELS = {'rc': 'RC bank', 'independent': 'independent models',
                  'shared': 'shared multi-task baseline'}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=110, facecolor='white')
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    return buffer.getvalue()


def plot_model_size(table: Mapping[str, Any]) -> bytes:
    """Stored values (millions) against the number of tasks: one line per
    scheme, solid with decoders and dashed for encoders only; the
    extrapolated region is shaded.

    Args:
        table: From :func:`rc_adapter.mmseg.analysis.size_table`.

    Returns:
        The PNG.
    """
    rows = table['rows']
    xs = [row['tasks'] for row in rows]
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for scheme, label in _SCHEME_LABELS.items():
        colour = _COLOURS[scheme]
        ax.plot(xs, [row[scheme]['values'] / 1e6 for row in rows], 'o-',
                color=colour, markersize=3, label=label)
        ax.plot(xs, [row[scheme + '_encoder']['values'] / 1e6
                     for row in rows], '--', color=colour, linewidth=1,
                label=f'{label} (encoders only)')
    real = len(table['real_tasks'])
    if xs[-1] > real:
        ax.axvspan(real + 0.5, xs[-1] + 0.5, color='0.92', zorder=0)
        ax.text(xs[-1] + 0.4, 0.02, f'shaded: extrapolated (each task '
                f'costs the mean of the {real} real one(s))', fontsize=7,
                ha='right', va='bottom', color='0.35',
                transform=ax.get_xaxis_transform())
    ax.set_xlabel('number of tasks')
    ax.set_ylabel('stored values (millions, parameters + buffers)')
    ax.set_title('Model size against the number of tasks', fontsize=10)
    ax.set_xticks(xs if len(xs) <= 20 else xs[::max(1, len(xs) // 10)])
    ax.set_xlim(0.5, xs[-1] + 0.5)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='upper left')
    fig.tight_layout()
    return _png(fig)


def _order(result: Mapping[str, Any]) -> list[str]:
    from .rsa import MODEL_LABELS
    return [m for m in MODEL_LABELS if m in result['models']]


def plot_rsa_heatmaps(result: Mapping[str, Any]) -> bytes:
    """One heat map per model (rows) and layer (columns): Spearman
    similarity of every task pair's RDMs, values written in the cells.

    Args:
        result: From :func:`rc_adapter.mmseg.analysis.rsa`.

    Returns:
        The PNG.
    """
    from .rsa import MODEL_LABELS
    models, layers = _order(result), result['layers']
    values = [v for m in models for layer in layers
              for row in result['models'][m]['similarity'][layer]
              for v in row if v is not None]
    low = min([0.0] + values)
    fig = _figure(2.3 * len(layers) + 1.0, 2.4 * len(models) + 0.6)
    image = None
    for r, model in enumerate(models):
        entry = result['models'][model]
        tasks = entry['tasks']
        for c, layer in enumerate(layers):
            ax = fig.add_subplot(len(models), len(layers),
                                 r * len(layers) + c + 1)
            matrix = np.array([[np.nan if v is None else v for v in row]
                               for row in entry['similarity'][layer]])
            image = ax.imshow(matrix, vmin=low, vmax=1.0, cmap='viridis')
            ax.set_xticks(range(len(tasks)))
            ax.set_yticks(range(len(tasks)))
            ax.set_xticklabels(tasks, rotation=45, ha='right', fontsize=6)
            ax.set_yticklabels(tasks if c == 0 else [], fontsize=6)
            if len(tasks) <= 8:
                for i in range(len(tasks)):
                    for j in range(len(tasks)):
                        v = matrix[i, j]
                        ax.text(j, i, '–' if np.isnan(v) else f'{v:.2f}',
                                ha='center', va='center', fontsize=5.5,
                                color='black' if v > (low + 1) / 2
                                else 'white')
            title = layer if r == 0 else ''
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(MODEL_LABELS[model], fontsize=7)
    if image is not None:
        bar = fig.colorbar(image, ax=fig.axes, shrink=0.8, pad=0.02)
        bar.set_label('similarity of RDMs (Spearman)', fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(f'Task-pair similarity of representations per layer '
                 f'({len(result["images"])} images, {result["grid"]}x'
                 f'{result["grid"]} pooling)', fontsize=9)
    return _png(fig)


def plot_rsa_layers(result: Mapping[str, Any]) -> bytes:
    """Mean task-pair similarity per layer, one line per model, with the
    range over task pairs shaded.

    Args:
        result: From :func:`rc_adapter.mmseg.analysis.rsa`.

    Returns:
        The PNG.
    """
    from .rsa import MODEL_LABELS
    layers = result['layers']
    xs = np.arange(len(layers))
    fig = _figure(1.3 * len(layers) + 3.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for model in _order(result):
        entry = result['models'][model]
        if len(entry['tasks']) < 2:
            continue

        def series(key):
            return np.array([np.nan if entry[key][layer] is None
                             else entry[key][layer] for layer in layers])
        colour = _COLOURS[model]
        ax.plot(xs, series('mean_pairwise'), 'o-', color=colour,
                label=MODEL_LABELS[model])
        ax.fill_between(xs, series('min_pairwise'), series('max_pairwise'),
                        color=colour, alpha=0.15, linewidth=0)
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, fontsize=8)
    ax.set_xlabel('layer (input → output)')
    ax.set_ylabel('task-pair similarity (Spearman of RDMs)')
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.axhline(1.0, color='0.6', linewidth=0.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='lower left')
    ax.set_title('Mean over task pairs (band: min to max)', fontsize=9)
    fig.tight_layout()
    return _png(fig)
