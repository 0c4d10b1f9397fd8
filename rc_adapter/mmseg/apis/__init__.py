"""Library functions behind ``tools/``: load a config, train, add a task,
evaluate, export, and the command-line wrapper.

Every tool is a thin command line over one function here, so anything a tool
does can be called from Python as well:

* :mod:`.config` -- :func:`load_config`, :func:`set_data_root`,
  :func:`configure_run`, :func:`check_outputs` / :func:`protected_inputs`
  (no output over what the user owns), :func:`component_errors` (mmengine /
  mmseg refusals as :class:`rc_adapter.RCConfigError`), :func:`enable_amp`;
* :mod:`.train` -- :func:`train`, :func:`train_task` (``tools/add_task.py``);
* :mod:`.evaluate` -- :func:`evaluate`;
* :mod:`.export` -- :func:`export_task`, :func:`run_onnx`;
* :mod:`.infer` -- :func:`infer` (``tools/infer.py``: panels for the
  user's own pictures);
* :mod:`.cli` -- :func:`run_cli` (the exit-code convention).

Deprecated for one release: ``add_task`` (now :func:`train_task`; the old
name collided with :func:`rc_adapter.add_task`) and ``RCUserError`` (now
the :class:`rc_adapter.RCError` family).
"""
import warnings

from ...core.errors import RCError
from .cli import run_cli
from .config import (AMP_OPTIM_WRAPPER, check_outputs, component_error,
                     component_errors, configure_run, enable_amp,
                     load_config, protected_inputs, set_data_root)
from .evaluate import evaluate
from .export import ONNX_OPSET, export_task, run_onnx
from .infer import infer
from .train import add_task, train, train_task

__all__ = ['load_config', 'set_data_root', 'configure_run', 'check_outputs',
           'protected_inputs', 'component_error', 'component_errors',
           'enable_amp', 'AMP_OPTIM_WRAPPER', 'train', 'train_task',
           'evaluate', 'export_task', 'run_onnx', 'ONNX_OPSET', 'infer',
           'run_cli']


def __getattr__(name):
    if name == 'RCUserError':
        warnings.warn('rc_adapter.mmseg.apis.RCUserError is deprecated '
                      '(accepted for one more release): catch '
                      'rc_adapter.RCError (or one of its subclasses)',
                      DeprecationWarning, stacklevel=2)
        return RCError
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
