// What the fast-kernel tests (test_ops_pool.cpp, test_ops_attention.cpp)
// share: the GEMM ISAs this machine runs, and scoped switches for the ISA,
// the fast paths and the thread count, restored on scope exit.
#pragma once

#include <loom/loom.h>
#include <stdlib.h>

#include <vector>

// Internal headers (plain declarations): the ISA choice and the fast-path switch.
#include "../../src/backend/cpu/cpu_gemm.h"
#include "../../src/backend/cpu/cpu_vec.h"

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
    loom::cpu::gemm_reload_isa();
  }
  ~IsaGuard() {
    unsetenv("LOOM_CPU_ISA");
    loom::cpu::gemm_reload_isa();
  }
};

// The reference kernels for the scope (set_vec_enabled(false)).
struct ReferenceGuard {
  ReferenceGuard() { loom::cpu::set_vec_enabled(false); }
  ~ReferenceGuard() { loom::cpu::set_vec_enabled(true); }
};

struct ThreadsGuard {
  explicit ThreadsGuard(int n) : saved(loom::get_num_threads()) { loom::set_num_threads(n); }
  ~ThreadsGuard() { loom::set_num_threads(saved); }
  int saved;
};

}  // namespace loom_test
