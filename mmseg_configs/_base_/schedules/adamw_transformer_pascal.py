# adamw_transformer.py at the paper's PASCAL-Context lengths (as
# rc_r18_pascal.py): 37,500 iterations (about 60 epochs of 4,998 images);
# a task trained alone gets its own length where task_schedules says so:
# human_parts trains 13,020 iterations on the person subset (the decay,
# validation and checkpoints follow; --cfg-options win).
_base_ = ['./adamw_transformer.py']
max_iters = 37500
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end={{_base_.warmup_iters}}),
    dict(type='PolyLR', eta_min=0.0, power=1.0,
         begin={{_base_.warmup_iters}}, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
task_schedules = dict(human_parts=dict(max_iters=13020))
