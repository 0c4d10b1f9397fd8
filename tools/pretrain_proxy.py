"""Pretrain a config's backbone on the synthetic proxy tasks (which object
types are present, how many and where, and the image rotation) and save it
as a torchvision-format ResNet checkpoint for tools/convert_to_rc.py.

    python tools/pretrain_proxy.py CONFIG --data-root D --out FILE.pth
        [--split pretrain] [--val-split val] [--size 96] [--iters 300]
        [--batch-size 16] [--lr 0.05] [--weight-decay 1e-4] [--warmup 0]
        [--min-area 0.35] [--grid 3] [--no-objects] [--seed 0]
        [--state FILE --save-interval N] [--asset FILE.safetensors]
        [--keep-dilation] [--cfg-options ...]

The backbone is trained at output stride 32 (the config's dilated stages
strided instead; same weights) unless --keep-dilation. With --state, a
resumable training state is written every --save-interval iterations and
a rerun with the same options continues from it. --asset also writes the
backbone in float16 safetensors (the file shipped in assets/, see
docs/demo.md). Threads: torch's default; set OMP_NUM_THREADS=1 to share
the machine.

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted
(FILE is not written: it is saved only at the end; --state keeps the last
saved iteration).
"""
import shlex
import sys

from _common import load, make_parser, run


def main():
    from mmengine.config import DictAction
    parser = make_parser(__doc__)
    parser.add_argument('config', help='config whose model.backbone to train')
    parser.add_argument('--data-root', required=True,
                        help='synthetic dataset root '
                             '(tools/make_synthetic.py)')
    parser.add_argument('--out', required=True, help='output .pth')
    parser.add_argument('--split', default='pretrain')
    parser.add_argument('--val-split',
                        help='report proxy accuracies on this split at the '
                             'end (e.g. val)')
    parser.add_argument('--size', type=int, default=96,
                        help='training crop side')
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=0.05,
                        help='peak learning rate (cosine decay to 0)')
    parser.add_argument('--weight-decay', type=float, default=1e-4)
    parser.add_argument('--warmup', type=int, default=0,
                        help='linear warm-up iterations')
    parser.add_argument('--min-area', type=float, default=0.35,
                        help='least random-crop area (1: no cropping)')
    parser.add_argument('--grid', type=int, default=3,
                        help='cells per side of the position task')
    parser.add_argument('--no-objects', action='store_true',
                        help='presence and rotation only (no count and '
                             'position tasks)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--state', help='resumable training state file')
    parser.add_argument('--save-interval', type=int, default=500,
                        help='iterations between --state writes')
    parser.add_argument('--log-interval', type=int, default=50)
    parser.add_argument('--asset',
                        help='also write the backbone as float16 '
                             'safetensors here')
    parser.add_argument('--keep-dilation', action='store_true',
                        help="train the config's backbone as it is "
                             '(dilated), not at output stride 32')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()
    import torch
    from mmseg.registry import MODELS

    from rc_adapter.demo.pretrain import (classification_backbone_cfg,
                                          pretrain_proxy, save_backbone_asset)
    from rc_adapter.mmseg.models.utils import quiet_init_weights
    torch.manual_seed(args.seed)  # the backbone's random init too
    cfg = load(args)
    backbone_cfg = dict(cfg.model.backbone)
    backbone_cfg.pop('init_cfg', None)
    if not args.keep_dilation:
        backbone_cfg = classification_backbone_cfg(backbone_cfg)
    backbone = MODELS.build(backbone_cfg)
    quiet_init_weights(backbone)
    stats = pretrain_proxy(
        backbone, args.data_root, args.out, split=args.split,
        val_split=args.val_split, size=args.size, iters=args.iters,
        batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup,
        min_area=args.min_area, objects=not args.no_objects, grid=args.grid,
        seed=args.seed, state_path=args.state,
        save_interval=args.save_interval if args.state else 0,
        log_interval=args.log_interval,
        log=lambda line: print(line, flush=True))
    print(f'wrote {args.out}: {stats["total_seconds"]:.0f}s, final loss '
          f'{stats["final_loss"]:.3f}, proxy train accuracy '
          f'{100 * stats["train_accuracy"]:.1f}%', flush=True)
    if args.asset:
        from rc_adapter.mmseg.checkpoint import load_state_dict_file
        command = 'python tools/pretrain_proxy.py ' + shlex.join(sys.argv[1:])
        digest = save_backbone_asset(
            load_state_dict_file(args.out), args.asset,
            metadata=dict(format='torchvision ResNet backbone, float16',
                          command=command, iters=str(stats['iters']),
                          seconds=f'{stats["total_seconds"]:.0f}'))
        print(f'wrote {args.asset}: sha256 {digest}', flush=True)


if __name__ == '__main__':
    run(main, interrupted='the checkpoint was not written (it is saved only '
        'at the end; --state keeps the last saved iteration)')
