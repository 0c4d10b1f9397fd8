# RC + RI + NFF, ResNet-18 DeepLabv3+, PASCAL-Context: 5 tasks, 37,500
# iterations (about 60 epochs of 4,998 images; human_parts alone uses
# 13,020 on the person subset), batch 8, crop 512x512.
_base_ = [
    '_base_/models/rc_deeplabv3plus_r18_pascal.py',
    '_base_/datasets/pascal_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/paper_sgd.py',
]
max_iters = 37500
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
# A task trained alone (tools/add_task.py, or tools/train.py with one train
# task) gets its own length: human_parts trains 13,020 iterations, the
# PolyLR decay, validation and checkpoints following (docs/tools.md,
# "Per-task schedules"; --cfg-options win).
task_schedules = dict(human_parts=dict(max_iters=13020))
# Primary metric per task for Δm: semseg/human_parts mIoU, sal max_mIoU,
# normals mean_angle, edge odsF. Fill in single-task results to get Δm.
single_task_reference = dict()
