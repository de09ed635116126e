// OpenAI's API layer (src/serve/openai.h) without HTTP or a model: request
// bodies parsed and refused with the field named, prompts and stop strings
// encoded with a tokenizer, and engine events turned into response objects
// and stream chunks. tests/serve/test_openai_cli.cpp checks the same layer
// through `loom serve`, with a real GPT.
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <loom/loom.h>
#include <loom/serve.h>

#include "serve/openai.h"

namespace {

using namespace loom::serve;
using namespace loom::serve::openai;
using json = nlohmann::ordered_json;

// A TextGenerator over a tokenizer, with no engine (the layer never asks).
class FakeGenerator : public TextGenerator {
 public:
  explicit FakeGenerator(std::unique_ptr<loom::data::Tokenizer> t) : t_(std::move(t)) {}
  std::vector<int64_t> encode(const std::string& text) const override { return t_->encode(text); }
  std::string decode(const std::vector<int64_t>& tokens) const override { return t_->decode(tokens); }
  LlmEngine& engine() override { LOOM_ERROR("FakeGenerator has no engine"); }
  int64_t vocab() const { return t_->vocab_size(); }

 private:
  std::unique_ptr<loom::data::Tokenizer> t_;
};

// The characters of a small corpus: no 'U' or ':', so neither the chat
// template nor kChatStop can be spelled with the default one.
FakeGenerator chars(const std::string& corpus = "\n abcdehilnorstwy.") {
  return FakeGenerator(loom::data::make_tokenizer("char", corpus));
}
FakeGenerator bytes() { return FakeGenerator(loom::data::make_tokenizer("byte", "")); }

// The ApiError a call throws (status 0 when it throws none).
ApiError error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "no error");
}

ApiError completion_error(const std::string& body) {
  return error_of([&] { parse_completion_request(body); });
}
ApiError chat_error(const std::string& body) {
  return error_of([&] { parse_chat_request(body); });
}

// A completion body with `extra` fields added to {"model": "m", "prompt": "a"}.
std::string completion(const std::string& extra) {
  return R"({"model": "m", "prompt": "a")" + (extra.empty() ? "" : ", " + extra) + "}";
}
std::string chat(const std::string& extra) {
  return R"({"model": "m", "messages": [{"role": "user", "content": "hi"}])" + (extra.empty() ? "" : ", " + extra) +
         "}";
}

TokenEvent event(std::vector<int64_t> tokens, FinishReason finish = FinishReason::None, int64_t index = 0) {
  TokenEvent e;
  e.index = index;
  e.tokens = std::move(tokens);
  e.finish = finish;
  return e;
}

// ---------------------------------------------------------------------------
// Requests

TEST(OpenAIRequest, CompletionDefaultsAreOpenAIs) {
  const Request r = parse_completion_request(R"({"model": "gpt", "prompt": "Hello"})");
  EXPECT_EQ(r.endpoint, Endpoint::Completions);
  EXPECT_EQ(r.model, "gpt");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Hello");
  EXPECT_FALSE(r.prompts[0].tokens);
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_EQ(r.temperature, 1.0);
  EXPECT_EQ(r.top_p, 1.0);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.seed);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.logprobs);
  EXPECT_TRUE(r.stop.empty());
}

TEST(OpenAIRequest, CompletionFieldsAreRead) {
  const Request r = parse_completion_request(
      R"({"model": "gpt", "prompt": "x", "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3, "n": 2,
          "seed": 42, "stop": ["\n\n", "", "end"], "stream": true, "stream_options": {"include_usage": true},
          "logprobs": 2, "echo": false, "presence_penalty": 0, "frequency_penalty": 0.0, "best_of": 2,
          "logit_bias": {}, "suffix": null, "user": "someone"})");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.temperature, 0.0);
  EXPECT_EQ(r.top_p, 0.5);
  EXPECT_EQ(r.top_k, 3);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.seed, 42u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "end"}));  // "" dropped
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 2);
}

TEST(OpenAIRequest, NullMeansAbsentAndVllmsTopKMinusOneMeansAll) {
  const Request r = parse_completion_request(
      R"({"model": "m", "prompt": "a", "max_tokens": null, "temperature": null, "stop": null, "seed": null,
          "top_k": -1, "logprobs": null, "n": 3.0})");
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_EQ(r.temperature, 1.0);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_EQ(r.n, 3);  // an integral float is an integer
  EXPECT_FALSE(r.logprobs);
  EXPECT_FALSE(r.seed);
}

