// The pooling kernels: MaxPool2d, MaxPool2dBackward, AvgPool2d and
// AvgPool2dBackward (calling conventions in ops.def, window geometry in
// src/backend/window2d.h).
//
// Note [Pooling kernels]
// Each kernel has a reference loop (every float dtype, every stride, one
// output element at a time, sums in double) and a fast path for float32 and
// float64 inputs whose rows are contiguous (W stride 1; the N, C and H
// strides may be anything) with contiguous outputs. The fast path walks the
// window offsets (kh_i, kw_i) in the reference's order and, for each, runs
// one vector loop over many outputs at once: a strided load and a
// compare-and-select (max, with the argmax) or an add (average). A CNN's
// output rows are short (14 or 7 outputs, less than one AVX-512 vector of
// floats), so the loop runs over a block of output rows laid side by side
// (Note [Pooling row blocks]). Each output still meets its window in the
// reference's order, so max pooling gives the reference's values and indices
// exactly; average pooling sums in the input's dtype and divides as PyTorch.
//
// The fast loops are written once (always-inline templates) and compiled for
// AVX-512, AVX2 + FMA and the baseline ISA through gnu::target clones
// (LOOM_ISA_CLONES, cpu_isa.h), chosen at run time with the GEMM's selection
// (gemm_isa(): CPUID, lowered by LOOM_CPU_ISA). Pooling multiplies nothing, so the clones agree bitwise.
// Work is split across threads by (n, c) plane; each plane is computed by
// one thread in a fixed order, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_scratch.h"
#include "backend/cpu/cpu_vec.h"
#include "backend/window2d.h"

namespace loom::cpu {
namespace {

// The (n, c) planes of an (N, C, H, W) tensor, plane p = n * C + c.
struct Planes {
  int64_t n = 0, c = 0, h = 0, w = 0;      // sizes
  int64_t sn = 0, sc = 0, sh = 0, sw = 0;  // strides (elements)
  int64_t count() const { return n * c; }
  int64_t offset(int64_t p) const { return (p / c) * sn + (p % c) * sc; }
  int64_t at(int64_t p, int64_t i, int64_t j) const { return offset(p) + i * sh + j * sw; }
};

Planes planes_of(const TensorImpl* t) {
  LOOM_ASSERT(t->dim() == 4, "pooling kernel: expected an (N, C, H, W) tensor, got ", shape_str(t->sizes));
  return {t->sizes[0],   t->sizes[1],   t->sizes[2],   t->sizes[3],
          t->strides[0], t->strides[1], t->strides[2], t->strides[3]};
}

// Planes per parallel chunk: about kGrain elements of work each.
int64_t planes_grain(int64_t work_per_plane) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(work_per_plane, 1));
}

// Fast path layout: rows contiguous in the input, output(s) contiguous.
bool rows_contiguous(const TensorImpl* t) { return t->sizes[3] <= 1 || t->strides[3] == 1; }

// ---- window geometry ----

// One dim of the window: output o reads input o * stride - pad + j * dilation, j < kernel.
struct Span1d {
  int64_t in, out, kernel, stride, pad, dilation;
  int64_t input(int64_t o, int64_t j) const { return o * stride - pad + j * dilation; }
  bool inside(int64_t o, int64_t j) const {
    const int64_t i = input(o, j);
    return i >= 0 && i < in;
  }
};

// For each output of a dim, its first window offset j whose input lies
// inside (-1 if none): where max pooling starts (PyTorch's index for a
// window of -inf).
void first_inside(const Span1d& d, int64_t* first) {
  for (int64_t o = 0; o < d.out; ++o) {
    first[o] = -1;
    for (int64_t j = 0; j < d.kernel; ++j)
      if (d.inside(o, j)) {
        first[o] = j;
        break;
      }
  }
}

Span1d rows_of(const Window2d& w, int64_t in, int64_t out) { return {in, out, w.kh, w.sh, w.ph, w.dh}; }
Span1d cols_of(const Window2d& w, int64_t in, int64_t out) { return {in, out, w.kw, w.sw, w.pw, w.dw}; }

// The average pool's divisor for one dim's window: PyTorch counts the
// padding but not what a ceil_mode window hangs past it, unless
// count_include_pad is off (then only the inputs inside count).
int64_t avg_extent(const Span1d& d, int64_t o, bool count_include_pad) {
  int64_t start = o * d.stride - d.pad;
  int64_t end = std::min(start + d.kernel, d.in + d.pad);
  if (count_include_pad) return end - start;
  start = std::max<int64_t>(start, 0);
  end = std::min(end, d.in);
  return std::max<int64_t>(end - start, 0);
}

// The divisor of every output of a plane (OH * OW, row-major); 0 where a
// window holds no input (its output is 0, as PyTorch).
void avg_divisors(const Window2d& w, int64_t h, int64_t wd, int64_t oh, int64_t ow, bool count_include_pad,
                  int64_t divisor_override, double* d) {
  const Span1d r = rows_of(w, h, oh), c = cols_of(w, wd, ow);
  for (int64_t i = 0; i < oh; ++i)
    for (int64_t j = 0; j < ow; ++j) {
      const bool empty = avg_extent(r, i, false) == 0 || avg_extent(c, j, false) == 0;
      const int64_t div = divisor_override ? divisor_override
                                           : avg_extent(r, i, count_include_pad) * avg_extent(c, j, count_include_pad);
      d[i * ow + j] = empty ? 0.0 : static_cast<double>(div);
    }
}

