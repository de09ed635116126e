// OpenAI's API through `loom serve` as a process (LOOM_CLI_PATH) on an
// ephemeral loopback port, serving GPT checkpoints the real `loom train`
// wrote: /v1/models, completions and chat completions equal to `loom
// generate`, streams (read with curl and with the official `openai` npm
// client where Node.js is installed) equal to the answers they stream,
// concurrent requests equal to requests served alone, OpenAI's error
// answers, timeouts, clients that hang up, and the engine's metrics.
// tests/serve/test_openai.cpp checks the same layer without HTTP.
//
// Timing: as in test_serve_cli.cpp, nothing is asserted to be fast. The
// timeout and hang-up tests use a GPT with a context of 1024 whose full
// generation takes hundreds of milliseconds, and a timeout of 10 ms.
#include <algorithm>
#include <cstdint>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include "cli_harness.h"
#include "raw_connection.h"

#ifndef LOOM_OPENAI_CLIENT_DIR
#error "LOOM_OPENAI_CLIENT_DIR must name tests/serve/openai_client (tests/serve/CMakeLists.txt sets it)"
#endif

namespace {

using namespace loom::serve_test;  // ChildProcess, ServerProcess, scratch_dir, ... (cli_harness.h)
using json = nlohmann::json;

// ---- the checkpoints ----

// gpt: a small char GPT trained a little (context 96), so that greedy text
// depends on the prompt. long: a GPT with a context of 1024, whose full
// generation takes a while (timeouts, hang-ups). draft: a smaller GPT with
// gpt's tokenizer; byte_draft: one with another tokenizer. lstm: served at
// /v2 only.
const char* const kModels[] = {"gpt", "long", "draft", "byte_draft", "lstm"};

struct Checkpoints {
  std::map<std::string, fs::path> file;
};

Checkpoints checkpoints_in(const fs::path& dir) {
  Checkpoints c;
  for (const char* name : kModels) c.file[name] = dir / (std::string(name) + ".safetensors");
  return c;
}

Checkpoints make_checkpoints(const fs::path& dir) {
  fs::create_directories(dir);
  Checkpoints c = checkpoints_in(dir);
  const std::vector<std::string> common = {"--eval-batches", "1", "--threads", "1"};
  const std::map<std::string, std::vector<std::string>> flags = {
      {"gpt",
       {"--model", "gpt", "--layers", "1", "--d-model", "32", "--heads", "2", "--context", "96", "--batch-size", "8",
        "--max-steps", "400", "--eval-every", "400"}},
      {"long",
       {"--model", "gpt", "--layers", "2", "--d-model", "64", "--heads", "2", "--context", "1024", "--batch-size", "1",
        "--max-steps", "2", "--eval-every", "2"}},
      {"draft",
       {"--model", "gpt", "--layers", "1", "--d-model", "16", "--heads", "1", "--context", "96", "--batch-size", "8",
        "--max-steps", "100", "--eval-every", "100"}},
      {"byte_draft",
       {"--model", "gpt", "--tokenizer", "byte", "--layers", "1", "--d-model", "16", "--heads", "1", "--context", "96",
        "--batch-size", "2", "--max-steps", "2", "--eval-every", "2"}},
      {"lstm",
       {"--model", "lstm", "--layers", "1", "--d-model", "32", "--context", "16", "--batch-size", "4", "--max-steps",
        "2", "--eval-every", "2"}},
  };
  std::vector<std::pair<std::string, std::unique_ptr<ChildProcess>>> runs;
  for (const auto& [name, own] : flags) {
    std::vector<std::string> args = {kLoom, "train", "--out", c.file[name].string()};
    args.insert(args.end(), own.begin(), own.end());
    args.insert(args.end(), common.begin(), common.end());
    runs.emplace_back(name, std::make_unique<ChildProcess>(args, next_log_file("train-" + name)));
  }
  for (auto& [name, child] : runs) {
    const std::optional<int> code = child->wait_exit(seconds(300));
    if (code != 0 || !fs::exists(c.file[name]))
      throw std::runtime_error("loom train (" + name + ") failed (exit " +
                               (code ? std::to_string(*code) : "none: timed out") + "):\n" + child->log());
  }
  return c;
}

const Checkpoints& checkpoints() {
  return suite_checkpoints<Checkpoints>("LOOM_OPENAI_CLI_CHECKPOINTS", "test_openai_cli", checkpoints_in,
                                        make_checkpoints, scratch_dir() / "checkpoints");
}

std::string file(const std::string& model) { return checkpoints().file.at(model).string(); }

// ---- HTTP ----

struct Reply {
  int status = -1;  // -1: no answer
  std::string body;
  json body_json() const { return json::parse(body); }
  std::string text() const { return std::to_string(status) + " " + body.substr(0, std::min<size_t>(body.size(), 600)); }
};

Reply to_reply(const httplib::Result& result) {
  Reply r;
  if (!result) {
    r.body = "no answer: " + httplib::to_string(result.error());
    return r;
  }
  r.status = result->status;
  r.body = result->body;
  return r;
}

httplib::Client client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(10);
  c.set_read_timeout(60);
  c.set_write_timeout(60);
  return c;
}

