// The Open Inference Protocol over HTTP (cpp-httplib): routes, the model
// registry (load, unload, versions), and the infer path from request body to
// batcher to response. Language models are also served with OpenAI's API
// (/v1/models, /v1/completions, /v1/chat/completions; src/serve/openai.h):
// a handler submits its prompts to the model's engine and answers from the
// token events, as one JSON object or as Server-Sent Events.
//
// Note [Serving threads]
// httplib serves each connection on one thread of its pool (http_threads) for
// as long as the connection is kept alive, and an infer handler blocks that
// thread until the model's batcher has answered, so concurrent requests need
// as many HTTP threads as connections. Decoding, validation (Model::prepare)
// and encoding run on the HTTP threads, in parallel; each model version's
// forward runs on its batcher's thread with loom's kernels spread over the
// shared thread pool (--threads).
//
// Note [Model registry]
// Names map to loaded versions (shared_ptr<ModelVersion>). A request takes a
// reference and keeps it to its answer, so unloading or reloading a model
// only swaps the registry's entry: requests already inside finish on the old
// version, whose batcher drains and stops when the last reference goes.
// Loads run outside the registry lock (one at a time), so serving never
// waits for a checkpoint to be read.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>

#include <sys/socket.h>

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "loom/error.h"
#include "loom/serve.h"
#include "serve/batcher.h"
#include "serve/connection.h"
#include "serve/generation.h"
#include "serve/openai.h"
#include "serve/protocol.h"
#include "serve/stats.h"

#ifndef LOOM_VERSION_STRING
#define LOOM_VERSION_STRING "0"
#endif

namespace loom::serve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;  // /v1 answers keep OpenAI's key order

constexpr const char* kHeaderLengthHeader = "Inference-Header-Content-Length";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kConfigFile = "config.json";

// An answer other than 200: the status and the {"error": message} body.
struct HttpError {
  int status;
  std::string message;
};

int64_t ns_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t).count();
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(shape[i]);
  }
  s += ']';
  return s;
}

void reply_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void reply_error(httplib::Response& res, int status, const std::string& message) {
  reply_json(res, status, json{{"error", message}});
}

// /v1 answers: OpenAI's error shape, and text that may hold a byte
// tokenizer's invalid UTF-8 (replaced).
void reply_v1_error(httplib::Response& res, const openai::ApiError& e) {
  res.status = e.status;
  res.set_content(openai::json_text(openai::error_body(e)), "application/json");
}

bool is_v1_path(const std::string& path) { return path.rfind("/v1/", 0) == 0 || path == "/v1"; }

// A model version folder name: digits only, > 0 (Triton's rule).
std::optional<int64_t> parse_version(const std::string& s) {
  if (s.empty() || s.size() > 18 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  const int64_t v = std::stoll(s);
  return v > 0 ? std::optional<int64_t>(v) : std::nullopt;
}

int64_t config_int(const json& obj, const char* key, const std::string& where, int64_t fallback, int64_t min) {
  auto it = obj.find(key);
  if (it == obj.end()) return fallback;
  LOOM_CHECK(it->is_number_integer() && it->get<int64_t>() >= min, where, ": \"", key, "\" must be an integer >= ",
             min, ", got ", it->dump());
  return it->get<int64_t>();
}

void check_keys(const json& obj, std::initializer_list<const char*> known, const std::string& where) {
  LOOM_CHECK(obj.is_object(), where, " must be a JSON object, got ", obj.dump());
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& key = it.key();
    const bool ok = std::any_of(known.begin(), known.end(), [&](const char* k) { return key == k; });
    LOOM_CHECK(ok, where, ": unknown field \"", key, "\"");
  }
}

// <model>/config.json over the server's defaults (the BatchingOptions
// comment in include/loom/serve.h shows the fields).
BatchingOptions read_model_config(const fs::path& file, const std::string& model, BatchingOptions options) {
  std::ifstream in(file);
  LOOM_CHECK(in, "serve: cannot read ", file.string());
  std::stringstream text;
  text << in.rdbuf();
  json config;
  try {
    config = json::parse(text.str());
  } catch (const json::exception& e) {
    LOOM_ERROR("serve: ", file.string(), " is not valid JSON: ", e.what());
  }
  const std::string where = file.string();
  check_keys(config, {"name", "max_batch_size", "dynamic_batching"}, where);
  if (config.contains("name"))
    LOOM_CHECK(config["name"] == model, where, ": \"name\" is ", config["name"].dump(), " but the folder is '",
               model, "'");
  options.max_batch_size = config_int(config, "max_batch_size", where, options.max_batch_size, 1);
  if (config.contains("dynamic_batching")) {
    const json& db = config["dynamic_batching"];
    const std::string dwhere = where + " dynamic_batching";
    check_keys(db, {"max_queue_delay_microseconds", "default_queue_policy"}, dwhere);
    options.max_queue_delay_us = config_int(db, "max_queue_delay_microseconds", dwhere, options.max_queue_delay_us, 0);
    if (db.contains("default_queue_policy")) {
      const json& qp = db["default_queue_policy"];
      const std::string qwhere = dwhere + ".default_queue_policy";
      check_keys(qp, {"max_queue_size", "default_timeout_microseconds"}, qwhere);
      options.max_queue_size = config_int(qp, "max_queue_size", qwhere, options.max_queue_size, 1);
      options.timeout_us = config_int(qp, "default_timeout_microseconds", qwhere, options.timeout_us, 0);
    }
  }
  return options;
}

