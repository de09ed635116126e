#include "loom/nn/embedding.h"

#include "loom/autograd.h"
#include "loom/nn/functional.h"
#include "loom/nn/init.h"
#include "loom/ops.h"

namespace loom::nn {

EmbeddingImpl::EmbeddingImpl(int64_t num, int64_t dim, std::optional<int64_t> pad)
    : Module("Embedding"), num_embeddings(num), embedding_dim(dim), padding_idx(pad) {
  LOOM_CHECK(num >= 0 && dim >= 0, "Embedding: num_embeddings and embedding_dim must be non-negative, got ", num,
             " and ", dim);
  if (padding_idx) {
    LOOM_CHECK(*padding_idx >= -num && *padding_idx < num, "Embedding: padding_idx must be within [", -num, ", ",
               num, "), got ", *padding_idx);
    if (*padding_idx < 0) *padding_idx += num;
  }
  weight = register_parameter("weight", loom::empty({num, dim}));
  reset_parameters();
}

void EmbeddingImpl::reset_parameters() {
  init::normal_(weight);
  if (padding_idx) {
    NoGradGuard ng;
    weight.select(0, *padding_idx).zero_();
  }
}

Tensor EmbeddingImpl::forward(const Tensor& input) { return functional::embedding(input, weight, padding_idx); }

std::string EmbeddingImpl::extra_repr() const {
  std::string s = std::to_string(num_embeddings) + ", " + std::to_string(embedding_dim);
  if (padding_idx) s += ", padding_idx=" + std::to_string(*padding_idx);
  return s;
}

}  // namespace loom::nn
