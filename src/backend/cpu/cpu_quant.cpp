// Quantized inference on the CPU: QuantizeWeight, DequantizeWeight and
// QuantizedLinear (ops.def), the portable kernels, and the choice of ISA.
// The AVX2 kernels are in cpu_quant_avx2.cpp.
//
// Note [Quantized Linear]
// Weights are rounded to integer codes once (QuantizeWeight), the input on
// every call (QuantizedLinear), and the products summed in integers. r(v)
// rounds to nearest, ties to even (std::nearbyint in the default rounding
// mode; _mm256_cvtps_epi32 on AVX2).
//
// int8 (one scale per output row; PyTorch's dynamic quantization):
//   weight (N, K) float32 -> codes int8 (N, K), scales float32 (N). Per row:
//     amax = max |w|;  d = amax / 127.0f;  id = amax > 0 ? 127.0f / amax : 0;
//     q = clamp(r(w * id), -127, 127);  scale = d.
//   Each row of x is rounded the same way (dx, qx), then
//     isum = sum over k of qx * qw          (exact in int32: K <= kQuantInt8MaxK)
//     out[m, n] = static_cast<float>(isum) * (dx * d[n]),  then + bias[n]
//   (two float operations, in that order).
//
// int4 (groups of 32 along K; ggml's Q4_0): K zero-padded to G * 32,
//   G = ceil(K / 32). Per group of 32 of a row:
//     m = the element of largest |w| (the first on ties), with its sign;
//     d = m / -8.0f;  id = d != 0 ? 1.0f / d : 0;
//     q = clamp(r(w * id), -8, 7) + 8, in 0..15
//   so m itself becomes -8 (the side of the range with room for it) and an
//   all-zero group has d = -0.0f and codes 8. Two codes a byte:
//     codes[n, g * 16 + j] = q[32g + j] | q[32g + j + 16] << 4   (j < 16)
//   and scales[n, g] = d. x is rounded per group of 32 (zero-padded) exactly
//   as an int8 row is (ggml's Q8_0): dx_g, qx. For each (m, n), eight float
//   lanes acc[0..7] = 0, then for g < G and lane l < 8:
//     s = sum over t < 4 of qx[32g + 4l + t] * (q[32g + 4l + t] - 8)   (exact int32)
//     acc[l] = fma(float(s), dx_g * d[n, g], acc[l])
//   total = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)),
//   then + bias[n]. That is the AVX2 kernel's order (one ymm of lanes; the
//   128-bit halves added, then movehl, then the last pair); the portable
//   kernel runs the same operations with std::fma.
//
// Dequantize: int8 w = q * d; int4 w = (q - 8) * d; (N, K) float32, the
// padding dropped.
//
// Every float operation above is fixed and every integer sum is exact (in
// any order, by any instructions), so each output element has one value
// whatever the ISA, the thread count or the blocking: the AVX2 and portable
// kernels give identical bits, which tests/test_quant_kernels.cpp checks.
// Nothing contracts a * b + c into an FMA behind the formulas' back: loom
// builds in ISO C++ mode (-ffp-contract=off by default) and the AVX2 file
// also says -ffp-contract=off. Rows holding NaN or inf get unspecified
// (but in-range) codes. QuantizeWeight never writes the int8 code -128; a
// weight read from a file may hold it, and every kernel multiplies it
// exactly (the input's codes, ours, stay in -127..127).
//
// The AVX2 products (cpu_quant_avx2.cpp) take 32 codes at a time:
// _mm256_maddubs_epi16 multiplies unsigned by signed bytes and adds pairs
// into int16, _mm256_madd_epi16 with ones adds those pairs into int32 lanes
// (lane l: elements 4l..4l+3, the s above). int8: the sign trick, |w| by
// sign(w) * x, products at most 128 * 127, so pairs never saturate. int4:
// the 16 bytes of a group unpack to its 32 codes (low nibbles to elements
// 0..15, high nibbles to 16..31) in 0..15, multiplied by qx as they are, and
// 8 * qx (the same pairs) subtracted before the int32 sum: exact, and two
// instructions fewer than recentring the codes.
//
// Performance. At batch 1 (generation) the product is a matrix-vector
// product bound by reading the weight: x is rounded once into the
// workspace (all rows before any product), then threads split the weight
// rows (N) and each streams its rows once, four at a time against one
// load of x, prefetching the rows it reads next (kAhead in the AVX2 file).
// With more rows of x (a prompt, an eval batch) a tile takes four rows of x
// against two weight rows, so each weight byte loaded serves four rows; the
// work is split over blocks of N, and of M when N is small. Calls too small
// to pay for a fork stay on the calling thread (kMinForkWork).
#include "backend/cpu/cpu_quant.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/quant_call.h"
#include "backend/workspace.h"
#include "loom/threads.h"

