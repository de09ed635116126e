#include "serve/stats.h"

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
};

constexpr const char* kReasonNames[] = {"REJECTED", "BACKEND", "OTHER"};

nlohmann::json duration_json(const Duration& d) { return {{"count", d.count}, {"ns", d.ns}}; }

void add_sample(std::map<std::string, std::string>& families, const std::string& family, const std::string& sample,
                const std::string& labels, uint64_t value) {
  families[family] += sample + "{" + labels + "} " + std::to_string(value) + "\n";
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
