// What the CPU running loom offers: the instruction set the kernels use
// (CPUID, lowered by LOOM_CPU_ISA) and the cache sizes the blocked kernels
// are sized for, both read at run time.
//
// Note [CPU ISA selection]
// The GEMM micro-kernels and every kernel with gnu::target clones (pooling,
// batch norm, Winograd's transforms, the vector bodies of cpu_vec.h) run the
// ISA gemm_isa() names: the best this CPU (and OS) can run, from CPUID,
// lowered by LOOM_CPU_ISA=avx512|avx2|portable (a request above what the CPU
// has falls back to the best it has). One choice for all, so the tests can
// run every path by setting the variable.
//
// The per-ISA files (cpu_gemm_avx*.cpp, cpu_vec_avx*.cpp) are compiled with
// their own -m flags and include this header through cpu_gemm.h: it declares
// only a plain enum and functions (Note [GEMM design]).
#pragma once

#include <cstdint>

namespace loom::cpu {

// Ordered: a higher value needs a superset of the CPU features of a lower one.
enum class GemmIsa : int { Portable = 0, Avx2 = 1, Avx512 = 2 };

// "portable", "avx2", "avx512" (the spellings LOOM_CPU_ISA accepts).
const char* gemm_isa_name(GemmIsa isa);
// The best micro-kernel this CPU (and OS) can run, from CPUID.
GemmIsa gemm_best_isa();
// The ISA the kernels use: gemm_best_isa(), lowered by LOOM_CPU_ISA when set.
// The variable is read once and cached; cpu_reload_isa() reads it again.
// An unknown value throws loom::Error.
GemmIsa gemm_isa();
void cpu_reload_isa();

// The L2 cache (per core) in bytes: from sysfs, else sysconf, else 1 MiB.
// Read once.
int64_t cpu_l2_bytes();

}  // namespace loom::cpu
