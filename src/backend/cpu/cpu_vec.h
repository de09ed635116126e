// Vectorized float kernels on contiguous runs: the fast paths of the
// elementwise, reduction and row-wise CPU kernels.
//
// Note [Vectorized CPU kernels]
// The reference kernels (Note [CPU reference kernels]) stay the oracle. When
// the layout allows (contiguous runs, a scalar operand, a broadcast row or
// column) the kernel entry points in cpu_binary.cpp, cpu_unary.cpp,
// cpu_reduce.cpp, cpu_copy.cpp and cpu_rowwise.cpp hand contiguous pieces to
// one of the VecKernels tables below; any other layout takes the reference
// strided loop.
//
// One body (cpu_vec_body.h) is compiled three times: for AVX-512
// (cpu_vec_avx512.cpp, -mavx512f -mfma), for AVX2 + FMA + F16C (cpu_vec_avx2.cpp)
// and for the baseline ISA (cpu_vec.cpp), each with GCC vector
// types as wide as its registers. The table is chosen at run time with the
// GEMM's selection (gemm_isa(): CPUID, lowered by LOOM_CPU_ISA). As with the
// GEMM micro-kernels, the ISA files hold no inline or template entity with
// external linkage: the body is included inside an anonymous namespace and
// only the vec_kernels_<isa>() factory is exported.
//
// exp, log, expm1 (and tanh, sigmoid, silu, gelu_tanh built on them) are
// polynomial approximations accurate to a few ULP over the whole float range,
// with IEEE special values (NaN, +-inf, -0, denormals) handled as std:: does;
// tests/test_fast_cpu.cpp bounds their error against std:: in ULP. gelu
// (erf) uses a series and a fitted tail (cpu_vec_body.h), within ~1e-6
// relative of the exact value. GELU's gradient (gelu_backward_f32, both
// forms) is built from the same pieces; its two terms cancel where gelu'
// crosses 0 (x ~ -0.75), so its error is bounded relative to the sum of their
// magnitudes (4e-7 of it), and, like gelu's, grows in the negative tail with
// the size of exp's argument (x^2 / 2, or 2|u| in the tanh form).
//
// Every output element is computed by one thread in a fixed order that does
// not depend on the thread count. Sums of float32 accumulate in double lanes
// (like the reference, which sums in double), so they differ from the
// reference only in the order of the double additions; column reductions
// (over leading dims) add in the reference's order and match it exactly.
// The sign of a zero max/min and the payload of a NaN result may differ from
// the reference's (values compare equal).
//
// bfloat16 and float16 tensors compute in float32 (ComputeType in
// cpu_dispatch.h), and their contiguous runs take the float32 functions in
// strips (unary_lowp, binary_lowp below): a strip of kLowpStrip elements of
// each operand is widened into a float buffer on the stack, the float32
// function runs on it, and the result is rounded once into the output.
// Widening is exact and rounding is bit for bit the scalar types' own, so an
// element equals the reference's (compute in float, round once) wherever the
// float32 function equals the reference's float math for that op (+ - * /,
// max, min, neg, abs, relu, sqrt, rsqrt); where it is only close (exp, tanh,
// gelu, ...), the 16-bit results differ by at most the float32 difference
// plus one unit in their last place (tests/test_lowp_elementwise.cpp).
#pragma once

#include <cstdint>

