"""Per-task cost and reach of the reparameterization, per backbone.

For each backbone: parameters, the per-task trainable parameters and the
share of weight-layer parameters that get a per-task path, with the paper's
rule (``modulator='full'``: full modulators, copies where they are not
cheaper), with the default ``modulator='auto'``, and with a 5 % per-task
budget. Counting only (no timing), so the machine's load does not matter.

    python benchmarks/bench_reach.py [--out reach.json] [--backbones ...]
"""
import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def _timm(name, **kwargs):
    import timm
    return lambda: timm.create_model(name, pretrained=False, num_classes=0,
                                     **kwargs)


def _mmseg(type_name, **kwargs):
    def build():
        import rc_adapter  # noqa: F401  (mmseg on mmcv-lite)
        from mmseg.registry import MODELS
        from mmengine.registry import init_default_scope
        init_default_scope('mmseg')
        return MODELS.build(dict(type=type_name, **kwargs))
    return build


BACKBONES = {
    'timm resnet18': _timm('resnet18'),
    'mmseg ResNetV1c-50': _mmseg('ResNetV1c', depth=50),
    'timm efficientnet_b0': _timm('efficientnet_b0'),
    'timm convnext_tiny': _timm('convnext_tiny'),
    'timm vit_small_patch16_224': _timm('vit_small_patch16_224'),
    'timm swin_tiny_patch4_window7_224': _timm(
        'swin_tiny_patch4_window7_224'),
    'mmseg SwinTransformer (Swin-T)': _mmseg(
        'SwinTransformer', embed_dims=96, depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24), window_size=7),
    'mmseg MixVisionTransformer (MiT-b0)': _mmseg(
        'MixVisionTransformer', embed_dims=32, num_heads=[1, 2, 5, 8],
        num_layers=[2, 2, 2, 2]),
}

SETTINGS = {
    "full (the paper's rule)": dict(modulator='full'),
    'auto': dict(),
    'auto, budget 5 %': dict(budget=0.05),
}


def measure(build, options):
    """Reparameterizes a fresh backbone; returns its cost figures."""
    import rc_adapter as rc
    model = build()
    params = sum(p.numel() for p in model.parameters())
    rc.reparameterize(model, ['t'], **options)
    info = rc.summary(model)
    per_task = info['params_per_task']['t']
    return dict(params=params, per_task=per_task,
                per_task_share=per_task / params,
                weight_reach=info['weight_reach'],
                modulators=info['modulators'], layers=info['layers'],
                skipped=len(info['skipped']))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--backbones', nargs='+', choices=list(BACKBONES),
                        default=list(BACKBONES))
    parser.add_argument('--out', help='write the results as JSON')
    args = parser.parse_args(argv)
    logging.getLogger('rc_adapter').setLevel(logging.ERROR)
    import torch
    torch.set_num_threads(1)
    results = {}
    start = time.time()
    for name in args.backbones:
        results[name] = {s: measure(BACKBONES[name], o)
                         for s, o in SETTINGS.items()}
        print(f'  {name}: done ({time.time() - start:.0f} s)',
              file=sys.stderr)
    header = ['backbone', 'params']
    for setting in SETTINGS:
        header += [f'per task, {setting}', 'reach']
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for name, rows in results.items():
        cells = [name, f'{next(iter(rows.values()))["params"] / 1e6:.1f} M']
        for setting in SETTINGS:
            r = rows[setting]
            cells += [f'{r["per_task"] / 1e6:.2f} M '
                      f'({100 * r["per_task_share"]:.1f} %)',
                      f'{100 * r["weight_reach"]:.0f} %']
        print('| ' + ' | '.join(cells) + ' |')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
