#!/usr/bin/env python3
"""Per-op overhead from Python: a 10-element add, loom against PyTorch, in one
process on the same threads (run.py's "python" group, issue 20).

Each round times `a + b` on both libraries in turn (order alternating
between rounds), `--number` calls a repetition; it prints JSON with each
side's seconds per call, one entry per repetition, for run.py to pool.
"""
import argparse
import json
import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

import loom  # noqa: E402
import torch  # noqa: E402


def per_call(a, b, number):
    return timeit.timeit("a + b", globals={"a": a, "b": b}, number=number) / number


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--number", type=int, default=100000, help="calls per repetition")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loom.set_num_threads(args.threads)
    out = {}
    for key, grad in (("py_add", False), ("py_add_autograd", True)):
        sides = {"loom": (loom.randn(10, requires_grad=grad), loom.randn(10)),
                 "torch": (torch.randn(10, requires_grad=grad), torch.randn(10))}
        times = {"loom": [], "torch": []}
        for rnd in range(args.rounds):
            order = ["loom", "torch"] if rnd % 2 == 0 else ["torch", "loom"]
            for side in order:
                a, b = sides[side]
                per_call(a, b, args.number // 10)  # warm
                times[side] += [per_call(a, b, args.number) for _ in range(args.repetitions)]
        out[key] = {side: {"times_s": t} for side, t in times.items()}
    out["torch"] = torch.__version__
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
