# The paper's optimisation (docs/method.md, "Training recipe"): SGD lr 0.005,
# momentum 0.9, weight decay 1e-4 on every trainable tensor, poly 0.9 stepped
# per iteration, batch 8. Frozen tensors never enter the optimizer.
max_iters = 19875
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='TrainableOnlyOptimWrapperConstructor',
    optimizer=dict(type='SGD', lr=0.005, momentum=0.9, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # The paper evaluates the last iterate (the official RCM repository's
    # test.py loads model_last.pth; docs/method.md, "Training recipe").
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000,
                    max_keep_ckpts=1, save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
