// Reductions (Sum, Prod, Amax, Amin, ArgMax, ArgMin) and row-wise ops
// (Softmax, LogSoftmax, Cumsum).
//
// Reductions: in[0] has shape (outer..., reduced...) with the i[0] trailing
// dims reduced; out[0] has shape (outer...). ArgMax/ArgMin reduce exactly one
// trailing dim. Row-wise ops work along the last dim; a 0-dim tensor is one
// row of length 1. Threads split the outer elements (rows), never a single
// sum, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/workspace.h"
#include "backend/cpu/cpu_vec.h"

namespace loom::cpu {
namespace {

// Outer elements per parallel chunk when each one costs `work` inner steps.
int64_t rows_grain(int64_t work) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(work, 1)); }

// Folds the trailing `n_reduced` dims of in[0] (storage type T) with
// acc = step(acc, x) from `init`, and hands each result to
// store(out_offset, acc), out[0] having shape (outer...).
template <typename T, typename Acc, typename Step, typename Store>
void reduce_trailing(const KernelCall& c, int64_t n_reduced, Acc init, Step step, Store store) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  const OuterInner s = split_trailing(in, n_reduced);
  LOOM_ASSERT(out->sizes == s.outer_sizes, op_name(c.op), ": input ", shape_str(in->sizes), " reducing ", n_reduced,
              " trailing dims into output ", shape_str(out->sizes));
  const LoopShape<2> outer = make_loop<2>(s.outer_sizes, {&out->strides, &s.outer_strides});
  const LoopShape<1> inner = make_loop<1>(s.inner_sizes, {&s.inner_strides});
  const T* x = data_ptr<T>(in);
  parallel_for(0, outer.numel, rows_grain(inner.numel), [&](int64_t b, int64_t e) {
    for_each_offset<2>(outer, b, e, [&](const Offsets2& o) {
      Acc acc = init;
      const T* base = x + o[1];
      for_each_offset<1>(inner, 0, inner.numel, [&](const Offsets1& k) { acc = step(acc, base[k[0]]); });
      store(o[0], acc);
    });
  });
}

// ---- float32 fast paths (Note [Vectorized CPU kernels]) ----

// Rows longer than kReduceBlock (cpu_vec.h) are summed in blocks of that
// many elements, the blocks in parallel and their partial sums added in order.

// The rows path's scratch (Note [Kernel workspaces]): each output row's
// offsets, and the partial result of each block of each row.
struct RowScratch {
  Offsets2* rows;
  double* partial;
  static RowScratch take(WorkspaceLayout& ws, int64_t rows, int64_t n) {
    const int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
    return {ws.take<Offsets2>(rows), ws.take<double>(rows * blocks)};
  }
};

