#!/usr/bin/env python3
"""Train the same GPT in loom and in PyTorch and compare validation losses.

The issue: "Train the same GPT (4 layers, d_model 256, 4 heads, context 128,
batch 16, AdamW 3e-4) for the same steps with the same data order in loom and
in PyTorch: the validation losses agree within 0.05 nats."

This script runs loom's side (bench/gpt_parity.cpp, which tokenizes the
fortunes corpus, builds and saves the initial weights, trains and writes its
curves), then trains nanoGPT's model (bench/torch_gpt.py) in PyTorch from
those very weights, on those very token ids, with the same batches (splitmix64
offsets, Note [Parity batches] in gpt_parity.cpp), AdamW with the same
settings (lr 3e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every
parameter), no dropout, float32, and the same fixed validation batches; then
prints step, loom val loss, torch val loss, |diff| and PASS/FAIL against the
tolerance, and writes both curves to OUT/parity.json.

Rerun (from the repository root; needs python3-torch, and the fortunes
package for /usr/share/games/fortunes): `make gpt-parity` (PARITY_ARGS="--steps
500" for more steps), or by hand:

    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_BENCH=ON -DLOOM_BUILD_TESTS=OFF
    cmake --build build-bench -j2 --target gpt_parity
    /usr/bin/python3 bench/gpt_parity.py                  # 300 steps, eval every 100
    /usr/bin/python3 bench/gpt_parity.py --steps 100 --eval-every 50

Both sides run with --threads threads (default: all cores), one after the
other. --reuse-loom skips loom's run and compares against OUT/loom.json.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from torch_gpt import GPT, GPTConfig, SplitMix64, load_loom_state, load_safetensors  # noqa: E402

CONTEXT = 128


def read_ids(path):
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.int64)


def windows(ids, offsets):
    """(x, y), each (len(offsets), CONTEXT): windows of ids and their next tokens."""
    x = torch.stack([ids[o:o + CONTEXT] for o in offsets])
    y = torch.stack([ids[o + 1:o + CONTEXT + 1] for o in offsets])
    return x, y


def val_offsets(n_val, eval_batches, batch):
    """The fixed validation windows, batch by batch (as gpt_parity.cpp)."""
    count, span = eval_batches * batch, n_val - CONTEXT - 1
    starts = [j * span // (count - 1) if count > 1 else 0 for j in range(count)]
    return [starts[e * batch:(e + 1) * batch] for e in range(eval_batches)]


@torch.no_grad()
def val_loss(model, batches):
    model.eval()
    total = sum(model(x, y)[1].item() for x, y in batches)
    model.train()
    return total / len(batches)


def pin_openblas(threads):
    """OpenBLAS (torch's BLAS here) keeps its own thread count; match it."""
    try:
        ctypes.CDLL("libblas.so.3").openblas_set_num_threads(threads)
    except (OSError, AttributeError):
        pass


def run_loom(args):
    cmd = [args.bin, "--out", args.out, "--steps", str(args.steps), "--eval-every", str(args.eval_every),
           "--eval-batches", str(args.eval_batches), "--batch", str(args.batch), "--seed", str(args.seed),
           "--lr", str(args.lr), "--threads", str(args.threads)]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)  # its progress goes to our stderr


