// Convolution kernels: Conv2d, ConvTranspose2d (the input gradient) and
// Conv2dWeight (the weight gradient), NCHW, calling conventions in ops.def.
//
// Two paths per kernel:
//  - the reference: direct loops over every output element, summing in
//    double in a fixed order, any dtype of the float family and any strides.
//    It runs for every dtype but float32 and is the oracle the fast path is
//    tested against (float64 through the op harness);
//  - float32 on loom's GEMM (Note [Convolution as GEMM]).
//
// Note [Convolution as GEMM]
// For one sample n and one group, with L = OH * OW output positions and
// Q = C/groups * KH * KW taps, im2col lays the input patches out as a
// column matrix col (Q, L): col[(c, kh, kw), (oh, ow)] = x[n, c, oh*sh - ph +
// kh*dh, ow*sw - pw + kw*dw] (0 in the padding). Then
//   forward          y[n] (O, L)  = w (O, Q) @ col (Q, L)           (+ bias per row)
//   input gradient   col (Q, L)   = w^T (Q, O) @ g[n] (O, L), then col2im adds
//                                   each column entry back into its input pixel
//   weight gradient  dw (O, Q)    = sum over n of g[n] (O, L) @ col^T (L, Q)
// A 1x1 kernel with stride 1 and no padding needs no col: x[n] viewed as
// (C, H*W) is col already.
// All three work on chunks of samples side by side (columns [i L, (i + 1) L)
// of a chunk's col belong to its sample i), so a GEMM has a few hundred
// columns even when L is small (a 1x1 map would otherwise be a
// matrix-vector product per sample). The chunk size depends on L alone
// (kChunkColumns, kWeightDepth). Chunks split over threads, each with its own
// buffers (col stays in cache between im2col and the GEMM); fewer chunks
// than threads run one after another on the GEMM's own threads. The weight
// gradient multiplies each chunk as one GEMM of depth nb * L into a partial
// sum and adds the partials in chunk order. Every element is thus computed
// in one order that depends on the shapes only, never on the thread count.
#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_scratch.h"
#include "backend/cpu/cpu_winograd.h"
#include "backend/window2d.h"
#include "core/allocator.h"

