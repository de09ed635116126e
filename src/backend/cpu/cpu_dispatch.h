// Shared machinery of the CPU reference kernels: dtype dispatch, value
// conversion, wrapping integer arithmetic, and strided N-d loops.
//
// Note [CPU reference kernels]
// These kernels are the oracle the fast kernels are tested against: plain
// loops, correct for every dtype, every stride (0-strides from broadcasting,
// permuted layouts), 0-dim tensors (numel 1) and empty tensors (numel 0).
// Parallel loops split only over independent output elements, and each
// output element is computed in one fixed order, so results never depend on
// the thread count.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/tensor_impl.h"
#include "loom/threads.h"

namespace loom::cpu {

// Elements per parallel chunk: small tensors stay on the calling thread.
inline constexpr int64_t kGrain = 32768;

// ---- dtype dispatch ----

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the C++ storage type of `dt`:
// float, double, Half, BFloat16, int32_t, int64_t, uint8_t, bool.
template <typename F>
void dispatch_all(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(TypeTag<float>{}); return;
    case DType::Float64: f(TypeTag<double>{}); return;
    case DType::Float16: f(TypeTag<Half>{}); return;
    case DType::BFloat16: f(TypeTag<BFloat16>{}); return;
    case DType::Int32: f(TypeTag<int32_t>{}); return;
    case DType::Int64: f(TypeTag<int64_t>{}); return;
    case DType::UInt8: f(TypeTag<uint8_t>{}); return;
    case DType::Bool: f(TypeTag<bool>{}); return;
    case DType::Int8: f(TypeTag<int8_t>{}); return;
  }
  LOOM_ASSERT(false, "unknown dtype ", static_cast<int>(dt));
}

// The four floating dtypes only; others are an internal error (run_kernel
// has already asked supports()).
template <typename F>
void dispatch_float(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(TypeTag<float>{}); return;
    case DType::Float64: f(TypeTag<double>{}); return;
    case DType::Float16: f(TypeTag<Half>{}); return;
    case DType::BFloat16: f(TypeTag<BFloat16>{}); return;
    default: break;
  }
  LOOM_ASSERT(false, "float kernel called with dtype ", dtype_name(dt));
}

// Every dtype but bool.
template <typename F>
void dispatch_numeric(DType dt, F&& f) {
  LOOM_ASSERT(dt != kBool, "numeric kernel called with dtype bool");
  dispatch_all(dt, std::forward<F>(f));
}

// Index tensors are int64 (the ops layer's contract); int32 is accepted too.
template <typename F>
void dispatch_index(DType dt, F&& f) {
  switch (dt) {
    case DType::Int64: f(TypeTag<int64_t>{}); return;
    case DType::Int32: f(TypeTag<int32_t>{}); return;
    default: break;
  }
  LOOM_ASSERT(false, "index tensor of dtype ", dtype_name(dt));
}

// ---- types ----

// The type arithmetic is done in: float for the 16-bit floats, else T.
template <typename T>
struct ComputeType {
  using type = T;
};
template <>
struct ComputeType<Half> {
  using type = float;
};
template <>
struct ComputeType<BFloat16> {
  using type = float;
};
template <typename T>
using compute_t = typename ComputeType<T>::type;

template <typename T>
inline constexpr bool is_float_v = std::is_floating_point_v<compute_t<T>>;

// The type sums and products accumulate in: double for every float dtype,
// int64 for integers and bool.
template <typename T>
using acc_t = std::conditional_t<is_float_v<T>, double, int64_t>;

template <typename T>
compute_t<T> to_compute(T v) {
  return static_cast<compute_t<T>>(v);
}

// Float to integer: truncation toward zero through int64 (then wrapping to
// narrower types, as PyTorch on x86 does for uint8). NaN and values outside
// int64 give INT64_MIN (x86's cvttsd2si) instead of undefined behaviour.
template <typename To, typename F>
To float_to_int(F x) {
  const double d = static_cast<double>(x);
  int64_t i = std::numeric_limits<int64_t>::min();
  if (d > -0x1p63 && d < 0x1p63) i = static_cast<int64_t>(d);
  return static_cast<To>(i);
}

