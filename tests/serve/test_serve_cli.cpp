// `loom serve` end to end: the real program (LOOM_CLI_PATH), started as a
// child process on an ephemeral loopback port (--port 0, the port read from
// its "listening on" line), serving real checkpoints that the real
// `loom train` wrote. Checks every endpoint of the Open Inference Protocol
// (KServe v2 REST, inference_rest.md, and Triton's extensions the server
// names), that answers equal `loom predict` bitwise and stay bitwise equal
// when requests are batched, that malformed requests are 4xx and never 5xx,
// and the process's life: load/unload under traffic, the queue's bounds, and
// SIGTERM/SIGINT answering the requests in flight before exit status 0.
// tests/serve/test_serve.cpp checks the same server in process with a model
// of its own.
//
// Timing: nothing is asserted to be fast, only "not before" (a timeout waits
// at least its length) or "before something slower happened" (a full queue
// answers 503 while the queued requests still wait for their batch), so the
// suite holds on a loaded machine. Every wait has a bound, and every child is
// killed when its test ends (and by the kernel when this process dies:
// PR_SET_PDEATHSIG).
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <future>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <loom/loom.h>

#include "cli_harness.h"
#include "lm.h"
#include "train.h"

namespace {

using namespace loom::serve_test;  // ChildProcess, ServerProcess, scratch_dir, ... (cli_harness.h)
using json = nlohmann::json;

constexpr const char* kDataDir = loom::cli::kFashionMnistDir;
constexpr const char* kHeaderLength = "Inference-Header-Content-Length";

// The main server's batching flags (Note [Main server] below).
constexpr int64_t kMaxBatch = 16;
constexpr int64_t kQueueDelayUs = 20000;

// ---- HTTP ----

struct Reply {
  int status = -1;  // -1: no answer; `error` says why
  std::string error;
  std::string body;
  httplib::Headers headers;

  json body_json() const {
    const auto header = headers.find(kHeaderLength);
    const size_t n = header == headers.end() ? body.size() : std::stoul(header->second);
    return json::parse(body.substr(0, n));
  }
  bool has_header(const std::string& key) const { return headers.count(key) > 0; }
  // For failure messages.
  std::string text() const {
    return status < 0 ? "no answer (" + error + ")"
                      : std::to_string(status) + " " + body.substr(0, std::min<size_t>(body.size(), 600));
  }
};

// The message of a {"error": message} body; "" for any other body.
std::string error_of(const Reply& r) {
  const json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_object() && body.contains("error") && body["error"].is_string()) return body["error"];
  return "";
}

httplib::Client make_client(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(10);
  client.set_read_timeout(60);
  client.set_write_timeout(60);
  return client;  // not kept alive: every request opens and closes its connection
}

Reply to_reply(const httplib::Result& result) {
  Reply r;
  if (!result) {
    r.error = httplib::to_string(result.error());
    return r;
  }
  r.status = result->status;
  r.body = result->body;
  r.headers = result->headers;
  return r;
}

Reply get(int port, const std::string& path) { return to_reply(make_client(port).Get(path)); }

Reply post(int port, const std::string& path, const std::string& body,
           const std::string& content_type = "application/json", const httplib::Headers& headers = {}) {
  return to_reply(make_client(port).Post(path, headers, body, content_type));
}

Reply post_json(int port, const std::string& path, const json& body) { return post(port, path, body.dump()); }

std::string infer_path(const std::string& model, const std::string& version = "") {
  return "/v2/models/" + model + (version.empty() ? "" : "/versions/" + version) + "/infer";
}

Reply infer(int port, const std::string& model, const json& request, const std::string& version = "") {
  return post_json(port, infer_path(model, version), request);
}

// A request of the binary tensor data extension: the JSON header, then the
// inputs' bytes.
Reply infer_binary(int port, const std::string& model, const json& header, const std::string& data) {
  const std::string head = header.dump();
  return post(port, infer_path(model), head + data, "application/octet-stream",
              {{kHeaderLength, std::to_string(head.size())}});
}

// ---- tensors on the wire ----

// The float that a JSON number of an FP32 output was printed from. The
// server prints a float's shortest round-trip text; nlohmann reads it as a
// double, and rounding that double to float can, rarely, land one float off
// (double rounding). The float whose own shortest text reads as the same
// double is the one printed.
float json_float(const json& v) {
  const double d = v.get<double>();
  const float f = static_cast<float>(d);
  for (float c : {f, std::nextafter(f, -INFINITY), std::nextafter(f, INFINITY)}) {
    char buf[64];
    const auto end = std::to_chars(buf, buf + sizeof(buf), c).ptr;
    double back = 0;
    std::from_chars(buf, end, back);
    if (back == d) return c;
  }
  return f;  // not a float's text: the comparison that follows says so
}

std::string float_bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// One output of an infer response, from JSON data or binary data alike.
struct Output {
  std::string datatype;
  std::vector<int64_t> shape;
  std::vector<float> floats;         // FP32
  std::vector<std::string> strings;  // BYTES
  bool binary = false;
};

// Every output of a 200 answer by name, as the specification's response
// object (and the binary extension's layout) has them.
std::map<std::string, Output> outputs_of(const Reply& reply) {
  std::map<std::string, Output> outputs;
  const json body = reply.body_json();
  const auto header = reply.headers.find(kHeaderLength);
  size_t offset = header == reply.headers.end() ? reply.body.size() : std::stoul(header->second);
  for (const json& o : body.at("outputs")) {
    Output out;
    out.datatype = o.at("datatype").get<std::string>();
    out.shape = o.at("shape").get<std::vector<int64_t>>();
    if (o.contains("parameters") && o["parameters"].contains("binary_data_size")) {
      out.binary = true;
      const size_t size = o["parameters"]["binary_data_size"].get<size_t>();
      if (offset + size > reply.body.size()) throw std::runtime_error("binary output past the body's end");
      const std::string bytes = reply.body.substr(offset, size);
      offset += size;
      if (out.datatype == "FP32") {
        out.floats.resize(size / sizeof(float));
        std::memcpy(out.floats.data(), bytes.data(), out.floats.size() * sizeof(float));
      } else if (out.datatype == "BYTES") {
        for (size_t p = 0; p + 4 <= bytes.size();) {
          uint32_t len = 0;
          std::memcpy(&len, bytes.data() + p, 4);
          out.strings.push_back(bytes.substr(p + 4, len));
          p += 4 + len;
        }
      }
    } else {
      for (const json& v : o.at("data")) {
        if (out.datatype == "BYTES")
          out.strings.push_back(v.get<std::string>());
        else
          out.floats.push_back(json_float(v));
      }
    }
    outputs[o.at("name").get<std::string>()] = std::move(out);
  }
  return outputs;
}

// Float vectors equal bit for bit (NaN included), with the first difference.
::testing::AssertionResult bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i]))
      return ::testing::AssertionFailure() << "element " << i << " differs: " << a[i] << " vs " << b[i] << " (bits "
                                           << std::hex << std::bit_cast<uint32_t>(a[i]) << " vs "
                                           << std::bit_cast<uint32_t>(b[i]) << ")";
  return ::testing::AssertionSuccess();
}

std::vector<float> slice(const std::vector<float>& v, size_t row, size_t width) {
  return std::vector<float>(v.begin() + static_cast<std::ptrdiff_t>(row * width),
                            v.begin() + static_cast<std::ptrdiff_t>((row + 1) * width));
}

// ---- the test images and requests ----

// Test image `index` of Fashion-MNIST: (1, 28, 28) floats, pixel / 255.
std::vector<float> test_image(int64_t index) {
  static const std::shared_ptr<loom::data::Dataset> test_set = loom::data::fashion_mnist(kDataDir, /*train=*/false);
  const loom::Tensor x = test_set->get(index).data.contiguous();
  const float* p = x.data_ptr<float>();
  return std::vector<float>(p, p + x.numel());
}

// The image's raw pixels, round(x * 255).
std::vector<int> test_pixels(int64_t index) {
  std::vector<int> pixels;
  for (float x : test_image(index)) pixels.push_back(static_cast<int>(std::lround(x * 255.0f)));
  return pixels;
}

