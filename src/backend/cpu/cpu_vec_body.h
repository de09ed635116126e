// The body of the vectorized float kernels (Note [Vectorized CPU kernels] in
// cpu_vec.h), written once with GCC vector types and compiled per ISA.
//
// Include this file only inside `namespace loom::cpu { namespace { ... } }`
// of an ISA file, after defining LOOM_VEC_BYTES (the register width in
// bytes: 64, 32 or 16). Everything here then has internal linkage. It calls
// no std:: function or template (those are inline entities with external
// linkage, and an AVX-512 copy of one could be picked by the linker for other
// files): only operators, __builtin_* functions and plain loops.
#ifndef LOOM_VEC_BYTES
#error "define LOOM_VEC_BYTES before including cpu_vec_body.h"
#endif

typedef float vf __attribute__((vector_size(LOOM_VEC_BYTES)));
typedef float vfh __attribute__((vector_size(LOOM_VEC_BYTES / 2)));  // half a register of floats
typedef double vd __attribute__((vector_size(LOOM_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(LOOM_VEC_BYTES)));
typedef int64_t vl __attribute__((vector_size(LOOM_VEC_BYTES)));

constexpr int64_t kF = LOOM_VEC_BYTES / 4;  // floats per register
constexpr int64_t kD = LOOM_VEC_BYTES / 8;  // doubles per register

// ---- loads, stores, lanes ----

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
inline void store(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
// Every lane x (a loop, not V{} + x, which would turn -0 into +0).
template <typename V, typename T>
inline V splat(T x) {
  V v;
  for (int64_t k = 0; k < static_cast<int64_t>(sizeof(V) / sizeof(T)); ++k) v[k] = x;
  return v;
}
// The first n (< lanes) elements of p; the other lanes hold `fill`.
template <typename V, typename T>
inline V load_partial(const T* p, int64_t n, T fill) {
  V v = splat<V>(fill);
  for (int64_t k = 0; k < n; ++k) v[k] = p[k];
  return v;
}
template <typename V, typename T>
inline void store_partial(T* p, V v, int64_t n) {
  for (int64_t k = 0; k < n; ++k) p[k] = v[k];
}

// kD floats at p widened to double. An ISA file may define
// LOOM_VEC_LOAD_DOUBLE(p) where GCC's generic lowering of the conversion is
// poor (AVX-512: two halves and an insert instead of one vcvtps2pd).
#ifdef LOOM_VEC_LOAD_DOUBLE
inline vd load_double(const float* p) { return LOOM_VEC_LOAD_DOUBLE(p); }
#else
inline vd load_double(const float* p) { return __builtin_convertvector(load<vfh>(p), vd); }
#endif

inline double hsum(vd v) {
  double s = 0;
  for (int64_t k = 0; k < kD; ++k) s += v[k];
  return s;
}
inline double hsum(vf v) {
  double s = 0;
  for (int64_t k = 0; k < kF; ++k) s += v[k];
  return s;
}

inline vf as_float(vi v) { return reinterpret_cast<vf>(v); }
inline vi as_int(vf v) { return reinterpret_cast<vi>(v); }
inline vf vabs(vf x) { return as_float(as_int(x) & 0x7fffffff); }

// ---- max / min with NaN winning (PyTorch's maximum / amax) ----

template <typename V>
inline V vmax(V acc, V x) {
  V r = x > acc ? x : acc;
  r = x != x ? x : r;
  return acc != acc ? acc : r;
}
template <typename V>
inline V vmin(V acc, V x) {
  V r = x < acc ? x : acc;
  r = x != x ? x : r;
  return acc != acc ? acc : r;
}

// ---- exp, expm1, log ----

constexpr float kLog2e = 1.44269504088896341f;
// ln 2 split so that n * kLn2Hi is exact for |n| < 512 (15 significant bits).
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = static_cast<float>(0.6931471805599453 - 0.693145751953125);
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: x + magic - magic rounds x to an integer

// 2^n for integer-valued n in [-126, 127].
inline vf pow2i(vi n) { return as_float((n + 127) << 23); }

// exp(x): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-7 Taylor
// polynomial (truncation below 0.1 ULP), then scaled by 2^n in two steps so
// results in the denormal range round once. x is clamped to [-104, 89]
// first: beyond, the result is 0 or inf anyway. NaN stays NaN.
inline vf vexp(vf x) {
  vf xc = x > 89.0f ? splat<vf>(89.0f) : x;
  xc = xc < -104.0f ? splat<vf>(-104.0f) : xc;
  const vf n = (xc * kLog2e + kRoundMagic) - kRoundMagic;
  vf r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  vf p = splat<vf>(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi ni = __builtin_convertvector(n, vi);
  const vi n1 = ni >> 1;
  const vf y = p * pow2i(n1) * pow2i(ni - n1);
  return x != x ? x : y;
}

// exp(x) - 1 for x <= 0 (NaN stays NaN): x = n ln2 + r, expm1(r) by its
// Taylor polynomial to degree 8, then 2^n expm1(r) + (2^n - 1). Accurate for
// tiny x too (n = 0 leaves expm1(r) alone).
inline vf vexpm1_neg(vf x) {
  const vf xc = x < -30.0f ? splat<vf>(-30.0f) : x;  // expm1(-30) is -1 in float
  const vf n = (xc * kLog2e + kRoundMagic) - kRoundMagic;
  vf r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  vf q = splat<vf>(1.0f / 40320);
  q = q * r + 1.0f / 5040;
  q = q * r + 1.0f / 720;
  q = q * r + 1.0f / 120;
  q = q * r + 1.0f / 24;
  q = q * r + 1.0f / 6;
  q = q * r + 0.5f;
  const vf p = r + (r * r) * q;
  const vf s = pow2i(__builtin_convertvector(n, vi));
  const vf y = s * p + (s - 1.0f);
  return x != x ? x : y;
}

// log(x): x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(f / (2 + f))
// for f = m - 1, by its odd series to s^9 (|s| <= 0.172). Denormals are scaled
// by 2^23 first; 0 gives -inf, x < 0 NaN, inf inf, NaN NaN.
inline vf vlog(vf x) {
  const vi tiny = x < 1.17549435e-38f;
  const vf xs = tiny ? x * 8388608.0f : x;
  const vi bits = as_int(xs);
  vi e = ((bits >> 23) & 0xff) - 127;
  e = tiny ? e - 23 : e;
  vf m = as_float((bits & 0x7fffff) | 0x3f800000);
  const vi big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const vf f = m - 1.0f;
  const vf s = f / (f + 2.0f);
  const vf s2 = s * s;
  vf q = splat<vf>(2.0f / 9);
  q = q * s2 + 2.0f / 7;
  q = q * s2 + 2.0f / 5;
  q = q * s2 + 2.0f / 3;
  const vf lm = 2.0f * s + (s * s2) * q;
  const vf ef = __builtin_convertvector(e, vf);
  vf y = ef * kLn2Hi + (lm + ef * kLn2Lo);
  const float inf = __builtin_inff();
  y = x == 0.0f ? splat<vf>(-inf) : y;
  y = x < 0.0f ? splat<vf>(__builtin_nanf("")) : y;
  y = x == inf ? x : y;
  return x != x ? x : y;
}

// tanh(|x|) = -expm1(-2|x|) / (expm1(-2|x|) + 2), with x's sign put back
// (so tanh(-0) = -0).
inline vf vtanh(vf x) {
  const vf em = vexpm1_neg(-2.0f * vabs(x));
  const vf t = vabs(-em / (em + 2.0f));  // expm1(-0) may come out as +0: drop its sign
  const vf y = as_float(as_int(t) | (as_int(x) & static_cast<int32_t>(0x80000000u)));
  return x != x ? x : y;
}

// 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) below: never overflows.
inline vf vsigmoid(vf x) {
  const vf e = vexp(-vabs(x));
  const vf d = 1.0f / (1.0f + e);
  return x >= 0.0f ? d : e * d;
}

// Phi(x) = erfc(-x / sqrt 2) / 2, the standard normal CDF, and exp(-x^2 / 2)
// into *gauss. With z = |x| / sqrt 2: erf(z) for z < 1 by its Taylor series
// to z^23; erfc(z) for z >= 1 as exp(-z^2) t g(t), t = 1 / (1 + z / 2), g a
// degree-9 least-squares fit of erfc(z) exp(z^2) / t over z in [0.95, 12]
// (relative error 2e-9, 2e-7 once evaluated in float). Phi(x) is
// 1 - erfc(z) / 2 for x >= 0 and erfc(z) / 2 below, so the negative tail
// keeps its relative accuracy. *gauss is the tail's exp(-z^2), so its
// relative error grows as z^2 times the few ULP of z^2 itself.
inline vf vnormal_cdf(vf x, vf* gauss) {
  const vf z = vabs(x) * 0.70710678118654752f;
  const vf z2 = z * z;
  constexpr float kTaylor[] = {1.000000000e+00f, -3.333333333e-01f, 1.000000000e-01f, -2.380952381e-02f,
                               4.629629630e-03f, -7.575757576e-04f, 1.068376068e-04f, -1.322751323e-05f,
                               1.458916900e-06f, -1.450385222e-07f, 1.312253296e-08f, -1.089222104e-09f};
  vf q = splat<vf>(kTaylor[11]);
  for (int k = 10; k >= 0; --k) q = q * z2 + kTaylor[k];
  const vf erf_small = 1.12837916709551257f * z * q;  // 2 / sqrt(pi)
  constexpr float kTail[] = {2.820943249e-01f, 2.821075717e-01f, 2.466964785e-01f, 1.769451021e-01f,
                             8.364714389e-02f, -1.821904239e-02f, 1.671564099e-02f, -2.425886804e-01f,
                             2.507527335e-01f, -7.837575446e-02f};
  const vf t = 1.0f / (1.0f + 0.5f * z);
  vf g = splat<vf>(kTail[9]);
  for (int k = 8; k >= 0; --k) g = g * t + kTail[k];
  *gauss = vexp(-z2);
  const vf erfc_big = *gauss * (t * g);
  const vf half_erfc = 0.5f * (z < 1.0f ? 1.0f - erf_small : erfc_big);
  return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

// gelu(x) = x Phi(x).
inline vf vgelu(vf x) {
  vf gauss;
  return x * vnormal_cdf(x, &gauss);
}

// GELU's derivative, both forms (Note [GELU's derivative] in
// src/ops/elementwise.cpp). x is clamped to [-20, 20] first: beyond, gelu'
// is 1 or 0 in float anyway (exp's argument is past -104), and the clamp keeps
// the x phi(x) term from being inf * 0 at x = +-inf. NaN stays NaN.
inline vf clamp_gelu_grad_arg(vf x) {
  const vf xc = x > 20.0f ? splat<vf>(20.0f) : x;
  return xc < -20.0f ? splat<vf>(-20.0f) : xc;
}

// erf form: Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
inline vf vgelu_grad(vf x) {
  const vf xc = clamp_gelu_grad_arg(x);
  vf gauss;
  const vf cdf = vnormal_cdf(xc, &gauss);
  return cdf + xc * (gauss * 0.398942280401432678f);  // 1 / sqrt(2 pi)
}

// tanh form: with u = sqrt(2/pi) (x + 0.044715 x^3), u' its derivative and
// s = sigmoid(2u) = (1 + tanh u) / 2, gelu'(x) = s + 0.5 x (1 - tanh(u)^2) u'
// = s + 2 x u' s (1 - s). With e = exp(-2|u|) and d = 1 / (1 + e), s and
// 1 - s are d and e d (which one by the sign of u), so s (1 - s) = e d^2:
// no 1 - tanh^2 cancelling to 0 long before the term is negligible.
inline vf vgelu_tanh_grad(vf x) {
  const vf xc = clamp_gelu_grad_arg(x);
  const vf x2 = xc * xc;
  const vf u = 0.7978845608028654f * (xc + 0.044715f * x2 * xc);
  const vf du = 0.7978845608028654f * (1.0f + 0.134145f * x2);
  const vf e = vexp(-2.0f * vabs(u));
  const vf d = 1.0f / (1.0f + e);
  const vf s = u >= 0.0f ? d : e * d;  // NaN takes e * d: NaN
  return s + 2.0f * xc * du * (e * d * d);
}

// ---- elementwise loops ----

// y[i] = f(x[i]) over n elements; the tail goes through f in a padded register.
template <typename F>
inline void map_f32(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kF <= n; i += kF) store(y + i, f(load<vf>(x + i)));
  if (i < n) store_partial(y + i, f(load_partial<vf>(x + i, n - i, 0.0f)), n - i);
}

void unary_f32(VecUnary op, const float* x, float* y, int64_t n) {
  switch (op) {
    case VecUnary::Neg: return map_f32(x, y, n, [](vf v) { return -v; });
    case VecUnary::Abs: return map_f32(x, y, n, [](vf v) { return vabs(v); });
    case VecUnary::Exp: return map_f32(x, y, n, [](vf v) { return vexp(v); });
    case VecUnary::Log: return map_f32(x, y, n, [](vf v) { return vlog(v); });
    case VecUnary::Sqrt:
      return map_f32(x, y, n, [](vf v) {
        for (int64_t k = 0; k < kF; ++k) v[k] = __builtin_sqrtf(v[k]);
        return v;
      });
    case VecUnary::Rsqrt:
      return map_f32(x, y, n, [](vf v) {
        for (int64_t k = 0; k < kF; ++k) v[k] = __builtin_sqrtf(v[k]);
        return 1.0f / v;
      });
    case VecUnary::Tanh: return map_f32(x, y, n, [](vf v) { return vtanh(v); });
    case VecUnary::Sigmoid: return map_f32(x, y, n, [](vf v) { return vsigmoid(v); });
    // x < 0 is false for NaN and -0, which pass through (as the reference).
    case VecUnary::Relu: return map_f32(x, y, n, [](vf v) { return v < 0.0f ? splat<vf>(0.0f) : v; });
    case VecUnary::Gelu: return map_f32(x, y, n, [](vf v) { return vgelu(v); });
    // 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
    case VecUnary::GeluTanh:
      return map_f32(x, y, n, [](vf v) {
        const vf u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        return v * vsigmoid(2.0f * u);
      });
    case VecUnary::Silu: return map_f32(x, y, n, [](vf v) { return v * vsigmoid(v); });
  }
}

template <typename V, typename T, typename F>
inline void zip_loop(VecOperands mode, const T* a, const T* b, T* y, int64_t n, F f) {
  constexpr int64_t L = sizeof(V) / sizeof(T);
  int64_t i = 0;
  switch (mode) {
    case VecOperands::Both:
      for (; i + L <= n; i += L) store(y + i, f(load<V>(a + i), load<V>(b + i)));
      if (i < n) store_partial(y + i, f(load_partial<V>(a + i, n - i, T(1)), load_partial<V>(b + i, n - i, T(1))), n - i);
      return;
    case VecOperands::ScalarA: {
      const V va = splat<V>(a[0]);
      for (; i + L <= n; i += L) store(y + i, f(va, load<V>(b + i)));
      if (i < n) store_partial(y + i, f(va, load_partial<V>(b + i, n - i, T(1))), n - i);
      return;
    }
    case VecOperands::ScalarB: {
      const V vb = splat<V>(b[0]);
      for (; i + L <= n; i += L) store(y + i, f(load<V>(a + i), vb));
      if (i < n) store_partial(y + i, f(load_partial<V>(a + i, n - i, T(1)), vb), n - i);
      return;
    }
  }
}

template <typename V, typename T>
void binary(VecBinary op, VecOperands mode, const T* a, const T* b, T* y, int64_t n) {
  switch (op) {
    case VecBinary::Add: return zip_loop<V>(mode, a, b, y, n, [](V p, V q) { return p + q; });
    case VecBinary::Sub: return zip_loop<V>(mode, a, b, y, n, [](V p, V q) { return p - q; });
    case VecBinary::Mul: return zip_loop<V>(mode, a, b, y, n, [](V p, V q) { return p * q; });
    case VecBinary::Div: return zip_loop<V>(mode, a, b, y, n, [](V p, V q) { return p / q; });
    // The reference's maximum(a, b): a if NaN, else b if NaN, else (a < b ? b : a).
    case VecBinary::Max:
      return zip_loop<V>(mode, a, b, y, n, [](V p, V q) {
        V r = p < q ? q : p;
        r = q != q ? q : r;
        return p != p ? p : r;
      });
    case VecBinary::Min:
      return zip_loop<V>(mode, a, b, y, n, [](V p, V q) {
        V r = q < p ? q : p;
        r = q != q ? q : r;
        return p != p ? p : r;
      });
  }
}

void binary_f32(VecBinary op, VecOperands mode, const float* a, const float* b, float* y, int64_t n) {
  binary<vf>(op, mode, a, b, y, n);
}
void binary_f64(VecBinary op, VecOperands mode, const double* a, const double* b, double* y, int64_t n) {
  binary<vd>(op, mode, a, b, y, n);
}

void gelu_backward_f32(const float* g, const float* x, float* y, int64_t n, bool tanh_form) {
  if (tanh_form) return zip_loop<vf>(VecOperands::Both, g, x, y, n, [](vf a, vf v) { return a * vgelu_tanh_grad(v); });
  zip_loop<vf>(VecOperands::Both, g, x, y, n, [](vf a, vf v) { return a * vgelu_grad(v); });
}

void f32_to_f64(const float* x, double* y, int64_t n) {
  int64_t i = 0;
  for (; i + kD <= n; i += kD) store(y + i, __builtin_convertvector(load<vfh>(x + i), vd));
  for (; i < n; ++i) y[i] = static_cast<double>(x[i]);
}
void f64_to_f32(const double* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kD <= n; i += kD) store(y + i, __builtin_convertvector(load<vd>(x + i), vfh));
  for (; i < n; ++i) y[i] = static_cast<float>(x[i]);
}

// bfloat16 <-> float32 exactly as the BFloat16 type converts (dtype.h): round
// to nearest even, NaN kept quiet.
typedef uint32_t vu __attribute__((vector_size(LOOM_VEC_BYTES)));
typedef uint16_t vh16 __attribute__((vector_size(LOOM_VEC_BYTES / 2)));

inline vh16 to_bf16(vf x) {
  const vu u = reinterpret_cast<vu>(x);
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu quiet = (u >> 16) | 0x40u;
  return __builtin_convertvector((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded, vh16);
}

void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + kF <= n; i += kF) store(y + i, to_bf16(load<vf>(x + i)));
  if (i < n) {
    const vh16 h = to_bf16(load_partial<vf>(x + i, n - i, 0.0f));
    for (int64_t k = 0; k < n - i; ++k) y[i + k] = h[k];
  }
}
void bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kF <= n; i += kF)
    store(y + i, reinterpret_cast<vf>(__builtin_convertvector(load<vh16>(x + i), vu) << 16));
  for (; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(x[i]) << 16;
    __builtin_memcpy(y + i, &u, 4);
  }
}

