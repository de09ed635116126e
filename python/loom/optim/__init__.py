"""loom.optim: torch.optim's optimizers, run by loom's C++ ones (include/loom/optim).

    opt = loom.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss.backward(); opt.step(); opt.zero_grad()

params is an iterable of tensors, or of dicts ({"params": [...], "lr": 0.1})
that give a group its own hyperparameters. opt.param_groups is a list of
dicts as in PyTorch: `group["lr"] = 0.01` reaches the C++ optimizer at once.
state_dict() has PyTorch's layout ({"state": {i: {...}}, "param_groups": [...]}),
which loom.save stores as one safetensors file.
"""
from collections.abc import MutableMapping

from loom import _C
from loom.optim import lr_scheduler  # noqa: F401

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "lr_scheduler"]

_optim = _C._optim


class _ParamGroup(MutableMapping):
    """One entry of Optimizer.param_groups: a dict over the C++ group.

    "params" and the hyperparameters ("lr", "betas", "momentum", ...) read and
    write the C++ group; "initial_lr" is the schedulers' base lr; any other
    key a user stores stays here, as in a PyTorch group dict.
    """

    def __init__(self, optimizer, index, extra):
        self._opt = optimizer
        self._index = index
        self._extra = extra

    def _hyperparameters(self):
        return dict(self._opt._group_hyperparameters(self._index))

    def _bound_keys(self):
        keys = ["params"]
        for name, _ in self._opt._group_hyperparameters(self._index):
            if name == "betas0":
                keys.append("betas")
            elif name != "betas1":
                keys.append(name)
        if "fused" in self._opt.defaults:
            keys.append("fused")
        if self._opt._group_initial_lr(self._index) is not None:
            keys.append("initial_lr")
        return keys

    def __getitem__(self, key):
        i = self._index
        if key == "params":
            return self._opt._group_params(i)
        if key == "fused" and "fused" in self._opt.defaults:
            return self._opt._group_fused(i)
        if key == "initial_lr":
            lr = self._opt._group_initial_lr(i)
            if lr is None:
                raise KeyError(key)
            return lr
        hp = self._hyperparameters()
        if key == "betas" and "betas0" in hp:
            return (hp["betas0"], hp["betas1"])
        if key in hp:
            return bool(hp[key]) if isinstance(self._opt.defaults.get(key), bool) else hp[key]
        return self._extra[key]

    def __setitem__(self, key, value):
        i = self._index
        if key == "params":
            raise ValueError("loom.optim: a group's parameters are fixed once the optimizer has them; "
                             "use add_param_group for new ones")
        if key == "fused" and "fused" in self._opt.defaults:
            self._opt._group_set_fused(i, value)
        elif key == "initial_lr":
            self._opt._group_set_initial_lr(i, float(value))
        elif key == "betas" and "betas" in self._opt.defaults:
            b0, b1 = value
            self._opt._group_set(i, "betas0", float(b0))
            self._opt._group_set(i, "betas1", float(b1))
        elif key in self._opt.defaults:
            self._opt._group_set(i, key, float(value))
        else:
            self._extra[key] = value

    def __delitem__(self, key):
        if key in self._extra:
            del self._extra[key]
        else:
            raise KeyError(f"loom.optim: '{key}' belongs to the C++ group and cannot be removed")

    def __iter__(self):
        yield from self._bound_keys()
        yield from self._extra

    def __len__(self):
        return len(self._bound_keys()) + len(self._extra)

    def __repr__(self):
        return repr(dict(self))


def _param_list(params, what):
    if isinstance(params, _C.Tensor):
        raise TypeError(f"{what} should be an iterable of Tensors or dicts, but got {type(params).__name__}")
    return list(params)


