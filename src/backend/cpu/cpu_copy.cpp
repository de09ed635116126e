// Copy (with dtype conversion), Fill, Where, and the activation gradients
// ThresholdBackward and GeluBackward: one pass each over their operands.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_gelu_grad.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_vec.h"

namespace loom::cpu {
namespace {

// Fast paths of Copy (Note [Vectorized CPU kernels]): runs that are
// contiguous on both sides, as memcpy for one dtype and vectorized for
// float32 <-> float64, float32 <-> bfloat16 and float32 <-> float16. Returns
// false when the layout or dtypes do not fit.
bool vec_copy(const TensorImpl* in, TensorImpl* out) {
  if (!vec_enabled() || in->sizes != out->sizes) return false;
  const bool same = in->dtype == out->dtype;
  const bool widen = in->dtype == kFloat32 && out->dtype == kFloat64;
  const bool narrow = in->dtype == kFloat64 && out->dtype == kFloat32;
  const bool to_bf16 = in->dtype == kFloat32 && out->dtype == kBFloat16;
  const bool from_bf16 = in->dtype == kBFloat16 && out->dtype == kFloat32;
  const bool to_f16 = in->dtype == kFloat32 && out->dtype == kFloat16;
  const bool from_f16 = in->dtype == kFloat16 && out->dtype == kFloat32;
  if (!same && !widen && !narrow && !to_bf16 && !from_bf16 && !to_f16 && !from_f16) return false;
  const LoopShape<2> l = make_loop<2>(out->sizes, {&out->strides, &in->strides});
  if (l.numel == 0) return true;
  if (!l.sizes.empty()) {
    if (l.strides[0].back() != 1 || l.strides[1].back() != 1) return false;
    if (l.sizes.size() > 1 && l.sizes.back() < 16) return false;
  }
  struct Ctx {
    const VecKernels* k;
    const char* x;
    char* y;
    int64_t in_size, out_size;
    bool same, widen, to_bf16, from_bf16, to_f16, from_f16;
  } ctx{&vec(), in->data(), out->data(), static_cast<int64_t>(element_size(in->dtype)),
        static_cast<int64_t>(element_size(out->dtype)), same, widen, to_bf16, from_bf16, to_f16, from_f16};
  auto run = [](void* p, const int64_t* o, int64_t len) {
    const Ctx& t = *static_cast<const Ctx*>(p);
    const char* src = t.x + o[1] * t.in_size;
    char* dst = t.y + o[0] * t.out_size;
    if (t.same) std::memmove(dst, src, static_cast<size_t>(len * t.in_size));
    else if (t.widen) t.k->f32_to_f64(reinterpret_cast<const float*>(src), reinterpret_cast<double*>(dst), len);
    else if (t.to_bf16) t.k->f32_to_bf16(reinterpret_cast<const float*>(src), reinterpret_cast<uint16_t*>(dst), len);
    else if (t.from_bf16) t.k->bf16_to_f32(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<float*>(dst), len);
    else if (t.to_f16) t.k->f32_to_f16(reinterpret_cast<const float*>(src), reinterpret_cast<uint16_t*>(dst), len);
    else if (t.from_f16) t.k->f16_to_f32(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<float*>(dst), len);
    else t.k->f64_to_f32(reinterpret_cast<const double*>(src), reinterpret_cast<float*>(dst), len);
  };
  parallel_for(0, l.numel, kGrain, [&](int64_t lo, int64_t hi) {
    for_each_run(l.sizes, l.strides.data(), 2, lo, hi, {&ctx, run});
  });
  return true;
}

// The vectorized path of GeluBackward (Note [Vectorized CPU kernels]) on
// float32, bfloat16 and float16, for every layout: the Fused kernel runs the
// same gelu_backward_f32 on its registers whatever its operands' layout (a
// broadcast gradient, a transposed input), so an element's bits must not
// depend on the layout here either. Runs contiguous in all three operands go
// to it in place (16-bit ones in strips, gelu_backward_lowp); any other run
// is gathered into float strips and the results scattered back (the scalar
// 16-bit conversions give the bits of the vector ones gelu_backward_lowp
// uses).
template <typename T>
void gelu_backward_runs(const LoopShape<3>& l, const T* g, const T* x, T* y, bool tanh_form) {
  struct Ctx {
    const VecKernels* k;
    const T* g;
    const T* x;
    T* y;
    int64_t sy, sg, sx;  // the innermost dim's strides
    bool tanh_form;
  } ctx{&vec(), g, x, y, 1, 1, 1, tanh_form};
  if (!l.sizes.empty()) {
    ctx.sy = l.strides[0].back();
    ctx.sg = l.strides[1].back();
    ctx.sx = l.strides[2].back();
  }
  auto run = [](void* p, const int64_t* o, int64_t len) {
    const Ctx& t = *static_cast<const Ctx*>(p);
    const T* gs = t.g + o[1];
    const T* xs = t.x + o[2];
    T* ys = t.y + o[0];
    if (t.sy == 1 && t.sg == 1 && t.sx == 1) {
      if constexpr (std::is_same_v<T, float>) {
        t.k->gelu_backward_f32(gs, xs, ys, len, t.tanh_form);
      } else {
        const VecLowp fmt = std::is_same_v<T, BFloat16> ? VecLowp::BFloat16 : VecLowp::Float16;
        gelu_backward_lowp(*t.k, fmt, reinterpret_cast<const uint16_t*>(gs), reinterpret_cast<const uint16_t*>(xs),
                           reinterpret_cast<uint16_t*>(ys), len, t.tanh_form);
      }
      return;
    }
    alignas(64) float fg[kLowpStrip], fx[kLowpStrip];
    for (int64_t i = 0; i < len; i += kLowpStrip) {
      const int64_t m = std::min(len - i, kLowpStrip);
      for (int64_t j = 0; j < m; ++j) {
        fg[j] = to_compute(gs[(i + j) * t.sg]);
        fx[j] = to_compute(xs[(i + j) * t.sx]);
      }
      t.k->gelu_backward_f32(fg, fx, fg, m, t.tanh_form);
      for (int64_t j = 0; j < m; ++j) ys[(i + j) * t.sy] = convert<T>(fg[j]);
    }
  };
  parallel_for(0, l.numel, kGrain, [&](int64_t lo, int64_t hi) {
    for_each_run(l.sizes, l.strides.data(), 3, lo, hi, {&ctx, run});
  });
}

// Returns false when the vector path is off or the dtype is float64 (which
// stays on the reference loop: gradcheck's exact values).
bool vec_gelu_backward(const KernelCall& c, bool tanh_form) {
  const TensorImpl *g = c.in[0], *x = c.in[1];
  TensorImpl* out = c.out[0];
  const DType dt = out->dtype;
  if (!vec_enabled() || (dt != kFloat32 && dt != kBFloat16 && dt != kFloat16)) return false;
  if (g->sizes != out->sizes || x->sizes != out->sizes) return false;
  const LoopShape<3> l = make_loop<3>(out->sizes, {&out->strides, &g->strides, &x->strides});
  if (l.numel == 0) return true;
  dispatch_float(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, double>)
      gelu_backward_runs<T>(l, data_ptr<T>(g), data_ptr<T>(x), data_ptr<T>(out), tanh_form);
  });
  return true;
}

}  // namespace

