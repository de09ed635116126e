// GELU's derivative in the compute type: the reference GeluBackward kernel
// (cpu_copy.cpp) on float64 and wherever the vectorized path is off. The fast
// path and the Fused kernel's GeluBackward instruction both run the VecKernels
// table's gelu_backward_f32 instead (Note [Vectorized CPU kernels]). Built
// with the default flags only: never include it in a per-ISA file.
#pragma once

#include <cmath>

namespace loom::cpu {

// gelu'(x):
//   erf form:  Phi(x) + x phi(x),
//   tanh form: 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2), t = tanh(k (x + c x^3)),
// in the compute type (float for float32, double for float64). x is clamped
// to [-1e6, 1e6] first: beyond, gelu' is 1 or 0 to far below double
// precision, and the clamp keeps x phi(x) (at +-inf) and the tanh form's
// second term (once x^2 overflows) from being inf * 0. NaN stays NaN.
template <typename C>
inline C gelu_grad(C x, bool tanh_form) {
  x = x > C(1e6) ? C(1e6) : x < C(-1e6) ? C(-1e6) : x;
  if (!tanh_form) {
    const C cdf = C(0.5) * (C(1) + std::erf(x * C(M_SQRT1_2)));
    const C pdf = std::exp(C(-0.5) * x * x) * C(0.5 * M_2_SQRTPI * M_SQRT1_2);
    return cdf + x * pdf;
  }
  const C k = C(0.7978845608028654), c = C(0.044715);
  const C x2 = x * x;
  const C t = std::tanh(k * x * (C(1) + c * x2));
  return C(0.5) * (C(1) + t) + C(0.5) * x * (C(1) - t * t) * k * (C(1) + C(3) * c * x2);
}

}  // namespace loom::cpu
