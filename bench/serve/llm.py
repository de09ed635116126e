#!/usr/bin/env python3
"""The LLM group of `make bench-serve`: `loom serve`'s OpenAI-compatible
completions (issue 22) measured through the API, as a client sees them.

Python's standard library only (http.client, threads): no openai package,
no wrk. The models come from `make llm-models` (BUILD_DIR/llm/gpt.safetensors,
the 6-layer character GPT, and draft.safetensors, the 2-layer draft with the
same tokenizer); without them the group is skipped with a message saying so.

Every request is POST /v1/completions with "stream": true; the client reads
the Server-Sent Events ("data: {...}" events, each with choices[0].text,
ending with "data: [DONE]") and times, per request, the first text (time to
first token, from just before the request is sent) and the end. Tokens are
counted as characters of the streamed text (the character tokenizer: one
token per UTF-8 character; the usage object of the last chunk, when the
server sends one, is checked against it).

What runs (servers on 127.0.0.1, any free port, all with the same --threads
and --slots; SIGTERM at the end, or on any error or ^C):

  1. Throughput and 2. latency, on one server: the same 48 requests (prompts
     of 20-80 characters from the fortunes, max_tokens 96-160, sampled at
     temperature 0.8 with a seed each) sent by 1 client thread one after
     another, then by 8 client threads at once (each takes the next request
     when its last one ends: 8 concurrent streams). Total generated tokens/s
     of each (tokens / the wall time from the first send to the last end),
     and time to first token (p50, p99) of each; --repeats rounds, the two
     loads alternating; tokens/s: medians over the rounds, TTFT percentiles:
     over the requests of all rounds (40 x 3 for 8 streams). Targets: 8 streams >= 3x the
     tokens/s of one; TTFT p99 under 8 streams <= 2x the single-stream p99,
     each stream's first request left out (the streams start together: Note
     [Steady state]; every request's p99 is printed too). The sampled texts
     of the two loads must also match (a request's tokens do not depend on
     what else is in the batch).
  3. Paged KV cache, on the same server: 8 streams of mixed lengths (prompts
     of 10-150 characters, max_tokens 16-200, capped at the context), while
     a thread reads GET /metrics every --llm-sample-ms: live positions
     (loom_llm_kv_positions) / allocated positions (loom_llm_kv_blocks_used x
     loom_llm_kv_block_size), averaged over the samples with blocks in use.
     Target >= 90%.
  4. Speculative decoding: greedy (temperature 0) completions of P prompts,
     one stream, on a server without a draft and on one with --draft-model
     draft.safetensors --draft-tokens K for each K of --llm-spec-k (all
     started together, taking turns request set by request set). Tokens/s
     ratio to the server without a draft, the acceptance rate from /metrics,
     and whether the texts are identical. Target: the best K >= 1.6x, and
     identical text for every K.

    python3 bench/serve/llm.py --loom build-bench/loom --models build/llm
    python3 bench/serve/llm.py --loom build/loom --llm-repeats 1 --llm-spec-k 4   # quick
    python3 bench/serve/llm.py --selftest        # the SSE and /metrics parsers, offline
"""
import argparse
import http.client
import json
import os
import queue
import random
import re
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FORTUNES = "/usr/share/games/fortunes"
MODEL = "gpt"

# The issue's numbers.
STREAMS = 8
THROUGHPUT_RATIO = 3.0  # tokens/s with 8 streams >= 3x one stream at a time
TTFT_RATIO = 2.0        # TTFT p99 with 8 streams <= 2x the single-stream p99
KV_USE = 0.90           # live positions / allocated positions
SPEC_RATIO = 1.6        # greedy tokens/s with the draft >= 1.6x without
SAMPLED_TEMPERATURE = 0.8  # the speculative row, sampled (reported, not judged)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---- parsing: Server-Sent Events, Prometheus text, safetensors metadata ----

class SseParser:
    """Server-Sent Events (the WHATWG rules that matter here): lines end with
    LF, CRLF or CR; "field: value" lines (one optional space after the
    colon); lines starting with ':' are comments; a blank line dispatches the
    event, whose data is its "data" lines joined by LF. feed() takes bytes
    as they arrive and returns the data of each event completed."""

    def __init__(self):
        self.buf = b""
        self.data = []

    def feed(self, chunk):
        self.buf += chunk
        events = []
        while True:
            m = re.search(rb"\r\n|\n|\r", self.buf)
            if not m or (m.group() == b"\r" and m.end() == len(self.buf)):  # a CR that may be half of CRLF
                break
            line, self.buf = self.buf[:m.start()].decode("utf-8"), self.buf[m.end():]
            if line == "":
                if self.data:
                    events.append("\n".join(self.data))
                self.data = []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if field == "data":
                    self.data.append(value)
        return events

    def close(self):
        """Data of an event left without its blank line at the end of the stream (not dispatched
        by a browser; returned so the caller can say what was left)."""
        rest = self.feed(b"\n\n") if self.buf or self.data else []
        return rest


def parse_prometheus(text):
    """{name: [(labels dict, value)]} of the Prometheus text format's samples."""
    out = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = sample.match(line)
        if not m:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        labels = dict(label.findall(m.group(3) or ""))
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def metric(samples, name, default=None, **match):
    """The sum of `name`'s samples whose labels include `match` (one model is served)."""
    if name not in samples:
        return default
    vals = [v for labels, v in samples[name] if all(labels.get(k) == x for k, x in match.items())]
    return sum(vals) if vals else default


def safetensors_metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > 100 * 2**20:
            raise BenchError(f"{path}: not a safetensors file (header of {n} bytes)")
        header = json.loads(f.read(n))
    return header.get("__metadata__", {})


