// CUDA kernels of quantized inference: QuantizeWeight, DequantizeWeight and
// QuantizedLinear (ops.def), with the numerics of Note [Quantized Linear] in
// src/backend/cpu/cpu_quant.cpp.
//
// Note [CUDA quantized kernels]
// Every float operation of Note [Quantized Linear] is written with a
// round-to-nearest intrinsic (__fdiv_rn, __fmul_rn, __fadd_rn, fmaf where
// the CPU fuses) so nvcc contracts nothing into an FMA the CPU does not
// have, and every integer sum is exact in int32 in any order. So codes,
// scales, dequantized weights and QuantizedLinear's outputs equal the CPU's
// bit for bit. r(v) is rintf (nearest, ties to even), clamped as the CPU's
// round_code (a NaN becomes the low end).
//  - Rounding rows to int8 (QuantizeWeight's int8 scheme, and x on every
//    QuantizedLinear call): one warp per (row, block); the block's absolute
//    max is a maximum, exact in any order (a NaN never enters it, as on the
//    CPU, where `v > amax` is false for NaN).
//  - int4 weights: one thread per (row, group of 32), the CPU's loop.
//  - QuantizedLinear int8: one warp per output; lanes split K, the int32
//    sum is reduced with shuffles, then out = float(isum) * (dx * d[n]) and
//    the bias, in that order.
//  - QuantizedLinear int4: eight threads per output, thread l holding the
//    CPU's float lane acc[l] over the groups in order; the eight are added
//    in the CPU's order by the first of them.
// Simple kernels, correct first: no shared-memory tiling or dp4a yet.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_tensor.cuh"
#include "backend/quant_call.h"
#include "backend/workspace.h"

namespace loom::cuda_detail {

void register_quant(Backend& b);

namespace {

constexpr int64_t kGroup = cpu::kQuantGroup;  // int4 group along K (backend/quant_call.h)
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

using Scheme = QuantCallScheme;
Scheme scheme_of(const KernelCall& c) { return quant_scheme_of(c); }

int64_t ceil_div(int64_t x, int64_t d) { return (x + d - 1) / d; }

// The grid for `warps` warp tasks, kWarpsPerBlock warps a block (kernels
// loop over tasks per warp with a warp-uniform stride).
unsigned warp_grid(int64_t warps) { return grid_for(warps, kWarpsPerBlock); }

// clamp(r(v), lo, hi), the CPU's round_code: a NaN becomes lo.
__device__ __forceinline__ int round_code(float v, float lo, float hi) {
  float r = rintf(v);
  if (!(r >= lo)) r = lo;
  if (r > hi) r = hi;
  return static_cast<int>(r);
}

// ---------------------------------------------------------------- rounding rows to int8

// The CPU's QuantizeRows: x[r * x_rs + i * x_cs] in blocks of `block` along k,
// q[r * q_rs + i], d[r * d_rs + b]; pad: codes run to whole blocks, zeros
// past k.
struct RowsArgs {
  const float* x;
  int64_t x_rs, x_cs, rows, k, block;
  bool pad;
  int8_t* q;
  int64_t q_rs;
  float* d;
  int64_t d_rs;
};

__global__ void __launch_bounds__(kWarp* kWarpsPerBlock) quantize_rows_kernel(RowsArgs a) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int64_t blocks = (a.k + a.block - 1) / a.block;
  const int64_t first = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t task = first; task < a.rows * blocks; task += stride) {
    const int64_t r = task / blocks, b = task % blocks, start = b * a.block;
    const int64_t len = a.k - start < a.block ? a.k - start : a.block;
    const float* xr = a.x + r * a.x_rs + start * a.x_cs;
    float amax = 0.0f;
    for (int64_t i = lane; i < len; i += kWarp) {
      const float v = fabsf(xr[i * a.x_cs]);
      amax = v > amax ? v : amax;
    }
    for (int w = kWarp / 2; w >= 1; w /= 2) {
      const float o = __shfl_xor_sync(kFullMask, amax, w);
      amax = o > amax ? o : amax;
    }
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    int8_t* qr = a.q + r * a.q_rs + start;
    for (int64_t i = lane; i < len; i += kWarp)
      qr[i] = static_cast<int8_t>(round_code(__fmul_rn(xr[i * a.x_cs], id), -127.0f, 127.0f));
    if (a.pad)
      for (int64_t i = len + lane; i < a.block; i += kWarp) qr[i] = 0;
    if (lane == 0) a.d[r * a.d_rs + b] = d;
  }
}

