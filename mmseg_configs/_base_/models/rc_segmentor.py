# The multi-task RC segmentor without a backbone or heads, for the configs
# whose backbone is not the paper's ResNet (rc_segformer_mit-b0.py,
# rc_upernet_convnext-t.py): RCMultiTaskSegmentor, mmseg's ImageNet
# normalisation, a batch padded to its largest image (no size_divisor:
# these backbones take any input size), RC + NFF with per-task norms and
# the default modulator families (modulator='auto', docs/method.md
# "Modulator families"), and conversion with Response Initialization.
model = dict(
    type='RCMultiTaskSegmentor',
    data_preprocessor=dict(
        type='MTSegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255),
    rc_cfg=dict(nff=True, task_norms=True, modulator='auto'),
    # None: the RC model; 'finetune' / 'shared': the plain baselines.
    baseline=None,
    decode_heads=dict(),
    test_cfg=dict(mode='whole'))
# tools/convert_to_rc.py: Response Initialization on 256 training images,
# 224 x 224 centre crops (flags --no-ri, --calib-images, --calib-size).
convert_cfg = dict(ri=True, calib_images=256, calib_size=(224, 224))
