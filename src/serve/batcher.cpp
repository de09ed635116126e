// Note [Dynamic batching]
// Each model version has one Batcher: a FIFO of jobs (prepared requests) and
// one thread that runs the model. The thread looks at the oldest job and
// gathers, in queue order, every later job whose inputs have the same dtype
// and the same sizes past the batch dimension, while the rows fit in
// max_batch_size (a job whose rows would overflow the batch is skipped, not
// split). Jobs of another shape keep their place and are batched when they
// become the oldest. When the gathered rows fall short of max_batch_size and
// the oldest job has waited less than max_queue_delay_us, the thread sleeps
// until that delay ends or another job arrives, then looks again; otherwise it
// takes the jobs out, concatenates their inputs along dim 0, runs one
// forward and hands each job its rows of every output (views of the batch's
// outputs). With a delay of 0 (the default) nothing waits on purpose: the
// jobs that arrived while the previous batch ran form the next one, so the
// batch grows with the load.
//
// Results are bitwise those of unbatched inference because a model's row i
// depends on its input row i alone (serve::Model::forward's contract; loom's
// kernels keep each row's reduction order independent of the batch size,
// which tests/serve/test_serve.cpp checks for every model `loom serve` loads).
//
// Bounds: submit refuses a job when max_queue_size jobs wait (the server
// answers 503 at once), and a request that is still queued at its deadline
// is taken out, by its own thread (Batcher::wait) or by the batching thread
// when it next forms a batch, and answered with an error, so a slow model
// never makes a queue grow without limit. After flush() (the server is
// stopping) and on destruction the thread runs what is queued without
// waiting for fuller batches.
#include "serve/batcher.h"

#include <algorithm>

#include "loom/autograd.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::serve {
namespace {

int64_t ns_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}

// Can `b` share a batch with `a`: the same inputs, dtypes and sizes past dim 0?
bool batchable(const Job& a, const Job& b) {
  if (a.inputs.size() != b.inputs.size()) return false;
  for (const auto& [name, x] : a.inputs) {
    auto it = b.inputs.find(name);
    if (it == b.inputs.end()) return false;
    const Tensor& y = it->second;
    if (x.dtype() != y.dtype() || x.dim() != y.dim()) return false;
    for (int64_t d = 1; d < x.dim(); ++d)
      if (x.size(d) != y.size(d)) return false;
  }
  return true;
}

}  // namespace

Batcher::Batcher(std::shared_ptr<Model> model, BatchingOptions options, BatchObserver observer)
    : model_(std::move(model)), options_(options), observer_(std::move(observer)) {
  LOOM_CHECK(options_.max_batch_size >= 1, "serve: max_batch_size must be >= 1, got ", options_.max_batch_size);
  LOOM_CHECK(options_.max_queue_delay_us >= 0, "serve: max_queue_delay_microseconds must be >= 0, got ",
             options_.max_queue_delay_us);
  LOOM_CHECK(options_.max_queue_size >= 1, "serve: max_queue_size must be >= 1, got ", options_.max_queue_size);
  LOOM_CHECK(options_.timeout_us >= 0, "serve: the queue timeout must be >= 0 microseconds, got ",
             options_.timeout_us);
  thread_ = std::thread([this] { loop(); });
}

Batcher::~Batcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

bool Batcher::submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int64_t>(queue_.size()) >= options_.max_queue_size) return false;
    job->enqueued = Clock::now();
    queue_.push_back(job);
  }
  work_cv_.notify_one();
  return true;
}

Batcher::Outcome Batcher::wait(const std::shared_ptr<Job>& job) {
  std::unique_lock<std::mutex> lock(mu_);
  if (job->deadline && !job->cv.wait_until(lock, *job->deadline, [&] { return job->done; })) {
    auto it = std::find(queue_.begin(), queue_.end(), job);
    if (it != queue_.end()) {
      queue_.erase(it);
      return Outcome::TimedOut;
    }
  }
  job->cv.wait(lock, [&] { return job->done; });
  return job->expired ? Outcome::TimedOut : Outcome::Done;
}

