#!/usr/bin/env python3
"""loom against PyTorch, side by side, on the same thread count: the table
`make bench` prints.

Runs loom's benchmarks (bench_ops, Google Benchmark), the same workloads in
PyTorch (torch_ops.py), libtorch's C++ dispatch cost (torch_dispatch) and
epochs of training the Fashion-MNIST MLP and CNN (`loom train` against
torch_train.py), then prints medians, rates and speedups, and writes the raw
numbers as JSON.

The "graph" group runs bench_graph (compiled and checkpointed training steps,
the memory planner, the replay of a dispatch-bound step) and torch_graph.py
(the same GPT step in PyTorch, eager and with torch.utils.checkpoint) and
prints a section of its own (see print_graph).

The "distributed" group runs bench_distributed under mpirun (loom's all_reduce
against plain MPI_Allreduce in the same program, DDP with and without
overlap, weak scaling of the CNN step) and prints a section of its own (see
print_distributed and Note [The distributed group]).

The "compile" group runs bench_compile (loom::compile's fusion and parallel
scheduler against eager loom and against the serial replay, section by
section) and MLP and CNN epochs of `loom train` eager and with --compile, and
prints a section of its own (see print_compile and Note [The compile group]).

The "quant" group times greedy generation at batch 1 with the KV cache
(bench_ops's gen_* rows) in float32 and with nn::quantize_dynamic's int8 and
int4 weights, beside PyTorch's float32 and dynamic int8
(torch.ao.quantization.quantize_dynamic), for a small GPT and a GPT-2-small
shaped one, and prints a section of its own: tokens/s, loom's speedup over
loom float32 (the targets) and loom against torch (see print_quant and
Note [The quant group]).

The "amp" group times bfloat16 mixed precision against float32, loom against
loom in the same process or back to back: a bfloat16 GEMM at 2048 against
loom's sgemm, the GPT step under AutocastGuard against the same step in
float32, and CNN epochs of `loom train --amp bf16` against float32; beside
them PyTorch's bfloat16 matmul and torch.autocast("cpu") on the same
threads. It prints a section of its own: times, the speedups over float32
(the targets, and the bfloat16 GEMM against torch's) and loom against torch
(see print_amp and Note [The amp group]).

PyTorch runs twice (Note [PyTorch as installed and tuned]): "installed" with
OPENBLAS_CORETYPE taken out of the environment, so OpenBLAS picks its kernels
from CPUID as on a fresh machine; "tuned" with the OPENBLAS_CORETYPE that
gave the fastest torch sgemm 1024 in a probe at the start. Speedups and
targets are against the faster of the two for each workload.

speedup = torch time / loom time: above 1, loom is faster.

    python3 bench/run.py                        # everything (as `make bench`)
    python3 bench/run.py --only sgemm,dispatch  # groups or workload names
    python3 bench/run.py --only conv,cnn_epoch
    python3 bench/run.py --only seq             # attention, LSTM, GPT
    python3 bench/run.py --only graph           # compiled and checkpointed steps
    python3 bench/run.py --only distributed     # all_reduce, DDP overlap, scaling (mpirun)
    python3 bench/run.py --only compile         # fusion and scheduling: loom against loom
    python3 bench/run.py --only quant           # int8 / int4 generation against float32 and torch
    python3 bench/run.py --only amp             # bfloat16 GEMM, GPT step, CNN epoch against float32 and torch
"""
import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from select import select as wait_readable  # run.py's own select() picks workloads

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
CORETYPES = ["SkylakeX", "Cooperlake", "Haswell", "Zen"]
PROBE_WORKLOAD = "sgemm_1024"


class Workload:
    """One row. `source` says who times it: "ops" (bench_ops against
    torch_ops.py), "ref" (bench_ops only: a machine reference), "dispatch"
    (bench_ops against torch_dispatch), "epoch" (loom train against
    torch_train.py, the model named by `model`), "mem" (peak memory, not
    time: one run of bench_ops and of torch_ops.py, see collect_memory),
    "graph" (bench_graph against torch_graph.py; its own section, see
    print_graph; `part` is bench_graph's --only name for the row),
    "distributed" (bench_distributed under mpirun, loom against MPI and
    against itself; see print_distributed; `part` is its --only name),
    "compile" (bench_compile, loom::compile against eager or the serial
    replay, `part` its --only name; or, with `model` instead, `loom train`
    eager against --compile; see print_compile), "quant" (bench_ops's
    gen_<size>_<format> rows, `part` the format, against loom's float32 row
    of the size (`ref`) and torch_ops.py's row of the same name; see
    print_quant; its `min_speedup` is on loom float32 time / loom quantized
    time, its `repetitions` torch's per round: loom's are --quant-turns),
    "amp" (bfloat16 against float32: bench_ops's row against its float32
    counterpart named by `part`, in the same process, and torch_ops.py's
    rows of both names; or, with `model`, `loom train --amp bf16` against
    float32 and torch_train.py --amp bf16; see print_amp; its `min_speedup`
    is on loom float32 time / loom bfloat16 time, its `repetitions` torch's
    per round of the bfloat16 row: loom's are --amp-turns).
    `flops` / `bytes` / `tokens` per call give the rate columns.
    `ref` names the machine reference the row is measured against (the FMA
    peak, the STREAM loop): it runs in the same bench_ops process, next to
    the row, every round (Note [References under load]). `min_speedup` is
    the target on torch time / loom time. `repetitions` overrides
    --repetitions for a row whose calls take a second or more."""

    def __init__(self, key, desc, group, source="ops", flops=None, bytes=None, ref=None, min_speedup=None,
                 model=None, tokens=None, repetitions=None, part=None):
        self.key, self.desc, self.group, self.source = key, desc, group, source
        self.part = part
        self.flops, self.bytes, self.ref, self.min_speedup = flops, bytes, ref, min_speedup
        self.model, self.tokens, self.repetitions = model, tokens, repetitions


STREAM_N = 1 << 24


def gemm_flops(m, k, n):
    return 2.0 * m * k * n


def conv_flops(n, c, h, w, o, k, padding):
    """One conv2d (stride 1) as the GEMM it amounts to: 2 N O OH OW C K K.
    Its input and weight gradients are one such GEMM each. Taps that land
    on padding count too, so a 3x3 kernel on a 1x1 map is credited 9x the
    arithmetic that matters."""
    oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    return 2.0 * n * o * oh * ow * c * k * k


# conv2d at batch 128, stride 1, with bias, as (N, C, H, W, O, K, padding);
# the same table is in torch_ops.py and bench_ops.cpp.
CONVS = {
    "cnn_conv1": ("cnn conv1 1->32 28x28", (128, 1, 28, 28, 32, 3, 1)),
    "cnn_conv2": ("cnn conv2 32->64 14x14", (128, 32, 14, 14, 64, 3, 1)),
    "resnet9_conv128": ("resnet9 128->128 16x16", (128, 128, 16, 16, 128, 3, 1)),
    "resnet9_conv128_1x1map": ("resnet9 128->128 1x1", (128, 128, 1, 1, 128, 3, 1)),
}
CONV_TARGET = 1 / 0.7  # loom's conv2d forward + backward at most 0.7x torch's time


# The quant group's models: size -> (description, tokens generated per call,
# torch repetitions a round). bench_ops.cpp (GenSpec) and torch_ops.py
# (GEN_CONFIGS) build the same shapes.
QUANT_SIZES = {
    "small": ("GPT 4L d256 h4, ctx 128 (3.2M params), 16+112 tokens", 112, 2),
    "large": ("GPT 12L d768 h12, ctx 256 (85M params, GPT-2 small), 16+48 tokens", 48, 1),
}
QUANT_FORMATS = ("fp32", "int8", "int4")
QUANT_TORCH_FORMATS = ("fp32", "int8")  # torch_ops.py has no int4 rows
QUANT_TARGETS = {"int8": 1.8, "int4": 2.5}  # loom tokens/s over loom float32's, the issue's bars
QUANT_JUDGED = "large"  # the size the targets are judged on; the small model's rows are information
# Bounds on the torch side (Note [The quant group]): seconds one row's reply
# may take before its process is stopped, and in all before later rows are skipped.
QUANT_TORCH_TIMEOUT = 60.0
QUANT_TORCH_BUDGET = 150.0
QUANT_READ_REF = "sum_f32"  # the memory's read speed, run in each of the group's bench_ops processes

# The amp group (Note [The amp group]). Its targets on loom float32 time /
# loom bfloat16 time are the rows' min_speedup; this one is on torch's
# bfloat16 time / loom's: key -> bar.
AMP_TORCH_TARGETS = {"bf16_gemm_2048": 2.0}
# Bounds on the torch side, as the quant group's: seconds one reply may
# take, and in all before later rows are skipped; and one torch_train.py run.
AMP_TORCH_TIMEOUT = 120.0
AMP_TORCH_BUDGET = 240.0
AMP_TORCH_EPOCH_TIMEOUT = 300.0


WORKLOADS = [
    Workload("peak_fma", "FMA peak (probe)", "sgemm", source="ref"),
    *[Workload(f"sgemm_{n}", f"sgemm {n}^3", "sgemm", flops=gemm_flops(n, n, n), ref="peak_fma",
               min_speedup=1.1 if n >= 1024 else None) for n in (256, 512, 1024, 2048)],
    # The MLP's training GEMMs as M x K x N; ^T marks an operand used through .t().
    *[Workload(key, desc, "mlp_gemm", flops=gemm_flops(m, k, n), ref="peak_fma", min_speedup=1.3)
      for key, desc, (m, k, n) in [
          ("mlp_fc1_fwd", "fc1 fwd 128x784x512 B^T", (128, 784, 512)),
          ("mlp_fc1_grad_x", "fc1 dx 128x512x784", (128, 512, 784)),
          ("mlp_fc1_grad_w", "fc1 dW 512x128x784 A^T", (512, 128, 784)),
          ("mlp_fc2_fwd", "fc2 fwd 128x512x256 B^T", (128, 512, 256)),
          ("mlp_fc2_grad_x", "fc2 dx 128x256x512", (128, 256, 512)),
          ("mlp_fc2_grad_w", "fc2 dW 256x128x512 A^T", (256, 128, 512))]],
    Workload("add_f32", "add 2^24", "memory", bytes=3 * 4 * STREAM_N, ref="stream_add"),
    Workload("stream_add", "STREAM add loop 2^24", "memory", source="ref", bytes=3 * 4 * STREAM_N),
    Workload("sum_f32", "sum 2^24", "memory", bytes=4 * STREAM_N),
    # Rates count one read of x and one write of y.
    Workload("softmax", "softmax 4096x1024", "rowwise", bytes=2 * 4 * 4096 * 1024, min_speedup=1.5),
    Workload("layer_norm", "layer_norm 4096x1024", "rowwise", bytes=2 * 4 * 4096 * 1024, min_speedup=1.5),
    Workload("softmax_fwd_bwd", "softmax fwd+bwd", "rowwise"),
    Workload("layer_norm_fwd_bwd", "layer_norm fwd+bwd", "rowwise"),
    # Forward and the backward w.r.t. input, weight and bias (three GEMMs'
    # worth); "fwd" rows time the forward alone, to show where time goes.
    *[Workload(key, f"{desc} f+b", "conv", flops=3 * conv_flops(*shape),
               min_speedup=CONV_TARGET if key != "resnet9_conv128_1x1map" else None)
      for key, (desc, shape) in CONVS.items()],
    *[Workload(f"{key}_fwd", f"{CONVS[key][0]} fwd", "conv", flops=conv_flops(*CONVS[key][1]))
      for key in ("cnn_conv2", "resnet9_conv128")],
    # Sequence models (bench_ops.cpp "sequence models"; torch's GPT is nanoGPT's
    # model in torch_gpt.py, its attention the math form of PyTorch 1.13).
    # attn: loom's fused scaled_dot_product_attention against softmax(q k^T /
    # sqrt(d) + causal mask) v; loom time <= 0.6x torch's. torch's calls take
    # about a second on 2 cores, so 3 repetitions a round keep the group
    # within ~3 minutes.
    Workload("attn_fb", "attn causal f+b 8x8x512x64", "seq", min_speedup=1 / 0.6, repetitions=3),
    # Embedding(96, 256), LSTM(256, 256, 2 layers), Linear(256, 96), T 64,
    # batch 32, AdamW 3e-4: loom <= 0.6x.
    Workload("lstm_step", "LSTM LM step T64 N32", "seq", min_speedup=1 / 0.6, repetitions=3),
    # GPT 4 layers, d 256, 4 heads, context 128, vocab 96, batch 16, AdamW
    # 3e-4: loom <= 0.5x.
    Workload("gpt_step", "GPT step 16x128 (4L d256)", "seq", min_speedup=2.0, tokens=16 * 128, repetitions=3),
    # Greedy decoding with a KV cache: 16-token prompt, 112 new tokens.
    Workload("gpt_generate", "GPT generate 16+112, KV", "seq", tokens=112, repetitions=3),
    Workload("attn_mem_4096", "attn f+b peak mem T=4096", "seq", source="mem"),
    # loom time <= 0.4 x torch time, i.e. speedup >= 2.5.
    Workload("mlp_epoch", "MLP epoch (Fashion-MNIST)", "epoch", source="epoch", min_speedup=2.5, model="mlp"),
    # loom time <= 0.5 x torch time.
    Workload("cnn_epoch", "CNN epoch (Fashion-MNIST)", "epoch", source="epoch", min_speedup=2.0, model="cnn"),
    # loom time <= 0.5 x libtorch C++ time, i.e. speedup >= 2.
    Workload("dispatch_add", "dispatch add[10]", "dispatch", source="dispatch", min_speedup=2.0),
    Workload("dispatch_add_autograd", "dispatch add[10] autograd", "dispatch", source="dispatch", min_speedup=2.0),
    # The graph layer (issue 16): bench_graph, one process for all the rows
    # selected, and torch_graph.py beside the GPT step. Targets: COMPILED_PEAK
    # and the bars after it (Note [The graph group]).
    Workload("graph_gpt_step", "GPT step 16x128 (4L d256)", "graph", source="graph", part="gpt"),
    Workload("graph_mlp_deep", "deep MLP 1024 wide, batch 256", "graph", source="graph", part="mlp_deep"),
    Workload("graph_planner", "planner: arena / lower bound", "graph", source="graph", part="planner"),
    Workload("graph_dispatch", "dispatch-bound step replay", "graph", source="graph", part="dispatch"),
    # Distributed training on this machine's cores: bench_distributed under
    # mpirun, one run for all the rows selected. Targets: DIST_BUSBW and the
    # bars after it (Note [The distributed group]).
    Workload("dist_allreduce", "all_reduce against MPI_Allreduce", "distributed", source="distributed",
             part="allreduce"),
    Workload("dist_ddp", "DDP ResNet9 step, overlap", "distributed", source="distributed", part="ddp"),
    Workload("dist_scaling", "CNN step weak scaling", "distributed", source="distributed", part="scaling"),
    # loom::compile against eager loom (fusion) and the parallel scheduler
    # against the serial replay: bench_compile, one process for all the
    # sections selected, then `loom train` eager and with --compile. Every
    # target is on eager (or serial) time / compiled (or parallel) time
    # (Note [The compile group]).
    Workload("compile_wide", "wide GEMMs 8x256^3", "compile", source="compile", part="wide", min_speedup=1.4),
    Workload("compile_lstm_sched", "LSTM step scheduled", "compile", source="compile", part="lstm",
             min_speedup=1.4),
    # Nothing to overlap: parallel time <= 1.03x serial.
    Workload("compile_chain", "chain 8 GEMMs 256^3", "compile", source="compile", part="chain",
             min_speedup=1 / 1.03),
    Workload("compile_chain4", "4-op chain 64 MiB", "compile", source="compile", part="chain4", min_speedup=2.5),
    Workload("compile_linear_gelu", "Linear+GELU f+b 128x784x512", "compile", source="compile",
             part="linear_gelu", min_speedup=1.15),
    Workload("compile_gpt_step", "GPT step 16x128 (4L d256)", "compile", source="compile", part="gpt",
             min_speedup=1.25),
    Workload("compile_lstm_step", "LSTM LM step T64 N32", "compile", source="compile", part="lstm_step",
             min_speedup=1.3),
    # Python (issue 20): a 10-element add from Python, loom against torch in
    # one process (python_bench.py): loom time <= 0.8x torch's. The MLP
    # example in Python against `loom train --model mlp`: in this row the
    # torch column is `loom train`'s epoch, and the Python epoch may take at
    # most 1.1x as long (Note [The python group]).
    Workload("py_add", "Python add[10]", "python", source="python", min_speedup=1 / 0.8),
    Workload("py_add_autograd", "Python add[10] autograd", "python", source="python", min_speedup=1 / 0.8),
    Workload("py_mlp_epoch", "Python MLP epoch vs C++", "python", source="python", model="mlp",
             min_speedup=1 / 1.1),
    Workload("compile_mlp_epoch", "MLP epoch (Fashion-MNIST)", "compile", source="compile", model="mlp",
             min_speedup=1.15),
    Workload("compile_cnn_epoch", "CNN epoch (Fashion-MNIST)", "compile", source="compile", model="cnn",
             min_speedup=1.15),
    Workload("compile_time", "compile time per model", "compile", source="compile", part="compile"),
    # Quantized generation (Note [The quant group]): greedy, batch 1, KV
    # cache; bench_ops's gen_* rows against torch_ops.py's (float32 and
    # dynamic int8; PyTorch has no int4 Linear on the CPU). The targets, on
    # the large model (decoding reads its weights from memory): tokens/s
    # int8 >= 1.8x float32, int4 >= 2.5x, loom against loom.
    *[Workload(f"gen_{size}_{fmt}", f"{fmt}", "quant", source="quant", part=fmt, tokens=new_tokens,
               ref=None if fmt == "fp32" else f"gen_{size}_fp32",
               min_speedup=QUANT_TARGETS.get(fmt) if size == QUANT_JUDGED else None,
               repetitions=reps)
      for size, (_, new_tokens, reps) in QUANT_SIZES.items() for fmt in QUANT_FORMATS],
    # bfloat16 mixed precision (issue 21; Note [The amp group]): each row
    # against loom's float32 counterpart, `part` (bench_ops's and
    # torch_ops.py's name for it) or the float32 `loom train` epoch, and
    # beside torch's bfloat16. The targets, loom against loom: the bf16 GEMM
    # >= 4x loom's sgemm (and >= 2x torch's bf16 matmul, AMP_TORCH_TARGETS),
    # the autocast GPT step >= 1.8x float32, the --amp bf16 CNN epoch >= 1.5x.
    # torch's bf16 calls take seconds on 2 cores: one or two repetitions a round.
    Workload("bf16_gemm_2048", "bf16 GEMM 2048^3", "amp", source="amp", part="sgemm_2048",
             flops=gemm_flops(2048, 2048, 2048), min_speedup=4.0, repetitions=2),
    Workload("gpt_step_bf16", "GPT step 16x128 (4L d256)", "amp", source="amp", part="gpt_step", tokens=16 * 128,
             min_speedup=1.8, repetitions=1),
    Workload("cnn_epoch_bf16", "CNN epoch (Fashion-MNIST)", "amp", source="amp", model="cnn", min_speedup=1.5),
]
BY_KEY = {w.key: w for w in WORKLOADS}
GROUPS = list(dict.fromkeys(w.group for w in WORKLOADS))
PEAK_FRACTION_TARGET = ("sgemm_2048", 0.60)  # loom at >= 60% of the measured FMA peak
STREAM_FRACTION_TARGET = ("add_f32", 0.90)  # loom's add at >= 90% of the STREAM loop's GB/s

