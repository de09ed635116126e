// The CPU backend's kernel table and its dtype coverage.
#include <iterator>

#include "backend/cpu/cpu_kernels.h"

namespace loom {
namespace {

// Every op of ops.def, in order; a missing kernel is a link error.
constexpr KernelFn kCpuKernels[] = {
#define LOOM_OP(name, ...) &cpu::kernel::name,
#include "ops/ops.def"
#undef LOOM_OP
};
static_assert(std::size(kCpuKernels) == kOpCount, "one CPU kernel per op in ops.def");

enum class Coverage { All, Numeric, Float, Float32 };

// Which dtypes each kernel handles, keyed by the dtype run_kernel checks
// (the data input's, or the output's when there is no input). No default
// case: -Wswitch flags an op added to ops.def but not listed here.
Coverage cpu_coverage(OpKind op) {
  switch (op) {
    case OpKind::Copy:
    case OpKind::Fill:
    case OpKind::Neg:
    case OpKind::Abs:
    case OpKind::Sign:
    case OpKind::Relu:
    case OpKind::Clamp:
    case OpKind::LogicalNot:
    case OpKind::IsNan:
    case OpKind::Add:
    case OpKind::Sub:
    case OpKind::Mul:
    case OpKind::Maximum:
    case OpKind::Minimum:
    case OpKind::Eq:
    case OpKind::Ne:
    case OpKind::Lt:
    case OpKind::Le:
    case OpKind::Gt:
    case OpKind::Ge:
    case OpKind::LogicalAnd:
    case OpKind::LogicalOr:
    case OpKind::Where:
    case OpKind::Sum:
    case OpKind::Prod:
    case OpKind::Amax:
    case OpKind::Amin:
    case OpKind::ArgMax:
    case OpKind::ArgMin:
    case OpKind::Cumsum:
    case OpKind::Gather:
    case OpKind::ScatterAdd:
    case OpKind::IndexSelect:
    case OpKind::IndexAdd:
    case OpKind::RandInt:
      return Coverage::All;
    // Integer powers by repeated squaring; bool has no power (PyTorch).
    case OpKind::Pow:
    case OpKind::Bmm:
    case OpKind::Linear:  // GELU forms: the ops layer allows floating dtypes only
      return Coverage::Numeric;
    // Quantization (cpu_quant.cpp): keyed by the float32 weight or input;
    // DequantizeWeight by its int8 / uint8 codes, which the ops layer checks.
    case OpKind::QuantizeWeight:
    case OpKind::QuantizedLinear:
      return Coverage::Float32;
    case OpKind::DequantizeWeight:
      return Coverage::All;
    // Float math; Div included: the ops layer promotes integers to float.
    case OpKind::Exp:
    case OpKind::Log:
    case OpKind::Log1p:
    case OpKind::Sqrt:
    case OpKind::Rsqrt:
    case OpKind::Sin:
    case OpKind::Cos:
    case OpKind::Tanh:
    case OpKind::Erf:
    case OpKind::Sigmoid:
    case OpKind::LeakyRelu:
    case OpKind::Elu:
    case OpKind::Gelu:
    case OpKind::GeluTanh:
    case OpKind::Silu:
    case OpKind::Softplus:
    case OpKind::Div:
    case OpKind::Softmax:
    case OpKind::LogSoftmax:
    case OpKind::SoftmaxBackward:
    case OpKind::LogSoftmaxBackward:
    case OpKind::LayerNorm:
    case OpKind::LayerNormBackward:
    case OpKind::CrossEntropy:
    case OpKind::CrossEntropyBackward:
    case OpKind::MaxPool2d:
    case OpKind::MaxPool2dBackward:
    case OpKind::AvgPool2d:
    case OpKind::AvgPool2dBackward:
    case OpKind::BatchNorm:
    case OpKind::BatchNormBackward:
    case OpKind::Uniform:
    case OpKind::Normal:
    case OpKind::Bernoulli:  // keyed by p's dtype; the output may be any dtype
    case OpKind::ThresholdBackward:
    case OpKind::GeluBackward:
    case OpKind::Conv2d:
    case OpKind::ConvTranspose2d:
    case OpKind::Conv2dWeight:
    case OpKind::Attention:
    case OpKind::AttentionBackward:
    case OpKind::PagedAttention:  // keyed by the query's dtype
      return Coverage::Float;
    // The fused optimizer steps (cpu_optim.cpp) update float32 parameters.
    case OpKind::FusedAdam:
    case OpKind::FusedSgd:
      return Coverage::Float32;
    // Fused programs (cpu_fused.cpp) read and write float32 and bool.
    case OpKind::Fused:
      return Coverage::All;
  }
  return Coverage::Float;
}

bool cpu_supports(OpKind op, DType dtype) {
  switch (cpu_coverage(op)) {
    case Coverage::All: return true;
    case Coverage::Numeric: return dtype != kBool;
    case Coverage::Float: return is_floating_point(dtype);
    case Coverage::Float32: return dtype == kFloat32;
  }
  return false;
}

}  // namespace

void cpu_register_kernels(Backend& b) {
  b.name = "cpu";
  for (int k = 0; k < kOpCount; ++k) b.kernels[k] = kCpuKernels[k];
  const auto scratch = [&b](OpKind op, WorkspaceFn fn) { b.workspace[static_cast<int>(op)] = fn; };
  scratch(OpKind::Bmm, &cpu::workspace::Bmm);
  scratch(OpKind::Linear, &cpu::workspace::Linear);
  scratch(OpKind::QuantizedLinear, &cpu::workspace::QuantizedLinear);
  scratch(OpKind::Sum, &cpu::workspace::Sum);
  scratch(OpKind::Amax, &cpu::workspace::Amax);
  scratch(OpKind::Amin, &cpu::workspace::Amin);
  scratch(OpKind::SoftmaxBackward, &cpu::workspace::SoftmaxBackward);
  scratch(OpKind::LogSoftmaxBackward, &cpu::workspace::LogSoftmaxBackward);
  scratch(OpKind::LayerNorm, &cpu::workspace::LayerNorm);
  scratch(OpKind::LayerNormBackward, &cpu::workspace::LayerNormBackward);
  scratch(OpKind::Conv2d, &cpu::workspace::Conv2d);
  scratch(OpKind::ConvTranspose2d, &cpu::workspace::ConvTranspose2d);
  scratch(OpKind::Conv2dWeight, &cpu::workspace::Conv2dWeight);
  scratch(OpKind::MaxPool2d, &cpu::workspace::MaxPool2d);
  scratch(OpKind::MaxPool2dBackward, &cpu::workspace::MaxPool2dBackward);
  scratch(OpKind::AvgPool2d, &cpu::workspace::AvgPool2d);
  scratch(OpKind::AvgPool2dBackward, &cpu::workspace::AvgPool2dBackward);
  scratch(OpKind::Attention, &cpu::workspace::Attention);
  scratch(OpKind::AttentionBackward, &cpu::workspace::AttentionBackward);
  scratch(OpKind::PagedAttention, &cpu::workspace::PagedAttention);
  scratch(OpKind::FusedAdam, &cpu::workspace::FusedAdam);
  scratch(OpKind::FusedSgd, &cpu::workspace::FusedSgd);
  scratch(OpKind::Fused, &cpu::workspace::Fused);
  b.supports = &cpu_supports;
}

}  // namespace loom
