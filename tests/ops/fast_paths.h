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

// LOOM_CPU_ISA = isa for the scope (the GEMM and the ISA-cloned kernels).
struct IsaGuard {
  explicit IsaGuard(GemmIsa isa) {
    setenv("LOOM_CPU_ISA", loom::cpu::gemm_isa_name(isa), 1);
    loom::cpu::testing::gemm_reload_isa();
  }
  ~IsaGuard() {
    unsetenv("LOOM_CPU_ISA");
    loom::cpu::testing::gemm_reload_isa();
  }
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
