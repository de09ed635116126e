#include "loom/nn/transformer.h"

#include <cmath>
#include <limits>

#include "loom/nn/functional.h"
#include "loom/nn/init.h"

namespace loom::nn {

namespace {

constexpr const char* kMha = "MultiheadAttention";
constexpr double kInf = std::numeric_limits<double>::infinity();

std::string describe(const Tensor& t) { return t.defined() ? shape_str(t.sizes()) : "an undefined tensor"; }

// Note [Attention masks]
// PyTorch's MultiheadAttention takes two masks with the opposite bool
// convention of scaled_dot_product_attention: key_padding_mask (N, S) and
// attn_mask (L, S) or (N * H, L, S), where true means "may NOT attend"; a
// float mask is added to the scores. Both become one additive float mask
// of the scores' dtype, broadcastable to the scores (N, H, L, S): a bool true
// becomes -inf, and the two masks add (PyTorch 2.x's canonical form; 1.13
// gives the same for every pair it accepts). -inf stays -inf under the sum,
// so a key masked by either mask is masked. A row with every key masked
// gives NaN weights, as in PyTorch.
Tensor additive_mask(const Tensor& mask, DType dtype) {
  if (mask.dtype() == kBool) {
    const TensorOptions o = TensorOptions(dtype).device(mask.device());
    return where(mask, full({}, -kInf, o), full({}, 0.0, o));
  }
  return mask.dtype() == dtype ? mask : mask.to(dtype);
}

void check_mask_dtype(const char* what, const Tensor& mask) {
  LOOM_CHECK(mask.dtype() == kBool || mask.is_floating_point(), kMha, ": expected a bool or floating point ", what,
             ", got ", dtype_name(mask.dtype()), " (shape ", shape_str(mask.sizes()), ")");
}

}  // namespace

// ---------------------------------------------------------------- MultiheadAttention

MultiheadAttentionImpl::MultiheadAttentionImpl(int64_t embed, int64_t heads, MultiheadAttentionOptions opts)
    : Module(kMha),
      embed_dim(embed),
      num_heads(heads),
      head_dim(heads > 0 ? embed / heads : 0),
      kdim(opts.kdim.value_or(embed)),
      vdim(opts.vdim.value_or(embed)),
      options(opts),
      out_proj(nullptr) {
  LOOM_CHECK(embed > 0, kMha, ": embed_dim must be positive, got ", embed);
  LOOM_CHECK(heads > 0, kMha, ": num_heads must be positive, got ", heads);
  LOOM_CHECK(embed % heads == 0, kMha, ": embed_dim (", embed, ") must be divisible by num_heads (", heads, ")");
  LOOM_CHECK(kdim > 0 && vdim > 0, kMha, ": kdim and vdim must be positive, got ", kdim, " and ", vdim);
  LOOM_CHECK(options.dropout >= 0 && options.dropout <= 1, kMha, ": dropout must be a probability in [0, 1], got ",
             options.dropout);
  packed_ = kdim == embed && vdim == embed;
  // Registered in PyTorch's order, so state_dict() lists what PyTorch lists.
  if (packed_) {
    in_proj_weight = register_parameter("in_proj_weight", loom::empty({3 * embed, embed}));
  } else {
    q_proj_weight = register_parameter("q_proj_weight", loom::empty({embed, embed}));
    k_proj_weight = register_parameter("k_proj_weight", loom::empty({embed, kdim}));
    v_proj_weight = register_parameter("v_proj_weight", loom::empty({embed, vdim}));
  }
  if (options.bias) in_proj_bias = register_parameter("in_proj_bias", loom::empty({3 * embed}));
  out_proj = register_module("out_proj", Linear(embed, embed, options.bias));
  reset_parameters();
}

void MultiheadAttentionImpl::reset_parameters() {
  if (packed_) {
    init::xavier_uniform_(in_proj_weight);
  } else {
    init::xavier_uniform_(q_proj_weight);
    init::xavier_uniform_(k_proj_weight);
    init::xavier_uniform_(v_proj_weight);
  }
  if (in_proj_bias.defined()) {
    init::zeros_(in_proj_bias);
    init::zeros_(out_proj->bias);
  }
}

MultiheadAttentionOutput MultiheadAttentionImpl::forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                                         const Tensor& key_padding_mask, bool need_weights,
                                                         const Tensor& attn_mask, bool average_attn_weights,
                                                         bool is_causal) {
  // ---- checks, with every shape in the message
  const bool bf = options.batch_first;
  LOOM_CHECK(query.defined() && (query.dim() == 3 || query.dim() == 2), kMha, ": expected query of shape ",
             bf ? "(N, L, E)" : "(L, N, E)", " (batched) or (L, E) (unbatched), got ", describe(query));
  const bool batched = query.dim() == 3;
  LOOM_CHECK(key.defined() && value.defined() && key.dim() == query.dim() && value.dim() == query.dim(), kMha,
             ": expected key and value with as many dims as query (", query.dim(), "), got query ",
             shape_str(query.sizes()), ", key ", describe(key), ", value ", describe(value));
  const Tensor& weight0 = packed_ ? in_proj_weight : q_proj_weight;
  LOOM_CHECK(query.is_floating_point() && query.dtype() == weight0.dtype() && key.dtype() == query.dtype() &&
                 value.dtype() == query.dtype(),
             kMha, ": expected query, key and value of the parameters' dtype ", dtype_name(weight0.dtype()),
             ", got ", dtype_name(query.dtype()), ", ", dtype_name(key.dtype()), " and ", dtype_name(value.dtype()));
  LOOM_CHECK(query.size(-1) == embed_dim, kMha, ": query of shape ", shape_str(query.sizes()),
             " has embedding size ", query.size(-1), ", expected embed_dim ", embed_dim);
  LOOM_CHECK(key.size(-1) == kdim, kMha, ": key of shape ", shape_str(key.sizes()), " has ", key.size(-1),
             " features, expected kdim ", kdim);
  LOOM_CHECK(value.size(-1) == vdim, kMha, ": value of shape ", shape_str(value.sizes()), " has ", value.size(-1),
             " features, expected vdim ", vdim);
  // Batch-major views: q_in (N, L, E), k_in (N, S, kdim), v_in (N, S, vdim).
  auto batch_major = [&](const Tensor& t) { return !batched ? t.unsqueeze(0) : bf ? t : t.transpose(0, 1); };
  const Tensor q_in = batch_major(query), k_in = batch_major(key), v_in = batch_major(value);
  const int64_t n = q_in.size(0), tgt_len = q_in.size(1), src_len = k_in.size(1);
  LOOM_CHECK(k_in.size(0) == n && v_in.size(0) == n && v_in.size(1) == src_len, kMha,
             ": query, key and value must agree in batch size and key and value in length, got query ",
             shape_str(query.sizes()), ", key ", shape_str(key.sizes()), ", value ", shape_str(value.sizes()),
             bf ? " (batch_first)" : "");
  const DType dtype = query.dtype();

  // ---- one additive mask broadcastable to the scores (N, H, L, S): Note [Attention masks]
  Tensor mask;
  if (attn_mask.defined()) {
    check_mask_dtype("attn_mask", attn_mask);
    const std::vector<int64_t> mask2{tgt_len, src_len}, mask3{n * num_heads, tgt_len, src_len};
    LOOM_CHECK(attn_mask.sizes() == mask2 || attn_mask.sizes() == mask3, kMha, ": attn_mask of shape ",
               shape_str(attn_mask.sizes()), " must be (L, S) = ", shape_str(mask2), " or (", batched ? "N * " : "",
               "num_heads, L, S) = ", shape_str(mask3), " for query ", shape_str(query.sizes()), " and key ",
               shape_str(key.sizes()));
    mask = additive_mask(attn_mask, dtype);
    if (mask.dim() == 3) mask = mask.reshape({n, num_heads, tgt_len, src_len});
  }
  if (key_padding_mask.defined()) {
    check_mask_dtype("key_padding_mask", key_padding_mask);
    const std::vector<int64_t> expected = batched ? std::vector<int64_t>{n, src_len} : std::vector<int64_t>{src_len};
    LOOM_CHECK(key_padding_mask.sizes() == expected, kMha, ": key_padding_mask of shape ",
               shape_str(key_padding_mask.sizes()), " must be ", batched ? "(N, S) = " : "(S) = ", shape_str(expected),
               " for key ", shape_str(key.sizes()), bf ? " (batch_first)" : "");
    Tensor padding = additive_mask(key_padding_mask, dtype).reshape({n, 1, 1, src_len});
    mask = mask.defined() ? mask + padding : padding;
  }
  // is_causal with attn_mask is only a hint that attn_mask is causal (as PyTorch).
  const bool causal = is_causal && !attn_mask.defined();
  const bool fused_causal = causal && !mask.defined() && !need_weights;
  if (causal && !fused_causal) {
    Tensor tri = triu(full({tgt_len, src_len}, -kInf, TensorOptions(dtype).device(query.device())), 1);
    mask = mask.defined() ? mask + tri : tri;
  }

  // ---- projections: q (N, L, E), k (N, S, E), v (N, S, E)
  Tensor q, k, v;
  std::vector<Tensor> b3 = in_proj_bias.defined() ? in_proj_bias.chunk(3) : std::vector<Tensor>(3);
  if (packed_ && query.is_same(key) && key.is_same(value)) {
    // Self-attention: one matmul for all three.
    std::vector<Tensor> qkv = loom::linear(q_in, in_proj_weight, in_proj_bias).chunk(3, -1);
    q = qkv[0], k = qkv[1], v = qkv[2];
  } else {
    std::vector<Tensor> w3 = packed_ ? in_proj_weight.chunk(3) : std::vector<Tensor>{q_proj_weight, k_proj_weight,
                                                                                     v_proj_weight};
    q = loom::linear(q_in, w3[0], b3[0]);
    k = loom::linear(k_in, w3[1], b3[1]);
    v = loom::linear(v_in, w3[2], b3[2]);
  }
  // Heads: (N, T, E) -> (N, H, T, head_dim); head h holds features h * head_dim.. (PyTorch's split).
  auto heads = [&](const Tensor& t) { return t.unflatten(-1, {num_heads, head_dim}).transpose(1, 2); };
  q = heads(q), k = heads(k), v = heads(v);

  // ---- attention: (N, H, L, head_dim)
  const double p = is_training() ? options.dropout : 0.0;
  Tensor attn, weights;
  if (need_weights) {
    // The weights are wanted: the explicit form (PyTorch's math path).
    Tensor scores = matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(head_dim)));
    if (mask.defined()) scores = scores + mask;
    weights = softmax(scores, -1);
    if (p > 0) weights = functional::dropout(weights, p, true);
    attn = matmul(weights, v);
  } else {
    attn = scaled_dot_product_attention(q, k, v, mask, p, fused_causal);
  }

  // ---- heads back together, out_proj, and the caller's layout
  Tensor out = out_proj(attn.transpose(1, 2).reshape({n, tgt_len, embed_dim}));
  out = !batched ? out.squeeze(0) : bf ? out : out.transpose(0, 1);
  if (weights.defined()) {
    if (average_attn_weights) weights = loom::mean(weights, {1});  // (N, L, S)
    if (!batched) weights = weights.squeeze(0);
  }
  return {out, weights};
}

