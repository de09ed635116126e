// loom::serve::Server in process, with a model of the test's own whose
// forward can be held at a gate: the batcher's merging, its bounds (a full
// queue, timeouts), load and unload under traffic, stop() draining, and the
// statistics and metrics; and OpenAI's /v1 routes over a tiny GPT's engine
// (streams, clients that hang up, stop() with streams in flight), which
// serve_under_asan runs under AddressSanitizer too.
// tests/serve/test_serve_cli.cpp and test_openai_cli.cpp run `loom serve`
// itself on real checkpoints.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include <unistd.h>

#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include "loom/loom.h"
#include "loom/serve.h"
#include "raw_connection.h"

namespace {

using namespace loom;
using json = nlohmann::json;
namespace fs = std::filesystem;
using std::chrono::milliseconds;

// x (n, 3) -> y = 2x + 1 and scores = x. A gate holds forward until opened;
// a row with x[0] == 666 makes forward throw.
class Affine : public serve::Model {
 public:
  std::vector<serve::TensorSpec> inputs() const override { return {{"x", "FP32", {-1, 3}}}; }
  std::vector<serve::TensorSpec> outputs() const override {
    return {{"y", "FP32", {-1, 3}}, {"scores", "FP32", {-1, 3}}};
  }
  Tensor prepare(const std::string& name, const Tensor& value) const override {
    LOOM_CHECK(value.is_floating_point(), "input '", name, "' takes FP32, not ", value.dtype());
    return value.to(kFloat32);
  }
  std::map<std::string, Tensor> forward(const std::map<std::string, Tensor>& batch) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++waiting_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return open_; });
      --waiting_;
    }
    const Tensor& x = batch.at("x");
    {
      std::lock_guard<std::mutex> lock(mu_);
      batches_.push_back(x.size(0));
    }
    LOOM_CHECK(x.select(1, 0).eq(666).sum().item<int64_t>() == 0, "Affine: 666 is not a number it likes");
    return {{"y", x * 2 + 1}, {"scores", x.clone()}};
  }
  std::vector<std::string> labels(const std::string&) const override { return {"a", "b", "c"}; }

  void set_open(bool open) {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = open;
    cv_.notify_all();
  }
  // Blocks until a forward is held at the closed gate.
  void wait_until_held() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return waiting_ > 0; });
  }
  std::vector<int64_t> batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int waiting_ = 0;
  std::vector<int64_t> batches_;
};

// A server running on a free loopback port until the object goes away.
class Running {
 public:
  explicit Running(serve::ServerOptions o) : server_(prepare(std::move(o))), thread_([this] { server_.run(); }) {}
  ~Running() { stop(); }
  void stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", server_.port());
    c.set_read_timeout(30, 0);
    return c;
  }
  int port() const { return server_.port(); }

 private:
  static serve::ServerOptions prepare(serve::ServerOptions o) {
    o.host = "127.0.0.1";
    o.port = 0;
    return o;
  }
  serve::Server server_;
  std::thread thread_;
};

// Options serving `model` as "affine" (version 1).
serve::ServerOptions affine_options(std::shared_ptr<Affine> model, serve::BatchingOptions batching = {}) {
  serve::ServerOptions o;
  o.models = {{"affine", "affine.safetensors"}};
  o.loader = [model](const std::string&) { return model; };
  o.batching = batching;
  o.http_threads = 16;
  return o;
}

json x_input(const std::vector<std::vector<float>>& rows) {
  return {{"name", "x"}, {"datatype", "FP32"}, {"shape", {static_cast<int64_t>(rows.size()), 3}}, {"data", rows}};
}

struct Answer {
  int status = 0;
  json body;
  std::string raw;
  std::string header_length;
};

Answer post(const Running& server, const std::string& path, const std::string& body,
            const httplib::Headers& headers = {}) {
  auto c = server.client();
  auto res = c.Post(path.c_str(), headers, body, "application/json");
  Answer a;
  if (!res) return a;
  a.status = res->status;
  a.raw = res->body;
  a.header_length = res->get_header_value("Inference-Header-Content-Length");
  if (a.header_length.empty()) a.body = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  return a;
}