namespace loom::cpu {

namespace {

// Depth (samples x positions) of one weight-gradient chunk.
constexpr int64_t kWeightDepth = 1024;

// The shapes of one convolution, in the forward direction: x (N, C, H, W),
// w (O, C/G, KH, KW), y (N, O, OH, OW).
struct ConvShape {
  int64_t n, c, h, w, o, oh, ow, groups;
  int64_t cg() const { return c / groups; }
  int64_t og() const { return o / groups; }
};

ConvShape conv_shape(const TensorImpl* x, const TensorImpl* w, const TensorImpl* y, int64_t groups) {
  return {x->sizes[0], x->sizes[1], x->sizes[2], x->sizes[3], w->sizes[0], y->sizes[2], y->sizes[3], groups};
}

void check_conv(const char* op, const ConvShape& s, const TensorImpl* x, const TensorImpl* w, const TensorImpl* y,
                const Window2d& win) {
  LOOM_ASSERT(x->dim() == 4 && w->dim() == 4 && y->dim() == 4 && s.groups > 0 && s.c % s.groups == 0 &&
                  s.o % s.groups == 0 && w->sizes[1] == s.cg() && w->sizes[2] == win.kh && w->sizes[3] == win.kw &&
                  y->sizes[0] == s.n && y->sizes[1] == s.o,
              op, ": shapes x ", shape_str(x->sizes), ", w ", shape_str(w->sizes), ", y ", shape_str(y->sizes));
  LOOM_ASSERT(x->dtype == w->dtype && x->dtype == y->dtype, op, ": mixed dtypes");
}

// ---- reference ----

// 4-d strided element access.
struct At4 {
  int64_t s0, s1, s2, s3;
  explicit At4(const TensorImpl* t) : s0(t->strides[0]), s1(t->strides[1]), s2(t->strides[2]), s3(t->strides[3]) {}
  int64_t operator()(int64_t a, int64_t b, int64_t c, int64_t d) const { return a * s0 + b * s1 + c * s2 + d * s3; }
};

// y[n, o, oh, ow] = bias[o] + sum over (c, kh, kw) of x * w.
template <typename T>
void conv_forward_reference(const ConvShape& s, const Window2d& win, const TensorImpl* xt, const TensorImpl* wt,
                            const TensorImpl* bt, TensorImpl* yt) {
  const T* x = data_ptr<T>(xt);
  const T* w = data_ptr<T>(wt);
  const T* b = bt != nullptr ? data_ptr<T>(bt) : nullptr;
  T* y = data_ptr<T>(yt);
  const At4 ax(xt), aw(wt), ay(yt);
  const int64_t bs = bt != nullptr ? bt->strides[0] : 0;
  parallel_for(0, s.n * s.o, 1, [&](int64_t begin, int64_t end) {
    for (int64_t no = begin; no < end; ++no) {
      const int64_t n = no / s.o, o = no % s.o, g = o / s.og();
      for (int64_t oh = 0; oh < s.oh; ++oh)
        for (int64_t ow = 0; ow < s.ow; ++ow) {
          double acc = 0;
          for (int64_t ci = 0; ci < s.cg(); ++ci)
            for (int64_t kh = 0; kh < win.kh; ++kh) {
              const int64_t ih = oh * win.sh - win.ph + kh * win.dh;
              if (ih < 0 || ih >= s.h) continue;
              for (int64_t kw = 0; kw < win.kw; ++kw) {
                const int64_t iw = ow * win.sw - win.pw + kw * win.dw;
                if (iw < 0 || iw >= s.w) continue;
                acc += convert<double>(x[ax(n, g * s.cg() + ci, ih, iw)]) * convert<double>(w[aw(o, ci, kh, kw)]);
              }
            }
          if (b != nullptr) acc += convert<double>(b[o * bs]);
          y[ay(n, o, oh, ow)] = convert<T>(acc);
        }
    }
  });
}

// dx[n, c, ih, iw] = sum over the (o, oh, ow, kh, kw) whose window reads (ih, iw) of g * w.
template <typename T>
void conv_input_grad_reference(const ConvShape& s, const Window2d& win, const TensorImpl* gt, const TensorImpl* wt,
                               TensorImpl* dxt) {
  const T* g = data_ptr<T>(gt);
  const T* w = data_ptr<T>(wt);
  T* dx = data_ptr<T>(dxt);
  const At4 ag(gt), aw(wt), adx(dxt);
  parallel_for(0, s.n * s.c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / s.c, c = nc % s.c, grp = c / s.cg(), ci = c % s.cg();
      for (int64_t ih = 0; ih < s.h; ++ih)
        for (int64_t iw = 0; iw < s.w; ++iw) {
          double acc = 0;
          for (int64_t kh = 0; kh < win.kh; ++kh) {
            const int64_t th = ih + win.ph - kh * win.dh;
            if (th < 0 || th % win.sh != 0 || th / win.sh >= s.oh) continue;
            for (int64_t kw = 0; kw < win.kw; ++kw) {
              const int64_t tw = iw + win.pw - kw * win.dw;
              if (tw < 0 || tw % win.sw != 0 || tw / win.sw >= s.ow) continue;
              for (int64_t oi = 0; oi < s.og(); ++oi) {
                const int64_t o = grp * s.og() + oi;
                acc += convert<double>(g[ag(n, o, th / win.sh, tw / win.sw)]) * convert<double>(w[aw(o, ci, kh, kw)]);
              }
            }
          }
          dx[adx(n, c, ih, iw)] = convert<T>(acc);
        }
    }
  });
}

