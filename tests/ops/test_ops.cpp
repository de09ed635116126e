// The op table: one row per op (and per interesting argument), each with an
// independent plain-loop reference. run_row (harness.h) checks forward in
// float64/float32 (and float16/bfloat16 for elementwise rows), gradcheck in
// float64, and every layout variant. Adding an op means adding a row here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "harness.h"

namespace loom_test {
namespace {

using loom::Scalar;
using loom::indexing::Ellipsis;
using loom::indexing::None;
using loom::indexing::Slice;
using AL = std::vector<Array>;
using Cases = std::vector<std::vector<Shape>>;

constexpr double kPi = 3.14159265358979323846;

// Shapes shared by many rows: a plain matrix, a size-1 dim, and a 0-dim tensor.
const Cases kUnaryCases = {{{3, 4}}, {{2, 1, 3}}, {{}}};
const Cases kBinaryCases = {{{3, 4}, {3, 4}}, {{2, 1, 3}, {2, 1, 3}}, {{3, 4}, {}}, {{}, {}}};
const Cases kReduce3d = {{{2, 3, 4}}, {{2, 1, 4}}, {{1, 3, 1}}};

// ---- scalar references ----
double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double gelu_ref(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / kPi) * (x + 0.044715 * x * x * x)));
}
double softplus_ref(double x, double beta, double threshold) {
  return x * beta > threshold ? x : std::log1p(std::exp(beta * x)) / beta;
}
double sign_ref(double x) { return static_cast<double>((x > 0) - (x < 0)); }

// ---- fiber references ----
double vsum(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }
double vmean(const std::vector<double>& v) { return vsum(v) / static_cast<double>(v.size()); }
double vprod(const std::vector<double>& v) {
  double p = 1;
  for (double x : v) p *= x;
  return p;
}
double vmax(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }
double vmin(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double vargmax(const std::vector<double>& v) { return static_cast<double>(std::max_element(v.begin(), v.end()) - v.begin()); }
double vargmin(const std::vector<double>& v) { return static_cast<double>(std::min_element(v.begin(), v.end()) - v.begin()); }
std::function<double(const std::vector<double>&)> vvar(int64_t correction) {
  return [correction](const std::vector<double>& v) {
    double m = vmean(v), s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return s / static_cast<double>(static_cast<int64_t>(v.size()) - correction);
  };
}
std::function<double(const std::vector<double>&)> vstd(int64_t correction) {
  auto var = vvar(correction);
  return [var](const std::vector<double>& v) { return std::sqrt(var(v)); };
}
std::function<double(const std::vector<double>&)> vnorm(double p) {
  return [p](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += std::pow(std::abs(x), p);
    return std::pow(s, 1.0 / p);
  };
}
double vlogsumexp(const std::vector<double>& v) {
  double m = vmax(v), s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}
std::vector<double> vsoftmax(const std::vector<double>& v) {
  double m = vmax(v), s = 0;
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) s += (r[i] = std::exp(v[i] - m));
  for (double& x : r) x /= s;
  return r;
}
std::vector<double> vlog_softmax(const std::vector<double>& v) {
  double l = vlogsumexp(v);
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = v[i] - l;
  return r;
}
std::vector<double> vcumsum(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) r[i] = s += v[i];
  return r;
}
std::vector<double> vreverse(const std::vector<double>& v) { return {v.rbegin(), v.rend()}; }

// ---- array references ----
Array where_ref(const Array& c, const Array& a, const Array& b) {
  Shape s = broadcast_shapes(broadcast_shapes(c.shape, a.shape), b.shape);
  Array C = expand_to(c, s), A = expand_to(a, s), B = expand_to(b, s), out(s);
  for (int64_t i = 0; i < out.numel(); ++i) out.v[i] = C.v[i] != 0 ? A.v[i] : B.v[i];
  return out;
}

Array unsqueeze_ref(const Array& a, int64_t dim) {
  Shape s = a.shape;
  s.insert(s.begin() + wrap(dim, a.dim() + 1), 1);
  return Array(s, a.v);
}

Array squeeze_ref(const Array& a, std::optional<int64_t> dim) {
  Shape s;
  for (int64_t d = 0; d < a.dim(); ++d) {
    bool drop = a.shape[d] == 1 && (!dim || wrap(*dim, a.dim()) == d);
    if (!drop) s.push_back(a.shape[d]);
  }
  return Array(s, a.v);
}

Array gather_ref(const Array& x, int64_t dim, const Array& index) {
  int64_t d = wrap(dim, x.dim());
  Array out(index.shape);
  for_each_index(index.shape, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> src = idx;
    src[d] = static_cast<int64_t>(index.at(idx));
    out.at(idx) = x.at(src);
  });
  return out;
}

Array scatter_add_ref(const Array& x, int64_t dim, const Array& index, const Array& src) {
  int64_t d = wrap(dim, x.dim());
  Array out = x;
  for_each_index(index.shape, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> dst = idx;
    dst[d] = static_cast<int64_t>(index.at(idx));
    out.at(dst) += src.at(idx);
  });
  return out;
}

Array index_select_ref(const Array& x, int64_t dim, const Array& index) {
  int64_t d = wrap(dim, x.dim());
  Shape s = x.shape;
  s[d] = index.numel();
  Array out(s);
  for_each_index(s, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> src = idx;
    src[d] = static_cast<int64_t>(index.v[idx[d]]);
    out.at(idx) = x.at(src);
  });
  return out;
}

Array embedding_ref(const Array& w, const Array& ind) {
  Shape s = ind.shape;
  s.push_back(w.shape[1]);
  Array out(s);
  for_each_index(s, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> i(idx.begin(), idx.end() - 1);
    out.at(idx) = w.at({static_cast<int64_t>(ind.at(i)), idx.back()});
  });
  return out;
}

Array one_hot_ref(const Array& ind, int64_t classes) {
  if (classes < 0) classes = static_cast<int64_t>(vmax(ind.v)) + 1;
  Shape s = ind.shape;
  s.push_back(classes);
  Array out(s);
  for_each_index(s, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> i(idx.begin(), idx.end() - 1);
    out.at(idx) = static_cast<int64_t>(ind.at(i)) == idx.back() ? 1.0 : 0.0;
  });
  return out;
}

Array tri_ref(const Array& x, int64_t k, bool lower) {
  Array out = x;
  for_each_index(x.shape, [&](const std::vector<int64_t>& idx) {
    int64_t i = idx[idx.size() - 2], j = idx.back();
    bool keep = lower ? j - i <= k : j - i >= k;
    if (!keep) out.at(idx) = 0;
  });
  return out;
}

Array flip_ref(const Array& x, std::vector<int64_t> dims) {
  Array out = x;
  for (int64_t d : dims) out = along(out, d, vreverse);
  return out;
}

// pad: pairs from the last dim backwards; negative amounts crop.
Array pad_ref(const Array& x, const std::vector<int64_t>& pad, double value) {
  Shape s = x.shape;
  std::vector<int64_t> left(x.shape.size(), 0);
  for (size_t p = 0; p < pad.size() / 2; ++p) {
    size_t d = x.shape.size() - 1 - p;
    left[d] = pad[2 * p];
    s[d] += pad[2 * p] + pad[2 * p + 1];
  }
  Array out(s, value);
  for_each_index(s, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> src(idx.size());
    for (size_t d = 0; d < idx.size(); ++d) {
      src[d] = idx[d] - left[d];
      if (src[d] < 0 || src[d] >= x.shape[d]) return;
    }
    out.at(idx) = x.at(src);
  });
  return out;
}

Array mask_select_ref(const Array& x, const Array& mask) {
  std::vector<double> v;
  for (int64_t i = 0; i < x.numel(); ++i)
    if (mask.v[i] != 0) v.push_back(x.v[i]);
  return Array({static_cast<int64_t>(v.size())}, v);
}

std::vector<Array> split_ref(const Array& x, const std::vector<int64_t>& sizes, int64_t dim) {
  std::vector<Array> r;
  int64_t off = 0;
  for (int64_t s : sizes) {
    r.push_back(ref_slice(x, dim, off, off + s, 1));
    off += s;
  }
  return r;
}

// ---- row builders ----
Row unary(const std::string& name, std::function<Tensor(const Tensor&)> op, std::function<double(double)> ref,
          Domain dom) {
  return Row(name)
      .in(std::move(dom))
      .shapes(kUnaryCases)
      .f([op](const TL& x) { return op(x[0]); })
      .r([ref](const AL& a) { return map(a[0], ref); })
      .low_precision();
}

Row binary(const std::string& name, std::function<Tensor(const Tensor&, const Tensor&)> op,
           std::function<double(double, double)> ref, Domain a, Domain b) {
  return Row(name)
      .in(std::move(a))
      .in(std::move(b))
      .shapes(kBinaryCases)
      .f([op](const TL& x) { return op(x[0], x[1]); })
      .r([ref](const AL& v) { return zip(v[0], v[1], ref); })
      .broadcasting()
      .low_precision();
}

Row compare(const std::string& name, std::function<Tensor(const Tensor&, const Tensor&)> op,
            std::function<bool(double, double)> ref) {
  return binary(name, std::move(op), [ref](double a, double b) { return ref(a, b) ? 1.0 : 0.0; }, Ints(0, 3), Ints(0, 3))
      .out({Out::Bool})
      .forward_only();
}

Row reduction(const std::string& name, std::function<Tensor(const Tensor&)> op,
              std::function<double(const std::vector<double>&)> fold, std::vector<int64_t> dims, bool keepdim,
              Domain dom, Cases cases = kReduce3d) {
  return Row(name)
      .in(std::move(dom))
      .shapes(std::move(cases))
      .f([op](const TL& x) { return op(x[0]); })
      .r([fold, dims, keepdim](const AL& a) { return reduce(a[0], dims, keepdim, fold); });
}

Row rowwise(const std::string& name, std::function<Tensor(const Tensor&)> op,
            std::function<std::vector<double>(const std::vector<double>&)> fiber, int64_t dim, Domain dom,
            Cases cases) {
  return Row(name)
      .in(std::move(dom))
      .shapes(std::move(cases))
      .f([op](const TL& x) { return op(x[0]); })
      .r([fiber, dim](const AL& a) { return along(a[0], dim, fiber); });
}

Row matmul_row(const std::string& name, std::function<Tensor(const Tensor&, const Tensor&)> op, Cases cases) {
  return Row(name)
      .in(U(-1, 1))
      .in(U(-1, 1))
      .shapes(std::move(cases))
      .f([op](const TL& x) { return op(x[0], x[1]); })
      .r([](const AL& a) { return ref_matmul(a[0], a[1]); });
}

// A view-like op checked against a reference on the values.
Row view_row(const std::string& name, std::function<Tensor(const Tensor&)> op, std::function<Array(const Array&)> ref,
             Cases cases) {
  return Row(name)
      .in(U(-2, 2))
      .shapes(std::move(cases))
      .f([op](const TL& x) { return op(x[0]); })
      .r([ref](const AL& a) { return ref(a[0]); });
}