# Note [References under load]
# Another process can take a core for seconds at a time, so a reference
# measured once, far from the row it judges, can land in a different load
# than the row did. So each reference runs next to every row that uses it.
# The STREAM loop does the same work as loom's add, so the add's share of
# it is median over median, both taken under the same load. The FMA peak is
# a ceiling of the hardware: load can only lower a measurement of it, so
# GEMM rows use the best repetition of the probe over the whole run (which
# the adjacent runs spread out), and % of peak never flatters a busy row.


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def select(only):
    """Workloads named by --only (groups or keys), in table order, with the
    references they are measured against."""
    if not only:
        return list(WORKLOADS)
    keys = set()
    for item in only.split(","):
        item = item.strip()
        if item in GROUPS:
            keys |= {w.key for w in WORKLOADS if w.group == item}
        elif item in BY_KEY:
            keys.add(item)
        elif item:
            sys.exit(f"run.py: unknown workload or group '{item}'; groups: {', '.join(GROUPS)}; "
                     f"workloads: {', '.join(BY_KEY)}")
    keys |= {BY_KEY[k].ref for k in keys if BY_KEY[k].ref}
    return [w for w in WORKLOADS if w.key in keys]


def run_json(cmd, env=None, what="", timeout=None):
    """stdout of `cmd` as JSON, or None (with the reason logged) when it
    fails or runs past `timeout` seconds (then it is stopped)."""
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=timeout)
    except OSError as e:
        log(f"  {what}: cannot run {cmd[0]}: {e}")
        return None
    except subprocess.TimeoutExpired:
        log(f"  {what}: no result within {timeout:g} s, stopped")
        return None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:] or ["no output"]
        log(f"  {what} failed (exit {proc.returncode}): " + " | ".join(tail))
        return None
    return json.loads(proc.stdout)


# ---- loom ----

def run_loom_ops(args, keys, repetitions=None):
    """{key: {"times_s": [...], "flops_per_s": [...]?, "label"?}} from
    bench_ops: one time (mean seconds per call) per repetition."""
    cmd = [
        args.bench_bin,
        f"--loom_threads={args.threads}",
        "--benchmark_format=json",
        f"--benchmark_filter=^({'|'.join(keys)})(/|$)",
        f"--benchmark_repetitions={repetitions or args.repetitions}",
        f"--benchmark_min_time={args.min_time}",
    ]
    data = run_json(cmd, what="bench_ops")
    out = {}
    for b in (data or {}).get("benchmarks", []):
        if b["run_type"] != "iteration":
            continue  # aggregates: run.py takes its own medians over all rounds
        key = b["run_name"].split("/")[0]  # "sgemm_256/real_time"
        entry = out.setdefault(key, {"times_s": []})
        entry["times_s"].append(b["real_time"] * UNIT_SECONDS[b["time_unit"]])
        if "flops" in b:  # a rate counter (peak_fma's flop/s, which depends on the ISA)
            entry.setdefault("flops_per_s", []).append(b["flops"])
        if b.get("label"):
            entry["label"] = b["label"]
    return out


def run_loom_memory(args, key):
    """bench_ops's memory counters for `key` (one iteration, see BM_attn_mem):
    {"peak_bytes": {T: bytes}, "rss_bytes": {T: bytes}}."""
    cmd = [args.bench_bin, f"--loom_threads={args.threads}", "--benchmark_format=json",
           f"--benchmark_filter=^{key}(/|$)", "--benchmark_repetitions=1"]
    data = run_json(cmd, what=f"bench_ops {key}")
    out = {}
    for b in (data or {}).get("benchmarks", []):
        for field, value in b.items():
            for prefix, name in (("peak_T", "peak_bytes"), ("rss_T", "rss_bytes")):
                if field.startswith(prefix):
                    out.setdefault(name, {})[int(field[len(prefix):])] = int(value)
    return out or None


def run_loom_epoch(args, model, flags=(), tag="", epochs=None):
    """Per-epoch training seconds of `loom train --model <model> <flags>`
    from its metrics CSV (the "seconds" column times the training loop
    only, not the test pass), with samples/s and the last test accuracy.
    `tag` names the run's own work folder, so runs with different flags
    keep their files apart; `epochs` overrides --epochs."""
    work = os.path.join(args.work_dir, f"{model}_epoch" + (f"_{tag}" if tag else ""))
    os.makedirs(work, exist_ok=True)
    metrics = os.path.join(work, "loom_metrics.csv")
    if os.path.exists(metrics):
        os.remove(metrics)  # loom appends to an existing file
    cmd = [args.loom_bin, "train", "--model", model, "--dataset", "fashion-mnist", "--epochs",
           str(epochs or args.epochs), "--batch-size", "128", "--optimizer", "adamw", "--lr", "0.001",
           "--threads", str(args.threads), "--metrics", metrics,
           "--out", os.path.join(work, f"loom_{model}.safetensors"), *flags]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        log(f"  cannot run {args.loom_bin}: {e}")
        return None
    if proc.returncode != 0:
        log(f"  loom train failed (exit {proc.returncode}): " + " | ".join(proc.stdout.strip().splitlines()[-3:]))
        return None
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"times_s": [float(r["seconds"]) for r in rows], "samples_per_s": [float(r["samples_per_s"]) for r in rows],
            "test_acc": float(rows[-1]["test_acc"])}


# ---- PyTorch ----
# Note [PyTorch as installed and tuned]
# Debian's PyTorch calls OpenBLAS (through libblas.so.3) for GEMM, and
# OpenBLAS picks its kernels from CPUID unless OPENBLAS_CORETYPE says
# otherwise. On a CPU newer than the OpenBLAS release it may guess badly, and
# a host may set OPENBLAS_CORETYPE to something slow. So torch runs "as
# installed" (variable removed: OpenBLAS's own choice) and "tuned" (the
# fastest of CORETYPES on sgemm 1024, probed first), and loom is held against
# the better of the two. OPENBLAS_NUM_THREADS pins OpenBLAS's own thread pool
# to the same count as torch's intra-op threads and loom's.

def torch_env(args, coretype):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    return env


class TorchWorker:
    """A torch_ops.py --serve process with one OpenBLAS setting: times one
    workload per call, so torch turns come between loom's without paying
    for PyTorch's import each time."""

    def __init__(self, args, coretype):
        self.label = f"torch ({coretype or 'installed'})"
        cmd = [args.python, os.path.join(HERE, "torch_ops.py"), "--serve", f"--threads={args.threads}",
               f"--repetitions={args.repetitions}", f"--min-time={args.min_time}"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=torch_env(args, coretype))
        self.last_error = None  # the reason of the last reply with an error
        self.header = self._reply()

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            log(f"  {self.label}: torch_ops.py exited (exit {self.proc.wait()})")
            return None
        return json.loads(line)

    def run(self, key, repetitions=None, timeout=None):
        """The reply for `key`, None on an error. With `timeout` (seconds),
        a reply that takes longer stops the process (a call in PyTorch
        cannot be interrupted): this run and every later one return None."""
        if self.proc.poll() is not None:
            return None
        self.proc.stdin.write(key + (f" {repetitions}" if repetitions else "") + "\n")
        self.proc.stdin.flush()
        # One line a request, read whole: nothing waits in stdout's buffer.
        if timeout is not None and not wait_readable([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            self.proc.wait()
            self.last_error = f"no reply within {timeout:g} s, stopped"
            log(f"  {self.label} {key}: {self.last_error}")
            return None
        reply = self._reply()
        if reply and "error" in reply:
            log(f"  {self.label} {key}: {reply['error']}")
            self.last_error = reply["error"]
            return None
        return reply

    def close(self):
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
            self.proc.wait()


class BoundedTorch:
    """torch_ops.py --serve as installed, for the rows of a group (`group`
    names it in the log), with bounds on its time (Note [The quant group]):
    a reply that takes over `timeout` seconds stops the process (the next
    row starts a new one), and once `budget` seconds are spent in all, later
    rows are skipped. `errors` says, per row, why it got no reply."""

    def __init__(self, args, meta, group, timeout, budget):
        self.args, self.meta, self.group = args, meta, group
        self.timeout, self.budget = timeout, budget
        self.worker, self.spent_s, self.errors = None, 0.0, {}

    def run(self, key, repetitions, rnd):
        """torch_ops.py's reply for `key` in round `rnd`, or None."""
        if self.spent_s > self.budget:
            self.errors[key] = (f"rounds from {rnd + 1} skipped: torch's rows took over {self.budget:g} s "
                                "(a busy machine?)")
            return None
        if self.worker is None or self.worker.proc.poll() is not None:
            log(f"[{self.group}] torch_ops.py --serve (PyTorch as installed)")
            self.worker = TorchWorker(self.args, None)
            if self.worker.header:
                self.meta["torch"] = self.meta["torch"] or self.worker.header.get("torch")
        log(f"[{self.group} {rnd + 1}/{self.args.rounds}] {self.worker.label}: {key}")
        start = time.monotonic()
        reply = self.worker.run(key, repetitions, timeout=self.timeout)
        self.spent_s += time.monotonic() - start
        if reply is None:
            self.errors[key] = self.worker.last_error or "torch_ops.py gave no reply"
        return reply

    def close(self):
        if self.worker:
            self.worker.close()


def probe_coretype(args):
    """Times torch sgemm 1024 under each of --coretypes, taking turns for
    --rounds rounds. Returns {coretype: median seconds}, the fastest
    coretype and its worker (kept for the tuned runs; the others close)."""
    workers = {core: TorchWorker(args, core) for core in args.coretypes}
    samples = {core: [] for core in args.coretypes}
    for core, worker in workers.items():
        ran = (worker.header or {}).get("openblas_core")
        if ran and ran != core:
            log(f"  OPENBLAS_CORETYPE={core}: OpenBLAS runs {ran} instead")
    for _ in range(args.rounds):
        for core, worker in workers.items():
            reply = worker.run(PROBE_WORKLOAD)
            if reply:
                samples[core] += reply["times_s"]
    probe = {core: statistics.median(times) for core, times in samples.items() if times}
    best = min(probe, key=probe.get) if probe else None
    for core, worker in workers.items():
        if core != best:
            worker.close()
    return probe, best, workers.get(best)


def run_torch_epoch(args, model, coretype, flags=(), epochs=None, timeout=None):
    """torch_train.py's JSON: per-epoch training seconds as "times_s".
    `flags` go to torch_train.py as they are; `epochs` overrides --epochs;
    `timeout`: seconds before the run is stopped (then None)."""
    cmd = [args.python, os.path.join(HERE, "torch_train.py"), "--model", model, "--threads", str(args.threads),
           "--epochs", str(epochs or args.epochs), "--batch-size", "128", "--lr", "0.001", "--json", *flags]
    data = run_json(cmd, env=torch_env(args, coretype), timeout=timeout,
                    what=" ".join(["torch_train.py --model", model, *flags, f"({coretype or 'installed'})"]))
    if data:
        data["times_s"] = data.pop("epoch_seconds")
    return data


def run_torch_dispatch(args):
    if not os.path.exists(args.dispatch_bin):
        log(f"  {args.dispatch_bin} not built (libtorch-dev missing?): no libtorch dispatch reference")
        return {}
    cmd = [args.dispatch_bin, "--threads", str(args.threads), "--repetitions", str(args.repetitions),
           "--min-time", str(args.min_time)]
    return run_json(cmd, what="torch_dispatch") or {}


# ---- the graph layer ----
# Note [The graph group]
# bench_graph is one plain executable (not Google Benchmark) that measures
# every mode of a row in one process: eager, compiled (loom::compile),
# checkpointed, each after its own warm-up, with per-step times and the
# allocator's and the resident set's peaks (bench_graph.cpp's header says
# how). Its rows compare loom with loom, so they need no turns with torch;
# torch_graph.py runs once after it, beside the GPT step only, as installed
# (no OPENBLAS_CORETYPE probe: no target here is against torch). loom takes
# its thread count from OMP_NUM_THREADS (get_num_threads' default).
# bench_graph runs the modes of a row in alternating rounds (memory with one
# mode alive at a time), and a time ratio to eager is the median over rounds
# of that round's ratio (round_ratio): on a shared machine a step swings by
# 10-30%, and a round's two steps see the same load.
# Both sides run with glibc's mmap threshold fixed at 64 KiB
# (MALLOC_MMAP_THRESHOLD_), as torch_ops.py's attention memory row: a freed
# block then goes back to the kernel, so "resident set before the step"
# holds no freed heap that the step reuses unseen. Under glibc's growing
# default, loom's blocks freed by cpu_empty_cache stayed in the heap and the
# eager checkpointed GPT step read 0.1 MiB of resident growth against 87 MiB
# with the fixed threshold; its step time moved within noise (the caching
# allocator reuses its blocks, so a steady step calls malloc little).

GPT_MODES = ("eager", "compiled", "eager_checkpoint", "compiled_checkpoint")
TORCH_GPT_MODES = ("eager", "checkpoint")
MLP_MODES = ("eager", "eager_checkpoint", "compiled_checkpoint")
CHECKPOINT_MODES = ("eager_checkpoint", "compiled_checkpoint")
# Issue 16's numbers; every one a bar on a ratio (see evaluate_graph).
COMPILED_PEAK = 0.6  # compiled GPT step: allocator peak <= 0.6x eager loom's
COMPILED_TIME = 1.0  # ... and step time <= 1.0x eager's (a replay is never slower)
CHECKPOINT_ACTIVATIONS = 0.35  # checkpointed GPT step: activation bytes <= 0.35x eager's
CHECKPOINT_TIME = 1.35  # ... and step time <= 1.35x eager's
MLP_SLOPE = 0.6  # deep MLP, sqrt(N) segments: log-log slope of activation bytes against N
MLP_TIME = 1.4  # ... and step time <= 1.4x eager's at every N (the worst N is judged)
PLANNER_RATIO = 1.10  # arena <= 1.10x the liveness lower bound, on every model
REPLAY_SPEEDUP = 2.0  # dispatch-bound step: eager time / replay time >= 2
# bench_graph's --only names (Workload.part) and the keys of its JSON they fill.
PART_KEYS = {"gpt": "gpt_step", "mlp_deep": "mlp_deep", "planner": "planner", "dispatch": "dispatch"}


def run_graph(args, parts):
    """bench_graph's JSON for `parts` (its --only names), or None. Its
    progress lines go to our stderr as they come: a full run takes minutes."""
    out = os.path.join(args.work_dir, "bench_graph.json")
    if os.path.exists(out):
        os.remove(out)  # a stale file must not pass for this run's numbers
    cmd = [args.graph_bin, "--json", out, "--reps", str(args.graph_reps), "--only", ",".join(parts)]
    try:
        proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                                            MALLOC_MMAP_THRESHOLD_=str(64 << 10)))
    except OSError as e:
        log(f"  cannot run {args.graph_bin}: {e}")
        return None
    if proc.returncode != 0 or not os.path.exists(out):
        log(f"  bench_graph failed (exit {proc.returncode})")
        return None
    with open(out) as f:
        return json.load(f)


