// MaxPool2d, AvgPool2d and AdaptiveAvgPool2d: NCHW or unbatched CHW input,
// PyTorch's names, defaults and printing. A size given as one value applies
// to both spatial dims; two values give (height, width). The stride defaults
// to the kernel size.
//
//   nn::MaxPool2d pool(2);                                      // 2x2 windows, stride 2
//   nn::MaxPool2d overlap(3, {.stride = {2}, .padding = {1}});
//   nn::AvgPool2d avg(2, {.ceil_mode = true, .count_include_pad = false});
//   nn::AdaptiveAvgPool2d gap(1);                               // global average pooling
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "loom/nn/module.h"

namespace loom::nn {

struct MaxPool2dOptions {
  std::vector<int64_t> stride = {};  // empty: kernel_size
  std::vector<int64_t> padding = {0};
  std::vector<int64_t> dilation = {1};
  bool ceil_mode = false;
};

// The maximum of each window (loom::max_pool2d).
class MaxPool2dImpl : public Module {
 public:
  MaxPool2dImpl(std::vector<int64_t> kernel_size, MaxPool2dOptions options = {});
  MaxPool2dImpl(int64_t kernel_size, MaxPool2dOptions options = {})
      : MaxPool2dImpl(std::vector<int64_t>{kernel_size}, std::move(options)) {}
  Tensor forward(const Tensor& input) override;
  // The output and each window's argmax as a flat index into its (H, W)
  // plane (PyTorch's return_indices=True).
  std::pair<Tensor, Tensor> forward_with_indices(const Tensor& input);
  std::string extra_repr() const override;

  std::vector<int64_t> kernel_size, stride, padding, dilation;  // as given: one or two values each
  bool ceil_mode;
};
// The holder also takes braced options: nn::MaxPool2d(3, {.stride = {2}}).
class MaxPool2d : public ModuleHolder<MaxPool2dImpl> {
 public:
  using ModuleHolder<MaxPool2dImpl>::ModuleHolder;
  MaxPool2d() = default;
  MaxPool2d(int64_t kernel_size, MaxPool2dOptions options)
      : ModuleHolder(std::make_shared<MaxPool2dImpl>(kernel_size, std::move(options))) {}
  MaxPool2d(std::initializer_list<int64_t> kernel_size, MaxPool2dOptions options = {})
      : ModuleHolder(std::make_shared<MaxPool2dImpl>(std::vector<int64_t>(kernel_size), std::move(options))) {}
};

struct AvgPool2dOptions {
  std::vector<int64_t> stride = {};  // empty: kernel_size
  std::vector<int64_t> padding = {0};
  bool ceil_mode = false;
  bool count_include_pad = true;                 // count the zero padding in the divisor
  std::optional<int64_t> divisor_override = {};  // divide by this instead
};

// The mean of each window (loom::avg_pool2d).
class AvgPool2dImpl : public Module {
 public:
  AvgPool2dImpl(std::vector<int64_t> kernel_size, AvgPool2dOptions options = {});
  AvgPool2dImpl(int64_t kernel_size, AvgPool2dOptions options = {})
      : AvgPool2dImpl(std::vector<int64_t>{kernel_size}, std::move(options)) {}
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  std::vector<int64_t> kernel_size, stride, padding;  // as given: one or two values each
  bool ceil_mode;
  bool count_include_pad;
  std::optional<int64_t> divisor_override;
};
class AvgPool2d : public ModuleHolder<AvgPool2dImpl> {
 public:
  using ModuleHolder<AvgPool2dImpl>::ModuleHolder;
  AvgPool2d() = default;
  AvgPool2d(int64_t kernel_size, AvgPool2dOptions options)
      : ModuleHolder(std::make_shared<AvgPool2dImpl>(kernel_size, std::move(options))) {}
  AvgPool2d(std::initializer_list<int64_t> kernel_size, AvgPool2dOptions options = {})
      : ModuleHolder(std::make_shared<AvgPool2dImpl>(std::vector<int64_t>(kernel_size), std::move(options))) {}
};

// Averages into a fixed output size whatever the input's: output position i
// of a dim of size n averages inputs [floor(i n / out), ceil((i + 1) n / out))
// (loom::adaptive_avg_pool2d).
class AdaptiveAvgPool2dImpl : public Module {
 public:
  explicit AdaptiveAvgPool2dImpl(std::vector<int64_t> output_size);
  explicit AdaptiveAvgPool2dImpl(int64_t output_size) : AdaptiveAvgPool2dImpl(std::vector<int64_t>{output_size}) {}
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  std::vector<int64_t> output_size;  // as given: one or two values
};
// The holder also takes a braced size: nn::AdaptiveAvgPool2d({5, 7}).
class AdaptiveAvgPool2d : public ModuleHolder<AdaptiveAvgPool2dImpl> {
 public:
  using ModuleHolder<AdaptiveAvgPool2dImpl>::ModuleHolder;
  AdaptiveAvgPool2d() = default;
  AdaptiveAvgPool2d(std::initializer_list<int64_t> output_size)
      : ModuleHolder(std::make_shared<AdaptiveAvgPool2dImpl>(std::vector<int64_t>(output_size))) {}
};

}  // namespace loom::nn
