# What each task type adds to a decode head, whatever the head's body: the
# task-head protocol (task_type, gt_field; rc_adapter/mmseg/models/
# task_head.py), the output channels and the loss; and which of them each
# dataset's tasks use. The head files of the transformer and ConvNeXt
# configs (mt_segformer_heads.py, mt_uper_heads.py) put one stock head body
# under each, the DeepLabv3+ templates (mt_deeplabv3plus_heads.py) the
# paper's decoder. Loss weights as in the paper (docs/method.md, "Losses"):
# edge 50, normals 10, sal 5, human_parts 2, semseg 1, depth 1.
_semseg = dict(
    task_type='segmentation', gt_field='gt_sem_seg',
    loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0,
                     avg_non_ignore=True))
mt_tasks = dict(
    # PASCAL-Context: 21 VOC classes.
    semseg_voc=dict(_semseg, num_classes=21),
    # NYUD-v2: 41 classes (class 0 included, as the reference).
    semseg_nyu40=dict(_semseg, num_classes=41),
    # PASCAL-Context: 6 parts + background.
    human_parts=dict(
        task_type='segmentation', gt_field='gt_parts_seg', num_classes=7,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=2.0,
                         avg_non_ignore=True)),
    # Dense tasks: the stock head body, its output activated and the masked
    # loss applied by the task adapter (MTHeadAdapter), as in
    # MTDeepLabV3PlusHead.
    sal=dict(
        task_type='saliency', gt_field='gt_sal_map',
        num_classes=1, out_channels=1,
        loss_decode=dict(type='MaskedBCEWithLogitsLoss', loss_weight=5.0)),
    normals=dict(
        task_type='normals', gt_field='gt_normal_map', num_classes=3,
        loss_decode=dict(type='MaskedL1Loss', loss_weight=10.0)),
    edge=dict(
        task_type='edge', gt_field='gt_edge_map',
        num_classes=1, out_channels=1,
        loss_decode=dict(type='MaskedBCEWithLogitsLoss', pos_weight=0.95,
                         loss_weight=50.0)),
    depth=dict(
        task_type='depth', gt_field='gt_depth_map',
        num_classes=1, out_channels=1,
        loss_decode=dict(type='MaskedL1Loss', loss_weight=1.0)),
)
# Each dataset's tasks (in the order of its dataset config) and the entry of
# mt_tasks each one uses.
mt_task_sets = dict(
    nyud=dict(semseg='semseg_nyu40', depth='depth', normals='normals',
              edge='edge'),
    pascal=dict(semseg='semseg_voc', human_parts='human_parts', sal='sal',
                normals='normals', edge='edge'),
)
del _semseg