json image_request(const json& data, int64_t rows = 1, const std::string& datatype = "FP32") {
  return {{"inputs", {{{"name", "input"}, {"datatype", datatype}, {"shape", {rows, 1, 28, 28}}, {"data", data}}}}};
}

json image_request(int64_t index) { return image_request(json(test_image(index))); }

json tokens_request(const std::vector<std::vector<int64_t>>& rows, const std::string& datatype = "INT64") {
  const int64_t width = rows.empty() ? 0 : static_cast<int64_t>(rows[0].size());
  return {{"inputs",
           {{{"name", "input_ids"},
             {"datatype", datatype},
             {"shape", {static_cast<int64_t>(rows.size()), width}},
             {"data", rows}}}}};
}

// A token sequence that differs per `seed`, every id below `vocab`.
std::vector<int64_t> token_ids(int64_t seed, int64_t length, int64_t vocab) {
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < length; ++t) ids.push_back((seed * 7 + t * 13 + seed * t) % vocab);
  return ids;
}

// ---- the checkpoints ----

// `loom train` checkpoints of every kind `loom serve` loads, laid out as a
// Triton model repository: <repo>/<name>/<version>/model.safetensors, and
// <repo>/mlp/config.json.
struct Checkpoints {
  fs::path repo;
  std::map<std::string, fs::path> file;  // by model name (version 1)
};

const char* const kModels[] = {"mlp", "cnn", "resnet9", "gpt", "lstm"};

Checkpoints checkpoints_in(const fs::path& dir) {
  Checkpoints c;
  c.repo = dir / "repository";
  for (const char* name : kModels) c.file[name] = c.repo / name / "1" / "model.safetensors";
  return c;
}

// `loom train` for each model into `dir`, all at once (each on one thread).
Checkpoints make_checkpoints(const fs::path& dir) {
  Checkpoints c = checkpoints_in(dir);
  fs::remove_all(c.repo);
  const std::vector<std::string> image = {"--epochs", "1", "--batch-size", "64", "--threads", "1"};
  const std::vector<std::string> lm = {"--max-steps", "2", "--layers", "1", "--context", "16", "--batch-size", "4",
                                       "--eval-every", "2", "--eval-batches", "1", "--threads", "1"};
  const std::map<std::string, std::vector<std::string>> flags = {
      {"mlp", {"--hidden", "32", "--train-limit", "256", "--test-limit", "100"}},
      {"cnn", {"--train-limit", "256", "--test-limit", "100"}},
      {"resnet9", {"--train-limit", "64", "--test-limit", "10"}},
      {"gpt", {"--d-model", "32", "--heads", "2"}},
      {"lstm", {"--d-model", "32"}},
  };
  std::vector<std::pair<std::string, std::unique_ptr<ChildProcess>>> runs;
  for (const auto& [name, own] : flags) {
    fs::create_directories(c.file[name].parent_path());
    std::vector<std::string> args = {kLoom, "train", "--model", name, "--out", c.file[name].string()};
    args.insert(args.end(), own.begin(), own.end());
    const auto& common = name == "gpt" || name == "lstm" ? lm : image;
    args.insert(args.end(), common.begin(), common.end());
    runs.emplace_back(name, std::make_unique<ChildProcess>(args, next_log_file("train-" + name)));
  }
  for (auto& [name, child] : runs) {
    const std::optional<int> code = child->wait_exit(seconds(300));
    if (code != 0 || !fs::exists(c.file[name]))
      throw std::runtime_error("loom train --model " + name + " failed (exit " +
                               (code ? std::to_string(*code) : "none: timed out") + "):\n" + child->log());
  }
  // mlp: a second version (the same weights) and its own batching.
  fs::create_directories(c.repo / "mlp" / "2");
  fs::copy_file(c.file["mlp"], c.repo / "mlp" / "2" / "model.safetensors");
  write_text(c.repo / "mlp" / "config.json", R"({"name": "mlp", "max_batch_size": 8,
    "dynamic_batching": {"max_queue_delay_microseconds": 0,
                         "default_queue_policy": {"max_queue_size": 64, "default_timeout_microseconds": 0}}})");
  return c;
}

// The checkpoints (suite_checkpoints): $LOOM_SERVE_CLI_CHECKPOINTS, filled
// by ctest's fixture entry serve_cli_checkpoints, or made in a folder of
// this process.
const Checkpoints& checkpoints() {
  return suite_checkpoints<Checkpoints>("LOOM_SERVE_CLI_CHECKPOINTS", "test_serve_cli", checkpoints_in,
                                        make_checkpoints, scratch_dir());
}

// The fixture of every test: the checkpoints, and (Note [Main server]) one
// server for the tests that only send requests.
//
// Note [Main server]
// One `loom serve` on the whole repository for every test that leaves the
// server as it found it, started by the first test that asks and stopped
// (exit status 0 asserted) when the suite ends: batches of up to 16 rows, a
// queue delay of 20 ms so that concurrent requests batch, except mlp, whose
// config.json asks for batches of 8 and no delay. The tests that load and
// unload, fill queues or signal start servers of their own.
class ServeCli : public SharedServerTest<ServeCli> {
 public:
  static void prepare() { checkpoints(); }
  static std::vector<std::string> main_flags() {
    return {"--model-repository", ckpt().repo.string(), "--max-batch-size", std::to_string(kMaxBatch),
            "--max-queue-delay-us", std::to_string(kQueueDelayUs)};
  }

  static const Checkpoints& ckpt() { return checkpoints(); }
  static const fs::path& file(const std::string& model) { return checkpoints().file.at(model); }

  // The vocabulary size of a served language model (its logits' last dimension).
  static int64_t vocab_of(int server_port, const std::string& model) {
    const Reply r = get(server_port, "/v2/models/" + model);
    return r.body_json().at("outputs").at(0).at("shape").at(2).get<int64_t>();
  }
};

// One fixture, a suite per area, so that a failure's name says what broke.
using ServeEndpoints = ServeCli;
using ServeInference = ServeCli;
using ServeBatching = ServeCli;
using ServeErrors = ServeCli;
using ServeLifecycle = ServeCli;

// A server of one checkpoint (--model NAME=FILE), for tests that need their
// own batching flags.
std::vector<std::string> single_model(const std::string& name, const fs::path& file,
                                      std::vector<std::string> flags) {
  flags.insert(flags.begin(), {"--model", name + "=" + file.string()});
  return flags;
}

// The probabilities the server gives for test image `index`.
std::vector<float> served_probabilities(int server_port, const std::string& model, int64_t index) {
  const Reply r = infer(server_port, model, image_request(index));
  if (r.status != 200) throw std::runtime_error("infer " + model + ": " + r.text());
  return outputs_of(r).at("probabilities").floats;
}

// ---- metrics ----

std::map<std::string, double> scrape(int server_port) {
  const Reply r = get(server_port, "/metrics");
  if (r.status != 200) throw std::runtime_error("GET /metrics: " + r.text());
  return parse_metrics(r.body);
}

double metric(const std::map<std::string, double>& m, const std::string& sample) {
  auto it = m.find(sample);
  return it == m.end() ? -1 : it->second;
}

std::string series(const std::string& name, const std::string& model, const std::string& version,
                   const std::string& extra = "") {
  return name + "{model=\"" + model + "\",version=\"" + version + "\"" + (extra.empty() ? "" : "," + extra) + "}";
}

// Requests waiting in `model`'s queue now.
int64_t pending(int server_port, const std::string& model, const std::string& version = "1") {
  return static_cast<int64_t>(metric(scrape(server_port), series("nv_inference_pending_request_count", model, version)));
}

json model_stats(int server_port, const std::string& model, const std::string& version) {
  const Reply r = get(server_port, "/v2/models/" + model + "/versions/" + version + "/stats");
  if (r.status != 200) throw std::runtime_error("stats: " + r.text());
  return r.body_json().at("model_stats").at(0);
}

