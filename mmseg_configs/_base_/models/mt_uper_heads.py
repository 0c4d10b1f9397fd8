# The per-task heads of the ConvNeXt configs: mmseg's stock UPerHead (PPM +
# FPN) under every task of mt_tasks.py, for ConvNeXt-T's feature channels
# [96, 192, 384, 768] (strides 4-32). channels=256, not the 512 of mmseg's
# single-task UPerNet recipes: every task has its own head, and at 512
# channels one UPerHead holds about 31 M parameters (at 256 about 9 M).
# mt_head_templates: one head per task entry; mt_heads: each dataset's
# heads, e.g. model = dict(decode_heads={{_base_.mt_heads.nyud}}) (a copy
# per task).
_base_ = ['./mt_tasks.py']
_body = dict(
    type='UPerHead',
    in_channels=[96, 192, 384, 768],
    in_index=[0, 1, 2, 3],
    pool_scales=(1, 2, 3, 6),
    channels=256,
    dropout_ratio=0.1,
    norm_cfg=dict(type='BN', requires_grad=True),
    align_corners=False)
mt_head_templates = {name: dict(_body, **task)
                     for name, task in _base_.mt_tasks.items()}
mt_heads = {dataset: {task: mt_head_templates[entry]
                      for task, entry in tasks.items()}
            for dataset, tasks in _base_.mt_task_sets.items()}
del _body