namespace loom::cpu {

// ---------------------------------------------------------------- portable kernels

namespace {

int64_t ceil_div(int64_t x, int64_t d) { return (x + d - 1) / d; }
int64_t round_up(int64_t x, int64_t to) { return ceil_div(x, to) * to; }

// clamp(r(v), lo, hi); a NaN (or a value past the int32 range) becomes lo,
// as _mm256_cvtps_epi32's 0x80000000 does after saturation on AVX2.
int round_code(float v, float lo, float hi) {
  float r = std::nearbyint(v);
  if (!(r >= lo)) r = lo;
  if (r > hi) r = hi;
  return static_cast<int>(r);
}

void portable_quantize_rows(const QuantizeRows& a) {
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* xr = a.x + r * a.x_rs;
    int8_t* qr = a.q + r * a.q_rs;
    for (int64_t start = 0, b = 0; start < a.k; start += a.block, ++b) {
      const int64_t len = std::min(a.block, a.k - start);
      float amax = 0.0f;
      for (int64_t i = 0; i < len; ++i) {
        const float v = std::fabs(xr[(start + i) * a.x_cs]);
        amax = v > amax ? v : amax;
      }
      const float d = amax / 127.0f;
      const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
      for (int64_t i = 0; i < len; ++i)
        qr[start + i] = static_cast<int8_t>(round_code(xr[(start + i) * a.x_cs] * id, -127.0f, 127.0f));
      if (a.pad)
        for (int64_t i = len; i < a.block; ++i) qr[start + i] = 0;
      a.d[r * a.d_rs + b] = d;
    }
  }
}

void portable_product_int8(const QuantProduct& p) {
  const auto* w = static_cast<const int8_t*>(p.w);
  for (int64_t j = 0; j < p.cols; ++j) {
    const int8_t* wj = w + j * p.w_rs;
    for (int64_t r = 0; r < p.rows; ++r) {
      const int8_t* xr = p.qx + r * p.qx_rs;
      int32_t isum = 0;
      for (int64_t i = 0; i < p.depth; ++i) isum += static_cast<int32_t>(xr[i]) * static_cast<int32_t>(wj[i]);
      float v = static_cast<float>(isum) * (p.dx[r * p.dx_rs] * p.dw[j * p.dw_rs]);
      if (p.bias != nullptr) v = v + p.bias[j * p.bias_stride];
      p.out[r * p.out_rs + j] = v;
    }
  }
}

void portable_product_int4(const QuantProduct& p) {
  const auto* w = static_cast<const uint8_t*>(p.w);
  for (int64_t j = 0; j < p.cols; ++j) {
    for (int64_t r = 0; r < p.rows; ++r) {
      float acc[8] = {};
      for (int64_t g = 0; g < p.depth; ++g) {
        const uint8_t* wq = w + j * p.w_rs + g * (kQuantGroup / 2);
        const int8_t* xq = p.qx + r * p.qx_rs + g * kQuantGroup;
        int32_t wv[kQuantGroup];
        for (int t = 0; t < kQuantGroup / 2; ++t) {
          wv[t] = (wq[t] & 15) - 8;
          wv[t + kQuantGroup / 2] = (wq[t] >> 4) - 8;
        }
        const float scale = p.dx[r * p.dx_rs + g] * p.dw[j * p.dw_rs + g];
        for (int l = 0; l < 8; ++l) {
          int32_t s = 0;
          for (int t = 0; t < 4; ++t) s += static_cast<int32_t>(xq[4 * l + t]) * wv[4 * l + t];
          acc[l] = std::fma(static_cast<float>(s), scale, acc[l]);
        }
      }
      float v = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
      if (p.bias != nullptr) v = v + p.bias[j * p.bias_stride];
      p.out[r * p.out_rs + j] = v;
    }
  }
}

}  // namespace

