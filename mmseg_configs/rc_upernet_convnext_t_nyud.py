# RC + RI + NFF with UPerNet on ConvNeXt-T (timm's convnext_tiny via mmseg's
# TIMMBackbone), NYUD-v2: 4 tasks (semseg, depth, normals, edge), each
# trained alone on the shared filter bank; one stock UPerHead (256 channels,
# _base_/models/mt_uper_heads.py) per task. The paper's length and batch
# (19,875 iterations, batch 8, crop 425x560) with AdamW at mmseg's ConvNeXt
# settings (lr 1e-4, weight decay 0.05; no layer-wise decay: the backbone's
# weights are frozen, only per-task tensors train).
# Weights: timm's convnext_tiny ImageNet checkpoint (plain state dict).
#   python tools/convert_to_rc.py mmseg_configs/rc_upernet_convnext_t_nyud.py \
#       convnext_tiny.pth --out banks/nyud_convnext_t
#   python tools/add_task.py mmseg_configs/rc_upernet_convnext_t_nyud.py \
#       --bank banks/nyud_convnext_t --task semseg
_base_ = [
    '_base_/models/rc_upernet_convnext-t.py',
    '_base_/datasets/nyud_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/adamw_transformer.py',
]
model = dict(decode_heads={{_base_.mt_heads.nyud}})
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=0.05))
# Primary metric per task for Δm: semseg mIoU, depth rmse, normals
# mean_angle, edge odsF. Fill in single-task results to get Δm.
single_task_reference = dict()
