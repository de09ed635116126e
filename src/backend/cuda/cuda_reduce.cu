// CUDA kernels: reductions (Sum, Prod, Amax, Amin, ArgMax, ArgMin) and the
// row-wise ops (Softmax, LogSoftmax, Cumsum, SoftmaxBackward,
// LogSoftmaxBackward, LayerNorm, LayerNormBackward, CrossEntropy,
// CrossEntropyBackward). Calling conventions in ops.def; the CPU reference
// kernels are src/backend/cpu/cpu_reduce.cpp and cpu_rowwise.cpp, and every
// kernel here keeps their accumulation types (Note [CUDA kernel conventions]).
//
// Note [CUDA reductions]
// A reduction sees in[0] as (rows, n): the outer dims (one output each) and
// the reduced trailing dims, any strides. One of three paths, chosen by
// plan_reduce from the shape alone:
//  - warp rows:   a warp per output, the lanes striding along the row, then a
//                 shuffle tree. The usual case (rows contiguous, or many rows).
//  - thread rows: a thread per output, folding its row in order, so a warp
//                 reads 32 neighbouring outputs' elements at once. For short
//                 rows (n < 32) and for "columns" (reduced dims strided, the
//                 kept dims contiguous: a sum over dim 0). When the outputs
//                 are too few to fill the GPU, each row is also cut into
//                 chunks along the reduced dims (grid.y), one partial each.
//  - block split: a few long rows (a full sum of 10^7 elements): each row is
//                 cut into chunks, a block folds a chunk into one partial.
// Partials go to the call's workspace (Note [Kernel workspaces]) and a second
// kernel folds each row's partials in chunk order with a warp. Every fold
// order depends on the shape only, so results are the same on every run.
// Sums and products accumulate in double (float dtypes) or int64 (integers,
// bool; wrapping), as on the CPU: a float32 sum matches the CPU's to the
// final rounding, integer sums bit for bit. Max / min and argmax / argmin
// folds are exact and order-free (a NaN wins; ties go to the first index),
// so they give the CPU's values bit for bit (up to the sign of a zero max).
//
// Note [CUDA row kernels]
// Row-wise ops give each row a group of W warps: W = 1 (eight rows per
// 256-thread block) for rows of up to kShortRow elements, else W = 8 (one
// row per block). The group loops along the row, whatever its length, and
// reduces with warp shuffles (and shared memory across warps when W = 8);
// every thread of the group ends with the same bits of each row statistic.
// Elementwise math runs in compute_t (float for float16 / bfloat16, double
// for float64); row sums accumulate in double, as the CPU's do.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "backend/cuda/cuda_tensor.cuh"
#include "backend/workspace.h"

namespace loom::cuda_detail {
namespace {

constexpr int kWarp = 32;
constexpr int kBlock = kThreads;  // 256
constexpr int kBlockWarps = kBlock / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;
// Rows up to this long get one warp each, longer ones a block (Note [CUDA row kernels]).
constexpr int64_t kShortRow = 1024;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `items` work items, `per_block` a block; kernels loop with a
// grid stride past the cap.
unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(items, per_block), 1, int64_t{1} << 20));
}

// ---- geometry ----

// sizes / strides merged as strided_of merges a tensor's (the row-major
// element order, hence offset(k), is unchanged).
Strided make_strided(const int64_t* sizes, const int64_t* strides, int64_t n) {
  Strided g;
  for (int64_t d = 0; d < n; ++d) {
    const int64_t s = sizes[d], st = strides[d];
    if (s == 1) continue;
    if (g.dims > 0 && g.strides[g.dims - 1] == st * s) {
      g.sizes[g.dims - 1] *= s;
      g.strides[g.dims - 1] = st;
      continue;
    }
    LOOM_CHECK(g.dims < kMaxDims, "CUDA kernels take tensors of up to ", kMaxDims,
               " dims that cannot be merged; this one has more (", n, " dims)");
    g.sizes[g.dims] = s;
    g.strides[g.dims] = st;
    ++g.dims;
  }
  return g;
}

// Element k (row-major) of g, the common one-dim case first. The loop is
// kept rolled: its geometry is read from the kernel's parameters by index
// (no local copy), and unrolling each call site's 64-bit divisions doubled
// this file's compile time.
__device__ __forceinline__ int64_t offset_of(const Strided& g, int64_t k) {
  if (g.dims == 1) return k * g.strides[0];
  int64_t off = 0;
#pragma unroll 1
  for (int d = g.dims - 1; d >= 0; --d) {
    const int64_t s = g.sizes[d];
    off += (k % s) * g.strides[d];
    k /= s;
  }
  return off;
}

// One operand of a row op: element j of row r sits at outer(r) + inner(j),
// rows being the leading dims and a row the trailing ones (row-major both).
struct RowOperand {
  Strided outer, inner;
};
RowOperand row_operand(const TensorImpl* t, int64_t n_trailing) {
  const int64_t nd = t->dim();
  const int64_t k = std::clamp<int64_t>(n_trailing, 0, nd);
  return {make_strided(t->sizes.data(), t->strides.data(), nd - k),
          make_strided(t->sizes.data() + (nd - k), t->strides.data() + (nd - k), k)};
}
__device__ __forceinline__ int64_t row_start(const RowOperand& o, int64_t r) { return offset_of(o.outer, r); }
__device__ __forceinline__ int64_t row_at(const RowOperand& o, int64_t j) { return offset_of(o.inner, j); }

// (rows, n) of `t` split after its leading dims, n_trailing dims per row.
struct RowCount {
  int64_t rows = 1, n = 1;
};
RowCount row_count(const TensorImpl* t, int64_t n_trailing) {
  const int64_t nd = t->dim();
  const int64_t k = std::clamp<int64_t>(n_trailing, 0, nd);
  RowCount c;
  for (int64_t d = 0; d < nd; ++d) (d < nd - k ? c.rows : c.n) *= t->sizes[d];
  return c;
}

// ---- values ----

// The accumulator of sums: double for the float dtypes, int64 otherwise.
template <typename T>
using acc_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, double, int64_t>;

template <typename T>
__device__ __forceinline__ acc_t<T> load_acc(const T* p) {
  return static_cast<acc_t<T>>(load_as(p));
}

// Integer arithmetic wraps modulo 2^64 (as the CPU's wrap_add / wrap_mul).
template <typename A>
__device__ __forceinline__ A add_acc(A a, A b) {
  if constexpr (std::is_integral_v<A>) return static_cast<A>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  else return a + b;
}
template <typename A>
__device__ __forceinline__ A mul_acc(A a, A b) {
  if constexpr (std::is_integral_v<A>) return static_cast<A>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
  else return a * b;
}

template <typename C>
__device__ __forceinline__ bool is_nan(C v) {
  if constexpr (std::is_floating_point_v<C>) return v != v;
  else return false;
}

__device__ __forceinline__ float exp_c(float v) { return expf(v); }
__device__ __forceinline__ double exp_c(double v) { return exp(v); }

