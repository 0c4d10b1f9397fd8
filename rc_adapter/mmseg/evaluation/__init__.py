"""Multi-task metrics (one mmseg ``METRICS`` entry per task) and Δm,
registered in mmseg's registries on import.

Use one metric per task with the task name as ``prefix``, wrapped in
``MTMultiTaskEvaluator`` (one evaluator entry, which mmseg's ``tools/test.py
--out`` needs; a plain list of the metrics works too)::

    val_evaluator = dict(type='MTMultiTaskEvaluator', metrics=[
        dict(type='MTSemSegMetric', prefix='semseg'),
        dict(type='MTHumanPartsMetric', prefix='human_parts'),
        dict(type='MTSaliencyMetric', prefix='sal'),
        dict(type='MTNormalsMetric', prefix='normals'),
        dict(type='MTEdgeMetric', prefix='edge'),  # seism protocol
        dict(type='MTDepthMetric', prefix='depth'),
    ])

The defaults evaluate as the RCM reference does; ``docs/metrics.md``
describes each protocol, where the defaults differ on purpose and which
option reproduces the reference there. The names without the ``MT`` prefix
(``SemSegMetric``, ``EdgeMetric``, ...) are deprecated aliases.
"""
from .delta_m import DEFAULT_DELTA_M_KEYS, delta_m, delta_m_from_metrics
from .dense_metrics import MTDepthMetric, MTNormalsMetric, MTSaliencyMetric
from .deprecated import (EdgeMetric, HumanPartsMetric, NormalsMetric,
                         SaliencyMetric, SemSegMetric)
from .edge_metric import (EDGE_PROTOCOLS, SEISM_THRESHOLDS, MTEdgeMetric,
                          edge_counts)
from .multitask import (EVALUATOR_TYPE, MTMultiTaskEvaluator,
                        evaluator_metrics)
from .seg_metrics import MTHumanPartsMetric, MTIoUMetric, MTSemSegMetric

__all__ = [
    'MTIoUMetric', 'MTSemSegMetric', 'MTHumanPartsMetric', 'MTSaliencyMetric',
    'MTNormalsMetric', 'MTDepthMetric', 'MTEdgeMetric',
    'MTMultiTaskEvaluator',
    'evaluator_metrics', 'EVALUATOR_TYPE', 'edge_counts',
    'EDGE_PROTOCOLS', 'SEISM_THRESHOLDS', 'delta_m', 'delta_m_from_metrics',
    'DEFAULT_DELTA_M_KEYS', 'SemSegMetric', 'HumanPartsMetric',
    'SaliencyMetric', 'NormalsMetric', 'EdgeMetric'
]