def run_torch_graph(args):
    """torch_graph.py's JSON (the GPT step, eager and checkpointed), as installed."""
    cmd = [args.python, os.path.join(HERE, "torch_graph.py"), "--threads", str(args.threads),
           "--reps", str(args.graph_reps)]
    return run_json(cmd, env=torch_env(args, None), what="torch_graph.py")


def collect_graph(args, graph, res, meta):
    """The "graph" rows: one bench_graph run for all of them, then
    torch_graph.py when the GPT step is among them (Note [The graph group])."""
    log(f"[graph] loom: bench_graph --only {','.join(w.part for w in graph)} --reps {args.graph_reps}")
    data = run_graph(args, [w.part for w in graph]) or {}
    meta["graph_threads"] = data.get("threads")
    if data and data.get("threads") != args.threads:
        log(f"  warning: bench_graph ran {data.get('threads')} threads, not {args.threads}")
    for w in graph:
        res[w.key]["loom"] = data.get(PART_KEYS[w.part])
    if "graph_gpt_step" in res:
        log("[graph] torch (installed): torch_graph.py, GPT step eager and checkpointed")
        data = run_torch_graph(args) or {}
        meta["torch"] = meta["torch"] or data.get("torch")
        res["graph_gpt_step"]["torch"] = data.get("gpt_step")


# ---- distributed training ----
# Note [The distributed group]
# bench_distributed is one plain executable run under mpirun (--dist-np
# ranks, 2 by default, one loom thread each). --bind-to core (--dist-bind
# none to change it): one rank per core, as an HPC job of one thread per rank
# runs; on a quiet machine it measured a little better than none, and its
# MPI worker thread sleeps while it waits (Note [One MPI thread] in
# src/distributed/mpi.cpp), so it does not take the rank's core from the
# backward it overlaps. mpi_yield_when_idle 1
# (--no-dist-yield drops it): Open MPI spins while it waits for a peer, and
# with np no larger than the cores it spins without yielding; once another
# process takes a core, two ranks share one and every handoff of a
# collective waits out a scheduler time slice. On this machine, with
# others' builds running, that made a 16 KiB MPI_Allreduce take 18 ms
# instead of 15 us, at random; with yield the same runs repeat within tens
# of percent. It applies to loom and the MPI baseline alike (one library),
# and each rank here has two threads (loom's MPI worker beside the compute
# thread), so a spinning worker also takes the core from backward.
# Every number is loom against a reference in the same run, taking turns in
# rounds (alternating the order), so a burst of load lands on both sides:
# - all_reduce: loom's synchronous distributed::all_reduce(t, Sum) (the hop
#   to loom's MPI worker thread and the cross-rank signature check included)
#   against a plain MPI_Allreduce(MPI_IN_PLACE) loop on MPI_COMM_WORLD, from
#   the main thread while loom's worker is idle (Note [Raw MPI beside loom]
#   in bench_distributed.cpp). Bus bandwidth is nccl-tests': bytes / time x
#   2(n-1)/n. A ratio is the median of the rounds' MPI time / loom time;
#   the 8-byte overhead the median of the rounds' loom - MPI microseconds.
#   A second run with Options::check off (the check is a property of the
#   process group, fixed at init) shows what the check costs.
# - DDP: ResNet9 at batch 64 per rank, two replicas in one process, overlap
#   on and off, and the same buckets' all-reduces with no compute, one step
#   of each per round. The target is DDP's own timeline
#   (DistributedDataParallelStats): the share of the buckets' all-reduce
#   time, start to finish on the MPI worker, that ran before backward ended,
#   the median over steps. Two indirect views are printed beside it: (no-
#   overlap step - overlap step) / all-reduces alone, and 1 - DDP's wait at
#   backward's end with overlap / without. On two busy cores both are mostly
#   noise: ResNet9's all-reduces (1.7 MB, under a millisecond) are a few
#   percent of a step, and shared-memory MPI spends CPU, not a network card,
#   so the time overlap frees is small. The buckets are DDP's defaults
#   (--dist-bucket-cap-mb 25, the first bucket 1 MiB as PyTorch's): the last
#   layers' gradients reduce while backward computes the rest.
# - Weak scaling: the CNN step at batch 64 per rank, rank 0 alone with no
#   DDP (the other ranks sleep, leaving their cores free, as under -np 1)
#   against every rank under DDP; efficiency = the median of the rounds'
#   alone / DDP step times, which is (samples/s at n) / (n x samples/s alone).
#   A third phase, every rank training apart at once with no communication,
#   splits that into the cost of sharing the cores (alone / apart: on a
#   machine others are using, n ranks get less than n cores) and DDP's own
#   (apart / DDP).
# Step-time differences of a few hundred microseconds on a shared machine
# are noisy: the wait view and the per-round medians in the JSON help to
# tell a real change from load.

DIST_BUSBW = 0.9  # loom's all_reduce bus bandwidth >= 0.9x MPI's at every size from DIST_BUSBW_FROM
DIST_BUSBW_FROM = 1 << 20
DIST_OVERHEAD_US = 10.0  # ... and at most 10 us slower than MPI's on 8 bytes
DIST_HIDDEN = 0.5  # DDP hides >= 50% of the all-reduce time behind backward
DIST_EFFICIENCY = 0.85  # CNN step: samples/s at np 2 >= 0.85 x 2 x samples/s alone


def mpirun_command(args, parts, out, check=True):
    cmd = [args.mpirun, "--allow-run-as-root", "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism",
           "none", *(["--mca", "mpi_yield_when_idle", "1"] if args.dist_yield else []),
           "--bind-to", args.dist_bind, "-np", str(args.dist_np), "-x", "OMP_NUM_THREADS=1",
           args.dist_bin, "--json", out, "--reps", str(args.dist_reps), "--only", ",".join(parts),
           "--bucket-cap-mb", f"{args.dist_bucket_cap_mb:g}"]
    return cmd + ([] if check else ["--no-check"])


def run_distributed(args, parts, check=True):
    """bench_distributed's JSON for `parts` under mpirun, or None. Its
    progress lines go to our stderr as they come."""
    out = os.path.join(args.work_dir, "bench_distributed.json" if check else "bench_distributed_nocheck.json")
    if os.path.exists(out):
        os.remove(out)  # a stale file must not pass for this run's numbers
    cmd = mpirun_command(args, parts, out, check)
    try:
        proc = subprocess.run(cmd, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"  mpirun {os.path.basename(args.dist_bin)}: {e}")
        return None
    if proc.returncode != 0 or not os.path.exists(out):
        log(f"  bench_distributed failed (exit {proc.returncode})")
        return None
    with open(out) as f:
        return json.load(f)


def collect_distributed(args, rows_wanted, res, meta):
    """The "distributed" rows: one mpirun of bench_distributed for all of
    them, and a second of the all_reduce part with the collective check off
    (Note [The distributed group])."""
    if not shutil.which(args.dist_bin) or not shutil.which(args.mpirun):
        log(f"[distributed] {args.dist_bin} or {args.mpirun} not found (loom built without MPI? Debian: "
            "libopenmpi-dev): no distributed rows")
        return
    parts = [w.part for w in rows_wanted]
    log(f"[distributed] mpirun -np {args.dist_np} bench_distributed --only {','.join(parts)} --reps {args.dist_reps}")
    data = run_distributed(args, parts) or {}
    meta["dist_world_size"] = data.get("world_size")
    meta["dist_threads"] = data.get("threads")
    for w in rows_wanted:
        res[w.key]["loom"] = data.get(w.part)
    if "dist_allreduce" in res:
        log("[distributed] again with the collective check off: bench_distributed --only allreduce --no-check")
        res["dist_allreduce"]["nocheck"] = (run_distributed(args, ["allreduce"], check=False) or {}).get("allreduce")


def bus_bandwidth_gbs(nbytes, us, n):
    """nccl-tests' bus bandwidth of an all-reduce in GB/s: bytes / time x 2(n-1)/n."""
    return nbytes / (us * 1e-6) * 2 * (n - 1) / n / 1e9 if us and n and n > 1 else None


def allreduce_sizes(data, n):
    """Per message size: medians, bus bandwidths, loom/MPI bandwidth ratio
    (median of the rounds' MPI time / loom time) and loom's overhead (median
    of the rounds' loom - MPI microseconds)."""
    out = []
    for i, nbytes in enumerate((data or {}).get("bytes") or []):
        lu, mu = data["loom_us"][i], data["mpi_us"][i]
        lm, mm = median_or_none(lu), median_or_none(mu)
        out.append({"bytes": nbytes, "loom_us": lm, "mpi_us": mm, "loom_busbw_gbs": bus_bandwidth_gbs(nbytes, lm, n),
                    "mpi_busbw_gbs": bus_bandwidth_gbs(nbytes, mm, n), "ratio": round_ratio(mu, lu),
                    "overhead_us": median_or_none([a - b for a, b in zip(lu, mu)])})
    return out


def clip01(x):
    return None if x is None else min(1.0, max(0.0, x))


def evaluate_distributed(w, r, n):
    """A "distributed" row: bench_distributed's numbers, what run.py derives
    from them, and "checks", one per target (DIST_BUSBW and the bars after it)."""
    loom = r.get("loom") or {}
    row = {"loom": loom}
    checks = []
    if w.part == "allreduce":
        row["nocheck"] = r.get("nocheck")
        row["sizes"] = allreduce_sizes(loom, n)
        row["sizes_nocheck"] = allreduce_sizes(r.get("nocheck"), n)
        big = [s["ratio"] for s in row["sizes"] if s["bytes"] >= DIST_BUSBW_FROM]
        worst = None if not big or None in big else min(big)
        small = [s["overhead_us"] for s in row["sizes"] if s["bytes"] == 8]
        checks.append(graph_check(f"bus bw >= {DIST_BUSBW:g}x MPI's at >= {DIST_BUSBW_FROM >> 20} MiB (worst size)",
                                  worst, DIST_BUSBW, at_most=False))
        checks.append(graph_check(f"8-byte overhead over MPI <= {DIST_OVERHEAD_US:g} us",
                                  small[0] if small else None, DIST_OVERHEAD_US, unit=" us"))
    elif w.part == "ddp":
        ov, no, comm = (loom.get(k) or [] for k in ("overlap_ms", "no_overlap_ms", "comm_ms"))
        row["median_ms"] = {k: median_or_none(loom.get(k)) for k in
                            ("overlap_ms", "no_overlap_ms", "comm_ms", "overlap_wait_ms", "no_overlap_wait_ms")}
        per_round = [(b - a) / c for a, b, c in zip(ov, no, comm) if c > 0]
        row["hidden_unclipped"] = median_or_none(per_round)
        row["hidden"] = clip01(row["hidden_unclipped"])
        # The standard error of that median, from the rounds' spread (about
        # 0.93 IQR / sqrt(rounds) for a normal spread): a difference of a
        # fraction of a millisecond between two steps of tens is easily noise.
        if len(per_round) >= 4:
            q1, _, q3 = statistics.quantiles(per_round, n=4)
            row["hidden_stderr"] = 0.93 * (q3 - q1) / math.sqrt(len(per_round))
        wait_ratio = round_ratio(loom.get("overlap_wait_ms"), loom.get("no_overlap_wait_ms"))
        row["hidden_by_wait"] = clip01(None if wait_ratio is None else 1 - wait_ratio)
        row["hidden_timeline"] = median_or_none(loom.get("hidden_fraction"))
        checks.append(graph_check(f"backward hides >= {DIST_HIDDEN:.0%} of the all-reduce time (DDP's timeline)",
                                  None if row["hidden_timeline"] is None else 100 * row["hidden_timeline"],
                                  100 * DIST_HIDDEN, at_most=False, unit="%"))
    elif w.part == "scaling":
        solo, ddp = median_or_none(loom.get("solo_ms")), median_or_none(loom.get("ddp_ms"))
        batch = loom.get("batch_per_rank", 64)
        row["solo_samples_per_s"] = batch * 1e3 / solo if solo else None
        row["ddp_samples_per_s"] = n * batch * 1e3 / ddp if ddp and n else None
        row["efficiency"] = round_ratio(loom.get("solo_ms"), loom.get("ddp_ms"))
        # Split in two: what running n processes at once costs on these
        # cores (alone / apart), and what DDP adds to that (apart / DDP).
        row["cores_efficiency"] = round_ratio(loom.get("solo_ms"), loom.get("apart_ms"))
        row["ddp_efficiency"] = round_ratio(loom.get("apart_ms"), loom.get("ddp_ms"))
        checks.append(graph_check(f"weak scaling efficiency >= {DIST_EFFICIENCY:.0%}",
                                  None if row["efficiency"] is None else 100 * row["efficiency"],
                                  100 * DIST_EFFICIENCY, at_most=False, unit="%"))
    row["checks"] = checks
    row["target"] = "; ".join(c["target"] for c in checks)
    mets = [c["met"] for c in checks]
    row["met"] = False if False in mets else (None if None in mets else True)
    return row


# ---- loom::compile: fusion and the parallel scheduler ----
# Note [The compile group]
# bench_compile is one plain executable (bench_compile.cpp's header says
# what each section times) that runs the modes of a section in alternating
# rounds: eager loom, the compiled function and the plan-only compile
# (--compile=plan: capture and memory plan, no fusion, no scheduling) for
# the fusion sections; the serial and the parallel replay of one compiled
# function for the scheduler sections. As in the graph group, a ratio is the
# median over rounds of that round's ratio (round_ratio), which run.py takes
# again from the per-round times the JSON keeps. Every target is a bar from
# below on eager (or serial) time / compiled (or parallel) time; the chain of
# dependent products has nothing to run side by side, so its bar is that the
# parallel replay costs at most 3% (time <= 1.03x serial).
# The scaling section times one 256^3 GEMM on 1 thread and on N: a product
# that already runs S times faster on N threads leaves at most N / S to gain
# by running products side by side instead, so on few cores that ceiling,
# not the scheduler, can put the wide graph's 1.4x out of reach. It is
# printed as a note, not judged.
# The MLP and CNN epochs run `loom train` (run_loom_epoch) eagerly, then
# with --compile, the same flags otherwise, --epochs epochs each, one run per
# side back to back (an epoch is long enough to average out short bursts, as
# in the main table's epoch rows); the ratio is eager's median epoch over
# the compiled one's. The compiled run's first epoch holds the capture and
# compile: with --epochs 3 or more the median leaves it out, with 1 it
# counts. The test accuracies of the runs are printed side by side: a
# compiled step must train as the eager one does.

