#include "loom/nn/upsampling.h"

#include "loom/nn/functional.h"
#include "nn/repr.h"

namespace loom::nn {

UpsampleImpl::UpsampleImpl(UpsampleOptions options)
    : Module("Upsample"),
      size(std::move(options.size)),
      scale_factor(std::move(options.scale_factor)),
      mode(std::move(options.mode)),
      align_corners(options.align_corners) {
  LOOM_CHECK(size.empty() != scale_factor.empty(), "Upsample: exactly one of size or scale_factor should be defined");
  LOOM_CHECK(mode == "nearest" || mode == "bilinear", "Upsample: mode must be \"nearest\" or \"bilinear\", got \"",
             mode, "\"");
  LOOM_CHECK(mode == "bilinear" || !align_corners,
             "Upsample: align_corners option can only be set with the interpolating modes: linear | bilinear | "
             "bicubic | trilinear");
}

Tensor UpsampleImpl::forward(const Tensor& input) {
  return functional::interpolate(
      input, {.size = size, .scale_factor = scale_factor, .mode = mode, .align_corners = align_corners});
}

// PyTorch prints the scale factor (a float, or a tuple of floats) or else the
// size (an int, or a tuple), then the mode.
std::string UpsampleImpl::extra_repr() const {
  std::string info;
  if (!scale_factor.empty()) {
    info = "scale_factor=";
    if (scale_factor.size() == 1) {
      info += detail::py_float(scale_factor[0]);
    } else {
      info += "(";
      for (size_t i = 0; i < scale_factor.size(); ++i) info += (i ? ", " : "") + detail::py_float(scale_factor[i]);
      info += ")";
    }
  } else {
    info = "size=" + (size.size() == 1 ? std::to_string(size[0]) : detail::py_tuple(size));
  }
  return info + ", mode='" + mode + "'";
}

}  // namespace loom::nn