json specs_json(const std::vector<TensorSpec>& specs) {
  json out = json::array();
  for (const TensorSpec& s : specs) out.push_back({{"name", s.name}, {"datatype", s.datatype}, {"shape", s.shape}});
  return out;
}

}  // namespace

// One loaded version of a model (Note [Model registry]).
struct ModelVersion {
  std::string name, version, file;
  int64_t created = 0;  // when it was loaded (seconds since the epoch; /v1/models)
  std::shared_ptr<Model> model;
  std::vector<TensorSpec> inputs, outputs;
  BatchingOptions batching;
  ModelStats stats;
  std::unique_ptr<Batcher> batcher;  // declared last: stops before the stats it reports to go away

  const TensorSpec* output(const std::string& n) const {
    for (const TensorSpec& s : outputs)
      if (s.name == n) return &s;
    return nullptr;
  }
  std::string label() const { return "model '" + name + "' version " + version; }
};

struct ModelEntry {
  std::map<int64_t, std::shared_ptr<ModelVersion>> versions;  // loaded ones; empty: unavailable
  std::string reason;                                         // why it is unavailable
};

struct Server::Impl {
  explicit Impl(ServerOptions o) : options(std::move(o)) {}

  ServerOptions options;
  httplib::Server http;
  int port = 0;
  std::atomic<bool> stopping{false};

  std::mutex registry_mu;  // guards `models`
  std::map<std::string, ModelEntry> models;
  std::mutex load_mu;  // one load or unload at a time

  // ---- the registry ----

  // The repository's model folders (hidden ones aside) and the NAME=FILE
  // models.
  std::vector<std::string> known_models() const {
    std::vector<std::string> names;
    for (const auto& [name, file] : options.models) names.push_back(name);
    if (!options.model_repository.empty()) {
      std::error_code ec;
      for (const auto& dir : fs::directory_iterator(options.model_repository, ec)) {
        const std::string name = dir.path().filename().string();
        if (dir.is_directory() && !name.empty() && name[0] != '.') names.push_back(name);
      }
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
  }

  std::shared_ptr<ModelVersion> make_version(const std::string& name, int64_t version, const std::string& file,
                                             const BatchingOptions& batching) {
    auto mv = std::make_shared<ModelVersion>();
    mv->name = name;
    mv->version = std::to_string(version);
    mv->file = file;
    mv->created = static_cast<int64_t>(std::time(nullptr));
    LOOM_CHECK(options.loader, "serve: the server has no model loader");
    mv->model = options.loader(file);
    LOOM_CHECK(mv->model, "serve: the loader returned no model for ", file);
    mv->inputs = mv->model->inputs();
    mv->outputs = mv->model->outputs();
    mv->batching = batching;
    ModelVersion* raw = mv.get();  // the batcher stops before *raw goes away
    mv->batcher = std::make_unique<Batcher>(mv->model, batching, [raw](int64_t rows, int64_t in, int64_t inf, int64_t out) {
      raw->stats.record_batch(rows, in, inf, out);
    });
    return mv;
  }

  // Reads every version of `name`; HttpError 404 when no such model exists,
  // loom::Error when one cannot be loaded.
  std::map<int64_t, std::shared_ptr<ModelVersion>> read_versions(const std::string& name) {
    std::map<int64_t, std::shared_ptr<ModelVersion>> versions;
    for (const auto& [n, file] : options.models)
      if (n == name) {
        versions[1] = make_version(name, 1, file, options.batching);
        return versions;
      }
    const fs::path dir = options.model_repository.empty() ? fs::path() : fs::path(options.model_repository) / name;
    std::error_code ec;
    if (dir.empty() || name.empty() || name[0] == '.' || name.find('/') != std::string::npos ||
        !fs::is_directory(dir, ec))
      throw HttpError{404, "no model '" + name + "' in the model repository"};
    BatchingOptions batching = options.batching;
    if (fs::exists(dir / kConfigFile, ec)) batching = read_model_config(dir / kConfigFile, name, batching);
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      auto v = parse_version(entry.path().filename().string());
      if (v && entry.is_directory() && fs::exists(entry.path() / kModelFile, ec))
        versions[*v] = make_version(name, *v, (entry.path() / kModelFile).string(), batching);
    }
    LOOM_CHECK(!versions.empty(), "serve: model '", name, "' has no version folder (", (dir / "1").string(),
               ") holding ", kModelFile);
    return versions;
  }

  void load(const std::string& name) {
    std::lock_guard<std::mutex> one_at_a_time(load_mu);
    std::map<int64_t, std::shared_ptr<ModelVersion>> fresh;
    try {
      fresh = read_versions(name);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(registry_mu);
      ModelEntry& entry = models[name];
      if (entry.versions.empty()) entry.reason = e.what();
      throw;
    }
    std::map<int64_t, std::shared_ptr<ModelVersion>> old;  // released after the lock
    std::lock_guard<std::mutex> lock(registry_mu);
    ModelEntry& entry = models[name];
    old.swap(entry.versions);
    entry.versions = std::move(fresh);
    entry.reason.clear();
  }

