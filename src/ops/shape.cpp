// View ops: new geometry over the same storage, plus their backward.
//
// Note [View backward through regions]
// Views that pick a region of their input (narrow, select, slice, index,
// as_strided) share one backward: the gradient is scattered into zeros of the
// input's shape at the same region, computed on the *contiguous* layout of the
// input's shape (region_scatter). Its own backward is a region view again, so
// higher-order gradients work. Views that only rearrange (view, permute,
// transpose, (un)squeeze, expand) invert themselves directly. unbind, split
// and chunk give all their pieces under one node (Note [Multi-output views]).
#include <algorithm>
#include <numeric>

#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

using Geometry = ops::Region;

Geometry geometry_of(const Tensor& t) {
  const TensorImpl* i = t.unsafe_impl();
  return {i->sizes, i->strides, i->offset};
}
Geometry contiguous_geometry(const Shape& sizes) { return {sizes, contiguous_strides(sizes), 0}; }

// Makes `out` (an alias of x) a view of x for autograd, recording `fn`.
Tensor finish_view(const Tensor& x, const Geometry& g, const char* name, autograd::BackwardFn fn) {
  Tensor out = make_alias(x, g.sizes, g.strides, g.offset);
  autograd::set_view_base(out, x);
  if (auto node = autograd::make_node(name, {x}, std::move(fn))) autograd::set_history(out, node);
  return out;
}

}  // namespace

namespace ops {
// base with the region `rel` (of base's contiguous layout) replaced by src.
Tensor region_scatter(const Tensor& base, const Tensor& src, const Geometry& rel) {
  Tensor out = make_tensor(base.sizes(), base.dtype(), base.device());
  ops::launch(OpKind::Copy, {&base}, out);
  Tensor region = make_alias(out, rel.sizes, rel.strides, rel.offset);
  Tensor s = ops::expand_raw(ops::cast_raw(src, base.dtype()), rel.sizes);
  ops::launch(OpKind::Copy, {&s}, region);
  auto node = autograd::make_node("RegionScatterBackward", {base, src}, [rel](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = region_scatter(g[0], zeros(rel.sizes, g[0].options()), rel);
    if (ctx.needs_input_grad(1)) r[1] = region_view(g[0].contiguous(), rel);
    return r;
  });
  autograd::set_history(out, node);
  return out;
}

Tensor region_view(const Tensor& x, const Geometry& rel) {
  LOOM_ASSERT(x.is_contiguous());
  Geometry g = rel;
  g.offset += x.storage_offset();
  Shape in_sizes = x.sizes();
  return finish_view(x, g, "RegionViewBackward", [rel, in_sizes](FunctionNode&, const TensorList& gr) {
    return TensorList{region_scatter(zeros(in_sizes, gr[0].options()), gr[0], rel)};
  });
}
}  // namespace ops