// float16 <-> float32 exactly as the Half type converts (Note [Half
// conversion] in src/core/dtype.cpp): round to nearest even, overflow to inf,
// subnormals kept, NaN made quiet with its top payload bits kept (and the
// other way, NaN payload kept and made quiet). That is what F16C's vcvtps2ph
// (rounding mode given, not MXCSR's) and vcvtph2ps do; an ISA file that has
// them defines LOOM_VEC_LOAD_HALF(p) (kF halves at p as a vf) and
// LOOM_VEC_STORE_HALF(p, v) (kF floats rounded to halves at p). Without them
// (the portable table) each element goes through Half itself, whose
// conversions are out of line in dtype.cpp.
#if defined(LOOM_VEC_LOAD_HALF) && defined(LOOM_VEC_STORE_HALF)
void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + kF <= n; i += kF) LOOM_VEC_STORE_HALF(y + i, load<vf>(x + i));
  if (i < n) {
    uint16_t h[kF];
    LOOM_VEC_STORE_HALF(h, load_partial<vf>(x + i, n - i, 0.0f));
    for (int64_t k = 0; k < n - i; ++k) y[i + k] = h[k];
  }
}
void f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kF <= n; i += kF) {
    const vf v = LOOM_VEC_LOAD_HALF(x + i);
    store(y + i, v);
  }
  if (i < n) {
    uint16_t h[kF] = {};
    for (int64_t k = 0; k < n - i; ++k) h[k] = x[i + k];
    const vf v = LOOM_VEC_LOAD_HALF(h);
    store_partial(y + i, v, n - i);
  }
}
#else
void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = Half(x[i]).bits;
}
void f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    Half h;
    h.bits = x[i];
    y[i] = static_cast<float>(h);
  }
}
#endif

