// Embedding: a lookup table of learned vectors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "loom/nn/module.h"

namespace loom::nn {

// Integer indices (*) -> rows of weight (*, embedding_dim). Rows start as
// N(0, 1). The padding_idx row (negative counts from the end) starts at
// zero and receives no gradient.
class EmbeddingImpl : public Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim, std::optional<int64_t> padding_idx = std::nullopt);
  Tensor forward(const Tensor& input) override;
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t num_embeddings;
  int64_t embedding_dim;
  std::optional<int64_t> padding_idx;  // in [0, num_embeddings) once built
  Tensor weight;                       // (num_embeddings, embedding_dim)
};
LOOM_MODULE(Embedding);

}  // namespace loom::nn