namespace {
using ops::region_scatter;
using ops::region_view;

// A view op that selects a region: `pick` maps a geometry of x's shape to the
// region's geometry; it is applied to x's real geometry for the forward and to
// the contiguous one for the backward.
template <typename Pick>
Tensor region_op(const Tensor& x, const char* name, Pick pick) {
  Geometry rel = pick(contiguous_geometry(x.sizes()));
  Shape in_sizes = x.sizes();
  return finish_view(x, pick(geometry_of(x)), name, [rel, in_sizes](FunctionNode&, const TensorList& g) {
    return TensorList{region_scatter(zeros(in_sizes, g[0].options()), g[0], rel)};
  });
}

// Strides for viewing (sizes, strides) as `shape` without a copy, or nothing
// if impossible (PyTorch's computeStride).
std::optional<Shape> view_strides(const Shape& sizes, const Shape& strides, const Shape& shape) {
  Shape out(shape.size());
  if (shape_numel(sizes) == 0 || sizes.empty()) return contiguous_strides(shape);
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    tensor_numel *= sizes[d];
    if (d == 0 || (sizes[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

Shape infer_size(IntArrayRef shape, int64_t numel, const char* op) {
  Shape out = shape.vec();
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      LOOM_CHECK(infer < 0, op, ": only one dimension can be inferred (-1) in shape ", shape_str(out));
      infer = static_cast<int64_t>(i);
    } else {
      LOOM_CHECK(out[i] >= 0, op, ": invalid shape dimension ", out[i], " in ", shape_str(out));
      known *= out[i];
    }
  }
  if (infer >= 0) {
    LOOM_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(out),
               " is invalid for input of size ", numel);
    out[infer] = numel / known;
  }
  LOOM_CHECK(shape_numel(out) == numel, op, ": shape ", shape_str(out), " is invalid for input of size ", numel);
  return out;
}

}  // namespace

// ---- rearranging views ----

Tensor Tensor::view(IntArrayRef shape) const {
  Shape sizes_out = infer_size(shape, numel(), "view");
  auto st = view_strides(sizes(), strides(), sizes_out);
  LOOM_CHECK(st.has_value(), "view: view size ", shape_str(sizes_out),
             " is not compatible with input tensor's size ", shape_str(sizes()), " and stride ",
             shape_str(strides()),
             " (at least one dimension spans across two contiguous subspaces). Use .reshape(...) instead.");
  Shape in_sizes = sizes();
  return finish_view(*this, {sizes_out, *st, storage_offset()}, "ViewBackward",
                     [in_sizes](FunctionNode&, const TensorList& g) { return TensorList{g[0].reshape(in_sizes)}; });
}

Tensor Tensor::reshape(IntArrayRef shape) const {
  Shape sizes_out = infer_size(shape, numel(), "reshape");
  if (view_strides(sizes(), strides(), sizes_out)) return view(sizes_out);
  return contiguous().view(sizes_out);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  int64_t s = wrap_dim(start_dim, dim(), "flatten"), e = wrap_dim(end_dim, dim(), "flatten");
  LOOM_CHECK(s <= e, "flatten: start_dim ", start_dim, " must not come after end_dim ", end_dim);
  Shape out;
  for (int64_t d = 0; d < s; ++d) out.push_back(size(d));
  int64_t n = 1;
  for (int64_t d = s; d <= e; ++d) n *= size(d);
  out.push_back(n);
  for (int64_t d = e + 1; d < dim(); ++d) out.push_back(size(d));
  return reshape(out);
}

Tensor Tensor::unflatten(int64_t d, IntArrayRef shape) const {
  d = wrap_dim(d, dim(), "unflatten");
  Shape inner = infer_size(shape, size(d), "unflatten");
  Shape out(sizes().begin(), sizes().begin() + d);
  out.insert(out.end(), inner.begin(), inner.end());
  out.insert(out.end(), sizes().begin() + d + 1, sizes().end());
  return view(out);
}

Tensor Tensor::permute(IntArrayRef dims) const {
  LOOM_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: number of dims in ", shape_str(dims.vec()),
             " does not match the tensor's ", dim(), " dims (shape ", shape_str(sizes()), ")");
  Geometry g{Shape(dim()), Shape(dim()), storage_offset()};
  std::vector<int64_t> inverse(dim(), -1);
  for (int64_t i = 0; i < dim(); ++i) {
    int64_t d = wrap_dim(dims[i], dim(), "permute");
    LOOM_CHECK(inverse[d] < 0, "permute: dim ", d, " repeats in ", shape_str(dims.vec()));
    inverse[d] = i;
    g.sizes[i] = size(d);
    g.strides[i] = stride(d);
  }
  return finish_view(*this, g, "PermuteBackward",
                     [inverse](FunctionNode&, const TensorList& gr) { return TensorList{gr[0].permute(inverse)}; });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  if (dim() == 0) return finish_view(*this, geometry_of(*this), "TransposeBackward",
                                     [](FunctionNode&, const TensorList& g) { return TensorList{g[0]}; });
  d0 = wrap_dim(d0, dim(), "transpose");
  d1 = wrap_dim(d1, dim(), "transpose");
  std::vector<int64_t> p(dim());
  std::iota(p.begin(), p.end(), 0);
  std::swap(p[d0], p[d1]);
  return permute(p);
}

