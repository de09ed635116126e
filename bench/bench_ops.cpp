// loom's side of the benchmark table (bench/run.py): every workload of
// bench/torch_ops.py under the same name, plus the machine references that
// have no PyTorch counterpart (FMA peak, a STREAM-style add loop) and the
// dispatch-overhead cases whose reference is bench/torch_dispatch.cpp.
// Each benchmark calls its op once before timing, so first-call costs (page
// faults on fresh memory, the allocator's first fill) stay out of the table.
//
// Extra flags (before Google Benchmark's own): --loom_threads=N sets
// loom::set_num_threads(N); the reference loops here use the same N.
// --loom_gen_turns=N registers the quantized generation rows (gen_*) N
// times, their formats taking turns (see register_benchmarks);
// --loom_amp_turns=N the bfloat16 rows N times beside their float32 ones
// (see "bfloat16 mixed precision").
#include <benchmark/benchmark.h>
#include <loom/loom.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace F = loom::nn::functional;

int g_threads = 1;  // --loom_threads, also the team size of the reference loops
int g_gen_turns = 1;  // --loom_gen_turns: how many times each gen_* row is registered
int g_amp_turns = 0;  // --loom_amp_turns: turns of each bfloat16 row beside its float32 one (0: alone, once)

// Runs fn(id) for each id in [0, n) on n threads at once and waits for all:
// the reference loops' team. It is loom's own pool (parallel_team), so a
// reference runs on the very threads loom's ops use and differs from the op
// only in its loop. The alternatives, tried on a shared 2-core machine,
// skewed the bar: with OpenMP the STREAM loop ran up to 5x slower than
// loom's add while another process was busy (libgomp's waiting threads
// spin: Note [Thread pool] in src/core/threads.cpp), and with fresh
// std::threads each call ~30% slower even when idle.
template <class Fn>
void run_on_threads(int n, const Fn& fn) {
  loom::parallel_team(n, [&](int id, int) { fn(id); });
}

// ---- FMA peak ----
// Each thread runs kFmaChains independent multiply-add chains on full-width
// vectors. Twelve chains cover FMA latency x issue width on current cores
// (4 cycles x 2 pipes = 8 in flight), so the loop is bound by FMA
// throughput alone: the machine's float32 peak that GEMM is measured against.
// The chains converge to 1 (acc * 0.999 + 0.001), so nothing overflows or
// goes subnormal. The ISA is picked from CPUID at run time, as loom does.
constexpr int kFmaChains = 12;
constexpr int64_t kFmaSteps = int64_t{1} << 21;  // per thread per iteration: ~4 ms

#ifdef BENCH_X86
__attribute__((target("avx512f,fma"))) float fma_chains_avx512(int64_t steps) {
  const __m512 mul = _mm512_set1_ps(0.999f), add = _mm512_set1_ps(0.001f);
  __m512 acc[kFmaChains];
  for (int j = 0; j < kFmaChains; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  for (int64_t s = 0; s < steps; ++s)
    for (int j = 0; j < kFmaChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], mul, add);
  for (int j = 1; j < kFmaChains; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  // Lane sum by hand: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized.
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc[0]);
  float sum = 0;
  for (float v : lanes) sum += v;
  return sum;
}

__attribute__((target("avx2,fma"))) float fma_chains_avx2(int64_t steps) {
  const __m256 mul = _mm256_set1_ps(0.999f), add = _mm256_set1_ps(0.001f);
  __m256 acc[kFmaChains];
  for (int j = 0; j < kFmaChains; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  for (int64_t s = 0; s < steps; ++s)
    for (int j = 0; j < kFmaChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], mul, add);
  for (int j = 1; j < kFmaChains; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc[0]);
  float sum = 0;
  for (float v : lanes) sum += v;
  return sum;
}
#endif

// Counted as one lane: the flop count stays right if the compiler vectorizes it.

float fma_chains_scalar(int64_t steps) {
  float acc[kFmaChains];
  for (int j = 0; j < kFmaChains; ++j) acc[j] = static_cast<float>(j);
  for (int64_t s = 0; s < steps; ++s)
    for (int j = 0; j < kFmaChains; ++j) acc[j] = acc[j] * 0.999f + 0.001f;
  float sum = 0;
  for (float v : acc) sum += v;
  return sum;
}

struct FmaProbe {
  const char* isa;
  int lanes;
  float (*run)(int64_t steps);
};

FmaProbe fma_probe() {
#ifdef BENCH_X86
  if (__builtin_cpu_supports("avx512f")) return {"avx512", 16, fma_chains_avx512};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {"avx2", 8, fma_chains_avx2};
#endif
  return {"portable", 1, fma_chains_scalar};
}

