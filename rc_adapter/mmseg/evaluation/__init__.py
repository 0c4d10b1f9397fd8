"""Multi-task metrics (one mmseg ``METRICS`` entry per task) and Δm,
registered in mmseg's registries on import.

Use one evaluator entry per task with the task name as ``prefix``::

    val_evaluator = [
        dict(type='SemSegMetric', prefix='semseg'),
        dict(type='HumanPartsMetric', prefix='human_parts'),
        dict(type='SaliencyMetric', prefix='sal'),
        dict(type='NormalsMetric', prefix='normals'),
        dict(type='EdgeMetric', max_dist=0.0075, prefix='edge'),  # NYUD 0.011
        dict(type='MTDepthMetric', prefix='depth'),
    ]
"""
from .delta_m import DEFAULT_DELTA_M_KEYS, delta_m, delta_m_from_metrics
from .dense_metrics import MTDepthMetric, NormalsMetric, SaliencyMetric
from .edge_metric import EdgeMetric, best_rpf, edge_counts
from .seg_metrics import HumanPartsMetric, MTIoUMetric, SemSegMetric

__all__ = [
    'MTIoUMetric', 'SemSegMetric', 'HumanPartsMetric', 'SaliencyMetric',
    'NormalsMetric', 'MTDepthMetric', 'EdgeMetric', 'edge_counts', 'best_rpf',
    'delta_m', 'delta_m_from_metrics', 'DEFAULT_DELTA_M_KEYS'
]