Tensor Tensor::t() const {
  LOOM_CHECK(dim() <= 2, "t: expects a tensor with <= 2 dims, but got shape ", shape_str(sizes()),
             " (use transpose or mT for batches)");
  return dim() < 2 ? transpose(0, 0) : transpose(0, 1);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Geometry g = geometry_of(*this);
  int64_t st = d < dim() ? size(d) * stride(d) : 1;
  g.sizes.insert(g.sizes.begin() + d, 1);
  g.strides.insert(g.strides.begin() + d, st);
  return finish_view(*this, g, "UnsqueezeBackward",
                     [d](FunctionNode&, const TensorList& gr) { return TensorList{gr[0].squeeze(d)}; });
}

Tensor Tensor::squeeze() const {
  Geometry g{{}, {}, storage_offset()};
  for (int64_t d = 0; d < dim(); ++d)
    if (size(d) != 1) {
      g.sizes.push_back(size(d));
      g.strides.push_back(stride(d));
    }
  Shape in_sizes = sizes();
  return finish_view(*this, g, "SqueezeBackward",
                     [in_sizes](FunctionNode&, const TensorList& gr) { return TensorList{gr[0].reshape(in_sizes)}; });
}

Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) return squeeze();
  d = wrap_dim(d, dim(), "squeeze");
  Geometry g = geometry_of(*this);
  if (size(d) == 1) {
    g.sizes.erase(g.sizes.begin() + d);
    g.strides.erase(g.strides.begin() + d);
  }
  Shape in_sizes = sizes();
  return finish_view(*this, g, "SqueezeBackward",
                     [in_sizes](FunctionNode&, const TensorList& gr) { return TensorList{gr[0].reshape(in_sizes)}; });
}

Tensor Tensor::expand(IntArrayRef shape) const {
  const int64_t n = static_cast<int64_t>(shape.size());
  LOOM_CHECK(n >= dim(), "expand: the number of sizes provided (", n,
             ") must be greater or equal to the number of dimensions in the tensor (", dim(), ")");
  Geometry g{Shape(n), Shape(n, 0), storage_offset()};
  for (int64_t i = n - 1; i >= 0; --i) {
    int64_t src = i - (n - dim());
    int64_t want = shape[i];
    if (src < 0) {
      LOOM_CHECK(want >= 0, "expand: the expanded size ", want, " is not allowed in a leading, non-existing dimension ", i);
      g.sizes[i] = want;
      continue;
    }
    int64_t have = size(src);
    if (want == -1) want = have;
    LOOM_CHECK(have == want || have == 1, "expand: the expanded size of the tensor (", want,
               ") must match the existing size (", have, ") at non-singleton dimension ", i, ". Target sizes: ",
               shape_str(shape.vec()), ". Tensor sizes: ", shape_str(sizes()));
    g.sizes[i] = want;
    g.strides[i] = have == want ? stride(src) : 0;
  }
  Shape in_sizes = sizes();
  return finish_view(*this, g, "ExpandBackward",
                     [in_sizes](FunctionNode&, const TensorList& gr) { return TensorList{ops::sum_to(gr[0], in_sizes)}; });
}

// ---- region views ----

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  LOOM_CHECK(dim() > 0, "narrow: cannot narrow a 0-dim tensor");
  d = wrap_dim(d, dim(), "narrow");
  const int64_t n = size(d);
  if (start < 0) start += n;
  LOOM_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: start (", start, ") + length (", length,
             ") exceeds dimension size (", n, ") of dim ", d, " in shape ", shape_str(sizes()));
  return region_op(*this, "NarrowBackward", [=](Geometry g) {
    g.offset += start * g.strides[d];
    g.sizes[d] = length;
    return g;
  });
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  LOOM_CHECK(dim() > 0, "select: cannot select on a 0-dim tensor");
  d = wrap_dim(d, dim(), "select");
  const int64_t n = size(d);
  LOOM_CHECK(index >= -n && index < n, "select: index ", index, " is out of range for dim ", d, " with size ", n,
             " (shape ", shape_str(sizes()), ")");
  if (index < 0) index += n;
  return region_op(*this, "SelectBackward", [=](Geometry g) {
    g.offset += index * g.strides[d];
    g.sizes.erase(g.sizes.begin() + d);
    g.strides.erase(g.strides.begin() + d);
    return g;
  });
}