// An accumulator (double or int64) converted to storage type To as the CPU's
// convert() does: to bool `!= 0`, float to integer by truncation through
// int64 (INT64_MIN for NaN and out of range), 16-bit floats through float.
template <typename To, typename V>
__device__ __forceinline__ To convert_acc(V v) {
  if constexpr (std::is_same_v<To, bool>) {
    return v != 0;
  } else if constexpr (std::is_integral_v<To> && std::is_floating_point_v<V>) {
    int64_t i = std::numeric_limits<int64_t>::min();
    if (v > -0x1p63 && v < 0x1p63) i = static_cast<int64_t>(v);
    return static_cast<To>(i);
  } else {
    return store_as<To>(v);
  }
}

// Writes v to element `off` of a buffer of dtype `dt` (Sum / Prod / Cumsum
// may write a wider dtype than they read: one switch per store instead of
// a kernel per pair of dtypes).
template <typename V>
__device__ void store_dyn(void* base, int64_t off, DType dt, V v) {
  switch (dt) {
    case DType::Float32: static_cast<float*>(base)[off] = convert_acc<float>(v); return;
    case DType::Float64: static_cast<double*>(base)[off] = convert_acc<double>(v); return;
    case DType::Float16: static_cast<__half*>(base)[off] = convert_acc<__half>(v); return;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(base)[off] = convert_acc<__nv_bfloat16>(v); return;
    case DType::Int32: static_cast<int32_t*>(base)[off] = convert_acc<int32_t>(v); return;
    case DType::Int64: static_cast<int64_t*>(base)[off] = convert_acc<int64_t>(v); return;
    case DType::UInt8: static_cast<uint8_t*>(base)[off] = convert_acc<uint8_t>(v); return;
    case DType::Bool: static_cast<bool*>(base)[off] = convert_acc<bool>(v); return;
    case DType::Int8: static_cast<int8_t*>(base)[off] = convert_acc<int8_t>(v); return;
  }
}

// ---- warp and group folds ----

template <typename V>
__device__ __forceinline__ V shfl_down(V v, int delta) {
  if constexpr (std::is_same_v<V, bool>) return __shfl_down_sync(kFullMask, static_cast<int>(v), delta) != 0;
  else if constexpr (std::is_integral_v<V> && sizeof(V) <= 4)
    return static_cast<V>(__shfl_down_sync(kFullMask, static_cast<int>(v), delta));
  else if constexpr (std::is_integral_v<V>)
    return static_cast<V>(__shfl_down_sync(kFullMask, static_cast<long long>(v), delta));
  else return __shfl_down_sync(kFullMask, v, delta);
}
template <typename V>
__device__ __forceinline__ V shfl_up(V v, int delta) {
  if constexpr (std::is_integral_v<V>) return static_cast<V>(__shfl_up_sync(kFullMask, static_cast<long long>(v), delta));
  else return __shfl_up_sync(kFullMask, v, delta);
}
template <typename V>
__device__ __forceinline__ V shfl_idx(V v, int lane) {
  if constexpr (std::is_same_v<V, bool>) return __shfl_sync(kFullMask, static_cast<int>(v), lane) != 0;
  else if constexpr (std::is_integral_v<V> && sizeof(V) <= 4)
    return static_cast<V>(__shfl_sync(kFullMask, static_cast<int>(v), lane));
  else if constexpr (std::is_integral_v<V>) return static_cast<V>(__shfl_sync(kFullMask, static_cast<long long>(v), lane));
  else return __shfl_sync(kFullMask, v, lane);
}

// ArgMax / ArgMin's accumulator: a value and its index in the row.
template <typename C>
struct ArgPair {
  C v;
  int64_t i;
};
template <typename C>
__device__ __forceinline__ ArgPair<C> shfl_down(ArgPair<C> p, int delta) {
  return {shfl_down(p.v, delta), shfl_down(p.i, delta)};
}
template <typename C>
__device__ __forceinline__ ArgPair<C> shfl_idx(ArgPair<C> p, int lane) {
  return {shfl_idx(p.v, lane), shfl_idx(p.i, lane)};
}

// Folds the 32 lanes' values; the result is valid in lane 0.
template <typename A, typename F>
__device__ __forceinline__ A warp_fold(A a, F combine) {
#pragma unroll
  for (int d = kWarp / 2; d > 0; d >>= 1) a = combine(a, shfl_down(a, d));
  return a;
}

// Folds over the W warps of a row group (Note [CUDA row kernels]) and hands
// every thread of the group the same result. W > 1 means the group is the
// whole block (W = kBlockWarps): `scratch` holds kBlockWarps values in
// shared memory, and every thread of the block must call this.
template <typename A, typename F>
__device__ __forceinline__ A group_fold(A a, F combine, int W, A* scratch) {
  a = warp_fold(a, combine);
  if (W == 1) return shfl_idx(a, 0);
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  if (threadIdx.x % kWarp == 0) scratch[warp] = a;
  __syncthreads();
  A r = scratch[0];
  for (int w = 1; w < W; ++w) r = combine(r, scratch[w]);
  __syncthreads();  // scratch is free again for the next fold
  return r;
}

struct AddFn {
  template <typename A>
  __device__ A operator()(A a, A b) const {
    return add_acc(a, b);
  }
};
// The CPU softmax's std::max: a NaN is kept only where it came first. (A
// NaN anywhere makes the row NaN either way, through the sum.)
struct MaxFn {
  template <typename A>
  __device__ A operator()(A a, A b) const {
    return a < b ? b : a;
  }
};

// Where a row group of W warps sits in the grid: the group's first row, the
// row stride of the grid-stride loop, and the thread's index in its group.
struct RowGroup {
  int W, threads, t;
  int64_t first, step;
};
__device__ __forceinline__ RowGroup row_group(int W) {
  const int warp = static_cast<int>(threadIdx.x) / kWarp, groups = kBlockWarps / W;
  RowGroup g;
  g.W = W;
  g.threads = W * kWarp;
  g.t = (warp % W) * kWarp + static_cast<int>(threadIdx.x) % kWarp;
  g.first = static_cast<int64_t>(blockIdx.x) * groups + warp / W;
  g.step = static_cast<int64_t>(gridDim.x) * groups;
  return g;
}
int warps_per_row(int64_t n) { return n <= kShortRow ? 1 : kBlockWarps; }
unsigned row_blocks(int64_t rows, int W) { return blocks_for(rows, kBlockWarps / W); }

// =====================================================================
// Reductions (Note [CUDA reductions])
// =====================================================================

enum class Red { Sum, Prod, Extreme, ArgExtreme };

// One reduction's fold: the accumulator A, its identity, how an element
// enters it, how two accumulators combine (associative and, but for the
// bits of a float sum, commutative), and how the result is stored.
template <typename T, Red K>
struct ReduceOp {
  using C = compute_t<T>;
  using A = std::conditional_t<K == Red::Sum || K == Red::Prod, acc_t<T>,
                               std::conditional_t<K == Red::Extreme, C, ArgPair<C>>>;
  bool want_max;  // Extreme / ArgExtreme: max (true) or min