Reply get(int port, const std::string& path) { return to_reply(client(port).Get(path)); }
Reply post(int port, const std::string& path, const std::string& body) {
  return to_reply(client(port).Post(path, body, "application/json"));
}
Reply post_json(int port, const std::string& path, const json& body) { return post(port, path, body.dump()); }

// The `data:` payloads of a Server-Sent Events body, in order.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < body.size()) {
    size_t end = body.find("\n\n", at);
    if (end == std::string::npos) end = body.size();
    const std::string event = body.substr(at, end - at);
    if (event.rfind("data: ", 0) == 0) out.push_back(event.substr(6));
    at = end + 2;
  }
  return out;
}

// A program on the PATH; "" when none.
std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  for (size_t at = 0; at <= dirs.size();) {
    size_t end = dirs.find(':', at);
    if (end == std::string::npos) end = dirs.size();
    const fs::path candidate = fs::path(dirs.substr(at, end - at)) / name;
    if (end > at && ::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    at = end + 1;
  }
  return "";
}

// `curl -sSN` POSTing `body` (from the main thread: ChildProcess); its output.
std::string curl_post(int port, const std::string& path, const json& body) {
  const fs::path request = next_log_file("curl-body");
  write_text(request, body.dump());
  const std::vector<std::string> args = {find_program("curl"),
                                         "-sSN",
                                         "--max-time",
                                         "60",
                                         "-H",
                                         "Content-Type: application/json",
                                         "--data-binary",
                                         "@" + request.string(),
                                         "http://127.0.0.1:" + std::to_string(port) + path};
  ChildProcess curl(args, next_log_file("curl"));
  const std::optional<int> code = curl.wait_exit(seconds(70));
  if (code != 0)
    throw std::runtime_error("curl failed (exit " + std::to_string(code.value_or(-1)) + "): " + curl.log());
  return curl.log();
}
bool have_curl() { return !find_program("curl").empty(); }

// A completion request, greedy unless `extra` says otherwise.
json completion(const std::string& model, const json& prompt, int64_t max_tokens, const json& extra = json::object()) {
  json body = {{"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
  body.update(extra);
  return body;
}

json chat_request(const std::string& model, const json& messages, int64_t max_tokens,
                  const json& extra = json::object()) {
  json body = {{"model", model}, {"messages", messages}, {"max_tokens", max_tokens}, {"temperature", 0}};
  body.update(extra);
  return body;
}

// The text of a 200 completion's choice `i`.
std::string text_of(const Reply& r, size_t i = 0) {
  if (r.status != 200) throw std::runtime_error("not a 200 answer: " + r.text());
  const json body = r.body_json();
  const json& choice = body.at("choices").at(i);
  return choice.contains("message") ? choice["message"]["content"].get<std::string>()
                                    : choice.at("text").get<std::string>();
}

// The concatenated text of a stream's chunks for choice `index`, checking
// the stream's shape: JSON chunks, then "[DONE]" last.
struct Streamed {
  std::map<int64_t, std::string> text;
  std::map<int64_t, std::string> finish;
  json usage;         // the usage chunk's, or null
  json error;         // an error event's, or null
  bool done = false;  // ended with [DONE]
  std::string role;   // chat: the first delta's role
};

Streamed read_stream(const std::string& body) {
  Streamed s;
  const std::vector<std::string> events = sse_data(body);
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i] == "[DONE]") {
      s.done = i + 1 == events.size();
      continue;
    }
    const json chunk = json::parse(events[i]);
    if (chunk.contains("error")) {
      s.error = chunk["error"];
      continue;
    }
    if (chunk.contains("usage") && !chunk["usage"].is_null()) s.usage = chunk["usage"];
    for (const json& choice : chunk.at("choices")) {
      const int64_t index = choice.at("index");
      if (choice.contains("delta")) {
        const json& delta = choice["delta"];
        if (delta.contains("role")) s.role = delta["role"];
        if (delta.contains("content")) s.text[index] += delta["content"].get<std::string>();
      } else {
        s.text[index] += choice.at("text").get<std::string>();
      }
      if (!choice.at("finish_reason").is_null()) s.finish[index] = choice["finish_reason"];
    }
  }
  return s;
}

// ---- metrics ----

std::map<std::string, double> scrape(int port) {
  const Reply r = get(port, "/metrics");
  if (r.status != 200) throw std::runtime_error("GET /metrics: " + r.text());
  return parse_metrics(r.body);
}

std::string series(const std::string& name, const std::string& model, const std::string& extra = "") {
  return name + "{model=\"" + model + "\",version=\"1\"" + (extra.empty() ? "" : "," + extra) + "}";
}

