"""Response Initialization (RI): PCA of a layer's responses, streamed.

For a weight layer ``W`` (conv, linear, attention projection) with responses
``Y`` (one sample per output pixel or token), RI takes
the eigenvectors ``U`` of the centred response covariance (descending
eigenvalues) and reparameterizes ``W = U (U^T W)``: the bank becomes
``Ws = U^T W`` and every task's modulator starts at ``Wt = U``. Since ``U`` is
orthonormal the function is unchanged.

Only running sums are kept (``sum y y^T`` in float64, ``sum y`` and the
count), so memory is ``O(c_out^2)`` per layer whatever the number of images.
Grouped convs get one PCA per group (a block-diagonal ``U``), the packed
q/k/v projection of attention one per projection.
"""
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
import torch.nn as nn

from .errors import RCConfigError

__all__ = ['ResponseStatistics', 'ResponseTarget',
           'collect_response_statistics']


class ResponseStatistics:
    """Running second-order statistics of one layer's output channels.

    Args:
        channels (int): Output channels of the layer.
        groups (int): Channel groups (conv groups; q/k/v of attention);
            statistics are kept per group.
        device (torch.device): Where the sums live. Defaults to CPU.
    """

    def __init__(self, channels: int, groups: int = 1,
                 device: Optional[torch.device] = None) -> None:
        if channels % groups:
            raise RCConfigError(f'{channels} channels do not split into '
                                f'{groups} groups')
        self.groups = groups
        self.group_channels = channels // groups
        shape = (groups, self.group_channels)
        self.gram = torch.zeros(shape + (self.group_channels,),
                                dtype=torch.float64, device=device)
        self.sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.counts = [0] * groups

    @property
    def count(self) -> int:
        """Samples seen (the smallest count over groups)."""
        return min(self.counts)

    @torch.no_grad()
    def update(self, response: torch.Tensor, channel_dim: int = 1) -> None:
        """Adds a batch of responses: ``(N, C, ...)`` with ``channel_dim=1``
        (convs; every spatial position is a sample) or ``(..., C)`` with
        ``channel_dim=-1`` (tokens; every token is a sample)."""
        response = response.detach()
        if response.dim() < 2:
            raise RCConfigError('responses need a batch and a channel dim')
        if channel_dim == 1:
            # One image at a time keeps the float64 copy small.
            for sample in response:
                self._add(sample.reshape(self.groups, self.group_channels,
                                         -1), list(range(self.groups)))
            return
        flat = response.reshape(-1, response.shape[-1])
        for chunk in flat.split(4096):
            self._add(chunk.t().reshape(self.groups, self.group_channels, -1),
                      list(range(self.groups)))

    @torch.no_grad()
    def update_group(self, group: int, response: torch.Tensor) -> None:
        """Adds channel-last responses ``(..., C/G)`` of one group only
        (e.g. the key projection of attention, fed by another input)."""
        flat = response.detach().reshape(-1, self.group_channels)
        for chunk in flat.split(4096):
            self._add(chunk.t().unsqueeze(0), [group])

    def _add(self, y, groups):
        y = y.to(device=self.gram.device, dtype=torch.float64)
        if len(groups) == self.groups:  # every group at once
            self.gram.baddbmm_(y, y.transpose(1, 2))
            self.sum += y.sum(dim=2)
            self.counts = [c + y.shape[2] for c in self.counts]
            return
        for index, g in enumerate(groups):
            block = y[index]
            self.gram[g].addmm_(block, block.t())
            self.sum[g] += block.sum(dim=1)
            self.counts[g] += block.shape[1]

    def covariance(self) -> torch.Tensor:
        """The centred covariance per group, shape (G, C/G, C/G)."""
        if self.count == 0:
            raise RuntimeError('no responses were collected')
        counts = torch.tensor(self.counts, dtype=torch.float64,
                              device=self.gram.device)
        mean = self.sum / counts.unsqueeze(1)
        cov = (self.gram / counts.view(-1, 1, 1)
               - mean.unsqueeze(2) * mean.unsqueeze(1))
        return (cov + cov.transpose(1, 2)) / 2

    def principal_directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvectors of the covariance, by descending eigenvalue.

        Returns:
            tuple[Tensor, Tensor]: ``U`` of shape (C, C/G) (group ``j``'s
            block in rows ``j*C/G:(j+1)*C/G``, columns are directions) and
            the eigenvalues of shape (G, C/G), both float64.
        """
        # Small matrices: one thread is several times faster than two here,
        # and far faster on a busy machine (MKL's threaded eigh).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            eigvals, eigvecs = torch.linalg.eigh(self.covariance())
        finally:
            torch.set_num_threads(threads)
        eigvals = eigvals.flip(-1)
        eigvecs = eigvecs.flip(-1)
        return eigvecs.reshape(-1, self.group_channels), eigvals


class ResponseTarget:
    """Where one layer's responses come from during calibration.

    Args:
        module (nn.Module): The module to hook.
        channels (int): Output channels of the reparameterized layer.
        groups (int): Channel groups of the statistics.
        kind (str): ``'output'`` -- the module's output, channels at
            ``channel_dim`` (convs: 1, linear layers: -1); ``'mha_in'`` --
            the packed q/k/v input projection of an ``nn.MultiheadAttention``
            (computed from its query/key/value inputs); ``'mha_out'`` -- its
            output projection (the attention module's output).
        channel_dim (int): See ``kind``.
    """

    def __init__(self, module: nn.Module, channels: int, groups: int = 1,
                 kind: str = 'output', channel_dim: int = 1) -> None:
        self.module = module
        self.channels = channels
        self.groups = groups
        self.kind = kind
        self.channel_dim = channel_dim

    def attach(self, stats: ResponseStatistics
               ) -> torch.utils.hooks.RemovableHandle:
        """Registers the hook feeding ``stats``; returns the handle."""
        if self.kind == 'output':
            def hook(module, inputs, output):
                stats.update(output, self.channel_dim)
            return self.module.register_forward_hook(hook)
        if self.kind == 'mha_out':
            def hook(module, inputs, output):
                stats.update(output[0], -1)
            return self.module.register_forward_hook(hook)
        if self.kind == 'mha_in':
            def pre_hook(module, args, kwargs):
                names = ('query', 'key', 'value')
                values = list(args[:3]) + [kwargs.get(n) for n in
                                           names[len(args[:3]):]]
                weight = module.in_proj_weight.chunk(3)
                bias = (module.in_proj_bias.chunk(3)
                        if module.in_proj_bias is not None else [None] * 3)
                for g, x in enumerate(values):
                    stats.update_group(g, torch.nn.functional.linear(
                        x, weight[g], bias[g]))
            return self.module.register_forward_pre_hook(pre_hook,
                                                         with_kwargs=True)
        raise ValueError(f'unknown response target kind {self.kind!r}')


@torch.no_grad()
def collect_response_statistics(
        model: nn.Module, targets: dict[str, Any],
        batches: Iterable[Any],
        on_first_batch: Optional[Callable[[Any, Any], None]] = None
) -> tuple[dict[str, ResponseStatistics], int]:
    """Streams ``batches`` through ``model`` and accumulates the responses
    of every target layer.

    Args:
        model (nn.Module): The model to run (in eval mode, without grad).
        targets (dict[str, ResponseTarget | nn.Conv2d]): What to record, by
            name; a plain conv stands for its output.
        batches (Iterable): Input batches; a tensor is moved to the model's
            device, a tuple/list is unpacked as positional arguments, a dict
            as keyword arguments.
        on_first_batch (callable, optional): Called with the first batch and
            the model's output for it (used to check function preservation).

    Returns:
        tuple[dict[str, ResponseStatistics], int]: statistics per target and
        the number of batches seen.
    """
    device = next(model.parameters()).device
    targets = {name: (t if isinstance(t, ResponseTarget) else
                      ResponseTarget(t, t.out_channels, t.groups))
               for name, t in targets.items()}
    stats = {name: ResponseStatistics(t.channels, t.groups)
             for name, t in targets.items()}
    handles = [t.attach(stats[name]) for name, t in targets.items()]
    was_training = model.training
    model.eval()
    num_batches = 0
    try:
        for batch in batches:
            batch = move_to(batch, device)
            output = call_with(model, batch)
            if num_batches == 0 and on_first_batch is not None:
                on_first_batch(batch, output)
            num_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if num_batches == 0:
        raise RCConfigError('calibration yielded no batches; Response '
                            'Initialization needs at least one input batch')
    return stats, num_batches


def move_to(batch: Any, device: torch.device) -> Any:
    """Moves a tensor, or the tensors of a tuple/list/dict, to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def call_with(model: nn.Module, batch: Any) -> Any:
    """Calls ``model`` on a batch (tensor, positional tuple or kwargs)."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)