// Note [Pooling workspaces]
// Every buffer a pooling kernel may use comes from its call's workspace
// (Note [Kernel workspaces]), taken in one order by take_pool_scratch for
// both the size function and the kernel: the average pools' divisors (in
// double, and in the fast path's T), max pooling's first-inside offsets and
// window deltas, and a piece per thread slot big enough for either the row
// blocks (Note [Pooling row blocks]) or a plane of double accumulators. The
// sizes bound every path of the op (T counted as 8 bytes), so the kernel may
// take its fast path or the reference with the same workspace.
struct PoolScratch {
  double* div = nullptr;   // AvgPool2d / AvgPool2dBackward: OH * OW divisors
  void* div_t = nullptr;   // the same in the fast path's T
  int64_t* first_row = nullptr;  // MaxPool2d fast path: OH, OW and KH * KW entries
  int64_t* first_col = nullptr;
  int64_t* code_delta = nullptr;
  char* slots = nullptr;   // get_num_threads() pieces of slot_bytes
  int64_t slot_bytes = 0;
  // Thread slot `slot`'s piece, for carving.
  WorkspaceLayout slot(int64_t slot) const {
    return WorkspaceLayout(Workspace{slots + slot * slot_bytes, static_cast<size_t>(slot_bytes)});
  }
};

// The row blocks' per-slot buffers (T counted as 8 bytes).
struct RowBlockBuffers {
  void *buf, *out;
  int32_t* arg;
};
RowBlockBuffers take_row_block(WorkspaceLayout& ws, int64_t rows_per_block, int64_t seg, int64_t ows) {
  return {ws.take<double>(rows_per_block * seg), ws.take<double>(rows_per_block * ows),
          ws.take<int32_t>(rows_per_block * ows)};
}

// Note [Pooling row blocks]'s geometry for an input of `w` columns and an
// output plane (oh, ow); defined with the fast paths.
void set_block_geometry_of(int64_t w, int64_t oh, int64_t ow, const Window2d& win, int64_t& ows, int64_t& seg,
                           int64_t& rows_per_block);

PoolScratch take_pool_scratch(WorkspaceLayout& ws, const KernelCall& c) {
  const bool forward = c.op == OpKind::MaxPool2d || c.op == OpKind::AvgPool2d;
  // The input plane (h, w) and the output plane (oh, ow) of the forward op.
  const TensorImpl* in = forward ? c.in[0] : c.out[0];
  const TensorImpl* out = forward ? c.out[0] : c.in[0];
  const int64_t h = in->sizes[2], w = in->sizes[3], oh = out->sizes[2], ow = out->sizes[3];
  PoolScratch p;
  const bool avg = c.op == OpKind::AvgPool2d || c.op == OpKind::AvgPool2dBackward;
  const Window2d* win = avg || c.op == OpKind::MaxPool2d ? &window_of(c) : nullptr;
  if (avg) {
    p.div = ws.take<double>(oh * ow);
    p.div_t = ws.take<double>(oh * ow);
  }
  if (c.op == OpKind::MaxPool2d) {
    p.first_row = ws.take<int64_t>(oh);
    p.first_col = ws.take<int64_t>(ow);
    p.code_delta = ws.take<int64_t>(win->kh * win->kw);
  }
  // Per slot: the row blocks (forward ops and the average pool's backward),
  // or a plane of accumulators (the backward references).
  WorkspaceLayout piece;
  if (win != nullptr) {
    int64_t ows = 0, seg = 0, rows_per_block = 0;
    set_block_geometry_of(w, oh, ow, *win, ows, seg, rows_per_block);
    take_row_block(piece, rows_per_block, seg, ows);
  }
  WorkspaceLayout acc;
  if (!forward) acc.take<double>(h * w);
  p.slot_bytes = static_cast<int64_t>((std::max(piece.bytes(), acc.bytes()) + 63) & ~size_t{63});
  p.slots = ws.take<char>(get_num_threads() * p.slot_bytes);
  return p;
}

// ---- reference kernels ----

void max_pool_reference(const KernelCall& c) {
  const TensorImpl* x = c.in[0];
  TensorImpl *y = c.out[0], *ind = c.out.size() > 1 ? c.out[1] : nullptr;
  const Window2d& w = window_of(c);
  const Planes px = planes_of(x), py = planes_of(y);
  const Span1d rows = rows_of(w, px.h, py.h), cols = cols_of(w, px.w, py.w);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xd = data_ptr<T>(x);
    T* yd = data_ptr<T>(y);
    int64_t* id = ind ? data_ptr<int64_t>(ind) : nullptr;
    parallel_for(0, px.count(), planes_grain(py.h * py.w * w.kh * w.kw), [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p)
        for (int64_t oh = 0; oh < py.h; ++oh)
          for (int64_t ow = 0; ow < py.w; ++ow) {
            // PyTorch's rule: a larger value or a NaN replaces the max, so the
            // first maximum wins and a NaN (the last one) propagates.
            double best = -std::numeric_limits<double>::infinity();
            int64_t arg = -1;
            for (int64_t i = 0; i < w.kh; ++i) {
              if (!rows.inside(oh, i)) continue;
              for (int64_t j = 0; j < w.kw; ++j) {
                if (!cols.inside(ow, j)) continue;
                const int64_t ih = rows.input(oh, i), iw = cols.input(ow, j);
                const double v = static_cast<double>(to_compute(xd[px.at(p, ih, iw)]));
                if (arg < 0 || v > best || std::isnan(v)) {
                  best = v;
                  arg = ih * px.w + iw;
                }
              }
            }
            const int64_t o = py.at(p, oh, ow);
            yd[o] = static_cast<T>(best);
            if (id) id[o] = arg;
          }
    });
  });
}

