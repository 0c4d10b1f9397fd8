# Baseline: single-task fine-tuning of the whole plain network, one task per
# run (--cfg-options model.tasks="['semseg']" model.train_tasks="['semseg']").
# The backbone starts from an ImageNet torchvision checkpoint.
_base_ = ['./rc_r18_nyud.py']
pretrained = 'checkpoints/resnet18-f37072fd.pth'
model = dict(
    baseline='finetune',
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
