// bench_gpu: loom's CUDA backend against the hardware and the references it
// should be close to (issue 23), for `make bench-gpu`:
//
//   bench_gpu --json OUT.json [--reps R] [--warmup W] [--gpt-steps S]
//             [--only gemm,elementwise,attention,gpt] [--llmc-tokens-per-s X]
//
// 1. gemm: loom::matmul on CUDA tensors against cuBLAS called directly on the
//    same buffers (cublasGemmEx; float32 with TF32 off, float16 and bfloat16
//    with 32F compute), at 4096^3 and 2048^3: TFLOP/s (2 M N K flops) of
//    each and loom / cuBLAS. Target: SGEMM >= 0.90.
// 2. elementwise: loom add, mul and copy_ of 2^28 float32 elements against
//    cudaMemcpyAsync device to device of the same bytes: GB/s counting bytes
//    read + written, and loom / memcpy. Target >= 0.85.
// 3. attention: scaled_dot_product_attention at B=8, H=12, T=1024, D=64,
//    causal, float32, forward and forward + backward: TFLOP/s (forward
//    4 B H T^2 D, halved for causal; backward 2.5x forward) and the share of
//    the H100's peaks below.
// 4. gpt: GPT-2 124M (12 layers, d_model 768, 12 heads, context 1024,
//    vocabulary 50257) trained with AdamW on batches of 8 x 1024 random
//    tokens: tokens/s, beside llm.c's single-H100 figure where one is known.
//    Target: within 1.2x of llm.c.
//
// GPU times come from cuda::Event pairs on the current stream around each
// run, after warm-up runs; rows report the median. A section whose op has
// no CUDA kernel (loom::Error "... has no kernel ...") prints "not run:" with
// the message and the others go on. Without a GPU (or in a build without
// CUDA) it says so and exits with status 2.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "loom/cuda.h"
#include "loom/io/file.h"
#include "loom/loom.h"

// The cuBLAS and cudaMemcpy references: CMake defines LOOM_BENCH_CUBLAS and
// links CUDA::cublas only when loom has its CUDA backend, so a CPU-only
// build compiles without them (and never runs them: there is no GPU).
#if defined(LOOM_BENCH_CUBLAS) && __has_include(<cublas_v2.h>)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#define LOOM_BENCH_HAVE_CUBLAS 1
#else
#define LOOM_BENCH_HAVE_CUBLAS 0
#endif

using namespace loom;

