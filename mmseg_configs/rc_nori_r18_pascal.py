# DEPRECATED, kept for one release: RC + NFF from the identity init (no
# RI), which is none of the paper's rows. The rows are rc_plain_r18_pascal.py
# ("RC": no RI, no NFF), rc_ri_r18_pascal.py ("RC+RI") and rc_r18_pascal.py
# ("RC+RI+NFF", the full method). This config still builds what it always
# built (NFF on), so banks converted with it keep loading.
_base_ = ['./rc_plain_r18_pascal.py']
model = dict(rc_cfg=dict(nff=True))