// ===================================================================
// Endpoints
// ===================================================================

TEST_F(ServeEndpoints, HealthLiveAndReadyAnswer200) {
  EXPECT_EQ(get(port(), "/v2/health/live").status, 200);
  EXPECT_EQ(get(port(), "/v2/health/ready").status, 200);
}

TEST_F(ServeEndpoints, ServerMetadataHasNameVersionAndExtensions) {
  const Reply r = get(port(), "/v2");
  ASSERT_EQ(r.status, 200) << r.text();
  const json m = r.body_json();
  EXPECT_EQ(m.at("name"), "loom");
  EXPECT_TRUE(m.at("version").is_string());
  EXPECT_FALSE(m.at("version").get<std::string>().empty());
  const auto extensions = m.at("extensions").get<std::vector<std::string>>();
  for (const char* e : {"binary_tensor_data", "classification", "model_repository", "statistics"})
    EXPECT_NE(std::find(extensions.begin(), extensions.end(), e), extensions.end()) << e;
}

TEST_F(ServeEndpoints, ModelMetadataShowsVersionsInputsAndOutputs) {
  const Reply cnn = get(port(), "/v2/models/cnn");
  ASSERT_EQ(cnn.status, 200) << cnn.text();
  const json m = cnn.body_json();
  EXPECT_EQ(m.at("name"), "cnn");
  EXPECT_EQ(m.at("versions"), json({"1"}));
  EXPECT_TRUE(m.at("platform").is_string());
  EXPECT_EQ(m.at("inputs"), json::parse(R"([{"name":"input","datatype":"FP32","shape":[-1,1,28,28]}])"));
  EXPECT_EQ(m.at("outputs"), json::parse(R"([{"name":"logits","datatype":"FP32","shape":[-1,10]},
                                             {"name":"probabilities","datatype":"FP32","shape":[-1,10]}])"));

  const json mlp = get(port(), "/v2/models/mlp").body_json();
  EXPECT_EQ(mlp.at("versions"), json({"1", "2"}));
  const Reply v1 = get(port(), "/v2/models/mlp/versions/1");
  ASSERT_EQ(v1.status, 200) << v1.text();
  EXPECT_EQ(v1.body_json().at("versions"), json({"1"}));

  for (const std::string lm : {"gpt", "lstm"}) {
    const json g = get(port(), "/v2/models/" + lm).body_json();
    EXPECT_EQ(g.at("inputs"), json::parse(R"([{"name":"input_ids","datatype":"INT64","shape":[-1,-1]}])")) << lm;
    const json out = g.at("outputs").at(0);
    EXPECT_EQ(out.at("name"), "logits") << lm;
    EXPECT_EQ(out.at("datatype"), "FP32") << lm;
    ASSERT_EQ(out.at("shape").size(), 3u) << lm;
    EXPECT_EQ(out.at("shape")[0], -1);
    EXPECT_EQ(out.at("shape")[1], -1);
    EXPECT_GT(out.at("shape")[2].get<int64_t>(), 1) << lm;
  }
}

TEST_F(ServeEndpoints, ModelReadyIs200ForLoadedVersionsAnd404Otherwise) {
  EXPECT_EQ(get(port(), "/v2/models/cnn/ready").status, 200);
  EXPECT_EQ(get(port(), "/v2/models/cnn/versions/1/ready").status, 200);
  EXPECT_EQ(get(port(), "/v2/models/mlp/versions/2/ready").status, 200);
  EXPECT_EQ(get(port(), "/v2/models/cnn/versions/2/ready").status, 404);
  EXPECT_EQ(get(port(), "/v2/models/nosuchmodel/ready").status, 404);
  const Reply unknown = get(port(), "/v2/models/nosuchmodel");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_TRUE(unknown.body_json().at("error").is_string()) << unknown.text();
}

TEST_F(ServeEndpoints, ModelConfigShowsServerFlagsOrTheModelsConfigJson) {
  const Reply cnn = get(port(), "/v2/models/cnn/config");
  ASSERT_EQ(cnn.status, 200) << cnn.text();
  const json c = cnn.body_json();
  EXPECT_EQ(c.at("name"), "cnn");
  EXPECT_EQ(c.at("max_batch_size"), kMaxBatch);
  EXPECT_EQ(c.at("dynamic_batching").at("max_queue_delay_microseconds"), kQueueDelayUs);
  EXPECT_EQ(c.at("input"), json::parse(R"([{"name":"input","data_type":"TYPE_FP32","dims":[1,28,28]}])"));
  EXPECT_EQ(c.at("output").at(1), json::parse(R"({"name":"probabilities","data_type":"TYPE_FP32","dims":[10]})"));

  const json mlp = get(port(), "/v2/models/mlp/versions/2/config").body_json();
  EXPECT_EQ(mlp.at("max_batch_size"), 8);
  EXPECT_EQ(mlp.at("dynamic_batching").at("max_queue_delay_microseconds"), 0);
  EXPECT_EQ(mlp.at("dynamic_batching").at("default_queue_policy").at("max_queue_size"), 64);
  // The config's max_batch_size bounds a request's rows.
  const Reply nine_rows = infer(port(), "mlp", image_request(json(std::vector<float>(9 * 784, 0.5f)), 9));
  EXPECT_EQ(nine_rows.status, 400) << nine_rows.text();
}

TEST_F(ServeEndpoints, RepositoryIndexListsEveryModelAndVersion) {
  const Reply all = post(port(), "/v2/repository/index", "");
  ASSERT_EQ(all.status, 200) << all.text();
  std::vector<std::string> ready;
  for (const json& m : all.body_json()) {
    EXPECT_EQ(m.at("state"), "READY") << m.dump();
    ready.push_back(m.at("name").get<std::string>() + "/" + m.at("version").get<std::string>());
  }
  std::sort(ready.begin(), ready.end());
  EXPECT_EQ(ready, (std::vector<std::string>{"cnn/1", "gpt/1", "lstm/1", "mlp/1", "mlp/2", "resnet9/1"}));
  const Reply ready_only = post_json(port(), "/v2/repository/index", {{"ready", true}});
  ASSERT_EQ(ready_only.status, 200) << ready_only.text();
  EXPECT_EQ(ready_only.body_json(), all.body_json());
  EXPECT_EQ(post_json(port(), "/v2/repository/index", {{"ready", "yes"}}).status, 400);
}

TEST_F(ServeEndpoints, StatisticsFollowTritonsFormatAndCount) {
  const json before = model_stats(port(), "mlp", "1");
  for (const char* key : {"name", "version", "last_inference", "inference_count", "execution_count",
                          "inference_stats", "batch_stats"})
    EXPECT_TRUE(before.contains(key)) << key << " missing in " << before.dump();
  for (const char* key : {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"}) {
    EXPECT_TRUE(before.at("inference_stats").at(key).at("count").is_number_unsigned()) << key;
    EXPECT_TRUE(before.at("inference_stats").at(key).at("ns").is_number_unsigned()) << key;
  }

  // Sequential requests to mlp (no queue delay): one batch each.
  ASSERT_EQ(infer(port(), "mlp", image_request(1), "1").status, 200);
  ASSERT_EQ(infer(port(), "mlp", image_request(json(std::vector<float>(3 * 784, 0.25f)), 3), "1").status, 200);
  ASSERT_EQ(infer(port(), "mlp", image_request(json(std::vector<float>(5, 0.25f))), "1").status, 400);
  const json after = model_stats(port(), "mlp", "1");
  auto delta = [&](const json::json_pointer& p) { return after.at(p).get<int64_t>() - before.at(p).get<int64_t>(); };
  EXPECT_EQ(delta("/inference_stats/success/count"_json_pointer), 2);
  EXPECT_EQ(delta("/inference_stats/fail/count"_json_pointer), 1);
  EXPECT_EQ(delta("/inference_stats/queue/count"_json_pointer), 2);
  EXPECT_EQ(delta("/inference_stats/compute_infer/count"_json_pointer), 2);
  EXPECT_EQ(delta("/inference_count"_json_pointer), 4);
  EXPECT_EQ(delta("/execution_count"_json_pointer), 2);
  EXPECT_GT(after.at("last_inference").get<uint64_t>(), 0u);
  bool saw_three = false;
  for (const json& b : after.at("batch_stats"))
    if (b.at("batch_size") == 3) saw_three = b.at("compute_infer").at("count").get<int64_t>() >= 1;
  EXPECT_TRUE(saw_three) << after.dump();

  // Every loaded version, one entry each; per model; 404 for an unknown one.
  const Reply every = get(port(), "/v2/models/stats");
  ASSERT_EQ(every.status, 200) << every.text();
  std::vector<std::string> names;
  const json every_stats = every.body_json();
  for (const json& s : every_stats.at("model_stats"))
    names.push_back(s.at("name").get<std::string>() + "/" + s.at("version").get<std::string>());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"cnn/1", "gpt/1", "lstm/1", "mlp/1", "mlp/2", "resnet9/1"}));
  EXPECT_EQ(get(port(), "/v2/models/mlp/stats").body_json().at("model_stats").size(), 2u);
  EXPECT_EQ(get(port(), "/v2/models/nosuchmodel/stats").status, 404);
}

