"""Speed and memory of RC training / inference against the plain network.

Every ratio is measured against a baseline timed *in the same process, in
the same run*, with the variants interleaved (the order rotates every
repetition) and the median taken, so load from other processes hits both
sides alike. Memory is measured in a fresh subprocess per (configuration,
variant), as the growth of the peak RSS over the RSS after building the
model.

Variants:

* ``full_ft``  -- the plain model, every parameter trained (SGD, momentum);
* ``rc_train`` -- the RC model (one task, head copied per task) training its
  task tensors, default ``execution='auto'``, with the row's modulator
  family (``full``: the paper's; ``lowrank16``: rank 16, NFF);
* ``plain_eval`` / ``rc_eval`` (unmerged, composed weights cached) /
  ``merged_eval`` (``rc.merge``) -- forward passes under ``torch.no_grad``.

With ``--compile`` a second table times the two training variants again,
eager against ``torch.compile`` (inductor, its default backend) of the same
model in one process, and reports the first compiled step (the compilation;
shorter when inductor's on-disk cache already holds the kernels).

Usage::

    python benchmarks/bench_speed.py            # all configurations
    python benchmarks/bench_speed.py --quick    # headline rows, fewer reps
    python benchmarks/bench_speed.py --execution activation
    python benchmarks/bench_speed.py --compile --quick  # + torch.compile

Add a model by registering a factory in :data:`FACTORIES` and rows in
:data:`CONFIGS`.
"""
import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


# -- model factories ------------------------------------------------------
def _timm_resnet18(output_stride=32):
    """timm ResNet-18 (random init), image classification; at output
    stride 16 layer4 is dilated (the DeepLab setting)."""
    import timm
    import torch.nn.functional as F

    model = timm.create_model('resnet18', pretrained=False, num_classes=10,
                              output_stride=output_stride)

    def loss_fn(model, x):
        out = model(x)
        target = torch_arange_targets(out.shape[0], out.shape[1])
        return F.cross_entropy(out, target)

    return dict(model=model, loss=loss_fn, copy_modules=['fc'],
                in_channels=3)


def _mmseg_deeplab_r18_backbone():
    """The DeepLabv3+ R-18 backbone of ``mmseg_configs/rc_r18_nyud.py``
    (``DeepLabResNet``: output stride 16, layer4 dilated), built from the
    config through the mmseg registry. The decode heads are not included:
    they are per-task modules, trained alike in both variants."""
    import rc_adapter  # noqa: F401  (must precede mmseg.models)
    import rc_adapter.mmseg  # noqa: F401  (registers DeepLabResNet)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    cfg = Config.fromfile(_mmseg_config())
    model = MODELS.build(cfg.model.backbone)
    model.init_weights()

    def loss_fn(model, x):
        return sum(o.square().mean() for o in model(x))

    return dict(model=model, loss=loss_fn, copy_modules=None,
                in_channels=3)


def _mmseg_config():
    return os.path.join(os.path.dirname(HERE), 'mmseg_configs',
                        'rc_r18_nyud.py')


def torch_arange_targets(n, classes):
    import torch
    return torch.arange(n) % classes


FACTORIES = {
    'timm_resnet18': _timm_resnet18,
    'timm_resnet18_os16': lambda: _timm_resnet18(output_stride=16),
    'mmseg_deeplab_r18_backbone': _mmseg_deeplab_r18_backbone,
}

#: The RC model's modulator per row: the paper's full matrices, or rank-16
#: low-rank modulators (NFF on both), with an identity base or Response
#: Initialization's (``_ri``: calibrated on random images, as the timing
#: only needs its orthogonal base).
MODULATORS = {'full': dict(modulator='full'),
              'lowrank16': dict(modulator='lowrank', rank=16),
              'lowrank16_ri': dict(modulator='lowrank', rank=16, ri=True)}