// dw[o, ci, kh, kw] = sum over (n, oh, ow) of x * g.
template <typename T>
void conv_weight_grad_reference(const ConvShape& s, const Window2d& win, const TensorImpl* xt, const TensorImpl* gt,
                                TensorImpl* dwt) {
  const T* x = data_ptr<T>(xt);
  const T* g = data_ptr<T>(gt);
  T* dw = data_ptr<T>(dwt);
  const At4 ax(xt), ag(gt), adw(dwt);
  parallel_for(0, s.o * s.cg(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t oc = begin; oc < end; ++oc) {
      const int64_t o = oc / s.cg(), ci = oc % s.cg(), c = (o / s.og()) * s.cg() + ci;
      for (int64_t kh = 0; kh < win.kh; ++kh)
        for (int64_t kw = 0; kw < win.kw; ++kw) {
          double acc = 0;
          for (int64_t n = 0; n < s.n; ++n)
            for (int64_t oh = 0; oh < s.oh; ++oh) {
              const int64_t ih = oh * win.sh - win.ph + kh * win.dh;
              if (ih < 0 || ih >= s.h) continue;
              for (int64_t ow = 0; ow < s.ow; ++ow) {
                const int64_t iw = ow * win.sw - win.pw + kw * win.dw;
                if (iw < 0 || iw >= s.w) continue;
                acc += convert<double>(x[ax(n, c, ih, iw)]) * convert<double>(g[ag(n, o, oh, ow)]);
              }
            }
          dw[adw(o, ci, kh, kw)] = convert<T>(acc);
        }
    }
  });
}

// ---- float32 on the GEMM ----

bool is_pointwise(const Window2d& win) {
  return win.kh == 1 && win.kw == 1 && win.sh == 1 && win.sw == 1 && win.ph == 0 && win.pw == 0;
}

// The valid output range [lo, hi) along one dim for tap offset `off`
// (input index = o * stride + off): the o with 0 <= o * stride + off < size.
void valid_range(int64_t off, int64_t stride, int64_t size, int64_t out, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = off >= size ? 0 : (size - off + stride - 1) / stride;
  lo = std::min(lo, out);
  hi = std::clamp(hi, lo, out);
}

// Note [Dead taps]
// A tap (kh, kw) whose every read falls in the padding (a 3x3 kernel with
// padding 1 on a 1x1 map has 8 such taps) contributes only zeros. The GEMM
// path leaves those taps out of col and of the weight matrix, so its depth
// is C/G * (live taps): 9x less work on the 1x1 maps deep in a ResNet.
struct Taps {
  std::vector<std::array<int64_t, 2>> live;  // (kh, kw) in row-major order
  bool all = true;                           // every tap is live
  int64_t size() const { return static_cast<int64_t>(live.size()); }
};

Taps live_taps(const ConvShape& s, const Window2d& win) {
  Taps t;
  for (int64_t kh = 0; kh < win.kh; ++kh)
    for (int64_t kw = 0; kw < win.kw; ++kw) {
      int64_t oh0, oh1, ow0, ow1;
      valid_range(kh * win.dh - win.ph, win.sh, s.h, s.oh, oh0, oh1);
      valid_range(kw * win.dw - win.pw, win.sw, s.w, s.ow, ow0, ow1);
      if (oh1 > oh0 && ow1 > ow0) t.live.push_back({kh, kw});
    }
  t.all = t.size() == win.kh * win.kw;
  return t;
}

// One pixel in, one pixel out, one live tap (a 3x3 convolution with padding
// 1 on a 1x1 map): x and y are (n, c) and (n, o) matrices, and each of the
// three primitives is one GEMM over the whole batch with the tap's weights,
// no im2col or col2im.
bool single_pixel(const ConvShape& s, const Taps& taps) {
  return s.groups == 1 && s.h * s.w == 1 && s.oh * s.ow == 1 && taps.size() == 1;
}

// The weight (O, C/G, KH, KW) as the GEMM's (O, C/G * live taps) matrix:
// w itself when every tap is live, else the live columns copied to `buf`.
const float* weight_matrix(const float* w, const ConvShape& s, const Window2d& win, const Taps& taps,
                           WorkspaceLayout& ws) {
  if (taps.all) return w;
  const int64_t t = taps.size(), cg = s.cg();
  float* buf = ws.take<float>(s.o * cg * t);
  if (!ws.carving()) return nullptr;
  for (int64_t o = 0; o < s.o; ++o)
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t k = 0; k < t; ++k)
        buf[(o * cg + c) * t + k] = w[((o * cg + c) * win.kh + taps.live[k][0]) * win.kw + taps.live[k][1]];
  return buf;
}