QuantKernels quant_kernels_portable() {
  return QuantKernels{"portable", &portable_quantize_rows, &portable_product_int8, &portable_product_int4};
}

const QuantKernels& quant_kernels(GemmIsa isa) {
  static const QuantKernels portable = quant_kernels_portable();
#if defined(__x86_64__) || defined(__i386__)
  // Built only once the CPU is known to run AVX2: the factory is AVX2 code.
  if (std::min(isa, gemm_best_isa()) >= GemmIsa::Avx2) {
    static const QuantKernels avx2 = quant_kernels_avx2();
    return avx2;
  }
#endif
  (void)isa;
  return portable;
}

// ---------------------------------------------------------------- weights

namespace {

using Scheme = QuantCallScheme;
Scheme scheme_of(const KernelCall& c) { return quant_scheme_of(c); }

// Rows [r0, r1) of a float32 weight w (N, K) to int4 codes (N, G * 16) and
// scales (N, G), both contiguous (Note [Quantized Linear]).
void quantize_int4_rows(const TensorImpl* w, int64_t r0, int64_t r1, uint8_t* codes, float* scales) {
  const int64_t k = w->sizes[1], groups = ceil_div(k, kQuantGroup);
  const float* base = data_ptr<float>(w);
  for (int64_t n = r0; n < r1; ++n) {
    const float* row = base + n * w->strides[0];
    for (int64_t g = 0; g < groups; ++g) {
      float v[kQuantGroup];
      for (int64_t t = 0; t < kQuantGroup; ++t) {
        const int64_t i = g * kQuantGroup + t;
        v[t] = i < k ? row[i * w->strides[1]] : 0.0f;
      }
      float amax = 0.0f, m = 0.0f;
      for (float x : v) {
        if (std::fabs(x) > amax) {
          amax = std::fabs(x);
          m = x;
        }
      }
      const float d = m / -8.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      uint8_t* q = codes + n * groups * (kQuantGroup / 2) + g * (kQuantGroup / 2);
      for (int64_t j = 0; j < kQuantGroup / 2; ++j) {
        const int lo = round_code(v[j] * id, -8.0f, 7.0f) + 8;
        const int hi = round_code(v[j + kQuantGroup / 2] * id, -8.0f, 7.0f) + 8;
        q[j] = static_cast<uint8_t>(lo | hi << 4);
      }
      scales[n * groups + g] = d;
    }
  }
}

}  // namespace

namespace kernel {

// QuantizeWeight: in[0] w (N, K) float32, any strides -> out[0] codes,
// out[1] scales, contiguous (ops.def; Note [Quantized Linear]).
void QuantizeWeight(const KernelCall& c) {
  const TensorImpl* w = c.in[0];
  TensorImpl *codes = c.out[0], *scales = c.out[1];
  const Scheme scheme = scheme_of(c);
  LOOM_ASSERT(w->dim() == 2 && w->dtype == kFloat32 && codes->is_contiguous() && scales->is_contiguous(),
              "QuantizeWeight: weight ", shape_str(w->sizes));
  const int64_t n = w->sizes[0], k = w->sizes[1];
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(k, 1));
  if (scheme == Scheme::Int8) {
    LOOM_ASSERT(codes->dtype == kInt8 && codes->sizes == Shape({n, k}) && scales->numel() == n,
                "QuantizeWeight: int8 outputs ", shape_str(codes->sizes), ", ", shape_str(scales->sizes));
    const QuantKernels& kern = quant_kernels(gemm_isa());
    const float* wp = data_ptr<float>(w);
    int8_t* q = data_ptr<int8_t>(codes);
    float* d = data_ptr<float>(scales);
    parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
      kern.quantize_rows(QuantizeRows{wp + r0 * w->strides[0], w->strides[0], w->strides[1], r1 - r0, k, k,
                                      /*pad=*/false, q + r0 * k, k, d + r0, 1});
    });
    return;
  }
  const int64_t groups = ceil_div(k, kQuantGroup);
  LOOM_ASSERT(codes->dtype == kUInt8 && codes->sizes == Shape({n, groups * kQuantGroup / 2}) &&
                  scales->sizes == Shape({n, groups}),
              "QuantizeWeight: int4 outputs ", shape_str(codes->sizes), ", ", shape_str(scales->sizes));
  uint8_t* q = data_ptr<uint8_t>(codes);
  float* d = data_ptr<float>(scales);
  parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) { quantize_int4_rows(w, r0, r1, q, d); });
}