Tensor Tensor::slice(int64_t d, std::optional<int64_t> start, std::optional<int64_t> stop, int64_t step) const {
  LOOM_CHECK(dim() > 0, "slice: cannot slice a 0-dim tensor");
  d = wrap_dim(d, dim(), "slice");
  LOOM_CHECK(step > 0, "slice: step must be positive, got ", step);
  const int64_t n = size(d);
  auto clampi = [n](int64_t v) {
    if (v < 0) v += n;
    return std::clamp<int64_t>(v, 0, n);
  };
  int64_t s = start ? clampi(*start) : 0;
  int64_t e = stop ? clampi(*stop) : n;
  int64_t len = e > s ? (e - s + step - 1) / step : 0;
  return region_op(*this, "SliceBackward", [=](Geometry g) {
    g.offset += s * g.strides[d];
    g.sizes[d] = len;
    g.strides[d] *= step;
    return g;
  });
}

Tensor Tensor::as_strided(IntArrayRef sz, IntArrayRef st, std::optional<int64_t> offset) const {
  LOOM_CHECK(sz.size() == st.size(), "as_strided: got ", sz.size(), " sizes but ", st.size(), " strides");
  const int64_t off = offset.value_or(storage_offset());
  int64_t hi = off;
  for (size_t i = 0; i < sz.size(); ++i) {
    LOOM_CHECK(sz[i] >= 0 && st[i] >= 0, "as_strided: negative size or stride in ", shape_str(sz.vec()), " / ",
               shape_str(st.vec()));
    if (sz[i] > 0) hi += (sz[i] - 1) * st[i];
  }
  const int64_t storage_elems = static_cast<int64_t>(unsafe_impl()->storage->nbytes / element_size());
  LOOM_CHECK(off >= 0 && (shape_numel(sz.vec()) == 0 || hi < storage_elems), "as_strided: size ",
             shape_str(sz.vec()), ", stride ", shape_str(st.vec()), " and offset ", off,
             " reach outside the storage of ", storage_elems, " elements");
  LOOM_CHECK(!requires_grad() || !is_grad_enabled() || is_contiguous(),
             "as_strided: differentiating through as_strided needs a contiguous input (got strides ",
             shape_str(strides()), "); call contiguous() first");
  const int64_t base = storage_offset();
  Shape sizes_v = sz.vec(), strides_v = st.vec();
  return region_op(*this, "AsStridedBackward", [=](Geometry g) {
    return Geometry{sizes_v, strides_v, g.offset + off - base};
  });
}

// ---- copies that look like views ----

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor out = make_tensor(sizes(), dtype(), device());
  ops::launch(OpKind::Copy, {this}, out);
  auto node = autograd::make_node("CloneBackward", {*this},
                                  [](FunctionNode&, const TensorList& g) { return TensorList{g[0]}; });
  autograd::set_history(out, node);
  return out;
}

Tensor Tensor::to(DType t, bool copy) const {
  if (t == dtype() && !copy) return *this;
  Tensor out = make_tensor(sizes(), t, device());
  ops::launch(OpKind::Copy, {this}, out);
  if (loom::is_floating_point(t)) {
    DType in_dtype = dtype();
    auto node = autograd::make_node("ToCopyBackward", {*this}, [in_dtype](FunctionNode&, const TensorList& g) {
      return TensorList{g[0].to(in_dtype)};
    });
    autograd::set_history(out, node);
  }
  return out;
}

#ifdef LOOM_WITH_CUDA
namespace cuda_detail {
// Note [Copies between devices] (src/backend/cuda/cuda_api.cpp).
Tensor copy_across_devices(const Tensor& src, Device dst, bool non_blocking);
}  // namespace cuda_detail
#endif

