# RC + RI + NFF on the embedded synthetic benchmark, NYUD layout
# (tools/make_synthetic.py --layout nyud --out data/synthetic_nyud), sized to
# train in minutes on 2 CPU cores: ResNet-18 at half width (stem 32,
# stages 32-256 channels), 64-channel heads, 128x128 images, 96x96 crops,
# milder scaling (0.75-1.25) and a short schedule at a higher learning rate.
_base_ = [
    '_base_/models/rc_deeplabv3plus_r18_nyud.py',
    '_base_/datasets/nyud_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/synthetic_short.py',
]
data_root = 'data/synthetic_nyud'
crop_size = (96, 96)
_small_head = dict(in_channels=256, channels=64, c1_in_channels=32,
                   c1_channels=24)
model = dict(
    backbone=dict(stem_channels=32, base_channels=32),
    decode_heads=dict(
        semseg=_small_head, depth=_small_head, normals=_small_head,
        edge=_small_head))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadMTAnnotations'),
    dict(type='MTRandomScale', scales=(0.75, 1.0, 1.25)),
    dict(type='MTPadToSize', size=crop_size),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='MTRandomFlip', prob=0.5),
    dict(type='MTPackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
# Evaluation pads (centred) to this config's crop, as the real-data configs
# pad to theirs (a no-op for images larger than the crop).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadMTAnnotations'),
    dict(type='MTPadToSize', size=crop_size, pad_seg_fields=False),
    dict(type='MTPackSegInputs'),
]
val_dataloader = dict(
    num_workers=0, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='MTSemSegMetric', prefix='semseg'),
    dict(type='MTDepthMetric', prefix='depth'),
    dict(type='MTNormalsMetric', prefix='normals'),
    # The fast approximation of the edge benchmark (docs/metrics.md), at
    # the tolerance these configs always used.
    dict(type='MTEdgeMetric', protocol='fast_approx', max_dist=0.011,
         prefix='edge'),
]
test_evaluator = val_evaluator
# RI on 64 training images at the images' own size.
convert_cfg = dict(calib_images=64, calib_size=(128, 128))
del _small_head
