# Baseline: shared-encoder multi-task learning: one plain backbone for all
# tasks, trained jointly (every task's loss each iteration).
_base_ = ['./rc_r18_nyud.py']
pretrained = 'checkpoints/resnet18-f37072fd.pth'
model = dict(
    baseline='shared',
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
