# SegFormer (Xie et al., NeurIPS 2021) as a multi-task RC model: mmseg's
# MixVisionTransformer at the MiT-b0 size (embed 32, stages of 32-64-160-256
# channels at strides 4-32, 2-2-2-2 blocks) and one stock SegformerHead per
# task (mt_segformer_heads.py; a config picks its dataset's heads, e.g.
# model = dict(decode_heads={{_base_.mt_heads.nyud}})). Larger MiTs change
# embed_dims/num_layers here and in_channels/channels in the heads.
#
# rc_cfg (rc_segmentor.py): modulator='auto' gives the paper's full
# modulator to the k x k convs (the overlapping patch embeddings, the
# spatial-reduction convs of the attention, and the depthwise 3x3 of each
# Mix-FFN as a per-channel scale), rank-8 low-rank modulators to the 1x1
# convs of the Mix-FFN and to the attention projections (q, k and v each
# with its own block, and the output projection); every LayerNorm is per
# task. Every weight parameter of the backbone gets a per-task path
# (rc.summary()['reach']). Response Initialization of the attention: one
# PCA per q/k/v block, over every token.
_base_ = ['./rc_segmentor.py', './mt_segformer_heads.py']
model = dict(
    backbone=dict(
        type='MixVisionTransformer',
        in_channels=3,
        embed_dims=32,
        num_stages=4,
        num_layers=[2, 2, 2, 2],
        num_heads=[1, 2, 5, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1))
