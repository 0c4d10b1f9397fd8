"""mmsegmentation / mmengine integration: importing this package registers
rc_adapter's datasets, transforms, models and metrics in mmseg's registries.
"""
from . import datasets, engine, evaluation, models, transforms  # noqa: F401
