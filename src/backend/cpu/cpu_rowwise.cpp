// The fused row ops: SoftmaxBackward, LogSoftmaxBackward, LayerNorm,
// LayerNormBackward, CrossEntropy, CrossEntropyBackward (calling conventions
// in ops.def).
//
// Each kernel is a reference loop (every float dtype, every stride, computed
// in double; rows split across threads, each row and each column sum in one
// fixed order) with a float32 fast path for contiguous rows that hands each
// row to the vectorized row functions (Note [Vectorized CPU kernels]).
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

int64_t rows_grain(int64_t work) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(work, 1)); }

// The element offsets of every row start (outer index, row-major) of `t`,
// whose last `n_trailing` dims form a row, and of each element within a row.
// The tables live in the call's workspace (Note [Kernel workspaces]); in
// sizing mode row_offsets only counts them.
struct OffsetTable {
  int64_t* data = nullptr;
  int64_t n = 0;
  int64_t operator[](int64_t k) const { return data[k]; }
  int64_t size() const { return n; }
};
struct RowOffsets {
  OffsetTable row;    // per outer element
  OffsetTable inner;  // per element of a row, row-major
};
RowOffsets row_offsets(WorkspaceLayout& ws, const TensorImpl* t, int64_t n_trailing) {
  const OuterInner s = split_trailing(t, n_trailing);
  RowOffsets r{{ws.take<int64_t>(s.outer_numel), s.outer_numel}, {ws.take<int64_t>(s.inner_numel), s.inner_numel}};
  if (!ws.carving()) return r;
  const LoopShape<1> outer = make_loop<1>(s.outer_sizes, {&s.outer_strides});
  const LoopShape<1> inner = make_loop<1>(s.inner_sizes, {&s.inner_strides});
  int64_t k = 0;
  if (s.outer_numel > 0) for_each_offset<1>(outer, 0, outer.numel, [&](const Offsets1& o) { r.row.data[k++] = o[0]; });
  k = 0;
  if (s.inner_numel > 0) for_each_offset<1>(inner, 0, inner.numel, [&](const Offsets1& o) { r.inner.data[k++] = o[0]; });
  return r;
}

// The reference kernels' tables: one per operand (Note [Kernel workspaces]).
size_t row_offsets_bytes(const TensorImpl* t, int64_t n_trailing, int operands) {
  WorkspaceLayout ws;
  for (int k = 0; k < operands; ++k) row_offsets(ws, t, n_trailing);
  return ws.bytes();
}

// Are the rows of `t` packed one after another in one contiguous run? (The
// fast paths index row r at r * row_length.)
bool contiguous_rows(const TensorImpl* t) { return t->is_contiguous(); }

// Which path each kernel takes: one predicate each, asked by the kernel and
// by its workspace size function (the fast paths take no offset tables).
bool softmax_backward_fast(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *y = c.in[1], *out = c.out[0];
  return vec_enabled() && g->dtype == kFloat32 && contiguous_rows(g) && contiguous_rows(y) && contiguous_rows(out);
}
bool layer_norm_fast(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *y = c.out[0], *stats = c.out[1];
  return vec_enabled() && x->dtype == kFloat32 && contiguous_rows(x) && contiguous_rows(y) && stats->is_contiguous();
}
bool layer_norm_backward_fast(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *stats = c.in[2], *dx = c.out[0];
  const TensorImpl* dwb = c.out.size() > 1 ? c.out[1] : nullptr;
  return vec_enabled() && x->dtype == kFloat32 && contiguous_rows(g) && contiguous_rows(x) && contiguous_rows(dx) &&
         stats->is_contiguous() && (!dwb || dwb->is_contiguous());
}

// ---- softmax / log_softmax backward ----

