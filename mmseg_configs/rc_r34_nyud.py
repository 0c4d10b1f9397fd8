# RC + RI + NFF, ResNet-34 DeepLabv3+, NYUD-v2 (as rc_r18_nyud.py).
_base_ = ['./rc_r18_nyud.py']
model = dict(backbone=dict(depth=34))
