#!/usr/bin/env python3
"""`make bench-serve`: `loom serve` under load from wrk, batch-1 serving
against dynamic batching, beside the same CNN called in process (PyTorch, and
loom's own forward as the server times it).

What runs, in order (every wait has a timeout; the servers get SIGTERM at the
end, or on any error or ^C):

  1. A CNN checkpoint: --checkpoint, else runs/cnn.safetensors, else
     `loom train --model cnn --epochs 1 --train-limit 2000` into the build
     dir (the weights do not change the time, only the answers).
  2. Two request bodies for one Fashion-MNIST test image, FP32 [1,1,28,28]:
     "binary", the binary tensor extension as Triton's Python client sends it
     by default (a JSON header, then the 3,136 raw bytes, and
     binary_data_output: both outputs come back as raw bytes too); "json",
     the 784 floats as JSON numbers (a curl or plain-JSON client; outputs as
     JSON). Both are POSTed once and must give the same class.
  3. Two servers at once, on the same compute threads (--threads): batch-1
     (--max-batch-size 1) and batched (--max-batch-size 32
     --max-queue-delay-us D, D = 0 by default: Note [Queue delay]). Both warm
     up (concurrency 1 and 64, both bodies).
  4. The sweep: wrk -t1 with oip.lua at each concurrency (1, 4, 16, 32, 64),
     --duration seconds a point, --repeats rounds; in each round the two
     servers take turns point by point, so load from elsewhere lands on both
     alike. Reported: medians over the rounds of requests/s, p50 and p99
     (wrk --latency); and from the server's statistics extension (GET
     /v2/models/cnn/stats before and after each point) where the time went:
     rows per batch, queue wait, forward time per batch, the server's
     request time; the CPU the server and wrk used, the server's context
     switches, connections the kernel dropped for a full accept queue.
  5. Resident memory (VmRSS) of the batched server after the sweep (every
     batch size seen: the warm-up of loom's caching allocator), then after
     100,000 more requests (wrk at 32 connections, main body; the server's
     own success count says when 100,000 are done).
  6. The health endpoint (GET /v2/health/ready) at 32 connections: p99 and
     socket errors.
  7. In process, no HTTP: torch_cnn.py (the same CNN in PyTorch, the same
     threads) and loom's forward at batch 1..64 as a third server (--max-
     batch-size 64) times it: requests of N rows one at a time, and the
     forward's time from the server's batch_stats.

Then the LLM group (bench/serve/llm.py): the OpenAI completions of a
character GPT and its draft model from `make llm-models`, streamed (8
concurrent streams against one, time to first token, the paged KV cache's
use, speculative decoding); skipped, saying so, when the models are missing.
--only cnn or --only llm runs one group.

Prints the tables and the targets (PASS/FAIL), and writes everything as
JSON (default BUILD_DIR/bench_serve_results.json; the LLM group's under "llm").

    python3 bench/serve/run.py --build-dir build-bench
    python3 bench/serve/run.py --only llm --llm-dir build/llm             # the LLM group alone
    python3 bench/serve/run.py --duration 2 --repeats 1 --bodies binary   # quick
    python3 bench/serve/run.py --delay-sweep 0,500,1000,2000,4000          # choose D
"""
import argparse
import gzip
import json
import os
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import llm  # bench/serve/llm.py: the LLM group

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LUA = os.path.join(HERE, "oip.lua")
MODEL = "cnn"
DATA_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The issue's numbers.
TARGET_CONC = 32
TARGET_RATIO = 3.0  # batched requests/s >= 3x batch-1's at TARGET_CONC
TARGET_P99_MS = 50.0  # batched p99 at TARGET_CONC
HEALTH_CONNS = 32
HEALTH_P99_MS = 2.0
RSS_REQUESTS = 100_000
RSS_GROWTH = 0.05

# Note [Queue delay]
# The clients here are a closed loop (each of C connections sends its next
# request when the last is answered), and the batcher (src/serve/batcher.cpp)
# clocks itself: with no delay, the requests that arrive while a batch runs
# form the next batch. On this CPU-bound 2-core box the forward is the
# bottleneck, so the clients settle into two groups taking turns: one group's
# batch computes while the other group's answers go out and its next requests
# come back (at C = 32, about 16 rows a batch; at 64, 25-32), and compute
# overlaps the HTTP work. A delay could merge the two groups into one batch
# of 32 only by waiting about one forward of 16 rows (5-7 ms) with the
# compute core idle; a shorter one changes little at C >= 16 (the batches
# start full, or the oldest request has already waited longer), but below
# that every batch waits the whole delay: at C = 1, 2 ms took ~1,300 req/s
# down to ~300 and p50 from 0.7 to 3 ms, and even 250 us took it to ~750
# req/s (p50 1.3 ms), while at 16-64 connections no delay of 250 us to 2 ms
# beat 0 by more than the rounds' spread (`run.py --delay-sweep
# 0,250,500,1000,2000` measures it). So the batched server runs with delay 0:
# batches grow with the load and a lone request never waits. A delay pays
# off when requests arrive open-loop and sparse next to the forward time, or
# when a full batch is much cheaper per row than the batches the load forms
# by itself; neither holds here (loom's forward costs about the same per row
# from 16 to 64 rows: the in-process table).
DEFAULT_DELAY_US = 0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


BenchError = llm.BenchError


# ---- the servers ----

