// OpenAI's completions and chat completions (src/serve/openai.h).
#include "serve/openai.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>
#include <random>

#include "loom/error.h"

namespace loom::serve::openai {

using json = nlohmann::ordered_json;

const std::vector<std::string> kCompletionFields = {
    "model", "prompt",           "max_tokens",        "temperature", "top_p",      "top_k",
    "n",     "stream",           "stream_options",    "logprobs",    "echo",       "stop",
    "seed",  "presence_penalty", "frequency_penalty", "best_of",     "logit_bias", "suffix",
    "user"};
const std::vector<std::string> kChatFields = {
    "model", "messages", "max_tokens",       "max_completion_tokens", "temperature", "top_p",
    "top_k", "n",        "stream",           "stream_options",        "logprobs",    "top_logprobs",
    "stop",  "seed",     "presence_penalty", "frequency_penalty",     "logit_bias",  "response_format",
    "user"};

namespace {

// A JSON body is parsed into a DOM (nlohmann's parser is iterative); these
// bounds keep a hostile body's DOM small: OpenAI's requests nest a few
// levels and hold at most a few thousand values (a list of token ids).
constexpr int kMaxJsonDepth = 16;
constexpr int64_t kMaxJsonValues = 1 << 20;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError{400, message, param}; }

// A value of the request for a message: JSON text, cut at 64 bytes.
std::string quoted(const json& v) {
  std::string s = json_text(v);
  if (s.size() > 64) s = s.substr(0, utf8_complete_prefix(std::string_view(s).substr(0, 64))) + "...";
  return s;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

json parse_body(std::string_view body) {
  if (body.empty()) bad("", "the request body is empty: send a JSON object");
  int64_t values = 0;
  const json::parser_callback_t bounded = [&values](int depth, json::parse_event_t event, json&) {
    if (depth > kMaxJsonDepth)
      throw ApiError{400, "the request body nests arrays and objects deeper than " + std::to_string(kMaxJsonDepth)};
    if (event == json::parse_event_t::value || event == json::parse_event_t::object_start ||
        event == json::parse_event_t::array_start)
      if (++values > kMaxJsonValues)
        throw ApiError{400, "the request body holds more than " + std::to_string(kMaxJsonValues) + " JSON values"};
    return true;
  };
  json j;
  try {
    j = json::parse(body.begin(), body.end(), bounded);
  } catch (const json::exception& e) {
    bad("", std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) bad("", "the request body must be a JSON object, got " + quoted(j));
  return j;
}

void check_fields(const json& o, const std::vector<std::string>& known, const char* endpoint) {
  for (auto it = o.begin(); it != o.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      bad(it.key(),
          "unrecognized request argument supplied: '" + it.key() + "' (" + endpoint + " accepts: " + join(known) + ")");
}

// A field's value; nullptr when absent or null (OpenAI reads null as absent).
const json* field(const json& o, const std::string& key) {
  auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::string range_text(int64_t lo, int64_t hi) {
  return "[" + std::to_string(lo) + ", " + (hi == std::numeric_limits<int64_t>::max() ? "inf" : std::to_string(hi)) +
         "]";
}

// An integer in [lo, hi] (an integral float such as 4.0 counts).
std::optional<int64_t> integer_field(const json& o, const std::string& key, int64_t lo, int64_t hi) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  int64_t x = 0;
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    bad(key, "'" + key + "' must be an integer in " + range_text(lo, hi) + ", got " + quoted(*v));
  if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else if (v->is_number_float() && std::nearbyint(v->get<double>()) == v->get<double>() &&
             std::fabs(v->get<double>()) < 9e15) {
    x = static_cast<int64_t>(v->get<double>());
  } else {
    bad(key, "'" + key + "' must be an integer, got " + quoted(*v));
  }
  if (x < lo || x > hi) bad(key, "'" + key + "' must be an integer in " + range_text(lo, hi) + ", got " + quoted(*v));
  return x;
}

// A number in [lo, hi], or (lo, hi] when lo_open.
std::optional<double> number_field(const json& o, const std::string& key, double lo, double hi, bool lo_open = false) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(key, "'" + key + "' must be a number, got " + quoted(*v));
  const double x = v->get<double>();
  auto text = [](double d) { return d == std::floor(d) ? std::to_string(static_cast<int64_t>(d)) : json(d).dump(); };
  if (!(x >= lo && x <= hi) || (lo_open && x == lo))
    bad(key, "'" + key + "' must be a number in " + (lo_open ? "(" : "[") + text(lo) + ", " + text(hi) + "], got " +
                 quoted(*v));
  return x;
}

std::optional<bool> bool_field(const json& o, const std::string& key) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(key, "'" + key + "' must be a boolean, got " + quoted(*v));
  return v->get<bool>();
}

std::optional<std::string> string_field(const json& o, const std::string& key) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad(key, "'" + key + "' must be a string, got " + quoted(*v));
  return v->get<std::string>();
}

// The fields both endpoints share.
void parse_common(const json& o, Request& r, const char* endpoint) {
  const json* model = field(o, "model");
  if (!model)
    bad("model", std::string("you must provide a model parameter (GET /v1/models lists them) for ") + endpoint);
  if (!model->is_string()) bad("model", "'model' must be a string, got " + quoted(*model));
  r.model = model->get<std::string>();
  r.temperature = number_field(o, "temperature", 0, 2).value_or(1.0);
  r.top_p = number_field(o, "top_p", 0, 1, /*lo_open=*/true).value_or(1.0);
  r.top_k = std::max<int64_t>(0, integer_field(o, "top_k", -1, std::numeric_limits<int64_t>::max()).value_or(0));
  r.n = integer_field(o, "n", 1, kMaxChoices).value_or(1);
  if (const json* seed = field(o, "seed")) {
    if (seed->is_number_unsigned())
      r.seed = seed->get<uint64_t>();
    else if (seed->is_number_integer())
      r.seed = static_cast<uint64_t>(seed->get<int64_t>());
    else
      bad("seed", "'seed' must be an integer, got " + quoted(*seed));
  }
  if (const json* stop = field(o, "stop")) {
    std::vector<std::string> stops;
    if (stop->is_string()) {
      stops.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (static_cast<int64_t>(stop->size()) > kMaxStops)
        bad("stop",
            "'stop' takes at most " + std::to_string(kMaxStops) + " sequences, got " + std::to_string(stop->size()));
      for (const json& s : *stop) {
        if (!s.is_string()) bad("stop", "'stop' must be a string or a list of strings, got " + quoted(*stop));
        stops.push_back(s.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or a list of strings, got " + quoted(*stop));
    }
    for (std::string& s : stops)
      if (!s.empty()) r.stop.push_back(std::move(s));
  }
  r.stream = bool_field(o, "stream").value_or(false);
  if (const json* so = field(o, "stream_options")) {
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object, got " + quoted(*so));
    check_fields(*so, {"include_usage"}, "stream_options");
    r.include_usage = bool_field(*so, "include_usage").value_or(false);
  }
  // Accepted at the values that change nothing: loom samples without
  // penalties or biases.
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (number_field(o, key, -2, 2).value_or(0) != 0)
      bad(key, std::string("'") + key + "' is not supported by loom serve: send 0 or leave it out, got " +
                   quoted(o.at(key)));
  if (const json* bias = field(o, "logit_bias")) {
    if (!bias->is_object()) bad("logit_bias", "'logit_bias' must be an object, got " + quoted(*bias));
    if (!bias->empty()) bad("logit_bias", "'logit_bias' is not supported by loom serve: send {} or leave it out");
  }
  string_field(o, "user");  // accepted, and unused
}

}  // namespace

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

Request parse_completion_request(std::string_view body) {
  const json o = parse_body(body);
  check_fields(o, kCompletionFields, "/v1/completions");
  Request r;
  r.endpoint = Endpoint::Completions;
  parse_common(o, r, "/v1/completions");
  const json* prompt = field(o, "prompt");
  if (!prompt) bad("prompt", "you must provide a prompt: a string, a list of strings, or token ids");
  auto token_ids = [](const json& a) {
    std::vector<int64_t> ids;
    for (const json& t : a) {
      if (!t.is_number_integer() || (t.is_number_unsigned() && t.get<uint64_t>() > (1ull << 62)))
        bad("prompt", "'prompt' token ids must be integers, got " + quoted(t));
      ids.push_back(t.get<int64_t>());
    }
    return ids;
  };
  const std::string shapes = "a string, a list of strings, a list of token ids or a list of lists of token ids";
  if (prompt->is_string()) {
    r.prompts.push_back({prompt->get<std::string>(), std::nullopt});
  } else if (prompt->is_array() && !prompt->empty()) {
    const json& first = prompt->front();
    if (first.is_number()) {
      r.prompts.push_back({"", token_ids(*prompt)});
    } else {
      for (const json& p : *prompt) {
        if (p.is_string() && first.is_string())
          r.prompts.push_back({p.get<std::string>(), std::nullopt});
        else if (p.is_array() && first.is_array() && !p.empty())
          r.prompts.push_back({"", token_ids(p)});
        else
          bad("prompt", "'prompt' must be " + shapes + ", got " + quoted(*prompt));
      }
    }
  } else {
    bad("prompt", "'prompt' must be " + shapes + " (not empty), got " + quoted(*prompt));
  }
  if (static_cast<int64_t>(r.prompts.size()) * r.n > kMaxChoices)
    bad("n", std::to_string(r.prompts.size()) + " prompts with n " + std::to_string(r.n) + " make " +
                 std::to_string(static_cast<int64_t>(r.prompts.size()) * r.n) + " choices; at most " +
                 std::to_string(kMaxChoices) + " per request");
  r.max_tokens = integer_field(o, "max_tokens", 1, std::numeric_limits<int32_t>::max()).value_or(16);
  if (auto lp = integer_field(o, "logprobs", 0, 5)) {
    r.logprobs = true;
    r.top_logprobs = *lp;
  }
  if (bool_field(o, "echo").value_or(false))
    bad("echo", "'echo' is not supported by loom serve: send false or leave it out");
  if (const json* suffix = field(o, "suffix"); suffix && !(suffix->is_string() && suffix->get<std::string>().empty()))
    bad("suffix", "'suffix' is not supported by loom serve (no insertion): send null or leave it out");
  if (auto best_of = integer_field(o, "best_of", 1, kMaxChoices); best_of && *best_of != r.n)
    bad("best_of", "'best_of' " + std::to_string(*best_of) + " with n " + std::to_string(r.n) +
                       " is not supported by loom serve: every sampled choice is returned, so best_of must equal n");
  return r;
}

Request parse_chat_request(std::string_view body) {
  const json o = parse_body(body);
  check_fields(o, kChatFields, "/v1/chat/completions");
  Request r;
  r.endpoint = Endpoint::Chat;
  parse_common(o, r, "/v1/chat/completions");
  const json* messages = field(o, "messages");
  if (!messages) bad("messages", "you must provide 'messages': a list of {\"role\", \"content\"} objects");
  if (!messages->is_array() || messages->empty())
    bad("messages", "'messages' must be a non-empty list of {\"role\", \"content\"} objects, got " + quoted(*messages));
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(where, "'" + where + "' must be an object with \"role\" and \"content\", got " + quoted(m));
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it.key() != "role" && it.key() != "content" && it.key() != "name")
        bad(where + "." + it.key(),
            "unrecognized field '" + it.key() + "' in '" + where + "' (a message has role, content and name)");
    const json* role = field(m, "role");
    if (!role || !role->is_string())
      bad(where + ".role", "'" + where + ".role' must be a string, got " + (role ? quoted(*role) : "nothing"));
    ChatMessage msg;
    msg.role = role->get<std::string>();
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      bad(where + ".role", "'" + where + ".role' must be system, developer, user or assistant, got " + quoted(*role));
    const json* content = field(m, "content");
    if (!content) {
      if (msg.role != "assistant") bad(where + ".content", "'" + where + ".content' is missing");
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      // Content parts: text only.
      for (const json& part : *content) {
        if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
            !part["text"].is_string())
          bad(where + ".content", "'" + where +
                                      ".content' parts must be {\"type\": \"text\", \"text\": string} (loom serves "
                                      "text models), got " +
                                      quoted(part));
        msg.content += part["text"].get<std::string>();
      }
    } else {
      bad(where + ".content",
          "'" + where + ".content' must be a string or a list of text parts, got " + quoted(*content));
    }
    r.messages.push_back(std::move(msg));
  }
  r.prompts.push_back({chat_prompt(r.messages), std::nullopt});
  const auto max_tokens = integer_field(o, "max_tokens", 1, std::numeric_limits<int32_t>::max());
  const auto max_completion = integer_field(o, "max_completion_tokens", 1, std::numeric_limits<int32_t>::max());
  r.max_tokens = max_completion.value_or(max_tokens.value_or(0));
  r.logprobs = bool_field(o, "logprobs").value_or(false);
  if (auto top = integer_field(o, "top_logprobs", 0, 20)) {
    if (!r.logprobs && *top > 0) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r.top_logprobs = *top;
  }
  if (const json* rf = field(o, "response_format"))
    if (!rf->is_object() || rf->value("type", json()) != "text" || rf->size() != 1)
      bad("response_format",
          "'response_format' must be {\"type\": \"text\"} (loom serve has no JSON mode), got " + quoted(*rf));
  return r;
}