void launch_quantize_rows(const Launch& l, const RowsArgs& a) {
  const int64_t tasks = a.rows * ceil_div(a.k, a.block);
  if (tasks == 0) return;
  quantize_rows_kernel<<<warp_grid(tasks), kWarp * kWarpsPerBlock, 0, l.stream>>>(a);
  LOOM_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- int4 weights

// Rows of a float32 weight w (N, K), strides (w_rs, w_cs), to int4 codes
// (N, G * 16) and scales (N, G), contiguous: one thread per (row, group).
__global__ void quantize_int4_kernel(const float* w, int64_t w_rs, int64_t w_cs, int64_t n, int64_t k,
                                     uint8_t* codes, float* scales) {
  const int64_t groups = (k + kGroup - 1) / kGroup;
  for (int64_t task = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; task < n * groups;
       task += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = task / groups, g = task % groups;
    float v[kGroup];
    for (int64_t t = 0; t < kGroup; ++t) {
      const int64_t i = g * kGroup + t;
      v[t] = i < k ? w[r * w_rs + i * w_cs] : 0.0f;
    }
    float amax = 0.0f, m = 0.0f;
    for (int64_t t = 0; t < kGroup; ++t) {  // the first of the largest |w|, with its sign
      if (fabsf(v[t]) > amax) {
        amax = fabsf(v[t]);
        m = v[t];
      }
    }
    const float d = __fdiv_rn(m, -8.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    uint8_t* q = codes + task * (kGroup / 2);
    for (int64_t j = 0; j < kGroup / 2; ++j) {
      const int lo = round_code(__fmul_rn(v[j], id), -8.0f, 7.0f) + 8;
      const int hi = round_code(__fmul_rn(v[j + kGroup / 2], id), -8.0f, 7.0f) + 8;
      q[j] = static_cast<uint8_t>(lo | hi << 4);
    }
    scales[task] = d;
  }
}

// QuantizeWeight: in[0] w (N, K) float32, any strides -> out[0] codes,
// out[1] scales, contiguous (ops.def).
void quantize_weight(const KernelCall& c) {
  const TensorImpl* w = c.in[0];
  TensorImpl *codes = c.out[0], *scales = c.out[1];
  const Scheme scheme = scheme_of(c);
  LOOM_ASSERT(w->dim() == 2 && w->dtype == kFloat32 && codes->is_contiguous() && scales->is_contiguous(),
              "QuantizeWeight: weight ", shape_str(w->sizes));
  const int64_t n = w->sizes[0], k = w->sizes[1];
  if (n == 0 || k == 0) return;  // the ops layer writes the scales of k == 0
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  if (scheme == Scheme::Int8) {
    LOOM_ASSERT(codes->dtype == kInt8 && codes->sizes == Shape({n, k}) && scales->numel() == n,
                "QuantizeWeight: int8 outputs ", shape_str(codes->sizes), ", ", shape_str(scales->sizes));
    launch_quantize_rows(l, RowsArgs{data_of<float>(w), w->strides[0], w->strides[1], n, k, k, /*pad=*/false,
                                     data_of<int8_t>(codes), k, data_of<float>(scales), 1});
    return;
  }
  const int64_t groups = ceil_div(k, kGroup);
  LOOM_ASSERT(codes->dtype == kUInt8 && codes->sizes == Shape({n, groups * kGroup / 2}) &&
                  scales->sizes == Shape({n, groups}),
              "QuantizeWeight: int4 outputs ", shape_str(codes->sizes), ", ", shape_str(scales->sizes));
  quantize_int4_kernel<<<grid_for(n * groups), kThreads, 0, l.stream>>>(
      data_of<float>(w), w->strides[0], w->strides[1], n, k, data_of<uint8_t>(codes), data_of<float>(scales));
  LOOM_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- dequantize

// int8: o[r, i] = q[r, i] * d[r]; int4: o[r, i] = (code - 8) * d[r, g].
__global__ void dequantize_int8_kernel(const int8_t* q, const float* d, int64_t n, int64_t k, float* o) {
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < n * k;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x)
    o[x] = __fmul_rn(static_cast<float>(q[x]), d[x / k]);
}

__global__ void dequantize_int4_kernel(const uint8_t* q, const float* d, int64_t n, int64_t k, float* o) {
  const int64_t groups = (k + kGroup - 1) / kGroup, row_bytes = groups * kGroup / 2;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < n * k;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = x / k, i = x % k, g = i / kGroup, t = i % kGroup;
    const uint8_t byte = q[r * row_bytes + g * (kGroup / 2) + t % (kGroup / 2)];
    const int code = t < kGroup / 2 ? byte & 15 : byte >> 4;
    o[x] = __fmul_rn(static_cast<float>(code - 8), d[r * groups + g]);
  }
}

// DequantizeWeight: in[0] codes, in[1] scales (contiguous, as QuantizeWeight
// writes them) -> out[0] (N, K) float32, contiguous.
void dequantize_weight(const KernelCall& c) {
  const TensorImpl *codes = c.in[0], *scales = c.in[1];
  TensorImpl* out = c.out[0];
  const Scheme scheme = scheme_of(c);
  LOOM_ASSERT(out->dim() == 2 && out->dtype == kFloat32 && out->is_contiguous() && codes->is_contiguous() &&
                  scales->is_contiguous() && codes->sizes[0] == out->sizes[0],
              "DequantizeWeight: codes ", shape_str(codes->sizes), " -> ", shape_str(out->sizes));
  const int64_t n = out->sizes[0], k = out->sizes[1];
  if (n * k == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  if (scheme == Scheme::Int8) {
    LOOM_ASSERT(codes->dtype == kInt8 && codes->sizes[1] == k && scales->numel() == n, "DequantizeWeight: int8 codes ",
                shape_str(codes->sizes));
    dequantize_int8_kernel<<<grid_for(n * k), kThreads, 0, l.stream>>>(data_of<int8_t>(codes), data_of<float>(scales),
                                                                       n, k, data_of<float>(out));
  } else {
    const int64_t groups = ceil_div(k, kGroup);
    LOOM_ASSERT(codes->dtype == kUInt8 && codes->sizes[1] == groups * kGroup / 2 && scales->numel() == n * groups,
                "DequantizeWeight: int4 codes ", shape_str(codes->sizes));
    dequantize_int4_kernel<<<grid_for(n * k), kThreads, 0, l.stream>>>(
        data_of<uint8_t>(codes), data_of<float>(scales), n, k, data_of<float>(out));
  }
  LOOM_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- QuantizedLinear

// x rounded to int8 in the workspace: qx (M, qx_rs) and dx (M, dx_rs), the
// CPU's layout (int8: K codes and one scale a row; int4: G * 32 codes,
// zero-padded, and G scales).
struct RoundedInput {
  int8_t* qx;
  int64_t qx_rs;
  float* dx;
  int64_t dx_rs;
};

RoundedInput rounded_input_layout(const KernelCall& c, WorkspaceLayout& ws) {
  const TensorImpl* x = c.in[0];
  const int64_t m = x->sizes[0], k = x->sizes[1];
  RoundedInput in{};
  if (scheme_of(c) == Scheme::Int8) {
    in.qx_rs = std::max<int64_t>(k, 1);
    in.dx_rs = 1;
  } else {
    in.qx_rs = ceil_div(k, kGroup) * kGroup;
    in.dx_rs = ceil_div(k, kGroup);
  }
  in.qx = ws.take<int8_t>(m * in.qx_rs);
  in.dx = ws.take<float>(m * in.dx_rs);
  return in;
}

size_t quantized_linear_workspace(const KernelCall& c) {
  WorkspaceLayout ws;
  rounded_input_layout(c, ws);
  return ws.bytes();
}

struct ProductArgs {
  int64_t m, n, k, groups;
  RoundedInput in;
  const void* w;  // int8 (N, K) or uint8 (N, G * 16)
  const float* dw;
  const float* bias;  // null: none; bias[j * bias_stride]
  int64_t bias_stride;
  float* out;  // (M, N) contiguous
};

// One warp per output (r, j); the task loop is warp-uniform.
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock) product_int8_kernel(ProductArgs a) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int64_t first = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const auto* w = static_cast<const int8_t*>(a.w);
  for (int64_t task = first; task < a.m * a.n; task += stride) {
    const int64_t r = task / a.n, j = task % a.n;
    const int8_t* xr = a.in.qx + r * a.in.qx_rs;
    const int8_t* wj = w + j * a.k;
    int32_t isum = 0;
    for (int64_t i = lane; i < a.k; i += kWarp) isum += static_cast<int32_t>(xr[i]) * static_cast<int32_t>(wj[i]);
    for (int o = kWarp / 2; o >= 1; o /= 2) isum += __shfl_xor_sync(kFullMask, isum, o);
    if (lane == 0) {
      float v = __fmul_rn(__int2float_rn(isum), __fmul_rn(a.in.dx[r * a.in.dx_rs], a.dw[j]));
      if (a.bias != nullptr) v = __fadd_rn(v, a.bias[j * a.bias_stride]);
      a.out[r * a.n + j] = v;
    }
  }
}

// Eight threads per output (four outputs a warp): thread l of the eight is
// the CPU's lane acc[l]. The task loop is warp-uniform.
constexpr int kLanesPerOutput = 8;
constexpr int kOutputsPerWarp = kWarp / kLanesPerOutput;

__global__ void __launch_bounds__(kWarp* kWarpsPerBlock) product_int4_kernel(ProductArgs a) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int sub = lane / kLanesPerOutput, l = lane % kLanesPerOutput;
  const int64_t first = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const auto* w = static_cast<const uint8_t*>(a.w);
  const int64_t outputs = a.m * a.n, row_bytes = a.groups * (kGroup / 2);
  for (int64_t warp_task = first; warp_task * kOutputsPerWarp < outputs; warp_task += stride) {
    const int64_t task = warp_task * kOutputsPerWarp + sub;
    const bool live = task < outputs;
    const int64_t r = live ? task / a.n : 0, j = live ? task % a.n : 0;
    float acc = 0.0f;
    if (live) {
      for (int64_t g = 0; g < a.groups; ++g) {
        const uint8_t* wq = w + j * row_bytes + g * (kGroup / 2);
        const int8_t* xq = a.in.qx + r * a.in.qx_rs + g * kGroup;
        int32_t s = 0;
        for (int t = 0; t < 4; ++t) {
          const int e = 4 * l + t;  // element of the group: low nibbles 0..15, high 16..31
          const int code = e < kGroup / 2 ? (wq[e] & 15) : (wq[e - kGroup / 2] >> 4);
          s += static_cast<int32_t>(xq[e]) * (code - 8);
        }
        const float scale = __fmul_rn(a.in.dx[r * a.in.dx_rs + g], a.dw[j * a.groups + g]);
        acc = fmaf(__int2float_rn(s), scale, acc);
      }
    }
    // The eight lanes of this output, to its first thread, in the CPU's order.
    float lanes[kLanesPerOutput];
#pragma unroll
    for (int i = 0; i < kLanesPerOutput; ++i) lanes[i] = __shfl_sync(kFullMask, acc, i, kLanesPerOutput);
    if (live && l == 0) {
      float v = __fadd_rn(__fadd_rn(__fadd_rn(lanes[0], lanes[4]), __fadd_rn(lanes[2], lanes[6])),
                          __fadd_rn(__fadd_rn(lanes[1], lanes[5]), __fadd_rn(lanes[3], lanes[7])));
      if (a.bias != nullptr) v = __fadd_rn(v, a.bias[j * a.bias_stride]);
      a.out[r * a.n + j] = v;
    }
  }
}