  void unload(const std::string& name) {
    std::lock_guard<std::mutex> one_at_a_time(load_mu);
    std::map<int64_t, std::shared_ptr<ModelVersion>> old;  // drains outside the lock
    {
      std::lock_guard<std::mutex> lock(registry_mu);
      auto it = models.find(name);
      if (it == models.end()) {
        const auto known = known_models();
        if (std::find(known.begin(), known.end(), name) == known.end())
          throw HttpError{404, "no model '" + name + "' in the model repository"};
        models[name].reason = "unloaded";
        return;
      }
      old.swap(it->second.versions);
      it->second.reason = "unloaded";
    }
  }

  // The version a request names, or the latest; HttpError 404 otherwise.
  std::shared_ptr<ModelVersion> find(const std::string& name, const std::string& version) {
    std::lock_guard<std::mutex> lock(registry_mu);
    auto it = models.find(name);
    if (it == models.end() || it->second.versions.empty()) {
      if (it != models.end()) throw HttpError{404, "model '" + name + "' is not loaded (" + it->second.reason + ")"};
      throw HttpError{404, "unknown model '" + name + "'"};
    }
    const auto& versions = it->second.versions;
    if (version.empty()) return versions.rbegin()->second;
    auto v = parse_version(version);
    auto vit = v ? versions.find(*v) : versions.end();
    if (vit == versions.end()) throw HttpError{404, "model '" + name + "' has no version '" + version + "'"};
    return vit->second;
  }

  std::vector<std::shared_ptr<ModelVersion>> all_versions() {
    std::vector<std::shared_ptr<ModelVersion>> out;
    std::lock_guard<std::mutex> lock(registry_mu);
    for (const auto& [name, entry] : models)
      for (const auto& [v, mv] : entry.versions) out.push_back(mv);
    return out;
  }

  // ---- endpoints ----

  json server_metadata() const {
    return {{"name", options.server_name},
            {"version", LOOM_VERSION_STRING},
            {"extensions", {"binary_tensor_data", "classification", "model_configuration", "model_repository",
                            "statistics"}}};
  }

  json model_metadata(const std::string& name, const std::string& version) {
    std::shared_ptr<ModelVersion> mv = find(name, version);
    json versions = json::array();
    if (version.empty()) {
      std::lock_guard<std::mutex> lock(registry_mu);
      // find(): an unload since find() above must not re-create the entry.
      auto it = models.find(name);
      if (it != models.end())
        for (const auto& [v, ignored] : it->second.versions) versions.push_back(std::to_string(v));
    } else {
      versions.push_back(mv->version);
    }
    return {{"name", name},
            {"versions", versions},
            {"platform", "loom"},
            {"inputs", specs_json(mv->inputs)},
            {"outputs", specs_json(mv->outputs)}};
  }

  json model_config(const std::string& name, const std::string& version) {
    std::shared_ptr<ModelVersion> mv = find(name, version);
    const BatchingOptions& b = mv->batching;
    auto dims = [](const std::vector<TensorSpec>& specs) {
      json out = json::array();
      for (const TensorSpec& s : specs)
        out.push_back({{"name", s.name},
                       {"data_type", "TYPE_" + (s.datatype == "BYTES" ? std::string("STRING") : s.datatype)},
                       {"dims", std::vector<int64_t>(s.shape.begin() + 1, s.shape.end())}});
      return out;
    };
    return {{"name", name},
            {"platform", "loom"},
            {"max_batch_size", b.max_batch_size},
            {"input", dims(mv->inputs)},
            {"output", dims(mv->outputs)},
            {"dynamic_batching",
             {{"max_queue_delay_microseconds", b.max_queue_delay_us},
              {"default_queue_policy",
               {{"max_queue_size", b.max_queue_size}, {"default_timeout_microseconds", b.timeout_us}}}}}};
  }

  json repository_index(bool ready_only) {
    json out = json::array();
    const auto names = known_models();
    std::lock_guard<std::mutex> lock(registry_mu);
    for (const std::string& name : names) {
      auto it = models.find(name);
      if (it != models.end() && !it->second.versions.empty()) {
        for (const auto& [v, mv] : it->second.versions)
          out.push_back({{"name", name}, {"version", std::to_string(v)}, {"state", "READY"}});
      } else if (!ready_only) {
        const std::string reason = it == models.end() ? "not loaded" : it->second.reason;
        out.push_back({{"name", name}, {"state", "UNAVAILABLE"}, {"reason", reason}});
      }
    }
    return out;
  }

  json statistics(const std::string& name, const std::string& version) {
    json stats = json::array();
    if (name.empty()) {
      for (const auto& mv : all_versions()) stats.push_back(mv->stats.to_json(mv->name, mv->version));
    } else if (version.empty()) {
      find(name, "");  // 404 for an unknown model
      for (const auto& mv : all_versions())
        if (mv->name == name) stats.push_back(mv->stats.to_json(mv->name, mv->version));
    } else {
      auto mv = find(name, version);
      stats.push_back(mv->stats.to_json(mv->name, mv->version));
    }
    return {{"model_stats", stats}};
  }

