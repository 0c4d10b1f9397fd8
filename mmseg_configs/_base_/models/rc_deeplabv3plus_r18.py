# DeepLabv3+ on ResNet-18 as in the RCM paper (rcm-spec.md §3): 7x7 stem,
# torchvision key names, output stride 16 (layer4 dilated 2, both 3x3 convs
# of each dilated block), per-task ASPP (1, 6, 12, 18) decoders with a
# 48-channel low-level branch from layer1. Heads are set per dataset.
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='RCMultiTaskSegmentor',
    data_preprocessor=dict(
        type='MTSegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size_divisor=16),
    backbone=dict(
        type='DeepLabResNet',
        depth=18,
        num_stages=4,
        strides=(1, 2, 2, 1),
        dilations=(1, 1, 1, 2),
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch'),
    # RC + RI + NFF, per-task norms (the paper's full method). The bank
    # (tools/convert_to_rc.py) holds the filter banks and the RI base state.
    rc_cfg=dict(mode='rc', nff=True, task_norms=True, include=None,
                exclude=None),
    decode_heads=dict(),
    test_cfg=dict(mode='whole'))