void Batcher::flush() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    flushing_ = true;
  }
  work_cv_.notify_all();
}

int64_t Batcher::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

void Batcher::loop() {
  NoGradGuard no_grad;  // grad mode is per thread
  const auto delay = std::chrono::microseconds(options_.max_queue_delay_us);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to answer

    // Jobs past their deadline leave now, even if their threads have not
    // woken yet: a late job never runs.
    const Clock::time_point now = Clock::now();
    for (auto it = queue_.begin(); it != queue_.end();) {
      Job& job = **it;
      if (job.deadline && *job.deadline <= now) {
        job.expired = job.done = true;
        job.cv.notify_one();
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    if (queue_.empty()) continue;

    // The batch the oldest job would run in now (Note [Dynamic batching]).
    const Job& oldest = *queue_.front();
    std::vector<size_t> picked;
    int64_t rows = 0;
    for (size_t i = 0; i < queue_.size() && rows < options_.max_batch_size; ++i) {
      const Job& job = *queue_[i];
      if (rows + job.rows <= options_.max_batch_size && batchable(oldest, job)) {
        picked.push_back(i);
        rows += job.rows;
      }
    }
    const Clock::time_point ready_at = oldest.enqueued + delay;
    if (rows < options_.max_batch_size && !stopping_ && !flushing_ && now < ready_at) {
      work_cv_.wait_until(lock, ready_at);  // the delay ends, or a job arrives: look again
      continue;
    }
    std::vector<std::shared_ptr<Job>> batch;
    batch.reserve(picked.size());
    for (size_t i : picked) batch.push_back(queue_[i]);
    for (auto it = picked.rbegin(); it != picked.rend(); ++it)
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(*it));

    lock.unlock();
    run_batch(batch);
    lock.lock();
    for (auto& job : batch) {
      job->done = true;
      job->cv.notify_one();
    }
  }
}

void Batcher::run_batch(std::vector<std::shared_ptr<Job>>& batch) {
  const Clock::time_point start = Clock::now();
  int64_t rows = 0;
  for (auto& job : batch) {
    job->queue_ns = ns_between(job->enqueued, start);
    rows += job->rows;
  }
  Clock::time_point inputs_ready = start, outputs_ready = start, end = start;
  try {
    // inputs: (rows, ...) each, the jobs' rows in queue order.
    std::map<std::string, Tensor> inputs;
    for (const auto& [name, first] : batch.front()->inputs) {
      if (batch.size() == 1) {
        inputs.emplace(name, first);
        continue;
      }
      std::vector<Tensor> parts;
      parts.reserve(batch.size());
      for (auto& job : batch) parts.push_back(job->inputs.at(name));
      inputs.emplace(name, cat(parts, 0));
    }
    inputs_ready = Clock::now();
    std::map<std::string, Tensor> outputs = model_->forward(inputs);
    outputs_ready = Clock::now();
    for (const auto& [name, out] : outputs)
      LOOM_CHECK(out.dim() >= 1 && out.size(0) == rows, "serve: the model's output '", name, "' has ",
                 out.dim() >= 1 ? out.size(0) : 0, " rows for a batch of ", rows,
                 " (its first dimension must be the batch)");
    int64_t offset = 0;
    for (auto& job : batch) {
      for (const auto& [name, out] : outputs) job->outputs[name] = out.slice(0, offset, offset + job->rows);
      offset += job->rows;
    }
    end = Clock::now();
  } catch (const std::exception& e) {
    end = Clock::now();
    for (auto& job : batch) {
      job->outputs.clear();
      job->error = e.what();
    }
  }
  const int64_t input_ns = ns_between(start, inputs_ready), infer_ns = ns_between(inputs_ready, outputs_ready),
                output_ns = ns_between(outputs_ready, end);
  for (auto& job : batch) {
    job->batch_rows = rows;
    job->input_ns = input_ns;
    job->infer_ns = infer_ns;
    job->output_ns = output_ns;
  }
  if (observer_) observer_(rows, input_ns, infer_ns, output_ns);
}

}  // namespace loom::serve