TEST(OpenAIRequest, PromptsMayBeStringsOrTokenIds) {
  Request r = parse_completion_request(R"({"model": "m", "prompt": ["a", "bc", ""]})");
  ASSERT_EQ(r.prompts.size(), 3u);
  EXPECT_EQ(r.prompts[1].text, "bc");
  r = parse_completion_request(R"({"model": "m", "prompt": [1, 2, 3]})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(*r.prompts[0].tokens, (std::vector<int64_t>{1, 2, 3}));
  r = parse_completion_request(R"({"model": "m", "prompt": [[1, 2], [3]]})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(*r.prompts[1].tokens, (std::vector<int64_t>{3}));
  const Request seeded = parse_completion_request(R"({"model": "m", "prompt": "a", "seed": -1})");
  EXPECT_EQ(*seeded.seed, std::numeric_limits<uint64_t>::max());
}

TEST(OpenAIRequest, EveryBadFieldIs400NamingTheFieldAndTheValue) {
  struct Case {
    std::string body, param, says;
  };
  const std::vector<Case> cases = {
      {completion(R"("temperature": -1)"), "temperature", "got -1"},
      {completion(R"("temperature": 2.5)"), "temperature", "[0, 2]"},
      {completion(R"("temperature": "hot")"), "temperature", "\"hot\""},
      {completion(R"("top_p": 0)"), "top_p", "(0, 1]"},
      {completion(R"("top_p": 1.5)"), "top_p", "got 1.5"},
      {completion(R"("top_k": -2)"), "top_k", "got -2"},
      {completion(R"("n": 0)"), "n", "got 0"},
      {completion(R"("n": 257)"), "n", "[1, 256]"},
      {completion(R"("n": 1.5)"), "n", "must be an integer"},
      {completion(R"("max_tokens": 0)"), "max_tokens", "got 0"},
      {completion(R"("max_tokens": "5")"), "max_tokens", "\"5\""},
      {completion(R"("logprobs": 6)"), "logprobs", "[0, 5]"},
      {completion(R"("logprobs": true)"), "logprobs", "got true"},
      {completion(R"("stop": ["a", "b", "c", "d", "e"])"), "stop", "at most 4"},
      {completion(R"("stop": [1])"), "stop", "[1]"},
      {completion(R"("stop": 5)"), "stop", "got 5"},
      {completion(R"("stream": "yes")"), "stream", "\"yes\""},
      {completion(R"("stream_options": {"include_usage": true})"), "stream_options", "'stream' is true"},
      {completion(R"("stream": true, "stream_options": {"other": 1})"), "other", "unrecognized"},
      {completion(R"("echo": true)"), "echo", "not supported"},
      {completion(R"("best_of": 3)"), "best_of", "equal n"},
      {completion(R"("presence_penalty": 0.5)"), "presence_penalty", "0.5"},
      {completion(R"("frequency_penalty": 3)"), "frequency_penalty", "[-2, 2]"},
      {completion(R"("logit_bias": {"1": 5})"), "logit_bias", "not supported"},
      {completion(R"("suffix": "end")"), "suffix", "not supported"},
      {completion(R"("seed": "x")"), "seed", "\"x\""},
      {completion(R"("user": 3)"), "user", "got 3"},
      {completion(R"("functions": [])"), "functions", "unrecognized request argument supplied: 'functions'"},
      {R"({"prompt": "a"})", "model", "must provide a model"},
      {R"({"model": 3, "prompt": "a"})", "model", "got 3"},
      {R"({"model": "m"})", "prompt", "must provide a prompt"},
      {R"({"model": "m", "prompt": 3})", "prompt", "got 3"},
      {R"({"model": "m", "prompt": []})", "prompt", "not empty"},
      {R"({"model": "m", "prompt": ["a", 1]})", "prompt", "[\"a\",1]"},
      {R"({"model": "m", "prompt": [[1], []]})", "prompt", "[[1],[]]"},
      {R"({"model": "m", "prompt": [1, "a"]})", "prompt", "token ids must be integers"},
      {R"({"model": "m", "prompt": ["a", "b", "c"], "n": 100})", "n", "300 choices"},
  };
  for (const Case& c : cases) {
    const ApiError e = completion_error(c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
    EXPECT_NE(e.message.find(c.says), std::string::npos) << c.body << ": " << e.message;
  }
}

TEST(OpenAIRequest, BodiesThatAreNotAJsonObjectAre400) {
  for (const std::string body : {"", "{", "[1]", "\"text\"", "{\"model\": \"m\",}", "nul"}) {
    const ApiError e = completion_error(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, "") << body;
  }
  EXPECT_NE(completion_error("{").message.find("not valid JSON"), std::string::npos);
  EXPECT_NE(completion_error("[1]").message.find("must be a JSON object"), std::string::npos);
  // Deep nesting is refused while parsing, before it costs anything.
  const std::string deep = R"({"model": "m", "prompt": )" + std::string(10000, '[') + std::string(10000, ']') + "}";
  EXPECT_NE(completion_error(deep).message.find("deeper than"), std::string::npos);
  // A value in an error message is cut short.
  const ApiError e =
      completion_error(R"({"model": "m", "prompt": "a", "temperature": ")" + std::string(1000, 'x') + "\"}");
  EXPECT_LT(e.message.size(), 200u) << e.message;
}

TEST(OpenAIRequest, ChatMessagesAndFieldsAreRead) {
  const Request r = parse_chat_request(
      R"({"model": "gpt", "messages": [{"role": "developer", "content": "Be brief."},
          {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}], "name": "x"},
          {"role": "assistant", "content": null}, {"role": "user", "content": "Go"}],
          "max_tokens": 5, "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 3,
          "response_format": {"type": "text"}, "stream": false})");
  EXPECT_EQ(r.endpoint, Endpoint::Chat);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "System: Be brief.\nUser: Hi there\nAssistant: \nUser: Go\nAssistant:");
  // No max_tokens: up to the context.
  EXPECT_EQ(parse_chat_request(chat("")).max_tokens, 0);
}

