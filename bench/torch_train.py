#!/usr/bin/env python3
"""`loom train --model mlp|cnn --dataset fashion-mnist` in PyTorch, for the
epoch rows of bench/run.py and the side-by-side numbers in the notes.

Same model as loom's (PyTorch default init):
  mlp: Flatten, 784-512-256-10 with ReLU (the `make demo` workload)
  cnn: Conv2d(1, 32, 3, padding 1), BatchNorm2d, ReLU, MaxPool2d(2),
       Conv2d(32, 64, 3, padding 1), BatchNorm2d, ReLU, MaxPool2d(2),
       Flatten, Linear(3136, 128), ReLU, Linear(128, 10)
same data (Fashion-MNIST pixels / 255, normalized with mean 0.2860 and std
0.3530), same batch (128, reshuffled each epoch, last partial batch kept),
same optimizer (AdamW lr 1e-3, weight_decay 0.01) and schedule (cosine decay
to 0, stepped every batch; --schedule constant turns it off), same epochs
and thread count as `loom train`. --amp bf16 runs each training batch's
forward and loss under torch.autocast("cpu", dtype=torch.bfloat16) (conv
and linear in bfloat16 on the float32 parameters), as `loom train --amp
bf16`; the test pass stays float32.
Prints one line per epoch (train loss, test loss and accuracy, seconds,
samples/s) and a summary line. With --json those go to stderr, and stdout
gets one JSON object for bench/run.py: {"torch": version, "threads": n,
"openblas_core": name or null, "epoch_seconds": [...], "test_acc": last
accuracy, "train_images": images an epoch}. Epoch seconds count the training loop only, not the test pass,
as `loom train` does. OpenBLAS runs on --threads threads too.

    /usr/bin/python3 bench/torch_train.py --model cnn --threads 2 --epochs 5
"""
import argparse
import contextlib
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_ops import openblas  # bench/ is on sys.path when run as a script


def read_idx(path):
    """An IDX file (gzip): magic 0x0000 <dtype 0x08 = uint8> <ndim>, then
    ndim big-endian uint32 sizes, then the data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX uint8 file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training-set pixel statistics


def load(root, split):
    images = read_idx(os.path.join(root, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(root, f"{split}-labels-idx1-ubyte.gz"))
    x = (torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1) - MEAN) / STD  # (N, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def make_model(name):
    """(N, 1, 28, 28) -> (N, 10) logits."""
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
        )
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 14, 14)
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 7, 7)
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def evaluate(model, x, y, batch_size=1000):
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size])
            loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
            correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    model.train()
    return loss_sum / len(x), correct / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=0, help="train on the first N images only (0: all)")
    p.add_argument("--amp", choices=["bf16"], help="train under torch.autocast(\"cpu\", dtype=torch.bfloat16)")
    p.add_argument("--json", action="store_true", help="log to stderr, print a JSON summary on stdout")
    args = p.parse_args()
    log = sys.stderr if args.json else sys.stdout

    torch.set_num_threads(args.threads)
    core = openblas(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train = load(args.data_dir, "train")
    x_test, y_test = load(args.data_dir, "t10k")
    if args.train_limit > 0:
        x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]

    model = make_model(args.model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)  # weight_decay 0.01 by default
    n = len(x_train)
    batches_per_epoch = (n + args.batch_size - 1) // args.batch_size
    sched = None
    if args.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * batches_per_epoch)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {args.model} ({n_params} parameters), {torch.get_num_threads()} threads, "
          f"{n} train images" + (f", autocast {args.amp}" if args.amp else ""), file=log)
    epoch_seconds = []
    for epoch in range(1, args.epochs + 1):
        g = torch.Generator().manual_seed(args.seed * 1000003 + epoch)
        perm = torch.randperm(n, generator=g)
        start = time.perf_counter()
        loss_sum, batches = 0.0, 0
        for i in range(0, n, args.batch_size):
            idx = perm[i : i + args.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16) if args.amp else contextlib.nullcontext():
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.item()
            batches += 1
        seconds = time.perf_counter() - start
        epoch_seconds.append(seconds)
        test_loss, test_acc = evaluate(model, x_test, y_test)
        print(
            f"epoch {epoch}: train_loss {loss_sum / batches:.4f}  test_loss {test_loss:.4f}  "
            f"test_acc {100 * test_acc:.2f}%  {seconds:.2f} s  {n / seconds:.0f} samples/s",
            file=log, flush=True,
        )
    print(f"torch: {args.model} test accuracy {100 * test_acc:.2f}%, {sum(epoch_seconds) / args.epochs:.2f} s/epoch "
          f"({args.threads} threads, batch {args.batch_size})", file=log)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "openblas_core": core, "epoch_seconds": epoch_seconds, "test_acc": test_acc,
                          "train_images": n}))


if __name__ == "__main__":
    main()
