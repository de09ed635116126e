// The CPU kernels, one per op of src/ops/ops.def, named after the op
// (cpu::kernel::Exp for OpKind::Exp). cpu_register.cpp builds the kernel
// table from this same list, so an op without a CPU kernel fails to link.
#pragma once

#include "backend/backend.h"

namespace loom::cpu::kernel {

#define LOOM_OP(name, ...) void name(const KernelCall& c);
#include "ops/ops.def"
#undef LOOM_OP

}  // namespace loom::cpu::kernel

// The kernels that need scratch memory: bytes of workspace for a call
// (Note [Kernel workspaces] in src/backend/workspace.h), named after the op.
// cpu_register.cpp lists them in the backend's workspace table.
namespace loom::cpu::workspace {

size_t Bmm(const KernelCall& c);
size_t Linear(const KernelCall& c);
size_t QuantizedLinear(const KernelCall& c);
size_t Sum(const KernelCall& c);
size_t Amax(const KernelCall& c);
size_t Amin(const KernelCall& c);
size_t SoftmaxBackward(const KernelCall& c);
size_t LogSoftmaxBackward(const KernelCall& c);
size_t LayerNorm(const KernelCall& c);
size_t LayerNormBackward(const KernelCall& c);
size_t Conv2d(const KernelCall& c);
size_t ConvTranspose2d(const KernelCall& c);
size_t Conv2dWeight(const KernelCall& c);
size_t MaxPool2d(const KernelCall& c);
size_t MaxPool2dBackward(const KernelCall& c);
size_t AvgPool2d(const KernelCall& c);
size_t AvgPool2dBackward(const KernelCall& c);
size_t Attention(const KernelCall& c);
size_t AttentionBackward(const KernelCall& c);
size_t PagedAttention(const KernelCall& c);
size_t FusedAdam(const KernelCall& c);
size_t FusedSgd(const KernelCall& c);
size_t Fused(const KernelCall& c);

}  // namespace loom::cpu::workspace