void softmax_backward(const KernelCall& c, bool log) {
  const TensorImpl *g = c.in[0], *y = c.in[1];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(g->sizes == y->sizes && g->sizes == out->sizes, op_name(c.op), ": grad ", shape_str(g->sizes),
              ", output ", shape_str(y->sizes), ", result ", shape_str(out->sizes));
  LOOM_ASSERT(g->dtype == y->dtype && g->dtype == out->dtype, op_name(c.op), ": mixed dtypes");
  if (out->numel() == 0) return;
  const int64_t n = g->dim() == 0 ? 1 : g->sizes.back();
  if (softmax_backward_fast(c)) {
    const VecKernels& k = vec();
    const float *pg = data_ptr<float>(g), *py = data_ptr<float>(y);
    float* po = data_ptr<float>(out);
    parallel_for(0, out->numel() / n, rows_grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) k.softmax_backward_row_f32(pg + r * n, py + r * n, po + r * n, n, log);
    });
    return;
  }
  WorkspaceLayout ws = carve(c);
  const RowOffsets og = row_offsets(ws, g, 1), oy = row_offsets(ws, y, 1), oo = row_offsets(ws, out, 1);
  dispatch_float(g->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *pg = data_ptr<T>(g), *py = data_ptr<T>(y);
    T* po = data_ptr<T>(out);
    parallel_for(0, og.row.size(), rows_grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const T* gr = pg + og.row[r];
        const T* yr = py + oy.row[r];
        T* orow = po + oo.row[r];
        double s = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double gj = to_compute(gr[og.inner[j]]);
          s += log ? gj : gj * static_cast<double>(to_compute(yr[oy.inner[j]]));
        }
        for (int64_t j = 0; j < n; ++j) {
          const double gj = to_compute(gr[og.inner[j]]), yj = to_compute(yr[oy.inner[j]]);
          orow[oo.inner[j]] = static_cast<T>(log ? gj - std::exp(yj) * s : yj * (gj - s));
        }
      }
    });
  });
}

// ---- layer norm ----

// Reference: per row, mean and variance in double (two passes), then y.
void layer_norm_reference(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.i[1] ? c.in[1] : nullptr, *b = c.i[2] ? c.in[2] : nullptr;
  TensorImpl *y = c.out[0], *stats = c.out[1];
  const double eps = c.f[0];
  WorkspaceLayout ws = carve(c);
  const RowOffsets ox = row_offsets(ws, x, c.i[0]), oy = row_offsets(ws, y, c.i[0]);
  const int64_t n = ox.inner.size();
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = data_ptr<T>(x);
    const T* pw = w ? data_ptr<T>(w) : nullptr;
    const T* pb = b ? data_ptr<T>(b) : nullptr;
    T* py = data_ptr<T>(y);
    T* ps = data_ptr<T>(stats);
    parallel_for(0, ox.row.size(), rows_grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const T* xr = px + ox.row[r];
        double mean = 0, var = 0;
        for (int64_t j = 0; j < n; ++j) mean += static_cast<double>(to_compute(xr[ox.inner[j]]));
        mean /= static_cast<double>(n);
        for (int64_t j = 0; j < n; ++j) {
          const double d = static_cast<double>(to_compute(xr[ox.inner[j]])) - mean;
          var += d * d;
        }
        var /= static_cast<double>(n);
        const double rstd = 1.0 / std::sqrt(var + eps);
        for (int64_t j = 0; j < n; ++j) {
          double v = (static_cast<double>(to_compute(xr[ox.inner[j]])) - mean) * rstd;
          if (pw) v *= static_cast<double>(to_compute(pw[j]));
          if (pb) v += static_cast<double>(to_compute(pb[j]));
          py[oy.row[r] + oy.inner[j]] = static_cast<T>(v);
        }
        ps[2 * r] = static_cast<T>(mean);
        ps[2 * r + 1] = static_cast<T>(rstd);
      }
    });
  });
}