namespace loom::cpu {

enum class GemmIsa : int;

enum class VecBinary : int { Add, Sub, Mul, Div, Max, Min };
enum class VecUnary : int { Neg, Abs, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, Gelu, GeluTanh, Silu };
enum class VecReduce : int { Sum, Max, Min };

// How a binary op's operands are laid out over a run of n outputs.
// Rows longer than this are folded in blocks of this many elements whose
// partial results combine in order (fold_partials): the Sum / Amax / Amin
// rows path and the Fused kernel's reductions split a row the same way, so
// results depend only on the row length, never on the thread count.
inline constexpr int64_t kReduceBlock = int64_t{1} << 16;

// A fold of reduce_f32 fed in pieces (fold_start_f32, fold_piece_f32): every
// piece but a block's last holds a multiple of kVecFoldStep elements (the
// longest stride of reduce_f32's accumulators on any ISA), so the pieces
// meet its accumulators exactly where one call over the whole block would,
// and the result has the same bits.
inline constexpr int64_t kVecFoldStep = 64;
struct VecFoldState {
  alignas(64) unsigned char bytes[256];  // the ISA's accumulator registers
};
// acc combined with the next block's partial result, as reduce_f32's callers
// do: a sum adds; Max / Min keep a NaN once seen, else take a NaN or a larger
// (smaller) partial.
double fold_partials(VecReduce op, double acc, double partial);

enum class VecOperands : int {
  Both,     // a[i], b[i]
  ScalarA,  // a[0], b[i]
  ScalarB,  // a[i], b[0]
};

struct VecKernels {
  const char* isa;
  // y[i] = a op b over n elements (see VecOperands). y may alias a or b.
  void (*binary_f32)(VecBinary op, VecOperands mode, const float* a, const float* b, float* y, int64_t n);
  void (*binary_f64)(VecBinary op, VecOperands mode, const double* a, const double* b, double* y, int64_t n);
  // y[i] = f(x[i]); y may alias x.
  void (*unary_f32)(VecUnary op, const float* x, float* y, int64_t n);
  // y[i] = g[i] * gelu'(x[i]), gelu' the tanh form's when tanh_form (Note
  // [GELU's derivative] in src/ops/elementwise.cpp); y may alias g or x.
  // gelu'(+inf) = 1, gelu'(-inf) = 0, NaN stays NaN.
  void (*gelu_backward_f32)(const float* g, const float* x, float* y, int64_t n, bool tanh_form);
  // y[i] = (double)x[i] and back (round to nearest).
  void (*f32_to_f64)(const float* x, double* y, int64_t n);
  void (*f64_to_f32)(const double* x, float* y, int64_t n);
  // bfloat16 (as its bits) <-> float32, rounding as loom's BFloat16 type does.
  void (*f32_to_bf16)(const float* x, uint16_t* y, int64_t n);
  void (*bf16_to_f32)(const uint16_t* x, float* y, int64_t n);
  // float16 (as its bits) <-> float32, bit for bit as loom's Half type
  // converts (Note [Half conversion] in src/core/dtype.cpp): F16C's
  // vcvtps2ph / vcvtph2ps on the AVX2 and AVX-512 tables, Half itself on the
  // portable one.
  void (*f32_to_f16)(const float* x, uint16_t* y, int64_t n);
  void (*f16_to_f32)(const uint16_t* x, float* y, int64_t n);
  // Folds x[0..n) (n >= 1): Sum in double lanes; Max/Min with NaN winning.
  double (*reduce_f32)(VecReduce op, const float* x, int64_t n);
  // reduce_f32 in pieces: fold_start_f32, then fold_piece_f32 on consecutive
  // pieces, each but the last (last = false) a multiple of kVecFoldStep long;
  // the last returns reduce_f32's result on the concatenated pieces.
  void (*fold_start_f32)(VecReduce op, VecFoldState* s);
  double (*fold_piece_f32)(VecReduce op, VecFoldState* s, const float* x, int64_t n, bool last);
  // y[j] = fold over i < m of x[i * ld + j], for j < n, each in order of i
  // (Sum accumulates in double and rounds once).
  void (*reduce_cols_f32)(VecReduce op, const float* x, int64_t m, int64_t n, int64_t ld, float* y);
  // One row of n >= 1: softmax (log = false) or log_softmax; y may alias x.
  void (*softmax_row_f32)(const float* x, float* y, int64_t n, bool log);
  // One row: dx = y * (g - sum(g * y)) (softmax) or g - exp(y) * sum(g)
  // (log_softmax, y its output); dx may alias g.
  void (*softmax_backward_row_f32)(const float* g, const float* y, float* dx, int64_t n, bool log);
  // One row: y = (x - mean) * rstd * w + b (w, b may be null), mean and rstd
  // written to *mean, *rstd (two passes: mean, then mean squared deviation;
  // rstd = 1/sqrt(var + eps)).
  void (*layer_norm_row_f32)(const float* x, const float* w, const float* b, float* y, int64_t n, double eps,
                             float* mean, float* rstd);
  // One row: dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = g * w
  // (w may be null), xhat = (x - mean) * rstd.
  void (*layer_norm_backward_row_f32)(const float* g, const float* x, const float* w, float mean, float rstd,
                                      float* dx, int64_t n);
  // Over m rows (row stride ld) of n columns: acc_w[j] += g[i,j] * (x[i,j] - mean_i) * rstd_i and
  // acc_b[j] += g[i,j], each column in order of i, with (mean_i, rstd_i) = (stats[2i], stats[2i+1]);
  // acc_w or acc_b may be null.
  void (*layer_norm_backward_cols_f32)(const float* g, const float* x, int64_t ld, const float* stats, int64_t m,
                                       int64_t n, double* acc_w, double* acc_b);
  // One row of logits: returns logsumexp(x[0..n)) (in double).
  double (*logsumexp_row_f32)(const float* x, int64_t n);
  // One row: dx[j] = scale * (exp(x[j] - lse) - s / n) - (j == t ? scale * (1 - s) : 0).
  void (*cross_entropy_backward_row_f32)(const float* x, float lse, int64_t t, double scale, double s, float* dx,
                                         int64_t n);
};

// The 16-bit float formats of unary_lowp / binary_lowp.
enum class VecLowp : int { BFloat16, Float16 };
// Elements per strip: the float buffers (two at most, 2 KiB) stay in L1.
inline constexpr int64_t kLowpStrip = 256;

// y[i] = f(x[i]) over n 16-bit floats of format `fmt` (as bits), in strips
// through k.unary_f32 (Note [Vectorized CPU kernels]); y may alias x.
void unary_lowp(const VecKernels& k, VecLowp fmt, VecUnary op, const uint16_t* x, uint16_t* y, int64_t n);
// y[i] = a op b over n 16-bit floats (see VecOperands), in strips through
// k.binary_f32; y may alias a or b.
void binary_lowp(const VecKernels& k, VecLowp fmt, VecBinary op, VecOperands mode, const uint16_t* a,
                 const uint16_t* b, uint16_t* y, int64_t n);
// y[i] = g[i] * gelu'(x[i]) over n 16-bit floats, in strips through
// k.gelu_backward_f32; y may alias g or x.
void gelu_backward_lowp(const VecKernels& k, VecLowp fmt, const uint16_t* g, const uint16_t* x, uint16_t* y,
                        int64_t n, bool tanh_form);

// The table for `isa` (capped at gemm_best_isa()).
const VecKernels& vec_kernels(GemmIsa isa);
// The table the kernels use now: vec_kernels(gemm_isa()).
const VecKernels& vec();

// Whether the kernels take their fast paths at all (default true). Only tests
// turn them off (testing::set_vec_enabled, backend/cpu/testing.h), to run the
// reference kernels through the same entry points and compare.
bool vec_enabled();

VecKernels vec_kernels_portable();
#if defined(__x86_64__) || defined(__i386__)
VecKernels vec_kernels_avx2();    // cpu_vec_avx2.cpp, built with -mavx2 -mfma -mf16c
VecKernels vec_kernels_avx512();  // cpu_vec_avx512.cpp, built with -mavx512f -mfma
#endif

}  // namespace loom::cpu