// col (cg * live taps, OH * OW), row-major with row stride ld, from one
// sample's channels x (cg, H, W) contiguous.
void im2col(const float* x, const ConvShape& s, const Window2d& win, const Taps& taps, int64_t cg, float* col,
            int64_t ld) {
  const int64_t hw = s.h * s.w;
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t k = 0; k < taps.size(); ++k) {
      const int64_t kh = taps.live[k][0], kw = taps.live[k][1];
      float* row = col + (c * taps.size() + k) * ld;
      const float* plane = x + c * hw;
      const int64_t offh = kh * win.dh - win.ph, offw = kw * win.dw - win.pw;
      int64_t oh0, oh1, ow0, ow1;
      valid_range(offh, win.sh, s.h, s.oh, oh0, oh1);
      valid_range(offw, win.sw, s.w, s.ow, ow0, ow1);
      std::fill(row, row + oh0 * s.ow, 0.0f);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        float* dst = row + oh * s.ow;
        const float* src = plane + (oh * win.sh + offh) * s.w + offw;
        std::fill(dst, dst + ow0, 0.0f);
        if (win.sw == 1) {
          std::memcpy(dst + ow0, src + ow0, static_cast<size_t>(ow1 - ow0) * sizeof(float));
        } else {
          for (int64_t ow = ow0; ow < ow1; ++ow) dst[ow] = src[ow * win.sw];
        }
        std::fill(dst + ow1, dst + s.ow, 0.0f);
      }
      std::fill(row + oh1 * s.ow, row + s.oh * s.ow, 0.0f);
    }
}

// The inverse scatter: x (cg, H, W) += each col entry at its input pixel
// (padding entries dropped), rows in order.
void col2im_add(const float* col, int64_t ld, const ConvShape& s, const Window2d& win, const Taps& taps, int64_t cg,
                float* x) {
  const int64_t hw = s.h * s.w;
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t k = 0; k < taps.size(); ++k) {
      const int64_t kh = taps.live[k][0], kw = taps.live[k][1];
      const float* row = col + (c * taps.size() + k) * ld;
      float* plane = x + c * hw;
      const int64_t offh = kh * win.dh - win.ph, offw = kw * win.dw - win.pw;
      int64_t oh0, oh1, ow0, ow1;
      valid_range(offh, win.sh, s.h, s.oh, oh0, oh1);
      valid_range(offw, win.sw, s.w, s.ow, ow0, ow1);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const float* src = row + oh * s.ow;
        float* dst = plane + (oh * win.sh + offh) * s.w + offw;
        if (win.sw == 1) {
          for (int64_t ow = ow0; ow < ow1; ++ow) dst[ow] += src[ow];
        } else {
          for (int64_t ow = ow0; ow < ow1; ++ow) dst[ow * win.sw] += src[ow];
        }
      }
    }
}


// Samples per GEMM of the forward and input gradient: one when a sample
// has at least kChunkMinColumns output positions (the GEMM then reads and
// writes the tensors in place), else enough for about kChunkColumns (a
// product of L = 1 column would be a matrix-vector product; chunks cost a
// copy of the output or the gradient into the chunk's layout). Fixed by L alone.
constexpr int64_t kChunkColumns = 512;
constexpr int64_t kChunkMinColumns = 128;

int64_t samples_per_chunk(int64_t n, int64_t l) {
  if (l >= kChunkMinColumns) return 1;
  return std::clamp<int64_t>(kChunkColumns / std::max<int64_t>(l, 1), 1, std::max<int64_t>(n, 1));
}

// 3x3, stride 1, undilated, ungrouped: the Winograd candidates (Note [Winograd convolution]).
bool winograd_geometry(const ConvShape& s, const Window2d& win) {
  return s.groups == 1 && win.kh == 3 && win.kw == 3 && win.sh == 1 && win.sw == 1 && win.dh == 1 && win.dw == 1;
}

