"""Response Initialization (RI): PCA of a conv's responses, streamed.

For a conv ``W`` with responses ``Y`` (one sample per output pixel), RI takes
the eigenvectors ``U`` of the centred response covariance (descending
eigenvalues) and reparameterizes ``W = U (U^T W)``: the bank becomes
``Ws = U^T W`` and every task's modulator starts at ``Wt = U``. Since ``U`` is
orthonormal the function is unchanged.

Only running sums are kept (``sum y y^T`` in float64, ``sum y`` and the
count), so memory is ``O(c_out^2)`` per layer whatever the number of images.
Grouped convs get one PCA per group (a block-diagonal ``U``).
"""
import torch

from .errors import RCConfigError

__all__ = ['ResponseStatistics', 'collect_response_statistics']


class ResponseStatistics:
    """Running second-order statistics of one conv's output channels.

    Args:
        channels (int): Output channels of the conv.
        groups (int): Conv groups; statistics are kept per group.
        device (torch.device): Where the sums live. Defaults to CPU.
    """

    def __init__(self, channels, groups=1, device=None):
        if channels % groups:
            raise ValueError(f'{channels} channels do not split into '
                             f'{groups} groups')
        self.groups = groups
        self.group_channels = channels // groups
        shape = (groups, self.group_channels)
        self.gram = torch.zeros(shape + (self.group_channels,),
                                dtype=torch.float64, device=device)
        self.sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.count = 0

    @torch.no_grad()
    def update(self, response):
        """Adds a batch of responses of shape (N, C, H, W) (or (N, C))."""
        response = response.detach()
        if response.dim() < 2:
            raise ValueError('responses need a batch and a channel dim')
        # One image at a time keeps the float64 copy small.
        for sample in response:
            y = sample.reshape(self.groups, self.group_channels, -1)
            y = y.to(device=self.gram.device, dtype=torch.float64)
            self.gram.baddbmm_(y, y.transpose(1, 2))
            self.sum += y.sum(dim=2)
            self.count += y.shape[2]

    def covariance(self):
        """The centred covariance per group, shape (G, C/G, C/G)."""
        if self.count == 0:
            raise RuntimeError('no responses were collected')
        mean = self.sum / self.count
        cov = self.gram / self.count - mean.unsqueeze(2) * mean.unsqueeze(1)
        return (cov + cov.transpose(1, 2)) / 2

    def principal_directions(self):
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


@torch.no_grad()
def collect_response_statistics(model, convs, batches, on_first_batch=None):
    """Streams ``batches`` through ``model`` and accumulates the responses
    of ``convs``.

    Args:
        model (nn.Module): The model to run (in eval mode, without grad).
        convs (dict[str, nn.Conv2d]): Convs to record, by name.
        batches (Iterable): Input batches; a tensor is moved to the model's
            device, a tuple/list is unpacked as positional arguments, a dict
            as keyword arguments.
        on_first_batch (callable, optional): Called with the first batch and
            the model's output for it (used to check function preservation).

    Returns:
        tuple[dict[str, ResponseStatistics], int]: statistics per conv and the
        number of batches seen.
    """
    device = next(model.parameters()).device
    stats = {name: ResponseStatistics(conv.out_channels, conv.groups)
             for name, conv in convs.items()}
    handles = []
    for name, conv in convs.items():
        def hook(module, inputs, output, _stat=stats[name]):
            _stat.update(output)
        handles.append(conv.register_forward_hook(hook))
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


def move_to(batch, device):
    """Moves a tensor, or the tensors of a tuple/list/dict, to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def call_with(model, batch):
    """Calls ``model`` on a batch (tensor, positional tuple or kwargs)."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)