TEST(OpenAIRequest, ChatTemplateIsOneLinePerMessageThenAssistant) {
  EXPECT_EQ(chat_prompt({{"system", "S"}, {"user", "Hello"}, {"assistant", "Hi."}, {"user", "Bye"}}),
            "System: S\nUser: Hello\nAssistant: Hi.\nUser: Bye\nAssistant:");
  EXPECT_EQ(chat_prompt({{"user", "x"}}), "User: x\nAssistant:");
  EXPECT_STREQ(kChatStop, "\nUser:");
}

TEST(OpenAIRequest, BadChatRequestsAre400NamingTheField) {
  struct Case {
    std::string body, param, says;
  };
  const std::vector<Case> cases = {
      {R"({"model": "m"})", "messages", "must provide 'messages'"},
      {R"({"model": "m", "messages": []})", "messages", "non-empty"},
      {R"({"model": "m", "messages": "hi"})", "messages", "\"hi\""},
      {R"({"model": "m", "messages": [3]})", "messages[0]", "got 3"},
      {R"({"model": "m", "messages": [{"content": "x"}]})", "messages[0].role", "got nothing"},
      {R"({"model": "m", "messages": [{"role": "tool", "content": "x"}]})", "messages[0].role", "\"tool\""},
      {R"({"model": "m", "messages": [{"role": "user"}]})", "messages[0].content", "missing"},
      {R"({"model": "m", "messages": [{"role": "user", "content": 1}]})", "messages[0].content", "got 1"},
      {R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "messages[0].content",
       "text"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]})", "messages[0].tool_calls",
       "unrecognized field"},
      {chat(R"("top_logprobs": 2)"), "top_logprobs", "needs 'logprobs'"},
      {chat(R"("logprobs": true, "top_logprobs": 21)"), "top_logprobs", "[0, 20]"},
      {chat(R"("logprobs": 2)"), "logprobs", "boolean"},
      {chat(R"("max_completion_tokens": 0)"), "max_completion_tokens", "got 0"},
      {chat(R"("response_format": {"type": "json_object"})"), "response_format", "json_object"},
      {chat(R"("tools": [])"), "tools", "unrecognized request argument"},
      {chat(R"("prompt": "x")"), "prompt", "unrecognized request argument"},
      {chat(R"("temperature": 3)"), "temperature", "got 3"},
  };
  for (const Case& c : cases) {
    const ApiError e = chat_error(c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
    EXPECT_NE(e.message.find(c.says), std::string::npos) << c.body << ": " << e.message;
  }
}

