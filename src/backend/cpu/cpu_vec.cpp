// The portable build of the vectorized float kernels (16-byte registers: SSE2
// on x86-64) and the choice of table at run time (Note [Vectorized CPU
// kernels] in cpu_vec.h).
#include "backend/cpu/cpu_vec.h"

#include <atomic>
#include <cstdint>

#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/testing.h"
#include "loom/dtype.h"  // Half: the portable float16 conversions

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

// Note [Vectorized CPU kernels]: widen a strip of each operand, run the
// float32 function on the floats, round the strip into y.
void unary_lowp(const VecKernels& k, VecLowp fmt, VecUnary op, const uint16_t* x, uint16_t* y, int64_t n) {
  const bool bf16 = fmt == VecLowp::BFloat16;
  const auto widen = bf16 ? k.bf16_to_f32 : k.f16_to_f32;
  const auto narrow = bf16 ? k.f32_to_bf16 : k.f32_to_f16;
  alignas(64) float buf[kLowpStrip];
  for (int64_t i = 0; i < n; i += kLowpStrip) {
    const int64_t len = n - i < kLowpStrip ? n - i : kLowpStrip;
    widen(x + i, buf, len);
    k.unary_f32(op, buf, buf, len);
    narrow(buf, y + i, len);
  }
}

void binary_lowp(const VecKernels& k, VecLowp fmt, VecBinary op, VecOperands mode, const uint16_t* a,
                 const uint16_t* b, uint16_t* y, int64_t n) {
  const bool bf16 = fmt == VecLowp::BFloat16;
  const auto widen = bf16 ? k.bf16_to_f32 : k.f16_to_f32;
  const auto narrow = bf16 ? k.f32_to_bf16 : k.f32_to_f16;
  // A scalar operand (VecOperands) is widened once, into element 0 of its
  // buffer; the result overwrites the other (a tensor operand's strip).
  alignas(64) float fa[kLowpStrip], fb[kLowpStrip];
  if (mode == VecOperands::ScalarA) widen(a, fa, 1);
  if (mode == VecOperands::ScalarB) widen(b, fb, 1);
  float* fy = mode == VecOperands::ScalarA ? fb : fa;
  for (int64_t i = 0; i < n; i += kLowpStrip) {
    const int64_t len = n - i < kLowpStrip ? n - i : kLowpStrip;
    if (mode != VecOperands::ScalarA) widen(a + i, fa, len);
    if (mode != VecOperands::ScalarB) widen(b + i, fb, len);
    k.binary_f32(op, mode, fa, fb, fy, len);
    narrow(fy, y + i, len);
  }
}

void gelu_backward_lowp(const VecKernels& k, VecLowp fmt, const uint16_t* g, const uint16_t* x, uint16_t* y,
                        int64_t n, bool tanh_form) {
  const bool bf16 = fmt == VecLowp::BFloat16;
  const auto widen = bf16 ? k.bf16_to_f32 : k.f16_to_f32;
  const auto narrow = bf16 ? k.f32_to_bf16 : k.f32_to_f16;
  alignas(64) float fg[kLowpStrip], fx[kLowpStrip];
  for (int64_t i = 0; i < n; i += kLowpStrip) {
    const int64_t len = n - i < kLowpStrip ? n - i : kLowpStrip;
    widen(g + i, fg, len);
    widen(x + i, fx, len);
    k.gelu_backward_f32(fg, fx, fg, len, tanh_form);
    narrow(fg, y + i, len);
  }
}

double fold_partials(VecReduce op, double acc, double partial) {
  if (op == VecReduce::Sum) return acc + partial;
  if (acc != acc) return acc;
  if (partial != partial || (op == VecReduce::Max ? partial > acc : partial < acc)) return partial;
  return acc;
}

}  // namespace loom::cpu
