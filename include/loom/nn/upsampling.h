// Upsample: resizes the spatial dims of (N, C, *) input by a size or a scale
// factor (nn::functional::interpolate), with PyTorch's options and printing.
//
//   nn::Upsample up({.scale_factor = {2}});                                   // nearest, x2
//   nn::Upsample smooth({.size = {56, 56}, .mode = "bilinear", .align_corners = false});
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "loom/nn/module.h"

namespace loom::nn {

// Exactly one of size and scale_factor (one value for every spatial dim, or one per dim).
struct UpsampleOptions {
  std::vector<int64_t> size = {};
  std::vector<double> scale_factor = {};
  std::string mode = "nearest";            // "nearest" or "bilinear"
  std::optional<bool> align_corners = {};  // bilinear only
};

class UpsampleImpl : public Module {
 public:
  explicit UpsampleImpl(UpsampleOptions options);
  Tensor forward(const Tensor& input) override;
  std::string extra_repr() const override;

  std::vector<int64_t> size;
  std::vector<double> scale_factor;
  std::string mode;
  std::optional<bool> align_corners;
};
// The holder also takes braced options: nn::Upsample({.scale_factor = {2}}).
class Upsample : public ModuleHolder<UpsampleImpl> {
 public:
  using ModuleHolder<UpsampleImpl>::ModuleHolder;
  Upsample() = default;
  Upsample(UpsampleOptions options) : ModuleHolder(std::make_shared<UpsampleImpl>(std::move(options))) {}  // NOLINT
};

}  // namespace loom::nn
