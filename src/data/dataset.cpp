// Dataset, TensorDataset, Subset, ConcatDataset, random_split.
#include "loom/data/dataset.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "loom/data/sample_generator.h"
#include "loom/error.h"

namespace loom::data {

void Dataset::check_index(int64_t index) const {
  const int64_t n = size();
  LOOM_CHECK(index >= 0 && index < n, name(), ": index ", index, " is out of range for a dataset of size ", n);
}

// ---- TensorDataset ----

TensorDataset::TensorDataset(Tensor data, Tensor targets) : data_(std::move(data)), targets_(std::move(targets)) {
  LOOM_CHECK(data_.defined(), "TensorDataset: data is an undefined tensor");
  LOOM_CHECK(data_.dim() >= 1, "TensorDataset: data must have at least one dim to index examples along, got a 0-dim tensor");
  if (targets_.defined()) {
    LOOM_CHECK(targets_.dim() >= 1,
               "TensorDataset: targets must have at least one dim to index examples along, got a 0-dim tensor");
    LOOM_CHECK(data_.size(0) == targets_.size(0), "TensorDataset: data and targets must have the same size in dim 0, got data ",
               shape_str(data_.sizes()), " and targets ", shape_str(targets_.sizes()));
  }
}

TensorDataset::TensorDataset(Tensor data) : TensorDataset(std::move(data), Tensor()) {}

Example TensorDataset::get(int64_t index) {
  check_index(index);
  return {data_.select(0, index), targets_.defined() ? targets_.select(0, index) : Tensor()};
}

int64_t TensorDataset::size() const { return data_.size(0); }

// ---- Subset ----

Subset::Subset(std::shared_ptr<Dataset> dataset, std::vector<int64_t> indices)
    : dataset_(std::move(dataset)), indices_(std::move(indices)) {
  LOOM_CHECK(dataset_ != nullptr, "Subset: the dataset is null");
  const int64_t n = dataset_->size();
  for (size_t k = 0; k < indices_.size(); ++k)
    LOOM_CHECK(indices_[k] >= 0 && indices_[k] < n, "Subset: indices[", k, "] = ", indices_[k],
               " is out of range for ", dataset_->name(), " of size ", n);
}

Example Subset::get(int64_t index) {
  check_index(index);
  return dataset_->get(indices_[static_cast<size_t>(index)]);
}

int64_t Subset::size() const { return static_cast<int64_t>(indices_.size()); }

std::string Subset::name() const { return "Subset of " + dataset_->name(); }

// ---- ConcatDataset ----

ConcatDataset::ConcatDataset(std::vector<std::shared_ptr<Dataset>> datasets) : datasets_(std::move(datasets)) {
  LOOM_CHECK(!datasets_.empty(), "ConcatDataset: expects at least one dataset");
  int64_t total = 0;
  for (size_t k = 0; k < datasets_.size(); ++k) {
    LOOM_CHECK(datasets_[k] != nullptr, "ConcatDataset: datasets[", k, "] is null");
    total += datasets_[k]->size();
    cumulative_.push_back(total);
  }
}

Example ConcatDataset::get(int64_t index) {
  check_index(index);
  // The first dataset whose cumulative size exceeds index holds it.
  const auto it = std::upper_bound(cumulative_.begin(), cumulative_.end(), index);
  const size_t k = static_cast<size_t>(it - cumulative_.begin());
  const int64_t start = k == 0 ? 0 : cumulative_[k - 1];
  return datasets_[k]->get(index - start);
}

int64_t ConcatDataset::size() const { return cumulative_.back(); }

// ---- random_split ----

std::vector<std::shared_ptr<Subset>> random_split(std::shared_ptr<Dataset> dataset, const std::vector<int64_t>& lengths,
                                                  uint64_t seed) {
  LOOM_CHECK(dataset != nullptr, "random_split: the dataset is null");
  LOOM_CHECK(!lengths.empty(), "random_split: expects at least one length");
  int64_t total = 0;
  for (size_t k = 0; k < lengths.size(); ++k) {
    LOOM_CHECK(lengths[k] >= 0, "random_split: lengths[", k, "] = ", lengths[k], " is negative");
    total += lengths[k];
  }
  const int64_t n = dataset->size();
  LOOM_CHECK(total == n, "random_split: lengths ", shape_str(lengths), " sum to ", total, " but ", dataset->name(),
             " has ", n, " examples");
  const std::vector<int64_t> perm = SampleGenerator::for_split(seed).permutation(n);
  std::vector<std::shared_ptr<Subset>> parts;
  auto first = perm.begin();
  for (int64_t len : lengths) {
    parts.push_back(std::make_shared<Subset>(dataset, std::vector<int64_t>(first, first + len)));
    first += len;
  }
  return parts;
}

std::vector<std::shared_ptr<Subset>> random_split(std::shared_ptr<Dataset> dataset, const std::vector<double>& fractions,
                                                  uint64_t seed) {
  LOOM_CHECK(dataset != nullptr, "random_split: the dataset is null");
  LOOM_CHECK(!fractions.empty(), "random_split: expects at least one fraction");
  double sum = 0;
  for (size_t k = 0; k < fractions.size(); ++k) {
    LOOM_CHECK(fractions[k] >= 0 && fractions[k] <= 1, "random_split: fractions[", k, "] = ", fractions[k],
               " is not in [0, 1]");
    sum += fractions[k];
  }
  // math.isclose(sum, 1) as PyTorch checks it (relative tolerance 1e-9).
  LOOM_CHECK(std::abs(sum - 1) <= 1e-9, "random_split: fractions must sum to 1, got ", sum);
  const int64_t n = dataset->size();
  std::vector<int64_t> lengths;
  int64_t assigned = 0;
  for (double f : fractions) {
    lengths.push_back(static_cast<int64_t>(std::floor(static_cast<double>(n) * f)));
    assigned += lengths.back();
  }
  // The floors leave at most one example per split over; hand them out round-robin.
  for (int64_t r = 0; r < n - assigned; ++r) lengths[static_cast<size_t>(r) % lengths.size()] += 1;
  return random_split(std::move(dataset), lengths, seed);
}

}  // namespace loom::data