Tensor Tensor::to(Device d, bool copy) const { return to(d, ToOptions{.copy = copy}); }

Tensor Tensor::to(Device d, ToOptions o) const {
  if (d == device()) return o.copy ? clone() : *this;
  backend_for(d);  // a CUDA request in a CPU-only build says so here
#ifdef LOOM_WITH_CUDA
  Tensor out = cuda_detail::copy_across_devices(*this, d, o.non_blocking);
  if (loom::is_floating_point(dtype())) {
    const Device from = device();
    auto node = autograd::make_node("ToDeviceBackward", {*this}, [from](FunctionNode&, const TensorList& g) {
      return TensorList{g[0].to(from)};
    });
    autograd::set_history(out, node);
  }
  return out;
#else
  LOOM_ERROR("to: copying between ", device().str(), " and ", d.str(), " is not available in this build");
#endif
}

Tensor Tensor::to(const TensorOptions& o, bool copy) const {
  Tensor r = to(o.device(), copy);
  return o.has_dtype() ? r.to(o.dtype(), false) : r;
}

Tensor Tensor::detach() const {
  const TensorImpl* i = unsafe_impl();
  return make_alias(*this, i->sizes, i->strides, i->offset);
}

Tensor& Tensor::detach_() {
  if (auto& m = impl_->autograd) {
    m->grad_fn.reset();
    m->requires_grad = false;
    m->view_base.reset();
  }
  return *this;
}

// ---- multi-output views: unbind, split, chunk ----

// Note [Multi-output views]
// unbind / split / chunk return all the pieces of x along one dim, each an
// alias of x's storage, under ONE node whose backward is a single stack (for
// unbind) or cat (split, chunk) of the pieces' gradients; a piece nobody used
// gets zeros from the engine (Node::apply). Taking L pieces one view at a time
// would instead record L nodes, each scattering its gradient into a fresh
// zero tensor of the whole input: O(L^2) work in backward. This is what the
// recurrent layers' loops rely on (Note [Recurrent loops without quadratic
// backward] in src/nn/rnn.cpp). The backward is loom ops, so it
// differentiates again.
//
// Each piece is also a view of x for in-place purposes (set_view_base): an
// in-place op on one piece rebases x's history through CopySlices and gives
// that piece a region view of the new base (Note [In-place ops and autograd]
// in src/ops/inplace.cpp), while the other pieces keep this node, whose edge
// still points at x's history from before the write; their regions were not
// written, so every gradient stays correct (PyTorch refuses such writes
// instead; loom can afford to allow them because its view pieces never
// regenerate their grad_fn from the base).
namespace {

// The pieces of x along dim d (already wrapped) of the given lengths; with
// `squeeze` every length is 1 and the dim is dropped (unbind).
std::vector<Tensor> split_views(const Tensor& x, int64_t d, const std::vector<int64_t>& lengths, bool squeeze) {
  if (lengths.empty()) return {};  // unbind of an empty dim
  const TensorImpl* xi = x.unsafe_impl();
  std::vector<Tensor> out;
  out.reserve(lengths.size());
  int64_t start = 0;
  for (int64_t len : lengths) {
    Geometry g = geometry_of(x);
    g.offset += start * xi->strides[d];
    if (squeeze) {
      g.sizes.erase(g.sizes.begin() + d);
      g.strides.erase(g.strides.begin() + d);
    } else {
      g.sizes[d] = len;
    }
    out.push_back(make_alias(x, g.sizes, g.strides, g.offset));
    autograd::set_view_base(out.back(), x);
    start += len;
  }
  auto node = autograd::make_node(squeeze ? "UnbindBackward" : "SplitBackward", {x},
                                  [d, squeeze](FunctionNode&, const TensorList& g) {
                                    return TensorList{squeeze ? loom::stack(g, d) : loom::cat(g, d)};
                                  });
  if (node) {
    std::vector<Tensor*> outs;
    outs.reserve(out.size());
    for (Tensor& t : out) outs.push_back(&t);
    autograd::set_history(outs, node);
  }
  return out;
}

}  // namespace