// DequantizeWeight: in[0] codes, in[1] scales (contiguous, as QuantizeWeight
// writes them) -> out[0] (N, K) float32, contiguous.
void DequantizeWeight(const KernelCall& c) {
  const TensorImpl *codes = c.in[0], *scales = c.in[1];
  TensorImpl* out = c.out[0];
  const Scheme scheme = scheme_of(c);
  LOOM_ASSERT(out->dim() == 2 && out->dtype == kFloat32 && out->is_contiguous() && codes->is_contiguous() &&
                  scales->is_contiguous() && codes->sizes[0] == out->sizes[0],
              "DequantizeWeight: codes ", shape_str(codes->sizes), " -> ", shape_str(out->sizes));
  const int64_t n = out->sizes[0], k = out->sizes[1];
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(k, 1));
  float* o = data_ptr<float>(out);
  const float* d = data_ptr<float>(scales);
  if (scheme == Scheme::Int8) {
    LOOM_ASSERT(codes->dtype == kInt8 && codes->sizes[1] == k && scales->numel() == n, "DequantizeWeight: int8 codes ",
                shape_str(codes->sizes));
    const int8_t* q = data_ptr<int8_t>(codes);
    parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < k; ++i) o[r * k + i] = static_cast<float>(q[r * k + i]) * d[r];
    });
    return;
  }
  const int64_t groups = ceil_div(k, kQuantGroup), row_bytes = groups * kQuantGroup / 2;
  LOOM_ASSERT(codes->dtype == kUInt8 && codes->sizes[1] == row_bytes && scales->numel() == n * groups,
              "DequantizeWeight: int4 codes ", shape_str(codes->sizes));
  const uint8_t* q = data_ptr<uint8_t>(codes);
  parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < k; ++i) {
        const int64_t g = i / kQuantGroup, t = i % kQuantGroup;
        const uint8_t byte = q[r * row_bytes + g * (kQuantGroup / 2) + t % (kQuantGroup / 2)];
        const int code = t < kQuantGroup / 2 ? byte & 15 : byte >> 4;
        o[r * k + i] = static_cast<float>(code - 8) * d[r * groups + g];
      }
    }
  });
}

}  // namespace kernel

// ---------------------------------------------------------------- QuantizedLinear

namespace {

// x rounded to int8 in the workspace: qx (M, qx_rs) and dx (M, dx_rs).
struct RoundedInput {
  int8_t* qx;
  int64_t qx_rs;
  float* dx;
  int64_t dx_rs;
};

// The workspace of a QuantizedLinear call (Note [Kernel workspaces]): int8
// rows of K codes (64-byte aligned) and one scale a row, or int4 rows of
// G * 32 codes and G scales.
RoundedInput rounded_input_layout(const KernelCall& c, WorkspaceLayout& ws) {
  const TensorImpl* x = c.in[0];
  const int64_t m = x->sizes[0], k = x->sizes[1];
  RoundedInput in{};
  if (scheme_of(c) == Scheme::Int8) {
    in.qx_rs = round_up(std::max<int64_t>(k, 1), 64);
    in.dx_rs = 1;
  } else {
    in.qx_rs = ceil_div(k, kQuantGroup) * kQuantGroup;
    in.dx_rs = ceil_div(k, kQuantGroup);
  }
  in.qx = ws.take<int8_t>(m * in.qx_rs);
  in.dx = ws.take<float>(m * in.dx_rs);
  return in;
}

// Multiply-adds each thread gets at least (about 10 us of the AVX2 kernel
// on one core, as the GEMM's kParallelMinWork): waking a team costs a few
// microseconds, so smaller products stay on the calling thread.
constexpr int64_t kMinForkWork = int64_t{1} << 20;
// Weight rows (N) per task, and at most this many rows of x (M).
constexpr int64_t kColBlock = 16;
constexpr int64_t kRowBlockMax = 64;

}  // namespace