  __device__ C worst() const {  // the extreme's identity
    using Lim = std::numeric_limits<C>;
    if constexpr (std::is_floating_point_v<C>) return want_max ? -Lim::infinity() : Lim::infinity();
    else return want_max ? Lim::lowest() : Lim::max();
  }
  __device__ A identity() const {
    if constexpr (K == Red::Sum) return A(0);
    else if constexpr (K == Red::Prod) return A(1);
    else if constexpr (K == Red::Extreme) return worst();
    else return {worst(), std::numeric_limits<int64_t>::max()};
  }
  __device__ A load(const T* p, int64_t k) const {
    if constexpr (K == Red::Sum || K == Red::Prod) return load_acc(p);
    else if constexpr (K == Red::Extreme) return static_cast<C>(load_as(p));
    else return {static_cast<C>(load_as(p)), k};
  }
  __device__ A operator()(A a, A b) const {
    if constexpr (K == Red::Sum) {
      return add_acc(a, b);
    } else if constexpr (K == Red::Prod) {
      return mul_acc(a, b);
    } else if constexpr (K == Red::Extreme) {
      // A NaN wins over every number (the CPU's extremum()).
      if (is_nan(a)) return a;
      if (is_nan(b)) return b;
      return (want_max ? b > a : b < a) ? b : a;
    } else {
      // A NaN wins over every number, the smaller index over an equal
      // value (or another NaN): the CPU's first-index rule, in any order.
      const bool an = is_nan(a.v), bn = is_nan(b.v);
      if (an || bn) {
        if (an && bn) return a.i <= b.i ? a : b;
        return an ? a : b;
      }
      if (want_max ? a.v > b.v : a.v < b.v) return a;
      if (want_max ? b.v > a.v : b.v < a.v) return b;
      return a.i <= b.i ? a : b;
    }
  }
  __device__ void store(void* y, int64_t off, DType out_dtype, A a) const {
    if constexpr (K == Red::Sum || K == Red::Prod) {
      store_dyn(y, off, out_dtype, a);
    } else if constexpr (K == Red::Extreme) {
      static_cast<T*>(y)[off] = store_as<T>(a);
    } else {
      // An empty row (refused by the ops layer) gives 0, as on the CPU.
      static_cast<int64_t*>(y)[off] = a.i == std::numeric_limits<int64_t>::max() ? 0 : a.i;
    }
  }
};

// A reduction's view of its call: in[0] as (rows, n), out[0] as (rows).
struct ReduceGeom {
  RowOperand in;
  Strided out;
  int64_t rows = 0, n = 0;
};
ReduceGeom reduce_geom(const KernelCall& c, int64_t n_reduced) {
  const TensorImpl *in = c.in[0], *out = c.out[0];
  ReduceGeom g;
  g.in = row_operand(in, n_reduced);
  g.out = make_strided(out->sizes.data(), out->strides.data(), out->dim());
  const RowCount rc = row_count(in, n_reduced);
  g.rows = rc.rows;
  g.n = rc.n;
  const int64_t kept = in->dim() - std::clamp<int64_t>(n_reduced, 0, in->dim());
  LOOM_ASSERT(out->sizes == Shape(in->sizes.begin(), in->sizes.begin() + kept), op_name(c.op), ": input ",
              shape_str(in->sizes), " reducing ", n_reduced, " trailing dims into output ", shape_str(out->sizes));
  return g;
}

enum class ReducePath { WarpRows, ThreadRows, BlockSplit };
struct ReducePlan {
  ReducePath path = ReducePath::WarpRows;
  int64_t chunks = 1;  // per row; > 1: partials in the workspace, then a fold
  int64_t chunk = 0;   // elements per chunk
};

// The path for a geometry (Note [CUDA reductions]): the shape alone decides.
ReducePlan plan_reduce(const ReduceGeom& g) {
  ReducePlan p;
  p.chunk = g.n;
  const Strided& inner = g.in.inner;
  const Strided& outer = g.in.outer;
  const bool inner_contiguous = inner.dims == 0 || (inner.dims == 1 && inner.strides[0] == 1);
  const bool outer_unit = outer.dims > 0 && outer.strides[outer.dims - 1] == 1;
  if (g.n < kWarp || (!inner_contiguous && outer_unit && g.rows >= kWarp)) {
    p.path = ReducePath::ThreadRows;
    // Aim for 64K threads, chunks of at least 64 elements.
    p.chunks = std::clamp<int64_t>(std::min(ceil_div(int64_t{1} << 16, g.rows), ceil_div(g.n, 64)), 1, 65535);
  } else if (g.rows < 2048 && g.n >= 4096) {
    p.path = ReducePath::BlockSplit;
    // Aim for 4096 blocks, chunks of at least 2048 elements.
    p.chunks = std::min(ceil_div(g.n, 2048), ceil_div(4096, g.rows));
    if (p.chunks <= 1) p.path = ReducePath::WarpRows;
  }
  if (p.chunks <= 1) {
    p.chunks = 1;
    return p;
  }
  p.chunk = ceil_div(g.n, p.chunks);
  p.chunks = ceil_div(g.n, p.chunk);  // no empty chunk
  return p;
}

// A partial result's slot: room for any accumulator (ArgPair<double> the largest).
struct alignas(16) PartialSlot {
  unsigned char bytes[16];
};

// The workspace of a reduction: its partials when the plan splits rows.
size_t reduce_workspace(const KernelCall& c, int64_t n_reduced) {
  const ReduceGeom g = reduce_geom(c, n_reduced);
  if (g.rows == 0) return 0;
  const ReducePlan p = plan_reduce(g);
  if (p.chunks <= 1) return 0;
  WorkspaceLayout ws;
  ws.take<PartialSlot>(g.rows * p.chunks);
  return ws.bytes();
}

template <typename T, Red K>
__global__ void __launch_bounds__(kBlock)
    reduce_warp_rows(const T* x, void* y, DType out_dtype, ReduceGeom g, ReduceOp<T, K> op) {
  using A = typename ReduceOp<T, K>::A;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kBlockWarps;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kBlockWarps + threadIdx.x / kWarp; r < g.rows; r += step) {
    const T* row = x + row_start(g.in, r);
    A a = op.identity();
    for (int64_t k = lane; k < g.n; k += kWarp) a = op(a, op.load(row + row_at(g.in, k), k));
    a = warp_fold(a, op);
    if (lane == 0) op.store(y, offset_of(g.out, r), out_dtype, a);
  }
}

// Thread r folds chunk blockIdx.y of row r in order; the result goes to the
// output, or to partial[r * chunks + chunk] when rows are split.
template <typename T, Red K>
__global__ void __launch_bounds__(kBlock)
    reduce_thread_rows(const T* x, void* y, DType out_dtype, ReduceGeom g, ReduceOp<T, K> op, int64_t chunk,
                       typename ReduceOp<T, K>::A* partial) {
  using A = typename ReduceOp<T, K>::A;
  const int64_t c = blockIdx.y, chunks = gridDim.y;
  const int64_t begin = c * chunk, end = min(g.n, begin + chunk);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < g.rows; r += step) {
    const T* row = x + row_start(g.in, r);
    A a = op.identity();
    for (int64_t k = begin; k < end; ++k) a = op(a, op.load(row + row_at(g.in, k), k));
    if (partial != nullptr) partial[r * chunks + c] = a;
    else op.store(y, offset_of(g.out, r), out_dtype, a);
  }
}

