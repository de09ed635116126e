#!/usr/bin/env python3
"""The workloads of bench_ops.cpp in PyTorch, under the same names, for
bench/run.py.

Prints one JSON object: {"torch": version, "threads": n, "openblas_core":
name or null, "results": {workload: {"median_s": t, "times_s": [...]}}},
where each time is the mean seconds per call of one repetition, as Google
Benchmark reports them; a workload this PyTorch cannot run (an int8 row
without a quantized engine) gives {"error": why} instead. With --serve it
times workloads named on stdin instead, one JSON line each (see serve()).

    /usr/bin/python3 bench/torch_ops.py --threads 2 --only sgemm_1024,softmax
"""
import argparse
import contextlib
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

STREAM_N = 1 << 24
ROWS, COLS = 4096, 1024
# nn.Linear(784, 512) and (512, 256) at batch 128, as M, K, N, A stored
# transposed, B stored transposed (see bench_ops.cpp).
MLP_GEMMS = {
    "mlp_fc1_fwd": (128, 784, 512, False, True),
    "mlp_fc1_grad_x": (128, 512, 784, False, False),
    "mlp_fc1_grad_w": (512, 128, 784, True, False),
    "mlp_fc2_fwd": (128, 512, 256, False, True),
    "mlp_fc2_grad_x": (128, 256, 512, False, False),
    "mlp_fc2_grad_w": (256, 128, 512, True, False),
}
# conv2d at batch 128, stride 1, with bias: x (N, C, H, W), w (O, C, K, K),
# padding. The rows time forward and the backward of sum(y * g) w.r.t. x, w
# and b; a "_fwd" row times the forward alone (see bench_ops.cpp).
CONVS = {
    "cnn_conv1": (128, 1, 28, 28, 32, 3, 1),  # the CNN's first layer
    "cnn_conv2": (128, 32, 14, 14, 64, 3, 1),  # its second, after a 2x2 max pool
    "resnet9_conv128": (128, 128, 16, 16, 128, 3, 1),  # a ResNet9 128-channel 3x3 layer
    "resnet9_conv128_1x1map": (128, 128, 1, 1, 128, 3, 1),  # the same layer on the 1x1 maps of needle's ResNet9
}
CONV_FWD = ("cnn_conv2", "resnet9_conv128")
# The "seq" rows (see bench_ops.cpp): attention (B, H, T, D), causal; the
# sequence lengths of the memory row (B = H = 1, D = 64).
ATTN_FB = (8, 8, 512, 64)
ATTN_MEM_TS = (1024, 2048, 4096)


def gemm(m, k, n, trans_a=False, trans_b=False):
    # A transposed operand is stored transposed and used through .t(), as in
    # nn.Linear: a strided view, no copy.
    a = torch.rand(k, m).t() if trans_a else torch.rand(m, k)
    b = torch.rand(n, k).t() if trans_b else torch.rand(k, n)
    return lambda: a @ b


def softmax_fwd_bwd():
    x = torch.randn(ROWS, COLS, requires_grad=True)
    gy = torch.randn(ROWS, COLS)
    return lambda: torch.autograd.grad(torch.softmax(x, -1), x, gy)


def layer_norm_fwd_bwd():
    x = torch.randn(ROWS, COLS, requires_grad=True)
    w = torch.randn(COLS, requires_grad=True)
    b = torch.randn(COLS, requires_grad=True)
    gy = torch.randn(ROWS, COLS)
    return lambda: torch.autograd.grad(F.layer_norm(x, (COLS,), w, b), (x, w, b), gy)


def conv(n, c, h, w, o, k, padding, backward=True):
    x = torch.randn(n, c, h, w, requires_grad=backward)
    weight = torch.randn(o, c, k, k, requires_grad=backward)
    bias = torch.randn(o, requires_grad=backward)
    if not backward:
        return lambda: F.conv2d(x, weight, bias, padding=padding)
    oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    gy = torch.randn(n, o, oh, ow)
    return lambda: torch.autograd.grad(F.conv2d(x, weight, bias, padding=padding), (x, weight, bias), gy)


def causal_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(D) + causal mask) v: attention as PyTorch 1.13
    users write it (no F.scaled_dot_product_attention before 2.0); mask is a
    (T, T) lower-triangular bool, as nanoGPT's `bias` buffer."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    att = att.masked_fill(~mask, float("-inf"))
    return torch.softmax(att, dim=-1) @ v


