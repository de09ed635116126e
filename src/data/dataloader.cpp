// DataLoader: epochs, collation and the worker threads (Note [Deterministic
// data loading] in loom/data/dataloader.h).
#include "loom/data/dataloader.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>

#include "loom/autograd.h"
#include "loom/cuda.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::data {

namespace {

// Stacks one field of the examples into (B, ...).
Tensor stack_field(const std::vector<Example>& examples, Tensor Example::*field, const char* what) {
  const Tensor& first = examples[0].*field;
  if (!first.defined()) {
    for (size_t k = 1; k < examples.size(); ++k)
      LOOM_CHECK(!(examples[k].*field).defined(), "collate: example ", k, " of the batch has a ", what,
                 " but example 0 has none");
    return Tensor();
  }
  for (size_t k = 1; k < examples.size(); ++k) {
    const Tensor& t = examples[k].*field;
    LOOM_CHECK(t.defined(), "collate: example ", k, " of the batch has no ", what, " but example 0 has one");
    LOOM_CHECK(t.sizes() == first.sizes() && t.dtype() == first.dtype() && t.device() == first.device(),
               "collate: example ", k, " of the batch has ", what, " ", t.dtype(), " ", shape_str(t.sizes()), " on ",
               t.device(), " but example 0 has ", first.dtype(), " ", shape_str(first.sizes()), " on ", first.device(),
               "; every example of a batch must match");
  }
  if (!first.device().is_cpu()) {
    std::vector<Tensor> parts;
    for (const Example& e : examples) parts.push_back(e.*field);
    return stack(parts, 0);
  }
  // On the CPU each example is one contiguous block of the output.
  std::vector<int64_t> sizes = first.sizes();
  sizes.insert(sizes.begin(), static_cast<int64_t>(examples.size()));
  Tensor out = empty(sizes, TensorOptions(first.dtype()));
  char* dst = static_cast<char*>(out.raw_data_ptr());
  const size_t bytes = first.nbytes();
  for (const Example& e : examples) {
    const Tensor t = (e.*field).contiguous();
    if (bytes > 0) std::memcpy(dst, t.raw_data_ptr(), bytes);
    dst += bytes;
  }
  return out;
}

}  // namespace

Batch collate(const std::vector<Example>& examples) {
  LOOM_CHECK(!examples.empty(), "collate: expects at least one example");
  LOOM_CHECK(examples[0].data.defined(), "collate: example 0 of the batch has no data");
  return {stack_field(examples, &Example::data, "data"), stack_field(examples, &Example::target, "target")};
}

// One epoch. Workers (if any) claim batch numbers in order and put the result
// in slot k % capacity; the consumer takes batch `next` from its slot. A
// batch number is claimed only while it is below next + capacity, which
// bounds the memory held ahead and guarantees slot k % capacity is free.
struct DataLoader::Run {
  struct Slot {
    bool ready = false;
    Batch batch;
    std::exception_ptr error;
  };

  std::shared_ptr<Dataset> dataset;
  DataLoaderOptions options;
  int64_t epoch = 0;
  std::vector<int64_t> order;  // dataset indices in the epoch's order (checked to be in range)
  int64_t num_batches = 0;

  // Consumer side.
  Batch current;
  bool has_current = false;
  bool finished = false;

  // Shared with the workers, under mu.
  std::mutex mu;
  std::condition_variable ready_cv;  // a slot was filled
  std::condition_variable space_cv;  // a slot was freed, or stop
  std::vector<Slot> slots;
  int64_t next = 0;        // the batch the consumer takes next
  int64_t next_claim = 0;  // the batch the next idle worker builds
  bool stop = false;
  std::vector<std::thread> threads;

