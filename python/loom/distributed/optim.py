"""loom.distributed.optim: ZeroRedundancyOptimizer (torch.distributed.optim's), ZeRO stage 1.

    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=loom.optim.AdamW, lr=3e-4)
    loss.backward()   # this rank's part of the batch; no DDP: step() averages the gradients
    opt.step()        # reduce-scatter the gradients, step this rank's shard, all-gather the parameters

Each rank keeps 1/world_size of the optimizer state (Note [ZeRO-1] in
include/loom/optim/zero.h). step() and state_dict() are collectives: every
rank calls them. state_dict() is the full, unsharded one of optimizer_class,
on every rank. Clip with max_grad_norm (clipping .grad before step() would
clip each rank's unaveraged gradients).
"""
import inspect

from loom.optim import Optimizer

__all__ = ["ZeroRedundancyOptimizer"]


class ZeroRedundancyOptimizer(Optimizer):
    _zero = True

    def __init__(self, params, optimizer_class, process_group=None, **defaults):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)
                and optimizer_class._kind is not None):
            raise TypeError("ZeroRedundancyOptimizer: optimizer_class must be one of loom.optim's optimizers, "
                            f"got {optimizer_class!r}")
        self._kind = optimizer_class._kind
        self.optimizer_class = optimizer_class
        # The local optimizer's keywords, its own defaults filled in.
        signature = inspect.signature(optimizer_class.__init__)
        full = {name: p.default for name, p in signature.parameters.items() if name not in ("self", "params")}
        unknown = set(defaults) - set(full)
        if unknown:
            raise TypeError(f"{optimizer_class.__name__} got unexpected keyword arguments {sorted(unknown)}")
        full.update(defaults)
        missing = [name for name, v in full.items() if v is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"{optimizer_class.__name__} requires {', '.join(missing)}")
        if "betas" in full:
            full["betas"] = tuple(full["betas"])
        super().__init__(params, full, process_group)

    @property
    def max_grad_norm(self):
        """The total 2-norm the averaged gradient is clipped to inside step() (0: off)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        self._max_grad_norm = value