def attn_fwd_bwd(b, h, t, d):
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    gy = torch.randn(b, h, t, d)
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    return lambda: torch.autograd.grad(causal_attention(q, k, v, mask), (q, k, v), gy)


def training_step(loss_fn, optimizer):
    """A step function: loss_fn(), then zero_grad, backward and an optimizer step."""
    def step():
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def lstm_step():
    """One AdamW step (lr 3e-4) of Embedding(96, 256) -> LSTM(256, 256, 2
    layers) -> Linear(256, 96) on (T = 64, N = 32) random tokens."""
    torch.manual_seed(0)
    embed, lstm, head = torch.nn.Embedding(96, 256), torch.nn.LSTM(256, 256, num_layers=2), torch.nn.Linear(256, 96)
    params = [*embed.parameters(), *lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    x, y = torch.randint(96, (64, 32)), torch.randint(96, (64, 32))

    def loss():
        out, _ = lstm(embed(x))  # (T, N, 256)
        return F.cross_entropy(head(out).view(-1, 96), y.view(-1))
    return training_step(loss, optimizer)


def bench_gpt(**config):
    """nanoGPT (torch_gpt.py): by default 4 layers, d_model 256, 4 heads,
    context 128, vocabulary 96, no dropout, tied head; `config` overrides
    GPTConfig's fields (GEN_CONFIGS)."""
    from torch_gpt import GPT, GPTConfig
    torch.manual_seed(0)
    fields = dict(n_layer=4, n_embd=256, n_head=4, block_size=128, vocab_size=96, dropout=0.0)
    return GPT(GPTConfig(**dict(fields, **config)))


def gpt_step(autocast=False):
    """One AdamW step (lr 3e-4) on (16, 128) random tokens. With `autocast`
    (the amp group's gpt_step_bf16), the forward and the loss run under
    torch.autocast("cpu", dtype=torch.bfloat16): linear and matmul in
    bfloat16 on the float32 parameters; backward and the step outside it,
    as PyTorch's AMP recipe."""
    model = bench_gpt()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x, y = torch.randint(96, (16, 128)), torch.randint(96, (16, 128))

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            return model(x, y)[1]
    return training_step(loss, optimizer)


def bf16_gemm(n):
    """a @ b with a, b: (n, n) bfloat16 (the amp group's bf16_gemm_2048)."""
    a, b = torch.rand(n, n).bfloat16(), torch.rand(n, n).bfloat16()
    return lambda: a @ b


def gpt_generate():
    """Greedy generation with past keys and values: a 16-token prompt, 112 new
    tokens, batch 1."""
    model = bench_gpt().eval()
    prompt = torch.randint(96, (1, 16))
    return lambda: model.generate_greedy(prompt, 112)


# The "quant" rows (bench_ops.cpp's gen_*): greedy generation at batch 1 with
# past keys and values, as gpt_generate, for two models: size -> (GPTConfig
# fields, prompt tokens, new tokens). "large" is GPT-2 small's shape (85M
# parameters, 340 MB in float32), so each step reads its weights from memory.
GEN_CONFIGS = {
    "small": (dict(), 16, 112),
    "large": (dict(n_layer=12, n_embd=768, n_head=12, block_size=256), 16, 48),
}
# PyTorch's quantized engines for dynamic int8 Linear on the CPU, in order of
# preference (fbgemm is x86's; 1.13 builds without it have onednn or qnnpack).
QUANT_ENGINES = ("fbgemm", "x86", "onednn", "qnnpack")


class Unavailable(Exception):
    """A workload this PyTorch cannot run (its reply carries the reason)."""


def quantized_engine():
    """Sets and returns a quantized engine that runs dynamic int8 Linear:
    the current one when it does, else the first of QUANT_ENGINES that this
    build supports. Raises Unavailable when there is none."""
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    current = torch.backends.quantized.engine
    for engine in ([current] if current in supported else []) + [e for e in QUANT_ENGINES if e in supported]:
        try:
            torch.backends.quantized.engine = engine
            probe = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(64, 32)),
                                                           {torch.nn.Linear}, dtype=torch.qint8)
            probe(torch.randn(1, 64))
            return engine
        except (RuntimeError, AssertionError):
            continue
    raise Unavailable(f"no quantized engine for dynamic int8 Linear in torch {torch.__version__} "
                      f"(supported: {torch.backends.quantized.supported_engines})")