void add_elementwise_rows(std::vector<Row>& rows) {
  const Domain any = U(-2, 2);
  const Domain pos = U(0.5, 3);
  rows.push_back(unary("neg", [](const Tensor& x) { return loom::neg(x); }, [](double v) { return -v; }, any));
  rows.push_back(unary("neg_operator", [](const Tensor& x) { return -x; }, [](double v) { return -v; }, any));
  rows.push_back(unary("exp", [](const Tensor& x) { return loom::exp(x); }, [](double v) { return std::exp(v); }, any)
                     .gradgrad_check());
  rows.push_back(unary("log", [](const Tensor& x) { return loom::log(x); }, [](double v) { return std::log(v); }, pos)
                     .gradgrad_check());
  rows.push_back(unary("log1p", [](const Tensor& x) { return loom::log1p(x); }, [](double v) { return std::log1p(v); },
                       U(-0.5, 2))
                     .gradgrad_check());
  rows.push_back(unary("sqrt", [](const Tensor& x) { return loom::sqrt(x); }, [](double v) { return std::sqrt(v); }, pos)
                     .gradgrad_check());
  rows.push_back(unary("rsqrt", [](const Tensor& x) { return loom::rsqrt(x); },
                       [](double v) { return 1.0 / std::sqrt(v); }, pos)
                     .gradgrad_check());
  rows.push_back(unary("abs", [](const Tensor& x) { return loom::abs(x); }, [](double v) { return std::abs(v); },
                       Away(-2, 2, {0}, 0.1)));
  rows.push_back(unary("sign", [](const Tensor& x) { return loom::sign(x); }, sign_ref, Away(-2, 2, {0}, 0.1)));
  rows.push_back(unary("sin", [](const Tensor& x) { return loom::sin(x); }, [](double v) { return std::sin(v); },
                       U(-3, 3))
                     .gradgrad_check());
  rows.push_back(unary("cos", [](const Tensor& x) { return loom::cos(x); }, [](double v) { return std::cos(v); },
                       U(-3, 3))
                     .gradgrad_check());
  rows.push_back(unary("tanh", [](const Tensor& x) { return loom::tanh(x); }, [](double v) { return std::tanh(v); }, any)
                     .gradgrad_check());
  rows.push_back(unary("erf", [](const Tensor& x) { return loom::erf(x); }, [](double v) { return std::erf(v); }, any)
                     .gradgrad_check());
  rows.push_back(unary("sigmoid", [](const Tensor& x) { return loom::sigmoid(x); }, sigmoid_ref, U(-3, 3))
                     .gradgrad_check());
  rows.push_back(unary("relu", [](const Tensor& x) { return loom::relu(x); },
                       [](double v) { return v > 0 ? v : 0.0; }, Away(-2, 2, {0}, 0.1)));
  rows.push_back(unary("leaky_relu", [](const Tensor& x) { return loom::leaky_relu(x); },
                       [](double v) { return v > 0 ? v : 0.01 * v; }, Away(-2, 2, {0}, 0.1)));
  rows.push_back(unary("leaky_relu_slope", [](const Tensor& x) { return loom::leaky_relu(x, 0.2); },
                       [](double v) { return v > 0 ? v : 0.2 * v; }, Away(-2, 2, {0}, 0.1)));
  rows.push_back(unary("elu", [](const Tensor& x) { return loom::elu(x); },
                       [](double v) { return v > 0 ? v : std::expm1(v); }, Away(-2, 2, {0}, 0.1))
                     .gradgrad_check());
  rows.push_back(unary("elu_alpha", [](const Tensor& x) { return loom::elu(x, 0.5); },
                       [](double v) { return v > 0 ? v : 0.5 * std::expm1(v); }, Away(-2, 2, {0}, 0.1)));
  rows.push_back(unary("gelu", [](const Tensor& x) { return loom::gelu(x); }, gelu_ref, U(-3, 3)).gradgrad_check());
  rows.push_back(unary("gelu_tanh", [](const Tensor& x) { return loom::gelu(x, "tanh"); }, gelu_tanh_ref, U(-3, 3))
                     .gradgrad_check());
  rows.push_back(unary("silu", [](const Tensor& x) { return loom::silu(x); },
                       [](double v) { return v * sigmoid_ref(v); }, U(-3, 3))
                     .gradgrad_check());
  rows.push_back(unary("softplus", [](const Tensor& x) { return loom::softplus(x); },
                       [](double v) { return softplus_ref(v, 1, 20); }, U(-3, 3))
                     .gradgrad_check());
  // beta 2, threshold 1: inputs above 0.5 take the linear branch.
  rows.push_back(unary("softplus_beta_threshold", [](const Tensor& x) { return loom::softplus(x, 2.0, 1.0); },
                       [](double v) { return softplus_ref(v, 2, 1); }, Away(-2, 2, {0.5}, 0.1)));
  rows.push_back(unary("square", [](const Tensor& x) { return loom::square(x); }, [](double v) { return v * v; }, any)
                     .gradgrad_check());
  rows.push_back(unary("reciprocal", [](const Tensor& x) { return loom::reciprocal(x); },
                       [](double v) { return 1.0 / v; }, Away(-2, 2, {0}, 0.5))
                     .gradgrad_check());
  rows.push_back(unary("clamp", [](const Tensor& x) { return loom::clamp(x, -0.5, 0.5); },
                       [](double v) { return std::clamp(v, -0.5, 0.5); }, Away(-2, 2, {-0.5, 0.5}, 0.1)));
  rows.push_back(unary("clamp_min_only", [](const Tensor& x) { return loom::clamp(x, -0.5, std::nullopt); },
                       [](double v) { return std::max(v, -0.5); }, Away(-2, 2, {-0.5}, 0.1)));
  rows.push_back(unary("clamp_max_only", [](const Tensor& x) { return x.clamp(std::nullopt, 1); },
                       [](double v) { return std::min(v, 1.0); }, Away(-2, 2, {1}, 0.1)));
  rows.push_back(unary("clamp_method_min", [](const Tensor& x) { return x.clamp_min(0.25); },
                       [](double v) { return std::max(v, 0.25); }, Away(-2, 2, {0.25}, 0.1)));
  rows.push_back(unary("pow_scalar_2", [](const Tensor& x) { return loom::pow(x, 2); }, [](double v) { return v * v; },
                       any)
                     .gradgrad_check());
  rows.push_back(unary("pow_scalar_3", [](const Tensor& x) { return x.pow(3); }, [](double v) { return v * v * v; }, any)
                     .gradgrad_check());
  rows.push_back(unary("pow_scalar_2_5", [](const Tensor& x) { return loom::pow(x, 2.5); },
                       [](double v) { return std::pow(v, 2.5); }, pos)
                     .gradgrad_check());
  rows.push_back(unary("pow_scalar_neg_1_5", [](const Tensor& x) { return loom::pow(x, -1.5); },
                       [](double v) { return std::pow(v, -1.5); }, pos));
  rows.push_back(unary("pow_scalar_0", [](const Tensor& x) { return loom::pow(x, 0.0); }, [](double) { return 1.0; },
                       any));
  rows.push_back(unary("pow_scalar_base", [](const Tensor& x) { return loom::pow(Scalar(2.0), x); },
                       [](double v) { return std::pow(2.0, v); }, any)
                     .gradgrad_check());
  // Tensor-with-scalar operators.
  rows.push_back(unary("add_scalar", [](const Tensor& x) { return x + 2.5; }, [](double v) { return v + 2.5; }, any));
  rows.push_back(unary("add_scalar_int", [](const Tensor& x) { return 3 + x; }, [](double v) { return v + 3; }, any));
  rows.push_back(unary("sub_scalar", [](const Tensor& x) { return x - 1; }, [](double v) { return v - 1; }, any));
  rows.push_back(unary("sub_scalar_left", [](const Tensor& x) { return 2.5 - x; }, [](double v) { return 2.5 - v; }, any));
  rows.push_back(unary("mul_scalar", [](const Tensor& x) { return x * -1.5; }, [](double v) { return v * -1.5; }, any));
  rows.push_back(unary("div_scalar", [](const Tensor& x) { return x / 4; }, [](double v) { return v / 4; }, any));
  rows.push_back(unary("div_scalar_left", [](const Tensor& x) { return 3.0 / x; }, [](double v) { return 3.0 / v; },
                       Away(-2, 2, {0}, 0.5))
                     .gradgrad_check());

  const Domain nonzero = Away(-2, 2, {0}, 0.5);
  rows.push_back(binary("add", [](const Tensor& a, const Tensor& b) { return loom::add(a, b); },
                        [](double a, double b) { return a + b; }, any, any));
  rows.push_back(binary("add_alpha", [](const Tensor& a, const Tensor& b) { return loom::add(a, b, 2.5); },
                        [](double a, double b) { return a + 2.5 * b; }, any, any));
  rows.push_back(binary("add_operator", [](const Tensor& a, const Tensor& b) { return a + b; },
                        [](double a, double b) { return a + b; }, any, any));
  rows.push_back(binary("add_method", [](const Tensor& a, const Tensor& b) { return a.add(b); },
                        [](double a, double b) { return a + b; }, any, any));
  rows.push_back(binary("sub", [](const Tensor& a, const Tensor& b) { return loom::sub(a, b); },
                        [](double a, double b) { return a - b; }, any, any));
  rows.push_back(binary("sub_alpha", [](const Tensor& a, const Tensor& b) { return a.sub(b, -0.5); },
                        [](double a, double b) { return a + 0.5 * b; }, any, any));
  rows.push_back(binary("sub_operator", [](const Tensor& a, const Tensor& b) { return a - b; },
                        [](double a, double b) { return a - b; }, any, any));
  rows.push_back(binary("mul", [](const Tensor& a, const Tensor& b) { return loom::mul(a, b); },
                        [](double a, double b) { return a * b; }, any, any)
                     .gradgrad_check());
  rows.push_back(binary("mul_operator", [](const Tensor& a, const Tensor& b) { return a * b; },
                        [](double a, double b) { return a * b; }, any, any));
  rows.push_back(binary("div", [](const Tensor& a, const Tensor& b) { return loom::div(a, b); },
                        [](double a, double b) { return a / b; }, any, nonzero)
                     .gradgrad_check());
  rows.push_back(binary("div_operator", [](const Tensor& a, const Tensor& b) { return a / b; },
                        [](double a, double b) { return a / b; }, any, nonzero));
  rows.push_back(binary("pow_tensor", [](const Tensor& a, const Tensor& b) { return loom::pow(a, b); },
                        [](double a, double b) { return std::pow(a, b); }, U(0.5, 2), U(-2, 2))
                     .gradgrad_check());
  rows.push_back(binary("pow_tensor_method", [](const Tensor& a, const Tensor& b) { return a.pow(b); },
                        [](double a, double b) { return std::pow(a, b); }, U(0.5, 2), U(-2, 2)));
  // Two lattices offset by half a step: never a tie, so never a kink.
  rows.push_back(binary("maximum", [](const Tensor& a, const Tensor& b) { return loom::maximum(a, b); },
                        [](double a, double b) { return std::max(a, b); }, Lattice(-1, 0.2, 11), Lattice(-0.9, 0.2, 10)));
  rows.push_back(binary("minimum", [](const Tensor& a, const Tensor& b) { return a.minimum(b); },
                        [](double a, double b) { return std::min(a, b); }, Lattice(-1, 0.2, 11), Lattice(-0.9, 0.2, 10)));

  rows.push_back(compare("eq", [](const Tensor& a, const Tensor& b) { return loom::eq(a, b); },
                         [](double a, double b) { return a == b; }));
  rows.push_back(compare("ne", [](const Tensor& a, const Tensor& b) { return loom::ne(a, b); },
                         [](double a, double b) { return a != b; }));
  rows.push_back(compare("lt", [](const Tensor& a, const Tensor& b) { return loom::lt(a, b); },
                         [](double a, double b) { return a < b; }));
  rows.push_back(compare("le", [](const Tensor& a, const Tensor& b) { return loom::le(a, b); },
                         [](double a, double b) { return a <= b; }));
  rows.push_back(compare("gt", [](const Tensor& a, const Tensor& b) { return loom::gt(a, b); },
                         [](double a, double b) { return a > b; }));
  rows.push_back(compare("ge", [](const Tensor& a, const Tensor& b) { return loom::ge(a, b); },
                         [](double a, double b) { return a >= b; }));
  rows.push_back(compare("eq_operator", [](const Tensor& a, const Tensor& b) { return a == b; },
                         [](double a, double b) { return a == b; }));
  rows.push_back(compare("ne_operator", [](const Tensor& a, const Tensor& b) { return a != b; },
                         [](double a, double b) { return a != b; }));
  rows.push_back(compare("lt_operator", [](const Tensor& a, const Tensor& b) { return a < b; },
                         [](double a, double b) { return a < b; }));
  rows.push_back(compare("ge_method", [](const Tensor& a, const Tensor& b) { return a.ge(b); },
                         [](double a, double b) { return a >= b; }));
  rows.push_back(unary("gt_scalar", [](const Tensor& x) { return x.gt(1); }, [](double v) { return v > 1 ? 1.0 : 0.0; },
                       Ints(0, 3))
                     .out({Out::Bool})
                     .forward_only());
  rows.push_back(unary("le_scalar_operator", [](const Tensor& x) { return x <= 1.0; },
                       [](double v) { return v <= 1 ? 1.0 : 0.0; }, Ints(0, 3))
                     .out({Out::Bool})
                     .forward_only());

  rows.push_back(Row("where")
                     .in(Mask())
                     .in(any)
                     .in(any)
                     .shapes({{{3, 4}, {3, 4}, {3, 4}}, {{2, 1, 3}, {2, 1, 3}, {2, 1, 3}}, {{3, 4}, {3, 4}, {}}})
                     .f([](const TL& x) { return loom::where(x[0], x[1], x[2]); })
                     .r([](const AL& a) { return where_ref(a[0], a[1], a[2]); })
                     .broadcasting()
                     .low_precision());
  rows.push_back(Row("where_mask_broadcast")
                     .in(Mask())
                     .in(any)
                     .in(any)
                     .shapes({{{3, 1}, {3, 4}, {3, 4}}, {{4}, {2, 3, 4}, {3, 4}}})
                     .f([](const TL& x) { return loom::where(x[0], x[1], x[2]); })
                     .r([](const AL& a) { return where_ref(a[0], a[1], a[2]); }));
  rows.push_back(Row("where_scalar_other")
                     .in(Mask())
                     .in(any)
                     .shapes({{{3, 4}, {3, 4}}, {{2, 1, 3}, {2, 1, 3}}})
                     .f([](const TL& x) { return loom::where(x[0], x[1], Scalar(-1.5)); })
                     .r([](const AL& a) { return where_ref(a[0], a[1], Array({}, {-1.5})); }));
  rows.push_back(Row("where_scalar_self")
                     .in(Mask())
                     .in(any)
                     .shapes({{{3, 4}, {3, 4}}, {{2, 1, 3}, {2, 1, 3}}})
                     .f([](const TL& x) { return loom::where(x[0], Scalar(0.75), x[1]); })
                     .r([](const AL& a) { return where_ref(a[0], Array({}, {0.75}), a[1]); }));
  rows.push_back(Row("where_method")
                     .in(Mask())
                     .in(any)
                     .in(any)
                     .shapes({{{3, 4}, {3, 4}, {3, 4}}})
                     .f([](const TL& x) { return x[1].where(x[0], x[2]); })
                     .r([](const AL& a) { return where_ref(a[0], a[1], a[2]); }));
  rows.push_back(Row("masked_fill")
                     .in(any)
                     .in(Mask())
                     .shapes({{{3, 4}, {3, 4}}, {{3, 4}, {1, 4}}, {{2, 3, 4}, {3, 1}}, {{}, {}}})
                     .f([](const TL& x) { return loom::masked_fill(x[0], x[1], 2.5); })
                     .r([](const AL& a) { return zip(a[0], a[1], [](double v, double m) { return m != 0 ? 2.5 : v; }); })
                     .low_precision());
  rows.push_back(Row("masked_fill_tensor_value")
                     .in(any)
                     .in(Mask())
                     .in(any)
                     .shapes({{{3, 4}, {3, 4}, {}}, {{2, 1, 3}, {1, 3}, {}}})
                     .f([](const TL& x) { return x[0].masked_fill(x[1], x[2]); })
                     .r([](const AL& a) {
                       double v = a[2].v[0];
                       return zip(a[0], a[1], [v](double x, double m) { return m != 0 ? v : x; });
                     }));
}