class Server(llm.ServerProcess):
    """The served CNN, with the batching flags (optionally pinned to `cpus`)."""

    def __init__(self, args, label, max_batch, delay_us, cpus=None):
        self.max_batch, self.delay_us = max_batch, delay_us
        super().__init__(label, [args.loom_bin, "serve", "--model", f"{MODEL}={args.checkpoint}", "--host", "127.0.0.1",
                                 "--port", "0", "--threads", str(args.threads), "--http-threads", str(args.http_threads),
                                 "--max-batch-size", str(max_batch), "--max-queue-delay-us", str(delay_us)],
                         args.start_timeout, (lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def get_json(self, path, timeout=10):
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError) as e:
            alive = self.proc.poll() is None
            raise BenchError(f"{self.label} server (pid {self.pid}, {'still running' if alive else 'exited'}): "
                             f"GET {path} failed: {getattr(e, 'reason', e)}"
                             + ("; it no longer listens: cpp-httplib closes the listening socket on an accept() "
                                "error and `loom serve` goes on without it" if alive and "refused" in str(e) else "")
                             + (" | " + " | ".join(self.lines[-3:]) if self.lines else ""))

    def stats(self):
        """This model's entry of the statistics extension."""
        return self.get_json(f"/v2/models/{MODEL}/stats")["model_stats"][0]

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise BenchError(f"{self.label} server: no VmRSS in /proc/{self.pid}/status")

    def cpu_s(self):
        """User + system CPU seconds of the server so far (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def context_switches(self):
        """Voluntary and involuntary context switches of all the server's threads so far."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/status") as f:
                    total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
            except OSError:  # a thread that just ended
                pass
        return total


# ---- request bodies ----

def test_image():
    """The first Fashion-MNIST test image as 784 float32 pixels / 255 (a
    fixed pattern when the dataset is not installed) and its label."""
    try:
        with gzip.open(os.path.join(DATA_DIR, "t10k-images-idx3-ubyte.gz"), "rb") as f:
            images = f.read(16 + 784)
        with gzip.open(os.path.join(DATA_DIR, "t10k-labels-idx1-ubyte.gz"), "rb") as f:
            label = f.read(9)[8]
        pixels = images[16:16 + 784]
    except OSError:
        pixels, label = bytes((i * 37) % 256 for i in range(784)), None
    # float32 values, as a client holding a float32 array sends them
    return [struct.unpack("<f", struct.pack("<f", p / 255.0))[0] for p in pixels], label


def binary_body(pixels, rows=1):
    """(body bytes, JSON header length): the binary tensor extension, as
    tritonclient.http sends an FP32 input with no outputs named (every
    output comes back binary)."""
    data = struct.pack(f"<{784 * rows}f", *(pixels * rows))
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 1, 28, 28],
                                     "parameters": {"binary_data_size": len(data)}}],
                         "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
    return header + data, len(header)


def json_body(pixels):
    """The 784 floats as JSON numbers (Python's repr of each float32 as a
    double, as json.dumps of a numpy float32 array's tolist() writes them)."""
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                   "data": pixels}]}).encode(), None


def post(url, body, header_length, timeout=30):
    req = urllib.request.Request(url, data=body, method="POST")
    if header_length is None:
        req.add_header("Content-Type", "application/json")
    else:
        req.add_header("Content-Type", "application/octet-stream")
        req.add_header("Inference-Header-Content-Length", str(header_length))
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read(), r.headers.get("Inference-Header-Content-Length")


def probabilities(reply, header_length):
    """The "probabilities" output of an infer response (JSON or binary)."""
    if header_length is None:
        out = {o["name"]: o for o in json.loads(reply)["outputs"]}
        return out["probabilities"]["data"]
    n = int(header_length)
    header, offset = json.loads(reply[:n]), n
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        if o["name"] == "probabilities":
            return list(struct.unpack(f"<{size // 4}f", reply[offset:offset + size]))
        offset += size
    raise BenchError("no probabilities in the response")


def listen_overflows():
    """TcpExt ListenOverflows of the whole machine: connections dropped because a
    listening socket's accept queue was full (the client's SYN is retried after
    1 s, then 3 s, ...). None where /proc/net/netstat has no such counter."""
    try:
        with open("/proc/net/netstat") as f:
            lines = [line.split() for line in f if line.startswith("TcpExt:")]
        return int(dict(zip(lines[0][1:], lines[1][1:]))["ListenOverflows"])
    except (OSError, KeyError, IndexError, ValueError):
        return None


# ---- wrk ----