// ---------------------------------------------------------------- TransformerEncoderLayer

namespace {
constexpr const char* kLayer = "TransformerEncoderLayer";
}  // namespace

TransformerEncoderLayerImpl::TransformerEncoderLayerImpl(int64_t d, int64_t heads, TransformerEncoderLayerOptions opts)
    : Module(kLayer),
      d_model(d),
      nhead(heads),
      options(std::move(opts)),
      self_attn(nullptr),
      linear1(nullptr),
      dropout(nullptr),
      linear2(nullptr),
      norm1(nullptr),
      norm2(nullptr),
      dropout1(nullptr),
      dropout2(nullptr) {
  LOOM_CHECK(options.activation == "relu" || options.activation == "gelu", kLayer,
             ": activation must be \"relu\" or \"gelu\", got \"", options.activation, "\"");
  LOOM_CHECK(options.dim_feedforward > 0, kLayer, ": dim_feedforward must be positive, got ",
             options.dim_feedforward);
  activation_ = options.activation == "relu" ? LinearActivation::Relu : LinearActivation::Gelu;
  const bool bias = options.bias;
  self_attn = register_module(
      "self_attn", MultiheadAttention(d, heads, {.dropout = options.dropout, .bias = bias,
                                                 .batch_first = options.batch_first}));
  linear1 = register_module("linear1", Linear(d, options.dim_feedforward, bias));
  dropout = register_module("dropout", Dropout(options.dropout));
  linear2 = register_module("linear2", Linear(options.dim_feedforward, d, bias));
  norm1 = register_module("norm1", LayerNorm(d, options.layer_norm_eps, true, bias));
  norm2 = register_module("norm2", LayerNorm(d, options.layer_norm_eps, true, bias));
  dropout1 = register_module("dropout1", Dropout(options.dropout));
  dropout2 = register_module("dropout2", Dropout(options.dropout));
}

