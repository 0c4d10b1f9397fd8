"""``make demo``: incremental multi-task learning on the embedded benchmark,
RC against sequential and single-task fine-tuning, in one process.

:func:`run_demo` runs the stages of :mod:`rc_adapter.demo.pipeline` in this
order:

1. the synthetic benchmark (reused when present);
2. the backbone: the shipped asset (``assets/r18_half_proxy.safetensors``)
   or, with ``pretrain_iters``, proxy pretraining from scratch;
3. the RC bank with Response Initialization;
4. RC: each task added to the bank, the bank evaluated, and RC's earlier
   tasks checked bit-identical (files, outputs, metrics) after every
   stage;
5. sequential fine-tuning: one plain network trained task after task
   (``load_from`` the previous stage, heads kept), all its tasks evaluated
   after each stage;
6. single-task fine-tuning: a plain network per task from the same
   backbone and schedule (the first stage of 5 is the first task's);
7. the paper's analyses on the final bank: RSA between tasks (RC vs the
   sequentially fine-tuned shared encoder vs the single-task networks) and
   model size against the number of tasks;
8. prediction panels, ``results.json``, ``report.md``, ``stages.png``;
   with ``publish``, a copy for ``docs/``.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
from typing import Any, Mapping, Optional

from ..utils.io import save_json
from . import pipeline as P
from .report import (build_results, format_percent, plot_stages,
                     summarize, write_report)
from .stagelog import StageLog, tool_command

__all__ = ['run_demo', 'rsa_section', 'PUBLISHED']

#: Work-dir file -> name in the published folder (``--publish docs/``).
PUBLISHED = {'report.md': 'demo_report.md', 'results.json':
             'demo_results.json', 'stages.png': 'demo_stages.png',
             'analysis/rsa_layers.png': 'demo_rsa_layers.png',
             'analysis/rsa_heatmaps.png': 'demo_rsa_heatmaps.png',
             'analysis/model_size.png': 'demo_model_size.png'}


def _costs(bank: str, data: str) -> dict[str, Any]:
    from ..core.bank import TaskBank
    from ..mmseg.apis import load_config
    from ..mmseg.convert import build_backbone
    manifest = TaskBank(bank).manifest()
    cfg = load_config(P.RC_CONFIG, data_root=data)
    plain = sum(p.numel() for p in build_backbone(
        cfg.model.backbone).parameters())
    return dict(
        rc={t: dict(params=e['info']['params'], bytes=e['size'])
            for t, e in manifest['tasks'].items()},
        shared_bytes=manifest['shared']['size'], plain_params=plain)


def rsa_section(result: Mapping[str, Any]) -> str:
    """What the RSA plot shows, in numbers: per model the mean similarity
    between its tasks' representations at each layer (and the range)."""
    names = {'rc': 'RC bank', 'shared': 'shared encoder (sequential '
             'fine-tuning, final)', 'finetune': 'single-task networks'}
    layers = result['layers']
    lines = ['| model | ' + ' | '.join(layers) + ' |',
             '|---|' + '---:|' * len(layers)]
    for key, entry in result['models'].items():
        cells = []
        for layer in layers:
            mean = entry['mean_pairwise'][layer]
            low, high = entry['min_pairwise'][layer], \
                entry['max_pairwise'][layer]
            cells.append('–' if mean is None else
                         f'{mean:.2f} ({low:.2f}–{high:.2f})')
        lines.append(f'| {names.get(key, key)} | ' + ' | '.join(cells)
                     + ' |')
    rc = result['models']['rc']['mean_pairwise']
    first, last = layers[0], layers[-1]
    text = [
        f'Representation similarity between every pair of tasks, per '
        f'layer, on {len(result["images"])} validation images '
        f'({result["grid"]}×{result["grid"]}-pooled features, Spearman '
        f'correlation of the 1 − Pearson dissimilarity matrices; '
        f'`docs/analysis.md`): mean over task pairs (least–most similar '
        f'pair). 1 means two tasks order the image pairs identically.', '',
        '\n'.join(lines), '']
    shared = ('The shared encoder (the sequentially fine-tuned network) '
              'gives every task the same features, so its similarity is 1 '
              'at every layer by construction: each new task\'s gradients '
              'move the features every earlier task reads, which is where '
              'its forgetting comes from.')
    if rc[last] is None:
        text.append(shared)
        return '\n'.join(text)
    moved = rc[last] < 0.95
    shared += (
        f' In the RC bank each task computes its own features from the '
        f'frozen filter bank: the mean similarity between its tasks goes '
        f'from {rc[first]:.2f} at {first} to {rc[last]:.2f} at {last}' +
        (', so the tasks have taken different representations where they '
         'needed them, and training one cannot move another\'s.' if moved
         else '; on this short schedule the tasks have moved little from '
         'the base state they all start from (untrained RC tasks are '
         'identical), but each moved only its own.'))
    if 'finetune' in result['models']:
        ft = result['models']['finetune']['mean_pairwise']
        shared += (f' Separate single-task networks, which share nothing, '
                   f'give {ft[last]:.2f} at {last}.')
    same = result.get('same_task') or {}
    if 'rc~finetune' in same and 'rc~shared' in same:
        def mean(values):
            values = [v for v in values.values() if v is not None]
            return sum(values) / len(values) if values else float('nan')
        own, common = mean(same['rc~finetune'][last]), \
            mean(same['rc~shared'][last])
        shared += (f' Task by task, an RC task\'s {last} representation '
                   f'resembles its own single-task network\'s '
                   f'(similarity {own:.2f}, mean over tasks) '
                   f'{"more" if own > common else "less"} than the shared '
                   f'encoder\'s ({common:.2f}).')
    text.append(shared)
    return '\n'.join(text)