double metric(int port, const std::string& sample) {
  const auto m = scrape(port);
  auto it = m.find(sample);
  return it == m.end() ? -1 : it->second;
}

// ---- the fixture ----

// Note [OpenAI test servers]
// One `loom serve` of gpt, long and lstm for every test that leaves it as it
// found it, started by the first test that asks and stopped (exit status 0
// asserted) when the suite ends; tests that need other flags (slots, a
// timeout, a draft) start servers of their own.
class OpenAICli : public SharedServerTest<OpenAICli> {
 public:
  static void prepare() { checkpoints(); }
  static std::vector<std::string> main_flags() {
    return {"--model", "gpt=" + file("gpt"), "--model", "long=" + file("long"),
            "--model", "lstm=" + file("lstm"), "--max-body-mb", "1"};
  }
};

using OpenAIModels = OpenAICli;
using OpenAICompletions = OpenAICli;
using OpenAIStreams = OpenAICli;
using OpenAIErrors = OpenAICli;
using OpenAILifecycle = OpenAICli;

const std::vector<std::string> kPrompts = {"Hello", "The cat", "A man walks into", "Why?", "Q: ", "\n", "Life is"};

// ===================================================================
// Models
// ===================================================================

TEST_F(OpenAIModels, ListsTheGptsOnly) {
  const Reply r = get(port(), "/v1/models");
  ASSERT_EQ(r.status, 200) << r.text();
  const json body = r.body_json();
  EXPECT_EQ(body["object"], "list");
  std::set<std::string> ids;
  for (const json& m : body["data"]) {
    ids.insert(m["id"].get<std::string>());
    EXPECT_EQ(m["object"], "model");
    EXPECT_EQ(m["owned_by"], "loom");
    EXPECT_GT(m["created"].get<int64_t>(), 1600000000);
  }
  EXPECT_EQ(ids, (std::set<std::string>{"gpt", "long"}));  // the LSTM is served at /v2 only
  const Reply one = get(port(), "/v1/models/gpt");
  ASSERT_EQ(one.status, 200) << one.text();
  EXPECT_EQ(one.body_json()["id"], "gpt");
  for (const std::string name : {"lstm", "nope"}) {
    const Reply missing = get(port(), "/v1/models/" + name);
    EXPECT_EQ(missing.status, 404) << missing.text();
    EXPECT_EQ(missing.body_json()["error"]["code"], "model_not_found");
  }
}

// ===================================================================
// Completions
// ===================================================================

TEST_F(OpenAICompletions, GreedyTextEqualsLoomGenerate) {
  for (const std::string& prompt : {std::string("Hello"), std::string("A man walks into"), std::string("\n")}) {
    const Reply r = post_json(port(), "/v1/completions", completion("gpt", prompt, 40));
    ASSERT_EQ(r.status, 200) << r.text();
    const json body = r.body_json();
    EXPECT_EQ(body["object"], "text_completion");
    EXPECT_EQ(body["model"], "gpt");
    EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
    EXPECT_EQ(body["choices"].size(), 1u);
    EXPECT_EQ(body["choices"][0]["index"], 0);
    EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(body["usage"]["prompt_tokens"], static_cast<int64_t>(prompt.size()));
    EXPECT_EQ(body["usage"]["completion_tokens"], 40);
    EXPECT_EQ(body["usage"]["total_tokens"], static_cast<int64_t>(prompt.size()) + 40);
    const std::string text = text_of(r);
    const auto [code, out] = run_loom({"generate", "--model-file", file("gpt"), "--prompt", prompt, "--max-new-tokens",
                                       "40", "--temperature", "0", "--threads", "1"},
                                      seconds(60));
    ASSERT_EQ(code, 0) << out;
    // `loom generate` prints the prompt and its continuation, then a newline.
    EXPECT_EQ(out.substr(0, prompt.size() + text.size() + 1), prompt + text + "\n")
        << "prompt " << json(prompt) << ": the server gave " << json(text) << ", loom generate printed " << json(out);
  }
}

TEST_F(OpenAICompletions, SeededSamplingIsReproducibleAndEqualsLoomGenerate) {
  const json extra = {{"temperature", 0.8}, {"top_k", 20}, {"seed", 7}};
  const std::string a = text_of(post_json(port(), "/v1/completions", completion("gpt", "The cat", 30, extra)));
  const std::string b = text_of(post_json(port(), "/v1/completions", completion("gpt", "The cat", 30, extra)));
  EXPECT_EQ(a, b);
  const auto [code, out] = run_loom({"generate", "--model-file", file("gpt"), "--prompt", "The cat", "--max-new-tokens",
                                     "30", "--temperature", "0.8", "--top-k", "20", "--seed", "7", "--threads", "1"},
                                    seconds(60));
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(out.substr(0, 7 + a.size() + 1), "The cat" + a + "\n") << json(a) << " vs " << json(out);
}

