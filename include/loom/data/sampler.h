// Samplers: which dataset indices a DataLoader visits in an epoch, and in
// what order (torch.utils.data.Sampler). DistributedSampler gives each of R
// ranks its own share of a dataset (torch.utils.data.DistributedSampler).
//
//   distributed::init_process_group("auto");
//   auto sampler = std::make_shared<DistributedSampler>(train_set->size());  // R, rank from loom::distributed
//   DataLoader loader(train_set, {.batch_size = 64, .sampler = sampler, .seed = 1});
//   for (int64_t epoch = 0; epoch < 5; ++epoch)
//     for (Batch& b : loader) { ... this rank's batches of epoch `epoch` ... }
//
// A sampler is told the epoch by the DataLoader (its epoch(), set by
// set_epoch and advanced by each iteration; Note [Deterministic data loading]
// in dataloader.h), so unlike PyTorch there is no sampler.set_epoch to
// forget: every epoch gets its own order, and a run resumed with
// loader.set_epoch(e) replays epoch e.
#pragma once

#include <cstdint>
#include <vector>

namespace loom::data {

class Sampler {
 public:
  virtual ~Sampler() = default;
  // The dataset indices of epoch `epoch` (>= 0), in the order they are
  // visited: size() of them, each in [0, dataset size). The same epoch must
  // give the same indices (they may repeat). Called once per epoch, on the
  // thread that starts the iteration.
  virtual std::vector<int64_t> indices(int64_t epoch) const = 0;
  // Number of indices each epoch gives.
  virtual int64_t size() const = 0;
};

struct DistributedSamplerOptions {
  // -1: loom::distributed::get_world_size() (1 without a process group).
  int num_replicas = -1;
  // -1: loom::distributed::get_rank() (0 without a process group).
  int rank = -1;
  // Visit a permutation keyed by (seed, epoch) instead of 0..N-1.
  bool shuffle = true;
  // Keys the permutation; every rank must use the same seed.
  uint64_t seed = 0;
  // Drop the tail that does not divide evenly instead of padding.
  bool drop_last = false;
};

// Rank `rank` of `num_replicas` ranks visits its share of a dataset of N
// examples, as torch.utils.data.DistributedSampler:
// - The epoch's list is 0..N-1, or with shuffle the permutation of epoch e
//   that a DataLoader with shuffle and this seed would visit
//   (SampleGenerator::for_shuffle(seed, e)), the same on every rank.
// - Without drop_last the list is padded to total_size = ceil(N / R) * R by
//   repeating its entries from the start (cycling again when the padding is
//   longer than the list), so some examples are seen twice per epoch; with drop_last it is cut to total_size =
//   floor(N / R) * R, so up to R - 1 examples are skipped that epoch.
// - Rank r takes list[r], list[r + R], list[r + 2R], ... : size() =
//   total_size / R indices, the same count on every rank (so every rank runs
//   the same number of steps), and together the ranks cover the list once.
// N = 0 gives no indices.
class DistributedSampler : public Sampler {
 public:
  DistributedSampler(int64_t dataset_size, int num_replicas, int rank, bool shuffle = true, uint64_t seed = 0,
                     bool drop_last = false);
  // Fields left at -1 come from loom::distributed.
  explicit DistributedSampler(int64_t dataset_size, DistributedSamplerOptions options = {});

  std::vector<int64_t> indices(int64_t epoch) const override;
  int64_t size() const override { return num_samples_; }

  int64_t dataset_size() const { return dataset_size_; }
  int num_replicas() const { return num_replicas_; }
  int rank() const { return rank_; }
  bool shuffle() const { return shuffle_; }
  uint64_t seed() const { return seed_; }
  bool drop_last() const { return drop_last_; }
  // The length of the padded (or cut) list shared by all ranks: size() * R.
  int64_t total_size() const { return num_samples_ * num_replicas_; }

 private:
  int64_t dataset_size_;
  int num_replicas_;
  int rank_;
  bool shuffle_;
  uint64_t seed_;
  bool drop_last_;
  int64_t num_samples_;
};

}  // namespace loom::data
