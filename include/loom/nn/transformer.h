// Multi-head attention and the Transformer encoder: MultiheadAttention,
// TransformerEncoderLayer and TransformerEncoder, with PyTorch's parameter
// names, shapes, initialization and mask conventions, so a PyTorch
// state_dict maps one to one.
//
//   nn::MultiheadAttention mha(512, 8, {.batch_first = true});
//   auto [out, weights] = mha(x, x, x);       // x (N, L, 512) -> out (N, L, 512),
//                                             // weights (N, L, L), averaged over heads
//   nn::TransformerEncoderLayer layer(512, 8, {.dim_feedforward = 2048, .batch_first = true});
//   nn::TransformerEncoder encoder(layer, 6, nn::LayerNorm(512));
//   Tensor y = encoder(x, {}, padding);       // padding (N, L) bool, true = a pad token
//
// Shapes (E = embed_dim, L = target length, S = source length, N = batch):
//   query (L, N, E), key (S, N, kdim), value (S, N, vdim); (N, L, E) ... with
//   batch_first; unbatched (L, E), (S, kdim), (S, vdim).
//   key_padding_mask (N, S) (unbatched: (S)): bool, true = IGNORE that key
//   (PyTorch's convention, the opposite of scaled_dot_product_attention's),
//   or float, added to the scores.
//   attn_mask (L, S) or (N * num_heads, L, S) (unbatched: (num_heads, L, S)):
//   bool, true = NOT allowed to attend, or float, added to the scores.
//   attn_output like query but with E features; attn_weights (N, L, S)
//   averaged over heads, or (N, num_heads, L, S) per head (unbatched: without N).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "loom/nn/container.h"
#include "loom/nn/dropout.h"
#include "loom/nn/linear.h"
#include "loom/nn/module.h"
#include "loom/nn/normalization.h"
#include "loom/ops.h"

namespace loom::nn {

// PyTorch's keyword arguments. kdim / vdim: the key's and value's feature
// sizes (embed_dim when unset). `dropout` drops attention weights in training.
struct MultiheadAttentionOptions {
  double dropout = 0.0;
  bool bias = true;
  std::optional<int64_t> kdim = {};
  std::optional<int64_t> vdim = {};
  bool batch_first = false;
};

// (attn_output, attn_weights); attn_weights is undefined without need_weights.
using MultiheadAttentionOutput = std::pair<Tensor, Tensor>;

// Projects query, key and value, attends in num_heads heads of
// head_dim = embed_dim / num_heads features each, and projects the heads'
// concatenation with out_proj:
//   out = out_proj(concat_h softmax(q_h k_h^T / sqrt(head_dim) + mask) v_h).
// Parameters, in PyTorch's order: in_proj_weight (3E, E) when kdim == vdim == E,
// else q_proj_weight (E, E), k_proj_weight (E, kdim), v_proj_weight (E, vdim);
// in_proj_bias (3E) (with bias); the child out_proj, a Linear(E, E).
class MultiheadAttentionImpl : public Module {
 public:
  MultiheadAttentionImpl(int64_t embed_dim, int64_t num_heads, MultiheadAttentionOptions options = {});

  // need_weights: also return the attention weights, computed explicitly
  // (matmul, softmax); otherwise the fused scaled_dot_product_attention runs
  // and never holds them. In training, the returned weights are those after
  // dropout (as PyTorch). average_attn_weights: average them over heads.
  // is_causal: without attn_mask, key j > query i is masked; with attn_mask,
  // a hint that attn_mask is causal (as PyTorch), and attn_mask is used.
  MultiheadAttentionOutput forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                   const Tensor& key_padding_mask = {}, bool need_weights = true,
                                   const Tensor& attn_mask = {}, bool average_attn_weights = true,
                                   bool is_causal = false);
  // PyTorch's _reset_parameters: xavier_uniform_ on the input projections,
  // zero in_proj_bias and out_proj.bias; out_proj.weight keeps Linear's init.
  void reset_parameters();

  int64_t embed_dim;
  int64_t num_heads;
  int64_t head_dim;
  int64_t kdim;
  int64_t vdim;
  MultiheadAttentionOptions options;
  // Handles to the registered parameters; undefined when not in this layout.
  Tensor in_proj_weight;  // (3E, E), when kdim == vdim == E
  Tensor q_proj_weight;   // (E, E), otherwise
  Tensor k_proj_weight;   // (E, kdim)
  Tensor v_proj_weight;   // (E, vdim)
  Tensor in_proj_bias;    // (3E); undefined with bias = false
  Linear out_proj;

