// A recurrent language model: Embedding -> LSTM -> Linear, the classic
// char-rnn (and the LSTM of needle's hw4 language model).
//
//   loom::models::LSTMLMConfig cfg{.vocab_size = 96, .hidden = 256, .layers = 2};
//   loom::models::LSTMLM lm(cfg);
//   Tensor logits = lm(idx);                  // idx (B, T) int64 -> (B, T, V)
//   Tensor out = lm->generate(prompt, 200, {.temperature = 0.8});
//
// Children: "embed" (vocab_size, embed), "lstm" (batch_first, PyTorch's
// parameter names), "head" (hidden -> vocab_size). Generation carries the
// LSTM state (h, c) from token to token: one step per new token.
#pragma once

#include <cstdint>
#include <string>

#include "loom/models/gpt.h"
#include "loom/nn.h"

namespace loom::models {

struct LSTMLMConfig {
  int64_t vocab_size = 256;
  int64_t embed = 0;  // embedding width; 0: hidden
  int64_t hidden = 256;
  int64_t layers = 2;
  double dropout = 0.0;  // between LSTM layers (training only)
};

class LSTMLMImpl : public nn::Module {
 public:
  explicit LSTMLMImpl(const LSTMLMConfig& cfg);
  // idx (B, T) or (T) int64 -> logits (B, T, vocab).
  Tensor forward(const Tensor& idx) override;
  // The same from state (h, c) (undefined: zeros); the new state is written back.
  Tensor forward(const Tensor& idx, nn::LSTMState& state);
  Tensor loss(const Tensor& idx, const Tensor& targets);
  // Appends max_new_tokens sampled tokens to idx (B, T) (or (T)); the whole
  // history conditions every token (no context limit). use_cache is ignored.
  Tensor generate(const Tensor& idx, int64_t max_new_tokens, const GenerateOptions& options = {});
  std::string extra_repr() const override;
  // Activation checkpointing: the LSTM's gate activations are dropped after
  // the forward and recomputed in the backward (loom::checkpoint around the
  // stateless forward's LSTM).
  void set_checkpoint_activations(bool on) { checkpoint_activations_ = on; }
  bool checkpoint_activations() const { return checkpoint_activations_; }

  LSTMLMConfig config;
  nn::Embedding embed{nullptr};
  nn::LSTM lstm{nullptr};
  nn::Linear head{nullptr};
 private:
  bool checkpoint_activations_ = false;
};
LOOM_MODULE(LSTMLM);

std::string lstm_lm_config_to_json(const LSTMLMConfig& cfg);
LSTMLMConfig lstm_lm_config_from_json(const std::string& json);

}  // namespace loom::models