// All g_threads threads run the chains at once; reports their total flop/s.
void BM_peak_fma(benchmark::State& state) {
  const FmaProbe probe = fma_probe();
  std::vector<float> sink(g_threads);
  for (auto _ : state) {
    run_on_threads(g_threads, [&](int id) { sink[id] = probe.run(kFmaSteps); });
    benchmark::DoNotOptimize(sink.data());
  }
  const double flops_per_iter = 2.0 * kFmaChains * probe.lanes * static_cast<double>(kFmaSteps) * g_threads;
  state.counters["flops"] =
      benchmark::Counter(flops_per_iter * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(probe.isa);
}

// ---- GEMM ----
// c = a @ b with a: (M, K), b: (K, N). A transposed operand is stored as its
// transpose and passed as a .t() view, as nn::Linear's forward (x @ W^T) and
// weight gradient (gy^T @ x) do; matmul sees the strides, nothing is copied.
void BM_gemm(benchmark::State& state, int64_t m, int64_t k, int64_t n, bool trans_a, bool trans_b) {
  loom::Tensor a = trans_a ? loom::rand({k, m}).t() : loom::rand({m, k});
  loom::Tensor b = trans_b ? loom::rand({n, k}).t() : loom::rand({k, n});
  benchmark::DoNotOptimize(loom::matmul(a, b).raw_data_ptr());  // warm-up
  for (auto _ : state) {
    loom::Tensor c = loom::matmul(a, b);
    benchmark::DoNotOptimize(c.raw_data_ptr());
  }
  state.counters["flops"] = benchmark::Counter(2.0 * m * n * k * static_cast<double>(state.iterations()),
                                               benchmark::Counter::kIsRate);
}

// ---- memory-bound elementwise ----
constexpr int64_t kStreamN = int64_t{1} << 24;  // 64 MiB per array: far past the caches

void set_stream_bytes(benchmark::State& state, int64_t n, int arrays) {
  state.SetBytesProcessed(state.iterations() * n * arrays * static_cast<int64_t>(sizeof(float)));
}

// c = a + b through loom's op: a, b: (n,), c made (from the allocator's
// cache) on every call.
void BM_add_f32(benchmark::State& state, int64_t n) {
  loom::Tensor a = loom::rand({n}), b = loom::rand({n});
  benchmark::DoNotOptimize((a + b).raw_data_ptr());  // warm-up
  for (auto _ : state) {
    loom::Tensor c = a + b;
    benchmark::DoNotOptimize(c.raw_data_ptr());
  }
  set_stream_bytes(state, n, 3);
}

// The same add as a bare loop over preallocated arrays, split over the same
// threads: what the memory system allows, the bar for BM_add_f32.
void BM_stream_add(benchmark::State& state, int64_t n) {
  std::unique_ptr<float[]> a(new float[n]), b(new float[n]), c(new float[n]);
  // Thread `id` owns [lo(id), hi(id)): one contiguous slice each, as loom splits.
  const int64_t chunk = (n + g_threads - 1) / g_threads;
  auto lo = [&](int id) { return std::min(n, id * chunk); };
  auto hi = [&](int id) { return std::min(n, (id + 1) * chunk); };
  // First touch on the threads that use the pages, as in STREAM.
  run_on_threads(g_threads, [&](int id) {
    for (int64_t i = lo(id); i < hi(id); ++i) {
      a[i] = 1.0f;
      b[i] = 2.0f;
      c[i] = 0.0f;
    }
  });
  for (auto _ : state) {
    run_on_threads(g_threads, [&](int id) {
      float* __restrict pc = c.get();
      const float* __restrict pa = a.get();
      const float* __restrict pb = b.get();
      for (int64_t i = lo(id), end = hi(id); i < end; ++i) pc[i] = pa[i] + pb[i];
    });
    benchmark::DoNotOptimize(c.get());
    benchmark::ClobberMemory();
  }
  set_stream_bytes(state, n, 3);
}

// s = a.sum(), a: (n,): one read per element.
void BM_sum_f32(benchmark::State& state, int64_t n) {
  loom::Tensor a = loom::rand({n});
  benchmark::DoNotOptimize(a.sum().raw_data_ptr());  // warm-up
  for (auto _ : state) {
    loom::Tensor s = a.sum();
    benchmark::DoNotOptimize(s.raw_data_ptr());
  }
  set_stream_bytes(state, n, 1);
}

// ---- row-wise ops over the last dim ----
constexpr int64_t kRows = 4096, kCols = 1024;

// y = softmax(x, -1), x: (4096, 1024).
void BM_softmax(benchmark::State& state) {
  loom::Tensor x = loom::randn({kRows, kCols});
  benchmark::DoNotOptimize(loom::softmax(x, -1).raw_data_ptr());  // warm-up
  for (auto _ : state) {
    loom::Tensor y = loom::softmax(x, -1);
    benchmark::DoNotOptimize(y.raw_data_ptr());
  }
}

// y = layer_norm(x, (1024,), w, b), x: (4096, 1024), w, b: (1024,).
void BM_layer_norm(benchmark::State& state) {
  loom::Tensor x = loom::randn({kRows, kCols}), w = loom::randn({kCols}), b = loom::randn({kCols});
  benchmark::DoNotOptimize(F::layer_norm(x, {kCols}, w, b).raw_data_ptr());  // warm-up
  for (auto _ : state) {
    loom::Tensor y = F::layer_norm(x, {kCols}, w, b);
    benchmark::DoNotOptimize(y.raw_data_ptr());
  }
}

// Forward, then the gradient w.r.t. x from a fixed upstream gradient
// (autograd::grad, so nothing accumulates into .grad across calls).
void BM_softmax_fwd_bwd(benchmark::State& state) {
  loom::Tensor x = loom::randn({kRows, kCols}).requires_grad_(), gy = loom::randn({kRows, kCols});
  auto step = [&] { return loom::autograd::grad({loom::softmax(x, -1)}, {x}, {gy}); };
  step();  // warm-up
  for (auto _ : state) {
    std::vector<loom::Tensor> g = step();
    benchmark::DoNotOptimize(g[0].raw_data_ptr());
  }
}

// Forward, then the gradients w.r.t. x, w and b.
void BM_layer_norm_fwd_bwd(benchmark::State& state) {
  loom::Tensor x = loom::randn({kRows, kCols}).requires_grad_(), gy = loom::randn({kRows, kCols});
  loom::Tensor w = loom::randn({kCols}).requires_grad_(), b = loom::randn({kCols}).requires_grad_();
  auto step = [&] { return loom::autograd::grad({F::layer_norm(x, {kCols}, w, b)}, {x, w, b}, {gy}); };
  step();  // warm-up
  for (auto _ : state) {
    std::vector<loom::Tensor> g = step();
    benchmark::DoNotOptimize(g[0].raw_data_ptr());
  }
}

// ---- convolution ----
// conv2d at stride 1 with bias: x (N, C, H, W), w (O, C, K, K), b (O).
// With `backward`, forward and then the gradients w.r.t. x, w and b from a
// fixed upstream gradient gy (N, O, OH, OW): the backward of sum(y * gy).
struct ConvShape {
  const char* name;
  int64_t n, c, h, w, o, k, padding;
};

void BM_conv2d(benchmark::State& state, ConvShape s, bool backward) {
  loom::Tensor x = loom::randn({s.n, s.c, s.h, s.w}), w = loom::randn({s.o, s.c, s.k, s.k});
  loom::Tensor b = loom::randn({s.o});
  const int64_t oh = s.h + 2 * s.padding - s.k + 1, ow = s.w + 2 * s.padding - s.k + 1;
  loom::Tensor gy = loom::randn({s.n, s.o, oh, ow});
  if (backward) {
    x.requires_grad_();
    w.requires_grad_();
    b.requires_grad_();
  }
  auto forward = [&] { return loom::conv2d(x, w, b, {1}, {s.padding}); };
  auto step = [&] { return loom::autograd::grad({forward()}, {x, w, b}, {gy}); };
  if (backward) {
    step();  // warm-up
    for (auto _ : state) {
      std::vector<loom::Tensor> g = step();
      benchmark::DoNotOptimize(g[0].raw_data_ptr());
    }
  } else {
    benchmark::DoNotOptimize(forward().raw_data_ptr());  // warm-up
    for (auto _ : state) {
      loom::Tensor y = forward();
      benchmark::DoNotOptimize(y.raw_data_ptr());
    }
  }
}

// ---- dispatch overhead ----
// c = a + b on 10 floats: the time is the op's fixed cost (checks, dtype and
// broadcast rules, allocation, kernel call), the arithmetic is nothing.
// With `autograd`, both inputs require grad, so every call also records (and
// frees with c) a graph node. bench/torch_dispatch.cpp times the same in libtorch.
void BM_dispatch_add(benchmark::State& state, bool autograd) {
  loom::Tensor a = loom::rand({10}), b = loom::rand({10});
  if (autograd) {
    a.requires_grad_();
    b.requires_grad_();
  }
  loom::AutoGradMode grad_mode(true);  // on in both cases, as libtorch's default
  benchmark::DoNotOptimize((a + b).raw_data_ptr());  // warm-up
  for (auto _ : state) {
    loom::Tensor c = a + b;
    benchmark::DoNotOptimize(c.raw_data_ptr());
  }
}

// ---- sequence models: attention, LSTM, GPT ----

// Times training steps: loss_fn() then zero_grad, backward and an
// optimizer step, after one warm-up step.
template <class LossFn>
void time_training_steps(benchmark::State& state, loom::optim::Optimizer& optimizer, const LossFn& loss_fn) {
  auto step = [&] {
    loom::Tensor loss = loss_fn();
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    return loss;
  };
  step();  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(step().raw_data_ptr());
}
// The "seq" group of run.py; torch_ops.py runs the same shapes (its GPT is
// nanoGPT's model, torch_gpt.py, with the math-form attention of PyTorch 1.13).

// scaled_dot_product_attention, causal, forward and the gradients w.r.t. q,
// k and v from a fixed upstream gradient: q, k, v, gy (B, H, T, D).
void BM_attn_fb(benchmark::State& state, int64_t b, int64_t h, int64_t t, int64_t d) {
  loom::Tensor q = loom::randn({b, h, t, d}).requires_grad_(), k = loom::randn({b, h, t, d}).requires_grad_();
  loom::Tensor v = loom::randn({b, h, t, d}).requires_grad_(), gy = loom::randn({b, h, t, d});
  auto step = [&] {
    return loom::autograd::grad({loom::scaled_dot_product_attention(q, k, v, {}, 0.0, true)}, {q, k, v}, {gy});
  };
  step();  // warm-up
  for (auto _ : state) {
    std::vector<loom::Tensor> g = step();
    benchmark::DoNotOptimize(g[0].raw_data_ptr());
  }
}

// Bytes of resident memory now (/proc/self/statm), 0 when unreadable.
int64_t resident_bytes() {
  long pages_total = 0, pages_resident = 0;
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  const int got = std::fscanf(f, "%ld %ld", &pages_total, &pages_resident);
  std::fclose(f);
  return got == 2 ? int64_t{pages_resident} * sysconf(_SC_PAGESIZE) : 0;
}

// The resident high-water mark (VmHWM of /proc/self/status), 0 when unreadable.
// Not getrusage's ru_maxrss: that one carries the parent's high-water mark
// over fork and exec, so a child started by a big process reads the parent's.
int64_t peak_resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  long kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
  std::fclose(f);
  return int64_t{kib} * 1024;
}

