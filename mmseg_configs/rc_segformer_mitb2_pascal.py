# RC + RI + NFF with SegFormer MiT-b2, PASCAL-Context: 5 tasks (semseg,
# human_parts, sal, normals, edge), each trained alone on the shared filter
# bank; one stock SegformerHead (768 channels, as mmseg's MiT-b2 recipe) per
# task. The paper's lengths and batch (37,500 iterations, human_parts
# 13,020; batch 8, crop 512x512) with mmseg's SegFormer optimiser
# (_base_/schedules/adamw_transformer_pascal.py). Weights as
# rc_segformer_mitb2_nyud.py.
_base_ = [
    '_base_/models/rc_segformer_mit-b0.py',
    '_base_/datasets/pascal_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/adamw_transformer_pascal.py',
]
# MiT-b2: embed 64 (stages of 64-128-320-512 channels), 3-4-6-3 blocks;
# the heads read those channels.
model = dict(
    backbone=dict(embed_dims=64, num_layers=[3, 4, 6, 3]),
    decode_heads={
        task: dict(head, in_channels=[64, 128, 320, 512], channels=768)
        for task, head in _base_.mt_heads['pascal'].items()})
# Primary metric per task for Δm: semseg/human_parts mIoU, sal max_mIoU,
# normals mean_angle, edge odsF. Fill in single-task results to get Δm.
single_task_reference = dict()