// ---- reductions ----

// Sum of x[0..n) in double registers (two per float register's worth):
// sum_f32_steps over the first n - n % (2 kF) elements, sum_f32_finish over
// the rest. reduce_f32 runs them through fold_piece_f32.
inline void sum_f32_steps(vd* a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 2 * kF) {
    a[0] += load_double(x + i);
    a[1] += load_double(x + i + kD);
    a[2] += load_double(x + i + 2 * kD);
    a[3] += load_double(x + i + 3 * kD);
  }
}
inline double sum_f32_finish(vd* a, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kD <= n; i += kD) a[0] += load_double(x + i);
  double tail = 0;
  for (; i < n; ++i) tail += static_cast<double>(x[i]);
  return hsum((a[0] + a[2]) + (a[1] + a[3])) + tail;
}

// sum over i of f(a[i], b[i]) in float registers, combined in double at the
// end: the row-wise ops' inner sums, as accurate as PyTorch's float ones.
// Four accumulators hide the add latency (rows are short and in L1).
template <typename F>
inline double sum_zip_f32(const float* a, const float* b, int64_t n, F f) {
  vf s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + 4 * kF <= n; i += 4 * kF) {
    s0 += f(load<vf>(a + i), load<vf>(b + i));
    s1 += f(load<vf>(a + i + kF), load<vf>(b + i + kF));
    s2 += f(load<vf>(a + i + 2 * kF), load<vf>(b + i + 2 * kF));
    s3 += f(load<vf>(a + i + 3 * kF), load<vf>(b + i + 3 * kF));
  }
  s0 += s2;
  s1 += s3;
  for (; i + kF <= n; i += kF) s0 += f(load<vf>(a + i), load<vf>(b + i));
  if (i < n) {
    vf v = f(load_partial<vf>(a + i, n - i, 0.0f), load_partial<vf>(b + i, n - i, 0.0f));
    for (int64_t k = n - i; k < kF; ++k) v[k] = 0.0f;  // padding lanes add nothing
    s1 += v;
  }
  return hsum(s0 + s1);
}