// Block (chunk blockIdx.x, row blockIdx.y) folds its chunk into partial[row * chunks + chunk].
template <typename T, Red K>
__global__ void __launch_bounds__(kBlock)
    reduce_block_split(const T* x, ReduceGeom g, ReduceOp<T, K> op, int64_t chunk, typename ReduceOp<T, K>::A* partial) {
  using A = typename ReduceOp<T, K>::A;
  __shared__ A scratch[kBlockWarps];
  const int64_t r = blockIdx.y, c = blockIdx.x;
  const int64_t begin = c * chunk, end = min(g.n, begin + chunk);
  const T* row = x + row_start(g.in, r);
  A a = op.identity();
  for (int64_t k = begin + threadIdx.x; k < end; k += kBlock) a = op(a, op.load(row + row_at(g.in, k), k));
  a = group_fold(a, op, kBlockWarps, scratch);
  if (threadIdx.x == 0) partial[r * gridDim.x + c] = a;
}

// A warp per row folds the row's `chunks` partials and stores the result.
template <typename T, Red K>
__global__ void __launch_bounds__(kBlock)
    reduce_partials(const typename ReduceOp<T, K>::A* partial, int64_t chunks, void* y, DType out_dtype, Strided out,
                    int64_t rows, ReduceOp<T, K> op) {
  using A = typename ReduceOp<T, K>::A;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kBlockWarps;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kBlockWarps + threadIdx.x / kWarp; r < rows; r += step) {
    A a = op.identity();
    for (int64_t c = lane; c < chunks; c += kWarp) a = op(a, partial[r * chunks + c]);
    a = warp_fold(a, op);
    if (lane == 0) op.store(y, offset_of(out, r), out_dtype, a);
  }
}

template <Red K>
void run_reduce(const KernelCall& c, int64_t n_reduced, bool want_max) {
  const TensorImpl *in = c.in[0], *out = c.out[0];
  const ReduceGeom g = reduce_geom(c, n_reduced);
  if (g.rows == 0) return;
  const ReducePlan p = plan_reduce(g);
  DeviceGuard guard(in->device().index);
  const Launch l = launch_of(c);
  WorkspaceLayout ws = carve(c);
  PartialSlot* slots = p.chunks > 1 ? ws.take<PartialSlot>(g.rows * p.chunks) : nullptr;
  dispatch_all(in->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Op = ReduceOp<T, K>;
    using A = typename Op::A;
    static_assert(sizeof(A) <= sizeof(PartialSlot));
    const Op op{want_max};
    const T* x = data_of<T>(in);
    void* y = out->data();
    A* partial = reinterpret_cast<A*>(slots);
    switch (p.path) {
      case ReducePath::WarpRows:
        reduce_warp_rows<T, K><<<blocks_for(g.rows, kBlockWarps), kBlock, 0, l.stream>>>(x, y, out->dtype, g, op);
        break;
      case ReducePath::ThreadRows: {
        const dim3 grid(blocks_for(g.rows, kBlock), static_cast<unsigned>(p.chunks));
        reduce_thread_rows<T, K><<<grid, kBlock, 0, l.stream>>>(x, y, out->dtype, g, op, p.chunk, partial);
        break;
      }
      case ReducePath::BlockSplit: {
        const dim3 grid(static_cast<unsigned>(p.chunks), static_cast<unsigned>(g.rows));
        reduce_block_split<T, K><<<grid, kBlock, 0, l.stream>>>(x, g, op, p.chunk, partial);
        break;
      }
    }
    LOOM_CUDA_CHECK_LAUNCH();
    if (p.chunks > 1) {
      reduce_partials<T, K><<<blocks_for(g.rows, kBlockWarps), kBlock, 0, l.stream>>>(partial, p.chunks, y, out->dtype,
                                                                                     g.out, g.rows, op);
      LOOM_CUDA_CHECK_LAUNCH();
    }
  });
}

void Sum(const KernelCall& c) { run_reduce<Red::Sum>(c, c.i[0], false); }
void Prod(const KernelCall& c) { run_reduce<Red::Prod>(c, c.i[0], false); }
void check_same_dtype(const KernelCall& c) {
  LOOM_ASSERT(c.out[0]->dtype == c.in[0]->dtype, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
}
void Amax(const KernelCall& c) {
  check_same_dtype(c);
  run_reduce<Red::Extreme>(c, c.i[0], true);
}
void Amin(const KernelCall& c) {
  check_same_dtype(c);
  run_reduce<Red::Extreme>(c, c.i[0], false);
}
void check_int64_out(const KernelCall& c) {
  LOOM_ASSERT(c.out[0]->dtype == kInt64, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
}
// ArgMax / ArgMin reduce exactly one trailing dim (ops.def).
void ArgMax(const KernelCall& c) {
  check_int64_out(c);
  run_reduce<Red::ArgExtreme>(c, 1, true);
}
void ArgMin(const KernelCall& c) {
  check_int64_out(c);
  run_reduce<Red::ArgExtreme>(c, 1, false);
}

size_t SumWorkspace(const KernelCall& c) { return reduce_workspace(c, c.i[0]); }
size_t ArgWorkspace(const KernelCall& c) { return reduce_workspace(c, 1); }

// =====================================================================
// Row-wise ops along the last dim: Softmax, LogSoftmax, Cumsum and the
// softmax backwards (Note [CUDA row kernels])
// =====================================================================

// Softmax (log = false) or LogSoftmax of each row: the max first (in C, as
// exact as the CPU's double), then sum(exp(x - max)) in double, then y. A
// row holding NaN or +inf, or all -inf, comes out NaN, as on the CPU.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    softmax_rows(const T* x, T* y, RowOperand in, RowOperand out, int64_t rows, int64_t n, int W, bool log) {
  using C = compute_t<T>;
  __shared__ C scratch_c[kBlockWarps];
  __shared__ double scratch_d[kBlockWarps];
  const RowGroup G = row_group(W);
  for (int64_t r = G.first; r < rows; r += G.step) {
    const T* xr = x + row_start(in, r);
    T* yr = y + row_start(out, r);
    C m = -std::numeric_limits<C>::infinity();
    for (int64_t j = G.t; j < n; j += G.threads) m = MaxFn{}(m, load_as(xr + row_at(in, j)));
    m = group_fold(m, MaxFn{}, W, scratch_c);
    double s = 0;
    for (int64_t j = G.t; j < n; j += G.threads) s += static_cast<double>(exp_c(load_as(xr + row_at(in, j)) - m));
    s = group_fold(s, AddFn{}, W, scratch_d);
    // Each element is read before it is written (by the same thread), so y may alias x.
    if (log) {
      const C log_sum = static_cast<C>(::log(s));
      for (int64_t j = G.t; j < n; j += G.threads)
        yr[row_at(out, j)] = store_as<T>((load_as(xr + row_at(in, j)) - m) - log_sum);
    } else {
      const C inv = static_cast<C>(1.0 / s);
      for (int64_t j = G.t; j < n; j += G.threads)
        yr[row_at(out, j)] = store_as<T>(exp_c(load_as(xr + row_at(in, j)) - m) * inv);
    }
  }
}

// SoftmaxBackward: dx = y * (g - sum(g * y)); LogSoftmaxBackward (log):
// dx = g - exp(y) * sum(g). The sum in double.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    softmax_backward_rows(const T* g, const T* y, T* dx, RowOperand og, RowOperand oy, RowOperand od, int64_t rows,
                          int64_t n, int W, bool log) {
  using C = compute_t<T>;
  __shared__ double scratch[kBlockWarps];
  const RowGroup G = row_group(W);
  for (int64_t r = G.first; r < rows; r += G.step) {
    const T* gr = g + row_start(og, r);
    const T* yr = y + row_start(oy, r);
    T* dr = dx + row_start(od, r);
    double s = 0;
    for (int64_t j = G.t; j < n; j += G.threads) {
      const C gj = load_as(gr + row_at(og, j));
      s += static_cast<double>(log ? gj : gj * load_as(yr + row_at(oy, j)));
    }
    const C sc = static_cast<C>(group_fold(s, AddFn{}, W, scratch));
    for (int64_t j = G.t; j < n; j += G.threads) {
      const C gj = load_as(gr + row_at(og, j)), yj = load_as(yr + row_at(oy, j));
      dr[row_at(od, j)] = store_as<T>(log ? gj - exp_c(yj) * sc : yj * (gj - sc));
    }
  }
}

