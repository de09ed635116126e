#include "backend/backend.h"

#include <cstring>
#include <sstream>
#include <variant>

#include "core/allocator.h"
#include "core/capture.h"

namespace loom {

const char* op_name(OpKind op) {
  static const char* const kNames[] = {
#define LOOM_OP(name, ...) #name,
#include "ops/ops.def"
#undef LOOM_OP
  };
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == kOpCount);
  return kNames[static_cast<int>(op)];
}

OpArity op_arity(OpKind op) {
  static constexpr OpArity kArity[] = {
#define LOOM_OP(name, min_in, max_in, min_out, max_out) {min_in, max_in, min_out, max_out},
#include "ops/ops.def"
#undef LOOM_OP
  };
  static_assert(sizeof(kArity) / sizeof(kArity[0]) == kOpCount);
  return kArity[static_cast<int>(op)];
}

namespace {

// boost's hash_combine step.
void mix(size_t& h, size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); }
void mix(size_t& h, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  mix(h, static_cast<size_t>(bits));
}
const char* phase_tag(FusedInstr::Phase p) {
  switch (p) {
    case FusedInstr::Phase::Pre: return "";
    case FusedInstr::Phase::Row: return " (row)";
    case FusedInstr::Phase::Post: return " (post)";
  }
  return "";
}

// Typed parameters field by field (their padding bytes are not values).
void mix_params(size_t&, const std::monostate&) {}
void mix_params(size_t& h, const Window2d& w) {
  for (int64_t v : {w.kh, w.kw, w.sh, w.sw, w.ph, w.pw, w.dh, w.dw}) mix(h, static_cast<size_t>(v));
}
void mix_params(size_t& h, const ConvParams& p) {
  mix_params(h, p.win);
  mix(h, static_cast<size_t>(p.groups));
}
void mix_params(size_t& h, const AdamParams& p) {
  for (double v : {p.lr, p.beta1, p.beta2, p.eps, p.weight_decay}) mix(h, v);
  mix(h, static_cast<size_t>(p.amsgrad) | static_cast<size_t>(p.maximize) << 1 | static_cast<size_t>(p.decoupled) << 2);
}
void mix_params(size_t& h, const SgdParams& p) {
  for (double v : {p.lr, p.momentum, p.dampening, p.weight_decay}) mix(h, v);
  mix(h, static_cast<size_t>(p.nesterov) | static_cast<size_t>(p.maximize) << 1 | static_cast<size_t>(p.first_step) << 2);
}
void mix_params(size_t& h, const FusedParams& p) { mix(h, p.program ? p.program->hash() : size_t{0}); }
void mix_tensor(size_t& h, const TensorImpl* t) {
  if (t == nullptr) {
    mix(h, size_t{0});
    return;
  }
  mix(h, static_cast<size_t>(t->dtype) + 1);
  mix(h, t->sizes.size());
  for (int64_t s : t->sizes) mix(h, static_cast<size_t>(s));
  for (int64_t s : t->strides) mix(h, static_cast<size_t>(s));
  mix(h, static_cast<size_t>(t->offset));
}

}  // namespace

std::string FusedProgram::str() const {
  std::ostringstream os;
  for (const FusedInstr& x : code) {
    switch (x.kind) {
      case FusedInstr::Kind::Load: os << "r" << x.dst << " = in" << x.a; break;
      case FusedInstr::Kind::Const: os << "r" << x.dst << " = " << x.imm; break;
      case FusedInstr::Kind::Op:
        os << "r" << x.dst << " = " << op_name(x.op);
        for (int16_t r : {x.a, x.b, x.c})
          if (r >= 0) os << " r" << r;
        break;
      case FusedInstr::Kind::Reduce: os << "r" << x.dst << " = " << op_name(x.op) << " over the row of r" << x.a; break;
      case FusedInstr::Kind::Store: os << "out" << x.dst << " <- r" << x.a; break;
      case FusedInstr::Kind::Product: os << "r" << x.dst << " = in0 @ in1"; break;
    }
    os << phase_tag(x.phase) << "\n";
  }
  return os.str();
}

size_t FusedProgram::hash() const {
  size_t h = code.size();
  for (const FusedInstr& x : code) {
    mix(h, static_cast<size_t>(x.kind) | static_cast<size_t>(x.phase) << 8 | static_cast<size_t>(x.op) << 16);
    for (int16_t r : {x.dst, x.a, x.b, x.c}) mix(h, static_cast<size_t>(static_cast<uint16_t>(r)));
    mix(h, x.imm);
    for (double v : x.f) mix(h, v);
    for (int64_t v : x.i) mix(h, static_cast<size_t>(v));
  }
  mix(h, static_cast<size_t>(registers));
  for (int64_t d : domain) mix(h, static_cast<size_t>(d));
  mix(h, static_cast<size_t>(reduce_dims) | static_cast<size_t>(product) << 8);
  return h;
}

