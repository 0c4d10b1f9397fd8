"""Train a config's tasks; with --bank, from the bank's base state, storing
every trained task in the bank.

    python tools/train.py CONFIG [--bank BANK] [--work-dir D] [--data-root D]
        [--launcher pytorch] [--resume] [--cfg-options ...]
"""
import argparse

from _common import add_common_args, load


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='rc_adapter mmseg config')
    parser.add_argument('--bank', help='task bank (tools/convert_to_rc.py); '
                        'each trained task is written to it')
    parser.add_argument('--replace', action='store_true',
                        help='overwrite tasks already in the bank')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in work-dir')
    add_common_args(parser)
    args = parser.parse_args()
    import rc_adapter  # noqa: F401
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
    from rc_adapter.mmseg.apis import run_cli
    run_cli(main)