// Running sum of each row in the accumulator type (double / int64), written
// in out's dtype. A group scans the row in tiles of W * 32 * kScanItems
// elements: each thread folds kScanItems consecutive elements, the warps
// scan their threads' totals with shuffles, the tile's warps are combined
// through shared memory, and a carry runs from tile to tile.
constexpr int kScanItems = 4;
template <typename T>
__global__ void __launch_bounds__(kBlock)
    cumsum_rows(const T* x, void* y, DType out_dtype, RowOperand in, RowOperand out, int64_t rows, int64_t n, int W) {
  using A = acc_t<T>;
  __shared__ A warp_totals[kBlockWarps];
  const RowGroup G = row_group(W);
  const int lane = static_cast<int>(threadIdx.x) % kWarp, wig = G.t / kWarp;  // warp in group
  const int64_t tile = static_cast<int64_t>(G.threads) * kScanItems;
  for (int64_t r = G.first; r < rows; r += G.step) {
    const T* xr = x + row_start(in, r);
    const int64_t yr = row_start(out, r);
    A carry = 0;
    for (int64_t base = 0; base < n; base += tile) {
      const int64_t first = base + static_cast<int64_t>(G.t) * kScanItems;
      A v[kScanItems];
      A local = 0;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        const int64_t j = first + i;
        local = add_acc(local, j < n ? load_acc(xr + row_at(in, j)) : A(0));
        v[i] = local;  // inclusive prefix within the thread
      }
      A s = local;  // inclusive scan over the warp's threads
#pragma unroll
      for (int d = 1; d < kWarp; d <<= 1) {
        const A o = shfl_up(s, d);
        if (lane >= d) s = add_acc(s, o);
      }
      A before = shfl_up(s, 1);  // exclusive: what the warp's earlier threads hold
      if (lane == 0) before = 0;
      A warp_prefix = 0, tile_total;
      if (W == 1) {
        tile_total = shfl_idx(s, kWarp - 1);
      } else {
        if (lane == kWarp - 1) warp_totals[wig] = s;
        __syncthreads();
        tile_total = 0;
        for (int w = 0; w < W; ++w) {
          if (w < wig) warp_prefix = add_acc(warp_prefix, warp_totals[w]);
          tile_total = add_acc(tile_total, warp_totals[w]);
        }
        __syncthreads();
      }
      const A offset = add_acc(add_acc(carry, warp_prefix), before);
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        const int64_t j = first + i;
        if (j < n) store_dyn(y, yr + row_at(out, j), out_dtype, add_acc(offset, v[i]));
      }
      carry = add_acc(carry, tile_total);
    }
  }
}

// The rows of a last-dim op: in[0] and out[0] of one shape.
void check_rows(const KernelCall& c, const TensorImpl* a, const TensorImpl* b) {
  LOOM_ASSERT(a->sizes == b->sizes, op_name(c.op), ": ", shape_str(a->sizes), " vs ", shape_str(b->sizes));
}

