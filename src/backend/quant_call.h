// The quantized ops' calls (ops.def: QuantizeWeight, DequantizeWeight,
// QuantizedLinear), shared by the CPU and CUDA kernels (cpu_quant.cpp,
// cuda_quant.cu) so both read the same scheme and accept the same calls. The
// numerics are Note [Quantized Linear] in cpu_quant.cpp.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "backend/cpu/cpu_quant.h"  // kQuantGroup, kQuantInt8MaxK: the format's constants
#include "loom/error.h"

namespace loom {

enum class QuantCallScheme : int64_t { Int8 = 1, Int4 = 2 };  // i[0] of every call (QuantScheme)

inline QuantCallScheme quant_scheme_of(const KernelCall& c) {
  LOOM_ASSERT(c.i[0] == 1 || c.i[0] == 2, op_name(c.op), ": unknown quantization scheme ", c.i[0]);
  return static_cast<QuantCallScheme>(c.i[0]);
}

// QuantizedLinear's operands: out[0] (M, N) = in[0] x (M, K) float32 (any
// strides) times the weight in[1] codes, in[2] scales (contiguous, as
// QuantizeWeight writes them), plus in[3] bias (N, any stride) when present.
struct QuantizedLinearShape {
  int64_t m, k, n, groups;
};

inline QuantizedLinearShape check_quantized_linear(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *codes = c.in[1], *scales = c.in[2];
  const TensorImpl* bias = c.in.size() > 3 ? c.in[3] : nullptr;
  const TensorImpl* out = c.out[0];
  const QuantCallScheme scheme = quant_scheme_of(c);
  LOOM_ASSERT(x->dim() == 2 && codes->dim() == 2 && out->dim() == 2 && x->dtype == kFloat32 &&
                  out->dtype == kFloat32 && out->is_contiguous() && codes->is_contiguous() &&
                  scales->is_contiguous() && out->sizes == Shape({x->sizes[0], codes->sizes[0]}),
              "QuantizedLinear: x ", shape_str(x->sizes), ", codes ", shape_str(codes->sizes), " -> ",
              shape_str(out->sizes));
  LOOM_ASSERT(bias == nullptr || (bias->dim() == 1 && bias->sizes[0] == codes->sizes[0] && bias->dtype == kFloat32),
              "QuantizedLinear: bias ", shape_str(bias->sizes));
  const int64_t m = x->sizes[0], k = x->sizes[1], n = codes->sizes[0];
  const int64_t groups = (k + cpu::kQuantGroup - 1) / cpu::kQuantGroup;
  LOOM_ASSERT(k > 0, "QuantizedLinear: K = 0 (the ops layer writes the bias itself)");
  LOOM_ASSERT(scheme != QuantCallScheme::Int8 || k <= cpu::kQuantInt8MaxK, "QuantizedLinear: int8 K = ", k,
              " would overflow the int32 sums (at most ", cpu::kQuantInt8MaxK, ")");
  LOOM_ASSERT(scheme == QuantCallScheme::Int8
                  ? codes->dtype == kInt8 && codes->sizes[1] == k
                  : codes->dtype == kUInt8 && codes->sizes[1] == groups * cpu::kQuantGroup / 2,
              "QuantizedLinear: codes ", shape_str(codes->sizes), " for K = ", k);
  return {m, k, n, groups};
}

}  // namespace loom
