#include "serve/generation.h"

#include "loom/error.h"

namespace loom::serve {

Generation::~Generation() {
  cancel();
  std::unique_lock<std::mutex> lock(queue_->mu);
  queue_->ready.wait(lock, [&] { return queue_->open == 0; });
}

void Generation::submit(const std::vector<openai::EngineRequest>& requests, const RequestControl& control) {
  for (size_t p = 0; p < requests.size(); ++p) {
    const openai::EngineRequest& r = requests[p];
    {
      std::lock_guard<std::mutex> lock(queue_->mu);
      queue_->open += r.params.n;
    }
    std::shared_ptr<Queue> q = queue_;
    TokenSink sink = [q, p](const TokenEvent& e) {
      std::lock_guard<std::mutex> lock(q->mu);
      q->events.push_back({p, e});
      if (e.finish != FinishReason::None) --q->open;
      q->ready.notify_all();
    };
    try {
      ids_.push_back(engine_.submit(r.prompt, r.params, std::move(sink), control));
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(queue_->mu);
        queue_->open -= r.params.n;  // nothing was queued for this one
      }
      throw;  // the destructor cancels and waits for the ones before it
    }
  }
}

std::vector<Generation::Event> Generation::take() {
  std::unique_lock<std::mutex> lock(queue_->mu);
  queue_->ready.wait(lock, [&] { return !queue_->events.empty() || queue_->open == 0; });
  std::vector<Event> out(std::make_move_iterator(queue_->events.begin()),
                         std::make_move_iterator(queue_->events.end()));
  queue_->events.clear();
  return out;
}

void Generation::cancel() {
  {
    std::lock_guard<std::mutex> lock(queue_->mu);
    if (queue_->open == 0) return;
  }
  for (uint64_t id : ids_) engine_.cancel(id);
}

}  // namespace loom::serve