// Max / min of x[0..n) in four float registers, NaN winning: steps over the
// first n - n % (4 kF) elements, finish over the rest (as sum_f32).
template <bool Max>
inline vf extreme_step(vf acc, vf v) {
  return Max ? vmax(acc, v) : vmin(acc, v);
}
template <bool Max>
inline float extreme_init() {
  return Max ? -__builtin_inff() : __builtin_inff();
}
template <bool Max>
inline void extreme_f32_steps(vf* a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 4 * kF) {
    a[0] = extreme_step<Max>(a[0], load<vf>(x + i));
    a[1] = extreme_step<Max>(a[1], load<vf>(x + i + kF));
    a[2] = extreme_step<Max>(a[2], load<vf>(x + i + 2 * kF));
    a[3] = extreme_step<Max>(a[3], load<vf>(x + i + 3 * kF));
  }
}
template <bool Max>
inline float extreme_f32_finish(vf* a, const float* x, int64_t n) {
  const float init = extreme_init<Max>();
  vf a0 = extreme_step<Max>(a[0], a[2]);
  vf a1 = extreme_step<Max>(a[1], a[3]);
  int64_t i = 0;
  for (; i + kF <= n; i += kF) a0 = extreme_step<Max>(a0, load<vf>(x + i));
  if (i < n) a1 = extreme_step<Max>(a1, load_partial<vf>(x + i, n - i, init));
  a0 = extreme_step<Max>(a0, a1);
  float r = init;
  for (int64_t k = 0; k < kF && r == r; ++k) {
    const float v = a0[k];
    if (v != v || (Max ? v > r : v < r)) r = v;
  }
  return r;
}
template <bool Max>
inline float extreme_f32(const float* x, int64_t n) {
  vf a[4];
  for (vf& v : a) v = splat<vf>(extreme_init<Max>());
  const int64_t m = n - n % (4 * kF);
  extreme_f32_steps<Max>(a, x, m);
  return extreme_f32_finish<Max>(a, x + m, n - m);
}