TEST_F(ServeEndpoints, MetricsCountEveryRequestInPrometheusText) {
  const std::map<std::string, double> before = scrape(port());
  for (const char* family : {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                             "nv_inference_exec_count", "nv_inference_request_duration_us",
                             "nv_inference_queue_duration_us", "nv_inference_pending_request_count"}) {
    EXPECT_EQ(before.count(std::string("#TYPE ") + family), 1u) << family;
    EXPECT_EQ(before.count(std::string("#HELP ") + family), 1u) << family;
  }
  // 4 good requests (5 rows) and 3 bad ones, one at a time, to mlp version 1.
  for (int64_t i = 0; i < 3; ++i) ASSERT_EQ(infer(port(), "mlp", image_request(i), "1").status, 200);
  ASSERT_EQ(infer(port(), "mlp", image_request(json(std::vector<float>(2 * 784, 0.5f)), 2), "1").status, 200);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(infer(port(), "mlp", image_request(json(std::vector<float>(10, 0.5f))), "1").status, 400);

  const std::map<std::string, double> after = scrape(port());
  auto delta = [&](const std::string& name, const std::string& extra = "") {
    const std::string s = series(name, "mlp", "1", extra);
    EXPECT_GE(metric(before, s), 0) << s << " missing";
    EXPECT_GE(metric(after, s), 0) << s << " missing";
    return metric(after, s) - metric(before, s);
  };
  EXPECT_EQ(delta("nv_inference_request_success"), 4);
  EXPECT_EQ(delta("nv_inference_request_failure", "reason=\"OTHER\""), 3);
  EXPECT_EQ(delta("nv_inference_request_failure", "reason=\"REJECTED\""), 0);
  EXPECT_EQ(delta("nv_inference_request_failure", "reason=\"BACKEND\""), 0);
  EXPECT_EQ(delta("nv_inference_count"), 5);
  EXPECT_EQ(delta("nv_inference_exec_count"), 4);
  EXPECT_GE(delta("nv_inference_request_duration_us"), 0);
  EXPECT_EQ(metric(after, series("nv_inference_pending_request_count", "mlp", "1")), 0);
  // The batch-size histogram: 3 batches of 1 row, one of 2.
  EXPECT_EQ(delta("nv_inference_batch_size_bucket", "le=\"1\""), 3);
  EXPECT_EQ(delta("nv_inference_batch_size_bucket", "le=\"2\""), 4);
  EXPECT_EQ(delta("nv_inference_batch_size_bucket", "le=\"+Inf\""), 4);
  EXPECT_EQ(delta("nv_inference_batch_size_sum"), 5);
  EXPECT_EQ(delta("nv_inference_batch_size_count"), 4);
  // The totals agree with the statistics extension.
  const json stats = model_stats(port(), "mlp", "1");
  EXPECT_EQ(metric(after, series("nv_inference_request_success", "mlp", "1")),
            stats.at("inference_stats").at("success").at("count").get<double>());
  EXPECT_EQ(metric(after, series("nv_inference_exec_count", "mlp", "1")), stats.at("execution_count").get<double>());
  // Version 2 is counted apart.
  EXPECT_EQ(metric(after, series("nv_inference_request_success", "mlp", "2")),
            metric(before, series("nv_inference_request_success", "mlp", "2")));
}

TEST_F(ServeEndpoints, UnknownRouteIs404WithAJsonError) {
  const Reply r = get(port(), "/v2/nothing/here");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(r.body_json().at("error").is_string()) << r.text();
}

// ===================================================================
// Inference results
// ===================================================================

TEST_F(ServeInference, ImageModelsAnswerBitwiseAsLoomPredict) {
  loom::set_num_threads(1);  // as the server's --threads 1
  for (const std::string model : {"mlp", "cnn", "resnet9"}) {
    for (int64_t index : {0, 1, 17, 4242}) {
      const loom::cli::Prediction expected = loom::cli::predict_checkpoint(file(model).string(), kDataDir, index);
      const Reply r = infer(port(), model, image_request(index), "1");
      ASSERT_EQ(r.status, 200) << model << ": " << r.text();
      const auto outputs = outputs_of(r);
      const std::vector<float>& p = outputs.at("probabilities").floats;
      ASSERT_EQ(p.size(), 10u);
      EXPECT_EQ(outputs.at("probabilities").shape, (std::vector<int64_t>{1, 10}));
      EXPECT_EQ(outputs.at("logits").shape, (std::vector<int64_t>{1, 10}));
      const auto top = std::max_element(p.begin(), p.end()) - p.begin();
      EXPECT_EQ(top, expected.predicted) << model << " image " << index;
      EXPECT_EQ(std::bit_cast<uint32_t>(p[static_cast<size_t>(expected.predicted)]),
                std::bit_cast<uint32_t>(static_cast<float>(expected.probability)))
          << model << " image " << index << ": served " << p[static_cast<size_t>(expected.predicted)]
          << ", loom predict " << expected.probability;
    }
  }
}

TEST_F(ServeInference, Uint8PixelsGiveTheSameFloatsAsFp32Images) {
  for (int64_t index : {3, 5}) {
    const std::vector<float> fp32 = served_probabilities(port(), "cnn", index);
    const std::vector<int> pixels = test_pixels(index);
    const Reply r = infer(port(), "cnn", image_request(json(pixels), 1, "UINT8"));
    ASSERT_EQ(r.status, 200) << r.text();
    EXPECT_TRUE(bitwise_equal(outputs_of(r).at("probabilities").floats, fp32)) << "image " << index;
    // The same pixels as binary data, one byte each.
    const std::string bytes(pixels.begin(), pixels.end());
    const json header = {{"inputs",
                          {{{"name", "input"},
                            {"datatype", "UINT8"},
                            {"shape", {1, 1, 28, 28}},
                            {"parameters", {{"binary_data_size", bytes.size()}}}}}}};
    const Reply binary = infer_binary(port(), "cnn", header, bytes);
    ASSERT_EQ(binary.status, 200) << binary.text();
    EXPECT_TRUE(bitwise_equal(outputs_of(binary).at("probabilities").floats, fp32)) << "image " << index;
  }
}

TEST_F(ServeInference, AnswersDependOnNeitherKeyOrderNorDataNesting) {
  const int64_t index = 8;
  const std::vector<float> image = test_image(index);
  // nlohmann sorts keys: "data" comes before "datatype" and "shape".
  const std::vector<float> sorted = served_probabilities(port(), "cnn", index);
  // The specification's order, by hand.
  const std::string in_order = R"({"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","data":)" +
                               json(image).dump() + "}]}";
  const Reply ordered = post(port(), infer_path("cnn"), in_order);
  ASSERT_EQ(ordered.status, 200) << ordered.text();
  EXPECT_TRUE(bitwise_equal(outputs_of(ordered).at("probabilities").floats, sorted));
  // Nested as the shape: [1][1][28][28].
  json rows = json::array();
  for (int r = 0; r < 28; ++r) rows.push_back(slice(image, static_cast<size_t>(r), 28));
  const Reply nested = infer(port(), "cnn", image_request(json::array({json::array({rows})})));
  ASSERT_EQ(nested.status, 200) << nested.text();
  EXPECT_TRUE(bitwise_equal(outputs_of(nested).at("probabilities").floats, sorted));
}

