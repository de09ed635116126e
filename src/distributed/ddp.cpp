// nn::DistributedDataParallel (Note [Gradient buckets] in loom/nn/parallel.h).
#include "loom/nn/parallel.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "loom/autograd.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::nn {

namespace dist = loom::distributed;

namespace {

// Broadcasts t from root; a non-contiguous tensor goes through a copy.
void broadcast_tensor(Tensor t, int root, dist::ProcessGroup& g) {
  NoGradGuard no_grad;
  Tensor flat = t.is_contiguous() ? t.detach() : t.detach().contiguous();
  g.broadcast(flat, root)->wait();
  if (!flat.is_same(t) && !t.is_contiguous()) t.detach().copy_(flat);
}

}  // namespace

void broadcast_module_state(Module& module, int root, dist::ProcessGroup* group) {
  dist::ProcessGroup& g = group ? *group : dist::default_group();
  for (const Tensor& p : module.parameters()) broadcast_tensor(p, root, g);
  for (const Tensor& b : module.buffers()) broadcast_tensor(b, root, g);
}

struct DistributedDataParallel::Bucket {
  Tensor buffer;                 // flat, the bucket's dtype
  std::vector<int64_t> params;   // indices into params_
  std::vector<int64_t> offsets;  // element offset of each in buffer
  int64_t pending = 0;           // parameters not yet ready this pass
  dist::WorkPtr work;
};

// The per-pass state, shared with the hooks (which hold a weak reference, so
// a hook that outlives its DDP does nothing).
struct DistributedDataParallel::Reducer {
  DistributedDataParallel* owner = nullptr;
  std::vector<Bucket> buckets;
  std::vector<std::pair<int64_t, int64_t>> where;  // param -> (bucket, slot)
  std::vector<uint8_t> ready;                      // per param, this pass
  size_t next_bucket = 0;                          // the next to launch
  bool pass_active = false;
  std::chrono::steady_clock::time_point last_launch;

  void begin_pass() {
    for (Bucket& b : buckets) {
      b.pending = static_cast<int64_t>(b.params.size());
      b.work.reset();
    }
    std::fill(ready.begin(), ready.end(), 0);
    next_bucket = 0;
    pass_active = true;
  }

  void launch_ready(bool all_ready_now) {
    const bool overlap = owner->options_.overlap;
    while (next_bucket < buckets.size() && buckets[next_bucket].pending == 0 && (overlap || all_ready_now)) {
      Bucket& b = buckets[next_bucket++];
      b.work = owner->group_->all_reduce(b.buffer, dist::ReduceOp::Avg);
    }
  }

