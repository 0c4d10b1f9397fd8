# The schedule of the embedded synthetic benchmark, sized to train in
# minutes on 2 CPU cores: the paper's recipe (paper_sgd.py) for 300
# iterations at a higher learning rate, logging every 25.
_base_ = ['./paper_sgd.py']
max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=0.02))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters,
         by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=max_iters))
