// The vectorized float kernels for AVX2 (Note [Vectorized CPU kernels] in
// cpu_vec.h). Built with this ISA's -m flags (CMakeLists.txt); only used after
// CPUID says the CPU has it. Everything here has internal linkage but the one
// entry point.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>  // gnu_inline intrinsics: never emitted out of line

#include <cstdint>

#include "backend/cpu/cpu_vec.h"

namespace loom::cpu {
namespace {
#define LOOM_VEC_BYTES 32
#define LOOM_VEC_LOAD_DOUBLE(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
// F16C (-mf16c; every AVX2 CPU has it, and vec_kernels checks).
#define LOOM_VEC_LOAD_HALF(p) _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))
#define LOOM_VEC_STORE_HALF(p, v) \
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#include "backend/cpu/cpu_vec_body.h"
}  // namespace

VecKernels vec_kernels_avx2() { return make_vec_kernels("avx2"); }

}  // namespace loom::cpu

#endif