#: (factory, batch, size, threads, modulator); the first six rows are the
#: headline (``--quick``).
CONFIGS = [
    ('timm_resnet18', 8, 128, 2, 'full'),
    ('timm_resnet18_os16', 8, 128, 2, 'full'),
    ('timm_resnet18', 8, 128, 2, 'lowrank16'),
    ('timm_resnet18_os16', 8, 128, 2, 'lowrank16'),
    ('timm_resnet18', 8, 128, 2, 'lowrank16_ri'),
    ('timm_resnet18_os16', 8, 128, 2, 'lowrank16_ri'),
    ('timm_resnet18', 2, 224, 2, 'full'),
    ('timm_resnet18', 32, 64, 2, 'full'),
]
MMSEG_CONFIGS = [('mmseg_deeplab_r18_backbone', 4, 128, 2, 'full'),
                 ('mmseg_deeplab_r18_backbone', 2, 256, 2, 'full'),
                 ('mmseg_deeplab_r18_backbone', 4, 128, 2, 'lowrank16')]


# -- one configuration, inside a worker process ---------------------------
def _build(factory, execution, modulator):
    import torch
    import rc_adapter as rc

    spec = FACTORIES[factory]()
    plain = spec['model']
    plain.train()
    rc_model = copy.deepcopy(plain)
    options = dict(MODULATORS[modulator])
    if options.pop('ri', False):
        gen = torch.Generator().manual_seed(0)
        options['calibration'] = [torch.randn(4, spec['in_channels'], 64, 64,
                                              generator=gen)]
    rc.reparameterize(rc_model, ['task'], copy_modules=spec['copy_modules'],
                      execution=execution, **options)
    rc_model.train()
    return spec, plain, rc_model, torch


def _variants(spec, plain, rc_model, x, torch, which):
    import rc_adapter as rc

    forward = spec.get('forward', lambda m, inp: m(inp))
    fns = {}
    if 'full_ft' in which:
        full = plain
        opt_full = torch.optim.SGD(full.parameters(), lr=1e-4, momentum=0.9)

        def full_ft():
            full.train()
            opt_full.zero_grad(set_to_none=True)
            spec['loss'](full, x).backward()
            opt_full.step()
        fns['full_ft'] = full_ft
    if 'rc_train' in which:
        opt_rc = torch.optim.SGD(
            [p for p in rc_model.parameters() if p.requires_grad], lr=1e-4,
            momentum=0.9)

        def rc_train():
            rc_model.train()
            opt_rc.zero_grad(set_to_none=True)
            spec['loss'](rc_model, x).backward()
            opt_rc.step()
        fns['rc_train'] = rc_train
    # Inference models are separate copies: the training variants above
    # change their parameters every step (which, correctly, invalidates
    # the RC layers' composed-weight cache).
    evals = {}
    if 'plain_eval' in which:
        evals['plain_eval'] = copy.deepcopy(plain)
    if 'rc_eval' in which:
        evals['rc_eval'] = copy.deepcopy(rc_model)
    if 'merged_eval' in which:
        evals['merged_eval'] = rc.merge(rc_model, 'task')
    for name, model in evals.items():
        model.eval()  # (mmseg's ResNet.train returns None: do not chain)

        def run(model=model):
            with torch.no_grad():
                forward(model, x)
        fns[name] = run
    return fns


def _setup(factory, batch, size, threads, modulator, execution):
    """The models of one configuration, the thread count and the input."""
    spec, plain, rc_model, torch = _build(factory, execution, modulator)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(batch, spec['in_channels'], size, size)
    return spec, plain, rc_model, torch, x


