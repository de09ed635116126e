// nn::init: in-place initializers (torch.nn.init), run without autograd.
#include "loom/nn/init.h"

#include <cmath>
#include <utility>
#include <vector>

#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::nn::init {

namespace {

void check_tensor(const char* op, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": called with an undefined tensor");
}

void check_floating(const char* op, const Tensor& t) {
  check_tensor(op, t);
  LOOM_CHECK(t.is_floating_point(), op, ": expected a floating point tensor, got ", dtype_name(t.dtype()));
}

int64_t fan_for_mode(const char* op, const Tensor& t, const std::string& mode) {
  LOOM_CHECK(mode == "fan_in" || mode == "fan_out", op, ": mode must be \"fan_in\" or \"fan_out\", got \"", mode,
             "\"");
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  return mode == "fan_in" ? fan_in : fan_out;
}

}  // namespace

double calculate_gain(const std::string& nonlinearity, std::optional<double> param) {
  static const char* const kLinear[] = {"linear",           "conv1d",           "conv2d",          "conv3d",
                                        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid"};
  for (const char* name : kLinear)
    if (nonlinearity == name) return 1.0;
  if (nonlinearity == "tanh") return 5.0 / 3.0;
  if (nonlinearity == "relu") return std::sqrt(2.0);
  if (nonlinearity == "leaky_relu") {
    const double slope = param.value_or(0.01);
    return std::sqrt(2.0 / (1.0 + slope * slope));
  }
  if (nonlinearity == "selu") return 3.0 / 4.0;
  LOOM_ERROR("calculate_gain: unsupported nonlinearity \"", nonlinearity,
             "\" (expected linear, conv1d/2d/3d, conv_transpose1d/2d/3d, sigmoid, tanh, relu, leaky_relu or selu)");
}

std::pair<int64_t, int64_t> calculate_fan_in_and_fan_out(const Tensor& t) {
  check_tensor("calculate_fan_in_and_fan_out", t);
  LOOM_CHECK(t.dim() >= 2,
             "calculate_fan_in_and_fan_out: fan in and fan out can not be computed for a tensor with fewer than 2 "
             "dims, got shape ",
             shape_str(t.sizes()));
  // (out, in, k1, k2, ...): each input connects to a receptive field of k1 * k2 * ... values.
  int64_t receptive = 1;
  for (int64_t d = 2; d < t.dim(); ++d) receptive *= t.sizes()[d];
  return {t.sizes()[1] * receptive, t.sizes()[0] * receptive};
}

Tensor uniform_(Tensor t, double a, double b, std::optional<Generator> generator) {
  check_floating("uniform_", t);
  LOOM_CHECK(a <= b, "uniform_: expected a <= b, got a=", a, " b=", b);
  NoGradGuard ng;
  t.uniform_(a, b, std::move(generator));
  return t;
}

Tensor normal_(Tensor t, double mean, double std, std::optional<Generator> generator) {
  check_floating("normal_", t);
  LOOM_CHECK(std >= 0, "normal_: expected std >= 0, got ", std);
  NoGradGuard ng;
  t.normal_(mean, std, std::move(generator));
  return t;
}

Tensor constant_(Tensor t, Scalar value) {
  check_tensor("constant_", t);
  NoGradGuard ng;
  t.fill_(value);
  return t;
}

Tensor zeros_(Tensor t) { return constant_(std::move(t), 0); }
Tensor ones_(Tensor t) { return constant_(std::move(t), 1); }

Tensor eye_(Tensor t) {
  check_tensor("eye_", t);
  LOOM_CHECK(t.dim() == 2, "eye_: only 2-D tensors are supported, got shape ", shape_str(t.sizes()));
  NoGradGuard ng;
  t.copy_(eye(t.sizes()[0], t.sizes()[1], TensorOptions().dtype(t.dtype()).device(t.device())));
  return t;
}

Tensor xavier_uniform_(Tensor t, double gain, std::optional<Generator> generator) {
  check_floating("xavier_uniform_", t);
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  if (t.numel() == 0) return t;
  const double std = gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out));
  const double bound = std::sqrt(3.0) * std;  // U(-b, b) has standard deviation b / sqrt(3)
  return uniform_(t, -bound, bound, std::move(generator));
}

