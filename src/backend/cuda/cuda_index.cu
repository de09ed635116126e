// CUDA kernels: indexing along one dim i[0]: Gather, ScatterAdd, IndexSelect,
// IndexAdd (ops.def), with cpu_index.cpp's semantics: indices (int64) must
// lie in [0, size), a 0-dim tensor is seen as shape [1].
//
// Note [CUDA index errors]
// ops.def asks an index out of range to throw loom::Error naming the op and
// the index, and the CPU kernels check every index before they write
// anything, so a failing in-place op leaves its output untouched. The index
// lives on the device, so each call here:
//  1. sets a flag in the call's workspace (8 bytes) to "none"
//     (cudaMemsetAsync, 0xFF bytes);
//  2. launches check_index_kernel, which atomicMin's into the flag the
//     position (row-major element number of the index tensor) of every bad
//     index, so the flag ends with the first one, the one the CPU reports;
//  3. launches the op's kernel, whose threads return at once when the flag
//     is set: the output is untouched, as on the CPU;
//  4. copies the flag back (cudaMemcpyAsync on the stream, then
//     cudaStreamSynchronize), and when it names a position, copies that one
//     index value back too and throws "<op>: index 7 is out of bounds for
//     dim 1 with size 5", the CPU's message (the valid range is [0, size)).
// The synchronization in step 4 is the cost: these four ops wait for the
// device (Note [CUDA kernel conventions] allows it for exactly this).
//
// Accumulation order. ScatterAdd and IndexAdd add with atomics, one thread
// per source element, so where indices repeat, float sums are taken in an
// order that changes from run to run: results agree with the CPU's (which
// adds in index order) to rounding, and are not bitwise reproducible.
// Integer and bool sums are exact in any order. float16 and bfloat16 add
// with the hardware's atomics, rounded once per addition.
#include <array>

#include "backend/cuda/cuda_tensor.cuh"
#include "backend/workspace.h"

namespace loom::cuda_detail {

namespace {

#define LOOM_GRID_STRIDE_LOOP(k, n)                                                      \
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < (n); \
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)

constexpr unsigned long long kNoBadIndex = ~0ull;

// ---------------------------------------------------------------- geometry

// Sizes and strides with a 0-dim tensor seen as one element of shape [1].
struct Geom {
  Shape sizes, strides;
};
Geom geom(const TensorImpl* t) {
  if (t->dim() == 0) return {{1}, {0}};
  return {t->sizes, t->strides};
}

// `strides` with the entry for `dim` replaced: the index supplies that coordinate.
Shape with_stride(Shape strides, int64_t dim, int64_t value) {
  strides[static_cast<size_t>(dim)] = value;
  return strides;
}

// N tensors walked together over one shape: the element offsets of each at
// row-major position k. Size-1 dims are dropped and neighbours merged where
// every tensor steps through them as one.
template <int N>
struct MultiStrided {
  int dims = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};

  __device__ void offsets(int64_t k, int64_t (&o)[N]) const {
    for (int t = 0; t < N; ++t) o[t] = 0;
    for (int d = dims - 1; d >= 0; --d) {
      const int64_t i = k % sizes[d];
      k /= sizes[d];
      for (int t = 0; t < N; ++t) o[t] += i * strides[t][d];
    }
  }
};

template <int N>
MultiStrided<N> multi_strided(const char* op, const Shape& sizes, const std::array<Shape, N>& strides) {
  MultiStrided<N> g;
  int n = 0;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 1) continue;
    bool merge = n > 0;
    for (int t = 0; t < N && merge; ++t) merge = g.strides[t][n - 1] == strides[t][d] * sizes[d];
    if (merge) {
      g.sizes[n - 1] *= sizes[d];
      for (int t = 0; t < N; ++t) g.strides[t][n - 1] = strides[t][d];
      continue;
    }
    LOOM_CHECK(n < kMaxDims, op, ": CUDA indexing kernels take tensors of up to ", kMaxDims,
               " dims that cannot be merged; shape ", shape_str(sizes), " has more");
    g.sizes[n] = sizes[d];
    for (int t = 0; t < N; ++t) g.strides[t][n] = strides[t][d];
    ++n;
  }
  g.dims = n;
  return g;
}

// ---------------------------------------------------------------- index checks