Answer get(const Running& server, const std::string& path) {
  auto c = server.client();
  auto res = c.Get(path.c_str());
  Answer a;
  if (!res) return a;
  a.status = res->status;
  a.raw = res->body;
  a.body = json::parse(res->body, nullptr, false);
  return a;
}

Answer infer(const Running& server, const std::vector<std::vector<float>>& rows, json extra = json::object()) {
  json body = {{"inputs", {x_input(rows)}}};
  body.update(extra);
  return post(server, "/v2/models/affine/infer", body.dump());
}

std::vector<float> output_floats(const Answer& a, const std::string& name) {
  for (const auto& o : a.body["outputs"])
    if (o["name"] == name) return o["data"].get<std::vector<float>>();
  ADD_FAILURE() << "no output " << name << " in " << a.raw;
  return {};
}

// Polls GET /metrics until `sample` reads `value` (or 10 s pass).
bool wait_for_metric(const Running& server, const std::string& sample, int64_t value) {
  const std::string line = sample + " " + std::to_string(value) + "\n";
  for (int i = 0; i < 1000; ++i) {
    auto c = server.client();
    auto res = c.Get("/metrics");
    if (res && res->body.find(line) != std::string::npos) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

const std::string kPending = R"(nv_inference_pending_request_count{model="affine",version="1"})";

TEST(Serve, HealthAndMetadataFollowTheProtocol) {
  auto model = std::make_shared<Affine>();
  Running server(affine_options(model));
  EXPECT_EQ(get(server, "/v2/health/live").status, 200);
  EXPECT_EQ(get(server, "/v2/health/ready").status, 200);

  Answer meta = get(server, "/v2");
  ASSERT_EQ(meta.status, 200);
  EXPECT_EQ(meta.body["name"], "loom");
  EXPECT_TRUE(meta.body["version"].is_string());
  for (const char* ext : {"binary_tensor_data", "classification", "model_repository", "statistics"})
    EXPECT_NE(std::find(meta.body["extensions"].begin(), meta.body["extensions"].end(), ext),
              meta.body["extensions"].end())
        << ext;

  for (const char* path : {"/v2/models/affine", "/v2/models/affine/versions/1"}) {
    Answer m = get(server, path);
    ASSERT_EQ(m.status, 200) << path;
    EXPECT_EQ(m.body["name"], "affine");
    EXPECT_EQ(m.body["versions"], json({"1"}));
    EXPECT_EQ(m.body["inputs"], json::parse(R"([{"name":"x","datatype":"FP32","shape":[-1,3]}])"));
    EXPECT_EQ(m.body["outputs"][0], json::parse(R"({"name":"y","datatype":"FP32","shape":[-1,3]})"));
  }
  EXPECT_EQ(get(server, "/v2/models/affine/ready").status, 200);
  EXPECT_EQ(get(server, "/v2/models/affine/versions/1/ready").status, 200);
  Answer config = get(server, "/v2/models/affine/config");
  EXPECT_EQ(config.body["max_batch_size"], 32);
  EXPECT_EQ(config.body["input"][0]["dims"], json({3}));

  // Unknown things: 4xx with {"error": ...} naming them.
  for (const char* path : {"/v2/models/nope", "/v2/models/affine/versions/2", "/v2/models/affine/versions/x/ready",
                           "/v3/whatever"}) {
    Answer a = get(server, path);
    EXPECT_EQ(a.status, 404) << path;
    ASSERT_TRUE(a.body.is_object()) << path << ": " << a.raw;
    EXPECT_TRUE(a.body["error"].is_string()) << path;
  }
  EXPECT_NE(get(server, "/v2/models/nope").body["error"].get<std::string>().find("nope"), std::string::npos);
}

TEST(Serve, InferAnswersAsTheSpecificationShows) {
  auto model = std::make_shared<Affine>();
  Running server(affine_options(model));
  Answer a = infer(server, {{1, 2, 3}, {4, 5, 6}}, {{"id", "42"}});
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.body["model_name"], "affine");
  EXPECT_EQ(a.body["model_version"], "1");
  EXPECT_EQ(a.body["id"], "42");
  ASSERT_EQ(a.body["outputs"].size(), 2u);
  EXPECT_EQ(a.body["outputs"][0]["name"], "y");
  EXPECT_EQ(a.body["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(a.body["outputs"][0]["shape"], json({2, 3}));
  EXPECT_EQ(output_floats(a, "y"), (std::vector<float>{3, 5, 7, 9, 11, 13}));

  // Requested outputs, one as binary data (the extension).
  json outputs = json::parse(R"([{"name":"y","parameters":{"binary_data":true}}])");
  Answer b = infer(server, {{1, 2, 3}}, {{"outputs", outputs}});
  ASSERT_EQ(b.status, 200) << b.raw;
  ASSERT_FALSE(b.header_length.empty());
  const size_t n = std::stoul(b.header_length);
  json header = json::parse(b.raw.substr(0, n));
  ASSERT_EQ(header["outputs"].size(), 1u);
  EXPECT_EQ(header["outputs"][0]["parameters"]["binary_data_size"], 12);
  ASSERT_EQ(b.raw.size(), n + 12);
  float y[3];
  std::memcpy(y, b.raw.data() + n, sizeof y);
  EXPECT_EQ(std::vector<float>(y, y + 3), (std::vector<float>{3, 5, 7}));

  // A binary input gives the JSON input's answer.
  const float x[3] = {1, 2, 3};
  json bin_header = {{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {1, 3}},
                                  {"parameters", {{"binary_data_size", 12}}}}}}};
  std::string body = bin_header.dump();
  const std::string header_length = std::to_string(body.size());
  body.append(reinterpret_cast<const char*>(x), sizeof x);
  Answer c = post(server, "/v2/models/affine/infer", body, {{"Inference-Header-Content-Length", header_length}});
  ASSERT_EQ(c.status, 200) << c.raw;
  EXPECT_EQ(output_floats(c, "y"), (std::vector<float>{3, 5, 7}));

  // Classification: the top 2 of the scores, with the model's labels.
  json cls = json::parse(R"([{"name":"scores","parameters":{"classification":2}}])");
  Answer d = infer(server, {{0.5f, 2, 1}}, {{"outputs", cls}});
  ASSERT_EQ(d.status, 200) << d.raw;
  EXPECT_EQ(d.body["outputs"][0]["datatype"], "BYTES");
  EXPECT_EQ(d.body["outputs"][0]["shape"], json({1, 2}));
  const auto labels = d.body["outputs"][0]["data"].get<std::vector<std::string>>();
  ASSERT_EQ(labels.size(), 2u);
  EXPECT_EQ(labels[0].substr(labels[0].find(':')), ":1:b");
  EXPECT_EQ(labels[1].substr(labels[1].find(':')), ":2:c");
}

