// Free-function forms of every op, named as in libtorch (loom::matmul,
// loom::softmax(x, dim), loom::cat({a, b}, 0)), and the factories.
#pragma once

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "loom/generator.h"
#include "loom/tensor.h"

namespace loom {

// ---- factories ----
Tensor empty(IntArrayRef sizes, const TensorOptions& o = {});
Tensor zeros(IntArrayRef sizes, const TensorOptions& o = {});
Tensor ones(IntArrayRef sizes, const TensorOptions& o = {});
Tensor full(IntArrayRef sizes, Scalar value, const TensorOptions& o = {});
Tensor scalar_tensor(Scalar value, const TensorOptions& o = {});
// arange(end), arange(start, end, step): int64 when all bounds are integers,
// otherwise the default float dtype, unless `o` names one.
Tensor arange(Scalar end, const TensorOptions& o = {});
Tensor arange(Scalar start, Scalar end, Scalar step = 1, const TensorOptions& o = {});
Tensor linspace(double start, double end, int64_t steps, const TensorOptions& o = {});
Tensor eye(int64_t n, std::optional<int64_t> m = std::nullopt, const TensorOptions& o = {});
// Random factories draw from `generator`, or from the global stream
// (default_generator(), seeded by manual_seed) when it is left out.
Tensor rand(IntArrayRef sizes, const TensorOptions& o = {}, std::optional<Generator> generator = std::nullopt);
Tensor randn(IntArrayRef sizes, const TensorOptions& o = {}, std::optional<Generator> generator = std::nullopt);
Tensor randint(int64_t low, int64_t high, IntArrayRef sizes, const TensorOptions& o = kInt64,
               std::optional<Generator> generator = std::nullopt);
Tensor randint(int64_t high, IntArrayRef sizes, const TensorOptions& o = kInt64,
               std::optional<Generator> generator = std::nullopt);
Tensor randperm(int64_t n, const TensorOptions& o = kInt64, std::optional<Generator> generator = std::nullopt);
Tensor bernoulli(const Tensor& p, std::optional<Generator> generator = std::nullopt);
Tensor bernoulli(const Tensor& like, double p, std::optional<Generator> generator = std::nullopt);
Tensor empty_like(const Tensor& t, std::optional<TensorOptions> o = std::nullopt);
Tensor zeros_like(const Tensor& t, std::optional<TensorOptions> o = std::nullopt);
Tensor ones_like(const Tensor& t, std::optional<TensorOptions> o = std::nullopt);
Tensor full_like(const Tensor& t, Scalar v, std::optional<TensorOptions> o = std::nullopt);
Tensor rand_like(const Tensor& t, std::optional<TensorOptions> o = std::nullopt,
                 std::optional<Generator> generator = std::nullopt);
Tensor randn_like(const Tensor& t, std::optional<TensorOptions> o = std::nullopt,
                  std::optional<Generator> generator = std::nullopt);
Tensor randint_like(const Tensor& t, int64_t low, int64_t high, std::optional<TensorOptions> o = std::nullopt,
                    std::optional<Generator> generator = std::nullopt);

// A nested initializer list of numbers: loom::tensor({{1, 2}, {3, 4}}).
class NestedList {
 public:
  NestedList(double v) : value_(v), is_float_(true) {}                   // NOLINT
  NestedList(float v) : value_(v), is_float_(true) {}                    // NOLINT
  NestedList(int v) : value_(v) {}                                        // NOLINT
  NestedList(int64_t v) : value_(static_cast<double>(v)), ivalue_(v) {}  // NOLINT
  NestedList(long long v) : NestedList(static_cast<int64_t>(v)) {}       // NOLINT
  NestedList(bool v) : value_(v), is_bool_(true) {}                       // NOLINT
  NestedList(std::initializer_list<NestedList> l) : children_(l), is_list_(true) {}  // NOLINT
  // Fills sizes and flat values; throws on ragged lists.
  void flatten(std::vector<int64_t>& sizes, std::vector<double>& values, std::vector<int64_t>& ivalues,
               bool& any_float, bool& all_bool) const;

