// The portable build of the vectorized float kernels (16-byte registers: SSE2
// on x86-64) and the choice of table at run time (Note [Vectorized CPU
// kernels] in cpu_vec.h).
#include "backend/cpu/cpu_vec.h"

#include <atomic>
#include <cstdint>

#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/testing.h"

namespace loom::cpu {
namespace {
#define LOOM_VEC_BYTES 16
#include "backend/cpu/cpu_vec_body.h"
}  // namespace

VecKernels vec_kernels_portable() { return make_vec_kernels("portable"); }

const VecKernels& vec_kernels(GemmIsa isa) {
  static const VecKernels portable = vec_kernels_portable();
#if defined(__x86_64__) || defined(__i386__)
  static const VecKernels avx2 = gemm_best_isa() >= GemmIsa::Avx2 ? vec_kernels_avx2() : portable;
  static const VecKernels avx512 = gemm_best_isa() >= GemmIsa::Avx512 ? vec_kernels_avx512() : avx2;
  if (isa > gemm_best_isa()) isa = gemm_best_isa();
  switch (isa) {
    case GemmIsa::Avx512: return avx512;
    case GemmIsa::Avx2: return avx2;
    case GemmIsa::Portable: return portable;
  }
#endif
  (void)isa;
  return portable;
}

namespace {
std::atomic<bool> g_vec_enabled{true};
}  // namespace

bool vec_enabled() { return g_vec_enabled.load(std::memory_order_relaxed); }
void testing::set_vec_enabled(bool on) { g_vec_enabled.store(on, std::memory_order_relaxed); }

const VecKernels& vec() { return vec_kernels(gemm_isa()); }

double fold_partials(VecReduce op, double acc, double partial) {
  if (op == VecReduce::Sum) return acc + partial;
  if (acc != acc) return acc;
  if (partial != partial || (op == VecReduce::Max ? partial > acc : partial < acc)) return partial;
  return acc;
}

}  // namespace loom::cpu
