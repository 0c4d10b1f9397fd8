"""Residual adapters (Rebuffi et al., 2017/2018): the baselines the RC paper
compares with.

A frozen shared conv ``Ws`` plus a small per-task adapter:

* series: ``y = Ws x + A_t(BN_t(Ws x))``, ``A_t`` a 1x1 conv
  ``c_out -> c_out``;
* parallel: ``y = Ws x + A_t x``, ``A_t`` a 1x1 conv ``c_in -> c_out`` with
  ``Ws``'s stride.

The adapter conv starts at zero, so a new task computes the shared conv's
function. Like RC, nothing shared trains, so tasks never interfere.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import check_task_name
from ..errors import RCConfigError
from .task_module import TaskModule

__all__ = ['RAConv2d', 'RA_MODES']

#: ``series`` or ``parallel``.
RA_MODES = ('series', 'parallel')


class RAConv2d(nn.Conv2d, TaskModule):
    """A frozen conv with one residual adapter per task.

    Build it with :meth:`from_conv`. The per-task modules live in
    ``adapters.<task>``: series -- ``bn`` (BatchNorm2d) and ``conv`` (1x1,
    ``c_out -> c_out``); parallel -- ``conv`` (1x1, ``c_in -> c_out``,
    stride of the shared conv, grouped like it).
    """

    task_container = 'adapters'

    def __init__(self, *args, mode: str = 'series', **kwargs) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self.active_task = None
        if mode not in RA_MODES:
            raise RCConfigError(f'residual adapter mode must be one of '
                                f'{RA_MODES}, got {mode!r}')
        if mode == 'parallel' and (
                self.padding == 'valid' or any(
                    k % 2 == 0 for k in self.kernel_size)
                or (self.padding != 'same' and any(
                    2 * p != d * (k - 1) for p, d, k in zip(
                        self.padding, self.dilation, self.kernel_size)))):
            raise RCConfigError('a parallel adapter needs an odd kernel '
                                'with "same" padding (2 * padding == '
                                'dilation * (kernel - 1))')
        if self.groups != 1:
            raise RCConfigError('residual adapters are defined for dense '
                                'convs (groups=1)')
        self.mode = mode
        self.adapters = nn.ModuleDict()
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mode: str = 'series') -> 'RAConv2d':
        """Wraps ``conv`` (its weight and bias tensors are reused)."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size,
                    stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, mode=mode,
                    device='meta')
        layer.weight = nn.Parameter(conv.weight.data, requires_grad=False)
        if conv.bias is not None:
            layer.bias = nn.Parameter(conv.bias.data, requires_grad=False)
        layer.train(conv.training)
        return layer

    def reset_parameters(self) -> None:
        if self.weight.device.type != 'meta':
            super().reset_parameters()

    def add_task(self, task: str) -> None:
        check_task_name(task)
        if task in self.adapters:
            raise RCConfigError(f'task {task!r} already exists')
        kw = dict(device=self.weight.device, dtype=self.weight.dtype)
        adapter = nn.Module()
        if self.mode == 'series':
            adapter.bn = nn.BatchNorm2d(self.out_channels, **kw)
            adapter.conv = nn.Conv2d(self.out_channels, self.out_channels, 1,
                                     bias=False, **kw)
        else:
            adapter.conv = nn.Conv2d(self.in_channels, self.out_channels, 1,
                                     stride=self.stride, bias=False, **kw)
        nn.init.zeros_(adapter.conv.weight)
        adapter.requires_grad_(False)
        adapter.train(self.training)
        self.adapters[task] = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapter = self._active_submodule()
        y = self._conv_forward(x, self.weight, self.bias)
        if self.mode == 'series':
            return y + adapter.conv(adapter.bn(y))
        return y + adapter.conv(x)

    def merged(self, task: str) -> nn.Conv2d:
        """A plain conv with ``task``'s function (BatchNorm in eval mode).

        Series: ``(I + A diag(a)) Ws`` with ``a``/``c`` the BN's eval-mode
        scale/shift, bias ``(I + A diag(a)) b + A c`` (so the merged conv
        has a bias even where the shared one had none); parallel: the
        adapter added to the kernel's centre tap.
        """
        adapter = self.task_submodule(task)
        with torch.no_grad():
            a = adapter.conv.weight.reshape(adapter.conv.out_channels, -1)
            weight = self.weight.clone()
            bias = (self.bias.clone() if self.bias is not None else
                    torch.zeros(self.out_channels, dtype=weight.dtype,
                                device=weight.device))
            if self.mode == 'series':
                bn = adapter.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias - bn.running_mean * scale
                mix = torch.eye(self.out_channels, dtype=a.dtype,
                                device=a.device) + a * scale.unsqueeze(0)
                weight = (mix @ self.weight.reshape(self.out_channels, -1)
                          ).reshape_as(self.weight)
                bias = mix @ bias + a @ shift
            else:
                ky, kx = ((k - 1) // 2 for k in self.kernel_size)
                weight[:, :, ky, kx] += a.reshape(self.out_channels, -1)
        has_bias = self.bias is not None or self.mode == 'series'
        conv = nn.Conv2d(self.in_channels, self.out_channels,
                         self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation,
                         groups=self.groups, bias=has_bias,
                         padding_mode=self.padding_mode, device='meta')
        conv.weight = nn.Parameter(weight)
        if has_bias:
            conv.bias = nn.Parameter(bias)
        conv.train(self.training)
        return conv

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', residual_adapter={self.mode}, '
                f'tasks={self.task_names()}')

