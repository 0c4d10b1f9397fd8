# DeepLabv3+ on ResNet-18 as in Kanakis et al., ECCV 2020 (docs/method.md,
# "DeepLabv3+ on ResNet-18"): 7x7 stem, torchvision key names, output stride
# 16 (layer4 dilated 2, both 3x3 convs of each dilated block), per-task ASPP
# (1, 6, 12, 18) decoders with a 48-channel low-level branch from layer1.
# Heads are set per dataset (mt_deeplabv3plus_heads.py).
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
        type='MTDeepLabResNet',
        depth=18,
        num_stages=4,
        strides=(1, 2, 2, 1),
        dilations=(1, 1, 1, 2),
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch'),
    # The RCConfig (rc_adapter.RCConfig): NFF modulators and per-task norms,
    # the paper's full method. The bank (tools/convert_to_rc.py) holds the
    # filter banks and the RI base state.
    # modulator='full': the paper's modulators (and per-task copies of the
    # 1x1 downsample convs); RCConfig's default 'auto' would use low-rank
    # modulators there (docs/method.md).
    rc_cfg=dict(nff=True, task_norms=True, modulator='full'),
    # None: the RC model; 'finetune' / 'shared': the plain baselines.
    baseline=None,
    decode_heads=dict(),
    test_cfg=dict(mode='whole'))
# How tools/convert_to_rc.py makes the bank: Response Initialization on
# calib_images training images, centre crops of calib_size (the flags
# --no-ri, --calib-images and --calib-size override it).
convert_cfg = dict(ri=True, calib_images=256, calib_size=(224, 224))