// Converts between any two storage types (Copy's semantics): anything to
// bool is `!= 0`; float to int truncates; 16-bit floats go through float.
template <typename To, typename From>
To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<To, bool>) {
    return to_compute(v) != 0;
  } else if constexpr (std::is_integral_v<To> && is_float_v<From>) {
    return float_to_int<To>(to_compute(v));
  } else if constexpr (std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>) {
    return To(static_cast<float>(to_compute(v)));
  } else {
    return static_cast<To>(to_compute(v));
  }
}

// Integer arithmetic wraps modulo 2^bits (as PyTorch's does) instead of
// hitting signed-overflow undefined behaviour: compute in uint64 and narrow.
template <typename T>
T wrap_add(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
template <typename T>
T wrap_sub(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
template <typename T>
T wrap_mul(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}
template <typename T>
T wrap_neg(T a) {
  return static_cast<T>(uint64_t{0} - static_cast<uint64_t>(a));
}

template <typename C>
bool is_nan(C v) {
  if constexpr (std::is_floating_point_v<C>) return std::isnan(v);
  else return false;
}

// Writes a value of type V (double, int64_t or bool) into element `offset`
// of a buffer of another dtype, converting as Copy does. Kernels whose
// output dtype may differ from the input's (Sum to a wider dtype, Bernoulli)
// store through this instead of instantiating every (input, output) pair.
template <typename V>
using StoreFn = void (*)(void* base, int64_t offset, V value);

template <typename V>
StoreFn<V> store_fn(DType dt) {
  StoreFn<V> fn = nullptr;
  dispatch_all(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    fn = [](void* base, int64_t offset, V value) { static_cast<T*>(base)[offset] = convert<T>(value); };
  });
  return fn;
}

// Typed element pointer of a tensor (at its storage offset).
template <typename T>
T* data_ptr(const TensorImpl* t) {
  return reinterpret_cast<T*>(t->data());
}

// ---- strided loops ----

// The iteration space of an N-operand elementwise loop. Size-1 dims are
// dropped and adjacent dims merged where every operand steps through them
// as one (dim d-1 stride == dim d stride * size), so contiguous tensors
// become one flat run.
template <int N>
struct LoopShape {
  std::vector<int64_t> sizes;                  // outermost first
  std::array<std::vector<int64_t>, N> strides;  // per operand, in elements
  int64_t numel = 1;
};

template <int N>
LoopShape<N> make_loop(const Shape& sizes, const std::array<const Shape*, N>& strides) {
  LoopShape<N> l;
  for (int64_t s : sizes) l.numel *= s;
  // Walk from the innermost dim outwards, building the merged dims reversed.
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    bool merge = !l.sizes.empty();
    for (int k = 0; k < N && merge; ++k)
      merge = (*strides[k])[d] == l.strides[k].back() * l.sizes.back();
    if (merge) {
      l.sizes.back() *= sizes[d];
    } else {
      l.sizes.push_back(sizes[d]);
      for (int k = 0; k < N; ++k) l.strides[k].push_back((*strides[k])[d]);
    }
  }
  std::reverse(l.sizes.begin(), l.sizes.end());
  for (int k = 0; k < N; ++k) std::reverse(l.strides[k].begin(), l.strides[k].end());
  return l;
}

using Offsets1 = std::array<int64_t, 1>;
using Offsets2 = std::array<int64_t, 2>;
using Offsets3 = std::array<int64_t, 3>;
using Offsets4 = std::array<int64_t, 4>;

// The most operands a loop has (Where: out, cond, a, b).
inline constexpr int kMaxLoopOperands = 4;

