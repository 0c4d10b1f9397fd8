"""Writing the analyses' results: JSON, Markdown and PNG files in one
output folder, each written atomically."""
from __future__ import annotations

import os.path as osp
from collections.abc import Mapping
from typing import Any, Optional

from ...utils.io import atomic_write_bytes, atomic_write_text, save_json
from ..apis.config import check_outputs, protected_inputs
from .plots import plot_model_size, plot_rsa_heatmaps, plot_rsa_layers
from .size import format_size_table, size_summary

__all__ = ['default_out_dir', 'check_out_dir', 'write_size_report',
           'write_rsa_report']


def default_out_dir(config_path: str) -> str:
    """``work_dirs/analysis/<config name>``."""
    return osp.join('work_dirs', 'analysis',
                    osp.splitext(osp.basename(config_path))[0])


def check_out_dir(cfg: Any, out_dir: str, *, bank: Optional[str] = None,
                  checkpoints: Optional[Mapping[str, str]] = None) -> None:
    """Refuses, before any work, an output folder that is (or lies inside)
    the bank, the config, a checkpoint or the data root.

    Args:
        cfg: The loaded config.
        out_dir: The output folder.
        bank: The task bank read.
        checkpoints: ``{description: path}`` of the checkpoints read.

    Raises:
        RCConfigError: naming the output and what it would overwrite.
    """
    check_outputs({'--out-dir': out_dir}, protected_inputs(
        cfg, config_path=getattr(cfg, 'filename', None), bank=bank,
        extra=dict(checkpoints or {})))


def _nan_free(value: Any) -> Any:
    """JSON has no NaN: NaN floats become None."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_free(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_free(v) for v in value]
    return value


def write_size_report(table: Mapping[str, Any], out_dir: str
                      ) -> dict[str, str]:
    """Writes ``model_size.json``, ``model_size.md`` (the table and the
    comparison with the paper) and ``model_size.png``.

    Returns:
        ``{'json', 'markdown', 'plot'}``: the files written.
    """
    files = dict(json=osp.join(out_dir, 'model_size.json'),
                 markdown=osp.join(out_dir, 'model_size.md'),
                 plot=osp.join(out_dir, 'model_size.png'))
    save_json(files['json'], _nan_free(dict(table)))
    text = ['# Model size against the number of tasks', '',
            f'Bank: `{table.get("bank")}`; real tasks: '
            f'{", ".join(table["real_tasks"])}.', '',
            format_size_table(table), '', size_summary(table), '']
    atomic_write_text(files['markdown'], '\n'.join(text))
    atomic_write_bytes(files['plot'], plot_model_size(table))
    return files


def write_rsa_report(result: Mapping[str, Any], out_dir: str
                     ) -> dict[str, str]:
    """Writes ``rsa.json``, ``rsa_heatmaps.png`` and ``rsa_layers.png``.

    Returns:
        ``{'json', 'heatmaps', 'layers'}``: the files written.
    """
    files = dict(json=osp.join(out_dir, 'rsa.json'),
                 heatmaps=osp.join(out_dir, 'rsa_heatmaps.png'),
                 layers=osp.join(out_dir, 'rsa_layers.png'))
    save_json(files['json'], _nan_free(dict(result)))
    atomic_write_bytes(files['heatmaps'], plot_rsa_heatmaps(result))
    atomic_write_bytes(files['layers'], plot_rsa_layers(result))
    return files