// reduce_f32 in pieces: the accumulator registers wait in a VecFoldState
// between pieces; each piece runs the steps, the last one the finish too.
static_assert(2 * kF <= kVecFoldStep && 4 * kF <= kVecFoldStep && kVecFoldStep % (4 * kF) == 0);
static_assert(sizeof(vd[4]) <= sizeof(VecFoldState) && sizeof(vf[4]) <= sizeof(VecFoldState));

void fold_start_f32(VecReduce op, VecFoldState* s) {
  if (op == VecReduce::Sum) {
    const vd a[4] = {};
    __builtin_memcpy(s->bytes, a, sizeof a);
    return;
  }
  vf a[4];
  for (vf& v : a) v = splat<vf>(op == VecReduce::Max ? extreme_init<true>() : extreme_init<false>());
  __builtin_memcpy(s->bytes, a, sizeof a);
}

template <bool Max>
double fold_extreme_piece(VecFoldState* s, const float* x, int64_t n, bool last) {
  vf a[4];
  __builtin_memcpy(a, s->bytes, sizeof a);
  const int64_t m = last ? n - n % (4 * kF) : n;
  extreme_f32_steps<Max>(a, x, m);
  if (last) return extreme_f32_finish<Max>(a, x + m, n - m);
  __builtin_memcpy(s->bytes, a, sizeof a);
  return 0;
}