TEST(OpenAIRequest, ErrorBodyHasOpenAIsShape) {
  const json body = error_body(ApiError(404, "no such model", "model", "invalid_request_error", "model_not_found"));
  EXPECT_EQ(body, json::parse(R"({"error": {"message": "no such model", "type": "invalid_request_error",
                                              "param": "model", "code": "model_not_found"}})"));
  EXPECT_EQ(error_body(ApiError(400, "x"))["error"]["param"], nullptr);
  EXPECT_EQ(error_body(ApiError(400, "x"))["error"]["code"], nullptr);
}

// ---------------------------------------------------------------------------
// Engine requests

TEST(OpenAIEngineRequests, PromptsAndStopsAreEncodedAndParamsCarried) {
  const FakeGenerator g = chars();
  Request r = parse_completion_request(
      R"({"model": "m", "prompt": ["hello", "we"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 4,
          "n": 2, "seed": 7, "stop": ["lo", "xyz"], "logprobs": 1})");
  const std::vector<EngineRequest> e = engine_requests(r, g, 32, g.vocab(), 99);
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].prompt, g.encode("hello"));
  EXPECT_EQ(e[0].prompt_text, "hello");
  EXPECT_EQ(e[1].prompt, g.encode("we"));
  const SamplingParams& p = e[1].params;
  EXPECT_EQ(p.max_tokens, 5);
  EXPECT_EQ(p.temperature, 0.5);
  EXPECT_EQ(p.top_p, 0.9);
  EXPECT_EQ(p.top_k, 4);
  EXPECT_EQ(p.n, 2);
  EXPECT_EQ(p.seed, 7u);
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 1);
  // "xyz" has characters outside the vocabulary: it can never be generated.
  EXPECT_EQ(p.stop, (std::vector<std::vector<int64_t>>{g.encode("lo")}));
}

TEST(OpenAIEngineRequests, DefaultsTakeTheServersSeedAndTheContext) {
  const FakeGenerator g = chars();
  const Request r = parse_chat_request(R"({"model": "m", "messages": [{"role": "user", "content": "hey"}]})");
  const FakeGenerator spelled = chars("\n abcdehilnorstwyU:SA.");
  const std::vector<EngineRequest> e = engine_requests(r, spelled, 100, spelled.vocab(), 1234);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].params.seed, 1234u);
  EXPECT_EQ(e[0].params.max_tokens, 100 - static_cast<int64_t>(e[0].prompt.size()));
  EXPECT_EQ(e[0].prompt_text, "User: hey\nAssistant:");
  // The chat template's stop, when the vocabulary spells it.
  EXPECT_EQ(e[0].params.stop, (std::vector<std::vector<int64_t>>{spelled.encode("\nUser:")}));
  // A vocabulary without 'U' cannot write "\nUser:" (nor the prompt).
  EXPECT_EQ(error_of([&] { engine_requests(r, g, 100, g.vocab(), 0); }).param, "messages");
}

TEST(OpenAIEngineRequests, EmptyPromptStartsFromANewline) {
  const FakeGenerator g = chars();
  const Request r = parse_completion_request(R"({"model": "m", "prompt": ""})");
  const std::vector<EngineRequest> e = engine_requests(r, g, 8, g.vocab(), 0);
  EXPECT_EQ(e[0].prompt, g.encode("\n"));
}

TEST(OpenAIEngineRequests, PromptsThatDoNotFitOrEncodeAre400) {
  const FakeGenerator g = chars();
  ApiError e = error_of([&] {
    engine_requests(parse_completion_request(R"({"model": "m", "prompt": "hello there"})"), g, 8, g.vocab(), 0);
  });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "prompt");
  EXPECT_NE(e.message.find("maximum context length is 8 tokens"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("has 11 tokens"), std::string::npos) << e.message;
  // context - 1 tokens fit (one position is left to generate).
  EXPECT_NO_THROW(
      engine_requests(parse_completion_request(R"({"model": "m", "prompt": "hello t"})"), g, 8, g.vocab(), 0));
  e = error_of([&] {
    engine_requests(parse_completion_request(R"({"model": "m", "prompt": ["hello", "QQ"]})"), g, 8, g.vocab(), 0);
  });
  EXPECT_EQ(e.param, "prompt[1]");
  EXPECT_NE(e.message.find("cannot be encoded"), std::string::npos) << e.message;
  e = error_of(
      [&] { engine_requests(parse_completion_request(R"({"model": "m", "prompt": [1, 999]})"), g, 8, g.vocab(), 0); });
  EXPECT_EQ(e.param, "prompt");
  EXPECT_NE(e.message.find("token id 999"), std::string::npos) << e.message;
}