void add_reduction_rows(std::vector<Row>& rows) {
  const Domain any = U(-2, 2);
  const Domain nonzero = Away(-1.5, 1.5, {0}, 0.4);
  const Cases all_cases = {{{3, 4}}, {{2, 1, 3}}, {{}}};
  rows.push_back(reduction("sum_all", [](const Tensor& x) { return loom::sum(x); }, vsum, {}, false, any, all_cases));
  rows.push_back(reduction("sum_method_all", [](const Tensor& x) { return x.sum(); }, vsum, {}, false, any, all_cases));
  rows.push_back(reduction("sum_dim1", [](const Tensor& x) { return loom::sum(x, {1}); }, vsum, {1}, false, any));
  rows.push_back(reduction("sum_dims_keepdim", [](const Tensor& x) { return x.sum({0, 2}, true); }, vsum, {0, 2}, true,
                           any));
  rows.push_back(reduction("sum_negdim_keepdim", [](const Tensor& x) { return loom::sum(x, {-1}, true); }, vsum, {-1},
                           true, any));
  rows.push_back(reduction("mean_all", [](const Tensor& x) { return x.mean(); }, vmean, {}, false, any, all_cases));
  rows.push_back(reduction("mean_dim1", [](const Tensor& x) { return loom::mean(x, {1}); }, vmean, {1}, false, any));
  rows.push_back(reduction("mean_dims_keepdim", [](const Tensor& x) { return x.mean({-1, 0}, true); }, vmean, {-1, 0},
                           true, any));
  rows.push_back(reduction("prod_all", [](const Tensor& x) { return loom::prod(x); }, vprod, {}, false, nonzero,
                           all_cases)
                     .gradgrad_check());
  rows.push_back(reduction("prod_dim_keepdim", [](const Tensor& x) { return x.prod(1, true); }, vprod, {1}, true,
                           nonzero)
                     .gradgrad_check());
  rows.push_back(reduction("prod_dims", [](const Tensor& x) { return loom::prod(x, {0, 2}); }, vprod, {0, 2}, false,
                           nonzero));
  // Exact zeros (often more than one per fiber): prod's backward must not divide by them.
  rows.push_back(reduction("prod_with_zeros", [](const Tensor& x) { return loom::prod(x, {-1}); }, vprod, {-1}, false,
                           Lattice(-1, 0.5, 5)));
  rows.push_back(reduction("max_all", [](const Tensor& x) { return loom::max(x); }, vmax, {}, false, Distinct(0.15),
                           all_cases)
                     .no_expand());
  rows.push_back(reduction("min_all", [](const Tensor& x) { return x.min(); }, vmin, {}, false, Distinct(0.15), all_cases)
                     .no_expand());
  rows.push_back(reduction("amax_dims", [](const Tensor& x) { return loom::amax(x, {0, 2}); }, vmax, {0, 2}, false,
                           Distinct(0.15))
                     .no_expand());
  rows.push_back(reduction("amin_dim_keepdim", [](const Tensor& x) { return x.amin({1}, true); }, vmin, {1}, true,
                           Distinct(0.15))
                     .no_expand());
  auto max_dim = [](const std::string& name, bool is_max, int64_t dim, bool keepdim) {
    return Row(name)
        .in(Distinct(0.15))
        .shapes(kReduce3d)
        .fm([is_max, dim, keepdim](const TL& x) {
          auto [v, i] = is_max ? loom::max(x[0], dim, keepdim) : x[0].min(dim, keepdim);
          return TL{v, i};
        })
        .rm([is_max, dim, keepdim](const AL& a) {
          return AL{reduce(a[0], {dim}, keepdim, is_max ? vmax : vmin),
                    reduce(a[0], {dim}, keepdim, is_max ? vargmax : vargmin)};
        })
        .out({Out::Same, Out::Int64})
        .no_expand();
  };
  rows.push_back(max_dim("max_dim", true, 1, false));
  rows.push_back(max_dim("max_dim_keepdim", true, -1, true));
  rows.push_back(max_dim("min_dim", false, 0, false));
  rows.push_back(max_dim("min_dim_keepdim", false, 2, true));
  rows.push_back(reduction("argmax_all", [](const Tensor& x) { return loom::argmax(x); }, vargmax, {}, false,
                           Distinct(0.15), all_cases)
                     .out({Out::Int64})
                     .forward_only());
  rows.push_back(reduction("argmax_dim", [](const Tensor& x) { return x.argmax(1); }, vargmax, {1}, false,
                           Distinct(0.15))
                     .out({Out::Int64})
                     .forward_only());
  rows.push_back(reduction("argmax_dim_keepdim", [](const Tensor& x) { return loom::argmax(x, -1, true); }, vargmax,
                           {-1}, true, Distinct(0.15))
                     .out({Out::Int64})
                     .forward_only());
  rows.push_back(reduction("argmin_all", [](const Tensor& x) { return x.argmin(); }, vargmin, {}, false, Distinct(0.15),
                           all_cases)
                     .out({Out::Int64})
                     .forward_only());
  rows.push_back(reduction("argmin_dim_keepdim", [](const Tensor& x) { return loom::argmin(x, 0, true); }, vargmin,
                           {0}, true, Distinct(0.15))
                     .out({Out::Int64})
                     .forward_only());
  // Ties: the first index wins (as PyTorch).
  rows.push_back(reduction("argmax_ties", [](const Tensor& x) { return x.argmax(1); }, vargmax, {1}, false, Ints(0, 2))
                     .out({Out::Int64})
                     .forward_only());
  const Cases var_cases = {{{2, 3, 4}}, {{1, 3, 2}}};
  rows.push_back(reduction("var_all", [](const Tensor& x) { return loom::var(x); }, vvar(1), {}, false, any, var_cases)
                     .gradgrad_check());
  rows.push_back(reduction("var_dim", [](const Tensor& x) { return x.var({1}); }, vvar(1), {1}, false, any, var_cases));
  rows.push_back(reduction("var_dims_keepdim_unbiased0", [](const Tensor& x) { return loom::var(x, {0, 2}, 0, true); },
                           vvar(0), {0, 2}, true, any, var_cases));
  rows.push_back(reduction("std_all", [](const Tensor& x) { return x.std(); }, vstd(1), {}, false, any, var_cases)
                     .gradgrad_check());
  rows.push_back(reduction("std_dim_keepdim", [](const Tensor& x) { return loom::std(x, {-1}, 1, true); }, vstd(1), {-1},
                           true, any, {{{2, 3, 4}}, {{1, 3, 2}}}));
  rows.push_back(reduction("std_dims_unbiased0", [](const Tensor& x) { return x.std({0, 1}, 0); }, vstd(0), {0, 1},
                           false, any, var_cases));
  rows.push_back(reduction("norm_all", [](const Tensor& x) { return loom::norm(x); }, vnorm(2), {}, false, any,
                           {{{3, 4}}, {{2, 1, 3}}})
                     .gradgrad_check());
  rows.push_back(reduction("norm_dim_keepdim", [](const Tensor& x) { return x.norm(2, {1}, true); }, vnorm(2), {1}, true,
                           Away(-2, 2, {0}, 0.3)));
  rows.push_back(reduction("norm_p1_dim", [](const Tensor& x) { return loom::norm(x, 1, {0}); }, vnorm(1), {0}, false,
                           Away(-2, 2, {0}, 0.1)));
  rows.push_back(reduction("norm_p3_dim", [](const Tensor& x) { return loom::norm(x, 3, {-1}); }, vnorm(3), {-1}, false,
                           Away(-2, 2, {0}, 0.3)));
  rows.push_back(reduction("logsumexp_dim", [](const Tensor& x) { return loom::logsumexp(x, {1}); }, vlogsumexp, {1},
                           false, U(-3, 3))
                     .gradgrad_check());
  rows.push_back(reduction("logsumexp_dims_keepdim", [](const Tensor& x) { return x.logsumexp({0, -1}, true); },
                           vlogsumexp, {0, -1}, true, U(-3, 3)));
  // Large values: must not overflow (max-shifted).
  rows.push_back(reduction("logsumexp_large", [](const Tensor& x) { return loom::logsumexp(x, {-1}); }, vlogsumexp, {-1},
                           false, U(700, 710), {{{2, 3}}}));

  const Cases rw = {{{3, 4}}, {{2, 3, 4}}, {{2, 1, 3}}};
  rows.push_back(rowwise("softmax_last", [](const Tensor& x) { return loom::softmax(x, -1); }, vsoftmax, -1, U(-3, 3), rw)
                     .gradgrad_check());
  rows.push_back(rowwise("softmax_dim0", [](const Tensor& x) { return x.softmax(0); }, vsoftmax, 0, U(-3, 3), rw));
  rows.push_back(rowwise("softmax_dim1", [](const Tensor& x) { return loom::softmax(x, 1); }, vsoftmax, 1, U(-3, 3), rw));
  rows.push_back(rowwise("softmax_large", [](const Tensor& x) { return loom::softmax(x, -1); }, vsoftmax, -1,
                         U(500, 510), {{{2, 3}}}));
  rows.push_back(rowwise("log_softmax_last", [](const Tensor& x) { return loom::log_softmax(x, -1); }, vlog_softmax, -1,
                         U(-3, 3), rw)
                     .gradgrad_check());
  rows.push_back(rowwise("log_softmax_dim0", [](const Tensor& x) { return x.log_softmax(0); }, vlog_softmax, 0, U(-3, 3),
                         rw));
  rows.push_back(rowwise("log_softmax_dim1", [](const Tensor& x) { return loom::log_softmax(x, 1); }, vlog_softmax, 1,
                         U(-3, 3), rw));
  rows.push_back(rowwise("cumsum_last", [](const Tensor& x) { return loom::cumsum(x, -1); }, vcumsum, -1, any, rw));
  rows.push_back(rowwise("cumsum_dim0", [](const Tensor& x) { return x.cumsum(0); }, vcumsum, 0, any, rw));
  rows.push_back(rowwise("cumsum_dim1", [](const Tensor& x) { return loom::cumsum(x, 1); }, vcumsum, 1, any, rw));
}

