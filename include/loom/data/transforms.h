// Transforms: per-example functions applied by a DataLoader before batching,
// named as in torchvision.transforms.
//
// A transform is any callable Example(Example, SampleGenerator&): the classes
// below, a Compose of them, or a lambda. Random transforms draw only from the
// generator they are handed, which the DataLoader keys by (loader seed, epoch,
// dataset index) (Note [Data randomness is keyed, not sequential]), so they
// give the same result for any worker count.
//
// They are passed to the loader, not wrapped around a dataset, because only
// the loader knows the seed and the epoch:
//
//   DataLoaderOptions opts{.batch_size = 128, .shuffle = true};
//   opts.transform = Compose({RandomCrop(28, 4), RandomHorizontalFlip(),
//                             Normalize({0.2860}, {0.3530})});
//
// Image transforms act on the data of an example, shaped (..., C, H, W) or
// (H, W); the target passes through unchanged.
//
// A transform of your own must return new tensors rather than write into the
// example's (which may be views of the dataset's storage), and must be safe to
// call from several worker threads at once (keep no mutable state).
#pragma once

#include <functional>
#include <initializer_list>
#include <vector>

#include "loom/data/dataset.h"
#include "loom/data/sample_generator.h"

namespace loom::data {

using Transform = std::function<Example(Example, SampleGenerator&)>;

// data = (data - mean[c]) / std[c] for each channel c (dim -3). With one mean
// and one std the whole tensor is normalised, whatever its shape. The data
// must be floating point; std must be non-zero.
class Normalize {
 public:
  Normalize(std::vector<double> mean, std::vector<double> std);
  Example operator()(Example example, SampleGenerator& gen) const;

 private:
  std::vector<double> mean_, std_;
  Tensor mean32_, std32_;  // float32 copies: (C, 1, 1), or 0-dim when C = 1
};

// Pads H and W by `padding` zeros on every side, then cuts a random
// size[0] x size[1] window (a single size means a square). The window's top
// row is drawn first, then its left column, each uniformly over every
// position that fits, as torchvision does.
class RandomCrop {
 public:
  explicit RandomCrop(int64_t size, int64_t padding = 0);
  // {height, width}. (An initializer_list, not a vector, so that
  // RandomCrop({3, 4}) cannot also read as a copy of RandomCrop(3, 4).)
  RandomCrop(std::initializer_list<int64_t> size, int64_t padding = 0);
  Example operator()(Example example, SampleGenerator& gen) const;

 private:
  void init(const std::vector<int64_t>& size);
  int64_t height_, width_, padding_;
};

// Mirrors the data along W (the last dim) with probability p.
class RandomHorizontalFlip {
 public:
  explicit RandomHorizontalFlip(double p = 0.5);
  Example operator()(Example example, SampleGenerator& gen) const;

 private:
  double p_;
};

// Applies the transforms in order, handing each the same generator.
class Compose {
 public:
  Compose(std::vector<Transform> transforms);  // NOLINT: Compose({a, b}) reads best
  Example operator()(Example example, SampleGenerator& gen) const;

 private:
  std::vector<Transform> transforms_;
};

}  // namespace loom::data