// Never inlined or cloned (noipa): reduce_f32 (the Sum / Amax / Amin rows
// path) and the Fused kernel's folds run this one compiled copy, so even a
// NaN's sign agrees (which NaN an add returns depends on which operand the
// compiler puts first, and two inlined copies may choose differently).
[[gnu::noipa]] double fold_piece_f32(VecReduce op, VecFoldState* s, const float* x, int64_t n, bool last) {
  switch (op) {
    case VecReduce::Sum: {
      vd a[4];
      __builtin_memcpy(a, s->bytes, sizeof a);
      const int64_t m = last ? n - n % (2 * kF) : n;
      sum_f32_steps(a, x, m);
      if (last) return sum_f32_finish(a, x + m, n - m);
      __builtin_memcpy(s->bytes, a, sizeof a);
      return 0;
    }
    case VecReduce::Max: return fold_extreme_piece<true>(s, x, n, last);
    case VecReduce::Min: return fold_extreme_piece<false>(s, x, n, last);
  }
  return 0;
}

double reduce_f32(VecReduce op, const float* x, int64_t n) {
  VecFoldState s;
  fold_start_f32(op, &s);
  return fold_piece_f32(op, &s, x, n, true);
}

// Column folds: rows outer, columns inner, so memory streams row by row, and
// each column still folds its rows in order (the reference's order: sums
// start from 0.0 in double, max / min from -inf / inf).
void reduce_cols_f32(VecReduce op, const float* x, int64_t m, int64_t n, int64_t ld, float* y) {
  if (op == VecReduce::Sum) {
    // Double accumulators for a block of columns that stays in L1.
    constexpr int64_t kBlock = 512;
    double acc[kBlock];
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
      const int64_t w = n - j0 < kBlock ? n - j0 : kBlock;
      for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
      for (int64_t i = 0; i < m; ++i) {
        const float* row = x + i * ld + j0;
        int64_t j = 0;
        for (; j + kD <= w; j += kD) store(acc + j, load<vd>(acc + j) + load_double(row + j));
        for (; j < w; ++j) acc[j] += static_cast<double>(row[j]);
      }
      for (int64_t j = 0; j < w; ++j) y[j0 + j] = static_cast<float>(acc[j]);
    }
    return;
  }
  const bool want_max = op == VecReduce::Max;
  const float init = want_max ? -__builtin_inff() : __builtin_inff();
  for (int64_t j = 0; j < n; ++j) y[j] = init;
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * ld;
    int64_t j = 0;
    for (; j + kF <= n; j += kF) {
      const vf a = load<vf>(y + j), v = load<vf>(row + j);
      store(y + j, want_max ? vmax(a, v) : vmin(a, v));
    }
    if (j < n) {
      const vf a = load_partial<vf>(y + j, n - j, init), v = load_partial<vf>(row + j, n - j, init);
      store_partial(y + j, want_max ? vmax(a, v) : vmin(a, v), n - j);
    }
  }
}

// ---- row-wise ops ----