class Optimizer(_optim.Optimizer):
    """The base of loom's optimizers (torch.optim.Optimizer).

    Subclasses name their C++ optimizer in `_kind`; an optimizer whose
    update is written in Python is not supported (the step runs in C++).
    """

    _kind = None
    _zero = False

    def __init__(self, params, defaults, process_group=None):
        if self._kind is None:
            raise TypeError("loom.optim.Optimizer runs loom's C++ optimizers: use or subclass "
                            "SGD, Adam, AdamW, Adagrad or RMSprop")
        self.defaults = dict(defaults)
        groups = _param_list(params, "params argument given to the optimizer")
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        specs, extras = [], []
        for g in groups:
            specs.append((_param_list(g["params"], "a param group's 'params'"), self._keywords(g)))
            extras.append({k: v for k, v in g.items() if k != "params" and k not in self.defaults})
        super().__init__(self._kind, specs, self._keywords(self.defaults), self._zero, process_group)
        self._groups = [_ParamGroup(self, i, e) for i, e in enumerate(extras)]

    def _keywords(self, group):
        # The C++ options take the hyperparameters by name; the constructor's
        # own defaults are already the C++ ones where unset.
        return {k: v for k, v in group.items() if k in self.defaults}

    @property
    def param_groups(self):
        return self._groups

    def add_param_group(self, param_group):
        params = param_group["params"]
        params = [params] if isinstance(params, _C.Tensor) else _param_list(params, "a param group's 'params'")
        self._add_param_group(params, self._keywords(param_group))
        extra = {k: v for k, v in param_group.items() if k != "params" and k not in self.defaults}
        self._groups.append(_ParamGroup(self, len(self._groups), extra))

    @property
    def state(self):
        """{parameter: {"step": ..., "exp_avg": ...}} for every parameter with state."""
        out = {}
        for g in self._groups:
            for p in g["params"]:
                s = self._state_of(p)
                if s is not None:
                    out[p] = s
        return out

    def state_dict(self):
        """PyTorch's layout: {"state": {i: {name: tensor}}, "param_groups": [{..., "params": [i, ...]}]}."""
        groups = [{} for _ in self._groups]
        state = {}
        for key, t in self._state_dict().items():
            head, index, name = key.split(".", 2)
            index = int(index)
            if head == "state":
                state.setdefault(index, {})[name] = t
            elif name == "params":
                groups[index]["params"] = t.tolist()
            else:
                groups[index][name] = t.item()
        for g, view in zip(groups, self._groups):
            if "betas0" in g:
                g["betas"] = (g.pop("betas0"), g.pop("betas1"))
            for k, v in self.defaults.items():
                if isinstance(v, bool) and k in g:
                    g[k] = bool(g[k])
            for k in ("fused", "initial_lr"):
                if k in view:
                    g[k] = view[k]
            g.update(view._extra)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        flat = {}
        for g, group in enumerate(groups):
            prefix = f"param_groups.{g}."
            for k, v in group.items():
                if k == "params":
                    flat[prefix + k] = _C.tensor(list(v), dtype=_C.int64)
                elif k == "betas" and "betas" in self.defaults:
                    flat[prefix + "betas0"] = _C.tensor(float(v[0]), dtype=_C.float64)
                    flat[prefix + "betas1"] = _C.tensor(float(v[1]), dtype=_C.float64)
                elif k in self.defaults and k != "fused":
                    flat[prefix + k] = _C.tensor(float(v), dtype=_C.float64)
        for i, entries in state_dict["state"].items():
            for name, t in entries.items():
                flat[f"state.{int(i)}.{name}"] = t
        # The C++ loader checks every key and shape before it changes anything.
        self._load_state_dict(flat)
        for view, group in zip(self._groups, groups):
            for k, v in group.items():
                if k in ("fused", "initial_lr") or (k != "params" and k not in self.defaults):
                    view[k] = v

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, g in enumerate(self._groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(k for k in g if k != "params"):
                lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, Nesterov, L2 weight decay."""

    _kind = "SGD"

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, fused=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, fused=fused))


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient)."""

    _kind = "Adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, fused=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, fused=fused))


class AdamW(Optimizer):
    """torch.optim.AdamW (decoupled weight decay)."""

    _kind = "AdamW"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, fused=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, fused=fused))


class Adagrad(Optimizer):
    """torch.optim.Adagrad."""

    _kind = "Adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, maximize=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))


class RMSprop(Optimizer):
    """torch.optim.RMSprop."""

    _kind = "RMSprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))