// Note [Convolution workspaces]
// The float32 paths below take every buffer (the live-tap weight matrix,
// im2col columns, gathered gradients, partial weight gradients, the GEMMs'
// packing space, Winograd's transforms) from `ws` before they compute: the
// workspace size function runs the same function with a sizing layout,
// which counts the takes and returns (Note [Kernel workspaces]).

// x, w, y contiguous (the ops layer's promise for float32). Per chunk of nb
// samples and per group: col (q, nb * L) from im2col, then
// y (og, nb * L) = w (og, q) @ col, written straight into y when nb == 1 and
// through a buffer (then copied out per sample) otherwise.
void conv_forward_f32(WorkspaceLayout& ws, const ConvShape& s, const Window2d& win, const TensorImpl* xt,
                      const TensorImpl* wt, const TensorImpl* bt, TensorImpl* yt) {
  const float* x = data_ptr<float>(xt);
  const float* w = data_ptr<float>(wt);
  const float* b = bt != nullptr ? data_ptr<float>(bt) : nullptr;
  const int64_t bs = bt != nullptr ? bt->strides[0] : 0;
  float* y = data_ptr<float>(yt);
  if (winograd_geometry(s, win) && winograd_suits(s.c, s.o, s.oh, s.ow)) {
    winograd_conv3x3_f32(ws, x, s.n, s.c, s.h, s.w, w, false, s.o, s.oh, s.ow, win.ph, win.pw, b, bs, y);
    return;
  }
  const Taps taps = live_taps(s, win);
  w = weight_matrix(w, s, win, taps, ws);
  const int64_t cg = s.cg(), og = s.og(), l = s.oh * s.ow, q = cg * taps.size();
  const int64_t per = samples_per_chunk(s.n, l), chunks = (s.n + per - 1) / per, cols = per * l;
  const bool pointwise = is_pointwise(win);
  const GemmIsa isa = gemm_isa();
  if (single_pixel(s, taps)) {
    // y (n, o) = x (n, c) @ w^T (c, o) + b.
    const SgemmEpilogue epilogue{b, bs, false, nullptr, nullptr};
    const GemmWorkspace pack = take_gemm(ws, 1, s.n, s.o, s.c, b != nullptr && bs != 1);
    if (!ws.carving()) return;
    sgemm(isa, 1, s.n, s.o, s.c, {x, 0, s.c, 1}, {w, 0, 1, q}, {y, 0, s.o, 1}, &epilogue, pack);
    return;
  }
  for_each_chunk(ws, chunks, pointwise && per == 1 ? 0 : q * cols, per == 1 ? 0 : og * cols, {og, cols, q},
                 [&](int64_t ch, float* col, float* out, GemmWorkspace pack) {
    const int64_t n0 = ch * per, nb = std::min(per, s.n - n0), width = nb * l;
    for (int64_t g = 0; g < s.groups; ++g) {
      const float* bmat = col;
      if (pointwise && nb == 1) {
        bmat = x + (n0 * s.c + g * cg) * s.h * s.w;
      } else {
        for (int64_t i = 0; i < nb; ++i)
          im2col(x + ((n0 + i) * s.c + g * cg) * s.h * s.w, s, win, taps, cg, col + i * l, cols);
      }
      const SgemmInput bin{bmat, 0, nb == 1 && pointwise ? l : cols, 1};
      if (nb == 1) {
        float* ys = y + (n0 * s.o + g * og) * l;
        sgemm(isa, 1, og, l, q, {w + g * og * q, 0, q, 1}, bin, {ys, 0, l, 1}, nullptr, pack);
        if (b != nullptr)
          for (int64_t o = 0; o < og; ++o) {
            const float bo = b[(g * og + o) * bs];
            float* row = ys + o * l;
            for (int64_t j = 0; j < l; ++j) row[j] += bo;
          }
        continue;
      }
      sgemm(isa, 1, og, width, q, {w + g * og * q, 0, q, 1}, bin, {out, 0, cols, 1}, nullptr, pack);
      for (int64_t i = 0; i < nb; ++i)
        for (int64_t o = 0; o < og; ++o) {
          const float* src = out + o * cols + i * l;
          float* dst = y + ((n0 + i) * s.o + g * og + o) * l;
          const float bo = b != nullptr ? b[(g * og + o) * bs] : 0.0f;
          if (b != nullptr) {
            for (int64_t j = 0; j < l; ++j) dst[j] = src[j] + bo;
          } else {
            std::memcpy(dst, src, static_cast<size_t>(l) * sizeof(float));
          }
        }
    }
  });
}

