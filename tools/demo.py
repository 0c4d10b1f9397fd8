"""`make demo`: incremental multi-task learning on the embedded benchmark.

RC (a frozen filter bank with per-task modulators, RI + NFF) against a
plain network fine-tuned task after task and against one fine-tuned
network per task, on the synthetic NYUD-layout benchmark, in one process
(rc_adapter.demo.incremental; each stage calls the library function its
tool calls and prints that tool command):

1. the synthetic benchmark in --data-root (reused when present);
2. the shipped backbone assets/r18_half_proxy.safetensors (--pretrain N:
   proxy-pretrain one from scratch for N iterations instead);
3. the task bank with Response Initialization (tools/convert_to_rc.py);
4. semseg, depth, normals, edge added one after another
   (tools/add_task.py), the bank evaluated after each (tools/test.py) and
   the earlier tasks checked bit-identical;
5. sequential and single-task fine-tuning (tools/train.py);
6. RSA between tasks and model size against the number of tasks
   (tools/analyze.py);
7. WORK_DIR/{results.json, report.md, stages.png, predictions_*.png,
   analysis/, demo.log}; with --publish DIR a copy of the report, results
   and pictures as DIR/demo_*.

    python tools/demo.py [--work-dir work_dirs/demo] [--data-root D]
        [--pretrain N] [--threads 2] [--seed 0] [--publish docs] [--quick]

Exit status: 0 success, 1 bug (traceback; an earlier RC task that changed
is one), 2 an error you can fix (one paragraph), 3 the machine refused
(file, disk, memory), 130 interrupted (finished stages' outputs stay in the
work dir; a rerun starts over, reusing the data).
"""
import os.path as osp

from _common import make_parser

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('--work-dir', default='work_dirs/demo',
                        help='outputs (default %(default)s)')
    parser.add_argument('--data-root', default='data/synthetic_nyud_demo',
                        help='the synthetic benchmark, generated when '
                        'absent or different (default %(default)s)')
    parser.add_argument('--pretrain', type=int, metavar='N',
                        help='proxy-pretrain the backbone from scratch for N '
                        'iterations (tools/pretrain_proxy.py; 300 is its '
                        'default) instead of using the shipped asset')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch CPU threads (default %(default)s)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of every training run (default '
                        '%(default)s)')
    parser.add_argument('--publish', metavar='DIR',
                        help='also copy report, results and pictures to '
                        'DIR/demo_* (e.g. docs)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny data and a few iterations per task: a '
                        'smoke test of the whole workflow, not a result')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from rc_adapter.demo import pipeline as P
    from rc_adapter.demo.incremental import run_demo
    quick = args.quick
    data_params = P.QUICK_DATA if quick else P.DATA
    schedules = P.QUICK_SCHEDULES if quick else P.DEFAULT_SCHEDULES
    size = data_params['size']
    setup = (
        f'Synthetic NYUD layout: {data_params["num_train"]} train / '
        f'{data_params["num_val"]} val images at {size[0]}×{size[1]}; '
        f'ResNet-18 at half width with 64-channel DeepLabv3+ heads '
        f'(`mmseg_configs/rc_r18_synthetic_nyud.py`), '
        + ('the shipped proxy-pretrained backbone '
           '(`assets/r18_half_proxy.safetensors`)' if args.pretrain is None
           else f'a backbone proxy-pretrained from scratch for '
                f'{args.pretrain} iterations')
        + '; per task: ' + ', '.join(
            f'{t} {s.iters} iterations at lr {s.lr:g}'
            for t, s in schedules['rc'].items())
        + ' (RC), ' + ', '.join(
            f'{t} {s.iters} at lr {s.lr:g}'
            for t, s in schedules['finetune'].items())
        + f' (fine-tuning); batch {2 if quick else 8}, seed {args.seed}, '
        f'{args.threads} CPU thread(s).'
        + (' **--quick: a smoke test, not a result.**' if quick else ''))
    run_demo(osp.join(ROOT, args.work_dir) if not osp.isabs(args.work_dir)
             else args.work_dir,
             osp.join(ROOT, args.data_root) if not osp.isabs(args.data_root)
             else args.data_root,
             schedules=schedules, data_params=data_params,
             threads=args.threads, seed=args.seed,
             pretrain_iters=args.pretrain,
             calib_size=(64, 64) if quick else None,
             probe_images=1 if quick else 2,
             run_options={'train_dataloader.batch_size': 2} if quick
             else None,
             publish=(osp.join(ROOT, args.publish)
                      if args.publish and not osp.isabs(args.publish)
                      else args.publish),
             setup_note=setup)


# -- kept for tools/ablation.py, which still runs the tools as processes
# (its move to rc_adapter.demo.pipeline's in-process stages is pending) ------
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

TASKS = ['semseg', 'depth', 'normals', 'edge']
RC_CONFIG = 'mmseg_configs/rc_r18_synthetic_nyud.py'
FT_CONFIG = 'mmseg_configs/finetune_r18_synthetic_nyud.py'
DATA = dict(layout='nyud', num_train=200, num_val=30, size=(128, 128),
            seed=0, extra_splits={'pretrain': 300})


def run(step, args, times, log_path):
    """Runs one tool as a process, logging its output; exits with the
    tool's status when it fails."""
    print(f'\n=== {step}: {" ".join(args)}', flush=True)
    start = time.time()
    with open(log_path, 'a') as log:
        log.write(f'\n=== {step}: {" ".join(args)}\n')
        log.flush()
        code = subprocess.call([sys.executable] + args, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
    times[step] = time.time() - start
    if code != 0:
        print(f'step "{step}" failed (exit {code}); see {log_path}',
              file=sys.stderr)
        sys.exit(code)
    print(f'    ({times[step]:.0f}s)', flush=True)


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
    pretrained = os.path.join(work, 'pretrained_r18_half.pth')
    run('pretrain (proxy task)', [
        'tools/pretrain_proxy.py', RC_CONFIG, '--data-root', data, '--out',
        pretrained, '--iters', str(iters)], times, log_path)
    return pretrained


def _load(path):
    with open(path) as f:
        return json.load(f)


if __name__ == '__main__':
    from _common import run as run_cli
    run_cli(main, interrupted='the finished stages\' outputs stay in the work '
        'dir; a rerun starts over (reusing the data)')
