// The CPU kernels of quantized inference: the per-ISA pieces the
// QuantizeWeight and QuantizedLinear kernels (cpu_quant.cpp) run, and the
// table that picks them. The numerics are Note [Quantized Linear] in
// cpu_quant.cpp; every ISA gives the same bits.
//
// cpu_quant_avx2.cpp is compiled with its own -m flags and includes this
// header, so it declares only plain structs and functions (Note [GEMM
// design] in cpu_gemm.h).
#pragma once

#include <cstdint>

// Relative: tests include this header by path, without src/ on their include path.
#include "cpu_features.h"

namespace loom::cpu {

// int4 weights and the int8 input they meet come in groups of this many
// elements along K, each with its own scale (ggml's Q4_0 / Q8_0 blocks).
constexpr int64_t kQuantGroup = 32;

// The int8 scheme sums qx * qw over K in int32: exact while
// 128 * 127 * K < 2^31 (a weight code may be -128; the input's never is).
constexpr int64_t kQuantInt8MaxK = 132104;

// Rows of float32 rounded to int8 in blocks along k, one scale per block:
// amax, d = amax / 127, q = clamp(r(x / d), -127, 127) (Note [Quantized
// Linear]). The int8 scheme's weights and inputs are one block a row
// (block = k); the int4 scheme's inputs are blocks of kQuantGroup.
// Plain aggregate: see Note [GEMM design] on the ISA files.
struct QuantizeRows {
  const float* x;  // x[r * x_rs + i * x_cs], r < rows, i < k
  int64_t x_rs, x_cs;
  int64_t rows, k;
  int64_t block;  // elements a scale covers; the last block of a row may be short
  // pad: each block's codes run to `block` elements, zeros past k (the int4
  // scheme's input, blocks * block codes a row); otherwise exactly k a row.
  bool pad;
  int8_t* q;  // q[r * q_rs + i]
  int64_t q_rs;
  float* d;  // d[r * d_rs + b], b < ceil(k / block)
  int64_t d_rs;
};

// A block of the QuantizedLinear product (Note [Quantized Linear]):
//   out[r * out_rs + j] for r < rows, j < cols
// from x rounded as QuantizeRows writes it and the weight rows j as
// QuantizeWeight writes them. depth: K for the int8 scheme, the number of
// groups G for int4.
struct QuantProduct {
  int64_t depth;
  const int8_t* qx;  // qx[r * qx_rs + i]: int8 K codes; int4 G * 32 (padded)
  int64_t qx_rs;
  const float* dx;  // dx[r * dx_rs + g]: int8 one a row; int4 one a group
  int64_t dx_rs;
  const void* w;  // int8: int8_t (cols, K); int4: uint8_t (cols, G * 16), two codes a byte
  int64_t w_rs;   // bytes
  const float* dw;  // dw[j * dw_rs + g]
  int64_t dw_rs;
  const float* bias;  // null: none; bias[j * bias_stride]
  int64_t bias_stride;
  float* out;
  int64_t out_rs;
  int64_t rows, cols;
};

struct QuantKernels {
  const char* isa;
  void (*quantize_rows)(const QuantizeRows& a);
  void (*product_int8)(const QuantProduct& p);
  void (*product_int4)(const QuantProduct& p);
};

// The kernels for `isa` (capped at gemm_best_isa(); AVX-512 runs the AVX2
// kernels).
const QuantKernels& quant_kernels(GemmIsa isa);

// Each ISA's kernels; call one only when gemm_best_isa() is at least its ISA.
QuantKernels quant_kernels_portable();  // cpu_quant.cpp
#if defined(__x86_64__) || defined(__i386__)
QuantKernels quant_kernels_avx2();  // cpu_quant_avx2.cpp, built with -mavx2 -mfma
#endif

}  // namespace loom::cpu
