#include "loom/nn/conv.h"

#include <algorithm>
#include <cmath>

#include "loom/nn/init.h"
#include "nn/repr.h"

namespace loom::nn {

namespace {

// A one- or two-value option as two values (height, width).
std::vector<int64_t> two(const char* module, const char* what, const std::vector<int64_t>& v) {
  LOOM_CHECK(v.size() == 1 || v.size() == 2, module, ": ", what, " must have one or two values, got ",
             shape_str(v));
  return v.size() == 2 ? v : std::vector<int64_t>{v[0], v[0]};
}

std::vector<int64_t> one(const char* module, const char* what, const std::vector<int64_t>& v) {
  LOOM_CHECK(v.size() == 1, module, ": ", what, " must have one value, got ", shape_str(v));
  return v;
}

ConvPadding padding_of(const char* module, const std::string& mode) {
  LOOM_CHECK(mode == "same" || mode == "valid", module, ": padding_mode must be \"\", \"same\" or \"valid\", got \"",
             mode, "\"");
  return mode == "same" ? ConvPadding::Same : ConvPadding::Valid;
}

void check_channels(const char* module, int64_t in, int64_t out, int64_t groups) {
  LOOM_CHECK(in > 0 && out > 0, module, ": in_channels and out_channels must be positive, got ", in, " and ", out);
  LOOM_CHECK(groups > 0 && in % groups == 0 && out % groups == 0, module, ": in_channels (", in,
             ") and out_channels (", out, ") must be divisible by groups (", groups, ")");
}

// PyTorch's _ConvNd.reset_parameters: kaiming_uniform_(a = sqrt(5)) on the
// weight, the bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
void reset_conv(Tensor& weight, Tensor& bias) {
  init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const int64_t fan_in = init::calculate_fan_in_and_fan_out(weight).first;
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    init::uniform_(bias, -bound, bound);
  }
}

std::string conv_repr(int64_t in, int64_t out, const std::vector<int64_t>& k, const std::vector<int64_t>& stride,
                      const std::vector<int64_t>& padding, const std::string& mode,
                      const std::vector<int64_t>& dilation, int64_t groups, bool bias,
                      const std::vector<int64_t>* output_padding = nullptr) {
  std::string s = std::to_string(in) + ", " + std::to_string(out) + ", kernel_size=" + detail::py_tuple(k) +
                  ", stride=" + detail::py_tuple(stride);
  if (!mode.empty()) {
    s += ", padding=" + mode;
  } else if (std::any_of(padding.begin(), padding.end(), [](int64_t p) { return p != 0; })) {
    s += ", padding=" + detail::py_tuple(padding);
  }
  if (std::any_of(dilation.begin(), dilation.end(), [](int64_t d) { return d != 1; }))
    s += ", dilation=" + detail::py_tuple(dilation);
  if (output_padding != nullptr &&
      std::any_of(output_padding->begin(), output_padding->end(), [](int64_t p) { return p != 0; }))
    s += ", output_padding=" + detail::py_tuple(*output_padding);
  if (groups != 1) s += ", groups=" + std::to_string(groups);
  if (!bias) s += ", bias=False";
  return s;
}

}  // namespace

Conv2dImpl::Conv2dImpl(int64_t in, int64_t out, std::vector<int64_t> k, ConvOptions opts)
    : Module("Conv2d"), in_channels(in), out_channels(out), options(std::move(opts)) {
  check_channels("Conv2d", in, out, options.groups);
  kernel_size = two("Conv2d", "kernel_size", k);
  LOOM_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, "Conv2d: kernel_size must be positive, got ",
             shape_str(kernel_size));
  options.stride = two("Conv2d", "stride", options.stride);
  options.padding = two("Conv2d", "padding", options.padding);
  options.dilation = two("Conv2d", "dilation", options.dilation);
  if (!options.padding_mode.empty()) padding_of("Conv2d", options.padding_mode);
  weight = register_parameter("weight", loom::empty({out, in / options.groups, kernel_size[0], kernel_size[1]}));
  if (options.bias) bias = register_parameter("bias", loom::empty({out}));
  reset_parameters();
}