// Softmax: max, then exp(x - max) written to y and summed, then y scaled by
// 1 / sum. LogSoftmax: max, sum of exp(x - max), then (x - max) - log(sum).
// A NaN or +inf in the row, or a row of all -inf, makes the row NaN (as the
// reference).
void softmax_row_f32(const float* x, float* y, int64_t n, bool log) {
  const vf m = splat<vf>(extreme_f32<true>(x, n));
  if (log) {
    const double sum = sum_zip_f32(x, x, n, [m](vf v, vf) { return vexp(v - m); });
    const vf ls = splat<vf>(static_cast<float>(__builtin_log(sum)));
    map_f32(x, y, n, [m, ls](vf v) { return (v - m) - ls; });
    return;
  }
  vf s0 = {}, s1 = {};
  int64_t i = 0;
  for (; i + 2 * kF <= n; i += 2 * kF) {
    const vf e0 = vexp(load<vf>(x + i) - m), e1 = vexp(load<vf>(x + i + kF) - m);
    store(y + i, e0);
    store(y + i + kF, e1);
    s0 += e0;
    s1 += e1;
  }
  for (; i + kF <= n; i += kF) {
    const vf e = vexp(load<vf>(x + i) - m);
    store(y + i, e);
    s0 += e;
  }
  if (i < n) {
    vf e = vexp(load_partial<vf>(x + i, n - i, 0.0f) - m);
    store_partial(y + i, e, n - i);
    for (int64_t k = n - i; k < kF; ++k) e[k] = 0.0f;
    s1 += e;
  }
  const vf inv = splat<vf>(static_cast<float>(1.0 / hsum(s0 + s1)));
  map_f32(y, y, n, [inv](vf e) { return e * inv; });
}

void softmax_backward_row_f32(const float* g, const float* y, float* dx, int64_t n, bool log) {
  int64_t i = 0;
  if (log) {
    // dx = g - exp(y) * sum(g)
    const vf s = splat<vf>(static_cast<float>(sum_zip_f32(g, g, n, [](vf a, vf) { return a; })));
    for (; i + kF <= n; i += kF) store(dx + i, load<vf>(g + i) - vexp(load<vf>(y + i)) * s);
    if (i < n)
      store_partial(dx + i, load_partial<vf>(g + i, n - i, 0.0f) - vexp(load_partial<vf>(y + i, n - i, 0.0f)) * s,
                    n - i);
    return;
  }
  // dx = y * (g - sum(g * y))
  const vf s = splat<vf>(static_cast<float>(sum_zip_f32(g, y, n, [](vf a, vf b) { return a * b; })));
  for (; i + kF <= n; i += kF) store(dx + i, load<vf>(y + i) * (load<vf>(g + i) - s));
  if (i < n)
    store_partial(dx + i, load_partial<vf>(y + i, n - i, 0.0f) * (load_partial<vf>(g + i, n - i, 0.0f) - s), n - i);
}

// Two passes for the statistics (mean, then the mean of squared deviations,
// which stays accurate when |mean| >> std), one for y.
void layer_norm_row_f32(const float* x, const float* w, const float* b, float* y, int64_t n, double eps, float* mean,
                        float* rstd) {
  const double mu = sum_zip_f32(x, x, n, [](vf a, vf) { return a; }) / static_cast<double>(n);
  const vf vm = splat<vf>(static_cast<float>(mu));
  const double var = sum_zip_f32(x, x, n, [vm](vf a, vf) { return (a - vm) * (a - vm); }) / static_cast<double>(n);
  const double r = 1.0 / __builtin_sqrt(var + eps);
  *mean = static_cast<float>(mu);
  *rstd = static_cast<float>(r);
  const vf vr = splat<vf>(static_cast<float>(r));
  int64_t i = 0;
  for (; i < n; i += kF) {
    const int64_t k = n - i < kF ? n - i : kF;
    const bool full = k == kF;
    vf v = full ? load<vf>(x + i) : load_partial<vf>(x + i, k, 0.0f);
    v = (v - vm) * vr;
    if (w) v = v * (full ? load<vf>(w + i) : load_partial<vf>(w + i, k, 0.0f));
    if (b) v = v + (full ? load<vf>(b + i) : load_partial<vf>(b + i, k, 0.0f));
    if (full) store(y + i, v);
    else store_partial(y + i, v, k);
  }
}

// dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = g * w.
void layer_norm_backward_row_f32(const float* g, const float* x, const float* w, float mean, float rstd, float* dx,
                                 int64_t n) {
  const vf vm = splat<vf>(mean), vr = splat<vf>(rstd);
  // One pass for both sums.
  vf s0 = {}, s1 = {};
  for (int64_t i = 0; i < n; i += kF) {
    const int64_t k = n - i < kF ? n - i : kF;
    const bool full = k == kF;
    vf gw = full ? load<vf>(g + i) : load_partial<vf>(g + i, k, 0.0f);
    if (w) gw = gw * (full ? load<vf>(w + i) : load_partial<vf>(w + i, k, 0.0f));
    const vf xh = ((full ? load<vf>(x + i) : load_partial<vf>(x + i, k, 0.0f)) - vm) * vr;
    vf p = gw * xh;
    for (int64_t l = k; l < kF; ++l) p[l] = 0.0f;  // gw is 0 there already
    s0 += gw;
    s1 += p;
  }
  const double inv_n = 1.0 / static_cast<double>(n);
  const vf a = splat<vf>(static_cast<float>(hsum(s0) * inv_n)), c = splat<vf>(static_cast<float>(hsum(s1) * inv_n));
  for (int64_t i = 0; i < n; i += kF) {
    const int64_t k = n - i < kF ? n - i : kF;
    const bool full = k == kF;
    vf gw = full ? load<vf>(g + i) : load_partial<vf>(g + i, k, 0.0f);
    if (w) gw = gw * (full ? load<vf>(w + i) : load_partial<vf>(w + i, k, 0.0f));
    const vf xh = ((full ? load<vf>(x + i) : load_partial<vf>(x + i, k, 0.0f)) - vm) * vr;
    const vf d = vr * (gw - a - xh * c);
    if (full) store(dx + i, d);
    else store_partial(dx + i, d, k);
  }
}

