"""loom.utils.checkpoint: activation checkpointing, as torch.utils.checkpoint.

checkpoint(function, *args) runs `function` without keeping its
intermediate tensors and runs it again during backward to rebuild them;
checkpoint_sequential(functions, segments, input) does that for the segments
of a Sequential. Both are loom::checkpoint (include/loom/checkpoint.h).
"""
from loom import _C

__all__ = ["checkpoint", "checkpoint_sequential"]


def checkpoint(function, *args, use_reentrant=None, **kwargs):
    """`function` takes the tensors in `args` (and `kwargs`, passed as they
    are) and returns one tensor; it is run again in backward, so it must
    compute the same values from the same inputs (dropout draws the same
    numbers: loom's random state is restored for the rerun)."""
    del use_reentrant  # loom has one implementation; the flag is PyTorch's choice between two
    for i, a in enumerate(args):
        if not isinstance(a, _C.Tensor):
            raise _C.Error(f"checkpoint: argument {i} is a {type(a).__name__}; pass tensors only "
                           "(close over other values)")
    return _C._autograd.checkpoint(lambda xs: function(*xs, **kwargs), list(args))


def checkpoint_sequential(functions, segments, input, use_reentrant=None):
    del use_reentrant
    return _C._nn.checkpoint_sequential(functions, segments, input)
