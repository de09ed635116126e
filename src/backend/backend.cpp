#include "backend/backend.h"

namespace loom {

const char* op_name(OpKind op) {
  static const char* const kNames[] = {
#define LOOM_OP(name) #name,
#include "ops/ops.def"
#undef LOOM_OP
  };
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == kOpCount);
  return kNames[static_cast<int>(op)];
}

namespace {
const Backend& cpu_backend() {
  static const Backend b = [] {
    Backend x;
    cpu_register_kernels(x);
    return x;
  }();
  return b;
}
}  // namespace

#ifdef LOOM_WITH_CUDA
bool cuda_is_available();
#else
bool cuda_is_available() { return false; }
#endif

const Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
#ifdef LOOM_WITH_CUDA
  static const Backend b = [] {
    Backend x;
    cuda_register_kernels(x);
    return x;
  }();
  return b;
#else
  LOOM_ERROR("loom was built without CUDA support: cannot use device ", device.str(),
             " (rebuild with nvcc available to enable CUDA)");
#endif
}

void run_kernel(const KernelCall& call) {
  const TensorImpl* first = call.n_out > 0 ? call.out[0] : call.in[0];
  LOOM_ASSERT(first != nullptr, "kernel call without tensors");
  Device dev = first->device();
  for (int k = 0; k < call.n_in; ++k)
    LOOM_CHECK(call.in[k]->device() == dev, op_name(call.op), ": expected all tensors on ", dev.str(),
               " but input ", k, " is on ", call.in[k]->device().str());
  const Backend& b = backend_for(dev);
  KernelFn fn = b.kernels[static_cast<int>(call.op)];
  // The data dtype: in[0] except where in[0] is a condition or an index.
  const bool in0_is_aux = call.op == OpKind::Where || call.op == OpKind::ScatterAdd || call.op == OpKind::IndexAdd;
  DType dt = call.n_in > (in0_is_aux ? 1 : 0) ? call.in[in0_is_aux ? 1 : 0]->dtype : first->dtype;
  LOOM_CHECK(fn != nullptr && b.supports(call.op, dt), op_name(call.op), ": the ", b.name,
             " backend has no kernel for dtype ", dtype_name(dt));
  fn(call);
}

}  // namespace loom