TEST(Serve, BadRequestsAreAnswered4xxWithTheirReason) {
  auto model = std::make_shared<Affine>();
  serve::ServerOptions o = affine_options(model, {.max_batch_size = 4});
  o.max_body_bytes = 1 << 16;
  Running server(o);
  struct Case {
    std::string body, expect;
  };
  const std::vector<Case> cases = {
      {"{not json", "JSON"},
      {R"({"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]})", "shape"},
      {R"({"inputs":[{"name":"z","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]})", "no input 'z'"},
      {R"({"inputs":[{"name":"x","datatype":"BYTES","shape":[1,3],"data":["a","b","c"]}]})", "BYTES"},
      {R"({"inputs":[{"name":"x","datatype":"INT64","shape":[1,3],"data":[1,2,3]}]})", "INT64"},
      {R"({"inputs":[{"name":"x","datatype":"FP32","shape":[5,3],"data":[1,2,3,1,2,3,1,2,3,1,2,3,1,2,3]}]})",
       "max_batch_size"},
      {R"({"inputs":[{"name":"x","datatype":"FP32","shape":[0,3],"data":[]}]})", "batch"},
      {R"({"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}],"outputs":[{"name":"w"}]})",
       "no output 'w'"},
  };
  for (const Case& c : cases) {
    Answer a = post(server, "/v2/models/affine/infer", c.body);
    EXPECT_EQ(a.status, 400) << c.body << " -> " << a.raw;
    ASSERT_TRUE(a.body.is_object()) << a.raw;
    EXPECT_NE(a.body["error"].get<std::string>().find(c.expect), std::string::npos) << a.body["error"];
  }
  Answer big = post(server, "/v2/models/affine/infer", std::string(1 << 17, ' '));
  EXPECT_EQ(big.status, 413);
  ASSERT_TRUE(big.body.is_object()) << big.raw;
  EXPECT_NE(big.body["error"].get<std::string>().find("--max-body-mb"), std::string::npos);
  // Nothing of that touched the model, and it still answers.
  EXPECT_TRUE(model->batches().empty());
  EXPECT_EQ(infer(server, {{1, 2, 3}}).status, 200);
}

