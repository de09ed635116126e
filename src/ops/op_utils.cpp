#include "ops/op_utils.h"

#include <algorithm>

namespace loom::ops {

Shape broadcast_shape(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LOOM_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
               " cannot be broadcast (size ", da, " vs ", db, " at dim ", i, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor expand_raw(const Tensor& t, const Shape& sizes) {
  if (t.sizes() == sizes) return t;
  const TensorImpl* impl = t.unsafe_impl();
  size_t n = sizes.size(), k = impl->sizes.size();
  LOOM_ASSERT(n >= k, "expand_raw to fewer dims");
  Shape strides(n, 0);
  for (size_t i = 0; i < k; ++i) {
    size_t o = n - k + i;
    LOOM_ASSERT(impl->sizes[i] == sizes[o] || impl->sizes[i] == 1, "expand_raw: bad shape");
    strides[o] = impl->sizes[i] == sizes[o] ? impl->strides[i] : 0;
  }
  return make_alias(t, sizes, strides, impl->offset);
}

Tensor cast_raw(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  Tensor out = make_tensor(t.sizes(), dtype, t.device());
  launch(OpKind::Copy, {&t}, out);
  return out;
}

void check_same_device(const char* op, const std::vector<Tensor>& ts) {
  for (size_t k = 1; k < ts.size(); ++k)
    LOOM_CHECK(ts[k].device() == ts[0].device(), op, ": expected all tensors on the same device, got ",
               ts[0].device().str(), " and ", ts[k].device().str());
}

Tensor wrap_scalar(Scalar s, Device device) {
  Tensor t = make_tensor({}, s.dtype(), device);
  launch(OpKind::Fill, {}, t, {s.to_double()}, {s.to_long(), s.is_floating_point() ? 0 : 1});
  t.unsafe_impl()->wrapped_number = true;
  return t;
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.sizes() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  LOOM_ASSERT(lead >= 0, "sum_to: ", shape_str(grad.sizes()), " to ", shape_str(shape));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < lead; ++d) dims.push_back(d);
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] == 1 && grad.size(lead + static_cast<int64_t>(i)) != 1) dims.push_back(lead + static_cast<int64_t>(i));
  Tensor r = dims.empty() ? grad : loom::sum(grad, dims, true);
  if (lead > 0 || r.sizes() != shape) r = r.reshape(shape);
  return r;
}

std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t ndim, const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t d = 0; d < ndim; ++d) out.push_back(d);
    return out;
  }
  for (int64_t d : dims) {
    int64_t w = wrap_dim(d, ndim, op);
    LOOM_CHECK(std::find(out.begin(), out.end(), w) == out.end(), op, ": dim ", w,
               " appears more than once in the list of dims");
    out.push_back(w);
  }
  if (ndim == 0) out.clear();
  std::sort(out.begin(), out.end());
  return out;
}

void launch(OpKind op, std::initializer_list<const Tensor*> ins, std::initializer_list<const Tensor*> outs,
            std::initializer_list<double> f, std::initializer_list<int64_t> i, KernelParams params) {
  KernelCall c;
  c.op = op;
  for (const Tensor* t : ins) c.in.push_back(t->defined() ? t->unsafe_impl() : nullptr);
  for (const Tensor* t : outs) c.out.push_back(t->unsafe_impl());
  LOOM_ASSERT(f.size() <= 4 && i.size() <= 4, op_name(op), ": too many scalar parameters");
  int k = 0;
  for (double v : f) c.f[k++] = v;
  k = 0;
  for (int64_t v : i) c.i[k++] = v;
  c.params = std::move(params);
  run_kernel(c);
}

}  // namespace loom::ops