// Reference: dx per row; dweight / dbias per column, rows in order.
void layer_norm_backward_reference(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *stats = c.in[2], *w = c.i[1] ? c.in[3] : nullptr;
  TensorImpl *dx = c.out[0], *dwb = c.out.size() > 1 ? c.out[1] : nullptr;
  WorkspaceLayout ws = carve(c);
  const RowOffsets og = row_offsets(ws, g, c.i[0]), ox = row_offsets(ws, x, c.i[0]), od = row_offsets(ws, dx, c.i[0]);
  const int64_t n = ox.inner.size(), m = ox.row.size();
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *pg = data_ptr<T>(g), *px = data_ptr<T>(x), *ps = data_ptr<T>(stats);
    const T* pw = w ? data_ptr<T>(w) : nullptr;
    T* pd = data_ptr<T>(dx);
    auto xhat = [&](int64_t r, int64_t j) {
      return (static_cast<double>(to_compute(px[ox.row[r] + ox.inner[j]])) - static_cast<double>(to_compute(ps[2 * r]))) *
             static_cast<double>(to_compute(ps[2 * r + 1]));
    };
    auto gw = [&](int64_t r, int64_t j) {
      double v = to_compute(pg[og.row[r] + og.inner[j]]);
      return pw ? v * static_cast<double>(to_compute(pw[j])) : v;
    };
    parallel_for(0, m, rows_grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        double a = 0, b = 0;
        for (int64_t j = 0; j < n; ++j) {
          a += gw(r, j);
          b += gw(r, j) * xhat(r, j);
        }
        a /= static_cast<double>(n);
        b /= static_cast<double>(n);
        const double rstd = to_compute(ps[2 * r + 1]);
        for (int64_t j = 0; j < n; ++j) pd[od.row[r] + od.inner[j]] = static_cast<T>(rstd * (gw(r, j) - a - xhat(r, j) * b));
      }
    });
    if (!dwb) return;
    T* pwb = data_ptr<T>(dwb);
    parallel_for(0, n, rows_grain(m), [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        double sw = 0, sb = 0;
        for (int64_t r = 0; r < m; ++r) {
          const double gv = to_compute(pg[og.row[r] + og.inner[j]]);
          sw += gv * xhat(r, j);
          sb += gv;
        }
        pwb[j] = static_cast<T>(sw);
        pwb[n + j] = static_cast<T>(sb);
      }
    });
  });
}

// ---- cross entropy ----

// The class target of row r, checked against [0, classes) unless ignored.
template <typename I>
int64_t class_target(const I* t, int64_t offset, int64_t classes, int64_t ignore_index, const char* op) {
  const int64_t v = static_cast<int64_t>(t[offset]);
  if (v == ignore_index) return v;
  LOOM_CHECK(v >= 0 && v < classes, op, ": target class ", v, " is out of range [0, ", classes, ")");
  return v;
}

void cross_entropy(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *t = c.in[1];
  TensorImpl *loss = c.out[0], *lse = c.out[1];
  LOOM_ASSERT(x->dim() == 2 && t->dim() == 1 && t->sizes[0] == x->sizes[0], "CrossEntropy: logits ",
              shape_str(x->sizes), ", targets ", shape_str(t->sizes));
  const int64_t rows = x->sizes[0], classes = x->sizes[1];
  const double s = c.f[0];
  const int64_t ignore = c.i[0];
  const int64_t rs = x->strides[0], cs = x->strides[1];
  const bool fast = vec_enabled() && x->dtype == kFloat32 && cs == 1;
  dispatch_index(t->dtype, [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* pt = data_ptr<I>(t);
    dispatch_float(x->dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* px = data_ptr<T>(x);
      T *pl = data_ptr<T>(loss), *pz = data_ptr<T>(lse);
      parallel_for(0, rows, rows_grain(classes), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t target = class_target(pt, r * t->strides[0], classes, ignore, "cross_entropy");
          const T* xr = px + r * rs;
          double z = 0, sum_x = 0;
          if constexpr (std::is_same_v<T, float>) {
            if (fast) {
              const VecKernels& k = vec();
              z = k.logsumexp_row_f32(xr, classes);
              if (s != 0) sum_x = k.reduce_f32(VecReduce::Sum, xr, classes);
            }
          }
          if (!fast) {
            double m = -std::numeric_limits<double>::infinity();
            for (int64_t j = 0; j < classes; ++j) m = std::max(m, static_cast<double>(to_compute(xr[j * cs])));
            double e = 0;
            for (int64_t j = 0; j < classes; ++j) {
              const double v = to_compute(xr[j * cs]);
              e += std::exp(v - m);
              sum_x += v;
            }
            z = m + std::log(e);
          }
          pz[r * lse->strides[0]] = static_cast<T>(z);
          double l = 0;
          if (target != ignore) {
            const double xt = to_compute(xr[target * cs]);
            l = z - (1 - s) * xt;
            if (s != 0) l -= s / static_cast<double>(classes) * sum_x;
          }
          pl[r * loss->strides[0]] = static_cast<T>(l);
        }
      });
    });
  });
}

