#include "parallel.h"

#include <chrono>

namespace loom::cli {

namespace dist = loom::distributed;

void start_distributed(const DistributedOptions& o) {
  if (!o.enabled) return;
  LOOM_CHECK(o.timeout_s > 0, "train: --timeout must be positive, got ", o.timeout_s);
  dist::Options options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  dist::init_process_group("auto", options);
}

void stop_distributed() {
  if (dist::is_initialized()) dist::destroy_process_group();
}

Replica replica() { return {dist::get_rank(), dist::get_world_size()}; }

int64_t Replica::local_batch(int64_t global, const char* flag) const {
  LOOM_CHECK(global % world == 0, "train: ", flag, " ", global, " is the global batch; it must split evenly over the ",
             world, " ranks");
  return global / world;
}

Tensor Replica::slice(const Tensor& global) const {
  const int64_t part = local_batch(global.size(0), "--batch-size");
  return world == 1 ? global : global.narrow(0, rank * part, part).contiguous();
}

double Replica::mean(double local) const {
  if (world == 1) return local;
  Tensor t = full({1}, local, TensorOptions().dtype(kFloat64));
  dist::all_reduce(t, dist::ReduceOp::Avg);
  return t.item<double>();
}

DataParallelModel::DataParallelModel(std::shared_ptr<nn::Module> model, const DistributedOptions& o)
    : model_(std::move(model)) {
  if (!o.enabled) return;
  if (o.zero)
    nn::broadcast_module_state(*model_);
  else
    ddp_ = std::make_unique<nn::DistributedDataParallel>(model_);
}

Tensor DataParallelModel::forward(const Tensor& x) { return ddp_ ? ddp_->forward(x) : model_->forward(x); }

void DataParallelModel::before_forward() {
  if (ddp_) ddp_->sync_buffers();
}

std::unique_ptr<optim::Optimizer> distributed_optimizer(const DistributedOptions& o, std::vector<Tensor> params,
                                                        const optim::ZeroRedundancyOptimizer::MakeLocal& make) {
  if (o.enabled && o.zero) return std::make_unique<optim::ZeroRedundancyOptimizer>(std::move(params), make);
  std::vector<optim::ParamGroup> groups;
  groups.emplace_back(std::move(params));
  return make(std::move(groups));
}

std::ostream& null_stream() {
  static std::ostream discard(nullptr);
  return discard;
}

}  // namespace loom::cli
