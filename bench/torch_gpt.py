"""nanoGPT's model (github.com/karpathy/nanoGPT, model.py) for PyTorch 1.13:
the reference that loom::models::GPT (include/loom/models/gpt.h) is timed
against (torch_ops.py: gpt_step, gpt_generate) and trained against
(gpt_parity.py).

Same layout and parameter names as nanoGPT and loom: pre-norm blocks
x + attn(ln_1(x)), x + mlp(ln_2(x)), learned token and position embeddings,
a final LayerNorm, and lm_head tied to transformer.wte. Two changes, both
what a PyTorch 1.13 user runs:
  - attention is the explicit math form softmax(q k^T / sqrt(d) + causal
    mask) v: 1.13 has no F.scaled_dot_product_attention (nanoGPT's own
    fallback path);
  - forward takes and returns past keys and values (a past_key_values loop,
    as Hugging Face's GPT-2), so generation runs one position per step.
The causal mask buffer is not persistent, so state_dict() holds exactly
loom's names (plus lm_head.weight, which is transformer.wte.weight).

Also: a tiny safetensors reader (the safetensors package may be missing)
and splitmix64, the generator gpt_parity.cpp and gpt_parity.py share.
"""
import json
import math
import struct
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    block_size: int = 128
    vocab_size: int = 96
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("bias", mask.view(1, 1, cfg.block_size, cfg.block_size), persistent=False)

    def forward(self, x, past=None):
        """x (B, T, C) at positions [P, P + T), P = past's length; past: (k, v)
        of the earlier positions, each (B, H, P, hs), or None. Returns y and
        the (k, v) of all P + T positions."""
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, P + T, hs)
            v = torch.cat([past[1], v], dim=2)
        tk = k.size(2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, H, T, P + T)
        if T > 1:  # one new position sees every cached one: nothing to mask
            att = att.masked_fill(~self.bias[:, :, tk - T:tk, :tk], float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v  # (B, H, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, elementwise_affine=True)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, elementwise_affine=True)
        self.mlp = MLP(cfg)

    def forward(self, x, past=None):
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as nanoGPT
        # nanoGPT's init: N(0, 0.02), zero biases, residual projections
        # N(0, 0.02 / sqrt(2 n_layer)).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, past=None):
        """idx (B, T) -> logits (B, T, V), loss (mean cross entropy against
        targets, or None) and the new past (one (k, v) per layer)."""
        B, T = idx.size()
        start = past[0][0].size(2) if past is not None else 0
        assert start + T <= self.config.block_size
        pos = torch.arange(start, start + T, dtype=torch.long)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        presents = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, past[i] if past is not None else None)
            presents.append(present)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss, presents

    @torch.no_grad()
    def generate_greedy(self, idx, max_new_tokens):
        """Appends max_new_tokens argmax tokens to idx (B, T), keeping keys and
        values: the prompt in one forward, then one position per step."""
        past = None
        step_in = idx
        for _ in range(max_new_tokens):
            logits, _, past = self(step_in, past=past)
            step_in = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            idx = torch.cat([idx, step_in], dim=1)
        return idx


# ---- safetensors (reading) ----
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def load_safetensors(path):
    """{name: tensor} and the metadata of a safetensors file (the layout is in
    include/loom/io/safetensors.h), without the safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    body = bytearray(data[8 + n:])  # writable, so frombuffer does not warn
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        flat = torch.frombuffer(body, dtype=dtype, count=(end - begin) // torch.empty((), dtype=dtype).element_size(),
                                offset=begin) if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"]).clone()
    return tensors, metadata


def load_loom_state(model, tensors):
    """Copies a loom GPT state dict into `model` (nanoGPT names). With tied
    weights loom has no lm_head.weight: it is transformer.wte.weight here too."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


# ---- splitmix64 (the same in gpt_parity.cpp) ----
MASK64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        """A number in [0, n): next() mod n (the bias is the same on both sides)."""
        return self.next() % n
