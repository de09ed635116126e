// The op harness (see harness.h): variants, forward checks against the
// references, float64 gradcheck and gradgradcheck.
#include "harness.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>

namespace loom_test {

using loom::DType;
using loom::kBool;
using loom::kFloat16;
using loom::kBFloat16;
using loom::kFloat32;
using loom::kFloat64;
using loom::kInt64;

// ---------------------------------------------------------------- Array

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Array::Array(Shape s, double fill) : shape(std::move(s)), v(static_cast<size_t>(numel_of(shape)), fill) {}

Array::Array(Shape s, std::vector<double> values) : shape(std::move(s)), v(std::move(values)) {
  if (numel_of(shape) != numel()) throw std::runtime_error("Array: value count does not match shape");
}

double& Array::at(const std::vector<int64_t>& idx) { return v[static_cast<size_t>(ravel(idx, shape))]; }
double Array::at(const std::vector<int64_t>& idx) const { return v[static_cast<size_t>(ravel(idx, shape))]; }

std::vector<int64_t> unravel(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  return idx;
}

int64_t ravel(const std::vector<int64_t>& idx, const Shape& shape) {
  if (idx.size() != shape.size()) throw std::runtime_error("ravel: rank mismatch");
  int64_t flat = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (idx[d] < 0 || idx[d] >= shape[d]) throw std::runtime_error("ravel: index out of range");
    flat = flat * shape[d] + idx[d];
  }
  return flat;
}

void for_each_index(const Shape& shape, const std::function<void(const std::vector<int64_t>&)>& fn) {
  int64_t n = numel_of(shape);
  for (int64_t i = 0; i < n; ++i) fn(unravel(i, shape));
}

int64_t wrap(int64_t d, int64_t n) { return d < 0 ? d + n : d; }

// ---------------------------------------------------------------- references

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (x != y && x != 1 && y != 1) throw std::runtime_error("reference: shapes do not broadcast");
    out[i] = x == 1 ? y : x;
  }
  return out;
}

Array expand_to(const Array& a, const Shape& shape) {
  Array out(shape);
  size_t lead = shape.size() - a.shape.size();
  if (a.shape.size() > shape.size()) throw std::runtime_error("expand_to: too many dims");
  for_each_index(shape, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> src(a.shape.size());
    for (size_t d = 0; d < a.shape.size(); ++d) {
      int64_t s = a.shape[d];
      if (s != 1 && s != shape[d + lead]) throw std::runtime_error("expand_to: size mismatch");
      src[d] = s == 1 ? 0 : idx[d + lead];
    }
    out.at(idx) = a.at(src);
  });
  return out;
}

Array map(const Array& a, const std::function<double(double)>& f) {
  Array out(a.shape);
  for (size_t i = 0; i < a.v.size(); ++i) out.v[i] = f(a.v[i]);
  return out;
}

Array zip(const Array& a, const Array& b, const std::function<double(double, double)>& f) {
  Shape s = broadcast_shapes(a.shape, b.shape);
  Array x = expand_to(a, s), y = expand_to(b, s), out(s);
  for (size_t i = 0; i < out.v.size(); ++i) out.v[i] = f(x.v[i], y.v[i]);
  return out;
}

Array reduce(const Array& a, std::vector<int64_t> dims, bool keepdim,
             const std::function<double(const std::vector<double>&)>& f) {
  std::vector<bool> reduced(a.shape.size(), dims.empty());
  for (int64_t d : dims) reduced[static_cast<size_t>(wrap(d, a.dim()))] = true;
  Shape out_shape, kept_shape;
  for (size_t d = 0; d < a.shape.size(); ++d) {
    if (!reduced[d]) out_shape.push_back(a.shape[d]);
    else if (keepdim) out_shape.push_back(1);
    kept_shape.push_back(reduced[d] ? 1 : a.shape[d]);
  }
  std::vector<std::vector<double>> buckets(static_cast<size_t>(numel_of(kept_shape)));
  for_each_index(a.shape, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> k = idx;
    for (size_t d = 0; d < k.size(); ++d)
      if (reduced[d]) k[d] = 0;
    buckets[static_cast<size_t>(ravel(k, kept_shape))].push_back(a.at(idx));
  });
  Array out(out_shape);
  for (size_t i = 0; i < buckets.size(); ++i) out.v[i] = f(buckets[i]);
  return out;
}

