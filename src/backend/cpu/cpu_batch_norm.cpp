// The batch norm kernels: BatchNorm and BatchNormBackward (calling
// conventions in ops.def).
//
// Note [Batch norm kernels]
// An (N, C, S) input is normalized per channel c over its N * S values.
// The reference (every float dtype, every stride) takes one channel per
// thread and sums in double in two passes: the mean, then the squared
// deviations. The fast path (float32 / float64, runs of S contiguous or
// S == 1, contiguous outputs) also goes channel by channel, and handles
// each channel whole while its values are in cache: one read for the
// statistics, the sums of d = x - K and d^2 in double with K the channel's
// first value (so var = mean(d^2) - mean(d)^2 cancels only as much as the
// mean lies away from K in standard deviations, a few for a value of the
// channel itself, which double precision absorbs), then PyTorch's
// y = x * alpha + beta (alpha = rstd * w, beta = b - mean * alpha). The
// backward sums g and g * (x - mean), then writes dx = (g - mean(g) -
// (x - mean) * k) * rstd * w with k = rstd^2 * mean(g * (x - mean))
// (PyTorch's form), evaluated in double so the cancelling terms lose
// nothing. Sums run in kLanes double lanes, element i of each run of S going
// to lane i mod kLanes, the lanes added in order at the end: a fixed order
// whatever the ISA or the thread count.
//
// The fast loops are compiled for AVX-512, AVX2 + FMA and the baseline ISA
// (gnu::target clones chosen with gemm_isa(), LOOM_ISA_CLONES of cpu_isa.h,
// as Note [Pooling kernels]).
// The AVX-512 and AVX2 clones both fuse a * b + c into one FMA and agree
// bitwise; the baseline rounds the product first (the last bit may differ).
// No result depends on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_vec.h"

namespace loom::cpu {
namespace {

// An (N, C, S) tensor's geometry.
struct Ncs {
  int64_t n = 0, c = 0, s = 0;
  int64_t sn = 0, sc = 0, ss = 0;
  int64_t at(int64_t i, int64_t ch, int64_t k) const { return i * sn + ch * sc + k * ss; }
};

Ncs ncs_of(const TensorImpl* t) {
  LOOM_ASSERT(t->dim() == 3, "batch norm kernel: expected an (N, C, S) tensor, got ", shape_str(t->sizes));
  return {t->sizes[0], t->sizes[1], t->sizes[2], t->strides[0], t->strides[1], t->strides[2]};
}

// Channels per parallel chunk (a channel is N * S elements of work).
int64_t channels_grain(int64_t per_channel) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(per_channel, 1)); }

double rstd_of(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// ---- reference kernels ----

void batch_norm_reference(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.i[0] ? c.in[1] : nullptr, *b = c.i[1] ? c.in[2] : nullptr;
  TensorImpl *y = c.out[0], *stats = c.out[1];
  const Ncs g = ncs_of(x), gy = ncs_of(y);
  const double eps = c.f[0], count = static_cast<double>(g.n * g.s);
  double* st = data_ptr<double>(stats);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = data_ptr<T>(x);
    const T* pw = w ? data_ptr<T>(w) : nullptr;
    const T* pb = b ? data_ptr<T>(b) : nullptr;
    T* py = data_ptr<T>(y);
    parallel_for(0, g.c, channels_grain(g.n * g.s), [&](int64_t lo, int64_t hi) {
      for (int64_t ch = lo; ch < hi; ++ch) {
        auto value = [&](int64_t i, int64_t k) { return static_cast<double>(to_compute(px[g.at(i, ch, k)])); };
        double mean = 0, var = 0;
        for (int64_t i = 0; i < g.n; ++i)
          for (int64_t k = 0; k < g.s; ++k) mean += value(i, k);
        mean /= count;
        for (int64_t i = 0; i < g.n; ++i)
          for (int64_t k = 0; k < g.s; ++k) var += (value(i, k) - mean) * (value(i, k) - mean);
        var /= count;
        const double rstd = rstd_of(var, eps);
        const double wc = pw ? static_cast<double>(to_compute(pw[ch])) : 1.0;
        const double bc = pb ? static_cast<double>(to_compute(pb[ch])) : 0.0;
        for (int64_t i = 0; i < g.n; ++i)
          for (int64_t k = 0; k < g.s; ++k) py[gy.at(i, ch, k)] = static_cast<T>((value(i, k) - mean) * rstd * wc + bc);
        st[ch] = mean;
        st[g.c + ch] = var;
      }
    });
  });
}