namespace kernel {

// out[0] <- in[0] converted to out's dtype; in[0] already has out's shape.
void Copy(const KernelCall& c) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(in->sizes == out->sizes, "Copy: input ", shape_str(in->sizes), " vs output ", shape_str(out->sizes));
  if (vec_copy(in, out)) return;
  dispatch_all(in->dtype, [&](auto in_tag) {
    using I = typename decltype(in_tag)::type;
    dispatch_all(out->dtype, [&](auto out_tag) {
      using O = typename decltype(out_tag)::type;
      const I* x = data_ptr<I>(in);
      O* y = data_ptr<O>(out);
      parallel_elementwise<2>(out->sizes, {&out->strides, &in->strides},
                              [&](const Offsets2& o) { y[o[0]] = convert<O>(x[o[1]]); });
    });
  });
}

// out[0] <- scalar: f[0] as double, i[0] as int64, i[1] = 1 when the scalar
// is integral (so int64 values beyond 2^53 stay exact).
void Fill(const KernelCall& c) {
  TensorImpl* out = c.out[0];
  const bool integral = c.i[1] != 0;
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T value = integral ? convert<T>(c.i[0]) : convert<T>(c.f[0]);
    T* y = data_ptr<T>(out);
    if (vec_enabled() && out->is_contiguous()) {  // a plain loop the compiler vectorizes
      parallel_for(0, out->numel(), kGrain, [&](int64_t lo, int64_t hi) { std::fill(y + lo, y + hi, value); });
      return;
    }
    parallel_elementwise<1>(out->sizes, {&out->strides}, [&](const Offsets1& o) { y[o[0]] = value; });
  });
}

