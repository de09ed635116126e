// The fused optimizer steps: checks and launch of the multi-tensor kernels
// (FusedAdam, FusedSgd in ops.def).
//
// Note [Fused optimizer steps]
// optim::Adam, AdamW and SGD run their per-parameter formulas as a chain of
// loom ops: each op is a kernel launch, a fresh output and a pass over
// memory, for every parameter. The fused ops do the whole chain for every
// parameter of a group in one launch, reading each element once. To give
// the same numbers as the op chain (bitwise: the optimizer picks the fused
// path by default, and a resumed run must not drift), the kernel repeats the
// chain's roundings exactly: every scalar is rounded to float32 as a wrapped
// C++ number is before it meets a float32 tensor, every operation rounds to
// float32, the products are grouped as the ops group them, no operation is
// contracted into an FMA (loom builds in ISO C++ mode, where GCC does not
// contract), and maximum lets NaN win as the Maximum kernel does. Bias
// corrections and step sizes are computed in double, per parameter, as the
// optimizer computes them. The state is updated in place (the per-tensor
// path rebuilds it; see Note [Optimizer updates]), and every written
// tensor's version counter is bumped, as an in-place op would.
#include <algorithm>

#include "ops/op_utils.h"

namespace loom {

namespace {

// Every tensor of `list` float32, contiguous, on `device`, with the shape of
// the matching parameter; `what` names the list in errors.
void check_list(const char* op, const char* what, const std::vector<Tensor>& list, const std::vector<Tensor>& params) {
  LOOM_CHECK(list.size() == params.size(), op, ": expected ", params.size(), " tensors in ", what, " (one per parameter), got ",
             list.size());
  for (size_t j = 0; j < list.size(); ++j) {
    const Tensor& t = list[j];
    LOOM_CHECK(t.defined(), op, ": ", what, "[", j, "] is an undefined tensor");
    LOOM_CHECK(t.dtype() == kFloat32, op, ": ", what, "[", j, "] has dtype ", dtype_name(t.dtype()),
               "; the fused step supports float32 only");
    LOOM_CHECK(t.device() == params[0].device(), op, ": ", what, "[", j, "] is on ", t.device().str(), " but params[0] is on ",
               params[0].device().str());
    LOOM_CHECK(t.sizes() == params[j].sizes(), op, ": ", what, "[", j, "] has shape ", shape_str(t.sizes()),
               " but params[", j, "] has shape ", shape_str(params[j].sizes()));
    LOOM_CHECK(t.is_contiguous(), op, ": ", what, "[", j, "] (shape ", shape_str(t.sizes()), ", strides ",
               shape_str(t.strides()), ") is not contiguous");
  }
}

void check_params(const char* op, const std::vector<Tensor>& params) {
  LOOM_CHECK(!params.empty(), op, ": expected at least one parameter");
  check_list(op, "params", params, params);
  if (is_grad_enabled())
    for (size_t j = 0; j < params.size(); ++j)
      LOOM_CHECK(!params[j].requires_grad(), op, ": params[", j, "] (shape ", shape_str(params[j].sizes()),
                 ") requires grad and is updated in place; call it under NoGradGuard");
}

// Written tensors must not share memory with each other or with the
// gradients: the kernel reads and writes each element once. (Gradients,
// only read, may share.)
void check_distinct(const char* op, std::initializer_list<const std::vector<Tensor>*> written,
                    const std::vector<Tensor>& grads) {
  std::vector<const Storage*> seen;
  for (const auto* l : written)
    for (const Tensor& t : *l) seen.push_back(t.unsafe_impl()->storage.get());
  std::sort(seen.begin(), seen.end());
  bool ok = std::adjacent_find(seen.begin(), seen.end()) == seen.end();
  for (const Tensor& g : grads) ok = ok && !std::binary_search(seen.begin(), seen.end(), g.unsafe_impl()->storage.get());
  LOOM_CHECK(ok, op, ": parameters, gradients and optimizer state must not share memory");
}

// Appends every tensor of `ts` to a call's inputs or outputs.
void add_inputs(KernelCall& c, const std::vector<Tensor>& ts) {
  for (const Tensor& t : ts) c.in.push_back(t.unsafe_impl());
}
void add_outputs(KernelCall& c, const std::vector<Tensor>& ts) {
  for (const Tensor& t : ts) c.out.push_back(t.unsafe_impl());
}

void bump(const std::vector<Tensor>& ts) {
  for (const Tensor& t : ts) t.unsafe_impl()->storage->bump_version();
}

void fused_adam(const char* op, bool decoupled, const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                const std::vector<Tensor>& max_exp_avg_sqs, const std::vector<Tensor>& state_steps, double lr,
                double beta1, double beta2, double weight_decay, double eps, bool amsgrad, bool maximize) {
  check_params(op, params);
  check_list(op, "grads", grads, params);
  check_list(op, "exp_avgs", exp_avgs, params);
  check_list(op, "exp_avg_sqs", exp_avg_sqs, params);
  if (amsgrad) check_list(op, "max_exp_avg_sqs", max_exp_avg_sqs, params);
  LOOM_CHECK(state_steps.size() == params.size(), op, ": expected ", params.size(),
             " tensors in state_steps (one per parameter), got ", state_steps.size());
  for (size_t j = 0; j < state_steps.size(); ++j) {
    const Tensor& s = state_steps[j];
    LOOM_CHECK(s.defined() && s.dim() == 0 && s.dtype() == kFloat64 && s.device().is_cpu(), op, ": state_steps[", j,
               "] must be a 0-dim float64 tensor on the cpu");
  }
  std::vector<Tensor> none;
  check_distinct(op, {&params, &exp_avgs, &exp_avg_sqs, amsgrad ? &max_exp_avg_sqs : &none}, grads);
  // ops.def "optimizers": the tensors written are outputs, those only read inputs.
  KernelCall c;
  c.op = OpKind::FusedAdam;
  add_outputs(c, params);
  add_outputs(c, exp_avgs);
  add_outputs(c, exp_avg_sqs);
  if (amsgrad) add_outputs(c, max_exp_avg_sqs);
  add_inputs(c, grads);
  add_inputs(c, state_steps);
  c.params = AdamParams{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled};
  run_kernel(c);
  bump(params);
  bump(exp_avgs);
  bump(exp_avg_sqs);
  if (amsgrad) bump(max_exp_avg_sqs);
}

}  // namespace

void _fused_adam_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avgs,
                  const std::vector<Tensor>& exp_avg_sqs, const std::vector<Tensor>& max_exp_avg_sqs,
                  const std::vector<Tensor>& state_steps, double lr, double beta1, double beta2, double weight_decay,
                  double eps, bool amsgrad, bool maximize) {
  fused_adam("_fused_adam_", false, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
             weight_decay, eps, amsgrad, maximize);
}

