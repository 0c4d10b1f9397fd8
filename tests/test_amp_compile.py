"""RC layers under mixed precision (autocast) and ``torch.compile``."""
import copy

import pytest
import torch
import torch.nn as nn

import rc_adapter as rc
from rc_adapter.core.layers import FAMILIES


class _Net(nn.Module):
    """A 3x3 conv, a grouped conv, a 1x1 conv, attention and a linear
    layer: every RC layer type."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.point = nn.Conv2d(16, 24, 1)
        self.attn = nn.MultiheadAttention(24, 4, batch_first=True)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.point(self.grouped(torch.relu(self.bn(self.conv(x)))))
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(tokens, tokens, tokens)[0]
        return self.fc(tokens)


def _model(family, ri=False):
    """The net with tasks a and b; ``ri``: Response Initialization on a
    random batch (the low-rank and diagonal activation paths then run on
    the bank with the base folded in)."""
    torch.manual_seed(0)
    model = _Net()
    calibration = [torch.randn(2, 3, 8, 8)] if ri else None
    rc.reparameterize(model, ['a', 'b'], modulator=family, rank=4,
                      calibration=calibration)
    return model


@pytest.mark.parametrize('execution', ['activation', 'weight'])
@pytest.mark.parametrize('family,ri', [(f, False) for f in
                                       ('auto',) + FAMILIES]
                         + [('lowrank', True), ('diagonal', True)])
def test_bf16_autocast_training_is_finite_and_isolated(family, ri,
                                                       execution):
    model = _model(family, ri)
    rc.set_execution(model, execution)
    x = torch.randn(2, 3, 8, 8)
    rc.set_task(model, 'a')
    model.eval()
    with torch.no_grad():
        before = model(x).clone()
    state_a = {k: v.clone() for k, v in rc.task_state_dict(model, 'a')
               .items()}
    shared = {k: v.clone() for k, v in rc.shared_state_dict(model).items()}
    rc.set_task(model, 'b')
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                          weight_decay=1e-4)
    for _ in range(2):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(torch.randn(2, 3, 8, 8))
        assert out.dtype == torch.bfloat16
        loss = out.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and g.dtype == torch.float32
                             and torch.isfinite(g).all() for g in grads)
        opt.step()
    # The frozen bank keeps its stored dtype; task a is untouched.
    assert all(v.dtype == torch.float32 for v in
               rc.shared_state_dict(model).values() if v.is_floating_point())
    rc.set_task(model, 'a')
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert all(torch.equal(v, rc.task_state_dict(model, 'a')[k])
               for k, v in state_a.items())
    now = rc.shared_state_dict(model)
    assert all(torch.equal(v, now[k]) for k, v in shared.items())


def test_eval_cache_follows_the_autocast_state():
    model = _model('auto')
    model.eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
        assert low.dtype == torch.bfloat16
        again = model(x)  # not the bf16 weights cached under autocast
    assert again.dtype == torch.float32
    assert torch.equal(again, plain)
    torch.testing.assert_close(low.float(), plain, rtol=0.05, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('family', FAMILIES)
def test_fp16_autocast_on_cuda(family):
    model = _model(family).cuda()
    rc.set_task(model, 'b')
    model.train()
    with torch.autocast('cuda', dtype=torch.float16):
        out = model(torch.randn(2, 3, 8, 8, device='cuda'))
    assert out.dtype == torch.float16
    out.float().pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters()
               if p.requires_grad)


def _same_train_step(compiled, model, reference, x):
    """One training step of ``compiled`` (wrapping ``model``) and of the
    eager ``reference``: equal outputs and trainable gradients."""
    out_c, out_e = compiled(x), reference(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    out_c.pow(2).mean().backward()
    out_e.pow(2).mean().backward()
    for (name, p), q in zip(model.named_parameters(),
                            reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4,
                                       atol=1e-5, msg=name)


@pytest.mark.parametrize('family', ['auto', 'lowrank'])
def test_torch_compile_matches_eager_and_guards_the_task(family):
    # aot_eager: Dynamo capture and AOT autograd without C++ code
    # generation (the inductor backend is measured in benchmarks/).
    torch._dynamo.reset()
    model = _model(family)
    with torch.no_grad():  # give the tasks different functions
        for task, scale in (('a', 0.1), ('b', -0.1)):
            for p in rc.task_state_dict(model, task).values():
                if p.is_floating_point() and p.dim() > 1:
                    p.add_(scale)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend='aot_eager')
    x = torch.randn(2, 3, 8, 8)
    rc.set_task(model, 'a')
    rc.set_task(reference, 'a')
    model.train()
    reference.train()
    _same_train_step(compiled, model, reference, x)
    model.eval()
    reference.eval()
    with torch.no_grad():
        for task in ('a', 'b', 'a'):
            rc.set_task(model, task, update_trainable=False)
            rc.set_task(reference, task, update_trainable=False)
            torch.testing.assert_close(compiled(x), reference(x),
                                       rtol=1e-5, atol=1e-5)
        rc.set_task(model, 'a', update_trainable=False)
        out_a = compiled(x)
        rc.set_task(model, 'b', update_trainable=False)
        assert not torch.allclose(compiled(x), out_a)


@pytest.mark.parametrize('family', ['lowrank', 'diagonal'])
def test_compiled_training_on_an_ri_base_is_one_graph(family):
    """Eager training runs the bank with RI's base folded in, a cache kept
    between steps; a compiled step runs the unfolded path instead, in one
    graph (``fullgraph``), with the eager step's outputs and gradients."""
    torch._dynamo.reset()
    model = _model(family, ri=True)
    rc.set_task(model, 'b')
    model.train()
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    _same_train_step(compiled, model, reference, torch.randn(2, 3, 8, 8))
    assert any(layer._fold is not None and layer._fold[2] is not None
               for layer in reference.modules() if hasattr(layer, '_fold'))
