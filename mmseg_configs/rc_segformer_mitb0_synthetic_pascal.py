# RC + RI + NFF with SegFormer on the embedded synthetic benchmark,
# PASCAL layout (five tasks: semseg, human_parts, sal, normals, edge): the
# data, evaluation and short schedule of
# rc_r18_synthetic_pascal.py (128x128 images, 96x96 crops, 300 iterations of
# SGD at lr 0.02, batch 8), so the two backbones compare on equal terms.
# MiT-b0 at its real size (3.3 M parameters, about the half-width
# ResNet-18's 2.8 M) with 64-channel SegformerHeads; modulator='auto' (the
# full modulator on the k x k convs, rank-8 low-rank modulators on the 1x1
# convs and the attention projections; every weight parameter reached).
#   python tools/make_synthetic.py --layout pascal \
#       --out data/synthetic_pascal
#   python tools/convert_to_rc.py \
#       mmseg_configs/rc_segformer_mitb0_synthetic_pascal.py MIT_B0.pth \
#       --out banks/synthetic_pascal_mitb0
#   python tools/add_task.py \
#       mmseg_configs/rc_segformer_mitb0_synthetic_pascal.py \
#       --bank banks/synthetic_pascal_mitb0 --task semseg
_base_ = [
    '_base_/models/rc_segformer_mit-b0.py',
    '_base_/datasets/synthetic_pascal.py',
    '_base_/default_runtime.py',
    '_base_/schedules/synthetic_short.py',
]
model = dict(decode_heads={
    task: dict(head, channels=64)
    for task, head in _base_.mt_heads['pascal'].items()})
# RI on 64 training images at the images' own size.
convert_cfg = dict(calib_images=64, calib_size=(128, 128))
