# Ablation: RC + NFF without Response Initialization. The bank is converted
# with the identity init (Ws = W, Wt = I): convert_to_rc.py reads rc_cfg.ri.
_base_ = ['./rc_r18_pascal.py']
model = dict(rc_cfg=dict(ri=False))
