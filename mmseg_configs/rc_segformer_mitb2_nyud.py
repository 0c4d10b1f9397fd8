# RC + RI + NFF with SegFormer MiT-b2, NYUD-v2: 4 tasks (semseg, depth,
# normals, edge), each trained alone on the shared filter bank; one stock
# SegformerHead (768 channels, as mmseg's MiT-b2 recipe) per task. The
# paper's length and batch (19,875 iterations, batch 8, crop 425x560) with
# mmseg's SegFormer optimiser (_base_/schedules/adamw_transformer.py).
# Weights: mmseg's MiT-b2 ImageNet checkpoint (mit_b2_20220624-66e8bf70.pth,
# from mmseg's configs/segformer), or NVlabs' file converted with mmseg's
# tools/model_converters/mit2mmseg.py.
#   python tools/convert_to_rc.py mmseg_configs/rc_segformer_mitb2_nyud.py \
#       mit_b2_20220624-66e8bf70.pth --out banks/nyud_mitb2
#   python tools/add_task.py mmseg_configs/rc_segformer_mitb2_nyud.py \
#       --bank banks/nyud_mitb2 --task semseg
_base_ = [
    '_base_/models/rc_segformer_mit-b0.py',
    '_base_/datasets/nyud_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/adamw_transformer.py',
]
# MiT-b2: embed 64 (stages of 64-128-320-512 channels), 3-4-6-3 blocks;
# the heads read those channels.
model = dict(
    backbone=dict(embed_dims=64, num_layers=[3, 4, 6, 3]),
    decode_heads={
        task: dict(head, in_channels=[64, 128, 320, 512], channels=768)
        for task, head in _base_.mt_heads['nyud'].items()})
# Primary metric per task for Δm: semseg mIoU, depth rmse, normals
# mean_angle, edge odsF. Fill in single-task results to get Δm.
single_task_reference = dict()