// ---- fused row ops (src/ops/fused.cpp) ----

// Applies f(row values) -> row values to every run of the trailing `n`
// elements of a row-major array (the fused ops' rows).
Array per_row(const std::vector<const Array*>& ins, int64_t n,
              const std::function<std::vector<double>(const std::vector<std::vector<double>>&)>& f) {
  Array out(ins[0]->shape);
  const int64_t rows = n == 0 ? 0 : ins[0]->numel() / n;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<std::vector<double>> vs;
    for (const Array* a : ins) vs.emplace_back(a->v.begin() + r * n, a->v.begin() + (r + 1) * n);
    const std::vector<double> y = f(vs);
    std::copy(y.begin(), y.end(), out.v.begin() + r * n);
  }
  return out;
}

std::vector<double> vsoftmax_backward(const std::vector<std::vector<double>>& v) {
  const std::vector<double>&g = v[0], &y = v[1];
  double s = 0;
  for (size_t i = 0; i < g.size(); ++i) s += g[i] * y[i];
  std::vector<double> r(g.size());
  for (size_t i = 0; i < g.size(); ++i) r[i] = y[i] * (g[i] - s);
  return r;
}
std::vector<double> vlog_softmax_backward(const std::vector<std::vector<double>>& v) {
  const std::vector<double>&g = v[0], &y = v[1];
  double s = 0;
  for (double x : g) s += x;
  std::vector<double> r(g.size());
  for (size_t i = 0; i < g.size(); ++i) r[i] = g[i] - std::exp(y[i]) * s;
  return r;
}

// (x - mean) / sqrt(var + eps) * w + b over each row of n = numel(w).
Array layer_norm_ref(const Array& x, int64_t n, const Array* w, const Array* b, double eps) {
  return per_row({&x}, n, [&](const std::vector<std::vector<double>>& v) {
    const std::vector<double>& r = v[0];
    double mean = 0, var = 0;
    for (double a : r) mean += a;
    mean /= static_cast<double>(n);
    for (double a : r) var += (a - mean) * (a - mean);
    var /= static_cast<double>(n);
    std::vector<double> y(r.size());
    for (size_t j = 0; j < r.size(); ++j) {
      y[j] = (r[j] - mean) / std::sqrt(var + eps);
      if (w) y[j] *= w->v[j];
      if (b) y[j] += b->v[j];
    }
    return y;
  });
}

// PyTorch's cross_entropy with class-index targets: per position
// w[t] ((1 - s) (lse - x[t])) + (s / C) sum_c w[c] (lse - x[c]), 0 where
// ignored; "mean" divides by the sum of w[t] over the positions that count.
Array cross_entropy_ref(const Array& x, const Array& t, const std::string& reduction, double s, int64_t ignore,
                        const Array* w) {
  const int64_t classes = x.shape.back(), rows = x.numel() / classes;
  std::vector<double> loss(static_cast<size_t>(rows));
  double total = 0, weight_sum = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t tr = static_cast<int64_t>(t.v[r]);
    if (tr == ignore) continue;
    double m = -INFINITY, e = 0;
    for (int64_t c = 0; c < classes; ++c) m = std::max(m, x.v[r * classes + c]);
    for (int64_t c = 0; c < classes; ++c) e += std::exp(x.v[r * classes + c] - m);
    const double lse = m + std::log(e);
    auto wc = [&](int64_t c) { return w ? w->v[c] : 1.0; };
    double smooth = 0;
    for (int64_t c = 0; c < classes; ++c) smooth += wc(c) * (lse - x.v[r * classes + c]);
    loss[r] = (1 - s) * wc(tr) * (lse - x.v[r * classes + tr]) + s / static_cast<double>(classes) * smooth;
    total += loss[r];
    weight_sum += wc(tr);
  }
  if (reduction == "none") return Array(t.shape, loss);
  if (reduction == "sum") return Array({}, {total});
  return Array({}, {total / weight_sum});
}

void add_fused_rows(std::vector<Row>& rows) {
  // relu's gradient in one kernel; no gradient flows to x (Const).
  rows.push_back(Row("threshold_backward")
                     .in(U(-1, 1))
                     .in(Const(Away(-1, 1, {0.25}, 0.05)))
                     .shapes({{{3, 4}, {3, 4}}, {{2, 1, 3}, {2, 4, 3}}, {{3, 4}, {}}})
                     .f([](const TL& t) { return loom::threshold_backward(t[0], t[1], 0.25); })
                     .r([](const AL& a) { return zip(a[0], a[1], [](double g, double x) { return x > 0.25 ? g : 0.0; }); })
                     .broadcasting()
                     .low_precision()
                     .gradgrad_check());
  const Cases pair = {{{3, 4}, {3, 4}}, {{2, 3, 5}, {2, 3, 5}}, {{1, 1}, {1, 1}}, {{4}, {4}}};
  rows.push_back(Row("softmax_backward_last")
                     .in(U(-2, 2))
                     .in(U(0.05, 1))
                     .shapes(pair)
                     .f([](const TL& x) { return loom::softmax_backward(x[0], x[1], -1); })
                     .r([](const AL& a) { return per_row({&a[0], &a[1]}, a[0].shape.back(), vsoftmax_backward); })
                     .gradgrad_check());
  rows.push_back(Row("softmax_backward_dim0")
                     .in(U(-2, 2))
                     .in(U(0.05, 1))
                     .shapes({{{3, 4}, {3, 4}}})
                     .f([](const TL& x) { return loom::softmax_backward(x[0], x[1], 0); })
                     .r([](const AL& a) {
                       Array g = ref_permute(a[0], {1, 0}), y = ref_permute(a[1], {1, 0});
                       return ref_permute(per_row({&g, &y}, 3, vsoftmax_backward), {1, 0});
                     }));
  rows.push_back(Row("log_softmax_backward_last")
                     .in(U(-2, 2))
                     .in(U(-3, -0.1))
                     .shapes(pair)
                     .f([](const TL& x) { return loom::log_softmax_backward(x[0], x[1], -1); })
                     .r([](const AL& a) { return per_row({&a[0], &a[1]}, a[0].shape.back(), vlog_softmax_backward); })
                     .gradgrad_check());

  // layer_norm: the normalized shape is the weight's.
  rows.push_back(Row("layer_norm_affine")
                     .in(U(-2, 2))
                     .in(U(-2, 2))
                     .in(U(-2, 2))
                     .shapes({{{3, 5}, {5}, {5}}, {{2, 3, 4}, {3, 4}, {3, 4}}, {{1, 3}, {3}, {3}}, {{6}, {6}, {6}}})
                     .f([](const TL& x) { return loom::layer_norm(x[0], x[1].sizes(), x[1], x[2], 1e-5); })
                     .r([](const AL& a) { return layer_norm_ref(a[0], a[1].numel(), &a[1], &a[2], 1e-5); })
                     .gradgrad_check());
  rows.push_back(Row("layer_norm_plain")
                     .in(U(-2, 2))
                     .shapes({{{4, 6}}, {{2, 3, 7}}})
                     .f([](const TL& x) { return loom::layer_norm(x[0], {x[0].sizes().back()}, {}, {}, 1e-3); })
                     .r([](const AL& a) { return layer_norm_ref(a[0], a[0].shape.back(), nullptr, nullptr, 1e-3); })
                     .gradgrad_check());
  rows.push_back(Row("layer_norm_bias_only")
                     .in(U(-2, 2))
                     .in(U(-2, 2))
                     .shapes({{{3, 5}, {5}}})
                     .f([](const TL& x) { return loom::layer_norm(x[0], {5}, {}, x[1], 1e-5); })
                     .r([](const AL& a) { return layer_norm_ref(a[0], 5, nullptr, &a[1], 1e-5); }));
  rows.push_back(Row("layer_norm_nn_module_functional")
                     .in(U(-2, 2))
                     .in(U(-2, 2))
                     .in(U(-2, 2))
                     .shapes({{{2, 4, 5}, {5}, {5}}})
                     .f([](const TL& x) { return loom::nn::functional::layer_norm(x[0], {5}, x[1], x[2], 1e-5); })
                     .r([](const AL& a) { return layer_norm_ref(a[0], 5, &a[1], &a[2], 1e-5); }));

  // cross_entropy with class-index targets: fused for (N, C) and (C) inputs
  // without class weights; the weighted row goes through the composite.
  namespace F = loom::nn::functional;
  const Cases ce = {{{4, 5}, {4}}, {{1, 3}, {1}}, {{5}, {}}};
  struct CeCase {
    const char* name;
    std::string reduction;
    double s;
    int64_t ignore;
    bool gradgrad;
  };
  for (const CeCase& k : {CeCase{"cross_entropy_mean", "mean", 0.0, -100, true},
                          CeCase{"cross_entropy_sum", "sum", 0.0, -100, false},
                          CeCase{"cross_entropy_none", "none", 0.0, -100, false},
                          CeCase{"cross_entropy_smoothing", "mean", 0.2, -100, true},
                          CeCase{"cross_entropy_ignore_index", "mean", 0.1, 0, false},
                          CeCase{"cross_entropy_ignore_none", "none", 0.3, 2, false}}) {
    const std::string red = k.reduction;
    const double s = k.s;
    const int64_t ignore = k.ignore;
    Row row = Row(k.name)
                  .in(U(-3, 3))
                  .in(Index(3))  // below the smallest class count of the cases
                  // With an ignore_index, single-target cases could ignore every target: a 0/0 loss.
                  .shapes(k.ignore >= 0 ? Cases{{{6, 5}, {6}}, {{8, 3}, {8}}} : ce)
                  .f([=](const TL& x) {
                    return F::cross_entropy(x[0], x[1], {.ignore_index = ignore, .reduction = red, .label_smoothing = s});
                  })
                  .r([=](const AL& a) { return cross_entropy_ref(a[0], a[1], red, s, ignore, nullptr); });
    if (k.gradgrad) row.gradgrad_check();
    rows.push_back(row);
  }
  rows.push_back(Row("cross_entropy_targets_spread")
                     .in(U(-3, 3))
                     .in(Index(5))
                     .shapes({{{6, 5}, {6}}, {{9, 5}, {9}}})
                     .f([](const TL& x) { return F::cross_entropy(x[0], x[1], {.ignore_index = 3, .label_smoothing = 0.1}); })
                     .r([](const AL& a) { return cross_entropy_ref(a[0], a[1], "mean", 0.1, 3, nullptr); })
                     .gradgrad_check());
  rows.push_back(Row("cross_entropy_weighted_composite")
                     .in(U(-3, 3))
                     .in(Index(5))
                     .in(U(0.5, 2))
                     .shapes({{{6, 5}, {6}, {5}}})
                     .f([](const TL& x) { return F::cross_entropy(x[0], x[1], {.weight = x[2], .label_smoothing = 0.1}); })
                     .r([](const AL& a) { return cross_entropy_ref(a[0], a[1], "mean", 0.1, -100, &a[2]); }));
}

