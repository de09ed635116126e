"""loom.amp: mixed precision (include/loom/autocast.h, include/loom/amp.h).

    with loom.autocast("cpu", dtype=loom.bfloat16):
        loss = loss_fn(model(x), y)         # matmuls in bfloat16, softmax and the loss in float32
    scaler = loom.amp.GradScaler()          # float16 needs a loss scale; bfloat16 does not
    scaler.scale(loss).backward()
    scaler.step(optimizer)      # skipped when a gradient holds inf or NaN; returns whether it stepped
    scaler.update()

autocast is torch.autocast: the same op policy (PyTorch's CUDA lists: matmul,
linear, convolutions and attention in the low dtype; softmax, norms,
reductions and losses in float32), float32 master weights, a context manager
or a decorator. GradScaler is PyTorch's (torch.amp.GradScaler): the same
arguments, state_dict keys and errors. Gradients must be float32.
"""
import functools

from loom import _C
from loom._C._optim import GradScaler  # noqa: F401

__all__ = ["GradScaler", "autocast"]


class autocast:
    """torch.autocast(device_type, dtype=None, enabled=True): ops on
    `device_type` tensors follow the autocast op policy inside the block, on
    this thread. dtype defaults to bfloat16 on "cpu" and float16 on "cuda"."""

    def __init__(self, device_type="cpu", dtype=None, enabled=True, cache_enabled=None):
        _C._autograd.autocast_state(device_type)  # checks the name
        self.device_type = device_type
        self.fast_dtype = dtype if dtype is not None else (_C.bfloat16 if device_type == "cpu" else _C.float16)
        self._enabled = bool(enabled)
        self._saved = []

    def __enter__(self):
        self._saved.append(_C._autograd.autocast_state(self.device_type))
        _C._autograd.set_autocast_state(self.device_type, self._enabled, self.fast_dtype)
        return self

    def __exit__(self, *exc):
        enabled, dtype = self._saved.pop()
        _C._autograd.set_autocast_state(self.device_type, enabled, dtype)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with autocast(self.device_type, self.fast_dtype, self._enabled):
                return fn(*args, **kwargs)
        return wrapped