void avg_pool_reference(const KernelCall& c) {
  const TensorImpl* x = c.in[0];
  TensorImpl* y = c.out[0];
  const Window2d& w = window_of(c);
  const Planes px = planes_of(x), py = planes_of(y);
  const Span1d rows = rows_of(w, px.h, py.h), cols = cols_of(w, px.w, py.w);
  WorkspaceLayout ws = carve(c);
  double* div = take_pool_scratch(ws, c).div;
  avg_divisors(w, px.h, px.w, py.h, py.w, c.i[0] != 0, c.i[1], div);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xd = data_ptr<T>(x);
    T* yd = data_ptr<T>(y);
    parallel_for(0, px.count(), planes_grain(py.h * py.w * w.kh * w.kw), [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p)
        for (int64_t oh = 0; oh < py.h; ++oh)
          for (int64_t ow = 0; ow < py.w; ++ow) {
            double s = 0;
            for (int64_t i = 0; i < w.kh; ++i) {
              if (!rows.inside(oh, i)) continue;
              for (int64_t j = 0; j < w.kw; ++j)
                if (cols.inside(ow, j))
                  s += static_cast<double>(to_compute(xd[px.at(p, rows.input(oh, i), cols.input(ow, j))]));
            }
            const double d = div[oh * py.w + ow];
            yd[py.at(p, oh, ow)] = static_cast<T>(d == 0 ? 0.0 : s / d);
          }
    });
  });
}

void max_pool_backward_reference(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *ind = c.in[1];
  TensorImpl* dx = c.out[0];
  const Planes pg = planes_of(g), pi = planes_of(ind), pd = planes_of(dx);
  const int64_t plane = pd.h * pd.w;
  dispatch_float(dx->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gd = data_ptr<T>(g);
    T* dd = data_ptr<T>(dx);
    dispatch_index(ind->dtype, [&](auto itag) {
      using I = typename decltype(itag)::type;
      const I* id = data_ptr<I>(ind);
      WorkspaceLayout ws = carve(c);
      const PoolScratch scratch = take_pool_scratch(ws, c);
      parallel_slots(pd.count(), planes_grain(plane + pg.h * pg.w), [&](int64_t slot, int64_t lo, int64_t hi) {
        WorkspaceLayout piece = scratch.slot(slot);
        double* acc = piece.take<double>(plane);
        for (int64_t p = lo; p < hi; ++p) {
          std::fill(acc, acc + plane, 0.0);
          for (int64_t oh = 0; oh < pg.h; ++oh)
            for (int64_t ow = 0; ow < pg.w; ++ow) {
              const int64_t k = static_cast<int64_t>(id[pi.at(p, oh, ow)]);
              LOOM_CHECK(k >= 0 && k < plane, "MaxPool2dBackward: index ", k, " is out of range for a plane of ", pd.h,
                         "x", pd.w);
              acc[k] += static_cast<double>(to_compute(gd[pg.at(p, oh, ow)]));
            }
          for (int64_t i = 0; i < pd.h; ++i)
            for (int64_t j = 0; j < pd.w; ++j) dd[pd.at(p, i, j)] = static_cast<T>(acc[i * pd.w + j]);
        }
      });
    });
  });
}

void avg_pool_backward_reference(const KernelCall& c) {
  const TensorImpl* g = c.in[0];
  TensorImpl* dx = c.out[0];
  const Window2d& w = window_of(c);
  const Planes pg = planes_of(g), pd = planes_of(dx);
  const Span1d rows = rows_of(w, pd.h, pg.h), cols = cols_of(w, pd.w, pg.w);
  WorkspaceLayout ws = carve(c);
  const PoolScratch scratch = take_pool_scratch(ws, c);
  double* div = scratch.div;
  avg_divisors(w, pd.h, pd.w, pg.h, pg.w, c.i[0] != 0, c.i[1], div);
  const int64_t plane = pd.h * pd.w;
  dispatch_float(dx->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gd = data_ptr<T>(g);
    T* dd = data_ptr<T>(dx);
    parallel_slots(pd.count(), planes_grain(pg.h * pg.w * w.kh * w.kw), [&](int64_t slot, int64_t lo, int64_t hi) {
      WorkspaceLayout piece = scratch.slot(slot);
      double* acc = piece.take<double>(plane);
      for (int64_t p = lo; p < hi; ++p) {
        std::fill(acc, acc + plane, 0.0);
        for (int64_t oh = 0; oh < pg.h; ++oh)
          for (int64_t ow = 0; ow < pg.w; ++ow) {
            const double d = div[oh * pg.w + ow];
            if (d == 0) continue;
            const double v = static_cast<double>(to_compute(gd[pg.at(p, oh, ow)])) / d;
            for (int64_t i = 0; i < w.kh; ++i) {
              if (!rows.inside(oh, i)) continue;
              for (int64_t j = 0; j < w.kw; ++j)
                if (cols.inside(ow, j)) acc[rows.input(oh, i) * pd.w + cols.input(ow, j)] += v;
            }
          }
        for (int64_t i = 0; i < pd.h; ++i)
          for (int64_t j = 0; j < pd.w; ++j) dd[pd.at(p, i, j)] = static_cast<T>(acc[i * pd.w + j]);
      }
    });
  });
}

// ---- fast paths ----

// Note [Pooling row blocks]
// The fast loops take a block of R output rows at once. For window row
// offset kh_i, the input rows the block reads are copied side by side into a
// scratch buffer, each into a segment of `seg` = ows * sw columns: `pw`
// columns of padding value (-inf for max, which never replaces a maximum; 0
// for the average), the row's W values, padding to the segment's end (a
// padding row is all padding). ows >= OW is chosen so that every window of
// a segment's outputs stays inside the segment. Output o of block row r is
// then flat output q = r * ows + o, and for column offset kw_i it reads
// buffer position q * sw + kw_i * dw: one strided run over all R * ows
// outputs, whole vectors, no bounds tests; outputs o >= OW are computed and
// dropped. Max pooling's argmax rides along as an int32 linear in q,
// (kh_i * KW + kw_i) + q * sw, so it is selected in the same vector lanes
// as the float values; the output's window offset, and with it the flat
// input index, is read back at the end.
constexpr int64_t kBlockOutputs = 256;  // R * ows at least this (or the whole plane)