TEST(Serve, ConcurrentRequestsShareOneForwardAndGetTheirOwnRows) {
  auto model = std::make_shared<Affine>();
  Running server(affine_options(model, {.max_batch_size = 16}));
  model->set_open(false);
  std::vector<std::future<Answer>> answers;
  answers.push_back(std::async(std::launch::async, [&] { return infer(server, {{0, 0, 0}}); }));
  model->wait_until_held();  // the first request runs alone; the next ones queue behind it
  for (int i = 1; i < 8; ++i)
    answers.push_back(std::async(std::launch::async, [&, i] {
      return infer(server, {{static_cast<float>(i), static_cast<float>(10 * i), static_cast<float>(100 * i)}});
    }));
  ASSERT_TRUE(wait_for_metric(server, kPending, 7));
  model->set_open(true);
  for (int i = 0; i < 8; ++i) {
    Answer a = answers[static_cast<size_t>(i)].get();
    ASSERT_EQ(a.status, 200) << a.raw;
    const float v = static_cast<float>(i);
    EXPECT_EQ(output_floats(a, "y"), (std::vector<float>{2 * v + 1, 20 * v + 1, 200 * v + 1})) << i;
  }
  EXPECT_EQ(model->batches(), (std::vector<int64_t>{1, 7}));

  Answer stats = get(server, "/v2/models/affine/stats");
  ASSERT_EQ(stats.status, 200);
  const json& s = stats.body["model_stats"][0];
  EXPECT_EQ(s["name"], "affine");
  EXPECT_EQ(s["version"], "1");
  EXPECT_EQ(s["inference_count"], 8);
  EXPECT_EQ(s["execution_count"], 2);
  EXPECT_EQ(s["inference_stats"]["success"]["count"], 8);
  EXPECT_EQ(s["batch_stats"].size(), 2u);
  EXPECT_EQ(s["batch_stats"][1]["batch_size"], 7);
  auto c = server.client();
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  for (const char* line : {R"(nv_inference_request_success{model="affine",version="1"} 8)",
                           R"(nv_inference_count{model="affine",version="1"} 8)",
                           R"(nv_inference_exec_count{model="affine",version="1"} 2)",
                           R"(nv_inference_batch_size_bucket{model="affine",version="1",le="4"} 1)",
                           R"(nv_inference_batch_size_bucket{model="affine",version="1",le="8"} 2)",
                           "# TYPE nv_inference_batch_size histogram"})
    EXPECT_NE(metrics->body.find(line), std::string::npos) << line << "\n" << metrics->body;
}

