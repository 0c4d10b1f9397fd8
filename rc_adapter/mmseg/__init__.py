"""mmsegmentation / mmengine integration: importing this package registers
rc_adapter's datasets, transforms, models, metrics and runner parts in mmseg's
registries, allows the data-only globals of mmengine checkpoints in
weights-only loads, and lets a task bank folder stand where mmseg expects a
checkpoint (:mod:`rc_adapter.mmseg.checkpoint`).
"""
from . import (datasets, engine, evaluation, models,  # noqa: F401
               transforms, visualization)
from .checkpoint import (register_bank_checkpoint_loader,
                         register_safe_globals)

register_safe_globals()
register_bank_checkpoint_loader()
