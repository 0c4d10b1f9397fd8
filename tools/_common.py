"""Argument helpers shared by the command-line tools.

Every config-driven tool takes ``--data-root`` and ``--cfg-options``; the
training tools (``train.py``, ``add_task.py``) also ``--work-dir``,
``--launcher``, ``--resume`` and ``--amp``; ``test.py`` ``--work-dir`` and
``--launcher``. Every tool runs under
:func:`rc_adapter.mmseg.apis.run_cli`, whose exit status is the same for all
(see ``docs/tools.md``)::

    0    success
    1    a bug (unexpected exception, with its traceback)
    2    an error you can fix (rc_adapter.RCError), one paragraph
    3    the machine refused (OSError, out of memory), naming the file
    130  interrupted (Ctrl-C), saying what was and was not written

An mmengine/mmseg component that refuses its configuration (an unknown
type, a wrong argument, an argument check such as mmengine's
``AmpOptimWrapper`` on a machine without a GPU) is an error you can fix
(:func:`rc_adapter.mmseg.apis.component_errors`).
"""
import argparse
import os
import sys

# Tools run from a checkout without installation too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Appended to every tool's --help.
EXIT_STATUS = ('exit status: 0 success, 1 bug (traceback), 2 error you can '
               'fix (one paragraph), 3 the machine refused (file, disk, '
               'memory), 130 interrupted; see docs/tools.md')


def make_parser(doc):
    """An ``ArgumentParser`` described by a tool's module docstring.

    A flag the shared helpers add again (e.g. ``--resume``) replaces the
    tool's own definition (``conflict_handler='resolve'``).
    """
    return argparse.ArgumentParser(
        description=doc.split('\n\n')[0], epilog=EXIT_STATUS,
        conflict_handler='resolve')


def add_common_args(parser, *, launcher=True, work_dir=True, training=None):
    """The shared flags.

    Args:
        parser: The tool's parser.
        launcher: Add ``--launcher`` (and the ``--local-rank`` that
            ``torch.distributed.launch`` passes).
        work_dir: Add ``--work-dir``.
        training: Add ``--resume`` and ``--amp``; defaults to
            ``launcher and work_dir`` (the training tools).
    """
    from mmengine.config import DictAction
    parser.add_argument('--data-root', help='point every dataloader of the '
                        'config at this dataset folder')
    if work_dir:
        parser.add_argument('--work-dir', help='folder for logs and '
                            'checkpoints (default work_dirs/<config>)')
    if launcher:
        parser.add_argument('--launcher', choices=['none', 'pytorch'],
                            default='none', help='job launcher (pytorch = '
                            'torchrun, see tools/dist_train.sh)')
        # torch.distributed.launch passes it; torchrun sets LOCAL_RANK.
        parser.add_argument('--local_rank', '--local-rank', type=int,
                            default=0, help=argparse.SUPPRESS)
    if training if training is not None else (launcher and work_dir):
        parser.add_argument('--resume', action='store_true',
                            help='resume from the latest checkpoint in '
                            'the work dir')
        parser.add_argument('--amp', action='store_true',
                            help='automatic mixed precision (bfloat16 on a '
                            'CPU, float16 on a GPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')


def add_model_source_args(parser, verb):
    """``--bank`` or ``--checkpoint`` (one of them) and ``--tasks``, for
    the tools that run a trained model (``verb``: what they do with the
    tasks, e.g. ``'evaluate'``)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--bank', help='task bank folder')
    source.add_argument('--checkpoint', help='mmengine checkpoint of the '
                        'config (e.g. a fine-tuning baseline)')
    parser.add_argument('--tasks', nargs='+', help=f'tasks to {verb} '
                        f'(default: every task the bank holds)')


def load(args, **kwargs):
    """Loads the config named by ``args.config`` with the common options
    (``kwargs`` go to :func:`rc_adapter.mmseg.apis.load_config`), applies
    ``--amp``, and refuses a work dir on or inside the bank, the config,
    the checkpoint or the data root before any work."""
    from rc_adapter.mmseg.apis import (check_outputs, enable_amp,
                                       load_config, protected_inputs)
    if getattr(args, 'launcher', 'none') != 'none':
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, data_root=args.data_root,
                      work_dir=getattr(args, 'work_dir', None),
                      cfg_options=args.cfg_options,
                      launcher=getattr(args, 'launcher', 'none'), **kwargs)
    if getattr(args, 'amp', False):
        enable_amp(cfg)
    if hasattr(args, 'work_dir'):
        check_outputs({'--work-dir': cfg.get('work_dir')}, protected_inputs(
            cfg, config_path=args.config, bank=getattr(args, 'bank', None),
            checkpoint=getattr(args, 'checkpoint', None)))
    return cfg


def run(main, interrupted):
    """Runs ``main`` under the tools' exit-status convention, with the
    refusals of mmengine/mmseg components as errors you can fix.

    The objects of the imports (torch, mmengine, mmseg: ~500k) are moved
    out of the garbage collector's sight first (``gc.freeze``): they live
    as long as the process, and every full collection (mmengine's datasets
    run one each, ~0.4 s) would otherwise walk them all again.
    """
    import gc

    from rc_adapter.mmseg.apis import component_errors, run_cli
    gc.freeze()

    def guarded():
        with component_errors():
            return main()

    run_cli(guarded, interrupted=interrupted)
