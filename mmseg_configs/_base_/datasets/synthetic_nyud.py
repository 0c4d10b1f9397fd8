# The embedded synthetic benchmark, NYUD layout (tools/make_synthetic.py
# --layout nyud --out data/synthetic_nyud; docs/datasets.md): 128x128 images,
# 96x96 crops, milder scaling (0.75-1.25), batch 8, no loader workers,
# evaluation padded (centred) to the crop as the real-data configs pad to
# theirs (a no-op for images larger than the crop). The data settings of
# every synthetic NYUD config.
_base_ = ['./nyud_mt.py']
data_root = 'data/synthetic_nyud'
crop_size = (96, 96)
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
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadMTAnnotations'),
    dict(type='MTPadToSize', size=crop_size, pad_seg_fields=False),
    dict(type='MTPackSegInputs'),
]
val_dataloader = dict(
    num_workers=0, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metrics=[
    dict(type='MTSemSegMetric', prefix='semseg'),
    dict(type='MTDepthMetric', prefix='depth'),
    dict(type='MTNormalsMetric', prefix='normals'),
    # The fast approximation of the edge benchmark (docs/metrics.md), at
    # the tolerance the synthetic NYUD configs always used.
    dict(type='MTEdgeMetric', protocol='fast_approx', max_dist=0.011,
         prefix='edge'),
])
test_evaluator = val_evaluator
