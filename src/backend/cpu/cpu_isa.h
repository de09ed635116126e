// ISA clones of a kernel body: one loop written once (always-inline
// templates) and compiled for AVX-512, AVX2 + FMA and the baseline ISA
// through gnu::target, the clone chosen at run time by gemm_isa() (Note [CPU
// ISA selection] in cpu_features.h). Used by the pooling, batch norm and
// Winograd transform kernels.
//
// Holds templates and macros: include it only in files built with the
// default flags, never in the per-ISA files (Note [GEMM design]).
#pragma once

#include "backend/cpu/cpu_features.h"

namespace loom::cpu {

// The clone for the ISA the kernels use now.
template <class Fn>
Fn isa_pick(Fn avx512, Fn avx2, Fn portable) {
  switch (gemm_isa()) {
    case GemmIsa::Avx512:
      return avx512;
    case GemmIsa::Avx2:
      return avx2;
    default:
      return portable;
  }
}

}  // namespace loom::cpu

#if defined(__x86_64__) || defined(__i386__)
#define LOOM_ISA_TARGET_AVX512 [[gnu::target("avx512f,fma")]]
#define LOOM_ISA_TARGET_AVX2 [[gnu::target("avx2,fma")]]
#else
// Off x86 gemm_isa() is always Portable: the three clones are the same code.
#define LOOM_ISA_TARGET_AVX512
#define LOOM_ISA_TARGET_AVX2
#endif

// LOOM_ISA_CLONES(head, name, params, avx512_attrs, body...) defines, under
// the template head `head` (or none):
//   void name_avx512 params, name_avx2 params, name_portable params
// each running the statement `body` compiled for its ISA, with the constant
// kIsa (a GemmIsa) naming that ISA for bodies that branch on it; and
//   name(), the clone isa_pick() chooses (a pointer to void params).
// avx512_attrs: more attributes of the AVX-512 clone (e.g. [[gnu::flatten]]),
// or nothing. Example (cpu_pool.cpp):
//   LOOM_ISA_CLONES(template <typename T>, avg_pool_planes,
//                   (const PoolPlanes<T>& a, int64_t p0, int64_t p1), , avg_pool_planes_body_any<T>(a, p0, p1))
#define LOOM_ISA_CLONES(head, name, params, avx512_attrs, ...)                      \
  head LOOM_ISA_TARGET_AVX512 avx512_attrs void name##_avx512 params {              \
    [[maybe_unused]] constexpr ::loom::cpu::GemmIsa kIsa = ::loom::cpu::GemmIsa::Avx512; \
    __VA_ARGS__;                                                                    \
  }                                                                                 \
  head LOOM_ISA_TARGET_AVX2 void name##_avx2 params {                               \
    [[maybe_unused]] constexpr ::loom::cpu::GemmIsa kIsa = ::loom::cpu::GemmIsa::Avx2; \
    __VA_ARGS__;                                                                    \
  }                                                                                 \
  head void name##_portable params {                                                \
    [[maybe_unused]] constexpr ::loom::cpu::GemmIsa kIsa = ::loom::cpu::GemmIsa::Portable; \
    __VA_ARGS__;                                                                    \
  }                                                                                 \
  head auto name()->void(*) params {                                                \
    return ::loom::cpu::isa_pick<void(*) params>(&name##_avx512, &name##_avx2, &name##_portable); \
  }