  std::string metrics() {
    std::map<std::string, std::string> families;
    for (const auto& mv : all_versions()) {
      mv->stats.append_metrics(mv->name, mv->version, mv->batcher->queued(), families);
      if (TextGenerator* g = mv->model->text_generator())
        append_engine_metrics(mv->name, mv->version, g->engine(), families);
    }
    return metrics_text(families);
  }

  // A request's inputs, checked against the model's signature and prepared.
  std::shared_ptr<Job> make_job(const ModelVersion& mv, const InferRequest& r) {
    auto job = std::make_shared<Job>();
    for (const WireTensor& in : r.inputs) {
      auto spec = std::find_if(mv.inputs.begin(), mv.inputs.end(), [&](const TensorSpec& s) { return s.name == in.name; });
      if (spec == mv.inputs.end()) {
        std::string names;
        for (const TensorSpec& s : mv.inputs) names += (names.empty() ? "'" : ", '") + s.name + "'";
        LOOM_ERROR(mv.label(), " has no input '", in.name, "' (its inputs: ", names, ")");
      }
      LOOM_CHECK(in.shape.size() == spec->shape.size(), "input '", in.name, "': shape ", shape_text(in.shape),
                 " has ", in.shape.size(), " dimensions, but ", mv.label(), " takes ", shape_text(spec->shape));
      for (size_t d = 0; d < in.shape.size(); ++d)
        LOOM_CHECK(spec->shape[d] < 0 || spec->shape[d] == in.shape[d], "input '", in.name, "': shape ",
                   shape_text(in.shape), " does not match ", shape_text(spec->shape), " (dimension ", d, ")");
      const int64_t rows = in.shape[0];
      LOOM_CHECK(rows >= 1, "input '", in.name, "': the batch dimension must be >= 1, got ", rows);
      LOOM_CHECK(rows <= mv.batching.max_batch_size, "input '", in.name, "': a batch of ", rows,
                 " rows exceeds the max_batch_size ", mv.batching.max_batch_size, " of ", mv.label());
      LOOM_CHECK(job->rows == 0 || job->rows == rows, "input '", in.name, "' has ", rows,
                 " rows, but the other inputs have ", job->rows);
      job->rows = rows;
      Tensor prepared;
      try {
        prepared = mv.model->prepare(in.name, to_tensor(in));
      } catch (const Error& e) {
        // The model speaks of loom dtypes; name what the request sent too.
        LOOM_ERROR(e.what(), " (the request sent ", datatype_name(in.datatype), " ", shape_text(in.shape), ")");
      }
      LOOM_CHECK(prepared.dim() >= 1 && prepared.size(0) == rows, "serve: ", mv.label(), " prepared input '",
                 in.name, "' into shape ", shape_text(prepared.sizes()), ", which lost the batch of ", rows);
      job->inputs.emplace(in.name, std::move(prepared));
    }
    for (const TensorSpec& s : mv.inputs)
      LOOM_CHECK(job->inputs.count(s.name), "missing input '", s.name, "' of ", mv.label());
    for (const RequestedOutput& o : r.outputs) {
      const TensorSpec* spec = mv.output(o.name);
      LOOM_CHECK(spec, mv.label(), " has no output '", o.name, "'");
      LOOM_CHECK(o.classification == 0 || spec->shape.size() == 2, "output '", o.name,
                 "': classification needs an output of shape [batch, classes], this one is ",
                 shape_text(spec->shape));
    }
    return job;
  }

  void infer(const httplib::Request& req, const std::string& body, httplib::Response& res, const std::string& name,
             const std::string& version, Clock::time_point arrived) {
    std::shared_ptr<ModelVersion> mv = find(name, version);
    InferRequest r;
    std::shared_ptr<Job> job;
    try {
      std::optional<int64_t> header_length;
      if (req.has_header(kHeaderLengthHeader))
        header_length = parse_header_length(req.get_header_value(kHeaderLengthHeader), body.size());
      r = parse_infer_request(body, header_length);
      job = make_job(*mv, r);
    } catch (const Error& e) {
      mv->stats.record_failure(ns_since(arrived), FailureReason::Other);
      throw HttpError{400, e.what()};
    }
    int64_t timeout_us = mv->batching.timeout_us;
    if (r.timeout_us > 0 && (timeout_us == 0 || r.timeout_us < timeout_us)) timeout_us = r.timeout_us;
    if (timeout_us > 0) job->deadline = arrived + std::chrono::microseconds(timeout_us);
    if (!mv->batcher->submit(job)) {
      mv->stats.record_failure(ns_since(arrived), FailureReason::Rejected);
      throw HttpError{503, mv->label() + ": the queue is full (" + std::to_string(mv->batching.max_queue_size) +
                               " requests wait); retry later"};
    }
    if (mv->batcher->wait(job) == Batcher::Outcome::TimedOut) {
      mv->stats.record_failure(ns_since(arrived), FailureReason::Rejected);
      throw HttpError{503, mv->label() + ": the request timed out after " + std::to_string(timeout_us) +
                               " us in the queue"};
    }
    if (!job->error.empty()) {
      mv->stats.record_failure(ns_since(arrived), FailureReason::Backend);
      throw HttpError{500, mv->label() + " failed: " + job->error};
    }

    std::vector<WireTensor> wire;
    auto add_output = [&](const std::string& out_name, bool binary, int64_t classification) {
      const Tensor& t = job->outputs.at(out_name);
      WireTensor w = classification > 0 ? classify(out_name, t, classification, mv->model->labels(out_name))
                                        : from_tensor(out_name, t);
      w.binary = binary || r.binary_output;
      wire.push_back(std::move(w));
    };
    if (r.outputs.empty()) {
      for (const TensorSpec& s : mv->outputs) add_output(s.name, false, 0);
    } else {
      for (const RequestedOutput& o : r.outputs) add_output(o.name, o.binary, o.classification);
    }
    EncodedResponse encoded = encode_infer_response(mv->name, mv->version, r.id, wire);
    res.status = 200;
    if (encoded.header_length) {
      res.set_header(kHeaderLengthHeader, std::to_string(*encoded.header_length));
      res.set_content(std::move(encoded.body), "application/octet-stream");
    } else {
      res.set_content(std::move(encoded.body), "application/json");
    }
    mv->stats.record_success(ns_since(arrived), job->queue_ns, job->input_ns, job->infer_ns, job->output_ns);
  }

