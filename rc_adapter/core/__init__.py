"""The RC method in plain PyTorch (no mmseg/mmengine/mmcv imports)."""
from .bank import TaskBank
from .config import RCConfig
from .errors import (AnnotationError, BankError, CheckpointError,
                     ConversionError, RCConfigError, RCError, ResourceError,
                     UnknownTaskError)
from .execution import (EXECUTION_MODES, clear_execution_measurements,
                        set_execution)
from .layers import (DiagonalModulator, FullModulator, LowRankModulator,
                     Modulator, RCConv1d, RCConv2d, RCConv3d, RCLayer,
                     RCLinear, RCMultiheadAttention, TaskModule,
                     TaskSpecific)
from .ri import ResponseStatistics, collect_response_statistics
from .surgery import (add_task, is_reparameterized, list_tasks,
                      load_task_state_dict, merge, output_change,
                      remove_task,
                      reparameterize, set_task, set_trainable_tasks,
                      shared_state_dict, summary, task_modules,
                      task_parameter_count, task_state_dict)

__all__ = [
    'TaskBank', 'RCConfig', 'RCError', 'RCConfigError', 'UnknownTaskError',
    'BankError', 'CheckpointError', 'ConversionError', 'AnnotationError',
    'ResourceError', 'EXECUTION_MODES', 'Modulator', 'FullModulator',
    'LowRankModulator', 'DiagonalModulator', 'RCLayer', 'RCConv1d',
    'RCConv2d', 'RCConv3d', 'RCLinear', 'RCMultiheadAttention',
    'TaskModule', 'TaskSpecific', 'clear_execution_measurements',
    'set_execution', 'ResponseStatistics', 'collect_response_statistics',
    'add_task', 'is_reparameterized', 'list_tasks', 'load_task_state_dict',
    'merge', 'output_change', 'remove_task', 'reparameterize', 'set_task',
    'set_trainable_tasks', 'shared_state_dict', 'summary', 'task_modules',
    'task_parameter_count', 'task_state_dict',
]
