// models::LSTMLM (include/loom/models/lstm_lm.h).
#include "loom/models/lstm_lm.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "loom/autograd.h"
#include "loom/checkpoint.h"
#include "loom/error.h"
#include "loom/nn/functional.h"

namespace loom::models {
namespace {

void check_config(const LSTMLMConfig& c) {
  LOOM_CHECK(c.vocab_size > 0 && c.hidden > 0 && c.layers > 0 && c.embed >= 0,
             "LSTMLM: vocab_size, hidden and layers must be positive and embed >= 0, got vocab_size ", c.vocab_size,
             ", embed ", c.embed, ", hidden ", c.hidden, ", layers ", c.layers);
  LOOM_CHECK(c.dropout >= 0 && c.dropout < 1, "LSTMLM: dropout must be in [0, 1), got ", c.dropout);
}

Tensor as_batch(const Tensor& idx, const char* what) {
  const Tensor b = idx.dim() == 1 ? idx.unsqueeze(0) : idx;
  LOOM_CHECK(b.dim() == 2 && b.dtype() == kInt64, what, ": expected int64 token ids of shape (B, T) or (T), got ",
             dtype_name(idx.dtype()), " ", shape_str(idx.sizes()));
  return b;
}

}  // namespace

LSTMLMImpl::LSTMLMImpl(const LSTMLMConfig& cfg) : Module("LSTMLM"), config(cfg) {
  check_config(cfg);
  const int64_t e = cfg.embed > 0 ? cfg.embed : cfg.hidden;
  embed = register_module("embed", nn::Embedding(cfg.vocab_size, e));
  lstm = register_module("lstm", nn::LSTM(e, cfg.hidden,
                                          {.num_layers = cfg.layers, .batch_first = true, .dropout = cfg.dropout}));
  head = register_module("head", nn::Linear(cfg.hidden, cfg.vocab_size));
}

Tensor LSTMLMImpl::forward(const Tensor& idx) {
  if (checkpoint_activations_ && is_grad_enabled()) {
    Tensor out = loom::checkpoint(
        [this](const Tensor& x) {
          nn::LSTMState fresh;
          return lstm(x, fresh).first;
        },
        embed(as_batch(idx, "LSTMLM")));
    return head(out);
  }
  nn::LSTMState state;
  return forward(idx, state);
}

Tensor LSTMLMImpl::forward(const Tensor& idx, nn::LSTMState& state) {
  auto [out, next] = lstm(embed(as_batch(idx, "LSTMLM")), state);
  state = next;
  return head(out);
}

Tensor LSTMLMImpl::loss(const Tensor& idx, const Tensor& targets) {
  return nn::functional::cross_entropy(forward(idx).reshape({-1, config.vocab_size}), targets.reshape({-1}));
}

Tensor LSTMLMImpl::generate(const Tensor& idx_in, int64_t max_new_tokens, const GenerateOptions& options) {
  const bool flat = idx_in.dim() == 1;
  const Tensor idx = as_batch(idx_in, "LSTMLM::generate");
  LOOM_CHECK(idx.size(1) > 0, "LSTMLM::generate: the prompt is empty");
  LOOM_CHECK(max_new_tokens >= 0 && options.top_k >= 0, "LSTMLM::generate: max_new_tokens and top_k must be >= 0, got ",
             max_new_tokens, " and ", options.top_k);
  NoGradGuard guard;
  const bool was_training = is_training();
  eval();
  const int64_t b = idx.size(0), v = config.vocab_size;
  std::vector<Tensor> pieces = {idx};
  nn::LSTMState state;
  Tensor logits = forward(idx, state);
  uint64_t rng = options.seed;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const Tensor last = logits.select(1, logits.size(1) - 1).to(kFloat32).contiguous();
    std::vector<int64_t> next(static_cast<size_t>(b));
    for (int64_t r = 0; r < b; ++r)
      next[static_cast<size_t>(r)] = sample_token(last.data_ptr<float>() + r * v, v, options, rng);
    const Tensor t = tensor(next, kInt64).reshape({b, 1});
    pieces.push_back(t);
    if (step + 1 < max_new_tokens) logits = forward(t, state);
  }
  train(was_training);
  Tensor out = cat(pieces, 1);
  return flat ? out.squeeze(0) : out;
}

std::string LSTMLMImpl::extra_repr() const {
  std::ostringstream os;
  os << "vocab_size=" << config.vocab_size << ", hidden=" << config.hidden << ", layers=" << config.layers;
  return os.str();
}

std::string lstm_lm_config_to_json(const LSTMLMConfig& c) {
  return nlohmann::json{{"vocab_size", c.vocab_size}, {"embed", c.embed},       {"hidden", c.hidden},
                        {"layers", c.layers},         {"dropout", c.dropout}}
      .dump();
}

LSTMLMConfig lstm_lm_config_from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    LOOM_CHECK(false, "LSTMLM config: not valid JSON: ", e.what());
  }
  LOOM_CHECK(j.is_object(), "LSTMLM config: expected a JSON object, got ", text);
  LSTMLMConfig c;
  for (auto [key, field] : {std::pair<const char*, int64_t*>{"vocab_size", &c.vocab_size}, {"embed", &c.embed},
                            {"hidden", &c.hidden}, {"layers", &c.layers}}) {
    LOOM_CHECK(j.contains(key) && j[key].is_number_integer(), "LSTMLM config: missing or non-integer \"", key,
               "\" in ", text);
    *field = j[key].get<int64_t>();
  }
  if (j.contains("dropout")) {
    LOOM_CHECK(j["dropout"].is_number(), "LSTMLM config: \"dropout\" must be a number in ", text);
    c.dropout = j["dropout"].get<double>();
  }
  check_config(c);
  return c;
}

}  // namespace loom::models
