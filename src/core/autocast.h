// Autocast's op policy (include/loom/autocast.h is the public guard).
//
// Note [Autocast op policy]
// PyTorch puts autocast in its dispatcher; loom has no dispatcher, so each
// op the policy names checks at its entry:
//
//   Tensor matmul(const Tensor& a, const Tensor& b) {
//     if (autocast::Region r{a, autocast::Policy::Low}) return matmul(r.cast(a), r.cast(b));
//     ...
//
// A Region is active when autocast is on for the first operand's device type
// on this thread and no autocast op is already running there. While it lives
// it suspends autocast, so the op's own calls (matmul's bmm, cross_entropy's
// log_softmax) run as written, below the policy, and the re-entered op takes
// its ordinary path. cast() converts a floating tensor other than float64
// to the region's dtype (the autocast dtype for Low, float32 for Float32)
// with the differentiable to(), so gradients reach the float32 parameters in
// float32; other tensors, and undefined ones, pass through. As in PyTorch,
// float64 is never cast, and ops outside the policy run in their inputs'
// dtypes with the usual promotion.
//
// The lists (PyTorch's CUDA lists, which the policy follows; its
// CPU lists of 1.13 leave softmax and the norms alone):
//   Low: matmul, mm, bmm, linear, conv1d, conv2d, conv_transpose2d,
//        scaled_dot_product_attention.
//   Float32: softmax, log_softmax, logsumexp, layer_norm, rms_norm,
//        batch_norm, sum, mean, prod, var, std, norm, cumsum, exp, log,
//        log1p, pow, rsqrt, reciprocal, softplus, cross_entropy, nll_loss,
//        mse_loss, l1_loss, smooth_l1_loss, binary_cross_entropy(_with_logits),
//        kl_div.
//
// backward() runs with autocast off (autocast::Off in the engine), so a
// backward formula runs in the dtypes its forward saw; a checkpointed
// region's recomputation runs under the autocast state its forward ran in.
#pragma once

#include "loom/autocast.h"
#include "loom/tensor.h"

namespace loom::autocast {

enum class Policy { Low, Float32 };

// The state of one thread: per device type, whether on and to which dtype;
// whether an autocast op is running (suspended).
struct State {
  bool enabled[2] = {false, false};
  DType dtype[2] = {kBFloat16, kFloat16};  // PyTorch's defaults: CPU bf16, CUDA fp16
  bool suspended = false;
};
State& state();

class Region {
 public:
  Region(const Tensor& first, Policy policy);
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  explicit operator bool() const { return active_; }
  // t in the region's dtype when t is floating and not float64; else t.
  Tensor cast(const Tensor& t) const;

 private:
  bool active_ = false;
  DType target_ = kFloat32;
};

// Turns autocast off on this thread until destruction (backward uses it).
class Off {
 public:
  Off();
  ~Off();
  Off(const Off&) = delete;
  Off& operator=(const Off&) = delete;

 private:
  State saved_;
};

// Sets a saved state on this thread until destruction (checkpoint's
// recomputation runs under its forward's state).
class Restore {
 public:
  explicit Restore(const State& s);
  ~Restore();
  Restore(const Restore&) = delete;
  Restore& operator=(const Restore&) = delete;

 private:
  State saved_;
};

}  // namespace loom::autocast