def _seconds(fn):
    """Wall time of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved_medians(fns, reps):
    """Runs every variant ``reps`` times, the order rotated every
    repetition; returns the median seconds per variant."""
    names = list(fns)
    samples = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_seconds(fns[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def worker_time(factory, batch, size, threads, modulator, reps, execution):
    """Interleaved timing of every variant; returns medians in seconds."""
    spec, plain, rc_model, torch, x = _setup(factory, batch, size, threads,
                                             modulator, execution)
    names = ['full_ft', 'rc_train', 'plain_eval', 'rc_eval', 'merged_eval']
    fns = _variants(spec, plain, rc_model, x, torch, names)
    for _ in range(2):  # warm-up: oneDNN primitives, allocator, caches
        for name in names:
            fns[name]()
    return _interleaved_medians(fns, reps)


def worker_compile(factory, batch, size, threads, modulator, reps,
                   execution):
    """Eager against ``torch.compile`` train steps (interleaved medians, in
    seconds) and the first compiled step of each model."""
    spec, plain, rc_model, torch, x = _setup(factory, batch, size, threads,
                                             modulator, execution)
    eager = _variants(spec, plain, rc_model, x, torch, ['full_ft', 'rc_train'])
    compiled = _variants(spec, torch.compile(plain), torch.compile(rc_model),
                         x, torch, ['full_ft', 'rc_train'])
    fns = dict(eager)
    fns.update({f'{name}_compiled': fn for name, fn in compiled.items()})
    first = {name: _seconds(fn) for name, fn in fns.items()}
    result = _interleaved_medians(fns, reps)
    result.update({f'{name}_first': first[f'{name}_compiled']
                   for name in compiled})
    return result


def _rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _reset_peak_rss() -> bool:
    """Returns freed heap memory to the system (glibc's ``malloc_trim``)
    and sets this process's peak RSS to its current RSS (Linux 4.0+:
    ``/proc/self/clear_refs``); False where the reset is not available."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return False
    return True


def worker_memory(factory, batch, size, threads, modulator, variant,
                  execution):
    """Peak RSS growth (bytes) of two steps of one variant, fresh process."""
    spec, plain, rc_model, torch, x = _setup(factory, batch, size, threads,
                                             modulator, execution)
    fns = _variants(spec, plain, rc_model, x, torch, [variant])
    # ru_maxrss is the lifetime peak: reset it to the current RSS, as
    # building (Response Initialization above all) can peak above a step;
    # where that is not possible it must at least not exceed `before`.
    reset = _reset_peak_rss()
    before = _rss_bytes()
    peak_before = (0 if reset else
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    for _ in range(2):
        fns[variant]()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(0, peak - max(before, peak_before))


# -- driver ---------------------------------------------------------------
def _run_worker(args):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker',
           json.dumps(args)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args['threads']))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f'bench worker {args} failed:\n{out.stderr}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_description():
    """CPU model, core count, torch version, load average."""
    import torch
    model = platform.processor() or 'unknown'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()
    return (f'{model}, {os.cpu_count()} cores, torch {torch.__version__}, '
            f'load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}')


def _print_header(header):
    """A markdown table's header line and its separator."""
    print(header)
    print('|---' * (header.count('|') - 1) + '|')


def run(configs, reps, execution, memory=True):
    """Measures every configuration; prints and returns the table rows."""
    rows = []
    header = ('| model | batch | size | threads | modulator | '
              'RC train / full FT | '
              'RC eval / plain | merged / plain | train peak mem RC / full '
              '| eval peak mem RC / plain | full FT step ms | plain eval ms |')
    _print_header(header)
    for factory, batch, size, threads, modulator in configs:
        base = dict(factory=factory, batch=batch, size=size, threads=threads,
                    modulator=modulator, execution=execution)
        t = _run_worker(dict(base, kind='time', reps=reps))
        row = dict(base, times=t,
                   train_ratio=t['rc_train'] / t['full_ft'],
                   eval_ratio=t['rc_eval'] / t['plain_eval'],
                   merged_ratio=t['merged_eval'] / t['plain_eval'])
        if memory:
            mem = {v: _run_worker(dict(base, kind='memory', variant=v))
                   for v in ('full_ft', 'rc_train', 'plain_eval', 'rc_eval')}
            row['memory'] = mem
            row['train_mem_ratio'] = mem['rc_train'] / max(1, mem['full_ft'])
            row['eval_mem_ratio'] = mem['rc_eval'] / max(1, mem['plain_eval'])
        rows.append(row)
        mem_cells = ('| {:.2f} ({:.0f}/{:.0f} MB) | {:.2f} ({:.0f}/{:.0f} MB) '
                     .format(row['train_mem_ratio'],
                             row['memory']['rc_train'] / 2**20,
                             row['memory']['full_ft'] / 2**20,
                             row['eval_mem_ratio'],
                             row['memory']['rc_eval'] / 2**20,
                             row['memory']['plain_eval'] / 2**20)
                     if memory else '| - | - ')
        print(f'| {factory} | {batch} | {size} | {threads} | {modulator} | '
              f'{row["train_ratio"]:.3f} | {row["eval_ratio"]:.3f} | '
              f'{row["merged_ratio"]:.3f} {mem_cells}| '
              f'{t["full_ft"] * 1e3:.1f} | {t["plain_eval"] * 1e3:.1f} |',
              flush=True)
    return rows