 private:
  void walk(size_t depth, std::vector<int64_t>& sizes, std::vector<double>& values,
            std::vector<int64_t>& ivalues, bool& any_float, bool& all_bool) const;
  double value_ = 0;
  std::optional<int64_t> ivalue_;
  bool is_float_ = false, is_bool_ = false;
  std::vector<NestedList> children_;
  bool is_list_ = false;
};
// Float literals give float32 (PyTorch's default), integers int64, bools bool.
Tensor tensor(const NestedList& values, const TensorOptions& o = {});
template <typename T>
Tensor tensor(const std::vector<T>& values, const TensorOptions& o = {});
// Wraps memory the caller owns, without copying. `deleter` (optional) runs
// when the last tensor using it goes away.
Tensor from_blob(void* data, IntArrayRef sizes, const TensorOptions& o = {},
                 std::function<void(void*)> deleter = nullptr);
Tensor from_blob(void* data, IntArrayRef sizes, IntArrayRef strides, const TensorOptions& o = {},
                 std::function<void(void*)> deleter = nullptr);

// ---- random state ----
// Seeds the global Philox generator (default_generator()). Draws depend on
// (seed, draw counter) alone, never on the thread count.
void manual_seed(uint64_t seed);
uint64_t initial_seed();
// The global generator's whole state (RngState, loom/generator.h), so a
// checkpoint can resume the same stream.
RngState get_rng_state();
void set_rng_state(const RngState& state);

// ---- elementwise ----
Tensor add(const Tensor& a, const Tensor& b, Scalar alpha = 1);
Tensor sub(const Tensor& a, const Tensor& b, Scalar alpha = 1);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, Scalar b);
Tensor pow(Scalar a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor log1p(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor erf(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01);
Tensor elu(const Tensor& x, double alpha = 1.0);
// approximate: "none" (erf) or "tanh".
Tensor gelu(const Tensor& x, const std::string& approximate = "none");
Tensor silu(const Tensor& x);
Tensor softplus(const Tensor& x, double beta = 1.0, double threshold = 20.0);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor clamp(const Tensor& x, std::optional<Scalar> lo, std::optional<Scalar> hi);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, Scalar b);
Tensor where(const Tensor& cond, Scalar a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar v);
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor logical_not(const Tensor& x);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor isnan(const Tensor& x);

// ---- reductions (dims empty = all dims) ----
Tensor sum(const Tensor& x, IntArrayRef dims = {}, bool keepdim = false);
Tensor sum(const Tensor& x, IntArrayRef dims, bool keepdim, DType dtype);
Tensor mean(const Tensor& x, IntArrayRef dims = {}, bool keepdim = false);
Tensor prod(const Tensor& x, IntArrayRef dims = {}, bool keepdim = false);
Tensor amax(const Tensor& x, IntArrayRef dims = {}, bool keepdim = false);
Tensor amin(const Tensor& x, IntArrayRef dims = {}, bool keepdim = false);
Tensor max(const Tensor& x);
Tensor min(const Tensor& x);
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
Tensor argmin(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
Tensor var(const Tensor& x, IntArrayRef dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor std(const Tensor& x, IntArrayRef dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor norm(const Tensor& x, double p = 2, IntArrayRef dims = {}, bool keepdim = false);
Tensor logsumexp(const Tensor& x, IntArrayRef dims, bool keepdim = false);
Tensor cumsum(const Tensor& x, int64_t dim);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

// grad where x > threshold, 0 elsewhere (NaN in x counts as not greater):
// relu's gradient from its input or output in one pass (PyTorch's
// threshold_backward). grad and x broadcast; floating dtypes.
Tensor threshold_backward(const Tensor& grad, const Tensor& x, double threshold);

// ---- fused row ops ----
// The gradient of softmax / log_softmax along `dim` from the op's output:
// y * (grad - sum(grad * y)) and grad - exp(y) * sum(grad). Differentiable.
Tensor softmax_backward(const Tensor& grad, const Tensor& output, int64_t dim);
Tensor log_softmax_backward(const Tensor& grad, const Tensor& output, int64_t dim);
// Layer normalization over the trailing `normalized_shape` dims, with an
// optional elementwise weight and bias of that shape (torch.layer_norm).
Tensor layer_norm(const Tensor& x, IntArrayRef normalized_shape, const Tensor& weight = {}, const Tensor& bias = {},
                  double eps = 1e-5);
// Cross entropy of each row of (N, C) logits with int64 class targets (N):
// lse - (1 - s) x[t] - (s / C) sum(x) for label smoothing s, 0 where the
// target is ignore_index. nn::functional::cross_entropy reduces it.
Tensor cross_entropy_per_row(const Tensor& logits, const Tensor& target, double label_smoothing = 0.0,
                             int64_t ignore_index = -100);

// ---- linear algebra ----
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor mm(const Tensor& a, const Tensor& b);
Tensor bmm(const Tensor& a, const Tensor& b);

// ---- fused linear ----
// act(input @ weight^T + bias) in one primitive: input (*, in_features),
// weight (out_features, in_features), bias (out_features) or undefined. The
// bias and activation run on each block of the product while it is still in
// cache; the result is bit for bit matmul, add and the activation's op.
// GELU forms need a floating-point dtype.
enum class LinearActivation { None, Relu, Gelu, GeluTanh };
Tensor linear(const Tensor& input, const Tensor& weight, const Tensor& bias = {},
              LinearActivation activation = LinearActivation::None);

// ---- quantized inference (Note [Quantized Linear] in src/backend/cpu/cpu_quant.cpp) ----
// int8: per-channel (one scale per output row) int8 weights; each input row
//   is rounded to int8 with its own scale (dynamic, per token), as PyTorch's
//   quantize_dynamic, and multiplied in integers.
// int4: weights in groups of 32 along in_features, each group 4-bit with its
//   own scale (ggml's Q4_0); the input is rounded to int8 per group of 32
//   (ggml's Q8_0) for the integer products.
enum class QuantScheme : uint8_t { Int8 = 1, Int4 = 2 };
const char* quant_scheme_name(QuantScheme scheme);  // "int8", "int4"
// "int8" or "int4"; anything else is an Error naming `what` and the value.
QuantScheme parse_quant_scheme(const std::string& name, const std::string& what = "quantization scheme");
// A weight (out_features, in_features) float32 -> (codes, scales):
//   int8: codes int8 (N, K), scales float32 (N);
//   int4: codes uint8 (N, ceil(K / 32) * 16), scales float32 (N, ceil(K / 32)).
std::pair<Tensor, Tensor> quantize_weight(const Tensor& weight, QuantScheme scheme);
// The float32 weight (N, in_features) the codes and scales stand for.
Tensor dequantize_weight(const Tensor& codes, const Tensor& scales, QuantScheme scheme, int64_t in_features);
// input (*, in_features) float32 -> (*, out_features): input @ weight^T + bias
// with the weight as quantize_weight wrote it. Inference only: an input that
// requires grad while grad mode is on is an Error.
Tensor quantized_linear(const Tensor& input, const Tensor& codes, const Tensor& scales, const Tensor& bias,
                        QuantScheme scheme);

// ---- convolution (NCHW; torch.nn.functional's argument order) ----
// A one-element stride / padding / dilation list applies to every spatial dim.
// input (N, C, H, W) or unbatched (C, H, W); weight (O, C / groups, KH, KW);
// bias (O) or undefined. Output (N, O, OH, OW) with
// OH = (H + 2 padding - dilation (KH - 1) - 1) / stride + 1.
Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias = {}, IntArrayRef stride = {1},
              IntArrayRef padding = {0}, IntArrayRef dilation = {1}, int64_t groups = 1);
// PyTorch's string padding: Valid (none) or Same (output size = input size;
// stride 1 only; an odd total goes one more to the right / bottom, as PyTorch).
enum class ConvPadding { Valid, Same };
Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, ConvPadding padding,
              IntArrayRef dilation = {1}, int64_t groups = 1);
// input (N, C, L) or (C, L); weight (O, C / groups, K).
Tensor conv1d(const Tensor& input, const Tensor& weight, const Tensor& bias = {}, IntArrayRef stride = {1},
              IntArrayRef padding = {0}, IntArrayRef dilation = {1}, int64_t groups = 1);
Tensor conv1d(const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, ConvPadding padding,
              IntArrayRef dilation = {1}, int64_t groups = 1);
// The gradient of conv2d with respect to its input, as a layer: input
// (N, C_in, H, W), weight (C_in, C_out / groups, KH, KW) (PyTorch's layout),
// output (N, C_out, (H - 1) stride - 2 padding + dilation (KH - 1) + output_padding + 1, ...).
Tensor conv_transpose2d(const Tensor& input, const Tensor& weight, const Tensor& bias = {}, IntArrayRef stride = {1},
                        IntArrayRef padding = {0}, IntArrayRef output_padding = {0}, int64_t groups = 1,
                        IntArrayRef dilation = {1});
// The gradient of conv2d with respect to its weight (torch.nn.grad.conv2d_weight):
// input (N, C, H, W), grad_output (N, O, OH, OW) -> (O, C / groups, KH, KW).
Tensor conv2d_weight(const Tensor& input, IntArrayRef weight_size, const Tensor& grad_output, IntArrayRef stride = {1},
                     IntArrayRef padding = {0}, IntArrayRef dilation = {1}, int64_t groups = 1);

// ---- pooling (NCHW or unbatched CHW; stride defaults to kernel_size) ----
Tensor max_pool2d(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride = {}, IntArrayRef padding = {0},
                  IntArrayRef dilation = {1}, bool ceil_mode = false);
// Also the argmax of each window as a flat index into its (H, W) plane (int64).
std::pair<Tensor, Tensor> max_pool2d_with_indices(const Tensor& input, IntArrayRef kernel_size,
                                                  IntArrayRef stride = {}, IntArrayRef padding = {0},
                                                  IntArrayRef dilation = {1}, bool ceil_mode = false);
Tensor avg_pool2d(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride = {}, IntArrayRef padding = {0},
                  bool ceil_mode = false, bool count_include_pad = true,
                  std::optional<int64_t> divisor_override = std::nullopt);
// Window i of a dim of size H spans [floor(i H / out), ceil((i + 1) H / out)).
Tensor adaptive_avg_pool2d(const Tensor& input, IntArrayRef output_size);

// ---- batch normalization (one fused primitive) ----
// Training-mode batch normalization: input (N, C, *) is normalized per
// channel with the batch's mean and biased variance over every dim but 1
// (eps added to the variance), then scaled by weight (C) and shifted by bias
// (C), either of which may be undefined. nn::functional::batch_norm adds the
// running statistics and the eval mode.
Tensor batch_norm(const Tensor& input, const Tensor& weight = {}, const Tensor& bias = {}, double eps = 1e-5);
// The same, also returning the batch's per-channel mean and biased variance
// ((C) each, without gradient): (output, mean, var).
std::tuple<Tensor, Tensor, Tensor> batch_norm_with_stats(const Tensor& input, const Tensor& weight = {},
                                                         const Tensor& bias = {}, double eps = 1e-5);

// ---- attention ----
// PyTorch's torch.nn.functional.scaled_dot_product_attention:
//   softmax(query key^T * scale + mask) value, with dropout on the weights,
// as one fused op that never holds the Tq x Tk weights (memory grows with T;
// Note [Attention kernels]). query (..., Tq, E), key (..., Tk, E), value
// (..., Tk, Ev) with equal leading dims; attn_mask broadcastable to
// (..., Tq, Tk): bool (true = take part) or a float mask added to the
// scores; is_causal masks key j > query i (not with attn_mask); scale
// defaults to 1 / sqrt(E); dropout_p > 0 drops weights (pass 0 in eval),
// the mask drawn from `generator` (the global stream when left out).
// A float attn_mask that requires grad takes the unfused path (loom ops), so
// it gets its gradient too.
Tensor scaled_dot_product_attention(const Tensor& query, const Tensor& key, const Tensor& value,
                                    const Tensor& attn_mask = {}, double dropout_p = 0.0, bool is_causal = false,
                                    std::optional<double> scale = std::nullopt,
                                    std::optional<Generator> generator = std::nullopt);
// Attention over a paged KV cache (vLLM's layout), for serving: the T query
// tokens of a flattened batch of sequences, token t belonging to sequence
// seq_index[t] at position positions[t], attending that sequence's keys at
// positions 0..positions[t] (causal). Key/value position p of sequence s is
// in block block_tables[s][p / B] at row p % B of the cache.
//   query        (T, H, D)        float32 (or any float dtype)
//   key_cache    (NB, B, H, D)    same dtype; value_cache (NB, B, H, Dv)
//   block_tables (S, MB)          int32 or int64 block ids
//   seq_index    (T)              int64, in [0, S)
//   positions    (T)              int64, >= 0, positions[t] / B < MB
// Returns (T, H, Dv). scale defaults to 1/sqrt(D). A token's result depends
// only on its query and its sequence's keys and values, bit for bit: never on
// the other tokens of the batch or the thread count (Note [Paged attention]).
// Only the blocks a token reads are checked: an id outside [0, NB) is an
// Error. No autograd: an input requiring grad while grad mode is on is an
// Error.
Tensor paged_attention(const Tensor& query, const Tensor& key_cache, const Tensor& value_cache,
                       const Tensor& block_tables, const Tensor& seq_index, const Tensor& positions,
                       std::optional<double> scale = std::nullopt);

// ---- joining, splitting, indexing ----
Tensor cat(const std::vector<Tensor>& ts, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& ts, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor embedding(const Tensor& weight, const Tensor& indices);
Tensor one_hot(const Tensor& indices, int64_t num_classes = -1);
Tensor tril(const Tensor& x, int64_t diagonal = 0);
Tensor triu(const Tensor& x, int64_t diagonal = 0);
Tensor flip(const Tensor& x, IntArrayRef dims);
// pad: pairs from the last dim backwards, as torch.nn.functional.pad:
// {left, right} pads the last dim, {l, r, top, bottom} the last two.
// Negative amounts crop.
Tensor pad(const Tensor& x, IntArrayRef pad, Scalar value = 0);

// ---- views as free functions ----
Tensor reshape(const Tensor& x, IntArrayRef sizes);
Tensor permute(const Tensor& x, IntArrayRef dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, std::optional<int64_t> dim = std::nullopt);
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor select(const Tensor& x, int64_t dim, int64_t index);
Tensor broadcast_to(const Tensor& x, IntArrayRef sizes);
std::vector<int64_t> broadcast_shapes(const std::vector<int64_t>& a, const std::vector<int64_t>& b);
std::vector<Tensor> broadcast_tensors(const std::vector<Tensor>& ts);
// The dtype PyTorch would give `a op b` (0-dim tensors and scalars count less).
DType result_type(const Tensor& a, const Tensor& b);
DType result_type(const Tensor& a, Scalar b);

bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8, bool equal_nan = false);
bool equal(const Tensor& a, const Tensor& b);

// ---- fused optimizer steps ----
// One kernel launch updates a whole list of parameters in place, as
// PyTorch's torch._fused_adam_ / _fused_adamw_ / _fused_sgd_. Every tensor
// is float32 and contiguous on one device (steps: 0-dim float64 on the CPU,
// already incremented by the caller, one per parameter); list entry j has
// params[j]'s shape. The math is the per-tensor optimizer's (see adam.h,
// adamw.h, sgd.h) with the same roundings. Not differentiable: call under
// NoGradGuard (optim::Adam / AdamW / SGD do). max_exp_avg_sqs is read only
// with amsgrad (pass {} otherwise); momentum_buffers only with momentum != 0,
// and with is_first_step they are written (buf = d_p) rather than read.
void _fused_adam_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                  const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                  const std::vector<Tensor>& max_exp_avg_sqs, const std::vector<Tensor>& state_steps, double lr,
                  double beta1, double beta2, double weight_decay, double eps, bool amsgrad, bool maximize);
void _fused_adamw_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                   const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                   const std::vector<Tensor>& max_exp_avg_sqs, const std::vector<Tensor>& state_steps, double lr,
                   double beta1, double beta2, double weight_decay, double eps, bool amsgrad, bool maximize);
void _fused_sgd_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                 const std::vector<Tensor>& momentum_buffers, double weight_decay, double momentum, double lr,
                 double dampening, bool nesterov, bool maximize, bool is_first_step);
// Whether `device`'s backend has these kernels (false for a device this build
// cannot use), so optimizers fall back to the per-tensor step elsewhere.
bool _fused_optim_supported(Device device);

}  // namespace loom
