// The backend kernel table. Kernels know nothing of autograd or shape rules:
// src/ops hands them tensors already broadcast, cast and laid out as the op
// list (src/ops/ops.def) says.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <variant>
#include <vector>

#include "backend/fused_program.h"
#include "backend/window2d.h"
#include "core/tensor_impl.h"

namespace loom {

enum class OpKind : uint16_t {
#define LOOM_OP(name, ...) name,
#include "ops/ops.def"
#undef LOOM_OP
};
inline constexpr int kOpCount = 0
#define LOOM_OP(name, ...) +1
#include "ops/ops.def"
#undef LOOM_OP
    ;
const char* op_name(OpKind op);

// How many inputs and outputs a call of `op` may have (its ops.def row);
// max -1 = any number.
struct OpArity {
  int min_in, max_in, min_out, max_out;
};
OpArity op_arity(OpKind op);

// A call's tensor list: up to N entries inline (no allocation on the
// dispatch path of a 10-element op), any number beyond (the multi-tensor
// optimizer ops list every parameter, gradient and state tensor).
template <class T, int N>
class CallList {
 public:
  void push_back(T v) {
    if (n_ < N) {
      inline_[n_++] = v;
      return;
    }
    if (n_ == N) heap_.assign(inline_, inline_ + N);
    heap_.push_back(v);
    ++n_;
  }
  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T operator[](int k) const { return data()[k]; }
  const T* begin() const { return data(); }
  const T* end() const { return data() + n_; }

 private:
  const T* data() const { return n_ <= N ? inline_ : heap_.data(); }
  T inline_[N] = {};
  std::vector<T> heap_;
  int n_ = 0;
};

// Typed parameters of the ops whose arguments do not fit f[] / i[]. The call
// owns them (values, not addresses), so a recorded call replays and hashes
// like any other (Note [Kernel calls are values]).
struct ConvParams {  // Conv2d, ConvTranspose2d, Conv2dWeight
  Window2d win;      // kh, kw from the weight
  int64_t groups = 1;
  bool operator==(const ConvParams&) const = default;
};
struct AdamParams {  // FusedAdam: the hyperparameters of one param group
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  bool amsgrad = false, maximize = false;
  bool decoupled = false;  // AdamW: p *= 1 - lr * weight_decay instead of an L2 term
  bool operator==(const AdamParams&) const = default;
};
struct SgdParams {  // FusedSgd
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
  bool first_step = false;  // the buffers are new: buf = d_p, without dampening
  bool operator==(const SgdParams&) const = default;
};
// Pooling takes its window as a Window2d (src/backend/window2d.h).
using KernelParams = std::variant<std::monostate, Window2d, ConvParams, AdamParams, SgdParams, FusedParams>;

// Scratch memory for one kernel call (Note [Kernel workspaces]).
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

// Note [Kernel calls are values]
// A KernelCall is everything a kernel reads: the op, every tensor it touches
// (inputs it only reads, outputs it writes, in place or not), scalar
// parameters f[] / i[] whose meaning per op ops.def gives, typed parameters
// for the rest, and the scratch workspace. Nothing travels as an address
// hidden in an integer, and no kernel touches a tensor that is not listed,
// so a graph layer can record a call, hash it (hash_kernel_call), plan its
// memory and replay it, and run_kernel can check every tensor's device.
struct KernelCall {
  OpKind op{};
  CallList<const TensorImpl*, 8> in;  // null: an optional input flagged absent (ops.def)
  CallList<TensorImpl*, 4> out;
  double f[4] = {};
  int64_t i[4] = {};
  KernelParams params;
  Workspace workspace;  // set by run_kernel (or a memory planner) when the op asks for one

  // The typed parameters of this call; a mismatch is a loom bug.
  template <class P>
  const P& param() const {
    const P* p = std::get_if<P>(&params);
    LOOM_ASSERT(p != nullptr, op_name(op), ": kernel call without its typed parameters");
    return *p;
  }
};

// The window a convolution (ConvParams) or pooling (Window2d) kernel was
// called with.
inline const Window2d& window_of(const KernelCall& c) {
  if (const auto* p = std::get_if<ConvParams>(&c.params)) return p->win;
  return c.param<Window2d>();
}

// Hash of what makes two calls compute the same function: op, scalars,
// typed parameters and each tensor's dtype, sizes, strides and offset (not
// its address or data).
size_t hash_kernel_call(const KernelCall& call);

using KernelFn = void (*)(const KernelCall&);
// Bytes of workspace a kernel needs for `call` on the current thread count.
using WorkspaceFn = size_t (*)(const KernelCall&);

struct Backend {
  const char* name = "";
  std::array<KernelFn, kOpCount> kernels{};
  // Scratch each kernel asks for; null for kernels that need none.
  std::array<WorkspaceFn, kOpCount> workspace{};
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
// The backend for `device`, or null where this build has none.
const Backend* find_backend(Device device);
// Bytes of workspace `call` needs on its device (0 for most ops).
size_t kernel_workspace_bytes(const KernelCall& call);
// Runs `call` on the backend of its tensors' device, after checking its arity
// (ops.def), that every tensor lives on that device and that the backend
// supports the dtype. When the kernel needs a workspace and the caller passed
// none large enough, run_kernel takes one from the device's allocator for the
// duration of the call.
void run_kernel(KernelCall& call);

}  // namespace loom
