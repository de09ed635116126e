// One /v1 request in the engine: an engine request per prompt (each with its
// n choices), and the token events their sinks push from the engine's
// thread, taken in arrival order by the HTTP thread that answers.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "loom/serve/engine.h"
#include "serve/openai.h"

namespace loom::serve {

class Generation {
 public:
  struct Event {
    size_t prompt = 0;  // which engine request (the prompt's place in the request)
    TokenEvent event;
  };

  explicit Generation(LlmEngine& engine) : engine_(engine), queue_(std::make_shared<Queue>()) {}
  // Cancels what still runs and waits until every choice has ended: the
  // engine then holds nothing of this request (its RequestControl
  // included), so a handler may return.
  ~Generation();
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Submits every prompt with `control`. A loom::Error from the engine (a
  // request it refuses) cancels the ones already submitted and propagates.
  void submit(const std::vector<openai::EngineRequest>& requests, const RequestControl& control);

  // Blocks until events have come, and returns them in order; empty once
  // every choice has ended and its last event was taken.
  std::vector<Event> take();

  // Ends every engine request still running at the engine's next step
  // (their sinks hear Cancelled).
  void cancel();

 private:
  struct Queue {
    std::mutex mu;
    std::condition_variable ready;
    std::deque<Event> events;
    int64_t open = 0;  // choices whose last event has not been pushed
  };
  LlmEngine& engine_;
  std::shared_ptr<Queue> queue_;  // shared with the sinks, which may outlive a failed submit
  std::vector<uint64_t> ids_;
};

}  // namespace loom::serve
