// Datasets: indexable collections of (data, target) examples, as
// torch.utils.data.Dataset, TensorDataset, Subset, ConcatDataset, random_split.
//
// A DataLoader with num_workers > 0 calls get() from several threads at once,
// so get() must be safe to call concurrently (the datasets here only read).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "loom/tensor.h"

namespace loom::data {

// One example. `target` may be undefined for unlabelled data.
struct Example {
  Tensor data;
  Tensor target;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  // The example at `index` in [0, size()); anything else is a loom::Error.
  virtual Example get(int64_t index) = 0;
  virtual int64_t size() const = 0;
  // Used in error messages: "TensorDataset", "Subset of FashionMNIST(train)", ...
  virtual std::string name() const { return "Dataset"; }

 protected:
  // Throws "<name>: index i is out of range for a dataset of size n".
  void check_index(int64_t index) const;
};

// Example i is (data[i], targets[i]): both are indexed along dim 0 (views, no
// copy). data: (N, ...), targets: (N, ...) with the same N.
class TensorDataset : public Dataset {
 public:
  TensorDataset(Tensor data, Tensor targets);
  // Unlabelled: examples have an undefined target.
  explicit TensorDataset(Tensor data);
  Example get(int64_t index) override;
  int64_t size() const override;
  std::string name() const override { return "TensorDataset"; }
  const Tensor& data() const { return data_; }
  const Tensor& targets() const { return targets_; }

 private:
  Tensor data_, targets_;
};

// The examples of `dataset` at `indices`, in that order (repeats allowed).
// Every index is checked against the dataset's size here, once.
class Subset : public Dataset {
 public:
  Subset(std::shared_ptr<Dataset> dataset, std::vector<int64_t> indices);
  Example get(int64_t index) override;
  int64_t size() const override;
  std::string name() const override;
  const std::vector<int64_t>& indices() const { return indices_; }
  const std::shared_ptr<Dataset>& dataset() const { return dataset_; }

 private:
  std::shared_ptr<Dataset> dataset_;
  std::vector<int64_t> indices_;
};

// The datasets one after the other: index i falls in the first dataset whose
// cumulative size exceeds i.
class ConcatDataset : public Dataset {
 public:
  explicit ConcatDataset(std::vector<std::shared_ptr<Dataset>> datasets);
  Example get(int64_t index) override;
  int64_t size() const override;
  std::string name() const override { return "ConcatDataset"; }
  const std::vector<std::shared_ptr<Dataset>>& datasets() const { return datasets_; }
  // cumulative_sizes()[k] = total size of datasets 0..k.
  const std::vector<int64_t>& cumulative_sizes() const { return cumulative_; }

 private:
  std::vector<std::shared_ptr<Dataset>> datasets_;
  std::vector<int64_t> cumulative_;
};

// Splits `dataset` into non-overlapping Subsets of the given lengths (which
// must sum to its size), over a random permutation that depends on `seed`
// alone: the same seed gives the same split on every machine and thread count.
// The global loom generator is not touched.
std::vector<std::shared_ptr<Subset>> random_split(std::shared_ptr<Dataset> dataset,
                                                  const std::vector<int64_t>& lengths, uint64_t seed);
// Fractions summing to 1 (as PyTorch): each split gets floor(n * fraction)
// examples and the remainder is handed out one by one from the first split.
std::vector<std::shared_ptr<Subset>> random_split(std::shared_ptr<Dataset> dataset,
                                                  const std::vector<double>& fractions, uint64_t seed);
// Braced lists pick by element type: random_split(ds, {50000, 10000}, seed)
// means lengths and random_split(ds, {0.9, 0.1}, seed) fractions (two vector
// overloads alone would make the integer list ambiguous).
template <typename T>
std::vector<std::shared_ptr<Subset>> random_split(std::shared_ptr<Dataset> dataset, std::initializer_list<T> sizes,
                                                  uint64_t seed) {
  static_assert(std::is_arithmetic_v<T>, "random_split: lengths must be integers, fractions floating point");
  if constexpr (std::is_integral_v<T>) {
    return random_split(std::move(dataset), std::vector<int64_t>(sizes.begin(), sizes.end()), seed);
  } else {
    return random_split(std::move(dataset), std::vector<double>(sizes.begin(), sizes.end()), seed);
  }
}

}  // namespace loom::data
