// Helpers of the loom::compile suites (test_jit, test_jit_scheduler,
// test_jit_fusion): training steps of small models, deterministic batches,
// and bitwise comparison of two models' state.
#pragma once

#include <functional>
#include <utility>

#include "loom/loom.h"
#include "test_util.h"

namespace loom::test {

inline void expect_same_state(const nn::Module& a, const nn::Module& b) {
  StateDict sa = a.state_dict(), sb = b.state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t k = 0; k < sa.size(); ++k) EXPECT_TRUE(same_bits(sa[k].second, sb[k].second)) << sa[k].first;
}

inline void copy_params(nn::Module& from, nn::Module& to) { to.load_state_dict(from.state_dict()); }

using Step = std::function<Tensor(const Tensor&, const Tensor&)>;

// A training step of `m` with `opt`: zero_grad(set_to_none), loss,
// backward, clip (when clip > 0), step. `loss_of(m, x, y)` gives the loss.
template <class M, class Opt, class LossOf>
Step training_step(M m, Opt& opt, LossOf loss_of, double clip = 0, bool set_to_none = true) {
  return [m, &opt, loss_of, clip, set_to_none](const Tensor& x, const Tensor& y) {
    opt.zero_grad(set_to_none);
    Tensor loss = loss_of(m, x, y);
    loss.backward();
    if (clip > 0) nn::utils::clip_grad_norm_tensor_(m->parameters(), clip);
    opt.step();
    return loss;
  };
}
const auto classify = [](const nn::Sequential& m, const Tensor& x, const Tensor& y) {
  return nn::functional::cross_entropy(m->forward(x), y);
};
const auto language_model = [](const auto& m, const Tensor& x, const Tensor& y) { return m->loss(x, y); };

// Batch k: inputs of `shape` (token ids below `vocab` when vocab > 0, else
// normal noise) and class targets below `classes`, drawn from Generator(seed + k).
inline auto batches(Shape shape, int64_t vocab, int64_t classes, Shape target_shape, uint64_t seed) {
  return [=](int k) {
    Generator g(seed + static_cast<uint64_t>(k));
    Tensor x = vocab > 0 ? randint(0, vocab, shape, {}, g) : randn(shape, {}, g);
    return std::make_pair(x, randint(0, classes, target_shape, {}, g));
  };
}

// A 2-layer LSTM language model small enough for bitwise replay tests.
inline models::LSTMLMConfig tiny_lstm() {
  models::LSTMLMConfig cfg;
  cfg.vocab_size = 30;
  cfg.hidden = 24;
  cfg.layers = 2;
  cfg.dropout = 0.2;
  return cfg;
}

inline models::GPTConfig tiny_gpt(int64_t layers) {
  models::GPTConfig cfg;
  cfg.n_layer = layers;
  cfg.n_embd = 32;
  cfg.n_head = 4;
  cfg.block_size = 16;
  cfg.vocab_size = 40;
  cfg.dropout = 0.1;
  return cfg;
}

}  // namespace loom::test