TEST(Serve, TheQueueDelayWaitsForAFullerBatch) {
  auto model = std::make_shared<Affine>();
  Running server(affine_options(model, {.max_batch_size = 4, .max_queue_delay_us = 200'000}));
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(infer(server, {{1, 2, 3}}).status, 200);
  // Alone, a request waits out the delay for company that never comes.
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(200));
  // A full batch goes at once: one request of 4 rows.
  ASSERT_EQ(infer(server, {{1, 1, 1}, {2, 2, 2}, {3, 3, 3}, {4, 4, 4}}).status, 200);
  EXPECT_EQ(model->batches(), (std::vector<int64_t>{1, 4}));
}

TEST(Serve, AFullQueueAnswers503AtOnce) {
  auto model = std::make_shared<Affine>();
  Running server(affine_options(model, {.max_batch_size = 1, .max_queue_size = 2}));
  model->set_open(false);
  auto running = std::async(std::launch::async, [&] { return infer(server, {{1, 1, 1}}); });
  model->wait_until_held();
  auto q1 = std::async(std::launch::async, [&] { return infer(server, {{2, 2, 2}}); });
  auto q2 = std::async(std::launch::async, [&] { return infer(server, {{3, 3, 3}}); });
  ASSERT_TRUE(wait_for_metric(server, kPending, 2));
  Answer refused = infer(server, {{4, 4, 4}});  // answered while the gate is still closed
  EXPECT_EQ(refused.status, 503);
  EXPECT_NE(refused.body["error"].get<std::string>().find("queue is full"), std::string::npos) << refused.raw;
  model->set_open(true);
  EXPECT_EQ(running.get().status, 200);
  EXPECT_EQ(q1.get().status, 200);
  EXPECT_EQ(q2.get().status, 200);
  EXPECT_EQ(model->batches().size(), 3u);
  EXPECT_TRUE(wait_for_metric(
      server, R"(nv_inference_request_failure{model="affine",version="1",reason="REJECTED"})", 1));
}

TEST(Serve, ARequestPastItsTimeoutLeavesTheQueueWithAnError) {
  auto model = std::make_shared<Affine>();
  Running server(affine_options(model, {.max_batch_size = 1, .timeout_us = 100'000}));
  model->set_open(false);
  auto running = std::async(std::launch::async, [&] { return infer(server, {{1, 1, 1}}); });
  model->wait_until_held();
  // Queued behind the held batch: dropped after 100 ms, answered at once.
  Answer late = infer(server, {{2, 2, 2}});
  EXPECT_EQ(late.status, 503);
  EXPECT_NE(late.body["error"].get<std::string>().find("timed out"), std::string::npos) << late.raw;
  // The request's own parameters.timeout (microseconds, as Triton) can be shorter.
  Answer own = infer(server, {{3, 3, 3}}, {{"parameters", {{"timeout", 20'000}}}});
  EXPECT_EQ(own.status, 503);
  EXPECT_NE(own.body["error"].get<std::string>().find("20000"), std::string::npos) << own.raw;
  model->set_open(true);
  // The running request was past the queue: it finishes; the dropped ones never ran.
  EXPECT_EQ(running.get().status, 200);
  EXPECT_EQ(model->batches(), (std::vector<int64_t>{1}));
}

TEST(Serve, AFailingForwardFailsItsBatchOnly) {
  auto model = std::make_shared<Affine>();
  Running server(affine_options(model));
  Answer bad = infer(server, {{666, 0, 0}});
  EXPECT_EQ(bad.status, 500);
  EXPECT_NE(bad.body["error"].get<std::string>().find("666"), std::string::npos) << bad.raw;
  EXPECT_EQ(infer(server, {{1, 2, 3}}).status, 200);
}

// A Triton-layout repository of the test's own: every model.safetensors is a
// few bytes of text: the test's loader reads only the path, never the file
// (paths with "broken" in them fail to load).
class Repository {
 public:
  Repository() : root_(fs::temp_directory_path() / ("loom_serve_repo_" + std::to_string(::getpid()))) {
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  ~Repository() { fs::remove_all(root_); }
  void add(const std::string& model, int version, const std::string& config = "") {
    const fs::path dir = root_ / model / std::to_string(version);
    fs::create_directories(dir);
    std::ofstream(dir / "model.safetensors") << "read by path only";
    if (!config.empty()) std::ofstream(root_ / model / "config.json") << config;
  }
  std::string path() const { return root_.string(); }

 private:
  fs::path root_;
};

serve::ServerOptions repository_options(const Repository& repo, std::atomic<int>& loads) {
  serve::ServerOptions o;
  o.model_repository = repo.path();
  o.loader = [&loads](const std::string& file) -> std::shared_ptr<serve::Model> {
    LOOM_CHECK(file.find("broken") == std::string::npos, "cannot read ", file);
    ++loads;
    return std::make_shared<Affine>();
  };
  o.http_threads = 16;
  return o;
}

TEST(Serve, TheRepositoryLoadsUnloadsAndIndexesModels) {
  Repository repo;
  repo.add("a", 1, R"({"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 0}})");
  repo.add("a", 2);
  repo.add("b", 1);
  std::atomic<int> loads{0};
  Running server(repository_options(repo, loads));
  EXPECT_EQ(loads, 3);

  auto index = [&](const std::string& body = "") { return post(server, "/v2/repository/index", body); };
  Answer all = index();
  ASSERT_EQ(all.status, 200) << all.raw;
  EXPECT_EQ(all.body, json::parse(R"([{"name":"a","version":"1","state":"READY"},
                                      {"name":"a","version":"2","state":"READY"},
                                      {"name":"b","version":"1","state":"READY"}])"));
  EXPECT_EQ(get(server, "/v2/models/a").body["versions"], json({"1", "2"}));
  EXPECT_EQ(get(server, "/v2/models/a/versions/1/config").body["max_batch_size"], 4);
  Answer a1 = post(server, "/v2/models/a/versions/1/infer", json{{"inputs", {x_input({{1, 2, 3}})}}}.dump());
  EXPECT_EQ(a1.status, 200) << a1.raw;
  EXPECT_EQ(a1.body["model_version"], "1");
  EXPECT_EQ(post(server, "/v2/models/a/infer", json{{"inputs", {x_input({{1, 2, 3}})}}}.dump()).body["model_version"],
            "2");

  EXPECT_EQ(post(server, "/v2/repository/models/b/unload", "").status, 200);
  EXPECT_EQ(get(server, "/v2/models/b/ready").status, 404);
  EXPECT_EQ(post(server, "/v2/models/b/infer", json{{"inputs", {x_input({{1, 2, 3}})}}}.dump()).status, 404);
  Answer after = index();
  EXPECT_EQ(after.body.back(), json::parse(R"({"name":"b","state":"UNAVAILABLE","reason":"unloaded"})"));
  EXPECT_EQ(index(R"({"ready": true})").body.size(), 2u);
  EXPECT_EQ(post(server, "/v2/repository/models/b/load", "").status, 200);
  EXPECT_EQ(get(server, "/v2/models/b/ready").status, 200);

  // A model added to the repository after the start, and a broken one.
  repo.add("c", 3);
  EXPECT_EQ(post(server, "/v2/repository/models/c/load", "").status, 200);
  EXPECT_EQ(get(server, "/v2/models/c").body["versions"], json({"3"}));
  repo.add("broken", 1);
  Answer broken = post(server, "/v2/repository/models/broken/load", "");
  EXPECT_EQ(broken.status, 400);
  EXPECT_NE(broken.body["error"].get<std::string>().find("cannot read"), std::string::npos) << broken.raw;
  Answer listed = index();
  bool found = false;
  for (const auto& e : listed.body)
    if (e["name"] == "broken") {
      found = true;
      EXPECT_EQ(e["state"], "UNAVAILABLE");
      EXPECT_NE(e["reason"].get<std::string>().find("cannot read"), std::string::npos);
    }
  EXPECT_TRUE(found) << listed.raw;
  EXPECT_EQ(post(server, "/v2/repository/models/nope/load", "").status, 404);
  EXPECT_EQ(post(server, "/v2/repository/index", "{\"ready\": 3}").status, 400);
}

TEST(Serve, ModelsLoadAndUnloadWhileOthersServe) {
  Repository repo;
  repo.add("a", 1);
  repo.add("b", 1);
  std::atomic<int> loads{0};
  Running server(repository_options(repo, loads));
  std::atomic<bool> done{false};
  std::atomic<int> served{0}, failed{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t)
    clients.emplace_back([&] {
      const std::string body = json{{"inputs", {x_input({{1, 2, 3}})}}}.dump();
      while (!done) {
        Answer a = post(server, "/v2/models/a/infer", body);
        (a.status == 200 && a.body["outputs"][0]["data"] == json({3, 5, 7}) ? served : failed)++;
      }
    });
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(post(server, "/v2/repository/models/b/unload", "").status, 200);
    EXPECT_EQ(post(server, "/v2/repository/models/b/load", "").status, 200);
    EXPECT_EQ(post(server, "/v2/repository/models/a/load", "").status, 200);  // a reload under traffic
  }
  done = true;
  for (auto& t : clients) t.join();
  EXPECT_GT(served, 0);
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(post(server, "/v2/models/b/infer", json{{"inputs", {x_input({{1, 2, 3}})}}}.dump()).status, 200);
}

TEST(Serve, StopAnswersTheRequestsInFlight) {
  auto model = std::make_shared<Affine>();
  auto server = std::make_unique<Running>(affine_options(model, {.max_batch_size = 1}));
  model->set_open(false);
  std::vector<std::future<Answer>> answers;
  for (int i = 0; i < 3; ++i)
    answers.push_back(std::async(std::launch::async, [&, i] {
      return infer(*server, {{static_cast<float>(i), 0, 0}});
    }));
  model->wait_until_held();
  ASSERT_TRUE(wait_for_metric(*server, kPending, 2));
  std::thread stopper([&] { server->stop(); });
  std::this_thread::sleep_for(milliseconds(100));
  model->set_open(true);
  stopper.join();
  for (auto& a : answers) EXPECT_EQ(a.get().status, 200);
  EXPECT_EQ(model->batches().size(), 3u);
}

TEST(Serve, ABadModelConfigNamesTheFileAndField) {
  Repository repo;
  repo.add("a", 1, R"({"max_batch_size": 0})");
  std::atomic<int> loads{0};
  serve::ServerOptions o = repository_options(repo, loads);
  o.port = 0;
  try {
    serve::Server server(o);
    FAIL() << "a max_batch_size of 0 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("max_batch_size"), std::string::npos) << e.what();
  }
}

// ---- OpenAI's API (/v1) ----

// A language model served at /v1 only: a GPT with random weights over the
// characters of kAlphabet, its engine stepping on its own thread.
class Writer : public serve::Model, public serve::TextGenerator {
 public:
  static constexpr const char* kAlphabet = "\n !,.:?ABSUabcdefghijklmnopqrstuvwxyz";
  explicit Writer(int64_t context, int64_t slots = 4)
      : tokenizer_(data::CharTokenizer::from_corpus(kAlphabet)) {
    manual_seed(3);
    models::GPTConfig cfg;
    cfg.n_layer = 1;
    cfg.n_embd = 32;
    cfg.n_head = 2;
    cfg.block_size = context;
    cfg.vocab_size = tokenizer_.vocab_size();
    engine_ = std::make_unique<serve::LlmEngine>(models::GPT(cfg),
                                                 serve::EngineOptions{.slots = slots, .kv_cache_mb = 4});
    engine_->start();
  }
  std::vector<serve::TensorSpec> inputs() const override { return {}; }
  std::vector<serve::TensorSpec> outputs() const override { return {}; }
  Tensor prepare(const std::string&, const Tensor&) const override { LOOM_ERROR("Writer: /v1 only"); }
  std::map<std::string, Tensor> forward(const std::map<std::string, Tensor>&) override {
    LOOM_ERROR("Writer: /v1 only");
  }

  serve::TextGenerator* text_generator() override { return this; }
  std::vector<int64_t> encode(const std::string& text) const override { return tokenizer_.encode(text); }
  std::string decode(const std::vector<int64_t>& tokens) const override { return tokenizer_.decode(tokens); }
  serve::LlmEngine& engine() override { return *engine_; }

 private:
  data::CharTokenizer tokenizer_;
  std::unique_ptr<serve::LlmEngine> engine_;
};

serve::ServerOptions writer_options(std::shared_ptr<Writer> model) {
  serve::ServerOptions o;
  o.models = {{"writer", "writer.safetensors"}};
  o.loader = [model](const std::string&) { return model; };
  o.http_threads = 32;
  return o;
}

std::string completion_body(const std::string& prompt, int64_t max_tokens, bool stream) {
  return json{{"model", "writer"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
              {"stream", stream}}
      .dump();
}

// The text of a stream's chunks (choice 0), and whether [DONE] ended it.
std::pair<std::string, bool> stream_text(const std::string& body) {
  std::string text;
  bool done = false;
  for (size_t at = 0; at < body.size();) {
    size_t end = body.find("\n\n", at);
    if (end == std::string::npos) end = body.size();
    const std::string event = body.substr(at, end - at);
    at = end + 2;
    if (event == "data: [DONE]") {
      done = true;
    } else if (event.rfind("data: ", 0) == 0) {
      const json chunk = json::parse(event.substr(6));
      for (const json& c : chunk["choices"]) text += c["text"].get<std::string>();
    }
  }
  return {text, done};
}

// Polls the engine until no request runs or waits (or 20 s pass).
bool engine_idle(serve::LlmEngine& engine) {
  for (int i = 0; i < 2000; ++i) {
    const serve::EngineStats s = engine.stats();
    if (s.running == 0 && s.waiting == 0) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

TEST(ServeV1, CompletionsAndTheirStreamsAgree) {
  auto writer = std::make_shared<Writer>(64);
  Running server(writer_options(writer));
  const Answer models = get(server, "/v1/models");
  ASSERT_EQ(models.status, 200) << models.raw;
  EXPECT_EQ(models.body["data"][0]["id"], "writer");
  EXPECT_EQ(get(server, "/v2/models/writer").status, 200);  // the KServe side knows it too
  const Answer whole = post(server, "/v1/completions", completion_body("the ", 20, false));
  ASSERT_EQ(whole.status, 200) << whole.raw;
  const std::string text = whole.body["choices"][0]["text"];
  EXPECT_EQ(text.size(), 20u);
  const Answer streamed = post(server, "/v1/completions", completion_body("the ", 20, true));
  ASSERT_EQ(streamed.status, 200) << streamed.raw;
  EXPECT_EQ(stream_text(streamed.raw), std::make_pair(text, true));
  const Answer bad = post(server, "/v1/completions", R"({"model": "writer", "prompt": "#"})");
  EXPECT_EQ(bad.status, 400) << bad.raw;
  EXPECT_EQ(bad.body["error"]["param"], "prompt") << bad.raw;
  ASSERT_TRUE(engine_idle(writer->engine()));  // its counters follow the answers by a moment
  for (int i = 0; i < 2000 && writer->engine().stats().finished < 2; ++i) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_EQ(writer->engine().stats().finished, 2);
}

TEST(ServeV1, ClientsThatHangUpAreCancelledWhileOthersFinish) {
  auto writer = std::make_shared<Writer>(1024, 8);
  Running server(writer_options(writer));
  constexpr int kClients = 12;
  std::vector<std::thread> clients;
  std::atomic<int> finished{0};
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      const bool stream = i % 2 == 0;
      if (i % 3 == 0) {
        // Gone at once, or after the first chunk of its stream.
        serve_test::RawConnection conn(server.port());
        conn.send_post("/v1/completions", completion_body("a", 1000, stream));
        if (stream) conn.read_until("data: {", std::chrono::seconds(30));
        return;
      }
      const Answer a = post(server, "/v1/completions", completion_body("b", 30, stream));
      if (a.status == 200 && (!stream || stream_text(a.raw).second)) ++finished;
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(finished, kClients - 4);
  ASSERT_TRUE(engine_idle(writer->engine()));
  for (int i = 0; i < 2000 && writer->engine().stats().finished + writer->engine().stats().cancelled < kClients; ++i)
    std::this_thread::sleep_for(milliseconds(10));
  const serve::EngineStats s = writer->engine().stats();
  EXPECT_EQ(s.cancelled, 4);
  EXPECT_EQ(s.finished, kClients - 4);
  EXPECT_EQ(s.kv_blocks_used, 0);
}

TEST(ServeV1, StopLetsTheStreamsInFlightFinish) {
  auto writer = std::make_shared<Writer>(512);
  auto server = std::make_unique<Running>(writer_options(writer));
  std::vector<std::future<Answer>> answers;
  for (int i = 0; i < 3; ++i)
    answers.push_back(std::async(std::launch::async, [&] {
      return post(*server, "/v1/completions", completion_body("c", 400, true));
    }));
  for (int i = 0; i < 1000 && writer->engine().stats().running + writer->engine().stats().finished < 3; ++i)
    std::this_thread::sleep_for(milliseconds(1));
  server->stop();
  for (auto& a : answers) {
    const Answer answer = a.get();
    EXPECT_EQ(answer.status, 200);
    const auto [text, done] = stream_text(answer.raw);
    EXPECT_TRUE(done) << answer.raw.substr(0, 500);
    EXPECT_EQ(text.size(), 400u);
  }
}

}  // namespace
