// Arguments of the multi-tensor optimizer kernels (FusedAdam, FusedSgd).
// The ops layer fills one of these and passes its address in KernelCall::i[0]
// (see the "optimizers" rows of ops.def); the lists do not fit in
// KernelCall's fixed in/out slots.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor_impl.h"

namespace loom {

struct FusedAdamArgs {
  std::vector<TensorImpl*> params, grads, exp_avgs, exp_avg_sqs;
  std::vector<TensorImpl*> max_exp_avg_sqs;  // amsgrad only
  std::vector<TensorImpl*> steps;            // 0-dim float64 CPU, already incremented
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  bool amsgrad = false, maximize = false;
  bool decoupled = false;  // AdamW: p *= 1 - lr * weight_decay instead of an L2 term
};

struct FusedSgdArgs {
  std::vector<TensorImpl*> params, grads;
  std::vector<TensorImpl*> momentum_buffers;  // momentum != 0 only
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
  bool first_step = false;  // the buffers are new: buf = d_p, without dampening
};

template <typename Args>
int64_t args_to_param(const Args* a) {
  return static_cast<int64_t>(reinterpret_cast<intptr_t>(a));
}
template <typename Args>
const Args& args_from_param(int64_t v) {
  return *reinterpret_cast<const Args*>(static_cast<intptr_t>(v));
}

}  // namespace loom
