"""Render the synthetic multi-task benchmark in the NYUD_MT or PASCAL_MT
on-disk layout.

Example::

    python tools/make_synthetic.py --layout nyud --out data/syn_nyud \
        --num-train 200 --num-val 50 --size 128 128 --seed 0 \
        --preview syn_nyud.png

The dataset is written to a temporary folder and renamed to OUT at the end;
a rerun with the same parameters does nothing (OUT is current).

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph), 3 the machine refused (file, disk, memory), 130 interrupted (OUT
is unchanged).
"""
import argparse
import sys
import time

from rc_adapter.synthetic import LAYOUTS, generate, is_current


def _split_arg(text):
    name, _, n = text.partition(':')
    if not name or not n.isdigit():
        raise argparse.ArgumentTypeError(
            f'expected NAME:COUNT (e.g. pretrain:500), got {text!r}')
    return name, int(n)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='exit status: see the module docstring and docs/tools.md')
    p.add_argument('--layout', choices=LAYOUTS, required=True)
    p.add_argument('--out', required=True, help='dataset root to create')
    p.add_argument('--num-train', type=int, default=100)
    p.add_argument('--num-val', type=int, default=20)
    p.add_argument('--size', type=int, nargs=2, default=(128, 128),
                   metavar=('H', 'W'))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--extra-split', type=_split_arg, action='append',
                   default=[], metavar='NAME:COUNT',
                   help='another split with its own images, e.g. '
                        'pretrain:500 (repeatable)')
    p.add_argument('--p-no-figure', type=float, default=0.3)
    p.add_argument('--p-unannotated-figure', type=float, default=0.0)
    p.add_argument('--preview', help='write a PNG contact sheet here')
    p.add_argument('--force', action='store_true',
                   help='regenerate even if OUT is current')
    a = p.parse_args(argv)
    kw = dict(layout=a.layout, num_train=a.num_train, num_val=a.num_val,
              size=tuple(a.size), seed=a.seed,
              extra_splits=dict(a.extra_split),
              p_no_figure=a.p_no_figure,
              p_unannotated_figure=a.p_unannotated_figure)
    if not a.force and not a.preview and is_current(a.out, **kw):
        print(f'{a.out} is up to date (same parameters); nothing to do')
        return 0
    t0 = time.time()

    def progress(done, total):
        if done == total or done % 50 == 0:
            rate = done / max(time.time() - t0, 1e-9)
            sys.stderr.write(f'\r[{done}/{total}] {rate:.0f} img/s')
            if done == total:
                sys.stderr.write('\n')
            sys.stderr.flush()

    res = generate(out=a.out, preview=a.preview, progress=progress, **kw)
    counts = ', '.join(f'{k} {len(v)}' for k, v in res['splits'].items())
    print(f'wrote {a.out} ({a.layout}: {counts}) in {res["seconds"]:.1f} s')
    if a.preview:
        print(f'preview: {a.preview}')
    return 0


if __name__ == '__main__':
    from _common import run  # tools/ is on sys.path when run as a script
    run(main, interrupted='OUT is unchanged (the dataset is renamed into '
        'place only when complete)')
