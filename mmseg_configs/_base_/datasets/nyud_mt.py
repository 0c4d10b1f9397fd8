# NYUD-v2 multi-task (NYUD_MT layout, docs/datasets.md): 795 train / 654 val
# images of 425x560; semseg (41 classes incl. 0), depth (m), normals, edge.
dataset_type = 'NYUDMTDataset'
data_root = 'data/NYUD_MT'
tasks = ['semseg', 'depth', 'normals', 'edge']
crop_size = (425, 560)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadMTAnnotations'),
    # The paper's augmentation: scale in {0.5, ..., 2.0} (depth / scale),
    # pad (centred) to the crop, random crop, horizontal flip (normals' x
    # negated).
    dict(type='MTRandomScale', scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)),
    dict(type='MTPadToSize', size=crop_size),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='MTRandomFlip', prob=0.5),
    dict(type='MTPackSegInputs'),
]
# Evaluation as the reference: the image is padded, centred, with the mean
# colour to the training crop; predictions are cropped back to the original
# size and compared with the un-padded labels (pad_seg_fields=False). Without
# annotations (mmseg's inference_model / MMSegInferencer) LoadMTAnnotations
# does nothing, so this pipeline also serves inference.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadMTAnnotations'),
    dict(type='MTPadToSize', size=crop_size, pad_seg_fields=False),
    dict(type='MTPackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train',
                 tasks=tasks, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='val',
                 tasks=tasks, pipeline=test_pipeline))
test_dataloader = val_dataloader
# One metric per task; the prefix is the task name. The metrics' defaults
# are the reference protocol (docs/metrics.md). MTMultiTaskEvaluator makes
# them one evaluator entry, so mmseg's tools/test.py --out DIR (which sets
# test_evaluator['output_dir']) writes every task's predictions to DIR.
val_evaluator = dict(type='MTMultiTaskEvaluator', metrics=[
    dict(type='MTSemSegMetric', prefix='semseg'),
    dict(type='MTDepthMetric', prefix='depth'),
    dict(type='MTNormalsMetric', prefix='normals'),
    dict(type='MTEdgeMetric', prefix='edge'),
])
test_evaluator = val_evaluator
