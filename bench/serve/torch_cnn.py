#!/usr/bin/env python3
"""The ceiling beside `loom serve`: the same CNN in PyTorch, called in
process (no HTTP, no queue), at the batch sizes the serving bench uses.

The model is bench/torch_train.py's CNN (the one `loom train --model cnn`
builds), in eval mode under torch.inference_mode(); one call is what the
server's forward does for a batch: logits, then softmax over the classes.
Inputs are random normal (the weights do not change the time). PyTorch and
OpenBLAS run on --threads threads (the server's --threads).

Prints one JSON object: {"torch": version, "threads": n, "openblas_core":
name or null, "batches": {"N": {"median_s": t, "times_s": [...],
"samples_per_s": N / t}}}, each time the median over --repetitions
repetitions of the mean call time over at least --min-time seconds.

    /usr/bin/python3 bench/serve/torch_cnn.py --threads 1 --batches 1,4,16,32,64
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # bench/: torch_train.py, torch_ops.py

import torch  # noqa: E402

from torch_ops import openblas  # noqa: E402
from torch_train import make_model  # noqa: E402


def mean_call_seconds(fn, min_time):
    """Mean seconds per call of fn() over at least min_time seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1,4,16,32,64")
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    core = openblas(args.threads)
    torch.manual_seed(0)
    model = make_model("cnn").eval()
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "openblas_core": core, "batches": {}}
    with torch.inference_mode():
        for n in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(n, 1, 28, 28)

            def call():
                logits = model(x)  # (n, 10)
                return torch.softmax(logits, 1)

            call()  # warm-up: first-call allocations, thread start-up
            times = [mean_call_seconds(call, args.min_time) for _ in range(args.repetitions)]
            med = statistics.median(times)
            out["batches"][str(n)] = {"median_s": med, "times_s": times, "samples_per_s": n / med}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
