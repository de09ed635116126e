// Conv1d, Conv2d and ConvTranspose2d (NCHW, PyTorch's parameter names,
// shapes and initialization, so a PyTorch state_dict maps one to one).
//
//   nn::Conv2d conv(1, 32, 3, {.padding = {1}});
//   nn::Conv2d down(32, 64, 3, {.stride = {2}, .padding_mode = "same"});  // "same" needs stride 1: error
//   nn::ConvTranspose2d up(64, 32, 4, {.stride = {2}, .padding = {1}, .bias = false});
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loom/nn/module.h"
#include "loom/ops.h"

namespace loom::nn {

// One value applies to every spatial dim; two give (height, width).
struct ConvOptions {
  std::vector<int64_t> stride{1};
  std::vector<int64_t> padding{0};
  // "" uses `padding`; "same" (stride 1 only) or "valid" as PyTorch's string padding.
  std::string padding_mode{};
  std::vector<int64_t> dilation{1};
  int64_t groups = 1;
  bool bias = true;
};

struct ConvTransposeOptions {
  std::vector<int64_t> stride{1};
  std::vector<int64_t> padding{0};
  std::vector<int64_t> output_padding{0};
  int64_t groups = 1;
  bool bias = true;
  std::vector<int64_t> dilation{1};
};

// x (N, in_channels, H, W) or (in_channels, H, W) -> (N, out_channels, OH, OW).
// weight (out_channels, in_channels / groups, KH, KW), bias (out_channels).
// Initialization as PyTorch: kaiming_uniform_(a = sqrt(5)) and a bias from
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels / groups * KH * KW.
class Conv2dImpl : public Module {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, std::vector<int64_t> kernel_size, ConvOptions options = {});
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, ConvOptions options = {})
      : Conv2dImpl(in_channels, out_channels, std::vector<int64_t>{kernel_size, kernel_size}, std::move(options)) {}
  Tensor forward(const Tensor& input) override;
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t in_channels, out_channels;
  std::vector<int64_t> kernel_size;  // {KH, KW}
  ConvOptions options;               // stride, padding, dilation as two values each
  Tensor weight;                     // (out_channels, in_channels / groups, KH, KW)
  Tensor bias;                       // (out_channels); undefined with bias = false
};
// The holders spell out the constructors so that a braced options list works:
// nn::Conv2d(1, 32, 3, {.padding = {1}}).
class Conv2d : public ModuleHolder<Conv2dImpl> {
 public:
  using ModuleHolder<Conv2dImpl>::ModuleHolder;
  Conv2d() = default;
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, ConvOptions options = {})
      : ModuleHolder(std::make_shared<Conv2dImpl>(in_channels, out_channels, kernel_size, std::move(options))) {}
  Conv2d(int64_t in_channels, int64_t out_channels, std::vector<int64_t> kernel_size, ConvOptions options = {})
      : ModuleHolder(
            std::make_shared<Conv2dImpl>(in_channels, out_channels, std::move(kernel_size), std::move(options))) {}
};

// x (N, in_channels, L) or (in_channels, L) -> (N, out_channels, OL).
// weight (out_channels, in_channels / groups, K).
class Conv1dImpl : public Module {
 public:
  Conv1dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, ConvOptions options = {});
  Tensor forward(const Tensor& input) override;
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t in_channels, out_channels, kernel_size;
  ConvOptions options;  // stride, padding, dilation as one value each
  Tensor weight;        // (out_channels, in_channels / groups, K)
  Tensor bias;          // (out_channels); undefined with bias = false
};
class Conv1d : public ModuleHolder<Conv1dImpl> {
 public:
  using ModuleHolder<Conv1dImpl>::ModuleHolder;
  Conv1d() = default;
  Conv1d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, ConvOptions options = {})
      : ModuleHolder(std::make_shared<Conv1dImpl>(in_channels, out_channels, kernel_size, std::move(options))) {}
};

// The transpose (gradient) of Conv2d as a layer, for upsampling (GAN
// generators): x (N, in_channels, H, W) -> (N, out_channels,
// (H - 1) stride - 2 padding + dilation (KH - 1) + output_padding + 1, ...).
// weight (in_channels, out_channels / groups, KH, KW), as PyTorch.
class ConvTranspose2dImpl : public Module {
 public:
  ConvTranspose2dImpl(int64_t in_channels, int64_t out_channels, std::vector<int64_t> kernel_size,
                      ConvTransposeOptions options = {});
  ConvTranspose2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                      ConvTransposeOptions options = {})
      : ConvTranspose2dImpl(in_channels, out_channels, std::vector<int64_t>{kernel_size, kernel_size},
                            std::move(options)) {}
  Tensor forward(const Tensor& input) override;
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t in_channels, out_channels;
  std::vector<int64_t> kernel_size;  // {KH, KW}
  ConvTransposeOptions options;      // stride, padding, output_padding, dilation as two values each
  Tensor weight;                     // (in_channels, out_channels / groups, KH, KW)
  Tensor bias;                       // (out_channels); undefined with bias = false
};
class ConvTranspose2d : public ModuleHolder<ConvTranspose2dImpl> {
 public:
  using ModuleHolder<ConvTranspose2dImpl>::ModuleHolder;
  ConvTranspose2d() = default;
  ConvTranspose2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, ConvTransposeOptions options = {})
      : ModuleHolder(
            std::make_shared<ConvTranspose2dImpl>(in_channels, out_channels, kernel_size, std::move(options))) {}
  ConvTranspose2d(int64_t in_channels, int64_t out_channels, std::vector<int64_t> kernel_size,
                  ConvTransposeOptions options = {})
      : ModuleHolder(std::make_shared<ConvTranspose2dImpl>(in_channels, out_channels, std::move(kernel_size),
                                                           std::move(options))) {}
};

}  // namespace loom::nn
