#!/usr/bin/env python3
"""Runs loom's micro-benchmarks (bench_ops) and the same workloads in PyTorch
(torch_ops.py) with the same thread count, and prints their median times
side by side. ratio = loom time / torch time (below 1: loom is faster).

    python3 bench/run.py --bench-bin build-bench/bench/bench_ops
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
WORKLOADS = [  # (key, description)
    ("add_f32", "add  float32 [2^22]"),
    ("sum_f32", "sum  float32 [2^22]"),
    ("matmul_f32", "matmul float32 512x512x512"),
]


def run_loom(args):
    cmd = [
        args.bench_bin,
        f"--loom_threads={args.threads}",
        "--benchmark_format=json",
        f"--benchmark_repetitions={args.repetitions}",
        f"--benchmark_min_time={args.min_time}",
        "--benchmark_report_aggregates_only=true",
    ]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    medians = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        # run_name looks like "BM_add_f32/4194304/real_time".
        key = b["run_name"].split("/")[0].removeprefix("BM_")
        medians[key] = b["real_time"] * UNIT_SECONDS[b["time_unit"]]
    return medians


def run_torch(args):
    """Medians from torch_ops.py, or (None, reason) when PyTorch is unavailable."""
    cmd = [
        args.python,
        os.path.join(HERE, "torch_ops.py"),
        f"--threads={args.threads}",
        f"--repetitions={args.repetitions}",
        f"--min-time={args.min_time}",
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return None, f"torch_ops.py failed with {args.python}: {last[0]}"
    data = json.loads(proc.stdout)
    return {k: v["median_s"] for k, v in data["results"].items()}, f"torch {data['torch']}"


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3f} {unit}"
    return f"{seconds / 1e-9:.1f} ns"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-bin", default=os.path.join("build-bench", "bench", "bench_ops"))
    p.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                   help="a Python that can import torch")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition (at least)")
    args = p.parse_args()

    loom = run_loom(args)
    torch, torch_note = run_torch(args)
    torch = torch or {}

    print(f"threads: {args.threads}   repetitions: {args.repetitions}   {torch_note}")
    header = f"{'workload':<30}{'loom median':>14}{'torch median':>14}{'loom/torch':>12}"
    print(header)
    print("-" * len(header))
    for key, desc in WORKLOADS:
        lt, tt = loom.get(key), torch.get(key)
        ratio = f"{lt / tt:.2f}" if lt is not None and tt else "n/a"
        print(f"{desc:<30}{fmt_time(lt):>14}{fmt_time(tt):>14}{ratio:>12}")


if __name__ == "__main__":
    main()
