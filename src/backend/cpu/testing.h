// Test-only switches of the CPU backend. Only tests include this header (they
// have src/ on their include path); nothing in the library calls these, so
// they are not part of any interface the library's own code sees.
#pragma once

#include <vector>

#include "backend/cpu/cpu_gemm.h"

namespace loom::cpu {

// sgemm with packing space of its own, for tests that call the GEMM directly
// (the library's kernels pass theirs from their workspace).
inline void sgemm(GemmIsa isa, int64_t batch, int64_t m, int64_t n, int64_t k, SgemmInput a, SgemmInput b,
                  SgemmOutput c, const SgemmEpilogue* epilogue = nullptr) {
  const bool strided_bias = epilogue != nullptr && epilogue->bias != nullptr && epilogue->bias_stride != 1;
  std::vector<float> pack(static_cast<size_t>(sgemm_workspace_floats(isa, batch, m, n, k, strided_bias)) + 16);
  // 64-byte aligned, as a workspace is.
  const auto addr = reinterpret_cast<uintptr_t>(pack.data());
  float* aligned = pack.data() + (((addr + 63) & ~uintptr_t{63}) - addr) / sizeof(float);
  sgemm(isa, batch, m, n, k, a, b, c, epilogue, GemmWorkspace{aligned, static_cast<int64_t>(pack.size()) - 16});
}

}  // namespace loom::cpu

namespace loom::cpu::testing {

// Reads LOOM_CPU_ISA again (tests change it with setenv); the GEMM and vector
// kernels otherwise read it once and cache the choice (gemm_isa() in
// cpu_gemm.h). An unknown value throws loom::Error. Defined in cpu_gemm.cpp.
void gemm_reload_isa();

// Turns sgemm's unpacked path for few rows or little depth off (false) or
// back on, so a test can compare it with the packed path (Note [GEMM without
// packing] in cpu_gemm.h). Defined in cpu_gemm.cpp.
void set_gemm_unpacked(bool on);

// Turns the kernels' vectorized fast paths off (false) or back on, so a test
// can run the reference kernels through the same entry points and compare
// (Note [Vectorized CPU kernels] in cpu_vec.h). Defined in cpu_vec.cpp.
void set_vec_enabled(bool on);

}  // namespace loom::cpu::testing