void add_linalg_rows(std::vector<Row>& rows) {
  auto mm = [](const Tensor& a, const Tensor& b) { return loom::matmul(a, b); };
  rows.push_back(matmul_row("matmul_1d_1d", mm, {{{4}, {4}}, {{1}, {1}}}).gradgrad_check());
  rows.push_back(matmul_row("matmul_2d_1d", mm, {{{3, 4}, {4}}, {{1, 4}, {4}}}));
  rows.push_back(matmul_row("matmul_1d_2d", mm, {{{4}, {4, 5}}, {{3}, {3, 1}}}));
  rows.push_back(matmul_row("matmul_2d_2d", mm, {{{3, 4}, {4, 5}}, {{1, 4}, {4, 1}}, {{3, 1}, {1, 5}}})
                     .gradgrad_check());
  rows.push_back(matmul_row("matmul_method", [](const Tensor& a, const Tensor& b) { return a.matmul(b); },
                            {{{3, 4}, {4, 2}}}));
  rows.push_back(matmul_row("matmul_batched", mm, {{{2, 3, 4}, {2, 4, 5}}, {{1, 2, 3}, {1, 3, 1}}}).gradgrad_check());
  rows.push_back(matmul_row("matmul_batched_broadcast", mm,
                            {{{2, 1, 3, 4}, {3, 4, 2}}, {{3, 4}, {2, 4, 5}}, {{2, 3, 4}, {4, 5}}, {{2, 1, 2, 3}, {1, 4, 3, 2}}}));
  rows.push_back(matmul_row("matmul_batched_1d", mm, {{{2, 3, 4}, {4}}, {{4}, {2, 4, 5}}}));
  rows.push_back(matmul_row("matmul_mm", [](const Tensor& a, const Tensor& b) { return loom::mm(a, b); },
                            {{{3, 4}, {4, 5}}, {{1, 2}, {2, 3}}}));
  rows.push_back(matmul_row("matmul_bmm", [](const Tensor& a, const Tensor& b) { return loom::bmm(a, b); },
                            {{{2, 3, 4}, {2, 4, 5}}, {{1, 3, 2}, {1, 2, 2}}}));

  // The fused Linear primitive: act(x @ w^T + b), x (*, K), w (N, K), b (N).
  using Act = loom::LinearActivation;
  auto linear_row = [](const std::string& name, Act act, std::function<double(double)> f, bool with_bias) {
    Row r(name);
    r.in(U(-1, 1)).in(U(-1, 1));
    if (with_bias) r.in(U(-1, 1));
    Cases cases = with_bias ? Cases{{{3, 4}, {5, 4}, {5}}, {{2, 3, 4}, {5, 4}, {5}}, {{4}, {1, 4}, {1}}, {{1, 1}, {1, 1}, {1}}}
                            : Cases{{{3, 4}, {5, 4}}, {{2, 3, 4}, {5, 4}}, {{4}, {1, 4}}};
    return r.shapes(std::move(cases))
        .f([act, with_bias](const TL& x) { return loom::linear(x[0], x[1], with_bias ? x[2] : Tensor(), act); })
        .r([f, with_bias](const AL& a) {
          Array y = ref_matmul(a[0], ref_permute(a[1], {1, 0}));
          if (with_bias) y = zip(y, a[2], [](double u, double v) { return u + v; });
          return f ? map(y, f) : y;
        });
  };
  auto relu_ref = [](double v) { return v < 0 ? 0.0 : v; };
  rows.push_back(linear_row("linear", Act::None, nullptr, true).gradgrad_check());
  rows.push_back(linear_row("linear_no_bias", Act::None, nullptr, false));
  rows.push_back(linear_row("linear_relu", Act::Relu, relu_ref, true));
  rows.push_back(linear_row("linear_relu_no_bias", Act::Relu, relu_ref, false));
  rows.push_back(linear_row("linear_gelu", Act::Gelu, gelu_ref, true).gradgrad_check());
  rows.push_back(linear_row("linear_gelu_tanh", Act::GeluTanh, gelu_tanh_ref, true).gradgrad_check());
}

void add_join_index_rows(std::vector<Row>& rows) {
  const Domain any = U(-2, 2);
  rows.push_back(Row("cat_dim0")
                     .in(any)
                     .in(any)
                     .shapes({{{2, 3}, {1, 3}}, {{1, 3}, {1, 3}}})
                     .f([](const TL& x) { return loom::cat({x[0], x[1]}, 0); })
                     .r([](const AL& a) { return ref_cat({a[0], a[1]}, 0); }));
  rows.push_back(Row("cat_dim1_three")
                     .in(any)
                     .in(any)
                     .in(any)
                     .shapes({{{2, 1}, {2, 3}, {2, 2}}, {{1, 2}, {1, 1}, {1, 3}}})
                     .f([](const TL& x) { return loom::cat({x[0], x[1], x[2]}, 1); })
                     .r([](const AL& a) { return ref_cat({a[0], a[1], a[2]}, 1); }));
  rows.push_back(Row("cat_negdim")
                     .in(any)
                     .in(any)
                     .shapes({{{2, 3, 2}, {2, 3, 1}}})
                     .f([](const TL& x) { return loom::cat({x[0], x[1]}, -1); })
                     .r([](const AL& a) { return ref_cat({a[0], a[1]}, -1); }));
  auto stack_ref = [](const AL& a, int64_t dim) {
    AL u;
    for (const Array& x : a) u.push_back(unsqueeze_ref(x, dim));
    return ref_cat(u, dim);
  };
  rows.push_back(Row("stack_dim0")
                     .in(any)
                     .in(any)
                     .shapes({{{2, 3}, {2, 3}}, {{}, {}}})
                     .f([](const TL& x) { return loom::stack({x[0], x[1]}, 0); })
                     .r([stack_ref](const AL& a) { return stack_ref(a, 0); }));
  rows.push_back(Row("stack_dim1")
                     .in(any)
                     .in(any)
                     .shapes({{{2, 3}, {2, 3}}, {{1, 3}, {1, 3}}})
                     .f([](const TL& x) { return loom::stack({x[0], x[1]}, 1); })
                     .r([stack_ref](const AL& a) { return stack_ref(a, 1); }));
  rows.push_back(Row("stack_negdim_three")
                     .in(any)
                     .in(any)
                     .in(any)
                     .shapes({{{2, 3}, {2, 3}, {2, 3}}})
                     .f([](const TL& x) { return loom::stack({x[0], x[1], x[2]}, -1); })
                     .r([stack_ref](const AL& a) { return stack_ref(a, 2); }));
  rows.push_back(Row("split_size")
                     .in(any)
                     .shapes({{{3, 5}}})
                     .fm([](const TL& x) { return loom::split(x[0], 2, 1); })
                     .rm([](const AL& a) { return split_ref(a[0], {2, 2, 1}, 1); }));
  rows.push_back(Row("split_sizes")
                     .in(any)
                     .shapes({{{3, 5}}, {{1, 5}}})
                     .fm([](const TL& x) { return loom::split(x[0], std::vector<int64_t>{1, 3, 1}, -1); })
                     .rm([](const AL& a) { return split_ref(a[0], {1, 3, 1}, -1); }));
  rows.push_back(Row("split_method_dim0")
                     .in(any)
                     .shapes({{{4, 3}}})
                     .fm([](const TL& x) { return x[0].split(3); })
                     .rm([](const AL& a) { return split_ref(a[0], {3, 1}, 0); }));
  rows.push_back(Row("chunk")
                     .in(any)
                     .shapes({{{3, 5}}})
                     .fm([](const TL& x) { return loom::chunk(x[0], 3, 1); })
                     .rm([](const AL& a) { return split_ref(a[0], {2, 2, 1}, 1); }));
  rows.push_back(Row("chunk_dim0")
                     .in(any)
                     .shapes({{{4, 3}}})
                     .fm([](const TL& x) { return x[0].chunk(2); })
                     .rm([](const AL& a) { return split_ref(a[0], {2, 2}, 0); }));
  rows.push_back(Row("unbind")
                     .in(any)
                     .shapes({{{3, 4}}})
                     .fm([](const TL& x) { return x[0].unbind(0); })
                     .rm([](const AL& a) { return AL{ref_select(a[0], 0, 0), ref_select(a[0], 0, 1), ref_select(a[0], 0, 2)}; }));

  rows.push_back(Row("gather_dim1")
                     .in(any)
                     .in(Index(5))
                     .shapes({{{3, 5}, {3, 2}}, {{3, 5}, {2, 4}}, {{1, 5}, {1, 3}}})
                     .f([](const TL& x) { return loom::gather(x[0], 1, x[1]); })
                     .r([](const AL& a) { return gather_ref(a[0], 1, a[1]); }));
  rows.push_back(Row("gather_dim0")
                     .in(any)
                     .in(Index(3))
                     .shapes({{{3, 4}, {5, 4}}})
                     .f([](const TL& x) { return x[0].gather(0, x[1]); })
                     .r([](const AL& a) { return gather_ref(a[0], 0, a[1]); }));
  rows.push_back(Row("gather_3d_negdim")
                     .in(any)
                     .in(Index(4))
                     .shapes({{{2, 3, 4}, {2, 3, 2}}})
                     .f([](const TL& x) { return loom::gather(x[0], -1, x[1]); })
                     .r([](const AL& a) { return gather_ref(a[0], -1, a[1]); }));
  rows.push_back(Row("scatter_add_dim1")
                     .in(any)
                     .in(Index(5))
                     .in(any)
                     .shapes({{{3, 5}, {3, 4}, {3, 4}}, {{1, 5}, {1, 6}, {1, 6}}})
                     .f([](const TL& x) { return loom::scatter_add(x[0], 1, x[1], x[2]); })
                     .r([](const AL& a) { return scatter_add_ref(a[0], 1, a[1], a[2]); }));
  rows.push_back(Row("scatter_add_dim0")
                     .in(any)
                     .in(Index(3))
                     .in(any)
                     .shapes({{{3, 4}, {5, 4}, {5, 4}}, {{3, 4}, {2, 3}, {2, 3}}})
                     .f([](const TL& x) { return x[0].scatter_add(0, x[1], x[2]); })
                     .r([](const AL& a) { return scatter_add_ref(a[0], 0, a[1], a[2]); }));
  rows.push_back(Row("index_select_dim0")
                     .in(any)
                     .in(Index(4))
                     .shapes({{{4, 3}, {5}}, {{4, 1}, {1}}})
                     .f([](const TL& x) { return loom::index_select(x[0], 0, x[1]); })
                     .r([](const AL& a) { return index_select_ref(a[0], 0, a[1]); }));
  rows.push_back(Row("index_select_dim1")
                     .in(any)
                     .in(Index(4))
                     .shapes({{{3, 4}, {6}}, {{2, 4, 2}, {3}}})
                     .f([](const TL& x) { return x[0].index_select(1, x[1]); })
                     .r([](const AL& a) { return index_select_ref(a[0], 1, a[1]); }));
  rows.push_back(Row("embedding")
                     .in(any)
                     .in(Index(6))
                     .shapes({{{6, 3}, {2, 4}}, {{6, 3}, {5}}, {{6, 1}, {1, 1}}})
                     .f([](const TL& x) { return loom::embedding(x[0], x[1]); })
                     .r([](const AL& a) { return embedding_ref(a[0], a[1]); }));
  rows.push_back(Row("one_hot")
                     .in(Index(4))
                     .shapes({{{5}}, {{2, 3}}, {{}}})
                     .f([](const TL& x) { return loom::one_hot(x[0], 4); })
                     .r([](const AL& a) { return one_hot_ref(a[0], 4); })
                     .out({Out::Int64})
                     .forward_only());
  rows.push_back(Row("one_hot_infer_classes")
                     .in(Index(5))
                     .shapes({{{2, 6}}})
                     .f([](const TL& x) { return loom::one_hot(x[0]); })
                     .r([](const AL& a) { return one_hot_ref(a[0], -1); })
                     .out({Out::Int64})
                     .forward_only());
  const Cases tri = {{{4, 5}}, {{2, 3, 3}}, {{1, 4}}};
  rows.push_back(view_row("tril", [](const Tensor& x) { return loom::tril(x); },
                          [](const Array& a) { return tri_ref(a, 0, true); }, tri));
  rows.push_back(view_row("tril_diag1", [](const Tensor& x) { return x.tril(1); },
                          [](const Array& a) { return tri_ref(a, 1, true); }, tri));
  rows.push_back(view_row("triu", [](const Tensor& x) { return loom::triu(x); },
                          [](const Array& a) { return tri_ref(a, 0, false); }, tri));
  rows.push_back(view_row("triu_diag_neg1", [](const Tensor& x) { return x.triu(-1); },
                          [](const Array& a) { return tri_ref(a, -1, false); }, tri));
  const Cases c3 = {{{2, 3, 4}}, {{1, 3, 1}}};
  rows.push_back(view_row("flip_dim0", [](const Tensor& x) { return loom::flip(x, {0}); },
                          [](const Array& a) { return flip_ref(a, {0}); }, c3));
  rows.push_back(view_row("flip_dims", [](const Tensor& x) { return x.flip({0, -1}); },
                          [](const Array& a) { return flip_ref(a, {0, -1}); }, c3));
  rows.push_back(view_row("pad_last", [](const Tensor& x) { return loom::pad(x, {1, 2}); },
                          [](const Array& a) { return pad_ref(a, {1, 2}, 0); }, {{{3, 4}}, {{2, 1, 3}}}));
  rows.push_back(view_row("pad_two_dims_value", [](const Tensor& x) { return loom::pad(x, {1, 0, 2, 1}, 1.5); },
                          [](const Array& a) { return pad_ref(a, {1, 0, 2, 1}, 1.5); }, {{{3, 4}}, {{2, 1, 3}}}));
  rows.push_back(view_row("pad_negative_crops", [](const Tensor& x) { return loom::pad(x, {-1, 1}); },
                          [](const Array& a) { return pad_ref(a, {-1, 1}, 0); }, {{{3, 4}}}));
}

