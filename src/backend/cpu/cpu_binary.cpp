// Binary elementwise kernels: out[0] = f(in[0], in[1]); inputs expanded to
// out's shape and of one dtype; out has that dtype, or bool for comparisons
// and logical ops (ops.def).
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_vec.h"

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

// The vectorized path of an arithmetic op on float32 / float64 (Note
// [Vectorized CPU kernels]): taken when every innermost run of the merged
// loop writes contiguous output and reads each operand either contiguously
// or as one broadcast value. That covers same-shape contiguous operands (one
// run), a scalar operand (stride 0 everywhere), a row broadcast like a bias
// (N) and a column broadcast (M, 1) over a contiguous (M, N) output. Short
// runs stay on the reference loop, where a call per run would cost more
// than it saves. bfloat16 and float16 runs take the float32 function in
// strips (binary_lowp). Returns false when the layout or dtype does not fit.
constexpr int64_t kMinVecRun = 16;

bool vec_binary(const KernelCall& c, VecBinary op) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* out = c.out[0];
  const DType dt = out->dtype;
  if (!vec_enabled()) return false;
  if (dt != kFloat32 && dt != kFloat64 && dt != kBFloat16 && dt != kFloat16) return false;
  if (a->dtype != dt || b->dtype != dt) return false;
  if (a->sizes != out->sizes || b->sizes != out->sizes) return false;
  const LoopShape<3> l = make_loop<3>(out->sizes, {&out->strides, &a->strides, &b->strides});
  if (l.numel == 0) return true;
  int64_t sa = 0, sb = 0;
  if (!l.sizes.empty()) {
    if (l.strides[0].back() != 1) return false;
    sa = l.strides[1].back();
    sb = l.strides[2].back();
    if ((sa != 0 && sa != 1) || (sb != 0 && sb != 1) || (sa == 0 && sb == 0)) return false;
    if (l.sizes.size() > 1 && l.sizes.back() < kMinVecRun) return false;
  }
  const VecOperands mode = sa == 0 ? VecOperands::ScalarA : sb == 0 ? VecOperands::ScalarB : VecOperands::Both;
  const VecKernels& k = vec();
  char *pa = a->data(), *pb = b->data(), *py = out->data();
  const int64_t size = static_cast<int64_t>(element_size(dt));
  struct Ctx {
    const VecKernels* k;
    VecBinary op;
    VecOperands mode;
    DType dt;
    char *pa, *pb, *py;
    int64_t size;
  } ctx{&k, op, mode, dt, pa, pb, py, size};
  auto run = [](void* p, const int64_t* o, int64_t len) {
    const Ctx& x = *static_cast<const Ctx*>(p);
    const char *sa = x.pa + o[1] * x.size, *sb = x.pb + o[2] * x.size;
    char* sy = x.py + o[0] * x.size;
    if (x.dt == kFloat32)
      x.k->binary_f32(x.op, x.mode, reinterpret_cast<const float*>(sa), reinterpret_cast<const float*>(sb),
                      reinterpret_cast<float*>(sy), len);
    else if (x.dt == kFloat64)
      x.k->binary_f64(x.op, x.mode, reinterpret_cast<const double*>(sa), reinterpret_cast<const double*>(sb),
                      reinterpret_cast<double*>(sy), len);
    else
      binary_lowp(*x.k, x.dt == kBFloat16 ? VecLowp::BFloat16 : VecLowp::Float16, x.op, x.mode,
                  reinterpret_cast<const uint16_t*>(sa), reinterpret_cast<const uint16_t*>(sb),
                  reinterpret_cast<uint16_t*>(sy), len);
  };
  parallel_for(0, l.numel, kGrain, [&](int64_t lo, int64_t hi) {
    for_each_run(l.sizes, l.strides.data(), 3, lo, hi, {&ctx, run});
  });
  return true;
}

}  // namespace

namespace kernel {

// bool + bool is logical or (PyTorch).
void Add(const KernelCall& c) {
  if (vec_binary(c, VecBinary::Add)) return;
  same_type_binary(c, kAll, [](auto a, auto b) {
    using C = decltype(a);
    if constexpr (std::is_same_v<C, bool>) return a || b;
    else if constexpr (std::is_integral_v<C>) return wrap_add(a, b);
    else return a + b;
  });
}

// bool - bool (which the ops layer refuses) would be exclusive or.
void Sub(const KernelCall& c) {
  if (vec_binary(c, VecBinary::Sub)) return;
  same_type_binary(c, kAll, [](auto a, auto b) {
    using C = decltype(a);
    if constexpr (std::is_same_v<C, bool>) return a != b;
    else if constexpr (std::is_integral_v<C>) return wrap_sub(a, b);
    else return a - b;
  });
}

// bool * bool is logical and (PyTorch).
void Mul(const KernelCall& c) {
  if (vec_binary(c, VecBinary::Mul)) return;
  same_type_binary(c, kAll, [](auto a, auto b) {
    using C = decltype(a);
    if constexpr (std::is_same_v<C, bool>) return a && b;
    else if constexpr (std::is_integral_v<C>) return wrap_mul(a, b);
    else return a * b;
  });
}

// True division; the ops layer promotes integer operands to float first.
void Div(const KernelCall& c) {
  if (vec_binary(c, VecBinary::Div)) return;
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
  if (vec_binary(c, VecBinary::Max)) return;
  same_type_binary(c, kAll, [](auto a, auto b) {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return a < b ? b : a;
  });
}
void Minimum(const KernelCall& c) {
  if (vec_binary(c, VecBinary::Min)) return;
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
