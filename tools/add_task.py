"""Train one new task into a task bank without touching the others.

    python tools/add_task.py CONFIG --bank BANK --task NAME [--replace]
        [--init-from TASK|auto] [--resume] [--amp] [--work-dir D]
        [--data-root D] [--launcher pytorch] [--cfg-options ...]

The task starts from the bank's base state (pretrained or RI) or, with
--init-from, from a stored task's tensors (auto: the stored task whose
start gives the lowest loss after a few steps on this task's training
data), trains alone, and is written to BANK/tasks/ with its validation
metrics and where it started in the manifest. The config's task_schedules
entry for the task sets its schedule (--cfg-options win). Under DDP only
rank 0 writes.

Before the first iteration it checks the annotations of the splits and
that the bank is writable with room for the task; a non-finite loss stops
the run; nothing reaches the bank unless the run finished well.

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted (the
bank is unchanged unless a "wrote task" line was printed).
"""
from _common import add_common_args, load, make_parser, run


def main():
    parser = make_parser(__doc__)
    parser.add_argument('config', help='rc_adapter mmseg config')
    parser.add_argument('--bank', required=True, help='task bank folder')
    parser.add_argument('--task', required=True, help='task to train')
    parser.add_argument('--replace', action='store_true',
                        help='retrain a task the bank already holds')
    parser.add_argument('--init-from', metavar='TASK|auto',
                        help='start from a stored task\'s tensors (auto: '
                        'the best-scoring stored task, or the base state)')
    add_common_args(parser)
    args = parser.parse_args()
    from mmengine.dist import is_main_process

    from rc_adapter.mmseg.apis import train_task
    cfg = load(args)
    metrics = train_task(cfg, bank=args.bank, task=args.task,
                         replace=args.replace, resume=args.resume,
                         config_path=args.config, init_from=args.init_from,
                         overrides=args.cfg_options)
    if is_main_process():
        print(f'{args.task}: ' + ', '.join(f'{k}={v:.4g}'
                                           for k, v in metrics.items()))


if __name__ == '__main__':
    run(main, interrupted='the bank is unchanged unless a "wrote task" line '
        'was printed (task files and the manifest are replaced atomically); '
        'the work dir may hold checkpoints of the run (--resume continues)')
