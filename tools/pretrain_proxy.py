"""Pretrain a config's backbone on the synthetic proxy task (which object
types are present, and the image rotation) and save it as a
torchvision-format ResNet checkpoint for tools/convert_to_rc.py.

    python tools/pretrain_proxy.py CONFIG --data-root D --out FILE.pth
        [--split pretrain] [--size 96] [--iters 300] [--batch-size 16]
        [--lr 0.05] [--seed 0] [--cfg-options ...]

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted
(FILE is not written: it is saved only at the end).
"""
from _common import load, make_parser, run


def main():
    from mmengine.config import DictAction
    parser = make_parser(__doc__)
    parser.add_argument('config', help='config whose model.backbone to train')
    parser.add_argument('--data-root', required=True,
                        help='synthetic dataset root (tools/make_synthetic.py)')
    parser.add_argument('--out', required=True, help='output .pth')
    parser.add_argument('--split', default='pretrain')
    parser.add_argument('--size', type=int, default=96)
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()
    import torch
    from mmseg.registry import MODELS

    from rc_adapter.demo.pretrain import pretrain_proxy
    from rc_adapter.mmseg.models.utils import quiet_init_weights
    torch.manual_seed(args.seed)  # the backbone's random init too
    cfg = load(args)
    backbone_cfg = dict(cfg.model.backbone)
    backbone_cfg.pop('init_cfg', None)
    backbone = MODELS.build(backbone_cfg)
    quiet_init_weights(backbone)
    stats = pretrain_proxy(backbone, args.data_root, args.out,
                           split=args.split, size=args.size,
                           iters=args.iters, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed)
    print(f'wrote {args.out}: {stats["seconds"]:.0f}s, final loss '
          f'{stats["final_loss"]:.3f}, proxy train accuracy '
          f'{100 * stats["train_accuracy"]:.1f}%')


if __name__ == '__main__':
    run(main, interrupted='the checkpoint was not written (it is saved only '
        'at the end)')
