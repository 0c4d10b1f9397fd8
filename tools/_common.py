"""Argument helpers shared by the command-line tools.

Every config-driven tool takes ``--data-root`` and ``--cfg-options``; the
training tools also ``--work-dir`` and ``--launcher``. Every tool runs under
:func:`rc_adapter.mmseg.apis.run_cli`, whose exit status is the same for all
(see ``docs/tools.md``)::

    0    success
    1    a bug (unexpected exception, with its traceback)
    2    an error you can fix (rc_adapter.RCError), one paragraph
    3    the machine refused (OSError, out of memory), naming the file
    130  interrupted (Ctrl-C), saying what was and was not written
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
    """An ``ArgumentParser`` described by a tool's module docstring."""
    return argparse.ArgumentParser(
        description=doc.split('\n\n')[0], epilog=EXIT_STATUS)


def add_common_args(parser, *, launcher=True, work_dir=True):
    """--data-root, --cfg-options and optionally --work-dir/--launcher."""
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
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')


def load(args, **kwargs):
    """Loads the config named by ``args.config`` with the common options
    (``kwargs`` go to :func:`rc_adapter.mmseg.apis.load_config`)."""
    from rc_adapter.mmseg.apis import load_config
    if getattr(args, 'launcher', 'none') != 'none':
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return load_config(args.config, data_root=args.data_root,
                       work_dir=getattr(args, 'work_dir', None),
                       cfg_options=args.cfg_options,
                       launcher=getattr(args, 'launcher', 'none'), **kwargs)


def run(main, interrupted):
    """Runs ``main`` under the tools' exit-status convention."""
    from rc_adapter.mmseg.apis import run_cli
    run_cli(main, interrupted=interrupted)
