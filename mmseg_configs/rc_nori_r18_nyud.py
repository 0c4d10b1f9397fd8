# Ablation: RC + NFF without Response Initialization. The bank is converted
# with the identity init (Ws = W, Wt = I): tools/convert_to_rc.py reads
# convert_cfg.ri.
_base_ = ['./rc_r18_nyud.py']
convert_cfg = dict(ri=False)