Array along(const Array& a, int64_t dim, const std::function<std::vector<double>(const std::vector<double>&)>& f) {
  Array out(a.shape);
  if (a.dim() == 0) {
    out.v = f(a.v);
    return out;
  }
  int64_t d = wrap(dim, a.dim());
  int64_t n = a.shape[d];
  for_each_index(a.shape, [&](const std::vector<int64_t>& idx) {
    if (idx[d] != 0) return;
    std::vector<double> fiber(static_cast<size_t>(n));
    std::vector<int64_t> j = idx;
    for (int64_t k = 0; k < n; ++k) {
      j[d] = k;
      fiber[k] = a.at(j);
    }
    std::vector<double> r = f(fiber);
    for (int64_t k = 0; k < n; ++k) {
      j[d] = k;
      out.at(j) = r[k];
    }
  });
  return out;
}

Array ref_reshape(const Array& a, Shape shape) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) infer = static_cast<int64_t>(i);
    else known *= shape[i];
  }
  if (infer >= 0) shape[infer] = a.numel() / known;
  return Array(shape, a.v);
}

Array ref_matmul(const Array& a, const Array& b) {
  if (a.dim() == 1 && b.dim() == 1) {
    double s = 0;
    for (int64_t i = 0; i < a.numel(); ++i) s += a.v[i] * b.v[i];
    return Array({}, std::vector<double>{s});
  }
  bool a1 = a.dim() == 1, b1 = b.dim() == 1;
  Array A = a1 ? ref_reshape(a, {1, a.numel()}) : a;
  Array B = b1 ? ref_reshape(b, {b.numel(), 1}) : b;
  int64_t M = A.size(-2), K = A.size(-1), N = B.size(-1);
  if (B.size(-2) != K) throw std::runtime_error("ref_matmul: inner sizes differ");
  Shape ba(A.shape.begin(), A.shape.end() - 2), bb(B.shape.begin(), B.shape.end() - 2);
  Shape batch = broadcast_shapes(ba, bb);
  Shape sa = batch, sb = batch, so = batch;
  sa.insert(sa.end(), {M, K});
  sb.insert(sb.end(), {K, N});
  so.insert(so.end(), {M, N});
  Array X = expand_to(A, sa), Y = expand_to(B, sb), out(so);
  int64_t nb = numel_of(batch);
  for (int64_t p = 0; p < nb; ++p)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += X.v[(p * M + i) * K + k] * Y.v[(p * K + k) * N + j];
        out.v[(p * M + i) * N + j] = s;
      }
  Shape final_shape = batch;
  if (!a1) final_shape.push_back(M);
  if (!b1) final_shape.push_back(N);
  return Array(final_shape, out.v);
}

Array ref_permute(const Array& a, const std::vector<int64_t>& dims) {
  Shape s(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) s[i] = a.shape[wrap(dims[i], a.dim())];
  Array out(s);
  for_each_index(s, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> src(idx.size());
    for (size_t i = 0; i < dims.size(); ++i) src[wrap(dims[i], a.dim())] = idx[i];
    out.at(idx) = a.at(src);
  });
  return out;
}

Array ref_slice(const Array& a, int64_t dim, int64_t start, int64_t stop, int64_t step) {
  int64_t d = wrap(dim, a.dim()), n = a.shape[d];
  auto norm = [n](int64_t x) { return std::clamp<int64_t>(x < 0 ? x + n : x, 0, n); };
  start = norm(start);
  stop = norm(stop);
  int64_t len = stop > start ? (stop - start + step - 1) / step : 0;
  Shape s = a.shape;
  s[d] = len;
  Array out(s);
  for_each_index(s, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> src = idx;
    src[d] = start + idx[d] * step;
    out.at(idx) = a.at(src);
  });
  return out;
}

Array ref_select(const Array& a, int64_t dim, int64_t index) {
  int64_t d = wrap(dim, a.dim());
  Array s = ref_slice(a, d, wrap(index, a.shape[d]), wrap(index, a.shape[d]) + 1, 1);
  Shape shape = a.shape;
  shape.erase(shape.begin() + d);
  return Array(shape, s.v);
}

