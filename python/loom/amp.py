"""loom.amp: mixed-precision training helpers (include/loom/amp.h).

    scaler = loom.amp.GradScaler()
    scaler.scale(loss).backward()
    scaler.step(optimizer)      # skipped when a gradient holds inf or NaN; returns whether it stepped
    scaler.update()

GradScaler is PyTorch's (torch.amp.GradScaler): the same arguments, state_dict
keys and errors. Gradients must be float32 (master weights).
"""
from loom._C._optim import GradScaler  # noqa: F401

__all__ = ["GradScaler"]