def gen(size, quantized=False):
    """Greedy generation of GEN_CONFIGS[size], float32 or with every
    nn.Linear of the blocks dynamically quantized to int8
    (torch.ao.quantization.quantize_dynamic: per-tensor int8 weights,
    activations quantized per call). The tied lm_head stays float32, as
    loom's (quantized in place on model.transformer, so the tie holds)."""
    config, prompt_len, new_tokens = GEN_CONFIGS[size]
    model = bench_gpt(**config).eval()
    engine = None
    if quantized:
        engine = quantized_engine()
        torch.ao.quantization.quantize_dynamic(model.transformer, {torch.nn.Linear}, dtype=torch.qint8,
                                               inplace=True)
    prompt = torch.randint(96, (1, prompt_len))

    def run():
        return model.generate_greedy(prompt, new_tokens)
    # The warm-up (time_workload) runs every op a call does, on a few tokens:
    # a full call of the large model takes seconds.
    run.warm_up = lambda: model.generate_greedy(prompt, 4)
    if engine:
        run.info = {"quantized_engine": engine}
    return run


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes():
    """VmHWM, the resident high-water mark. Not resource's ru_maxrss: that
    carries the parent's mark over fork and exec, and this runs as the child
    of a torch_ops.py --serve process that is hundreds of MiB large."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_resident():
    """Lowers VmHWM to the resident set now (Linux >= 4.0), if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def attn_mem():
    """--attn-mem, in a fresh process: for T in ATTN_MEM_TS (increasing),
    the resident high-water mark over one causal attention forward +
    backward (B = H = 1, D = 64, math form), reset at its start, minus the
    resident set before it (inputs and mask made); without the reset, T in
    increasing order still make each step's mark its own. That is the
    step's peak: the T x T scores, their masked and softmaxed copies and
    their gradients, all of which the math form holds at once (about 13 T^2
    bytes). measure_attn_mem runs this with glibc's mmap
    threshold fixed at 64 KiB, so every block of a T x T tensor is mapped on
    its own and unmapped when freed: the resident set follows the tensors
    alive (with the default, growing threshold, freed 4-16 MiB blocks stay
    in the heap and the smaller T read low or high depending on history).
    torch.profiler's profile_memory in 1.13 on the CPU gave allocation
    events without sizes we could sum to a peak, so it is not used."""
    causal_attention(*(torch.randn(1, 1, 256, 64) for _ in range(3)), torch.ones(256, 256, dtype=torch.bool).tril())
    out = {}
    for t in ATTN_MEM_TS:
        q, k, v = (torch.randn(1, 1, t, 64, requires_grad=True) for _ in range(3))
        gy, mask = torch.randn(1, 1, t, 64), torch.ones(t, t, dtype=torch.bool).tril()
        reset_peak_resident()
        before = resident_bytes()
        grads = torch.autograd.grad(causal_attention(q, k, v, mask), (q, k, v), gy)
        out[f"rss_T{t}"] = peak_resident_bytes() - before
        del grads
    return out


