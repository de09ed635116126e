"""loom.distributed: collectives, ZeRO-1 and DistributedDataParallel, under `mpirun -np 2`.

pytest runs this file's worker() in two ranks with mpirun (the settings the
C++ suites use in containers: tests/CMakeLists.txt), and the "local" backend
in its own process.
"""
import datetime
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import loom
import loom.distributed as dist
from loom import nn

MPIRUN = shutil.which("mpirun")
MPI_ARGS = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
            "--mca", "btl_vader_single_copy_mechanism", "none", "--mca", "btl", "self,vader",
            "--mca", "oob_tcp_if_include", "lo"]


def make_model(seed):
    loom.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(seed, n=4):
    rng = np.random.default_rng(seed)
    return loom.tensor(rng.standard_normal((n, 6)).astype(np.float32)), loom.tensor(rng.integers(0, 3, n))


def gathered(t):
    """Every rank's copy of t, as NumPy arrays."""
    outs = [loom.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(outs, t.detach().contiguous())
    return [o.numpy() for o in outs]


def check_collectives(rank, world):
    t = loom.tensor([rank + 1.0, 2.0 * rank])
    dist.all_reduce(t)
    assert t.tolist() == [3.0, 2.0]
    for op, want in [(dist.ReduceOp.AVG, [1.5, 1.0]), (dist.ReduceOp.MAX, [2.0, 2.0]),
                     (dist.ReduceOp.MIN, [1.0, 0.0]), (dist.ReduceOp.PRODUCT, [2.0, 0.0])]:
        t = loom.tensor([rank + 1.0, 2.0 * rank])
        dist.all_reduce(t, op=op)
        assert t.tolist() == want, (op, t.tolist())
    ints = loom.tensor([rank, 10])
    work = dist.all_reduce(ints, async_op=True)
    assert work.wait() and work.is_completed() and work.is_success() and ints.tolist() == [1, 20]

    b = loom.full((3,), float(rank))
    dist.broadcast(b, src=1)
    assert b.tolist() == [1.0] * 3
    assert [o.tolist() for o in gathered(loom.full((2,), float(rank)))] == [[0.0, 0.0], [1.0, 1.0]]
    flat = loom.zeros(2 * world)
    dist.all_gather_into_tensor(flat, loom.full((2,), float(rank)))
    assert flat.tolist() == [0.0, 0.0, 1.0, 1.0]
    shard = loom.zeros(2)
    dist.reduce_scatter_tensor(shard, loom.arange(4, dtype=loom.float32) * (rank + 1))
    assert shard.tolist() == ([0.0, 3.0] if rank == 0 else [6.0, 9.0])

    gather_list = [loom.zeros(1) for _ in range(world)] if rank == 0 else None
    dist.gather(loom.full((1,), rank + 5.0), gather_list, dst=0)
    if rank == 0:
        assert [g.item() for g in gather_list] == [5.0, 6.0]
    got = loom.zeros(1)
    dist.scatter(got, [loom.full((1,), 7.0), loom.full((1,), 8.0)] if rank == 0 else None, src=0)
    assert got.item() == 7.0 + rank
    out = loom.zeros(1)
    dist.reduce_scatter(out, [loom.full((1,), 1.0 + rank), loom.full((1,), 10.0 * (rank + 1))])
    assert out.item() == (3.0 if rank == 0 else 30.0)
    if rank == 0:
        dist.send(loom.tensor([42.0]), dst=1)
        dist.isend(loom.tensor([43.0]), dst=1).wait()
    else:
        box = loom.zeros(1)
        assert dist.recv(box, src=0) == 0 and box.item() == 42.0
        dist.irecv(box, src=0).wait()
        assert box.item() == 43.0
    dist.barrier()

    # Mismatched arguments are an error on every rank, not a hang.
    with pytest.raises(loom.Error):
        dist.all_reduce(loom.zeros(3 + rank))
    group = dist.new_group([0, 1])
    assert dist.get_world_size(group) == 2 and dist.get_rank(group) == rank


def check_zero(rank, world):
    # ZeRO-1 steps like the plain optimizer on the gradients averaged over the ranks.
    def params():
        rng = np.random.default_rng(0)
        return [loom.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in [(5, 3), (7,)]]

    def grads(r, step):
        rng = np.random.default_rng(100 * step + r)
        return [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (7,)]]

    ours, ref = params(), params()
    zero = dist.optim.ZeroRedundancyOptimizer(ours, optimizer_class=loom.optim.AdamW, lr=1e-2, weight_decay=0.1)
    plain = loom.optim.AdamW(ref, lr=1e-2, weight_decay=0.1)
    assert zero.param_groups[0]["weight_decay"] == 0.1
    zero.max_grad_norm = 1e9  # clipping inside step(), far above these gradients' norm
    assert zero.max_grad_norm == 1e9
    for step in range(3):
        for p, g in zip(ours, grads(rank, step)):
            (p * loom.tensor(g)).sum().backward()
        mean = [sum(gs) / world for gs in zip(*(grads(r, step) for r in range(world)))]
        for p, g in zip(ref, mean):
            (p * loom.tensor(g)).sum().backward()
        zero.step()
        plain.step()
        zero.zero_grad()
        plain.zero_grad()
    for p, q in zip(ours, ref):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
        a, b = gathered(p)
        np.testing.assert_array_equal(a, b)
    full = zero.state_dict()  # a collective: every rank gets the unsharded state
    assert tuple(full["state"][0]["exp_avg"].shape) == (5, 3)


