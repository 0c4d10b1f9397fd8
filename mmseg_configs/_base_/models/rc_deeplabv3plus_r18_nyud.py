# NYUD-v2 heads: semseg (41 classes incl. 0, as the reference), depth,
# normals, edge.
_base_ = ['./rc_deeplabv3plus_r18.py']
# Shared by every head (paper loss weights: edge 50, normals 10, sal 5,
# human_parts 2, semseg 1, depth 1).
_head = dict(
    type='MTDeepLabV3PlusHead',
    in_channels=512,
    in_index=3,
    channels=256,
    dilations=(1, 6, 12, 18),
    c1_in_channels=64,
    c1_channels=48,
    c1_index=0,
    norm_cfg=dict(type='BN', requires_grad=True),
    align_corners=False)
model = dict(
    decode_heads=dict(
        semseg=dict(
            _head, task_type='segmentation', gt_field='gt_sem_seg',
            num_classes=41,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0,
                             avg_non_ignore=True)),
        depth=dict(
            _head, task_type='depth', gt_field='gt_depth_map',
            num_classes=1, out_channels=1,
            loss_decode=dict(type='MaskedL1Loss', loss_weight=1.0)),
        normals=dict(
            _head, task_type='normals', gt_field='gt_normal_map',
            num_classes=3,
            loss_decode=dict(type='MaskedL1Loss', loss_weight=10.0)),
        edge=dict(
            _head, task_type='edge', gt_field='gt_edge_map',
            num_classes=1, out_channels=1,
            loss_decode=dict(type='MaskedBCEWithLogitsLoss', pos_weight=0.95,
                             loss_weight=50.0)),
    ))
del _head
