// DataLoader: batches of examples from a Dataset, shuffled by a seed and
// optionally built ahead by worker threads (torch.utils.data.DataLoader).
//
//   DataLoader loader(train_set, {.batch_size = 128, .shuffle = true, .num_workers = 2, .seed = 1});
//   for (int64_t epoch = 0; epoch < 5; ++epoch)
//     for (Batch& b : loader) { ... b.data: (128, 1, 28, 28), b.target: (128) ... }
//
// Note [Deterministic data loading]
// - Epochs. Each iteration (each call to begin()) runs one epoch and then
//   advances the loader's epoch by one, starting from 0. set_epoch(e) sets
//   the epoch the next iteration runs, so a run resumed at epoch e sees the
//   same order as an uninterrupted one. Calling set_epoch(e) before every
//   epoch (as with PyTorch's DistributedSampler) works the same way.
// - Order. Without shuffle the batches cover 0..N-1 in order. With shuffle
//   the order is a permutation keyed by (seed, epoch). With a sampler
//   (sampler.h) the batches cover sampler->indices(epoch) in order, so the
//   sampler, not the loader's seed, decides the order. Random transforms are
//   keyed by (seed, epoch, dataset index) in every case (Note [Data
//   randomness is keyed, not sequential]). Nothing depends on timing, so
//   num_workers = 0, 1 or 8 give bitwise the same batches.
// - Workers. With num_workers > 0, that many threads build batches ahead,
//   at most prefetch_factor * num_workers batches beyond the one being
//   consumed, and the loop receives them in order. An exception thrown while
//   building batch k (by the dataset, a transform or collation) is rethrown
//   from the loop when it reaches batch k, after batches 0..k-1. Leaving the
//   loop early (break, exception) stops and joins the workers when the
//   iterator goes away; destroying the loader does too.
// - Batches are built with gradient recording off (NoGradGuard), on whatever
//   thread builds them, so loading never adds to an autograd graph.
//
// Collation: batch.data stacks the examples' data along a new dim 0, so
// examples shaped (...) give (B, ...), keeping their dtype; batch.target
// does the same with the targets (int64 scalars give (B)). All examples of a
// batch must agree in shape and dtype. Undefined targets give an undefined
// batch.target.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <vector>

#include "loom/data/dataset.h"
#include "loom/data/sampler.h"
#include "loom/data/transforms.h"

namespace loom::data {

struct Batch {
  Tensor data;    // (B, ...)
  Tensor target;  // (B, ...)
};

struct DataLoaderOptions {
  int64_t batch_size = 1;
  bool shuffle = false;
  // Visits sampler->indices(epoch) instead of 0..N-1 (e.g. a
  // DistributedSampler); exclusive with shuffle. Null = none.
  std::shared_ptr<Sampler> sampler = nullptr;
  // Drop the last batch when it is smaller than batch_size.
  bool drop_last = false;
  // Threads that build batches ahead; 0 builds them on the calling thread.
  int64_t num_workers = 0;
  // Keys the shuffle order and random transforms.
  uint64_t seed = 0;
  // Batches each worker may build ahead of the consumer.
  int64_t prefetch_factor = 2;
  // Applied to each example before collation (see transforms.h); empty = none.
  Transform transform = {};
  // Collate into page-locked host memory (loom/cuda.h), from which
  // .to(Device::cuda(), {.non_blocking = true}) copies asynchronously. Where
  // no GPU is available it is ignored, as PyTorch does (batches stay in
  // ordinary memory, with the same values).
  bool pin_memory = false;
};

class DataLoader {
  struct Run;  // one epoch's iteration: order, workers, ready batches

 public:
  explicit DataLoader(std::shared_ptr<Dataset> dataset, DataLoaderOptions options = {});
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // An input iterator over one epoch's batches. Copies share the epoch.
  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Batch;
    using difference_type = std::ptrdiff_t;
    using pointer = Batch*;
    using reference = Batch&;

    Iterator() = default;
    Batch& operator*() const;
    Batch* operator->() const { return &**this; }
    Iterator& operator++();
    // Only "is it the end?" is meaningful: two live iterators of one epoch
    // are the same position.
    bool operator==(const Iterator& o) const { return at_end() == o.at_end(); }
    bool operator!=(const Iterator& o) const { return !(*this == o); }

   private:
    friend class DataLoader;
    explicit Iterator(std::shared_ptr<Run> run) : run_(std::move(run)) {}
    bool at_end() const;
    std::shared_ptr<Run> run_;
  };

  // Starts an epoch (see the Note above) and returns its first batch. A
  // previous epoch still being iterated is stopped first.
  Iterator begin();
  Iterator end() { return Iterator(); }

  // Number of batches in an epoch: ceil(N / B), or floor(N / B) with
  // drop_last, where N is the sampler's size() when there is one.
  int64_t size() const;
  // The epoch the next iteration runs.
  void set_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }

  const DataLoaderOptions& options() const { return options_; }
  const std::shared_ptr<Dataset>& dataset() const { return dataset_; }

 private:
  std::shared_ptr<Dataset> dataset_;
  DataLoaderOptions options_;
  int64_t epoch_ = 0;
  std::weak_ptr<Run> current_;
};

// Stacks examples into a batch as the DataLoader does (see Collation above).
Batch collate(const std::vector<Example>& examples);

}  // namespace loom::data