// Sum / Amax / Amin of float32 when the reduced dims merge into one
// contiguous run per output element (rows), or into one strided dim while
// the kept dims' innermost run is contiguous in input and output (columns:
// a sum over dim 0 of a contiguous (M, N), vectorized across N). Returns
// false when the layout or dtypes do not fit.
bool vec_reduce(const KernelCall& c, VecReduce op) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  if (!vec_enabled() || in->dtype != kFloat32) return false;
  if (op != VecReduce::Sum && out->dtype != kFloat32) return false;
  const OuterInner s = split_trailing(in, c.i[0]);
  if (out->sizes != s.outer_sizes) return false;
  const LoopShape<2> outer = make_loop<2>(s.outer_sizes, {&out->strides, &s.outer_strides});
  const LoopShape<1> inner = make_loop<1>(s.inner_sizes, {&s.inner_strides});
  if (outer.numel == 0 || inner.numel == 0 || inner.sizes.size() > 1) return false;
  const int64_t n = inner.numel;
  const float* x = data_ptr<float>(in);
  const VecKernels& k = vec();

  if (n == 1 || inner.strides[0][0] == 1) {  // rows
    WorkspaceLayout ws = carve(c);
    const RowScratch scratch = RowScratch::take(ws, outer.numel, n);
    Offsets2* rows = scratch.rows;
    double* partial = scratch.partial;
    int64_t at = 0;
    for_each_offset<2>(outer, 0, outer.numel, [&](const Offsets2& o) { rows[at++] = o; });
    const int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
    parallel_for(0, outer.numel * blocks, std::max<int64_t>(1, kGrain / std::min(n, kReduceBlock)),
                 [&](int64_t lo, int64_t hi) {
                   for (int64_t t = lo; t < hi; ++t) {
                     const int64_t r = t / blocks, b = t % blocks;
                     const int64_t begin = b * kReduceBlock, len = std::min(kReduceBlock, n - begin);
                     partial[t] = k.reduce_f32(op, x + rows[r][1] + begin, len);
                   }
                 });
    const StoreFn<double> write = store_fn<double>(out->dtype);
    void* y = out->data();
    for (int64_t r = 0; r < outer.numel; ++r) {
      const double* p = partial + r * blocks;
      double acc = p[0];
      for (int64_t b = 1; b < blocks; ++b) acc = fold_partials(op, acc, p[b]);
      write(y, rows[r][0], acc);
    }
    return true;
  }

  // columns: the innermost kept dim is contiguous in input and output
  if (out->dtype != kFloat32 || outer.sizes.empty() || outer.strides[0].back() != 1 ||
      outer.strides[1].back() != 1 || outer.sizes.back() < 16)
    return false;
  struct Ctx {
    const VecKernels* k;
    VecReduce op;
    const float* x;
    float* y;
    int64_t m, ld;
  } ctx{&k, op, x, data_ptr<float>(out), n, inner.strides[0][0]};
  auto run = [](void* p, const int64_t* o, int64_t len) {
    const Ctx& t = *static_cast<const Ctx*>(p);
    t.k->reduce_cols_f32(t.op, t.x + o[1], t.m, len, t.ld, t.y + o[0]);
  };
  parallel_for(0, outer.numel, std::max<int64_t>(16, kGrain / n), [&](int64_t lo, int64_t hi) {
    for_each_run(outer.sizes, outer.strides.data(), 2, lo, hi, {&ctx, run});
  });
  return true;
}

// Sum or Prod: accumulate in double (floats) or int64 (integers, bool), then
// convert to out's dtype, which may be wider than the input's.
template <typename Combine>
void sum_like(const KernelCall& c, double float_init, int64_t int_init, Combine combine) {
  dispatch_all(c.in[0]->dtype, [&](auto in_tag) {
    using T = typename decltype(in_tag)::type;
    using A = acc_t<T>;
    const A init = is_float_v<T> ? static_cast<A>(float_init) : static_cast<A>(int_init);
    const StoreFn<A> write = store_fn<A>(c.out[0]->dtype);
    void* y = c.out[0]->data();
    reduce_trailing<T>(
        c, c.i[0], init, [&](A acc, T x) { return combine(acc, convert<A>(x)); },
        [&](int64_t offset, A acc) { write(y, offset, acc); });
  });
}

// Amax (want_max) or Amin; NaN wins over every number (PyTorch). An empty
// reduction (refused by the ops layer) would give the identity (-inf / lowest).
void extremum(const KernelCall& c, bool want_max) {
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    LOOM_ASSERT(c.out[0]->dtype == c.in[0]->dtype, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
    using Lim = std::numeric_limits<C>;
    C init;
    if constexpr (std::is_floating_point_v<C>) init = want_max ? -Lim::infinity() : Lim::infinity();
    else init = want_max ? Lim::lowest() : Lim::max();
    T* y = data_ptr<T>(c.out[0]);
    reduce_trailing<T>(
        c, c.i[0], init,
        [want_max](C acc, T xs) {
          const C x = to_compute(xs);
          if (is_nan(acc)) return acc;
          if (is_nan(x)) return x;
          return (want_max ? x > acc : x < acc) ? x : acc;
        },
        [y](int64_t offset, C acc) { y[offset] = static_cast<T>(acc); });
  });
}

