// The vectorized float kernels for AVX512 (Note [Vectorized CPU kernels] in
// cpu_vec.h). Built with this ISA's -m flags (CMakeLists.txt); only used after
// CPUID says the CPU has it. Everything here has internal linkage but the one
// entry point.
#if defined(__x86_64__) || defined(__i386__)

// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized once inlined (see
// cpu_gemm_avx512.cpp); they are gnu_inline, never emitted out of line.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "backend/cpu/cpu_vec.h"

namespace loom::cpu {
namespace {
#define LOOM_VEC_BYTES 64
#define LOOM_VEC_LOAD_DOUBLE(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
// AVX-512F's own vcvtph2ps / vcvtps2ph on 16 lanes.
#define LOOM_VEC_LOAD_HALF(p) _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))
#define LOOM_VEC_STORE_HALF(p, v)                   \
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), \
                      _mm512_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#include "backend/cpu/cpu_vec_body.h"
}  // namespace

VecKernels vec_kernels_avx512() { return make_vec_kernels("avx512"); }

}  // namespace loom::cpu

#endif
