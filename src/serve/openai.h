// OpenAI's API for language models (the /v1 routes of src/serve/server.cpp):
// completions, chat completions and their Server-Sent Events streams.
// Request bodies are parsed and checked here, prompts and stop strings are
// encoded with the model's tokenizer, and the engine's token events are
// turned into OpenAI's response objects and stream chunks. No HTTP here:
// tests/serve/test_openai.cpp drives it with a tokenizer of its own.
//
// Every bad request is an ApiError, answered in OpenAI's error shape
//   {"error": {"message": "...", "type": "invalid_request_error",
//              "param": "temperature", "code": null}}
// with a message that names the field and the value that came. As OpenAI
// does, a field the API does not know is refused (400), so a client never
// believes a setting took effect that loom ignores; the accepted fields are
// kCompletionFields and kChatFields.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "loom/serve.h"
#include "loom/serve/engine.h"

namespace loom::serve::openai {

struct ApiError {
  ApiError(int status_, std::string message_, std::string param_ = "", std::string type_ = "invalid_request_error",
           std::string code_ = "")
      : status(status_),
        message(std::move(message_)),
        param(std::move(param_)),
        type(std::move(type_)),
        code(std::move(code_)) {}
  int status;
  std::string message;
  std::string param;  // the field at fault ("" -> null)
  std::string type;   // OpenAI's types: invalid_request_error, server_error; timeout_error for 504
  std::string code;   // "" -> null; "model_not_found" for a 404 model
};

nlohmann::ordered_json error_body(const ApiError& e);

// The fields each endpoint accepts; any other is a 400. Some are accepted
// only at the value that means "off" (echo false, presence_penalty 0, ...):
// the parser names them when they come with another.
extern const std::vector<std::string> kCompletionFields;
extern const std::vector<std::string> kChatFields;

enum class Endpoint { Completions, Chat };

struct ChatMessage {
  std::string role;     // system | user | assistant ("developer" is read as system)
  std::string content;  // text parts joined
};

// A completion prompt: text, or token ids (OpenAI's prompt may be either).
struct Prompt {
  std::string text;
  std::optional<std::vector<int64_t>> tokens;
};

// A completion or chat completion request, checked (types and ranges).
struct Request {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  std::vector<Prompt> prompts;        // completions: one or more; chat: the template's text (one)
  std::vector<ChatMessage> messages;  // chat
  int64_t max_tokens = 0;             // 0: up to the model's context (chat's default)
  double temperature = 1.0;           // [0, 2]
  double top_p = 1.0;                 // (0, 1]
  int64_t top_k = 0;                  // 0 (or -1, as vLLM): every token
  std::optional<uint64_t> seed;       // none: the server draws one
  std::vector<std::string> stop;      // at most 4; "" entries dropped
  int64_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // completions: "logprobs": N sets this and top_logprobs N
  int64_t top_logprobs = 0;
};

// Bounds on one request: choices (prompts x n), and JSON values in a body.
inline constexpr int64_t kMaxChoices = 256;
inline constexpr int64_t kMaxStops = 4;

// Throw ApiError 400 naming the field, for malformed JSON too.
Request parse_completion_request(std::string_view body);
Request parse_chat_request(std::string_view body);

// Note [Chat template]
// Loom's GPTs are character-level models trained on plain text, with no
// special tokens, so a conversation is written as a transcript:
//   "System: <content>\n"     (also for role "developer")
//   "User: <content>\n"
//   "Assistant: <content>\n"
// one line per message in order, then "Assistant:" for the model to
// continue. Generation also stops at kChatStop ("\nUser:"), where the model
// would start writing the user's next turn; it is dropped from the output
// when the model's vocabulary cannot spell it, like any stop string.
inline constexpr const char* kChatStop = "\nUser:";
std::string chat_prompt(const std::vector<ChatMessage>& messages);

// What the engine gets for one prompt of a request.
struct EngineRequest {
  std::vector<int64_t> prompt;
  SamplingParams params;
  std::string prompt_text;  // the prompt as text (text_offset counts from its start)
};

// The prompts and stop strings encoded with the model's tokenizer, and the
// sampling parameters. An empty prompt starts from "\n" (a document
// boundary), as `loom generate` does. A stop string the tokenizer cannot
// encode can never be generated, so it is dropped. ApiError 400 for a
// prompt that cannot be encoded, a token id outside [0, vocab), or a prompt
// that leaves no room in the model's context (`context` positions; at most
// context - 1 for a prompt). A request without a seed draws from `seed`.
std::vector<EngineRequest> engine_requests(const Request& r, const TextGenerator& g, int64_t context, int64_t vocab,
                                           uint64_t seed);

// "cmpl-" or "chatcmpl-" and 24 random hex digits.
std::string new_request_id(Endpoint endpoint);

// One answer being assembled from the engine's events: the non-stream
// response object, or the stream's chunks as they become ready.
//
// Stream chunks carry text only up to the last complete UTF-8 character (a
// byte tokenizer may split one), so the concatenated deltas equal the whole
// text; a choice's last chunk has empty text (chat: an empty delta) and its
// finish_reason. Chat streams open with one {"role": "assistant"} delta per
// choice (start_chunks()).
class Response {
 public:
  Response(const Request& r, const TextGenerator& g, std::string model, const std::vector<EngineRequest>& prompts);