void batch_norm_backward_reference(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *stats = c.in[2], *w = c.i[0] ? c.in[3] : nullptr;
  TensorImpl *dx = c.out[0], *dwb = c.out.size() > 1 ? c.out[1] : nullptr;
  const Ncs gg = ncs_of(g), gx = ncs_of(x), gd = ncs_of(dx);
  const double eps = c.f[0], count = static_cast<double>(gx.n * gx.s);
  const double* st = data_ptr<double>(stats);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *pg = data_ptr<T>(g), *px = data_ptr<T>(x);
    const T* pw = w ? data_ptr<T>(w) : nullptr;
    T* pd = data_ptr<T>(dx);
    T* pwb = dwb ? data_ptr<T>(dwb) : nullptr;
    parallel_for(0, gx.c, channels_grain(gx.n * gx.s), [&](int64_t lo, int64_t hi) {
      for (int64_t ch = lo; ch < hi; ++ch) {
        const double mean = st[ch], rstd = rstd_of(st[gx.c + ch], eps);
        const double wc = pw ? static_cast<double>(to_compute(pw[ch])) : 1.0;
        auto gv = [&](int64_t i, int64_t k) { return static_cast<double>(to_compute(pg[gg.at(i, ch, k)])); };
        auto xv = [&](int64_t i, int64_t k) { return static_cast<double>(to_compute(px[gx.at(i, ch, k)])) - mean; };
        double sg = 0, sgx = 0;
        for (int64_t i = 0; i < gx.n; ++i)
          for (int64_t k = 0; k < gx.s; ++k) {
            sg += gv(i, k);
            sgx += gv(i, k) * xv(i, k);
          }
        const double k2 = rstd * rstd * sgx / count, mg = sg / count;
        for (int64_t i = 0; i < gx.n; ++i)
          for (int64_t k = 0; k < gx.s; ++k)
            pd[gd.at(i, ch, k)] = static_cast<T>((gv(i, k) - mg - xv(i, k) * k2) * rstd * wc);
        if (pwb) {
          pwb[ch] = static_cast<T>(sgx * rstd);
          pwb[gx.c + ch] = static_cast<T>(sg);
        }
      }
    });
  });
}

// ---- fast paths ----

constexpr int kLanes = 16;

// What the fast channel loops need; y / dx are contiguous (N, C, S).
template <typename T>
struct BnArgs {
  const T* x = nullptr;
  Ncs gx;
  const T* g = nullptr;  // backward: the gradient
  Ncs gg;
  T* out = nullptr;      // y or dx
  const T* w = nullptr;  // weight (C) or null
  const T* b = nullptr;  // forward: bias (C) or null
  double eps = 0;
  double* stats = nullptr;  // forward: written (mean, var); backward: read
  T* dwb = nullptr;         // backward: (dweight, dbias) or null
};

// The lanes as four GCC vectors of 4 doubles (a register each on AVX2 and
// AVX-512, two on SSE2), so the sums stay in registers: lane l of the sums
// takes elements i = l mod kLanes.
typedef double Lanes4 __attribute__((vector_size(4 * sizeof(double))));
struct LaneSums {
  Lanes4 v[kLanes / 4];
};

[[gnu::always_inline]] inline void load_sums(const double* p, LaneSums& s) { std::memcpy(&s.v, p, sizeof s.v); }

[[gnu::always_inline]] inline void store_sums(double* p, const LaneSums& s) { std::memcpy(p, &s.v, sizeof s.v); }

// Four elements from p as doubles (an out parameter: returning a vector
// type changes the ABI between the ISA clones).
template <typename T>
[[gnu::always_inline]] inline void load4(const T* p, Lanes4& out) {
  if constexpr (std::is_same_v<T, float>) {
    typedef float Floats4 __attribute__((vector_size(4 * sizeof(float))));
    Floats4 v;
    std::memcpy(&v, p, sizeof v);
    out = __builtin_convertvector(v, Lanes4);
  } else {
    std::memcpy(&out, p, sizeof out);
  }
}

// s1[l] += d and s2[l] += d^2 for d = x - shift, element i going to lane i mod kLanes.
template <typename T>
[[gnu::always_inline]] inline void stats_run(const T* __restrict x, int64_t n, double shift, double* __restrict s1,
                                             double* __restrict s2) {
  LaneSums a1, a2;
  load_sums(s1, a1);
  load_sums(s2, a2);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes / 4; ++k) {
      Lanes4 d;
      load4(x + i + 4 * k, d);
      d -= shift;
      a1.v[k] += d;
      a2.v[k] += d * d;
    }
  store_sums(s1, a1);
  store_sums(s2, a2);
  for (int l = 0; i < n; ++i, ++l) {
    const double d = static_cast<double>(x[i]) - shift;
    s1[l] += d;
    s2[l] += d * d;
  }
}

