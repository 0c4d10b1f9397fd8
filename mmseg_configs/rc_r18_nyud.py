# RC + RI + NFF (the paper's full method), ResNet-18 DeepLabv3+, NYUD-v2:
# 4 tasks, each trained alone on the shared filter bank, 19,875 iterations
# (200 epochs of 795 images), batch 8, crop 425x560.
#   python tools/convert_to_rc.py mmseg_configs/rc_r18_nyud.py \
#       resnet18-f37072fd.pth --out banks/nyud_r18 --calib-dir IMAGES
#   python tools/add_task.py mmseg_configs/rc_r18_nyud.py \
#       --bank banks/nyud_r18 --task semseg
_base_ = [
    '_base_/models/rc_deeplabv3plus_r18_nyud.py',
    '_base_/datasets/nyud_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/paper_sgd.py',
]
# Single-task reference numbers for Δm (primary metric per task: semseg
# mIoU, depth rmse, normals mean_angle, edge odsF). Fill in your own
# single-task fine-tuning results (finetune_r18_nyud.py) to get Δm.
single_task_reference = dict()