void softmax_like(const KernelCall& c, bool log) {
  const TensorImpl *in = c.in[0], *out = c.out[0];
  check_rows(c, in, out);
  check_same_dtype(c);
  const RowCount rc = row_count(in, 1);
  if (rc.rows * rc.n == 0) return;
  const RowOperand oi = row_operand(in, 1), oo = row_operand(out, 1);
  DeviceGuard guard(in->device().index);
  const Launch l = launch_of(c);
  const int W = warps_per_row(rc.n);
  dispatch_float(in->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_rows<T><<<row_blocks(rc.rows, W), kBlock, 0, l.stream>>>(data_of<T>(in), data_of<T>(out), oi, oo, rc.rows,
                                                                    rc.n, W, log);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}
void Softmax(const KernelCall& c) { softmax_like(c, false); }
void LogSoftmax(const KernelCall& c) { softmax_like(c, true); }

void softmax_backward(const KernelCall& c, bool log) {
  const TensorImpl *g = c.in[0], *y = c.in[1], *dx = c.out[0];
  check_rows(c, g, y);
  check_rows(c, g, dx);
  LOOM_ASSERT(g->dtype == y->dtype && g->dtype == dx->dtype, op_name(c.op), ": mixed dtypes");
  const RowCount rc = row_count(g, 1);
  if (rc.rows * rc.n == 0) return;
  const RowOperand og = row_operand(g, 1), oy = row_operand(y, 1), od = row_operand(dx, 1);
  DeviceGuard guard(g->device().index);
  const Launch l = launch_of(c);
  const int W = warps_per_row(rc.n);
  dispatch_float(g->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_backward_rows<T><<<row_blocks(rc.rows, W), kBlock, 0, l.stream>>>(
        data_of<T>(g), data_of<T>(y), data_of<T>(dx), og, oy, od, rc.rows, rc.n, W, log);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}
void SoftmaxBackward(const KernelCall& c) { softmax_backward(c, false); }
void LogSoftmaxBackward(const KernelCall& c) { softmax_backward(c, true); }

void Cumsum(const KernelCall& c) {
  const TensorImpl *in = c.in[0], *out = c.out[0];
  check_rows(c, in, out);
  const RowCount rc = row_count(in, 1);
  if (rc.rows * rc.n == 0) return;
  const RowOperand oi = row_operand(in, 1), oo = row_operand(out, 1);
  DeviceGuard guard(in->device().index);
  const Launch l = launch_of(c);
  // A warp scans 128 elements a tile: enough for short rows.
  const int W = rc.n <= kWarp * kScanItems ? 1 : kBlockWarps;
  dispatch_all(in->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cumsum_rows<T><<<row_blocks(rc.rows, W), kBlock, 0, l.stream>>>(data_of<T>(in), out->data(), out->dtype, oi, oo,
                                                                    rc.rows, rc.n, W);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

// =====================================================================
// LayerNorm, LayerNormBackward
// =====================================================================

// Per row: the mean, then the mean squared deviation, both in double (the
// CPU reference's two passes), rstd = 1 / sqrt(var + eps); y in C. stats
// (contiguous (rows, 2)) gets each row's mean and rstd in x's dtype.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_rows(const T* x, const T* w, const T* b, T* y, T* stats, RowOperand ox, RowOperand oy, int64_t rows,
                    int64_t n, double eps, int W) {
  using C = compute_t<T>;
  __shared__ double scratch[kBlockWarps];
  const RowGroup G = row_group(W);
  for (int64_t r = G.first; r < rows; r += G.step) {
    const T* xr = x + row_start(ox, r);
    T* yr = y + row_start(oy, r);
    double s = 0;
    for (int64_t j = G.t; j < n; j += G.threads) s += static_cast<double>(load_as(xr + row_at(ox, j)));
    const double mean = group_fold(s, AddFn{}, W, scratch) / static_cast<double>(n);
    double v = 0;
    for (int64_t j = G.t; j < n; j += G.threads) {
      const double d = static_cast<double>(load_as(xr + row_at(ox, j))) - mean;
      v += d * d;
    }
    const double var = group_fold(v, AddFn{}, W, scratch) / static_cast<double>(n);
    const double rstd = 1.0 / sqrt(var + eps);
    const C cm = static_cast<C>(mean), cr = static_cast<C>(rstd);
    for (int64_t j = G.t; j < n; j += G.threads) {
      C o = (load_as(xr + row_at(ox, j)) - cm) * cr;
      if (w != nullptr) o *= load_as(w + j);
      if (b != nullptr) o += load_as(b + j);
      yr[row_at(oy, j)] = store_as<T>(o);
    }
    if (G.t == 0) {
      stats[2 * r] = store_as<T>(mean);
      stats[2 * r + 1] = store_as<T>(rstd);
    }
  }
}

// dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)) per row, gw = g * w,
// xhat = (x - mean) * rstd from the forward's stats; the two sums in double.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_backward_rows(const T* g, const T* x, const T* stats, const T* w, T* dx, RowOperand og, RowOperand ox,
                             RowOperand od, int64_t rows, int64_t n, int W) {
  using C = compute_t<T>;
  __shared__ double scratch[kBlockWarps];
  const RowGroup G = row_group(W);
  for (int64_t r = G.first; r < rows; r += G.step) {
    const T* gr = g + row_start(og, r);
    const T* xr = x + row_start(ox, r);
    T* dr = dx + row_start(od, r);
    const C mean = load_as(stats + 2 * r), rstd = load_as(stats + 2 * r + 1);
    double sa = 0, sb = 0;
    for (int64_t j = G.t; j < n; j += G.threads) {
      C gw = load_as(gr + row_at(og, j));
      if (w != nullptr) gw *= load_as(w + j);
      const C xh = (load_as(xr + row_at(ox, j)) - mean) * rstd;
      sa += static_cast<double>(gw);
      sb += static_cast<double>(gw * xh);
    }
    const C a = static_cast<C>(group_fold(sa, AddFn{}, W, scratch) / static_cast<double>(n));
    const C bb = static_cast<C>(group_fold(sb, AddFn{}, W, scratch) / static_cast<double>(n));
    for (int64_t j = G.t; j < n; j += G.threads) {
      C gw = load_as(gr + row_at(og, j));
      if (w != nullptr) gw *= load_as(w + j);
      const C xh = (load_as(xr + row_at(ox, j)) - mean) * rstd;
      dr[row_at(od, j)] = store_as<T>(rstd * (gw - a - xh * bb));
    }
  }
}

// Note [CUDA LayerNorm weight gradient]
// dweight[j] = sum over rows of g * xhat and dbias[j] = sum of g, in double:
// the rows are cut into `chunks` chunks; a block takes 32 columns of one
// chunk (a warp reads 32 neighbouring columns of a row, the block's 8 warps
// every 8th row), folds its 8 warps' sums in order and writes the chunk's
// partial sums (chunks, 2, n) to the workspace; a second kernel adds each
// column's chunk partials in chunk order. The split depends on (m, n) only.
struct WbPlan {
  int64_t chunks = 1, rows_per_chunk = 1;
};
WbPlan plan_layer_norm_wb(int64_t m, int64_t n) {
  const int64_t col_tiles = ceil_div(n, kWarp);
  int64_t chunks = std::min(ceil_div(m, kWarp), std::max<int64_t>(1, ceil_div(2048, col_tiles)));
  chunks = std::clamp<int64_t>(chunks, 1, 65535);
  WbPlan p;
  p.rows_per_chunk = ceil_div(m, chunks);
  p.chunks = ceil_div(m, p.rows_per_chunk);
  return p;
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    layer_norm_wb_chunks(const T* g, const T* x, const T* stats, RowOperand og, RowOperand ox, int64_t m, int64_t n,
                         int64_t rows_per_chunk, double* partial) {
  using C = compute_t<T>;
  __shared__ double sw_s[kBlockWarps][kWarp], sb_s[kBlockWarps][kWarp];
  const int lane = static_cast<int>(threadIdx.x) % kWarp, warp = static_cast<int>(threadIdx.x) / kWarp;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarp + lane, chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = min(m, r0 + rows_per_chunk);
  double sw = 0, sb = 0;
  if (j < n) {
    const int64_t gj = row_at(og, j), xj = row_at(ox, j);
    for (int64_t r = r0 + warp; r < r1; r += kBlockWarps) {
      const C gv = load_as(g + row_start(og, r) + gj);
      const C xh = (load_as(x + row_start(ox, r) + xj) - load_as(stats + 2 * r)) * load_as(stats + 2 * r + 1);
      sw += static_cast<double>(gv * xh);
      sb += static_cast<double>(gv);
    }
  }
  sw_s[warp][lane] = sw;
  sb_s[warp][lane] = sb;
  __syncthreads();
  if (warp == 0 && j < n) {
    double tw = 0, tb = 0;
    for (int k = 0; k < kBlockWarps; ++k) {
      tw += sw_s[k][lane];
      tb += sb_s[k][lane];
    }
    partial[(chunk * 2) * n + j] = tw;
    partial[(chunk * 2 + 1) * n + j] = tb;
  }
}

// dwb (contiguous (2, n)) [k] = the sum over chunks of partial[chunk][k].
template <typename T>
__global__ void __launch_bounds__(kBlock) layer_norm_wb_sum(const double* partial, int64_t chunks, int64_t n2, T* dwb) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n2;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * n2 + k];
    dwb[k] = store_as<T>(s);
  }
}