// s1[l] += g and s2[l] += g (x - mean), in the same lanes.
template <typename T>
[[gnu::always_inline]] inline void grad_sums_run(const T* __restrict g, const T* __restrict x, int64_t n, double mean,
                                                 double* __restrict s1, double* __restrict s2) {
  LaneSums a1, a2;
  load_sums(s1, a1);
  load_sums(s2, a2);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes / 4; ++k) {
      Lanes4 gv, xv;
      load4(g + i + 4 * k, gv);
      load4(x + i + 4 * k, xv);
      a1.v[k] += gv;
      a2.v[k] += gv * (xv - mean);
    }
  store_sums(s1, a1);
  store_sums(s2, a2);
  for (int l = 0; i < n; ++i, ++l) {
    const double gv = static_cast<double>(g[i]);
    s1[l] += gv;
    s2[l] += gv * (static_cast<double>(x[i]) - mean);
  }
}

inline double lanes_total(const double* acc) {
  double t = 0;
  for (int l = 0; l < kLanes; ++l) t += acc[l];
  return t;
}

// Channels [c0, c1): statistics, then y = x * alpha + beta while the
// channel's values are still in cache.
template <typename T>
[[gnu::always_inline]] inline void bn_forward_body(const BnArgs<T>& a, int64_t c0, int64_t c1) {
  const Ncs& g = a.gx;
  const double count = static_cast<double>(g.n * g.s);
  for (int64_t ch = c0; ch < c1; ++ch) {
    alignas(64) double s1[kLanes] = {}, s2[kLanes] = {};
    const double shift = static_cast<double>(a.x[g.at(0, ch, 0)]);
    for (int64_t i = 0; i < g.n; ++i) stats_run(a.x + g.at(i, ch, 0), g.s, shift, s1, s2);
    const double d = lanes_total(s1) / count;
    const double var = std::max(0.0, lanes_total(s2) / count - d * d), mean = shift + d;
    const double scale = rstd_of(var, a.eps) * (a.w ? static_cast<double>(a.w[ch]) : 1.0);
    const T alpha = static_cast<T>(scale);
    const T beta = static_cast<T>((a.b ? static_cast<double>(a.b[ch]) : 0.0) - mean * scale);
    a.stats[ch] = mean;
    a.stats[g.c + ch] = var;
    for (int64_t i = 0; i < g.n; ++i) {
      const T* __restrict x = a.x + g.at(i, ch, 0);
      T* __restrict y = a.out + (i * g.c + ch) * g.s;
      for (int64_t k = 0; k < g.s; ++k) y[k] = x[k] * alpha + beta;
    }
  }
}

// Channels [c0, c1): the sums of g and g (x - mean), then dx, in double:
// the terms cancel (exactly, for a constant channel), and rounding them to
// float first would leave an error times rstd.
template <typename T>
[[gnu::always_inline]] inline void bn_backward_body(const BnArgs<T>& a, int64_t c0, int64_t c1) {
  const Ncs& gx = a.gx;
  const double count = static_cast<double>(gx.n * gx.s);
  for (int64_t ch = c0; ch < c1; ++ch) {
    alignas(64) double s1[kLanes] = {}, s2[kLanes] = {};
    const double mean = a.stats[ch], rstd = rstd_of(a.stats[gx.c + ch], a.eps);
    for (int64_t i = 0; i < gx.n; ++i)
      grad_sums_run(a.g + a.gg.at(i, ch, 0), a.x + gx.at(i, ch, 0), gx.s, mean, s1, s2);
    const double sg = lanes_total(s1), sgx = lanes_total(s2);
    if (a.dwb) {
      a.dwb[ch] = static_cast<T>(sgx * rstd);
      a.dwb[gx.c + ch] = static_cast<T>(sg);
    }
    const double scale = rstd * (a.w ? static_cast<double>(a.w[ch]) : 1.0);
    const double mg = sg / count, k = rstd * rstd * sgx / count;
    for (int64_t i = 0; i < gx.n; ++i) {
      const T* __restrict g = a.g + a.gg.at(i, ch, 0);
      const T* __restrict x = a.x + gx.at(i, ch, 0);
      T* __restrict dx = a.out + (i * gx.c + ch) * gx.s;
      for (int64_t j = 0; j < gx.s; ++j)
        dx[j] = static_cast<T>((static_cast<double>(g[j]) - mg - (static_cast<double>(x[j]) - mean) * k) * scale);
    }
  }
}

