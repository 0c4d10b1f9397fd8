# Runtime shared by every rc_adapter config.
custom_imports = dict(imports=['rc_adapter'], allow_failed_imports=False)
default_scope = 'mmseg'
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
# RCRunner: weights-only checkpoint loading, the non-finite-loss stop and
# CPU mixed precision, also for mmseg's own tools/train.py.
runner_type = 'RCRunner'
vis_backends = [dict(type='LocalVisBackend')]
# One panel per image: input, ground truth and prediction of every task
# (also for mmseg's own tools/test.py --show-dir).
visualizer = dict(
    type='MTSegLocalVisualizer', vis_backends=vis_backends,
    name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