void _fused_adamw_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avgs,
                   const std::vector<Tensor>& exp_avg_sqs, const std::vector<Tensor>& max_exp_avg_sqs,
                   const std::vector<Tensor>& state_steps, double lr, double beta1, double beta2, double weight_decay,
                   double eps, bool amsgrad, bool maximize) {
  fused_adam("_fused_adamw_", true, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
             weight_decay, eps, amsgrad, maximize);
}

void _fused_sgd_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                 const std::vector<Tensor>& momentum_buffers, double weight_decay, double momentum, double lr,
                 double dampening, bool nesterov, bool maximize, bool is_first_step) {
  const char* op = "_fused_sgd_";
  check_params(op, params);
  check_list(op, "grads", grads, params);
  if (momentum != 0.0) check_list(op, "momentum_buffers", momentum_buffers, params);
  std::vector<Tensor> none;
  check_distinct(op, {&params, momentum != 0.0 ? &momentum_buffers : &none}, grads);
  KernelCall c;
  c.op = OpKind::FusedSgd;
  add_outputs(c, params);
  if (momentum != 0.0) add_outputs(c, momentum_buffers);
  add_inputs(c, grads);
  c.params = SgdParams{lr, momentum, dampening, weight_decay, nesterov, maximize, is_first_step};
  run_kernel(c);
  bump(params);
  if (momentum != 0.0) bump(momentum_buffers);
}

bool _fused_optim_supported(Device device) {
  const Backend* b = find_backend(device);
  return b != nullptr && b->supports(OpKind::FusedAdam, kFloat32) && b->supports(OpKind::FusedSgd, kFloat32);
}

}  // namespace loom
