"""loom.compile: capture a step once, replay it as a graph of kernel calls (include/loom/jit.h).

    @loom.compile
    def train_step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    for x, y in loader:
        loss = train_step(x, y)   # the first calls run eagerly and record; later ones
        sched.step()              # replay the recorded kernels and run no Python

The function takes tensors and returns None, a tensor, or a tuple or list of
tensors. A replay reads at each call what changes between steps (the
arguments, the optimizer's hyperparameters such as a scheduler's lr, random
draws), and nothing else: Python code in the function runs only while
recording. So host reads of values computed in the step (loss.item(),
printing a tensor, branching on a value) raise loom.Error while recording.
A new argument shape records a new graph (up to cache_size of them).

The keywords are loom's CompileOptions: cache_size, plan_memory, optimize,
fuse, fuse_gemm_epilogues, parallel, max_recordings, recompute_cheap,
checkpoint_segments, memory_budget_bytes. The compiled function's .graph
(ops(), str(), memory_plan()) and .stats show what it captured.
"""
from loom import _C

__all__ = ["compile"]


def compile(fn=None, **options):  # noqa: A001 - torch.compile's name
    """Compiles `fn`; used bare (@loom.compile) or with options (@loom.compile(fuse=False))."""
    if fn is None:
        return lambda f: _C._jit.Compiled(f, **options)
    return _C._jit.Compiled(fn, **options)