namespace {

// NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67 TFLOPS;
// BF16 / FP16 Tensor Core 1,979 TFLOPS "with sparsity", so 989 dense.
constexpr double kH100Fp32Tflops = 67.0;
constexpr double kH100Bf16DenseTflops = 989.0;

// llm.c's tokens/s for GPT-2 (124M) on one H100: none found. The llm.c README
// (https://github.com/karpathy/llm.c) gives no throughput, and its GPT-2
// (124M) reproduction, https://github.com/karpathy/llm.c/discussions/481
// ("Reproducing GPT-2 (124M) in llm.c in 90 minutes for $20"), was run on an
// 8x A100 80GB SXM node, not one H100. Rather than invent a number, the gpt
// row prints loom's tokens/s alone unless --llmc-tokens-per-s supplies one.
constexpr const char* kLlmcNoFigure =
    "no published single-H100 llm.c figure found (llm.c README; discussion #481 "
    "https://github.com/karpathy/llm.c/discussions/481 ran on 8x A100 80GB SXM); "
    "pass --llmc-tokens-per-s to compare";

struct Options {
  int reps = 10;
  int warmup = 3;
  int gpt_steps = 10;
  double llmc_tokens_per_s = 0;  // 0: none known
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Milliseconds of each of `reps` runs of fn on the current stream, timed by
// an event pair around each, after `warmup` untimed runs.
std::vector<double> time_gpu(const std::function<void()>& fn, const Options& o) {
  for (int k = 0; k < o.warmup; ++k) fn();
  cuda::synchronize();
  std::vector<double> ms;
  for (int r = 0; r < o.reps; ++r) {
    cuda::Event start(true), end(true);
    start.record();
    fn();
    end.record();
    end.synchronize();
    ms.push_back(start.elapsed_ms(end));
  }
  return ms;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}
std::string json_list(const std::vector<double>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t k = 0; k < v.size(); ++k) os << (k ? ", " : "") << v[k];
  return os.str() + "]";
}
std::string json_not_run(const std::string& msg) { return "{\"not_run\": \"" + json_escape(msg) + "\"}"; }

// One table line: what, loom's number, the reference's, their ratio, the target.
void print_row(const char* section, const std::string& row, double loom, const std::string& unit, double ref,
               const std::string& ref_name, double target) {
  std::printf("%-12s %-30s %10.2f %-9s", section, row.c_str(), loom, unit.c_str());
  if (ref > 0) {
    const double ratio = loom / ref;
    std::printf("  %-8s %10.2f  loom/ref %5.3f", ref_name.c_str(), ref, ratio);
    if (target > 0) std::printf("  (target >= %.2f: %s)", target, ratio >= target ? "PASS" : "FAIL");
  }
  std::printf("\n");
  std::fflush(stdout);
}
void print_not_run(const char* section, const std::string& row, const std::string& msg) {
  std::printf("%-12s %-30s not run: %s\n", section, row.c_str(), msg.c_str());
  std::fflush(stdout);
}

TensorOptions on_gpu(DType t = kFloat32) { return TensorOptions().dtype(t).device(Device::cuda()); }

#if LOOM_BENCH_HAVE_CUBLAS
cudaStream_t current_cuda_stream() { return static_cast<cudaStream_t>(cuda::current_stream().handle()); }

struct Cublas {
  cublasHandle_t handle = nullptr;
  Cublas() {
    LOOM_CHECK(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS, "bench_gpu: cublasCreate failed");
    // Plain float32: no TF32 (loom's GEMMs keep it off too).
    cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
  }
  ~Cublas() { cublasDestroy(handle); }
  Cublas(const Cublas&) = delete;
  Cublas& operator=(const Cublas&) = delete;
};

cudaDataType_t cuda_type(DType t) {
  if (t == kFloat16) return CUDA_R_16F;
  if (t == kBFloat16) return CUDA_R_16BF;
  return CUDA_R_32F;
}

// c (M, N) = a (M, K) @ b (K, N), all row-major and contiguous: cuBLAS is
// column-major, so it computes c^T = b^T a^T, which reads the same memory.
void cublas_gemm(cublasHandle_t h, const Tensor& a, const Tensor& b, Tensor& c) {
  const int m = static_cast<int>(a.size(0)), k = static_cast<int>(a.size(1)), n = static_cast<int>(b.size(1));
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t t = cuda_type(a.dtype());
  cublasSetStream(h, current_cuda_stream());
  const cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b.raw_data_ptr(), t, n,
                                        a.raw_data_ptr(), t, k, &beta, c.raw_data_ptr(), t, n, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT);
  LOOM_CHECK(s == CUBLAS_STATUS_SUCCESS, "bench_gpu: cublasGemmEx failed with status ", static_cast<int>(s));
}
#endif

// ---- 1. GEMM ----
std::string bench_gemm(const Options& o) {
  struct Case {
    const char* name;
    DType dtype;
  };
  const Case cases[] = {{"sgemm float32", kFloat32}, {"hgemm float16", kFloat16}, {"hgemm bfloat16", kBFloat16}};
#if LOOM_BENCH_HAVE_CUBLAS
  Cublas blas;
#endif
  std::ostringstream os;
  os << "{";
  bool first = true;
  for (const Case& c : cases)
    for (int64_t n : {4096, 2048}) {
      const std::string row = std::string(c.name) + " " + std::to_string(n) + "^3";
      os << (first ? "" : ", ") << "\"" << row << "\": ";
      first = false;
      try {
        // a, b: (n, n) on the GPU; values from the CPU's randn, then cast.
        const Tensor a = randn({n, n}).to(Device::cuda()).to(c.dtype);
        const Tensor b = randn({n, n}).to(Device::cuda()).to(c.dtype);
        const double flops = 2.0 * static_cast<double>(n) * n * n;
        std::fprintf(stderr, "gemm %s ...\n", row.c_str());
        // cuBLAS first, so its number is printed even where loom has no kernel.
        double ref_tflops = 0;
        std::vector<double> ref_ms;
#if LOOM_BENCH_HAVE_CUBLAS
        Tensor out = empty({n, n}, on_gpu(c.dtype));
        ref_ms = time_gpu([&] { cublas_gemm(blas.handle, a, b, out); }, o);
        ref_tflops = flops / (median(ref_ms) * 1e-3) / 1e12;
#endif
        std::vector<double> loom_ms;
        try {
          loom_ms = time_gpu([&] { matmul(a, b); }, o);
        } catch (const std::exception& e) {
          const std::string msg = std::string(e.what()) + " (cuBLAS: " + std::to_string(ref_tflops) + " TFLOP/s)";
          print_not_run("gemm", row, msg);
          os << "{\"not_run\": \"" << json_escape(e.what()) << "\", \"cublas_ms\": " << json_list(ref_ms)
             << ", \"cublas_tflops\": " << ref_tflops << "}";
          continue;
        }
        const double loom_tflops = flops / (median(loom_ms) * 1e-3) / 1e12;
        print_row("gemm", row, loom_tflops, "TFLOP/s", ref_tflops, "cuBLAS", c.dtype == kFloat32 ? 0.90 : 0);
        os << "{\"loom_ms\": " << json_list(loom_ms) << ", \"cublas_ms\": " << json_list(ref_ms)
           << ", \"loom_tflops\": " << loom_tflops << ", \"cublas_tflops\": " << ref_tflops << "}";
      } catch (const std::exception& e) {
        print_not_run("gemm", row, e.what());
        os << json_not_run(e.what());
      }
    }
  return os.str() + "}";
}

