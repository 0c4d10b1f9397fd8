"""Evaluate every task of a task bank (or a trained checkpoint).

    python tools/test.py CONFIG --bank BANK [--tasks T ...] [--data-root D]
        [--out PRED_DIR] [--metrics-out results.json] [--show-dir D]
        [--show] [--wait-time S] [--work-dir D] [--launcher pytorch]
        [--cfg-options ...]
    python tools/test.py CONFIG --checkpoint CKPT [...]   # baselines

Each task's tensors are verified (sha256, filter-bank fingerprint) before
use. Prints one table of metrics, and the multi-task performance drop Δm when
the config has single_task_reference (positive = worse than single-task).
--out writes every prediction as PNG files (as mmseg's --out), --show-dir
one picture per image with each task's ground truth and prediction.

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted (no
metrics file is written; --out and --show-dir may hold some images).
"""
from _common import (add_common_args, add_model_source_args, load,
                     make_parser, run)


def format_table(metrics, delta_m=None):
    """One row per task and metric."""
    rows = [('task', 'metric', 'value')]
    for task, values in metrics.items():
        for name, value in values.items():
            rows.append((task, name, f'{value:.4f}'))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    if delta_m is not None:
        lines.append(f'Δm (vs single-task reference, + = drop): '
                     f'{delta_m:+.2f}%')
    return '\n'.join(lines)


def main():
    parser = make_parser(__doc__)
    parser.add_argument('config', help='rc_adapter mmseg config')
    add_model_source_args(parser, 'evaluate')
    parser.add_argument('--out', help='predictions folder: every task\'s '
                        'prediction of every image as PNG (as mmseg\'s '
                        '--out; a .json file name is the deprecated form '
                        'of --metrics-out)')
    parser.add_argument('--metrics-out', help='write the metrics as JSON')
    parser.add_argument('--show-dir', help='write one picture per image: '
                        'input, ground truth and prediction of each task '
                        '(raw encodings under raw/)')
    parser.add_argument('--show', action='store_true',
                        help='show each picture in a window')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each shown picture stays (--show)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (not supported for '
                        'multi-task models: refused with a message)')
    add_common_args(parser, training=False)
    args = parser.parse_args()
    from mmengine.dist import is_main_process

    from rc_adapter.mmseg.apis import evaluate
    cfg = load(args)
    result = evaluate(cfg, bank=args.bank, tasks=args.tasks,
                      checkpoint=args.checkpoint, out=args.out,
                      metrics_out=args.metrics_out, show_dir=args.show_dir,
                      show=args.show, wait_time=args.wait_time,
                      tta=args.tta)
    if is_main_process():
        print(format_table(result['metrics'], result['delta_m']))


if __name__ == '__main__':
    run(main, interrupted='no metrics file was written; --out and '
        '--show-dir may hold the images evaluated so far')
