# RC + RI + NFF, ResNet-34 DeepLabv3+, PASCAL-Context (as rc_r18_pascal.py).
_base_ = ['./rc_r18_pascal.py']
model = dict(backbone=dict(depth=34))
