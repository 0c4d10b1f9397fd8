"""Warm start against the base state on the embedded synthetic benchmark.

For every demo task T (semseg, depth, normals, edge) on
``mmseg_configs/rc_r18_synthetic_nyud.py`` and the demo's data:

* **from base**: T trained from the bank's base state (RI) for ``--iters``
  iterations, validated every ``--val-every``; its final primary metric
  (semseg mIoU, depth RMSE, normals mean angle, edge odsF) is the target;
* **auto**: T trained with ``init_from='auto'`` from a bank holding the
  other three tasks (each trained from base for ``--iters``), the same
  schedule and seed; the source it picked and every candidate's score are
  recorded;
* **iterations to the target**: the first validation at which the auto
  run is at least as good as the from-base run's final metric (validations
  every ``--val-every`` iterations, so this is a multiple of it; "never"
  when the auto run does not reach it);
* **reduced budget**: both again with ``--reduced`` iterations (the whole
  schedule shortened: PolyLR decays to 0 at the end), final metric each.

Every run is ``rc_adapter.mmseg.apis.train_task`` in this process (no tool
start-up), its length set through the config's ``task_schedules``. One
seed (``--seed``): differences of a fraction of the spread between seeds
are noise; the report says which seed and how long each run took.

Usage::

    python benchmarks/bench_warm_start.py                 # full: 16 runs
    python benchmarks/bench_warm_start.py --iters 60 --reduced 20 \\
        --val-every 10 --work-dir work_dirs/bench_warm_start_small
    python benchmarks/bench_warm_start.py --quick          # smoke test

Results go to ``<work-dir>/results.json`` and ``<work-dir>/report.md``;
finished runs are kept (``<work-dir>/runs/<name>/result.json``) and reused
by a rerun with the same settings, so an interrupted benchmark continues.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, 'mmseg_configs', 'rc_r18_synthetic_nyud.py')
ASSET = os.path.join(ROOT, 'assets', 'r18_half_proxy.safetensors')
TASKS = ('semseg', 'depth', 'normals', 'edge')
#: The demo's data (tools/demo.py).
DEMO_DATA = dict(num_train=200, num_val=30, size=(128, 128), seed=0,
                 extra_splits={'pretrain': 300})
QUICK_DATA = dict(num_train=24, num_val=6, size=(64, 64), seed=0,
                  extra_splits={'pretrain': 48})


def _load():
    return '/'.join(f'{x:.2f}' for x in os.getloadavg())


def _json(path, value=None):
    if value is None:
        with open(path) as f:
            return json.load(f)
    from rc_adapter.utils.io import save_json
    save_json(path, value)
    return value


# -- inputs ---------------------------------------------------------------
def prepare_data(root, params):
    """The synthetic NYUD-layout data at ``root`` (generated if absent)."""
    if os.path.exists(os.path.join(root, 'synthetic.json')):
        return root
    from rc_adapter.synthetic import generate
    print(f'# generating {root}', flush=True)
    generate('nyud', root, **params)
    return root


def prepare_checkpoint(args, data):
    """``--checkpoint``, else the embedded asset, else a proxy-pretrained
    backbone made by tools/pretrain_proxy.py (kept in the work dir)."""
    if args.checkpoint:
        return args.checkpoint
    if os.path.exists(ASSET) and not args.quick:
        return ASSET
    out = os.path.join(args.work_dir, 'pretrained.pth')
    if not os.path.exists(out):
        print(f'# proxy pretraining ({args.pretrain_iters} iterations)',
              flush=True)
        subprocess.run([sys.executable, os.path.join(ROOT, 'tools',
                                                     'pretrain_proxy.py'),
                        CONFIG, '--data-root', data, '--out', out,
                        '--iters', str(args.pretrain_iters)], check=True)
    return out


def prepare_bank(args, data, checkpoint):
    """The converted bank (RI on the train split), made once; the
    checkpoint it was made from is recorded next to it, and a rerun with
    another one is refused (its runs would be reused)."""
    bank = os.path.join(args.work_dir, 'bank_base')
    record = os.path.join(args.work_dir, 'bank_base.json')
    source = dict(checkpoint=os.path.abspath(checkpoint), data=data)
    if os.path.exists(os.path.join(bank, 'manifest.json')) and \
            os.path.exists(record):
        if _json(record) != source:
            sys.exit(f'{args.work_dir} holds runs on a bank made from '
                     f'{_json(record)}, not {source}: use another '
                     f'--work-dir')
        return bank
    from rc_adapter.mmseg.convert import convert_checkpoint
    convert_checkpoint(CONFIG, checkpoint, bank, data_root=data, force=True,
                       progress=False,
                       **(dict(calib_images=8, calib_size=(64, 64))
                          if args.quick else {}))
    _json(record, source)
    return bank


# -- one run --------------------------------------------------------------
def _register_curve_hook():
    from mmengine.hooks import Hook
    from mmseg.registry import HOOKS

    if HOOKS.get('MTBenchCurveHook') is not None:
        return

    @HOOKS.register_module()
    class MTBenchCurveHook(Hook):
        """Appends every validation's metrics and iteration to ``out``
        (JSON lines)."""

        def __init__(self, out):
            self.out = out

        def after_val_epoch(self, runner, metrics=None):
            with open(self.out, 'a') as f:
                f.write(json.dumps(dict(iter=runner.iter, metrics={
                    k: float(v) for k, v in (metrics or {}).items()})) + '\n')


def bank_without(source, task, dest):
    """A copy of ``source`` without ``task`` (its files pruned)."""
    from rc_adapter import TaskBank
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    bank = TaskBank(dest)
    if task in bank.tasks():
        bank.remove_task(task)
    bank.prune()
    return dest


def run(args, data, bank, task, name, iters, init_from=None):
    """Trains ``task`` into ``bank``; returns (and keeps) the result."""
    folder = os.path.join(args.work_dir, 'runs', name)
    done = os.path.join(folder, 'result.json')
    settings = dict(task=task, iters=iters, init_from=init_from,
                    val_every=args.val_every, seed=args.seed, data=data)
    if os.path.exists(done):
        result = _json(done)
        if result.get('settings') == settings:
            print(f'# {name}: reused', flush=True)
            return result
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    from rc_adapter import TaskBank
    from rc_adapter.mmseg.apis import load_config, train_task
    _register_curve_hook()
    curve = os.path.join(folder, 'curve.jsonl')
    cfg = load_config(CONFIG, data_root=data,
                      work_dir=os.path.join(folder, 'work'))
    cfg.randomness = dict(seed=args.seed)
    cfg.task_schedules = {task: dict(
        max_iters=iters, val_interval=min(args.val_every, iters),
        checkpoint_interval=iters)}
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
        dict(type='MTBenchCurveHook', out=curve)]
    if args.quick:
        cfg.warm_start = dict(score_steps=2, score_batches=1)
    print(f'# {name}: {task}, {iters} iterations, init_from={init_from} '
          f'(load {_load()})', flush=True)
    start = time.time()
    final = train_task(cfg, bank=bank, task=task, init_from=init_from,
                       replace=task in TaskBank(bank).tasks())
    seconds = time.time() - start
    points = []
    with open(curve) as f:
        for line in f:
            entry = json.loads(line)
            points.append(dict(iter=entry['iter'], metrics={
                k.split('/', 1)[1]: v for k, v in entry['metrics'].items()
                if k.startswith(task + '/')}))
    record = TaskBank(bank).task_info(task)['init_from']
    return _json(done, dict(settings=settings, final=final, curve=points,
                            init_from=record, seconds=seconds,
                            load=_load()))


# -- the comparison -------------------------------------------------------
def _better_or_equal(value, target, higher):
    return value >= target if higher else value <= target


def summarize(task, base_full, auto_full, base_reduced, auto_reduced,
              iters):
    from rc_adapter.mmseg.evaluation.delta_m import DEFAULT_DELTA_M_KEYS
    key, higher = DEFAULT_DELTA_M_KEYS[task]
    target = base_full['final'][key]
    reached = next((p['iter'] for p in auto_full['curve']
                    if _better_or_equal(p['metrics'][key], target, higher)),
                   None)
    base_reached = next((p['iter'] for p in base_full['curve']
                         if _better_or_equal(p['metrics'][key], target,
                                             higher)), None)
    return dict(
        task=task, metric=key, higher_is_better=higher,
        source=auto_full['init_from'].get('task') or 'base',
        scores=auto_full['init_from'].get('scores'),
        base_full=target, auto_full=auto_full['final'][key],
        auto_iters_to_target=reached, base_iters_to_target=base_reached,
        base_reduced=base_reduced['final'][key],
        auto_reduced=auto_reduced['final'][key],
        # The goals: the from-base quality in at most half the
        # iterations; never worse at the full budget.
        half_the_iterations=reached is not None and reached <= iters / 2,
        full_no_worse=_better_or_equal(auto_full['final'][key], target,
                                       higher),
        seconds=dict(base_full=base_full['seconds'],
                     auto_full=auto_full['seconds'],
                     base_reduced=base_reduced['seconds'],
                     auto_reduced=auto_reduced['seconds']))


def report(args, rows, path, checkpoint):
    arrow = {True: '↑', False: '↓'}
    lines = [
        '# Warm start (`--init-from auto`) against the base state',
        '',
        f'Config `mmseg_configs/rc_r18_synthetic_nyud.py`, data '
        f'`{args.data_root}`, full budget {args.iters} iterations, reduced '
        f'budget {args.reduced}, validation every {args.val_every}, seed '
        f'{args.seed}, {args.threads} torch thread(s); load average at the '
        f'end {_load()}. Bank converted (RI) from `{checkpoint}`. Auto\'s '
        f'candidates: the other three tasks, each trained from base for the '
        f'full budget, and the base state.',
        '',
        '| task | metric | auto picked | from base, full | auto, full | '
        'auto: iterations to from-base final | from base: iterations to '
        'its final | from base, reduced | auto, reduced | ≤ half the '
        'iterations | full: auto no worse |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    yes = {True: 'yes', False: 'no'}
    for r in rows:
        lines.append(
            f'| {r["task"]} | {r["metric"]} {arrow[r["higher_is_better"]]} '
            f'| {r["source"]} | {r["base_full"]:.4f} | {r["auto_full"]:.4f} '
            f'| {r["auto_iters_to_target"] or "never"} '
            f'| {r["base_iters_to_target"] or "never"} '
            f'| {r["base_reduced"]:.4f} | {r["auto_reduced"]:.4f} '
            f'| {yes[r["half_the_iterations"]]} '
            f'| {yes[r["full_no_worse"]]} |')
    lines += ['', 'Scores of auto (mean training loss after the scoring '
              'steps; lower is better):', '']
    for r in rows:
        scores = ', '.join(f'{k} {v:.4f}' for k, v in
                           sorted((r['scores'] or {}).items(),
                                  key=lambda kv: kv[1]))
        lines.append(f'- {r["task"]}: {scores}')
    lines += ['', 'Seconds per run (from base full / auto full / from base '
              'reduced / auto reduced):', '']
    for r in rows:
        s = r['seconds']
        lines.append(f'- {r["task"]}: {s["base_full"]:.0f} / '
                     f'{s["auto_full"]:.0f} / {s["base_reduced"]:.0f} / '
                     f'{s["auto_reduced"]:.0f}')
    text = '\n'.join(lines) + '\n'
    with open(path, 'w') as f:
        f.write(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/bench_warm_start')
    parser.add_argument('--data-root', default='data/synthetic_nyud_demo',
                        help='synthetic NYUD-layout data (generated with '
                        'the demo\'s parameters if absent)')
    parser.add_argument('--checkpoint', help='pretrained backbone (default: '
                        'assets/r18_half_proxy.safetensors if present, else '
                        'proxy pretraining)')
    parser.add_argument('--pretrain-iters', type=int, default=300)
    parser.add_argument('--iters', type=int, default=200,
                        help='full budget per task (the demo\'s)')
    parser.add_argument('--reduced', type=int, default=50)
    parser.add_argument('--val-every', type=int, default=25)
    parser.add_argument('--tasks', nargs='+', default=list(TASKS),
                        choices=TASKS)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--quick', action='store_true',
                        help='tiny data and a few iterations (smoke test)')
    args = parser.parse_args(argv)
    if args.quick:
        args.iters, args.reduced, args.val_every = 6, 3, 3
        args.pretrain_iters = 4
        if args.data_root == parser.get_default('data_root'):
            args.data_root = os.path.join(args.work_dir, 'data')
    args.work_dir = os.path.abspath(args.work_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    import torch
    torch.set_num_threads(args.threads)
    import rc_adapter  # noqa: F401  (registers the mmseg components)

    data = prepare_data(os.path.abspath(args.data_root),
                        QUICK_DATA if args.quick else DEMO_DATA)
    checkpoint = prepare_checkpoint(args, data)
    base_bank = prepare_bank(args, data, checkpoint)
    full_bank = os.path.join(args.work_dir, 'bank_full')
    if not os.path.exists(full_bank):
        shutil.copytree(base_bank, full_bank)
    results = dict(settings=vars(args), bank=_json(os.path.join(
        args.work_dir, 'bank_base.json')), runs={})
    runs = results['runs']
    # From base, full budget, every task into one bank: the targets, and
    # the candidates auto chooses from.
    for task in TASKS:
        runs[f'base_full_{task}'] = run(args, data, full_bank, task,
                                        f'base_full_{task}', args.iters)
    rows = []
    for task in args.tasks:
        others = bank_without(full_bank, task, os.path.join(
            args.work_dir, 'banks', f'auto_{task}'))
        runs[f'auto_full_{task}'] = run(args, data, others, task,
                                        f'auto_full_{task}', args.iters,
                                        init_from='auto')
        base = bank_without(base_bank, task, os.path.join(
            args.work_dir, 'banks', f'base_{task}'))
        runs[f'base_reduced_{task}'] = run(args, data, base, task,
                                           f'base_reduced_{task}',
                                           args.reduced)
        others = bank_without(full_bank, task, os.path.join(
            args.work_dir, 'banks', f'auto_{task}'))
        runs[f'auto_reduced_{task}'] = run(args, data, others, task,
                                           f'auto_reduced_{task}',
                                           args.reduced, init_from='auto')
        rows.append(summarize(task, runs[f'base_full_{task}'],
                              runs[f'auto_full_{task}'],
                              runs[f'base_reduced_{task}'],
                              runs[f'auto_reduced_{task}'], args.iters))
    results['rows'] = rows
    _json(os.path.join(args.work_dir, 'results.json'), results)
    print(report(args, rows, os.path.join(args.work_dir, 'report.md'),
                 results['bank']['checkpoint']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
