# RC + RI + NFF on the embedded synthetic benchmark, PASCAL layout
# (tools/make_synthetic.py --layout pascal --out data/synthetic_pascal), the
# twin of rc_r18_synthetic_nyud.py: ResNet-18 at half width (stem 32,
# stages 32-256 channels), 64-channel heads, 128x128 images, 96x96 crops,
# milder scaling (0.75-1.25) and a short schedule at a higher learning rate.
# Five tasks: semseg (21), human_parts (7), sal, normals, edge.
_base_ = [
    '_base_/models/rc_deeplabv3plus_r18_pascal.py',
    '_base_/datasets/synthetic_pascal.py',
    '_base_/default_runtime.py',
    '_base_/schedules/synthetic_short.py',
]
_small_head = dict(in_channels=256, channels=64, c1_in_channels=32,
                   c1_channels=24)
model = dict(
    backbone=dict(stem_channels=32, base_channels=32),
    decode_heads=dict(
        semseg=_small_head, human_parts=_small_head, sal=_small_head,
        normals=_small_head, edge=_small_head))
# RI on 64 training images at the images' own size.
convert_cfg = dict(calib_images=64, calib_size=(128, 128))
del _small_head