TEST_F(OpenAICompletions, ChatIsTheCompletionOfItsTemplate) {
  const json messages = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi there"}}};
  const Reply chat = post_json(port(), "/v1/chat/completions", chat_request("gpt", messages, 30));
  ASSERT_EQ(chat.status, 200) << chat.text();
  const json body = chat.body_json();
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  const std::string prompt = "System: Be brief.\nUser: Hi there\nAssistant:";
  EXPECT_EQ(body["usage"]["prompt_tokens"], static_cast<int64_t>(prompt.size()));
  const Reply plain =
      post_json(port(), "/v1/completions", completion("gpt", prompt, 30, {{"stop", json::array({"\nUser:"})}}));
  EXPECT_EQ(text_of(chat), text_of(plain));
  EXPECT_EQ(body["choices"][0]["finish_reason"], plain.body_json()["choices"][0]["finish_reason"]);
}

TEST_F(OpenAICompletions, StopStringsEndTheTextBeforeThem) {
  const std::string full = text_of(post_json(port(), "/v1/completions", completion("gpt", "Hello", 40)));
  ASSERT_GE(full.size(), 20u);
  const std::string stop = full.substr(10, 2);
  const Reply r = post_json(port(), "/v1/completions", completion("gpt", "Hello", 40, {{"stop", stop}}));
  EXPECT_EQ(text_of(r), full.substr(0, full.find(stop)));
  EXPECT_EQ(r.body_json()["choices"][0]["finish_reason"], "stop");
  // A stop string with a character the model cannot write changes nothing.
  EXPECT_EQ(text_of(post_json(port(), "/v1/completions", completion("gpt", "Hello", 40, {{"stop", "\u2603"}}))), full);
}

TEST_F(OpenAICompletions, ListsOfPromptsAndNGiveChoicesPromptMajor) {
  const std::string hello = text_of(post_json(port(), "/v1/completions", completion("gpt", "Hello", 12)));
  const std::string cat = text_of(post_json(port(), "/v1/completions", completion("gpt", "The cat", 12)));
  const Reply r = post_json(port(), "/v1/completions", completion("gpt", {"Hello", "The cat"}, 12, {{"n", 2}}));
  ASSERT_EQ(r.status, 200) << r.text();
  const json body = r.body_json();
  ASSERT_EQ(body["choices"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    EXPECT_EQ(text_of(r, i), i < 2 ? hello : cat) << i;
  }
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5 + 7);
  EXPECT_EQ(body["usage"]["completion_tokens"], 4 * 12);
  // Sampled: choice i draws from the stream of seed + i.
  const json sampled = {{"temperature", 1.0}, {"seed", 11}, {"n", 3}};
  const Reply three = post_json(port(), "/v1/completions", completion("gpt", "Life is", 16, sampled));
  ASSERT_EQ(three.status, 200) << three.text();
  for (int i = 0; i < 3; ++i) {
    const json alone = {{"temperature", 1.0}, {"seed", 11 + i}};
    EXPECT_EQ(text_of(three, static_cast<size_t>(i)),
              text_of(post_json(port(), "/v1/completions", completion("gpt", "Life is", 16, alone))))
        << "choice " << i;
  }
  // Token ids are a prompt too.
  const Reply ids = post_json(port(), "/v1/completions", completion("gpt", json::array({json::array({1, 2, 3})}), 4));
  EXPECT_EQ(ids.status, 200) << ids.text();
}

TEST_F(OpenAICompletions, ConcurrentRequestsGiveTheTextsOfEachAlone) {
  std::vector<std::string> alone;
  for (const std::string& p : kPrompts)
    alone.push_back(text_of(post_json(port(), "/v1/completions", completion("gpt", p, 50))));
  for (int round = 0; round < 2; ++round) {
    std::vector<std::future<Reply>> replies;
    for (size_t i = 0; i < kPrompts.size(); ++i)
      replies.push_back(std::async(std::launch::async, [&, i] {
        // Half of them streamed.
        return post_json(port(), "/v1/completions", completion("gpt", kPrompts[i], 50, {{"stream", i % 2 == 1}}));
      }));
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      const Reply r = replies[i].get();
      ASSERT_EQ(r.status, 200) << r.text();
      const std::string text = i % 2 == 1 ? read_stream(r.body).text[0] : text_of(r);
      EXPECT_EQ(text, alone[i]) << "prompt " << json(kPrompts[i]) << ", round " << round;
    }
  }
}

