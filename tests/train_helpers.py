"""A tiny task bank on generated data for the training tests, built
in-process (no tool launch): synthetic NYUD-layout data, the small
configuration of ``tool_helpers.small_config``, a random width-16 backbone
converted with RI, and optionally ``semseg`` trained into the bank."""
import hashlib
import os

from tool_helpers import small_config, tiny_backbone_checkpoint

TASKS = ('semseg', 'depth', 'normals', 'edge')
BASE = 'rc_r18_synthetic_nyud.py'


def make_workspace(tmp, *, first_task='semseg', num_train=6, num_val=3,
                   extra=''):
    """Data, config and bank under ``tmp``; ``first_task`` trained into the
    bank (None: an empty bank)."""
    from rc_adapter.mmseg.convert import convert_checkpoint
    from rc_adapter.synthetic import generate
    data = tmp / 'data'
    generate('nyud', str(data), num_train=num_train, num_val=num_val,
             size=(32, 32), seed=3)
    config = small_config(tmp / 'small.py', data, BASE, TASKS, extra=extra)
    checkpoint = tiny_backbone_checkpoint(tmp / 'resnet18-small.pth')
    bank = tmp / 'bank'
    convert_checkpoint(config, checkpoint, bank, calib_images=4,
                       calib_size=(32, 32), batch_size=2, progress=False,
                       log=lambda *_: None)
    workspace = dict(tmp=tmp, data=data, config=config, bank=str(bank))
    if first_task is not None:
        train(workspace, first_task, 'wd_first')
    return workspace


def train(workspace, task, work_dir, cfg_options=None, **kwargs):
    """``train_task`` in-process on the workspace's bank."""
    from rc_adapter.mmseg.apis import load_config, train_task
    cfg = load_config(workspace['config'],
                      work_dir=str(workspace['tmp'] / work_dir),
                      cfg_options=cfg_options)
    return train_task(cfg, bank=workspace['bank'], task=task,
                      overrides=cfg_options, **kwargs)


def evaluate(workspace, tasks, work_dir='wd_eval'):
    """The bank's tasks evaluated in-process: ``{task: {metric: value}}``."""
    from rc_adapter.mmseg.apis import evaluate as run_evaluate
    from rc_adapter.mmseg.apis import load_config
    cfg = load_config(workspace['config'],
                      work_dir=str(workspace['tmp'] / work_dir))
    return run_evaluate(cfg, bank=workspace['bank'],
                        tasks=list(tasks))['metrics']


def file_digests(folder):
    """sha256 of every file below ``folder`` (relative path -> hex)."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(
                    f.read()).hexdigest()
    return found