// A run callback without templates: fn(ctx, offsets, len) handles `len`
// consecutive elements of the innermost dim starting at `offsets`.
struct RunCallback {
  void* ctx;
  void (*fn)(void* ctx, const int64_t* offsets, int64_t len);
};

// Splits the elements [begin, end) of a loop (row-major order) into runs
// along the innermost dim (cpu_loops.cpp). Not a template, so each kernel
// instantiates only its inner loop.
void for_each_run(const std::vector<int64_t>& sizes, const std::vector<int64_t>* strides, int n_operands,
                  int64_t begin, int64_t end, RunCallback callback);

// Calls f(offsets) for the elements [begin, end) of `l` in row-major order,
// offsets[k] being operand k's element offset.
template <int N, typename F>
void for_each_offset(const LoopShape<N>& l, int64_t begin, int64_t end, F&& f) {
  static_assert(N >= 1 && N <= kMaxLoopOperands);
  std::array<int64_t, N> step{};
  if (!l.sizes.empty())
    for (int k = 0; k < N; ++k) step[k] = l.strides[k].back();
  auto run = [&](const int64_t* start, int64_t len) {
    std::array<int64_t, N> o;
    for (int k = 0; k < N; ++k) o[k] = start[k];
    for (int64_t r = 0; r < len; ++r) {
      f(o);
      for (int k = 0; k < N; ++k) o[k] += step[k];
    }
  };
  using Run = decltype(run);
  for_each_run(l.sizes, l.strides.data(), N, begin, end,
               {&run, [](void* ctx, const int64_t* start, int64_t len) { (*static_cast<Run*>(ctx))(start, len); }});
}

// Elementwise loop over `sizes` with one stride list per operand, split
// across threads in chunks of at least kGrain elements.
template <int N, typename F>
void parallel_elementwise(const Shape& sizes, const std::array<const Shape*, N>& strides, F&& f) {
  // Small tensors whose operands are all laid out row-major (the common
  // case) take one flat run on the calling thread: no loop shape to build,
  // no parallel_for, so a 10-element op costs little more than its math.
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  if (numel <= kGrain) {
    bool flat = true;
    for (int k = 0; k < N && flat; ++k) {
      int64_t expected = 1;
      for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0 && flat; --d) {
        if (sizes[d] == 1) continue;
        flat = (*strides[k])[d] == expected;
        expected *= sizes[d];
      }
    }
    if (flat) {
      std::array<int64_t, N> o{};
      for (int64_t i = 0; i < numel; ++i) {
        f(o);
        for (int k = 0; k < N; ++k) ++o[k];
      }
      return;
    }
  }
  const LoopShape<N> l = make_loop<N>(sizes, strides);
  if (l.numel == 0) return;
  parallel_for(0, l.numel, kGrain, [&](int64_t b, int64_t e) { for_each_offset<N>(l, b, e, f); });
}

// Splits a tensor's dims into leading "outer" dims and `n_trailing` trailing
// dims (clamped to its rank), as reductions and row-wise ops see them.
struct OuterInner {
  Shape outer_sizes, outer_strides, inner_sizes, inner_strides;
  int64_t outer_numel = 1, inner_numel = 1;
};
inline OuterInner split_trailing(const TensorImpl* t, int64_t n_trailing) {
  OuterInner s;
  const int64_t nd = t->dim();
  const int64_t k = std::min<int64_t>(std::max<int64_t>(n_trailing, 0), nd);
  for (int64_t d = 0; d < nd; ++d) {
    if (d < nd - k) {
      s.outer_sizes.push_back(t->sizes[d]);
      s.outer_strides.push_back(t->strides[d]);
      s.outer_numel *= t->sizes[d];
    } else {
      s.inner_sizes.push_back(t->sizes[d]);
      s.inner_strides.push_back(t->strides[d]);
      s.inner_numel *= t->sizes[d];
    }
  }
  return s;
}

}  // namespace loom::cpu
