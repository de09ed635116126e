#include "loom/nn/pooling.h"

#include "loom/ops.h"
#include "nn/repr.h"

namespace loom::nn {

namespace {

// One value or two, as torch.nn's _pair accepts.
void check_pair(const char* module, const char* what, const std::vector<int64_t>& v) {
  LOOM_CHECK(v.size() == 1 || v.size() == 2, module, ": ", what, " must be one int or two ints, got ", shape_str(v));
}

// PyTorch prints what it was given: an int, or a tuple.
std::string py_int_or_tuple(const std::vector<int64_t>& v) {
  return v.size() == 1 ? std::to_string(v[0]) : detail::py_tuple(v);
}

}  // namespace

// ---- MaxPool2d ----

MaxPool2dImpl::MaxPool2dImpl(std::vector<int64_t> kernel, MaxPool2dOptions options)
    : Module("MaxPool2d"),
      kernel_size(std::move(kernel)),
      stride(options.stride.empty() ? kernel_size : std::move(options.stride)),
      padding(std::move(options.padding)),
      dilation(std::move(options.dilation)),
      ceil_mode(options.ceil_mode) {
  check_pair("MaxPool2d", "kernel_size", kernel_size);
  check_pair("MaxPool2d", "stride", stride);
  check_pair("MaxPool2d", "padding", padding);
  check_pair("MaxPool2d", "dilation", dilation);
}

Tensor MaxPool2dImpl::forward(const Tensor& input) {
  return loom::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
}

std::pair<Tensor, Tensor> MaxPool2dImpl::forward_with_indices(const Tensor& input) {
  return loom::max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode);
}

std::string MaxPool2dImpl::extra_repr() const {
  return "kernel_size=" + py_int_or_tuple(kernel_size) + ", stride=" + py_int_or_tuple(stride) +
         ", padding=" + py_int_or_tuple(padding) + ", dilation=" + py_int_or_tuple(dilation) +
         ", ceil_mode=" + detail::py_bool(ceil_mode);
}

// ---- AvgPool2d ----

AvgPool2dImpl::AvgPool2dImpl(std::vector<int64_t> kernel, AvgPool2dOptions options)
    : Module("AvgPool2d"),
      kernel_size(std::move(kernel)),
      stride(options.stride.empty() ? kernel_size : std::move(options.stride)),
      padding(std::move(options.padding)),
      ceil_mode(options.ceil_mode),
      count_include_pad(options.count_include_pad),
      divisor_override(options.divisor_override) {
  check_pair("AvgPool2d", "kernel_size", kernel_size);
  check_pair("AvgPool2d", "stride", stride);
  check_pair("AvgPool2d", "padding", padding);
}

Tensor AvgPool2dImpl::forward(const Tensor& input) {
  return loom::avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

std::string AvgPool2dImpl::extra_repr() const {
  return "kernel_size=" + py_int_or_tuple(kernel_size) + ", stride=" + py_int_or_tuple(stride) +
         ", padding=" + py_int_or_tuple(padding);
}

// ---- AdaptiveAvgPool2d ----

AdaptiveAvgPool2dImpl::AdaptiveAvgPool2dImpl(std::vector<int64_t> size)
    : Module("AdaptiveAvgPool2d"), output_size(std::move(size)) {
  check_pair("AdaptiveAvgPool2d", "output_size", output_size);
}

Tensor AdaptiveAvgPool2dImpl::forward(const Tensor& input) { return loom::adaptive_avg_pool2d(input, output_size); }

std::string AdaptiveAvgPool2dImpl::extra_repr() const { return "output_size=" + py_int_or_tuple(output_size); }

}  // namespace loom::nn
