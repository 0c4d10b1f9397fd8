"""`make demo`: incremental multi-task learning on the embedded benchmark.

Runs the real user workflow through the real tools, with progress:

1. tools/make_synthetic.py   synthetic NYUD-layout benchmark (+ a separate
                             'pretrain' split), reused when current;
2. tools/pretrain_proxy.py   proxy pretraining (object types present +
                             rotation) -> torchvision-format checkpoint;
3. tools/convert_to_rc.py    task bank with Response Initialization on
                             the train split (the config's convert_cfg);
4. tools/add_task.py + tools/test.py for semseg, depth, normals, edge,
   evaluating every registered task after each addition;
5. the baseline: one plain backbone fine-tuned task after task
   (tools/train.py with load_from the previous stage), evaluated the same
   way;
6. work_dirs/demo/{results.json, report.md, stages.png, predictions.png}.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters N] [--quick]

Exit status: 0 success; a failing step's own status (see docs/tools.md),
after a line naming the step and its log; 130 interrupted (finished steps'
outputs stay in the work dir).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

import _common  # noqa: F401  (repo on sys.path)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = ['semseg', 'depth', 'normals', 'edge']
RC_CONFIG = 'mmseg_configs/rc_r18_synthetic_nyud.py'
FT_CONFIG = 'mmseg_configs/finetune_r18_synthetic_nyud.py'
DATA = dict(layout='nyud', num_train=200, num_val=30, size=(128, 128),
            seed=0, extra_splits={'pretrain': 300})


def run(step, args, times, log_path):
    """Runs one tool, streaming a short progress line; fails loudly."""
    print(f'\n=== {step}: {" ".join(args)}', flush=True)
    start = time.time()
    with open(log_path, 'a') as log:
        log.write(f'\n=== {step}: {" ".join(args)}\n')
        log.flush()
        proc = subprocess.Popen([sys.executable] + args, cwd=ROOT,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if _worth_showing(line):
                print('   ' + line.rstrip()[-150:], flush=True)
        code = proc.wait()
    times[step] = time.time() - start
    if code != 0:
        print(f'{osp.basename(sys.argv[0])}: step "{step}" failed (exit '
              f'{code}); see {log_path}', file=sys.stderr)
        sys.exit(code)
    print(f'    ({times[step]:.0f}s)', flush=True)


def _worth_showing(line):
    keys = ('Iter(train)', 'pretrain [', 'function preserved', 'per-task',
            'wrote', 'up to date', 'generated', 'error:', ': mIoU', 'rmse=',
            'mean_angle=', 'odsF=', 'Δm')
    return any(k in line for k in keys)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/synthetic_nyud_demo')
    parser.add_argument('--iters', type=int, default=200,
                        help='training iterations per task (both methods)')
    parser.add_argument('--pretrain-iters', type=int, default=300)
    parser.add_argument('--quick', action='store_true',
                        help='a few iterations only (smoke test)')
    args = parser.parse_args()
    if args.quick:
        args.iters, args.pretrain_iters = 4, 4
    work = osp.join(ROOT, args.work_dir)
    data = osp.join(ROOT, args.data_root)
    os.makedirs(work, exist_ok=True)
    log_path = osp.join(work, 'demo.log')
    open(log_path, 'w').close()
    times = {}
    started = time.time()

    generate_data(data, times, log_path)
    pretrained = pretrain(work, data, args.pretrain_iters, times, log_path)

    bank = osp.join(work, 'bank')
    run('convert_to_rc (RI)', [
        'tools/convert_to_rc.py', RC_CONFIG, pretrained, '--out', bank,
        '--data-root', data, '--force'], times, log_path)

    schedule = [f'train_cfg.max_iters={args.iters}',
                f'train_cfg.val_interval={args.iters}',
                f'param_scheduler.0.end={args.iters}',
                f'default_hooks.checkpoint.interval={args.iters}']
    stages = {'rc': [], 'finetune': []}
    for k, task in enumerate(TASKS):
        run(f'rc: add_task {task}', [
            'tools/add_task.py', RC_CONFIG, '--bank', bank, '--task', task,
            '--data-root', data, '--work-dir', osp.join(work, 'rc', task),
            '--cfg-options'] + schedule, times, log_path)
        out = osp.join(work, 'rc', f'stage{k + 1}_{task}.json')
        extra = ['--show-dir', osp.join(work, 'rc', 'predictions')] \
            if k == len(TASKS) - 1 else []
        run(f'rc: test after {task}', [
            'tools/test.py', RC_CONFIG, '--bank', bank, '--data-root', data,
            '--out', out, '--work-dir', osp.join(work, 'rc', 'test')] + extra,
            times, log_path)
        stages['rc'].append((task, _load(out)['metrics']))

    previous = None
    for k, task in enumerate(TASKS):
        seen = TASKS[:k + 1]
        task_list = '[' + ','.join(f"'{t}'" for t in seen) + ']'
        wd = osp.join(work, 'finetune', task)
        options = [f'model.tasks={task_list}', f"model.train_tasks=['{task}']"]
        if previous is None:
            options += ['model.backbone.init_cfg.type=Pretrained',
                        f'model.backbone.init_cfg.checkpoint={pretrained}']
        else:
            options += [f'load_from={previous}']
        run(f'finetune: train {task}', [
            'tools/train.py', FT_CONFIG, '--data-root', data, '--work-dir',
            wd, '--cfg-options'] + schedule + options, times, log_path)
        previous = osp.join(wd, f'iter_{args.iters}.pth')
        out = osp.join(work, 'finetune', f'stage{k + 1}_{task}.json')
        run(f'finetune: test after {task}', [
            'tools/test.py', FT_CONFIG, '--checkpoint', previous,
            '--data-root', data, '--out', out, '--work-dir',
            osp.join(work, 'finetune', 'test'), '--cfg-options',
            f'model.tasks={task_list}'], times, log_path)
        stages['finetune'].append((task, _load(out)['metrics']))

    times['total'] = time.time() - started
    write_outputs(work, data, bank, stages, times, args)


def generate_data(data, times, log_path):
    """The demo's synthetic benchmark (reused when current)."""
    run('generate data', [
        'tools/make_synthetic.py', '--layout', DATA['layout'], '--out', data,
        '--num-train', str(DATA['num_train']), '--num-val',
        str(DATA['num_val']), '--size', *map(str, DATA['size']), '--seed',
        str(DATA['seed'])] + [
        a for name, n in DATA['extra_splits'].items()
        for a in ('--extra-split', f'{name}:{n}')], times, log_path)


