#include "serve/stats.h"

#include <charconv>
#include <chrono>
#include <iterator>

namespace loom::serve {
namespace {

struct Family {
  const char* name;
  const char* type;
  const char* help;
};

// Triton's metric names (docs/user_guide/metrics.md), plus the batch-size
// histogram, in the order /metrics prints them.
constexpr Family kFamilies[] = {
    {"nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes"},
    {"nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes"},
    {"nv_inference_count", "counter", "Number of inferences performed (rows of all batches)"},
    {"nv_inference_exec_count", "counter", "Number of model executions performed (batches)"},
    {"nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds"},
    {"nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds"},
    {"nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds"},
    {"nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds"},
    {"nv_inference_compute_output_duration_us", "counter", "Cumulative inference compute output duration in microseconds"},
    {"nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution"},
    {"nv_inference_batch_size", "histogram", "Rows per model execution (dynamic batching)"},
    // Language models at /v1 (serve::EngineStats).
    {"loom_llm_prompt_tokens_total", "counter", "Prompt tokens of the generation requests submitted"},
    {"loom_llm_generation_tokens_total", "counter", "Tokens generated"},
    {"loom_llm_requests_total", "counter",
     "Generation requests ended, by outcome: finished (stop or length), cancelled (the client hung up), timeout"},
    {"loom_llm_steps_total", "counter", "Engine steps (batched forward passes)"},
    {"loom_llm_running", "gauge", "Sequences in the running batch"},
    {"loom_llm_waiting", "gauge", "Sequences waiting for a slot or for KV-cache blocks"},
    {"loom_llm_kv_blocks_used", "gauge", "Blocks of the paged KV cache in use"},
    {"loom_llm_kv_blocks_total", "gauge", "Blocks of the paged KV cache (--kv-cache-mb)"},
    {"loom_llm_kv_block_size", "gauge", "Positions per KV-cache block"},
    {"loom_llm_kv_positions", "gauge", "Positions the running sequences hold in the KV cache (live tokens)"},
    {"loom_llm_kv_cache_usage", "gauge", "Fraction of the KV-cache blocks in use"},
    {"loom_llm_preemptions_total", "counter",
     "Sequences preempted (blocks freed, recomputed later) when the KV cache was full"},
    {"loom_llm_spec_draft_tokens_total", "counter", "Speculative decoding: tokens the draft model proposed"},
    {"loom_llm_spec_accepted_tokens_total", "counter", "Speculative decoding: proposed tokens the model accepted"},
    {"loom_llm_spec_acceptance_rate", "gauge", "Speculative decoding: accepted / proposed draft tokens (0 before any)"},
    {"loom_llm_time_to_first_token_seconds", "histogram",
     "Seconds from a request's submission to the engine to its first token (per choice)"},
    {"loom_llm_inter_token_latency_seconds", "histogram", "Seconds between consecutive tokens of a choice"},
};

constexpr const char* kReasonNames[] = {"REJECTED", "BACKEND", "OTHER"};

nlohmann::json duration_json(const Duration& d) { return {{"count", d.count}, {"ns", d.ns}}; }

void add_sample(std::map<std::string, std::string>& families, const std::string& family, const std::string& sample,
                const std::string& labels, uint64_t value) {
  families[family] += sample + "{" + labels + "} " + std::to_string(value) + "\n";
}

void add_sample(std::map<std::string, std::string>& families, const std::string& family, const std::string& sample,
                const std::string& labels, const std::string& value) {
  families[family] += sample + "{" + labels + "} " + value + "\n";
}

// Prometheus's float text: the shortest that reads back the same double.
std::string number_text(double v) {
  char buf[64];
  const auto end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
  return std::string(buf, end);
}

void add_histogram(std::map<std::string, std::string>& families, const std::string& family, const std::string& labels,
                   const Histogram& h) {
  int64_t below = 0;
  for (size_t b = 0; b < h.bounds.size(); ++b) {
    below += b < h.counts.size() ? h.counts[b] : 0;
    add_sample(families, family, family + "_bucket", labels + ",le=\"" + number_text(h.bounds[b]) + "\"",
               std::to_string(below));
  }
  add_sample(families, family, family + "_bucket", labels + ",le=\"+Inf\"", std::to_string(h.count));
  add_sample(families, family, family + "_sum", labels, number_text(h.sum));
  add_sample(families, family, family + "_count", labels, std::to_string(h.count));
}

}  // namespace

void ModelStats::record_success(int64_t request_ns, int64_t queue_ns, int64_t input_ns, int64_t infer_ns,
                                int64_t output_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  success_.add(request_ns);
  queue_.add(queue_ns);
  input_.add(input_ns);
  infer_.add(infer_ns);
  output_.add(output_ns);
}

void ModelStats::record_failure(int64_t request_ns, FailureReason reason) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_.add(request_ns);
  ++fail_by_reason_[static_cast<int>(reason)];
}

void ModelStats::record_batch(int64_t rows, int64_t input_ns, int64_t infer_ns, int64_t output_ns) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  std::lock_guard<std::mutex> lock(mu_);
  BatchStats& b = batches_[rows];
  b.input.add(input_ns);
  b.infer.add(infer_ns);
  b.output.add(output_ns);
  inference_count_ += static_cast<uint64_t>(rows);
  ++execution_count_;
  last_inference_ms_ = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
}

