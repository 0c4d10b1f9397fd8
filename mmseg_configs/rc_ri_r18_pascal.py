# The paper's comparison row "RC+RI": Response Initialization, plain
# modulators (no NFF), ResNet-18 DeepLabv3+, the recipe of rc_r18_pascal.py
# (RC+RI+NFF, the full method; rc_plain_r18_pascal.py is RC). Convert the
# bank with this config (RI on the train split, as rc_r18_pascal.py).
_base_ = ['./rc_r18_pascal.py']
model = dict(rc_cfg=dict(nff=False))