std::string chat_prompt(const std::vector<ChatMessage>& messages) {
  std::string text;
  for (const ChatMessage& m : messages) {
    const char* role = m.role == "user" ? "User" : m.role == "assistant" ? "Assistant" : "System";
    text += std::string(role) + ": " + m.content + "\n";
  }
  return text + "Assistant:";
}

std::vector<EngineRequest> engine_requests(const Request& r, const TextGenerator& g, int64_t context, int64_t vocab,
                                           uint64_t seed) {
  const char* param = r.endpoint == Endpoint::Chat ? "messages" : "prompt";
  std::vector<std::vector<int64_t>> stops;
  std::vector<std::string> stop_texts = r.stop;
  if (r.endpoint == Endpoint::Chat) stop_texts.push_back(kChatStop);
  for (const std::string& s : stop_texts) {
    try {
      std::vector<int64_t> ids = g.encode(s);
      if (!ids.empty()) stops.push_back(std::move(ids));
    } catch (const Error&) {
      // A character the vocabulary lacks: this stop string can never be generated.
    }
  }
  std::vector<EngineRequest> out;
  for (size_t i = 0; i < r.prompts.size(); ++i) {
    const Prompt& p = r.prompts[i];
    const std::string which = r.prompts.size() > 1 ? std::string(param) + "[" + std::to_string(i) + "]" : param;
    EngineRequest e;
    if (p.tokens) {
      for (int64_t t : *p.tokens)
        if (t < 0 || t >= vocab)
          bad(which, "token id " + std::to_string(t) + " in '" + which + "' is outside the model's vocabulary [0, " +
                         std::to_string(vocab) + ")");
      e.prompt = *p.tokens;
    } else {
      try {
        e.prompt = g.encode(p.text);
      } catch (const Error& err) {
        bad(which, "'" + which + "' cannot be encoded with the model's tokenizer: " + err.what());
      }
    }
    if (e.prompt.empty()) {
      // No prompt: start from a newline (a document boundary), or token 0.
      try {
        e.prompt = g.encode("\n");
      } catch (const Error&) {
      }
      if (e.prompt.empty()) e.prompt = {0};
    }
    const auto length = static_cast<int64_t>(e.prompt.size());
    if (length >= context)
      bad(which, "this model's maximum context length is " + std::to_string(context) + " tokens, but '" + which +
                     "' has " + std::to_string(length) + " tokens (at most " + std::to_string(context - 1) +
                     ", to leave room for one generated token)");
    e.prompt_text = g.decode(e.prompt);
    SamplingParams& s = e.params;
    // Without max_tokens, up to the context's end (the engine stops there in any case).
    s.max_tokens = r.max_tokens > 0 ? r.max_tokens : context - length;
    s.temperature = r.temperature;
    s.top_p = r.top_p;
    s.top_k = r.top_k;
    s.seed = r.seed.value_or(seed);
    s.stop = stops;
    s.logprobs = r.logprobs;
    s.top_logprobs = r.logprobs ? r.top_logprobs : 0;
    s.n = r.n;
    out.push_back(std::move(e));
  }
  return out;
}