TEST_F(ServeInference, ResponseNamesModelVersionAndEchoesTheId) {
  json request = image_request(2);
  request["id"] = "request-42";
  request["outputs"] = {{{"name", "probabilities"}}};
  const Reply r = infer(port(), "mlp", request, "1");
  ASSERT_EQ(r.status, 200) << r.text();
  EXPECT_FALSE(r.has_header(kHeaderLength));
  const json body = r.body_json();
  EXPECT_EQ(body.at("model_name"), "mlp");
  EXPECT_EQ(body.at("model_version"), "1");
  EXPECT_EQ(body.at("id"), "request-42");
  ASSERT_EQ(body.at("outputs").size(), 1u) << "only the output asked for";
  EXPECT_EQ(body.at("outputs")[0].at("name"), "probabilities");
  EXPECT_EQ(body.at("outputs")[0].at("datatype"), "FP32");
  // No version: the latest (mlp has 1 and 2, the same weights).
  const Reply latest = infer(port(), "mlp", request);
  ASSERT_EQ(latest.status, 200) << latest.text();
  EXPECT_EQ(latest.body_json().at("model_version"), "2");
  EXPECT_TRUE(bitwise_equal(outputs_of(latest).at("probabilities").floats, outputs_of(r).at("probabilities").floats));
}

TEST_F(ServeInference, BinaryInputsAndOutputsMatchJsonBitwise) {
  const int64_t index = 7;
  const std::vector<float> image = test_image(index);
  const Reply as_json = infer(port(), "cnn", image_request(index));
  ASSERT_EQ(as_json.status, 200) << as_json.text();
  const auto expected = outputs_of(as_json);

  const json binary_input = {{"name", "input"},
                             {"datatype", "FP32"},
                             {"shape", {1, 1, 28, 28}},
                             {"parameters", {{"binary_data_size", image.size() * sizeof(float)}}}};
  // Binary input, binary outputs asked for one by one.
  const json header = {{"inputs", {binary_input}},
                       {"outputs",
                        {{{"name", "logits"}, {"parameters", {{"binary_data", true}}}},
                         {{"name", "probabilities"}, {"parameters", {{"binary_data", true}}}}}}};
  const Reply binary = infer_binary(port(), "cnn", header, float_bytes(image));
  ASSERT_EQ(binary.status, 200) << binary.text();
  ASSERT_TRUE(binary.has_header(kHeaderLength));
  auto got = outputs_of(binary);
  for (const char* name : {"logits", "probabilities"}) {
    EXPECT_TRUE(got.at(name).binary) << name;
    EXPECT_EQ(got.at(name).shape, expected.at(name).shape) << name;
    EXPECT_TRUE(bitwise_equal(got.at(name).floats, expected.at(name).floats)) << name;
  }
  // Binary input, JSON outputs.
  const Reply json_out = infer_binary(port(), "cnn", {{"inputs", {binary_input}}}, float_bytes(image));
  ASSERT_EQ(json_out.status, 200) << json_out.text();
  EXPECT_FALSE(json_out.has_header(kHeaderLength));
  EXPECT_TRUE(bitwise_equal(outputs_of(json_out).at("probabilities").floats, expected.at("probabilities").floats));
  // JSON input, every output binary (parameters.binary_data_output).
  json all_binary = image_request(index);
  all_binary["parameters"] = {{"binary_data_output", true}};
  const Reply mixed = infer(port(), "cnn", all_binary);
  ASSERT_EQ(mixed.status, 200) << mixed.text();
  got = outputs_of(mixed);
  EXPECT_TRUE(got.at("probabilities").binary);
  EXPECT_TRUE(bitwise_equal(got.at("probabilities").floats, expected.at("probabilities").floats));
  EXPECT_TRUE(bitwise_equal(got.at("logits").floats, expected.at("logits").floats));
}

TEST_F(ServeInference, ARequestOfSeveralRowsAnswersEachRowAsAlone) {
  std::vector<float> three;
  std::vector<std::vector<float>> alone;
  for (int64_t index : {10, 11, 12}) {
    const std::vector<float> image = test_image(index);
    three.insert(three.end(), image.begin(), image.end());
    alone.push_back(served_probabilities(port(), "cnn", index));
  }
  const Reply r = infer(port(), "cnn", image_request(json(three), 3));
  ASSERT_EQ(r.status, 200) << r.text();
  const Output p = outputs_of(r).at("probabilities");
  EXPECT_EQ(p.shape, (std::vector<int64_t>{3, 10}));
  for (size_t row = 0; row < 3; ++row) EXPECT_TRUE(bitwise_equal(slice(p.floats, row, 10), alone[row])) << row;
}

TEST_F(ServeInference, ClassificationExtensionNamesTheTopClasses) {
  const int64_t index = 0;
  const loom::cli::Prediction expected = loom::cli::predict_checkpoint(file("cnn").string(), kDataDir, index);
  const std::vector<float> p = served_probabilities(port(), "cnn", index);
  json request = image_request(index);
  request["outputs"] = {{{"name", "probabilities"}, {"parameters", {{"classification", 3}}}}};
  const Reply r = infer(port(), "cnn", request);
  ASSERT_EQ(r.status, 200) << r.text();
  const Output top = outputs_of(r).at("probabilities");
  EXPECT_EQ(top.datatype, "BYTES");
  EXPECT_EQ(top.shape, (std::vector<int64_t>{1, 3}));
  ASSERT_EQ(top.strings.size(), 3u);
  // "<score>:<index>:<label>", highest first.
  const auto& classes = loom::data::fashion_mnist_classes();
  float previous = INFINITY;
  for (size_t k = 0; k < 3; ++k) {
    const std::string& s = top.strings[k];
    const size_t a = s.find(':'), b = s.find(':', a + 1);
    ASSERT_TRUE(a != std::string::npos && b != std::string::npos) << s;
    const float score = std::stof(s.substr(0, a));
    const int64_t cls = std::stoll(s.substr(a + 1, b - a - 1));
    ASSERT_TRUE(cls >= 0 && cls < 10) << s;
    EXPECT_EQ(s.substr(b + 1), classes[static_cast<size_t>(cls)]) << s;
    EXPECT_EQ(score, p[static_cast<size_t>(cls)]) << s;
    EXPECT_LE(score, previous) << s;
    previous = score;
    if (k == 0) {
      EXPECT_EQ(cls, expected.predicted) << s;
      EXPECT_EQ(s.substr(b + 1), expected.predicted_name) << s;
    }
  }
  // Binary, as Triton clients ask for it.
  request["outputs"][0]["parameters"]["binary_data"] = true;
  const Reply binary = infer(port(), "cnn", request);
  ASSERT_EQ(binary.status, 200) << binary.text();
  EXPECT_EQ(outputs_of(binary).at("probabilities").strings, top.strings);
}

TEST_F(ServeInference, LanguageModelsAnswerBitwiseAsTheCheckpointInProcess) {
  loom::set_num_threads(1);
  for (const std::string model : {"gpt", "lstm"}) {
    const int64_t vocab = vocab_of(port(), model);
    const std::vector<int64_t> ids = token_ids(3, 10, vocab);
    const Reply r = infer(port(), model, tokens_request({ids}));
    ASSERT_EQ(r.status, 200) << model << ": " << r.text();
    const Output logits = outputs_of(r).at("logits");
    EXPECT_EQ(logits.shape, (std::vector<int64_t>{1, 10, vocab})) << model;

    loom::cli::LoadedLm lm = loom::cli::load_lm(file(model).string());
    lm.model->eval();
    loom::NoGradGuard no_grad;
    const loom::Tensor expected = lm.model->forward(loom::tensor(ids).reshape({1, 10})).contiguous();
    const float* e = expected.data_ptr<float>();
    EXPECT_TRUE(bitwise_equal(logits.floats, std::vector<float>(e, e + expected.numel()))) << model;

    // INT32 ids are the same tokens.
    const Reply int32 = infer(port(), model, tokens_request({ids}, "INT32"));
    ASSERT_EQ(int32.status, 200) << model << ": " << int32.text();
    EXPECT_TRUE(bitwise_equal(outputs_of(int32).at("logits").floats, logits.floats)) << model;
  }
}

