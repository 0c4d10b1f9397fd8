# The per-task heads of the SegFormer configs: mmseg's stock SegformerHead
# (the all-MLP decoder) under every task of mt_tasks.py, for MiT-b0's
# feature channels (a larger MiT changes in_channels and channels).
# mt_head_templates: one head per task entry; mt_heads: each dataset's
# heads, e.g. model = dict(decode_heads={{_base_.mt_heads.nyud}}) (a copy
# per task). Segmentation tasks train with the head's own loss; depth,
# normals, edge and saliency run through the task adapter (task_type,
# gt_field, masked losses).
_base_ = ['./mt_tasks.py']
_body = dict(
    type='SegformerHead',
    in_channels=[32, 64, 160, 256],
    in_index=[0, 1, 2, 3],
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