// Per chunk and group: gbuf (og, nb * L) gathered from g (g itself when
// nb == 1), col (q, nb * L) = w^T (q, og) @ gbuf, then col2im per sample (a
// pointwise kernel with nb == 1 writes dx directly).
void conv_input_grad_f32(WorkspaceLayout& ws, const ConvShape& s, const Window2d& win, const TensorImpl* gt,
                         const TensorImpl* wt, TensorImpl* dxt) {
  const float* g = data_ptr<float>(gt);
  const float* w = data_ptr<float>(wt);
  float* dx = data_ptr<float>(dxt);
  if (winograd_geometry(s, win) && winograd_suits(s.o, s.c, s.h, s.w)) {
    // The correlation of g with the flipped, transposed filter, padded by 2 - p.
    winograd_conv3x3_f32(ws, g, s.n, s.o, s.oh, s.ow, w, true, s.c, s.h, s.w, 2 - win.ph, 2 - win.pw, nullptr, 0, dx);
    return;
  }
  const Taps taps = live_taps(s, win);
  w = weight_matrix(w, s, win, taps, ws);
  const int64_t cg = s.cg(), og = s.og(), l = s.oh * s.ow, q = cg * taps.size();
  const int64_t per = samples_per_chunk(s.n, l), chunks = (s.n + per - 1) / per, cols = per * l;
  const bool pointwise = is_pointwise(win);
  const GemmIsa isa = gemm_isa();
  if (single_pixel(s, taps)) {
    // dx (n, c) = g (n, o) @ w (o, c).
    const GemmWorkspace pack = take_gemm(ws, 1, s.n, s.c, s.o);
    if (!ws.carving()) return;
    sgemm(isa, 1, s.n, s.c, s.o, {g, 0, s.o, 1}, {w, 0, q, 1}, {dx, 0, s.c, 1}, nullptr, pack);
    return;
  }
  for_each_chunk(ws, chunks, pointwise && per == 1 ? 0 : q * cols, per == 1 ? 0 : og * cols, {q, cols, og},
                 [&](int64_t ch, float* col, float* gbuf, GemmWorkspace pack) {
    const int64_t n0 = ch * per, nb = std::min(per, s.n - n0), width = nb * l;
    for (int64_t grp = 0; grp < s.groups; ++grp) {
      // w^T (q, og): element (r, o) at w[o * q + r].
      const SgemmInput wt_in{w + grp * og * q, 0, 1, q};
      SgemmInput gin{g + (n0 * s.o + grp * og) * l, 0, l, 1};
      if (nb > 1) {
        for (int64_t i = 0; i < nb; ++i)
          for (int64_t o = 0; o < og; ++o)
            std::memcpy(gbuf + o * cols + i * l, g + ((n0 + i) * s.o + grp * og + o) * l,
                        static_cast<size_t>(l) * sizeof(float));
        gin = {gbuf, 0, cols, 1};
      }
      if (pointwise && nb == 1) {
        sgemm(isa, 1, q, l, og, wt_in, gin, {dx + (n0 * s.c + grp * cg) * s.h * s.w, 0, l, 1}, nullptr, pack);
        continue;
      }
      sgemm(isa, 1, q, width, og, wt_in, gin, {col, 0, cols, 1}, nullptr, pack);
      for (int64_t i = 0; i < nb; ++i) {
        float* dxs = dx + ((n0 + i) * s.c + grp * cg) * s.h * s.w;
        std::fill(dxs, dxs + cg * s.h * s.w, 0.0f);
        col2im_add(col + i * l, cols, s, win, taps, cg, dxs);
      }
    }
  });
}

