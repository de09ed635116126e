"""Autograd from Python: backward, grad, grad modes, hooks, and Functions written in Python."""
import numpy as np
import pytest
import torch

import loom


def lt(a, dtype=loom.float64, requires_grad=True):
    return loom.tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


def test_backward_matches_torch():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    la, lb = lt(a), lt(b)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (la @ lb).tanh().sum().backward()
    (ta @ tb).tanh().sum().backward()
    np.testing.assert_allclose(la.grad.numpy(), ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(lb.grad.numpy(), tb.grad.numpy(), rtol=1e-12)


def test_grad_and_higher_order():
    x = lt([1.5, -0.5])
    y = (x ** 3).sum()
    (g,) = loom.autograd.grad(y, x, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), 3 * np.array([1.5, -0.5]) ** 2)
    (gg,) = loom.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(gg.numpy(), 6 * np.array([1.5, -0.5]))
    assert x.grad is None  # grad() never accumulates


def test_grad_allow_unused():
    x, z = lt([1.0]), lt([2.0])
    assert loom.autograd.grad((x * 2).sum(), [x, z], allow_unused=True)[1] is None
    with pytest.raises(loom.Error):
        loom.autograd.grad((x * 2).sum(), [x, z])


def test_no_grad_context_and_decorator():
    x = lt([1.0, 2.0])
    with loom.no_grad():
        assert not (x * 2).requires_grad
        with loom.enable_grad():
            assert (x * 2).requires_grad
    assert (x * 2).requires_grad

    @loom.no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad
    assert loom.is_grad_enabled()
    with loom.set_grad_enabled(False):
        assert not loom.is_grad_enabled()
    assert loom.is_grad_enabled()
    with loom.inference_mode():
        assert not (x + 1).requires_grad


def test_leaf_identity_grad_and_hooks():
    x = lt([1.0, 2.0, 3.0])
    seen = []
    h = x.register_hook(lambda g: seen.append(g.numpy().copy()) or g * 2)
    (x * x).sum().backward()
    np.testing.assert_allclose(seen[0], [2, 4, 6])
    np.testing.assert_allclose(x.grad.numpy(), [4, 8, 12])
    assert x.grad is x.grad  # one Python object per tensor
    h.remove()
    x.grad = None
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2, 4, 6])


def test_retain_graph_and_errors():
    x = lt([1.0, 2.0])
    y = (x.exp()).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp([1.0, 2.0]))
    with pytest.raises(loom.Error, match="backward through the graph a second time"):
        y.backward()
    with pytest.raises(RuntimeError):  # loom.Error is a RuntimeError
        (x * 2).backward()  # not a scalar, no gradient given


def test_in_place_on_saved_tensor_is_an_error():
    x = lt([1.0, 2.0])
    y = x * 1
    z = (y * y).sum()
    y.add_(1)
    with pytest.raises(loom.Error, match="modified by an inplace operation"):
        z.backward()


class Cube(loom.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        ctx.save_for_backward(x)
        return x ** 3 * k

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x ** 2 * ctx.k, None


class SplitSum(loom.autograd.Function):
    """Two outputs, one saved output, a non-differentiable output."""

    @staticmethod
    def forward(ctx, a, b):
        s = a + b
        d = a - b
        idx = (a > b).long()
        ctx.save_for_backward(s)
        ctx.mark_non_differentiable(idx)
        return s.exp(), d, idx

    @staticmethod
    def backward(ctx, g_exp, g_d, g_idx):
        (s,) = ctx.saved_tensors
        ge = g_exp * s.exp()
        return ge + g_d, ge - g_d


def test_python_function_matches_analytic_gradient():
    x = lt([0.5, -1.0, 2.0])
    y = Cube.apply(x, 2.0)
    assert y.grad_fn.name() == "CubeBackward"
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * np.array([0.5, -1.0, 2.0]) ** 2)


