"""loom.compile: a Python training step captured once and replayed gives the eager step's weights."""
import numpy as np
import pytest

import loom


def make_model(seed=0):
    rng = np.random.default_rng(seed)
    w1 = loom.tensor(rng.standard_normal((8, 16)).astype(np.float32) * 0.3, requires_grad=True)
    b1 = loom.zeros(16, requires_grad=True)
    w2 = loom.tensor(rng.standard_normal((16, 4)).astype(np.float32) * 0.3, requires_grad=True)
    return [w1, b1, w2]


def forward(params, x):
    w1, b1, w2 = params
    return loom.tanh(x.matmul(w1) + b1).matmul(w2)


def batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [(loom.tensor(rng.standard_normal((32, 8)).astype(np.float32)),
             loom.tensor(rng.standard_normal((32, 4)).astype(np.float32))) for _ in range(n)]


def train(step, params, opt, sched, data):
    losses = []
    for x, y in data:
        losses.append(step(x, y).item())
        sched.step()
    return losses


@pytest.mark.parametrize("options", [{}, {"fuse": False, "parallel": False}, {"plan_memory": False}])
def test_compiled_training_step_matches_eager(options):
    results = []
    for compiled in (False, True):
        params = make_model()
        opt = loom.optim.AdamW(params, lr=1e-2)
        sched = loom.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        calls = []

        def step(x, y):
            calls.append(1)
            loss = ((forward(params, x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        fn = loom.compile(step, **options) if compiled else step
        losses = train(fn, params, opt, sched, batches(10))
        results.append((losses, [p.detach().numpy().copy() for p in params]))
        if compiled:
            stats = fn.stats
            assert stats.calls == 10 and stats.replays > 0 and stats.recordings + stats.replays == 10
            # Python ran only while recording: a replay runs the kernels alone.
            assert len(calls) == stats.recordings
            graph = fn.graph
            assert graph.num_nodes == len(graph.ops()) > 0 and graph.num_values > 0
            assert graph.memory_plan().arena_bytes > 0 or not options.get("plan_memory", True)
            assert graph.to_dot().startswith("digraph")
    (eager_losses, eager_params), (compiled_losses, compiled_params) = results
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    for a, b in zip(eager_params, compiled_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class MLP(loom.nn.Module):
    """A Python module: its forward runs only while a compiled step records."""

    def __init__(self):
        super().__init__()
        self.fc1 = loom.nn.Linear(8, 16)
        self.fc2 = loom.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(loom.nn.functional.relu(self.fc1(x)))


def test_compiled_module_training_step_matches_eager():
    rng = np.random.default_rng(2)
    data = [(loom.tensor(rng.standard_normal((16, 8)).astype(np.float32)), loom.tensor(rng.integers(0, 3, 16)))
            for _ in range(6)]
    weights = []
    for compiled in (False, True):
        loom.manual_seed(0)
        model = MLP()
        opt = loom.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            loss = loom.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        fn = loom.compile(step) if compiled else step
        for x, y in data:
            fn(x, y)
        if compiled:
            assert fn.stats.replays > 0
        weights.append([p.detach().numpy().copy() for p in model.parameters()])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_graph_saves_as_dot(tmp_path):
    f = loom.compile(lambda x: x * 2 + 1)
    f(loom.ones(4))
    f.graph.save_dot(str(tmp_path / "g.dot"))
    assert (tmp_path / "g.dot").read_text() == f.graph.to_dot()
    assert "calls=1" in repr(f.stats)


def test_decorator_with_options_and_tuple_results():
    w = loom.ones(3)

    @loom.compile(fuse=False)
    def f(x):
        return x * w, x + 1

    @loom.compile
    def g(x):
        return [x * 2]

    for k in range(3):
        x = loom.full((3,), float(k))
        a, b = f(x)
        np.testing.assert_array_equal(a.numpy(), [k] * 3)
        np.testing.assert_array_equal(b.numpy(), [k + 1] * 3)
        (c,) = g(x)
        np.testing.assert_array_equal(c.numpy(), [2 * k] * 3)
    assert isinstance(f(x), tuple) and isinstance(g(x), list)
    assert f.stats.replays >= 1


def test_what_cannot_be_captured_raises_loom_error():
    @loom.compile
    def reads_host(x):
        if (x.sum() > 0).item():
            return x
        return -x

    with pytest.raises(loom.Error):
        reads_host(loom.ones(2))

    f = loom.compile(lambda x, s: x * s)
    with pytest.raises(loom.Error, match="argument 1 is a float"):
        f(loom.ones(2), 2.0)

    g = loom.compile(lambda x: 3.0)
    with pytest.raises(loom.Error, match="returned a float"):
        g(loom.ones(2))


def test_python_exceptions_propagate():
    def boom(x):
        raise ValueError("from the step")

    with pytest.raises(ValueError, match="from the step"):
        loom.compile(boom)(loom.ones(1))
