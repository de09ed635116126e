"""loom.optim and loom.optim.lr_scheduler against torch.optim, step for step."""
import numpy as np
import pytest
import torch

import loom
from loom.optim import lr_scheduler as ls

SHAPES = [(3, 4), (5,)]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    ours = [loom.tensor(a, requires_grad=True) for a in init]
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    return ours, theirs


def set_grads(ours, theirs, rng):
    """The same gradients on both sides: backward of sum(p * g) is g."""
    for p, q in zip(ours, theirs):
        g = rng.standard_normal(tuple(p.shape)).astype(np.float32)
        (p * loom.tensor(g)).sum().backward()
        q.grad = torch.tensor(g)


def assert_params_close(ours, theirs, rtol=1e-5, atol=1e-6):
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=rtol, atol=atol)


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=1e-2, maximize=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_steps_match_pytorch(name, kwargs):
    ours, theirs = make_params()
    opt = getattr(loom.optim, name)(ours, **kwargs)
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    rng = np.random.default_rng(1)
    for _ in range(5):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
    assert_params_close(ours, theirs)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_per_tensor_steps_agree(fused):
    ours, theirs = make_params()
    opt = loom.optim.AdamW(ours, lr=1e-2, fused=fused)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    rng = np.random.default_rng(2)
    for _ in range(3):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
    assert opt.param_groups[0]["fused"] is fused
    assert_params_close(ours, theirs)