Array ref_cat(const std::vector<Array>& as, int64_t dim) {
  int64_t d = wrap(dim, as[0].dim());
  Shape s = as[0].shape;
  s[d] = 0;
  for (const Array& a : as) s[d] += a.shape[d];
  Array out(s);
  int64_t off = 0;
  for (const Array& a : as) {
    for_each_index(a.shape, [&](const std::vector<int64_t>& idx) {
      std::vector<int64_t> j = idx;
      j[d] += off;
      out.at(j) = a.at(idx);
    });
    off += a.shape[d];
  }
  return out;
}

// ---------------------------------------------------------------- domains

Domain U(double lo, double hi) {
  Domain d;
  d.lo = lo;
  d.hi = hi;
  return d;
}
Domain Away(double lo, double hi, std::vector<double> kinks, double gap) {
  Domain d = U(lo, hi);
  d.kinks = std::move(kinks);
  d.gap = gap;
  return d;
}
Domain Lattice(double offset, double step, int64_t count) {
  Domain d;
  d.kind = Domain::Kind::Lattice;
  d.offset = offset;
  d.step = step;
  d.count = count;
  return d;
}
Domain Distinct(double spacing) {
  Domain d;
  d.kind = Domain::Kind::Distinct;
  d.step = spacing;
  return d;
}
Domain Ints(int64_t lo, int64_t hi) {
  Domain d;
  d.kind = Domain::Kind::Integers;
  d.lo = static_cast<double>(lo);
  d.hi = static_cast<double>(hi);
  return d;
}
Domain Index(int64_t high) {
  Domain d;
  d.kind = Domain::Kind::Index;
  d.count = high;
  d.differentiable = false;
  return d;
}
Domain Mask() {
  Domain d;
  d.kind = Domain::Kind::Mask;
  d.differentiable = false;
  return d;
}
Domain Const(Domain d) {
  d.differentiable = false;
  return d;
}

namespace {

using Rng = std::mt19937_64;

double uniform(Rng& rng, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }
int64_t randint(Rng& rng, int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi - 1)(rng); }

Array generate(const Domain& dom, const Shape& shape, Rng& rng) {
  Array a(shape);
  size_t n = a.v.size();
  switch (dom.kind) {
    case Domain::Kind::Uniform:
      for (double& x : a.v) {
        for (;;) {
          x = uniform(rng, dom.lo, dom.hi);
          bool near = std::any_of(dom.kinks.begin(), dom.kinks.end(), [&](double k) { return std::abs(x - k) < dom.gap; });
          if (!near) break;
        }
      }
      break;
    case Domain::Kind::Lattice:
      for (double& x : a.v) x = dom.offset + dom.step * static_cast<double>(randint(rng, 0, dom.count));
      break;
    case Domain::Kind::Distinct: {
      std::vector<int64_t> perm(n);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (size_t i = 0; i < n; ++i) a.v[i] = (static_cast<double>(perm[i]) - (static_cast<double>(n) - 1) / 2) * dom.step;
      break;
    }
    case Domain::Kind::Integers:
      for (double& x : a.v) x = static_cast<double>(randint(rng, static_cast<int64_t>(dom.lo), static_cast<int64_t>(dom.hi)));
      break;
    case Domain::Kind::Index:
      for (double& x : a.v) x = static_cast<double>(randint(rng, 0, dom.count));
      break;
    case Domain::Kind::Mask:
      for (double& x : a.v) x = static_cast<double>(randint(rng, 0, 2));
      break;
  }
  return a;
}

