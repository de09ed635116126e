// Autocast: mixed precision by op, PyTorch's torch.autocast.
//
//   {
//     loom::AutocastGuard autocast(Device::cpu(), kBFloat16);
//     Tensor loss = model->loss(x, y);   // matmuls in bfloat16, softmax and the loss in float32
//   }
//   loss.backward();                     // gradients reach the float32 parameters
//
// While a guard is alive on a thread, ops on tensors of its device follow
// PyTorch's autocast op policy (Note [Autocast op policy] in
// src/core/autocast.h):
//   - low precision: matmul, mm, bmm, linear, conv1d, conv2d,
//     conv_transpose2d and scaled_dot_product_attention cast their float32
//     inputs to the guard's dtype (bfloat16 or float16) and return it;
//   - float32: softmax, log_softmax, logsumexp, layer_norm, rms_norm,
//     batch_norm, the reductions (sum, mean, prod, var, std, norm, cumsum),
//     exp, log, pow and the losses cast low-precision inputs to float32;
//   - every other op runs in the dtype of its inputs, mixed dtypes promoting
//     as usual (a bfloat16 tensor plus a float32 one is float32).
// Casts are differentiable, so the parameters (the master weights) stay
// float32 and receive float32 gradients. backward() runs with autocast off:
// each backward op runs in the dtype its forward op ran in.
#pragma once

#include "loom/device.h"
#include "loom/dtype.h"

namespace loom {

// Enables (or, with enabled = false, disables) autocast to `dtype` (kBFloat16
// or kFloat16) for ops on `device`'s type on this thread until destruction,
// then restores what was set before. Guards nest.
class AutocastGuard {
 public:
  explicit AutocastGuard(Device device, DType dtype = kBFloat16, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DeviceType type_;
  bool prev_enabled_;
  DType prev_dtype_;
};

// Whether autocast is on for ops on `type` on this thread, and its dtype.
bool is_autocast_enabled(DeviceType type = DeviceType::CPU);
DType autocast_dtype(DeviceType type = DeviceType::CPU);
// Set them outright (torch.set_autocast_enabled, set_autocast_cpu_dtype);
// AutocastGuard is the scoped form. The dtype must be bfloat16 or float16.
void set_autocast_enabled(DeviceType type, bool enabled);
void set_autocast_dtype(DeviceType type, DType dtype);

}  // namespace loom
