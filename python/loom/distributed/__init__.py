"""loom.distributed: torch.distributed over loom's process groups (include/loom/distributed.h).

    # mpirun -np 2 python3 train.py
    import loom.distributed as dist
    dist.init_process_group()                 # "mpi" under mpirun, else "local" (one rank)
    model = dist.DistributedDataParallel(model)
    ... loss.backward()                       # gradients averaged over the ranks on return
    dist.destroy_process_group()

Backends: "mpi" (Open MPI, CPU tensors; ranks from mpirun), "nccl" (when
loom was built with it), "local" (one process: every collective is the
identity, so a program written for N ranks runs unchanged), and "auto" (the
default: "mpi" under mpirun, else "local"). Collectives take contiguous CPU
tensors, work in place, and wait unless async_op=True, which returns a Work.
They are checked across ranks first: mismatched shapes on two ranks raise
loom.Error on every rank instead of hanging. MPI cannot start twice in one
process, so init after destroy_process_group() is an error for "mpi".
"""
from loom import _C, nn

__all__ = ["ReduceOp", "Work", "ProcessGroup", "is_available", "is_initialized", "is_mpi_available",
           "is_nccl_available", "init_process_group", "destroy_process_group", "get_rank", "get_world_size",
           "get_backend", "new_group", "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor",
           "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "send", "recv", "isend", "irecv",
           "barrier", "broadcast_module_state", "DistributedDataParallel"]

_d = _C._distributed

ReduceOp = _d.ReduceOp
Work = _d.Work
ProcessGroup = _d.ProcessGroup
is_initialized = _d.is_initialized
is_mpi_available = _d.is_mpi_available
is_nccl_available = _d.is_nccl_available
destroy_process_group = _d.destroy_process_group
new_group = _d.new_group
all_reduce = _d.all_reduce
broadcast = _d.broadcast
all_gather = _d.all_gather
all_gather_into_tensor = _d.all_gather_into_tensor
reduce_scatter = _d.reduce_scatter
reduce_scatter_tensor = _d.reduce_scatter_tensor
gather = _d.gather
scatter = _d.scatter
send = _d.send
recv = _d.recv
isend = _d.isend
irecv = _d.irecv
barrier = _d.barrier


def is_available():
    """Always true: the "local" backend needs nothing; is_mpi_available() says whether "mpi" does."""
    return True


def init_process_group(backend=None, timeout=None):
    """Starts the default group. backend: "auto" (None), "mpi", "nccl" or "local"; timeout: a datetime.timedelta
    after which a collective that has not completed raises (5 minutes by default)."""
    _d.init_process_group("auto" if backend is None else backend, timeout)


def get_rank(group=None):
    """This process's rank (0 without a process group)."""
    return _d.get_rank() if group is None else group.rank()


def get_world_size(group=None):
    """The number of ranks (1 without a process group)."""
    return _d.get_world_size() if group is None else group.size()


def get_backend(group=None):
    return (_d.default_group() if group is None else group).backend


def broadcast_module_state(module, src=0, group=None):
    """Makes every rank's parameters and buffers rank src's (what DistributedDataParallel does when built)."""
    _d.broadcast_module_state(module, src, group)


class DistributedDataParallel(nn.Module):
    """torch.nn.parallel.DistributedDataParallel over loom's C++ one (include/loom/nn/parallel.h).

    Built, it broadcasts rank 0's parameters and buffers to every rank. In
    backward, each parameter's gradient goes into a bucket as soon as it is
    accumulated, and a full bucket's all-reduce (average) runs while backward
    goes on (Note [Gradient buckets]); when backward returns, every .grad is
    the average over the ranks. forward() broadcasts rank 0's buffers
    (broadcast_buffers), then calls the module. Inside no_sync(), backward
    accumulates locally; the next synchronized backward averages the sum.
    """

    def __init__(self, module, broadcast_buffers=True, process_group=None, bucket_cap_mb=25.0,
                 find_unused_parameters=False):
        super().__init__()
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.reducer = _d.Reducer(module, bucket_cap_mb, find_unused_parameters, broadcast_buffers, process_group)

    def forward(self, *inputs, **kwargs):
        self.reducer.sync_buffers()
        return self.module(*inputs, **kwargs)

    def no_sync(self):
        """A context manager inside which backward communicates nothing (gradient accumulation)."""
        return self.reducer.no_sync()


from loom.distributed import optim  # noqa: E402,F401