def test_param_groups_and_setting_lr():
    ours, theirs = make_params()
    opt = loom.optim.SGD([{"params": [ours[0]]}, {"params": [ours[1]], "lr": 0.5, "name": "bias"}], lr=0.1,
                         momentum=0.9)
    ref = torch.optim.SGD([{"params": [theirs[0]]}, {"params": [theirs[1]], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[1]["name"] == "bias"
    assert opt.param_groups[0]["params"][0] is ours[0]
    rng = np.random.default_rng(3)
    for step in range(4):
        for g, h in zip(opt.param_groups, ref.param_groups):
            g["lr"] = h["lr"] = 0.1 / (step + 1)
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
    assert_params_close(ours, theirs)
    betas = loom.optim.Adam(ours, betas=(0.8, 0.9)).param_groups[0]
    assert betas["betas"] == (0.8, 0.9) and betas["amsgrad"] is False
    betas["betas"] = (0.5, 0.6)
    assert betas["betas"] == (0.5, 0.6)


def test_add_param_group_and_state():
    ours, theirs = make_params()
    opt = loom.optim.Adam([ours[0]], lr=0.1)
    ref = torch.optim.Adam([theirs[0]], lr=0.1)
    opt.add_param_group({"params": ours[1], "lr": 0.01})
    ref.add_param_group({"params": theirs[1], "lr": 0.01})
    rng = np.random.default_rng(4)
    set_grads(ours, theirs, rng)
    opt.step()
    ref.step()
    assert_params_close(ours, theirs)
    assert set(opt.state[ours[1]]) == {"step", "exp_avg", "exp_avg_sq"}
    np.testing.assert_allclose(opt.state[ours[1]]["exp_avg"].numpy(), ref.state[theirs[1]]["exp_avg"].numpy(),
                               rtol=1e-6)


def test_zero_grad_and_closure():
    p = loom.tensor([1.0, 2.0], requires_grad=True)
    opt = loom.optim.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    np.testing.assert_allclose(p.detach().numpy(), [0.8, 1.6], rtol=1e-6)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad.numpy(), [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None


def test_state_dict_round_trip(tmp_path):
    ours, _ = make_params()
    opt = loom.optim.AdamW(ours, lr=1e-2, amsgrad=True)

    def steps(params, o, n, seed):
        r = np.random.default_rng(seed)
        for _ in range(n):
            for p in params:
                (p * loom.tensor(r.standard_normal(tuple(p.shape)).astype(np.float32))).sum().backward()
            o.step()
            o.zero_grad()

    steps(ours, opt, 3, 6)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999) and sd["param_groups"][0]["amsgrad"] is True
    assert sd["param_groups"][0]["params"] == [0, 1]
    assert set(sd["state"][1]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    loom.save(sd, tmp_path / "opt.safetensors")

    copies = [loom.tensor(p.detach().numpy(), requires_grad=True) for p in ours]
    resumed = loom.optim.AdamW(copies, lr=0.5)
    resumed.load_state_dict(loom.load(tmp_path / "opt.safetensors"))
    assert resumed.param_groups[0]["lr"] == pytest.approx(1e-2)
    steps(ours, opt, 2, 7)
    steps(copies, resumed, 2, 7)
    for p, q in zip(ours, copies):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


def test_load_state_dict_errors_name_the_problem():
    ours, _ = make_params()
    opt = loom.optim.Adam(ours)
    sd = opt.state_dict()
    sd["param_groups"][0]["params"] = [0]
    with pytest.raises(loom.Error, match="doesn't match the size"):
        opt.load_state_dict(sd)
    with pytest.raises(loom.Error, match="Invalid learning rate"):
        loom.optim.SGD(ours, lr=-1)
    with pytest.raises(ValueError, match="empty parameter list"):
        loom.optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        loom.optim.SGD(ours[0], lr=0.1)


def scheduler_pair(make_ours, make_ref, optimizer="SGD", groups=1, **opt_kwargs):
    p = [loom.zeros(2, requires_grad=True) for _ in range(groups)]
    q = [torch.zeros(2, requires_grad=True) for _ in range(groups)]
    opt_kwargs = opt_kwargs or {"lr": 0.1, "momentum": 0.9}
    opt = getattr(loom.optim, optimizer)([{"params": [x]} for x in p], **opt_kwargs)
    ref = getattr(torch.optim, optimizer)([{"params": [x]} for x in q], **opt_kwargs)
    return opt, make_ours(opt), ref, make_ref(ref)


def run_schedule(sched, opt, steps, key="lr"):
    values = [[g[key] for g in opt.param_groups]]
    for _ in range(steps):
        opt.step()
        sched.step()
        values.append([g[key] for g in opt.param_groups])
    return values


SCHEDULERS = {
    "StepLR": lambda m: lambda o: m.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda m: lambda o: m.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3),
    "ExponentialLR": lambda m: lambda o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m: lambda o: m.CosineAnnealingLR(o, T_max=7, eta_min=0.01),
    "LinearLR": lambda m: lambda o: m.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=6),
    "LambdaLR": lambda m: lambda o: m.LambdaLR(o, lr_lambda=lambda e: 1.0 / (1 + e)),
    "MultiplicativeLR": lambda m: lambda o: m.MultiplicativeLR(o, lr_lambda=lambda e: 0.95),
    "OneCycleLR": lambda m: lambda o: m.OneCycleLR(o, max_lr=1.0, total_steps=20, three_phase=True),
    "OneCycleLR-linear": lambda m: lambda o: m.OneCycleLR(o, max_lr=[1.0, 0.5], epochs=4, steps_per_epoch=5,
                                                          anneal_strategy="linear"),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_matches_pytorch(name):
    make = SCHEDULERS[name]
    opt, sched, ref, ref_sched = scheduler_pair(make(ls), make(torch.optim.lr_scheduler), groups=2)
    steps = 19 if name.startswith("OneCycle") else 15
    ours = run_schedule(sched, opt, steps)
    theirs = run_schedule(ref_sched, ref, steps)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    assert sched.get_last_lr() == pytest.approx(ref_sched.get_last_lr(), rel=1e-12)
    assert sched.last_epoch == ref_sched.last_epoch
    if name.startswith("OneCycle"):  # the momentum cycles inversely
        np.testing.assert_allclose([g["momentum"] for g in opt.param_groups],
                                   [g["momentum"] for g in ref.param_groups], rtol=1e-12)


def test_one_cycle_cycles_adam_betas():
    make = SCHEDULERS["OneCycleLR"]
    opt, sched, ref, ref_sched = scheduler_pair(make(ls), make(torch.optim.lr_scheduler), optimizer="Adam", lr=0.1)
    for _ in range(8):
        opt.step(), sched.step(), ref.step(), ref_sched.step()
    assert opt.param_groups[0]["betas"] == pytest.approx(ref.param_groups[0]["betas"], rel=1e-12)


@pytest.mark.filterwarnings("ignore:The epoch parameter")  # PyTorch's own SequentialLR calls step(0)
def test_sequential_lr_matches_pytorch():
    def make(m):
        return lambda o: m.SequentialLR(o, [m.LinearLR(o, start_factor=0.2, total_iters=3),
                                            m.LambdaLR(o, lambda e: 0.9 ** e),
                                            m.CosineAnnealingLR(o, T_max=8)], milestones=[3, 6])

    opt, sched, ref, ref_sched = scheduler_pair(make(ls), make(torch.optim.lr_scheduler))
    np.testing.assert_allclose(run_schedule(sched, opt, 12), run_schedule(ref_sched, ref, 12), rtol=1e-12)


def test_scheduler_state_dict_resumes():
    opt, sched, _, _ = scheduler_pair(lambda o: ls.CosineAnnealingLR(o, T_max=10), lambda o: None)
    for _ in range(4):
        opt.step(), sched.step()
    sd = sched.state_dict()
    assert sd["last_epoch"] == 4 and sd["_step_count"] == 5 and sd["base_lrs"] == [0.1]
    opt2, sched2, _, _ = scheduler_pair(lambda o: ls.CosineAnnealingLR(o, T_max=10), lambda o: None)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sd)
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    with pytest.raises(loom.Error, match="unexpected key"):
        sched2.load_state_dict({"gamma": 0.1})


def test_custom_scheduler_subclass():
    class Halving(ls.LRScheduler):
        def __init__(self, optimizer, every):
            self.every = every
            super().__init__(optimizer)

        def get_lr(self):
            return [b * 0.5 ** (self.last_epoch // self.every) for b in self.base_lrs]

    p = loom.zeros(2, requires_grad=True)
    opt = loom.optim.SGD([p], lr=1.0)
    sched = Halving(opt, 2)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert sched.optimizer is opt


# ---- loom.amp.GradScaler ----

def test_grad_scaler_scales_skips_and_updates():
    loom.manual_seed(0)
    model = loom.nn.Linear(4, 2)
    opt = loom.optim.SGD(model.parameters(), lr=0.1)
    scaler = loom.amp.GradScaler(init_scale=8.0, growth_interval=2)
    x = loom.randn(3, 4)
    plain = (model(x) ** 2).mean()
    plain.backward()
    want = model.weight.grad.clone()
    opt.zero_grad()
    scaler.scale((model(x) ** 2).mean()).backward()
    scaler.unscale_(opt)
    assert model.weight.grad.equal(want)  # a power-of-two scale divides exactly
    assert scaler.step(opt) is True
    scaler.update()
    opt.zero_grad()
    scaler.scale((model(x) ** 2).mean()).backward()
    with loom.no_grad():
        model.bias.grad[0] = float("inf")
    before = model.weight.detach().clone()
    assert scaler.step(opt) is False
    assert model.weight.equal(before)
    scaler.update()
    assert scaler.get_scale() == 4.0
    state = scaler.state_dict()
    assert state == {"scale": 4.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2,
                     "_growth_tracker": 0}
    other = loom.amp.GradScaler()
    other.load_state_dict(state)
    assert other.get_scale() == 4.0
    with pytest.raises(loom.Error, match="no inf checks"):
        other.update()


# ---- loom.autocast ----

def test_autocast_follows_torch_autocast_dtypes_and_keeps_float32_master_weights():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    lx, lw = loom.tensor(x), loom.tensor(w, requires_grad=True)
    tx, tw = torch.tensor(x), torch.tensor(w, requires_grad=True)
    with loom.autocast("cpu", dtype=loom.bfloat16) as ac, torch.autocast("cpu", dtype=torch.bfloat16):
        assert ac.fast_dtype == loom.bfloat16
        ly = loom.nn.functional.linear(lx, lw)
        ty = torch.nn.functional.linear(tx, tw)
        assert ly.dtype == loom.bfloat16 and ty.dtype == torch.bfloat16
        # The same product of the same bfloat16 inputs: equal to bfloat16's last bit or one rounding apart.
        np.testing.assert_allclose(ly.float().detach().numpy(), ty.float().detach().numpy(), rtol=2 ** -7, atol=1e-6)
        lp = loom.softmax(ly, 1)
        assert lp.dtype == loom.float32
        loss = loom.nn.functional.cross_entropy(ly, loom.tensor([0, 1, 2, 0]))
        assert loss.dtype == loom.float32
        with loom.autocast("cpu", enabled=False):
            assert (lx @ lw.t()).dtype == loom.float32
        assert (lx @ lw.t()).dtype == loom.bfloat16
    assert (lx @ lw.t()).dtype == loom.float32
    loss.backward()
    assert lw.dtype == loom.float32 and lw.grad.dtype == loom.float32


def test_autocast_as_a_decorator_and_its_errors():
    @loom.autocast("cpu", dtype=loom.float16)
    def product(a, b):
        return a @ b

    a = loom.ones(2, 2)
    assert product(a, a).dtype == loom.float16
    assert (a @ a).dtype == loom.float32
    with pytest.raises(loom.Error, match="device_type must be 'cpu' or 'cuda'"):
        loom.autocast("tpu")
    with pytest.raises(loom.Error, match="must be bfloat16 or float16"):
        with loom.autocast("cpu", dtype=loom.float64):
            pass
    assert (a @ a).dtype == loom.float32  # a failed enter leaves the state alone