// The rows of a row-wise op: the last dim of in[0] and out[0] (same shape).
struct Rows {
  LoopShape<2> outer;  // operand 0: out, operand 1: in
  int64_t length = 1, in_stride = 0, out_stride = 0;
};
Rows make_rows(const TensorImpl* in, const TensorImpl* out, const char* op) {
  LOOM_ASSERT(in->sizes == out->sizes, op, ": input ", shape_str(in->sizes), " vs output ", shape_str(out->sizes));
  const OuterInner si = split_trailing(in, 1), so = split_trailing(out, 1);
  Rows r;
  r.outer = make_loop<2>(si.outer_sizes, {&so.outer_strides, &si.outer_strides});
  if (in->dim() > 0) {
    r.length = in->sizes.back();
    r.in_stride = in->strides.back();
    r.out_stride = out->strides.back();
  }
  return r;
}

// Calls f(in_row, out_base, out_row_offset, rows) for every row, rows split
// across threads; out is passed untyped (element offsets in out's dtype).
template <typename T, typename F>
void for_each_row(const KernelCall& c, F f) {
  const Rows r = make_rows(c.in[0], c.out[0], op_name(c.op));
  if (r.length == 0) return;
  const T* x = data_ptr<T>(c.in[0]);
  void* y = c.out[0]->data();
  parallel_for(0, r.outer.numel, rows_grain(r.length), [&](int64_t b, int64_t e) {
    for_each_offset<2>(r.outer, b, e, [&](const Offsets2& o) { f(x + o[1], y, o[0], r); });
  });
}

// Softmax (log = false) or LogSoftmax along the last dim, in double: the
// row max is subtracted first so exp never overflows. A row of all -inf
// gives NaN (-inf - -inf), as PyTorch.
void softmax_like(const KernelCall& c, bool log) {
  if (vec_enabled() && c.in[0]->dtype == kFloat32 && c.out[0]->dtype == kFloat32) {
    const Rows r = make_rows(c.in[0], c.out[0], op_name(c.op));
    if (r.length == 1 || (r.in_stride == 1 && r.out_stride == 1)) {  // contiguous rows: vectorized
      const VecKernels& k = vec();
      for_each_row<float>(c, [&k, log](const float* x, void* y, int64_t y_offset, const Rows& rows) {
        k.softmax_row_f32(x, static_cast<float*>(y) + y_offset, rows.length, log);
      });
      return;
    }
  }
  dispatch_float(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    LOOM_ASSERT(c.out[0]->dtype == c.in[0]->dtype, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
    for_each_row<T>(c, [log](const T* x, void* out_base, int64_t out_offset, const Rows& r) {
      T* y = static_cast<T*>(out_base) + out_offset;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < r.length; ++j) m = std::max(m, static_cast<double>(to_compute(x[j * r.in_stride])));
      double sum = 0;
      for (int64_t j = 0; j < r.length; ++j) sum += std::exp(static_cast<double>(to_compute(x[j * r.in_stride])) - m);
      const double log_sum = std::log(sum);
      // Each x[j] is read before y[j] is written, so out may alias in.
      for (int64_t j = 0; j < r.length; ++j) {
        const double z = static_cast<double>(to_compute(x[j * r.in_stride])) - m;
        y[j * r.out_stride] = static_cast<T>(log ? z - log_sum : std::exp(z) / sum);
      }
    });
  });
}

