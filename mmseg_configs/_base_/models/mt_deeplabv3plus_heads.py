# The per-task DeepLabv3+ heads (MTDeepLabV3PlusHead) of every task type the
# project knows, one template each. A dataset's model file picks its tasks by
# whole-value substitution, e.g. semseg={{_base_.mt_head_templates.semseg_voc}}
# (a copy is made when the config is read: changing mt_head_templates later,
# e.g. with --cfg-options, does not change model.decode_heads).
# Loss weights as in the paper (docs/method.md, "Losses"): edge 50,
# normals 10, sal 5, human_parts 2, semseg 1, depth 1.
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
_semseg = dict(
    _head, task_type='segmentation', gt_field='gt_sem_seg',
    loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0,
                     avg_non_ignore=True))
mt_head_templates = dict(
    # PASCAL-Context: 21 VOC classes.
    semseg_voc=dict(_semseg, num_classes=21),
    # NYUD-v2: 41 classes (class 0 included, as the reference).
    semseg_nyu40=dict(_semseg, num_classes=41),
    # PASCAL-Context: 6 parts + background.
    human_parts=dict(
        _head, task_type='segmentation', gt_field='gt_parts_seg',
        num_classes=7,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=2.0,
                         avg_non_ignore=True)),
    sal=dict(
        _head, task_type='saliency', gt_field='gt_sal_map',
        num_classes=1, out_channels=1,
        loss_decode=dict(type='MaskedBCEWithLogitsLoss', loss_weight=5.0)),
    normals=dict(
        _head, task_type='normals', gt_field='gt_normal_map',
        num_classes=3,
        loss_decode=dict(type='MaskedL1Loss', loss_weight=10.0)),
    edge=dict(
        _head, task_type='edge', gt_field='gt_edge_map',
        num_classes=1, out_channels=1,
        loss_decode=dict(type='MaskedBCEWithLogitsLoss', pos_weight=0.95,
                         loss_weight=50.0)),
    depth=dict(
        _head, task_type='depth', gt_field='gt_depth_map',
        num_classes=1, out_channels=1,
        loss_decode=dict(type='MaskedL1Loss', loss_weight=1.0)),
)
del _head, _semseg
