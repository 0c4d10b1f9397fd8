"""Merge one task of a bank into a plain network that mmseg loads.

    python tools/export.py CONFIG --bank BANK --task NAME --out FILE.{pth,onnx}
        [--input-size H W] [--data-root D] [--cfg-options ...]

FILE.pth comes with FILE.py, a config with test_pipeline and dataset_meta
that runs under mmseg's init_model / inference_model. Every component is a
stock mmseg type where one computes the same function (checked); the
config's first lines name any rc_adapter type kept and why. The merged
network has plain convs and norms (the original architecture); the tool
checks its outputs against the RC model and prints the max |Δ|.

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
                        help='output file, .pth (state dict + config .py '
                        'beside it) or .onnx')
    parser.add_argument('--input-size', nargs=2, type=int,
                        default=[256, 256], metavar=('H', 'W'),
                        help='input size of the parity checks and ONNX '
                        'trace')
    add_common_args(parser, launcher=False, work_dir=False)
    args = parser.parse_args()
    from rc_adapter.mmseg.apis import export_task
    cfg = load(args)
    result = export_task(cfg, bank=args.bank, task=args.task, out=args.out,
                         input_size=tuple(args.input_size))
    written = args.out + (f' and {result.config}' if result.config else '')
    print(f'exported task {args.task!r} to {written}; parity with the RC '
          f'model: max |Δ| = {result.max_abs_diff:.3g}')
    print('types: ' + ', '.join(f'{k}={v}' for k, v in
                                result.types.items()))
    if result.onnx_input_size:
        print(f'note: the ONNX graph takes only '
              f'{result.onnx_input_size[0]}x{result.onnx_input_size[1]} '
              f'images (the exporter fixes the sizes of attention / '
              f'pooling layers); export again with --input-size H W for '
              f'another size')
    if result.stock_only:
        print('every type is a stock mmseg type: the export loads without '
              'rc_adapter')
    else:
        print('rc_adapter types kept (the config imports rc_adapter):')
        for component, why in result.plugin.items():
            print(f'  {component}: {why}')


if __name__ == '__main__':
    run(main, interrupted='--out was not written (it is renamed into place '
        'only when complete)')
