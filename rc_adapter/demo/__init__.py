"""Code behind ``make demo`` and ``make ablation`` (tools/demo.py,
tools/ablation.py, tools/pretrain_proxy.py): proxy pretraining on the
synthetic benchmark and the incremental-learning report. Not part of the
method's library API; nothing in ``rc_adapter.core`` or ``rc_adapter.mmseg``
imports it."""
