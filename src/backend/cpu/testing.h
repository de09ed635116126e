// Test-only switches of the CPU backend. Only tests include this header (they
// have src/ on their include path); nothing in the library calls these, so
// they are not part of any interface the library's own code sees.
#pragma once

namespace loom::cpu::testing {

// Reads LOOM_CPU_ISA again (tests change it with setenv); the GEMM and vector
// kernels otherwise read it once and cache the choice (gemm_isa() in
// cpu_gemm.h). An unknown value throws loom::Error. Defined in cpu_gemm.cpp.
void gemm_reload_isa();

// Turns the kernels' vectorized fast paths off (false) or back on, so a test
// can run the reference kernels through the same entry points and compare
// (Note [Vectorized CPU kernels] in cpu_vec.h). Defined in cpu_vec.cpp.
void set_vec_enabled(bool on);

}  // namespace loom::cpu::testing
