"""Fashion-MNIST with a 784-512-256-10 MLP: what `loom train --model mlp` does, in Python.

    PYTHONPATH=python python3 python/examples/fashion_mnist.py --epochs 5

Reads the Debian package dataset-fashion-mnist; reaches about 89% test accuracy.
The recipe is `loom train --model mlp`'s (AdamW, weight decay 0.01, a cosine
schedule stepped every batch, batch 128), so the two epochs can be timed
against each other (make bench BENCH_ARGS="--only python").
"""
import argparse
import csv
import time

import loom
from loom import nn
from loom.utils.data import DataLoader
from loom.utils.data.datasets import FashionMNIST
from loom.utils.data.transforms import Normalize

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--metrics", help="write epoch, seconds, train_loss, test_acc rows to this CSV file")
args = p.parse_args()
loom.manual_seed(args.seed)
loom.set_num_threads(args.threads)

normalize = Normalize((0.2860,), (0.3530,))  # the training set's pixel mean and std
train_loader = DataLoader(FashionMNIST(train=True, transform=normalize), batch_size=args.batch_size, shuffle=True,
                          generator=loom.Generator().manual_seed(args.seed))
test_loader = DataLoader(FashionMNIST(train=False, transform=normalize), batch_size=1000)

model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                      nn.Linear(256, 10))
optimizer = loom.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
scheduler = loom.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train_loader))
loss_fn = nn.CrossEntropyLoss()
rows = []
for epoch in range(1, args.epochs + 1):
    model.train()
    start, total, batches = time.perf_counter(), 0.0, 0
    for x, y in train_loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        batches += 1
    seconds = time.perf_counter() - start

    model.eval()
    correct = 0
    with loom.no_grad():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    acc = correct / len(test_loader.dataset)
    print(f"epoch {epoch}: train loss {total / batches:.4f}, test accuracy {acc:.2%}, {seconds:.2f} s")
    rows.append({"epoch": epoch, "seconds": seconds, "train_loss": total / batches, "test_acc": acc})

if args.metrics:
    with open(args.metrics, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
