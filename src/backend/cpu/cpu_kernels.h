// The CPU kernels, one per op of src/ops/ops.def, named after the op
// (cpu::kernel::Exp for OpKind::Exp). cpu_register.cpp builds the kernel
// table from this same list, so an op without a CPU kernel fails to link.
#pragma once

#include "backend/backend.h"

namespace loom::cpu::kernel {

#define LOOM_OP(name) void name(const KernelCall& c);
#include "ops/ops.def"
#undef LOOM_OP

}  // namespace loom::cpu::kernel
