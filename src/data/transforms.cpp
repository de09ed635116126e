// Normalize, RandomCrop, RandomHorizontalFlip, Compose, written with loom ops.
#include "loom/data/transforms.h"

#include "loom/error.h"
#include "loom/ops.h"

namespace loom::data {

// ---- Normalize ----

namespace {
// mean or std as torchvision builds them: in the data's dtype, so the
// arithmetic is the data's, shaped (C, 1, 1) to broadcast over
// x: (..., C, H, W), or 0-dim for a single value.
Tensor channel_values(const std::vector<double>& v, DType dtype) {
  Tensor t = tensor(v, dtype);
  return v.size() == 1 ? t.reshape({}) : t.view({static_cast<int64_t>(v.size()), 1, 1});
}
}  // namespace

Normalize::Normalize(std::vector<double> mean, std::vector<double> std) : mean_(std::move(mean)), std_(std::move(std)) {
  LOOM_CHECK(!mean_.empty(), "Normalize: mean and std need at least one value");
  LOOM_CHECK(mean_.size() == std_.size(), "Normalize: mean has ", mean_.size(), " values but std has ", std_.size());
  for (size_t c = 0; c < std_.size(); ++c)
    LOOM_CHECK(std_[c] != 0, "Normalize: std[", c, "] is 0, which would divide by zero");
  // Built once for the common float32 case; workers only read them.
  mean32_ = channel_values(mean_, kFloat32);
  std32_ = channel_values(std_, kFloat32);
}

Example Normalize::operator()(Example example, SampleGenerator&) const {
  const Tensor& x = example.data;
  LOOM_CHECK(x.defined(), "Normalize: the example has no data");
  LOOM_CHECK(x.is_floating_point(), "Normalize: expects floating-point data, got ", x.dtype(), " ",
             shape_str(x.sizes()), " (convert images to float first)");
  const auto channels = static_cast<int64_t>(mean_.size());
  LOOM_CHECK(channels == 1 || (x.dim() >= 3 && x.size(-3) == channels), "Normalize: data of shape ",
             shape_str(x.sizes()), " should be (..., C, H, W) with C = ", channels, " channels to match mean and std");
  const bool f32 = x.dtype() == kFloat32;
  const Tensor mean = f32 ? mean32_ : channel_values(mean_, x.dtype());
  const Tensor stdev = f32 ? std32_ : channel_values(std_, x.dtype());
  example.data = (x - mean) / stdev;
  return example;
}

// ---- RandomCrop ----

RandomCrop::RandomCrop(int64_t size, int64_t padding) : padding_(padding) { init({size}); }

RandomCrop::RandomCrop(std::initializer_list<int64_t> size, int64_t padding) : padding_(padding) { init(size); }

void RandomCrop::init(const std::vector<int64_t>& size) {
  LOOM_CHECK(size.size() == 1 || size.size() == 2, "RandomCrop: size must be one value or (height, width), got ",
             shape_str(size));
  height_ = size[0];
  width_ = size.size() == 2 ? size[1] : size[0];
  LOOM_CHECK(height_ > 0 && width_ > 0, "RandomCrop: size must be positive, got ", shape_str(size));
  LOOM_CHECK(padding_ >= 0, "RandomCrop: padding must be non-negative, got ", padding_);
}

Example RandomCrop::operator()(Example example, SampleGenerator& gen) const {
  Tensor x = example.data;
  LOOM_CHECK(x.defined() && x.dim() >= 2, "RandomCrop: expects data shaped (..., H, W), got ",
             x.defined() ? shape_str(x.sizes()) : std::string("an undefined tensor"));
  if (padding_ > 0) x = pad(x, {padding_, padding_, padding_, padding_});  // zeros around H and W
  const int64_t dh = x.dim() - 2, dw = x.dim() - 1;
  const int64_t h = x.size(dh), w = x.size(dw);
  LOOM_CHECK(h >= height_ && w >= width_, "RandomCrop: crop size (", height_, ", ", width_,
             ") is larger than the data ", shape_str(example.data.sizes()), " padded by ", padding_, " to (", h, ", ",
             w, ")");
  const int64_t top = gen.randint(0, h - height_ + 1);
  const int64_t left = gen.randint(0, w - width_ + 1);
  example.data = x.narrow(dh, top, height_).narrow(dw, left, width_);
  return example;
}

// ---- RandomHorizontalFlip ----

RandomHorizontalFlip::RandomHorizontalFlip(double p) : p_(p) {
  LOOM_CHECK(p >= 0 && p <= 1, "RandomHorizontalFlip: p must be in [0, 1], got ", p);
}

Example RandomHorizontalFlip::operator()(Example example, SampleGenerator& gen) const {
  LOOM_CHECK(example.data.defined() && example.data.dim() >= 1,
             "RandomHorizontalFlip: expects data with a width dim, got ",
             example.data.defined() ? shape_str(example.data.sizes()) : std::string("an undefined tensor"));
  // One draw per example whether or not it flips, so later transforms see
  // the same stream either way.
  if (gen.uniform() < p_) example.data = flip(example.data, {-1});
  return example;
}

// ---- Compose ----

Compose::Compose(std::vector<Transform> transforms) : transforms_(std::move(transforms)) {
  for (size_t k = 0; k < transforms_.size(); ++k)
    LOOM_CHECK(static_cast<bool>(transforms_[k]), "Compose: transforms[", k, "] is empty");
}

Example Compose::operator()(Example example, SampleGenerator& gen) const {
  for (const Transform& t : transforms_) example = t(std::move(example), gen);
  return example;
}

}  // namespace loom::data