def check_ddp(rank, world):
    model = make_model(seed=rank)  # different on each rank until DDP broadcasts rank 0's
    ddp = dist.DistributedDataParallel(model)
    opt = loom.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    reference = make_model(seed=0)  # one process on the whole batch
    ref_opt = loom.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x, y = batch(10 * step + rank)
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        parts = [batch(10 * step + r) for r in range(world)]
        xs, ys = loom.cat([p[0] for p in parts]), loom.cat([p[1] for p in parts])
        ref_loss = nn.functional.cross_entropy(reference(xs), ys)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        a, b = gathered(p)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert list(ddp.state_dict())[0].startswith("module.")
    assert ddp.reducer.last_stats.buckets >= 1 and ddp.reducer.last_stats.bytes > 0
    # no_sync: gradients stay local; the next synchronized backward averages the sum.
    x, y = batch(rank)
    with ddp.no_sync():
        nn.functional.cross_entropy(ddp(x), y).backward()
    local = gathered(model[0].weight.grad)
    assert not np.array_equal(local[0], local[1])


def worker():
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2 and dist.get_backend() == "mpi"
    check_collectives(rank, world)
    check_zero(rank, world)
    check_ddp(rank, world)
    sampler = loom.utils.data.DistributedSampler(list(range(10)))
    assert (sampler.num_replicas, sampler.rank) == (world, rank)
    dist.barrier()
    print(f"rank {rank}: ok", flush=True)
    dist.destroy_process_group()


@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed (Debian: openmpi-bin)")
@pytest.mark.skipif(not dist.is_mpi_available(), reason="loom was built without MPI")
def test_two_ranks_under_mpirun():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(loom.__file__)),
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    r = subprocess.run([MPIRUN, "-np", "2", *MPI_ARGS, sys.executable, __file__], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 0: ok" in r.stdout and "rank 1: ok" in r.stdout, r.stdout + r.stderr


def test_local_backend_is_one_rank():
    assert dist.is_available() and not dist.is_initialized()
    assert isinstance(dist.is_nccl_available(), bool)
    dist.init_process_group("local", timeout=datetime.timedelta(seconds=30))
    try:
        assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.get_backend() == "local"
        t = loom.tensor([1.0, 2.0])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        assert t.tolist() == [1.0, 2.0]
        model = make_model(0)
        ddp = dist.DistributedDataParallel(model)
        x, y = batch(0)
        nn.functional.cross_entropy(ddp(x), y).backward()
        assert all(p.grad is not None for p in model.parameters())
        assert len(ddp.reducer.bucket_assignment()) >= 1
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


if __name__ == "__main__":
    worker()