std::vector<Tensor> Tensor::unbind(int64_t d) const {
  LOOM_CHECK(dim() > 0, "unbind: cannot unbind a 0-dim tensor");
  d = wrap_dim(d, dim(), "unbind");
  return split_views(*this, d, std::vector<int64_t>(size(d), 1), true);
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  LOOM_CHECK(x.dim() > 0, "split: cannot split a 0-dim tensor");
  const int64_t d = wrap_dim(dim, x.dim(), "split");
  const int64_t n = x.sizes()[d];
  LOOM_CHECK(split_size >= 0, "split: split_size must be non-negative, got ", split_size);
  LOOM_CHECK(split_size > 0 || n == 0, "split: split_size can only be 0 if dimension size is 0, but got dimension size of ", n);
  // As PyTorch: pieces of split_size, the last one shorter; an empty dim gives one empty piece.
  std::vector<int64_t> lengths;
  if (n == 0) lengths.push_back(0);
  for (int64_t start = 0; start < n; start += split_size) lengths.push_back(std::min(split_size, n - start));
  return split_views(x, d, lengths, false);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  LOOM_CHECK(x.dim() > 0, "split: cannot split a 0-dim tensor");
  const int64_t d = wrap_dim(dim, x.dim(), "split");
  const int64_t n = x.sizes()[d];
  int64_t total = 0;
  for (int64_t s : sizes) {
    LOOM_CHECK(s >= 0, "split: split sizes must be non-negative, got ", shape_str(sizes));
    total += s;
  }
  LOOM_CHECK(total == n, "split: split sizes ", shape_str(sizes), " must sum exactly to ", n,
             " (the size of dim ", d, " of shape ", shape_str(x.sizes()), "), but sum to ", total);
  return split_views(x, d, sizes, false);
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  LOOM_CHECK(x.dim() > 0, "chunk: cannot chunk a 0-dim tensor");
  LOOM_CHECK(chunks > 0, "chunk: expects `chunks` to be greater than 0, got ", chunks);
  const int64_t d = wrap_dim(dim, x.dim(), "chunk");
  const int64_t n = x.sizes()[d];
  // As PyTorch: chunks of ceil(n / chunks), so fewer chunks may come back
  // (5 split in 4 gives 2, 2, 1); an empty dim gives `chunks` empty pieces.
  if (n == 0) return split(x, std::vector<int64_t>(chunks, 0), d);
  return split(x, (n + chunks - 1) / chunks, d);
}

// ---- indexing ----

namespace indexing {
TensorIndex::TensorIndex(const char* s) : v_(EllipsisType{}) {
  LOOM_CHECK(std::string(s) == "...", "index: the only string index is \"...\", got \"", s, "\"");
}
TensorIndex::TensorIndex(const Tensor& t) : v_(std::make_shared<Tensor>(t)) {}
TensorIndex::TensorIndex(const TensorIndex&) = default;
TensorIndex& TensorIndex::operator=(const TensorIndex&) = default;
TensorIndex::~TensorIndex() = default;
const Tensor& TensorIndex::tensor() const { return *std::get<4>(v_); }
}  // namespace indexing

Tensor Tensor::index(std::initializer_list<indexing::TensorIndex> idx) const {
  return index(std::vector<indexing::TensorIndex>(idx));
}

