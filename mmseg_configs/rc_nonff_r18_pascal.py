# Ablation: RC + RI without normalized feature fusion (plain modulators).
_base_ = ['./rc_r18_pascal.py']
model = dict(rc_cfg=dict(nff=False))