// ===================================================================
// Batching: concurrent requests share forward passes, bitwise unchanged
// ===================================================================

// Sends each request alone, then all at once from one thread each, and
// checks that some forward ran more than one row and that every answer's
// `output` is bitwise the answer it got alone.
void expect_batched_answers_equal_alone(int server_port, const std::string& model, const std::vector<json>& requests,
                                        const std::string& output) {
  std::vector<std::vector<float>> alone;
  for (const json& request : requests) {
    const Reply r = infer(server_port, model, request);
    ASSERT_EQ(r.status, 200) << model << ": " << r.text();
    alone.push_back(outputs_of(r).at(output).floats);
  }
  const json before = model_stats(server_port, model, "1");
  std::vector<Reply> together(requests.size());
  {
    std::latch start(static_cast<std::ptrdiff_t>(requests.size()));
    std::vector<std::thread> threads;
    for (size_t i = 0; i < requests.size(); ++i)
      threads.emplace_back([&, i] {
        const std::string body = requests[i].dump();
        httplib::Client client = make_client(server_port);
        start.arrive_and_wait();
        together[i] = to_reply(client.Post(infer_path(model), body, "application/json"));
      });
    for (std::thread& t : threads) t.join();
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(together[i].status, 200) << model << " request " << i << ": " << together[i].text();
    EXPECT_TRUE(bitwise_equal(outputs_of(together[i]).at(output).floats, alone[i])) << model << " request " << i;
  }
  const json after = model_stats(server_port, model, "1");
  const int64_t rows = after.at("inference_count").get<int64_t>() - before.at("inference_count").get<int64_t>();
  const int64_t batches = after.at("execution_count").get<int64_t>() - before.at("execution_count").get<int64_t>();
  EXPECT_EQ(rows, static_cast<int64_t>(requests.size()));
  EXPECT_LT(batches, rows) << model << ": every request ran alone; batch_stats " << after.at("batch_stats").dump();
  int64_t largest = 0;
  for (const json& b : after.at("batch_stats")) largest = std::max(largest, b.at("batch_size").get<int64_t>());
  EXPECT_GT(largest, 1) << after.at("batch_stats").dump();
  EXPECT_LE(largest, kMaxBatch);
}

TEST_F(ServeBatching, ConcurrentImagesBatchAndMatchTheirAnswersAlone) {
  std::vector<json> requests;
  for (int64_t i = 0; i < kMaxBatch; ++i) requests.push_back(image_request(100 + i));
  expect_batched_answers_equal_alone(port(), "cnn", requests, "probabilities");
}

TEST_F(ServeBatching, ConcurrentGptSequencesBatchAndMatchTheirAnswersAlone) {
  const int64_t vocab = vocab_of(port(), "gpt");
  std::vector<json> requests;
  for (int64_t i = 0; i < kMaxBatch; ++i) requests.push_back(tokens_request({token_ids(i, 12, vocab)}));
  expect_batched_answers_equal_alone(port(), "gpt", requests, "logits");
}

TEST_F(ServeBatching, ConcurrentLstmSequencesBatchAndMatchTheirAnswersAlone) {
  const int64_t vocab = vocab_of(port(), "lstm");
  std::vector<json> requests;
  for (int64_t i = 0; i < kMaxBatch; ++i) requests.push_back(tokens_request({token_ids(i, 12, vocab)}));
  expect_batched_answers_equal_alone(port(), "lstm", requests, "logits");
}

// ===================================================================
// Malformed requests: 4xx with a JSON error, never 5xx, and the server
// goes on serving
// ===================================================================

struct BadRequest {
  std::string what;
  std::string model;  // path: /v2/models/<model>/infer
  std::string body;
  httplib::Headers headers = {};
  int status = 400;  // what the server answers (any 4xx is right by the protocol)
};

// A good request to `model` still answers 200 (after a bad one).
void expect_still_serving(int server_port, const std::string& model) {
  const json good = model == "gpt" || model == "lstm" ? tokens_request({{1, 2, 3}}) : image_request(0);
  const Reply r = infer(server_port, model, good);
  EXPECT_EQ(r.status, 200) << model << " after a bad request: " << r.text();
}

void expect_refused(int server_port, const BadRequest& bad) {
  const std::string content_type = bad.headers.count(kHeaderLength) ? "application/octet-stream" : "application/json";
  const Reply r = post(server_port, "/v2/models/" + bad.model + "/infer", bad.body, content_type, bad.headers);
  EXPECT_TRUE(r.status >= 400 && r.status < 500) << bad.what << ": " << r.text();
  EXPECT_EQ(r.status, bad.status) << bad.what << ": " << r.text();
  EXPECT_NE(error_of(r), "") << bad.what << ": not a JSON {\"error\"} body: " << r.text();
}

std::string image_json(const std::string& datatype, const std::string& shape, const std::string& data,
                       const std::string& name = "input") {
  return R"({"inputs":[{"name":")" + name + R"(","datatype":")" + datatype + R"(","shape":)" + shape +
         R"(,"data":)" + data + "}]}";
}

std::string floats_text(size_t n, const char* value = "0.5") {
  std::string s = "[";
  for (size_t i = 0; i < n; ++i) {
    if (i) s += ',';
    s += value;
  }
  return s + "]";
}