Tensor Tensor::index(const std::vector<indexing::TensorIndex>& idx) const {
  int64_t consumed = 0, ellipses = 0;
  for (const auto& i : idx) {
    if (i.is_int() || i.is_slice()) ++consumed;
    else if (i.is_tensor()) consumed += i.tensor().dtype() == kBool ? i.tensor().dim() : 1;
    else if (i.is_ellipsis()) ++ellipses;
  }
  LOOM_CHECK(ellipses <= 1, "index: an index can only have a single ellipsis ('...')");
  LOOM_CHECK(consumed <= dim(), "index: too many indices for a tensor of shape ", shape_str(sizes()), ": ",
             consumed, " dims indexed but the tensor has ", dim());
  Tensor r = *this;
  int64_t d = 0;  // current dim of r
  int tensor_indices = 0;
  for (const auto& i : idx) {
    if (i.is_none()) {
      r = r.unsqueeze(d++);
    } else if (i.is_ellipsis()) {
      d += dim() - consumed;
    } else if (i.is_int()) {
      r = r.select(d, i.integer());
    } else if (i.is_slice()) {
      r = r.slice(d, i.slice().start, i.slice().stop, i.slice().step);
      ++d;
    } else {
      LOOM_CHECK(++tensor_indices == 1, "index: only one tensor index per call is supported; index again for more");
      const Tensor& t = i.tensor();
      if (t.dtype() == kBool) {
        // A mask over dims [d, d + mask.dim()): keep the selected positions.
        for (int64_t k = 0; k < t.dim(); ++k)
          LOOM_CHECK(t.size(k) == r.size(d + k), "index: the boolean mask of shape ", shape_str(t.sizes()),
                     " does not match the indexed shape ", shape_str(r.sizes()), " at dim ", d + k);
        std::vector<uint8_t> m = t.to(kUInt8).to_vector<uint8_t>();
        std::vector<int64_t> picks;
        for (size_t k = 0; k < m.size(); ++k)
          if (m[k]) picks.push_back(static_cast<int64_t>(k));
        Tensor flat = r.flatten(d, d + t.dim() - 1);
        r = flat.index_select(d, loom::tensor(picks, kInt64).to(r.device()));
        ++d;
      } else {
        LOOM_CHECK(is_integral(t.dtype(), false), "index: tensors used as indices must be integer or bool, got ",
                   dtype_name(t.dtype()));
        Tensor flat_idx = t.reshape({-1}).to(kInt64);
        std::vector<int64_t> ix = flat_idx.to_vector<int64_t>();
        const int64_t n = r.size(d);
        for (auto& v : ix) {
          LOOM_CHECK(v >= -n && v < n, "index: index ", v, " is out of bounds for dim ", d, " with size ", n);
          if (v < 0) v += n;
        }
        Tensor sel = r.index_select(d, loom::tensor(ix, kInt64).to(r.device()));
        Shape out(sel.sizes().begin(), sel.sizes().begin() + d);
        out.insert(out.end(), t.sizes().begin(), t.sizes().end());
        out.insert(out.end(), sel.sizes().begin() + d + 1, sel.sizes().end());
        r = sel.reshape(out);
        d += t.dim();
      }
    }
  }
  return r;
}