// QuantizedLinear: out[0] (M, N) = in[0] x (M, K) float32 (any strides) times
// the weight in[1] codes, in[2] scales (contiguous, as QuantizeWeight writes
// them), plus in[3] bias (N, any stride) when present (ops.def).
void quantized_linear(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *codes = c.in[1], *scales = c.in[2];
  const TensorImpl* bias = c.in.size() > 3 ? c.in[3] : nullptr;
  TensorImpl* out = c.out[0];
  const Scheme scheme = scheme_of(c);
  const auto [m, k, n, groups] = check_quantized_linear(c);
  if (m == 0 || n == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);

  WorkspaceLayout ws = carve(c);
  const RoundedInput in = rounded_input_layout(c, ws);
  const bool int8 = scheme == Scheme::Int8;
  launch_quantize_rows(l, RowsArgs{data_of<float>(x), x->strides[0], x->strides[1], m, k, int8 ? k : kGroup,
                                   /*pad=*/!int8, in.qx, in.qx_rs, in.dx, in.dx_rs});

  const ProductArgs a{m,
                      n,
                      k,
                      groups,
                      in,
                      codes->data(),
                      data_of<float>(scales),
                      bias != nullptr ? data_of<float>(bias) : nullptr,
                      bias != nullptr ? bias->strides[0] : 0,
                      data_of<float>(out)};
  if (int8) {
    product_int8_kernel<<<warp_grid(m * n), kWarp * kWarpsPerBlock, 0, l.stream>>>(a);
  } else {
    product_int4_kernel<<<warp_grid(ceil_div(m * n, kOutputsPerWarp)), kWarp * kWarpsPerBlock, 0, l.stream>>>(a);
  }
  LOOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void register_quant(Backend& b) {
  // Keyed by the float32 weight or input; DequantizeWeight by its codes.
  b.kernels[static_cast<int>(OpKind::QuantizeWeight)] = &quantize_weight;
  set_supported(OpKind::QuantizeWeight, {kFloat32});
  b.kernels[static_cast<int>(OpKind::DequantizeWeight)] = &dequantize_weight;
  set_supported(OpKind::DequantizeWeight, {kInt8, kUInt8});
  b.kernels[static_cast<int>(OpKind::QuantizedLinear)] = &quantized_linear;
  b.workspace[static_cast<int>(OpKind::QuantizedLinear)] = &quantized_linear_workspace;
  set_supported(OpKind::QuantizedLinear, {kFloat32});
}

}  // namespace loom::cuda_detail
