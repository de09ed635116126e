// The dynamic batcher of one model version: a bounded queue of prepared
// requests and one thread that merges them into batches and runs the model
// (Note [Dynamic batching] in batcher.cpp).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "loom/serve.h"

namespace loom::serve {

using Clock = std::chrono::steady_clock;

// One request on its way through the queue. The request's thread fills the
// inputs and waits (Batcher::wait); the batching thread fills the rest.
struct Job {
  std::map<std::string, Tensor> inputs;  // prepared, (rows, ...)
  int64_t rows = 0;
  Clock::time_point enqueued{};
  std::optional<Clock::time_point> deadline;  // still queued then: taken out and answered with an error

  // Set by the batching thread before `done`.
  std::map<std::string, Tensor> outputs;  // (rows, ...) views of the batch's outputs
  std::string error;                      // the forward failed: every job of its batch gets the message
  int64_t batch_rows = 0;                 // rows of the batch it ran in
  int64_t queue_ns = 0, input_ns = 0, infer_ns = 0, output_ns = 0;
  bool done = false;           // guarded by the batcher's mutex
  bool expired = false;        // done without running: its deadline passed in the queue
  std::condition_variable cv;  // its request's thread waits here, so a batch wakes only its own
};

// Called after each batch: its rows and the time spent concatenating the
// inputs, running the model and splitting the outputs.
using BatchObserver = std::function<void(int64_t rows, int64_t input_ns, int64_t infer_ns, int64_t output_ns)>;

class Batcher {
 public:
  Batcher(std::shared_ptr<Model> model, BatchingOptions options, BatchObserver observer);
  // Answers what is still queued, then joins the thread.
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues a job; false when the queue already holds max_queue_size jobs.
  bool submit(const std::shared_ptr<Job>& job);

  enum class Outcome { Done, TimedOut };
  // Waits for the job. TimedOut: it was still queued at its deadline and has
  // been taken out of the queue (it never runs), by this thread or by the
  // batching thread, whichever saw the deadline pass first. A job already in
  // a running batch is waited for to the end.
  Outcome wait(const std::shared_ptr<Job>& job);

  // From now on batches go without waiting out max_queue_delay_us (the
  // server is stopping: answer what is queued at once).
  void flush();

  int64_t queued() const;  // jobs waiting now
  const BatchingOptions& options() const { return options_; }

 private:
  void loop();
  void run_batch(std::vector<std::shared_ptr<Job>>& batch);

  std::shared_ptr<Model> model_;
  BatchingOptions options_;
  BatchObserver observer_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // the batching thread: a job came, or stop
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  bool flushing_ = false;
  std::thread thread_;
};

}  // namespace loom::serve