std::string new_request_id(Endpoint endpoint) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-";
  const uint64_t hi = rng(), lo = rng();
  for (int i = 0; i < 8; ++i) id += hex[(hi >> (4 * i)) & 15];
  for (int i = 0; i < 16; ++i) id += hex[(lo >> (4 * i)) & 15];
  return id;
}

// ---- responses ----

Response::Response(const Request& r, const TextGenerator& g, std::string model,
                   const std::vector<EngineRequest>& prompts)
    : g_(g),
      endpoint_(r.endpoint),
      model_(std::move(model)),
      id_(new_request_id(r.endpoint)),
      created_(static_cast<int64_t>(std::time(nullptr))),
      n_(r.n),
      logprobs_(r.logprobs),
      include_usage_(r.include_usage),
      top_logprobs_(r.top_logprobs) {
  for (const EngineRequest& p : prompts) {
    prompt_tokens_ += static_cast<int64_t>(p.prompt.size());
    const int64_t chars = utf8_length(p.prompt_text);
    for (int64_t i = 0; i < n_; ++i) {
      choices_.emplace_back();
      choices_.back().chars = chars;
    }
  }
  open_ = static_cast<int64_t>(choices_.size());
}

void Response::add(size_t p, const TokenEvent& e, std::vector<json>* chunks) {
  const size_t index = p * static_cast<size_t>(n_) + static_cast<size_t>(e.index);
  LOOM_ASSERT(e.index >= 0 && e.index < n_ && index < choices_.size(), "an event of choice ", e.index, " of prompt ", p,
              " in a response of ", choices_.size(), " choices");
  Choice& c = choices_[index];
  if (c.finish != FinishReason::None) return;
  for (size_t i = 0; i < e.tokens.size(); ++i) {
    c.tokens.push_back(e.tokens[i]);
    c.logprobs.push_back(i < e.logprobs.size() ? e.logprobs[i] : std::numeric_limits<double>::quiet_NaN());
    c.top.push_back(i < e.top_logprobs.size() ? e.top_logprobs[i] : std::vector<std::pair<int64_t, double>>{});
    c.offsets.push_back(c.chars);
    c.chars += utf8_length(g_.decode(std::vector<int64_t>{e.tokens[i]}));
  }
  if (e.finish != FinishReason::None) {
    c.finish = e.finish;
    --open_;
  }
  const bool ended_well = c.finish == FinishReason::Stop || c.finish == FinishReason::Length;
  if (!chunks || (c.finish != FinishReason::None && !ended_well)) return;
  const bool chat = endpoint_ == Endpoint::Chat;
  const std::string text = g_.decode(c.tokens);
  const size_t end = c.finish != FinishReason::None ? text.size() : utf8_complete_prefix(text);
  if (end > c.text_sent || (logprobs_ && c.tokens.size() > c.tokens_sent)) {
    const std::string delta = text.substr(c.text_sent, end - c.text_sent);
    const json lp = logprobs_ ? logprobs_json(c, c.tokens_sent, c.tokens.size()) : json(nullptr);
    if (chat)
      chunks->push_back(
          chunk({{"index", index}, {"delta", {{"content", delta}}}, {"logprobs", lp}, {"finish_reason", nullptr}}));
    else
      chunks->push_back(chunk({{"text", delta}, {"index", index}, {"logprobs", lp}, {"finish_reason", nullptr}}));
    c.text_sent = end;
    c.tokens_sent = c.tokens.size();
  }
  if (ended_well) {
    const char* reason = finish_reason_name(c.finish);
    if (chat)
      chunks->push_back(
          chunk({{"index", index}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", reason}}));
    else
      chunks->push_back(chunk({{"text", ""}, {"index", index}, {"logprobs", nullptr}, {"finish_reason", reason}}));
  }
}

std::vector<json> Response::start_chunks() const {
  std::vector<json> out;
  if (endpoint_ != Endpoint::Chat) return out;
  for (size_t i = 0; i < choices_.size(); ++i)
    out.push_back(chunk({{"index", i},
                         {"delta", {{"role", "assistant"}, {"content", ""}}},
                         {"logprobs", nullptr},
                         {"finish_reason", nullptr}}));
  return out;
}

FinishReason Response::failure() const {
  FinishReason f = FinishReason::None;
  for (const Choice& c : choices_) {
    if (c.finish == FinishReason::Timeout) return FinishReason::Timeout;
    if (c.finish == FinishReason::Cancelled) f = FinishReason::Cancelled;
  }
  return f;
}

json Response::chunk(json choice) const {
  json c = {{"id", id_},
            {"object", endpoint_ == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"choices", json::array({std::move(choice)})}};
  if (include_usage_) c["usage"] = nullptr;
  return c;
}

std::string Response::token_text(int64_t token) const {
  const std::string s = g_.decode(std::vector<int64_t>{token});
  bool valid = utf8_complete_prefix(s) == s.size();
  for (size_t i = 0; valid && i < s.size();) {
    // Each character: a lead byte and its continuation bytes.
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    valid = len > 0 && i + len <= s.size();
    for (size_t k = 1; valid && k < len; ++k) valid = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    i += len;
  }
  if (valid) return s;
  // Not text on its own (a byte of a multi-byte character): OpenAI's "bytes:\xNN" form.
  std::string out = "bytes:";
  static const char* hex = "0123456789abcdef";
  for (unsigned char b : s) out += std::string("\\x") + hex[b >> 4] + hex[b & 15];
  return out;
}

json Response::logprobs_json(const Choice& c, size_t begin, size_t end) const {
  auto bytes_of = [&](int64_t token) {
    json bytes = json::array();
    for (unsigned char b : g_.decode(std::vector<int64_t>{token})) bytes.push_back(static_cast<int>(b));
    return bytes;
  };
  if (endpoint_ == Endpoint::Chat) {
    json content = json::array();
    for (size_t i = begin; i < end; ++i) {
      json top = json::array();
      for (const auto& [t, lp] : c.top[i])
        top.push_back({{"token", token_text(t)}, {"logprob", lp}, {"bytes", bytes_of(t)}});
      content.push_back({{"token", token_text(c.tokens[i])},
                         {"logprob", c.logprobs[i]},
                         {"bytes", bytes_of(c.tokens[i])},
                         {"top_logprobs", top}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  json tokens = json::array(), token_logprobs = json::array(), offsets = json::array();
  json top = top_logprobs_ > 0 ? json::array() : json(nullptr);
  for (size_t i = begin; i < end; ++i) {
    tokens.push_back(token_text(c.tokens[i]));
    token_logprobs.push_back(c.logprobs[i]);
    offsets.push_back(c.offsets[i]);
    if (top_logprobs_ > 0) {
      json alternatives = json::object();
      for (const auto& [t, lp] : c.top[i]) alternatives[token_text(t)] = lp;
      top.push_back(std::move(alternatives));
    }
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json Response::usage() const {
  int64_t completion = 0;
  for (const Choice& c : choices_) completion += static_cast<int64_t>(c.tokens.size());
  return {{"prompt_tokens", prompt_tokens_},
          {"completion_tokens", completion},
          {"total_tokens", prompt_tokens_ + completion}};
}

json Response::usage_chunk() const {
  return {{"id", id_},
          {"object", endpoint_ == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created_},
          {"model", model_},
          {"choices", json::array()},
          {"usage", usage()}};
}

json Response::body() const {
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    const std::string text = g_.decode(c.tokens);
    const json lp = logprobs_ ? logprobs_json(c, 0, c.tokens.size()) : json(nullptr);
    const char* reason = finish_reason_name(c.finish);
    if (endpoint_ == Endpoint::Chat)
      choices.push_back({{"index", i},
                         {"message", {{"role", "assistant"}, {"content", text}}},
                         {"logprobs", lp},
                         {"finish_reason", reason}});
    else
      choices.push_back({{"text", text}, {"index", i}, {"logprobs", lp}, {"finish_reason", reason}});
  }
  return {{"id", id_},           {"object", endpoint_ == Endpoint::Chat ? "chat.completion" : "text_completion"},
          {"created", created_}, {"model", model_},
          {"choices", choices},  {"usage", usage()}};
}

// ---- text ----

std::string json_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& data) { return "data: " + json_text(data) + "\n\n"; }

size_t utf8_complete_prefix(std::string_view s) {
  // The last lead byte among the final four, and whether its character is whole.
  for (size_t back = 1; back <= 4 && back <= s.size(); ++back) {
    const auto b = static_cast<unsigned char>(s[s.size() - back]);
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte
    const size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
    return len > back ? s.size() - back : s.size();
  }
  return s.size();
}

int64_t utf8_length(std::string_view s) {
  int64_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

}  // namespace loom::serve::openai
