"""`make ablation`: the paper's ablation on the embedded benchmark.

Methods, each trained on the synthetic NYUD-layout data of `make demo`
(same proxy-pretrained backbone, same iterations per task):

- single-task fine-tuning: a plain network per task;
- shared encoder: one plain backbone, all tasks trained jointly;
- RC: frozen bank with identity init, plain modulators (no RI, no NFF);
- RC+RI: bank and modulators from Response Initialization;
- RC+RI+NFF: the full method.

Writes work_dirs/ablation/{results.json, report.md}: per-task metrics, Δm
against single-task fine-tuning (positive = drop), and trainable / stored
parameters per task.

    python tools/ablation.py [--work-dir work_dirs/ablation] [--iters N]

Exit status: 0 success; a failing step's own status (see docs/tools.md),
after a line naming the step and its log; 130 interrupted.
"""
import argparse
import os
import os.path as osp
import time

from demo import (DATA, FT_CONFIG, RC_CONFIG, ROOT, TASKS, _load,
                  generate_data, pretrain, run)

RC_VARIANTS = {
    'RC': ['convert_cfg.ri=False', 'model.rc_cfg.nff=False'],
    'RC+RI': ['model.rc_cfg.nff=False'],
    'RC+RI+NFF': [],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/ablation')
    parser.add_argument('--data-root', default='data/synthetic_nyud_demo')
    parser.add_argument('--iters', type=int, default=200)
    parser.add_argument('--pretrain-iters', type=int, default=300)
    args = parser.parse_args()
    work = osp.join(ROOT, args.work_dir)
    data = osp.join(ROOT, args.data_root)
    os.makedirs(work, exist_ok=True)
    log_path = osp.join(work, 'ablation.log')
    open(log_path, 'w').close()
    times, started = {}, time.time()
    generate_data(data, times, log_path)
    pretrained = pretrain(work, data, args.pretrain_iters, times, log_path)
    schedule = [f'train_cfg.max_iters={args.iters}',
                f'train_cfg.val_interval={args.iters}',
                f'param_scheduler.0.end={args.iters}',
                f'default_hooks.checkpoint.interval={args.iters}']
    init = ['model.backbone.init_cfg.type=Pretrained',
            f'model.backbone.init_cfg.checkpoint={pretrained}']
    metrics, params = {}, {}

    # Single-task fine-tuning: a fresh plain network per task.
    metrics['single-task FT'] = {}
    for task in TASKS:
        wd = osp.join(work, 'single', task)
        run(f'single-task FT: {task}', [
            'tools/train.py', FT_CONFIG, '--data-root', data, '--work-dir',
            wd, '--cfg-options', f"model.tasks=['{task}']"] + schedule +
            init, times, log_path)
        out = osp.join(wd, 'test.json')
        run(f'single-task FT: test {task}', [
            'tools/test.py', FT_CONFIG, '--data-root', data, '--checkpoint',
            osp.join(wd, f'iter_{args.iters}.pth'), '--out', out,
            '--work-dir', osp.join(wd, 'test'), '--cfg-options',
            f"model.tasks=['{task}']"], times, log_path)
        metrics['single-task FT'][task] = _load(out)['metrics'][task]

    # Shared encoder: all tasks jointly (one loss per task each iteration).
    wd = osp.join(work, 'shared')
    run('shared encoder: train', [
        'tools/train.py', FT_CONFIG, '--data-root', data, '--work-dir', wd,
        '--cfg-options', 'model.baseline=shared'] + schedule + init,
        times, log_path)
    out = osp.join(wd, 'test.json')
    run('shared encoder: test', [
        'tools/test.py', FT_CONFIG, '--data-root', data, '--checkpoint',
        osp.join(wd, f'iter_{args.iters}.pth'), '--out', out, '--work-dir',
        osp.join(wd, 'test'), '--cfg-options', 'model.baseline=shared'],
        times, log_path)
    metrics['shared encoder'] = _load(out)['metrics']

    for name, options in RC_VARIANTS.items():
        wd = osp.join(work, name.replace('+', '_'))
        bank = osp.join(wd, 'bank')
        opt = ['--cfg-options'] + options if options else []
        run(f'{name}: convert', [
            'tools/convert_to_rc.py', RC_CONFIG, pretrained, '--out', bank,
            '--data-root', data, '--force'] + opt, times, log_path)
        for task in TASKS:
            run(f'{name}: add_task {task}', [
                'tools/add_task.py', RC_CONFIG, '--bank', bank, '--task',
                task, '--data-root', data, '--work-dir', osp.join(wd, task),
                '--cfg-options'] + schedule + options, times, log_path)
        out = osp.join(wd, 'test.json')
        run(f'{name}: test', [
            'tools/test.py', RC_CONFIG, '--bank', bank, '--data-root', data,
            '--out', out, '--work-dir', osp.join(wd, 'test')] + opt,
            times, log_path)
        metrics[name] = _load(out)['metrics']
        manifest = _load(osp.join(bank, 'manifest.json'))
        params[name] = {t: manifest['tasks'][t]['info']['params']
                        for t in TASKS}
    times['total'] = time.time() - started
    write(work, metrics, params, times, args)


def write(work, metrics, params, times, args):
    from rc_adapter.demo.report import PRIMARY_METRICS
    from rc_adapter.mmseg.evaluation import delta_m
    from rc_adapter.utils.io import atomic_write_text, save_json
    save_json(osp.join(work, 'results.json'),
              dict(tasks=TASKS, primary={t: list(PRIMARY_METRICS[t])
                                         for t in TASKS},
                   methods=metrics, params_per_task=params, times=times))
    reference = {t: metrics['single-task FT'][t][PRIMARY_METRICS[t][0]]
                 for t in TASKS}
    lines = ['# Ablation on the synthetic NYUD benchmark', '',
             f'{args.iters} iterations per task (the shared encoder: '
             f'{args.iters} joint iterations), batch 8, half-width '
             f'ResNet-18 proxy-pretrained as in `make demo`; '
             f'{DATA["num_train"]} train / {DATA["num_val"]} val images. '
             'Δm against single-task fine-tuning, positive = drop.', '',
             '| method | ' + ' | '.join(
                 f'{t} {PRIMARY_METRICS[t][0]}' for t in TASKS) +
             ' | Δm | trainable params / task |',
             '|' + '---|' * (len(TASKS) + 3)]
    for method, values in metrics.items():
        cells = [f'{values[t][PRIMARY_METRICS[t][0]]:.4g}' for t in TASKS]
        dm = delta_m({t: values[t][PRIMARY_METRICS[t][0]] for t in TASKS},
                     reference,
                     {t: PRIMARY_METRICS[t][1] == 'higher' for t in TASKS})
        cost = (f'{sum(params[method].values()) // len(TASKS):,}'
                if method in params else
                'whole network' if method == 'single-task FT' else
                'whole network (shared)')
        lines.append(f'| {method} | ' + ' | '.join(cells) +
                     f' | {dm:+.2f}% | {cost} |')
    lines += ['', f'Total wall time: {times["total"]:.0f} s.']
    atomic_write_text(osp.join(work, 'report.md'), '\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    from _common import run as run_main  # `run` here runs one step
    run_main(main, interrupted='the outputs of the finished steps stay in '
             'the work dir; rerunning starts over')