COMPILE_SECONDS = 5.0  # the first call's capture-and-compile time of every model's step
SCHEDULER_PARTS = ("wide", "lstm", "chain")  # bench_compile's serial-against-parallel sections


def run_compile(args, parts):
    """bench_compile's JSON for `parts` (its --only names), or None. Its
    progress lines go to our stderr as they come."""
    out = os.path.join(args.work_dir, "bench_compile.json")
    if os.path.exists(out):
        os.remove(out)  # a stale file must not pass for this run's numbers
    cmd = [args.compile_bin, "--json", out, "--reps", str(args.compile_reps), "--threads", str(args.threads),
           "--only", ",".join(parts)]
    try:
        proc = subprocess.run(cmd)
    except OSError as e:
        log(f"  cannot run {args.compile_bin}: {e}")
        return None
    if proc.returncode != 0 or not os.path.exists(out):
        log(f"  bench_compile failed (exit {proc.returncode})")
        return None
    with open(out) as f:
        return json.load(f)


def collect_compile(args, rows_wanted, res, meta):
    """The "compile" rows: one bench_compile run for all the sections
    selected (with scaling beside any scheduler row), then the epochs of
    `loom train`, eager and compiled (Note [The compile group])."""
    parts = [w.part for w in rows_wanted if w.part]
    if any(p in SCHEDULER_PARTS for p in parts):
        parts.insert(0, "scaling")
    if parts:
        log(f"[compile] loom: bench_compile --only {','.join(parts)} --reps {args.compile_reps} "
            f"--threads {args.threads}")
        data = run_compile(args, parts) or {}
        meta["compile_threads"] = data.get("threads")
        meta["compile_scaling"] = data.get("scaling")
        for w in rows_wanted:
            if w.part:
                res[w.key]["loom"] = data.get(w.part)
    modes = [("eager", []), ("compiled", ["--compile"])] + ([("plan", ["--compile=plan"])] if args.compile_plan_epochs
                                                            else [])
    for w in (w for w in rows_wanted if w.model):
        for mode, flags in modes:
            log(f"[{w.key}] loom train --model {w.model} {' '.join(flags) or '(eager)'}, {args.epochs} epochs")
            merge(res, w.key, mode, run_loom_epoch(args, w.model, flags, tag=mode))


def compile_check(w, value):
    """The target of a "compile" row with a ratio, a bar from below."""
    base, other = ("serial", "parallel") if w.part in SCHEDULER_PARTS else ("eager", "compiled")
    if w.min_speedup < 1:  # a bar on what the compiled side may cost: parallel time <= 1.03x serial
        text = f"{base} / {other} >= {w.min_speedup:.3g}x (within {1 / w.min_speedup - 1:.0%})"
    else:
        text = f"{base} / {other} >= {w.min_speedup:g}x"
    return graph_check(text, value, w.min_speedup, at_most=False)


def evaluate_compile(w, r):
    """A "compile" row: bench_compile's section (or the epochs' times), the
    medians and the ratio run.py derives from them, and "checks", one per
    target (one per model for the compile time)."""
    loom = r.get("loom") or {}
    row = {"loom": loom}
    checks = []
    if w.model:
        for mode in ("eager", "compiled", "plan"):
            if r.get(mode):
                row[mode] = r[mode]
        eager, compiled, plan = (median_of(r.get(m)) for m in ("eager", "compiled", "plan"))
        row["median_ms"] = {"base": eager and eager * 1e3, "compiled": compiled and compiled * 1e3,
                            "plan": plan and plan * 1e3}
        row["ratio"] = ratio(eager, compiled)
        row["plan_ratio"] = ratio(eager, plan)
        checks.append(compile_check(w, row["ratio"]))
    elif w.part == "compile":
        for model, m in loom.items():
            checks.append(graph_check(f"{model} compile < {COMPILE_SECONDS:g} s", m.get("compile_s"),
                                      COMPILE_SECONDS, unit=" s"))
        if not loom:
            checks.append(graph_check(f"compile < {COMPILE_SECONDS:g} s", None, COMPILE_SECONDS, unit=" s"))
    else:
        base, other = ("serial_ms", "parallel_ms") if w.part in SCHEDULER_PARTS else ("eager_ms", "compiled_ms")
        row["median_ms"] = {"base": median_or_none(loom.get(base)), "compiled": median_or_none(loom.get(other)),
                            "plan": median_or_none(loom.get("plan_ms"))}
        row["ratio"] = round_ratio(loom.get(base), loom.get(other))
        row["plan_ratio"] = round_ratio(loom.get(base), loom.get("plan_ms"))
        if w.part == "chain4":
            row["stream_ms"] = median_or_none(loom.get("stream_ms"))
            row["compiled_over_stream"] = round_ratio(loom.get("compiled_ms"), loom.get("stream_ms"))
        checks.append(compile_check(w, row["ratio"]))
    row["checks"] = checks
    row["target"] = "; ".join(c["target"] for c in checks)
    mets = [c["met"] for c in checks]
    row["met"] = False if False in mets else (None if None in mets else True)
    return row


# ---- the runs ----

def merge(res, key, side, entry):
    """Pools one round's repetitions into res[key][side]."""
    if key not in res or not entry:
        return
    pooled = res[key].setdefault(side, {})
    for field, value in entry.items():
        if isinstance(value, list):
            pooled.setdefault(field, []).extend(value)
        elif field not in ("median_s", "name"):
            pooled[field] = value


def finish(entry):
    """Medians over the pooled repetitions of every round."""
    if entry and entry.get("times_s"):
        entry["median_s"] = statistics.median(entry["times_s"])
        if entry.get("flops_per_s"):
            entry["best_flops_per_s"] = max(entry["flops_per_s"])


# Note [The python group]
# The Python package's two numbers (issue 20). The add rows time `a + b` on
# 10 floats with loom and torch taking turns in one Python process
# (bench/python_bench.py), so both pay the same interpreter. The epoch row
# runs python/examples/fashion_mnist.py and `loom train --model mlp` with
# the same model, optimizer, batch size and threads, one after the other,
# --epochs each, and compares median epoch times: the Python loop is the
# only difference. Its "torch" column holds `loom train`'s epoch.
def collect_python(args, rows_wanted, res, meta):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    if any(w.key != "py_mlp_epoch" for w in rows_wanted):
        log(f"[python] bench/python_bench.py: loom and torch from Python, {args.rounds} rounds")
        cmd = [args.python, os.path.join(HERE, "python_bench.py"), "--threads", str(args.threads),
               "--rounds", str(args.rounds), "--repetitions", str(args.repetitions)]
        data = run_json(cmd, what="python_bench", env=env) or {}
        meta["torch"] = meta["torch"] or data.get("torch")
        for w in rows_wanted:
            for side, col in (("loom", "loom"), ("torch", "torch_installed")):
                merge(res, w.key, col, (data.get(w.key) or {}).get(side))
    if any(w.key == "py_mlp_epoch" for w in rows_wanted):
        log(f"[py_mlp_epoch] python/examples/fashion_mnist.py, then loom train --model mlp, {args.epochs} epochs")
        merge(res, "py_mlp_epoch", "loom", run_python_epoch(args, env))
        merge(res, "py_mlp_epoch", "torch_installed", run_loom_epoch(args, "mlp"))


def run_python_epoch(args, env):
    """Per-epoch training seconds of the Python MLP example, from its metrics CSV."""
    work = os.path.join(args.work_dir, "python_mlp_epoch")
    os.makedirs(work, exist_ok=True)
    metrics = os.path.join(work, "metrics.csv")
    cmd = [args.python, os.path.join(ROOT, "python", "examples", "fashion_mnist.py"), "--epochs", str(args.epochs),
           "--threads", str(args.threads), "--metrics", metrics]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        log(f"  the Python example failed (exit {proc.returncode}): " + " | ".join(proc.stdout.strip().splitlines()[-3:]))
        return None
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"times_s": [float(r["seconds"]) for r in rows], "test_acc": float(rows[-1]["test_acc"])}


# Note [The quant group]
# Greedy generation at batch 1 with the KV cache, float32 against loom's own
# int8 and int4 weights (nn::quantize_dynamic), the issue's targets being
# loom's tokens/s over loom float32's on the large model: decoding one
# position multiplies a vector by every weight matrix, so it reads all the
# weights once per token, and fewer bytes per weight is what quantization
# can make faster. The small model's weights (13 MB in float32) are too few
# for that; its rows are printed for information only. Each row's "loom
# GB/s" (weight bytes x steps per second) is set beside sum_f32's read speed,
# measured at the start of the same process: a row well below it is bound
# by its kernel, not by memory.
# The targets are loom against loom, so each pair runs in one bench_ops
# process, next to each other: --loom_gen_turns=N registers every gen row N
# times with the formats of a size taking turns (fp32, int8, int4, then
# int4, int8, fp32, ...), one repetition a turn, and a ratio is the median
# over all turns of that turn's float32 time / quantized time, as in the
# graph group (round_ratio): on this shared machine a call swings by 10-30%,
# and a turn's two calls see the same load. Each model is built, quantized
# and warmed up once per process (the large one takes seconds), so turns
# cost only their calls. The rounds (--rounds) take turns with torch: one
# bench_ops process of --quant-turns turns, then torch_ops.py's rows, the
# order reversed every other round; loom against torch is then the ratio of
# the pooled medians, as in the main table. torch runs as installed (no
# OPENBLAS_CORETYPE probe: no target here is against torch), its int8 the
# dynamic quantization of PyTorch 1.13 (torch.ao.quantization.quantize_dynamic
# on the blocks' nn.Linear: per-tensor int8 weights, activations quantized
# per call) on the engine torch_ops.py found (fbgemm, x86, onednn or
# qnnpack; none: the torch column says why); it has no int4 Linear on the
# CPU. PyTorch's thread pools wait by spinning, so while another process
# holds a core one call can take 10-40x its time (seen here: 2 s and 69 s
# for the same large int8 call); loom's pool does not (Note [Thread pool] in
# src/core/threads.cpp). So the torch side is bounded: a reply that takes
# over QUANT_TORCH_TIMEOUT stops its process (the next row starts a new
# one), and once torch has spent QUANT_TORCH_BUDGET in all, its later rows
# are skipped; the section says which. Its warm-up generates 4 tokens, not
# the whole call.

def run_loom_gen(args, keys):
    """One bench_ops process over the gen rows `keys`, --quant-turns turns,
    and sum_f32 before them: {key: {turn: seconds per call}}, {key: weight
    bytes} and sum_f32's bytes per second (the memory's read speed under
    the process's load), or None."""
    cmd = [args.bench_bin, f"--loom_threads={args.threads}", f"--loom_gen_turns={args.quant_turns}",
           "--benchmark_format=json", f"--benchmark_filter=^({'|'.join([QUANT_READ_REF, *keys])})(/|$)",
           "--benchmark_repetitions=1", f"--benchmark_min_time={args.min_time}"]
    data = run_json(cmd, what="bench_ops (gen rows)")
    times, weight_bytes, read_bps = {}, {}, None
    for b in (data or {}).get("benchmarks", []):
        if b["run_type"] != "iteration":
            continue
        parts = b["run_name"].split("/")  # "gen_large_int8/turn:3/real_time"
        if parts[0] == QUANT_READ_REF:
            read_bps = b.get("bytes_per_second")
            continue
        turn = next((int(p[len("turn:"):]) for p in parts if p.startswith("turn:")), 1)
        times.setdefault(parts[0], {})[turn] = b["real_time"] * UNIT_SECONDS[b["time_unit"]]
        if "weight_bytes" in b:
            weight_bytes[parts[0]] = int(b["weight_bytes"])
    return times, weight_bytes, read_bps


def turn_ratios(base, other):
    """Per turn (or round) present in both: base time / other time."""
    return [base[t] / other[t] for t in sorted(set(base) & set(other)) if other[t]]


def collect_quant(args, rows_wanted, res, meta):
    """The "quant" rows: --rounds rounds, each one bench_ops process (every
    selected row, --quant-turns turns) and torch_ops.py's float32 and int8
    rows, taking turns (Note [The quant group])."""
    keys = [w.key for w in rows_wanted]
    torch_rows = [w for w in rows_wanted if w.part in QUANT_TORCH_FORMATS]
    meta["quant_read_gbs"] = []
    torch_worker = BoundedTorch(args, meta, "quant", QUANT_TORCH_TIMEOUT, QUANT_TORCH_BUDGET)
    meta["quant_torch_errors"] = torch_worker.errors

    def loom_turns(rnd):
        log(f"[quant {rnd + 1}/{args.rounds}] loom: bench_ops --loom_gen_turns={args.quant_turns} "
            f"({', '.join(keys)})")
        times, weight_bytes, read_bps = run_loom_gen(args, keys)
        if read_bps:
            meta["quant_read_gbs"].append(read_bps / 1e9)
        for w in rows_wanted:
            t = times.get(w.key) or {}
            entry = {"times_s": [t[k] for k in sorted(t)]}
            if w.ref and times.get(w.ref):
                entry["fp32_ratios"] = turn_ratios(times[w.ref], t)
            if w.key in weight_bytes:
                entry["weight_bytes"] = weight_bytes[w.key]
            merge(res, w.key, "loom", entry)

    def torch_turn(rnd):
        medians = {}
        for w in torch_rows:
            reply = torch_worker.run(w.key, w.repetitions, rnd)
            if reply is None:
                continue
            medians[w.key] = reply["median_s"]
            entry = {k: v for k, v in reply.items() if k != "median_s"}
            if w.ref in medians:
                entry["fp32_ratios"] = [medians[w.ref] / reply["median_s"]]
            merge(res, w.key, "torch_installed", entry)

    for rnd in range(args.rounds):
        sides = [loom_turns] + ([torch_turn] if torch_rows else [])
        for side in sides if rnd % 2 == 0 else reversed(sides):
            time.sleep(args.settle)
            side(rnd)
    torch_worker.close()


# Note [The amp group]
# bfloat16 mixed precision (issue 21): the targets are loom's bfloat16
# against loom's own float32, so each pair runs next to each other in one
# bench_ops process, as in the quant group: --loom_amp_turns=N registers
# every bfloat16 row and its float32 counterpart (Workload.part) N times,
# taking turns (float32 first on odd turns), one repetition a turn, and a
# ratio is the median over all turns of that turn's float32 time / bfloat16
# time (turn_ratios): a turn's two calls see the same load. Operands, model
# and optimizer are made and warmed up once per process, the float32 and
# the autocast GPT steps training the same model. The rows:
# - bf16_gemm_2048: bfloat16 (2048, 2048) @ (2048, 2048), bfloat16 out (as
#   torch's bf16 matmul), against loom's sgemm on the same values in
#   float32. Bars: >= 4x loom's sgemm and >= 2x torch's bf16 matmul (torch
#   time / loom time, AMP_TORCH_TARGETS). The 4x needs bfloat16 arithmetic
#   in hardware (AVX512-BF16's vdpbf16ps does twice an FMA's multiply-adds
#   per instruction, AMX many more); on a CPU without it a bfloat16 GEMM
#   widens its operands to float32 and multiplies at float32's rate at
#   best, so the bar cannot be met there. The section says which of them
#   this CPU has (/proc/cpuinfo).
# - gpt_step_bf16: the main table's GPT step (bench_gpt, AdamW) with the
#   forward and the loss under AutocastGuard(cpu, bfloat16), backward and the
#   optimizer step outside it, against the same step without the guard.
#   Bar: >= 1.8x.
# - cnn_epoch_bf16: `loom train --model cnn` (run_loom_epoch) in float32,
#   then with --amp bf16, the same flags otherwise, --amp-epochs epochs each
#   (1 by default: a whole epoch, long enough to average out short bursts,
#   and the group stays within a few minutes on 2 cores), one run per side
#   back to back as the compile group's epochs; the ratio is float32's
#   median epoch over bfloat16's. Bar: >= 1.5x. The test accuracies are
#   printed side by side: bfloat16 must train as float32 does.
# The rounds (--rounds) take turns with torch as the quant group's: one
# bench_ops process of --amp-turns turns, then torch_ops.py's float32 and
# bfloat16 rows (bf16_gemm_2048 is torch.bfloat16 tensors' @; gpt_step_bf16
# the step under torch.autocast("cpu", dtype=torch.bfloat16)); loom against
# torch is the ratio of the pooled bfloat16 medians, torch's own bfloat16
# against float32 the median of the rounds' ratios. torch runs as installed:
# its bfloat16 matmul calls no OpenBLAS kernel (libtorch 1.13 here imports
# only sgemm_ from it), so OPENBLAS_CORETYPE cannot change the one target
# against torch. PyTorch 1.13 on a CPU without AVX512-BF16 runs bfloat16
# GEMMs in its own loops, seconds for one 2048 product, and its threads spin
# under load, so its side is bounded as the quant group's (BoundedTorch:
# AMP_TORCH_TIMEOUT a reply, AMP_TORCH_BUDGET in all). torch's CNN runs
# torch_train.py --amp bf16 and float32 on the first --amp-torch-images
# training images, one epoch each (a whole bfloat16 epoch takes minutes
# there); its numbers are samples per second, and loom against torch on
# the CNN compares loom's whole epochs' samples/s with them. No target is
# on torch's CNN or GPT step.

