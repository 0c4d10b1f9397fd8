"""Train a config's tasks; with --bank, from the bank's base state, storing
every trained task in the bank.

    python tools/train.py CONFIG [--bank BANK] [--replace] [--resume]
        [--amp] [--work-dir D] [--data-root D] [--launcher pytorch]
        [--cfg-options ...]

Without --bank this trains the config's model as it is: the baselines
(``model.baseline='finetune'`` or ``'shared'``) or an RC model from its
backbone's own weights, with mmengine checkpoints in the work dir. --amp
trains in mixed precision (bfloat16 on a CPU, float16 on a GPU).

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted (the
bank holds only the tasks reported as written; the work dir may hold
checkpoints, --resume continues).
"""
from _common import add_common_args, load, make_parser, run


def main():
    parser = make_parser(__doc__)
    parser.add_argument('config', help='rc_adapter mmseg config')
    parser.add_argument('--bank', help='task bank (tools/convert_to_rc.py); '
                        'each trained task is written to it')
    parser.add_argument('--replace', action='store_true',
                        help='overwrite tasks already in the bank')
    add_common_args(parser)
    args = parser.parse_args()
    from mmengine.dist import is_main_process

    from rc_adapter.mmseg.apis import train
    cfg = load(args)
    metrics = train(cfg, bank=args.bank, resume=args.resume,
                    replace=args.replace, config_path=args.config)
    for task, values in metrics.items():
        if not is_main_process():
            break
        print(f'{task}: ' + ', '.join(f'{k}={v:.4g}'
                                      for k, v in values.items()))


if __name__ == '__main__':
    run(main, interrupted='the bank holds only the tasks reported as '
        'written (writes are atomic); the work dir may hold checkpoints of '
        'the run (--resume continues)')