Tensor& Tensor::index_put_(const std::vector<indexing::TensorIndex>& idx, const Tensor& value) {
  for (const auto& i : idx) {
    // A full-shape mask and one value: one where() pass.
    if (i.is_tensor() && i.tensor().dtype() == kBool && idx.size() == 1 && i.tensor().sizes() == sizes() &&
        value.numel() == 1)
      return copy_(loom::where(i.tensor(), value.reshape({}), *this));
  }
  size_t p = idx.size();
  int64_t consumed = 0;
  for (size_t j = 0; j < idx.size(); ++j) {
    const auto& i = idx[j];
    if (i.is_int() || i.is_slice()) ++consumed;
    if (!i.is_tensor()) continue;
    LOOM_CHECK(p == idx.size(), "index_put_: only one tensor index per assignment is supported");
    p = j;
    consumed += i.tensor().dtype() == kBool ? i.tensor().dim() : 1;
  }
  Tensor target = index(idx);
  if (p == idx.size()) {
    target.copy_(value);
    return *this;
  }
  // One tensor index (integers, or a mask over some dims): write the value's
  // slice for each selected position through the view that a plain integer
  // index in its place gives. d_in: the first dim of *this the tensor index
  // covers; d_out: where its positions sit in the indexed result.
  const Tensor& t = idx[p].tensor();
  int64_t d_in = 0, d_out = 0;
  for (size_t j = 0; j < p; ++j) {
    const auto& i = idx[j];
    if (i.is_ellipsis()) {
      d_in += dim() - consumed;
      d_out += dim() - consumed;
    } else {
      d_in += i.is_none() ? 0 : 1;
      d_out += i.is_int() ? 0 : 1;
    }
  }
  std::vector<std::vector<int64_t>> picks;
  int64_t index_dims = 1;
  if (t.dtype() == kBool) {
    index_dims = t.dim();
    for (int64_t k = 0; k < t.dim(); ++k)
      LOOM_CHECK(d_in + k < dim() && t.size(k) == size(d_in + k), "index_put_: the boolean mask of shape ",
                 shape_str(t.sizes()), " does not match the indexed shape ", shape_str(sizes()), " at dim ", d_in + k);
    std::vector<uint8_t> m = t.to(kUInt8).contiguous().to_vector<uint8_t>();
    for (int64_t flat = 0; flat < static_cast<int64_t>(m.size()); ++flat) {
      if (!m[flat]) continue;
      std::vector<int64_t> pos(t.dim());
      for (int64_t k = t.dim() - 1, rest = flat; k >= 0; --k) {
        pos[k] = rest % t.size(k);
        rest /= t.size(k);
      }
      picks.push_back(std::move(pos));
    }
  } else {
    LOOM_CHECK(is_integral(t.dtype(), false), "index_put_: tensors used as indices must be integer or bool, got ",
               dtype_name(t.dtype()));
    index_dims = t.dim();
    const int64_t n = size(d_in);
    // index(idx) above has checked the bounds.
    for (int64_t v : t.reshape({-1}).to(kInt64).to_vector<int64_t>()) picks.push_back({v < 0 ? v + n : v});
  }
  // The value, broadcast to the indexed shape, with the tensor index's result
  // dims flattened into one of length picks.size().
  Tensor v = value.to(dtype()).expand(target.sizes());
  Shape flat(target.sizes().begin(), target.sizes().begin() + d_out);
  flat.push_back(static_cast<int64_t>(picks.size()));
  const int64_t index_result_dims = t.dtype() == kBool ? 1 : index_dims;
  flat.insert(flat.end(), target.sizes().begin() + d_out + index_result_dims, target.sizes().end());
  v = v.reshape(flat);
  for (size_t k = 0; k < picks.size(); ++k) {
    std::vector<indexing::TensorIndex> at(idx.begin(), idx.begin() + p);
    for (int64_t c : picks[k]) at.emplace_back(c);
    at.insert(at.end(), idx.begin() + p + 1, idx.end());
    index(at).copy_(v.select(d_out, static_cast<int64_t>(k)));
  }
  return *this;
}

Tensor& Tensor::index_put_(const std::vector<indexing::TensorIndex>& idx, Scalar value) {
  return index_put_(idx, ops::wrap_scalar(value, device()));
}

// ---- free-function forms ----

Tensor reshape(const Tensor& x, IntArrayRef s) { return x.reshape(s); }
Tensor permute(const Tensor& x, IntArrayRef d) { return x.permute(d); }
Tensor transpose(const Tensor& x, int64_t a, int64_t b) { return x.transpose(a, b); }
Tensor unsqueeze(const Tensor& x, int64_t d) { return x.unsqueeze(d); }
Tensor squeeze(const Tensor& x, std::optional<int64_t> d) { return d ? x.squeeze(*d) : x.squeeze(); }
Tensor flatten(const Tensor& x, int64_t s, int64_t e) { return x.flatten(s, e); }
Tensor narrow(const Tensor& x, int64_t d, int64_t s, int64_t l) { return x.narrow(d, s, l); }
Tensor select(const Tensor& x, int64_t d, int64_t i) { return x.select(d, i); }
Tensor broadcast_to(const Tensor& x, IntArrayRef s) { return x.expand(s); }

std::vector<int64_t> broadcast_shapes(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  return ops::broadcast_shape(a, b, "broadcast_shapes");
}

std::vector<Tensor> broadcast_tensors(const std::vector<Tensor>& ts) {
  Shape s;
  for (const Tensor& t : ts) s = ops::broadcast_shape(s, t.sizes(), "broadcast_tensors");
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.expand(s));
  return out;
}

}  // namespace loom