def run_loom_amp(args, keys):
    """One bench_ops process over the amp rows and their float32
    counterparts `keys`, --amp-turns turns: {key: {turn: seconds per
    call}}, or {} when it fails."""
    cmd = [args.bench_bin, f"--loom_threads={args.threads}", f"--loom_amp_turns={args.amp_turns}",
           "--benchmark_format=json", f"--benchmark_filter=^({'|'.join(keys)})/turn:",
           "--benchmark_repetitions=1", f"--benchmark_min_time={args.min_time}"]
    data = run_json(cmd, what="bench_ops (amp rows)")
    times = {}
    for b in (data or {}).get("benchmarks", []):
        if b["run_type"] != "iteration":
            continue
        name, turn = b["run_name"].split("/")[:2]  # "bf16_gemm_2048/turn:3/real_time"
        times.setdefault(name, {})[int(turn[len("turn:"):])] = b["real_time"] * UNIT_SECONDS[b["time_unit"]]
    return times


def collect_amp(args, rows_wanted, res, meta):
    """The "amp" rows: --rounds rounds of one bench_ops process (every
    bench_ops row and its float32 counterpart, --amp-turns turns) and
    torch_ops.py's rows of both, taking turns; then the CNN epochs, loom
    float32 and bfloat16, then torch's (Note [The amp group])."""
    ops_rows = [w for w in rows_wanted if w.part]
    torch_worker = BoundedTorch(args, meta, "amp", AMP_TORCH_TIMEOUT, AMP_TORCH_BUDGET)
    meta["amp_torch_errors"] = torch_worker.errors

    def loom_turns(rnd):
        keys = [k for w in ops_rows for k in (w.part, w.key)]
        log(f"[amp {rnd + 1}/{args.rounds}] loom: bench_ops --loom_amp_turns={args.amp_turns} ({', '.join(keys)})")
        times = run_loom_amp(args, keys)
        for w in ops_rows:
            bf16, fp32 = times.get(w.key) or {}, times.get(w.part) or {}
            merge(res, w.key, "loom", {"times_s": [bf16[t] for t in sorted(bf16)],
                                       "fp32_ratios": turn_ratios(fp32, bf16)})
            merge(res, w.key, "loom_fp32", {"times_s": [fp32[t] for t in sorted(fp32)]})

    def torch_turn(rnd):
        for w in ops_rows:
            fp32 = torch_worker.run(w.part, BY_KEY[w.part].repetitions, rnd)
            bf16 = torch_worker.run(w.key, w.repetitions, rnd)
            merge(res, w.key, "torch_fp32", fp32)
            if bf16:
                entry = {k: v for k, v in bf16.items() if k != "median_s"}
                if fp32:
                    entry["fp32_ratios"] = [fp32["median_s"] / bf16["median_s"]]
                merge(res, w.key, "torch_installed", entry)

    for rnd in range(args.rounds if ops_rows else 0):
        for side in (loom_turns, torch_turn) if rnd % 2 == 0 else (torch_turn, loom_turns):
            time.sleep(args.settle)
            side(rnd)
    torch_worker.close()

    for w in (w for w in rows_wanted if w.model):
        for side, flags in (("loom_fp32", []), ("loom", ["--amp", "bf16"])):
            log(f"[{w.key}] loom train --model {w.model} {' '.join(flags) or '(float32)'}, {args.amp_epochs} epoch(s)")
            merge(res, w.key, side, run_loom_epoch(args, w.model, flags, tag=side, epochs=args.amp_epochs))
        limit = ["--train-limit", str(args.amp_torch_images)] if args.amp_torch_images else []
        for side, flags in (("torch_fp32", limit), ("torch_installed", limit + ["--amp", "bf16"])):
            log(f"[{w.key}] torch (installed): torch_train.py --model {w.model} {' '.join(flags)}, 1 epoch")
            data = run_torch_epoch(args, w.model, None, flags, epochs=1, timeout=AMP_TORCH_EPOCH_TIMEOUT)
            if data is None:
                what = f"{w.key} ({'bf16' if side == 'torch_installed' else 'float32'})"
                meta["amp_torch_errors"][what] = f"failed or stopped after {AMP_TORCH_EPOCH_TIMEOUT:g} s (see the log)"
                continue
            meta["torch"] = meta["torch"] or data.get("torch")
            images = data.get("train_images")
            data["samples_per_s"] = [images / t for t in data["times_s"]] if images else []
            merge(res, w.key, side, data)


def collect_memory(args, w, res, torch_worker):
    """A "mem" row: one bench_ops run for loom's bytes and one torch_ops.py
    reply for torch's (BLAS plays no part in memory, so torch runs as
    installed only). Nothing is timed, so no rounds."""
    log(f"[{w.key}] loom, then torch: peak memory")
    merge(res, w.key, "loom", run_loom_memory(args, w.key))
    reply = torch_worker.run(w.key) if torch_worker else None
    if reply:
        rss = {int(f[len("rss_T"):]): v for f, v in reply.items() if f.startswith("rss_T")}
        merge(res, w.key, "torch_installed", {"rss_bytes": rss})


def collect(args, selected):
    """Runs every selected workload on each side. Micro-benchmarks go
    workload by workload: loom, torch as installed and torch tuned take
    turns, --rounds times (in reverse order every other round), and each
    side's median pools its repetitions of all rounds. So a burst of load
    from another process lands on both sides of a row alike, not on one."""
    res = {w.key: {} for w in selected}
    meta = {"torch": None, "openblas_installed": None, "loadavg": os.getloadavg()}
    needs_torch = any(w.source in ("ops", "epoch", "mem") for w in selected)
    tuned, tuned_worker = None, None
    if needs_torch and args.coretypes:
        log(f"probing OPENBLAS_CORETYPE on torch {PROBE_WORKLOAD}: {', '.join(args.coretypes)}")
        probe, tuned, tuned_worker = probe_coretype(args)
        meta["coretype_probe_s"] = probe
        meta["coretype_tuned"] = tuned
    torch_sides = [("torch_installed", None)] + ([("torch_tuned", tuned)] if tuned else [])

    def note_torch(data, side):
        meta["torch"] = data.get("torch") or meta["torch"]
        if side == "torch_installed" and data.get("openblas_core"):
            meta["openblas_installed"] = data["openblas_core"]

    # A reference that some row runs next to itself needs no turns of its own.
    adjacent = {w.ref for w in selected if w.ref}
    ops = [w for w in selected if w.source in ("ops", "mem") or (w.source == "ref" and w.key not in adjacent)]
    if ops:
        workers = {}
        if any(w.source in ("ops", "mem") for w in ops):
            for side, core in torch_sides:
                workers[side] = tuned_worker if side == "torch_tuned" else TorchWorker(args, core)
                if workers[side].header:
                    note_torch(workers[side].header, side)
        for w in ops:
            if w.source == "mem":
                collect_memory(args, w, res, workers.get("torch_installed"))
                continue
            turns = [("loom", None)] + ([(side, workers[side]) for side, _ in torch_sides] if w.source == "ops" else [])
            for rnd in range(args.rounds):
                for side, worker in turns if rnd % 2 == 0 else reversed(turns):
                    log(f"[{w.key} {rnd + 1}/{args.rounds}] {worker.label if worker else 'loom'}")
                    time.sleep(args.settle)
                    if worker:
                        merge(res, w.key, side, worker.run(w.key, w.repetitions))
                        continue
                    out = run_loom_ops(args, [w.ref, w.key] if w.ref else [w.key], w.repetitions)
                    merge(res, w.key, "loom", out.get(w.key))
                    if w.ref:  # under the row's own key for its ratio, and pooled into the reference's row
                        merge(res, w.key, "ref", out.get(w.ref))
                        merge(res, w.ref, "loom", out.get(w.ref))
        for worker in workers.values():
            worker.close()
    if tuned_worker:
        tuned_worker.close()  # when no micro-benchmark used it

    if any(w.source == "dispatch" for w in selected):
        keys = [w.key for w in selected if w.source == "dispatch"]
        for rnd in range(args.rounds):
            log(f"[dispatch {rnd + 1}/{args.rounds}] loom, then libtorch C++ (torch_dispatch)")
            for key, entry in run_loom_ops(args, keys).items():
                merge(res, key, "loom", entry)
            # BLAS plays no part in a 10-float add: one run stands for both torch columns.
            data = run_torch_dispatch(args)
            meta["torch"] = meta["torch"] or data.get("torch")
            for key, entry in data.get("results", {}).items():
                merge(res, key, "torch_installed", entry)

    python_rows = [w for w in selected if w.source == "python"]
    if python_rows:
        collect_python(args, python_rows, res, meta)

    quant = [w for w in selected if w.source == "quant"]
    if quant:
        collect_quant(args, quant, res, meta)

    amp = [w for w in selected if w.source == "amp"]
    if amp:
        collect_amp(args, amp, res, meta)

    graph = [w for w in selected if w.source == "graph"]
    if graph:
        collect_graph(args, graph, res, meta)

    dist = [w for w in selected if w.source == "distributed"]
    if dist:
        collect_distributed(args, dist, res, meta)

    compiled = [w for w in selected if w.source == "compile"]
    if compiled:
        collect_compile(args, compiled, res, meta)

    # An epoch is long enough to average out short bursts: one run of
    # --epochs epochs on each side.
    for w in (w for w in selected if w.source == "epoch"):
        log(f"[{w.key}] loom train --model {w.model}, {args.epochs} epochs")
        merge(res, w.key, "loom", run_loom_epoch(args, w.model))
        for side, core in torch_sides:
            log(f"[{w.key}] torch ({core or 'installed'}): torch_train.py --model {w.model}, {args.epochs} epochs")
            data = run_torch_epoch(args, w.model, core)
            if data:
                note_torch(data, side)
                merge(res, w.key, side, data)

    for sides in res.values():
        for entry in sides.values():
            finish(entry)
    return res, meta


# ---- the table ----

def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}" if seconds / scale < 100 else f"{seconds / scale:.0f} {unit}"
    return f"{seconds / 1e-9:.0f} ns"


def fmt_bytes(n):
    if n is None:
        return "n/a"
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


def memory_lines(row):
    """The "mem" row's detail: bytes at every T measured, loom and torch."""
    ts = sorted({t for side in ("loom_peak_bytes", "loom_rss_bytes", "torch_rss_bytes")
                 for t in (row.get(side) or {})})
    if not ts:
        return []
    lines = [f"  {'causal attention f+b, B=H=1, D=64:':<58}" + "".join(f"{'T=' + str(t):>11}" for t in ts)]
    for label, side in (("loom: allocator peak minus bytes in use before", "loom_peak_bytes"),
                        ("loom: resident high-water minus resident before", "loom_rss_bytes"),
                        ("torch 1.13 math form: resident high-water minus before", "torch_rss_bytes")):
        values = row.get(side) or {}
        lines.append(f"  {label:<58}" + "".join(f"{fmt_bytes(values.get(t)):>11}" for t in ts))
    return lines


def median_of(entry):
    return entry.get("median_s") if entry else None


NOISY_SPREAD = 0.10  # interquartile range / median of a row's repetitions
BUSY_LOAD = 0.5  # 1-minute load average from other processes that earns a warning


def time_text(entry, source_has_it=True):
    """A median, starred when its repetitions spread widely (a busy machine).
    The interquartile range, unlike max - min, shrugs off one outlier."""
    if not source_has_it:
        return "-"
    t = median_of(entry)
    times = (entry or {}).get("times_s") or []
    noisy = False
    if t and len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4)
        noisy = (q3 - q1) / t > NOISY_SPREAD
    return fmt_time(t) + ("*" if noisy else "")


def evaluate(args, selected, res):
    """Fills each row's derived numbers: best torch time, speedup, rates and
    whether its target is met. Returns the rows as dicts (the JSON)."""
    rows = {}
    for w in selected:
        r = res[w.key]
        if w.source == "graph":
            rows[w.key] = evaluate_graph(w, r)
            continue
        if w.source == "distributed":
            rows[w.key] = evaluate_distributed(w, r, args.dist_np)
            continue
        if w.source == "compile":
            rows[w.key] = evaluate_compile(w, r)
            continue
        if w.source == "quant":
            rows[w.key] = evaluate_quant(w, r)
            continue
        if w.source == "amp":
            rows[w.key] = evaluate_amp(w, r)
            continue
        lt = median_of(r.get("loom"))
        # Note [References under load]
        peak = (res.get("peak_fma", {}).get("loom") or {}).get("best_flops_per_s") if w.ref == "peak_fma" else None
        stream = median_of(r.get("ref")) if w.ref == "stream_add" else None
        torch_times = [t for t in (median_of(r.get("torch_installed")), median_of(r.get("torch_tuned"))) if t]
        best = min(torch_times) if torch_times else None
        row = dict(r, loom_s=lt, torch_best_s=best,
                   speedup=best / lt if best and lt else None)
        if w.key == "peak_fma":
            flops = (r.get("loom") or {}).get("best_flops_per_s")
            row["loom_gflops"] = flops / 1e9 if flops else None
        if w.flops and lt:
            row["loom_gflops"] = w.flops / lt / 1e9
            row["torch_gflops"] = w.flops / best / 1e9 if best else None
            if peak:
                row["loom_peak_frac"] = w.flops / lt / peak
                row["torch_peak_frac"] = w.flops / best / peak if best else None
        if w.tokens and lt:
            row["loom_tokens_per_s"] = w.tokens / lt
            row["torch_tokens_per_s"] = w.tokens / best if best else None
        if w.source == "mem":
            loom, torch_side = r.get("loom") or {}, r.get("torch_installed") or {}
            row["loom_peak_bytes"] = loom.get("peak_bytes")
            row["loom_rss_bytes"] = loom.get("rss_bytes")
            row["torch_rss_bytes"] = torch_side.get("rss_bytes")
        if w.bytes and lt:
            row["loom_gbs"] = w.bytes / lt / 1e9
            row["torch_gbs"] = w.bytes / best / 1e9 if best else None
        def at_least(value, bar):  # None when it cannot be told
            return None if value is None else value >= bar

        checks = []  # (text, met)
        if w.min_speedup:
            checks.append((speedup_target_text(w.min_speedup), at_least(row["speedup"], w.min_speedup)))
        if w.key == PEAK_FRACTION_TARGET[0]:
            bar = PEAK_FRACTION_TARGET[1]
            checks.append((f">={bar:.0%} peak", at_least(row.get("loom_peak_frac"), bar)))
        if w.key == STREAM_FRACTION_TARGET[0]:
            bar = STREAM_FRACTION_TARGET[1]
            row["stream_frac"] = stream / lt if stream and lt else None
            checks.append((f">={bar:.0%} STREAM", at_least(row["stream_frac"], bar)))
        if checks:
            row["target"] = ", ".join(t for t, _ in checks)
            row["met"] = None if any(m is None for _, m in checks) else all(m for _, m in checks)
        rows[w.key] = row
    return rows


def median_or_none(values):
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def round_ratio(times, base):
    """The median over rounds of times[r] / base[r]: bench_graph runs the
    modes of a row in alternating rounds, so each round's ratio compares
    steps that saw the same load. None unless the lists pair up."""
    if not times or not base or len(times) != len(base) or not all(base):
        return None
    return statistics.median(t / b for t, b in zip(times, base))


def graph_check(target, value, bar, at_most=True, unit="x"):
    """One target of a graph row: `value` (a ratio, or a slope with unit
    "") against `bar`, from below (at_most) or from above."""
    met = None if value is None else (value <= bar if at_most else value >= bar)
    return {"target": target, "value": value, "bar": bar, "at_most": at_most, "unit": unit, "met": met}