// out[0] = in[0] ? in[1] : in[2]; in[0] bool; all expanded to out's shape.
void Where(const KernelCall& c) {
  const TensorImpl *cond = c.in[0], *a = c.in[1], *b = c.in[2];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(cond->dtype == kBool, "Where: condition of dtype ", dtype_name(cond->dtype));
  LOOM_ASSERT(a->dtype == out->dtype && b->dtype == out->dtype, "Where: mixed dtypes");
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool* pc = data_ptr<bool>(cond);
    const T *pa = data_ptr<T>(a), *pb = data_ptr<T>(b);
    T* y = data_ptr<T>(out);
    parallel_elementwise<4>(out->sizes, {&out->strides, &cond->strides, &a->strides, &b->strides},
                            [&](const Offsets4& o) { y[o[0]] = pc[o[1]] ? pa[o[2]] : pb[o[3]]; });
  });
}

// out[0] = in[1] > f[0] ? in[0] : 0. One pass (relu's gradient was a
// comparison, a bool-to-float copy and a multiply); contiguous operands run
// as flat chunks the compiler vectorizes.
void ThresholdBackward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(g->dtype == out->dtype && x->dtype == out->dtype, "ThresholdBackward: mixed dtypes");
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T *pg = data_ptr<T>(g), *px = data_ptr<T>(x);
    T* y = data_ptr<T>(out);
    const C t = static_cast<C>(c.f[0]);
    if constexpr (std::is_floating_point_v<T>) {
      if (g->is_contiguous() && x->is_contiguous() && out->is_contiguous()) {
        parallel_for(0, out->numel(), kGrain, [&](int64_t lo, int64_t hi) {
          const T* __restrict gs = pg + lo;
          const T* __restrict xs = px + lo;
          T* __restrict ys = y + lo;
          // Both loads unconditional, so the select compiles to a vector
          // compare and blend; a branch on the (random) sign mispredicts.
          for (int64_t i = 0; i < hi - lo; ++i) {
            const T gv = gs[i];
            ys[i] = xs[i] > t ? gv : T(0);
          }
        });
        return;
      }
    }
    parallel_elementwise<3>(out->sizes, {&out->strides, &g->strides, &x->strides}, [&](const Offsets3& o) {
      y[o[0]] = to_compute(px[o[2]]) > t ? pg[o[1]] : convert<T>(0.0);
    });
  });
}

// out[0] = in[0] * gelu'(in[1]) in one pass, i[0] = 1 for the tanh form:
// vectorized (vec_gelu_backward), else the reference (gelu_grad,
// cpu_gelu_grad.h).
void GeluBackward(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(g->dtype == out->dtype && x->dtype == out->dtype, "GeluBackward: mixed dtypes");
  const bool tanh_form = c.i[0] != 0;
  if (vec_gelu_backward(c, tanh_form)) return;
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T *pg = data_ptr<T>(g), *px = data_ptr<T>(x);
    T* y = data_ptr<T>(out);
    if (g->is_contiguous() && x->is_contiguous() && out->is_contiguous()) {
      parallel_for(0, out->numel(), kGrain / 8, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i)
          y[i] = convert<T>(to_compute(pg[i]) * gelu_grad<C>(to_compute(px[i]), tanh_form));
      });
      return;
    }
    parallel_elementwise<3>(out->sizes, {&out->strides, &g->strides, &x->strides}, [&](const Offsets3& o) {
      y[o[0]] = convert<T>(to_compute(pg[o[1]]) * gelu_grad<C>(to_compute(px[o[2]]), tanh_form));
    });
  });
}

}  // namespace kernel
}  // namespace loom::cpu
