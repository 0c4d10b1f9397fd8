"""Pictures a person reads: the panel of a perfect prediction shows the same
picture for ground truth and prediction (pixel for pixel), each task type's
colour map means what it says, and the test-time hook writes one panel per
image plus the raw encodings."""
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import PixelData

import rc_adapter  # noqa: F401  (registers the mmseg parts)
from rc_adapter.mmseg.datasets.meta import NYU40_CLASSES, NYU40_PALETTE
from rc_adapter.mmseg.visualization import (IGNORE_COLOUR,
                                            MTSegLocalVisualizer,
                                            MTVisualizationHook, TaskView,
                                            colorize, draw_panel,
                                            sample_task_views)
from mmseg.structures import SegDataSample

H, W = 24, 30


def _maps(seed=0):
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 41, (H, W))
    depth = rng.uniform(0.5, 8.0, (H, W)).astype(np.float32)
    normals = rng.normal(size=(3, H, W)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=0, keepdims=True)
    edge = (rng.random((H, W)) > 0.8).astype(np.int64)
    sal = (rng.random((H, W)) > 0.5).astype(np.int64)
    return dict(seg=seg, depth=depth, normals=normals, edge=edge, sal=sal)


def _views(gt, pred):
    return [
        TaskView('semseg', 'segmentation', gt=gt['seg'], pred=pred['seg'],
                 classes=NYU40_CLASSES, palette=NYU40_PALETTE),
        TaskView('depth', 'depth', gt=gt['depth'], pred=pred['depth']),
        TaskView('normals', 'normals', gt=gt['normals'],
                 pred=pred['normals']),
        TaskView('edge', 'edge', gt=gt['edge'],
                 pred=pred['edge'].astype(np.float32)),
        TaskView('sal', 'saliency', gt=gt['sal'],
                 pred=pred['sal'].astype(np.float32)),
    ]


def _image():
    return np.random.default_rng(5).integers(0, 256, (H, W, 3),
                                             dtype=np.uint8)


def test_perfect_prediction_panel_shows_identical_pictures():
    maps = _maps()
    panel = draw_panel(_image(), _views(maps, maps), title='x')
    # The input is in the panel pixel for pixel (integer enlargement).
    scale = panel.regions['input'][2] // H
    assert scale >= 2
    assert (panel.crop('input') == _image().repeat(scale, 0).repeat(
        scale, 1)).all()
    for task in ('semseg', 'depth', 'normals', 'edge', 'sal'):
        gt, pred = panel.crop(f'{task}/gt'), panel.crop(f'{task}/pred')
        assert gt.shape == pred.shape == (H * scale, W * scale, 3), task
        assert (gt == pred).all(), task
        assert gt.std() > 0, task  # a picture, not a blank region
    # No two regions overlap, and all lie inside the panel.
    boxes = list(panel.regions.values())
    for i, (t, l, h, w) in enumerate(boxes):
        assert t + h <= panel.image.shape[0] and l + w <= panel.image.shape[1]
        for t2, l2, h2, w2 in boxes[i + 1:]:
            assert t + h <= t2 or t2 + h2 <= t or l + w <= l2 or l2 + w2 <= l


def test_wrong_prediction_shows_a_different_picture():
    panel = draw_panel(_image(), _views(_maps(0), _maps(1)))
    for task in ('semseg', 'depth', 'normals', 'edge', 'sal'):
        assert (panel.crop(f'{task}/gt') != panel.crop(f'{task}/pred')).any()


def test_colour_maps_per_task_type():
    maps = _maps()
    seg_view = TaskView('semseg', 'segmentation', gt=maps['seg'].copy(),
                        pred=maps['seg'], classes=NYU40_CLASSES,
                        palette=NYU40_PALETTE)
    seg_view.gt[0, 0] = 255
    colours = colorize(seg_view, 'gt')
    assert tuple(colours[0, 0]) == IGNORE_COLOUR
    assert tuple(colours[1, 1]) == tuple(NYU40_PALETTE[maps['seg'][1, 1]])
    # Depth: one scale for both maps; a prediction twice as far is
    # brighter on viridis, invalid ground truth is black.
    gt = np.full((2, 2), 2.0, np.float32)
    gt[0, 0] = 0
    depth = TaskView('depth', 'depth', gt=gt,
                     pred=np.full((2, 2), 4.0, np.float32))
    assert tuple(colorize(depth, 'gt')[0, 0]) == (0, 0, 0)
    assert colorize(depth, 'pred')[1, 1].sum() > colorize(depth,
                                                          'gt')[1, 1].sum()
    # Normals: (n + 1) / 2 as RGB; +x is red.
    normals = np.zeros((3, 1, 2), np.float32)
    normals[0, 0, 0] = 1
    rgb = colorize(TaskView('normals', 'normals', pred=normals), 'pred')
    assert tuple(rgb[0, 0]) == (255, 128, 128)
    assert tuple(rgb[0, 1]) == (0, 0, 0)  # zero vector: invalid