TEST_F(OpenAICompletions, LogprobsDescribeTheTokens) {
  const std::string prompt = "Hello";
  const Reply r = post_json(port(), "/v1/completions", completion("gpt", prompt, 8, {{"logprobs", 2}}));
  ASSERT_EQ(r.status, 200) << r.text();
  const json lp = r.body_json()["choices"][0]["logprobs"];
  const std::string text = text_of(r);
  std::string joined;
  for (const json& t : lp["tokens"]) joined += t.get<std::string>();
  EXPECT_EQ(joined, text);
  ASSERT_EQ(lp["token_logprobs"].size(), 8u);
  ASSERT_EQ(lp["top_logprobs"].size(), 8u);
  ASSERT_EQ(lp["text_offset"].size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    const double logprob = lp["token_logprobs"][i];
    EXPECT_LE(logprob, 0.0);
    EXPECT_EQ(lp["text_offset"][i], prompt.size() + i);
    // Greedy: the token is the likeliest of the alternatives.
    const json& top = lp["top_logprobs"][i];
    ASSERT_EQ(top.size(), 2u) << top;
    ASSERT_TRUE(top.contains(lp["tokens"][i].get<std::string>())) << top;
    EXPECT_DOUBLE_EQ(top[lp["tokens"][i].get<std::string>()].get<double>(), logprob);
    for (const auto& [token, alternative] : top.items()) EXPECT_LE(alternative.get<double>(), logprob) << top;
  }
  const Reply chat = post_json(
      port(), "/v1/chat/completions",
      chat_request("gpt", {{{"role", "user"}, {"content", "Hi"}}}, 5, {{"logprobs", true}, {"top_logprobs", 3}}));
  ASSERT_EQ(chat.status, 200) << chat.text();
  const json content = chat.body_json()["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 5u);
  for (const json& t : content) {
    EXPECT_EQ(t["top_logprobs"].size(), 3u);
    EXPECT_EQ(t["bytes"].size(), t["token"].get<std::string>().size());
  }
}

// ===================================================================
// Streams
// ===================================================================

TEST_F(OpenAIStreams, CurlReadsAStreamThatEqualsTheAnswer) {
  if (!have_curl()) GTEST_SKIP() << "no curl on the PATH; the other stream tests read streams with httplib";
  for (const std::string& prompt : {std::string("Hello"), std::string("Why?")}) {
    const Reply whole = post_json(port(), "/v1/completions", completion("gpt", prompt, 30));
    const json body = completion("gpt", prompt, 30, {{"stream", true}, {"stream_options", {{"include_usage", true}}}});
    const std::string out = curl_post(port(), "/v1/completions", body);
    ASSERT_GE(out.size(), 14u) << out;
    EXPECT_EQ(out.substr(out.size() - 14), "data: [DONE]\n\n") << out;
    const Streamed s = read_stream(out);
    EXPECT_TRUE(s.done) << out;
    EXPECT_EQ(s.text.at(0), text_of(whole)) << out;
    EXPECT_EQ(s.finish.at(0), "length");
    EXPECT_EQ(s.usage, whole.body_json()["usage"]) << out;
    for (const std::string& e : sse_data(out)) {
      if (e == "[DONE]") continue;
      const json chunk = json::parse(e);
      EXPECT_EQ(chunk["object"], "text_completion");
      EXPECT_EQ(chunk["model"], "gpt");
    }
  }
  const json messages = {{{"role", "user"}, {"content", "Tell me a joke"}}};
  const Reply whole = post_json(port(), "/v1/chat/completions", chat_request("gpt", messages, 25));
  const std::string out =
      curl_post(port(), "/v1/chat/completions", chat_request("gpt", messages, 25, {{"stream", true}}));
  const Streamed s = read_stream(out);
  EXPECT_TRUE(s.done) << out;
  EXPECT_EQ(s.role, "assistant");
  EXPECT_EQ(s.text.at(0), text_of(whole));
  EXPECT_EQ(s.finish.at(0), whole.body_json()["choices"][0]["finish_reason"]);
  EXPECT_TRUE(s.usage.is_null());  // not asked for
  for (const std::string& e : sse_data(out)) {
    if (e == "[DONE]") continue;
    EXPECT_EQ(json::parse(e)["object"], "chat.completion.chunk");
  }
}

TEST_F(OpenAIStreams, EveryChoiceOfAStreamEndsWithItsFinishReason) {
  const Reply r =
      post_json(port(), "/v1/completions", completion("gpt", {"Hello", "The cat"}, 10, {{"stream", true}, {"n", 2}}));
  ASSERT_EQ(r.status, 200) << r.text();
  const Streamed s = read_stream(r.body);
  EXPECT_TRUE(s.done);
  ASSERT_EQ(s.finish.size(), 4u);
  const Reply whole = post_json(port(), "/v1/completions", completion("gpt", {"Hello", "The cat"}, 10, {{"n", 2}}));
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(s.text.at(i), text_of(whole, static_cast<size_t>(i))) << i;
}

TEST_F(OpenAIStreams, TheOfficialOpenAINodeClientReadsTheStreams) {
  const fs::path dir = LOOM_OPENAI_CLIENT_DIR;
  const std::string node_path = find_program("node");
  const bool node = !node_path.empty();
  if (!node || !fs::exists(dir / "node_modules" / "openai" / "package.json"))
    GTEST_SKIP() << "the openai npm client is not installed ("
                 << (node ? "no node_modules: `make openai-client` runs "
                            "npm ci in tests/serve/openai_client"
                          : "no Node.js here")
                 << "); the streams were read with curl and httplib by the other tests";
  const json messages = {{{"role", "user"}, {"content", "Hi"}}};
  const json want = {
      {"baseURL", "http://127.0.0.1:" + std::to_string(port()) + "/v1"},
      {"model", "gpt"},
      {"prompt", "Hello"},
      {"max_tokens", 20},
      {"completion", text_of(post_json(port(), "/v1/completions", completion("gpt", "Hello", 20)))},
      {"messages", messages},
      {"chat", text_of(post_json(port(), "/v1/chat/completions", chat_request("gpt", messages, 20)))},
  };
  ChildProcess client({node_path, (dir / "client.mjs").string(), want.dump()}, next_log_file("openai-node"));
  const std::optional<int> code = client.wait_exit(seconds(90));
  EXPECT_EQ(code, 0) << client.log();
  EXPECT_NE(client.log().find("ok"), std::string::npos) << client.log();
}

// ===================================================================
// Errors
// ===================================================================

TEST_F(OpenAIErrors, MalformedRequestsAre4xxWithOpenAIsErrorBody) {
  struct Case {
    std::string name, path, body;
    int status;
    std::string param;  // "" for null
  };
  const std::string too_long = std::string(200, 'a');  // gpt's context is 96
  const std::vector<Case> cases = {
      {"bad JSON", "/v1/completions", R"({"model": "gpt", "prompt": )", 400, ""},
      {"empty body", "/v1/completions", "", 400, ""},
      {"not an object", "/v1/completions", "[1, 2]", 400, ""},
      {"no prompt", "/v1/completions", R"({"model": "gpt"})", 400, "prompt"},
      {"no model", "/v1/completions", R"({"prompt": "a"})", 400, "model"},
      {"prompt of the wrong type", "/v1/completions", R"({"model": "gpt", "prompt": {"a": 1}})", 400, "prompt"},
      {"max_tokens a string", "/v1/completions", R"({"model": "gpt", "prompt": "a", "max_tokens": "3"})", 400,
       "max_tokens"},
      {"temperature -1", "/v1/completions", R"({"model": "gpt", "prompt": "a", "temperature": -1})", 400,
       "temperature"},
      {"n 0", "/v1/completions", R"({"model": "gpt", "prompt": "a", "n": 0})", 400, "n"},
      {"stream not a boolean", "/v1/completions", R"({"model": "gpt", "prompt": "a", "stream": 1})", 400, "stream"},
      {"echo", "/v1/completions", R"({"model": "gpt", "prompt": "a", "echo": true})", 400, "echo"},
      {"an unknown field", "/v1/completions", R"({"model": "gpt", "prompt": "a", "tempreature": 0})", 400,
       "tempreature"},
      {"a prompt longer than the context", "/v1/completions", R"({"model": "gpt", "prompt": ")" + too_long + "\"}", 400,
       "prompt"},
      {"a character outside the vocabulary", "/v1/completions", R"({"model": "gpt", "prompt": "\u2603"})", 400,
       "prompt"},
      {"a token id outside the vocabulary", "/v1/completions", R"({"model": "gpt", "prompt": [100000]})", 400,
       "prompt"},
      {"an unknown model", "/v1/completions", R"({"model": "nope", "prompt": "a"})", 404, "model"},
      {"a model not served at /v1", "/v1/completions", R"({"model": "lstm", "prompt": "a"})", 404, "model"},
      {"chat without messages", "/v1/chat/completions", R"({"model": "gpt"})", 400, "messages"},
      {"chat with a bad role", "/v1/chat/completions",
       R"({"model": "gpt", "messages": [{"role": "robot", "content": "x"}]})", 400, "messages[0].role"},
      {"chat top_logprobs 21", "/v1/chat/completions",
       R"({"model": "gpt", "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", 400,
       "top_logprobs"},
      {"chat with a prompt", "/v1/chat/completions", R"({"model": "gpt", "prompt": "x"})", 400, "prompt"},
      {"no such route", "/v1/embeddings", R"({"model": "gpt", "input": "x"})", 404, ""},
      {"POST /v1/models", "/v1/models", "{}", 405, ""},
  };
  for (const Case& c : cases) {
    const Reply r = post(port(), c.path, c.body);
    EXPECT_EQ(r.status, c.status) << c.name << ": " << r.text();
    const json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(body.is_object() && body.contains("error")) << c.name << ": " << r.text();
    const json& e = body["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << c.name;
    EXPECT_EQ(e["type"], "invalid_request_error") << c.name;
    EXPECT_EQ(e["param"], c.param.empty() ? json(nullptr) : json(c.param)) << c.name << ": " << r.text();
    EXPECT_TRUE(e.contains("code")) << c.name;
  }
  // The messages name what is wrong.
  EXPECT_NE(post(port(), "/v1/completions", R"({"model": "gpt", "prompt": ")" + too_long + "\"}")
                .body.find("maximum context length is 96 tokens"),
            std::string::npos);
  const Reply temperature = post(port(), "/v1/completions", R"({"model": "gpt", "prompt": "a", "temperature": -1})");
  EXPECT_NE(temperature.body.find("got -1"), std::string::npos) << temperature.text();
  // Wrong methods.
  for (const std::string path : {"/v1/completions", "/v1/chat/completions"}) {
    const Reply r = get(port(), path);
    EXPECT_EQ(r.status, 405) << r.text();
    EXPECT_TRUE(r.body_json()["error"]["message"].is_string());
  }
  const Reply unknown = get(port(), "/v1/unknown");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_TRUE(unknown.body_json()["error"].is_object()) << unknown.text();
  // And the server goes on.
  EXPECT_EQ(post_json(port(), "/v1/completions", completion("gpt", "ok", 3)).status, 200);
}