// Lowers the high-water mark to the resident set now (Linux >= 4.0); false
// when /proc/self/clear_refs cannot be written.
bool reset_peak_resident() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

// Memory of causal attention forward + backward (B = 1, H = 1, D = 64) at
// T = 1024, 2048, 4096, in increasing order: counters peak_T<T> = the
// allocator's peak bytes in use during the step minus those in use before it
// (q, k, v and gy already allocated; the gradients, the output and what
// backward keeps count), and rss_T<T> = the process's resident high-water
// mark over the step, reset at its start, minus its resident set before (the
// cache emptied first): the measure torch_ops.py's side uses. (Without the
// reset, T in increasing order still make each step's mark its own.) One
// iteration: it is a measurement of memory, not of time (run.py reads the
// counters).
void BM_attn_mem(benchmark::State& state) {
  for (auto _ : state) {
    for (int64_t t : {1024, 2048, 4096}) {
      loom::Tensor q = loom::randn({1, 1, t, 64}).requires_grad_(), k = loom::randn({1, 1, t, 64}).requires_grad_();
      loom::Tensor v = loom::randn({1, 1, t, 64}).requires_grad_(), gy = loom::randn({1, 1, t, 64});
      loom::cpu_empty_cache();
      reset_peak_resident();
      const int64_t rss_before = resident_bytes();
      const size_t in_use_before = loom::cpu_allocator_stats().bytes_in_use;
      loom::cpu_reset_peak_stats();
      {
        std::vector<loom::Tensor> g =
            loom::autograd::grad({loom::scaled_dot_product_attention(q, k, v, {}, 0.0, true)}, {q, k, v}, {gy});
        benchmark::DoNotOptimize(g[0].raw_data_ptr());
      }
      const size_t peak = loom::cpu_allocator_stats().peak_bytes_in_use;
      const std::string suffix = "_T" + std::to_string(t);
      state.counters["peak" + suffix] = static_cast<double>(peak - in_use_before);
      state.counters["rss" + suffix] = static_cast<double>(std::max<int64_t>(0, peak_resident_bytes() - rss_before));
    }
  }
}

