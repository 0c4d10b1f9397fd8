"""Argument helpers shared by the command-line tools."""
import argparse
import os
import sys

# Tools run from a checkout without installation too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def load(args):
    """Loads the config named by ``args.config`` with the common options."""
    from rc_adapter.mmseg.apis import load_config
    if getattr(args, 'launcher', 'none') != 'none':
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return load_config(args.config, data_root=args.data_root,
                       work_dir=getattr(args, 'work_dir', None),
                       cfg_options=args.cfg_options,
                       launcher=getattr(args, 'launcher', 'none'))