// What a fast plane loop needs; outputs (and the gradient) are contiguous.
template <typename T>
struct PoolPlanes {
  const T* x = nullptr;  // MaxPool2d / AvgPool2d input (rows contiguous), or the gradient (contiguous)
  Planes xp;
  T* y = nullptr;          // output (contiguous)
  int64_t* ind = nullptr;  // MaxPool2d's indices (contiguous) or null
  int64_t h = 0, w = 0;    // input plane
  int64_t oh = 0, ow = 0;  // output plane
  Window2d win{};
  const T* div = nullptr;  // AvgPool: OH * OW divisors (0: empty window)
  // Max pooling: the first window offsets inside the input, per output row and column, and
  // the input index delta i * dh * W + j * dw of window offset (i, j), per code i * KW + j.
  const int64_t* first_row = nullptr;
  const int64_t* first_col = nullptr;
  const int64_t* code_delta = nullptr;
  // Row blocks (Note [Pooling row blocks]): ows outputs per segment of seg columns, rows_per_block rows.
  int64_t ows = 0, seg = 0, rows_per_block = 0;
  // Per-thread scratch: the row buffer (rows_per_block * seg), a block of outputs and of argmax codes.
  T* buf = nullptr;
  T* out = nullptr;
  int32_t* arg = nullptr;
};

void set_block_geometry_of(int64_t width, int64_t oh, int64_t ow, const Window2d& w, int64_t& ows, int64_t& seg,
                           int64_t& rows_per_block) {
  const int64_t need = std::max((ow - 1) * w.sw + (w.kw - 1) * w.dw + 1, w.pw + width);
  ows = (need + w.sw - 1) / w.sw;
  seg = ows * w.sw;
  rows_per_block = std::clamp<int64_t>((kBlockOutputs + ows - 1) / ows, 1, oh);
}

template <typename T>
void set_block_geometry(PoolPlanes<T>& a) {
  set_block_geometry_of(a.w, a.oh, a.ow, a.win, a.ows, a.seg, a.rows_per_block);
}

// Runs fn(a with its row-block buffers) over planes [0, count), each thread
// slot with its piece of the workspace (Note [Pooling workspaces]).
template <typename T, typename Fn>
void run_planes(const PoolPlanes<T>& a, const PoolScratch& scratch, int64_t count, int64_t grain, Fn fn) {
  parallel_slots(count, grain, [&](int64_t slot, int64_t lo, int64_t hi) {
    WorkspaceLayout piece = scratch.slot(slot);
    const RowBlockBuffers b = take_row_block(piece, a.rows_per_block, a.seg, a.ows);
    PoolPlanes<T> mine = a;
    mine.buf = static_cast<T*>(b.buf);
    mine.out = static_cast<T*>(b.out);
    mine.arg = b.arg;
    fn(mine, lo, hi);
  });
}

// Fills the row buffer for window row offset i of output rows [oh0, oh0 + rows)
// of plane xp; returns whether any of those input rows lies inside.
template <typename T>
[[gnu::always_inline]] inline bool fill_rows(const PoolPlanes<T>& a, const T* xp, int64_t oh0, int64_t rows, int64_t i,
                                             T pad) {
  const Window2d& w = a.win;
  bool any = false;
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict dst = a.buf + r * a.seg;
    const int64_t ih = (oh0 + r) * w.sh - w.ph + i * w.dh;
    if (ih < 0 || ih >= a.h) {
      for (int64_t c = 0; c < a.seg; ++c) dst[c] = pad;
      continue;
    }
    any = true;
    const T* __restrict src = xp + ih * a.xp.sh;
    for (int64_t c = 0; c < w.pw; ++c) dst[c] = pad;
    for (int64_t c = 0; c < a.w; ++c) dst[w.pw + c] = src[c];
    for (int64_t c = w.pw + a.w; c < a.seg; ++c) dst[c] = pad;
  }
  return any;
}

// The inner loops over n outputs whose inputs are `step` apart (S = the
// column stride when known at compile time, else 0).
template <typename T, int S>
[[gnu::always_inline]] inline void max_run(const T* __restrict src, int64_t stride, T* __restrict best,
                                           int32_t* __restrict arg, int32_t n, int32_t code0) {
  const int32_t step = S ? S : static_cast<int32_t>(stride);
  for (int32_t o = 0; o < n; ++o) {
    const T v = src[o * step], m = best[o];
    const bool take = v > m || v != v;  // a NaN replaces the max, as in the reference
    best[o] = take ? v : m;
    arg[o] = take ? code0 + o * step : arg[o];
  }
}

template <typename T, int S>
[[gnu::always_inline]] inline void max_run_values(const T* __restrict src, int64_t stride, T* __restrict best,
                                                  int64_t n) {
  const int64_t step = S ? S : stride;
  for (int64_t o = 0; o < n; ++o) {
    const T v = src[o * step], m = best[o];
    best[o] = (v > m || v != v) ? v : m;
  }
}

template <typename T, int S>
[[gnu::always_inline]] inline void add_run(const T* __restrict src, int64_t stride, T* __restrict acc, int64_t n) {
  const int64_t step = S ? S : stride;
  for (int64_t o = 0; o < n; ++o) acc[o] += src[o * step];
}

template <typename T, int S>
[[gnu::always_inline]] inline void scatter_add_run(const T* __restrict g, T* __restrict dst, int64_t stride,
                                                   int64_t n) {
  const int64_t step = S ? S : stride;
  for (int64_t o = 0; o < n; ++o) dst[o * step] += g[o];
}

