// Unary elementwise kernels: out[0] = f(in[0]), same shape (ops.def).
#include <cmath>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_vec.h"

namespace loom::cpu {
namespace {

// y = f(x) elementwise for input storage type I and output storage type O.
template <typename I, typename O, typename F>
void map_unary(const KernelCall& c, F f) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(in->sizes == out->sizes, op_name(c.op), ": input ", shape_str(in->sizes), " vs output ",
              shape_str(out->sizes));
  const I* x = data_ptr<I>(in);
  O* y = data_ptr<O>(out);
  parallel_elementwise<2>(out->sizes, {&out->strides, &in->strides},
                          [&](const Offsets2& o) { y[o[0]] = f(x[o[1]]); });
}

// A float math op, computed in float for float16/bfloat16/float32 and in
// double for float64. `op` is a generic lambda over the compute type.
template <typename Op>
void float_unary(const KernelCall& c, Op op) {
  dispatch_float(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map_unary<T, T>(c, [&](T x) { return static_cast<T>(op(static_cast<C>(x))); });
  });
}

// An op defined for every dtype; `op` maps T to T (it sees the storage type
// for integers and bool, the compute type for floats).
template <typename Op>
void any_unary(const KernelCall& c, Op op) {
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map_unary<T, T>(c, [&](T x) { return static_cast<T>(op(static_cast<C>(x))); });
  });
}

// 1 / (1 + exp(-x)) without overflow: for x < 0 use exp(x) / (1 + exp(x)).
template <typename C>
C sigmoid_stable(C x) {
  if (x >= 0) return C(1) / (C(1) + std::exp(-x));
  const C e = std::exp(x);  // NaN lands here too and stays NaN
  return e / (C(1) + e);
}

// The vectorized path of a float32 op (Note [Vectorized CPU kernels]): taken
// when the merged loop's innermost runs are contiguous in input and output
// (a contiguous tensor is one run) and not too short to be worth a call.
// bfloat16 and float16 runs take the same float32 function in strips
// (unary_lowp). Returns false when the layout or dtype does not fit.
bool vec_unary(const KernelCall& c, VecUnary op) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  const DType dt = out->dtype;
  if (!vec_enabled() || in->dtype != dt || in->sizes != out->sizes) return false;
  if (dt != kFloat32 && dt != kBFloat16 && dt != kFloat16) return false;
  const LoopShape<2> l = make_loop<2>(out->sizes, {&out->strides, &in->strides});
  if (l.numel == 0) return true;
  if (!l.sizes.empty()) {
    if (l.strides[0].back() != 1 || l.strides[1].back() != 1) return false;
    if (l.sizes.size() > 1 && l.sizes.back() < 16) return false;
  }
  struct Ctx {
    const VecKernels* k;
    VecUnary op;
    const char* x;
    char* y;
    DType dt;
  } ctx{&vec(), op, in->data(), out->data(), dt};
  auto run = [](void* p, const int64_t* o, int64_t len) {
    const Ctx& t = *static_cast<const Ctx*>(p);
    if (t.dt == kFloat32) {
      t.k->unary_f32(t.op, reinterpret_cast<const float*>(t.x) + o[1], reinterpret_cast<float*>(t.y) + o[0], len);
      return;
    }
    const VecLowp fmt = t.dt == kBFloat16 ? VecLowp::BFloat16 : VecLowp::Float16;
    unary_lowp(*t.k, fmt, t.op, reinterpret_cast<const uint16_t*>(t.x) + o[1], reinterpret_cast<uint16_t*>(t.y) + o[0],
               len);
  };
  parallel_for(0, l.numel, kGrain, [&](int64_t lo, int64_t hi) {
    for_each_run(l.sizes, l.strides.data(), 2, lo, hi, {&ctx, run});
  });
  return true;
}

}  // namespace

namespace kernel {

void Neg(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Neg)) return;
  any_unary(c, [](auto x) {
    using C = decltype(x);
    if constexpr (std::is_same_v<C, bool>) return x;  // -true is nonzero: still true
    else if constexpr (std::is_integral_v<C>) return wrap_neg(x);
    else return -x;
  });
}

void Abs(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Abs)) return;
  any_unary(c, [](auto x) {
    using C = decltype(x);
    if constexpr (std::is_same_v<C, bool> || std::is_unsigned_v<C>) return x;
    else if constexpr (std::is_integral_v<C>) return x < 0 ? wrap_neg(x) : x;  // |INT_MIN| wraps, as PyTorch
    else return std::abs(x);
  });
}