  // ---- OpenAI's API (/v1) ----

  // The version /v1 serves of `name` (its latest), which must be a language model.
  std::shared_ptr<ModelVersion> find_generator(const std::string& name) {
    std::shared_ptr<ModelVersion> mv;
    try {
      mv = find(name, "");
    } catch (const HttpError& e) {
      throw openai::ApiError{404,
                             "the model '" + name + "' does not exist (" + e.message +
                                 "; GET /v1/models lists the served ones)",
                             "model", "invalid_request_error", "model_not_found"};
    }
    if (!mv->model->text_generator())
      throw openai::ApiError{404,
                             "the model '" + name +
                                 "' is not served at /v1 (GPT checkpoints are): it is served at /v2/models/" + name +
                                 "/infer only",
                             "model", "invalid_request_error", "model_not_found"};
    return mv;
  }

  static ojson v1_model(const ModelVersion& mv) {
    return {{"id", mv.name}, {"object", "model"}, {"created", mv.created}, {"owned_by", "loom"}};
  }

  ojson v1_models() {
    ojson data = ojson::array();
    std::lock_guard<std::mutex> lock(registry_mu);
    for (const auto& [name, entry] : models)
      if (!entry.versions.empty() && entry.versions.rbegin()->second->model->text_generator())
        data.push_back(v1_model(*entry.versions.rbegin()->second));
    return {{"object", "list"}, {"data", data}};
  }

  // Note [Stopping with generations in flight]
  // httplib 0.11 ends a chunked response as soon as stop() is called, mid
  // stream and without its last chunk, while it lets a handler that is
  // still running finish. So that a stream in flight is answered as fully as
  // any other request, stop() first closes /v1 to new generations (503),
  // waits until every generation in flight has ended (each is bounded by
  // --request-timeout-s) and its answer has been written, and only then stops
  // httplib. A generation counts from its registration, under the same lock
  // as the closing, to its GenerationCall's destruction, which for a stream
  // comes after the stream's last chunk.
  std::mutex generations_mu;
  std::condition_variable generation_ended_cv;
  int64_t generations_in_flight = 0;
  bool generations_closed = false;

  void register_generation() {
    std::lock_guard<std::mutex> lock(generations_mu);
    if (generations_closed)
      throw openai::ApiError{503, "the server is stopping: it takes no new generations", "", "server_error"};
    ++generations_in_flight;
  }
  void generation_ended() {
    std::lock_guard<std::mutex> lock(generations_mu);
    --generations_in_flight;
    generation_ended_cv.notify_all();
  }
  void close_generations_and_wait() {
    std::unique_lock<std::mutex> lock(generations_mu);
    generations_closed = true;
    generation_ended_cv.wait(lock, [&] { return generations_in_flight == 0; });
  }

  // One /v1 generation in flight, shared by its handler and (streaming) the
  // content provider that outlives the handler. The destructor ends the
  // generation first (Generation's destructor cancels what still runs and
  // waits until the engine has let go of the request), then forgets the
  // connection (Note [Client disconnects]); the model goes last.
  struct GenerationCall {
    Impl* server = nullptr;  // set once registered (Note [Stopping with generations in flight])
    std::shared_ptr<ModelVersion> mv;
    std::shared_ptr<ConnectionWatch> watch;
    std::unique_ptr<Generation> generation;
    std::unique_ptr<openai::Response> response;
    double timeout_s = 0;
    ~GenerationCall() {
      generation.reset();
      if (watch) watch->release();
      if (server) server->generation_ended();
    }
    // Takes the engine's events into the response; false when none is left.
    bool take(std::vector<ojson>* chunks) {
      std::vector<Generation::Event> events = generation->take();
      for (const Generation::Event& e : events) {
        response->add(e.prompt, e.event, chunks);
        // One choice ended early (its deadline, its client gone): so do the others.
        if (e.event.finish == FinishReason::Timeout || e.event.finish == FinishReason::Cancelled) generation->cancel();
      }
      return !events.empty();
    }
    openai::ApiError failure_error() const {
      if (response->failure() == FinishReason::Timeout) {
        std::ostringstream seconds;
        seconds << timeout_s;
        return {504, "the request did not finish within " + seconds.str() + " s (loom serve --request-timeout-s)", "",
                "timeout_error", "timeout"};
      }
      // Status 499 (nginx's "client closed request"): nobody is left to read it.
      return {499, "the request was cancelled: the client hung up", "", "invalid_request_error", "cancelled"};
    }
  };

