"""A character-level GPT on the fortunes corpus, as nanoGPT's, in loom from Python.

    PYTHONPATH=python python3 python/examples/char_gpt.py --steps 500

Reads the Debian package fortunes (/usr/share/games/fortunes), trains a small
decoder-only transformer on next-character prediction, prints the
validation loss, then samples text from it.
"""
import argparse
import glob
import math
import os

import loom
from loom import nn
from loom.nn import functional as F

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data", default="/usr/share/games/fortunes")
p.add_argument("--steps", type=int, default=500)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--d-model", type=int, default=128)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--context", type=int, default=64)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--sample", type=int, default=200, help="characters to generate at the end")
args = p.parse_args()
loom.manual_seed(args.seed)

files = sorted(f for f in glob.glob(os.path.join(args.data, "*"))
               if os.path.isfile(f) and not f.endswith((".dat", ".u8")))  # the text files, not their indexes
text = "".join(open(f, encoding="utf-8", errors="replace").read() for f in files)
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = loom.tensor([stoi[c] for c in text])
n_val = len(data) // 10
train_data, val_data = data[:-n_val], data[-n_val:]


def batch(split):
    d = train_data if split == "train" else val_data
    ix = loom.randint(len(d) - args.context - 1, (args.batch_size,)).tolist()
    x = loom.stack([d[i:i + args.context] for i in ix])
    y = loom.stack([d[i + 1:i + 1 + args.context] for i in ix])
    return x, y


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, context):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(loom.arange(idx.shape[1]))
        return self.head(self.ln(self.blocks(x)))


model = GPT(len(chars), args.d_model, args.layers, args.heads, args.context)
optimizer = loom.optim.AdamW(model.parameters(), lr=args.lr)
print(f"{sum(p.numel() for p in model.parameters())} parameters, vocabulary {len(chars)}, {len(text)} characters")


@loom.no_grad()
def val_loss(batches=10):
    model.eval()
    losses = []
    for _ in range(batches):
        x, y = batch("val")
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


for step in range(1, args.steps + 1):
    x, y = batch("train")
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 100 == 0 or step == args.steps:
        print(f"step {step}: train loss {loss.item():.3f}, val loss {val_loss():.3f} "
              f"(uniform would be {math.log(len(chars)):.3f})")

# Sampling: each next character drawn from the softmax of the last position's logits.
model.eval()
idx = loom.tensor([[stoi["\n"]]])
with loom.no_grad():
    for _ in range(args.sample):
        probs = model(idx[:, -args.context:])[:, -1].softmax(-1)
        nxt = (probs.cumsum(-1) < loom.rand(1, 1)).sum(-1, keepdim=True).clamp(max=len(chars) - 1)
        idx = loom.cat([idx, nxt], dim=1)
print("".join(chars[i] for i in idx[0].tolist()))
