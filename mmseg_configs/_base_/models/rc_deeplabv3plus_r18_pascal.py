# PASCAL-Context heads: semseg (21 classes), human_parts (7 incl.
# background), sal, normals, edge.
_base_ = ['./rc_deeplabv3plus_r18.py', './mt_deeplabv3plus_heads.py']
model = dict(
    decode_heads=dict(
        semseg={{_base_.mt_head_templates.semseg_voc}},
        human_parts={{_base_.mt_head_templates.human_parts}},
        sal={{_base_.mt_head_templates.sal}},
        normals={{_base_.mt_head_templates.normals}},
        edge={{_base_.mt_head_templates.edge}}))