  // POST /v1/completions and /v1/chat/completions.
  void generate(const httplib::Request& req, const std::string& body, httplib::Response& res,
                openai::Endpoint endpoint, Clock::time_point arrived) {
    const openai::Request r = endpoint == openai::Endpoint::Chat ? openai::parse_chat_request(body)
                                                                  : openai::parse_completion_request(body);
    auto call = std::make_shared<GenerationCall>();
    call->mv = find_generator(r.model);
    call->timeout_s = options.generation_timeout_s;
    TextGenerator& g = *call->mv->model->text_generator();
    LlmEngine& engine = g.engine();
    thread_local std::mt19937_64 seeds{std::random_device{}()};
    const std::vector<openai::EngineRequest> prompts =
        openai::engine_requests(r, g, engine.config().block_size, engine.config().vocab_size, seeds());
    call->response = std::make_unique<openai::Response>(r, g, call->mv->name, prompts);

    RequestControl control;
    if (options.generation_timeout_s > 0)
      control.deadline = arrived + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(options.generation_timeout_s));
    call->watch = std::make_shared<ConnectionWatch>(req.local_port, req.remote_addr, req.remote_port);
    control.disconnected = [watch = call->watch] { return watch->hung_up(); };
    register_generation();
    call->server = this;
    call->generation = std::make_unique<Generation>(engine);
    try {
      call->generation->submit(prompts, control);
    } catch (const Error& e) {
      throw openai::ApiError{400, e.what()};
    }

    if (!r.stream) {
      while (call->take(nullptr)) {
      }
      if (call->response->failure() != FinishReason::None) throw call->failure_error();
      LOOM_ASSERT(call->response->finished(), "the engine ended a request before every choice had finished");
      res.status = 200;
      res.set_content(openai::json_text(call->response->body()), "application/json");
      return;
    }