def test_panel_without_ground_truth_has_one_column():
    maps = _maps()
    views = _views(maps, maps)
    for view in views:
        view.gt = None
    panel = draw_panel(_image(), views)
    assert not any(name.endswith('/gt') for name in panel.regions)
    lefts = {panel.regions[f'{v.task}/pred'][1] for v in views}
    assert lefts == {panel.regions['input'][1]}


def _sample(path, maps):
    sample = SegDataSample(metainfo=dict(img_path=str(path),
                                         ori_shape=(H, W)))
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(maps['seg'])[None])
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(maps['seg'])[None])
    sample.gt_depth_map = PixelData(data=torch.from_numpy(maps['depth'])[None])
    sample.pred_depth_map = PixelData(
        data=torch.from_numpy(maps['depth'])[None])
    return sample


def test_hook_writes_one_panel_per_image_and_the_raw_encodings(tmp_path):
    images = []
    for i in range(3):
        path = tmp_path / f'img{i}.png'
        cv2.imwrite(str(path), _image())
        images.append(path)
    model = SimpleNamespace(task_meta={
        'semseg': dict(task_type='segmentation', gt_field='gt_sem_seg',
                       pred_field='pred_sem_seg', classes=NYU40_CLASSES,
                       palette=NYU40_PALETTE),
        'depth': dict(task_type='depth', gt_field='gt_depth_map',
                      pred_field='pred_depth_map', classes=None,
                      palette=None)})
    runner = SimpleNamespace(model=model, test_dataloader=SimpleNamespace(
        dataset=SimpleNamespace(metainfo={})))
    hook = MTVisualizationHook(out_dir=str(tmp_path / 'show'))
    hook.before_test(runner)
    maps = _maps()
    hook.after_test_iter(runner, 0, outputs=[_sample(p, maps)
                                             for p in images[:2]])
    hook.after_test_iter(runner, 1, outputs=[_sample(images[2], maps)])
    show = tmp_path / 'show'
    assert sorted(os.listdir(show)) == ['img0.png', 'img1.png', 'img2.png',
                                        'raw']
    assert sorted(os.listdir(show / 'raw')) == ['pred_depth_map',
                                                'pred_sem_seg']
    raw = cv2.imread(str(show / 'raw' / 'pred_sem_seg' / 'img1.png'),
                     cv2.IMREAD_UNCHANGED)
    assert (raw == maps['seg']).all()  # class ids, for programs
    depth = cv2.imread(str(show / 'raw' / 'pred_depth_map' / 'img1.png'),
                       cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16
    assert np.abs(depth / 1000 - maps['depth']).max() <= 0.0005 + 1e-6
    # The written panel is the drawn one: GT and prediction regions equal.
    panel = cv2.imread(str(show / 'img0.png'))[..., ::-1]
    drawn = draw_panel(_image()[..., ::-1], sample_task_views(
        _sample(images[0], maps), model.task_meta), title='img0')
    assert panel.shape == drawn.image.shape
    top, left, height, width = drawn.regions['semseg/gt']
    t2, l2, _, _ = drawn.regions['semseg/pred']
    assert (panel[top:top + height, left:left + width]
            == panel[t2:t2 + height, l2:l2 + width]).all()


def test_views_from_fields_without_task_meta():
    """mmseg's visualizer has no model: tasks come from the pred_* fields,
    class names from the dataset metainfo."""
    maps = _maps()
    sample = _sample('x.png', maps)
    views = {v.task: v for v in sample_task_views(
        sample, None, dict(classes=NYU40_CLASSES, palette=NYU40_PALETTE))}
    assert set(views) == {'semseg', 'depth'}
    assert views['semseg'].task_type == 'segmentation'
    assert list(views['semseg'].classes) == list(NYU40_CLASSES)
    assert views['depth'].task_type == 'depth'
    assert views['depth'].gt is not None


def test_mmseg_visualizer_draws_the_panel(tmp_path):
    visualizer = MTSegLocalVisualizer(name='vis_test', save_dir=None)
    visualizer.dataset_meta = dict(classes=NYU40_CLASSES,
                                   palette=NYU40_PALETTE)
    out = tmp_path / 'panel.png'
    maps = _maps()
    visualizer.add_datasample('img', _image(), _sample('img.png', maps),
                              out_file=str(out))
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 3 * H


@pytest.mark.parametrize('bad', [np.zeros((H, W)), np.zeros((2, H, W, 3))])
def test_bad_input_image_is_a_clear_error(bad):
    with pytest.raises(rc_adapter.RCConfigError, match='HxWx3'):
        draw_panel(bad, [])