size_t hash_kernel_call(const KernelCall& call) {
  size_t h = static_cast<size_t>(call.op);
  mix(h, static_cast<size_t>(call.in.size()));
  for (const TensorImpl* t : call.in) mix_tensor(h, t);
  mix(h, static_cast<size_t>(call.out.size()));
  for (const TensorImpl* t : call.out) mix_tensor(h, t);
  for (double v : call.f) mix(h, v);
  for (int64_t v : call.i) mix(h, static_cast<size_t>(v));
  mix(h, call.params.index());
  std::visit([&](const auto& p) { mix_params(h, p); }, call.params);
  return h;
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

const Backend* find_backend(Device device) {
  if (device.is_cpu()) return &cpu_backend();
#ifdef LOOM_WITH_CUDA
  static const Backend b = [] {
    Backend x;
    cuda_register_kernels(x);
    return x;
  }();
  return &b;
#else
  return nullptr;
#endif
}

const Backend& backend_for(Device device) {
  const Backend* b = find_backend(device);
  LOOM_CHECK(b != nullptr, "loom was built without CUDA support: cannot use device ", device.str(),
             " (rebuild with nvcc available to enable CUDA)");
  return *b;
}

namespace {

// The first tensor of a call: an output, else an input (it names the device).
const TensorImpl* first_tensor(const KernelCall& call) {
  if (!call.out.empty()) return call.out[0];
  for (const TensorImpl* t : call.in)
    if (t != nullptr) return t;
  return nullptr;
}

void check_arity(const KernelCall& call) {
  const OpArity a = op_arity(call.op);
  const int n_in = call.in.size(), n_out = call.out.size();
  LOOM_ASSERT(n_in >= a.min_in && (a.max_in < 0 || n_in <= a.max_in) && n_out >= a.min_out &&
                  (a.max_out < 0 || n_out <= a.max_out),
              op_name(call.op), ": kernel call with ", n_in, " inputs and ", n_out, " outputs");
  for (const TensorImpl* t : call.out) LOOM_ASSERT(t != nullptr, op_name(call.op), ": null output");
  // The multi-tensor optimizer ops: lists of one length (ops.def).
  if (call.op == OpKind::FusedAdam) {
    const auto& p = call.param<AdamParams>();
    const int n = n_out / (p.amsgrad ? 4 : 3);
    LOOM_ASSERT(n > 0 && n_out == n * (p.amsgrad ? 4 : 3) && n_in == 2 * n, "FusedAdam: tensor lists of unequal length");
  } else if (call.op == OpKind::FusedSgd) {
    const auto& p = call.param<SgdParams>();
    const int n = n_in;
    LOOM_ASSERT(n > 0 && n_out == (p.momentum != 0.0 ? 2 * n : n), "FusedSgd: tensor lists of unequal length");
  }
}

}  // namespace

size_t kernel_workspace_bytes(const KernelCall& call) {
  const TensorImpl* first = first_tensor(call);
  LOOM_ASSERT(first != nullptr, "kernel call without tensors");
  WorkspaceFn ws = backend_for(first->device()).workspace[static_cast<int>(call.op)];
  return ws != nullptr ? ws(call) : 0;
}

void run_kernel(KernelCall& call) {
  check_arity(call);
  const TensorImpl* first = first_tensor(call);
  LOOM_ASSERT(first != nullptr, "kernel call without tensors");
  Device dev = first->device();
  // FusedAdam's step counts (its second half of inputs) are 0-dim CPU
  // tensors on any device, as PyTorch keeps `step` on the host: the kernel
  // reads them there to compute its constants, without a synchronization.
  const int host_from = call.op == OpKind::FusedAdam ? call.in.size() / 2 : call.in.size();
  for (int k = 0; k < call.in.size(); ++k)
    LOOM_CHECK(call.in[k] == nullptr || call.in[k]->device() == dev ||
                   (k >= host_from && call.in[k]->device().is_cpu() && call.in[k]->dim() == 0),
               op_name(call.op), ": expected all tensors on ", dev.str(), " but input ", k, " is on ",
               call.in[k]->device().str());
  for (int k = 0; k < call.out.size(); ++k)
    LOOM_CHECK(call.out[k]->device() == dev, op_name(call.op), ": expected all tensors on ", dev.str(), " but output ",
               k, " is on ", call.out[k]->device().str());
  const Backend& b = backend_for(dev);
  const int op = static_cast<int>(call.op);
  KernelFn fn = b.kernels[op];
  // The data dtype: in[0] except where in[0] is a condition or an index.
  const bool in0_is_aux = call.op == OpKind::Where || call.op == OpKind::ScatterAdd || call.op == OpKind::IndexAdd;
  DType dt = call.in.size() > (in0_is_aux ? 1 : 0) ? call.in[in0_is_aux ? 1 : 0]->dtype : first->dtype;
  LOOM_CHECK(fn != nullptr && b.supports(call.op, dt), op_name(call.op), ": the ", b.name,
             " backend has no kernel for dtype ", dtype_name(dt));
  // Recorded before it runs: an input it overwrites still holds what it reads.
  if (capture::Recorder* r = capture::active()) r->on_kernel(call);
  const size_t need = b.workspace[op] != nullptr ? b.workspace[op](call) : 0;
  if (need <= call.workspace.bytes) {
    fn(call);
    return;
  }
  // Nobody planned this call's scratch (Note [Kernel workspaces]): borrow it
  // from the device's allocator (cached) for the duration of the kernel.
  Allocator& a = allocator_for(dev);
  const MemoryBlock block = a.allocate_on(dev, need);
  struct Release {
    KernelCall& call;
    Allocator& a;
    MemoryBlock block;
    Workspace before;
    ~Release() {
      call.workspace = before;
      a.free(block);
    }
  } release{call, a, block, call.workspace};
  call.workspace = {block.ptr, block.size};
  fn(call);
}

}  // namespace loom
