// The backend kernel table. Kernels know nothing of autograd or shape rules:
// src/ops hands them tensors already broadcast, cast and laid out as the op
// list (src/ops/ops.def) says.
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor_impl.h"

namespace loom {

enum class OpKind : uint16_t {
#define LOOM_OP(name) name,
#include "ops/ops.def"
#undef LOOM_OP
};
inline constexpr int kOpCount = 0
#define LOOM_OP(name) +1
#include "ops/ops.def"
#undef LOOM_OP
    ;
const char* op_name(OpKind op);

// One kernel invocation: inputs, outputs and a few scalar parameters whose
// meaning per op is listed in ops.def.
struct KernelCall {
  OpKind op;
  const TensorImpl* in[8] = {};
  int n_in = 0;
  TensorImpl* out[4] = {};
  int n_out = 0;
  double f[4] = {};
  int64_t i[4] = {};
};

using KernelFn = void (*)(const KernelCall&);

struct Backend {
  const char* name = "";
  std::array<KernelFn, kOpCount> kernels{};
  // Does this backend have a kernel for `op` on `dtype`?
  bool (*supports)(OpKind op, DType dtype) = nullptr;
};

// Each backend fills its table in one explicit call.
void cpu_register_kernels(Backend& b);
#ifdef LOOM_WITH_CUDA
void cuda_register_kernels(Backend& b);
#endif

// The backend for `device`; throws "loom was built without CUDA support" for
// CUDA in a CPU-only build.
const Backend& backend_for(Device device);
// Runs `call` on the backend of out[0]'s device (or in[0]'s when no output),
// after checking that every tensor lives on that device.
void run_kernel(const KernelCall& call);

}  // namespace loom