def run_wrk(args, url, conns, duration, body=None, cpus=None):
    """One wrk run: {"rps", "p50_ms", "p99_ms", "requests", "errors", "socket_errors", "non2xx", "wrk_cpu_s"}.
    body: (file, header_length or None); None for a GET."""
    threads = min(args.wrk_threads, conns)
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s", "-s", LUA, url]
    if body:
        cmd += ["--", body[0]] + ([str(body[1])] if body[1] is not None else [])
    before, drops0 = resource.getrusage(resource.RUSAGE_CHILDREN), listen_overflows()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=duration + 60,
                              preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration + 60} s: {' '.join(cmd)}")
    after, drops1 = resource.getrusage(resource.RUSAGE_CHILDREN), listen_overflows()
    m = re.search(r"^WRK_JSON (.*)$", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        raise BenchError(f"wrk failed (exit {proc.returncode}): {proc.stdout.strip()[-400:]}")
    d = json.loads(m.group(1))
    e = d["errors"]
    socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
    printed = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", proc.stdout)
    if printed:  # wrk's own line, printed only when there are some
        socket_errors = max(socket_errors, sum(int(x) for x in printed.groups()))
    pct = d["latency_us"]["percentiles"]
    seconds = d["duration_us"] / 1e6
    return {"rps": d["requests"] / seconds, "p50_ms": pct["50"] / 1e3, "p90_ms": pct["90"] / 1e3,
            "p99_ms": pct["99"] / 1e3, "mean_ms": d["latency_us"]["mean"] / 1e3, "requests": d["requests"],
            "seconds": seconds, "socket_errors": socket_errors, "non2xx": e["status"],
            "listen_overflows": None if drops0 is None or drops1 is None else drops1 - drops0,
            "wrk_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def stats_delta(a, b):
    """What the server counted between two stats snapshots, per request or batch."""
    def d(path):
        x, y = a, b
        for k in path:
            x, y = x[k], y[k]
        return y - x

    def batch_sum(stats, field):  # over every batch size: the forwards themselves, once per batch
        return sum(bs["compute_infer"][field] for bs in stats["batch_stats"])

    ok = d(("inference_stats", "success", "count"))
    batches = d(("execution_count",))
    rows = d(("inference_count",))
    infer_ns = batch_sum(b, "ns") - batch_sum(a, "ns")
    return {"success": ok, "failures": d(("inference_stats", "fail", "count")), "batches": batches,
            "rows_per_batch": rows / batches if batches else None,
            "request_ms": d(("inference_stats", "success", "ns")) / ok / 1e6 if ok else None,
            "queue_ms": d(("inference_stats", "queue", "ns")) / ok / 1e6 if ok else None,
            "infer_ms_per_batch": infer_ns / batches / 1e6 if batches else None,
            "compute_infer_s": infer_ns / 1e9}


def measure_point(args, server, conns, duration, body):
    s0, c0, x0, t0 = server.stats(), server.cpu_s(), server.context_switches(), time.monotonic()
    r = run_wrk(args, server.url + f"/v2/models/{MODEL}/infer", conns, duration, body, args.cpu_set)
    wall = time.monotonic() - t0
    c1, x1, s1 = server.cpu_s(), server.context_switches(), server.stats()
    r["ctx_per_request"] = (x1 - x0) / r["requests"] if r["requests"] else None
    r.update(stats_delta(s0, s1))
    r["server_cpu_s"] = c1 - c0
    r["server_cores"] = (c1 - c0) / r["seconds"]
    r["wrk_cores"] = r["wrk_cpu_s"] / r["seconds"]
    r["compute_share"] = r["compute_infer_s"] / wall  # the stats calls bracket wrk's run closely
    return r


def median_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs):
    """Medians over the rounds of one point; errors summed."""
    out = {k: median_or_none([r[k] for r in runs]) for k in
           ("rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "rows_per_batch", "request_ms", "queue_ms",
            "infer_ms_per_batch", "server_cores", "wrk_cores", "compute_share", "ctx_per_request")}
    out["rps_runs"] = [r["rps"] for r in runs]
    out["p99_runs"] = [r["p99_ms"] for r in runs]
    out["errors"] = sum(r["socket_errors"] + r["non2xx"] + r["failures"] for r in runs)
    out["listen_overflows"] = sum(r["listen_overflows"] or 0 for r in runs)
    return out


# ---- the phases ----

def git_state():
    """The commit the working tree is on, and the files it changes (what `loom` was likely built from)."""
    def git(*cmd):
        try:
            return subprocess.run(["git", "-C", ROOT, *cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"), "modified": git("diff", "--name-only", "HEAD").split()}


def ensure_checkpoint(args):
    if args.checkpoint:
        if not os.path.exists(args.checkpoint):
            raise BenchError(f"--checkpoint {args.checkpoint} does not exist")
        return "given"
    reused = os.path.join(ROOT, "runs", "cnn.safetensors")
    if os.path.exists(reused):
        args.checkpoint = reused
        return "reused"
    args.checkpoint = os.path.join(args.work_dir, "cnn.safetensors")
    if os.path.exists(args.checkpoint):
        return "reused"
    log(f"training a CNN checkpoint (1 epoch on 2,000 images) into {args.checkpoint}")
    cmd = [args.loom_bin, "train", "--model", "cnn", "--dataset", "fashion-mnist", "--epochs", "1",
           "--train-limit", "2000", "--threads", str(os.cpu_count() or 1), "--out", args.checkpoint]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise BenchError("loom train did not finish within 600 s")
    if proc.returncode != 0 or not os.path.exists(args.checkpoint):
        raise BenchError(f"loom train failed (exit {proc.returncode}): {proc.stdout.strip()[-400:]}")
    return "trained"


def check_bodies(server, bodies, label):
    """POSTs each body once; all must answer the same class."""
    answers = {}
    for name, (path, header_length) in bodies.items():
        with open(path, "rb") as f:
            reply, reply_header = post(server.url + f"/v2/models/{MODEL}/infer", f.read(), header_length)
        if (header_length is None) != (reply_header is None):
            raise BenchError(f"{name} body: the response is {'binary' if reply_header else 'JSON'}")
        p = probabilities(reply, reply_header)
        answers[name] = (max(range(len(p)), key=p.__getitem__), max(p))
    classes = {c for c, _ in answers.values()}
    if len(classes) != 1:
        raise BenchError(f"the bodies disagree: {answers}")
    c, p = next(iter(answers.values()))
    return {"class": c, "name": CLASSES[c] if c < len(CLASSES) else str(c), "p": p, "label": label}


def warm_up(args, servers, bodies):
    for s in servers:
        for body in bodies.values():
            for conns in (1, max(args.concurrency)):
                run_wrk(args, s.url + f"/v2/models/{MODEL}/infer", conns, 1, body, args.cpu_set)


def rss_phase(args, server, body):
    """VmRSS after the warm-up (the sweep), then after RSS_REQUESTS more
    (counted by the server's statistics), at TARGET_CONC connections, with
    the resident size after each wrk run on the way."""
    rss0 = server.rss_kib()
    start = server.stats()["inference_stats"]["success"]["count"]
    done, t0, rate, trace = 0, time.monotonic(), None, []
    while done < args.rss_requests:
        left = args.rss_requests - done
        # A short run to learn the rate, then runs of at most 20 s sized to reach the count.
        seconds = 2 if rate is None else max(1, min(20, int(left / rate * 1.05) + 1))
        if time.monotonic() - t0 + seconds > args.rss_max_s:
            log(f"  RSS: stopped after {done} requests (--rss-max-s {args.rss_max_s})")
            break
        r = run_wrk(args, server.url + f"/v2/models/{MODEL}/infer", TARGET_CONC, seconds, body, args.cpu_set)
        rate = max(r["rps"], 1.0)
        done = server.stats()["inference_stats"]["success"]["count"] - start
        trace.append({"requests": done, "rss_kib": server.rss_kib(), "rps": r["rps"]})
    rss1 = server.rss_kib()
    return {"rss_after_warmup_kib": rss0, "rss_after_requests_kib": rss1, "requests": done,
            "growth": (rss1 - rss0) / rss0, "seconds": time.monotonic() - t0, "trace": trace}


def sweep(args, servers, bodies):
    """{body: {server label: {conns: [run, ...]}}}, servers taking turns."""
    runs = {b: {s.label: {c: [] for c in args.concurrency} for s in servers} for b in bodies}
    for rnd in range(args.repeats):
        order = servers if rnd % 2 == 0 else list(reversed(servers))
        for bname, body in bodies.items():
            for conns in args.concurrency:
                for s in order:
                    r = measure_point(args, s, conns, args.duration, body)
                    runs[bname][s.label][conns].append(r)
                    log(f"  round {rnd + 1}/{args.repeats} {bname:<6} c={conns:<3} {s.label:<8} "
                        f"{r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                        f"rows/batch {r['rows_per_batch'] or 0:5.1f}")
    return runs


def health_phase(args, server):
    runs = [run_wrk(args, server.url + "/v2/health/ready", HEALTH_CONNS, args.duration, None, args.cpu_set)
            for _ in range(args.repeats)]

    def med(key):
        return statistics.median(r[key] for r in runs)

    def total(key):
        return sum(r[key] or 0 for r in runs)

    return {"p99_ms": med("p99_ms"), "p50_ms": med("p50_ms"), "rps": med("rps"),
            "p99_runs": [r["p99_ms"] for r in runs],
            "socket_errors": total("socket_errors"), "non2xx": total("non2xx"),
            "listen_overflows": total("listen_overflows")}


def loom_inprocess(args):
    """loom's forward at each batch size as the server times it (batch_stats'
    compute_infer): a server with max_batch_size 64 and no delay gets
    requests of N rows one at a time, so each forward is exactly one request."""
    pixels, _ = test_image()
    server = Server(args, "inproc", max(args.batches), 0, args.cpu_set)
    try:
        url = server.url + f"/v2/models/{MODEL}/infer"
        bodies = {n: binary_body(pixels, n) for n in args.batches}
        for n, (body, hl) in bodies.items():  # warm-up
            for _ in range(3):
                post(url, body, hl)
        per_batch = {n: [] for n in args.batches}
        for _ in range(args.inproc_rounds):
            for n, (body, hl) in bodies.items():
                before = {b["batch_size"]: b["compute_infer"] for b in server.stats()["batch_stats"]}
                t0 = time.monotonic()
                while time.monotonic() - t0 < args.inproc_min_time:
                    post(url, body, hl)
                after = {b["batch_size"]: b["compute_infer"] for b in server.stats()["batch_stats"]}
                calls = after[n]["count"] - before.get(n, {"count": 0})["count"]
                ns = after[n]["ns"] - before.get(n, {"ns": 0})["ns"]
                per_batch[n].append(ns / calls / 1e9)
        out = {}
        for n, times in per_batch.items():
            med = statistics.median(times)
            out[str(n)] = {"median_s": med, "times_s": times, "samples_per_s": n / med}
        return out
    finally:
        server.stop()


def torch_inprocess(args):
    cmd = [args.python, os.path.join(HERE, "torch_cnn.py"), "--threads", str(args.threads),
           "--batches", ",".join(map(str, args.batches)), "--repetitions", str(args.inproc_rounds),
           "--min-time", str(args.inproc_min_time)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=600,
                              preexec_fn=(lambda: os.sched_setaffinity(0, args.cpu_set)) if args.cpu_set else None)
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"  torch_cnn.py: {e}")
        return None
    if proc.returncode != 0:
        log(f"  torch_cnn.py failed (exit {proc.returncode}): " + " | ".join(proc.stderr.strip().splitlines()[-3:]))
        return None
    return json.loads(proc.stdout)


def delay_sweep(args, bodies):
    """--delay-sweep: the batched server at each queue delay, at concurrency
    1, 16, 32 and 64 (Note [Queue delay]); prints a table and returns it."""
    body = bodies[args.main_body]
    rows = []
    for rnd in range(args.repeats):
        for delay in args.delay_sweep:
            server = Server(args, f"delay{delay}", args.max_batch_size, delay, args.cpu_set)
            try:
                run_wrk(args, server.url + f"/v2/models/{MODEL}/infer", 32, 1, body, args.cpu_set)
                for conns in (1, 16, 32, 64):
                    r = measure_point(args, server, conns, args.duration, body)
                    rows.append({"delay_us": delay, "conns": conns, **r})
                    log(f"  round {rnd + 1} delay {delay:>5} us c={conns:<3} {r['rps']:8.0f} req/s  "
                        f"p50 {r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f} ms  "
                        f"rows/batch {r['rows_per_batch'] or 0:5.1f}")
            finally:
                server.stop()
    print(f"queue delay sweep: batched server (--max-batch-size {args.max_batch_size}), {args.main_body} body, "
          f"medians of {args.repeats} rounds x {args.duration} s")
    header = f"{'delay us':>9}" + "".join(f"{'c=' + str(c) + ' req/s':>13}{'p50':>8}{'p99':>8}{'rows':>6}"
                                           for c in (1, 16, 32, 64))
    print(header)
    print("-" * len(header))
    for delay in args.delay_sweep:
        line = f"{delay:>9}"
        for conns in (1, 16, 32, 64):
            pts = [r for r in rows if r["delay_us"] == delay and r["conns"] == conns]
            def med(key):
                return median_or_none([p[key] for p in pts]) or 0

            line += (f"{med('rps'):>13.0f}{med('p50_ms'):>8.2f}{med('p99_ms'):>8.2f}"
                     f"{med('rows_per_batch'):>6.1f}")
        print(line)
    return rows


# ---- the report ----

def fmt(x, spec, none="n/a"):
    return none if x is None else format(x, spec)


def cpu_text(cpus):
    cpus = sorted(cpus)
    return ",".join(map(str, cpus)) if len(cpus) < 3 else f"{cpus[0]}-{cpus[-1]}" if cpus == list(
        range(cpus[0], cpus[-1] + 1)) else ",".join(map(str, cpus))


def print_report(args, res):
    meta = res["meta"]
    print()
    print(f"loom serve: CNN (Fashion-MNIST, {meta['checkpoint']}), batch-1 (--max-batch-size 1) against batched "
          f"(--max-batch-size {args.max_batch_size} --max-queue-delay-us {args.queue_delay_us})")
    src = meta.get("source") or {}
    print(f"loom: {args.loom_bin}, source {src.get('commit') or '?'}"
          + (f" with changes to {', '.join(src['modified'])}" if src.get("modified") else ""))
    print(f"compute threads: --threads {args.threads} on both servers (and torch); --http-threads "
          f"{args.http_threads}; wrk -t{args.wrk_threads} (one event loop for all connections), loopback 127.0.0.1")
    print(f"cores: the servers and wrk share cpus {cpu_text(meta['cpus'])} ({len(meta['cpus'])} cores, "
          f"{'pinned with sched_setaffinity' if args.cpus else 'no pinning'}); medians of {args.repeats} rounds x "
          f"{args.duration} s per point, servers taking turns")
    load = meta["loadavg_after"][0]
    if meta["loadavg_before"][0] > 0.5 or load > len(meta["cpus"]) + 0.5:
        print(f"warning: the machine was busy (load average {meta['loadavg_before'][0]:.2f} before the run, "
              f"{load:.2f} after it): other processes share these cores, so the numbers swing; rerun when it is idle")
    for bname in res["bodies"]:
        desc = {"binary": "binary tensor extension (Triton client's default; 3,136 B of FP32 after a JSON header)",
                "json": "JSON body (784 FP32 values as JSON numbers, ~%d B)" % meta["json_body_bytes"]}[bname]
        main = " (main)" if bname == args.main_body else ""
        print()
        print(f"request body: {desc}{main}")
        header = (f"{'conc':>5}  {'batch-1 req/s':>13}{'p50 ms':>9}{'p99 ms':>9}  {'batched req/s':>13}{'p50 ms':>9}"
                  f"{'p99 ms':>9}{'rows':>7}  {'batched/batch-1':>15}")
        print(header)
        print("-" * len(header))
        for conns in args.concurrency:
            a = res["points"][bname]["batch1"][str(conns)]
            b = res["points"][bname]["batched"][str(conns)]
            ratio = b["rps"] / a["rps"] if a["rps"] and b["rps"] else None
            err = "" if not (a["errors"] or b["errors"]) else f"  errors: {a['errors']} | {b['errors']}"
            print(f"{conns:>5}  {fmt(a['rps'], '.0f'):>13}{fmt(a['p50_ms'], '.2f'):>9}{fmt(a['p99_ms'], '.2f'):>9}  "
                  f"{fmt(b['rps'], '.0f'):>13}{fmt(b['p50_ms'], '.2f'):>9}{fmt(b['p99_ms'], '.2f'):>9}"
                  f"{fmt(b['rows_per_batch'], '.1f'):>7}  {fmt(ratio, '.2f') + 'x':>15}{err}")
    # Where the time goes, from the server's statistics (main body).
    print()
    print(f"where the time goes ({args.main_body} body; server's /v2/models/{MODEL}/stats over each point, means per "
          f"request; CPU in cores busy)")
    header = (f"{'conc':>5} {'server':<8}{'rows':>6}{'queue ms':>10}{'fwd ms':>9}{'server ms':>11}{'client p50':>11}"
              f"{'fwd busy':>10}{'srv CPU':>9}{'wrk CPU':>9}{'ctx/req':>9}{'drops':>7}")
    print(header)
    print("-" * len(header))
    for conns in args.concurrency:
        for label in ("batch1", "batched"):
            p = res["points"][args.main_body][label][str(conns)]
            print(f"{conns:>5} {label:<8}{fmt(p['rows_per_batch'], '.1f'):>6}{fmt(p['queue_ms'], '.2f'):>10}"
                  f"{fmt(p['infer_ms_per_batch'], '.2f'):>9}{fmt(p['request_ms'], '.2f'):>11}"
                  f"{fmt(p['p50_ms'], '.2f'):>11}{fmt(p['compute_share'], '.0%'):>10}"
                  f"{fmt(p['server_cores'], '.2f'):>9}{fmt(p['wrk_cores'], '.2f'):>9}"
                  f"{fmt(p['ctx_per_request'], '.1f'):>9}{p['listen_overflows']:>7}")
    print("rows: rows per forward; queue: wait in the batcher's queue; fwd: the forward of the request's batch;\n"
          "server ms: the server's request duration (handler start to answer: parse, prepare, queue, forward,\n"
          "encode; not the socket reads and writes); client p50: wrk's; fwd busy: share of the wall time the\n"
          "batching thread spent in forward; srv/wrk CPU: user+system seconds per second of each process;\n"
          "ctx/req: context switches of all the server's threads per request; drops: connections the kernel\n"
          "dropped for a full accept queue (TcpExt ListenOverflows, whole machine, summed over the rounds: each\n"
          "such client waits >= 1 s for its SYN retry before its first request).")
    # The body's own cost: the handler's time outside the queue and the forward (parse, prepare, encode).
    lowest = min(args.concurrency)
    parts = []
    for bname in res["bodies"]:
        p = res["points"][bname]["batch1"][str(lowest)]
        if None not in (p["request_ms"], p["queue_ms"], p["infer_ms_per_batch"]):
            parts.append(f"{bname} {(p['request_ms'] - p['queue_ms'] - p['infer_ms_per_batch']) * 1e3:.0f} us")
    if parts:
        print(f"handler time outside queue and forward (decode, prepare, encode), batch-1 at concurrency {lowest}: "
              + ", ".join(parts))

    # In process.
    inp = res.get("inprocess") or {}
    torch = (inp.get("torch") or {}).get("batches") or {}
    loom = inp.get("loom") or {}
    if torch or loom:
        print()
        tv = (inp.get("torch") or {}).get("torch", "n/a")
        print(f"in process, no HTTP: the same CNN at each batch size, {args.threads} thread(s); torch {tv} "
              f"(torch_cnn.py), loom's forward as the server times it (batch_stats compute_infer); samples/s")
        header = (f"{'batch':>6}{'torch':>10}{'loom':>10}{'loom/torch':>12}{'loom ms':>9}  "
                  f"{'served batched req/s at conc=batch':>36}")
        print(header)
        print("-" * len(header))
        for n in args.batches:
            t = (torch.get(str(n)) or {}).get("samples_per_s")
            lm = loom.get(str(n)) or {}
            ls = lm.get("samples_per_s")
            served = res["points"][args.main_body]["batched"].get(str(n), {}).get("rps")
            print(f"{n:>6}{fmt(t, '.0f'):>10}{fmt(ls, '.0f'):>10}{fmt(ls / t if ls and t else None, '.2f') + 'x':>12}"
                  f"{fmt(lm.get('median_s') and lm['median_s'] * 1e3, '.2f'):>9}  {fmt(served, '.0f'):>36}")

    h = res["health"]
    print()
    print(f"health: GET /v2/health/ready at {HEALTH_CONNS} connections: {h['rps']:.0f} req/s, "
          f"p50 {h['p50_ms']:.3f} ms, p99 {h['p99_ms']:.3f} ms (rounds: "
          f"{', '.join(f'{x:.3f}' for x in h['p99_runs'])}), socket errors {h['socket_errors']}, "
          f"non-2xx {h['non2xx']}, accept-queue drops {h['listen_overflows']}")
    r = res["rss"]
    print(f"memory (VmRSS): batched server {r['batched_after_short_warmup_kib'] / 1024:.1f} MiB after a short "
          f"warm-up, {r['rss_after_warmup_kib'] / 1024:.1f} MiB after the sweep ({r['warmup_requests']:,} requests: "
          f"the warm-up), {r['rss_after_requests_kib'] / 1024:.1f} MiB after {r['requests']:,} more "
          f"({r['growth']:+.2%}, {r['seconds']:.0f} s at {TARGET_CONC} connections), {r['rss_end_kib'] / 1024:.1f} "
          f"MiB at the end;\n  batch-1 server {r['batch1_after_short_warmup_kib'] / 1024:.1f} MiB after the short "
          f"warm-up, {r['batch1_after_sweep_kib'] / 1024:.1f} MiB after the sweep")
    print(f"queue delay: {args.queue_delay_us} us. {res['meta']['delay_note']}")
    if args.threads == 1:
        print("threads: --threads 1 leaves one core to the HTTP threads and wrk while the other computes; "
              "BENCH_SERVE_THREADS=2\n  (--threads 2) gives the forward both cores, shared with them.")
    print()
    for c in res["checks"]:
        print(f"  target: {c['target']:<66}{c['value']:>12}  {'PASS' if c['met'] else 'FAIL'}")
    met = sum(1 for c in res["checks"] if c["met"])
    print(f"targets: {met}/{len(res['checks'])} met")


def checks(args, res):
    pts = res["points"][args.main_body]
    a, b = pts["batch1"].get(str(TARGET_CONC)), pts["batched"].get(str(TARGET_CONC))
    out = []
    if a and b:
        ratio = b["rps"] / a["rps"]
        out.append({"target": f"batched >= {TARGET_RATIO:g}x batch-1 req/s at concurrency {TARGET_CONC} "
                              f"({args.main_body})", "value": f"{ratio:.2f}x", "met": ratio >= TARGET_RATIO,
                    "measured": ratio})
        out.append({"target": f"batched p99 <= {TARGET_P99_MS:g} ms at concurrency {TARGET_CONC}",
                    "value": f"{b['p99_ms']:.2f} ms", "met": b["p99_ms"] <= TARGET_P99_MS, "measured": b["p99_ms"]})
        out.append({"target": f"no errors at concurrency {TARGET_CONC} (socket, non-2xx, failed)",
                    "value": str(a["errors"] + b["errors"]), "met": a["errors"] + b["errors"] == 0,
                    "measured": a["errors"] + b["errors"]})
    h = res["health"]
    out.append({"target": f"health p99 <= {HEALTH_P99_MS:g} ms at {HEALTH_CONNS} connections",
                "value": f"{h['p99_ms']:.3f} ms", "met": h["p99_ms"] <= HEALTH_P99_MS, "measured": h["p99_ms"]})
    out.append({"target": "health: 0 socket errors", "value": str(h["socket_errors"]),
                "met": h["socket_errors"] == 0 and h["non2xx"] == 0, "measured": h["socket_errors"]})
    r = res["rss"]
    ok = r["requests"] >= RSS_REQUESTS and r["growth"] <= RSS_GROWTH
    out.append({"target": f"RSS growth <= {RSS_GROWTH:.0%} over {RSS_REQUESTS:,} requests after warm-up",
                "value": f"{r['growth']:+.2%}" + ("" if r["requests"] >= RSS_REQUESTS else f" ({r['requests']})"),
                "met": ok, "measured": r["growth"]})
    out.append({"target": "servers exit 0 on SIGTERM", "value": ",".join(map(str, res["exit_codes"].values())),
                "met": all(c == 0 for c in res["exit_codes"].values()), "measured": res["exit_codes"]})
    return out


def parse_list(text, name):
    try:
        xs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"run.py: --{name} takes comma-separated integers, got '{text}'")
    if not xs or min(xs) < (0 if name in ("delay-sweep", "cpus") else 1):
        sys.exit(f"run.py: --{name} needs {'non-negative' if name in ('delay-sweep', 'cpus') else 'positive'} "
                 f"values, got '{text}'")
    return xs


def cnn_group(args, servers, bodies_wanted, start, loadavg_before):
    """Phases 1-7 (the module's docstring) on the CNN; returns the results with their "checks",
    or None after --delay-sweep (which writes its own JSON). Started servers go into `servers`
    (the caller stops what is left there on an error)."""
    how = ensure_checkpoint(args)
    log(f"checkpoint: {args.checkpoint} ({how})")
    pixels, label = test_image()
    bodies = {}
    for name in bodies_wanted:
        data, hl = binary_body(pixels) if name == "binary" else json_body(pixels)
        path = os.path.join(args.work_dir, f"body_{name}.bin")
        with open(path, "wb") as f:
            f.write(data)
        bodies[name] = (path, hl)
    json_bytes = len(json_body(pixels)[0])

    if args.delay_sweep:
        args.delay_sweep = parse_list(args.delay_sweep, "delay-sweep")
        rows = delay_sweep(args, bodies)
        with open(args.json.replace(".json", "_delay_sweep.json"), "w") as f:
            json.dump(rows, f, indent=1)
        return None

    batch1 = Server(args, "batch1", 1, 0, args.cpu_set)
    servers.append(batch1)
    batched = Server(args, "batched", args.max_batch_size, args.queue_delay_us, args.cpu_set)
    servers.append(batched)
    log(f"batch-1: {batch1.banner}\nbatched: {batched.banner}")
    answer = check_bodies(batched, bodies, label)
    check_bodies(batch1, bodies, label)
    log(f"request check: every body answers class {answer['class']} ({answer['name']}, p={answer['p']:.3f}); "
        f"label {label}")

    log("warm-up")
    warm_up(args, servers, bodies)
    rss_warm = {s.label: s.rss_kib() for s in servers}
    log("sweep")
    runs = sweep(args, servers, bodies)
    rss_swept = {s.label: s.rss_kib() for s in servers}
    swept = batched.stats()["inference_stats"]["success"]["count"]
    log(f"RSS: {args.rss_requests:,} requests on the batched server at {TARGET_CONC} connections")
    rss = rss_phase(args, batched, bodies[args.main_body])
    rss.update({"warmup_requests": swept, "batched_after_short_warmup_kib": rss_warm["batched"],
                "batch1_after_short_warmup_kib": rss_warm["batch1"], "batch1_after_sweep_kib": rss_swept["batch1"]})
    log(f"  {rss['rss_after_warmup_kib']} -> {rss['rss_after_requests_kib']} KiB after {rss['requests']} requests")
    log("health")
    health = health_phase(args, batched)
    rss["rss_end_kib"] = batched.rss_kib()
    stats_end = {s.label: s.stats() for s in servers}
    exit_codes = {}
    for s in servers:
        exit_codes[s.label] = s.stop()
    servers.clear()

    inprocess = None
    if not args.no_inprocess:
        log("in process: loom's forward (server batch_stats), then torch")
        inprocess = {"loom": loom_inprocess(args), "torch": torch_inprocess(args)}

    checkpoint = (os.path.relpath(args.checkpoint, ROOT) if args.checkpoint.startswith(ROOT + os.sep)
                  else args.checkpoint)
    res = {"meta": {"source": git_state(), "loom_bin": args.loom_bin, "checkpoint": checkpoint,
                    "checkpoint_source": how,
                    "cpus": sorted(args.cpu_set or os.sched_getaffinity(0)),
                    "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
                    "json_body_bytes": json_bytes, "binary_body_bytes": len(binary_body(pixels)[0]),
                    "answer": answer,
                    "delay_note": ("With none, the requests that arrive while a batch runs form the next "
                                   "one, so batches grow with the load (rows column) and a lone request "
                                   "never waits; a delay costs every batch below 32 connections its full "
                                   "length and bought nothing measurable at 16-64 (Note [Queue delay] in "
                                   "bench/serve/run.py; --delay-sweep measures it)." if args.queue_delay_us == 0
                                   else "Chosen with --queue-delay-us; see Note [Queue delay] in "
                                   "bench/serve/run.py and --delay-sweep.")},
           "args": {k: v for k, v in vars(args).items() if k != "cpu_set"},
           "bodies": list(bodies), "raw": runs, "stats_end": stats_end,
           "points": {b: {s: {str(c): summarize(r) for c, r in by_c.items()} for s, by_c in by_s.items()}
                      for b, by_s in runs.items()},
           "health": health, "rss": rss, "exit_codes": exit_codes, "inprocess": inprocess}
    res["checks"] = checks(args, res)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build-bench"), help="where `loom` was built")
    p.add_argument("--loom-bin", help="default: BUILD_DIR/loom")
    p.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                   help="a Python that can import torch")
    p.add_argument("--checkpoint", help="a `loom train --model cnn` checkpoint (default: runs/cnn.safetensors, "
                                        "else one trained into BUILD_DIR/bench_serve/)")
    p.add_argument("--threads", type=int, default=1, help="compute threads of both servers and of torch")
    p.add_argument("--http-threads", type=int, default=80,
                   help="the servers' --http-threads (at least the largest concurrency: a connection holds one)")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--cpus", help="pin the servers, wrk and torch to these cpus (e.g. 0,1); default: no pinning")
    p.add_argument("--concurrency", default="1,4,16,32,64")
    p.add_argument("--batches", default="1,4,16,32,64", help="batch sizes of the in-process columns")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--queue-delay-us", type=int, default=DEFAULT_DELAY_US)
    p.add_argument("--duration", type=int, default=3, help="seconds of wrk per point")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the sweep (medians)")
    p.add_argument("--bodies", default="binary,json", help="request bodies to sweep: binary, json")
    p.add_argument("--main-body", default="binary", choices=["binary", "json"], help="the body the targets judge")
    p.add_argument("--rss-requests", type=int, default=RSS_REQUESTS)
    p.add_argument("--rss-max-s", type=float, default=300, help="give up on the RSS run after this many seconds")
    p.add_argument("--inproc-rounds", type=int, default=5)
    p.add_argument("--inproc-min-time", type=float, default=0.3)
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process columns (torch and loom)")
    p.add_argument("--start-timeout", type=float, default=60, help="seconds a server may take to print its port")
    p.add_argument("--delay-sweep", help="only sweep these queue delays (us) on the batched server and print them")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--json", help="write the results here (default: BUILD_DIR/bench_serve_results.json)")
    p.add_argument("--only", default="cnn,llm", help="groups to run: cnn (wrk against the CNN), llm (OpenAI "
                                                    "completions, bench/serve/llm.py)")
    llm.add_arguments(p)
    args = p.parse_args()
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    if not groups or any(g not in ("cnn", "llm") for g in groups):
        sys.exit(f"run.py: --only takes cnn and/or llm, got '{args.only}'")
    args.loom_bin = args.loom_bin or os.path.join(args.build_dir, "loom")
    args.json = args.json or os.path.join(args.build_dir, "bench_serve_results.json")
    args.work_dir = os.path.join(args.build_dir, "bench_serve")
    args.concurrency = parse_list(args.concurrency, "concurrency")
    args.batches = parse_list(args.batches, "batches")
    args.cpu_set = set(parse_list(args.cpus, "cpus")) if args.cpus else None
    bodies_wanted = [b.strip() for b in args.bodies.split(",") if b.strip()]
    if not bodies_wanted or any(b not in ("binary", "json") for b in bodies_wanted):
        sys.exit(f"run.py: --bodies takes binary and/or json, got '{args.bodies}'")
    if args.main_body not in bodies_wanted:
        args.main_body = bodies_wanted[0]
    if args.http_threads < max(args.concurrency) + 1:
        sys.exit(f"run.py: --http-threads {args.http_threads} must exceed the largest concurrency "
                 f"{max(args.concurrency)} (a keep-alive connection holds an HTTP thread; the stats requests need one)")
    for tool, hint in ((args.loom_bin, "build it with `make bench-serve`"), ("wrk", "apt-get install wrk")):
        if tool == "wrk" and "cnn" not in groups:
            continue
        if not shutil.which(tool):
            sys.exit(f"run.py: {tool} not found; {hint}")
    os.makedirs(args.work_dir, exist_ok=True)

    start = time.monotonic()
    loadavg_before = os.getloadavg()
    servers = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if "cnn" in groups:
            res = cnn_group(args, servers, bodies_wanted, start, loadavg_before)
            if res is None:
                return 0
        else:
            res = {"meta": {"source": git_state(), "loom_bin": args.loom_bin, "loadavg_before": loadavg_before},
                   "args": {k: v for k, v in vars(args).items() if k != "cpu_set"}, "checks": []}
        if "llm" in groups:
            log("LLM group: OpenAI completions (bench/serve/llm.py)")
            try:
                res["llm"] = llm.run_group(args)
            except llm.BenchError as e:  # the CNN group's results still count
                log(f"run.py: the LLM group failed: {e}")
                res["llm"] = {"error": str(e)}
        res["wall_s"] = time.monotonic() - start
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        if "cnn" in groups:
            print_report(args, res)
        every = list(res["checks"])
        if "llm" in groups:
            if "skipped" in res["llm"]:
                print(f"\nLLM group skipped: {res['llm']['skipped']}")
            elif "error" in res["llm"]:
                print(f"\nLLM group failed: {res['llm']['error']}")
            else:
                llm.print_report(res["llm"])
                every += res["llm"]["checks"]
        if len(groups) > 1 and every:
            print(f"all targets: {sum(1 for c in every if c['met'])}/{len(every)} met")
        print(f"wall time: {res['wall_s']:.0f} s")
        print(f"raw results: {args.json}")
        if "error" in res.get("llm", {}):
            return 2
        return 1 if args.strict and not all(c["met"] for c in every) else 0
    except (BenchError, llm.BenchError) as e:
        log(f"run.py: {e}")
        return 2
    except KeyboardInterrupt:
        log("run.py: interrupted")
        return 130
    finally:
        for s in servers:
            code = s.stop()
            log(f"  stopped the {s.label} server (exit {code})")


if __name__ == "__main__":
    sys.exit(main())
