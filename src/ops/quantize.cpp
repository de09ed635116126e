// Quantized inference: weights to int8 / int4 codes and back, and the
// Linear that multiplies by them (kernels and numerics: Note [Quantized
// Linear] in src/backend/cpu/cpu_quant.cpp). No autograd: these are
// inference ops, as PyTorch's dynamically quantized Linear is.
#include <string>

#include "ops/op_utils.h"

namespace loom {

namespace {

constexpr int64_t kGroup = 32;  // int4 group along in_features (ggml's Q4_0 block)
// The int8 scheme sums code products in int32: |x code| <= 127, |w code| <=
// 128, so K * 128 * 127 < 2^31.
constexpr int64_t kInt8MaxInFeatures = 132104;

int64_t groups_of(int64_t k) { return (k + kGroup - 1) / kGroup; }

// The codes and scales a weight of (n, k) has under `scheme`.
Shape codes_shape(QuantScheme scheme, int64_t n, int64_t k) {
  return scheme == QuantScheme::Int8 ? Shape{n, k} : Shape{n, groups_of(k) * kGroup / 2};
}
Shape scales_shape(QuantScheme scheme, int64_t n, int64_t k) {
  return scheme == QuantScheme::Int8 ? Shape{n} : Shape{n, groups_of(k)};
}
DType codes_dtype(QuantScheme scheme) { return scheme == QuantScheme::Int8 ? kInt8 : kUInt8; }

void check_scheme(const char* op, QuantScheme scheme) {
  LOOM_CHECK(scheme == QuantScheme::Int8 || scheme == QuantScheme::Int4, op, ": unknown quantization scheme ",
             static_cast<int>(scheme));
}

// codes and scales as quantize_weight writes them for a weight of k inputs.
void check_codes(const char* op, const Tensor& codes, const Tensor& scales, QuantScheme scheme, int64_t k) {
  LOOM_CHECK(codes.defined() && scales.defined(), op, ": codes and scales must be defined tensors");
  LOOM_CHECK(codes.dim() == 2, op, ": expected 2-D codes (out_features, ...), got shape ", shape_str(codes.sizes()));
  const int64_t n = codes.size(0);
  const Shape want_codes = codes_shape(scheme, n, k), want_scales = scales_shape(scheme, n, k);
  LOOM_CHECK(codes.dtype() == codes_dtype(scheme), op, ": ", quant_scheme_name(scheme), " codes must be ",
             dtype_name(codes_dtype(scheme)), ", got ", dtype_name(codes.dtype()));
  LOOM_CHECK(codes.sizes() == want_codes, op, ": ", quant_scheme_name(scheme), " codes of a weight with ", k,
             " inputs must have shape ", shape_str(want_codes), ", got ", shape_str(codes.sizes()));
  LOOM_CHECK(scales.dtype() == kFloat32 && scales.sizes() == want_scales, op, ": ", quant_scheme_name(scheme),
             " scales must be float32 of shape ", shape_str(want_scales), ", got ", dtype_name(scales.dtype()), " ",
             shape_str(scales.sizes()));
  ops::check_same_device(op, {codes, scales});
}

}  // namespace

const char* quant_scheme_name(QuantScheme scheme) {
  switch (scheme) {
    case QuantScheme::Int8: return "int8";
    case QuantScheme::Int4: return "int4";
  }
  return "unknown";
}

QuantScheme parse_quant_scheme(const std::string& name, const std::string& what) {
  if (name == "int8") return QuantScheme::Int8;
  if (name == "int4") return QuantScheme::Int4;
  LOOM_ERROR(what, ": expected int8 or int4, got '", name, "'");
}

std::pair<Tensor, Tensor> quantize_weight(const Tensor& weight, QuantScheme scheme) {
  check_scheme("quantize_weight", scheme);
  LOOM_CHECK(weight.defined() && weight.dim() == 2, "quantize_weight: expected a 2-D weight (out_features, "
             "in_features), got ", weight.defined() ? shape_str(weight.sizes()) : std::string("an undefined tensor"));
  LOOM_CHECK(weight.dtype() == kFloat32, "quantize_weight: expected a float32 weight, got ",
             dtype_name(weight.dtype()));
  const int64_t n = weight.size(0), k = weight.size(1);
  const Tensor w = weight.detach();
  Tensor codes = empty(codes_shape(scheme, n, k), TensorOptions(codes_dtype(scheme)).device(weight.device()));
  Tensor scales = empty(scales_shape(scheme, n, k), TensorOptions(kFloat32).device(weight.device()));
  if (n > 0) {
    if (k == 0) {
      scales.zero_();
    } else {
      ops::launch(OpKind::QuantizeWeight, {&w}, {&codes, &scales}, {}, {static_cast<int64_t>(scheme)});
    }
  }
  return {codes, scales};
}

Tensor dequantize_weight(const Tensor& codes, const Tensor& scales, QuantScheme scheme, int64_t in_features) {
  check_scheme("dequantize_weight", scheme);
  LOOM_CHECK(in_features >= 0, "dequantize_weight: in_features must be non-negative, got ", in_features);
  check_codes("dequantize_weight", codes, scales, scheme, in_features);
  const Tensor c = codes.detach().contiguous(), s = scales.detach().contiguous();
  Tensor out = empty({codes.size(0), in_features}, TensorOptions(kFloat32).device(codes.device()));
  if (out.numel() > 0)
    ops::launch(OpKind::DequantizeWeight, {&c, &s}, {&out}, {}, {static_cast<int64_t>(scheme)});
  return out;
}

Tensor quantized_linear(const Tensor& input, const Tensor& codes, const Tensor& scales, const Tensor& bias,
                        QuantScheme scheme) {
  check_scheme("quantized_linear", scheme);
  LOOM_CHECK(input.defined() && input.dim() >= 1, "quantized_linear: expected an input of shape (*, in_features), got ",
             input.defined() ? shape_str(input.sizes()) : std::string("an undefined tensor"));
  LOOM_CHECK(input.dtype() == kFloat32, "quantized_linear: expected a float32 input, got ", dtype_name(input.dtype()));
  LOOM_CHECK(!(is_grad_enabled() && input.requires_grad()), "quantized_linear: a quantized Linear is inference-only "
             "and has no backward; run it under NoGradGuard or on a tensor that does not require grad");
  const int64_t k = input.sizes().back();
  check_codes("quantized_linear", codes, scales, scheme, k);
  LOOM_CHECK(scheme != QuantScheme::Int8 || k <= kInt8MaxInFeatures, "quantized_linear: int8 takes at most ",
             kInt8MaxInFeatures, " in_features (its int32 sums would overflow), got ", k, "; use int4");
  const int64_t n = codes.size(0);
  std::vector<Tensor> operands{input, codes, scales};
  if (bias.defined()) {
    LOOM_CHECK(bias.dim() == 1 && bias.size(0) == n && bias.dtype() == kFloat32, "quantized_linear: expected a "
               "float32 bias of shape [", n, "], got ", dtype_name(bias.dtype()), " ", shape_str(bias.sizes()));
    operands.push_back(bias);
  }
  ops::check_same_device("quantized_linear", operands);

  Shape out_shape(input.sizes().begin(), input.sizes().end() - 1);
  const int64_t m = shape_numel(out_shape);
  out_shape.push_back(n);
  const Tensor x = input.detach().reshape({m, k});
  const Tensor c = codes.detach().contiguous(), s = scales.detach().contiguous();
  const Tensor b = bias.defined() ? bias.detach() : Tensor();
  Tensor out = empty({m, n}, TensorOptions(kFloat32).device(input.device()));
  if (out.numel() > 0) {
    if (k == 0) {
      // An empty product: the bias alone.
      if (b.defined()) out.copy_(b.expand({m, n}));
      else out.zero_();
    } else {
      const int64_t code = static_cast<int64_t>(scheme);
      if (b.defined()) ops::launch(OpKind::QuantizedLinear, {&x, &c, &s, &b}, {&out}, {}, {code});
      else ops::launch(OpKind::QuantizedLinear, {&x, &c, &s}, {&out}, {}, {code});
    }
  }
  return out.reshape(out_shape);
}

}  // namespace loom
