"""Train one new task into a task bank without touching the others.

    python tools/add_task.py CONFIG --bank BANK --task NAME [--replace]
        [--work-dir D] [--data-root D] [--launcher pytorch] [--cfg-options ...]

The task starts from the bank's base state (pretrained or RI), trains alone,
and is written to BANK/tasks/NAME.safetensors with its validation metrics in
the manifest. Under DDP only rank 0 writes.
"""
import argparse

from _common import add_common_args, load


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='rc_adapter mmseg config')
    parser.add_argument('--bank', required=True, help='task bank folder')
    parser.add_argument('--task', required=True, help='task to train')
    parser.add_argument('--replace', action='store_true',
                        help='retrain a task the bank already holds')
    add_common_args(parser)
    args = parser.parse_args()
    import rc_adapter  # noqa: F401
    from mmengine.dist import is_main_process
    from rc_adapter.mmseg.apis import add_task
    cfg = load(args)
    metrics = add_task(cfg, bank=args.bank, task=args.task,
                       replace=args.replace, config_path=args.config)
    if is_main_process():
        print(f'{args.task}: ' + ', '.join(f'{k}={v:.4g}'
                                           for k, v in metrics.items()))


if __name__ == '__main__':
    from rc_adapter.mmseg.apis import run_cli
    run_cli(main)
