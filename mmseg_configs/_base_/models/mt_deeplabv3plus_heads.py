# The per-task DeepLabv3+ heads (MTDeepLabV3PlusHead, the paper's decoder)
# under every task of mt_tasks.py (task type, ground-truth field, output
# channels, loss and weight). A dataset's model file picks its tasks by
# whole-value substitution, e.g. semseg={{_base_.mt_head_templates.semseg_voc}}
# (a copy is made when the config is read: changing mt_head_templates later,
# e.g. with --cfg-options, does not change model.decode_heads).
_base_ = ['./mt_tasks.py']
_head = dict(
    type='MTDeepLabV3PlusHead',
    in_channels=512,
    in_index=3,
    channels=256,
    dilations=(1, 6, 12, 18),
    c1_in_channels=64,
    c1_channels=48,
    c1_index=0,
    norm_cfg=dict(type='BN', requires_grad=True),
    align_corners=False)
mt_head_templates = {name: dict(_head, **task)
                     for name, task in _base_.mt_tasks.items()}
del _head