  Run(std::shared_ptr<Dataset> ds, const DataLoaderOptions& opts, int64_t ep, int64_t batches)
      : dataset(std::move(ds)), options(opts), epoch(ep), num_batches(batches) {
    const int64_t n = dataset->size();
    if (options.sampler) {
      order = options.sampler->indices(epoch);
      const int64_t expected = options.sampler->size();
      LOOM_CHECK(static_cast<int64_t>(order.size()) == expected, "DataLoader: the sampler gave ", order.size(),
                 " indices for epoch ", epoch, " but its size() is ", expected);
      for (size_t i = 0; i < order.size(); ++i)
        LOOM_CHECK(order[i] >= 0 && order[i] < n, "DataLoader: the sampler's index ", order[i], " (position ", i,
                   " of epoch ", epoch, ") is out of range for ", dataset->name(), " of size ", n);
    } else if (options.shuffle) {
      order = SampleGenerator::for_shuffle(options.seed, epoch).permutation(n);
    } else {
      order.resize(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), int64_t{0});
    }
    if (options.num_workers > 0 && num_batches > 0) {
      slots.resize(static_cast<size_t>(options.num_workers * options.prefetch_factor));
      try {
        for (int64_t w = 0; w < options.num_workers; ++w) threads.emplace_back([this] { worker_loop(); });
      } catch (...) {
        shutdown();  // the destructor will not run for a half-built Run
        throw;
      }
    }
  }

  ~Run() { shutdown(); }

  // Batch k from the examples order[k * B, min((k + 1) * B, N)).
  Batch build(int64_t k) const {
    NoGradGuard no_grad;  // loading never records a graph, on any thread
    const int64_t b = options.batch_size;
    const int64_t first = k * b, last = std::min<int64_t>(first + b, static_cast<int64_t>(order.size()));
    std::vector<Example> examples;
    examples.reserve(static_cast<size_t>(last - first));
    for (int64_t i = first; i < last; ++i) {
      const int64_t index = order[static_cast<size_t>(i)];
      Example e = dataset->get(index);
      if (options.transform) {
        SampleGenerator gen = SampleGenerator::for_example(options.seed, epoch, index);
        e = options.transform(std::move(e), gen);
      }
      examples.push_back(std::move(e));
    }
    Batch batch = collate(examples);
    if (options.pin_memory && cuda::is_available()) {
      batch.data = cuda::pin_memory(batch.data);
      if (batch.target.defined()) batch.target = cuda::pin_memory(batch.target);
    }
    return batch;
  }

  void worker_loop() {
    const auto capacity = static_cast<int64_t>(slots.size());
    for (;;) {
      int64_t k;
      {
        std::unique_lock<std::mutex> lock(mu);
        space_cv.wait(lock, [&] { return stop || next_claim >= num_batches || next_claim < next + capacity; });
        if (stop || next_claim >= num_batches) return;
        k = next_claim++;
      }
      Slot result;
      try {
        result.batch = build(k);
      } catch (...) {
        result.error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        // Every batch before k is already claimed and will still arrive;
        // nothing after k is needed once the consumer meets the error.
        if (result.error) next_claim = num_batches;
        result.ready = true;
        slots[static_cast<size_t>(k % capacity)] = std::move(result);
      }
      ready_cv.notify_all();
      space_cv.notify_all();  // idle workers may now see that nothing is left to claim
    }
  }

  // Moves to batch `next`, or to the end. Rethrows an error building it.
  void advance() {
    has_current = false;
    current = Batch();
    if (finished) return;
    if (next >= num_batches) {
      finish();
      return;
    }
    if (threads.empty()) {
      try {
        current = build(next);
      } catch (...) {
        finish();
        throw;
      }
      ++next;
      has_current = true;
      return;
    }
    Slot slot;
    {
      std::unique_lock<std::mutex> lock(mu);
      Slot& s = slots[static_cast<size_t>(next % static_cast<int64_t>(slots.size()))];
      ready_cv.wait(lock, [&] { return s.ready; });
      slot = std::move(s);
      s = Slot();
      ++next;
    }
    space_cv.notify_all();
    if (slot.error) {
      finish();
      std::rethrow_exception(slot.error);
    }
    current = std::move(slot.batch);
    has_current = true;
  }

  void finish() {
    finished = true;
    shutdown();
  }

  // Stops the workers and waits for them; a worker busy with a batch
  // finishes that batch first. Safe to call more than once.
  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    space_cv.notify_all();
    for (std::thread& t : threads)
      if (t.joinable()) t.join();
    threads.clear();
    finished = true;
  }
};

// ---- Iterator ----

Batch& DataLoader::Iterator::operator*() const {
  LOOM_CHECK(!at_end(), "DataLoader: dereferencing an iterator that is at the end of the epoch");
  return run_->current;
}

DataLoader::Iterator& DataLoader::Iterator::operator++() {
  LOOM_CHECK(run_ != nullptr, "DataLoader: incrementing an iterator that is at the end of the epoch");
  run_->advance();
  return *this;
}

bool DataLoader::Iterator::at_end() const { return run_ == nullptr || !run_->has_current; }

// ---- DataLoader ----

DataLoader::DataLoader(std::shared_ptr<Dataset> dataset, DataLoaderOptions options)
    : dataset_(std::move(dataset)), options_(std::move(options)) {
  LOOM_CHECK(dataset_ != nullptr, "DataLoader: the dataset is null");
  LOOM_CHECK(options_.batch_size >= 1, "DataLoader: batch_size must be at least 1, got ", options_.batch_size);
  LOOM_CHECK(options_.num_workers >= 0, "DataLoader: num_workers must be non-negative, got ", options_.num_workers);
  LOOM_CHECK(options_.prefetch_factor >= 1, "DataLoader: prefetch_factor must be at least 1, got ",
             options_.prefetch_factor);
  // As PyTorch: a sampler decides the order, so shuffle has nothing to do.
  LOOM_CHECK(!(options_.sampler && options_.shuffle), "DataLoader: sampler option is mutually exclusive with shuffle");
}

DataLoader::~DataLoader() {
  if (auto run = current_.lock()) run->shutdown();
}

DataLoader::Iterator DataLoader::begin() {
  if (auto previous = current_.lock()) previous->shutdown();
  auto run = std::make_shared<Run>(dataset_, options_, epoch_, size());
  ++epoch_;
  current_ = run;
  run->advance();
  return Iterator(std::move(run));
}

int64_t DataLoader::size() const {
  const int64_t n = options_.sampler ? options_.sampler->size() : dataset_->size(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

void DataLoader::set_epoch(int64_t epoch) {
  LOOM_CHECK(epoch >= 0, "DataLoader::set_epoch: epoch must be non-negative, got ", epoch);
  epoch_ = epoch;
}

}  // namespace loom::data