Tensor xavier_normal_(Tensor t, double gain, std::optional<Generator> generator) {
  check_floating("xavier_normal_", t);
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  if (t.numel() == 0) return t;
  return normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)), std::move(generator));
}

Tensor kaiming_uniform_(Tensor t, double a, const std::string& mode, const std::string& nonlinearity,
                        std::optional<Generator> generator) {
  check_floating("kaiming_uniform_", t);
  const int64_t fan = fan_for_mode("kaiming_uniform_", t, mode);
  const double gain = calculate_gain(nonlinearity, a);
  if (t.numel() == 0) return t;  // PyTorch warns and leaves an empty tensor alone
  const double bound = std::sqrt(3.0) * gain / std::sqrt(static_cast<double>(fan));
  return uniform_(t, -bound, bound, std::move(generator));
}

Tensor kaiming_normal_(Tensor t, double a, const std::string& mode, const std::string& nonlinearity,
                       std::optional<Generator> generator) {
  check_floating("kaiming_normal_", t);
  const int64_t fan = fan_for_mode("kaiming_normal_", t, mode);
  const double gain = calculate_gain(nonlinearity, a);
  if (t.numel() == 0) return t;
  return normal_(t, 0.0, gain / std::sqrt(static_cast<double>(fan)), std::move(generator));
}

Tensor orthogonal_(Tensor t, double gain, std::optional<Generator> generator) {
  check_floating("orthogonal_", t);
  LOOM_CHECK(t.dim() >= 2, "orthogonal_: only tensors with 2 or more dims are supported, got shape ",
             shape_str(t.sizes()));
  if (t.numel() == 0) return t;
  NoGradGuard ng;
  const int64_t rows = t.sizes()[0], cols = t.numel() / rows;
  // QR of the tall side: A is (m, n) with m >= n, the Gaussian matrix or its transpose.
  const bool wide = rows < cols;
  const int64_t m = wide ? cols : rows, n = wide ? rows : cols;
  std::vector<double> g = randn({rows, cols}, kFloat64, std::move(generator)).to_vector<double>();
  // q[j] holds column j of A, then of Q (length m).
  std::vector<std::vector<double>> q(static_cast<size_t>(n), std::vector<double>(static_cast<size_t>(m)));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const double v = g[static_cast<size_t>(i * cols + j)];
      if (wide) q[static_cast<size_t>(i)][static_cast<size_t>(j)] = v;
      else q[static_cast<size_t>(j)][static_cast<size_t>(i)] = v;
    }
  // Modified Gram-Schmidt, each column orthogonalized twice against the
  // previous ones so Q is orthonormal to float64 precision. Dividing by the
  // (positive) norm makes R's diagonal positive: the Q PyTorch gets from QR
  // after multiplying by sign(diag(R)).
  for (size_t j = 0; j < q.size(); ++j) {
    for (int pass = 0; pass < 2; ++pass)
      for (size_t k = 0; k < j; ++k) {
        double dot = 0;
        for (int64_t i = 0; i < m; ++i) dot += q[k][static_cast<size_t>(i)] * q[j][static_cast<size_t>(i)];
        for (int64_t i = 0; i < m; ++i) q[j][static_cast<size_t>(i)] -= dot * q[k][static_cast<size_t>(i)];
      }
    double norm = 0;
    for (double v : q[j]) norm += v * v;
    norm = std::sqrt(norm);
    LOOM_ASSERT(norm > 0, "orthogonal_: a Gaussian matrix came out rank-deficient");
    for (double& v : q[j]) v /= norm;
  }
  // Back to (rows, cols): Q itself when tall, Q^T when wide; times gain.
  Tensor out = loom::empty({rows, cols}, kFloat64);
  double* p = out.data_ptr<double>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      p[i * cols + j] = gain * (wide ? q[static_cast<size_t>(i)][static_cast<size_t>(j)]
                                     : q[static_cast<size_t>(j)][static_cast<size_t>(i)]);
  t.copy_(out.reshape(t.sizes()).to(t.dtype()).to(t.device()));
  return t;
}

}  // namespace loom::nn::init