// ---------------------------------------------------------------------------
// Responses

// Runs events through a Response with chunks; returns the chunks.
std::vector<json> stream_of(Response& response, const std::vector<std::pair<size_t, TokenEvent>>& events) {
  std::vector<json> chunks = response.start_chunks();
  for (const auto& [p, e] : events) response.add(p, e, &chunks);
  return chunks;
}

TEST(OpenAIResponse, CompletionBodyIsPromptMajorWithUsage) {
  const FakeGenerator g = chars();
  const Request r = parse_completion_request(R"({"model": "m", "prompt": ["he", "we"], "n": 2})");
  const auto prompts = engine_requests(r, g, 32, g.vocab(), 0);
  Response response(r, g, "gpt", prompts);
  response.add(1, event(g.encode("ll"), FinishReason::None, 1), nullptr);
  response.add(0, event(g.encode("a"), FinishReason::Length, 0), nullptr);
  response.add(1, event(g.encode("o"), FinishReason::Stop, 1), nullptr);
  response.add(0, event(g.encode("b"), FinishReason::Stop, 1), nullptr);
  EXPECT_FALSE(response.finished());
  response.add(1, event({}, FinishReason::Length, 0), nullptr);
  EXPECT_TRUE(response.finished());
  EXPECT_EQ(response.failure(), FinishReason::None);
  const json body = response.body();
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "gpt");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(body["id"].get<std::string>().size(), 5u + 24u);
  EXPECT_GT(body["created"].get<int64_t>(), 1600000000);
  ASSERT_EQ(body["choices"].size(), 4u);
  const std::vector<std::string> texts = {"a", "b", "", "llo"}, reasons = {"length", "stop", "length", "stop"};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    EXPECT_EQ(body["choices"][i]["text"], texts[i]);
    EXPECT_EQ(body["choices"][i]["finish_reason"], reasons[i]);
    EXPECT_EQ(body["choices"][i]["logprobs"], nullptr);
  }
  EXPECT_EQ(body["usage"], json::parse(R"({"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9})"));
}