// acc_w[j] += g[i,j] * xhat[i,j], acc_b[j] += g[i,j] for rows i in order
// (double accumulators; either may be null).
void layer_norm_backward_cols_f32(const float* g, const float* x, int64_t ld, const float* stats, int64_t m, int64_t n,
                                  double* acc_w, double* acc_b) {
  for (int64_t i = 0; i < m; ++i) {
    const float* gi = g + i * ld;
    const float* xi = x + i * ld;
    const float mean = stats[2 * i], rstd = stats[2 * i + 1];
    const vf vm = splat<vf>(mean), vr = splat<vf>(rstd);
    int64_t j = 0;
    for (; j + kF <= n; j += kF) {
      const vf gv = load<vf>(gi + j);
      if (acc_w) {
        float p[kF];
        store(p, gv * ((load<vf>(xi + j) - vm) * vr));
        store(acc_w + j, load<vd>(acc_w + j) + load_double(p));
        store(acc_w + j + kD, load<vd>(acc_w + j + kD) + load_double(p + kD));
      }
      if (acc_b) {
        store(acc_b + j, load<vd>(acc_b + j) + load_double(gi + j));
        store(acc_b + j + kD, load<vd>(acc_b + j + kD) + load_double(gi + j + kD));
      }
    }
    for (; j < n; ++j) {
      if (acc_w) acc_w[j] += static_cast<double>(gi[j] * ((xi[j] - mean) * rstd));
      if (acc_b) acc_b[j] += static_cast<double>(gi[j]);
    }
  }
}

// log(sum(exp(x))) = max + log(sum(exp(x - max))), in double at the end.
double logsumexp_row_f32(const float* x, int64_t n) {
  const float mx = extreme_f32<true>(x, n);
  const vf m = splat<vf>(mx);
  const double sum = sum_zip_f32(x, x, n, [m](vf v, vf) { return vexp(v - m); });
  return static_cast<double>(mx) + __builtin_log(sum);
}

// dx[j] = scale * (softmax(x)[j] - s / n) - (j == t ? scale * (1 - s) : 0).
void cross_entropy_backward_row_f32(const float* x, float lse, int64_t t, double scale, double s, float* dx,
                                    int64_t n) {
  const vf vl = splat<vf>(lse), vs = splat<vf>(static_cast<float>(scale));
  const vf off = splat<vf>(static_cast<float>(scale * s / static_cast<double>(n)));
  map_f32(x, dx, n, [vl, vs, off](vf v) { return vs * vexp(v - vl) - off; });
  if (t >= 0 && t < n) dx[t] -= static_cast<float>(scale * (1.0 - s));
}

VecKernels make_vec_kernels(const char* isa) {
  VecKernels k;
  k.isa = isa;
  k.binary_f32 = &binary_f32;
  k.binary_f64 = &binary_f64;
  k.unary_f32 = &unary_f32;
  k.gelu_backward_f32 = &gelu_backward_f32;
  k.f32_to_f64 = &f32_to_f64;
  k.f64_to_f32 = &f64_to_f32;
  k.f32_to_bf16 = &f32_to_bf16;
  k.bf16_to_f32 = &bf16_to_f32;
  k.f32_to_f16 = &f32_to_f16;
  k.f16_to_f32 = &f16_to_f32;
  k.reduce_f32 = &reduce_f32;
  k.fold_start_f32 = &fold_start_f32;
  k.fold_piece_f32 = &fold_piece_f32;
  k.reduce_cols_f32 = &reduce_cols_f32;
  k.softmax_row_f32 = &softmax_row_f32;
  k.softmax_backward_row_f32 = &softmax_backward_row_f32;
  k.layer_norm_row_f32 = &layer_norm_row_f32;
  k.layer_norm_backward_row_f32 = &layer_norm_backward_row_f32;
  k.layer_norm_backward_cols_f32 = &layer_norm_backward_cols_f32;
  k.logsumexp_row_f32 = &logsumexp_row_f32;
  k.cross_entropy_backward_row_f32 = &cross_entropy_backward_row_f32;
  return k;
}