void cross_entropy_backward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *t = c.in[2], *lse = c.in[3];
  TensorImpl* dx = c.out[0];
  LOOM_ASSERT(x->dim() == 2 && dx->sizes == x->sizes, "CrossEntropyBackward: logits ", shape_str(x->sizes),
              ", result ", shape_str(dx->sizes));
  const int64_t rows = x->sizes[0], classes = x->sizes[1];
  const double s = c.f[0];
  const int64_t ignore = c.i[0];
  const bool fast = vec_enabled() && x->dtype == kFloat32 && x->strides[1] == 1 && dx->strides[1] == 1;
  dispatch_index(t->dtype, [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* pt = data_ptr<I>(t);
    dispatch_float(x->dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T *px = data_ptr<T>(x), *pg = data_ptr<T>(g), *pz = data_ptr<T>(lse);
      T* pd = data_ptr<T>(dx);
      parallel_for(0, rows, rows_grain(classes), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t target = class_target(pt, r * t->strides[0], classes, ignore, "cross_entropy");
          const T* xr = px + r * x->strides[0];
          T* dr = pd + r * dx->strides[0];
          if (target == ignore) {
            for (int64_t j = 0; j < classes; ++j) dr[j * dx->strides[1]] = T(0);
            continue;
          }
          const double scale = to_compute(pg[r * g->strides[0]]);
          const double z = to_compute(pz[r * lse->strides[0]]);
          if constexpr (std::is_same_v<T, float>) {
            if (fast) {
              vec().cross_entropy_backward_row_f32(xr, static_cast<float>(z), target, scale, s, dr, classes);
              continue;
            }
          }
          for (int64_t j = 0; j < classes; ++j) {
            const double p = std::exp(static_cast<double>(to_compute(xr[j * x->strides[1]])) - z);
            double d = p - s / static_cast<double>(classes);
            if (j == target) d -= 1 - s;
            dr[j * dx->strides[1]] = static_cast<T>(scale * d);
          }
        }
      });
    });
  });
}

// Note [LayerNorm weight gradient in row chunks]'s chunks of m rows of n.
struct LayerNormChunks {
  int64_t chunk, chunks;
};
LayerNormChunks layer_norm_chunks(int64_t m, int64_t n) {
  const int64_t chunk = std::max<int64_t>({1, (int64_t{1} << 16) / n, (m + 255) / 256});
  return {chunk, (m + chunk - 1) / chunk};
}

}  // namespace


namespace kernel {

void SoftmaxBackward(const KernelCall& c) { softmax_backward(c, false); }
void LogSoftmaxBackward(const KernelCall& c) { softmax_backward(c, true); }

void LayerNorm(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.i[1] ? c.in[1] : nullptr, *b = c.i[2] ? c.in[2] : nullptr;
  TensorImpl *y = c.out[0], *stats = c.out[1];
  LOOM_ASSERT(x->sizes == y->sizes && x->dtype == y->dtype && stats->dtype == x->dtype, "LayerNorm: x ",
              shape_str(x->sizes), " y ", shape_str(y->sizes));
  if (x->numel() == 0) return;
  const OuterInner s = split_trailing(x, c.i[0]);
  const int64_t n = s.inner_numel;
  if (layer_norm_fast(c)) {
    const VecKernels& k = vec();
    const float* px = data_ptr<float>(x);
    const float* pw = w ? data_ptr<float>(w) : nullptr;
    const float* pb = b ? data_ptr<float>(b) : nullptr;
    float *py = data_ptr<float>(y), *ps = data_ptr<float>(stats);
    const double eps = c.f[0];
    parallel_for(0, s.outer_numel, rows_grain(n), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        k.layer_norm_row_f32(px + r * n, pw, pb, py + r * n, n, eps, ps + 2 * r, ps + 2 * r + 1);
    });
    return;
  }
  layer_norm_reference(c);
}