TEST_F(ServeErrors, MalformedRequestsAre4xxAndTheServerGoesOn) {
  const int64_t gpt_vocab = vocab_of(port(), "gpt"), lstm_vocab = vocab_of(port(), "lstm");
  const std::string ok = floats_text(784);
  // Binary data: a header that declares 3136 bytes of FP32 input.
  const std::string binary_header =
      R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],"parameters":{"binary_data_size":3136}}]})";
  const std::string odd_header =
      R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],"parameters":{"binary_data_size":3135}}]})";
  auto with_length = [](size_t n) { return httplib::Headers{{kHeaderLength, std::to_string(n)}}; };
  const std::string context_plus_one = json(token_ids(1, 17, gpt_vocab)).dump();

  const std::vector<BadRequest> cases = {
      {"bad JSON", "cnn", R"({"inputs": [{"name": "input",)"},
      {"a JSON array, not an object", "cnn", "[1, 2, 3]"},
      {"no inputs", "cnn", R"({"outputs": []})"},
      {"an input the model does not have", "cnn", image_json("FP32", "[1,1,28,28]", ok, "pixels")},
      {"wrong shape", "cnn", image_json("FP32", "[1,1,27,29]", floats_text(27 * 29))},
      {"wrong rank", "cnn", image_json("FP32", "[1,784]", ok)},
      {"batch of zero rows", "cnn", image_json("FP32", "[0,1,28,28]", "[]")},
      {"more rows than max_batch_size", "cnn", image_json("FP32", "[17,1,28,28]", floats_text(17 * 784))},
      {"INT64 for the image model", "cnn", image_json("INT64", "[1,1,28,28]", floats_text(784, "1"))},
      {"BOOL for the image model", "cnn", image_json("BOOL", "[1,1,28,28]", floats_text(784, "true"))},
      {"BYTES for the image model", "cnn", image_json("BYTES", "[1,1,28,28]", floats_text(784, "\"a\""))},
      {"strings for FP32", "cnn", image_json("FP32", "[1,1,28,28]", floats_text(784, "\"0.5\""))},
      {"an unknown datatype", "cnn", image_json("FP33", "[1,1,28,28]", ok)},
      {"783 elements for 784", "cnn", image_json("FP32", "[1,1,28,28]", floats_text(783))},
      {"785 elements for 784", "cnn", image_json("FP32", "[1,1,28,28]", floats_text(785))},
      {"a value beyond FP32", "cnn", image_json("FP32", "[1,1,28,28]", floats_text(784, "1e300"))},
      {"a negative dimension", "cnn", image_json("FP32", "[-1,1,28,28]", ok)},
      {"shape product overflows int64", "cnn", image_json("FP32", "[4294967296,4294967296,4294967296,1]", ok)},
      {"shape product overflows, one dimension 0", "cnn",
       image_json("FP32", "[0,4294967296,4294967296,4294967296]", "[]")},
      {"binary data shorter than declared", "cnn", binary_header + std::string(3000, '\0'),
       with_length(binary_header.size())},
      {"binary data longer than declared", "cnn", binary_header + std::string(3200, '\0'),
       with_length(binary_header.size())},
      {"binary size not a multiple of 4", "cnn", odd_header + std::string(3135, '\0'), with_length(odd_header.size())},
      {"header length past the body", "cnn", binary_header + std::string(3136, '\0'),
       with_length(binary_header.size() + 3137)},
      {"header length not a number", "cnn", binary_header + std::string(3136, '\0'), {{kHeaderLength, "12abc"}}},
      {"header length cuts the JSON", "cnn", binary_header + std::string(3136, '\0'), with_length(10)},
      {"unknown model", "nosuchmodel", image_json("FP32", "[1,1,28,28]", ok), {}, 404},
      {"unknown version", "cnn/versions/2", image_json("FP32", "[1,1,28,28]", ok), {}, 404},
      {"a version that is not a number", "cnn/versions/latest", image_json("FP32", "[1,1,28,28]", ok), {}, 404},
      {"gpt: token id = vocabulary size", "gpt",
       tokens_request({{1, gpt_vocab, 2}}).dump()},
      {"gpt: negative token id", "gpt", tokens_request({{1, -1, 2}}).dump()},
      {"lstm: token id beyond the vocabulary", "lstm", tokens_request({{lstm_vocab + 100}}).dump()},
      {"gpt: a sequence longer than the context", "gpt",
       R"({"inputs":[{"name":"input_ids","datatype":"INT64","shape":[1,17],"data":)" + context_plus_one + "}]}"},
      {"gpt: no tokens", "gpt", R"({"inputs":[{"name":"input_ids","datatype":"INT64","shape":[1,0],"data":[]}]})"},
      {"gpt: FP32 token ids", "gpt", R"({"inputs":[{"name":"input_ids","datatype":"FP32","shape":[1,2],"data":[1.0,2.0]}]})"},
      {"gpt: shape product overflows", "gpt",
       R"({"inputs":[{"name":"input_ids","datatype":"INT64","shape":[4611686018427387904,4],"data":[1,2,3,4]}]})"},
      {"lstm: shape [1] instead of [batch, tokens]", "lstm",
       R"({"inputs":[{"name":"input_ids","datatype":"INT64","shape":[3],"data":[1,2,3]}]})"},
      {"an output the model does not have", "cnn",
       R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],"data":)" + ok +
           R"(}],"outputs":[{"name":"softmax"}]})"},
      {"classification of 3-D logits", "gpt",
       R"({"inputs":[{"name":"input_ids","datatype":"INT64","shape":[1,2],"data":[1,2]}],)"
       R"("outputs":[{"name":"logits","parameters":{"classification":2}}]})"},
  };
  for (const BadRequest& bad : cases) {
    SCOPED_TRACE(bad.what);
    expect_refused(port(), bad);
    const std::string model = bad.model.substr(0, bad.model.find('/'));
    expect_still_serving(port(), model == "nosuchmodel" ? "cnn" : model);
  }
}

TEST_F(ServeErrors, EveryFileOfTheMalformedCorpusIs4xx) {
  const fs::path dir = LOOM_SERVE_MALFORMED_DIR;
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " does not exist";
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".json" || entry.path().extension() == ".bin") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty());
  for (const fs::path& f : files) {
    BadRequest bad{f.filename().string(), "cnn", read_text(f)};
    if (f.extension() == ".bin") {
      fs::path hdr = f;
      hdr.replace_extension(".hdr");
      ASSERT_TRUE(fs::exists(hdr)) << hdr << " missing for " << f;
      std::string first_line = read_text(hdr);
      first_line = first_line.substr(0, first_line.find('\n'));
      bad.headers = {{kHeaderLength, first_line}};
    }
    const std::string content_type = bad.headers.empty() ? "application/json" : "application/octet-stream";
    const Reply r = post(port(), infer_path("cnn"), bad.body, content_type, bad.headers);
    EXPECT_TRUE(r.status >= 400 && r.status < 500) << f.filename() << ": " << r.text();
  }
  expect_still_serving(port(), "cnn");
}