void conv_weight_grad_f32(WorkspaceLayout& ws, const ConvShape& s, const Window2d& win, const TensorImpl* xt,
                          const TensorImpl* gt, TensorImpl* dwt) {
  const float* x = data_ptr<float>(xt);
  const float* g = data_ptr<float>(gt);
  float* dw = data_ptr<float>(dwt);
  if (winograd_geometry(s, win) && winograd_suits(s.c, s.o, s.oh, s.ow)) {
    winograd_weight_grad3x3_f32(ws, x, g, s.n, s.c, s.h, s.w, s.o, s.oh, s.ow, win.ph, win.pw, dw);
    return;
  }
  const Taps taps = live_taps(s, win);
  const int64_t cg = s.cg(), og = s.og(), l = s.oh * s.ow, q = cg * taps.size();
  const int64_t wsize = s.o * q;  // the (o, q) matrix of live taps, contiguous
  // Dead taps (Note [Dead taps]) get exact zeros; the live ones go through
  // `dwc` when some taps are dead.
  float* dwc = taps.all ? dw : ws.take<float>(wsize);
  if (s.n == 0 || l == 0 || q == 0) {
    if (!ws.carving()) return;
    std::fill(dwc, dwc + wsize, 0.0f);
  } else if (single_pixel(s, taps)) {
    // dw (o, c) = g^T (o, n) @ x (n, c): one chain over the batch per element.
    const GemmWorkspace pack = take_gemm(ws, 1, s.o, q, s.n);
    if (!ws.carving()) return;
    sgemm(gemm_isa(), 1, s.o, q, s.n, {g, 0, 1, s.o}, {x, 0, s.c, 1}, {dwc, 0, q, 1}, nullptr, pack);
  } else {
    const int64_t per = std::clamp<int64_t>(kWeightDepth / std::max<int64_t>(l, 1), 1, s.n);
    const int64_t chunks = (s.n + per - 1) / per, depth = per * l;
    // Partial sums, one (o, q) block per chunk after the first (which goes to dwc).
    float* partial = ws.take<float>((chunks - 1) * wsize);
    const GemmIsa isa = gemm_isa();
    for_each_chunk(ws, chunks, q * depth, per > 1 ? og * depth : 0, {og, q, depth},
                   [&](int64_t ch, float* col, float* gbuf, GemmWorkspace pack) {
      const int64_t n0 = ch * per, nb = std::min(per, s.n - n0), kdepth = nb * l;
      float* out = ch == 0 ? dwc : partial + (ch - 1) * wsize;
      for (int64_t grp = 0; grp < s.groups; ++grp) {
        // col (q, nb * l): sample i's columns at [i * l, (i + 1) * l); gbuf (og, nb * l) likewise,
        // or g itself for a chunk of one sample.
        SgemmInput gin{g + (n0 * s.o + grp * og) * l, 0, l, 1};
        for (int64_t i = 0; i < nb; ++i) {
          im2col(x + ((n0 + i) * s.c + grp * cg) * s.h * s.w, s, win, taps, cg, col + i * l, depth);
          if (per > 1)
            for (int64_t o = 0; o < og; ++o)
              std::memcpy(gbuf + o * depth + i * l, g + ((n0 + i) * s.o + grp * og + o) * l,
                          static_cast<size_t>(l) * sizeof(float));
        }
        if (per > 1) gin = {gbuf, 0, depth, 1};
        // dw_g (og, q) = g chunk (og, kdepth) @ col^T (kdepth, q).
        sgemm(isa, 1, og, q, kdepth, gin, {col, 0, 1, depth}, {out + grp * og * q, 0, q, 1}, nullptr, pack);
      }
    });
    if (!ws.carving()) return;
    for (int64_t ch = 1; ch < chunks; ++ch) {
      const float* p = partial + (ch - 1) * wsize;
      for (int64_t k = 0; k < wsize; ++k) dwc[k] += p[k];
    }
  }
  if (!taps.all) {
    // Dead taps get exact zeros, the live ones their column of dwc.
    std::fill(dw, dw + s.o * cg * win.kh * win.kw, 0.0f);
    const int64_t t = taps.size();
    for (int64_t oc = 0; oc < s.o * cg; ++oc)
      for (int64_t k = 0; k < t; ++k)
        dw[(oc * win.kh + taps.live[k][0]) * win.kw + taps.live[k][1]] = dwc[oc * t + k];
  }
}