template <typename T, int S>
[[gnu::always_inline]] inline void max_pool_planes_body(const PoolPlanes<T>& a, int64_t p0, int64_t p1) {
  const Window2d& w = a.win;
  const T lowest = -std::numeric_limits<T>::infinity();
  T* best = a.out;
  int32_t* arg = a.arg;
  for (int64_t p = p0; p < p1; ++p) {
    const T* xp = a.x + a.xp.offset(p);
    for (int64_t oh0 = 0; oh0 < a.oh; oh0 += a.rows_per_block) {
      const int64_t rows = std::min(a.rows_per_block, a.oh - oh0), n = rows * a.ows;
      for (int64_t q = 0; q < n; ++q) best[q] = lowest;
      if (a.ind) {
        // Every window starts at its first offset inside the input.
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t o = 0; o < a.ows; ++o) {
            const int64_t q = r * a.ows + o;
            arg[q] = static_cast<int32_t>((o < a.ow ? a.first_row[oh0 + r] * w.kw + a.first_col[o] : 0) + q * w.sw);
          }
      }
      for (int64_t i = 0; i < w.kh; ++i) {
        if (!fill_rows(a, xp, oh0, rows, i, lowest)) continue;
        for (int64_t j = 0; j < w.kw; ++j) {
          if (a.ind)
            max_run<T, S>(a.buf + j * w.dw, w.sw, best, arg, static_cast<int32_t>(n),
                          static_cast<int32_t>(i * w.kw + j));
          else
            max_run_values<T, S>(a.buf + j * w.dw, w.sw, best, n);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t oh = oh0 + r;
        T* y = a.y + (p * a.oh + oh) * a.ow;
        for (int64_t o = 0; o < a.ow; ++o) y[o] = best[r * a.ows + o];
        if (!a.ind) continue;
        // Code (i * KW + j) + q * sw back to the flat input index of offset (i, j).
        int64_t* ind = a.ind + (p * a.oh + oh) * a.ow;
        const int64_t row_base = (oh * w.sh - w.ph) * a.w - w.pw;
        const int32_t* code = arg + r * a.ows;
        const int32_t q0 = static_cast<int32_t>(r * a.ows), sw = static_cast<int32_t>(w.sw);
        for (int32_t o = 0; o < a.ow; ++o) ind[o] = row_base + o * w.sw + a.code_delta[code[o] - (q0 + o) * sw];
      }
    }
  }
}

template <typename T, int S>
[[gnu::always_inline]] inline void avg_pool_planes_body(const PoolPlanes<T>& a, int64_t p0, int64_t p1) {
  const Window2d& w = a.win;
  T* acc = a.out;
  for (int64_t p = p0; p < p1; ++p) {
    const T* xp = a.x + a.xp.offset(p);
    for (int64_t oh0 = 0; oh0 < a.oh; oh0 += a.rows_per_block) {
      const int64_t rows = std::min(a.rows_per_block, a.oh - oh0), n = rows * a.ows;
      for (int64_t q = 0; q < n; ++q) acc[q] = T(0);
      for (int64_t i = 0; i < w.kh; ++i) {
        if (!fill_rows(a, xp, oh0, rows, i, T(0))) continue;
        for (int64_t j = 0; j < w.kw; ++j) add_run<T, S>(a.buf + j * w.dw, w.sw, acc, n);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T* div = a.div + (oh0 + r) * a.ow;
        const T* sum = acc + r * a.ows;
        T* y = a.y + (p * a.oh + oh0 + r) * a.ow;
        for (int64_t o = 0; o < a.ow; ++o) y[o] = div[o] == T(0) ? T(0) : sum[o] / div[o];
      }
    }
  }
}

// dx of an average pool: each output's gradient / divisor added over its
// window into the row buffer (one window row offset at a time), whose
// segments are then added into their dx rows.
template <typename T, int S>
[[gnu::always_inline]] inline void avg_pool_backward_planes_body(const PoolPlanes<T>& a, int64_t p0, int64_t p1) {
  const Window2d& w = a.win;
  T* gd = a.out;
  for (int64_t p = p0; p < p1; ++p) {
    const T* g = a.x + p * a.oh * a.ow;
    T* dx = a.y + p * a.h * a.w;
    for (int64_t k = 0; k < a.h * a.w; ++k) dx[k] = T(0);
    for (int64_t oh0 = 0; oh0 < a.oh; oh0 += a.rows_per_block) {
      const int64_t rows = std::min(a.rows_per_block, a.oh - oh0), n = rows * a.ows;
      for (int64_t r = 0; r < rows; ++r) {
        const T* div = a.div + (oh0 + r) * a.ow;
        const T* gr = g + (oh0 + r) * a.ow;
        T* gq = gd + r * a.ows;
        for (int64_t o = 0; o < a.ow; ++o) gq[o] = div[o] == T(0) ? T(0) : gr[o] / div[o];
        for (int64_t o = a.ow; o < a.ows; ++o) gq[o] = T(0);
      }
      for (int64_t i = 0; i < w.kh; ++i) {
        for (int64_t c = 0; c < rows * a.seg; ++c) a.buf[c] = T(0);
        for (int64_t j = 0; j < w.kw; ++j) scatter_add_run<T, S>(gd, a.buf + j * w.dw, w.sw, n);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t ih = (oh0 + r) * w.sh - w.ph + i * w.dh;
          if (ih < 0 || ih >= a.h) continue;
          T* __restrict row = dx + ih * a.w;
          const T* __restrict src = a.buf + r * a.seg + w.pw;
          for (int64_t c = 0; c < a.w; ++c) row[c] += src[c];
        }
      }
    }
  }
}

