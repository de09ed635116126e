// Indexing kernels along one dim i[0]: Gather, ScatterAdd, IndexSelect, IndexAdd.
//
// Index values must lie in [0, size): like PyTorch's gather, scatter_add,
// index_select and index_add, negative indices are errors, not wrapped. All
// indices are checked before anything is written, so a failing in-place
// scatter leaves its output untouched. A 0-dim tensor is treated as shape [1].
#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"

namespace loom::cpu {
namespace {

// Sizes and strides with a 0-dim tensor seen as one element of shape [1].
struct Geometry {
  Shape sizes, strides;
};
Geometry geometry(const TensorImpl* t) {
  if (t->dim() == 0) return {{1}, {0}};
  return {t->sizes, t->strides};
}

// Throws "<op>: index 7 is out of bounds for dim 1 with size 5" for the first
// index of `index` outside [0, size).
void check_indices(const char* op, const TensorImpl* index, int64_t dim, int64_t size) {
  const Geometry g = geometry(index);
  const LoopShape<1> l = make_loop<1>(g.sizes, {&g.strides});
  dispatch_index(index->dtype, [&](auto tag) {
    using I = typename decltype(tag)::type;
    const I* p = data_ptr<I>(index);
    for_each_offset<1>(l, 0, l.numel, [&](const Offsets1& o) {
      const int64_t v = p[o[0]];
      LOOM_CHECK(v >= 0 && v < size, op, ": index ", v, " is out of bounds for dim ", dim, " with size ", size);
    });
  });
}

// `strides` with the entry for `dim` replaced: the index supplies that coordinate.
Shape with_stride(Shape strides, int64_t dim, int64_t value) {
  strides[dim] = value;
  return strides;
}

// Sizes with `dim` set to 1: the positions of the other dims.
Shape without_dim(Shape sizes, int64_t dim) {
  sizes[dim] = 1;
  return sizes;
}

// dst += v with wrapping integers and logical or for bool.
template <typename T>
void accumulate(T& dst, T v) {
  if constexpr (std::is_same_v<T, bool>) dst = dst || v;
  else if constexpr (std::is_integral_v<T>) dst = wrap_add(dst, v);
  else dst = static_cast<T>(to_compute(dst) + to_compute(v));
}

int64_t checked_dim(const KernelCall& c, int64_t ndim) {
  const int64_t dim = c.i[0];
  LOOM_ASSERT(dim >= 0 && dim < ndim, op_name(c.op), ": dim ", dim, " for ", ndim, " dims");
  return dim;
}

}  // namespace

namespace kernel {

// out[.., j, ..] = in[0][.., in[1][.., j, ..], ..] along dim i[0]; out has in[1]'s shape
// (in[0] may be larger in the other dims).
void Gather(const KernelCall& c) {
  const TensorImpl *in = c.in[0], *index = c.in[1];
  TensorImpl* out = c.out[0];
  const Geometry gi = geometry(in), gx = geometry(index), go = geometry(out);
  const int64_t dim = checked_dim(c, static_cast<int64_t>(gi.sizes.size()));
  LOOM_ASSERT(gx.sizes == go.sizes && gi.sizes.size() == gx.sizes.size(), "Gather: input ", shape_str(in->sizes),
              " index ", shape_str(index->sizes), " output ", shape_str(out->sizes));
  check_indices("gather", index, dim, gi.sizes[dim]);
  const Shape in_strides = with_stride(gi.strides, dim, 0);
  const LoopShape<3> l = make_loop<3>(go.sizes, {&go.strides, &gx.strides, &in_strides});
  const int64_t dim_stride = gi.strides[dim];
  dispatch_all(in->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(index->dtype, [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* x = data_ptr<T>(in);
      const I* idx = data_ptr<I>(index);
      T* y = data_ptr<T>(out);
      parallel_for(0, l.numel, kGrain, [&](int64_t b, int64_t e) {
        for_each_offset<3>(l, b, e, [&](const Offsets3& o) {
          y[o[0]] = x[o[2] + static_cast<int64_t>(idx[o[1]]) * dim_stride];
        });
      });
    });
  });
}

// out[0] (holding the base values) += in[1] at in[0] along dim i[0]: for every
// position p of the index, out[p with p[dim] = index[p]] += src[p].
// Threads split the positions of the other dims; the entries along `dim`,
// which may hit the same output element, are added in order on one thread.
void ScatterAdd(const KernelCall& c) {
  const TensorImpl *index = c.in[0], *src = c.in[1];
  TensorImpl* out = c.out[0];
  const Geometry gx = geometry(index), gs = geometry(src), go = geometry(out);
  const int64_t dim = checked_dim(c, static_cast<int64_t>(go.sizes.size()));
  LOOM_ASSERT(gx.sizes.size() == go.sizes.size() && gs.sizes.size() == go.sizes.size(), "ScatterAdd: output ",
              shape_str(out->sizes), " index ", shape_str(index->sizes), " src ", shape_str(src->sizes));
  check_indices("scatter_add", index, dim, go.sizes[dim]);
  const Shape rest = without_dim(gx.sizes, dim);
  const LoopShape<3> l = make_loop<3>(rest, {&gx.strides, &gs.strides, &go.strides});
  const int64_t length = gx.sizes[dim];
  const int64_t index_step = gx.strides[dim], src_step = gs.strides[dim], out_step = go.strides[dim];
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(index->dtype, [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* idx = data_ptr<I>(index);
      const T* s = data_ptr<T>(src);
      T* y = data_ptr<T>(out);
      parallel_for(0, l.numel, std::max<int64_t>(1, kGrain / std::max<int64_t>(length, 1)), [&](int64_t b, int64_t e) {
        for_each_offset<3>(l, b, e, [&](const Offsets3& o) {
          for (int64_t j = 0; j < length; ++j) {
            const int64_t v = idx[o[0] + j * index_step];
            accumulate(y[o[2] + v * out_step], s[o[1] + j * src_step]);
          }
        });
      });
    });
  });
}

