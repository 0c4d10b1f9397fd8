# NYUD-v2 heads: semseg (41 classes incl. 0, as the reference), depth,
# normals, edge.
_base_ = ['./rc_deeplabv3plus_r18.py', './mt_deeplabv3plus_heads.py']
model = dict(
    decode_heads=dict(
        semseg={{_base_.mt_head_templates.semseg_nyu40}},
        depth={{_base_.mt_head_templates.depth}},
        normals={{_base_.mt_head_templates.normals}},
        edge={{_base_.mt_head_templates.edge}}))
