"""``MTMultiTaskEvaluator``: the per-task metrics as one evaluator entry
that can also write the predictions.

mmseg's ``tools/test.py --out DIR`` sets ``cfg.test_evaluator['output_dir']``
(and ``keep_results``), which needs the evaluator config to be one dict; a
dict with a ``metrics`` key is built by mmengine's runner as an evaluator
(not as a metric). The shipped dataset configs therefore use::

    val_evaluator = dict(
        type='MTMultiTaskEvaluator',
        metrics=[
            dict(type='MTSemSegMetric', prefix='semseg'),
            dict(type='MTDepthMetric', prefix='depth'),
        ])

The metrics run exactly as in a plain list (same ``<task>/<metric>``
keys); with ``output_dir`` every prediction field of every image is also
written there, as ``output_dir/<field>/<image name>.png`` in the encodings
of ``MTPredictionSaverHook`` (``docs/tools.md``, "Prediction files").
"""
from __future__ import annotations

import os.path as osp
from typing import Any, Optional, Sequence

from mmengine.evaluator import Evaluator
from mmengine.structures import BaseDataElement

from mmseg.registry import EVALUATOR
from rc_adapter.core.errors import RCConfigError

__all__ = ['MTMultiTaskEvaluator', 'evaluator_metrics', 'EVALUATOR_TYPE']

#: The registered type of the multi-task evaluator.
EVALUATOR_TYPE = 'MTMultiTaskEvaluator'


def evaluator_metrics(evaluator: Any) -> list:
    """The metric configs of an evaluator config in any of its forms: a
    list of metrics, one metric, or an evaluator dict with ``metrics``."""
    if evaluator is None:
        return []
    if isinstance(evaluator, (list, tuple)):
        return list(evaluator)
    if 'metrics' in evaluator:
        metrics = evaluator['metrics']
        return list(metrics) if isinstance(metrics, (list, tuple)) \
            else [metrics]
    return [evaluator]


@EVALUATOR.register_module()
class MTMultiTaskEvaluator(Evaluator):
    """mmengine's ``Evaluator`` over the per-task metrics, which also writes
    the predictions when ``output_dir`` is set.

    Args:
        metrics (list[dict | BaseMetric]): The per-task metrics, e.g.
            ``dict(type='MTSemSegMetric', prefix='semseg')``; their result
            keys must differ (one ``prefix`` per task).
        output_dir (str, optional): Write every ``pred_*`` field of every
            image here (``<field>/<image name>.png``). mmseg's
            ``tools/test.py --out DIR`` sets it.
        format_only (bool): Only write the predictions (needs
            ``output_dir``); no metric is computed, so the test set needs no
            labels.
        keep_results (bool): Accepted because mmseg's ``tools/test.py
            --out`` sets it; the files in ``output_dir`` are always kept.

    Raises:
        RCConfigError: ``metrics`` is empty, two metrics share a prefix, or
            ``format_only`` without ``output_dir``.
    """

    def __init__(self, metrics: Sequence[Any],
                 output_dir: Optional[str] = None,
                 format_only: bool = False,
                 keep_results: bool = False) -> None:
        metrics = evaluator_metrics(dict(metrics=metrics))
        if not metrics:
            raise RCConfigError(f'{EVALUATOR_TYPE}: metrics is empty; give '
                                f'one metric per task')
        prefixes = [m.get('prefix') if isinstance(m, dict)
                    else getattr(m, 'prefix', None) for m in metrics]
        repeated = sorted({str(p) for p in prefixes if prefixes.count(p) > 1})
        if repeated:
            raise RCConfigError(
                f'{EVALUATOR_TYPE}: several metrics have the prefix '
                f'{", ".join(repeated)}; give each task\'s metric its task '
                f'name as prefix')
        if format_only and not output_dir:
            raise RCConfigError(f'{EVALUATOR_TYPE}: format_only=True needs '
                                f'output_dir (where the predictions go)')
        super().__init__(metrics)
        self.output_dir = output_dir
        self.format_only = bool(format_only)
        self.keep_results = bool(keep_results)

    def process(self, data_samples: Sequence[BaseDataElement],
                data_batch: Optional[Any] = None) -> None:
        """Writes the predictions (with ``output_dir``) and hands the
        samples to every metric (unless ``format_only``)."""
        if self.output_dir:
            from ..visualization import write_raw
            for index, sample in enumerate(data_samples):
                path = sample.get('img_path') or f'{index}'
                write_raw(self.output_dir, sample,
                          osp.splitext(osp.basename(path))[0])
        if not self.format_only:
            super().process(data_samples, data_batch)

    def evaluate(self, size: int) -> dict:
        """Every metric's results (``<task>/<metric>`` keys); an empty dict
        with ``format_only``."""
        return {} if self.format_only else super().evaluate(size)