// out[0] = in[0] indexed along dim i[0] by the 1-D index in[1]:
// out[.., j, ..] = in[.., index[j], ..].
void IndexSelect(const KernelCall& c) {
  const TensorImpl *in = c.in[0], *index = c.in[1];
  TensorImpl* out = c.out[0];
  const Geometry gi = geometry(in), gx = geometry(index), go = geometry(out);
  const int64_t dim = checked_dim(c, static_cast<int64_t>(gi.sizes.size()));
  LOOM_ASSERT(gx.sizes.size() == 1 && go.sizes.size() == gi.sizes.size() && go.sizes[dim] == gx.sizes[0],
              "IndexSelect: input ", shape_str(in->sizes), " index ", shape_str(index->sizes), " output ",
              shape_str(out->sizes));
  check_indices("index_select", index, dim, gi.sizes[dim]);
  const Shape in_strides = with_stride(gi.strides, dim, 0);
  // The index seen as a tensor of out's shape that only varies along `dim`.
  const Shape index_strides = with_stride(Shape(go.sizes.size(), 0), dim, gx.strides[0]);
  const LoopShape<3> l = make_loop<3>(go.sizes, {&go.strides, &in_strides, &index_strides});
  const int64_t dim_stride = gi.strides[dim];
  dispatch_all(in->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(index->dtype, [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* x = data_ptr<T>(in);
      const I* idx = data_ptr<I>(index);
      T* y = data_ptr<T>(out);
      parallel_for(0, l.numel, kGrain, [&](int64_t b, int64_t e) {
        for_each_offset<3>(l, b, e, [&](const Offsets3& o) {
          y[o[0]] = x[o[1] + static_cast<int64_t>(idx[o[2]]) * dim_stride];
        });
      });
    });
  });
}

// out[0] (holding the base values) gets in[1] added along dim i[0] at the
// 1-D index in[0]: out[.., index[k], ..] += src[.., k, ..]. Threads split the
// positions of the other dims; k runs in order on one thread, so duplicate
// indices accumulate deterministically.
void IndexAdd(const KernelCall& c) {
  const TensorImpl *index = c.in[0], *src = c.in[1];
  TensorImpl* out = c.out[0];
  const Geometry gx = geometry(index), gs = geometry(src), go = geometry(out);
  const int64_t dim = checked_dim(c, static_cast<int64_t>(go.sizes.size()));
  LOOM_ASSERT(gx.sizes.size() == 1 && gs.sizes.size() == go.sizes.size() && gs.sizes[dim] == gx.sizes[0] &&
                  without_dim(gs.sizes, dim) == without_dim(go.sizes, dim),
              "IndexAdd: output ", shape_str(out->sizes), " index ", shape_str(index->sizes), " src ",
              shape_str(src->sizes));
  check_indices("index_add", index, dim, go.sizes[dim]);
  const Shape rest = without_dim(gs.sizes, dim);
  const LoopShape<2> l = make_loop<2>(rest, {&gs.strides, &go.strides});
  const int64_t length = gx.sizes[0];
  const int64_t index_step = gx.strides[0], src_step = gs.strides[dim], out_step = go.strides[dim];
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(index->dtype, [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* idx = data_ptr<I>(index);
      const T* s = data_ptr<T>(src);
      T* y = data_ptr<T>(out);
      parallel_for(0, l.numel, std::max<int64_t>(1, kGrain / std::max<int64_t>(length, 1)), [&](int64_t b, int64_t e) {
        for_each_offset<2>(l, b, e, [&](const Offsets2& o) {
          for (int64_t k = 0; k < length; ++k) {
            const int64_t v = idx[k * index_step];
            accumulate(y[o[1] + v * out_step], s[o[0] + k * src_step]);
          }
        });
      });
    });
  });
}

}  // namespace kernel
}  // namespace loom::cpu