def loglog_slope(ns, ys):
    """Least-squares slope of log y against log n: the exponent of y ~ n^k.
    None without two points or with a y <= 0 (nothing to take a log of)."""
    if not ns or not ys or len(ns) != len(ys) or len(ns) < 2 or any(y is None or y <= 0 for y in ys):
        return None
    xs, ls = [math.log(n) for n in ns], [math.log(y) for y in ys]
    mx, ml = statistics.fmean(xs), statistics.fmean(ls)
    return sum((x - mx) * (l - ml) for x, l in zip(xs, ls)) / sum((x - mx) ** 2 for x in xs)


def evaluate_graph(w, r):
    """A "graph" row: the raw numbers of both sides, the medians and ratios
    derived from them, and "checks", one per target (COMPILED_PEAK and the
    bars after it)."""
    loom, torch_side = r.get("loom") or {}, r.get("torch") or {}
    row = {"loom": loom, "torch": torch_side}
    checks = []
    if w.part == "gpt":
        ms = {m: median_or_none((loom.get(m) or {}).get("ms")) for m in GPT_MODES}
        ms.update({f"torch_{m}": median_or_none((torch_side.get(m) or {}).get("ms")) for m in TORCH_GPT_MODES})
        row["median_ms"] = ms
        row["time_ratio"] = {m: round_ratio((loom.get(m) or {}).get("ms"), (loom.get("eager") or {}).get("ms"))
                             for m in GPT_MODES if m != "eager"}

        def field(m, f):
            return (loom.get(m) or {}).get(f)

        checks.append(graph_check(f"compiled peak <= {COMPILED_PEAK:g}x eager",
                                  ratio(field("compiled", "peak_bytes"), field("eager", "peak_bytes")), COMPILED_PEAK))
        checks.append(graph_check(f"compiled time <= {COMPILED_TIME:g}x eager",
                                  row["time_ratio"]["compiled"], COMPILED_TIME))
        for m in CHECKPOINT_MODES:
            name = m.replace("_", " ")
            checks.append(graph_check(
                f"{name} activations <= {CHECKPOINT_ACTIVATIONS:g}x eager",
                ratio(field(m, "activation_bytes"), field("eager", "activation_bytes")), CHECKPOINT_ACTIVATIONS))
            checks.append(graph_check(f"{name} time <= {CHECKPOINT_TIME:g}x eager",
                                      row["time_ratio"][m], CHECKPOINT_TIME))
    elif w.part == "mlp_deep":
        ns = loom.get("N") or []
        row["slope"] = {m: loglog_slope(ns, (loom.get(m) or {}).get("activation_bytes")) for m in MLP_MODES}
        eager_ms = (loom.get("eager") or {}).get("ms") or []
        row["time_ratio"] = {}
        for m in CHECKPOINT_MODES:
            mode_ms = (loom.get(m) or {}).get("ms") or []
            # Per N, the median of the rounds' ratios when bench_graph gives them.
            ratios = (loom.get(m) or {}).get("round_ratio") or (
                [ratio(t, e) for t, e in zip(mode_ms, eager_ms)] if len(mode_ms) == len(eager_ms) else [])
            row["time_ratio"][m] = ratios
            worst = None if not ratios or None in ratios else max(ratios)
            name = m.replace("_", " ")
            checks.append(graph_check(f"{name} slope <= {MLP_SLOPE:g}", row["slope"][m], MLP_SLOPE, unit=""))
            checks.append(graph_check(f"{name} time <= {MLP_TIME:g}x eager (worst N)", worst, MLP_TIME))
    elif w.part == "planner":
        row["ratio"] = {model: ratio(p.get("arena_bytes"), p.get("lower_bound_bytes")) for model, p in loom.items()}
        checks += [graph_check(f"{model} arena <= {PLANNER_RATIO:.2f}x bound", v, PLANNER_RATIO)
                   for model, v in row["ratio"].items()]
        if not loom:
            checks.append(graph_check(f"arena <= {PLANNER_RATIO:.2f}x bound", None, PLANNER_RATIO))
    elif w.part == "dispatch":
        row["eager_us"] = median_or_none(loom.get("eager_us"))
        row["replay_us"] = median_or_none(loom.get("replay_us"))
        row["speedup"] = round_ratio(loom.get("eager_us"), loom.get("replay_us"))
        checks.append(graph_check(f"replay >= {REPLAY_SPEEDUP:g}x faster", row["speedup"], REPLAY_SPEEDUP,
                                  at_most=False))
    row["checks"] = checks
    row["target"] = "; ".join(c["target"] for c in checks)
    mets = [c["met"] for c in checks]
    row["met"] = False if False in mets else (None if None in mets else True)
    return row


def evaluate_quant(w, r):
    """A "quant" row (Note [The quant group]): both sides' times, tokens/s,
    the medians of the turns' float32 / quantized ratios (loom) and of the
    rounds' (torch), loom against torch, and "checks": the target on the
    judged size's quantized rows."""
    loom, torch_side = r.get("loom") or {}, r.get("torch_installed") or {}
    lt, tt = median_of(loom), median_of(torch_side)
    row = {"loom": loom, "torch_installed": torch_side, "loom_s": lt, "torch_s": tt,
           "loom_tokens_per_s": w.tokens / lt if lt else None, "torch_tokens_per_s": w.tokens / tt if tt else None,
           "loom_vs_fp32": median_or_none(loom.get("fp32_ratios")),
           "torch_vs_fp32": median_or_none(torch_side.get("fp32_ratios")),
           "speedup": ratio(tt, lt)}
    # Weight bytes read per step times steps per second (the prompt's
    # forward counted as one step): how close a row runs to memory's speed.
    wb = loom.get("weight_bytes")
    row["loom_weight_gbs"] = wb * (w.tokens + 1) / lt / 1e9 if wb and lt else None
    checks = []
    if w.min_speedup:
        checks.append(graph_check(f"{w.part} tokens/s >= {w.min_speedup:g}x fp32", row["loom_vs_fp32"],
                                  w.min_speedup, at_most=False))
    row["checks"] = checks
    if checks:
        row["target"] = "; ".join(c["target"] for c in checks)
        mets = [c["met"] for c in checks]
        row["met"] = False if False in mets else (None if None in mets else True)
    return row


AMP_SIDES = ("loom_fp32", "loom", "torch_fp32", "torch_installed")  # torch_installed: torch's bfloat16


def evaluate_amp(w, r):
    """An "amp" row (Note [The amp group]): each side's times and median
    (float32 and bfloat16 of loom and torch), rates, bfloat16 over float32
    for loom (the target) and for torch, loom against torch in bfloat16,
    and "checks", one per target."""
    row = {side: r.get(side) or {} for side in AMP_SIDES}
    med = {side: median_of(row[side]) for side in AMP_SIDES}
    if w.model:
        # Whole epochs for loom, torch's on its slice of the training set:
        # one run a side, so ratios of medians; loom against torch in samples/s.
        rate = {side: median_or_none(row[side].get("samples_per_s")) for side in AMP_SIDES}
        row["loom_vs_fp32"] = ratio(med["loom_fp32"], med["loom"])
        row["torch_vs_fp32"] = ratio(rate["torch_installed"], rate["torch_fp32"])
        row["speedup"] = ratio(rate["loom"], rate["torch_installed"])
    else:
        work = w.flops / 1e9 if w.flops else w.tokens  # GFLOP or tokens a call
        rate = {side: work / t if t else None for side, t in med.items()}
        row["loom_vs_fp32"] = median_or_none(row["loom"].get("fp32_ratios"))
        row["torch_vs_fp32"] = median_or_none(row["torch_installed"].get("fp32_ratios"))
        row["speedup"] = ratio(med["torch_installed"], med["loom"])
    row["median_s"], row["rate"] = med, rate
    checks = [graph_check(f"bf16 >= {w.min_speedup:g}x loom fp32", row["loom_vs_fp32"], w.min_speedup, at_most=False)]
    if w.key in AMP_TORCH_TARGETS:
        bar = AMP_TORCH_TARGETS[w.key]
        checks.append(graph_check(f"bf16 >= {bar:g}x torch bf16", row["speedup"], bar, at_most=False))
    row["checks"] = checks
    row["target"] = "; ".join(c["target"] for c in checks)
    mets = [c["met"] for c in checks]
    row["met"] = False if False in mets else (None if None in mets else True)
    return row


def speedup_target_text(min_speedup):
    """">=2.5x"; a bar set as a time ratio (1 / 0.7) reads as one: "time<=0.7x"."""
    text = f"{min_speedup:g}"
    return f">={text}x" if len(text) <= 4 else f"time<={1 / min_speedup:.3g}x"


def rate_text(w, row):
    """Throughput of loom and of the faster torch, with % of FMA peak for GEMMs."""
    def gflops(g, frac):
        return "" if g is None else f"{g:.0f}" + (f" ({frac:.0%})" if frac is not None else "")
    if w.key == "peak_fma":
        loom = row.get("loom") or {}
        if not loom.get("flops_per_s"):
            return ""
        median = statistics.median(loom["flops_per_s"]) / 1e9
        return f"best {row['loom_gflops']:.0f}, median {median:.0f} GFLOP/s {loom.get('label', '')}"
    if w.flops and row.get("loom_gflops"):
        return f"{gflops(row['loom_gflops'], row.get('loom_peak_frac'))} | " \
               f"{gflops(row.get('torch_gflops'), row.get('torch_peak_frac')) or '-'} GFLOP/s"
    if w.tokens and row.get("loom_tokens_per_s"):
        torch_tps = f"{row['torch_tokens_per_s']:.0f}" if row.get("torch_tokens_per_s") else "-"
        return f"{row['loom_tokens_per_s']:.0f} | {torch_tps} tokens/s"
    if w.source == "mem":
        loom, torch_side = row.get("loom_peak_bytes") or {}, row.get("torch_rss_bytes") or {}
        t = max(loom, default=None)
        if t and torch_side.get(t) and loom.get(t):
            return f"torch needs {torch_side[t] / loom[t]:.0f}x loom's bytes"
        return ""
    if w.bytes and row.get("loom_gbs"):
        torch_gbs = f"{row['torch_gbs']:.1f}" if row.get("torch_gbs") else "-"
        extra = f"  ({row['stream_frac']:.0%} of STREAM)" if row.get("stream_frac") else ""
        return f"{row['loom_gbs']:.1f} | {torch_gbs} GB/s{extra}"
    return ""


def print_table(args, selected, rows, meta):
    installed = meta.get("openblas_installed") or "?"
    tuned = meta.get("coretype_tuned")
    table = [w for w in selected if w.source not in ("graph", "distributed", "compile", "quant", "amp")]
    if table:
        print(f"threads: {args.threads}   medians of {args.rounds} rounds x {args.repetitions} repetitions "
              f"(>= {args.min_time} s each), epochs: {args.epochs} per run   torch {meta.get('torch') or 'n/a'}")
    else:
        print(f"threads: {args.threads}   torch {meta.get('torch') or 'n/a'}")
    load = os.getloadavg()[0]
    if meta["loadavg"][0] > BUSY_LOAD or load > args.threads + BUSY_LOAD:
        print(f"warning: the machine was busy (load average {meta['loadavg'][0]:.2f} before the run, {load:.2f} "
              f"after it, with {args.threads} threads of ours): other processes share these cores, so the "
              f"numbers swing; rerun when it is idle")
    if meta.get("coretype_probe_s"):
        probe = ", ".join(f"{k} {fmt_time(v)}" for k, v in meta["coretype_probe_s"].items())
        print(f"OpenBLAS: as installed it runs {installed} kernels; tuned: OPENBLAS_CORETYPE={tuned} "
              f"(torch {PROBE_WORKLOAD}: {probe})")
    if table:
        print_main_rows(table, rows)
        if any(w.key == "py_mlp_epoch" for w in table):
            print("py_mlp_epoch: its torch column is `loom train --model mlp`'s epoch; the speedup is loom train's "
                  "epoch / the Python example's (Note [The python group])")
    graph = [w for w in selected if w.source == "graph"]
    if graph:
        print_graph(args, graph, rows, meta)
    dist = [w for w in selected if w.source == "distributed"]
    if dist:
        print_distributed(args, dist, rows, meta)
    compiled = [w for w in selected if w.source == "compile"]
    if compiled:
        print_compile(args, compiled, rows, meta)
    quant = [w for w in selected if w.source == "quant"]
    if quant:
        print_quant(args, quant, rows, meta)
    amp = [w for w in selected if w.source == "amp"]
    if amp:
        print_amp(args, amp, rows, meta)
    for w in (w for w in selected if w.source == "epoch"):
        r = rows[w.key]
        accs = [f"{side} {r[side]['test_acc']:.2%}" for side in ("loom", "torch_installed", "torch_tuned")
                if r.get(side) and "test_acc" in r[side]]
        if accs:
            print(f"{w.model.upper()} test accuracy after {args.epochs} epochs: " + ", ".join(accs))
    # A graph row holds several targets, each counted on its own.
    targets = []
    for w in selected:
        row = rows[w.key]
        if "checks" in row:
            targets += [(f"{w.key} ({c['target']})", c["met"]) for c in row["checks"]]
        elif "met" in row:
            targets.append((w.key, row["met"]))
    missed = [name for name, met in targets if met is not True]
    print(f"targets: {len(targets) - len(missed)}/{len(targets)} met" +
          (f"; missed or unknown: {', '.join(missed)}" if missed else ""))


def print_main_rows(selected, rows):
    """The side-by-side table of every row but the graph group's."""
    header = (f"{'workload':<27}{'loom':>10}{'torch':>10}{'tuned':>10}{'speedup':>9}  "
              f"{'rate: loom | best torch':<36}{'target':<22}{'':<6}")
    print(header)
    print("-" * len(header.rstrip()))
    group = None
    for w in selected:
        if group is not None and w.group != group:
            print()
        group = w.group
        row = rows[w.key]
        if w.source == "dispatch" and row.get("torch_installed"):
            tt_text = "(same)"  # one libtorch C++ run: BLAS plays no part
        else:
            tt_text = time_text(row.get("torch_tuned"), w.source in ("ops", "epoch"))
        ti_text = time_text(row.get("torch_installed"), w.source != "ref")
        # Truncated, not rounded, so a shown 1.10x never sits next to a missed 1.1x target.
        speed = f"{math.floor(row['speedup'] * 100) / 100:.2f}x" if row.get("speedup") else "-"
        met = "" if "met" not in row else {True: "met", False: "MISSED", None: "?"}[row["met"]]
        if w.source == "mem":  # bytes, not time: at the largest T, loom's allocator peak and torch's resident peak
            t = max(row.get("loom_peak_bytes") or row.get("torch_rss_bytes") or {}, default=None)
            loom_b = fmt_bytes((row.get("loom_peak_bytes") or {}).get(t))
            torch_b = fmt_bytes((row.get("torch_rss_bytes") or {}).get(t))
            print(f"{w.desc:<27}{loom_b:>10}{torch_b:>10}{'-':>10}{'-':>9}  {rate_text(w, row)}")
            for line in memory_lines(row):
                print(line)
            continue
        print(f"{w.desc:<27}{time_text(row.get('loom')):>10}{ti_text:>10}{tt_text:>10}{speed:>9}  "
              f"{rate_text(w, row):<36}{row.get('target', ''):<22}{met}")
    print()
    print("speedup = faster torch / loom (above 1: loom is faster). torch: as installed (OPENBLAS_CORETYPE unset);\n"
          "tuned: with the probed OPENBLAS_CORETYPE. Dispatch rows: libtorch C++. GEMM rates: GFLOP/s (% of the FMA\n"
          "probe's best repetition); the add's share of STREAM is against the loop run next to it. conv rows: batch\n"
          "128, 3x3, padding 1; f+b is forward and the input, weight and bias gradients, rated as 3 GEMMs (torch's\n"
          "conv2d runs oneDNN). time<=0.7x: loom's time at most 0.7x the faster torch's (speedup >= 1/0.7).\n"
          "Targets on time: MLP epoch >=2.5x is loom <= 0.4x torch, CNN epoch >=2x is loom <= 0.5x;\n"
          "dispatch >=2x is loom <= 0.5x libtorch.\n"
          "seq rows: torch's attention is the math form softmax(q k^T / sqrt(d) + causal mask) v (PyTorch 1.13 has\n"
          "no scaled_dot_product_attention), its GPT nanoGPT's model (bench/torch_gpt.py); GPT step >=2x is loom <=\n"
          "0.5x torch; tokens/s: 16 x 128 per step, 112 generated per call; 3 repetitions a round. The memory row\n"
          "is bytes, not time, at T=4096 (loom: allocator peak; torch: resident high-water, glibc mmap threshold\n"
          "64 KiB), one run each.\n"
          f"* the middle half of the repetitions spans more than {NOISY_SPREAD:.0%} of the median (a busy machine).")
    if rows.get("add_f32", {}).get("torch_best_s"):
        print("add 2^24: each torch a + b allocates 64 MiB, which glibc maps fresh and the kernel faults in on every\n"
              "call (blocks above 32 MiB skip malloc's reuse); loom's caching allocator reuses its block.")