TEST(OpenAIResponse, ChatBodyHasTheAssistantsMessage) {
  const FakeGenerator g = chars();
  const Request r = parse_chat_request(R"({"model": "m", "messages": [{"role": "system", "content": "be"}]})");
  Response response(r, g, "gpt", {EngineRequest{g.encode("abc"), {}, "abc"}});
  response.add(0, event(g.encode(" hello"), FinishReason::Stop), nullptr);
  const json body = response.body();
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(body["choices"][0], json::parse(R"({"index": 0, "message": {"role": "assistant", "content": " hello"},
                                                "logprobs": null, "finish_reason": "stop"})"));
  EXPECT_EQ(body["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(body["usage"]["completion_tokens"], 6);
}

TEST(OpenAIResponse, CompletionLogprobsHaveTokensOffsetsAndAlternatives) {
  const FakeGenerator g = chars();
  const Request r = parse_completion_request(R"({"model": "m", "prompt": "he", "logprobs": 2})");
  Response response(r, g, "gpt", engine_requests(r, g, 32, g.vocab(), 0));
  TokenEvent e = event(g.encode("ll"), FinishReason::Length);
  e.logprobs = {-0.5, -1.5};
  const int64_t l = g.encode("l")[0], o = g.encode("o")[0];
  e.top_logprobs = {{{l, -0.5}, {o, -2.0}}, {{o, -1.0}, {l, -1.5}}};
  response.add(0, e, nullptr);
  const json lp = response.body()["choices"][0]["logprobs"];
  EXPECT_EQ(lp, json::parse(R"({"tokens": ["l", "l"], "token_logprobs": [-0.5, -1.5],
                               "top_logprobs": [{"l": -0.5, "o": -2.0}, {"o": -1.0, "l": -1.5}],
                               "text_offset": [2, 3]})"));
  // logprobs 0: the sampled tokens' alone.
  const Request r0 = parse_completion_request(R"({"model": "m", "prompt": "he", "logprobs": 0})");
  Response zero(r0, g, "gpt", engine_requests(r0, g, 32, g.vocab(), 0));
  zero.add(0, e, nullptr);
  EXPECT_EQ(zero.body()["choices"][0]["logprobs"]["top_logprobs"], nullptr);
}

TEST(OpenAIResponse, ChatLogprobsHaveBytesAndTopLogprobs) {
  const FakeGenerator g = bytes();
  const Request r = parse_chat_request(chat(R"("logprobs": true, "top_logprobs": 1)"));
  Response response(r, g, "gpt", {EngineRequest{g.encode("p"), {}, "p"}});
  // "é" is two bytes: each token alone is not text, so it is named by its bytes.
  TokenEvent e = event({0x61, 0xC3, 0xA9}, FinishReason::Length);
  e.logprobs = {-1, -2, -3};
  e.top_logprobs = {{{0x61, -1}}, {{0xC3, -2}}, {{0xA9, -3}}};
  response.add(0, e, nullptr);
  const json body = response.body();
  EXPECT_EQ(body["choices"][0]["message"]["content"], "a\xC3\xA9");
  const json content = body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 3u);
  EXPECT_EQ(content[0], json::parse(R"({"token": "a", "logprob": -1.0, "bytes": [97],
                                       "top_logprobs": [{"token": "a", "logprob": -1.0, "bytes": [97]}]})"));
  EXPECT_EQ(content[1]["token"], "bytes:\\xc3");
  EXPECT_EQ(content[1]["bytes"], json::parse("[195]"));
  EXPECT_EQ(content[2]["top_logprobs"][0]["token"], "bytes:\\xa9");
}

TEST(OpenAIResponse, StreamDeltasConcatenateToTheBodyText) {
  const FakeGenerator g = chars();
  const Request r = parse_completion_request(R"({"model": "m", "prompt": ["he", "we"], "n": 2, "stream": true})");
  const auto prompts = engine_requests(r, g, 32, g.vocab(), 0);
  Response streamed(r, g, "gpt", prompts), whole(r, g, "gpt", prompts);
  const std::vector<std::pair<size_t, TokenEvent>> events = {
      {0, event(g.encode("l"), FinishReason::None, 1)},
      {1, event(g.encode("ay"), FinishReason::None, 0)},
      {0, event(g.encode("lo"), FinishReason::None, 1)},
      {0, event(g.encode("a"), FinishReason::Length, 0)},
      {1, event(g.encode("s"), FinishReason::Stop, 0)},
      {1, event({}, FinishReason::Length, 1)},
      {0, event({}, FinishReason::Stop, 1)},
  };
  const std::vector<json> chunks = stream_of(streamed, events);
  for (const auto& [p, e] : events) whole.add(p, e, nullptr);
  std::vector<std::string> text(4);
  std::vector<std::string> reasons(4);
  for (const json& c : chunks) {
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_EQ(c["id"], streamed.id());
    EXPECT_FALSE(c.contains("usage"));  // only with stream_options.include_usage
    ASSERT_EQ(c["choices"].size(), 1u);
    const json& choice = c["choices"][0];
    const size_t i = choice["index"];
    EXPECT_TRUE(reasons[i].empty()) << "a chunk after choice " << i << "'s last";
    text[i] += choice["text"].get<std::string>();
    if (!choice["finish_reason"].is_null()) {
      reasons[i] = choice["finish_reason"];
      EXPECT_EQ(choice["text"], "");
    }
  }
  const json body = whole.body();
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(text[i], body["choices"][i]["text"]) << i;
    EXPECT_EQ(reasons[i], body["choices"][i]["finish_reason"]) << i;
  }
  EXPECT_TRUE(streamed.finished());
}

