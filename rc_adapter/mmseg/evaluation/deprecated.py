"""Registry names of the metrics before the ``MT`` prefix (deprecated).

``SemSegMetric``, ``HumanPartsMetric``, ``SaliencyMetric``,
``NormalsMetric`` and ``EdgeMetric`` stay registered for one release so that
existing configs keep building; each emits a ``DeprecationWarning`` naming
its replacement when it is built (and logs it, since Python hides
deprecation warnings raised inside libraries by default). They will be
removed in the next release: use the ``MT...`` names.
"""
import logging
import warnings

from mmengine.logging import print_log

from mmseg.registry import METRICS

from .dense_metrics import MTNormalsMetric, MTSaliencyMetric
from .edge_metric import MTEdgeMetric
from .seg_metrics import MTHumanPartsMetric, MTSemSegMetric

__all__ = ['SemSegMetric', 'HumanPartsMetric', 'SaliencyMetric',
           'NormalsMetric', 'EdgeMetric']


class _DeprecatedName:
    """Mixin: warn that the registry name is deprecated when built."""

    def __init__(self, *args, **kwargs) -> None:
        old = type(self).__name__
        new = f'MT{old}'
        message = (f"metric type '{old}' is deprecated and will be removed "
                   f"in the next release; use type='{new}' (same arguments)")
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        print_log(message, logger='current', level=logging.WARNING)
        super().__init__(*args, **kwargs)


@METRICS.register_module()
class SemSegMetric(_DeprecatedName, MTSemSegMetric):
    """Deprecated name of :class:`MTSemSegMetric`."""


@METRICS.register_module()
class HumanPartsMetric(_DeprecatedName, MTHumanPartsMetric):
    """Deprecated name of :class:`MTHumanPartsMetric`."""


@METRICS.register_module()
class SaliencyMetric(_DeprecatedName, MTSaliencyMetric):
    """Deprecated name of :class:`MTSaliencyMetric`."""


@METRICS.register_module()
class NormalsMetric(_DeprecatedName, MTNormalsMetric):
    """Deprecated name of :class:`MTNormalsMetric`."""


@METRICS.register_module()
class EdgeMetric(_DeprecatedName, MTEdgeMetric):
    """Deprecated name of :class:`MTEdgeMetric`."""