Tensor TransformerEncoderLayerImpl::forward(const Tensor& src) { return forward(src, Tensor(), Tensor(), false); }

Tensor TransformerEncoderLayerImpl::forward(const Tensor& src, const Tensor& src_mask,
                                            const Tensor& src_key_padding_mask, bool is_causal) {
  LOOM_CHECK(src.defined() && (src.dim() == 3 || src.dim() == 2) && src.size(-1) == d_model, kLayer,
             ": expected src of shape ", options.batch_first ? "(N, S, " : "(S, N, ", d_model, ") or (S, ", d_model,
             ") (d_model=", d_model, "), got ", describe(src));
  auto sa_block = [&](const Tensor& x) {
    return dropout1(self_attn(x, x, x, src_key_padding_mask, false, src_mask, true, is_causal).first);
  };
  auto ff_block = [&](const Tensor& x) {
    return dropout2(linear2(dropout(linear1->forward_fused(x, activation_))));
  };
  Tensor x = src;
  if (options.norm_first) {
    x = x + sa_block(norm1(x));
    x = x + ff_block(norm2(x));
  } else {
    x = norm1(x + sa_block(x));
    x = norm2(x + ff_block(x));
  }
  return x;
}

// ---------------------------------------------------------------- TransformerEncoder

TransformerEncoderImpl::TransformerEncoderImpl(const TransformerEncoderLayer& encoder_layer, int64_t n,
                                               std::shared_ptr<Module> final_norm)
    : Module("TransformerEncoder"), num_layers(n) {
  LOOM_CHECK(!encoder_layer.is_empty(), "TransformerEncoder: encoder_layer is an empty module holder");
  LOOM_CHECK(n >= 1, "TransformerEncoder: num_layers must be at least 1, got ", n);
  const TransformerEncoderLayerImpl& proto = *encoder_layer;
  const StateDict state = proto.state_dict();
  const Tensor& like = proto.linear1->weight;
  layers = register_module("layers", ModuleList());
  for (int64_t i = 0; i < n; ++i) {
    // PyTorch deep-copies encoder_layer: the same configuration and values.
    TransformerEncoderLayer layer(proto.d_model, proto.nhead, proto.options);
    layer->to(like.device());
    layer->to(like.dtype());
    layer->load_state_dict(state);
    layer->train(proto.is_training());
    layers->push_back(layer);
  }
  if (final_norm) norm = register_module("norm", std::move(final_norm));
}

Tensor TransformerEncoderImpl::forward(const Tensor& src) { return forward(src, Tensor(), Tensor(), false); }

Tensor TransformerEncoderImpl::forward(const Tensor& src, const Tensor& mask, const Tensor& src_key_padding_mask,
                                       bool is_causal) {
  Tensor x = src;
  for (size_t i = 0; i < layers->size(); ++i)
    x = layers->ptr<TransformerEncoderLayerImpl>(static_cast<int64_t>(i))
            ->forward(x, mask, src_key_padding_mask, is_causal);
  return norm ? norm->forward(x) : x;
}

}  // namespace loom::nn