def run_compile(configs, reps, execution):
    """The ``--compile`` table: compiled / eager train step per model."""
    rows = []
    header = ('| model | batch | size | modulator | full FT compiled / eager '
              '| RC train compiled / eager | RC train / full FT, compiled '
              '| RC compiled / full FT eager '
              '| first compiled step s (full FT, RC) |')
    _print_header(header)
    for factory, batch, size, threads, modulator in configs:
        t = _run_worker(dict(factory=factory, batch=batch, size=size,
                             threads=threads, modulator=modulator,
                             execution=execution, kind='compile', reps=reps))
        rows.append(dict(factory=factory, batch=batch, size=size,
                         threads=threads, modulator=modulator, times=t))
        print(f'| {factory} | {batch} | {size} | {modulator} | '
              f'{t["full_ft_compiled"] / t["full_ft"]:.3f} | '
              f'{t["rc_train_compiled"] / t["rc_train"]:.3f} | '
              f'{t["rc_train_compiled"] / t["full_ft_compiled"]:.3f} | '
              f'{t["rc_train_compiled"] / t["full_ft"]:.3f} | '
              f'{t["full_ft_first"]:.0f}, {t["rc_train_first"]:.0f} |',
              flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='headline rows only, fewer reps')
    parser.add_argument('--reps', type=int, default=None,
                        help='interleaved repetitions per variant')
    parser.add_argument('--execution', default='auto',
                        help="RCConv2d execution mode (default 'auto')")
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile (inductor) against '
                        'eager training steps (about a minute of '
                        'compilation per model on 2 cores)')
    parser.add_argument('--json', default=None,
                        help='also write the rows to this file')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        common = (spec['factory'], spec['batch'], spec['size'],
                  spec['threads'], spec['modulator'])
        if spec['kind'] == 'time':
            result = worker_time(*common, spec['reps'], spec['execution'])
        elif spec['kind'] == 'compile':
            result = worker_compile(*common, spec['reps'],
                                    spec['execution'])
        else:
            result = worker_memory(*common, spec['variant'],
                                   spec['execution'])
        print(json.dumps(result))
        return
    configs = CONFIGS[:6] if args.quick else list(CONFIGS)
    if not args.quick and os.path.exists(_mmseg_config()):
        configs += MMSEG_CONFIGS
    reps = args.reps or (9 if args.quick else 21)
    print(f'# bench_speed: {machine_description()}; reps={reps}, '
          f'execution={args.execution!r}')
    rows = run(configs, reps, args.execution, memory=not args.no_memory)
    compiled = None
    if args.compile:
        print('\n# torch.compile (inductor) against eager, same process')
        compiled = run_compile(configs, reps, args.execution)
    print(f'# done; load average now {os.getloadavg()[0]:.2f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine_description(), rows=rows,
                           compiled=compiled), f, indent=1)


if __name__ == '__main__':
    main()