void add_view_rows(std::vector<Row>& rows) {
  const Cases m = {{{3, 4}}, {{1, 4}}};
  const Cases c3 = {{{2, 3, 4}}, {{2, 1, 4}}};
  // view() needs compatible strides, so only contiguous inputs.
  rows.push_back(view_row("view_transposed_shape", [](const Tensor& x) { return x.view({x.size(1), x.size(0)}); },
                          [](const Array& a) { return ref_reshape(a, {a.shape[1], a.shape[0]}); }, m)
                     .contiguous_only());
  rows.push_back(view_row("view_infer", [](const Tensor& x) { return x.view({-1, 2}); },
                          [](const Array& a) { return ref_reshape(a, {-1, 2}); }, m)
                     .contiguous_only());
  rows.push_back(view_row("view_as", [](const Tensor& x) { return x.view_as(loom::zeros({x.numel()})); },
                          [](const Array& a) { return ref_reshape(a, {-1}); }, c3)
                     .contiguous_only());
  rows.push_back(view_row("reshape_flat", [](const Tensor& x) { return x.reshape({-1}); },
                          [](const Array& a) { return ref_reshape(a, {-1}); }, {{{3, 4}}, {{2, 1, 3}}, {{}}}));
  rows.push_back(view_row("reshape_2d", [](const Tensor& x) { return loom::reshape(x, {x.size(-1), -1}); },
                          [](const Array& a) { return ref_reshape(a, {a.shape.back(), -1}); }, c3));
  rows.push_back(view_row("reshape_to_scalar", [](const Tensor& x) { return x.reshape({}); },
                          [](const Array& a) { return ref_reshape(a, {}); }, {{{1, 1}}, {{1}}}));
  rows.push_back(view_row("flatten", [](const Tensor& x) { return x.flatten(); },
                          [](const Array& a) { return ref_reshape(a, {-1}); }, c3));
  rows.push_back(view_row("flatten_from1", [](const Tensor& x) { return loom::flatten(x, 1); },
                          [](const Array& a) { return ref_reshape(a, {a.shape[0], -1}); }, c3));
  rows.push_back(view_row("unflatten", [](const Tensor& x) { return x.unflatten(1, {2, 2}); },
                          [](const Array& a) { return ref_reshape(a, {a.shape[0], 2, 2}); }, m));
  rows.push_back(view_row("permute", [](const Tensor& x) { return x.permute({2, 0, 1}); },
                          [](const Array& a) { return ref_permute(a, {2, 0, 1}); }, c3));
  rows.push_back(view_row("permute_negative", [](const Tensor& x) { return loom::permute(x, {-1, 0, -2}); },
                          [](const Array& a) { return ref_permute(a, {2, 0, 1}); }, c3));
  rows.push_back(view_row("transpose", [](const Tensor& x) { return x.transpose(0, 2); },
                          [](const Array& a) { return ref_permute(a, {2, 1, 0}); }, c3));
  rows.push_back(view_row("transpose_negative", [](const Tensor& x) { return loom::transpose(x, -1, -2); },
                          [](const Array& a) { return ref_permute(a, {0, 2, 1}); }, c3));
  rows.push_back(view_row("t_2d", [](const Tensor& x) { return x.t(); },
                          [](const Array& a) { return ref_permute(a, {1, 0}); }, m));
  rows.push_back(view_row("t_1d", [](const Tensor& x) { return x.t(); }, [](const Array& a) { return a; }, {{{4}}}));
  rows.push_back(view_row("t_mT", [](const Tensor& x) { return x.mT(); },
                          [](const Array& a) { return ref_permute(a, {0, 2, 1}); }, c3));
  rows.push_back(view_row("unsqueeze0", [](const Tensor& x) { return x.unsqueeze(0); },
                          [](const Array& a) { return unsqueeze_ref(a, 0); }, {{{3, 4}}, {{}}}));
  rows.push_back(view_row("unsqueeze_last", [](const Tensor& x) { return loom::unsqueeze(x, -1); },
                          [](const Array& a) { return unsqueeze_ref(a, -1); }, m));
  rows.push_back(view_row("unsqueeze_mid", [](const Tensor& x) { return x.unsqueeze(1); },
                          [](const Array& a) { return unsqueeze_ref(a, 1); }, m));
  rows.push_back(view_row("squeeze_all", [](const Tensor& x) { return x.squeeze(); },
                          [](const Array& a) { return squeeze_ref(a, std::nullopt); }, {{{2, 1, 3, 1}}, {{1, 1}}}));
  rows.push_back(view_row("squeeze_dim", [](const Tensor& x) { return loom::squeeze(x, 1); },
                          [](const Array& a) { return squeeze_ref(a, 1); }, {{{2, 1, 3}}, {{2, 1, 1}}}));
  rows.push_back(view_row("squeeze_dim_not_one", [](const Tensor& x) { return x.squeeze(0); },
                          [](const Array& a) { return squeeze_ref(a, 0); }, {{{2, 3}}}));
  rows.push_back(view_row("expand", [](const Tensor& x) { return x.expand({2, 3, 4}); },
                          [](const Array& a) { return expand_to(a, {2, 3, 4}); }, {{{3, 1}}, {{1}}, {{}}, {{1, 3, 4}}}));
  rows.push_back(view_row("expand_keep", [](const Tensor& x) { return x.expand({-1, 4}); },
                          [](const Array& a) { return expand_to(a, {a.shape[0], 4}); }, {{{3, 1}}, {{2, 4}}}));
  rows.push_back(view_row("expand_broadcast_to", [](const Tensor& x) { return loom::broadcast_to(x, {3, 2, 4}); },
                          [](const Array& a) { return expand_to(a, {3, 2, 4}); }, {{{2, 1}}, {{4}}}));
  rows.push_back(view_row("narrow", [](const Tensor& x) { return x.narrow(1, 1, 2); },
                          [](const Array& a) { return ref_slice(a, 1, 1, 3, 1); }, m));
  rows.push_back(view_row("narrow_dim0", [](const Tensor& x) { return loom::narrow(x, 0, 1, 2); },
                          [](const Array& a) { return ref_slice(a, 0, 1, 3, 1); }, {{{3, 2, 4}}, {{3, 1, 1}}}));
  rows.push_back(view_row("narrow_negdim", [](const Tensor& x) { return x.narrow(-1, 3, 1); },
                          [](const Array& a) { return ref_slice(a, -1, 3, 4, 1); }, c3));
  rows.push_back(view_row("select", [](const Tensor& x) { return x.select(0, 1); },
                          [](const Array& a) { return ref_select(a, 0, 1); }, {{{3, 4}}, {{2, 1, 3}}}));
  rows.push_back(view_row("select_negative", [](const Tensor& x) { return loom::select(x, 1, -1); },
                          [](const Array& a) { return ref_select(a, 1, -1); }, m));
  rows.push_back(view_row("select_operator", [](const Tensor& x) { return x[2]; },
                          [](const Array& a) { return ref_select(a, 0, 2); }, {{{3, 4}}, {{3}}}));
  rows.push_back(view_row("slice_step", [](const Tensor& x) { return x.slice(1, 0, 7, 2); },
                          [](const Array& a) { return ref_slice(a, 1, 0, 7, 2); }, {{{3, 7}}, {{1, 7}}}));
  rows.push_back(view_row("slice_negative_start", [](const Tensor& x) { return x.slice(0, -2, std::nullopt); },
                          [](const Array& a) { return ref_slice(a, 0, -2, a.shape[0], 1); }, {{{3, 4}}}));
  rows.push_back(view_row("index_step_and_int", [](const Tensor& x) { return x.index({Slice(1, None, 2), -1}); },
                          [](const Array& a) { return ref_select(ref_slice(a, 0, 1, a.shape[0], 2), 1, -1); },
                          {{{5, 4}}}));
  rows.push_back(view_row("index_ellipsis_slice", [](const Tensor& x) { return x.index({Ellipsis, Slice(None, -1)}); },
                          [](const Array& a) { return ref_slice(a, -1, 0, -1, 1); }, {{{3, 4}}, {{2, 3, 4}}}));
  rows.push_back(view_row("index_none_int_slice", [](const Tensor& x) { return x.index({None, 1, Slice(-3, -1)}); },
                          [](const Array& a) { return unsqueeze_ref(ref_slice(ref_select(a, 0, 1), 0, -3, -1, 1), 0); },
                          {{{3, 4}}}));
  rows.push_back(view_row("index_negative_int", [](const Tensor& x) { return x.index({-1}); },
                          [](const Array& a) { return ref_select(a, 0, -1); }, {{{3, 4}}}));
  rows.push_back(view_row("index_ellipsis_string_none", [](const Tensor& x) { return x.index({"...", None}); },
                          [](const Array& a) { return unsqueeze_ref(a, -1); }, {{{3, 4}}}));
  rows.push_back(view_row("index_step3", [](const Tensor& x) { return x.index({Slice(), Slice(0, 4, 3)}); },
                          [](const Array& a) { return ref_slice(a, 1, 0, 4, 3); }, {{{3, 5}}}));
  rows.push_back(view_row("index_mixed_3d",
                          [](const Tensor& x) { return x.index({Slice(None, None, 2), None, Slice(1, None)}); },
                          [](const Array& a) { return unsqueeze_ref(ref_slice(ref_slice(a, 0, 0, a.shape[0], 2), 1, 1, a.shape[1], 1), 1); },
                          {{{4, 5, 3}}}));
  rows.push_back(Row("index_int_tensor")
                     .in(U(-2, 2))
                     .in(Index(3))
                     .shapes({{{3, 4}, {5}}})
                     .f([](const TL& x) { return x[0].index({x[1]}); })
                     .r([](const AL& a) { return index_select_ref(a[0], 0, a[1]); }));
  rows.push_back(Row("index_bool_mask")
                     .in(U(-2, 2))
                     .in(Mask())
                     .shapes({{{3, 4}, {3, 4}}})
                     .f([](const TL& x) { return x[0].index({x[1]}); })
                     .r([](const AL& a) { return mask_select_ref(a[0], a[1]); }));

  rows.push_back(view_row("contiguous", [](const Tensor& x) { return x.contiguous(); }, [](const Array& a) { return a; }, m));
  rows.push_back(view_row("clone", [](const Tensor& x) { return x.clone(); }, [](const Array& a) { return a; },
                          {{{3, 4}}, {{}}}));
  rows.push_back(view_row("to_float64", [](const Tensor& x) { return x.to(loom::kFloat64); },
                          [](const Array& a) { return a; }, m)
                     .out({Out::Float64}));
  rows.push_back(view_row("to_same_dtype_copy", [](const Tensor& x) { return x.to(x.dtype(), /*copy=*/true); },
                          [](const Array& a) { return a; }, m));
  rows.push_back(view_row("detach", [](const Tensor& x) { return x.detach(); }, [](const Array& a) { return a; }, m)
                     .forward_only());
  rows.push_back(view_row("copy_into_slice",
                          [](const Tensor& x) {
                            Tensor y = loom::zeros({x.size(0), x.size(1) + 2}, x.dtype());
                            y.narrow(1, 1, x.size(1)).copy_(x);
                            return y;
                          },
                          [](const Array& a) { return pad_ref(a, {1, 1}, 0); }, m));
  rows.push_back(view_row("copy_broadcast",
                          [](const Tensor& x) {
                            Tensor y = loom::zeros({3, x.size(-1)}, x.dtype());
                            y.copy_(x);
                            return y;
                          },
                          [](const Array& a) { return expand_to(a, {3, a.shape.back()}); }, {{{4}}, {{1, 4}}}));
  rows.push_back(view_row("copy_dtype_conversion",
                          [](const Tensor& x) {
                            Tensor y = loom::zeros(x.sizes(), loom::kFloat64);
                            y.copy_(x);
                            return y;
                          },
                          [](const Array& a) { return a; }, m)
                     .out({Out::Float64}));
}

