"""Class names, palettes and label tables of the multi-task datasets
(``docs/datasets.md``)."""
from ...utils.palette import voc_palette

TASKS_PASCAL = ('semseg', 'human_parts', 'sal', 'normals', 'edge')
TASKS_NYUD = ('semseg', 'depth', 'normals', 'edge')

# Result keys written by LoadMTAnnotations (a contract other modules use).
RESULT_KEYS = {
    'semseg': 'gt_seg_map',
    'human_parts': 'gt_parts_seg',
    'sal': 'gt_sal_map',
    'normals': 'gt_normal_map',
    'edge': 'gt_edge_map',
    'depth': 'gt_depth_map',
}

# Pad value of each task's label map: the ignore index of the class labels,
# 0 (= invalid) for normals and depth. Used for the training pad/crop
# (MTPadToSize) and the batch padding (MTSegDataPreProcessor).
LABEL_PAD_VALUES = {
    'semseg': 255,
    'human_parts': 255,
    'sal': 255,
    'edge': 255,
    'normals': 0,
    'depth': 0,
}

# MATLAB variable of each .mat annotation (``context``: the PASCAL-Context
# label map that PASCAL normals and edges are derived from).
MAT_VARIABLES = {
    'semseg': 'segmentation',
    'depth': 'depth',
    'human_parts': 'anno',
    'context': 'LabelMap',
}

VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat',
               'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
               'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep',
               'sofa', 'train', 'tvmonitor')

# NYUD: 41-way, class 0 ('unlabeled' in NYU-40) trained and evaluated like
# any other class, as RCM does (docs/datasets.md), so mIoU is comparable
# with the reference's numbers; 255 appears only from padding.
NYU40_CLASSES = ('unlabeled', 'wall', 'floor', 'cabinet', 'bed', 'chair',
                 'sofa', 'table', 'door', 'window', 'bookshelf', 'picture',
                 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser',
                 'pillow', 'mirror', 'floor mat', 'clothes', 'ceiling',
                 'books', 'refrigerator', 'television', 'paper', 'towel',
                 'shower curtain', 'box', 'whiteboard', 'person',
                 'night stand', 'toilet', 'sink', 'lamp', 'bathtub', 'bag',
                 'otherstructure', 'otherfurniture', 'otherprop')

HUMAN_PART_CLASSES = ('background', 'head', 'torso', 'upper_arms',
                      'lower_arms_hands', 'upper_legs', 'lower_legs_feet')

# PASCAL-Part part name -> coarse part id (the reference's 6-part table).
HUMAN_PART_IDS = {
    'hair': 1, 'head': 1, 'lear': 1, 'rear': 1, 'lebrow': 1, 'rebrow': 1,
    'leye': 1, 'reye': 1, 'mouth': 1, 'nose': 1,
    'torso': 2, 'neck': 2,
    'luarm': 3, 'ruarm': 3,
    'llarm': 4, 'rlarm': 4, 'lhand': 4, 'rhand': 4,
    'luleg': 5, 'ruleg': 5,
    'llleg': 6, 'rlleg': 6, 'lfoot': 6, 'rfoot': 6,
}
PERSON_CLASS_ID = 15


BINARY_CLASSES = ('background', 'foreground')
BINARY_PALETTE = [[0, 0, 0], [255, 255, 255]]
VOC_PALETTE = voc_palette(21).tolist()
NYU40_PALETTE = voc_palette(41).tolist()
HUMAN_PART_PALETTE = voc_palette(7).tolist()
