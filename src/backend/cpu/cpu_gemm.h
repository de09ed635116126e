// loom's float32 GEMM: the fast path of the Bmm kernel for float32.
//
// Note [GEMM design]
// C (B, M, N) = A (B, M, K) @ B (B, K, N), every operand with arbitrary
// strides (batch, row, column; 0 for broadcast dims; transposed views).
// The driver (cpu_gemm.cpp) walks blocks of C the way BLIS does:
//
//   for jc in N step nc:
//     for pc in K step kc:        B block (kc, nc) packed into NR-wide panels (L3)
//       for ic in M step mc:      A block (mc, kc) packed into MR-high panels (L2)
//         for each B panel:       (kc, NR), held in L1
//           for each A panel:     the ISA's micro-kernel: an (MR, NR) tile of C in
//                                 registers; the next tile's C is prefetched
//
// Packing reads the operands through their strides, so a transposed or
// broadcast operand costs the same as a contiguous one. A packed A panel holds
// a[k * MR + r] (row r of the panel at depth k), a packed B panel b[k * NR + j];
// rows and columns past the edge of the matrix are zero.
//
// Products of few rows or little depth skip packing (Note [GEMM without
// packing] below).
//
// Threads split C into rectangles of whole tiles (or a batch into whole
// items), and each thread packs what its rectangle needs into its own part
// of the caller's packing space, so no thread waits for another inside a
// product.
//
// Micro-kernels exist for AVX-512 (cpu_gemm_avx512.cpp), AVX2 + FMA
// (cpu_gemm_avx2.cpp) and portable C++ (cpu_gemm.cpp), chosen at run time from
// CPUID; LOOM_CPU_ISA=avx512|avx2|portable lowers the choice (a request above
// what the CPU has falls back to the best it has; Note [CPU ISA selection] in
// cpu_features.h). The ISA files are compiled with their own -m flags and
// must hold no inline or template entity with external linkage (an
// out-of-line copy could be picked by the linker for other files and fault
// on an older CPU): this header and cpu_features.h declare only plain
// structs and functions for that reason.
//
// Note [GEMM summation order]
// Every element of C is one float32 chain over k in increasing order: the
// first depth block starts from 0, and each later block reloads the partial
// sum from C and carries on. With FMA (the AVX paths) the element is exactly
//   acc = 0; for k in 0..K-1: acc = fma(a[i][k], b[k][j], acc)
// whatever the block sizes, the tile an element falls in, the thread that
// computes it or the number of threads; the AVX-512 and AVX2 paths therefore
// give identical bits. The portable path is plain C++, acc = acc + a * b in
// the same order; with the default flags (no FMA contraction) it rounds the
// product and the sum separately.
#pragma once

#include <cstdint>

// Relative: tests include this header by path, without src/ on their include path.
#include "cpu_features.h"

namespace loom {
struct KernelCall;
}