// Column stride 1 and 2 (the common 2x2 / stride 2 pool) get loops of their own.
#define LOOM_POOL_BY_STRIDE(body)                                                                 \
  template <typename T>                                                                           \
  [[gnu::always_inline]] inline void body##_any(const PoolPlanes<T>& a, int64_t p0, int64_t p1) { \
    if (a.win.sw == 1)                                                                            \
      body<T, 1>(a, p0, p1);                                                                      \
    else if (a.win.sw == 2)                                                                       \
      body<T, 2>(a, p0, p1);                                                                      \
    else                                                                                          \
      body<T, 0>(a, p0, p1);                                                                      \
  }
LOOM_POOL_BY_STRIDE(max_pool_planes_body)
LOOM_POOL_BY_STRIDE(avg_pool_planes_body)
LOOM_POOL_BY_STRIDE(avg_pool_backward_planes_body)
#undef LOOM_POOL_BY_STRIDE

// The CNN's pool, 2x2 windows at stride 2 wholly inside the input: each
// output reads its four inputs straight from the two input rows, in the
// reference's order ((0,0), (0,1), (1,0), (1,1); a larger value or a NaN
// replaces the max), and writes its value and flat index. No row buffer.
// Outputs [o0, ow) of one output row; base is the row's first input index.
template <typename T>
[[gnu::always_inline]] inline void max_2x2_row(const T* __restrict r0, const T* __restrict r1, T* __restrict y,
                                               int64_t* __restrict ind, int64_t base, int64_t w, int64_t o0,
                                               int64_t ow) {
  for (int64_t o = o0; o < ow; ++o) {
    T m = r0[2 * o];
    int64_t k = 0;
    const T v01 = r0[2 * o + 1], v10 = r1[2 * o], v11 = r1[2 * o + 1];
    // | rather than ||: no branch to mispredict on random data.
    bool t = (v01 > m) | (v01 != v01);
    m = t ? v01 : m;
    k = t ? 1 : k;
    t = (v10 > m) | (v10 != v10);
    m = t ? v10 : m;
    k = t ? w : k;
    t = (v11 > m) | (v11 != v11);
    y[o] = t ? v11 : m;
    if (ind) ind[o] = base + 2 * o + (t ? w + 1 : k);
  }
}

template <typename T>
[[gnu::always_inline]] inline void max_pool_2x2_body_any(const PoolPlanes<T>& a, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const T* xp = a.x + a.xp.offset(p);
    for (int64_t oh = 0; oh < a.oh; ++oh) {
      const T* r0 = xp + 2 * oh * a.xp.sh;
      max_2x2_row(r0, r0 + a.xp.sh, a.y + (p * a.oh + oh) * a.ow, a.ind ? a.ind + (p * a.oh + oh) * a.ow : nullptr,
                  2 * oh * a.w, a.w, 0, a.ow);
    }
  }
}

#if defined(__x86_64__)
// float32 with AVX-512: 16 outputs a step, the even and odd columns of each
// row split by one permute each; the same comparisons, lane by lane.
[[gnu::target("avx512f")]] void max_pool_2x2_f32_avx512(const PoolPlanes<float>& a, int64_t p0, int64_t p1) {
  const int64_t ow = a.ow, w = a.w;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i lanes2 = even;  // 2 * lane
  for (int64_t p = p0; p < p1; ++p) {
    const float* xp = a.x + a.xp.offset(p);
    for (int64_t oh = 0; oh < a.oh; ++oh) {
      const float* r0 = xp + 2 * oh * a.xp.sh;
      const float* r1 = r0 + a.xp.sh;
      float* y = a.y + (p * a.oh + oh) * ow;
      int64_t* ind = a.ind ? a.ind + (p * a.oh + oh) * ow : nullptr;
      const int64_t base = 2 * oh * w;
      for (int64_t o = 0; o < ow; o += 16) {
        // The last step of a row (CNN rows are 14 or 7 wide) is masked.
        const int64_t n = std::min<int64_t>(16, ow - o);
        const __mmask16 out_mask = static_cast<__mmask16>((1u << n) - 1);
        const __mmask16 lo = static_cast<__mmask16>(n >= 8 ? 0xFFFF : (1u << (2 * n)) - 1);
        const __mmask16 hi = static_cast<__mmask16>(n > 8 ? (1u << (2 * n - 16)) - 1 : 0);
        const __m512 a0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * o), a1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * o + 16);
        const __m512 b0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * o), b1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * o + 16);
        const __m512 v01 = _mm512_permutex2var_ps(a0, odd, a1);
        const __m512 v10 = _mm512_permutex2var_ps(b0, even, b1), v11 = _mm512_permutex2var_ps(b0, odd, b1);
        __m512 m = _mm512_permutex2var_ps(a0, even, a1);
        __m512i k = _mm512_setzero_si512();
        __mmask16 t = _mm512_cmp_ps_mask(v01, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v01, v01, _CMP_UNORD_Q);
        m = _mm512_mask_mov_ps(m, t, v01);
        k = _mm512_mask_mov_epi32(k, t, _mm512_set1_epi32(1));
        t = _mm512_cmp_ps_mask(v10, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v10, v10, _CMP_UNORD_Q);
        m = _mm512_mask_mov_ps(m, t, v10);
        k = _mm512_mask_mov_epi32(k, t, _mm512_set1_epi32(static_cast<int32_t>(w)));
        t = _mm512_cmp_ps_mask(v11, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v11, v11, _CMP_UNORD_Q);
        m = _mm512_mask_mov_ps(m, t, v11);
        k = _mm512_mask_mov_epi32(k, t, _mm512_set1_epi32(static_cast<int32_t>(w + 1)));
        _mm512_mask_storeu_ps(y + o, out_mask, m);
        if (ind) {
          // In-plane offsets fit int32 (max_pool_fast checks the plane size).
          const __m512i off = _mm512_add_epi32(_mm512_add_epi32(k, lanes2), _mm512_set1_epi32(static_cast<int32_t>(2 * o)));
          const __m512i base64 = _mm512_set1_epi64(base);
          _mm512_mask_storeu_epi64(ind + o, static_cast<__mmask8>(out_mask & 0xFF),
                                   _mm512_add_epi64(base64, _mm512_maskz_cvtepi32_epi64(0xFF, _mm512_maskz_extracti64x4_epi64(0xF, off, 0))));
          _mm512_mask_storeu_epi64(ind + o + 8, static_cast<__mmask8>(out_mask >> 8),
                                   _mm512_add_epi64(base64, _mm512_maskz_cvtepi32_epi64(0xFF, _mm512_maskz_extracti64x4_epi64(0xF, off, 1))));
        }
      }
    }
  }
}
#endif