// ---- 2. Elementwise ----
std::string bench_elementwise(const Options& o) {
  const int64_t n = int64_t{1} << 28;
  const double bytes = static_cast<double>(n) * 4;  // one float32 operand
  std::ostringstream os;
  os << "{";
  // a, b, dst: (2^28) float32, 1 GiB each.
  const Tensor a = full({n}, 1.5, on_gpu());
  const Tensor b = full({n}, 2.5, on_gpu());
  Tensor dst = empty({n}, on_gpu());

  double memcpy_gbs = 0;
  std::vector<double> memcpy_ms;
#if LOOM_BENCH_HAVE_CUBLAS
  std::fprintf(stderr, "elementwise memcpy ...\n");
  memcpy_ms = time_gpu(
      [&] {
        const cudaError_t err = cudaMemcpyAsync(dst.raw_data_ptr(), a.raw_data_ptr(), static_cast<size_t>(bytes),
                                                cudaMemcpyDeviceToDevice, current_cuda_stream());
        LOOM_CHECK(err == cudaSuccess, "bench_gpu: cudaMemcpyAsync failed: ", cudaGetErrorString(err));
      },
      o);
  memcpy_gbs = 2 * bytes / (median(memcpy_ms) * 1e-3) / 1e9;  // read + write
  print_row("elementwise", "cudaMemcpyAsync D2D 2^28 f32", memcpy_gbs, "GB/s", 0, "", 0);
#endif
  os << "\"memcpy_ms\": " << json_list(memcpy_ms) << ", \"memcpy_gbs\": " << memcpy_gbs;

  struct Case {
    const char* name;
    double operands;  // float32 operands read + written per element
    std::function<void()> run;
  };
  const Case cases[] = {{"add", 3, [&] { add(a, b); }},
                        {"mul", 3, [&] { mul(a, b); }},
                        {"copy", 2, [&] { dst.copy_(a); }}};
  for (const Case& c : cases) {
    const std::string row = std::string(c.name) + " 2^28 f32";
    os << ", \"" << c.name << "\": ";
    try {
      std::fprintf(stderr, "elementwise %s ...\n", c.name);
      const auto ms = time_gpu(c.run, o);
      const double gbs = c.operands * bytes / (median(ms) * 1e-3) / 1e9;
      print_row("elementwise", row, gbs, "GB/s", memcpy_gbs, "memcpy", 0.85);
      os << "{\"ms\": " << json_list(ms) << ", \"gbs\": " << gbs << "}";
    } catch (const std::exception& e) {
      print_not_run("elementwise", row, e.what());
      os << json_not_run(e.what());
    }
  }
  return os.str() + "}";
}

