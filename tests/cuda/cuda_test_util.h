// What the CUDA suites share: the skip without a GPU, and comparisons of a
// CUDA result with the CPU reference computed on the same inputs.
#pragma once

#include <gtest/gtest.h>
#include <loom/cuda.h>
#include <loom/loom.h>

#include <cmath>
#include <functional>
#include <string>

namespace loom::test {

// Skips the test, saying why, where no GPU is present (or the build has no
// CUDA). Every CUDA test starts with it.
#define LOOM_REQUIRE_GPU()                                                                        \
  do {                                                                                            \
    if (!::loom::cuda::is_available())                                                            \
      GTEST_SKIP() << (::loom::cuda::is_built() ? "no CUDA device on this machine (loom was built with CUDA)" \
                                                : "loom was built without CUDA support");         \
  } while (0)

// The loom::Error message `f` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// `gpu` (a CUDA tensor) equals `cpu` (the CPU reference) in shape and dtype,
// and elementwise within rtol/atol (NaN where the reference has NaN, the same
// infinities). rtol = atol = 0 asks for the same bits.
inline ::testing::AssertionResult close_to_cpu(const Tensor& gpu, const Tensor& cpu, double rtol, double atol) {
  if (!gpu.device().is_cuda()) return ::testing::AssertionFailure() << "result is on " << gpu.device().str();
  const Tensor g = gpu.cpu();
  if (g.sizes() != cpu.sizes())
    return ::testing::AssertionFailure() << "shape " << shape_str(g.sizes()) << " vs " << shape_str(cpu.sizes());
  if (g.dtype() != cpu.dtype())
    return ::testing::AssertionFailure() << "dtype " << dtype_name(g.dtype()) << " vs " << dtype_name(cpu.dtype());
  const Tensor a = g.to(kFloat64).contiguous().flatten(), b = cpu.to(kFloat64).contiguous().flatten();
  const double* pa = a.data_ptr<double>();
  const double* pb = b.data_ptr<double>();
  for (int64_t k = 0; k < a.numel(); ++k) {
    const double x = pa[k], y = pb[k];
    if (std::isnan(y) ? std::isnan(x) : (std::isinf(y) ? x == y : std::abs(x - y) <= atol + rtol * std::abs(y)))
      continue;
    return ::testing::AssertionFailure() << "element " << k << ": cuda " << x << ", cpu " << y << " (rtol " << rtol
                                         << ", atol " << atol << ")";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace loom::test