void LayerNorm(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.i[1] ? c.in[1] : nullptr, *b = c.i[2] ? c.in[2] : nullptr;
  const TensorImpl *y = c.out[0], *stats = c.out[1];
  LOOM_ASSERT(x->sizes == y->sizes && x->dtype == y->dtype && stats->dtype == x->dtype, "LayerNorm: x ",
              shape_str(x->sizes), " y ", shape_str(y->sizes));
  LOOM_ASSERT(stats->is_contiguous() && (!w || w->is_contiguous()) && (!b || b->is_contiguous()),
              "LayerNorm: stats, weight and bias must be contiguous");
  const RowCount rc = row_count(x, c.i[0]);
  if (rc.rows * rc.n == 0) return;
  const RowOperand ox = row_operand(x, c.i[0]), oy = row_operand(y, c.i[0]);
  DeviceGuard guard(x->device().index);
  const Launch l = launch_of(c);
  const int W = warps_per_row(rc.n);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    layer_norm_rows<T><<<row_blocks(rc.rows, W), kBlock, 0, l.stream>>>(
        data_of<T>(x), w ? data_of<T>(w) : nullptr, b ? data_of<T>(b) : nullptr, data_of<T>(y), data_of<T>(stats), ox,
        oy, rc.rows, rc.n, c.f[0], W);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

size_t LayerNormBackwardWorkspace(const KernelCall& c) {
  if (c.out.size() < 2) return 0;
  const RowCount rc = row_count(c.in[1], c.i[0]);
  if (rc.rows * rc.n == 0) return 0;
  const WbPlan p = plan_layer_norm_wb(rc.rows, rc.n);
  WorkspaceLayout ws;
  ws.take<double>(p.chunks * 2 * rc.n);
  return ws.bytes();
}

void LayerNormBackward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *stats = c.in[2], *w = c.i[1] ? c.in[3] : nullptr;
  const TensorImpl *dx = c.out[0], *dwb = c.out.size() > 1 ? c.out[1] : nullptr;
  LOOM_ASSERT(g->sizes == x->sizes && dx->sizes == x->sizes, "LayerNormBackward: grad ", shape_str(g->sizes), " x ",
              shape_str(x->sizes));
  LOOM_ASSERT(stats->is_contiguous() && (!w || w->is_contiguous()) && (!dwb || dwb->is_contiguous()),
              "LayerNormBackward: stats, weight and the weight / bias gradient must be contiguous");
  DeviceGuard guard(x->device().index);
  const Launch l = launch_of(c);
  const RowCount rc = row_count(x, c.i[0]);
  if (rc.rows * rc.n == 0) {
    // No rows: the parameter gradients are sums of nothing (zero bits are 0.0 in every float dtype).
    if (dwb && dwb->numel() > 0)
      LOOM_CUDA_CHECK(cudaMemsetAsync(dwb->data(), 0, static_cast<size_t>(dwb->numel()) * element_size(dwb->dtype),
                                      l.stream));
    return;
  }
  const RowOperand og = row_operand(g, c.i[0]), ox = row_operand(x, c.i[0]), od = row_operand(dx, c.i[0]);
  const int W = warps_per_row(rc.n);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    layer_norm_backward_rows<T><<<row_blocks(rc.rows, W), kBlock, 0, l.stream>>>(
        data_of<T>(g), data_of<T>(x), data_of<T>(stats), w ? data_of<T>(w) : nullptr, data_of<T>(dx), og, ox, od,
        rc.rows, rc.n, W);
    LOOM_CUDA_CHECK_LAUNCH();
    if (!dwb) return;
    const WbPlan p = plan_layer_norm_wb(rc.rows, rc.n);
    WorkspaceLayout ws = carve(c);
    double* partial = ws.take<double>(p.chunks * 2 * rc.n);
    const dim3 grid(static_cast<unsigned>(ceil_div(rc.n, kWarp)), static_cast<unsigned>(p.chunks));
    layer_norm_wb_chunks<T><<<grid, kBlock, 0, l.stream>>>(data_of<T>(g), data_of<T>(x), data_of<T>(stats), og, ox,
                                                           rc.rows, rc.n, p.rows_per_chunk, partial);
    LOOM_CUDA_CHECK_LAUNCH();
    layer_norm_wb_sum<T><<<blocks_for(2 * rc.n, kBlock), kBlock, 0, l.stream>>>(partial, p.chunks, 2 * rc.n,
                                                                               data_of<T>(dwb));
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

// =====================================================================
// CrossEntropy, CrossEntropyBackward
// =====================================================================

// A class target (int64, or int32 as the CPU also takes) at element `off`.
__device__ __forceinline__ int64_t load_target(const void* t, bool t32, int64_t off) {
  return t32 ? static_cast<int64_t>(static_cast<const int32_t*>(t)[off]) : static_cast<const int64_t*>(t)[off];
}

// Per row of logits x (N, C): lse = max + log(sum(exp(x - max))) (the sum in
// double); loss = lse - (1 - s) x[t] - (s / C) sum(x), 0 where t is
// ignore_index. A target outside [0, C) is not read: its row index goes to
// *bad_row (the smallest wins) for the host to report.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_rows(const T* x, const void* t, bool t32, T* loss, T* lse, RowOperand ox, Strided ot, Strided ol,
                       Strided oz, int64_t rows, int64_t classes, double s, int64_t ignore, int W,
                       unsigned long long* bad_row) {
  using C = compute_t<T>;
  __shared__ C scratch_c[kBlockWarps];
  __shared__ double scratch_d[kBlockWarps];
  const RowGroup G = row_group(W);
  for (int64_t r = G.first; r < rows; r += G.step) {
    const T* xr = x + row_start(ox, r);
    C m = -std::numeric_limits<C>::infinity();
    for (int64_t j = G.t; j < classes; j += G.threads) m = MaxFn{}(m, load_as(xr + row_at(ox, j)));
    m = group_fold(m, MaxFn{}, W, scratch_c);
    double e = 0, sum_x = 0;
    for (int64_t j = G.t; j < classes; j += G.threads) {
      const C v = load_as(xr + row_at(ox, j));
      e += static_cast<double>(exp_c(v - m));
      sum_x += static_cast<double>(v);
    }
    e = group_fold(e, AddFn{}, W, scratch_d);
    sum_x = group_fold(sum_x, AddFn{}, W, scratch_d);
    if (G.t == 0) {
      const double z = static_cast<double>(m) + ::log(e);
      lse[offset_of(oz, r)] = store_as<T>(z);
      const int64_t target = load_target(t, t32, offset_of(ot, r));
      double l = 0;
      if (target != ignore) {
        if (target < 0 || target >= classes) {
          atomicMin(bad_row, static_cast<unsigned long long>(r));
          l = std::numeric_limits<double>::quiet_NaN();
        } else {
          l = z - (1 - s) * static_cast<double>(load_as(xr + row_at(ox, target)));
          if (s != 0) l -= s / static_cast<double>(classes) * sum_x;
        }
      }
      loss[offset_of(ol, r)] = store_as<T>(l);
    }
  }
}

// dx = g * (softmax(x) - (1 - s) onehot(t) - s / C) per row, 0 where t is
// ignore_index; softmax from the forward's lse.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_backward_rows(const T* g, const T* x, const void* t, bool t32, const T* lse, T* dx, Strided og,
                                RowOperand ox, Strided ot, Strided oz, RowOperand od, int64_t rows, int64_t classes,
                                double s, int64_t ignore, int W) {
  using C = compute_t<T>;
  const RowGroup G = row_group(W);
  const C smooth = static_cast<C>(s / static_cast<double>(classes)), hit = static_cast<C>(1 - s);
  for (int64_t r = G.first; r < rows; r += G.step) {
    const T* xr = x + row_start(ox, r);
    T* dr = dx + row_start(od, r);
    const int64_t target = load_target(t, t32, offset_of(ot, r));
    if (target == ignore) {
      for (int64_t j = G.t; j < classes; j += G.threads) dr[row_at(od, j)] = store_as<T>(C(0));
      continue;
    }
    const C scale = load_as(g + offset_of(og, r)), z = load_as(lse + offset_of(oz, r));
    for (int64_t j = G.t; j < classes; j += G.threads) {
      C d = exp_c(load_as(xr + row_at(ox, j)) - z) - smooth;
      if (j == target) d -= hit;
      dr[row_at(od, j)] = store_as<T>(scale * d);
    }
  }
}