// ---- 3. Attention ----
std::string bench_attention(const Options& o) {
  const int64_t B = 8, H = 12, T = 1024, D = 64;
  // Forward: QK^T and PV, 2 flops a multiply-add each, half of it masked.
  const double fwd_flops = 4.0 * B * H * T * T * D / 2;
  const double fwd_bwd_flops = fwd_flops * (1 + 2.5);
  // q, k, v: (B, H, T, D) float32.
  Tensor q = randn({B, H, T, D}).to(Device::cuda());
  Tensor k = randn({B, H, T, D}).to(Device::cuda());
  Tensor v = randn({B, H, T, D}).to(Device::cuda());
  std::ostringstream os;
  os << "{\"peak_fp32_tflops\": " << kH100Fp32Tflops << ", \"peak_bf16_dense_tflops\": " << kH100Bf16DenseTflops;
  auto report = [&](const char* name, const std::vector<double>& ms, double flops) {
    const double tflops = flops / (median(ms) * 1e-3) / 1e12;
    const std::string row = std::string("sdpa causal f32 ") + name;
    print_row("attention", row, tflops, "TFLOP/s", 0, "", 0);
    std::printf("%-12s %-30s %5.1f%% of H100 FP32 peak (%.0f), %5.1f%% of dense BF16 tensor-core peak (%.0f)\n", "",
                "", 100 * tflops / kH100Fp32Tflops, kH100Fp32Tflops, 100 * tflops / kH100Bf16DenseTflops,
                kH100Bf16DenseTflops);
    os << ", \"" << name << "\": {\"ms\": " << json_list(ms) << ", \"tflops\": " << tflops
       << ", \"share_fp32_peak\": " << tflops / kH100Fp32Tflops
       << ", \"share_bf16_dense_peak\": " << tflops / kH100Bf16DenseTflops << "}";
  };
  try {
    std::fprintf(stderr, "attention forward ...\n");
    NoGradGuard no_grad;
    report("forward", time_gpu([&] { scaled_dot_product_attention(q, k, v, {}, 0.0, true); }, o), fwd_flops);
  } catch (const std::exception& e) {
    print_not_run("attention", "sdpa causal f32 forward", e.what());
    os << ", \"forward\": " << json_not_run(e.what());
  }
  try {
    std::fprintf(stderr, "attention forward+backward ...\n");
    q.requires_grad_();
    k.requires_grad_();
    v.requires_grad_();
    const Tensor grad_out = randn({B, H, T, D}).to(Device::cuda());
    // The gradients accumulate into q/k/v.grad() from the second run on: three
    // (B, H, T, D) adds, small beside the attention kernels.
    report("forward_backward",
           time_gpu([&] { scaled_dot_product_attention(q, k, v, {}, 0.0, true).backward(grad_out); }, o),
           fwd_bwd_flops);
  } catch (const std::exception& e) {
    print_not_run("attention", "sdpa causal f32 forward_backward", e.what());
    os << ", \"forward_backward\": " << json_not_run(e.what());
  }
  return os.str() + "}";
}

// ---- 4. GPT-2 124M training ----
std::string bench_gpt(const Options& o) {
  const int64_t batch = 8, seq = 1024, vocab = 50257;
  manual_seed(0);
  models::GPT gpt(models::GPTConfig{
      .n_layer = 12, .n_embd = 768, .n_head = 12, .block_size = 1024, .vocab_size = vocab, .dropout = 0.0});
  gpt->to(Device::cuda());
  optim::AdamW opt(gpt->parameters(), optim::AdamWOptions(3e-4));
  // x, y: (8, 1024) int64 tokens.
  const Tensor x = randint(vocab, {batch, seq}, on_gpu(kInt64));
  const Tensor y = randint(vocab, {batch, seq}, on_gpu(kInt64));
  auto step = [&] {
    opt.zero_grad(false);
    Tensor loss = gpt->loss(x, y);
    loss.backward();
    opt.step();
  };
  const int warmup = std::max(2, o.warmup);
  for (int k = 0; k < warmup; ++k) {
    std::fprintf(stderr, "gpt warm-up step %d/%d ...\n", k + 1, warmup);
    step();
  }
  cuda::synchronize();
  std::fprintf(stderr, "gpt %d timed steps ...\n", o.gpt_steps);
  // One event after each step: the per-step times without a host wait
  // between steps; the wall clock between two synchronizes gives tokens/s.
  std::vector<cuda::Event> marks;
  marks.emplace_back(true);
  marks.back().record();
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < o.gpt_steps; ++s) {
    step();
    marks.emplace_back(true);
    marks.back().record();
  }
  cuda::synchronize();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<double> step_ms;
  for (size_t s = 1; s < marks.size(); ++s) step_ms.push_back(marks[s - 1].elapsed_ms(marks[s]));
  const double tokens_per_s = static_cast<double>(o.gpt_steps * batch * seq) / seconds;
  std::ostringstream os;
  os << "{\"tokens_per_s\": " << tokens_per_s << ", \"step_ms\": " << json_list(step_ms)
     << ", \"median_step_ms\": " << median(step_ms) << ", \"batch\": " << batch << ", \"seq\": " << seq;
  if (o.llmc_tokens_per_s > 0) {
    // Target: within 1.2x of llm.c, i.e. loom / llm.c >= 1 / 1.2.
    print_row("gpt", "GPT-2 124M AdamW 8x1024", tokens_per_s, "tok/s", o.llmc_tokens_per_s, "llm.c", 1 / 1.2);
    os << ", \"llmc_tokens_per_s\": " << o.llmc_tokens_per_s << ", \"llmc_source\": \"--llmc-tokens-per-s\"}";
  } else {
    print_row("gpt", "GPT-2 124M AdamW 8x1024", tokens_per_s, "tok/s", 0, "", 0);
    std::printf("%-12s %-30s llm.c: %s\n", "", "", kLlmcNoFigure);
    os << ", \"llmc_tokens_per_s\": null, \"llmc_note\": \"" << json_escape(kLlmcNoFigure) << "\"}";
  }
  return os.str();
}

