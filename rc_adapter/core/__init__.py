"""The RC method in plain PyTorch (no mmseg/mmengine/mmcv imports)."""
from .bank import TaskBank, copy_task
from .config import RCConfig
from .errors import (AnnotationError, BankError, CheckpointError,
                     ConversionError, RCConfigError, RCError, ResourceError,
                     UnknownTaskError)
from .execution import (EXECUTION_MODES, clear_execution_measurements,
                        set_execution)
from .layers import (DiagonalModulator, FullModulator, LowRankModulator,
                     Modulator, RAConv2d, RCConv1d, RCConv2d, RCConv3d,
                     RCLayer, RCLinear, RCMultiheadAttention, TaskModule,
                     TaskSpecific)
from .ri import ResponseStatistics, collect_response_statistics
from .serving import TaskCache, load_shared, load_task, unload_task
from .surgery import (add_task, is_reparameterized, list_tasks,
                      load_task_state_dict, merge, output_change,
                      remove_task,
                      reparameterize, set_task, set_trainable_tasks,
                      shared_state_dict, summary, task_modules,
                      task_parameter_count, task_state_dict)

__all__ = [
    # configuration and errors
    'RCConfig', 'RCError', 'RCConfigError', 'UnknownTaskError', 'BankError',
    'CheckpointError', 'ConversionError', 'AnnotationError', 'ResourceError',
    # layers
    'TaskModule', 'RCLayer', 'RCConv1d', 'RCConv2d', 'RCConv3d', 'RCLinear',
    'RCMultiheadAttention', 'RAConv2d', 'TaskSpecific', 'Modulator',
    'FullModulator', 'LowRankModulator', 'DiagonalModulator',
    # execution
    'EXECUTION_MODES', 'set_execution', 'clear_execution_measurements',
    # Response Initialization
    'ResponseStatistics', 'collect_response_statistics',
    # surgery and task operations
    'reparameterize', 'add_task', 'remove_task', 'set_task',
    'set_trainable_tasks', 'list_tasks', 'is_reparameterized',
    'task_modules', 'task_state_dict', 'load_task_state_dict',
    'shared_state_dict', 'task_parameter_count', 'merge', 'summary',
    'output_change',
    # the task bank, and serving tasks from it
    'TaskBank', 'copy_task', 'load_shared', 'load_task', 'unload_task',
    'TaskCache',
]