TEST(OpenAIResponse, ChatStreamOpensWithTheRoleAndEndsWithAnEmptyDelta) {
  const FakeGenerator g = chars();
  const Request r = parse_chat_request(chat(R"("stream": true, "stream_options": {"include_usage": true}, "n": 2)"));
  Response response(r, g, "gpt", {EngineRequest{g.encode("ab"), {}, "ab"}});
  const std::vector<json> chunks = stream_of(response, {{0, event(g.encode("hi"), FinishReason::None, 1)},
                                                        {0, event(g.encode("yo"), FinishReason::Stop, 0)},
                                                        {0, event({}, FinishReason::Length, 1)}});
  ASSERT_EQ(chunks.size(), 6u);
  for (size_t i = 0; i < 2; ++i)
    EXPECT_EQ(chunks[i]["choices"][0], json::parse(R"({"index": )" + std::to_string(i) +
                                                   R"(, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": null, "finish_reason": null})"));
  EXPECT_EQ(chunks[2]["object"], "chat.completion.chunk");
  EXPECT_EQ(chunks[2]["usage"], nullptr);  // include_usage: null until the last chunk
  EXPECT_EQ(chunks[2]["choices"][0]["delta"], json::parse(R"({"content": "hi"})"));
  EXPECT_EQ(chunks[3]["choices"][0]["delta"], json::parse(R"({"content": "yo"})"));
  EXPECT_EQ(chunks[4]["choices"][0],
            json::parse(R"({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})"));
  EXPECT_EQ(chunks[5]["choices"][0]["finish_reason"], "length");
  const json usage = response.usage_chunk();
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"], json::parse(R"({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})"));
}

TEST(OpenAIResponse, StreamHoldsASplitCharacterUntilItIsWhole) {
  const FakeGenerator g = bytes();
  const Request r = parse_completion_request(R"({"model": "m", "prompt": "p", "stream": true})");
  Response response(r, g, "gpt", engine_requests(r, g, 32, g.vocab(), 0));
  std::vector<json> chunks;
  response.add(0, event({'a', 0xC3}), &chunks);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0]["choices"][0]["text"], "a");
  response.add(0, event({0xA9}), &chunks);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[1]["choices"][0]["text"], "\xC3\xA9");
  // A character still split at the end goes out as it is; JSON text replaces it.
  response.add(0, event({0xE2, 0x82}, FinishReason::Length), &chunks);
  ASSERT_EQ(chunks.size(), 4u);
  EXPECT_EQ(chunks[2]["choices"][0]["text"], "\xE2\x82");
  EXPECT_NE(sse_event(chunks[2]).find("\"text\":\"\xEF\xBF\xBD"), std::string::npos) << sse_event(chunks[2]);
  EXPECT_EQ(chunks[3]["choices"][0]["finish_reason"], "length");
}

TEST(OpenAIResponse, TimeoutsAndCancellationsEndChoicesWithoutChunks) {
  const FakeGenerator g = chars();
  const Request r = parse_completion_request(R"({"model": "m", "prompt": "a", "n": 2, "stream": true})");
  Response response(r, g, "gpt", engine_requests(r, g, 32, g.vocab(), 0));
  std::vector<json> chunks;
  response.add(0, event(g.encode("b"), FinishReason::Cancelled, 1), &chunks);
  EXPECT_TRUE(chunks.empty());
  EXPECT_EQ(response.failure(), FinishReason::Cancelled);
  response.add(0, event({}, FinishReason::Timeout, 0), &chunks);
  EXPECT_TRUE(chunks.empty());
  EXPECT_EQ(response.failure(), FinishReason::Timeout);
  EXPECT_TRUE(response.finished());
}

TEST(OpenAIText, SseEventsAndUtf8Helpers) {
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_STREQ(kSseDone, "data: [DONE]\n\n");
  EXPECT_EQ(json_text(json("\xC3")), "\"\xEF\xBF\xBD\"");
  EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3"), 1u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3\xA9"), 3u);
  EXPECT_EQ(utf8_complete_prefix("a\xE2\x82"), 1u);
  EXPECT_EQ(utf8_complete_prefix("a\xE2\x82\xAC"), 4u);
  EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(utf8_complete_prefix(""), 0u);
  EXPECT_EQ(utf8_length("a\xC3\xA9\xE2\x82\xAC"), 3);
  const std::string id = new_request_id(Endpoint::Completions);
  EXPECT_EQ(id.size(), 29u);
  EXPECT_NE(id, new_request_id(Endpoint::Completions));
}

}  // namespace