// A character LSTM language model, one AdamW step (lr 3e-4):
//   Embedding(96, 256) -> LSTM(256, 256, num_layers 2) -> Linear(256, 96),
//   x, y (T = 64, N = 32) token ids, loss = cross_entropy over all T N positions.
void BM_lstm_step(benchmark::State& state) {
  constexpr int64_t kVocab = 96, kHidden = 256, kSeq = 64, kBatch = 32;
  loom::manual_seed(0);
  loom::nn::Embedding embed(kVocab, kHidden);
  loom::nn::LSTM lstm(kHidden, kHidden, {.num_layers = 2});
  loom::nn::Linear head(kHidden, kVocab);
  std::vector<loom::Tensor> params;
  for (const auto& ps : {embed->parameters(), lstm->parameters(), head->parameters()})
    params.insert(params.end(), ps.begin(), ps.end());
  loom::optim::AdamW optimizer(params, loom::optim::AdamWOptions(3e-4));
  loom::Tensor x = loom::randint(kVocab, {kSeq, kBatch}), y = loom::randint(kVocab, {kSeq, kBatch});
  time_training_steps(state, optimizer, [&] {
    loom::Tensor out = lstm(embed(x)).first;  // (T, N, H)
    return F::cross_entropy(head(out).reshape({-1, kVocab}), y.reshape({-1}));
  });
}

