// Factories: tensors made from sizes, ranges, random draws, C++ values or
// caller-owned memory.
//
// Values that need host-side computation (arange, linspace, tensor({...}))
// are built as float64 or int64 on the CPU and converted with the Copy kernel,
// so this file has no per-dtype code of its own. Random factories reserve
// Philox counters from the generator they are given, or the global one
// (Note [Counter-based random numbers] in core/generator.h), and hand them to
// the backend's kernel.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "core/generator.h"
#include "core/philox.h"
#include "ops/op_utils.h"

namespace loom {

namespace {

void check_sizes(const char* op, const std::vector<int64_t>& sizes) {
  for (int64_t s : sizes)
    LOOM_CHECK(s >= 0, op, ": negative dimension ", s, " in size ", shape_str(sizes));
}

// The last step of every factory: requires_grad_ checks the dtype and gives
// "only floating point tensors can require gradients" for integer ones.
Tensor finish(Tensor t, const TensorOptions& o) {
  if (o.requires_grad()) t.requires_grad_(true);
  return t;
}

// Writes `v` into every element of t (any strides).
void fill_raw(const Tensor& t, Scalar v) {
  if (t.numel() == 0) return;
  ops::launch(OpKind::Fill, {}, t, {v.to_double()}, {v.to_long(), v.is_floating_point() ? 0 : 1});
}

// A host-built buffer moved to the requested dtype and device.
Tensor convert_host(const Tensor& host, DType dtype, Device device) {
  Tensor t = ops::cast_raw(host, dtype);
  if (!device.is_cpu()) t = t.to(device);
  return t;
}

Tensor host_float64(const std::vector<int64_t>& sizes, const std::vector<double>& values) {
  Tensor t = make_tensor(sizes, kFloat64, Device::cpu());
  if (!values.empty()) std::memcpy(t.raw_data_ptr(), values.data(), values.size() * sizeof(double));
  return t;
}

Tensor host_int64(const std::vector<int64_t>& sizes, const std::vector<int64_t>& values) {
  Tensor t = make_tensor(sizes, kInt64, Device::cpu());
  if (!values.empty()) std::memcpy(t.raw_data_ptr(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

void check_floating(const char* op, DType dtype) {
  LOOM_CHECK(is_floating_point(dtype), op, ": expected a floating point dtype, got ", dtype_name(dtype));
}

// Runs a random kernel over contiguous `out`, reserving one Philox counter per
// element so the values do not depend on how the kernel splits the work.
void launch_random(OpKind op, const Tensor& out, std::initializer_list<const Tensor*> ins,
                   std::initializer_list<double> f, const std::optional<Generator>& generator, int64_t low = 0,
                   int64_t high = 0) {
  if (out.numel() == 0) return;
  auto [seed, offset] = philox_reserve(static_cast<uint64_t>(out.numel()), generator);
  ops::launch(op, ins, out, f,
              {static_cast<int64_t>(seed), static_cast<int64_t>(offset), low, high});
}

// *_like: options default to t's dtype and device.
TensorOptions like_options(const char* op, const Tensor& t, const std::optional<TensorOptions>& o) {
  LOOM_CHECK(t.defined(), op, ": called with an undefined tensor");
  if (!o) return t.options();
  return o->dtype(o->has_dtype() ? o->dtype() : t.dtype());
}

}  // namespace

// ---- filled ----

Tensor empty(IntArrayRef sizes, const TensorOptions& o) {
  check_sizes("empty", sizes.vec());
  return finish(make_tensor(sizes.vec(), o.dtype(), o.device()), o);
}

Tensor full(IntArrayRef sizes, Scalar value, const TensorOptions& o) {
  check_sizes("full", sizes.vec());
  // As PyTorch: the dtype follows the value when none is given.
  DType dt = o.has_dtype() ? o.dtype()
             : value.is_bool()    ? kBool
             : value.is_integral() ? kInt64
                                   : default_dtype();
  Tensor t = make_tensor(sizes.vec(), dt, o.device());
  fill_raw(t, value);
  return finish(t, o);
}

// zeros/ones/scalar_tensor pin the dtype (default float32) so that full does
// not infer int64 from the integer fill value.
Tensor zeros(IntArrayRef sizes, const TensorOptions& o) {
  check_sizes("zeros", sizes.vec());
  return full(sizes, 0, o.dtype(o.dtype()));
}

Tensor ones(IntArrayRef sizes, const TensorOptions& o) {
  check_sizes("ones", sizes.vec());
  return full(sizes, 1, o.dtype(o.dtype()));
}

Tensor scalar_tensor(Scalar value, const TensorOptions& o) {
  // torch.scalar_tensor gives the default dtype unless told otherwise.
  return full({}, value, o.dtype(o.dtype()));
}

// ---- ranges ----

Tensor arange(Scalar end, const TensorOptions& o) { return arange(0, end, 1, o); }

Tensor arange(Scalar start, Scalar end, Scalar step, const TensorOptions& o) {
  const double s = start.to_double(), e = end.to_double(), st = step.to_double();
  LOOM_CHECK(std::isfinite(s) && std::isfinite(e), "arange: unsupported range: ", s, " -> ", e);
  LOOM_CHECK(st != 0, "arange: step must be nonzero");
  LOOM_CHECK((st > 0 && e >= s) || (st < 0 && e <= s),
             "arange: upper bound and lower bound inconsistent with step sign (start=", start, ", end=", end,
             ", step=", step, ")");
  const bool all_int = !start.is_floating_point() && !end.is_floating_point() && !step.is_floating_point();
  const DType dt = o.has_dtype() ? o.dtype() : all_int ? kInt64 : default_dtype();

  // size = ceil((end - start) / step), computed exactly for integer bounds.
  int64_t n;
  if (all_int) {
    const int64_t a = start.to_long(), b = end.to_long(), c = step.to_long();
    const int64_t span = b - a;
    n = c > 0 ? (span + c - 1) / c : (span + c + 1) / c;
  } else {
    const double nd = std::ceil((e - s) / st);
    LOOM_CHECK(nd < static_cast<double>(std::numeric_limits<int64_t>::max() / 16),
               "arange: too many elements for range ", s, " -> ", e, " with step ", st);
    n = static_cast<int64_t>(nd);
  }
  backend_for(o.device());
  Tensor host;
  if (all_int && (is_integral(dt, true) || n == 0)) {
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) v[k] = start.to_long() + k * step.to_long();
    host = host_int64({n}, v);
  } else {
    // start + k * step in double, as PyTorch's CPU kernel accumulates.
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) v[k] = s + static_cast<double>(k) * st;
    host = host_float64({n}, v);
  }
  return finish(convert_host(host, dt, o.device()), o);
}

Tensor linspace(double start, double end, int64_t steps, const TensorOptions& o) {
  LOOM_CHECK(steps >= 0, "linspace: number of steps must be non-negative, got ", steps);
  backend_for(o.device());
  std::vector<double> v(static_cast<size_t>(steps));
  if (steps == 1) v[0] = start;
  if (steps > 1) {
    // Fill from both ends (as PyTorch) so the last value is exactly `end`.
    const double step = (end - start) / static_cast<double>(steps - 1);
    const int64_t half = steps / 2;
    for (int64_t k = 0; k < steps; ++k)
      v[k] = k < half ? std::fma(step, static_cast<double>(k), start)
                      : std::fma(-step, static_cast<double>(steps - 1 - k), end);
  }
  return finish(convert_host(host_float64({steps}, v), o.dtype(), o.device()), o);
}

Tensor eye(int64_t n, std::optional<int64_t> m, const TensorOptions& o) {
  const int64_t cols = m.value_or(n);
  LOOM_CHECK(n >= 0 && cols >= 0, "eye: n and m must be non-negative, got n=", n, " m=", cols);
  Tensor t = make_tensor({n, cols}, o.dtype(), o.device());
  fill_raw(t, 0);
  // The diagonal of a row-major (n, cols) matrix is every (cols + 1)-th element.
  Tensor diag = make_alias(t, {std::min(n, cols)}, {cols + 1}, 0);
  fill_raw(diag, 1);
  return finish(t, o);
}

// ---- random ----

Tensor rand(IntArrayRef sizes, const TensorOptions& o, std::optional<Generator> generator) {
  check_sizes("rand", sizes.vec());
  check_floating("rand", o.dtype());
  Tensor t = make_tensor(sizes.vec(), o.dtype(), o.device());
  launch_random(OpKind::Uniform, t, {}, {0.0, 1.0}, generator);
  return finish(t, o);
}

Tensor randn(IntArrayRef sizes, const TensorOptions& o, std::optional<Generator> generator) {
  check_sizes("randn", sizes.vec());
  check_floating("randn", o.dtype());
  Tensor t = make_tensor(sizes.vec(), o.dtype(), o.device());
  launch_random(OpKind::Normal, t, {}, {0.0, 1.0}, generator);
  return finish(t, o);
}

Tensor randint(int64_t low, int64_t high, IntArrayRef sizes, const TensorOptions& o,
               std::optional<Generator> generator) {
  check_sizes("randint", sizes.vec());
  LOOM_CHECK(low < high, "randint: expects low < high, got low=", low, " high=", high);
  const DType dt = o.has_dtype() ? o.dtype() : kInt64;
  LOOM_CHECK(dt != kBool, "randint: dtype bool is not supported");
  Tensor t = make_tensor(sizes.vec(), dt, o.device());
  launch_random(OpKind::RandInt, t, {}, {}, generator, low, high);
  return finish(t, o);
}

Tensor randint(int64_t high, IntArrayRef sizes, const TensorOptions& o, std::optional<Generator> generator) {
  return randint(0, high, sizes, o, std::move(generator));
}

Tensor randperm(int64_t n, const TensorOptions& o, std::optional<Generator> generator) {
  LOOM_CHECK(n >= 0, "randperm: n must be non-negative, got ", n);
  const DType dt = o.has_dtype() ? o.dtype() : kInt64;
  LOOM_CHECK(dt != kBool, "randperm: dtype bool is not supported");
  LOOM_CHECK(is_floating_point(dt) || dt == kInt64 || (dt == kInt32 && n - 1 <= std::numeric_limits<int32_t>::max()) ||
                 (dt == kUInt8 && n <= 256),
             "randperm: n=", n, " is too large for dtype ", dtype_name(dt));
  backend_for(o.device());
  // Fisher-Yates on one host thread; step k swaps in a position drawn from
  // Philox counter (offset + k), so the permutation depends only on the seed.
  // (64 random bits mod k+1: the modulo bias is at most (k+1) / 2^64.)
  const auto [seed, offset] = philox_reserve(static_cast<uint64_t>(n), generator);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) perm[k] = k;
  for (int64_t k = n - 1; k > 0; --k) {
    const uint64_t r = philox::bits64(seed, offset + static_cast<uint64_t>(k));
    std::swap(perm[k], perm[r % static_cast<uint64_t>(k + 1)]);
  }
  return finish(convert_host(host_int64({n}, perm), dt, o.device()), o);
}

Tensor bernoulli(const Tensor& p, std::optional<Generator> generator) {
  LOOM_CHECK(p.defined(), "bernoulli: called with an undefined tensor");
  LOOM_CHECK(is_floating_point(p.dtype()), "bernoulli: expected a floating point tensor of probabilities, got ",
             dtype_name(p.dtype()));
  Tensor pd = p.detach();
  if (pd.numel() > 0) {
    NoGradGuard ng;
    const double lo = loom::amin(pd).item<double>(), hi = loom::amax(pd).item<double>();
    LOOM_CHECK(lo >= 0 && hi <= 1, "bernoulli: expected all probabilities in [0, 1], got values in [", lo, ", ",
               hi, "] for a tensor of shape ", shape_str(p.sizes()));
  }
  Tensor out = make_tensor(p.sizes(), p.dtype(), p.device());
  launch_random(OpKind::Bernoulli, out, {&pd}, {}, generator);
  return out;
}

Tensor bernoulli(const Tensor& like, double p, std::optional<Generator> generator) {
  LOOM_CHECK(like.defined(), "bernoulli: called with an undefined tensor");
  LOOM_CHECK(p >= 0 && p <= 1, "bernoulli: expected p in [0, 1], got ", p);
  // One probability broadcast (stride 0) over the output's shape.
  const DType pdt = is_floating_point(like.dtype()) ? like.dtype() : default_dtype();
  Tensor prob = make_tensor({}, pdt, like.device());
  fill_raw(prob, p);
  prob = ops::expand_raw(prob, like.sizes());
  Tensor out = make_tensor(like.sizes(), pdt, like.device());
  launch_random(OpKind::Bernoulli, out, {&prob}, {}, generator);
  return ops::cast_raw(out, like.dtype());
}

// ---- *_like ----

Tensor empty_like(const Tensor& t, std::optional<TensorOptions> o) { return empty(t.sizes(), like_options("empty_like", t, o)); }
Tensor zeros_like(const Tensor& t, std::optional<TensorOptions> o) { return zeros(t.sizes(), like_options("zeros_like", t, o)); }
Tensor ones_like(const Tensor& t, std::optional<TensorOptions> o) { return ones(t.sizes(), like_options("ones_like", t, o)); }
Tensor full_like(const Tensor& t, Scalar v, std::optional<TensorOptions> o) {
  return full(t.sizes(), v, like_options("full_like", t, o));
}
Tensor rand_like(const Tensor& t, std::optional<TensorOptions> o, std::optional<Generator> generator) {
  return rand(t.sizes(), like_options("rand_like", t, o), std::move(generator));
}
Tensor randn_like(const Tensor& t, std::optional<TensorOptions> o, std::optional<Generator> generator) {
  return randn(t.sizes(), like_options("randn_like", t, o), std::move(generator));
}
Tensor randint_like(const Tensor& t, int64_t low, int64_t high, std::optional<TensorOptions> o,
                    std::optional<Generator> generator) {
  return randint(low, high, t.sizes(), like_options("randint_like", t, o), std::move(generator));
}

// ---- from C++ values ----

void NestedList::flatten(std::vector<int64_t>& sizes, std::vector<double>& values, std::vector<int64_t>& ivalues,
                         bool& any_float, bool& all_bool) const {
  // The shape is read along the first element at each depth; walk() then
  // checks that every other list agrees with it.
  sizes.clear();
  values.clear();
  ivalues.clear();
  any_float = false;
  all_bool = true;
  const NestedList* node = this;
  while (node->is_list_) {
    sizes.push_back(static_cast<int64_t>(node->children_.size()));
    if (node->children_.empty()) break;
    node = &node->children_[0];
  }
  walk(0, sizes, values, ivalues, any_float, all_bool);
}

void NestedList::walk(size_t depth, std::vector<int64_t>& sizes, std::vector<double>& values,
                      std::vector<int64_t>& ivalues, bool& any_float, bool& all_bool) const {
  if (!is_list_) {
    LOOM_CHECK(depth == sizes.size(), "tensor: ragged nested list: expected a list of ", sizes[depth],
               " elements at depth ", depth, " but found a number (shape so far ", shape_str(sizes), ")");
    values.push_back(value_);
    ivalues.push_back(ivalue_ ? *ivalue_ : static_cast<int64_t>(value_));
    any_float = any_float || is_float_;
    all_bool = all_bool && is_bool_;
    return;
  }
  LOOM_CHECK(depth < sizes.size(), "tensor: ragged nested list: expected a number at depth ", depth,
             " but found a list of ", children_.size(), " elements (shape so far ", shape_str(sizes), ")");
  LOOM_CHECK(static_cast<int64_t>(children_.size()) == sizes[depth], "tensor: ragged nested list: expected ",
             sizes[depth], " elements at depth ", depth, " but found ", children_.size(), " (shape so far ",
             shape_str(sizes), ")");
  for (const NestedList& c : children_) c.walk(depth + 1, sizes, values, ivalues, any_float, all_bool);
}

Tensor tensor(const NestedList& values, const TensorOptions& o) {
  std::vector<int64_t> sizes, ivalues;
  std::vector<double> fvalues;
  bool any_float = false, all_bool = true;
  values.flatten(sizes, fvalues, ivalues, any_float, all_bool);
  // Float literals give the default float dtype, integers int64, bools bool;
  // an empty list gives the default float dtype (as torch.tensor([])).
  const DType inferred = fvalues.empty() ? default_dtype() : any_float ? default_dtype() : all_bool ? kBool : kInt64;
  const DType dt = o.has_dtype() ? o.dtype() : inferred;
  backend_for(o.device());
  // Integers go through int64 so that values beyond 2^53 stay exact.
  Tensor host = any_float ? host_float64(sizes, fvalues) : host_int64(sizes, ivalues);
  return finish(convert_host(host, dt, o.device()), o);
}

template <typename T>
Tensor tensor(const std::vector<T>& values, const TensorOptions& o) {
  backend_for(o.device());
  const auto n = static_cast<int64_t>(values.size());
  Tensor host = make_tensor({n}, Tensor::dtype_of<T>(), Device::cpu());
  T* p = host.data_ptr<T>();
  // An element loop, not memcpy: std::vector<bool> packs its bits.
  for (int64_t k = 0; k < n; ++k) p[k] = values[static_cast<size_t>(k)];
  return finish(convert_host(host, o.has_dtype() ? o.dtype() : Tensor::dtype_of<T>(), o.device()), o);
}

template Tensor tensor<float>(const std::vector<float>&, const TensorOptions&);
template Tensor tensor<double>(const std::vector<double>&, const TensorOptions&);
template Tensor tensor<Half>(const std::vector<Half>&, const TensorOptions&);
template Tensor tensor<BFloat16>(const std::vector<BFloat16>&, const TensorOptions&);
template Tensor tensor<int32_t>(const std::vector<int32_t>&, const TensorOptions&);
template Tensor tensor<int64_t>(const std::vector<int64_t>&, const TensorOptions&);
template Tensor tensor<uint8_t>(const std::vector<uint8_t>&, const TensorOptions&);
template Tensor tensor<int8_t>(const std::vector<int8_t>&, const TensorOptions&);
template Tensor tensor<bool>(const std::vector<bool>&, const TensorOptions&);

// ---- from caller-owned memory ----

Tensor from_blob(void* data, IntArrayRef sizes, IntArrayRef strides, const TensorOptions& o,
                 std::function<void(void*)> deleter) {
  check_sizes("from_blob", sizes.vec());
  LOOM_CHECK(sizes.size() == strides.size(), "from_blob: got ", sizes.size(), " sizes ", shape_str(sizes.vec()),
             " but ", strides.size(), " strides ", shape_str(strides.vec()));
  backend_for(o.device());
  const int64_t n = shape_numel(sizes.vec());
  LOOM_CHECK(data != nullptr || n == 0, "from_blob: data is null for a tensor of shape ", shape_str(sizes.vec()));
  // The storage spans up to the last element the strides can reach.
  int64_t extent = n == 0 ? 0 : 1;
  for (size_t d = 0; d < sizes.size(); ++d) {
    LOOM_CHECK(strides[d] >= 0, "from_blob: negative stride ", strides[d], " at dim ", d, " (strides ",
               shape_str(strides.vec()), ")");
    if (n > 0) extent += (sizes[d] - 1) * strides[d];
  }
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->nbytes = static_cast<size_t>(extent) * element_size(o.dtype());
  storage->device = o.device();
  storage->deleter = std::move(deleter);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->sizes = sizes.vec();
  impl->strides = strides.vec();
  impl->dtype = o.dtype();
  return finish(Tensor(std::move(impl)), o);
}

Tensor from_blob(void* data, IntArrayRef sizes, const TensorOptions& o, std::function<void(void*)> deleter) {
  return from_blob(data, sizes, contiguous_strides(sizes.vec()), o, std::move(deleter));
}

// ---- random state ----

void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }
uint64_t initial_seed() { return default_generator().initial_seed(); }
RngState get_rng_state() { return default_generator().get_state(); }
void set_rng_state(const RngState& s) { default_generator().set_state(s); }

}  // namespace loom