nlohmann::json ModelStats::to_json(const std::string& name, const std::string& version) const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json batch_stats = nlohmann::json::array();
  for (const auto& [rows, b] : batches_)
    batch_stats.push_back({{"batch_size", rows},
                           {"compute_input", duration_json(b.input)},
                           {"compute_infer", duration_json(b.infer)},
                           {"compute_output", duration_json(b.output)}});
  return {{"name", name},
          {"version", version},
          {"last_inference", last_inference_ms_},
          {"inference_count", inference_count_},
          {"execution_count", execution_count_},
          {"inference_stats",
           {{"success", duration_json(success_)},
            {"fail", duration_json(fail_)},
            {"queue", duration_json(queue_)},
            {"compute_input", duration_json(input_)},
            {"compute_infer", duration_json(infer_)},
            {"compute_output", duration_json(output_)}}},
          {"batch_stats", batch_stats}};
}

void ModelStats::append_metrics(const std::string& name, const std::string& version, int64_t pending,
                                std::map<std::string, std::string>& families) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string labels = "model=\"" + name + "\",version=\"" + version + "\"";
  auto add = [&](const std::string& family, uint64_t value) { add_sample(families, family, family, labels, value); };
  add("nv_inference_request_success", success_.count);
  for (int r = 0; r < 3; ++r)
    add_sample(families, "nv_inference_request_failure", "nv_inference_request_failure",
               labels + ",reason=\"" + kReasonNames[r] + "\"", fail_by_reason_[r]);
  add("nv_inference_count", inference_count_);
  add("nv_inference_exec_count", execution_count_);
  add("nv_inference_request_duration_us", success_.ns / 1000);
  add("nv_inference_queue_duration_us", queue_.ns / 1000);
  add("nv_inference_compute_input_duration_us", input_.ns / 1000);
  add("nv_inference_compute_infer_duration_us", infer_.ns / 1000);
  add("nv_inference_compute_output_duration_us", output_.ns / 1000);
  add("nv_inference_pending_request_count", static_cast<uint64_t>(pending));
  const std::string h = "nv_inference_batch_size";
  for (int64_t le : kBatchBuckets) {
    uint64_t below = 0;
    for (const auto& [rows, b] : batches_)
      if (rows <= le) below += b.infer.count;
    add_sample(families, h, h + "_bucket", labels + ",le=\"" + std::to_string(le) + "\"", below);
  }
  add_sample(families, h, h + "_bucket", labels + ",le=\"+Inf\"", execution_count_);
  add_sample(families, h, h + "_sum", labels, inference_count_);
  add_sample(families, h, h + "_count", labels, execution_count_);
}

void append_engine_metrics(const std::string& name, const std::string& version, const LlmEngine& engine,
                           std::map<std::string, std::string>& families) {
  const EngineStats s = engine.stats();
  const std::string labels = "model=\"" + name + "\",version=\"" + version + "\"";
  auto add = [&](const std::string& family, int64_t value) {
    add_sample(families, family, family, labels, std::to_string(value));
  };
  add("loom_llm_prompt_tokens_total", s.prompt_tokens);
  add("loom_llm_generation_tokens_total", s.generated_tokens);
  const std::pair<const char*, int64_t> outcomes[] = {
      {"finished", s.finished}, {"cancelled", s.cancelled}, {"timeout", s.timed_out}};
  for (const auto& [outcome, count] : outcomes)
    add_sample(families, "loom_llm_requests_total", "loom_llm_requests_total",
               labels + ",outcome=\"" + outcome + "\"", std::to_string(count));
  add("loom_llm_steps_total", s.steps);
  add("loom_llm_running", s.running);
  add("loom_llm_waiting", s.waiting);
  add("loom_llm_kv_blocks_used", s.kv_blocks_used);
  add("loom_llm_kv_blocks_total", s.kv_blocks_total);
  add("loom_llm_kv_block_size", engine.options().block_size);
  add("loom_llm_kv_positions", s.kv_positions);
  add_sample(families, "loom_llm_kv_cache_usage", "loom_llm_kv_cache_usage", labels,
             number_text(s.kv_blocks_total > 0 ? static_cast<double>(s.kv_blocks_used) /
                                                     static_cast<double>(s.kv_blocks_total)
                                               : 0.0));
  add("loom_llm_preemptions_total", s.preemptions);
  add("loom_llm_spec_draft_tokens_total", s.draft_proposed);
  add("loom_llm_spec_accepted_tokens_total", s.draft_accepted);
  add_sample(families, "loom_llm_spec_acceptance_rate", "loom_llm_spec_acceptance_rate", labels,
             number_text(s.draft_proposed > 0 ? static_cast<double>(s.draft_accepted) /
                                                    static_cast<double>(s.draft_proposed)
                                              : 0.0));
  add_histogram(families, "loom_llm_time_to_first_token_seconds", labels, s.time_to_first_token);
  add_histogram(families, "loom_llm_inter_token_latency_seconds", labels, s.inter_token_latency);
}

std::string metrics_text(const std::map<std::string, std::string>& families) {
  std::string out;
  for (const Family& f : kFamilies) {
    out += std::string("# HELP ") + f.name + " " + f.help + "\n";
    out += std::string("# TYPE ") + f.name + " " + f.type + "\n";
    auto it = families.find(f.name);
    if (it != families.end()) out += it->second;
  }
  return out;
}

}  // namespace loom::serve