Strided strided_1d(const TensorImpl* t) { return make_strided(t->sizes.data(), t->strides.data(), t->dim()); }

size_t CrossEntropyWorkspace(const KernelCall&) {
  WorkspaceLayout ws;
  ws.take<unsigned long long>(1);
  return ws.bytes();
}

// Note [CUDA cross entropy targets]
// As on the CPU, a target outside [0, C) (other than ignore_index) is an
// error naming the class, reported as Note [CUDA index errors]
// (cuda_index.cu) reports a bad index: the forward kernel atomicMin's the
// row of each bad target into a workspace flag (never reading x there), and
// the host reads the flag back, which waits for the stream (the one
// synchronization of this file). The outputs are fresh tensors the error
// discards. The backward does not check again: its targets are the
// forward's, and it never indexes memory with them.
void CrossEntropy(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *t = c.in[1];
  const TensorImpl *loss = c.out[0], *lse = c.out[1];
  LOOM_ASSERT(x->dim() == 2 && t->dim() == 1 && t->sizes[0] == x->sizes[0], "CrossEntropy: logits ",
              shape_str(x->sizes), ", targets ", shape_str(t->sizes));
  LOOM_ASSERT(t->dtype == kInt64 || t->dtype == kInt32, "CrossEntropy: targets of dtype ", dtype_name(t->dtype));
  const int64_t rows = x->sizes[0], classes = x->sizes[1];
  if (rows == 0) return;
  const RowOperand ox = row_operand(x, 1);
  const Strided ot = strided_1d(t), ol = strided_1d(loss), oz = strided_1d(lse);
  DeviceGuard guard(x->device().index);
  const Launch l = launch_of(c);
  WorkspaceLayout ws = carve(c);
  auto* bad = ws.take<unsigned long long>(1);
  LOOM_CUDA_CHECK(cudaMemsetAsync(bad, 0xff, sizeof(unsigned long long), l.stream));
  const int W = warps_per_row(classes);
  const bool t32 = t->dtype == kInt32;
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cross_entropy_rows<T><<<row_blocks(rows, W), kBlock, 0, l.stream>>>(data_of<T>(x), t->data(), t32,
                                                                       data_of<T>(loss), data_of<T>(lse), ox, ot, ol,
                                                                       oz, rows, classes, c.f[0], c.i[0], W, bad);
    LOOM_CUDA_CHECK_LAUNCH();
  });
  unsigned long long bad_row = 0;
  LOOM_CUDA_CHECK(cudaMemcpyAsync(&bad_row, bad, sizeof bad_row, cudaMemcpyDeviceToHost, l.stream));
  LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
  if (bad_row == ~0ull) return;
  // The offending class, for the message.
  const char* at = t->data() + static_cast<int64_t>(bad_row) * t->strides[0] * static_cast<int64_t>(element_size(t->dtype));
  int64_t value = 0;
  int32_t value32 = 0;
  LOOM_CUDA_CHECK(cudaMemcpyAsync(t32 ? static_cast<void*>(&value32) : static_cast<void*>(&value), at,
                                  t32 ? sizeof value32 : sizeof value, cudaMemcpyDeviceToHost, l.stream));
  LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
  if (t32) value = value32;
  LOOM_ERROR("cross_entropy: target class ", value, " is out of range [0, ", classes, ")");
}

void CrossEntropyBackward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *t = c.in[2], *lse = c.in[3];
  const TensorImpl* dx = c.out[0];
  LOOM_ASSERT(x->dim() == 2 && dx->sizes == x->sizes, "CrossEntropyBackward: logits ", shape_str(x->sizes),
              ", result ", shape_str(dx->sizes));
  LOOM_ASSERT(t->dtype == kInt64 || t->dtype == kInt32, "CrossEntropyBackward: targets of dtype ",
              dtype_name(t->dtype));
  const int64_t rows = x->sizes[0], classes = x->sizes[1];
  if (rows * classes == 0) return;
  const RowOperand ox = row_operand(x, 1), od = row_operand(dx, 1);
  const Strided og = strided_1d(g), ot = strided_1d(t), oz = strided_1d(lse);
  DeviceGuard guard(x->device().index);
  const Launch l = launch_of(c);
  const int W = warps_per_row(classes);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cross_entropy_backward_rows<T><<<row_blocks(rows, W), kBlock, 0, l.stream>>>(
        data_of<T>(g), data_of<T>(x), t->data(), t->dtype == kInt32, data_of<T>(lse), data_of<T>(dx), og, ox, ot, oz, od,
        rows, classes, c.f[0], c.i[0], W);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void register_reduce(Backend& b) {
  const auto add = [&b](OpKind op, KernelFn fn, WorkspaceFn ws) {
    b.kernels[static_cast<int>(op)] = fn;
    b.workspace[static_cast<int>(op)] = ws;
  };
  add(OpKind::Sum, &Sum, &SumWorkspace);
  add(OpKind::Prod, &Prod, &SumWorkspace);
  add(OpKind::Amax, &Amax, &SumWorkspace);
  add(OpKind::Amin, &Amin, &SumWorkspace);
  add(OpKind::ArgMax, &ArgMax, &ArgWorkspace);
  add(OpKind::ArgMin, &ArgMin, &ArgWorkspace);
  add(OpKind::Cumsum, &Cumsum, nullptr);
  add(OpKind::Softmax, &Softmax, nullptr);
  add(OpKind::LogSoftmax, &LogSoftmax, nullptr);
  add(OpKind::SoftmaxBackward, &SoftmaxBackward, nullptr);
  add(OpKind::LogSoftmaxBackward, &LogSoftmaxBackward, nullptr);
  add(OpKind::LayerNorm, &LayerNorm, nullptr);
  add(OpKind::LayerNormBackward, &LayerNormBackward, &LayerNormBackwardWorkspace);
  add(OpKind::CrossEntropy, &CrossEntropy, &CrossEntropyWorkspace);
  add(OpKind::CrossEntropyBackward, &CrossEntropyBackward, nullptr);
  // Dtype coverage as the CPU's (cpu_register.cpp): every dtype for the
  // reductions and cumsum, the float dtypes for the rest.
  for (OpKind op : {OpKind::Sum, OpKind::Prod, OpKind::Amax, OpKind::Amin, OpKind::ArgMax, OpKind::ArgMin, OpKind::Cumsum})
    set_supported(op, {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool, kInt8});
  for (OpKind op : {OpKind::Softmax, OpKind::LogSoftmax, OpKind::SoftmaxBackward, OpKind::LogSoftmaxBackward,
                    OpKind::LayerNorm, OpKind::LayerNormBackward, OpKind::CrossEntropy, OpKind::CrossEntropyBackward})
    set_supported(op, {kFloat32, kFloat64, kFloat16, kBFloat16});
}

}  // namespace loom::cuda_detail
