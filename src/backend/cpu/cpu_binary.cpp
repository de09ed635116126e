// Binary elementwise kernels: out[0] = f(in[0], in[1]); inputs expanded to
// out's shape and of one dtype; out has that dtype, or bool for comparisons
// and logical ops (ops.def).
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"

namespace loom::cpu {
namespace {

template <typename T, typename O, typename F>
void map_binary(const KernelCall& c, F f) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(a->sizes == out->sizes && b->sizes == out->sizes, op_name(c.op), ": inputs ", shape_str(a->sizes),
              " and ", shape_str(b->sizes), " not expanded to the output ", shape_str(out->sizes));
  LOOM_ASSERT(a->dtype == b->dtype, op_name(c.op), ": inputs of dtypes ", dtype_name(a->dtype), " and ",
              dtype_name(b->dtype));
  const T *pa = data_ptr<T>(a), *pb = data_ptr<T>(b);
  O* y = data_ptr<O>(out);
  parallel_elementwise<3>(out->sizes, {&out->strides, &a->strides, &b->strides},
                          [&](const Offsets3& o) { y[o[0]] = f(pa[o[1]], pb[o[2]]); });
}

// An arithmetic op whose output has the input dtype. `op` is a generic lambda
// over the compute type (float for 16-bit floats; the storage type otherwise).
template <typename Dispatch, typename Op>
void same_type_binary(const KernelCall& c, Dispatch dispatch, Op op) {
  dispatch(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    LOOM_ASSERT(c.out[0]->dtype == c.in[0]->dtype, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
    map_binary<T, T>(c, [&](T a, T b) { return static_cast<T>(op(to_compute(a), to_compute(b))); });
  });
}

const auto kAll = [](DType dt, auto&& f) { dispatch_all(dt, f); };
const auto kNumeric = [](DType dt, auto&& f) { dispatch_numeric(dt, f); };
const auto kFloat = [](DType dt, auto&& f) { dispatch_float(dt, f); };

// A comparison or logical op: bool output.
template <typename Op>
void predicate_binary(const KernelCall& c, Op op) {
  LOOM_ASSERT(c.out[0]->dtype == kBool, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    map_binary<T, bool>(c, [&](T a, T b) { return static_cast<bool>(op(to_compute(a), to_compute(b))); });
  });
}

// a^b for integers by repeated squaring (wrapping on overflow, as PyTorch).
template <typename T>
T int_pow(T base, T exp) {
  if constexpr (std::is_signed_v<T>) {
    LOOM_CHECK(exp >= 0, "pow: Integers to negative integer powers are not allowed (got exponent ", int64_t{exp},
               ")");
  }
  T result = 1;
  while (exp > 0) {
    if (exp & 1) result = wrap_mul(result, base);
    base = wrap_mul(base, base);
    exp = static_cast<T>(exp >> 1);
  }
  return result;
}

}  // namespace

namespace kernel {

// bool + bool is logical or (PyTorch).
void Add(const KernelCall& c) {
  same_type_binary(c, kAll, [](auto a, auto b) {
    using C = decltype(a);
    if constexpr (std::is_same_v<C, bool>) return a || b;
    else if constexpr (std::is_integral_v<C>) return wrap_add(a, b);
    else return a + b;
  });
}

// bool - bool (which the ops layer refuses) would be exclusive or.
void Sub(const KernelCall& c) {
  same_type_binary(c, kAll, [](auto a, auto b) {
    using C = decltype(a);
    if constexpr (std::is_same_v<C, bool>) return a != b;
    else if constexpr (std::is_integral_v<C>) return wrap_sub(a, b);
    else return a - b;
  });
}

// bool * bool is logical and (PyTorch).
void Mul(const KernelCall& c) {
  same_type_binary(c, kAll, [](auto a, auto b) {
    using C = decltype(a);
    if constexpr (std::is_same_v<C, bool>) return a && b;
    else if constexpr (std::is_integral_v<C>) return wrap_mul(a, b);
    else return a * b;
  });
}

// True division; the ops layer promotes integer operands to float first.
void Div(const KernelCall& c) {
  same_type_binary(c, kFloat, [](auto a, auto b) { return a / b; });
}

void Pow(const KernelCall& c) {
  same_type_binary(c, kNumeric, [](auto a, auto b) {
    using C = decltype(a);
    if constexpr (std::is_integral_v<C>) return int_pow(a, b);
    else return std::pow(a, b);
  });
}

// NaN in either operand gives NaN (PyTorch's maximum/minimum).
void Maximum(const KernelCall& c) {
  same_type_binary(c, kAll, [](auto a, auto b) {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return a < b ? b : a;
  });
}
void Minimum(const KernelCall& c) {
  same_type_binary(c, kAll, [](auto a, auto b) {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return b < a ? b : a;
  });
}

void Eq(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a == b; });
}
void Ne(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a != b; });
}
void Lt(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a < b; });
}
void Le(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a <= b; });
}
void Gt(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a > b; });
}
void Ge(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a >= b; });
}
void LogicalAnd(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a != 0 && b != 0; });
}
void LogicalOr(const KernelCall& c) {
  predicate_binary(c, [](auto a, auto b) { return a != 0 || b != 0; });
}

}  // namespace kernel
}  // namespace loom::cpu