template <typename T>
using PlanesFn = void (*)(const PoolPlanes<T>&, int64_t, int64_t);

// The ISA clones of one plane loop, and the pick by gemm_isa() (cpu_isa.h).
#define LOOM_POOL_CLONES(name, body)                                                        \
  LOOM_ISA_CLONES(template <typename T>, name, (const PoolPlanes<T>& a, int64_t p0, int64_t p1), , \
                  body##_any<T>(a, p0, p1))
LOOM_POOL_CLONES(max_pool_planes, max_pool_planes_body)
LOOM_POOL_CLONES(max_pool_2x2, max_pool_2x2_body)
LOOM_POOL_CLONES(avg_pool_planes, avg_pool_planes_body)
LOOM_POOL_CLONES(avg_pool_backward_planes, avg_pool_backward_planes_body)
#undef LOOM_POOL_CLONES

bool fast_dtype(DType t) { return t == kFloat32 || t == kFloat64; }

// float32 / float64, input rows contiguous, outputs contiguous.
bool max_pool_fast(const KernelCall& c) {
  const TensorImpl* x = c.in[0];
  TensorImpl *y = c.out[0], *ind = c.out.size() > 1 ? c.out[1] : nullptr;
  if (!vec_enabled() || !fast_dtype(x->dtype) || !rows_contiguous(x) || !y->is_contiguous() ||
      (ind && (ind->dtype != kInt64 || !ind->is_contiguous())))
    return false;
  const Window2d& w = window_of(c);
  const Planes px = planes_of(x);
  const int64_t oh = y->sizes[2], ow = y->sizes[3];
  WorkspaceLayout ws = carve(c);
  const PoolScratch scratch = take_pool_scratch(ws, c);
  int64_t *first_row = scratch.first_row, *first_col = scratch.first_col, *code_delta = scratch.code_delta;
  first_inside(rows_of(w, px.h, oh), first_row);
  first_inside(cols_of(w, px.w, ow), first_col);
  for (int64_t i = 0; i < w.kh; ++i)
    for (int64_t j = 0; j < w.kw; ++j) code_delta[i * w.kw + j] = i * w.dh * px.w + j * w.dw;
  // The argmax codes are int32 (Note [Pooling row blocks]): a block wider than that takes the reference.
  PoolPlanes<float> block;
  block.w = px.w;
  block.oh = oh;
  block.ow = ow;
  block.win = w;
  set_block_geometry(block);
  if (ind && block.rows_per_block * block.seg + w.kh * w.kw > std::numeric_limits<int32_t>::max()) return false;
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      PoolPlanes<T> a;
      a.x = data_ptr<T>(x);
      a.xp = px;
      a.y = data_ptr<T>(y);
      a.ind = ind ? data_ptr<int64_t>(ind) : nullptr;
      a.h = px.h;
      a.w = px.w;
      a.oh = oh;
      a.ow = ow;
      a.win = w;
      a.first_row = first_row;
      a.first_col = first_col;
      a.code_delta = code_delta;
      set_block_geometry(a);
      const bool two_by_two = w.kh == 2 && w.kw == 2 && w.sh == 2 && w.sw == 2 && w.ph == 0 && w.pw == 0 &&
                              w.dh == 1 && w.dw == 1 && 2 * oh <= px.h && 2 * ow <= px.w;
      if (two_by_two) {
        PlanesFn<T> fn = max_pool_2x2<T>();
#if defined(__x86_64__)
        if constexpr (std::is_same_v<T, float>)
          if (gemm_isa() == GemmIsa::Avx512 && px.h * px.w < (int64_t{1} << 30)) fn = &max_pool_2x2_f32_avx512;
#endif
        parallel_for(0, px.count(), planes_grain(oh * ow * 4), [&](int64_t lo, int64_t hi) { fn(a, lo, hi); });
        return;
      }
      const PlanesFn<T> fn = max_pool_planes<T>();
      run_planes(a, scratch, px.count(), planes_grain(oh * ow * w.kh * w.kw), fn);
    }
  });
  return true;
}

bool avg_pool_fast(const KernelCall& c) {
  const TensorImpl* x = c.in[0];
  TensorImpl* y = c.out[0];
  if (!vec_enabled() || !fast_dtype(x->dtype) || !rows_contiguous(x) || !y->is_contiguous()) return false;
  const Window2d& w = window_of(c);
  const Planes px = planes_of(x);
  const int64_t oh = y->sizes[2], ow = y->sizes[3];
  WorkspaceLayout ws = carve(c);
  const PoolScratch scratch = take_pool_scratch(ws, c);
  avg_divisors(w, px.h, px.w, oh, ow, c.i[0] != 0, c.i[1], scratch.div);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      T* divt = static_cast<T*>(scratch.div_t);
      std::copy(scratch.div, scratch.div + oh * ow, divt);
      PoolPlanes<T> a;
      a.x = data_ptr<T>(x);
      a.xp = px;
      a.y = data_ptr<T>(y);
      a.h = px.h;
      a.w = px.w;
      a.oh = oh;
      a.ow = ow;
      a.win = w;
      a.div = divt;
      set_block_geometry(a);
      const PlanesFn<T> fn = avg_pool_planes<T>();
      run_planes(a, scratch, px.count(), planes_grain(oh * ow * w.kh * w.kw), fn);
    }
  });
  return true;
}