void add_inplace_rows(std::vector<Row>& rows) {
  const Domain any = U(-2, 2);
  const Cases two = {{{3, 4}, {3, 4}}, {{3, 4}, {4}}, {{2, 1, 3}, {1, 3}}};
  auto inplace2 = [&](const std::string& name, std::function<void(Tensor&, const Tensor&)> op,
                      std::function<double(double, double)> ref, Domain b) {
    return Row(name)
        .in(any)
        .in(std::move(b))
        .shapes(two)
        .f([op](const TL& x) {
          Tensor y = x[0].clone();
          op(y, x[1]);
          return y;
        })
        .r([ref](const AL& a) { return zip(a[0], a[1], ref); });
  };
  rows.push_back(inplace2("add_inplace", [](Tensor& y, const Tensor& b) { y.add_(b); },
                          [](double a, double b) { return a + b; }, any));
  rows.push_back(inplace2("add_inplace_alpha", [](Tensor& y, const Tensor& b) { y.add_(b, 2.0); },
                          [](double a, double b) { return a + 2 * b; }, any));
  rows.push_back(inplace2("add_inplace_operator", [](Tensor& y, const Tensor& b) { y += b; },
                          [](double a, double b) { return a + b; }, any));
  rows.push_back(inplace2("sub_inplace", [](Tensor& y, const Tensor& b) { y.sub_(b); },
                          [](double a, double b) { return a - b; }, any));
  rows.push_back(inplace2("mul_inplace", [](Tensor& y, const Tensor& b) { y.mul_(b); },
                          [](double a, double b) { return a * b; }, any));
  rows.push_back(inplace2("div_inplace", [](Tensor& y, const Tensor& b) { y.div_(b); },
                          [](double a, double b) { return a / b; }, Away(-2, 2, {0}, 0.5)));
  auto inplace1 = [&](const std::string& name, std::function<void(Tensor&)> op, std::function<Array(const Array&)> ref,
                      Domain d, Cases cases) {
    return Row(name).in(std::move(d)).shapes(std::move(cases)).f([op](const TL& x) {
      Tensor y = x[0].clone();
      op(y);
      return y;
    }).r([ref](const AL& a) { return ref(a[0]); });
  };
  const Cases m = {{{3, 4}}, {{1, 4}}};
  rows.push_back(inplace1("add_inplace_scalar", [](Tensor& y) { y.add_(1.5); },
                          [](const Array& a) { return map(a, [](double v) { return v + 1.5; }); }, any, m));
  rows.push_back(inplace1("sub_inplace_scalar", [](Tensor& y) { y -= 2; },
                          [](const Array& a) { return map(a, [](double v) { return v - 2; }); }, any, m));
  rows.push_back(inplace1("mul_inplace_scalar", [](Tensor& y) { y.mul_(-2.0); },
                          [](const Array& a) { return map(a, [](double v) { return v * -2; }); }, any, m));
  rows.push_back(inplace1("div_inplace_scalar", [](Tensor& y) { y /= 4.0; },
                          [](const Array& a) { return map(a, [](double v) { return v / 4; }); }, any, m));
  rows.push_back(inplace1("zero_inplace_slice", [](Tensor& y) { y.narrow(1, 1, 2).zero_(); },
                          [](const Array& a) {
                            Array r = a;
                            for_each_index(a.shape, [&](const std::vector<int64_t>& i) {
                              if (i[1] == 1 || i[1] == 2) r.at(i) = 0;
                            });
                            return r;
                          },
                          any, m));
  rows.push_back(inplace1("fill_inplace_row", [](Tensor& y) { y.select(0, -1).fill_(3.0); },
                          [](const Array& a) {
                            Array r = a;
                            for_each_index(a.shape, [&](const std::vector<int64_t>& i) {
                              if (i[0] == a.shape[0] - 1) r.at(i) = 3.0;
                            });
                            return r;
                          },
                          any, m));
  rows.push_back(inplace1("clamp_inplace", [](Tensor& y) { y.clamp_(-0.5, 0.5); },
                          [](const Array& a) { return map(a, [](double v) { return std::clamp(v, -0.5, 0.5); }); },
                          Away(-2, 2, {-0.5, 0.5}, 0.1), m));
  rows.push_back(Row("masked_fill_inplace")
                     .in(any)
                     .in(Mask())
                     .shapes({{{3, 4}, {3, 4}}, {{3, 4}, {4}}})
                     .f([](const TL& x) {
                       Tensor y = x[0].clone();
                       y.masked_fill_(x[1], -1.5);
                       return y;
                     })
                     .r([](const AL& a) { return zip(a[0], a[1], [](double v, double m) { return m != 0 ? -1.5 : v; }); }));
  // In-place through views of a non-leaf: the transpose view and a column.
  rows.push_back(Row("mul_inplace_through_view")
                     .in(any)
                     .in(any)
                     .shapes({{{3, 4}, {3, 4}}})
                     .f([](const TL& x) {
                       Tensor y = x[0] * 2.0;
                       Tensor v = y.t();
                       v.mul_(x[1].t());
                       return y;
                     })
                     .r([](const AL& a) { return zip(a[0], a[1], [](double p, double q) { return 2 * p * q; }); }));
  rows.push_back(Row("mul_inplace_column_view")
                     .in(any)
                     .in(any)
                     .shapes({{{3, 4}, {3, 4}}})
                     .f([](const TL& x) {
                       Tensor y = x[0] + 0.5;
                       y.select(1, 0).mul_(x[1].select(1, 0));
                       return y;
                     })
                     .r([](const AL& a) {
                       Array r = map(a[0], [](double v) { return v + 0.5; });
                       for (int64_t i = 0; i < r.shape[0]; ++i) r.at({i, 0}) *= a[1].at({i, 0});
                       return r;
                     }));
}

