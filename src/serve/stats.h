// What the server counts per model version, reported two ways: the
// statistics extension (GET /v2/models/{m}/stats, Triton's JSON) and
// Prometheus text at GET /metrics with Triton's nv_inference_* names; and
// the language models' engine counters (loom_llm_*) at /metrics too.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "loom/serve/engine.h"

namespace loom::serve {

// A count and the nanoseconds it took, as Triton's StatisticDuration.
struct Duration {
  uint64_t count = 0;
  uint64_t ns = 0;
  void add(int64_t nanos) {
    ++count;
    ns += static_cast<uint64_t>(nanos > 0 ? nanos : 0);
  }
};

// Why a request failed, the `reason` label of nv_inference_request_failure
// (Triton's names): REJECTED (full queue, timed out in the queue), BACKEND
// (the model's forward threw), OTHER (the request was invalid for the model).
enum class FailureReason { Rejected, Backend, Other };

class ModelStats {
 public:
  // A request answered with its outputs: the time from its arrival to its
  // answer, its wait in the queue, and the compute phases of its batch.
  void record_success(int64_t request_ns, int64_t queue_ns, int64_t input_ns, int64_t infer_ns, int64_t output_ns);
  void record_failure(int64_t request_ns, FailureReason reason);
  // A batch of `rows` ran (every job in it is also recorded on its own).
  void record_batch(int64_t rows, int64_t input_ns, int64_t infer_ns, int64_t output_ns);

  // One model_stats entry of the statistics extension.
  nlohmann::json to_json(const std::string& name, const std::string& version) const;
  // The Prometheus samples of this version, with {model="name",version="v"}
  // labels, appended to `families` (metric name -> its sample lines).
  void append_metrics(const std::string& name, const std::string& version, int64_t pending,
                      std::map<std::string, std::string>& families) const;

  // Upper bounds of the batch-size histogram's buckets (then +Inf).
  static constexpr int64_t kBatchBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128};

 private:
  struct BatchStats {
    Duration input, infer, output;
  };
  mutable std::mutex mu_;
  Duration success_, fail_, queue_, input_, infer_, output_;
  uint64_t fail_by_reason_[3] = {0, 0, 0};
  uint64_t inference_count_ = 0;   // rows run
  uint64_t execution_count_ = 0;   // batches run
  uint64_t last_inference_ms_ = 0; // ms since the epoch of the last batch
  std::map<int64_t, BatchStats> batches_;  // by batch size
};

// The engine's counters of a language model version (served at /v1) as
// loom_llm_* samples with {model="name",version="v"} labels.
void append_engine_metrics(const std::string& name, const std::string& version, const LlmEngine& engine,
                           std::map<std::string, std::string>& families);

// The HELP and TYPE lines of each metric family, in output order.
std::string metrics_text(const std::map<std::string, std::string>& families);

}  // namespace loom::serve