    // Server-Sent Events: each chunk as it is ready, then (with
    // stream_options.include_usage) the usage, then [DONE]. A timeout or a
    // cancellation is an error event before [DONE]. A failed write (the
    // client is gone) ends the stream, and the releaser cancels what runs.
    res.set_header("Cache-Control", "no-cache");
    const bool include_usage = r.include_usage;
    res.set_chunked_content_provider(
        "text/event-stream",
        [call, include_usage, started = false](size_t, httplib::DataSink& sink) mutable {
          try {
            std::vector<ojson> chunks;
            std::string out;
            if (!started) {
              started = true;
              chunks = call->response->start_chunks();
            } else if (!call->take(&chunks)) {
              if (call->response->failure() != FinishReason::None)
                out += openai::sse_event(openai::error_body(call->failure_error()));
              else if (include_usage)
                out += openai::sse_event(call->response->usage_chunk());
              out += openai::kSseDone;
              if (!sink.write(out.data(), out.size())) return false;
              sink.done();
              return true;
            }
            if (call->response->failure() != FinishReason::None) chunks.clear();  // the error event says it
            for (const ojson& c : chunks) out += openai::sse_event(c);
            return out.empty() || sink.write(out.data(), out.size());
          } catch (const std::exception&) {
            return false;  // httplib ends the response; the releaser cancels
          }
        },
        [call](bool success) {
          if (!success) call->generation->cancel();
        });
  }

  // Note [Request bodies]
  // httplib 0.11 reads a POST body without Content-Length until the client
  // closes (a 5 s stall for `curl -X POST .../load`), and a chunked one
  // without its payload limit. So every POST route takes a ContentReader and
  // reads here: no Content-Length and no chunked encoding is an empty body
  // (RFC 9112, 6.3); a body over --max-body-mb is 413. Its bytes past the
  // limit are read and dropped, up to four times the limit, so the client
  // finishes sending and sees the answer (nginx's lingering close) rather
  // than a reset; a larger one is cut off and the connection closed.
  std::string read_body(const httplib::Request& req, const httplib::ContentReader& reader,
                        httplib::Response& res) const {
    const bool chunked = req.get_header_value("Transfer-Encoding").find("chunked") != std::string::npos;
    if (!chunked && !req.has_header("Content-Length")) return {};
    const auto limit = static_cast<uint64_t>(options.max_body_bytes);
    const uint64_t drain_limit = 4 * limit;
    std::string body;
    uint64_t received = 0;
    const bool complete = reader([&](const char* data, size_t size) {
      received += size;
      if (received <= limit) body.append(data, size);
      return received <= drain_limit;
    });
    if (!complete) res.set_header("Connection", "close");
    if (received > limit)
      throw HttpError{413, "request body of " + (complete ? std::to_string(received) : "more than " + std::to_string(received)) +
                               " bytes exceeds the limit of " + std::to_string(limit) + " bytes (--max-body-mb)"};
    if (!complete) throw HttpError{400, "the request body ended before its declared length"};
    return body;
  }

  // Runs a handler, turning what it throws into the protocol's error answers.
  template <typename F>
  static void guarded(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const HttpError& e) {
      reply_error(res, e.status, e.message);
    } catch (const Error& e) {
      reply_error(res, 400, e.what());
    } catch (const std::exception& e) {
      reply_error(res, 500, std::string("internal error: ") + e.what());
    }
  }

  // guarded() for /v1: OpenAI's error shape.
  template <typename F>
  static void guarded_v1(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const openai::ApiError& e) {
      reply_v1_error(res, e);
    } catch (const HttpError& e) {
      reply_v1_error(res, {e.status, e.message, "", e.status >= 500 ? "server_error" : "invalid_request_error"});
    } catch (const Error& e) {
      reply_v1_error(res, {400, e.what()});
    } catch (const std::exception& e) {
      reply_v1_error(res, {500, std::string("internal error: ") + e.what(), "", "server_error"});
    }
  }

  static std::string match(const httplib::Request& req, size_t i) {
    return i < req.matches.size() ? req.matches[i].str() : std::string();
  }

  void add_routes() {
    using Req = httplib::Request;
    using Res = httplib::Response;
    http.Get("/v2/health/live", [](const Req&, Res& res) { res.status = 200; });
    http.Get("/v2/health/ready", [this](const Req&, Res& res) { res.status = stopping ? 400 : 200; });
    http.Get("/v2", [this](const Req&, Res& res) { reply_json(res, 200, server_metadata()); });
    http.Get("/metrics", [this](const Req&, Res& res) {
      guarded(res, [&] { res.set_content(metrics(), "text/plain; version=0.0.4; charset=utf-8"); });
    });
    // Before the model routes, which would take "stats" for a model name.
    http.Get("/v2/models/stats", [this](const Req&, Res& res) {
      guarded(res, [&] { reply_json(res, 200, statistics("", "")); });
    });
    const std::string model = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";
    http.Get(model, [this](const Req& req, Res& res) {
      guarded(res, [&] { reply_json(res, 200, model_metadata(match(req, 1), match(req, 2))); });
    });
    http.Get(model + "/ready", [this](const Req& req, Res& res) {
      guarded(res, [&] {
        find(match(req, 1), match(req, 2));
        res.status = 200;
      });
    });
    http.Get(model + "/config", [this](const Req& req, Res& res) {
      guarded(res, [&] { reply_json(res, 200, model_config(match(req, 1), match(req, 2))); });
    });
    http.Get(model + "/stats", [this](const Req& req, Res& res) {
      guarded(res, [&] { reply_json(res, 200, statistics(match(req, 1), match(req, 2))); });
    });
    // POST bodies are read by the handlers (Note [Request bodies]).
    using Reader = httplib::ContentReader;
    http.Post(model + "/infer", [this](const Req& req, Res& res, const Reader& reader) {
      const Clock::time_point arrived = Clock::now();
      guarded(res, [&] { infer(req, read_body(req, reader, res), res, match(req, 1), match(req, 2), arrived); });
    });
    http.Post("/v2/repository/index", [this](const Req& req, Res& res, const Reader& reader) {
      guarded(res, [&] {
        const std::string body = read_body(req, reader, res);
        bool ready = false;
        if (!body.empty()) {
          // {"ready": true} at most: a bound keeps a hostile nesting out of the DOM parser.
          LOOM_CHECK(body.size() <= 4096, "repository index request: a body of ", body.size(),
                     " bytes is too large for {\"ready\": bool}");
          json request;
          try {
            request = json::parse(body);
          } catch (const json::exception& e) {
            LOOM_ERROR("request body is not valid JSON: ", e.what());
          }
          check_keys(request, {"ready"}, "repository index request");
          if (request.contains("ready")) {
            LOOM_CHECK(request["ready"].is_boolean(), "repository index request: \"ready\" must be a boolean");
            ready = request["ready"].get<bool>();
          }
        }
        reply_json(res, 200, repository_index(ready));
      });
    });
    http.Post(R"(/v2/repository/models/([^/]+)/load)", [this](const Req& req, Res& res, const Reader& reader) {
      guarded(res, [&] {
        read_body(req, reader, res);  // Triton's optional parameters: none apply to a loom model
        load(match(req, 1));
        res.status = 200;
      });
    });
    http.Post(R"(/v2/repository/models/([^/]+)/unload)", [this](const Req& req, Res& res, const Reader& reader) {
      guarded(res, [&] {
        read_body(req, reader, res);
        unload(match(req, 1));
        res.status = 200;
      });
    });

    // OpenAI's API for the language models.
    http.Get("/v1/models", [this](const Req&, Res& res) {
      guarded_v1(res, [&] { res.set_content(openai::json_text(v1_models()), "application/json"); });
    });
    http.Get(R"(/v1/models/([^/]+))", [this](const Req& req, Res& res) {
      guarded_v1(res, [&] {
        res.set_content(openai::json_text(v1_model(*find_generator(match(req, 1)))), "application/json");
      });
    });
    const std::pair<const char*, openai::Endpoint> generation_routes[] = {
        {"/v1/completions", openai::Endpoint::Completions}, {"/v1/chat/completions", openai::Endpoint::Chat}};
    for (const auto& [path, endpoint] : generation_routes) {
      http.Post(path, [this, endpoint = endpoint](const Req& req, Res& res, const Reader& reader) {
        const Clock::time_point arrived = Clock::now();
        guarded_v1(res, [&] { generate(req, read_body(req, reader, res), res, endpoint, arrived); });
      });
      http.Get(path, [](const Req& req, Res& res) {
        res.set_header("Allow", "POST");
        reply_v1_error(res, {405, "method not allowed: " + req.path + " takes POST"});
      });
    }
    http.Post(R"(/v1/models(/[^/]*)?)", [this](const Req& req, Res& res, const Reader& reader) {
      guarded_v1(res, [&] {
        read_body(req, reader, res);
        res.set_header("Allow", "GET");
        throw openai::ApiError{405, "method not allowed: " + req.path + " takes GET"};
      });
    });

    http.Post(".*", [this](const Req& req, Res& res, const Reader& reader) {
      auto no_route = [&] {
        read_body(req, reader, res);
        throw HttpError{404, "no route for POST " + req.path};
      };
      if (is_v1_path(req.path))
        guarded_v1(res, no_route);
      else
        guarded(res, no_route);
    });

    // httplib's own answers (no route: 404, a request it cannot parse: 400)
    // get the protocol's error body too.
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const Req& req, Res& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string message;
      if (res.status == 404)
        message = "no route for " + req.method + " " + req.path;
      else if (res.status == 400)
        message = "malformed HTTP request";
      else
        message = "HTTP status " + std::to_string(res.status);
      const int status = res.status;
      if (is_v1_path(req.path))
        reply_v1_error(res, {status, message, "", status >= 500 ? "server_error" : "invalid_request_error"});
      else
        reply_error(res, status, message);
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const Req&, Res& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      reply_error(res, 500, "internal error: " + what);
    });
  }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl& s = *impl_;
  LOOM_CHECK(s.options.http_threads >= 1, "serve: http_threads must be >= 1, got ", s.options.http_threads);
  LOOM_CHECK(s.options.max_body_bytes >= 1, "serve: the body limit must be >= 1 byte, got ", s.options.max_body_bytes);
  LOOM_CHECK(s.options.generation_timeout_s >= 0 && s.options.generation_timeout_s <= 1e9,
             "serve: the generation timeout must be in [0, 1e9] seconds (0: none), got ",
             s.options.generation_timeout_s);
  LOOM_CHECK(!s.options.model_repository.empty() || !s.options.models.empty(),
             "serve: give a model repository or at least one model");
  if (!s.options.model_repository.empty())
    LOOM_CHECK(fs::is_directory(s.options.model_repository), "serve: the model repository '",
               s.options.model_repository, "' is not a folder");
  for (const std::string& name : s.known_models()) s.load(name);

  const int threads = s.options.http_threads;
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.http.set_keep_alive_max_count(100000);
  s.http.set_keep_alive_timeout(2);  // also bounds how long stop() waits for an idle keep-alive connection
  s.http.set_tcp_nodelay(true);
  // httplib 0.11 listens with a backlog of 5, so 32 clients connecting at
  // once overflow the accept queue and some wait out a SYN retransmit (a
  // 200 ms to 1 s stall). Linux lets listen() on a listening socket change
  // its backlog: remember the socket, then listen again with SOMAXCONN.
  int listening_socket = -1;
  s.http.set_socket_options([&listening_socket](socket_t sock) {
    httplib::default_socket_options(sock);
    listening_socket = sock;
  });
  s.add_routes();
  if (s.options.port == 0) {
    s.port = s.http.bind_to_any_port(s.options.host);
    LOOM_CHECK(s.port > 0, "serve: cannot bind ", s.options.host, " to a free port");
  } else {
    LOOM_CHECK(s.http.bind_to_port(s.options.host, s.options.port), "serve: cannot bind ", s.options.host, ":",
               s.options.port, " (in use, or not an address of this machine)");
    s.port = s.options.port;
  }
  if (listening_socket >= 0) ::listen(listening_socket, SOMAXCONN);
}

Server::~Server() {
  stop();
}

int Server::port() const { return impl_->port; }

void Server::run() {
  // false: httplib gave up its listening socket (an accept() error). The
  // server could then never answer again, so that ends it with an error
  // rather than leaving a process that looks alive.
  const bool listened = impl_->http.listen_after_bind();
  // httplib has joined its threads: every request has its answer. Drain the
  // batchers (Note [Model registry]).
  std::map<std::string, ModelEntry> models;
  {
    std::lock_guard<std::mutex> lock(impl_->registry_mu);
    models.swap(impl_->models);
  }
  models.clear();
  LOOM_CHECK(listened || impl_->stopping, "serve: the listening socket on ", impl_->options.host, ":", impl_->port,
             " failed (accept error); the server stopped");
}

void Server::stop() {
  impl_->stopping = true;
  for (const auto& mv : impl_->all_versions()) mv->batcher->flush();
  impl_->close_generations_and_wait();  // Note [Stopping with generations in flight]
  impl_->http.stop();
}

}  // namespace loom::serve
