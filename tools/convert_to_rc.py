"""Convert a pretrained checkpoint into an RC task bank.

    python tools/convert_to_rc.py CONFIG CHECKPOINT --out BANK \\
        [--calib-dir DIR] [--calib-images N] [--calib-size H W] \\
        [--batch-size B] [--no-ri] [--force]

Builds the config's plain backbone, loads CHECKPOINT weights-only
(torchvision/timm .pth, .safetensors or an mmseg/mmengine checkpoint), runs
Response Initialization on the calibration images and writes BANK (manifest,
shared.safetensors, no tasks). Exit status: 0 on success, 2 for usage
errors (e.g. RI without --calib-dir), 1 for other errors.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from mmengine.config import DictAction

    from rc_adapter.mmseg.convert import (DEFAULT_CALIB_IMAGES,
                                          DEFAULT_CALIB_SIZE)
    parser = argparse.ArgumentParser(
        description='Convert a pretrained checkpoint into an RC task bank '
                    '(Response Initialization on calibration images).')
    parser.add_argument('config', help='mmseg config (model.backbone, '
                        'model.rc_cfg, model.data_preprocessor)')
    parser.add_argument('checkpoint', help='torchvision/timm .pth, '
                        '.safetensors or mmseg/mmengine checkpoint')
    parser.add_argument('--out', required=True, help='bank folder to create')
    parser.add_argument('--calib-dir', help='folder of .jpg/.png calibration '
                        'images (searched recursively)')
    parser.add_argument('--calib-images', type=int,
                        default=DEFAULT_CALIB_IMAGES,
                        help='use at most N images (default %(default)s)')
    parser.add_argument('--calib-size', type=int, nargs=2,
                        default=list(DEFAULT_CALIB_SIZE), metavar=('H', 'W'),
                        help='calibration crop size (default 224 224: '
                        'shorter side resized, centre crop)')
    parser.add_argument('--batch-size', type=int, default=16,
                        help='calibration batch size (default %(default)s)')
    parser.add_argument('--no-ri', action='store_true',
                        help='skip Response Initialization (identity init)')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing bank at --out')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. '
                        'model.rc_cfg.nff=False)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from rc_adapter.core.bank import BankError
    from rc_adapter.mmseg.convert import ConversionError, convert_checkpoint
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calib_images < 1 or args.batch_size < 1 or min(
            args.calib_size) < 1:
        print('error: --calib-images, --batch-size and --calib-size must be '
              'positive', file=sys.stderr)
        return 2
    config = args.config
    if args.cfg_options:
        from mmengine.config import Config
        if not os.path.isfile(config):
            print(f'error: config file {config} does not exist',
                  file=sys.stderr)
            return 2
        config = Config.fromfile(config)
        config.merge_from_dict(args.cfg_options)
    try:
        convert_checkpoint(config, args.checkpoint, args.out,
                           calib_dir=args.calib_dir,
                           calib_images=args.calib_images,
                           calib_size=tuple(args.calib_size),
                           batch_size=args.batch_size, ri=not args.no_ri,
                           force=args.force)
    except ConversionError as err:
        print(f'error: {err}', file=sys.stderr)
        return err.exit_code
    except BankError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted; nothing was written', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
