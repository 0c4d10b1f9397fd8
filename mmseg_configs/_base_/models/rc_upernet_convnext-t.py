# UPerNet on ConvNeXt-T (Liu et al., CVPR 2022) as a multi-task RC model:
# timm's convnext_tiny through mmseg's TIMMBackbone (features_only: the four
# stages, 96-192-384-768 channels at strides 4-32) and one stock UPerHead per
# task (mt_uper_heads.py; a config picks its dataset's heads, e.g.
# model = dict(decode_heads={{_base_.mt_heads.nyud}})). Stochastic depth
# 0.4 as mmseg's ConvNeXt-T UPerNet recipe.
#
# rc_cfg (rc_segmentor.py): modulator='auto' gives the full modulator to
# the three downsampling convs, a per-channel scale to the depthwise 7x7
# convs, rank-8 low-rank modulators to the MLPs' linear layers (93 % of the
# weights) and to the 4x4 stem (3 input channels: a full 96 x 96 modulator
# would cost more than a copy); every LayerNorm is per task. The layer-scale
# vectors (gamma) are no weight layer: they stay shared and frozen.
#
# The checkpoint for tools/convert_to_rc.py: timm's own convnext_tiny
# weights (a plain state dict, .pth or .safetensors, e.g. the file of the
# Hugging Face model timm/convnext_tiny.fb_in1k); the converter maps its
# keys (stem.0 -> timm_model.stem_0 ...) and sets the classifier aside.
_base_ = ['./rc_segmentor.py', './mt_uper_heads.py']
model = dict(
    backbone=dict(
        type='TIMMBackbone',
        model_name='convnext_tiny',
        features_only=True,
        pretrained=False,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4))