 private:
  bool packed_;  // one in_proj_weight
};
// The holders spell out their constructors and calls so that braced
// options and `{}` for an absent mask work: mha(q, k, v, {}, false).
class MultiheadAttention : public ModuleHolder<MultiheadAttentionImpl> {
 public:
  using ModuleHolder<MultiheadAttentionImpl>::ModuleHolder;
  MultiheadAttention() = default;
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, MultiheadAttentionOptions options = {})
      : ModuleHolder(std::make_shared<MultiheadAttentionImpl>(embed_dim, num_heads, std::move(options))) {}
  MultiheadAttentionOutput operator()(const Tensor& query, const Tensor& key, const Tensor& value,
                                      const Tensor& key_padding_mask = {}, bool need_weights = true,
                                      const Tensor& attn_mask = {}, bool average_attn_weights = true,
                                      bool is_causal = false) const {
    return get()->forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                          is_causal);
  }
};

// PyTorch's keyword arguments. activation: "relu" or "gelu". bias: of the
// attention, both linears and both norms (PyTorch 2.1's flag).
struct TransformerEncoderLayerOptions {
  int64_t dim_feedforward = 2048;
  double dropout = 0.1;
  std::string activation = "relu";
  double layer_norm_eps = 1e-5;
  bool batch_first = false;
  bool norm_first = false;
  bool bias = true;
};

// Self-attention and a feed-forward block, each with a residual connection:
//   post-norm: x = norm1(x + sa(x));  x = norm2(x + ff(x))
//   pre-norm (norm_first): x = x + sa(norm1(x));  x = x + ff(norm2(x))
// sa(x) = dropout1(self_attn(x, x, x)) (the fused attention: no weights),
// ff(x) = dropout2(linear2(dropout(activation(linear1(x))))).
// Children, in PyTorch's order: self_attn, linear1, dropout, linear2, norm1,
// norm2, dropout1, dropout2. src (S, N, d_model), (N, S, d_model) with
// batch_first, or unbatched (S, d_model); masks as MultiheadAttention's.
class TransformerEncoderLayerImpl : public Module {
 public:
  TransformerEncoderLayerImpl(int64_t d_model, int64_t nhead, TransformerEncoderLayerOptions options = {});
  Tensor forward(const Tensor& src) override;
  Tensor forward(const Tensor& src, const Tensor& src_mask, const Tensor& src_key_padding_mask = {},
                 bool is_causal = false);

  int64_t d_model;
  int64_t nhead;
  TransformerEncoderLayerOptions options;
  MultiheadAttention self_attn;
  Linear linear1;
  Dropout dropout;
  Linear linear2;
  LayerNorm norm1;
  LayerNorm norm2;
  Dropout dropout1;
  Dropout dropout2;

 private:
  LinearActivation activation_;
};
class TransformerEncoderLayer : public ModuleHolder<TransformerEncoderLayerImpl> {
 public:
  using ModuleHolder<TransformerEncoderLayerImpl>::ModuleHolder;
  TransformerEncoderLayer() = default;
  TransformerEncoderLayer(int64_t d_model, int64_t nhead, TransformerEncoderLayerOptions options = {})
      : ModuleHolder(std::make_shared<TransformerEncoderLayerImpl>(d_model, nhead, std::move(options))) {}
  Tensor operator()(const Tensor& src, const Tensor& src_mask = {}, const Tensor& src_key_padding_mask = {},
                    bool is_causal = false) const {
    return get()->forward(src, src_mask, src_key_padding_mask, is_causal);
  }
};

// num_layers encoder layers in a row, then the optional final norm.
// Children: "layers" (a ModuleList: layers.0, layers.1, ...) and "norm".
// As PyTorch's deep copy, every layer is built with encoder_layer's
// configuration and starts from a copy of its parameters (same dtype and
// device, same training mode); encoder_layer itself is not a child.
class TransformerEncoderImpl : public Module {
 public:
  // norm: any single-tensor module (usually a LayerNorm), or null for none.
  TransformerEncoderImpl(const TransformerEncoderLayer& encoder_layer, int64_t num_layers,
                         std::shared_ptr<Module> norm = nullptr);
  // The same with a module holder (nn::LayerNorm(512)); an empty one means none.
  template <detail::ModuleHolderLike Norm>
  TransformerEncoderImpl(const TransformerEncoderLayer& encoder_layer, int64_t num_layers, const Norm& norm)
      : TransformerEncoderImpl(encoder_layer, num_layers, std::static_pointer_cast<Module>(norm.ptr())) {}

  Tensor forward(const Tensor& src) override;
  Tensor forward(const Tensor& src, const Tensor& mask, const Tensor& src_key_padding_mask = {},
                 bool is_causal = false);

  int64_t num_layers;
  ModuleList layers;
  std::shared_ptr<Module> norm;  // null without a final norm
};
class TransformerEncoder : public ModuleHolder<TransformerEncoderImpl> {
 public:
  using ModuleHolder<TransformerEncoderImpl>::ModuleHolder;
  Tensor operator()(const Tensor& src, const Tensor& mask = {}, const Tensor& src_key_padding_mask = {},
                    bool is_causal = false) const {
    return get()->forward(src, mask, src_key_padding_mask, is_causal);
  }
};

}  // namespace loom::nn