bool fast_path(const KernelCall& c) {
  if (c.in[0]->dtype != kFloat32) return false;
  for (int k = 0; k < c.in.size(); ++k)
    if (c.in[k] != nullptr && !c.in[k]->is_contiguous() && !(k == 2 && c.in[k]->dim() == 1)) return false;
  return c.out[0]->is_contiguous();
}

}  // namespace

namespace kernel {

void Conv2d(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.in[1], *b = c.in.size() > 2 ? c.in[2] : nullptr;
  TensorImpl* y = c.out[0];
  const Window2d& win = window_of(c);
  const ConvShape s = conv_shape(x, w, y, c.param<ConvParams>().groups);
  check_conv("Conv2d", s, x, w, y, win);
  if (y->numel() == 0) return;
  if (fast_path(c)) {
    WorkspaceLayout ws = carve(c);
    conv_forward_f32(ws, s, win, x, w, b, y);
    return;
  }
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv_forward_reference<T>(s, win, x, w, b, y);
  });
}

void ConvTranspose2d(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *w = c.in[1];
  TensorImpl* dx = c.out[0];
  const Window2d& win = window_of(c);
  const ConvShape s = conv_shape(dx, w, g, c.param<ConvParams>().groups);
  check_conv("ConvTranspose2d", s, dx, w, g, win);
  if (dx->numel() == 0) return;
  if (fast_path(c)) {
    WorkspaceLayout ws = carve(c);
    conv_input_grad_f32(ws, s, win, g, w, dx);
    return;
  }
  dispatch_float(g->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv_input_grad_reference<T>(s, win, g, w, dx);
  });
}

void Conv2dWeight(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *g = c.in[1];
  TensorImpl* dw = c.out[0];
  const Window2d& win = window_of(c);
  const ConvShape s = conv_shape(x, dw, g, c.param<ConvParams>().groups);
  check_conv("Conv2dWeight", s, x, dw, g, win);
  if (dw->numel() == 0) return;
  if (fast_path(c)) {
    WorkspaceLayout ws = carve(c);
    conv_weight_grad_f32(ws, s, win, x, g, dw);
    return;
  }
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv_weight_grad_reference<T>(s, win, x, g, dw);
  });
}

}  // namespace kernel

namespace workspace {

// The float32 paths' buffers, counted by running them with a sizing layout
// (Note [Convolution workspaces]); the reference kernels take none.
size_t Conv2d(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.in[1], *b = c.in.size() > 2 ? c.in[2] : nullptr;
  TensorImpl* y = c.out[0];
  if (y->numel() == 0 || !fast_path(c)) return 0;
  WorkspaceLayout ws;
  conv_forward_f32(ws, conv_shape(x, w, y, c.param<ConvParams>().groups), window_of(c), x, w, b, y);
  return ws.bytes();
}

size_t ConvTranspose2d(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *w = c.in[1];
  TensorImpl* dx = c.out[0];
  if (dx->numel() == 0 || !fast_path(c)) return 0;
  WorkspaceLayout ws;
  conv_input_grad_f32(ws, conv_shape(dx, w, g, c.param<ConvParams>().groups), window_of(c), g, w, dx);
  return ws.bytes();
}

size_t Conv2dWeight(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *g = c.in[1];
  TensorImpl* dw = c.out[0];
  if (dw->numel() == 0 || !fast_path(c)) return 0;
  WorkspaceLayout ws;
  conv_weight_grad_f32(ws, conv_shape(x, dw, g, c.param<ConvParams>().groups), window_of(c), x, g, dw);
  return ws.bytes();
}

}  // namespace workspace

}  // namespace loom::cpu