def run_torch(args):
    torch.set_num_threads(args.threads)
    pin_openblas(args.threads)
    train, val = read_ids(os.path.join(args.out, "train_ids.bin")), read_ids(os.path.join(args.out, "val_ids.bin"))
    tensors, metadata = load_safetensors(os.path.join(args.out, "init.safetensors"))
    c = json.loads(metadata["config"])
    assert c["tie_weights"] and c["dropout"] == 0, c
    cfg = GPTConfig(n_layer=c["n_layer"], n_embd=c["n_embd"], n_head=c["n_head"], block_size=c["block_size"],
                    vocab_size=c["vocab_size"], dropout=c["dropout"], bias=c["bias"])
    assert cfg.block_size == CONTEXT
    model = GPT(cfg)
    load_loom_state(model, tensors)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    print(f"torch {torch.__version__}: vocab {cfg.vocab_size}, {len(train)} train / {len(val)} val tokens, "
          f"{sum(p.numel() for p in model.parameters())} parameters, {torch.get_num_threads()} threads",
          file=sys.stderr, flush=True)

    val_batches = [windows(val, offs) for offs in val_offsets(len(val), args.eval_batches, args.batch)]
    rng, span = SplitMix64(args.seed), len(train) - CONTEXT
    evals = [[0, val_loss(model, val_batches)]]
    print(f"torch: step 0 val {evals[-1][1]:.4f}", file=sys.stderr, flush=True)
    train_losses, step_seconds = [], []
    for step in range(1, args.steps + 1):
        x, y = windows(train, [rng.below(span) for _ in range(args.batch)])
        start = time.perf_counter()
        _, loss, _ = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_losses.append(loss.item())
        step_seconds.append(time.perf_counter() - start)
        if step % args.eval_every == 0 or step == args.steps:
            evals.append([step, val_loss(model, val_batches)])
            print(f"torch: step {step} train {train_losses[-1]:.4f} val {evals[-1][1]:.4f}", file=sys.stderr,
                  flush=True)
    return {"side": "torch", "torch": torch.__version__, "vocab_size": cfg.vocab_size, "steps": args.steps,
            "threads": torch.get_num_threads(), "val": evals, "train_loss": train_losses,
            "step_seconds": step_seconds}


def main():
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=8, help="validation batches of --batch windows each")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=1337, help="initial weights (loom's generator) and batch order")
    p.add_argument("--threads", type=int, default=nproc)
    p.add_argument("--tolerance", type=float, default=0.05, help="largest |loom - torch| val loss, nats")
    p.add_argument("--bin", default=os.path.join(ROOT, "build-bench", "bench", "gpt_parity"),
                   help="loom's side, built from bench/gpt_parity.cpp")
    p.add_argument("--out", default=os.path.join(ROOT, "build-bench", "gpt_parity"),
                   help="folder for the token ids, initial weights and curves")
    p.add_argument("--reuse-loom", action="store_true", help="compare against OUT/loom.json without rerunning loom")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    if not args.reuse_loom:
        if not os.path.exists(args.bin):
            sys.exit(f"gpt_parity.py: {args.bin} not found; build it with "
                     f"`cmake --build build-bench --target gpt_parity` (see this script's docstring)")
        run_loom(args)
    with open(os.path.join(args.out, "loom.json")) as f:
        loom = json.load(f)
    if loom["steps"] != args.steps:
        sys.exit(f"gpt_parity.py: loom.json holds {loom['steps']} steps, not {args.steps}; rerun without --reuse-loom")
    torch_side = run_torch(args)
    with open(os.path.join(args.out, "parity.json"), "w") as f:
        json.dump({"tolerance": args.tolerance, "loom": loom, "torch": torch_side}, f)

    torch_val = dict((s, v) for s, v in torch_side["val"])
    print(f"GPT 4 layers, d_model 256, 4 heads, context 128, vocab {loom['vocab_size']}, batch {args.batch}, "
          f"AdamW {args.lr:g}, {args.steps} steps, seed {args.seed}, {args.threads} threads; "
          f"val loss = mean of {args.eval_batches} fixed batches")
    print(f"{'step':>6}{'loom val':>12}{'torch val':>12}{'|diff|':>10}  result")
    worst = 0.0
    for step, lv in loom["val"]:
        tv = torch_val[step]
        diff = abs(lv - tv)
        worst = max(worst, diff)
        print(f"{step:>6}{lv:>12.4f}{tv:>12.4f}{diff:>10.4f}  {'PASS' if diff <= args.tolerance else 'FAIL'}")
    for side in (loom, torch_side):
        secs = side["step_seconds"]
        if secs:
            print(f"{side['side']}: median {statistics.median(secs) * 1e3:.0f} ms/step "
                  f"({args.batch * CONTEXT / statistics.median(secs):.0f} tokens/s), "
                  f"final train loss {side['train_loss'][-1]:.4f}")
    ok = worst <= args.tolerance
    print(f"{'PASS' if ok else 'FAIL'}: largest |diff| {worst:.4f} nats (tolerance {args.tolerance})")
    print(f"curves: {os.path.join(args.out, 'parity.json')}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
