#include "jit/recorder.h"

#include <cstring>

#include "autograd/node.h"
#include "core/allocator.h"
#include "core/tensor_impl.h"
#include "loom/allocator.h"
#include "loom/threads.h"

namespace loom::jit::detail {

namespace {

// Where a random kernel takes its Philox key and first counter (ops.def):
// i[slot] = seed, i[slot + 1] = offset; -1 for ops that draw nothing.
int rng_slot(const KernelCall& c) {
  switch (c.op) {
    case OpKind::Uniform:
    case OpKind::Normal:
    case OpKind::RandInt:
    case OpKind::Bernoulli:
      return 0;
    case OpKind::Attention:
    case OpKind::AttentionBackward:
      return c.f[1] > 0 ? 2 : -1;  // dropout_p
    default:
      return -1;
  }
}

bool same_owner(const std::weak_ptr<Storage>& a, const std::shared_ptr<Storage>& b) {
  return !a.owner_before(b) && !b.owner_before(a);
}

}  // namespace

Recorder::Recorder(const std::vector<Tensor>& args) : g_(std::make_shared<GraphImpl>()) {
  g_->threads = get_num_threads();
  for (size_t a = 0; a < args.size(); ++a) {
    const Tensor& t = args[a];
    LOOM_CHECK(t.defined(), "compile: argument ", a, " is an undefined tensor");
    const TensorImpl& impl = *t.unsafe_impl();
    auto it = known_.find(impl.storage.get());
    if (it == known_.end()) {
      const int b = new_buffer(BufferKind::Input, impl.storage, -1);
      g_->buffers[static_cast<size_t>(b)].arg = static_cast<int>(a);
      g_->buffers[static_cast<size_t>(b)].arg_offset = impl.offset;
    }
    g_->args.push_back(value_of(impl));
  }
}

int Recorder::new_buffer(BufferKind kind, const std::shared_ptr<Storage>& s, int alloc_node) {
  BufferInfo b;
  b.kind = kind;
  b.nbytes = s->nbytes;
  b.device = s->device;
  b.captured = s;
  b.alloc_node = alloc_node;
  g_->buffers.push_back(std::move(b));
  const int id = static_cast<int>(g_->buffers.size()) - 1;
  known_[s.get()] = Known{s, id};
  return id;
}

void Recorder::on_alloc(const std::shared_ptr<Storage>& storage) {
  // Provisional: finish() decides between Intermediate, Output and NewState.
  new_buffer(BufferKind::Intermediate, storage, static_cast<int>(g_->nodes.size()));
}

int Recorder::buffer_of(const TensorImpl& impl) {
  const std::shared_ptr<Storage>& s = impl.storage;
  auto it = known_.find(s.get());
  // A storage seen before, unless that one died and this one took its address.
  if (it != known_.end() && same_owner(it->second.storage, s)) return it->second.buffer;
  // Made before the step (or by another thread): state the step reads or writes.
  return new_buffer(BufferKind::State, s, -1);
}

int Recorder::value_of(const TensorImpl& impl) {
  const int b = buffer_of(impl);
  auto key = std::make_tuple(b, static_cast<int>(impl.dtype), impl.sizes, impl.strides, impl.offset);
  auto it = values_.find(key);
  if (it != values_.end()) return it->second;
  ValueInfo v;
  v.buffer = b;
  v.dtype = impl.dtype;
  v.sizes = impl.sizes;
  v.strides = impl.strides;
  v.offset = impl.offset;
  g_->values.push_back(std::move(v));
  const int id = static_cast<int>(g_->values.size()) - 1;
  values_.emplace(std::move(key), id);
  return id;
}

void Recorder::on_kernel(const KernelCall& call) {
  NodeInfo n;
  n.kind = NodeKind::Kernel;
  n.op = call.op;
  for (const TensorImpl* t : call.in) {
    if (t == nullptr) {
      n.in.push_back(-1);
      continue;
    }
    const int v = value_of(*t);
    BufferInfo& b = g_->buffers[static_cast<size_t>(g_->values[static_cast<size_t>(v)].buffer)];
    // Created in the step and read before any kernel wrote it: host code
    // filled it (tensor({...}), scalar_tensor). Its bytes are part of the
    // graph: keep a copy, restored at each replay.
    if (b.alloc_node >= 0 && !b.kernel_touched && !b.owned) {
      capture::PauseGuard pause;
      const std::shared_ptr<Storage> s = b.captured.lock();
      LOOM_ASSERT(s != nullptr, "compile: a kernel input died before the kernel ran");
      LOOM_CHECK(s->device.is_cpu(), "compile: ", op_name(call.op), " reads a tensor that host code filled on ",
                 s->device.str(), "; only cpu tensors can be captured as constants");
      b.owned = allocate_storage(b.nbytes, s->device);
      if (b.nbytes > 0) std::memcpy(b.owned->data, s->data, b.nbytes);
    }
    b.kernel_touched = true;
    n.in.push_back(v);
  }
  for (TensorImpl* t : call.out) {
    const int v = value_of(*t);
    BufferInfo& b = g_->buffers[static_cast<size_t>(g_->values[static_cast<size_t>(v)].buffer)];
    b.kernel_touched = true;
    b.written = true;
    n.out.push_back(v);
  }
  std::copy(std::begin(call.f), std::end(call.f), n.f);
  std::copy(std::begin(call.i), std::end(call.i), n.i);
  n.params = call.params;
  n.workspace_bytes = kernel_workspace_bytes(call);
  const int slot = rng_slot(call);
  if (slot >= 0) {
    const auto seed = static_cast<uint64_t>(call.i[slot]), offset = static_cast<uint64_t>(call.i[slot + 1]);
    for (int d = static_cast<int>(g_->draws.size()) - 1; d >= 0 && n.rng < 0; --d) {
      const RngDraw& r = g_->draws[static_cast<size_t>(d)];
      if (r.seed == seed && r.offset == offset) n.rng = d;
    }
    if (n.rng < 0)
      refuse(op_name(call.op), "draws random numbers from a seed and offset that no generator reserved during the "
             "capture, so a replay could not draw fresh ones");
    g_->draws[static_cast<size_t>(n.rng)].used = true;
    n.rng_slot = slot;
  }
  if (pending_hyper_ && (call.op == OpKind::FusedAdam || call.op == OpKind::FusedSgd)) n.hyper = std::move(pending_hyper_);
  pending_hyper_ = nullptr;
  n.backward = in_backward_;
  g_->nodes.push_back(std::move(n));
}

void Recorder::on_host_access(const TensorImpl& impl, const char* what) {
  const int b = buffer_of(impl);
  const BufferInfo& info = g_->buffers[static_cast<size_t>(b)];
  // Host code may fill a tensor it just made; any other access reads or
  // writes a value the replay would not see again.
  if (info.alloc_node >= 0 && !info.kernel_touched) return;
  LOOM_ERROR("compile: ", what, " reads or writes a tensor's value on the host (shape ", shape_str(impl.sizes),
             ", dtype ", dtype_name(impl.dtype), "); a replay runs only the recorded kernels, so the value it sees "
             "would be frozen at capture. Read values after the compiled call (it returns tensors), not inside it");
}

void Recorder::on_rng(const Generator& generator, uint64_t n, uint64_t seed, uint64_t offset) {
  g_->draws.push_back(RngDraw{generator, n, seed, offset, false});
}

void Recorder::bind_hyperparameters(std::function<capture::Hyperparameters()> source) {
  pending_hyper_ = std::move(source);
}

void Recorder::on_host_check(const std::vector<Tensor>& values,
                             std::function<void(const std::vector<Tensor>&)> check) {
  NodeInfo n;
  n.kind = NodeKind::HostCheck;
  for (const Tensor& t : values) n.in.push_back(value_of(*t.unsafe_impl()));
  {
    capture::PauseGuard pause;  // its reads are the check's, not the step's
    check(values);
  }
  n.check = std::move(check);
  n.backward = in_backward_;
  g_->nodes.push_back(std::move(n));
}

void Recorder::on_backward() { in_backward_ = true; }

void Recorder::refuse(const char* what, const char* why) { LOOM_ERROR("compile: ", what, " ", why); }

std::shared_ptr<GraphImpl> Recorder::finish(const std::vector<Tensor>& outputs) {
  for (const RngDraw& d : g_->draws)
    LOOM_CHECK(d.used, "compile: a random op drew ", d.n, " numbers on the host (randperm) during the capture; a "
               "replay runs only kernels and would repeat the same numbers");
  // Each returned impl: how many times it is returned, and how many handles it has.
  struct Returned {
    long count = 0, handles = 0;
  };
  std::unordered_map<const TensorImpl*, Returned> returned;
  for (size_t k = 0; k < outputs.size(); ++k) {
    LOOM_CHECK(outputs[k].defined(), "compile: output ", k, " of the function is an undefined tensor");
    Returned& r = returned[outputs[k].unsafe_impl()];
    ++r.count;
    r.handles = outputs[k].impl_ptr().use_count();
  }
  // The roots the returned views keep: per root, how many returned impls
  // name it and how many references it has.
  std::unordered_map<const TensorImpl*, std::pair<long, long>> roots;
  for (const auto& [impl, r] : returned)
    if (impl->autograd && impl->autograd->view_base) {
      auto& [views, refs] = roots[impl->autograd->view_base.get()];
      ++views;
      refs = impl->autograd->view_base.use_count();
    }
  // Storages created in the step that outlive it: returned tensors alone
  // hold them (Output), or host objects keep them (NewState: gradients that
  // backward made, optimizer state). Those no kernel touched are not part
  // of the graph.
  for (BufferInfo& b : g_->buffers) {
    if (b.alloc_node < 0) continue;
    const std::shared_ptr<Storage> s = b.captured.lock();
    if (!s) continue;
    long impls = 0;
    bool elsewhere = false;
    for (const auto& [impl, r] : returned) {
      if (impl->storage != s) continue;
      ++impls;
      elsewhere = elsewhere || r.handles > r.count;
    }
    if (!b.kernel_touched && impls == 0) continue;
    // `s` is one reference; each returned impl on it is another.
    // A view keeps its root (autograd's view tracking), which is one more
    // reference to the storage; a root that only returned views hold is theirs.
    for (const auto& [root, views] : roots)
      if (root->storage == s && !returned.count(root) && views.second == views.first) ++impls;
    elsewhere = elsewhere || s.use_count() - 1 > impls;
    b.kind = impls > 0 && !elsewhere ? BufferKind::Output : BufferKind::NewState;
  }
  for (const Tensor& o : outputs) g_->outputs.push_back(value_of(*o.unsafe_impl()));
  // Filled on the host, read by kernels, never written by one: a constant.
  // (Written ones keep their kind and get their bytes restored at replay.)
  for (BufferInfo& b : g_->buffers)
    if (b.kind == BufferKind::Intermediate && b.owned && !b.written) b.kind = BufferKind::Constant;
  // Workspaces: one single-node buffer per kernel that asked for scratch.
  for (size_t k = 0; k < g_->nodes.size(); ++k) {
    NodeInfo& n = g_->nodes[k];
    if (n.workspace_bytes == 0) continue;
    BufferInfo w;
    w.kind = BufferKind::Workspace;
    w.nbytes = n.workspace_bytes;
    w.device = n.out.empty() ? Device::cpu() : g_->buffers[static_cast<size_t>(
                                                    g_->values[static_cast<size_t>(n.out[0])].buffer)].device;
    w.alloc_node = static_cast<int>(k);
    g_->buffers.push_back(std::move(w));
    n.workspace = static_cast<int>(g_->buffers.size()) - 1;
  }
  compute_liveness(*g_);
  return g_;
}

}  // namespace loom::jit::detail