def ratio_text(value, at_most=True, unit="x"):
    """"0.58x", rounded away from the bar's side: up for a bar from below,
    down for one from above, so a shown 0.60x never sits next to a missed
    0.6x target (as the main table's speedups, which are truncated)."""
    if value is None:
        return "n/a"
    return f"{round_from_bar(value, at_most):.2f}{unit}"


def round_from_bar(value, at_most=True):
    # round() first: 110 / 100 is 1.1000000000000001, which must show as 1.10.
    return (math.ceil if at_most else math.floor)(round(value * 100, 6)) / 100


def mib(n):
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def print_checks(checks, indent="  "):
    for c in checks:
        met = {True: "met", False: "MISSED", None: "?"}[c["met"]]
        value = ratio_text(c["value"], c["at_most"], c["unit"])
        print(f"{indent}{'target: ' + c['target']:<62}{value:>9}  {met}")


def print_graph(args, selected, rows, meta):
    """The graph group's section (Note [The graph group]): one block per row,
    its numbers, then each of its targets with the measured ratio."""
    print()
    threads = meta.get("graph_threads")
    print(f"graph layer: bench_graph (loom, {threads if threads is not None else '?'} threads) and torch_graph.py "
          f"(PyTorch as installed, {args.threads} threads); step times: medians of {args.graph_reps} steps "
          f"(deep MLP: {max(3, args.graph_reps // 2)} per N); modes of a row run in alternating rounds, and a\n"
          "ratio to eager is the median of the rounds' ratios")
    print("-" * 100)
    for w in selected:
        row = rows[w.key]
        loom = row.get("loom") or {}
        if w.part == "gpt":
            print(f"{w.desc:<38}{'step':>10}{'peak MiB':>10}{'act MiB':>10}{'RSS MiB':>10}  vs eager")
            ms = row.get("median_ms") or {}
            eager = loom.get("eager") or {}
            for m in GPT_MODES:
                side = loom.get(m) or {}
                t = ms.get(m)
                vs = ""
                if m != "eager" and side:
                    vs = (f"time {ratio_text((row.get('time_ratio') or {}).get(m))}, peak "
                          f"{ratio_text(ratio(side.get('peak_bytes'), eager.get('peak_bytes')))}, activations "
                          f"{ratio_text(ratio(side.get('activation_bytes'), eager.get('activation_bytes')))}")
                print(f"  {'loom ' + m.replace('_', ' '):<36}{fmt_time(t / 1e3 if t else None):>10}"
                      f"{mib(side.get('peak_bytes')):>10}{mib(side.get('activation_bytes')):>10}"
                      f"{mib(side.get('rss_bytes')):>10}  {vs}")
            torch_side = row.get("torch") or {}
            for m in TORCH_GPT_MODES:
                side = torch_side.get(m) or {}
                t = ms.get(f"torch_{m}")
                vs = ""
                if m != "eager" and side:
                    rss = ratio(side.get("rss_bytes"), (torch_side.get("eager") or {}).get("rss_bytes"))
                    vs = f"time {ratio_text(ratio(t, ms.get('torch_eager')))}, RSS {ratio_text(rss)} (torch eager's)"
                print(f"  {'torch ' + m:<36}{fmt_time(t / 1e3 if t else None):>10}{'-':>10}{'-':>10}"
                      f"{mib(side.get('rss_bytes')):>10}  {vs}")
            print(f"  persistent (parameters, gradients, AdamW moments): {mib(loom.get('persistent_bytes'))} MiB")
        elif w.part == "mlp_deep":
            ns = loom.get("N") or []
            print(f"{w.desc:<38}" + "".join(f"{'N=' + str(n):>9}" for n in ns) + f"{'slope':>9}")
            for m in MLP_MODES:
                act = (loom.get(m) or {}).get("activation_bytes") or []
                slope = (row.get("slope") or {}).get(m)
                print(f"  {'act MiB ' + m.replace('_', ' '):<36}" + "".join(f"{mib(a):>9}" for a in act) +
                      f"{ratio_text(slope, unit=''):>9}")
            for m in MLP_MODES:
                times = (loom.get(m) or {}).get("ms") or []
                print(f"  {'step ' + m.replace('_', ' '):<36}" + "".join(f"{fmt_time(t / 1e3):>9}" for t in times))
            for m in CHECKPOINT_MODES:
                ratios = (row.get("time_ratio") or {}).get(m) or []
                print(f"  {'time / eager: ' + m.replace('_', ' '):<36}" +
                      "".join(f"{ratio_text(r):>9}" for r in ratios))
        elif w.part == "planner":
            print(f"{w.desc:<38}{'arena MiB':>10}{'bound MiB':>10}{'ratio':>9}")
            for model, p in loom.items():
                print(f"  {model:<36}{mib(p.get('arena_bytes')):>10}{mib(p.get('lower_bound_bytes')):>10}"
                      f"{ratio_text((row.get('ratio') or {}).get(model)):>9}")
        elif w.part == "dispatch":
            eager_us, replay_us = row.get("eager_us"), row.get("replay_us")
            print(f"{w.desc:<38}eager {fmt_time(eager_us / 1e6 if eager_us else None)}, "
                  f"replay {fmt_time(replay_us / 1e6 if replay_us else None)} per step "
                  f"(MLP 784-128-10, batch 1, SGD)")
        print_checks(row.get("checks") or [])
        print()
    print("peak: loom's allocator peak bytes in use over one steady step (everything alive); act: that peak\n"
          "minus the persistent bytes; RSS: resident high-water mark over the step minus the resident set before\n"
          "it, glibc's mmap threshold at 64 KiB on both sides (loom: its cache emptied first; a compiled step's\n"
          "arena is resident before it, so a replay reads about 0; torch: in a fresh process). Checkpointed:\n"
          "eager checkpoint is loom::checkpoint per half-block (GPT) and nn::checkpoint_sequential with sqrt(N)\n"
          "segments (deep MLP); compiled checkpoint is the compiler's recompute pass; torch checkpoint is\n"
          "torch.utils.checkpoint (non-reentrant) around every block. The deep MLP's slope is the least-squares\n"
          "fit of log activation bytes on log N; its time target is judged at the worst N. Planner: the compiled\n"
          "training step's arena against the peak of summed live bytes.")


def size_text(nbytes):
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB" if nbytes >= 1 << 10 else f"{nbytes} B"


def percent(x):
    return "n/a" if x is None else f"{x:.0%}"


def print_distributed(args, selected, rows, meta):
    """The distributed group's section (Note [The distributed group]): one
    block per row, its numbers, then each of its targets."""
    print()
    n = meta.get("dist_world_size") or args.dist_np
    print(f"distributed: bench_distributed under mpirun -np {n} --bind-to {args.dist_bind}"
          f"{' --mca mpi_yield_when_idle 1' if args.dist_yield else ''}, "
          f"{meta.get('dist_threads') or '?'} loom thread per rank; the sides of a row take turns in up to "
          f"{args.dist_reps} rounds\n(DDP: {16 * args.dist_reps}; fewer past a time budget), medians and medians of the "
          "rounds' ratios")
    print("-" * 100)
    for w in selected:
        row = rows[w.key]
        loom = row.get("loom") or {}
        if w.part == "allreduce":
            nocheck = {s["bytes"]: s for s in row.get("sizes_nocheck") or []}
            print(f"{w.desc + ', float32':<38}{'loom':>10}{'MPI':>10}{'busbw loom | MPI':>20}{'loom/MPI':>10}"
                  f"{'check off':>11}")
            for s in row.get("sizes") or []:
                off = nocheck.get(s["bytes"], {})
                bw = "-" if s["bytes"] < 4096 else " | ".join(
                    "n/a" if g is None else f"{g:.2f}" for g in (s["loom_busbw_gbs"], s["mpi_busbw_gbs"]))
                print(f"  {size_text(s['bytes']):<36}{fmt_time(s['loom_us'] and s['loom_us'] * 1e-6):>10}"
                      f"{fmt_time(s['mpi_us'] and s['mpi_us'] * 1e-6):>10}{bw:>20}"
                      f"{ratio_text(s['ratio'], at_most=False):>10}{ratio_text(off.get('ratio'), at_most=False):>11}")
            over = {s["bytes"]: s["overhead_us"] for s in row.get("sizes") or []}.get(8)
            over_off = nocheck.get(8, {}).get("overhead_us")
            print(f"  8-byte overhead, loom - MPI: {'n/a' if over is None else f'{over:.1f} us'} "
                  f"(check off: {'n/a' if over_off is None else f'{over_off:.1f} us'})")
        elif w.part == "ddp":
            ms = row.get("median_ms") or {}
            buckets = loom.get("bucket_bytes") or []
            layout = (f"{len(buckets)}: {', '.join(f'{b / 1024:.0f}' for b in buckets)} KiB" if buckets else "?")
            print(f"{w.desc:<38}batch 64 per rank, AdamW, {loom.get('parameters', '?')} parameters")
            print(f"  buckets {layout} (cap {loom.get('bucket_cap_mb', '?')} MiB; DDP's default 25 MiB cap "
                  f"makes {loom.get('default_cap_buckets', '?')})")
            for label, key, wait in (("step, overlap", "overlap_ms", "overlap_wait_ms"),
                                     ("step, no overlap", "no_overlap_ms", "no_overlap_wait_ms"),
                                     ("all-reduces alone", "comm_ms", None)):
                t = ms.get(key)
                wt = ms.get(wait) if wait else None
                print(f"  {label:<36}{fmt_time(t and t * 1e-3):>10}" +
                      (f"   wait at backward's end {fmt_time(wt * 1e-3)}" if wt is not None else ""))
            print(f"  all-reduce time before backward's end (DDP's timeline): {percent(row.get('hidden_timeline'))}")
            err = row.get("hidden_stderr")
            print(f"  step views: (no overlap - overlap) / alone {percent(row.get('hidden'))} "
                  f"(unclipped {percent(row.get('hidden_unclipped'))}"
                  f"{'' if err is None else f', standard error {percent(err)}'}); "
                  f"1 - wait with / wait without {percent(row.get('hidden_by_wait'))}")
        elif w.part == "scaling":
            solo, ddp = median_or_none(loom.get("solo_ms")), median_or_none(loom.get("ddp_ms"))
            sps = row.get("solo_samples_per_s")
            dps = row.get("ddp_samples_per_s")
            print(f"{w.desc:<38}batch {loom.get('batch_per_rank', 64)} per rank, AdamW, "
                  f"{loom.get('steps_per_round', '?')} steps a round")
            print(f"  {'rank 0 alone (np 1)':<36}{fmt_time(solo and solo * 1e-3):>10}   "
                  f"{'n/a' if sps is None else f'{sps:.0f}'} samples/s")
            print(f"  {f'{n} ranks under DDP':<36}{fmt_time(ddp and ddp * 1e-3):>10}   "
                  f"{'n/a' if dps is None else f'{dps:.0f}'} samples/s, efficiency {percent(row.get('efficiency'))}")
            apart = median_or_none(loom.get("apart_ms"))
            print(f"  {f'{n} ranks apart at once, no DDP':<36}{fmt_time(apart and apart * 1e-3):>10}   "
                  f"alone / apart {percent(row.get('cores_efficiency'))}, apart / DDP "
                  f"{percent(row.get('ddp_efficiency'))}")
        print_checks(row.get("checks") or [])
        print()
    print("busbw: GB/s, nccl-tests' bus bandwidth (bytes / time x 2(n-1)/n); loom/MPI: loom's bandwidth over MPI's\n"
          "(median of the rounds' MPI time / loom time); check off: the same from a second run with\n"
          "Options::check false. DDP: the target is the share of the buckets' all-reduce time that ran\n"
          "before backward ended (DDP's timeline); the step views compare step times and waits with and without overlap. Scaling: rank 0 trains alone\n"
          "while the other ranks sleep (an -np 1 run), then all train under DDP, then all train apart with no\n"
          "communication; efficiency is the median of the rounds' alone / DDP step times (a step of several\n"
          "ranks: the slowest one's), and alone / apart and apart / DDP split it into the cost of sharing the\n"
          "cores and the cost of DDP.")


def print_compile(args, selected, rows, meta):
    """The compile group's section (Note [The compile group]): one table of
    eager (or serial) against compiled (or parallel) time, with the plan-only
    compile beside them where it ran, then the scaling ceiling and the
    epochs' accuracies as notes."""
    print()
    threads = meta.get("compile_threads")
    print(f"compile: bench_compile (loom, {threads if threads is not None else '?'} threads), {args.compile_reps} "
          f"rounds a section with the modes taking turns, a ratio the median of\nthe rounds' ratios; epochs: "
          f"`loom train` eager, then --compile{' and --compile=plan' if args.compile_plan_epochs else ''}, "
          f"{args.epochs} epochs each, {args.threads} threads, median epoch")
    header = f"{'workload':<30}{'eager|serial':>14}{'compiled|par.':>15}{'plan':>10}{'ratio':>9}  {'target':<42}"
    print(header)
    print("-" * (len(header) + 6))
    for w in selected:
        row = rows[w.key]
        if w.part == "compile":
            print(f"{w.desc:<30}{'eager step':>14}{'compiling':>15}")
            for (model, m), check in zip((row.get("loom") or {}).items(), row["checks"]):  # one check a model
                met = {True: "met", False: "MISSED", None: "?"}[check["met"]]
                print(f"  {model:<28}{fmt_time(m.get('eager_step_s')):>14}{fmt_time(m.get('compile_s')):>15}"
                      f"{'-':>10}{'-':>9}  {check['target']:<42}{met}")
            if not row.get("loom"):
                print(f"  {'n/a':<28}")
            continue
        ms = row.get("median_ms") or {}
        check = (row.get("checks") or [None])[0] or {}
        met = {True: "met", False: "MISSED", None: "?"}[check.get("met")]
        times = [fmt_time(ms[k] / 1e3) if ms.get(k) is not None else ("-" if k == "plan" else "n/a")
                 for k in ("base", "compiled", "plan")]
        print(f"{w.desc:<30}{times[0]:>14}{times[1]:>15}{times[2]:>10}"
              f"{ratio_text(row.get('ratio'), at_most=False):>9}  {check.get('target', ''):<42}{met}")
        if w.part == "chain4":
            stream = row.get("stream_ms")
            print(f"  compiled / one STREAM pass (copy_ of the 64 MiB, {fmt_time(stream and stream / 1e3)}): "
                  f"{ratio_text(row.get('compiled_over_stream'))}")
    print()
    scaling = meta.get("compile_scaling") or {}
    if scaling and threads:
        def speedup_of(name):
            s = scaling.get(name) or {}
            return round_ratio(s.get("one_thread_ms"), s.get("threads_ms"))

        gemm = scaling.get("gemm_256") or {}
        sp = speedup_of("gemm_256")
        one, many = median_or_none(gemm.get("one_thread_ms")), median_or_none(gemm.get("threads_ms"))
        print(f"scaling: one 256^3 GEMM, eager: {fmt_time(one and one / 1e3)} on 1 thread, "
              f"{fmt_time(many and many / 1e3)} on {threads}, speedup {ratio_text(sp, at_most=False)}; so running\n"
              f"the wide graph's 8 products side by side instead of one after another can gain at most {threads} / "
              f"speedup = {ratio_text(sp and threads / sp, at_most=False)}\n(its target: 1.4x)")
        lstm = [(name, speedup_of(name)) for name in ("lstm_recurrent", "lstm_dgrad", "lstm_wgrad")]
        if any(sp for _, sp in lstm):
            print("  the LSTM step's products, speedup and ceiling: " + ", ".join(
                f"{name[len('lstm_'):]} {ratio_text(sp, at_most=False)} and "
                f"{ratio_text(sp and threads / sp, at_most=False)}" for name, sp in lstm))
    for w in (w for w in selected if w.model):
        row = rows[w.key]
        accs = [f"{mode} {row[mode]['test_acc']:.2%}" for mode in ("eager", "compiled", "plan")
                if row.get(mode) and "test_acc" in row[mode]]
        if accs:
            print(f"{w.model.upper()} test accuracy after {args.epochs} epochs: " + ", ".join(accs))
    print("eager|serial: eager loom, or for the scheduler rows (wide, LSTM step scheduled, chain) the compiled\n"
          "function replayed serially; compiled|par.: the compiled function with every pass (fusion, the parallel\n"
          "scheduler), or replayed in parallel; plan: compiled without fusion or scheduling (--compile=plan). ratio:\n"
          "eager|serial time / compiled|par. time. The chain of dependent products has nothing to overlap: its\n"
          "target is parallel time <= 1.03x serial. Compile time: the first calls of a compiled step (capture,\n"
          "passes, plan, schedule) minus as many eager steps. Epochs: the compiled run's first epoch holds the\n"
          "compile, which the median leaves out from 3 epochs on.")


