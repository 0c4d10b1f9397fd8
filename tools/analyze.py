"""The paper's two analyses on your own task bank: model size against the
number of tasks, and representation similarity between tasks (RSA).

    python tools/analyze.py size CONFIG --bank BANK [--tasks T ...]
        [--tasks-up-to N] [--out-dir D] [--data-root D] [--cfg-options ...]
    python tools/analyze.py rsa CONFIG --bank BANK [--tasks T ...]
        [--images N] [--layers L ...] [--grid G]
        [--baseline-checkpoint CKPT] [--baseline-config CFG]
        [--finetune-checkpoint TASK=CKPT ...] [--out-dir D]
        [--data-root D] [--cfg-options ...]

size: the RC bank (shared file + each task's file) against independent
fine-tuned models (N x (backbone + the task's decoder)) and the shared
multi-task baseline (one backbone + N decoders), for 1..N tasks, counting
parameters and buffers from the bank's real tensors; tasks past the bank's
are extrapolated with the mean task. Writes model_size.{md,json,png}.

rsa: N validation images through the encoder as each task sees it; per
layer, each task's representational dissimilarity matrix (1 - Pearson
correlation between images' pooled features) and the Spearman correlation
between tasks' matrices. With --baseline-checkpoint the shared multi-task
baseline is analysed too (one encoder for every task: similarity 1), with
--finetune-checkpoint single-task fine-tuned models. Writes rsa.json,
rsa_heatmaps.png and rsa_layers.png.

See docs/analysis.md. Exit status: 0 success, 1 bug (traceback), 2 an error
you can fix (one paragraph), 3 the machine refused (file, disk, memory),
130 interrupted (each output file is written whole or not at all).
"""
import argparse

from _common import add_common_args, load, make_parser, run


def _task_checkpoint(text):
    task, sep, path = text.partition('=')
    if not sep or not task or not path:
        raise argparse.ArgumentTypeError(
            f'expected TASK=CHECKPOINT, got {text!r}')
    return task, path


def _parser():
    parser = make_parser(__doc__)
    commands = parser.add_subparsers(dest='command', required=True,
                                     metavar='{size,rsa}')
    size = commands.add_parser(
        'size', help='model size against the number of tasks',
        description='Model size of the RC bank, independent fine-tuned '
        'models and the shared multi-task baseline for 1..N tasks.')
    rsa = commands.add_parser(
        'rsa', help='representation similarity between tasks, per layer',
        description='Representation similarity analysis (RSA) between the '
        'bank\'s tasks, per layer, optionally beside the shared multi-task '
        'baseline and single-task fine-tuned models.')
    for sub in (size, rsa):
        sub.add_argument('config', help='rc_adapter mmseg config the bank '
                         'was made with')
        sub.add_argument('--bank', required=True, help='task bank folder')
        sub.add_argument('--tasks', nargs='+', help='tasks to analyse '
                         '(default: every bank task the config has a head '
                         'for)')
        sub.add_argument('--out-dir', help='output folder (default '
                         'work_dirs/analysis/<config name>)')
        add_common_args(sub, launcher=False, work_dir=False)
    size.add_argument('--tasks-up-to', type=int, help='largest number of '
                      'tasks in the table (default: 10, or the bank\'s '
                      'task count if larger)')
    rsa.add_argument('--images', type=int, default=50,
                     help='validation images, spread evenly over the split '
                     '(default 50, at least 3)')
    rsa.add_argument('--layers', nargs='+', help='module names inside the '
                     'backbone (default: its stages, layer1 ... layer4)')
    rsa.add_argument('--grid', type=int, default=4,
                     help='average-pool each feature map to GxG cells before '
                     'correlating (default 4; 1 = global average pooling)')
    rsa.add_argument('--baseline-checkpoint', help='checkpoint of the shared '
                     'multi-task baseline (tools/train.py on '
                     'mmseg_configs/shared_*.py)')
    rsa.add_argument('--baseline-config', help='config of the baselines '
                     '(default: CONFIG; model.baseline is set here)')
    rsa.add_argument('--finetune-checkpoint', action='append',
                     type=_task_checkpoint, metavar='TASK=CKPT',
                     help='checkpoint of a single-task fine-tuned model '
                     '(finetune_*.py); repeat per task')
    return parser


def _size(args, cfg, out_dir):
    from rc_adapter.mmseg.analysis import (model_size_table,
                                           write_size_report)
    from rc_adapter.mmseg.analysis.size import (format_size_table,
                                                size_summary)
    table = model_size_table(cfg, args.bank, tasks=args.tasks,
                             tasks_up_to=args.tasks_up_to)
    files = write_size_report(table, out_dir)
    print(format_size_table(table))
    print()
    print(size_summary(table))
    print('wrote ' + ', '.join(files.values()))


def _rsa(args, cfg, out_dir):
    from rc_adapter.mmseg.analysis import rsa, write_rsa_report
    from rc_adapter.mmseg.apis import load_config
    baseline_cfg = None
    if args.baseline_config:
        baseline_cfg = load_config(args.baseline_config)
    finetune = dict(args.finetune_checkpoint or [])
    result = rsa(cfg, args.bank, tasks=args.tasks, images=args.images,
                 layers=args.layers, grid=args.grid,
                 baseline_checkpoint=args.baseline_checkpoint,
                 baseline_cfg=baseline_cfg, finetune_checkpoints=finetune)
    files = write_rsa_report(result, out_dir)
    for model, entry in result['models'].items():
        means = ', '.join(
            f'{layer} {value:.2f}' if value is not None else f'{layer} -'
            for layer, value in entry['mean_pairwise'].items())
        print(f'{model}: mean task-pair similarity per layer: {means}')
    print('wrote ' + ', '.join(files.values()))


def main():
    args = _parser().parse_args()
    from rc_adapter.mmseg.analysis import check_out_dir, default_out_dir
    cfg = load(args)
    out_dir = args.out_dir or default_out_dir(args.config)
    checkpoints = {}
    if args.command == 'rsa':
        if args.baseline_checkpoint:
            checkpoints['the baseline checkpoint'] = args.baseline_checkpoint
        for task, path in args.finetune_checkpoint or []:
            checkpoints[f'the {task} checkpoint'] = path
    check_out_dir(cfg, out_dir, bank=args.bank, checkpoints=checkpoints)
    (_size if args.command == 'size' else _rsa)(args, cfg, out_dir)


if __name__ == '__main__':
    run(main, interrupted='outputs already written are complete; the rest '
        'were not written')
