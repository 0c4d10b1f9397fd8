"""Response Initialization cost relative to plain forward passes.

Runs, in a fresh subprocess per measurement (so peak RSS is not shared
between measurements), either

* ``forward``: the plain ResNet-18 backbone (DeepLabResNet, output stride 16)
  over the calibration batches, in eval mode without grad, or
* ``ri``: ``rc_adapter.reparameterize(backbone, [], calibration=batches)`` on
  the same batches (streaming statistics, PCA, bank rewrite and the
  function-preservation check),

with the two modes interleaved over ``--reps`` repetitions, and prints the
medians and the RI / forward ratios (goal: memory <= 1.2x, time <= 1.5x).

Memory is the process's peak RSS (``ru_maxrss``); "extra" is the peak minus
the RSS just before the timed section (model and batches already built), i.e.
the working memory of the pass itself. Batches are random tensors generated
from a fixed seed before timing, identical in both modes.

    python benchmarks/bench_ri.py [--images 256] [--batch-size 16]
        [--size 224] [--reps 3] [--threads 1]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb():
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE') / 2**20


def _child(mode, images, batch_size, size, threads):
    import resource
    import time

    sys.path.insert(0, REPO)
    import torch

    import rc_adapter as rc
    from rc_adapter.mmseg.convert import build_backbone
    torch.set_num_threads(threads)
    backbone = build_backbone(dict(
        type='MTDeepLabResNet', depth=18, strides=(1, 2, 2, 1),
        dilations=(1, 1, 1, 2), out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True), style='pytorch'))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(batch_size, images - i), 3, size, size,
                           generator=gen)
               for i in range(0, images, batch_size)]
    with torch.no_grad():  # warm-up (allocator, kernels), not timed
        backbone(batches[0][:1])
    before = _rss_mb()
    start = time.perf_counter()
    if mode == 'forward':
        with torch.no_grad():
            for batch in batches:
                backbone(batch)
    else:
        rc.reparameterize(backbone, [], calibration=batches)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = dict(mode=mode, seconds=seconds, peak_mb=peak,
                  extra_mb=peak - before)
    if mode == 'ri':
        result['max_abs_diff'] = backbone.rc_info['ri']['max_abs_diff']
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--child', choices=['forward', 'ri'],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.images, args.batch_size, args.size,
               args.threads)
        return
    results = {'forward': [], 'ri': []}
    common = ['--images', str(args.images), '--batch-size',
              str(args.batch_size), '--size', str(args.size), '--threads',
              str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    for rep in range(args.reps):
        for mode in ('forward', 'ri'):  # interleaved
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), '--child', mode]
                + common, env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f'{mode} run failed:\n{out.stderr}')
            line = [ln for ln in out.stdout.splitlines()
                    if ln.startswith('{')][-1]
            results[mode].append(json.loads(line))
            print(f'rep {rep + 1}/{args.reps} {mode:7s} '
                  f'{results[mode][-1]["seconds"]:7.2f} s  peak '
                  f'{results[mode][-1]["peak_mb"]:7.0f} MB', flush=True)

    def med(mode, key):
        return statistics.median(r[key] for r in results[mode])

    print(f'\nResNet-18 (DeepLabResNet OS16), {args.images} images '
          f'{args.size}x{args.size}, batch {args.batch_size}, '
          f'{args.threads} thread(s), median of {args.reps} interleaved '
          f'runs')
    print(f'{"":22s}{"forward":>10s}{"RI":>10s}{"RI/fwd":>9s}  goal')
    rows = [('time (s)', 'seconds', '<= 1.5x'),
            ('peak RSS (MB)', 'peak_mb', '<= 1.2x'),
            ('extra over base (MB)', 'extra_mb', '')]
    for label, key, goal in rows:
        f, r = med('forward', key), med('ri', key)
        print(f'{label:22s}{f:10.2f}{r:10.2f}{r / f:8.2f}x  {goal}')
    print(f'RI max |delta| of outputs: '
          f'{max(r["max_abs_diff"] for r in results["ri"]):.3g}')


if __name__ == '__main__':
    main()