  void mark_ready(int64_t i, const Tensor* grad) {
    LOOM_CHECK(!ready[static_cast<size_t>(i)], "DistributedDataParallel: parameter ", i,
               " got a gradient twice in one backward pass (reentrant backward, or a parameter used by two "
               "backward calls without no_sync())");
    ready[static_cast<size_t>(i)] = 1;
    const auto [bi, slot] = where[static_cast<size_t>(i)];
    Bucket& b = buckets[static_cast<size_t>(bi)];
    const Tensor& p = owner->params_[static_cast<size_t>(i)];
    Tensor piece = b.buffer.narrow(0, b.offsets[static_cast<size_t>(slot)], p.numel());
    NoGradGuard no_grad;
    if (grad != nullptr && grad->defined())
      piece.copy_(grad->detach().reshape({p.numel()}));
    else
      piece.zero_();
    --b.pending;
  }
};

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<Module> module,
                                                 DistributedDataParallelOptions options)
    : module_(std::move(module)), options_(options) {
  LOOM_CHECK(module_ != nullptr, "DistributedDataParallel: the module is null");
  LOOM_CHECK(options_.bucket_cap_mb > 0, "DistributedDataParallel: bucket_cap_mb must be positive, got ",
             options_.bucket_cap_mb);
  group_ = options_.process_group ? options_.process_group : &dist::default_group();
  broadcast_module_state(*module_, 0, group_);

  for (const Tensor& p : module_->parameters())
    if (p.requires_grad()) params_.push_back(p);
  reducer_ = std::make_shared<Reducer>();
  reducer_->owner = this;
  reducer_->where.resize(params_.size());
  reducer_->ready.assign(params_.size(), 0);

  // Buckets: reverse registration order, one dtype each, up to the cap.
  LOOM_CHECK(options_.first_bucket_mb > 0, "DistributedDataParallel: first_bucket_mb must be positive, got ",
             options_.first_bucket_mb);
  const auto cap = static_cast<int64_t>(options_.bucket_cap_mb * 1024 * 1024);
  const auto first_cap = std::min(cap, static_cast<int64_t>(options_.first_bucket_mb * 1024 * 1024));
  std::map<DType, size_t> open;  // dtype -> its bucket being filled
  std::map<DType, int64_t> open_bytes;
  std::vector<Bucket>& buckets = reducer_->buckets;
  std::vector<int64_t> sizes;  // elements per bucket, while building
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    const Tensor& p = params_[static_cast<size_t>(i)];
    const int64_t bytes = static_cast<int64_t>(p.nbytes());
    auto it = open.find(p.dtype());
    if (it == open.end() || open_bytes[p.dtype()] + bytes > (it->second == 0 ? first_cap : cap)) {
      buckets.emplace_back();
      sizes.push_back(0);
      it = open.insert_or_assign(p.dtype(), buckets.size() - 1).first;
      open_bytes[p.dtype()] = 0;
    }
    Bucket& b = buckets[it->second];
    reducer_->where[static_cast<size_t>(i)] = {static_cast<int64_t>(it->second), static_cast<int64_t>(b.params.size())};
    b.params.push_back(i);
    b.offsets.push_back(sizes[it->second]);
    sizes[it->second] += p.numel();
    open_bytes[p.dtype()] += bytes;
  }
  for (size_t k = 0; k < buckets.size(); ++k) {
    const Tensor& first = params_[static_cast<size_t>(buckets[k].params[0])];
    buckets[k].buffer = zeros({sizes[k]}, TensorOptions().dtype(first.dtype()));
  }

  // The hooks (Note [Gradient buckets]).
  std::weak_ptr<Reducer> weak = reducer_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto index = static_cast<int64_t>(i);
    hook_handles_.push_back(params_[i].register_post_accumulate_grad_hook([weak, index](const Tensor& p) {
      std::shared_ptr<Reducer> r = weak.lock();
      if (!r || !r->owner->sync_) return;
      if (!r->pass_active) {
        r->begin_pass();
        std::weak_ptr<Reducer> w = r;
        autograd::queue_callback([w] {
          if (std::shared_ptr<Reducer> rr = w.lock()) rr->owner->finish_backward();
        });
      }
      r->mark_ready(index, &p.grad());
      r->launch_ready(false);
    }));
  }
}

DistributedDataParallel::~DistributedDataParallel() {
  for (size_t i = 0; i < params_.size(); ++i) params_[i].remove_hook(hook_handles_[i]);
  // Buckets still reducing (a backward that threw) finish before their buffers go.
  for (Bucket& b : reducer_->buckets)
    if (b.work) {
      try {
        b.work->wait();
      } catch (...) {
      }
    }
}

