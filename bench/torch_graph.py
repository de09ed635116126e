#!/usr/bin/env python3
"""PyTorch's side of run.py's "graph" group: the GPT training step of
bench_graph.cpp (and of bench_ops.cpp's gpt_step) eager and with
torch.utils.checkpoint around every transformer block, timed and measured
for memory.

The model is nanoGPT's (torch_gpt.py): 4 layers, d_model 256, 4 heads,
context 128, vocabulary 96, no dropout; batch 16 of random tokens; AdamW
3e-4; the step is torch_ops.py's training_step (loss, zero_grad, backward,
step). Prints (and with --json writes) one JSON object:

    {"torch": version, "threads": n,
     "gpt_step": {"eager": {"ms": [per-rep step ms], "rss_bytes": int},
                  "checkpoint": {...}}}

    /usr/bin/python3 bench/torch_graph.py --threads 2 --reps 5 --json /tmp/t.json
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from torch.utils.checkpoint import checkpoint

from torch_ops import bench_gpt, openblas, peak_resident_bytes, reset_peak_resident, resident_bytes, training_step

MODES = ("eager", "checkpoint")
WARMUP_STEPS = 4  # as bench_graph.cpp: AdamW's state exists and the allocator has settled before measuring


class CheckpointedBlock(torch.nn.Module):
    """A torch_gpt.Block whose activations are dropped after forward and
    recomputed in backward (non-reentrant torch.utils.checkpoint, the form
    PyTorch recommends). Only the block's output leaves the checkpointed
    region: the keys and values Block returns for generation are not needed
    by a training step, and returning them would keep each layer's qkv
    projection alive to the end of forward, which nanoGPT's own blocks (they
    return x alone) do not."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x, past=None):
        assert past is None, "a checkpointed block trains; it takes no past keys and values"
        return checkpoint(lambda h: self.block(h)[0], x, use_reentrant=False), None


def gpt_step(mode):
    """The step function of `mode` ("eager" or "checkpoint"), inputs made."""
    model = bench_gpt()
    if mode == "checkpoint":
        blocks = model.transformer.h
        for i in range(len(blocks)):
            blocks[i] = CheckpointedBlock(blocks[i])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x, y = torch.randint(96, (16, 128)), torch.randint(96, (16, 128))
    return training_step(lambda: model(x, y)[1], optimizer)


def step_ms(mode, reps):
    """Wall milliseconds of each of `reps` steps after the warm-up."""
    step = gpt_step(mode)
    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def step_rss(mode):
    """--rss-of: the resident high-water mark over one steady step, reset at
    its start, minus the resident set before it (parameters, gradients and
    AdamW state already made by the warm-up). measure_rss runs this in a
    fresh process with glibc's mmap threshold fixed at 64 KiB, as
    torch_ops.py does for the attention memory row: every block above that
    is mapped on its own and unmapped when freed, so the resident set
    follows the tensors alive instead of what the heap kept from earlier."""
    step = gpt_step(mode)
    for _ in range(WARMUP_STEPS):
        step()
    reset_peak_resident()
    before = resident_bytes()
    step()
    return max(0, peak_resident_bytes() - before)


def measure_rss(mode, threads):
    cmd = [sys.executable, os.path.abspath(__file__), f"--threads={threads}", f"--rss-of={mode}"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
    return json.loads(proc.stdout)["rss_bytes"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--reps", type=int, default=5, help="timed steps per mode")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--rss-of", choices=MODES, help=argparse.SUPPRESS)  # the child of measure_rss
    args = p.parse_args()
    if args.reps < 1:
        p.error(f"--reps must be at least 1, got {args.reps}")

    torch.set_num_threads(args.threads)
    openblas(args.threads)
    if args.rss_of:
        print(json.dumps({"rss_bytes": step_rss(args.rss_of)}))
        return
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "gpt_step": {}}
    for mode in MODES:
        out["gpt_step"][mode] = {"ms": step_ms(mode, args.reps), "rss_bytes": measure_rss(mode, args.threads)}
    text = json.dumps(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