bool avg_pool_backward_fast(const KernelCall& c) {
  const TensorImpl* g = c.in[0];
  TensorImpl* dx = c.out[0];
  if (!vec_enabled() || !fast_dtype(g->dtype) || !g->is_contiguous() || !dx->is_contiguous()) return false;
  const Window2d& w = window_of(c);
  const int64_t h = dx->sizes[2], wd = dx->sizes[3], oh = g->sizes[2], ow = g->sizes[3];
  WorkspaceLayout ws = carve(c);
  const PoolScratch scratch = take_pool_scratch(ws, c);
  avg_divisors(w, h, wd, oh, ow, c.i[0] != 0, c.i[1], scratch.div);
  dispatch_float(g->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      T* divt = static_cast<T*>(scratch.div_t);
      std::copy(scratch.div, scratch.div + oh * ow, divt);
      PoolPlanes<T> a;
      a.x = data_ptr<T>(g);
      a.y = data_ptr<T>(dx);
      a.h = h;
      a.w = wd;
      a.oh = oh;
      a.ow = ow;
      a.win = w;
      a.div = divt;
      set_block_geometry(a);
      const PlanesFn<T> fn = avg_pool_backward_planes<T>();
      run_planes(a, scratch, dx->sizes[0] * dx->sizes[1], planes_grain(oh * ow * w.kh * w.kw + h * wd), fn);
    }
  });
  return true;
}

// dx[p][ind[p][o]] += g[p][o], outputs in order: a scatter, so no vector
// loop; the contiguous form only drops the stride arithmetic.
bool max_pool_backward_fast(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *ind = c.in[1];
  TensorImpl* dx = c.out[0];
  if (!vec_enabled() || !fast_dtype(g->dtype) || !g->is_contiguous() || ind->dtype != kInt64 || !ind->is_contiguous() ||
      !dx->is_contiguous())
    return false;
  const int64_t plane = dx->sizes[2] * dx->sizes[3], outs = g->sizes[2] * g->sizes[3];
  const int64_t h = dx->sizes[2], wd = dx->sizes[3];
  dispatch_float(g->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const T* gd = data_ptr<T>(g);
      const int64_t* id = data_ptr<int64_t>(ind);
      T* dd = data_ptr<T>(dx);
      parallel_for(0, dx->sizes[0] * dx->sizes[1], planes_grain(plane + outs), [&](int64_t lo, int64_t hi) {
        for (int64_t p = lo; p < hi; ++p) {
          const T* gp = gd + p * outs;
          const int64_t* ip = id + p * outs;
          T* dp = dd + p * plane;
          std::fill(dp, dp + plane, T(0));
          for (int64_t o = 0; o < outs; ++o) {
            const int64_t k = ip[o];
            LOOM_CHECK(k >= 0 && k < plane, "MaxPool2dBackward: index ", k, " is out of range for a plane of ", h, "x",
                       wd);
            dp[k] += gp[o];
          }
        }
      });
    }
  });
  return true;
}

void check_pool_shapes(const KernelCall& c, const TensorImpl* in, const TensorImpl* out) {
  LOOM_ASSERT(in->dim() == 4 && out->dim() == 4 && in->sizes[0] == out->sizes[0] && in->sizes[1] == out->sizes[1],
              op_name(c.op), ": input ", shape_str(in->sizes), ", output ", shape_str(out->sizes));
}

}  // namespace

namespace kernel {

void MaxPool2d(const KernelCall& c) {
  check_pool_shapes(c, c.in[0], c.out[0]);
  LOOM_ASSERT(c.in[0]->dtype == c.out[0]->dtype, "MaxPool2d: mixed dtypes");
  if (c.out[0]->numel() == 0) return;
  if (!max_pool_fast(c)) max_pool_reference(c);
}

void MaxPool2dBackward(const KernelCall& c) {
  check_pool_shapes(c, c.out[0], c.in[0]);
  LOOM_ASSERT(c.in[0]->sizes == c.in[1]->sizes, "MaxPool2dBackward: grad ", shape_str(c.in[0]->sizes), ", indices ",
              shape_str(c.in[1]->sizes));
  if (c.out[0]->numel() == 0) return;
  if (!max_pool_backward_fast(c)) max_pool_backward_reference(c);
}

void AvgPool2d(const KernelCall& c) {
  check_pool_shapes(c, c.in[0], c.out[0]);
  LOOM_ASSERT(c.in[0]->dtype == c.out[0]->dtype, "AvgPool2d: mixed dtypes");
  if (c.out[0]->numel() == 0) return;
  if (!avg_pool_fast(c)) avg_pool_reference(c);
}

void AvgPool2dBackward(const KernelCall& c) {
  check_pool_shapes(c, c.out[0], c.in[0]);
  if (c.out[0]->numel() == 0) return;
  if (!avg_pool_backward_fast(c)) avg_pool_backward_reference(c);
}

}  // namespace kernel
namespace workspace {

// Note [Pooling workspaces]: one bound for every path of each op.
size_t pool(const KernelCall& c) {
  if (c.out[0]->numel() == 0) return 0;
  WorkspaceLayout ws;
  take_pool_scratch(ws, c);
  return ws.bytes();
}
size_t MaxPool2d(const KernelCall& c) { return pool(c); }
size_t MaxPool2dBackward(const KernelCall& c) { return pool(c); }
size_t AvgPool2d(const KernelCall& c) { return pool(c); }
size_t AvgPool2dBackward(const KernelCall& c) { return pool(c); }

}  // namespace workspace
}  // namespace loom::cpu