def print_quant(args, selected, rows, meta):
    """The quant group's section (Note [The quant group]): per model, one
    row per weight format with tokens/s of both sides, the speedups over
    float32 and loom against torch, and the target where one is judged."""
    print()
    engines = sorted({(rows[w.key].get("torch_installed") or {}).get("quantized_engine") for w in selected} - {None})
    print(f"quant: greedy generation, batch 1, KV cache, {args.threads} threads. loom: bench_ops, {args.rounds} "
          f"round(s) of one process with {args.quant_turns} turns of the formats;\nvs fp32: the median of the turns' "
          f"fp32 time / quantized time. torch {meta.get('torch') or 'n/a'} as installed, {args.rounds} round(s) "
          f"taking turns with loom;\nits int8 is quantize_dynamic (engine: {', '.join(engines) or 'n/a'}); it has "
          "no int4 Linear on the CPU")
    header = (f"{'format':<10}{'weights':>10}{'loom tok/s':>12}{'torch tok/s':>13}{'loom vs fp32':>14}"
              f"{'torch vs fp32':>15}{'loom/torch':>12}{'loom GB/s':>11}  {'target':<28}")
    print(header)
    print("-" * (len(header.rstrip()) + 6))

    def tps(x):
        return "n/a" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}"
    for size, (desc, _, _) in QUANT_SIZES.items():
        ws = [w for w in selected if w.key.startswith(f"gen_{size}_")]
        if not ws:
            continue
        print(f"{size}: {desc}" + ("" if size == QUANT_JUDGED else " (information, not judged)"))
        for w in ws:
            row = rows[w.key]
            loom = row.get("loom") or {}
            torch_side = w.part in QUANT_TORCH_FORMATS
            loom_tps = tps(row.get("loom_tokens_per_s")) + ("*" if time_text(loom).endswith("*") else "")
            torch_tps = tps(row.get("torch_tokens_per_s")) if torch_side else "-"
            if w.part == "fp32":
                vs = "1.00x" if row.get("loom_s") else "n/a"
                tvs = ("1.00x" if row.get("torch_s") else "n/a") if torch_side else "-"
            else:
                vs = ratio_text(row.get("loom_vs_fp32"), at_most=False)
                tvs = ratio_text(row.get("torch_vs_fp32"), at_most=False) if torch_side else "-"
            lt = ratio_text(row.get("speedup"), at_most=False) if torch_side else "-"
            gbs = row.get("loom_weight_gbs")
            check = (row.get("checks") or [None])[0]
            met = "" if not check else {True: "met", False: "MISSED", None: "?"}[check["met"]]
            print(f"  {w.part:<8}{fmt_bytes(loom.get('weight_bytes')):>10}{loom_tps:>12}{torch_tps:>13}{vs:>14}"
                  f"{tvs:>15}{lt:>12}{'n/a' if gbs is None else f'{gbs:.1f}':>11}  "
                  f"{check['target'] if check else '':<28}{met}")
    for key, why in (meta.get("quant_torch_errors") or {}).items():
        print(f"torch {key}: n/a: {why}")
    read = median_or_none(meta.get("quant_read_gbs"))
    print("weights: the model's parameters and buffers (int8: codes and per-channel scales; int4: packed codes and\n"
          "a scale per 32; the tied lm_head and the embeddings stay float32); loom GB/s: weights x decoding steps per\n"
          "second, the bytes a step must read at least, against the memory's read speed in the same processes\n"
          f"({QUANT_READ_REF}: {'n/a' if read is None else f'{read:.1f} GB/s'}). loom/torch: torch time / loom time "
          "for the same format (above 1: loom is\nfaster), medians over all rounds. * the middle half of loom's calls "
          f"spans more than {NOISY_SPREAD:.0%} of the median.")


def cpu_bf16_instructions():
    """The CPU's bfloat16 arithmetic in /proc/cpuinfo's flags (AVX512-BF16,
    AMX-BF16): [] when it has none or the file cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]


def print_amp(args, selected, rows, meta):
    """The amp group's section (Note [The amp group]): per row, float32 and
    bfloat16 times of loom and torch, the speedups over float32 and loom
    against torch in bfloat16, each target with its measured ratio, and a
    line of rates."""
    print()
    isa = cpu_bf16_instructions()
    images = f"the first {args.amp_torch_images}" if args.amp_torch_images else "all"
    print(f"amp: bfloat16 mixed precision, {args.threads} threads; this CPU's bfloat16 arithmetic: "
          f"{', '.join(isa) if isa else 'none (no AVX512-BF16, no AMX)'}.\nloom: bench_ops, {args.rounds} round(s) "
          f"of one process with {args.amp_turns} turns of float32 and bfloat16; vs fp32: the median of\nthe turns' "
          f"float32 time / bfloat16 time. torch {meta.get('torch') or 'n/a'} as installed (bf16 matmul, "
          f"torch.autocast('cpu')),\n{args.rounds} round(s) taking turns with loom. CNN: `loom train` float32, then "
          f"--amp bf16, {args.amp_epochs} epoch(s) each, median epoch;\ntorch_train.py float32 and --amp bf16, one "
          f"epoch of {images} training images each")
    columns = f"{'workload':<27}{'loom fp32':>10}{'loom bf16':>10}{'vs fp32':>9}{'torch fp32':>11}{'torch bf16':>11}" \
              f"{'vs fp32':>9}{'loom/torch':>11}  "
    print(f"{columns}target")
    print("-" * (len(columns) + 32))
    met_text = {True: "met", False: "MISSED", None: "?"}
    for w in selected:
        row = rows[w.key]
        med, rate = row.get("median_s") or {}, row.get("rate") or {}
        torch_time = not w.model  # torch's CNN ran a slice of the epoch: its line of rates gives the times
        cells = (f"{w.desc:<27}{time_text(row.get('loom_fp32')):>10}{time_text(row.get('loom')):>10}"
                 f"{ratio_text(row.get('loom_vs_fp32'), at_most=False):>9}"
                 f"{time_text(row.get('torch_fp32'), torch_time):>11}"
                 f"{time_text(row.get('torch_installed'), torch_time):>11}"
                 f"{ratio_text(row.get('torch_vs_fp32'), at_most=False):>9}"
                 f"{ratio_text(row.get('speedup'), at_most=False):>11}  ")
        # One target a line, the first beside the row's cells.
        print("\n".join(f"{cells if i == 0 else ' ' * len(columns)}{c['target']:<26}{met_text[c['met']]}"
                        for i, c in enumerate(row.get("checks") or [])) or cells.rstrip())

        def num(side):
            x = rate.get(side)
            return "n/a" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.3g}"
        unit = "GFLOP/s" if w.flops else "tokens/s" if w.tokens else "samples/s"
        slice_text = ""
        if w.model:  # torch's times, not in the row: they are of its slice of the training set
            slice_text = (f" (the first {args.amp_torch_images} images" if args.amp_torch_images else " (an epoch") + \
                f": {fmt_time(med.get('torch_fp32'))} and {fmt_time(med.get('torch_installed'))})"
        print(f"  {unit}: loom {num('loom_fp32')} fp32, {num('loom')} bf16; torch {num('torch_fp32')} fp32, "
              f"{num('torch_installed')} bf16{slice_text}")
    for w in (w for w in selected if w.model):
        row = rows[w.key]
        accs = [f"{name} {row[side]['test_acc']:.2%}" for name, side in (("float32", "loom_fp32"), ("bf16", "loom"))
                if "test_acc" in row.get(side, {})]
        if accs:
            print(f"{w.model.upper()} test accuracy after {args.amp_epochs} epoch(s), loom: " + ", ".join(accs))
    for key, why in (meta.get("amp_torch_errors") or {}).items():
        print(f"torch {key}: n/a: {why}")
    print("vs fp32: float32 time / bfloat16 time of the same side (above 1: bfloat16 is faster); loom/torch: torch's\n"
          "bfloat16 time / loom's (the CNN: loom's samples/s / torch's). The targets are loom against loom, and the\n"
          "bfloat16 GEMM against torch's. * the middle half of the repetitions spans more than "
          f"{NOISY_SPREAD:.0%} of the median.")


def main():
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build-bench"),
                   help="where bench/bench_ops, bench/bench_graph, bench/bench_compile, bench/torch_dispatch and "
                        "loom were built")
    p.add_argument("--bench-bin", help="default: BUILD_DIR/bench/bench_ops")
    p.add_argument("--dispatch-bin", help="default: BUILD_DIR/bench/torch_dispatch")
    p.add_argument("--loom-bin", help="default: BUILD_DIR/loom")
    p.add_argument("--graph-bin", help="default: BUILD_DIR/bench/bench_graph")
    p.add_argument("--graph-reps", type=int, default=11,
                   help="timed steps of each mode in the graph group (bench_graph and torch_graph.py --reps)")
    p.add_argument("--compile-bin", help="default: BUILD_DIR/bench/bench_compile")
    p.add_argument("--compile-reps", type=int, default=11,
                   help="rounds of each section of the compile group (bench_compile --reps)")
    p.add_argument("--compile-plan-epochs", action="store_true",
                   help="the compile group's MLP and CNN epochs also with --compile=plan (capture and memory plan "
                        "only), for context")
    p.add_argument("--quant-turns", type=int, default=5,
                   help="turns of the formats in each bench_ops process of the quant group (one per --rounds); "
                        "its ratios are medians over all turns (Note [The quant group])")
    p.add_argument("--amp-turns", type=int, default=5,
                   help="turns of float32 and bfloat16 in each bench_ops process of the amp group (one per --rounds); "
                        "its ratios are medians over all turns (Note [The amp group])")
    p.add_argument("--amp-epochs", type=int, default=1,
                   help="epochs of each `loom train` CNN run of the amp group, float32 and --amp bf16 (median "
                        "reported)")
    p.add_argument("--amp-torch-images", type=int, default=6400,
                   help="training images of torch's CNN epochs in the amp group, float32 and --amp bf16 (0: all)")
    p.add_argument("--dist-bin", help="default: BUILD_DIR/bench/bench_distributed")
    p.add_argument("--mpirun", default="mpirun", help="Open MPI's launcher, for the distributed group")
    p.add_argument("--dist-np", type=int, default=2, help="ranks of the distributed group's mpirun")
    p.add_argument("--dist-reps", type=int, default=11,
                   help="rounds of each row of the distributed group (DDP: sixteen times as many)")
    p.add_argument("--dist-bind", default="core", choices=["none", "core"],
                   help="mpirun --bind-to for the distributed group")
    p.add_argument("--no-dist-yield", dest="dist_yield", action="store_false",
                   help="run the distributed group's mpirun without --mca mpi_yield_when_idle 1 "
                        "(Note [The distributed group])")
    p.add_argument("--dist-bucket-cap-mb", type=float, default=25.0,
                   help="DDP bucket cap of the distributed group's overlap row (Note [The distributed group])")
    p.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                   help="a Python that can import torch")
    p.add_argument("--threads", type=int, default=nproc)
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition (at least)")
    p.add_argument("--rounds", type=int, default=2,
                   help="turns loom and torch take on each micro-benchmark (repetitions pooled)")
    p.add_argument("--settle", type=float, default=0.3,
                   help="seconds to wait before each turn, so the threads of the side that ran last (OpenBLAS "
                        "and OpenMP spin a while after a call) are idle when the next side starts timing")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs of each training run (MLP, CNN) on each side (median reported)")
    p.add_argument("--only", default="", help=f"comma-separated groups ({', '.join(GROUPS)}; quant: int8 / int4 "
                                              "generation; amp: bfloat16 mixed precision) or workload names")
    p.add_argument("--coretypes", default=",".join(CORETYPES),
                   help="OPENBLAS_CORETYPE values to probe for the tuned torch run ('' for none)")
    p.add_argument("--json", help="write the raw results here (default: BUILD_DIR/bench_results.json)")
    args = p.parse_args()
    args.bench_bin = args.bench_bin or os.path.join(args.build_dir, "bench", "bench_ops")
    args.dispatch_bin = args.dispatch_bin or os.path.join(args.build_dir, "bench", "torch_dispatch")
    args.loom_bin = args.loom_bin or os.path.join(args.build_dir, "loom")
    args.graph_bin = args.graph_bin or os.path.join(args.build_dir, "bench", "bench_graph")
    args.compile_bin = args.compile_bin or os.path.join(args.build_dir, "bench", "bench_compile")
    args.dist_bin = args.dist_bin or os.path.join(args.build_dir, "bench", "bench_distributed")
    args.json = args.json or os.path.join(args.build_dir, "bench_results.json")
    args.work_dir = args.build_dir
    args.coretypes = [c for c in args.coretypes.split(",") if c]
    if args.graph_reps < 1:
        sys.exit(f"run.py: --graph-reps must be at least 1, got {args.graph_reps}")
    if args.compile_reps < 1:
        sys.exit(f"run.py: --compile-reps must be at least 1, got {args.compile_reps}")
    if args.quant_turns < 1:
        sys.exit(f"run.py: --quant-turns must be at least 1, got {args.quant_turns}")
    if args.amp_turns < 1 or args.amp_epochs < 1 or args.amp_torch_images < 0:
        sys.exit(f"run.py: --amp-turns and --amp-epochs must be at least 1 and --amp-torch-images at least 0, got "
                 f"{args.amp_turns}, {args.amp_epochs} and {args.amp_torch_images}")
    if args.dist_reps < 1 or args.dist_np < 2:
        sys.exit(f"run.py: --dist-reps must be at least 1 and --dist-np at least 2, got {args.dist_reps} and "
                 f"{args.dist_np}")

    start = time.monotonic()
    selected = select(args.only)
    # Only the programs the selected rows run must exist.
    if any(w.source in ("ops", "ref", "mem", "dispatch", "quant") or (w.source == "amp" and w.part)
           for w in selected) and \
            not shutil.which(args.bench_bin):
        sys.exit(f"run.py: {args.bench_bin} not found; build it with `make bench`")
    if any(w.source == "graph" for w in selected) and not shutil.which(args.graph_bin):
        sys.exit(f"run.py: {args.graph_bin} not found; build it with `make bench`")
    if any(w.source == "compile" and w.part for w in selected) and not shutil.which(args.compile_bin):
        sys.exit(f"run.py: {args.compile_bin} not found; build it with `make bench`")
    res, meta = collect(args, selected)
    rows = evaluate(args, selected, res)
    wall = time.monotonic() - start
    print_table(args, selected, rows, meta)
    print(f"wall time of the runs: {wall:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"threads": args.threads, "rounds": args.rounds, "repetitions": args.repetitions,
                   "min_time_s": args.min_time, "graph_reps": args.graph_reps,
                   "compile_reps": args.compile_reps, "quant_turns": args.quant_turns, "amp_turns": args.amp_turns,
                   "amp_epochs": args.amp_epochs, "amp_torch_images": args.amp_torch_images,
                   "dist_reps": args.dist_reps,
                   "dist_np": args.dist_np, "dist_bind": args.dist_bind, "dist_yield": args.dist_yield,
                   "epochs": args.epochs, "meta": meta, "wall_s": wall, "workloads": rows}, f, indent=1)
    print(f"raw results: {args.json}")


if __name__ == "__main__":
    main()
