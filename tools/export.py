"""Merge one task of a bank into a plain network and save it.

    python tools/export.py CONFIG --bank BANK --task NAME --out FILE.{pth,onnx}
        [--input-size H W] [--data-root D] [--cfg-options ...]

The merged network has plain convs and norms (the original architecture);
the tool checks its outputs against the RC model and prints the max |Δ|.

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted
(--out is not written: it is renamed into place only when complete).
"""
from _common import add_common_args, load, make_parser, run


def main():
    parser = make_parser(__doc__)
    parser.add_argument('config', help='rc_adapter mmseg config')
    parser.add_argument('--bank', required=True, help='task bank folder')
    parser.add_argument('--task', required=True, help='task to export')
    parser.add_argument('--out', required=True,
                        help='output file, .pth (state dict + config) or '
                        '.onnx')
    parser.add_argument('--input-size', nargs=2, type=int,
                        default=[256, 256], metavar=('H', 'W'),
                        help='input size of the parity check and ONNX trace')
    add_common_args(parser, launcher=False, work_dir=False)
    args = parser.parse_args()
    from rc_adapter.mmseg.apis import export_task
    cfg = load(args)
    max_diff = export_task(cfg, bank=args.bank, task=args.task, out=args.out,
                           input_size=tuple(args.input_size))
    print(f'exported task {args.task!r} to {args.out}; parity with the RC '
          f'model: max |Δ| = {max_diff:.3g}')


if __name__ == '__main__':
    run(main, interrupted='--out was not written (it is renamed into place '
        'only when complete)')
