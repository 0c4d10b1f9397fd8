# Baseline on the synthetic NYUD benchmark: the plain network, fine-tuned
# (backbone and the task's head). With one task per run and `load_from` the
# previous run's checkpoint, this is the sequential fine-tuning baseline of
# `make demo` (one backbone, per-task heads kept), which forgets.
_base_ = ['./rc_r18_synthetic_nyud.py']
model = dict(baseline='finetune')