  const std::string& id() const { return id_; }
  int64_t created() const { return created_; }

  // Takes an event of the engine request of prompt `p`. With `chunks`, adds
  // the stream chunks it makes ready. Cancelled and Timeout end the choice
  // with no chunk (the server answers them with an error).
  void add(size_t p, const TokenEvent& e, std::vector<nlohmann::ordered_json>* chunks);
  std::vector<nlohmann::ordered_json> start_chunks() const;
  // Every choice has ended.
  bool finished() const { return open_ == 0; }
  // Timeout or Cancelled when a choice ended so (Timeout first); None otherwise.
  FinishReason failure() const;

  nlohmann::ordered_json body() const;         // the non-stream response
  nlohmann::ordered_json usage() const;        // {prompt_tokens, completion_tokens, total_tokens}
  nlohmann::ordered_json usage_chunk() const;  // stream_options.include_usage: the last chunk

 private:
  struct Choice {
    std::vector<int64_t> tokens;
    std::vector<double> logprobs;
    std::vector<std::vector<std::pair<int64_t, double>>> top;
    std::vector<int64_t> offsets;  // per token: characters of prompt + text before it
    int64_t chars = 0;             // characters of prompt + text so far (offsets' running sum)
    FinishReason finish = FinishReason::None;
    size_t text_sent = 0;    // bytes of the text streamed
    size_t tokens_sent = 0;  // tokens whose logprobs were streamed
  };
  nlohmann::ordered_json chunk(nlohmann::ordered_json choice) const;
  nlohmann::ordered_json logprobs_json(const Choice& c, size_t begin, size_t end) const;
  std::string token_text(int64_t token) const;

  const TextGenerator& g_;
  Endpoint endpoint_;
  std::string model_, id_;
  int64_t created_ = 0;
  int64_t n_ = 1;
  bool logprobs_ = false, include_usage_ = false;
  int64_t top_logprobs_ = 0;
  int64_t prompt_tokens_ = 0;
  std::vector<Choice> choices_;  // prompt-major: prompt p, choice i at p * n + i
  int64_t open_ = 0;
};

// "data: <json>\n\n" (invalid UTF-8 replaced), and the stream's end.
std::string sse_event(const nlohmann::ordered_json& data);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";
// dump() with invalid UTF-8 replaced by U+FFFD (a byte tokenizer's text may hold some).
std::string json_text(const nlohmann::ordered_json& j);

// UTF-8 helpers (exposed for the tests): the length of `s` without a
// trailing incomplete character, and the characters (code points) of s.
size_t utf8_complete_prefix(std::string_view s);
int64_t utf8_length(std::string_view s);

}  // namespace loom::serve::openai
