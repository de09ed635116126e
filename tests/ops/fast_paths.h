// What the fast-kernel tests (tests/ops, test_fast_cpu.cpp) share: the GEMM
// ISAs this machine runs, scoped switches for the ISA, the fast paths and the
// thread count (restored on scope exit), and a tolerance comparison.
#pragma once

#include <loom/loom.h>
#include <stdlib.h>

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

// Internal headers (plain declarations): the ISA choice and the fast-path switch.
#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_vec.h"
#include "backend/cpu/testing.h"

namespace loom_test {

using loom::cpu::GemmIsa;

inline std::vector<GemmIsa> runnable_isas() {
  std::vector<GemmIsa> isas;
  for (GemmIsa isa : {GemmIsa::Portable, GemmIsa::Avx2, GemmIsa::Avx512})
    if (isa <= loom::cpu::gemm_best_isa()) isas.push_back(isa);
  return isas;
}

// Restores LOOM_CPU_ISA and the cached ISA choice on scope exit; use(isa)
// selects an ISA (the GEMM and the ISA-cloned kernels) until then.
class IsaEnvGuard {
 public:
  IsaEnvGuard() {
    const char* v = std::getenv("LOOM_CPU_ISA");
    had_ = v != nullptr;
    if (had_) saved_ = v;
  }
  ~IsaEnvGuard() {
    if (had_) setenv("LOOM_CPU_ISA", saved_.c_str(), 1);
    else unsetenv("LOOM_CPU_ISA");
    loom::cpu::testing::gemm_reload_isa();
  }
  IsaEnvGuard(const IsaEnvGuard&) = delete;
  IsaEnvGuard& operator=(const IsaEnvGuard&) = delete;
  void use(GemmIsa isa) {
    setenv("LOOM_CPU_ISA", loom::cpu::gemm_isa_name(isa), 1);
    loom::cpu::testing::gemm_reload_isa();
  }

 private:
  bool had_ = false;
  std::string saved_;
};

// LOOM_CPU_ISA = isa for the scope.
struct IsaGuard {
  explicit IsaGuard(GemmIsa isa) { env.use(isa); }
  IsaEnvGuard env;
};

// The reference kernels for the scope (set_vec_enabled(false)).
struct ReferenceGuard {
  ReferenceGuard() { loom::cpu::testing::set_vec_enabled(false); }
  ~ReferenceGuard() { loom::cpu::testing::set_vec_enabled(true); }
};

struct ThreadsGuard {
  explicit ThreadsGuard(int n) : saved(loom::get_num_threads()) { loom::set_num_threads(n); }
  ~ThreadsGuard() { loom::set_num_threads(saved); }
  int saved;
};

// The unary ops with vectorized float paths, with the tolerance of their
// float32 vector code against the reference loop (0, 0: bit for bit).
struct NamedUnary {
  const char* name;
  loom::Tensor (*fn)(const loom::Tensor&);
  double rtol, atol;
};
inline const NamedUnary kUnary[] = {
    {"neg", [](const loom::Tensor& x) { return loom::neg(x); }, 0, 0},
    {"abs", [](const loom::Tensor& x) { return loom::abs(x); }, 0, 0},
    {"relu", [](const loom::Tensor& x) { return loom::relu(x); }, 0, 0},
    {"sqrt", [](const loom::Tensor& x) { return loom::sqrt(x); }, 0, 0},
    {"rsqrt", [](const loom::Tensor& x) { return loom::rsqrt(x); }, 0, 0},
    {"exp", [](const loom::Tensor& x) { return loom::exp(x); }, 3e-7, 1e-37},
    {"log", [](const loom::Tensor& x) { return loom::log(x); }, 3e-7, 1e-37},
    {"tanh", [](const loom::Tensor& x) { return loom::tanh(x); }, 3e-7, 1e-37},
    {"sigmoid", [](const loom::Tensor& x) { return loom::sigmoid(x); }, 3e-7, 1e-37},
    {"silu", [](const loom::Tensor& x) { return loom::silu(x); }, 1e-6, 1e-37},
    // The reference's 0.5 x (1 + tanh(u)) cancels for negative x (absolute
    // error up to ~|x| 2^-24); the fast path computes x sigmoid(2u).
    {"gelu_tanh", [](const loom::Tensor& x) { return loom::gelu(x, "tanh"); }, 1e-5, 1e-6},
    // Same cancellation in the reference's 0.5 x (1 + erf(x / sqrt 2)).
    {"gelu", [](const loom::Tensor& x) { return loom::gelu(x); }, 1e-5, 1e-6},
};

// t's values as doubles, in row-major order.
inline std::vector<double> flat(const loom::Tensor& t) {
  return t.to(loom::kFloat64).contiguous().to_vector<double>();
}

// |got - want| <= tol (1 + |want|) element by element, shapes equal.
inline void expect_close(const loom::Tensor& got, const loom::Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const std::vector<double> g = flat(got), w = flat(want);
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_LE(std::abs(g[i] - w[i]), tol * (1 + std::abs(w[i])))
        << what << " at " << i << ": got " << g[i] << ", want " << w[i];
}

}  // namespace loom_test