Array random_weights(const Shape& shape, Rng& rng) {
  Array a(shape);
  for (double& x : a.v) x = uniform(rng, -1, 1);
  return a;
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string shape_string(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// ---------------------------------------------------------------- variants

enum class Layout { Contiguous, Permuted, Sliced };

struct InputPlan {
  Shape spec;        // the shape the row's case gives this input
  Shape leaf_shape;  // the shape of the leaf holding its values
  Layout layout = Layout::Contiguous;
  bool expand = false;  // the op sees leaf.expand(spec)
};

struct Variant {
  std::string name;
  std::vector<InputPlan> plans;
};

// How many dims of `s` have more than one element (layout checks need two).
int64_t big_dims(const Shape& s) {
  return std::count_if(s.begin(), s.end(), [](int64_t x) { return x > 1; });
}

std::vector<Variant> make_variants(const Row& row, const std::vector<Shape>& spec) {
  size_t n = spec.size();
  Variant base{"contiguous", {}};
  for (size_t i = 0; i < n; ++i) base.plans.push_back({spec[i], spec[i], Layout::Contiguous, false});
  std::vector<Variant> out{base};
  if (row.layouts) {
    Variant t = base, s = base, e = base;
    t.name = "transposed";
    s.name = "sliced";
    e.name = "expanded";
    bool any_t = false, any_s = false, any_e = false;
    for (size_t i = 0; i < n; ++i) {
      if (spec[i].size() >= 2) {
        t.plans[i].layout = Layout::Permuted;
        any_t = true;
      }
      if (!spec[i].empty()) {
        s.plans[i].layout = Layout::Sliced;
        any_s = true;
      }
      if (row.inputs[i].is_float()) {
        auto it = std::find_if(spec[i].begin(), spec[i].end(), [](int64_t x) { return x > 1; });
        if (it != spec[i].end()) {
          e.plans[i].leaf_shape[static_cast<size_t>(it - spec[i].begin())] = 1;
          e.plans[i].expand = true;
          any_e = true;
        }
      }
    }
    if (any_t) out.push_back(t);
    if (any_s) out.push_back(s);
    if (any_e && row.expand) out.push_back(e);
  }
  if (row.op_broadcasts) {
    Shape full;
    for (const Shape& s : spec) full = broadcast_shapes(full, s);
    Variant b = base, br = base;
    b.name = "broadcast";
    br.name = "broadcast_rank";
    size_t k = 0;
    for (size_t i = 0; i < n; ++i) {
      if (!row.inputs[i].is_float() || spec[i].empty()) {
        if (row.inputs[i].is_float()) ++k;
        continue;
      }
      Shape& ls = b.plans[i].leaf_shape;
      if (k == 0) ls[0] = 1;
      else if (k == 1) ls.back() = 1;
      else ls.erase(ls.begin());
      if (k >= 1) br.plans[i].leaf_shape.erase(br.plans[i].leaf_shape.begin());
      ++k;
    }
    for (Variant* v : {&b, &br}) {
      Shape got;
      bool changed = false;
      for (const InputPlan& p : v->plans) {
        got = broadcast_shapes(got, p.leaf_shape);
        changed = changed || p.leaf_shape != p.spec;
      }
      if (changed && got == full) out.push_back(*v);
    }
  }
  return out;
}

// ---------------------------------------------------------------- tensors

Tensor to_tensor(const Array& a, DType dt) {
  Tensor t = loom::empty(a.shape, kFloat64);
  std::copy(a.v.begin(), a.v.end(), t.data_ptr<double>());
  return t.to(dt);
}

Array read(const Tensor& t) { return Array(t.sizes(), t.to_vector<double>()); }

DType dtype_for(const Domain& d, DType float_dtype) {
  if (d.kind == Domain::Kind::Index) return kInt64;
  if (d.kind == Domain::Kind::Mask) return kBool;
  return float_dtype;
}

// A leaf holding `values` in `layout` (see Note [Harness leaves]).
Tensor make_leaf(const Domain& dom, const Array& values, Layout layout, DType float_dtype, bool requires_grad) {
  DType dt = dtype_for(dom, float_dtype);
  Tensor t;
  {
    loom::NoGradGuard no_grad;
    int64_t n = values.dim();
    if (layout == Layout::Contiguous || n == 0) {
      t = to_tensor(values, dt);
    } else if (layout == Layout::Permuted) {
      // Storage holds the reversed-dims array; permuting it back gives the
      // logical values with reversed (column-major-like) strides.
      std::vector<int64_t> rev(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) rev[i] = n - 1 - i;
      t = to_tensor(ref_permute(values, rev), dt).permute(rev);
    } else {
      // Storage (s0 + 2, ..., 2 * s_last + 1) with the values at rows 1..s0
      // and odd columns; the holes hold a sentinel (NaN for floats, an index
      // far out of range for indices) so a kernel that ignores strides fails.
      double sentinel = dom.kind == Domain::Kind::Index  ? 1e9
                        : dom.kind == Domain::Kind::Mask ? 1.0
                                                         : std::numeric_limits<double>::quiet_NaN();
      bool lead = n >= 2;
      Shape bs = values.shape;
      if (lead) bs[0] += 2;
      bs.back() = 2 * bs.back() + 1;
      Array base(bs, sentinel);
      for_each_index(values.shape, [&](const std::vector<int64_t>& idx) {
        std::vector<int64_t> j = idx;
        if (lead) j[0] += 1;
        j.back() = 2 * j.back() + 1;
        base.at(j) = values.at(idx);
      });
      t = to_tensor(base, dt);
      if (lead) t = t.narrow(0, 1, values.shape[0]);
      t = t.index({loom::indexing::Ellipsis, loom::indexing::Slice(1, loom::indexing::None, 2)});
    }
    t = t.detach();
  }
  if (requires_grad) t.requires_grad_(true);
  return t;
}

struct Built {
  TL leaves, operands;
};

Built build(const Row& row, const Variant& var, const std::vector<Array>& vals, DType dt, bool requires_grad) {
  Built b;
  for (size_t i = 0; i < vals.size(); ++i) {
    const Domain& dom = row.inputs[i];
    bool rg = requires_grad && dom.is_float() && dom.differentiable;
    const InputPlan& p = var.plans[i];
    Tensor leaf = make_leaf(dom, vals[i], p.layout, dt, rg);
    b.leaves.push_back(leaf);
    b.operands.push_back(p.expand ? leaf.expand(p.spec) : leaf);
  }
  return b;
}

Out out_kind(const Row& row, size_t k) { return row.outs[std::min(k, row.outs.size() - 1)]; }
bool is_float_out(Out o) { return o == Out::Same || o == Out::Float64 || o == Out::Accum; }

DType expected_dtype(Out o, DType dt) {
  switch (o) {
    case Out::Same: return dt;
    case Out::Accum: return loom::is_integral(dt, true) ? kInt64 : dt;
    case Out::Bool: return kBool;
    case Out::Int64: return kInt64;
    case Out::Float64: return kFloat64;
  }
  return dt;
}

bool close(double got, double want, Tol tol) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::abs(got - want) <= tol.atol + tol.rtol * std::abs(want);
}

// Compares values; returns "" or a description of the first mismatches.
std::string compare_values(const Shape& shape, const std::vector<double>& got, const std::vector<double>& want, Tol tol) {
  std::ostringstream os;
  os.precision(12);
  int64_t bad = 0;
  for (size_t j = 0; j < want.size(); ++j) {
    if (close(got[j], want[j], tol)) continue;
    if (bad < 6) os << "\n    at " << shape_string(unravel(static_cast<int64_t>(j), shape)) << ": got " << got[j] << ", want " << want[j];
    ++bad;
  }
  if (bad == 0) return "";
  std::ostringstream head;
  head.precision(17);
  head << bad << " of " << want.size() << " values differ (rtol " << tol.rtol << ", atol " << tol.atol << ")" << os.str();
  return head.str();
}

std::string describe(const Row& row, size_t case_idx, const std::vector<Shape>& spec, const Variant& var) {
  std::ostringstream os;
  os << "[" << row.name << " case " << case_idx << " shapes ";
  for (size_t i = 0; i < spec.size(); ++i) os << (i ? " " : "") << shape_string(spec[i]);
  os << " variant " << var.name;
  for (size_t i = 0; i < var.plans.size(); ++i)
    if (var.plans[i].leaf_shape != var.plans[i].spec) os << " in" << i << "=" << shape_string(var.plans[i].leaf_shape);
  os << "]";
  return os.str();
}

// ---------------------------------------------------------------- checks

void check_forward(const Row& row, const Variant& var, const std::vector<Array>& vals, DType dt, Tol tol,
                   const std::string& ctx) {
  std::string where = ctx + " forward " + loom::dtype_name(dt) + ": ";
  try {
    Built b = build(row, var, vals, dt, false);
    std::vector<Array> ref_in, before;
    for (size_t i = 0; i < b.leaves.size(); ++i) {
      const Tensor& leaf = b.leaves[i];
      // The layout really is what the variant says (detach keeps strides).
      if (var.plans[i].layout != Layout::Contiguous && big_dims(leaf.sizes()) >= 2 && leaf.is_contiguous())
        ADD_FAILURE() << where << "input " << i << " should be non-contiguous for this variant";
      Array a = read(leaf);
      before.push_back(a);
      ref_in.push_back(expand_to(a, var.plans[i].spec));
    }
    TL outs = row.fn(b.operands);
    std::vector<Array> want = row.ref(ref_in);
    if (outs.size() != want.size()) {
      ADD_FAILURE() << where << "op returned " << outs.size() << " outputs, reference " << want.size();
      return;
    }
    for (size_t k = 0; k < outs.size(); ++k) {
      const Tensor& o = outs[k];
      std::string w = where + "output " + std::to_string(k) + ": ";
      if (!o.defined()) {
        ADD_FAILURE() << w << "undefined";
        continue;
      }
      DType ed = expected_dtype(out_kind(row, k), dt);
      if (o.dtype() != ed) ADD_FAILURE() << w << "dtype " << o.dtype() << ", want " << ed;
      if (o.sizes() != want[k].shape) {
        ADD_FAILURE() << w << "shape " << shape_string(o.sizes()) << ", want " << shape_string(want[k].shape);
        continue;
      }
      Tol t = is_float_out(out_kind(row, k)) ? tol : Tol{0, 0};
      std::string diff = compare_values(want[k].shape, o.to_vector<double>(), want[k].v, t);
      if (!diff.empty()) ADD_FAILURE() << w << diff;
    }
    for (size_t i = 0; i < b.leaves.size(); ++i) {
      std::string diff = compare_values(before[i].shape, read(b.leaves[i]).v, before[i].v, Tol{0, 0});
      if (!diff.empty()) ADD_FAILURE() << where << "the op modified its input " << i << ": " << diff;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << where << "threw: " << e.what();
  }
}

std::vector<size_t> differentiable_inputs(const Row& row) {
  std::vector<size_t> d;
  for (size_t i = 0; i < row.inputs.size(); ++i)
    if (row.inputs[i].is_float() && row.inputs[i].differentiable) d.push_back(i);
  return d;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Float outputs of a run and the random weights that turn them into a scalar
// L = sum_k <W_k, out_k>; the weights are fixed per check.
struct Weighted {
  TL outs, weights;
  std::vector<Array> w;
};

Weighted weight_outputs(const Row& row, const TL& outs, Rng& rng) {
  Weighted r;
  for (size_t k = 0; k < outs.size(); ++k) {
    if (!is_float_out(out_kind(row, k))) continue;
    Array w = random_weights(outs[k].sizes(), rng);
    r.outs.push_back(outs[k]);
    r.weights.push_back(to_tensor(w, outs[k].dtype()));
    r.w.push_back(std::move(w));
  }
  return r;
}

double weighted_loss(const Row& row, const TL& outs, const std::vector<Array>& w) {
  double l = 0;
  size_t j = 0;
  for (size_t k = 0; k < outs.size(); ++k) {
    if (!is_float_out(out_kind(row, k))) continue;
    l += dot(outs[k].to_vector<double>(), w[j++].v);
  }
  return l;
}

// dL/dleaf_i, with undefined gradients (unused inputs) read as zeros.
std::vector<Array> grads_as_arrays(const TL& g, const TL& leaves, const std::string& where) {
  std::vector<Array> out;
  for (size_t i = 0; i < leaves.size(); ++i) {
    if (i >= g.size() || !g[i].defined()) {
      out.emplace_back(leaves[i].sizes());
      continue;
    }
    if (g[i].sizes() != leaves[i].sizes())
      throw std::runtime_error(where + "gradient " + std::to_string(i) + " has shape " + shape_string(g[i].sizes()) +
                               ", input has " + shape_string(leaves[i].sizes()));
    if (g[i].dtype() != leaves[i].dtype())
      throw std::runtime_error(where + "gradient " + std::to_string(i) + " has dtype " + loom::dtype_name(g[i].dtype()));
    out.push_back(read(g[i]));
  }
  return out;
}

// Numeric d(scalar)/d(vals[i]) by central differences, one element at a time.
std::vector<Array> numeric_gradient(const std::vector<Array>& vals, const std::vector<size_t>& diff,
                                    const std::function<double(const std::vector<Array>&)>& scalar) {
  std::vector<Array> out;
  for (size_t i : diff) {
    Array g(vals[i].shape);
    for (int64_t j = 0; j < vals[i].numel(); ++j) {
      std::vector<Array> p = vals, m = vals;
      p[i].v[j] += kGradEps;
      m[i].v[j] -= kGradEps;
      g.v[j] = (scalar(p) - scalar(m)) / (2 * kGradEps);
    }
    out.push_back(std::move(g));
  }
  return out;
}

void report_grad_diff(const std::string& where, const std::vector<size_t>& diff, const std::vector<Array>& analytic,
                      const std::vector<Array>& numeric) {
  for (size_t k = 0; k < diff.size(); ++k) {
    std::string d = compare_values(numeric[k].shape, analytic[k].v, numeric[k].v, kTolGrad);
    if (!d.empty()) ADD_FAILURE() << where << "d/d(input " << diff[k] << ") analytic vs numeric: " << d;
  }
}

TL select(const TL& ts, const std::vector<size_t>& idx) {
  TL r;
  for (size_t i : idx) r.push_back(ts[i]);
  return r;
}

void gradcheck(const Row& row, const Variant& var, const std::vector<Array>& vals, const std::string& ctx, Rng& rng) {
  std::string where = ctx + " gradcheck: ";
  std::vector<size_t> diff = differentiable_inputs(row);
  if (diff.empty()) return;
  try {
    Built b = build(row, var, vals, kFloat64, true);
    TL outs = row.fn(b.operands);
    Weighted wo = weight_outputs(row, outs, rng);
    for (size_t k = 0; k < wo.outs.size(); ++k)
      if (!wo.outs[k].requires_grad()) {
        ADD_FAILURE() << where << "float output " << k << " does not require grad";
        return;
      }
    TL leaves = select(b.leaves, diff);
    TL g = loom::autograd::grad(wo.outs, leaves, wo.weights, std::nullopt, false, /*allow_unused=*/true);
    std::vector<Array> analytic = grads_as_arrays(g, leaves, where);
    std::vector<Array> numeric = numeric_gradient(vals, diff, [&](const std::vector<Array>& v) {
      loom::NoGradGuard no_grad;
      Built nb = build(row, var, v, kFloat64, false);
      return weighted_loss(row, row.fn(nb.operands), wo.w);
    });
    report_grad_diff(where, diff, analytic, numeric);
  } catch (const std::exception& e) {
    ADD_FAILURE() << where << "threw: " << e.what();
  }
}

// Backward in float32: the same gradients as float64 on the same
// (float32-rounded) inputs, and float32 gradients for float32 leaves.
void grad_float32_check(const Row& row, const Variant& var, const std::vector<Array>& vals, const std::string& ctx,
                        Rng& rng) {
  std::string where = ctx + " backward float32: ";
  std::vector<size_t> diff = differentiable_inputs(row);
  if (diff.empty()) return;
  try {
    std::vector<Array> rounded = vals;
    for (Array& a : rounded)
      for (double& x : a.v) x = static_cast<double>(static_cast<float>(x));
    Built b64 = build(row, var, rounded, kFloat64, true);
    Weighted w64 = weight_outputs(row, row.fn(b64.operands), rng);
    TL l64 = select(b64.leaves, diff);
    std::vector<Array> want = grads_as_arrays(loom::autograd::grad(w64.outs, l64, w64.weights, std::nullopt, false, true),
                                              l64, where);
    Built b32 = build(row, var, rounded, kFloat32, true);
    TL outs32 = row.fn(b32.operands);
    TL fo, ws;
    size_t j = 0;
    for (size_t k = 0; k < outs32.size(); ++k) {
      if (!is_float_out(out_kind(row, k))) continue;
      fo.push_back(outs32[k]);
      ws.push_back(to_tensor(w64.w[j++], outs32[k].dtype()));
    }
    TL l32 = select(b32.leaves, diff);
    std::vector<Array> got = grads_as_arrays(loom::autograd::grad(fo, l32, ws, std::nullopt, false, true), l32, where);
    for (size_t k = 0; k < diff.size(); ++k) {
      std::string d = compare_values(want[k].shape, got[k].v, want[k].v, kTolGradF32);
      if (!d.empty()) ADD_FAILURE() << where << "d/d(input " << diff[k] << ") float32 vs float64: " << d;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << where << "threw: " << e.what();
  }
}

// Second order: S = sum_i <V_i, dL/dx_i>; compares dS/dx (double backward
// through a create_graph gradient) with central differences of S.
void gradgradcheck(const Row& row, const Variant& var, const std::vector<Array>& vals, const std::string& ctx, Rng& rng) {
  std::string where = ctx + " gradgradcheck: ";
  std::vector<size_t> diff = differentiable_inputs(row);
  if (diff.empty()) return;
  try {
    std::vector<Array> V;
    for (size_t i : diff) V.push_back(random_weights(vals[i].shape, rng));
    Built b = build(row, var, vals, kFloat64, true);
    Weighted wo = weight_outputs(row, row.fn(b.operands), rng);
    TL leaves = select(b.leaves, diff);
    TL g = loom::autograd::grad(wo.outs, leaves, wo.weights, true, /*create_graph=*/true, true);
    // Gradients that do not depend on the inputs (linear paths) have no
    // history; they contribute zero to the second derivative.
    TL g_outs, g_weights;
    for (size_t k = 0; k < diff.size(); ++k) {
      if (k < g.size() && g[k].defined() && g[k].requires_grad()) {
        g_outs.push_back(g[k]);
        g_weights.push_back(to_tensor(V[k], kFloat64));
      }
    }
    TL second(diff.size());
    if (!g_outs.empty()) second = loom::autograd::grad(g_outs, leaves, g_weights, std::nullopt, false, true);
    std::vector<Array> analytic = grads_as_arrays(second, leaves, where);
    std::vector<Array> numeric = numeric_gradient(vals, diff, [&](const std::vector<Array>& v) {
      Built nb = build(row, var, v, kFloat64, true);
      TL o = row.fn(nb.operands);
      TL fo;
      for (size_t k = 0; k < o.size(); ++k)
        if (is_float_out(out_kind(row, k))) fo.push_back(o[k]);
      TL ws;
      for (size_t k = 0; k < fo.size(); ++k) ws.push_back(to_tensor(wo.w[k], kFloat64));
      TL g1 = loom::autograd::grad(fo, select(nb.leaves, diff), ws, std::nullopt, false, true);
      double s = 0;
      for (size_t k = 0; k < diff.size(); ++k)
        if (k < g1.size() && g1[k].defined()) s += dot(g1[k].to_vector<double>(), V[k].v);
      return s;
    });
    report_grad_diff(where, diff, analytic, numeric);
  } catch (const std::exception& e) {
    ADD_FAILURE() << where << "threw: " << e.what();
  }
}

}  // namespace

void run_row(const Row& row) {
  ASSERT_TRUE(row.fn) << row.name << ": no op function";
  ASSERT_TRUE(row.ref) << row.name << ": no reference";
  ASSERT_FALSE(row.cases.empty()) << row.name << ": no shape cases";
  for (size_t c = 0; c < row.cases.size(); ++c) {
    const std::vector<Shape>& spec = row.cases[c];
    ASSERT_EQ(spec.size(), row.inputs.size()) << row.name << " case " << c << ": one shape per input";
    std::vector<Variant> variants = make_variants(row, spec);
    for (const Variant& var : variants) {
      Rng rng(fnv1a(row.name + "/" + std::to_string(c) + "/" + var.name));
      std::vector<Array> vals;
      for (size_t i = 0; i < spec.size(); ++i) vals.push_back(generate(row.inputs[i], var.plans[i].leaf_shape, rng));
      std::string ctx = describe(row, c, spec, var);
      check_forward(row, var, vals, kFloat64, kTolF64, ctx);
      check_forward(row, var, vals, kFloat32, kTolF32, ctx);
      if (row.lowp) {
        check_forward(row, var, vals, kFloat16, kTolF16, ctx);
        check_forward(row, var, vals, kBFloat16, kTolBF16, ctx);
      }
      if (row.ints) {
        // Integer inputs: the float inputs take small integers (negative too).
        std::vector<Array> ivals;
        for (size_t i = 0; i < spec.size(); ++i)
          ivals.push_back(row.inputs[i].is_float() ? generate(Ints(-3, 4), var.plans[i].leaf_shape, rng) : vals[i]);
        check_forward(row, var, ivals, loom::kInt64, Tol{0, 0}, ctx);
        check_forward(row, var, ivals, loom::kInt32, Tol{0, 0}, ctx);
      }
      if (row.grad) {
        gradcheck(row, var, vals, ctx, rng);
        grad_float32_check(row, var, vals, ctx, rng);
      }
      if (row.grad && row.gradgrad && c == 0 && var.name == "contiguous") gradgradcheck(row, var, vals, ctx, rng);
    }
  }
}

}  // namespace loom_test
