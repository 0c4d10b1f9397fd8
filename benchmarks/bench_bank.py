"""A bank of many tasks served lazily: memory, task switches, bank commands.

Builds a synthetic bank: a timm ResNet-18 (random init, 1000 classes)
reparameterized with ``--modulator`` modulators (default low-rank, rank 8)
and per-task norms, and ``--tasks`` tasks (default 200) whose tensors are
the base state plus random noise ("random small modulators"). Then:

* **memory** -- a fresh process per row: the plain network, and the RC
  network serving 1, 10 and all tasks resident (``TaskCache``, every
  resident task loaded once, then one forward pass). Peak RSS after the
  imports (see :func:`_reset_peak` and :func:`_peak_rss`), RSS at the end,
  and both over the RSS after the imports.
* **switch** -- one process per input size: switching to a task that is not
  resident (``TaskCache(max_resident=1).activate`` + the first forward pass)
  against a forward pass of the active task, interleaved (the order
  alternates), medians, as ratios. Split into the load (``activate``: read,
  verify, copy) and the first forward (composing the task's weights, then
  the forward), and composing every RC layer's weights alone. Once for
  files this process has not seen (hashed), once more for the same files
  (their digests remembered).
* **bank operations** -- wall time of ``tools/bank.py verify`` and ``list``
  on the bank (a process each, imports included), the same library calls
  in-process (``TaskBank.verify()``, ``describe()``), one more
  ``write_task`` and a ``remove_task`` on the full bank, and
  ``python -c "import rc_adapter"`` (what every tool launch pays first).

The machine's load average is printed next to every table. One torch
thread by default (``--threads``).

Usage::

    python benchmarks/bench_bank.py                # 200 tasks, ~10 minutes
    python benchmarks/bench_bank.py --tasks 20     # a quick check
    python benchmarks/bench_bank.py --bank DIR     # keep (or reuse) the bank
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_speed import _rss_bytes, machine_description  # noqa: E402

MB = 1 << 20


def _load():
    return '/'.join(f'{x:.2f}' for x in os.getloadavg())


# -- the bank ------------------------------------------------------------------
def _rc_model(config):
    import timm

    import rc_adapter as rc
    net = timm.create_model('resnet18')
    rc.reparameterize(net, [], config)
    return net.eval()


def build_bank(path, tasks, modulator, rank, seed=0):
    """Writes the synthetic bank; returns seconds per write."""
    import torch

    import rc_adapter as rc
    from rc_adapter.core.bank import TaskBank
    config = rc.RCConfig(modulator=modulator, rank=rank)
    net = _rc_model(config)
    bank = TaskBank.create(path, rc.shared_state_dict(net),
                           config={'rc_cfg': config.to_dict(),
                                   'backbone': {'type': 'timm.resnet18'}})
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for i in range(tasks):
        bank.write_task(f'task{i:03d}', _random_task(net, f'task{i:03d}',
                                                     gen),
                        info={'type': 'synthetic',
                              'metrics': {'score': float(i) / tasks}})
    return (time.perf_counter() - start) / tasks


def _random_task(net, name, gen):
    """The base state of a new task plus noise (norm statistics kept
    valid); the task is removed from ``net`` again."""
    import torch

    import rc_adapter as rc
    rc.add_task(net, name)
    state = {}
    for key, value in rc.task_state_dict(net, name).items():
        if value.is_floating_point() and 'running_' not in key:
            value = value + 0.02 * torch.randn(value.shape, generator=gen)
        state[key] = value.clone()
    rc.remove_task(net, name)
    return state


# -- workers (fresh processes) -----------------------------------------------
def _serving_model(bank_path):
    import rc_adapter as rc
    from rc_adapter.core.bank import TaskBank
    from rc_adapter.core.serving import load_shared
    bank = TaskBank(bank_path)
    net = _rc_model(rc.RCConfig.from_manifest(bank.config['rc_cfg']))
    load_shared(net, bank)
    return net, bank


def worker_memory(bank, resident, size, threads):
    """RSS of a process with the plain network (``resident`` 0) or the RC
    network serving ``resident`` tasks."""
    import timm
    import torch

    import rc_adapter as rc
    from rc_adapter.core.serving import TaskCache
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, size, size)
    after_imports = _rss_bytes()
    reset = _reset_peak()
    if resident == 0:
        net = timm.create_model('resnet18').eval()
        task_bytes = 0
    else:
        net, bank = _serving_model(bank)
        cache = TaskCache(net, bank, max_resident=resident)
        for task in bank.tasks()[:resident]:
            cache.activate(task)
        task_bytes = sum(
            t.numel() * t.element_size() for task in cache.resident()
            for t in rc.task_state_dict(net, task).values())
    with torch.no_grad():
        net(x)
    peak = _peak_rss()
    return dict(after_imports=after_imports, peak=peak, rss=_rss_bytes(),
                task_bytes=task_bytes, peak_reset=reset)


def _reset_peak():
    """Resets the process's peak RSS to its current RSS (Linux >= 4.0,
    ``/proc/self/clear_refs``), so the peak measures what follows and not
    the imports (``import rc_adapter`` registers the mmseg modules and
    peaks higher than serving a ResNet-18). Returns False if it could
    not."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _peak_rss():
    """Peak RSS in bytes: ``VmHWM`` of ``/proc/self/status`` (the one
    :func:`_reset_peak` resets), else ``ru_maxrss``. ``ru_maxrss`` alone
    does not do here: Linux carries the parent's peak over ``exec``, so
    every worker would report this driver's peak."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_switch(bank, size, threads, reps):
    """Interleaved medians: forward of the active task, switch to a task
    not resident (load + first forward), first with unseen files, then
    with the same files again."""
    import torch

    from rc_adapter import RCLayer
    from rc_adapter.core.serving import TaskCache
    torch.set_num_threads(threads)
    net, bank = _serving_model(bank)
    layers = [m for m in net.modules() if isinstance(m, RCLayer)]
    tasks = bank.tasks()
    cache = TaskCache(net, bank, max_resident=1)
    x = torch.randn(1, 3, size, size)
    order = tasks[1:reps + 1]

    def forward():
        with torch.no_grad():
            net(x)

    def compose():
        with torch.no_grad():
            for layer in layers:
                layer.composed_weight()

    def switch(task, out):
        start = time.perf_counter()
        cache.activate(task)
        loaded = time.perf_counter()
        forward()
        end = time.perf_counter()
        out['load'].append(loaded - start)
        out['first_forward'].append(end - loaded)
        out['switch'].append(end - start)

    cache.activate(tasks[0])
    for _ in range(3):  # warm-up: allocator, oneDNN primitives
        forward()
    result = {}
    for label in ('new', 'again'):
        samples = dict(forward=[], load=[], first_forward=[], switch=[],
                       compose=[])
        for r, task in enumerate(order):
            steps = [lambda: _timed(forward, samples['forward']),
                     lambda: switch(task, samples),
                     lambda: _timed(compose, samples['compose'])]
            # Rotate the order: load on the machine hits every step alike.
            for step in steps[r % 3:] + steps[:r % 3]:
                step()
        result[label] = {k: statistics.median(v) for k, v in
                         samples.items()}
        cache.activate(tasks[0])
        forward()
    return result


def _timed(fn, out):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)


WORKERS = {'memory': worker_memory, 'switch': worker_switch}


def _run_worker(kind, **kwargs):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker',
           json.dumps(dict(kwargs, kind=kind))]
    env = dict(os.environ, OMP_NUM_THREADS=str(kwargs['threads']),
               MKL_NUM_THREADS=str(kwargs['threads']))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f'bench worker {kind} {kwargs} failed:\n'
                           f'{out.stderr}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wall(cmd, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         cwd=ROOT)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr}')
    return elapsed


# -- driver --------------------------------------------------------------------
def measure_memory(bank, tasks, args):
    print(f'\n### Memory (input 1x3x{args.sizes[0]}², load {_load()})\n')
    print('| process | resident tasks | task tensors MB | peak RSS after '
          'imports MB | RSS at end MB | peak over imports MB | RSS over '
          'imports MB |')
    print('|---|---|---|---|---|---|---|')
    rows = {}
    for resident in [0] + sorted({min(n, tasks) for n in args.resident}):
        m = _run_worker('memory', bank=bank, resident=resident,
                        size=args.sizes[0], threads=args.threads)
        rows[resident] = m
        name = 'plain ResNet-18' if resident == 0 else 'RC, TaskCache'
        if not m['peak_reset']:
            name += ' (peak includes the imports)'
        print(f'| {name} | {resident} | {m["task_bytes"] / MB:.1f} | '
              f'{m["peak"] / MB:.0f} | {m["rss"] / MB:.0f} | '
              f'{(m["peak"] - m["after_imports"]) / MB:.0f} | '
              f'{(m["rss"] - m["after_imports"]) / MB:.0f} |', flush=True)
    counts = sorted(r for r in rows if r)
    if len(counts) > 1:
        lo, hi = rows[counts[0]], rows[counts[-1]]
        per_task = (hi['rss'] - lo['rss']) / (counts[-1] - counts[0])
        tensors = (hi['task_bytes'] - lo['task_bytes']) / (
            counts[-1] - counts[0])
        print(f'\nRSS growth per resident task: {per_task / MB:.2f} MB '
              f'(task tensors: {tensors / MB:.2f} MB per task); load '
              f'{_load()}')
    return rows


def measure_switch(bank, tasks, args):
    reps = min(args.reps, tasks - 1)
    print(f'\n### Task switch (batch 1, {reps} switches per pass, '
          f'{args.threads} thread(s), load {_load()})\n')
    print('| input | forward ms | files | switch ms | switch / forward | '
          'load ms | first forward ms | composing all weights ms |')
    print('|---|---|---|---|---|---|---|---|')
    rows = {}
    for size in args.sizes:
        r = _run_worker('switch', bank=bank, size=size, threads=args.threads,
                        reps=reps)
        rows[size] = r
        for label, text in (('new', 'not seen (hashed)'),
                            ('again', 'seen (digest remembered)')):
            m = r[label]
            print(f'| {size}² | {m["forward"] * 1e3:.1f} | {text} | '
                  f'{m["switch"] * 1e3:.1f} | '
                  f'{m["switch"] / m["forward"]:.2f} | '
                  f'{m["load"] * 1e3:.1f} | '
                  f'{m["first_forward"] * 1e3:.1f} | '
                  f'{m["compose"] * 1e3:.1f} |', flush=True)
    print(f'\nload {_load()}')
    return rows


def measure_operations(bank_path, tasks, args):
    from rc_adapter.core.bank import TaskBank
    print(f'\n### Bank operations ({tasks} tasks, load {_load()})\n')
    tool = os.path.join(ROOT, 'tools', 'bank.py')
    bank = TaskBank(bank_path)
    rows = {}
    rows['tools/bank.py verify (process)'] = _wall(
        [sys.executable, tool, 'verify', bank_path], args.threads)
    rows['tools/bank.py list (process)'] = _wall(
        [sys.executable, tool, 'list', bank_path], args.threads)
    rows['python -c "import rc_adapter" (process)'] = _wall(
        [sys.executable, '-c', 'import rc_adapter'], args.threads)
    for name, fn in (
            ('TaskBank.verify() (in-process)', bank.verify),
            ('TaskBank.describe() (in-process, = list)', bank.describe),
            ('write_task of one more task (in-process)',
             lambda: bank.write_task('extra', bank.read_task('task000'))),
            ('remove_task (in-process)',
             lambda: bank.remove_task('extra'))):
        start = time.perf_counter()
        fn()
        rows[name] = time.perf_counter() - start
    sizes = [t['stored_bytes'] for t in bank.describe()['tasks'].values()]
    print(f'task files: {len(sizes)}, {sum(sizes) / MB:.1f} MB '
          f'({statistics.median(sizes) / MB:.2f} MB each)\n')
    print('| operation | seconds |')
    print('|---|---|')
    for name, seconds in rows.items():
        print(f'| {name} | {seconds:.2f} |')
    print(f'\nload {_load()}')
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', type=int, default=200)
    parser.add_argument('--resident', type=int, nargs='+',
                        default=[1, 10, 200],
                        help='resident tasks per memory row (capped at '
                        '--tasks)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512],
                        help='input sizes of the switch rows (the first is '
                        'used for memory)')
    parser.add_argument('--reps', type=int, default=20,
                        help='switches per pass (each to another task)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--modulator', default='lowrank')
    parser.add_argument('--rank', type=int, default=8)
    parser.add_argument('--bank', help='bank folder: reused if it exists, '
                        'else built and kept')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        kind = spec.pop('kind')
        print(json.dumps(WORKERS[kind](**spec)))
        return
    import torch
    torch.set_num_threads(args.threads)
    print(f'# bench_bank: {machine_description()}')
    with tempfile.TemporaryDirectory() as tmp:
        path = args.bank or os.path.join(tmp, 'bank')
        if os.path.exists(os.path.join(path, 'manifest.json')):
            from rc_adapter.core.bank import TaskBank
            tasks = len(TaskBank(path).tasks())
            print(f'reusing {path} ({tasks} tasks)')
        else:
            tasks = args.tasks
            per_write = build_bank(path, tasks, args.modulator, args.rank)
            print(f'built {path}: {tasks} tasks ({args.modulator} '
                  f'modulators, rank {args.rank}), {per_write * 1e3:.0f} ms '
                  f'per write_task; load {_load()}')
        measure_memory(path, tasks, args)
        measure_switch(path, tasks, args)
        measure_operations(path, tasks, args)


if __name__ == '__main__':
    main()
