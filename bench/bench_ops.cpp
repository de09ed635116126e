// Kernel micro-benchmarks: add and sum over 2^22 float32 values, and a
// 512x512x512 float32 matmul. bench/torch_ops.py times the same workloads in
// PyTorch; bench/run.py runs both and prints them side by side.
//
// Extra flag (before Google Benchmark's own): --loom_threads=N sets
// loom::set_num_threads(N), so both sides can use the same thread count.
#include <benchmark/benchmark.h>
#include <loom/loom.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int64_t kElementwiseN = int64_t{1} << 22;
constexpr int64_t kMatmulN = 512;

// c = a + b, a, b, c: (2^22,). Bytes: two reads and one write per element.
void BM_add_f32(benchmark::State& state) {
  const int64_t n = state.range(0);
  loom::Tensor a = loom::rand({n}), b = loom::rand({n});
  for (auto _ : state) {
    loom::Tensor c = a + b;
    benchmark::DoNotOptimize(c.raw_data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 3 * static_cast<int64_t>(sizeof(float)));
}

// s = a.sum(), a: (2^22,). Bytes: one read per element.
void BM_sum_f32(benchmark::State& state) {
  const int64_t n = state.range(0);
  loom::Tensor a = loom::rand({n});
  for (auto _ : state) {
    loom::Tensor s = a.sum();
    benchmark::DoNotOptimize(s.raw_data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * static_cast<int64_t>(sizeof(float)));
}

// c = a @ b, a, b, c: (512, 512). Items are flops (2 * M * N * K); bytes are
// the three matrices once.
void BM_matmul_f32(benchmark::State& state) {
  const int64_t n = state.range(0);
  loom::Tensor a = loom::rand({n, n}), b = loom::rand({n, n});
  for (auto _ : state) {
    loom::Tensor c = a.matmul(b);
    benchmark::DoNotOptimize(c.raw_data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * 2 * n * n * n);
  state.SetBytesProcessed(state.iterations() * 3 * n * n * static_cast<int64_t>(sizeof(float)));
}

// Wall-clock time: the kernels run on several threads.
BENCHMARK(BM_add_f32)->Arg(kElementwiseN)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_sum_f32)->Arg(kElementwiseN)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_matmul_f32)->Arg(kMatmulN)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  // Take out --loom_threads=N; Google Benchmark rejects flags it does not know.
  std::vector<char*> args;
  const char* flag = "--loom_threads=";
  for (int k = 0; k < argc; ++k) {
    if (std::strncmp(argv[k], flag, std::strlen(flag)) == 0)
      loom::set_num_threads(std::atoi(argv[k] + std::strlen(flag)));
    else
      args.push_back(argv[k]);
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::AddCustomContext("loom_threads", std::to_string(loom::get_num_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