// Runs one section; an error (an op with no CUDA kernel, out of memory)
// becomes that section's "not run" and the others go on.
std::string run_section(const char* name, std::string (*fn)(const Options&), const Options& o) {
  try {
    return fn(o);
  } catch (const std::exception& e) {
    print_not_run(name, "", e.what());
    return json_not_run(e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string json, only;
  Options o;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    auto value = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "bench_gpu: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--json") json = value();
    else if (a == "--reps") o.reps = std::max(1, std::stoi(value()));
    else if (a == "--warmup") o.warmup = std::max(0, std::stoi(value()));
    else if (a == "--gpt-steps") o.gpt_steps = std::max(1, std::stoi(value()));
    else if (a == "--llmc-tokens-per-s") o.llmc_tokens_per_s = std::stod(value());
    else if (a == "--only") only = value();
    else {
      std::fprintf(stderr,
                   "usage: bench_gpu --json OUT.json [--reps R] [--warmup W] [--gpt-steps S] "
                   "[--only gemm,elementwise,attention,gpt] [--llmc-tokens-per-s X]\n");
      return 2;
    }
  }
  if (!cuda::is_built()) {
    std::printf("bench_gpu: loom was built without CUDA; nothing to measure\n");
    return 2;
  }
  if (!cuda::is_available()) {
    std::printf("bench_gpu: no CUDA device on this machine; nothing to measure\n");
    return 2;
  }
  if (json.empty()) {
    std::fprintf(stderr, "bench_gpu: --json OUT.json is required\n");
    return 2;
  }
  std::set<std::string> groups;
  std::stringstream ss(only);
  for (std::string g; std::getline(ss, g, ',');) groups.insert(g);
  auto want = [&](const char* g) { return groups.empty() || groups.count(g) > 0; };
  if (!LOOM_BENCH_HAVE_CUBLAS)
    std::printf("bench_gpu: built without cuBLAS headers: no cuBLAS or memcpy reference columns\n");
  std::printf("%-12s %-30s %10s %-9s  reference\n", "section", "row", "loom", "unit");
  std::ostringstream os;
  os << "{\"device_count\": " << cuda::device_count() << ", \"reps\": " << o.reps << ", \"warmup\": " << o.warmup;
  if (want("gemm")) os << ",\n \"gemm\": " << run_section("gemm", bench_gemm, o);
  if (want("elementwise")) os << ",\n \"elementwise\": " << run_section("elementwise", bench_elementwise, o);
  if (want("attention")) os << ",\n \"attention\": " << run_section("attention", bench_attention, o);
  if (want("gpt")) os << ",\n \"gpt\": " << run_section("gpt", bench_gpt, o);
  os << "}\n";
  const std::string text = os.str();
  try {
    io::write_file_atomic(json, text.data(), text.size());
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "bench_gpu: wrote %s\n", json.c_str());
  return 0;
}
