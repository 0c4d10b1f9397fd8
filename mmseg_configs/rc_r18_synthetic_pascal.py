# RC + RI + NFF on the embedded synthetic benchmark, PASCAL layout
# (tools/make_synthetic.py --layout pascal --out data/synthetic_pascal), the
# twin of rc_r18_synthetic_nyud.py: ResNet-18 at half width (stem 32,
# stages 32-256 channels), 64-channel heads, 128x128 images, 96x96 crops,
# milder scaling (0.75-1.25) and a short schedule at a higher learning rate.
# Five tasks: semseg (21), human_parts (7), sal, normals, edge.
_base_ = [
    '_base_/models/rc_deeplabv3plus_r18_pascal.py',
    '_base_/datasets/pascal_mt.py',
    '_base_/default_runtime.py',
    '_base_/schedules/synthetic_short.py',
]
data_root = 'data/synthetic_pascal'
crop_size = (96, 96)
_small_head = dict(in_channels=256, channels=64, c1_in_channels=32,
                   c1_channels=24)
model = dict(
    backbone=dict(stem_channels=32, base_channels=32),
    decode_heads=dict(
        semseg=_small_head, human_parts=_small_head, sal=_small_head,
        normals=_small_head, edge=_small_head))
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
    dict(type='MTHumanPartsMetric', prefix='human_parts'),
    dict(type='MTSaliencyMetric', prefix='sal'),
    dict(type='MTNormalsMetric', prefix='normals'),
    # The fast approximation of the edge benchmark (docs/metrics.md):
    # skeleton thinning, distance matching, 25 thresholds, PASCAL's
    # tolerance (0.0075 of the diagonal).
    dict(type='MTEdgeMetric', protocol='fast_approx', prefix='edge'),
]
test_evaluator = val_evaluator
# RI on 64 training images at the images' own size.
convert_cfg = dict(calib_images=64, calib_size=(128, 128))
del _small_head