// ArgMax (want_max) or ArgMin over the last dim into int64: the first index
// wins ties, and the first NaN wins over every number (PyTorch).
void arg_extremum(const KernelCall& c, bool want_max) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(out->dtype == kInt64, op_name(c.op), ": output dtype ", dtype_name(out->dtype));
  const OuterInner s = split_trailing(in, 1);
  LOOM_ASSERT(out->sizes == s.outer_sizes, op_name(c.op), ": input ", shape_str(in->sizes), " output ",
              shape_str(out->sizes));
  const int64_t length = s.inner_numel, stride = s.inner_strides.empty() ? 0 : s.inner_strides[0];
  const LoopShape<2> outer = make_loop<2>(s.outer_sizes, {&out->strides, &s.outer_strides});
  dispatch_all(in->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* x = data_ptr<T>(in);
    int64_t* y = data_ptr<int64_t>(out);
    parallel_for(0, outer.numel, rows_grain(length), [&](int64_t b, int64_t e) {
      for_each_offset<2>(outer, b, e, [&](const Offsets2& o) {
        const T* row = x + o[1];
        int64_t best = 0;  // an empty row (refused by the ops layer) gives 0
        C best_value = length > 0 ? to_compute(row[0]) : C{};
        for (int64_t j = 1; j < length && !is_nan(best_value); ++j) {
          const C v = to_compute(row[j * stride]);
          if (is_nan(v) || (want_max ? v > best_value : v < best_value)) {
            best = j;
            best_value = v;
          }
        }
        y[o[0]] = best;
      });
    });
  });
}

}  // namespace

namespace kernel {

void Sum(const KernelCall& c) {
  if (vec_reduce(c, VecReduce::Sum)) return;
  sum_like(c, 0.0, 0, [](auto acc, auto x) {
    if constexpr (std::is_integral_v<decltype(acc)>) return wrap_add(acc, x);
    else return acc + x;
  });
}

void Prod(const KernelCall& c) {
  sum_like(c, 1.0, 1, [](auto acc, auto x) {
    if constexpr (std::is_integral_v<decltype(acc)>) return wrap_mul(acc, x);
    else return acc * x;
  });
}

void Amax(const KernelCall& c) {
  if (vec_reduce(c, VecReduce::Max)) return;
  extremum(c, true);
}
void Amin(const KernelCall& c) {
  if (vec_reduce(c, VecReduce::Min)) return;
  extremum(c, false);
}
void ArgMax(const KernelCall& c) { arg_extremum(c, true); }
void ArgMin(const KernelCall& c) { arg_extremum(c, false); }
void Softmax(const KernelCall& c) { softmax_like(c, false); }
void LogSoftmax(const KernelCall& c) { softmax_like(c, true); }

// Running sum along the last dim, accumulated in double (floats) or int64
// (integers, bool), written in out's dtype.
void Cumsum(const KernelCall& c) {
  dispatch_all(c.in[0]->dtype, [&](auto in_tag) {
    using T = typename decltype(in_tag)::type;
    using A = acc_t<T>;
    const StoreFn<A> write = store_fn<A>(c.out[0]->dtype);
    // Rows are addressed in elements of out's dtype; the store converts.
    for_each_row<T>(c, [write](const T* x, void* y, int64_t y_offset, const Rows& r) {
      A acc = 0;
      for (int64_t j = 0; j < r.length; ++j) {
        const A v = convert<A>(x[j * r.in_stride]);
        if constexpr (std::is_integral_v<A>) acc = wrap_add(acc, v);
        else acc += v;
        write(y, y_offset + j * r.out_stride, acc);
      }
    });
  });
}

}  // namespace kernel
namespace workspace {

// Sum, Amax and Amin: the float32 rows path's scratch (an upper bound; the
// other paths take none).
size_t Sum(const KernelCall& c) {
  const TensorImpl* in = c.in[0];
  if (!vec_enabled() || in->dtype != kFloat32) return 0;
  const OuterInner s = split_trailing(in, c.i[0]);
  WorkspaceLayout ws;
  RowScratch::take(ws, s.outer_numel, s.inner_numel);
  return ws.bytes();
}
size_t Amax(const KernelCall& c) { return Sum(c); }
size_t Amin(const KernelCall& c) { return Sum(c); }

}  // namespace workspace
}  // namespace loom::cpu
