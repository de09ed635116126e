#include "loom/nn/dropout.h"

#include "loom/nn/functional.h"
#include "nn/repr.h"

namespace loom::nn {

DropoutImpl::DropoutImpl(double prob) : Module("Dropout"), p(prob) {
  LOOM_CHECK(p >= 0 && p <= 1, "Dropout: probability has to be between 0 and 1, but got ", p);
}

Tensor DropoutImpl::forward(const Tensor& input) { return functional::dropout(input, p, is_training()); }

// loom has no in-place dropout; PyTorch prints the flag, so it is spelled out.
std::string DropoutImpl::extra_repr() const { return "p=" + detail::py_float(p) + ", inplace=False"; }

Dropout2dImpl::Dropout2dImpl(double prob) : Module("Dropout2d"), p(prob) {
  LOOM_CHECK(p >= 0 && p <= 1, "Dropout2d: probability has to be between 0 and 1, but got ", p);
}

Tensor Dropout2dImpl::forward(const Tensor& input) { return functional::dropout2d(input, p, is_training()); }

std::string Dropout2dImpl::extra_repr() const { return "p=" + detail::py_float(p) + ", inplace=False"; }

}  // namespace loom::nn
