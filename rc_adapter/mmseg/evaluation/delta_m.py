"""Multi-task performance change Δm against single-task references.

    Δm = (1/T) Σ_i (-1)^{l_i} (M_b,i - M_m,i) / M_b,i x 100

with l_i = 1 when lower is better (normals mean error, depth RMSE) and 0
otherwise, M_b the single-task baseline and M_m the evaluated model (the
ASTMT "average drop" sign): **a positive Δm means a drop (worse than the
baselines), a negative Δm an improvement.**
"""
from typing import Dict, Mapping, Optional, Tuple

from rc_adapter.core.errors import RCConfigError, UnknownTaskError

#: task -> (metric key as reported by its METRIC, higher is better)
DEFAULT_DELTA_M_KEYS: Dict[str, Tuple[str, bool]] = {
    'semseg': ('mIoU', True),
    'human_parts': ('mIoU', True),
    'sal': ('max_mIoU', True),
    'normals': ('mean_angle', False),
    'depth': ('rmse', False),
    'edge': ('odsF', True),
}


def delta_m(results: Mapping[str, float], references: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    """Δm in percent over the tasks (keys) of ``references``.

    Args:
        results (Mapping[str, float]): the evaluated model's metric per task.
        references (Mapping[str, float]): the single-task baseline per task.
        higher_is_better (Mapping[str, bool]): per task, whether a higher
            metric is better.

    Returns:
        float: Δm; positive = worse than the baselines on average.

    Raises:
        UnknownTaskError: a task of ``references`` missing in ``results`` or
            ``higher_is_better``.
        RCConfigError: no task, or a zero baseline.
    """
    if not references:
        raise RCConfigError('delta_m: no reference task given')
    total = 0.0
    for task, base in references.items():
        if task not in results:
            raise UnknownTaskError(f'delta_m: no result for task {task!r} '
                                   f'(have {sorted(results)})')
        if task not in higher_is_better:
            raise UnknownTaskError(f'delta_m: higher_is_better not given '
                                   f'for task {task!r}')
        if base == 0:
            raise RCConfigError(f'delta_m: baseline of task {task!r} is 0')
        rel = (float(base) - float(results[task])) / float(base) * 100
        total += rel if higher_is_better[task] else -rel
    return total / len(references)


def delta_m_from_metrics(
        metrics: Mapping[str, float],
        references: Mapping[str, float],
        keys: Optional[Mapping[str, Tuple[str, bool]]] = None) -> float:
    """Δm from an mmengine evaluator output with ``<task>/<key>`` entries.

    Example: ``metrics={'semseg/mIoU': 60.0, 'normals/mean_angle': 15.0}``,
    ``references={'semseg': 64.0, 'normals': 14.5}``.

    Args:
        metrics (Mapping[str, float]): evaluator output (prefix = task name).
        references (Mapping[str, float]): baseline per task.
        keys (Mapping, optional): task -> (metric key, higher is better);
            defaults to :data:`DEFAULT_DELTA_M_KEYS`.

    Returns:
        float: Δm (positive = drop).
    """
    keys = DEFAULT_DELTA_M_KEYS if keys is None else keys
    results, hib = {}, {}
    for task in references:
        if task not in keys:
            raise UnknownTaskError(f'delta_m_from_metrics: no metric key '
                                   f'known for task {task!r}')
        key, higher = keys[task]
        name = f'{task}/{key}'
        if name not in metrics:
            raise UnknownTaskError(f'delta_m_from_metrics: {name!r} not in '
                                   f'metrics {sorted(metrics)}')
        results[task], hib[task] = metrics[name], higher
    return delta_m(results, references, hib)