// Rows whose op also takes integer tensors (forward checked in int64 and
// int32 as well). Float-only ops, float scalars and float alphas are left out.
const std::set<std::string> kIntegerRows = {
    "neg", "neg_operator", "abs", "sign", "square", "pow_scalar_2", "pow_scalar_3", "add_scalar_int", "sub_scalar",
    "add", "add_operator", "add_method", "sub", "sub_operator", "mul", "mul_operator", "maximum", "minimum", "eq", "ne",
    "lt", "le", "gt", "ge", "eq_operator", "ne_operator", "lt_operator", "ge_method", "gt_scalar",
    "le_scalar_operator", "where", "where_mask_broadcast", "where_method", "sum_all", "sum_method_all", "sum_dim1",
    "sum_dims_keepdim", "sum_negdim_keepdim", "prod_all", "prod_dim_keepdim", "prod_dims", "prod_with_zeros",
    "max_all", "min_all", "amax_dims", "amin_dim_keepdim", "argmax_all", "argmax_dim", "argmax_dim_keepdim",
    "argmin_all", "argmin_dim_keepdim", "argmax_ties", "cumsum_last", "cumsum_dim0", "cumsum_dim1", "matmul_1d_1d",
    "matmul_2d_1d", "matmul_1d_2d", "matmul_2d_2d", "matmul_method", "matmul_batched", "matmul_batched_broadcast",
    "matmul_batched_1d", "matmul_mm", "matmul_bmm", "cat_dim0", "cat_dim1_three", "cat_negdim", "stack_dim0",
    "stack_dim1", "stack_negdim_three", "split_size", "split_sizes", "split_method_dim0", "chunk", "chunk_dim0",
    "unbind", "gather_dim1", "gather_dim0", "gather_3d_negdim", "scatter_add_dim1", "scatter_add_dim0",
    "index_select_dim0", "index_select_dim1", "embedding", "tril", "tril_diag1", "triu", "triu_diag_neg1", "flip_dim0",
    "flip_dims", "pad_last", "pad_negative_crops", "view_transposed_shape", "view_infer", "view_as", "reshape_flat",
    "reshape_2d", "reshape_to_scalar", "flatten", "flatten_from1", "unflatten", "permute", "permute_negative",
    "transpose", "transpose_negative", "t_2d", "t_1d", "t_mT", "unsqueeze0", "unsqueeze_last", "unsqueeze_mid",
    "squeeze_all", "squeeze_dim", "squeeze_dim_not_one", "expand", "expand_keep", "expand_broadcast_to", "narrow",
    "narrow_dim0", "narrow_negdim", "select", "select_negative", "select_operator", "slice_step",
    "slice_negative_start", "index_step_and_int", "index_ellipsis_slice", "index_none_int_slice",
    "index_negative_int", "index_ellipsis_string_none", "index_step3", "index_mixed_3d", "index_int_tensor",
    "index_bool_mask", "contiguous", "clone", "to_float64", "to_same_dtype_copy", "detach", "copy_into_slice",
    "copy_broadcast", "copy_dtype_conversion", "add_inplace", "add_inplace_operator", "sub_inplace", "mul_inplace",
    "sub_inplace_scalar", "zero_inplace_slice", "fill_inplace_row"};

std::vector<Row> all_rows() {
  std::vector<Row> rows;
  add_elementwise_rows(rows);
  add_reduction_rows(rows);
  add_linalg_rows(rows);
  add_join_index_rows(rows);
  add_view_rows(rows);
  add_inplace_rows(rows);
  add_fused_rows(rows);
  add_conv_rows(rows);
  add_pool_rows(rows);
  add_attention_rows(rows);
  for (Row& r : rows) {
    if (kIntegerRows.count(r.name)) r.ints = true;
    // sum, prod and cumsum accumulate integers in int64.
    for (const char* p : {"sum_", "prod_", "cumsum_"})
      if (r.name.rfind(p, 0) == 0) r.outs = {Out::Accum};
  }
  return rows;
}

TEST(HarnessCoverage, IntegerRowsExist) {
  std::set<std::string> names;
  for (const Row& r : all_rows()) names.insert(r.name);
  for (const std::string& n : kIntegerRows) EXPECT_TRUE(names.count(n)) << "kIntegerRows names no row " << n;
}

const std::vector<Row>& rows() {
  static const std::vector<Row> r = all_rows();
  return r;
}

class OpRow : public ::testing::TestWithParam<Row> {};

TEST_P(OpRow, ForwardGradcheckAndLayouts) { run_row(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Harness, OpRow, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });

// A row named exactly `op`, or `op` followed by "_" and more.
bool has_row_for(const std::string& op) {
  for (const Row& r : rows())
    if (r.name == op || r.name.rfind(op + "_", 0) == 0) return true;
  return false;
}

// "LogSoftmaxBackward" -> "log_softmax_backward", "MaxPool2d" -> "max_pool2d".
std::string snake_case(const std::string& name) {
  std::string out;
  for (char c : name) {
    if (std::isupper(static_cast<unsigned char>(c))) {
      if (!out.empty()) out += '_';
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  return out;
}

// Every primitive has a row. The list is src/ops/ops.def itself, so a new
// op fails here until it gets a row (or a line below saying where else it
// is tested). A primitive's rows are named after it in snake_case unless
// kRowsOf names them.
const std::vector<std::string> kPrimitives = {
#define LOOM_OP(name, ...) #name,
#include "ops/ops.def"
#undef LOOM_OP
};
// Primitives whose rows carry another name; a backward primitive runs in the
// gradcheck and double-backward check of its forward op's rows.
const std::map<std::string, std::string> kRowsOf = {
    {"ArgMax", "argmax"},
    {"ArgMin", "argmin"},
    {"Bmm", "matmul_bmm"},
    {"Attention", "scaled_dot_product_attention"},
    {"AttentionBackward", "scaled_dot_product_attention"},
    {"GeluBackward", "gelu"},
    {"LayerNormBackward", "layer_norm"},
    {"CrossEntropyBackward", "cross_entropy"},
    {"MaxPool2dBackward", "max_pool2d"},
    {"AvgPool2dBackward", "avg_pool2d"},
    {"BatchNormBackward", "batch_norm"},
    {"IndexAdd", "index_select"},  // index_select's backward
};
// Primitives the harness cannot check (no gradient, random or multi-tensor
// in-place results), and the tests that check them instead.
const std::map<std::string, std::string> kTestedElsewhere = {
    {"LogicalNot", "test_tensor.cpp (bool results, no gradient)"},
    {"LogicalAnd", "test_tensor.cpp (bool results, no gradient)"},
    {"LogicalOr", "test_tensor.cpp (bool results, no gradient)"},
    {"IsNan", "test_tensor.cpp (bool results, no gradient)"},
    {"Uniform", "test_tensor.cpp (random factories)"},
    {"Normal", "test_tensor.cpp (random factories)"},
    {"RandInt", "test_tensor.cpp (random factories)"},
    {"Bernoulli", "test_tensor.cpp (random factories)"},
    {"FusedAdam", "test_optim.cpp (bitwise against the per-tensor step)"},
    {"FusedSgd", "test_optim.cpp (bitwise against the per-tensor step)"},
    {"Fused", "test_fused_kernel.cpp (bitwise against the primitives it stands for) and test_jit_fusion.cpp"},
    {"QuantizeWeight", "test_quant_kernels.cpp (integer codes, no gradient: against the definition, every ISA)"},
    {"DequantizeWeight", "test_quant_kernels.cpp (round trips within the format's bound)"},
    {"QuantizedLinear", "test_quant_kernels.cpp (inference only: float64 references, every ISA bitwise)"},
    {"PagedAttention", "test_paged_attention.cpp (inference only: against scaled_dot_product_attention, batch "
                       "invariance, index errors)"},
};

TEST(HarnessCoverage, EveryPrimitiveHasARow) {
  ASSERT_FALSE(kPrimitives.empty());
  for (const std::string& op : kPrimitives) {
    if (kTestedElsewhere.count(op)) continue;
    auto it = kRowsOf.find(op);
    const std::string row = it != kRowsOf.end() ? it->second : snake_case(op);
    EXPECT_TRUE(has_row_for(row)) << "no harness row for primitive " << op << " (looked for rows named " << row
                                  << "[_...]; add a row, or name its rows in kRowsOf)";
  }
}

TEST(HarnessCoverage, CoverageTablesNameOnlyPrimitives) {
  const std::set<std::string> prims(kPrimitives.begin(), kPrimitives.end());
  for (const auto& [op, row] : kRowsOf) EXPECT_TRUE(prims.count(op)) << "kRowsOf names " << op << ", not in ops.def";
  for (const auto& [op, where] : kTestedElsewhere)
    EXPECT_TRUE(prims.count(op)) << "kTestedElsewhere names " << op << ", not in ops.def";
}

// Composites have no ops.def row to derive them from: each listed here has
// a row (named exactly like it, or it followed by "_").
TEST(HarnessCoverage, EveryListedOpHasARow) {
  const std::vector<std::string> ops = {
      "pow_scalar", "pow_tensor", "max", "min", "masked_fill", "mean", "var", "std", "norm", "logsumexp",
      "matmul_1d_1d", "matmul_2d_2d", "matmul_batched_broadcast", "cat", "stack", "split", "chunk", "embedding",
      "one_hot", "tril", "triu", "view", "reshape", "permute", "transpose", "t", "unsqueeze", "squeeze", "expand",
      "narrow", "select", "index", "flip", "pad", "clone", "to", "contiguous", "add_inplace", "sub_inplace",
      "mul_inplace", "div_inplace", "zero_inplace", "fill_inplace"};
  for (const std::string& op : ops) EXPECT_TRUE(has_row_for(op)) << "no harness row for op " << op;
}

TEST(HarnessCoverage, RowNamesAreUnique) {
  std::set<std::string> names;
  for (const Row& r : rows()) EXPECT_TRUE(names.insert(r.name).second) << "duplicate row " << r.name;
}

// The harness's own references and helpers, checked on known values so a
// wrong reference cannot hide a wrong op.
TEST(HarnessSelfCheck, References) {
  Array a({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(ref_matmul(a, Array({3}, {1, 0, -1})).v, (std::vector<double>{-2, -2}));
  EXPECT_EQ(ref_permute(a, {1, 0}).v, (std::vector<double>{1, 4, 2, 5, 3, 6}));
  EXPECT_EQ(reduce(a, {1}, true, vsum).shape, (Shape{2, 1}));
  EXPECT_EQ(reduce(a, {0}, false, vsum).v, (std::vector<double>{5, 7, 9}));
  EXPECT_EQ(along(a, 1, vcumsum).v, (std::vector<double>{1, 3, 6, 4, 9, 15}));
  EXPECT_EQ(ref_slice(a, 1, 0, 3, 2).v, (std::vector<double>{1, 3, 4, 6}));
  EXPECT_EQ(ref_slice(a, 1, -2, 3, 1).v, (std::vector<double>{2, 3, 5, 6}));
  EXPECT_EQ(expand_to(Array({3}, {1, 2, 3}), {2, 3}).v, (std::vector<double>{1, 2, 3, 1, 2, 3}));
  EXPECT_EQ(pad_ref(Array({2}, {1, 2}), {1, -1}, 9).v, (std::vector<double>{9, 1}));
  EXPECT_EQ(tri_ref(Array({2, 2}, {1, 2, 3, 4}), 0, true).v, (std::vector<double>{1, 0, 3, 4}));
  EXPECT_EQ(gather_ref(a, 1, Array({2, 1}, {2, 0})).v, (std::vector<double>{3, 4}));
  EXPECT_EQ(scatter_add_ref(Array({3}, {0, 0, 0}), 0, Array({2}, {1, 1}), Array({2}, {5, 6})).v,
            (std::vector<double>{0, 11, 0}));
  EXPECT_NEAR(vlogsumexp({1000, 1000}), 1000 + std::log(2.0), 1e-9);
  EXPECT_NEAR(gelu_ref(1.0), 0.8413447460685429, 1e-12);
  EXPECT_NEAR(gelu_tanh_ref(1.0), 0.8411919906082768, 1e-12);
}

}  // namespace
}  // namespace loom_test
