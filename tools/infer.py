"""Predict every task of a task bank on your own pictures and draw them.

    python tools/infer.py IMG_OR_DIR --bank BANK CONFIG [--out-dir D]
        [--tasks T ...] [--show] [--wait-time S] [--no-raw]
        [--device cpu] [--data-root D] [--cfg-options ...]
    python tools/infer.py IMG_OR_DIR --checkpoint CKPT CONFIG --out-dir D

Writes one picture per input (default D: work_dirs/infer/<config name>;
D/<name>.png: the input and each task's
prediction with its colour map and legend) and the raw encodings of every
prediction (D/raw/<field>/<name>.png). A folder is read recursively; the
pictures keep their relative paths.

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted
(D holds the pictures finished so far).
"""
import os

from _common import (add_common_args, add_model_source_args, load,
                     make_parser, run)


def main():
    parser = make_parser(__doc__)
    parser.add_argument('source', help='a picture or a folder of pictures')
    parser.add_argument('config', help='rc_adapter mmseg config')
    add_model_source_args(parser, 'predict')
    parser.add_argument('--out-dir', help='folder for the pictures '
                        '(default work_dirs/infer/<config name>)')
    parser.add_argument('--show', action='store_true',
                        help='show each picture in a window')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each shown picture stays (--show)')
    parser.add_argument('--no-raw', action='store_true',
                        help='do not write the raw encodings')
    parser.add_argument('--device', default='cpu', help='torch device')
    add_common_args(parser, launcher=False, work_dir=False)
    args = parser.parse_args()
    from rc_adapter.mmseg.apis import infer
    cfg = load(args)
    out_dir = args.out_dir or os.path.join(
        'work_dirs', 'infer',
        os.path.splitext(os.path.basename(args.config))[0])
    written = infer(cfg, args.source, out_dir=out_dir, bank=args.bank,
                    checkpoint=args.checkpoint, tasks=args.tasks,
                    show=args.show, wait_time=args.wait_time,
                    raw=not args.no_raw, device=args.device)
    print(f'wrote {len(written)} picture(s) to {out_dir}')


if __name__ == '__main__':
    run(main, interrupted='the output folder holds the pictures finished so '
        'far')