// The GPT of the "seq" rows: nanoGPT's layout, 4 layers, d_model 256, 4
// heads, context 128, vocabulary 96, no dropout, tied head.
const loom::models::GPTConfig kBenchGpt{
    .n_layer = 4, .n_embd = 256, .n_head = 4, .block_size = 128, .vocab_size = 96, .dropout = 0.0};

loom::models::GPT bench_gpt() {
  loom::manual_seed(0);
  return loom::models::GPT(kBenchGpt);
}

// One training step: loss on (16, 128) random tokens, backward, AdamW 3e-4.
void BM_gpt_step(benchmark::State& state) {
  loom::models::GPT gpt = bench_gpt();
  loom::optim::AdamW optimizer(gpt->parameters(), loom::optim::AdamWOptions(3e-4));
  loom::Tensor x = loom::randint(96, {16, 128}), y = loom::randint(96, {16, 128});
  time_training_steps(state, optimizer, [&] { return gpt->loss(x, y); });
  state.counters["tokens"] = benchmark::Counter(16.0 * 128 * static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate);
}

// Greedy generation with the KV cache: a 16-token prompt, 112 new tokens
// (batch 1): the prompt in one forward, then one position per step.
void BM_gpt_generate(benchmark::State& state) {
  loom::models::GPT gpt = bench_gpt();
  gpt->eval();
  loom::Tensor prompt = loom::randint(96, {1, 16});
  const loom::models::GenerateOptions greedy{.temperature = 0.0, .use_cache = true};
  benchmark::DoNotOptimize(gpt->generate(prompt, 112, greedy).raw_data_ptr());  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(gpt->generate(prompt, 112, greedy).raw_data_ptr());
  state.counters["tokens"] =
      benchmark::Counter(112.0 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// ---- quantized generation (run.py's "quant" group) ----
// Greedy generation at batch 1 with the KV cache, as BM_gpt_generate, for
// two models and three weight formats: float32, and every nn::Linear
// quantized by nn::quantize_dynamic to int8 (per-channel weights, per-token
// dynamic activations) or int4 (groups of 32, as ggml's Q4_0). The tied
// lm_head stays float32. "small" is bench_gpt(); "large" has GPT-2 small's
// shape (12 layers, d_model 768, 12 heads; context 256, vocabulary 96:
// 85M parameters, 340 MB in float32), so a decoding step reads its weights
// from memory, as LLM decoding does, and quantization pays in bytes read.
struct GenSpec {
  const char* size;  // "small", "large": the workload key is gen_<size>_<format>
  loom::models::GPTConfig config;
  int64_t prompt, new_tokens;
};

const GenSpec kGenSmall{"small", kBenchGpt, 16, 112};  // as BM_gpt_generate
const GenSpec kGenLarge{
    "large", {.n_layer = 12, .n_embd = 768, .n_head = 12, .block_size = 256, .vocab_size = 96, .dropout = 0.0}, 16, 48};

struct GenModel {
  loom::models::GPT gpt{nullptr};
  loom::Tensor prompt;
  int64_t weight_bytes = 0;  // parameters and buffers: what a step reads, near enough
};

// The model of (spec, scheme), built, quantized and warmed up (one
// generation) on first use and kept for the process: Google Benchmark calls
// a benchmark function several times (and with --loom_gen_turns each row is
// registered several times), and an 85M-parameter model takes seconds to
// build. Same seed for every format, so they quantize the same float32
// weights. The float32 weights a quantization drops go back to the
// system (cpu_empty_cache), so the process holds one copy of each model.
GenModel& gen_model(const GenSpec& spec, std::optional<loom::QuantScheme> scheme) {
  static std::map<std::string, GenModel> models;
  const std::string key = std::string(spec.size) + "_" + (scheme ? loom::quant_scheme_name(*scheme) : "fp32");
  auto it = models.find(key);
  if (it != models.end()) return it->second;
  loom::manual_seed(0);
  GenModel m;
  m.gpt = loom::models::GPT(spec.config);
  m.gpt->eval();
  if (scheme) {
    loom::nn::quantize_dynamic(*m.gpt, *scheme);
    loom::cpu_empty_cache();
  }
  m.prompt = loom::randint(spec.config.vocab_size, {1, spec.prompt});
  for (const auto& tensors : {m.gpt->parameters(), m.gpt->buffers()})
    for (const loom::Tensor& t : tensors) m.weight_bytes += static_cast<int64_t>(t.nbytes());
  const loom::models::GenerateOptions greedy{.temperature = 0.0, .use_cache = true};
  benchmark::DoNotOptimize(m.gpt->generate(m.prompt, spec.new_tokens, greedy).raw_data_ptr());  // warm-up
  return models.emplace(key, std::move(m)).first->second;
}

// gen_<size>_<format>: the prompt in one forward, then new_tokens steps of
// one position. Counters: tokens (generated per second) and weight_bytes.
void BM_gen(benchmark::State& state, const GenSpec& spec, std::optional<loom::QuantScheme> scheme) {
  GenModel& m = gen_model(spec, scheme);
  const loom::models::GenerateOptions greedy{.temperature = 0.0, .use_cache = true};
  for (auto _ : state) benchmark::DoNotOptimize(m.gpt->generate(m.prompt, spec.new_tokens, greedy).raw_data_ptr());
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(spec.new_tokens * state.iterations()),
                                                benchmark::Counter::kIsRate);
  state.counters["weight_bytes"] = static_cast<double>(m.weight_bytes);
}

// ---- bfloat16 mixed precision (run.py's "amp" group) ----
// Each bfloat16 row has a float32 counterpart of the same work, and the
// targets are loom against loom: bf16_gemm_2048 multiplies two bfloat16
// (2048, 2048) matrices (as torch's bf16 matmul: bfloat16 in and out)
// against sgemm_2048 on the same values in float32; gpt_step_bf16 is
// BM_gpt_step's training step with the forward under AutocastGuard(cpu,
// bfloat16) (matmuls, linears and attention in bfloat16 on the float32
// parameters; backward outside the guard, as in PyTorch) against the same
// step without it. --loom_amp_turns=N registers each pair N times as
// "<name>/turn:k", the two taking turns (the order reversed every other
// turn), so run.py can divide the times turn by turn (Note [The amp group]
// in run.py). The operands, the model and its optimizer are made and warmed
// up once per process (a slow bfloat16 call is not paid twice a turn), and
// the float32 and bfloat16 steps train the same model.

// a @ b with a, b: (n, n) in `dtype`, the same values in either dtype.
struct AmpGemm {
  loom::Tensor a, b;
};

AmpGemm& amp_gemm(int64_t n, loom::DType dtype) {
  static std::map<std::pair<int64_t, loom::DType>, AmpGemm> cache;
  auto it = cache.find({n, dtype});
  if (it != cache.end()) return it->second;
  loom::manual_seed(0);
  AmpGemm g{loom::rand({n, n}).to(dtype), loom::rand({n, n}).to(dtype)};
  benchmark::DoNotOptimize(loom::matmul(g.a, g.b).raw_data_ptr());  // warm-up
  return cache.emplace(std::make_pair(n, dtype), std::move(g)).first->second;
}

void BM_amp_gemm(benchmark::State& state, int64_t n, loom::DType dtype) {
  AmpGemm& g = amp_gemm(n, dtype);
  for (auto _ : state) {
    loom::Tensor c = loom::matmul(g.a, g.b);
    benchmark::DoNotOptimize(c.raw_data_ptr());
  }
  state.counters["flops"] = benchmark::Counter(2.0 * n * n * n * static_cast<double>(state.iterations()),
                                               benchmark::Counter::kIsRate);
}

// BM_gpt_step's model, optimizer and batch, shared by the float32 and the
// autocast rows; warmed[autocast] once that mode has run a step.
struct AmpGpt {
  loom::models::GPT gpt = bench_gpt();
  loom::optim::AdamW optimizer{gpt->parameters(), loom::optim::AdamWOptions(3e-4)};
  loom::Tensor x = loom::randint(96, {16, 128}), y = loom::randint(96, {16, 128});
  bool warmed[2] = {false, false};
};

void BM_amp_gpt_step(benchmark::State& state, bool autocast) {
  static AmpGpt m;
  auto step = [&] {
    loom::Tensor loss;
    {
      loom::AutocastGuard guard(loom::Device::cpu(), loom::kBFloat16, autocast);
      loss = m.gpt->loss(m.x, m.y);
    }
    m.optimizer.zero_grad();
    loss.backward();
    m.optimizer.step();
    return loss;
  };
  if (!m.warmed[autocast]) {
    step();
    m.warmed[autocast] = true;
  }
  for (auto _ : state) benchmark::DoNotOptimize(step().raw_data_ptr());
  state.counters["tokens"] = benchmark::Counter(16.0 * 128 * static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate);
}

// Registered in table order. Names are the workload keys shared with
// torch_ops.py and run.py.
void register_benchmarks() {
  // Wall-clock time for all: the work runs on several threads.
  auto reg = [](const std::string& name, auto&& fn, auto... args) {
    return benchmark::RegisterBenchmark(name.c_str(), fn, args...)->UseRealTime();
  };
  using benchmark::kMicrosecond;
  using benchmark::kMillisecond;
  using benchmark::kNanosecond;
  reg("peak_fma", BM_peak_fma)->Unit(kMillisecond);
  for (int64_t n : {256, 512, 1024, 2048})
    reg("sgemm_" + std::to_string(n), BM_gemm, n, n, n, false, false)->Unit(kMillisecond);
  // nn::Linear(784, 512) and (512, 256) at batch 128: forward x @ W^T,
  // grad_x = gy @ W, grad_W = gy^T @ x (M x K x N below).
  struct GemmShape {
    const char* name;
    int64_t m, k, n;
    bool trans_a, trans_b;
  };
  for (const GemmShape& s : {GemmShape{"mlp_fc1_fwd", 128, 784, 512, false, true},
                             GemmShape{"mlp_fc1_grad_x", 128, 512, 784, false, false},
                             GemmShape{"mlp_fc1_grad_w", 512, 128, 784, true, false},
                             GemmShape{"mlp_fc2_fwd", 128, 512, 256, false, true},
                             GemmShape{"mlp_fc2_grad_x", 128, 256, 512, false, false},
                             GemmShape{"mlp_fc2_grad_w", 256, 128, 512, true, false}})
    reg(s.name, BM_gemm, s.m, s.k, s.n, s.trans_a, s.trans_b)->Unit(kMicrosecond);
  reg("add_f32", BM_add_f32, kStreamN)->Unit(kMillisecond);
  reg("stream_add", BM_stream_add, kStreamN)->Unit(kMillisecond);
  reg("sum_f32", BM_sum_f32, kStreamN)->Unit(kMillisecond);
  reg("softmax", BM_softmax)->Unit(kMillisecond);
  reg("layer_norm", BM_layer_norm)->Unit(kMillisecond);
  reg("softmax_fwd_bwd", BM_softmax_fwd_bwd)->Unit(kMillisecond);
  reg("layer_norm_fwd_bwd", BM_layer_norm_fwd_bwd)->Unit(kMillisecond);
  // The CNN's two layers and a ResNet9 128-channel 3x3 layer at batch 128,
  // that layer also on the 1x1 maps it sees in needle's ResNet9 on 32x32
  // input; "_fwd" rows time the forward alone.
  const ConvShape cnn_conv1{"cnn_conv1", 128, 1, 28, 28, 32, 3, 1};
  const ConvShape cnn_conv2{"cnn_conv2", 128, 32, 14, 14, 64, 3, 1};
  const ConvShape resnet9_conv128{"resnet9_conv128", 128, 128, 16, 16, 128, 3, 1};
  const ConvShape resnet9_conv128_1x1map{"resnet9_conv128_1x1map", 128, 128, 1, 1, 128, 3, 1};
  for (const ConvShape& s : {cnn_conv1, cnn_conv2, resnet9_conv128, resnet9_conv128_1x1map})
    reg(s.name, BM_conv2d, s, true)->Unit(kMillisecond);
  for (const ConvShape& s : {cnn_conv2, resnet9_conv128})
    reg(std::string(s.name) + "_fwd", BM_conv2d, s, false)->Unit(kMillisecond);
  reg("attn_fb", BM_attn_fb, 8, 8, 512, 64)->Unit(kMillisecond);
  reg("lstm_step", BM_lstm_step)->Unit(kMillisecond);
  reg("gpt_step", BM_gpt_step)->Unit(kMillisecond);
  reg("gpt_generate", BM_gpt_generate)->Unit(kMillisecond);
  reg("attn_mem_4096", BM_attn_mem)->Unit(kMillisecond)->Iterations(1);
  reg("dispatch_add", BM_dispatch_add, false)->Unit(kNanosecond);
  reg("dispatch_add_autograd", BM_dispatch_add, true)->Unit(kNanosecond);
  // Quantized generation. With --loom_gen_turns=N > 1 every gen row is
  // registered N times, as "gen_large_int8/turn:k", the formats of a size
  // taking turns (the order reversed every other turn), so run.py can
  // divide the float32 time by the quantized one turn by turn, each pair
  // run back to back in one process under the same load (Note [The quant
  // group] in run.py).
  struct GenFormat {
    const char* name;
    std::optional<loom::QuantScheme> scheme;
  };
  const std::vector<GenFormat> formats{
      {"fp32", std::nullopt}, {"int8", loom::QuantScheme::Int8}, {"int4", loom::QuantScheme::Int4}};
  for (int turn = 1; turn <= g_gen_turns; ++turn)
    for (const GenSpec* spec : {&kGenSmall, &kGenLarge})
      for (size_t i = 0; i < formats.size(); ++i) {
        const GenFormat& f = formats[turn % 2 == 1 ? i : formats.size() - 1 - i];
        std::string name = std::string("gen_") + spec->size + "_" + f.name;
        if (g_gen_turns > 1) name += "/turn:" + std::to_string(turn);
        reg(name, BM_gen, *spec, f.scheme)->Unit(kMillisecond);
      }
  // bfloat16 rows. Without --loom_amp_turns, each once under its own name;
  // with it, each beside its float32 counterpart, N turns of
  // "<name>/turn:k" (see "bfloat16 mixed precision" above).
  struct AmpPair {
    const char* fp32;
    const char* bf16;
    void (*run)(benchmark::State&, bool bf16);
  };
  const std::vector<AmpPair> amp_pairs{
      {"sgemm_2048", "bf16_gemm_2048",
       [](benchmark::State& s, bool bf16) { BM_amp_gemm(s, 2048, bf16 ? loom::kBFloat16 : loom::kFloat32); }},
      {"gpt_step", "gpt_step_bf16", [](benchmark::State& s, bool bf16) { BM_amp_gpt_step(s, bf16); }}};
  if (g_amp_turns == 0)
    for (const AmpPair& p : amp_pairs) reg(p.bf16, p.run, true)->Unit(kMillisecond);
  for (int turn = 1; turn <= g_amp_turns; ++turn)
    for (const AmpPair& p : amp_pairs)
      for (int i = 0; i < 2; ++i) {
        const bool bf16 = (i == 1) == (turn % 2 == 1);  // odd turns: float32 first
        reg(std::string(bf16 ? p.bf16 : p.fp32) + "/turn:" + std::to_string(turn), p.run, bf16)->Unit(kMillisecond);
      }
}

}  // namespace

int main(int argc, char** argv) {
  // Take out --loom_threads=N, --loom_gen_turns=N and --loom_amp_turns=N;
  // Google Benchmark rejects flags it does not know.
  std::vector<char*> args;
  const char* flag = "--loom_threads=";
  const char* turns_flag = "--loom_gen_turns=";
  const char* amp_turns_flag = "--loom_amp_turns=";
  for (int k = 0; k < argc; ++k) {
    if (std::strncmp(argv[k], flag, std::strlen(flag)) == 0)
      loom::set_num_threads(std::atoi(argv[k] + std::strlen(flag)));
    else if (std::strncmp(argv[k], turns_flag, std::strlen(turns_flag)) == 0)
      g_gen_turns = std::max(1, std::atoi(argv[k] + std::strlen(turns_flag)));
    else if (std::strncmp(argv[k], amp_turns_flag, std::strlen(amp_turns_flag)) == 0)
      g_amp_turns = std::max(0, std::atoi(argv[k] + std::strlen(amp_turns_flag)));
    else
      args.push_back(argv[k]);
  }
  g_threads = loom::get_num_threads();
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  register_benchmarks();
  benchmark::AddCustomContext("loom_threads", std::to_string(g_threads));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
