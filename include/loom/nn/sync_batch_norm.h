// SyncBatchNorm: batch normalization whose statistics cover the whole batch
// of a process group (torch.nn.SyncBatchNorm).
//
//   distributed::init_process_group("mpi");
//   auto model = models::resnet9(3, 10);
//   model = nn::SyncBatchNorm::convert_sync_batchnorm(model);   // every BatchNorm
//   ...each rank runs its slice of the batch; every rank runs backward...
//
// In training, a channel's mean and variance are those of the batch made of
// every rank's input (ranks may hold different batch sizes), and gradients
// are those of BatchNorm over that global batch: the ranks exchange the
// statistics in forward and their gradients in backward, so every rank of the
// group must run forward and backward the same number of times, as in
// PyTorch. In eval, and in a group of one rank (or with no process group
// initialized), it is BatchNorm: the same code, bit for bit, without
// communication.
#pragma once

#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>

#include "loom/distributed.h"
#include "loom/nn/normalization.h"

namespace loom::nn {

namespace functional {
// Training-mode batch normalization with statistics over all ranks of
// `group` (the default group when null), every rank calling it with its own
// slice of the batch. input (N, C, *) with N free per rank; weight and bias
// (C) or undefined. Defined running_mean / running_var (C) are updated in
// place as batch_norm does (unbiased variance of the global batch, the same
// values on every rank). Always communicates, even in a group of one: it is
// what SyncBatchNorm runs when the group has several ranks.
Tensor sync_batch_norm(const Tensor& input, const Tensor& running_mean, const Tensor& running_var,
                       const Tensor& weight = {}, const Tensor& bias = {}, double momentum = 0.1, double eps = 1e-5,
                       const std::shared_ptr<distributed::ProcessGroup>& group = nullptr);
}  // namespace functional

// BatchNorm over (N, C, *) input of any rank >= 2, synchronized across
// process_group (the default group when null, looked up at each forward).
// Parameters, buffers, options and printing are BatchNorm's.
class SyncBatchNormImpl : public BatchNormImplBase {
 public:
  SyncBatchNormImpl(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                    bool affine = true, bool track_running_stats = true,
                    std::shared_ptr<distributed::ProcessGroup> process_group = nullptr);
  // A SyncBatchNorm that registers `bn`'s own parameter and buffer tensors
  // (the same tensors, not copies, as PyTorch's conversion shares them) and
  // takes its options and training flag.
  SyncBatchNormImpl(const BatchNormImplBase& bn, std::shared_ptr<distributed::ProcessGroup> process_group);

  Tensor forward(const Tensor& input) override;

  std::shared_ptr<distributed::ProcessGroup> process_group;

 protected:
  void check_input_dim(const Tensor& input) const override;
};

class SyncBatchNorm : public ModuleHolder<SyncBatchNormImpl> {
 public:
  using ModuleHolder<SyncBatchNormImpl>::ModuleHolder;

  // Replaces every BatchNorm (BatchNorm1d, BatchNorm2d) in `module`'s tree by
  // a SyncBatchNorm sharing its tensors and options, and returns the module:
  // a new one when `module` itself is a BatchNorm or a Sequential that held
  // one (use the result). See Note [Converting to SyncBatchNorm] in
  // src/distributed/sync_batch_norm.cpp for which trees it can convert; it
  // throws a loom::Error naming the module it cannot.
  static std::shared_ptr<Module> convert_sync_batchnorm(
      std::shared_ptr<Module> module, std::shared_ptr<distributed::ProcessGroup> process_group = nullptr);
  // The same for a holder, keeping its type: model = convert_sync_batchnorm(model).
  template <typename Holder>
    requires std::derived_from<typename Holder::ImplType, Module>
  static Holder convert_sync_batchnorm(const Holder& module,
                                       std::shared_ptr<distributed::ProcessGroup> process_group = nullptr) {
    std::shared_ptr<Module> converted = convert_sync_batchnorm(module.ptr(), std::move(process_group));
    auto typed = std::dynamic_pointer_cast<typename Holder::ImplType>(converted);
    LOOM_CHECK(typed != nullptr, "SyncBatchNorm::convert_sync_batchnorm: the converted ", converted->type_name(),
               " does not fit the holder of a ", module->type_name(), "; convert the shared_ptr<Module> instead");
    return Holder(typed);
  }
};

}  // namespace loom::nn
