"""`make ablation`: the paper's comparison rows on the embedded benchmark,
over several seeds.

Every row trains the four tasks of the synthetic NYUD-layout benchmark from
the shipped proxy-pretrained half-width ResNet-18, once per seed, in this
one process (library: rc_adapter.demo.ablation; docs/ablation.md):
single-task fine-tuning (the Δm reference), the shared encoder, RC, RC+RI,
RC+RI+NFF, series and parallel residual adapters, the modulator families
(low-rank at three ranks, diagonal) and PEFT LoRA at equal per-task budgets
(the LoRA rows need the optional `peft` package: `pip install -e .[bench]`).

Writes WORK/results.json and WORK/report.md (mean ± std over seeds of every
metric and of Δm, which differences exceed the spread, the goals); each
finished (row, seed) is kept in WORK/runs/ and reused by a rerun with the
same settings, so an interrupted run continues where it stopped.
--reuse-results FILE restores the runs of an earlier results.json into
WORK/runs/ where they match the settings and the rows' definitions (every
row not restored is named, with the reason) and runs that file's rows and
seeds unless --rows/--seeds say otherwise; --rerun ROW ... trains those
rows again (docs/ablation.md: re-running only the rows a change affects).

    python tools/ablation.py                      # every row, seeds 0 1 2
    python tools/ablation.py --rows "single-task FT" RC+RI+NFF --seeds 0 1
    python tools/ablation.py --quick              # tiny sizes (smoke test)
    python tools/ablation.py --shard 0/2 & python tools/ablation.py --shard 1/2
    python tools/ablation.py --report-only        # summarise stored runs
    python tools/ablation.py --reuse-results docs/ablation_results.json \\
        --rerun diagonal "RC lowrank at LoRA r=8 budget"   # only those train

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix, 3 the
machine refused, 130 interrupted (finished runs stay in WORK/runs/).
"""
import os.path as osp
import sys

from _common import make_parser

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _shard(text):
    index, _, count = text.partition('/')
    if not (index.isdigit() and count.isdigit()) or \
            not 0 <= int(index) < int(count):
        raise ValueError(f'--shard takes I/N with 0 <= I < N, got {text!r}')
    return int(index), int(count)


def main():
    from rc_adapter.demo import ablation
    parser = make_parser(__doc__)
    parser.add_argument('--work-dir', help='default: work_dirs/ablation '
                        '(work_dirs/ablation_quick with --quick)')
    parser.add_argument('--data-root', help='default: '
                        'data/synthetic_nyud_ablation (…_quick with --quick); '
                        'generated when missing or made with other sizes')
    parser.add_argument('--rows', nargs='+', metavar='ROW',
                        help='rows to run (default: all, or the rows of '
                        'the --reuse-results file; --list-rows)')
    parser.add_argument('--seeds', nargs='+', type=int,
                        help='training seeds (default: 0 1 2; 0 1 with '
                        '--quick; the seeds of the --reuse-results file)')
    parser.add_argument('--iters', type=int,
                        help='iterations per task (default 200)')
    parser.add_argument('--num-val', type=int,
                        help='validation images (default 150)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes: 16 train / 4 val images, 2 '
                        'iterations (a smoke test, not a measurement)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (default 1)')
    parser.add_argument('--shard', type=_shard, default=(0, 1),
                        metavar='I/N', help='run every N-th (row, seed) '
                        'pair starting at I, for N processes sharing one '
                        'work dir')
    parser.add_argument('--keep', action='store_true',
                        help='keep each run\'s banks and logs')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing; summarise the stored runs')
    parser.add_argument('--reuse-results', metavar='FILE',
                        help='restore the matching runs of this '
                        'results.json (e.g. docs/ablation_results.json; '
                        'relative to the repository, like --work-dir) into '
                        'the work dir and reuse them')
    parser.add_argument('--rerun', nargs='+', metavar='ROW', default=[],
                        help='train these rows again (added to --rows): '
                        'none of their runs is restored; their stored runs '
                        'are removed first, except those already trained '
                        'again against the same --reuse-results file')
    parser.add_argument('--list-rows', action='store_true',
                        help='print the rows and exit')
    args = parser.parse_args()
    if args.list_rows:
        for row in ablation.ROWS:
            print(f'{row.name:32s} {row.group:7s} {row.note}')
        return 0
    import dataclasses

    import torch
    torch.set_num_threads(args.threads)
    settings = ablation.QUICK if args.quick else ablation.Settings()
    changes = {k: v for k, v in (('iters', args.iters),
                                 ('num_val', args.num_val)) if v is not None}
    settings = dataclasses.replace(settings, **changes)
    suffix = '_quick' if args.quick else ''
    work = osp.join(ROOT, args.work_dir or f'work_dirs/ablation{suffix}')
    data = osp.join(ROOT, args.data_root or
                    f'data/synthetic_nyud_ablation{suffix}')
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    names = args.rows
    reuse = None
    if args.reuse_results:
        reuse = osp.join(ROOT, args.reuse_results)
        previous = ablation.read_results(reuse)
        if names is None:  # the file's rows (unknown ones are reported)
            known = {r.name for r in ablation.ROWS}
            names = [r['name'] for r in previous['rows']
                     if r['name'] in known]
        if not args.seeds:
            seeds = sorted({run['seed'] for runs in previous['runs'].values()
                            for run in runs}) or seeds
    rerun = [r.name for r in ablation.select_rows(args.rerun)] \
        if args.rerun else []
    if names is not None:
        names = list(names) + [n for n in rerun if n not in names]
    rows = ablation.select_rows(names)

    def log(line):
        print(line, flush=True)

    log(f'ablation: {len(rows)} row(s) x seeds {seeds}, {settings.iters} '
        f'iterations per task, {settings.num_val} val images; work dir '
        f'{work}')
    ablation.run_ablation(work=work, data_root=data, rows=rows, seeds=seeds,
                          settings=settings, shard=args.shard,
                          keep=args.keep, report_only=args.report_only,
                          reuse_results=reuse, rerun=rerun, log=log)
    with open(osp.join(work, 'report.md')) as f:
        print('\n' + f.read())
    return 0


if __name__ == '__main__':
    from _common import run
    run(main, interrupted='finished runs stay in the work dir\'s runs/ and '
        'are reused by the next run with the same settings: the same '
        'command continues (--rerun without --reuse-results trains its rows '
        'from the start again)')