// Note [CUDA index errors], step 2.
__global__ void check_index_kernel(const int64_t* idx, Strided g, int64_t n, int64_t size, unsigned long long* bad) {
  LOOM_GRID_STRIDE_LOOP(k, n) {
    const int64_t v = idx[g.offset(k)];
    if (v < 0 || v >= size) atomicMin(bad, static_cast<unsigned long long>(k));
  }
}

// The steps of Note [CUDA index errors] around one op's kernel.
class IndexCheck {
 public:
  IndexCheck(const KernelCall& c, const Launch& l, const char* op, const TensorImpl* index, int64_t dim, int64_t size)
      : l_(l), op_(op), index_(index), dim_(dim), size_(size) {
    LOOM_CHECK(index->dtype == kInt64, op, ": CUDA takes int64 indices, got ", dtype_name(index->dtype));
    WorkspaceLayout ws = carve(c);
    bad_ = ws.take<unsigned long long>(1);
    LOOM_CUDA_CHECK(cudaMemsetAsync(bad_, 0xFF, sizeof(unsigned long long), l.stream));
    const int64_t n = index->numel();
    check_index_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(data_of<int64_t>(index), strided_of(index), n, size,
                                                                bad_);
    LOOM_CUDA_CHECK_LAUNCH();
  }
  // For the op's kernel: set when an index is bad.
  const unsigned long long* flag() const { return bad_; }
  // Step 4: waits for the device, throws for a bad index.
  void finish() const {
    unsigned long long bad = 0;
    LOOM_CUDA_CHECK(cudaMemcpyAsync(&bad, bad_, sizeof bad, cudaMemcpyDeviceToHost, l_.stream));
    LOOM_CUDA_CHECK(cudaStreamSynchronize(l_.stream));
    if (bad == kNoBadIndex) return;
    const int64_t at = strided_of(index_).offset(static_cast<int64_t>(bad));
    int64_t value = 0;
    LOOM_CUDA_CHECK(
        cudaMemcpyAsync(&value, data_of<int64_t>(index_) + at, sizeof value, cudaMemcpyDeviceToHost, l_.stream));
    LOOM_CUDA_CHECK(cudaStreamSynchronize(l_.stream));
    LOOM_ERROR(op_, ": index ", value, " is out of bounds for dim ", dim_, " with size ", size_);
  }

 private:
  Launch l_;
  const char* op_;
  const TensorImpl* index_;
  int64_t dim_, size_;
  unsigned long long* bad_ = nullptr;
};

size_t index_workspace(const KernelCall&) {
  WorkspaceLayout ws;
  ws.take<unsigned long long>(1);
  return ws.bytes();
}

// ---------------------------------------------------------------- kernels

// Gather and IndexSelect: y[o0] = x[o1 + index[o2] * dim_stride], the
// tensors (out, in with its dim's stride 0, index) walked over out's shape.
template <typename U>
__global__ void select_kernel(U* y, const U* x, const int64_t* idx, MultiStrided<3> g, int64_t dim_stride, int64_t n,
                              const unsigned long long* bad) {
  if (*bad != kNoBadIndex) return;
  LOOM_GRID_STRIDE_LOOP(k, n) {
    int64_t o[3];
    g.offsets(k, o);
    y[o[0]] = x[o[1] + idx[o[2]] * dim_stride];
  }
}