def measure_attn_mem(args):
    """attn_mem() in a fresh process (this one's high-water mark is long
    past): {"rss_T1024": bytes, ...}."""
    cmd = [sys.executable, os.path.abspath(__file__), "--attn-mem", f"--threads={args.threads}"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
    return json.loads(proc.stdout)


# Rows that measure memory, not time: name -> function(args) -> reply fields.
MEMORY_WORKLOADS = {"attn_mem_4096": measure_attn_mem}


def make_workloads():
    """name -> factory returning the timed callable; the factory makes the
    inputs, once, outside timing. Only the selected ones are built."""
    w = {f"sgemm_{n}": (lambda n=n: gemm(n, n, n)) for n in (256, 512, 1024, 2048)}
    for name, shape in MLP_GEMMS.items():
        w[name] = lambda shape=shape: gemm(*shape)
    for name, shape in CONVS.items():
        w[name] = lambda shape=shape: conv(*shape)
    for name in CONV_FWD:
        w[name + "_fwd"] = lambda shape=CONVS[name]: conv(*shape, backward=False)

    def add():
        # Each call's 64 MiB result is above glibc's largest mmap threshold
        # (32 MiB), so it is mapped and faulted in anew: that is part of what
        # `a + b` costs in PyTorch at this size, and is timed.
        a, b = torch.rand(STREAM_N), torch.rand(STREAM_N)
        return lambda: a + b

    def total():
        a = torch.rand(STREAM_N)
        return lambda: a.sum()

    def softmax():
        x = torch.randn(ROWS, COLS)
        return lambda: torch.softmax(x, -1)

    def layer_norm():
        x, w_, b_ = torch.randn(ROWS, COLS), torch.randn(COLS), torch.randn(COLS)
        return lambda: F.layer_norm(x, (COLS,), w_, b_)

    w.update({
        "add_f32": add,
        "sum_f32": total,
        "softmax": softmax,
        "layer_norm": layer_norm,
        "softmax_fwd_bwd": softmax_fwd_bwd,
        "layer_norm_fwd_bwd": layer_norm_fwd_bwd,
        "attn_fb": lambda: attn_fwd_bwd(*ATTN_FB),
        "lstm_step": lstm_step,
        "gpt_step": gpt_step,
        "gpt_generate": gpt_generate,
        "bf16_gemm_2048": lambda: bf16_gemm(2048),
        "gpt_step_bf16": lambda: gpt_step(autocast=True),
    })
    for size in GEN_CONFIGS:  # no int4 rows: PyTorch has no int4 Linear on the CPU
        w[f"gen_{size}_fp32"] = lambda size=size: gen(size)
        w[f"gen_{size}_int8"] = lambda size=size: gen(size, quantized=True)
    return w


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


def openblas(threads):
    """Pins OpenBLAS (PyTorch's BLAS here, through libblas.so.3) to `threads`
    threads, which torch.set_num_threads does not do for a generic BLAS, and
    returns the kernel set it runs (OPENBLAS_CORETYPE or its CPU detection);
    None when the BLAS is not OpenBLAS."""
    try:
        lib = ctypes.CDLL("libblas.so.3")
        lib.openblas_set_num_threads(threads)
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return None


def time_workload(factory, args, repetitions=None):
    """{"median_s": t, "times_s": [...]} and the callable's `info` fields
    (the quantized engine of an int8 row), or {"error": why} for a workload
    this PyTorch cannot run."""
    try:
        fn = factory()  # inputs made here, freed when fn goes
    except Unavailable as e:
        return {"error": str(e)}
    getattr(fn, "warm_up", fn)()  # first-call allocations and thread start-up
    times = [time_repetition(fn, args.min_time) for _ in range(repetitions or args.repetitions)]
    return {"median_s": statistics.median(times), "times_s": times, **getattr(fn, "info", {})}


def serve(args, factories, header):
    """--serve: prints `header` as a JSON line, then for each workload name
    read from stdin (optionally followed by a repetition count, overriding
    --repetitions) one JSON line {"name": n, "median_s": t, "times_s": [...]}
    (or {"name": n, "error": why}). run.py keeps one such process per
    OpenBLAS setting, so it can alternate loom and torch workload by workload
    without paying for PyTorch's import each time."""
    print(json.dumps(header), flush=True)
    for line in sys.stdin:
        if not line.split():
            continue
        name, *rest = line.split()
        if name in factories:
            reply = dict(name=name, **time_workload(factories[name], args, int(rest[0]) if rest else None))
        elif name in MEMORY_WORKLOADS:
            reply = dict(name=name, **MEMORY_WORKLOADS[name](args))
        else:
            reply = {"name": name, "error": f"unknown workload; known: {', '.join(factories)}"}
        print(json.dumps(reply), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    p.add_argument("--serve", action="store_true", help="time the workloads named on stdin, one per line")
    p.add_argument("--attn-mem", action="store_true", help="print attention's peak memory as JSON (see attn_mem)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.attn_mem:
        print(json.dumps(attn_mem()))
        return
    header = {"torch": torch.__version__, "threads": torch.get_num_threads(), "openblas_core": openblas(args.threads)}
    factories = make_workloads()
    if args.serve:
        serve(args, factories, header)
        return
    names = [n for n in args.only.split(",") if n] or list(factories)
    unknown = [n for n in names if n not in factories]
    if unknown:
        p.error(f"unknown workloads {unknown}; known: {', '.join(factories)}")
    print(json.dumps(dict(header, results={name: time_workload(factories[name], args) for name in names})))


if __name__ == "__main__":
    main()