def test_python_function_several_outputs_against_torch():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(4), rng.standard_normal(4)
    la, lb = lt(a), lt(b)
    e, d, idx = SplitSum.apply(la, lb)
    assert not idx.requires_grad and idx.dtype == loom.int64
    (e.sum() + (d * d).sum()).backward()
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ((ta + tb).exp().sum() + ((ta - tb) ** 2).sum()).backward()
    np.testing.assert_allclose(la.grad.numpy(), ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(lb.grad.numpy(), tb.grad.numpy(), rtol=1e-12)


def test_python_function_in_a_module_and_gradcheck():
    # Finite differences of a Python-defined Function in float64.
    x = lt([0.3, -0.7])
    eps = 1e-6
    (g,) = loom.autograd.grad(Cube.apply(x, 1.5).sum(), x)
    for i in range(2):
        xp = x.detach().numpy().copy()
        xm = xp.copy()
        xp[i] += eps
        xm[i] -= eps
        fd = (1.5 * (xp ** 3).sum() - 1.5 * (xm ** 3).sum()) / (2 * eps)
        assert abs(g[i].item() - fd) < 1e-6


def test_python_function_bad_backward_is_an_error():
    class Bad(loom.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return loom.ones(5, dtype=loom.float64)

    x = lt([1.0, 2.0])
    with pytest.raises(loom.Error, match="BadBackward.*invalid gradient.*\\[5\\].*\\[2\\]"):
        Bad.apply(x).sum().backward()


def test_python_function_exception_in_backward_propagates():
    class Raises(loom.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise ValueError("boom")

    x = lt([1.0])
    with pytest.raises(Exception, match="boom"):
        Raises.apply(x).sum().backward()
    # the interpreter is still healthy
    assert (x * 2).sum().item() == 2.0


def test_function_without_grad_gives_plain_outputs():
    x = lt([1.0, 2.0], requires_grad=False)
    y = Cube.apply(x, 1.0)
    assert y.grad_fn is None and not y.requires_grad


def test_checkpoint_recomputes_and_matches():
    from loom.utils.checkpoint import checkpoint, checkpoint_sequential
    loom.manual_seed(0)
    block = loom.nn.Sequential(loom.nn.Linear(6, 6), loom.nn.GELU(), loom.nn.Dropout(0.3), loom.nn.Linear(6, 6))
    x = loom.randn(4, 6, requires_grad=True)
    calls = []

    def f(t):
        calls.append(1)
        return block(t)

    loom.manual_seed(1)
    plain = block(x).square().sum()
    plain.backward()
    g_plain = [p.grad.numpy().copy() for p in block.parameters()] + [x.grad.numpy().copy()]
    block.zero_grad()
    x.grad = None
    loom.manual_seed(1)
    ck = checkpoint(f, x).square().sum()
    assert len(calls) == 1
    ck.backward()
    assert len(calls) == 2  # run again in backward, with the same dropout mask
    assert ck.item() == plain.item()
    g_ck = [p.grad.numpy() for p in block.parameters()] + [x.grad.numpy()]
    for a, b in zip(g_plain, g_ck):
        np.testing.assert_array_equal(a, b)
    out = checkpoint_sequential(block, 2, x)
    assert out.shape == (4, 6) and out.requires_grad
    with pytest.raises(loom.Error, match="argument 1 is a int"):
        checkpoint(lambda a, b: a, x, 3)


def test_checkpoint_sequential_of_python_modules():
    from loom.utils.checkpoint import checkpoint_sequential

    class Scale(loom.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = loom.nn.Parameter(loom.full((5,), 1.5))

        def forward(self, x):
            return (x * self.w).tanh() * 2

    seq = loom.nn.Sequential(Scale(), loom.nn.Linear(5, 5), Scale(), Scale())
    x = loom.randn(3, 5, requires_grad=True)
    seq(x).sum().backward()
    want = [p.grad.numpy().copy() for p in seq.parameters()]
    seq.zero_grad()
    checkpoint_sequential(seq, 2, x).sum().backward()
    for a, p in zip(want, seq.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), a, rtol=1e-6)