// *addr += v in one atomic step, with the CPU's accumulate(): wrapping for
// integers, logical or for bool.
__device__ __forceinline__ unsigned int* word_of(void* addr, unsigned& shift) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  shift = static_cast<unsigned>(a & 3u) * 8u;
  return reinterpret_cast<unsigned int*>(a & ~uintptr_t{3});
}
template <typename T>
__device__ __forceinline__ void atomic_accumulate(T* addr, T v) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, __half> ||
                std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, int32_t>) {
    atomicAdd(addr, v);
  } else if constexpr (std::is_same_v<T, int64_t>) {
    atomicAdd(reinterpret_cast<unsigned long long*>(addr), static_cast<unsigned long long>(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    unsigned shift;
    if (v) atomicOr(word_of(addr, shift), 1u << shift);
  } else {
    static_assert(sizeof(T) == 1, "atomic_accumulate: a byte type");
    // No byte atomics: a compare-and-swap loop on the aligned word holding it.
    unsigned shift;
    unsigned int* word = word_of(addr, shift);
    unsigned int old = *word, assumed;
    do {
      assumed = old;
      const unsigned int sum = ((assumed >> shift) + static_cast<uint8_t>(v)) & 0xFFu;
      old = atomicCAS(word, assumed, (assumed & ~(0xFFu << shift)) | (sum << shift));
    } while (old != assumed);
  }
}

// ScatterAdd and IndexAdd: y[o1 + index[o2] * dim_stride] += src[o0], the
// tensors (src, out with its dim's stride 0, index) walked over the shape of
// the source positions. Note [CUDA index errors] on the order of the sums.
template <typename T>
__global__ void accumulate_kernel(T* y, const T* src, const int64_t* idx, MultiStrided<3> g, int64_t dim_stride,
                                  int64_t n, const unsigned long long* bad) {
  if (*bad != kNoBadIndex) return;
  LOOM_GRID_STRIDE_LOOP(k, n) {
    int64_t o[3];
    g.offsets(k, o);
    atomic_accumulate(y + o[1] + idx[o[2]] * dim_stride, src[o[0]]);
  }
}

int64_t checked_dim(const KernelCall& c, size_t ndim) {
  const int64_t dim = c.i[0];
  LOOM_ASSERT(dim >= 0 && dim < static_cast<int64_t>(ndim), op_name(c.op), ": dim ", dim, " for ", ndim, " dims");
  return dim;
}

void launch_select(const Launch& l, const TensorImpl* in, const TensorImpl* out, const TensorImpl* index,
                   const MultiStrided<3>& g, int64_t dim_stride, const IndexCheck& check) {
  const int64_t n = out->numel();
  dispatch_bytes(element_size(in->dtype), [&](auto tag) {
    using U = typename decltype(tag)::type;
    select_kernel<U><<<grid_for(n), kThreads, 0, l.stream>>>(data_of<U>(out), data_of<U>(in), data_of<int64_t>(index),
                                                             g, dim_stride, n, check.flag());
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

// `n` source positions (ScatterAdd: the index's; IndexAdd: the source's).
void launch_accumulate(const Launch& l, const TensorImpl* src, const TensorImpl* out, const TensorImpl* index,
                       const MultiStrided<3>& g, int64_t n, int64_t dim_stride, const IndexCheck& check) {
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    accumulate_kernel<T><<<grid_for(n), kThreads, 0, l.stream>>>(data_of<T>(out), data_of<T>(src),
                                                                 data_of<int64_t>(index), g, dim_stride, n,
                                                                 check.flag());
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

// ---------------------------------------------------------------- ops

// out[.., j, ..] = in[.., index[.., j, ..], ..] along dim i[0]; out has the
// index's shape (in may be larger in the other dims).
void gather(const KernelCall& c) {
  const TensorImpl *in = c.in[0], *index = c.in[1];
  TensorImpl* out = c.out[0];
  const Geom gi = geom(in), gx = geom(index), go = geom(out);
  const int64_t dim = checked_dim(c, gi.sizes.size());
  LOOM_ASSERT(gx.sizes == go.sizes && gi.sizes.size() == gx.sizes.size() && in->dtype == out->dtype,
              "Gather: input ", shape_str(in->sizes), " index ", shape_str(index->sizes), " output ",
              shape_str(out->sizes));
  if (out->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const int64_t size = gi.sizes[static_cast<size_t>(dim)];
  const IndexCheck check(c, l, "gather", index, dim, size);
  const MultiStrided<3> g = multi_strided<3>("gather", go.sizes, {go.strides, with_stride(gi.strides, dim, 0), gx.strides});
  launch_select(l, in, out, index, g, gi.strides[static_cast<size_t>(dim)], check);
  check.finish();
}

// out[0] (holding the base values) += in[1] at in[0] along dim i[0]: for
// every position p of the index, out[p with p[dim] = index[p]] += src[p]
// (src may be larger than the index: only the index's positions are read).
void scatter_add(const KernelCall& c) {
  const TensorImpl *index = c.in[0], *src = c.in[1];
  TensorImpl* out = c.out[0];
  const Geom gx = geom(index), gs = geom(src), go = geom(out);
  const int64_t dim = checked_dim(c, go.sizes.size());
  LOOM_ASSERT(gx.sizes.size() == go.sizes.size() && gs.sizes.size() == go.sizes.size() && src->dtype == out->dtype,
              "ScatterAdd: output ", shape_str(out->sizes), " index ", shape_str(index->sizes), " src ",
              shape_str(src->sizes));
  if (index->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const int64_t size = go.sizes[static_cast<size_t>(dim)];
  const IndexCheck check(c, l, "scatter_add", index, dim, size);
  const MultiStrided<3> g =
      multi_strided<3>("scatter_add", gx.sizes, {gs.strides, with_stride(go.strides, dim, 0), gx.strides});
  launch_accumulate(l, src, out, index, g, index->numel(), go.strides[static_cast<size_t>(dim)], check);
  check.finish();
}

// out[0] = in[0] indexed along dim i[0] by the 1-D index in[1]:
// out[.., j, ..] = in[.., index[j], ..].
void index_select(const KernelCall& c) {
  const TensorImpl *in = c.in[0], *index = c.in[1];
  TensorImpl* out = c.out[0];
  const Geom gi = geom(in), gx = geom(index), go = geom(out);
  const int64_t dim = checked_dim(c, gi.sizes.size());
  LOOM_ASSERT(gx.sizes.size() == 1 && go.sizes.size() == gi.sizes.size() &&
                  go.sizes[static_cast<size_t>(dim)] == gx.sizes[0] && in->dtype == out->dtype,
              "IndexSelect: input ", shape_str(in->sizes), " index ", shape_str(index->sizes), " output ",
              shape_str(out->sizes));
  if (out->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const int64_t size = gi.sizes[static_cast<size_t>(dim)];
  const IndexCheck check(c, l, "index_select", index, dim, size);
  // The index seen as a tensor of out's shape that only varies along `dim`.
  const Shape index_strides = with_stride(Shape(go.sizes.size(), 0), dim, gx.strides[0]);
  const MultiStrided<3> g =
      multi_strided<3>("index_select", go.sizes, {go.strides, with_stride(gi.strides, dim, 0), index_strides});
  launch_select(l, in, out, index, g, gi.strides[static_cast<size_t>(dim)], check);
  check.finish();
}

// out[0] (holding the base values) gets in[1] added along dim i[0] at the
// 1-D index in[0]: out[.., index[k], ..] += src[.., k, ..].
void index_add(const KernelCall& c) {
  const TensorImpl *index = c.in[0], *src = c.in[1];
  TensorImpl* out = c.out[0];
  const Geom gx = geom(index), gs = geom(src), go = geom(out);
  const int64_t dim = checked_dim(c, go.sizes.size());
  LOOM_ASSERT(gx.sizes.size() == 1 && gs.sizes.size() == go.sizes.size() &&
                  gs.sizes[static_cast<size_t>(dim)] == gx.sizes[0] && src->dtype == out->dtype,
              "IndexAdd: output ", shape_str(out->sizes), " index ", shape_str(index->sizes), " src ",
              shape_str(src->sizes));
  for (size_t d = 0; d < gs.sizes.size(); ++d)
    LOOM_ASSERT(static_cast<int64_t>(d) == dim || gs.sizes[d] == go.sizes[d], "IndexAdd: output ",
                shape_str(out->sizes), " src ", shape_str(src->sizes));
  if (src->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const int64_t size = go.sizes[static_cast<size_t>(dim)];
  const IndexCheck check(c, l, "index_add", index, dim, size);
  const Shape index_strides = with_stride(Shape(gs.sizes.size(), 0), dim, gx.strides[0]);
  const MultiStrided<3> g =
      multi_strided<3>("index_add", gs.sizes, {gs.strides, with_stride(go.strides, dim, 0), index_strides});
  launch_accumulate(l, src, out, index, g, src->numel(), go.strides[static_cast<size_t>(dim)], check);
  check.finish();
}

}  // namespace

void register_index(Backend& b) {
  const auto all = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool, kInt8};
  const auto op = [&](OpKind k, KernelFn fn) {
    b.kernels[static_cast<int>(k)] = fn;
    b.workspace[static_cast<int>(k)] = &index_workspace;
    set_supported(k, all);
  };
  op(OpKind::Gather, &gather);
  op(OpKind::ScatterAdd, &scatter_add);
  op(OpKind::IndexSelect, &index_select);
  op(OpKind::IndexAdd, &index_add);
}

}  // namespace loom::cuda_detail