def percentile(xs, q):
    """Linear interpolation between the closest ranks (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- the server ----

class ServerProcess:
    """A `loom serve` process (`cmd`, which asks for --port 0 on 127.0.0.1)
    whose output is drained by a thread (kept for the report); the port is
    read from its banner. stop() sends SIGTERM and waits (then SIGKILL).
    bench/serve/run.py's servers are these too."""

    LISTEN = re.compile(r"listening on http://([\d.]+):(\d+)")

    def __init__(self, label, cmd, start_timeout, preexec_fn=None):
        self.label, self.cmd = label, cmd
        self.lines, self.banner, self.exit_code, self.port = [], None, None, None
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        got_port = threading.Event()

        def drain():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                m = self.LISTEN.search(line)
                if m and self.port is None:
                    self.port, self.banner = int(m.group(2)), line.strip()
                    got_port.set()
            got_port.set()  # exited

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        if not got_port.wait(start_timeout) or self.port is None:
            code = self.proc.poll()
            self.stop()
            raise BenchError(f"{label} server " + (f"exited ({code}) before printing its port" if code is not None
                                                   else f"did not print its port within {start_timeout} s")
                             + f" ({' '.join(self.cmd)}): " + " | ".join(self.lines[-5:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def where(self):
        alive = self.proc.poll() is None
        return (f"{self.label} server (pid {self.pid}, {'running' if alive else 'exited'})"
                + ("" if alive or not self.lines else ": " + " | ".join(self.lines[-3:])))

    def stop(self, timeout=20):
        """SIGTERM, then wait; SIGKILL after `timeout` s. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"  {self.label} server: no exit {timeout} s after SIGTERM; SIGKILL")
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(5)
        self.exit_code = self.proc.returncode
        return self.exit_code


class Server(ServerProcess):
    """The served GPT (and draft), with the LLM flags."""

    def __init__(self, args, label, extra=()):
        super().__init__(label, [args.loom_bin, "serve", "--model", f"{MODEL}={args.llm_gpt}", "--host", "127.0.0.1",
                                 "--port", "0", "--threads", str(args.llm_threads), "--slots", str(args.llm_slots),
                                 *args.llm_serve_args, *extra], args.start_timeout)

    def get(self, path, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise BenchError(f"{self.where()}: GET {path}: HTTP {r.status}: {body[:300]!r}")
            return body.decode("utf-8")
        except (OSError, http.client.HTTPException) as e:
            raise BenchError(f"{self.where()}: GET {path} failed: {e}")
        finally:
            conn.close()

    def metrics(self):
        return parse_prometheus(self.get("/metrics"))


# ---- the client ----

def complete(port, body, timeout=120):
    """One streamed completion: {"text", "ttft_s", "total_s", "tokens", "chunks", "finish_reason",
    "usage", "start", "end"} (start and end: time.perf_counter())."""
    req = dict(body, model=MODEL, stream=True, stream_options={"include_usage": True})
    payload = json.dumps(req).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    parser = SseParser()
    text, chunks, finish, usage, ttft, done = [], 0, None, None, None, False
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", body=payload,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        r = conn.getresponse()
        if r.status != 200:
            raise BenchError(f"POST /v1/completions: HTTP {r.status}: {r.read()[:300]!r} (request {payload[:200]!r})")
        ctype = r.getheader("Content-Type", "")
        if "text/event-stream" not in ctype:
            raise BenchError(f"POST /v1/completions with stream: Content-Type {ctype!r}, not text/event-stream")
        while not done:
            data = r.read1(65536) if hasattr(r, "read1") else r.read(1)
            if not data:
                break
            for ev in parser.feed(data):
                if ev == "[DONE]":
                    done = True
                    break
                chunk = json.loads(ev)
                if "error" in chunk:
                    raise BenchError(f"the stream sent an error: {ev[:300]}")
                chunks += 1
                for c in chunk.get("choices") or []:
                    t = c.get("text") or ""
                    if t:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text.append(t)
                    if c.get("finish_reason"):
                        finish = c["finish_reason"]
                if chunk.get("usage"):
                    usage = chunk["usage"]
        end = time.perf_counter()
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"POST /v1/completions (port {port}) failed: {e!r}")
    finally:
        conn.close()
    if not done:
        raise BenchError(f"the stream ended without data: [DONE] after {chunks} chunks")
    out = "".join(text)
    # The usage chunk's count (stream_options.include_usage); without one, one token per character.
    tokens = usage["completion_tokens"] if usage and usage.get("completion_tokens") is not None else len(out)
    return {"text": out, "ttft_s": ttft, "total_s": end - t0, "tokens": tokens, "chunks": chunks,
            "finish_reason": finish, "usage": usage, "start": t0, "end": end}


# Note [Steady state]
# The 8 client threads start together, so the first request of every stream
# arrives at once and their prompts are prefilled one after another (the
# engine's per-step prefill budget, --prefill-chunk), while later requests
# arrive one at a time as others end (their max_tokens differ, so the
# streams drift apart after the first round): a cold start, then the steady
# state of 8 concurrent streams. The latency target is judged on the steady
# state: time to first token without each stream's first request, for one
# stream (its first request only) as for 8. Every request's TTFT, the burst
# included, is reported beside it.
def run_load(port, requests, streams, timeout=120):
    """The requests through `streams` client threads, each taking the next one when its last one
    ends (a closed loop); the streams start together. Returns {"results" (per request, in request
    order, each with its "stream" and whether it was the stream's "first"), "wall_s", "tokens",
    "tokens_per_s", and time to first token: "ttft_p50_s", "ttft_p99_s" over every request,
    "ttft_steady_p50_s", "ttft_steady_p99_s" without each stream's first request (Note [Steady
    state])}."""
    pending = queue.Queue()
    for i, body in enumerate(requests):
        pending.put((i, body))
    results, errors = [None] * len(requests), []

    def worker(stream):
        first = True
        while not errors:
            try:
                i, body = pending.get_nowait()
            except queue.Empty:
                return
            try:
                results[i] = dict(complete(port, body, timeout), stream=stream, first=first)
            except Exception as e:  # noqa: BLE001 -- reported below, the other streams stop
                errors.append(e)
                return
            first = False

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * len(requests))
    if errors:
        raise errors[0] if isinstance(errors[0], BenchError) else BenchError(repr(errors[0]))
    if any(r is None for r in results):
        raise BenchError(f"{sum(r is None for r in results)} requests did not finish")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    steady = [r["ttft_s"] for r in results if r["ttft_s"] is not None and not r["first"]] or ttfts
    return {"results": results, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
            "ttft_max_s": max(ttfts) if ttfts else None,
            "ttft_steady_p50_s": percentile(steady, 50), "ttft_steady_p99_s": percentile(steady, 99)}


class MetricsSampler:
    """GET /metrics every `interval` s on a thread until stop(); keeps the KV-cache gauges."""

    def __init__(self, server, interval):
        self.server, self.interval = server, interval
        self.samples, self.error = [], None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop_event.is_set():
            try:
                m = self.server.metrics()
                self.samples.append({k: metric(m, "loom_llm_" + k) for k in
                                     ("kv_positions", "kv_blocks_used", "kv_block_size", "kv_blocks_total",
                                      "running", "waiting", "preemptions_total")})
            except BenchError as e:
                self.error = e
                return
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        if self.error:
            raise self.error
        return self.samples


# ---- the workloads ----

def fortune_entries(directory=FORTUNES, limit=4000):
    """Fortune cookies (as loom's load_fortunes reads them: the plain files of the folder in name
    order, entries between '%' lines); a fixed list when the package is missing."""
    entries = []
    try:
        names = sorted(n for n in os.listdir(directory) if not n.endswith(".dat") and not n.startswith(".")
                       and os.path.isfile(os.path.join(directory, n))
                       and not os.path.islink(os.path.join(directory, n)))
        for n in names:
            with open(os.path.join(directory, n), encoding="utf-8", errors="replace") as f:
                for e in re.split(r"^%\s*$", f.read(), flags=re.M):
                    e = e.strip("\n")
                    if len(e) >= 40:
                        entries.append(e)
    except OSError:
        pass
    if not entries:
        entries = ["The time has come, the Walrus said, to talk of many things: of shoes and ships and "
                   "sealing-wax, of cabbages and kings, and why the sea is boiling hot, and whether pigs "
                   "have wings.", "A fool and his money are soon parted.", "Never put off till tomorrow "
                   "what you can do the day after tomorrow."] * 50
    step = max(1, len(entries) // limit)
    return entries[::step]


def make_prompts(entries, count, min_len, max_len, rng, vocab=None):
    """`count` prompts: the first L characters (L uniform in [min_len, max_len]) of entries spread
    over the corpus, each starting at the entry's beginning. Characters outside `vocab` are dropped."""
    def known(text):
        return text if vocab is None else "".join(ch for ch in text if ch in vocab)

    out = []
    for i in range(count):
        e = known(entries[(i * 7919) % len(entries)])
        length = rng.randint(min_len, max_len)
        while len(e) < length:
            e = e + "\n\n" + known(entries[rng.randrange(len(entries))])
        out.append(e[:length])
    return out


def throughput_requests(args, entries, vocab):
    rng = random.Random(1)
    prompts = make_prompts(entries, args.llm_requests, 20, 80, rng, vocab)
    lo, hi = args.llm_max_tokens
    return [{"prompt": p, "max_tokens": min(rng.randint(lo, hi), args.context - len(p)), "temperature": 0.8,
             "seed": 1000 + i} for i, p in enumerate(prompts)]


def mixed_requests(args, entries, vocab):
    rng = random.Random(2)
    prompts = make_prompts(entries, args.llm_mixed_requests, 10, 150, rng, vocab)
    return [{"prompt": p, "max_tokens": max(1, min(rng.randint(16, 200), args.context - len(p))),
             "temperature": 0.8, "seed": 2000 + i} for i, p in enumerate(prompts)]


def greedy_requests(args, entries, vocab, temperature=0.0):
    """The speculative row's requests: greedy, or sampled at `temperature` with a seed each."""
    rng = random.Random(3)
    prompts = make_prompts(entries, args.llm_spec_prompts, 20, 80, rng, vocab)
    return [dict({"prompt": p, "max_tokens": min(args.llm_spec_tokens, args.context - len(p)),
                  "temperature": temperature}, **({"seed": 3000 + i} if temperature else {}))
            for i, p in enumerate(prompts)]


# ---- the phases ----

def warm_up(server, requests):
    run_load(server.port, requests[:2], 1)
    run_load(server.port, [dict(r, max_tokens=16) for r in requests[:STREAMS * 2]], STREAMS)


def throughput_phase(args, server, requests):
    rounds = []
    for k in range(args.llm_repeats):
        one = run_load(server.port, requests, 1)
        many = run_load(server.port, requests, STREAMS)
        same = sum(a["text"] == b["text"] for a, b in zip(one["results"], many["results"]))
        log(f"  round {k + 1}: 1 stream {one['tokens_per_s']:.0f} tok/s (TTFT p99 {one['ttft_steady_p99_s'] * 1e3:.1f} "
            f"ms), {STREAMS} streams {many['tokens_per_s']:.0f} tok/s (TTFT p99 {many['ttft_steady_p99_s'] * 1e3:.1f} "
            f"ms, every request {many['ttft_p99_s'] * 1e3:.1f} ms); {same}/{len(requests)} texts equal")
        rounds.append({"one": one, "many": many, "same_texts": same})
    return rounds


def kv_phase(args, server, requests):
    rounds = []
    for k in range(args.llm_repeats):
        sampler = MetricsSampler(server, args.llm_sample_ms / 1e3)
        load = run_load(server.port, requests, STREAMS)
        samples = sampler.stop()
        used = [s for s in samples if s["kv_blocks_used"] and s["kv_block_size"] and s["kv_positions"] is not None]
        ratios = [s["kv_positions"] / (s["kv_blocks_used"] * s["kv_block_size"]) for s in used]
        pooled = (sum(s["kv_positions"] for s in used) / sum(s["kv_blocks_used"] * s["kv_block_size"] for s in used)
                  if used else None)
        r = {"samples": len(samples), "samples_in_use": len(used), "mean_use": statistics.fmean(ratios) if ratios else None,
             "pooled_use": pooled, "min_use": min(ratios) if ratios else None,
             "mean_blocks_used": statistics.fmean(s["kv_blocks_used"] for s in used) if used else None,
             "max_blocks_used": max((s["kv_blocks_used"] for s in used), default=None),
             "blocks_total": next((s["kv_blocks_total"] for s in used if s["kv_blocks_total"]), None),
             "mean_running": statistics.fmean(s["running"] for s in used) if used and
             all(s["running"] is not None for s in used) else None,
             "max_waiting": max((s["waiting"] or 0 for s in used), default=None),
             "preemptions": (samples[-1]["preemptions_total"] or 0) - (samples[0]["preemptions_total"] or 0)
             if samples else None,
             "tokens_per_s": load["tokens_per_s"], "tokens": load["tokens"], "wall_s": load["wall_s"],
             "trace": samples}
        if not used:
            names = ", ".join(sorted(n for n in server.metrics() if n.startswith("loom_llm"))) or "none"
            raise BenchError(f"no /metrics sample with KV blocks in use over {len(samples)} samples "
                             f"(loom_llm_* metrics present: {names})")
        log(f"  round {k + 1}: {len(used)} samples, live/allocated {r['mean_use']:.1%} (pooled {pooled:.1%}, "
            f"lowest {r['min_use']:.1%}), {r['mean_blocks_used']:.1f} blocks in use on average")
        rounds.append(r)
    return rounds


def spec_phase(args, base, drafts, requests, what):
    """Rounds of: the requests, one stream, on the base server and on each draft server, in an
    order that rotates each round. texts_identical: every run's texts equal the base server's
    first (meaningful for greedy requests)."""
    servers = [("none", base)] + [(k, s) for k, s in drafts.items()]
    before = {label: s.metrics() for label, s in servers}
    runs = {label: [] for label, _ in servers}
    for k in range(args.llm_repeats):
        order = servers[k % len(servers):] + servers[:k % len(servers)]
        for label, s in order:
            runs[label].append(run_load(s.port, requests, 1))
        log(f"  {what}, round {k + 1}: " + ", ".join(f"{'no draft' if label == 'none' else f'K={label}'} "
                                             f"{runs[label][-1]['tokens_per_s']:.0f} tok/s" for label, _ in servers))
    after = {label: s.metrics() for label, s in servers}
    base_texts = [r["text"] for r in runs["none"][0]["results"]]
    out = {}
    for label, s in servers:
        tps = median([r["tokens_per_s"] for r in runs[label]])
        texts_equal = all([r["text"] for r in run["results"]] == base_texts for run in runs[label])
        entry = {"tokens_per_s": tps, "tokens_per_s_runs": [r["tokens_per_s"] for r in runs[label]],
                 "texts_identical": texts_equal, "runs": runs[label]}
        if label != "none":
            entry.update(acceptance(before[label], after[label]))
        out[str(label)] = entry
    base_tps = out["none"]["tokens_per_s"]
    for label, e in out.items():
        e["ratio"] = e["tokens_per_s"] / base_tps if base_tps else None
    return out


def acceptance(m0, m1):
    """The acceptance rate the server reports (loom_llm_spec_acceptance_rate, over its life: the
    warm-up too), and the one over the measured requests from its counters."""
    dp = metric(m1, "loom_llm_spec_draft_tokens_total", 0) - metric(m0, "loom_llm_spec_draft_tokens_total", 0)
    da = metric(m1, "loom_llm_spec_accepted_tokens_total", 0) - metric(m0, "loom_llm_spec_accepted_tokens_total", 0)
    return {"acceptance_rate": metric(m1, "loom_llm_spec_acceptance_rate"), "draft_proposed": dp,
            "draft_accepted": da, "acceptance_measured": da / dp if dp else None}


# ---- the report ----

def fmt(x, spec=".1f", none="n/a"):
    return none if x is None else format(x, spec)


def summarize(res):
    t = res["throughput"]
    one_tps = median([r["one"]["tokens_per_s"] for r in t])
    many_tps = median([r["many"]["tokens_per_s"] for r in t])
    s = {"one_tokens_per_s": one_tps, "many_tokens_per_s": many_tps,
         "throughput_ratio": many_tps / one_tps if one_tps else None,
         "same_texts": min(r["same_texts"] for r in t)}
    for key in ("one", "many"):  # TTFT percentiles over the requests of every round together
        every = [x["ttft_s"] for r in t for x in r[key]["results"] if x["ttft_s"] is not None]
        steady = [x["ttft_s"] for r in t for x in r[key]["results"] if x["ttft_s"] is not None and not x["first"]]
        s.update({f"{key}_ttft_p50_s": percentile(every, 50), f"{key}_ttft_p99_s": percentile(every, 99),
                  f"{key}_ttft_max_s": max(every) if every else None, f"{key}_ttft_samples": len(every),
                  f"{key}_ttft_steady_p50_s": percentile(steady, 50),
                  f"{key}_ttft_steady_p99_s": percentile(steady, 99), f"{key}_ttft_steady_samples": len(steady)})

    def ratio(a, b):
        return s[a] / s[b] if s[a] is not None and s[b] else None

    s["ttft_ratio"] = ratio("many_ttft_steady_p99_s", "one_ttft_steady_p99_s")  # the judged one
    s["ttft_ratio_all"] = ratio("many_ttft_p99_s", "one_ttft_p99_s")
    s["ttft_ratio_vs_p50"] = ratio("many_ttft_steady_p99_s", "one_ttft_steady_p50_s")
    kv = res["kv"]
    s["kv_mean_use"] = median([r["mean_use"] for r in kv])
    s["kv_pooled_use"] = median([r["pooled_use"] for r in kv])
    spec = res["spec"]
    ks = [k for k in spec if k != "none"]
    best = max(ks, key=lambda k: spec[k]["ratio"] or 0) if ks else None
    s["spec_best_k"] = best
    s["spec_best_ratio"] = spec[best]["ratio"] if best else None
    s["spec_identical"] = all(spec[k]["texts_identical"] for k in ks)
    return s


def checks(res):
    s = res["summary"]
    out = []

    def add(target, value, met, measured):
        out.append({"target": target, "value": value, "met": bool(met), "measured": measured})

    add(f"{STREAMS} streams >= {THROUGHPUT_RATIO:g}x the tokens/s of one stream at a time",
        f"{fmt(s['throughput_ratio'], '.2f')}x", s["throughput_ratio"] and s["throughput_ratio"] >= THROUGHPUT_RATIO,
        s["throughput_ratio"])
    add(f"TTFT p99 with {STREAMS} streams <= {TTFT_RATIO:g}x one stream's (steady state)",
        f"{fmt(s['ttft_ratio'], '.2f')}x", s["ttft_ratio"] and s["ttft_ratio"] <= TTFT_RATIO, s["ttft_ratio"])
    add(f"KV cache: live positions >= {KV_USE:.0%} of allocated, mixed lengths",
        f"{fmt(s['kv_mean_use'] and s['kv_mean_use'] * 100, '.1f')}%", s["kv_mean_use"] and s["kv_mean_use"] >= KV_USE,
        s["kv_mean_use"])
    add(f"speculative decoding: greedy tokens/s >= {SPEC_RATIO:g}x (best K={s['spec_best_k']})",
        f"{fmt(s['spec_best_ratio'], '.2f')}x", s["spec_best_ratio"] and s["spec_best_ratio"] >= SPEC_RATIO,
        s["spec_best_ratio"])
    add("speculative decoding: greedy text identical to no draft (every K)", "yes" if s["spec_identical"] else "no",
        s["spec_identical"], s["spec_identical"])
    n = res["args"]["requests"]
    add(f"sampled texts equal, {STREAMS} streams and one at a time (seeded)", f"{s['same_texts']}/{n}",
        s["same_texts"] == n, s["same_texts"])
    add("LLM servers exit 0 on SIGTERM", ",".join(str(c) for c in res["exit_codes"].values()),
        all(c == 0 for c in res["exit_codes"].values()), res["exit_codes"])
    return out


def scaled(x, k):
    return None if x is None else x * k


def print_report(res):
    a, s = res["args"], res["summary"]
    print()
    print(f"LLM serving: `loom serve`, POST /v1/completions with \"stream\": true, read by a Python client "
          f"(http.client, one thread a stream) on the same machine;\n  {res['models']['gpt']['describe']}, draft "
          f"{res['models']['draft']['describe']};\n  every server --threads {a['threads']} --slots {a['slots']}"
          f"{' ' + ' '.join(a['serve_args']) if a['serve_args'] else ''}; medians of {a['repeats']} rounds")
    t = res["throughput"]
    print()
    print(f"throughput and latency: the same {a['requests']} requests (prompts of 20-80 characters, max_tokens "
          f"{a['max_tokens'][0]}-{a['max_tokens'][1]}, temperature 0.8, a seed each), one at a time, then "
          f"{STREAMS} at a time")
    header = (f"{'load':<22}{'tokens/s':>10}{'ratio':>8}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}"
              f"{'all: p99 ms':>13}{'max ms':>9}{'wall s':>9}")
    print(header)
    print("-" * len(header))
    for key, name in (("one", "1 stream at a time"), ("many", f"{STREAMS} concurrent streams")):
        tps = s[f"{key}_tokens_per_s"]
        ratio = tps / s["one_tokens_per_s"] if tps and s["one_tokens_per_s"] else None
        print(f"{name:<22}{fmt(tps, '.0f'):>10}{fmt(ratio, '.2f') + 'x':>8}"
              f"{fmt(scaled(s[f'{key}_ttft_steady_p50_s'], 1e3), '.1f'):>13}"
              f"{fmt(scaled(s[f'{key}_ttft_steady_p99_s'], 1e3), '.1f'):>13}"
              f"{fmt(scaled(s[f'{key}_ttft_p99_s'], 1e3), '.1f'):>13}"
              f"{fmt(scaled(s[f'{key}_ttft_max_s'], 1e3), '.1f'):>9}"
              f"{fmt(median([r[key]['wall_s'] for r in t]), '.2f'):>9}")
    one_runs = ", ".join(f"{r['one']['tokens_per_s']:.0f}" for r in t)
    many_runs = ", ".join(f"{r['many']['tokens_per_s']:.0f}" for r in t)
    print(f"  TTFT p50/p99 over the requests of all rounds ({s['one_ttft_steady_samples']} and "
          f"{s['many_ttft_steady_samples']}), each stream's first request left out (the {STREAMS} streams start "
          f"together: Note [Steady state] in llm.py); \"all\": every request.\n  TTFT p99 ratio, {STREAMS} streams to 1: "
          f"{fmt(s['ttft_ratio'], '.2f')}x (every request: {fmt(s['ttft_ratio_all'], '.2f')}x; to the single-stream "
          f"p50: {fmt(s['ttft_ratio_vs_p50'], '.2f')}x).\n  Rounds, tokens/s: 1 stream {one_runs}; {STREAMS} streams "
          f"{many_runs}. Sampled texts equal under both loads: {s['same_texts']}/{a['requests']}")
    kv = res["kv"]
    print()
    print(f"paged KV cache: {a['mixed_requests']} requests of mixed lengths (prompts of 10-150 characters, "
          f"max_tokens 16-200 within the context) over {STREAMS} streams, GET /metrics every {a['sample_ms']:g} ms:")
    print(f"  live positions / (blocks used x block size) {fmt(scaled(s['kv_mean_use'], 100), '.1f')}% averaged over "
          f"the samples (rounds: {', '.join(fmt(scaled(r['mean_use'], 100), '.1f') + '%' for r in kv)}; "
          f"pooled {fmt(scaled(s['kv_pooled_use'], 100), '.1f')}%);")
    print(f"  {fmt(median([r['mean_blocks_used'] for r in kv]), '.0f')} of {fmt(kv[0]['blocks_total'], '.0f')} "
          f"blocks in use on average, {fmt(median([r['mean_running'] for r in kv]), '.1f')} sequences running, "
          f"{sum(r['preemptions'] or 0 for r in kv)} preemptions, "
          f"{fmt(median([r['samples_in_use'] for r in kv]), '.0f')} samples a round, "
          f"{fmt(median([r['tokens_per_s'] for r in kv]), '.0f')} tokens/s")
    spec, sampled = res["spec"], res.get("spec_sampled") or {}
    print()
    print(f"speculative decoding: one stream, {a['spec_prompts']} prompts x up to {a['spec_tokens']} tokens, "
          f"--draft-model {os.path.basename(a['draft'])} --draft-tokens K; greedy (temperature 0: the target), and "
          f"sampled at temperature {SAMPLED_TEMPERATURE:g} with a seed each (information)")
    header = (f"{'draft':<10}{'greedy tok/s':>13}{'ratio':>8}{'accepted':>10}{'identical':>11}"
              f"{'sampled tok/s':>15}{'ratio':>8}{'accepted':>10}")
    print(header)
    print("-" * len(header))
    inactive = []

    def accepted(k, e):
        if k == "none" or not e:
            return ""
        return "none" if not e.get("draft_proposed") else fmt(scaled(e.get("acceptance_measured"), 100), ".1f") + "%"

    for k, e in spec.items():
        if k != "none" and not e.get("draft_proposed"):
            inactive.append(k)
        x = sampled.get(k) or {}
        print(f"{'none' if k == 'none' else 'K=' + k:<10}{fmt(e['tokens_per_s'], '.0f'):>13}"
              f"{fmt(e['ratio'], '.2f') + 'x':>8}{accepted(k, e):>10}"
              f"{'-' if k == 'none' else 'yes' if e['texts_identical'] else 'NO':>11}"
              f"{fmt(x.get('tokens_per_s'), '.0f'):>15}{fmt(x.get('ratio'), '.2f') + 'x':>8}{accepted(k, x):>10}")
    if inactive:
        print(f"  the server's draft proposed no tokens with K = {', '.join(inactive)} "
              f"(loom_llm_spec_draft_tokens_total did not move): speculative decoding is not running")
    if res.get("spec_prompt"):
        print(f"  the first prompt:{' ' * 26}{json.dumps(res['spec_prompt'])}")
    shown = [("its greedy completion without the draft:", spec["none"])]
    if s["spec_best_k"]:
        shown.append((f"with the draft, K={s['spec_best_k']}:", spec[s["spec_best_k"]]))
    if sampled.get("none"):
        shown.append((f"sampled at temperature {SAMPLED_TEMPERATURE:g}, no draft:", sampled["none"]))
    for label, e in shown:
        text = e["runs"][0]["results"][0]["text"]
        print(f"  {label:<41}{json.dumps(text[:90])}{'...' if len(text) > 90 else ''}")
    print()
    for c in res["checks"]:
        print(f"  target: {c['target']:<66}{c['value']:>12}  {'PASS' if c['met'] else 'FAIL'}")
    met = sum(1 for c in res["checks"] if c["met"])
    print(f"LLM targets: {met}/{len(res['checks'])} met")


# ---- the group ----

def add_arguments(p):
    """The flags of the LLM group (shared with run.py)."""
    p.add_argument("--llm-dir", default=os.path.join(ROOT, "build", "llm"),
                   help="where `make llm-models` wrote gpt.safetensors and draft.safetensors")
    p.add_argument("--llm-gpt", help="the served GPT (default: LLM_DIR/gpt.safetensors)")
    p.add_argument("--llm-draft", help="the draft model (default: LLM_DIR/draft.safetensors)")
    p.add_argument("--llm-threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="the LLM servers' compute threads (--threads), the same for every server; default: "
                        "every core (the client's threads only read the streams)")
    p.add_argument("--llm-slots", type=int, default=STREAMS, help="the servers' --slots")
    p.add_argument("--llm-requests", type=int, default=48, help="requests of the throughput and latency rows")
    p.add_argument("--llm-max-tokens", default="96,160", help="LO,HI: their max_tokens, drawn uniformly")
    p.add_argument("--llm-mixed-requests", type=int, default=40, help="requests of the KV-cache row")
    p.add_argument("--llm-sample-ms", type=float, default=10, help="how often the KV-cache row reads /metrics")
    p.add_argument("--llm-spec-prompts", type=int, default=6, help="greedy prompts of the speculative row")
    p.add_argument("--llm-spec-tokens", type=int, default=128, help="their max_tokens")
    p.add_argument("--llm-spec-k", default="2,3,4,6", help="the --draft-tokens values to sweep")
    p.add_argument("--llm-repeats", type=int, default=3, help="rounds of each row (medians)")
    p.add_argument("--llm-serve-args", default="", help="more flags for every LLM server, e.g. --llm-serve-args='--kv-cache-mb 32'")


def skip_reason(args):
    for path in (args.llm_gpt, args.llm_draft):
        if not os.path.exists(path):
            return (f"no {os.path.relpath(path, ROOT) if path.startswith(ROOT) else path}; run `make llm-models` "
                    f"(about 25 minutes on 2 cores) to train the GPT and its draft, or give --llm-dir")
    if not os.path.exists(args.loom_bin):
        return f"no {args.loom_bin}"
    try:
        help_text = subprocess.run([args.loom_bin, "serve", "--help"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{args.loom_bin} serve --help failed: {e}"
    missing = [f for f in ("--slots", "--draft-model", "--draft-tokens") if f not in help_text]
    if missing:
        return f"{args.loom_bin} serve has no {', '.join(missing)} (built before the OpenAI endpoints? rebuild it)"
    return None


def describe_model(path):
    meta = safetensors_metadata(path)
    cfg = json.loads(meta.get("loom.lm.config", "{}"))
    desc = (f"{os.path.basename(path)} ({cfg.get('n_layer')} layers, d_model {cfg.get('n_embd')}, "
            f"{cfg.get('n_head')} heads, context {cfg.get('block_size')}, step {meta.get('loom.lm.step')})")
    return {"describe": desc, "config": cfg, "step": meta.get("loom.lm.step"),
            "tokenizer": meta.get("loom.tokenizer")}


def run_group(args):
    """Runs the four rows; returns the results (with "checks"), or {"skipped": why}."""
    args.llm_gpt = args.llm_gpt or os.path.join(args.llm_dir, "gpt.safetensors")
    args.llm_draft = args.llm_draft or os.path.join(args.llm_dir, "draft.safetensors")
    if isinstance(args.llm_serve_args, str):
        args.llm_serve_args = args.llm_serve_args.split()
    why = skip_reason(args)
    if why:
        return {"skipped": why}
    spec_k = [int(k) for k in str(args.llm_spec_k).split(",") if k.strip()]
    lo, hi = (int(x) for x in str(args.llm_max_tokens).split(","))
    args.llm_max_tokens = (lo, hi)
    models = {"gpt": describe_model(args.llm_gpt), "draft": describe_model(args.llm_draft)}
    if models["gpt"]["tokenizer"] != models["draft"]["tokenizer"]:
        raise BenchError(f"{args.llm_draft} has another tokenizer than {args.llm_gpt}; rerun `make llm-models`")
    args.context = int(models["gpt"]["config"].get("block_size") or 256)
    tok = json.loads(models["gpt"]["tokenizer"] or "{}")
    # The character tokenizer's JSON: {"chars": [code points]}; None (keep every character) otherwise.
    vocab = {chr(c) if isinstance(c, int) else c for c in tok["chars"]} if isinstance(tok.get("chars"), list) else None
    entries = fortune_entries()
    tp_requests = throughput_requests(args, entries, vocab)
    kv_requests = mixed_requests(args, entries, vocab)
    greedy = greedy_requests(args, entries, vocab)
    sampled = greedy_requests(args, entries, vocab, SAMPLED_TEMPERATURE)

    servers, exit_codes = [], {}
    start, loadavg_before = time.monotonic(), os.getloadavg()
    try:
        main = Server(args, "llm")
        servers.append(main)
        log(f"LLM: {main.banner}")
        log("LLM: warm-up")
        warm_up(main, tp_requests)
        log(f"LLM: throughput and latency, {args.llm_requests} requests, 1 then {STREAMS} streams")
        throughput = throughput_phase(args, main, tp_requests)
        log(f"LLM: paged KV cache, {args.llm_mixed_requests} requests of mixed lengths, {STREAMS} streams")
        kv = kv_phase(args, main, kv_requests)
        drafts = {}
        for k in spec_k:
            s = Server(args, f"draft K={k}", ["--draft-model", args.llm_draft, "--draft-tokens", str(k)])
            servers.append(s)
            drafts[k] = s
        for s in [main, *drafts.values()]:
            run_load(s.port, greedy[:2], 1)  # warm-up
        log(f"LLM: speculative decoding, K in {spec_k}, {len(greedy)} greedy prompts, one stream")
        spec = spec_phase(args, main, drafts, greedy, "greedy")
        log(f"LLM: the same, sampled at temperature {SAMPLED_TEMPERATURE:g} (speculative sampling)")
        spec_sampled = spec_phase(args, main, drafts, sampled, "sampled")
        for s in servers:
            exit_codes[s.label] = s.stop()
        servers.clear()
    finally:
        for s in servers:
            log(f"  stopped the {s.label} server (exit {s.stop()})")

    res = {"models": models, "wall_s": time.monotonic() - start, "loadavg_before": loadavg_before,
           "loadavg_after": os.getloadavg(),
           "args": {"threads": args.llm_threads, "slots": args.llm_slots, "requests": args.llm_requests,
                    "max_tokens": list(args.llm_max_tokens), "mixed_requests": args.llm_mixed_requests,
                    "sample_ms": args.llm_sample_ms, "spec_prompts": args.llm_spec_prompts,
                    "spec_tokens": args.llm_spec_tokens, "spec_k": spec_k, "repeats": args.llm_repeats,
                    "gpt": args.llm_gpt, "draft": args.llm_draft, "serve_args": args.llm_serve_args,
                    "loom_bin": args.loom_bin},
           "throughput": throughput, "kv": kv, "spec": spec, "spec_sampled": spec_sampled, "spec_prompt": greedy[0]["prompt"] if greedy else None,
           "exit_codes": exit_codes}
    res["summary"] = summarize(res)
    res["checks"] = checks(res)
    return res


# ---- `make llm-models`: what it trained ----

def models_report(args):
    """Prints the corpus (from the GPT's training log), each model's final validation loss (from
    its metrics CSV) and wall time, checks that both checkpoints hold the same tokenizer, and times
    one greedy decode of each with `loom generate`. Returns the exit code (1: tokenizers differ)."""
    gpt = args.llm_gpt or os.path.join(args.llm_dir, "gpt.safetensors")
    draft = args.llm_draft or os.path.join(args.llm_dir, "draft.safetensors")
    rows = {}
    for name, path in (("gpt", gpt), ("draft", draft)):
        d = describe_model(path)
        r = {"path": path, "describe": d["describe"], "tokenizer": d["tokenizer"]}
        try:
            with open(os.path.join(args.llm_dir, f"{name}.log")) as f:
                m = re.search(r"^loom train: gpt \((\d+) parameters\) on (.*): (\d+) bytes, (\w+) tokenizer of "
                              r"(\d+) tokens, (\d+) train / (\d+) val tokens", f.read(), re.M)
            if m:
                r.update(params=int(m.group(1)), text=m.group(2), bytes=int(m.group(3)), kind=m.group(4),
                         vocab=int(m.group(5)), train=int(m.group(6)), val=int(m.group(7)))
        except OSError:
            pass
        try:
            with open(os.path.join(args.llm_dir, f"{name}.csv")) as f:
                last = f.read().strip().splitlines()[-1].split(",")
            r.update(step=int(last[0]), val_loss=float(last[2]), train_s=float(last[3]))
        except (OSError, IndexError, ValueError):
            pass
        try:
            with open(os.path.join(args.llm_dir, f"{name}.seconds")) as f:
                r["wall_s"] = float(f.read())
        except (OSError, ValueError):
            pass
        rows[name] = r
    g = rows["gpt"]
    if "train" in g:
        try:
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "fortunes"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = ""
        unit = "characters" if g["kind"] == "char" else "tokens"
        print(f"corpus: {g['text']}, the fortune cookies of the Debian package fortunes"
              f"{' ' + version if version else ''}: {g['bytes']:,} bytes, {g['train'] + g['val']:,} {unit} "
              f"({g['train']:,} train, {g['val']:,} validation: the last 10%), a vocabulary of {g['vocab']}")
    for name, r in rows.items():
        loss = (f"validation loss {r['val_loss']:.4f} nats per character ({r['val_loss'] / 0.6931471805599453:.3f} "
                f"bits) at step {r['step']}" if "val_loss" in r else "no metrics CSV")
        times = (f"; {r['train_s']:.0f} s of training steps" if "train_s" in r else "") + \
                (f", {r['wall_s'] / 60:.1f} min wall" if "wall_s" in r else "")
        params = f", {r['params']:,} parameters" if "params" in r else ""
        print(f"{name + ':':<7}{r['describe']}{params}: {loss}{times}")
    same = rows["gpt"]["tokenizer"] is not None and rows["gpt"]["tokenizer"] == rows["draft"]["tokenizer"]
    print(f"tokenizer: {'the same' if same else 'DIFFERENT'} in both checkpoints (\"loom.tokenizer\" metadata)")
    if os.path.exists(args.loom_bin):
        speed = {}
        for name, r in rows.items():
            try:
                out = subprocess.run([args.loom_bin, "generate", "--model-file", r["path"], "--temperature", "0",
                                      "--max-new-tokens", "200", "--threads", "1", "--prompt", "The "],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120).stdout
                m = re.search(r"([\d.]+) tokens/s", out)
                speed[name] = float(m.group(1)) if m else None
            except (OSError, subprocess.TimeoutExpired):
                speed[name] = None
        if speed.get("gpt") and speed.get("draft"):
            print(f"decode, batch 1 (loom generate --temperature 0, 1 thread): gpt {speed['gpt']:.0f} tokens/s, "
                  f"draft {speed['draft']:.0f} tokens/s: a draft token costs {speed['gpt'] / speed['draft']:.2f} "
                  f"of a gpt token")
    return 0 if same else 1


# ---- self-test (offline) ----

def selftest():
    p = SseParser()
    evs = p.feed(b'data: {"a":1}\n\ndata: {"b"')
    assert evs == ['{"a":1}'], evs
    evs = p.feed(b':2}\r\n\r\n: comment\nevent: x\ndata:[DONE]\r')
    assert evs == ['{"b":2}'], evs
    evs = p.feed(b"\n\r\n")
    assert evs == ["[DONE]"], evs
    p2 = SseParser()
    assert p2.feed(b"data: line1\ndata: line2\n\n") == ["line1\nline2"]
    assert p2.feed("data: caf\u00e9\n\n".encode()) == ["caf\u00e9"]
    m = parse_prometheus('# HELP x y\n# TYPE loom_llm_kv_positions gauge\nloom_llm_kv_positions{model="gpt"} 300\n'
                         'loom_llm_kv_blocks_used{model="gpt",version="1"} 20\nloom_llm_kv_block_size 16\n'
                         'loom_llm_ttft_seconds_bucket{model="gpt",le="+Inf"} 5\nnan_metric NaN\n'
                         'loom_llm_spec_acceptance_rate{model="gpt"} 7.5e-01 1700000000000\n')
    assert metric(m, "loom_llm_kv_positions") == 300
    assert metric(m, "loom_llm_kv_blocks_used", model="gpt") == 20
    assert metric(m, "loom_llm_kv_block_size") == 16
    assert metric(m, "loom_llm_spec_acceptance_rate") == 0.75
    assert metric(m, "loom_llm_ttft_seconds_bucket", le="+Inf") == 5
    assert metric(m, "absent", -1) == -1
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5
    assert abs(percentile(list(range(1, 101)), 99) - 99.01) < 1e-9

    # The client against a stdlib server that streams chunked SSE, slowly.
    import http.server
    import socketserver

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["stream"] is True and body["model"] == MODEL
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(b):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                self.wfile.flush()

            text = body["prompt"][::-1][:body["max_tokens"]]
            for i, ch in enumerate(text):
                fin = "length" if i == len(text) - 1 else None
                send(("data: " + json.dumps({"id": "c", "object": "text_completion", "choices": [
                    {"index": 0, "text": ch, "finish_reason": fin}]}) + "\n\n").encode())
                time.sleep(0.002)
            send(b"data: [DONE]\n\n")
            send(b"")

    class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):  # a client that closed its keep-alive connection
            pass

    srv = Threaded(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = complete(srv.server_address[1], {"prompt": "hello world", "max_tokens": 5})
        assert r["text"] == "dlrow" and r["tokens"] == 5 and r["finish_reason"] == "length", r
        assert 0 < r["ttft_s"] < r["total_s"], r
        load = run_load(srv.server_address[1], [{"prompt": f"prompt {i}", "max_tokens": 8} for i in range(12)], 4)
        assert [x["text"] for x in load["results"]] == [f"prompt {i}"[::-1][:8] for i in range(12)]
        assert load["tokens"] == 12 * 8 and load["ttft_p99_s"] is not None
    finally:
        srv.shutdown()
    assert make_prompts(["abc def"], 2, 10, 10, random.Random(0), set("abcdef \n")) == ["abc def\n\na"] * 2
    print("llm.py self-test: ok")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loom", dest="loom_bin", default=os.path.join(ROOT, "build-bench", "loom"),
                   help="the `loom` binary (default: build-bench/loom)")
    p.add_argument("--start-timeout", type=float, default=60)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--selftest", action="store_true", help="check the parsers and the client offline, then exit")
    p.add_argument("--check-models", action="store_true",
                   help="`make llm-models`'s report: the corpus, validation losses, wall times, the tokenizers")
    add_arguments(p)
    args = p.parse_args()
    if args.selftest:
        selftest()
        return 0
    if args.check_models:
        if args.loom_bin == p.get_default("loom_bin"):
            args.loom_bin = os.path.join(os.path.dirname(os.path.abspath(args.llm_dir)), "loom")
        try:
            return models_report(args)
        except (OSError, BenchError, ValueError) as e:
            log(f"llm.py --check-models: {e}")
            return 1

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        res = run_group(args)
    except BenchError as e:
        log(f"llm.py: {e}")
        return 2
    except KeyboardInterrupt:
        log("llm.py: interrupted")
        return 130
    if "skipped" in res:
        print(f"LLM group skipped: {res['skipped']}")
        return 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print_report(res)
    print(f"wall time: {res['wall_s']:.0f} s")
    return 1 if args.strict and not all(c["met"] for c in res["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
