// Samplers (loom/data/sampler.h).
#include "loom/data/sampler.h"

#include <numeric>

#include "loom/data/sample_generator.h"
#include "loom/distributed.h"
#include "loom/error.h"

namespace loom::data {

DistributedSampler::DistributedSampler(int64_t dataset_size, int num_replicas, int rank, bool shuffle, uint64_t seed,
                                       bool drop_last)
    : dataset_size_(dataset_size),
      num_replicas_(num_replicas),
      rank_(rank),
      shuffle_(shuffle),
      seed_(seed),
      drop_last_(drop_last) {
  LOOM_CHECK(dataset_size_ >= 0, "DistributedSampler: dataset_size must be non-negative, got ", dataset_size_);
  LOOM_CHECK(num_replicas_ >= 1, "DistributedSampler: num_replicas must be at least 1, got ", num_replicas_);
  LOOM_CHECK(rank_ >= 0 && rank_ < num_replicas_, "DistributedSampler: rank ", rank_,
             " is out of range for num_replicas ", num_replicas_, " (expected 0 <= rank < ", num_replicas_, ")");
  const int64_t r = num_replicas_;
  // PyTorch: ceil((N - R) / R) with drop_last (and N % R != 0), else ceil(N / R).
  num_samples_ = drop_last_ ? dataset_size_ / r : (dataset_size_ + r - 1) / r;
}

DistributedSampler::DistributedSampler(int64_t dataset_size, DistributedSamplerOptions options)
    : DistributedSampler(dataset_size,
                         options.num_replicas == -1 ? distributed::get_world_size() : options.num_replicas,
                         options.rank == -1 ? distributed::get_rank() : options.rank, options.shuffle, options.seed,
                         options.drop_last) {}

std::vector<int64_t> DistributedSampler::indices(int64_t epoch) const {
  LOOM_CHECK(epoch >= 0, "DistributedSampler::indices: epoch must be non-negative, got ", epoch);
  std::vector<int64_t> order;
  if (shuffle_) {
    order = SampleGenerator::for_shuffle(seed_, epoch).permutation(dataset_size_);
  } else {
    order.resize(static_cast<size_t>(dataset_size_));
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  // Position p of the padded (or cut) list of total_size() entries is
  // order[p % N]; rank r takes positions r, r + R, r + 2R, ...
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(num_samples_));
  for (int64_t k = 0; k < num_samples_; ++k) {
    const int64_t p = rank_ + k * num_replicas_;
    mine.push_back(order[static_cast<size_t>(p % dataset_size_)]);
  }
  return mine;
}

}  // namespace loom::data