template <typename T>
using BnFn = void (*)(const BnArgs<T>&, int64_t, int64_t);

#define LOOM_BN_CLONES(name, body) \
  LOOM_ISA_CLONES(template <typename T>, name, (const BnArgs<T>& a, int64_t lo, int64_t hi), , body<T>(a, lo, hi))
LOOM_BN_CLONES(bn_forward, bn_forward_body)
LOOM_BN_CLONES(bn_backward, bn_backward_body)
#undef LOOM_BN_CLONES

// Runs of S contiguous (or single elements), float32 / float64.
bool fast_layout(const TensorImpl* t) {
  return (t->dtype == kFloat32 || t->dtype == kFloat64) && (t->sizes[2] <= 1 || t->strides[2] == 1);
}

bool batch_norm_fast(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.i[0] ? c.in[1] : nullptr, *b = c.i[1] ? c.in[2] : nullptr;
  TensorImpl *y = c.out[0], *stats = c.out[1];
  if (!vec_enabled() || !fast_layout(x) || !y->is_contiguous()) return false;
  const Ncs g = ncs_of(x);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      BnArgs<T> a;
      a.x = data_ptr<T>(x);
      a.gx = g;
      a.out = data_ptr<T>(y);
      a.w = w ? data_ptr<T>(w) : nullptr;
      a.b = b ? data_ptr<T>(b) : nullptr;
      a.eps = c.f[0];
      a.stats = data_ptr<double>(stats);
      const BnFn<T> fn = bn_forward<T>();
      parallel_for(0, g.c, channels_grain(2 * g.n * g.s), [&](int64_t lo, int64_t hi) { fn(a, lo, hi); });
    }
  });
  return true;
}

bool batch_norm_backward_fast(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *stats = c.in[2], *w = c.i[0] ? c.in[3] : nullptr;
  TensorImpl *dx = c.out[0], *dwb = c.out.size() > 1 ? c.out[1] : nullptr;
  if (!vec_enabled() || !fast_layout(x) || !fast_layout(g) || !dx->is_contiguous() || (dwb && !dwb->is_contiguous()))
    return false;
  const Ncs gx = ncs_of(x);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      BnArgs<T> a;
      a.x = data_ptr<T>(x);
      a.gx = gx;
      a.g = data_ptr<T>(g);
      a.gg = ncs_of(g);
      a.out = data_ptr<T>(dx);
      a.w = w ? data_ptr<T>(w) : nullptr;
      a.eps = c.f[0];
      a.stats = const_cast<double*>(data_ptr<double>(stats));
      a.dwb = dwb ? data_ptr<T>(dwb) : nullptr;
      const BnFn<T> fn = bn_backward<T>();
      parallel_for(0, gx.c, channels_grain(3 * gx.n * gx.s), [&](int64_t lo, int64_t hi) { fn(a, lo, hi); });
    }
  });
  return true;
}

}  // namespace

namespace kernel {

void BatchNorm(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *y = c.out[0], *stats = c.out[1];
  LOOM_ASSERT(x->sizes == y->sizes && x->dtype == y->dtype && y->is_contiguous(), "BatchNorm: x ", shape_str(x->sizes),
              ", y ", shape_str(y->sizes));
  LOOM_ASSERT(stats->dtype == kFloat64 && stats->is_contiguous() && stats->numel() == 2 * x->sizes[1],
              "BatchNorm: statistics of shape ", shape_str(stats->sizes));
  if (x->sizes[1] == 0) return;
  LOOM_ASSERT(x->sizes[0] * x->sizes[2] > 0, "BatchNorm: no values per channel in ", shape_str(x->sizes));
  if (!batch_norm_fast(c)) batch_norm_reference(c);
}

void BatchNormBackward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *dx = c.out[0];
  LOOM_ASSERT(g->sizes == x->sizes && dx->sizes == x->sizes && g->dtype == x->dtype && dx->is_contiguous(),
              "BatchNormBackward: grad ", shape_str(g->sizes), ", x ", shape_str(x->sizes));
  LOOM_ASSERT(c.in[2]->dtype == kFloat64 && c.in[2]->is_contiguous(), "BatchNormBackward: statistics must be float64");
  if (x->sizes[1] == 0) return;
  LOOM_ASSERT(x->sizes[0] * x->sizes[2] > 0, "BatchNormBackward: no values per channel in ", shape_str(x->sizes));
  if (!batch_norm_backward_fast(c)) batch_norm_backward_reference(c);
}

}  // namespace kernel
}  // namespace loom::cpu