TEST_F(OpenAIErrors, ABodyOverMaxBodyMbIs413) {
  const std::string big = R"({"model": "gpt", "prompt": ")" + std::string(2 << 20, 'a') + "\"}";
  const Reply r = post(port(), "/v1/completions", big);
  EXPECT_EQ(r.status, 413) << r.text();
  EXPECT_TRUE(r.body_json()["error"]["message"].is_string()) << r.text();
}

// ===================================================================
// Timeouts, hang-ups, metrics, flags
// ===================================================================

TEST_F(OpenAILifecycle, ARequestPastItsTimeoutIs504OrAnErrorEvent) {
  ServerProcess server({"--model", "long=" + file("long"), "--request-timeout-s", "0.01"});
  const json request = completion("long", "Once", 1000);
  const Reply r = post_json(server.port(), "/v1/completions", request);
  EXPECT_EQ(r.status, 504) << r.text();
  EXPECT_EQ(r.body_json()["error"]["type"], "timeout_error") << r.text();
  const Reply streamed =
      post_json(server.port(), "/v1/completions", completion("long", "Once", 1000, {{"stream", true}}));
  ASSERT_EQ(streamed.status, 200) << streamed.text();
  const Streamed s = read_stream(streamed.body);
  EXPECT_TRUE(s.done) << streamed.body.substr(0, 2000);
  EXPECT_EQ(s.error["type"], "timeout_error") << streamed.body.substr(0, 2000);
  const std::string timeouts = series("loom_llm_requests_total", "long", "outcome=\"timeout\"");
  EXPECT_TRUE(wait_for([&] { return metric(server.port(), timeouts) == 2; }, seconds(10)))
      << metric(server.port(), timeouts);
  EXPECT_TRUE(wait_for([&] { return metric(server.port(), series("loom_llm_running", "long")) == 0; }, seconds(10)));
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// A client that hangs up frees its slot: with one slot, the next request
// runs only once the engine has dropped the first.
TEST_F(OpenAILifecycle, AClientThatHangsUpFreesItsSlot) {
  ServerProcess server({"--model", "long=" + file("long"), "--slots", "1"});
  const int p = server.port();
  const std::string cancelled = series("loom_llm_requests_total", "long", "outcome=\"cancelled\"");
  const std::string generated = series("loom_llm_generation_tokens_total", "long");
  struct Case {
    std::string name;
    bool stream;
  };
  for (const Case& c : {Case{"a non-streamed request, the client gone at once", false},
                        Case{"a stream, the client gone after its first chunk", true}}) {
    SCOPED_TRACE(c.name);
    const double cancelled_before = metric(p, cancelled), generated_before = metric(p, generated);
    {
      RawConnection conn(p);
      conn.send_post("/v1/completions", completion("long", "Once", 1000, {{"stream", c.stream}}).dump());
      if (c.stream) {
        ASSERT_TRUE(conn.read_until("data: {", seconds(30))) << conn.received();
      }
    }  // closed
    ASSERT_TRUE(wait_for([&] { return metric(p, cancelled) == cancelled_before + 1; }, seconds(20)))
        << "the request was not cancelled:\n"
        << server.log();
    EXPECT_TRUE(wait_for([&] { return metric(p, series("loom_llm_running", "long")) == 0; }, seconds(10)));
    EXPECT_LT(metric(p, generated) - generated_before, 1000) << "it ran to its end";
    // The slot is free: a request completes.
    const Reply next = post_json(p, "/v1/completions", completion("long", "Then", 5));
    EXPECT_EQ(next.status, 200) << next.text();
  }
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(OpenAILifecycle, MetricsReportTheEngine) {
  ASSERT_EQ(post_json(port(), "/v1/completions", completion("gpt", "Hello", 10)).status, 200);
  const Reply stream = post_json(port(), "/v1/completions", completion("gpt", "Hi", 10, {{"stream", true}}));
  ASSERT_EQ(stream.status, 200);
  // The engine counts a request at the end of the step that answered it.
  ASSERT_TRUE(wait_for(
      [&] {
        return metric(port(), series("loom_llm_requests_total", "gpt", "outcome=\"finished\"")) >= 2 &&
               metric(port(), series("loom_llm_running", "gpt")) == 0;
      },
      seconds(10)));
  const auto m = scrape(port());
  auto value = [&](const std::string& sample) {
    auto it = m.find(sample);
    return it == m.end() ? -1.0 : it->second;
  };
  for (const std::string family :
       {"loom_llm_prompt_tokens_total", "loom_llm_generation_tokens_total", "loom_llm_requests_total",
        "loom_llm_running", "loom_llm_waiting", "loom_llm_kv_blocks_used", "loom_llm_kv_blocks_total",
        "loom_llm_kv_block_size", "loom_llm_kv_positions", "loom_llm_kv_cache_usage", "loom_llm_preemptions_total",
        "loom_llm_spec_draft_tokens_total", "loom_llm_spec_accepted_tokens_total", "loom_llm_spec_acceptance_rate",
        "loom_llm_time_to_first_token_seconds", "loom_llm_inter_token_latency_seconds"})
    EXPECT_EQ(value("#TYPE " + family), 1) << family;
  EXPECT_GE(value(series("loom_llm_prompt_tokens_total", "gpt")), 7);
  EXPECT_GE(value(series("loom_llm_generation_tokens_total", "gpt")), 20);
  EXPECT_GE(value(series("loom_llm_requests_total", "gpt", "outcome=\"finished\"")), 2);
  EXPECT_EQ(value(series("loom_llm_running", "gpt")), 0);
  EXPECT_EQ(value(series("loom_llm_kv_block_size", "gpt")), 16);
  EXPECT_GT(value(series("loom_llm_kv_blocks_total", "gpt")), 0);
  EXPECT_EQ(value(series("loom_llm_kv_blocks_used", "gpt")), 0);
  EXPECT_EQ(value(series("loom_llm_kv_cache_usage", "gpt")), 0);
  EXPECT_EQ(value(series("loom_llm_requests_total", "lstm", "outcome=\"finished\"")), -1);  // not at /v1
  // Histograms: cumulative buckets up to +Inf, which is the count.
  for (const std::string h : {"loom_llm_time_to_first_token_seconds", "loom_llm_inter_token_latency_seconds"}) {
    int buckets = 0;
    for (const auto& [sample, v] : m) buckets += sample.rfind(h + "_bucket{model=\"gpt\"", 0) == 0;
    EXPECT_GE(buckets, 5) << h;
    double previous = 0;
    const double count = value(series(h + "_count", "gpt"));
    EXPECT_GE(count, 2) << h;
    EXPECT_EQ(value(series(h + "_bucket", "gpt", "le=\"+Inf\"")), count) << h;
    EXPECT_GT(value(series(h + "_sum", "gpt")), 0) << h;
    for (const double le : {0.001, 0.01, 0.1, 1.0}) {
      std::ostringstream bound;
      bound << le;
      const double below = value(series(h + "_bucket", "gpt", "le=\"" + bound.str() + "\""));
      EXPECT_GE(below, previous) << h << " le " << le;
      EXPECT_LE(below, count) << h << " le " << le;
      previous = below;
    }
  }
}

TEST_F(OpenAILifecycle, ADraftModelKeepsTheGreedyText) {
  ServerProcess server({"--model", "gpt=" + file("gpt"), "--draft-model", file("draft"), "--draft-tokens", "3"});
  for (const std::string& prompt : kPrompts) {
    const json request = completion("gpt", prompt, 40);
    EXPECT_EQ(text_of(post_json(server.port(), "/v1/completions", request)),
              text_of(post_json(port(), "/v1/completions", request)))
        << "prompt " << json(prompt);
  }
  EXPECT_GT(metric(server.port(), series("loom_llm_spec_draft_tokens_total", "gpt")), 0) << server.log();
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(OpenAILifecycle, BadEngineFlagsStopStartupWithAMessage) {
  struct Case {
    std::vector<std::string> flags;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--draft-model", file("byte_draft")}, "another tokenizer"},
      {{"--draft-model", file("lstm")}, "the draft must be a GPT"},
      {{"--kv-cache-mb", "0.001"}, "kv-cache-mb"},
      {{"--slots", "0"}, "--slots"},
      {{"--request-timeout-s", "-1"}, "--request-timeout-s"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"serve", "--port", "0", "--model", "gpt=" + file("gpt")};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    const auto [code, out] = run_loom(args, seconds(60));
    EXPECT_NE(code, 0) << out;
    EXPECT_NE(out.find(c.says), std::string::npos) << out;
    EXPECT_EQ(out.find("listening on"), std::string::npos) << out;
  }
}

}  // namespace

// gtest's main, and `test_openai_cli --make-checkpoints DIR` for ctest's
// fixture entry.
int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--make-checkpoints") {
    try {
      make_checkpoints(argv[2]);
      std::cout << "checkpoints in " << argv[2] << "\n";
      return 0;
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
      return 1;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
