#!/usr/bin/env python3
"""The workloads of bench_ops.cpp in PyTorch, for bench/run.py.

Prints one JSON object: {"torch": version, "threads": n, "results":
{workload: {"median_s": t, "times_s": [...]}}}, where each time is the mean
seconds per iteration of one repetition, as Google Benchmark reports them.
"""
import argparse
import json
import statistics
import time

import torch

ELEMENTWISE_N = 1 << 22
MATMUL_N = 512


def workloads():
    # Same shapes and dtypes as bench_ops.cpp; inputs made once, outside timing.
    a = torch.rand(ELEMENTWISE_N)
    b = torch.rand(ELEMENTWISE_N)
    ma = torch.rand(MATMUL_N, MATMUL_N)
    mb = torch.rand(MATMUL_N, MATMUL_N)
    return {
        "add_f32": lambda: a + b,
        "sum_f32": lambda: a.sum(),
        "matmul_f32": lambda: ma @ mb,
    }


def time_repetition(fn, min_time):
    """Mean seconds per call over a run of at least `min_time` seconds."""
    iters = 1
    while True:
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / iters
        # Grow like Google Benchmark: aim past min_time, at most 10x a step.
        iters = max(iters + 1, min(iters * 10, int(iters * 1.4 * min_time / max(elapsed, 1e-9))))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    results = {}
    with torch.no_grad():
        for name, fn in workloads().items():
            fn()  # warm-up: first-call allocations and thread start-up
            times = [time_repetition(fn, args.min_time) for _ in range(args.repetitions)]
            results[name] = {"median_s": statistics.median(times), "times_s": times}
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