void Conv2dImpl::reset_parameters() { reset_conv(weight, bias); }

Tensor Conv2dImpl::forward(const Tensor& input) {
  if (!options.padding_mode.empty())
    return loom::conv2d(input, weight, bias, options.stride, padding_of("Conv2d", options.padding_mode),
                        options.dilation, options.groups);
  return loom::conv2d(input, weight, bias, options.stride, options.padding, options.dilation, options.groups);
}

std::string Conv2dImpl::extra_repr() const {
  return conv_repr(in_channels, out_channels, kernel_size, options.stride, options.padding, options.padding_mode,
                   options.dilation, options.groups, bias.defined());
}

Conv1dImpl::Conv1dImpl(int64_t in, int64_t out, int64_t k, ConvOptions opts)
    : Module("Conv1d"), in_channels(in), out_channels(out), kernel_size(k), options(std::move(opts)) {
  check_channels("Conv1d", in, out, options.groups);
  LOOM_CHECK(k > 0, "Conv1d: kernel_size must be positive, got ", k);
  options.stride = one("Conv1d", "stride", options.stride);
  options.padding = one("Conv1d", "padding", options.padding);
  options.dilation = one("Conv1d", "dilation", options.dilation);
  if (!options.padding_mode.empty()) padding_of("Conv1d", options.padding_mode);
  weight = register_parameter("weight", loom::empty({out, in / options.groups, k}));
  if (options.bias) bias = register_parameter("bias", loom::empty({out}));
  reset_parameters();
}

void Conv1dImpl::reset_parameters() { reset_conv(weight, bias); }

Tensor Conv1dImpl::forward(const Tensor& input) {
  if (!options.padding_mode.empty())
    return loom::conv1d(input, weight, bias, options.stride, padding_of("Conv1d", options.padding_mode),
                        options.dilation, options.groups);
  return loom::conv1d(input, weight, bias, options.stride, options.padding, options.dilation, options.groups);
}

std::string Conv1dImpl::extra_repr() const {
  return conv_repr(in_channels, out_channels, {kernel_size}, options.stride, options.padding, options.padding_mode,
                   options.dilation, options.groups, bias.defined());
}

ConvTranspose2dImpl::ConvTranspose2dImpl(int64_t in, int64_t out, std::vector<int64_t> k, ConvTransposeOptions opts)
    : Module("ConvTranspose2d"), in_channels(in), out_channels(out), options(std::move(opts)) {
  check_channels("ConvTranspose2d", in, out, options.groups);
  kernel_size = two("ConvTranspose2d", "kernel_size", k);
  LOOM_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, "ConvTranspose2d: kernel_size must be positive, got ",
             shape_str(kernel_size));
  options.stride = two("ConvTranspose2d", "stride", options.stride);
  options.padding = two("ConvTranspose2d", "padding", options.padding);
  options.output_padding = two("ConvTranspose2d", "output_padding", options.output_padding);
  options.dilation = two("ConvTranspose2d", "dilation", options.dilation);
  weight = register_parameter("weight", loom::empty({in, out / options.groups, kernel_size[0], kernel_size[1]}));
  if (options.bias) bias = register_parameter("bias", loom::empty({out}));
  reset_parameters();
}

// PyTorch computes fan_in from the weight as stored, (in, out / groups, ...):
// fan_in = out / groups * KH * KW.
void ConvTranspose2dImpl::reset_parameters() { reset_conv(weight, bias); }

Tensor ConvTranspose2dImpl::forward(const Tensor& input) {
  return loom::conv_transpose2d(input, weight, bias, options.stride, options.padding, options.output_padding,
                                options.groups, options.dilation);
}

std::string ConvTranspose2dImpl::extra_repr() const {
  return conv_repr(in_channels, out_channels, kernel_size, options.stride, options.padding, "", options.dilation,
                   options.groups, bias.defined(), &options.output_padding);
}

}  // namespace loom::nn