// -1, 0 or 1; NaN stays NaN (PyTorch).
void Sign(const KernelCall& c) {
  any_unary(c, [](auto x) {
    using C = decltype(x);
    if constexpr (std::is_same_v<C, bool>) return x;
    else {
      if (is_nan(x)) return x;
      return static_cast<C>(static_cast<int>(x > C(0)) - static_cast<int>(x < C(0)));
    }
  });
}

// max(x, 0) with NaN propagated (x < 0 is false for NaN).
void Relu(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Relu)) return;
  any_unary(c, [](auto x) {
    using C = decltype(x);
    return x < C(0) ? C(0) : x;
  });
}

// Clamp f[0]=lo f[1]=hi, i[0]=has_lo i[1]=has_hi. NaN inputs stay NaN; with
// lo > hi every element becomes hi (lo is applied first), as PyTorch.
void Clamp(const KernelCall& c) {
  const bool has_lo = c.i[0] != 0, has_hi = c.i[1] != 0;
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C lo = to_compute(convert<T>(c.f[0])), hi = to_compute(convert<T>(c.f[1]));
    map_unary<T, T>(c, [&](T xs) {
      C x = to_compute(xs);
      if (is_nan(x)) return xs;
      if (has_lo && x < lo) x = lo;
      if (has_hi && x > hi) x = hi;
      return static_cast<T>(x);
    });
  });
}

void LogicalNot(const KernelCall& c) {
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    map_unary<T, bool>(c, [](T x) { return !convert<bool>(x); });
  });
}

void IsNan(const KernelCall& c) {
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    map_unary<T, bool>(c, [](T x) { return is_nan(to_compute(x)); });
  });
}

// ---- float math ----

void Exp(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Exp)) return;
  float_unary(c, [](auto x) { return std::exp(x); });
}
void Log(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Log)) return;
  float_unary(c, [](auto x) { return std::log(x); });
}
void Log1p(const KernelCall& c) {
  float_unary(c, [](auto x) { return std::log1p(x); });
}
void Sqrt(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Sqrt)) return;
  float_unary(c, [](auto x) { return std::sqrt(x); });
}
void Rsqrt(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Rsqrt)) return;
  float_unary(c, [](auto x) { return decltype(x)(1) / std::sqrt(x); });
}
void Sin(const KernelCall& c) {
  float_unary(c, [](auto x) { return std::sin(x); });
}
void Cos(const KernelCall& c) {
  float_unary(c, [](auto x) { return std::cos(x); });
}
void Tanh(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Tanh)) return;
  float_unary(c, [](auto x) { return std::tanh(x); });
}
void Erf(const KernelCall& c) {
  float_unary(c, [](auto x) { return std::erf(x); });
}
void Sigmoid(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Sigmoid)) return;
  float_unary(c, [](auto x) { return sigmoid_stable(x); });
}

// f[0] = negative slope.
void LeakyRelu(const KernelCall& c) {
  const double slope = c.f[0];
  float_unary(c, [slope](auto x) {
    using C = decltype(x);
    return x > C(0) ? x : x * static_cast<C>(slope);
  });
}

// f[0] = alpha: x > 0 ? x : alpha * (exp(x) - 1), with expm1 for accuracy near 0.
void Elu(const KernelCall& c) {
  const double alpha = c.f[0];
  float_unary(c, [alpha](auto x) {
    using C = decltype(x);
    return x > C(0) ? x : static_cast<C>(alpha) * std::expm1(x);
  });
}

// 0.5 x (1 + erf(x / sqrt 2))
void Gelu(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Gelu)) return;
  float_unary(c, [](auto x) {
    using C = decltype(x);
    return C(0.5) * x * (C(1) + std::erf(x * static_cast<C>(M_SQRT1_2)));
  });
}

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void GeluTanh(const KernelCall& c) {
  if (vec_unary(c, VecUnary::GeluTanh)) return;
  float_unary(c, [](auto x) {
    using C = decltype(x);
    const C k = static_cast<C>(0.7978845608028654);  // sqrt(2 / pi)
    return C(0.5) * x * (C(1) + std::tanh(k * (x + C(0.044715) * x * x * x)));
  });
}

void Silu(const KernelCall& c) {
  if (vec_unary(c, VecUnary::Silu)) return;
  float_unary(c, [](auto x) { return x * sigmoid_stable(x); });
}

// f[0] = beta, f[1] = threshold: linear once beta x > threshold (where
// log1p(exp(beta x)) / beta equals x to working precision).
void Softplus(const KernelCall& c) {
  const double beta = c.f[0], threshold = c.f[1];
  float_unary(c, [beta, threshold](auto x) {
    using C = decltype(x);
    const C bx = static_cast<C>(beta) * x;
    return bx > static_cast<C>(threshold) ? x : std::log1p(std::exp(bx)) / static_cast<C>(beta);
  });
}

}  // namespace kernel
}  // namespace loom::cpu