def _size_section(table: Mapping[str, Any]) -> str:
    from ..mmseg.analysis import format_size_table, size_summary
    return format_size_table(table) + '\n\n' + size_summary(table)


def run_demo(work: str, data: str, *,
             schedules: Mapping[str, Mapping[str, P.Schedule]],
             data_params: Mapping[str, Any] = P.DATA, threads: int = 2,
             seed: int = 0, pretrain_iters: Optional[int] = None,
             calib_size: Optional[tuple[int, int]] = None,
             probe_images: int = 2, rsa_images: int = 30,
             run_options: Optional[Mapping[str, Any]] = None,
             publish: Optional[str] = None,
             setup_note: str = '') -> dict[str, Any]:
    """Runs the demo (see the module docstring) and writes its outputs.

    Args:
        work: Output folder (``results.json``, ``report.md``, plots,
            ``demo.log``, banks and checkpoints).
        data: The synthetic benchmark's folder.
        schedules: ``{'rc'|'finetune': {task: Schedule}}``.
        data_params: Parameters of the benchmark (:data:`pipeline.DATA`).
        threads: torch CPU threads.
        seed: Seed of every training run.
        pretrain_iters: Proxy-pretrain a backbone from scratch for this
            many iterations instead of using the shipped asset.
        calib_size: RI calibration crop (default: the config's).
        probe_images: Validation images for the identity checks and the
            panels.
        rsa_images: Validation images of the RSA (at most the split's).
        run_options: More ``--cfg-options`` for every training run (e.g.
            a smaller batch for a smoke test).
        publish: Also copy the report, results and plots here (e.g.
            ``docs``), under the names of :data:`PUBLISHED`.
        setup_note: The report's first paragraph.

    Returns:
        The results (as written to ``results.json``).

    Raises:
        AssertionError: an earlier RC task changed (a bug).
    """
    import torch
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(threads)
    log = StageLog(osp.join(work, 'demo.log'))
    tasks = P.TASKS
    try:
        P.prepare_data(data, data_params, log)
        checkpoint = P.backbone_checkpoint(work, data, log,
                                           pretrain_iters=pretrain_iters,
                                           seed=seed)
        bank = P.convert_bank(P.ASSET if pretrain_iters is None
                              else checkpoint, osp.join(work, 'bank'), data,
                              log, calib_size=calib_size)
        with log.stage('probe images (identity checks, panels)'):
            samples, names = P.probe_samples(data, probe_images)

        rc_stages, checks, previous = [], [], None
        for k, task in enumerate(tasks):
            P.add_rc_task(bank, task, schedules['rc'][task], data,
                          osp.join(work, 'rc', task), log, seed=seed,
                          options=run_options)
            metrics = P.evaluate_bank(
                bank, data, osp.join(work, 'rc', 'test'),
                osp.join(work, 'rc', f'stage{k + 1}_{task}.json'), log,
                name=f'RC: evaluate the bank after adding {task}')
            with log.stage(f'RC: earlier tasks bit-identical after adding '
                           f'{task}'):
                now = dict(record=P.bank_record(bank), metrics=metrics,
                           outputs=P.task_outputs(bank, data, samples,
                                                  tasks[:k + 1]))
                if previous is not None:
                    checks.append(P.check_unchanged(
                        f'adding {task}', previous, now, tasks[:k]))
                    print(f'tasks {list(tasks[:k])}: files, outputs and '
                          f'metrics unchanged')
                previous = now
            rc_stages.append((task, metrics))

        ft_stages, last = [], None
        single, single_ckpt = {}, {}
        for k, task in enumerate(tasks):
            metrics, last = P.train_finetune(
                f'sequential fine-tuning: + {task}', task, tasks[:k + 1],
                schedules['finetune'][task], data,
                osp.join(work, 'finetune', task), log,
                init=checkpoint if k == 0 else None,
                load_from=last, seed=seed, options=run_options)
            ft_stages.append((task, metrics))
            if k == 0:  # the same run as the single-task one
                single[task], single_ckpt[task] = metrics[task], last
        for task in tasks[1:]:
            metrics, single_ckpt[task] = P.train_finetune(
                f'single-task fine-tuning: {task}', task, [task],
                schedules['finetune'][task], data,
                osp.join(work, 'single', task), log, init=checkpoint,
                seed=seed, options=run_options)
            single[task] = metrics[task]

        analysis = osp.join(work, 'analysis')
        rsa_result, size_table = _analyses(
            bank, data, analysis, last, single_ckpt,
            min(rsa_images, data_params['num_val']), log)
        with log.stage('predictions: panels from the final bank'):
            panels = P.draw_panels(bank, data, samples, names, work)
        with log.stage('report'):
            results = build_results(tasks, {'rc': rc_stages,
                                            'finetune': ft_stages}, single)
            results['summary'] = summarize(results)
            results['checks'] = checks
            results['costs'] = _costs(bank, data)
            results['settings'] = P.settings_record(
                schedules, seed=seed, threads=threads,
                run_options=dict(run_options or {}),
                data=dict(data_params, root=P.rel(data)),
                backbone=P.rel(P.ASSET) if pretrain_iters is None else
                f'proxy-pretrained from scratch, {pretrain_iters} '
                f'iterations', setup=setup_note)
            results['rsa'] = {m: e['mean_pairwise'] for m, e in
                              rsa_result['models'].items()}
            results['model_size'] = [
                dict(tasks=r['tasks'], rc=r['rc']['values'],
                     independent=r['independent']['values'],
                     shared=r['shared']['values'],
                     reduction=r['reduction'],
                     extrapolated=r['extrapolated'])
                for r in size_table['rows']]
            plot_stages(osp.join(work, 'stages.png'), results)
            sections = dict(rsa=rsa_section(rsa_result),
                            model_size=_size_section(size_table))
        results['stage_times'] = [r.as_dict() for r in log.records]
        _write(work, results, sections, panels, publish)
        dm = results['summary']['delta_m']
        log.say(f'\nwrote {P.rel(work)}/results.json, report.md, '
                f'stages.png, {len(panels)} prediction panel(s), '
                f'analysis/; Δm of RC against single-task fine-tuning '
                f'{format_percent(dm["rc"])}, sequential fine-tuning '
                f'{format_percent(dm["finetune"])}; '
                f'{sum(r.wall for r in log.records):.0f} s wall, '
                f'{sum(r.cpu for r in log.records):.0f} s CPU')
        if publish:
            log.say(f'published to {P.rel(publish)}/: '
                    + ', '.join(sorted(_published_names(panels))))
        return results
    finally:
        log.close()


