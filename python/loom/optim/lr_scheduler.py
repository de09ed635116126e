"""loom.optim.lr_scheduler: torch.optim.lr_scheduler's schedulers.

StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, OneCycleLR
and SequentialLR are loom's C++ schedulers (include/loom/optim/lr_scheduler.h),
value for value PyTorch's. LambdaLR and MultiplicativeLR, which take Python
functions, are written here over LRScheduler, the base a schedule of your own
subclasses as in PyTorch: set your attributes, call super().__init__(optimizer),
and return the groups' lrs from get_lr() (self.last_epoch, self.base_lrs and
self.optimizer.param_groups are there to read).

As in PyTorch, building a scheduler takes its first step at once, and
state_dict() holds last_epoch, _step_count, base_lrs and _last_lr.
"""
from loom import _C

_optim = _C._optim

StepLR = _optim.StepLR
MultiStepLR = _optim.MultiStepLR
ExponentialLR = _optim.ExponentialLR
CosineAnnealingLR = _optim.CosineAnnealingLR
LinearLR = _optim.LinearLR
OneCycleLR = _optim.OneCycleLR
SequentialLR = _optim.SequentialLR

__all__ = ["LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "OneCycleLR", "SequentialLR"]


class LRScheduler(_optim.LRScheduler):
    """The base of a schedule written in Python: get_lr() returns each group's lr for self.last_epoch."""

    def __init__(self, optimizer):
        super().__init__(optimizer)
        # The first step calls get_lr(), which only a constructed object can reach.
        self._initial_step()

    def get_lr(self):
        raise NotImplementedError(f"{type(self).__name__} must define get_lr()")


def _per_group(fn, optimizer, what):
    n = len(optimizer.param_groups)
    if isinstance(fn, (list, tuple)):
        if len(fn) != n:
            raise ValueError(f"Expected {n} {what}s, but got {len(fn)}")
        return list(fn)
    return [fn] * n


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(epoch), one function or one per group."""

    def __init__(self, optimizer, lr_lambda):
        self.lr_lambdas = _per_group(lr_lambda, optimizer, "lr_lambda")
        super().__init__(optimizer)

    def get_lr(self):
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(LRScheduler):
    """lr = lr * lr_lambda(epoch) at every step after the first."""

    def __init__(self, optimizer, lr_lambda):
        self.lr_lambdas = _per_group(lr_lambda, optimizer, "lr_lambda")
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch > 0:
            return [g["lr"] * f(self.last_epoch) for f, g in zip(self.lr_lambdas, groups)]
        return [g["lr"] for g in groups]