TEST_F(ServeErrors, ABodyOverMaxBodyMbIs413WithAJsonError) {
  ServerProcess server(single_model("cnn", file("cnn"), {"--max-body-mb", "1"}));
  const std::string big(2 << 20, ' ');  // 2 MiB
  const Reply r = post(server.port(), infer_path("cnn"), big);
  EXPECT_EQ(r.status, 413) << r.text();
  EXPECT_NE(error_of(r), "") << r.text();
  // Just under the limit is read (and then refused for what it is).
  const Reply under = post(server.port(), infer_path("cnn"), std::string((1 << 20) - 100, ' '));
  EXPECT_EQ(under.status, 400) << under.text();
  expect_still_serving(server.port(), "cnn");
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// Disabled: httplib 0.11.4 applies the payload limit to bodies with a
// Content-Length only, so a chunked body of any size is read into memory
// and served (this valid request, padded past 1 MiB, is answered 200).
// Enable once the server refuses such bodies (e.g. 411 or 413 from a
// pre-routing handler, before httplib reads them).
TEST_F(ServeErrors, AChunkedBodyOverMaxBodyMbIsRefused) {
  ServerProcess server(single_model("cnn", file("cnn"), {"--max-body-mb", "1"}));
  const std::string body = image_request(0).dump() + std::string(2 << 20, ' ');  // valid JSON, 2 MiB
  httplib::Client client = make_client(server.port());
  const Reply r = to_reply(client.Post(
      infer_path("cnn"),
      [&](size_t offset, httplib::DataSink& sink) {
        const size_t n = std::min<size_t>(64 << 10, body.size() - offset);
        sink.write(body.data() + offset, n);
        if (offset + n == body.size()) sink.done();
        return true;
      },
      "application/json"));
  EXPECT_TRUE(r.status == 411 || r.status == 413) << r.text();
  EXPECT_NE(error_of(r), "") << r.text();
  expect_still_serving(server.port(), "cnn");
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// ===================================================================
// The process: load/unload under traffic, queue bounds, signals
// ===================================================================

TEST_F(ServeLifecycle, ModelsLoadAndUnloadWhileOthersServe) {
  ServerProcess server({"--model-repository", ckpt().repo.string()});
  const int p = server.port();
  const json lstm_request = tokens_request({{4, 8, 15, 16, 23, 42}});
  const Reply lstm_before = infer(p, "lstm", lstm_request);
  ASSERT_EQ(lstm_before.status, 200) << lstm_before.text();

  // Model A (cnn) serves all along; every answer must be 200 and right.
  const std::vector<float> expected = served_probabilities(p, "cnn", 9);
  std::atomic<int> answered{0};
  std::vector<std::string> failures;  // read after the join
  std::jthread traffic([&](std::stop_token stop) {
    while (!stop.stop_requested()) {
      const Reply r = infer(p, "cnn", image_request(9));
      if (r.status != 200)
        failures.push_back(r.text());
      else if (!bitwise_equal(outputs_of(r).at("probabilities").floats, expected))
        failures.push_back("a different answer");
      ++answered;
    }
  });
  ASSERT_TRUE(wait_for([&] { return answered > 0; }, seconds(30)));

  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    // Model B (lstm) goes away...
    ASSERT_EQ(post(p, "/v2/repository/models/lstm/unload", "").status, 200);
    EXPECT_EQ(get(p, "/v2/models/lstm/ready").status, 404);
    EXPECT_EQ(infer(p, "lstm", lstm_request).status, 404);
    bool listed = false;
    for (const json& m : post(p, "/v2/repository/index", "").body_json())
      if (m.at("name") == "lstm") {
        listed = true;
        EXPECT_EQ(m.at("state"), "UNAVAILABLE") << m.dump();
        EXPECT_TRUE(m.contains("reason")) << m.dump();
      }
    EXPECT_TRUE(listed) << "an unloaded model stays in the index";
    bool in_ready = false;
    for (const json& m : post_json(p, "/v2/repository/index", {{"ready", true}}).body_json())
      in_ready = in_ready || m.at("name") == "lstm";
    EXPECT_FALSE(in_ready);
    // ...and comes back, answering as before.
    ASSERT_EQ(post(p, "/v2/repository/models/lstm/load", "").status, 200);
    EXPECT_EQ(get(p, "/v2/models/lstm/ready").status, 200);
    const Reply again = infer(p, "lstm", lstm_request);
    ASSERT_EQ(again.status, 200) << again.text();
    EXPECT_TRUE(bitwise_equal(outputs_of(again).at("logits").floats, outputs_of(lstm_before).at("logits").floats));
    // Model A reloaded under its own traffic.
    EXPECT_EQ(post(p, "/v2/repository/models/cnn/load", "").status, 200);
  }
  const int before_stop = answered;
  ASSERT_TRUE(wait_for([&] { return answered > before_stop; }, seconds(30)));  // A still serves
  traffic.request_stop();
  traffic.join();
  EXPECT_TRUE(failures.empty()) << failures.size() << " of " << answered << " requests to cnn failed, first: "
                                << (failures.empty() ? "" : failures[0]);

  EXPECT_EQ(post(p, "/v2/repository/models/nosuchmodel/load", "").status, 404);
  EXPECT_EQ(post(p, "/v2/repository/models/nosuchmodel/unload", "").status, 404);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// Sends `n` requests to cnn from threads and, once all wait in the queue
// (a batch waits 2 s for more rows), signals the server: each request must
// be answered 200, and the exit code be 0.
void expect_signal_drains(const fs::path& cnn, int sig, int n) {
  ServerProcess server(single_model("cnn", cnn, {"--max-batch-size", "64", "--max-queue-delay-us", "2000000"}));
  const int p = server.port();
  std::vector<std::future<Reply>> answers;
  for (int i = 0; i < n; ++i)
    answers.push_back(std::async(std::launch::async, [p, i] { return infer(p, "cnn", image_request(20 + i)); }));
  ASSERT_TRUE(wait_for([&] { return pending(p, "cnn") == n; }, seconds(30)))
      << "the requests never waited in the queue together";
  const auto signalled = Clock::now();
  server.send(sig);
  for (int i = 0; i < n; ++i) {
    const Reply r = answers[static_cast<size_t>(i)].get();
    EXPECT_EQ(r.status, 200) << "request " << i << ": " << r.text();
    if (r.status == 200) {
      EXPECT_EQ(outputs_of(r).at("probabilities").floats.size(), 10u);
    }
  }
  EXPECT_EQ(server.wait_exit(seconds(20)), 0) << server.log();
  EXPECT_LT(ms_since(signalled), 15000.0) << "exit took too long";
  const std::string log = server.log();
  EXPECT_NE(log.find(sig == SIGINT ? "loom serve: SIGINT" : "loom serve: SIGTERM"), std::string::npos) << log;
  EXPECT_NE(log.find("loom serve: stopped"), std::string::npos) << log;
}

TEST_F(ServeLifecycle, SigtermAnswersTheQueuedRequestsThenExits0) {
  expect_signal_drains(file("cnn"), SIGTERM, 3);
}

TEST_F(ServeLifecycle, SigintAnswersTheQueuedRequestThenExits0) {
  expect_signal_drains(file("cnn"), SIGINT, 1);
}

TEST_F(ServeLifecycle, AFullQueueIsAnswered503AtOnce) {
  ServerProcess server(single_model(
      "cnn", file("cnn"), {"--max-batch-size", "64", "--max-queue-delay-us", "2000000", "--max-queue-size", "2"}));
  const int p = server.port();
  std::vector<std::future<Reply>> queued;
  for (int i = 0; i < 2; ++i)
    queued.push_back(std::async(std::launch::async, [p, i] { return infer(p, "cnn", image_request(i)); }));
  ASSERT_TRUE(wait_for([&] { return pending(p, "cnn") == 2; }, seconds(30)));

  const Reply third = infer(p, "cnn", image_request(2));
  EXPECT_EQ(third.status, 503) << third.text();
  EXPECT_NE(error_of(third).find("queue"), std::string::npos) << third.text();
  // At once: the queued requests still wait for their batch.
  for (auto& q : queued) EXPECT_EQ(q.wait_for(milliseconds(0)), std::future_status::timeout);
  for (auto& q : queued) {
    const Reply r = q.get();
    EXPECT_EQ(r.status, 200) << r.text();
  }
  const auto m = scrape(p);
  EXPECT_EQ(metric(m, series("nv_inference_request_failure", "cnn", "1", "reason=\"REJECTED\"")), 1);
  EXPECT_EQ(metric(m, series("nv_inference_request_success", "cnn", "1")), 2);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(ServeLifecycle, AQueuedRequestPastTimeoutMsIs503) {
  // The batch would wait 5 s for more rows; the request leaves the queue at
  // 100 ms. (The gap is wide because a request's thread that a loaded
  // machine does not schedule before the batch is formed is answered 200.)
  ServerProcess server(single_model(
      "cnn", file("cnn"), {"--max-batch-size", "64", "--max-queue-delay-us", "5000000", "--timeout-ms", "100"}));
  const int p = server.port();
  auto start = Clock::now();
  const Reply r = infer(p, "cnn", image_request(0));
  const double waited = ms_since(start);
  EXPECT_EQ(r.status, 503) << r.text();
  EXPECT_NE(error_of(r).find("timed out"), std::string::npos) << r.text();
  EXPECT_GE(waited, 100.0);

  // A request's own parameters.timeout (Triton's, microseconds) may be shorter.
  json request = image_request(0);
  request["parameters"] = {{"timeout", 30000}};
  start = Clock::now();
  const Reply own = infer(p, "cnn", request);
  EXPECT_EQ(own.status, 503) << own.text();
  EXPECT_NE(error_of(own).find("30000"), std::string::npos) << own.text();
  EXPECT_GE(ms_since(start), 30.0);

  const auto m = scrape(p);
  EXPECT_EQ(metric(m, series("nv_inference_request_failure", "cnn", "1", "reason=\"REJECTED\"")), 2);
  EXPECT_EQ(metric(m, series("nv_inference_pending_request_count", "cnn", "1")), 0);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(ServeLifecycle, ABadConfigJsonStopsStartupWithAMessage) {
  const fs::path repo = scratch_dir() / "bad_repository";
  fs::create_directories(repo / "cnn" / "1");
  fs::copy_file(file("cnn"), repo / "cnn" / "1" / "model.safetensors", fs::copy_options::overwrite_existing);
  write_text(repo / "cnn" / "config.json", R"({"max_batch_size": 0})");
  const auto [code, output] = run_loom({"serve", "--model-repository", repo.string(), "--port", "0"}, seconds(60));
  EXPECT_EQ(code, 1) << output;
  EXPECT_NE(output.find("loom: error:"), std::string::npos) << output;
  EXPECT_NE(output.find("max_batch_size"), std::string::npos) << output;
}

}  // namespace

// gtest's main, and `test_serve_cli --make-checkpoints DIR` for ctest's
// fixture entry.
int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--make-checkpoints") {
    try {
      const Checkpoints c = make_checkpoints(argv[2]);
      std::cout << "checkpoints in " << c.repo.string() << "\n";
      return 0;
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
      return 1;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