def _analyses(bank, data, out_dir, shared_ckpt, single_ckpt, images, log):
    from ..mmseg import analysis
    from ..mmseg.apis import load_config
    command = tool_command(
        'tools/analyze.py', 'rsa', P.rel(P.RC_CONFIG), '--bank', P.rel(bank),
        '--data-root', P.rel(data), '--tasks', *P.TASKS, '--images', images,
        '--baseline-checkpoint', P.rel(shared_ckpt),
        *[a for t, c in single_ckpt.items()
          for a in ('--finetune-checkpoint', f'{t}={P.rel(c)}')],
        '--out-dir', P.rel(out_dir))
    with log.stage('analysis: RSA between tasks', command):
        result = analysis.rsa(
            load_config(P.RC_CONFIG, data_root=data), bank,
            tasks=list(P.TASKS), images=images,
            baseline_checkpoint=shared_ckpt,
            finetune_checkpoints=single_ckpt)
        analysis.write_rsa_report(result, out_dir)
    command = tool_command('tools/analyze.py', 'size', P.rel(P.RC_CONFIG),
                           '--bank', P.rel(bank), '--data-root',
                           P.rel(data), '--tasks-up-to', 10, '--out-dir',
                           P.rel(out_dir))
    with log.stage('analysis: model size against the number of tasks',
                   command):
        table = analysis.model_size_table(
            load_config(P.RC_CONFIG, data_root=data), bank, tasks_up_to=10)
        analysis.write_size_report(table, out_dir)
    return result, table


def _published_names(panels):
    names = list(PUBLISHED.values())
    names += [f'demo_{osp.basename(p)}' for p in panels]
    return names


def _write(work, results, sections, panels, publish):
    """results.json and report.md in the work dir; with ``publish`` the
    same report with the published file names, and the files."""
    save_json(osp.join(work, 'results.json'), results)
    images = dict(stages='stages.png',
                  predictions=[osp.basename(p) for p in panels],
                  rsa='analysis/rsa_layers.png',
                  model_size='analysis/model_size.png')
    notes = [f'Written by `python tools/demo.py`; every stage\'s equivalent '
             f'tool command is in `demo.log`.']
    write_report(osp.join(work, 'report.md'), results, images=images,
                 sections=sections, notes=notes)
    if not publish:
        return
    os.makedirs(publish, exist_ok=True)
    for source, name in PUBLISHED.items():
        if name != 'demo_report.md':
            shutil.copyfile(osp.join(work, source), osp.join(publish, name))
    for path in panels:
        shutil.copyfile(path, osp.join(publish,
                                       f'demo_{osp.basename(path)}'))
    docs_images = dict(
        stages=PUBLISHED['stages.png'],
        predictions=[f'demo_{osp.basename(p)}' for p in panels],
        rsa=PUBLISHED['analysis/rsa_layers.png'],
        model_size=PUBLISHED['analysis/model_size.png'])
    write_report(osp.join(publish, 'demo_report.md'), results,
                 images=docs_images, sections=sections, notes=notes)