namespace kernel {

// QuantizedLinear: out[0] (M, N) = in[0] x (M, K) float32 (any strides) times
// the weight in[1] codes, in[2] scales (contiguous, as QuantizeWeight writes
// them), plus in[3] bias (N, any stride) when present (Note [Quantized Linear]).
void QuantizedLinear(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *codes = c.in[1], *scales = c.in[2];
  const TensorImpl* bias = c.in.size() > 3 ? c.in[3] : nullptr;
  TensorImpl* out = c.out[0];
  const Scheme scheme = scheme_of(c);
  const auto [m, k, n, groups] = check_quantized_linear(c);
  if (m == 0 || n == 0) return;

  const QuantKernels& kern = quant_kernels(gemm_isa());
  WorkspaceLayout ws = carve(c);
  const RoundedInput in = rounded_input_layout(c, ws);

  // x rounded to int8, every row before any product.
  const float* xp = data_ptr<float>(x);
  const int64_t block = scheme == Scheme::Int8 ? k : kQuantGroup;
  parallel_for(0, m, std::max<int64_t>(1, kGrain / k), [&](int64_t r0, int64_t r1) {
    kern.quantize_rows(QuantizeRows{xp + r0 * x->strides[0], x->strides[0], x->strides[1], r1 - r0, k, block,
                                    /*pad=*/scheme == Scheme::Int4, in.qx + r0 * in.qx_rs, in.qx_rs,
                                    in.dx + r0 * in.dx_rs, in.dx_rs});
  });

  // The product in tasks of (up to kRowBlockMax rows of x, kColBlock weight
  // rows), weight-block-major so consecutive tasks of a thread reuse its
  // weight rows from cache. When N gives too few tasks for the threads,
  // rows of x are split finer (multiples of 4, the AVX2 tile's height).
  const int threads = get_num_threads();
  const int64_t col_blocks = ceil_div(n, kColBlock);
  const int64_t want_row_blocks = ceil_div(2 * threads, col_blocks);
  const int64_t row_block = std::clamp<int64_t>(round_up(ceil_div(m, want_row_blocks), 4), 4, kRowBlockMax);
  const int64_t row_blocks = ceil_div(m, row_block);
  const int64_t depth_bytes = scheme == Scheme::Int8 ? k : groups * kQuantGroup;
  const int64_t task_work = std::min(m, row_block) * kColBlock * depth_bytes;
  const int64_t grain = std::max<int64_t>(1, kMinForkWork / task_work);

  const auto product = scheme == Scheme::Int8 ? kern.product_int8 : kern.product_int4;
  const auto* w = static_cast<const uint8_t*>(static_cast<const void*>(codes->data()));
  const int64_t w_rs = scheme == Scheme::Int8 ? k : groups * kQuantGroup / 2;
  const int64_t dw_rs = scheme == Scheme::Int8 ? 1 : groups;
  const float* dw = data_ptr<float>(scales);
  const float* bp = bias != nullptr ? data_ptr<float>(bias) : nullptr;
  const int64_t bias_stride = bias != nullptr ? bias->strides[0] : 0;
  float* o = data_ptr<float>(out);
  parallel_for(0, col_blocks * row_blocks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t / row_blocks * kColBlock, r0 = t % row_blocks * row_block;
      product(QuantProduct{scheme == Scheme::Int8 ? k : groups, in.qx + r0 * in.qx_rs, in.qx_rs,
                           in.dx + r0 * in.dx_rs, in.dx_rs, w + j0 * w_rs, w_rs, dw + j0 * dw_rs, dw_rs,
                           bp != nullptr ? bp + j0 * bias_stride : nullptr, bias_stride, o + r0 * n + j0, n,
                           std::min(row_block, m - r0), std::min(kColBlock, n - j0)});
    }
  });
}

}  // namespace kernel

namespace workspace {

size_t QuantizedLinear(const KernelCall& c) {
  WorkspaceLayout ws;
  rounded_input_layout(c, ws);
  return ws.bytes();
}

}  // namespace workspace

}  // namespace loom::cpu