def pretrain(work, data, iters, times, log_path):
    """Proxy pretraining; returns the torchvision-format checkpoint."""
    pretrained = osp.join(work, 'pretrained_r18_half.pth')
    run('pretrain (proxy task)', [
        'tools/pretrain_proxy.py', RC_CONFIG, '--data-root', data, '--out',
        pretrained, '--iters', str(iters)], times, log_path)
    return pretrained


def _load(path):
    with open(path) as f:
        return json.load(f)


def write_outputs(work, data, bank, stages, times, args):
    """results.json, report.md and the two plots."""
    from rc_adapter.demo.report import (build_results, plot_stages,
                                        write_report)
    from rc_adapter.utils.io import save_json
    results = build_results(TASKS, stages)
    save_json(osp.join(work, 'results.json'), results)
    manifest = _load(osp.join(bank, 'manifest.json'))
    costs = dict(rc={}, shared_bytes=os.path.getsize(
        osp.join(bank, 'shared.safetensors')))
    for task in TASKS:
        entry = manifest['tasks'][task]
        costs['rc'][task] = dict(
            params=entry['info']['params'],
            bytes=os.path.getsize(osp.join(bank, entry['file'])))
    import rc_adapter  # noqa: F401  (registers the backbone)
    costs['shared_params'], costs['plain_params'] = _param_counts(bank)
    notes = [f'Setup: synthetic NYUD layout ({DATA["num_train"]} train / '
             f'{DATA["num_val"]} val images at {DATA["size"][0]}x'
             f'{DATA["size"][1]}, {DATA["extra_splits"]["pretrain"]} more '
             f'for pretraining), ResNet-18 at half width, 64-channel '
             f'DeepLabv3+ heads, {args.iters} iterations per task for both '
             f'methods, batch 8, 2 CPU threads.']
    dm = write_report(osp.join(work, 'report.md'), results, costs=costs,
                      times=times, notes=notes)
    plot_stages(osp.join(work, 'stages.png'), results)
    _plot_example(work, data)
    print(f'\nwrote {work}/results.json, report.md, stages.png, '
          f'predictions.png (Δm of RC vs the baseline\'s just-trained '
          f'metrics: {dm:+.2f}%; total {times["total"]:.0f}s)')


def _param_counts(bank):
    """Elements stored in the shared bank file, and the parameters of the
    plain backbone (what one more fine-tuned copy per task would cost)."""
    import math

    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from safetensors import safe_open
    with safe_open(osp.join(bank, 'shared.safetensors'), 'pt') as f:
        shared = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    init_default_scope('mmseg')
    backbone_cfg = _load(osp.join(bank, 'manifest.json'))['config']['backbone']
    plain = sum(p.numel() for p in MODELS.build(backbone_cfg).parameters())
    return shared, plain


def _plot_example(work, data):
    """The first validation image: every task's RC prediction and GT."""
    import cv2
    import numpy as np
    import scipy.io as sio

    from rc_adapter.demo.report import plot_predictions
    with open(osp.join(data, 'gt_sets', 'val.txt')) as f:
        image_id = f.readline().strip()
    pred_dir = osp.join(work, 'rc', 'predictions')
    image = cv2.imread(osp.join(data, 'images', image_id + '.jpg'))[..., ::-1]

    def pred(field, flags=cv2.IMREAD_UNCHANGED):
        return cv2.imread(osp.join(pred_dir, field, image_id + '.png'), flags)

    gt_seg = sio.loadmat(osp.join(data, 'segmentation',
                                  image_id + '.mat'))['segmentation']
    gt_depth = sio.loadmat(osp.join(data, 'depth', image_id + '.mat'))['depth']
    gt_normals = cv2.imread(osp.join(data, 'normals', image_id + '.jpg'))
    gt_edge = cv2.imread(osp.join(data, 'edge', image_id + '.png'), 0)
    panels = [
        ('semseg', pred('pred_sem_seg'), gt_seg),
        ('depth', pred('pred_depth_map').astype(np.float32) / 1000, gt_depth),
        ('normals', pred('pred_normal_map', cv2.IMREAD_COLOR)[..., ::-1],
         gt_normals[..., ::-1]),
        ('edge', pred('pred_edge_map'), gt_edge),
    ]
    plot_predictions(osp.join(work, 'predictions.png'), image, panels)


if __name__ == '__main__':
    from _common import run as run_main  # `run` here runs one step
    run_main(main, interrupted='the outputs of the finished steps stay in '
             'the work dir; rerunning starts over')
