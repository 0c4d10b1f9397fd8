# RC + RI + NFF with UPerNet on ConvNeXt-T (timm's convnext_tiny via mmseg's
# TIMMBackbone), PASCAL-Context: 5 tasks (semseg, human_parts, sal, normals,
# edge), each trained alone on the shared filter bank; one stock UPerHead
# (256 channels) per task. The paper's lengths and batch (37,500
# iterations, human_parts 13,020; batch 8, crop 512x512) with AdamW at
# mmseg's ConvNeXt settings (lr 1e-4, weight decay 0.05). Weights as
# rc_upernet_convnext_t_nyud.py.
_base_ = [
    '_base_/models/rc_upernet_convnext-t.py',
    '_base_/datasets/pascal_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/adamw_transformer_pascal.py',
]
model = dict(decode_heads={{_base_.mt_heads.pascal}})
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=0.05))
# Primary metric per task for Δm: semseg/human_parts mIoU, sal max_mIoU,
# normals mean_angle, edge odsF. Fill in single-task results to get Δm.
single_task_reference = dict()
