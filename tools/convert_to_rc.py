"""Convert a pretrained checkpoint into an RC task bank.

    python tools/convert_to_rc.py CONFIG CHECKPOINT --out BANK \\
        [--data-root D] [--calib-dir DIR] [--calib-images N] \\
        [--calib-size H W] [--batch-size B] [--no-ri] [--force] \\
        [--threads T] [--cfg-options ...]

Builds the config's plain backbone, loads CHECKPOINT weights-only
(torchvision/timm .pth, .safetensors or an mmseg/mmengine checkpoint), runs
Response Initialization on calibration images and writes BANK (manifest,
shared.safetensors, no tasks). RI options come from the config's
``convert_cfg = dict(ri=True, calib_images=256, calib_size=(224, 224))``;
the flags override it. Calibration images are never validation images:
without --calib-dir they are the train split of the config's train dataset
(at --data-root or the config's data_root); --calib-dir pointed at a dataset
root (or its image folder) uses its train split; any other folder is used
whole. The manifest records which images were used.

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted
(nothing is written: the bank is renamed into place only when complete).
"""
from _common import add_common_args, load, make_parser, run


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('config', help='mmseg config (model.backbone, '
                        'model.rc_cfg, model.data_preprocessor, convert_cfg)')
    parser.add_argument('checkpoint', help='torchvision/timm .pth, '
                        '.safetensors or mmseg/mmengine checkpoint')
    parser.add_argument('--out', required=True, help='bank folder to create')
    parser.add_argument('--calib-dir', help='calibration images: a dataset '
                        'root (its train split), or a folder of .jpg/.png '
                        'images (searched recursively); default: the train '
                        'split of the config\'s dataset')
    parser.add_argument('--calib-images', type=int,
                        help='use at most N images (default: '
                        'convert_cfg.calib_images, 256)')
    parser.add_argument('--calib-size', type=int, nargs=2,
                        metavar=('H', 'W'),
                        help='calibration crop size (default: '
                        'convert_cfg.calib_size, 224 224: shorter side '
                        'resized, centre crop)')
    parser.add_argument('--batch-size', type=int, default=16,
                        help='calibration batch size (default %(default)s)')
    parser.add_argument('--no-ri', action='store_true',
                        help='skip Response Initialization (identity init)')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing bank at --out')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads')
    add_common_args(parser, launcher=False, work_dir=False)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from rc_adapter.mmseg.apis.config import (check_outputs,
                                              protected_inputs)
    from rc_adapter.mmseg.convert import convert_checkpoint
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load(args, require_rc_model=False)
    # --force may replace an existing bank at --out, never the inputs.
    check_outputs({'--out': args.out}, protected_inputs(
        cfg, config_path=args.config, checkpoint=args.checkpoint,
        extra={'the calibration images': args.calib_dir}))
    convert_checkpoint(cfg, args.checkpoint, args.out,
                       calib_dir=args.calib_dir,
                       calib_images=args.calib_images,
                       calib_size=args.calib_size,
                       batch_size=args.batch_size,
                       ri=False if args.no_ri else None, force=args.force)


if __name__ == '__main__':
    run(main, interrupted='nothing was written (the bank is built in a '
        'temporary folder and renamed into place only when complete)')