void LayerNormBackward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *stats = c.in[2], *w = c.i[1] ? c.in[3] : nullptr;
  TensorImpl *dx = c.out[0], *dwb = c.out.size() > 1 ? c.out[1] : nullptr;
  LOOM_ASSERT(g->sizes == x->sizes && dx->sizes == x->sizes, "LayerNormBackward: grad ", shape_str(g->sizes), " x ",
              shape_str(x->sizes));
  if (x->numel() == 0) {
    if (dwb) {  // no rows: the parameter gradients are sums of nothing
      dispatch_float(dwb->dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        std::fill(data_ptr<T>(dwb), data_ptr<T>(dwb) + dwb->numel(), T(0));
      });
    }
    return;
  }
  const OuterInner s = split_trailing(x, c.i[0]);
  const int64_t n = s.inner_numel, m = s.outer_numel;
  if (layer_norm_backward_fast(c)) {
    const VecKernels& k = vec();
    const float *pg = data_ptr<float>(g), *px = data_ptr<float>(x), *ps = data_ptr<float>(stats);
    const float* pw = w ? data_ptr<float>(w) : nullptr;
    float* pd = data_ptr<float>(dx);
    // Note [LayerNorm weight gradient in row chunks]
    // Rows go in fixed chunks, sized so a chunk's g and x (2 * chunk * n
    // floats) stay in a 1 MiB L2 between the dx pass and the weight/bias
    // pass over the same rows: memory is read once. Each chunk sums its rows
    // for every column in order, in double, from zero; the chunk sums are
    // then added in chunk order. The chunks depend on m and n only, so the
    // result does not depend on the thread count. (Summing each column over
    // all rows in one strided pass read g and x from memory a second time,
    // and took twice as long as the dx pass.)
    const LayerNormChunks lc = layer_norm_chunks(m, n);
    const int64_t chunk = lc.chunk, chunks = lc.chunks;
    WorkspaceLayout ws = carve(c);
    double* partial = dwb ? ws.take<double>(chunks * 2 * n) : nullptr;
    if (dwb) std::fill(partial, partial + chunks * 2 * n, 0.0);
    parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t ci = lo; ci < hi; ++ci) {
        const int64_t r0 = ci * chunk, r1 = std::min(m, r0 + chunk);
        for (int64_t r = r0; r < r1; ++r)
          k.layer_norm_backward_row_f32(pg + r * n, px + r * n, pw, ps[2 * r], ps[2 * r + 1], pd + r * n, n);
        if (dwb) {
          double* acc = partial + ci * 2 * n;
          k.layer_norm_backward_cols_f32(pg + r0 * n, px + r0 * n, n, ps + 2 * r0, r1 - r0, n, acc, acc + n);
        }
      }
    });
    if (dwb) {
      float* pwb = data_ptr<float>(dwb);
      for (int64_t j = 0; j < 2 * n; ++j) {
        double total = 0.0;
        for (int64_t ci = 0; ci < chunks; ++ci) total += partial[ci * 2 * n + j];
        pwb[j] = static_cast<float>(total);
      }
    }
    return;
  }
  layer_norm_backward_reference(c);
}

void CrossEntropy(const KernelCall& c) { cross_entropy(c); }
void CrossEntropyBackward(const KernelCall& c) { cross_entropy_backward(c); }

}  // namespace kernel
namespace workspace {

// The reference paths' offset tables, or the float32 LayerNormBackward's
// chunk sums: whichever path the kernel will take.
size_t SoftmaxBackward(const KernelCall& c) {
  if (c.out[0]->numel() == 0 || softmax_backward_fast(c)) return 0;
  return row_offsets_bytes(c.out[0], 1, 3);
}
size_t LogSoftmaxBackward(const KernelCall& c) { return SoftmaxBackward(c); }
size_t LayerNorm(const KernelCall& c) {
  if (c.in[0]->numel() == 0 || layer_norm_fast(c)) return 0;
  return row_offsets_bytes(c.in[0], c.i[0], 2);
}
size_t LayerNormBackward(const KernelCall& c) {
  const TensorImpl* x = c.in[1];
  if (x->numel() == 0) return 0;
  if (!layer_norm_backward_fast(c)) return row_offsets_bytes(x, c.i[0], 3);
  if (c.out.size() < 2) return 0;
  const OuterInner s = split_trailing(x, c.i[0]);
  const LayerNormChunks lc = layer_norm_chunks(s.outer_numel, s.inner_numel);
  WorkspaceLayout ws;
  ws.take<double>(lc.chunks * 2 * s.inner_numel);
  return ws.bytes();
}

}  // namespace workspace
}  // namespace loom::cpu