void DistributedDataParallel::finish_backward() {
  const auto backward_end = std::chrono::steady_clock::now();
  Reducer& r = *reducer_;
  r.pass_active = false;
  // Parameters that got no gradient this pass.
  std::vector<int64_t> missing;
  for (size_t i = 0; i < params_.size(); ++i)
    if (!r.ready[i]) missing.push_back(static_cast<int64_t>(i));
  if (!missing.empty() && !options_.find_unused_parameters) {
    // Wait for what was started, so no all-reduce outlives this error.
    for (Bucket& b : r.buckets)
      if (b.work) b.work->wait();
    const StateDict named = module_->named_parameters();
    std::string names;
    for (size_t k = 0; k < missing.size() && k < 8; ++k) {
      const Tensor& p = params_[static_cast<size_t>(missing[k])];
      for (const auto& [name, t] : named)
        if (t.is_same(p)) names += (names.empty() ? "" : ", ") + name;
    }
    LOOM_ERROR("DistributedDataParallel: ", missing.size(), " parameter(s) received no gradient in this backward "
               "pass (", names, missing.size() > 8 ? ", ..." : "", "); construct DDP with "
               "find_unused_parameters = true if the model does not use every parameter in every step");
  }
  std::vector<uint8_t> locally_used(r.ready.begin(), r.ready.end());
  for (int64_t i : missing) r.mark_ready(i, nullptr);
  r.launch_ready(true);
  // Which parameters some rank used, queued after the buckets.
  Tensor used;
  dist::WorkPtr used_work;
  if (options_.find_unused_parameters) {
    used = zeros({static_cast<int64_t>(params_.size())}, TensorOptions().dtype(kInt32));
    int32_t* u = used.data_ptr<int32_t>();
    for (size_t i = 0; i < params_.size(); ++i) u[i] = locally_used[i];
    used_work = group_->all_reduce(used, dist::ReduceOp::Max);
  }
  const auto start = std::chrono::steady_clock::now();
  int64_t bytes = 0;
  double comm = 0, overlapped = 0;
  for (Bucket& b : r.buckets) {
    b.work->wait();
    bytes += static_cast<int64_t>(b.buffer.nbytes());
    const auto s = b.work->started_at(), e = b.work->finished_at();
    comm += std::chrono::duration<double>(e - s).count();
    if (s < backward_end) overlapped += std::chrono::duration<double>(std::min(e, backward_end) - s).count();
  }
  if (used_work) used_work->wait();
  stats_.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats_.buckets = static_cast<int64_t>(r.buckets.size());
  stats_.bytes = bytes;
  stats_.comm_seconds = comm;
  stats_.overlapped_seconds = overlapped;
  stats_.unused_parameters = static_cast<int64_t>(missing.size());

  // Write the averages back.
  NoGradGuard no_grad;
  const int32_t* used_by_some = used.defined() ? used.data_ptr<int32_t>() : nullptr;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (used_by_some && used_by_some[i] == 0) continue;  // no rank used it: .grad() stays as it was
    const auto [bi, slot] = r.where[i];
    Bucket& b = r.buckets[static_cast<size_t>(bi)];
    Tensor& p = params_[i];
    Tensor avg = b.buffer.narrow(0, b.offsets[static_cast<size_t>(slot)], p.numel()).view(p.sizes());
    const Tensor& g = p.grad();
    if (g.defined() && g.sizes() == p.sizes()) {
      p.mutable_grad().copy_(avg);
    } else {
      p.set_grad(avg.clone());
    }
  }
}

Tensor DistributedDataParallel::forward(const Tensor& input) {
  sync_buffers();
  return module_->forward(input);
}

void DistributedDataParallel::sync_buffers() {
  if (!options_.broadcast_buffers || group_->size() == 1) return;
  for (const Tensor& b : module_->buffers()) broadcast_tensor(b, 0, *group_);
}

std::vector<std::vector<int64_t>> DistributedDataParallel::bucket_assignment() const {
  std::vector<std::vector<int64_t>> out;
  for (const Bucket& b : reducer_->buckets) out.push_back(b.params);
  return out;
}

DistributedDataParallel::NoSyncGuard::NoSyncGuard(DistributedDataParallel& ddp) : ddp_(ddp), previous_(ddp.sync_) {
  ddp_.sync_ = false;
}

DistributedDataParallel::NoSyncGuard::~NoSyncGuard() { ddp_.sync_ = previous_; }

}  // namespace loom::nn
