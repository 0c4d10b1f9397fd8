# RC + RI + NFF on the embedded synthetic benchmark, PASCAL layout
# (tools/make_synthetic.py --layout pascal --out data/synthetic_pascal), the
# twin of rc_r18_synthetic_nyud.py: ResNet-18 at half width (stem 32,
# stages 32-256 channels), 64-channel heads, 128x128 images, 96x96 crops,
# milder scaling (0.75-1.25) and a short schedule at a higher learning rate.
# Five tasks: semseg (21), human_parts (7), sal, normals, edge.
_base_ = ['./rc_r18_pascal.py']
data_root = 'data/synthetic_pascal'
crop_size = (96, 96)
max_iters = 300
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
val_dataloader = dict(num_workers=0, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='SemSegMetric', prefix='semseg'),
    dict(type='HumanPartsMetric', prefix='human_parts'),
    dict(type='SaliencyMetric', prefix='sal'),
    dict(type='NormalsMetric', prefix='normals'),
    # PASCAL's tolerance (0.0075 of the diagonal), the same fast settings
    # as the NYUD synthetic config (skeleton thinning, 25 thresholds).
    dict(type='EdgeMetric', max_dist=0.0075, thin_method='skeletonize',
         thresholds=25, prefix='edge'),
]
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=0.02))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters,
         by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=max_iters))
del _small_head