namespace loom::cpu {

// ---- ISA selection ----

// GemmIsa, gemm_isa() and gemm_best_isa() are in cpu_features.h; tests read
// LOOM_CPU_ISA again with testing::gemm_reload_isa (backend/cpu/testing.h).

// ---- the product ----

// A batch of float32 matrices: element (b, i, j) at data[b * bs + i * rs + j * cs].
struct SgemmInput {
  const float* data;
  int64_t bs, rs, cs;
};
struct SgemmOutput {
  float* data;
  int64_t bs, rs, cs;
};

// Note [GEMM epilogue]
// What sgemm does to each element of C once its last depth block is summed,
// while the tile is still in registers and its block in cache:
//   c = c + bias[j * bias_stride]   (when bias; one float32 add, as the Add kernel)
//   c = c < 0 ? 0 : c               (when relu; NaN and -0 pass, as the Relu kernel)
// then post(post_ctx, block) on each finished block of C (rows x cols at
// c, row stride rs, column stride cs), on the thread that computed it. The
// fused Linear kernel runs the GELU kernels through `post`, so a fused GELU
// gives the bits of the GELU op whatever that kernel's vector code is.
// Plain aggregate (no member initializers): see Note [GEMM design] on the ISA files.
struct SgemmEpilogue {
  const float* bias;  // null: no bias
  int64_t bias_stride;
  bool relu;
  void (*post)(void* ctx, float* c, int64_t rs, int64_t cs, int64_t rows, int64_t cols);  // null: none
  void* post_ctx;
};

// Packing space for sgemm, from the caller's workspace (Note [GEMM packing
// space] in cpu_gemm.cpp): `floats` floats at `data`, 64-byte aligned.
struct GemmWorkspace {
  float* data;
  int64_t floats;
};

// The packing space sgemm needs for a product of these sizes called from the
// current thread (`nested`: from inside a parallel call, where it runs on one
// thread), with a bias of stride != 1 when strided_bias. Depends on the
// thread count.
int64_t sgemm_workspace_floats(GemmIsa isa, int64_t batch, int64_t m, int64_t n, int64_t k,
                               bool strided_bias = false, bool nested = false);

// Enough packing space for any product without a strided bias of at most m
// rows, n columns and depth k (for kernels that run many small products).
int64_t sgemm_workspace_bound(GemmIsa isa, int64_t m, int64_t n, int64_t k, bool nested = false);

// c (batch, m, n) = a (batch, m, k) @ b (batch, k, n) with the micro-kernel of
// `isa` (capped at gemm_best_isa()), then `epilogue` when given (null: none),
// packing into `ws` (at least sgemm_workspace_floats). k == 0 writes zeros
// (and applies the epilogue to them). c must not overlap a or b; c's strides
// must address each element once.
void sgemm(GemmIsa isa, int64_t batch, int64_t m, int64_t n, int64_t k, SgemmInput a, SgemmInput b, SgemmOutput c,
           const SgemmEpilogue* epilogue, GemmWorkspace ws);

// The reference kernel's float32 case (the oracle, cpu_linalg.cpp): each
// element summed over k in order in double, rounded once to float32.
void sgemm_reference(int64_t batch, int64_t m, int64_t n, int64_t k, SgemmInput a, SgemmInput b, SgemmOutput c);

// The reference Bmm kernel for every numeric dtype (cpu_linalg.cpp). The Bmm
// entry of the kernel table sends float32 to sgemm(gemm_isa(), ...) and
// everything else here.
void bmm_reference(const KernelCall& c);

// ---- micro-kernel interface (one per ISA) ----

// One tile of C: c[r * rs + j * cs] for r < rows <= mr, j < cols <= nr, from a
// packed A panel `a` (a[p * mr + r]) and a B panel `b` (b[p * b_step + j]),
// p < kc: packed (b_step = nr), or B itself when its rows are contiguous
// (then cols == nr: no lane past the panel is read). accumulate: add to the values in c (the chain of Note [GEMM
// summation order] goes on); otherwise c is overwritten. bias (null: none;
// bias[j] for column j of the tile, contiguous) and relu are the register part
// of Note [GEMM epilogue], set only on a tile's last depth block.
struct GemmTile {
  int64_t kc;
  const float* a;
  const float* b;
  int64_t b_step;  // floats from one depth of the B panel to the next: nr when packed
  float* c;
  int64_t rs, cs;
  int rows, cols;
  bool accumulate;
  const float* bias;
  bool relu;
  // The C tile the driver runs next (its rows at the same rs), or null: the
  // kernel prefetches it while it computes, so the next tile's load of C
  // does not wait on memory.
  const float* c_next;
};

// Packs one panel of `w` lines (rows of A, or columns of B) by `kc` depths:
//   dst[p * w + r] = src[r * line_stride + p * step]   for r < h <= w, p < kc
// and 0 for h <= r < w. An A panel is (line_stride, step) = (A's row stride,
// A's column stride); a B panel is (B's column stride, B's row stride).
// step == 1 (a row-major A, a transposed B) is a transpose; line_stride == 1
// (a transposed A, a row-major B) is a copy; other strides go element by element.
using GemmPackFn = void (*)(const float* src, int64_t line_stride, int64_t step, int h, int64_t kc, int w,
                            float* dst);

// Note [GEMM without packing]
// A product of few rows (a batch-1 Linear: x (1, K) @ W^T, its backward
// g (1, N) @ W) or of depth 1 (the outer product of a batch-1 weight
// gradient) does too little work per element of B for packing to pay: for
// M = 1 packing a 784x128 weight cost as much as the product. The driver then
// runs the ISA's `rows` kernel on A and B where they are, for B with
// contiguous rows (b_cs == 1: each depth adds a[r][p] times a row of B,
// an axpy) or contiguous columns (b_rs == 1: W^T; 8x8 blocks of B are
// transposed in registers, so the lanes are still columns of C). Each element
// is the chain of Note [GEMM summation order] over the whole depth at once,
// so the result is bit for bit the packed path's, whichever path runs. The
// AVX-512 path runs the AVX2 path's 8-lane body (cpu_gemm_rows_body.h).
// Which products qualify was measured: see use_unpacked in cpu_gemm.cpp.
// Plain aggregate: see Note [GEMM design] on the ISA files.
struct GemmRows {
  int64_t k;
  const float* a;  // a[r * a_rs + p * a_cs], r < rows, p < k
  int64_t a_rs, a_cs;
  const float* b;  // b[p * b_rs + j * b_cs], j < cols; b_cs == 1 or b_rs == 1
  int64_t b_rs, b_cs;
  float* c;  // c[r * c_rs + j * c_cs]
  int64_t c_rs, c_cs;
  int rows;  // 1..kGemmRowsMax
  int64_t cols;
  const float* bias;  // null: none; bias[j], contiguous
  bool relu;
};

// The most rows one call of a `rows` kernel takes.
constexpr int kGemmRowsMax = 4;

// An ISA's micro-kernel, its packing, and the block sizes the driver uses.
struct GemmKernel {
  int mr, nr;           // register tile (rows of A, columns of B)
  int64_t mc, kc, nc;   // cache blocks: mc a multiple of mr, nc of nr
  void (*tile)(const GemmTile& t);
  GemmPackFn pack;
  void (*rows)(const GemmRows& t);  // Note [GEMM without packing]
};

// The kernel sgemm uses for `isa` (capped at gemm_best_isa()).
const GemmKernel& gemm_kernel(GemmIsa isa);

// Each ISA's kernel; call one only when gemm_best_isa() is at least its ISA.
GemmKernel gemm_kernel_portable();
#if defined(__x86_64__) || defined(__i386__)
GemmKernel gemm_kernel_avx2();    // cpu_gemm_avx2.cpp, built with -mavx2 -mfma
GemmKernel gemm_kernel_avx512();  // cpu_gemm_avx512.cpp, built with -mavx512f -mfma
#endif

}  // namespace loom::cpu
