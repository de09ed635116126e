// CUDA kernels: Uniform, Normal, RandInt, Bernoulli.
//
// Element k of the output (row-major order) draws from the Philox block with
// key i[0] (the seed) and counter i[1] + k (the offset), the CPU kernels'
// mapping (Note [Philox element mapping] in core/philox.h, whose functions
// this file calls on the device). The bits drawn are therefore the CPU's,
// and so is every output whose transform is exact or correctly rounded:
//  - Uniform: lo + u * width with two roundings (written __fmul_rn /
//    __fadd_rn so nvcc does not contract them into one FMA): bitwise.
//  - RandInt: integer arithmetic, then Copy's conversion: bitwise.
//  - Bernoulli: u < p, exact: bitwise.
//  - Normal: Box-Muller takes log and cos, whose device versions (CUDA's
//    logf / cosf: 1 and 2 ulp; log / cos in double: 1 and 2 ulp) need not
//    round as glibc's do, so a draw can differ from the CPU's in its last
//    bits (sqrt and the final mean + std * z are correctly rounded on both).
#include "backend/cuda/cuda_tensor.cuh"
#include "core/philox.h"

namespace loom::cuda_detail {

namespace {

struct Stream {
  uint64_t seed, offset;
};
Stream stream_of(const KernelCall& c) { return {static_cast<uint64_t>(c.i[0]), static_cast<uint64_t>(c.i[1])}; }

#define LOOM_GRID_STRIDE_LOOP(k, n)                                                      \
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < (n); \
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)

// The unit draw has as many bits as the output's significand (24 float32,
// 11 float16, 8 bfloat16, 53 float64), as on the CPU.
template <typename T>
constexpr int uniform_digits() {
  return std::is_same_v<T, __half> ? 11 : std::is_same_v<T, __nv_bfloat16> ? 8 : 24;
}

template <typename T>
__global__ void uniform_kernel(T* y, Strided g, int64_t n, Stream s, compute_t<T> lo, compute_t<T> width) {
  LOOM_GRID_STRIDE_LOOP(k, n) {
    const uint64_t counter = s.offset + static_cast<uint64_t>(k);
    compute_t<T> v;
    if constexpr (std::is_same_v<compute_t<T>, double>)
      v = __dadd_rn(lo, __dmul_rn(philox::uniform_double(s.seed, counter), width));
    else
      v = __fadd_rn(lo, __fmul_rn(philox::uniform_float(s.seed, counter, uniform_digits<T>()), width));
    y[g.offset(k)] = store_as<T>(v);
  }
}

template <typename T>
__global__ void normal_kernel(T* y, Strided g, int64_t n, Stream s, compute_t<T> mean, compute_t<T> stddev) {
  LOOM_GRID_STRIDE_LOOP(k, n) {
    const uint64_t counter = s.offset + static_cast<uint64_t>(k);
    compute_t<T> v;
    if constexpr (std::is_same_v<compute_t<T>, double>)
      v = __dadd_rn(mean, __dmul_rn(stddev, philox::normal_double(s.seed, counter)));
    else
      v = __fadd_rn(mean, __fmul_rn(stddev, philox::normal_float(s.seed, counter)));
    y[g.offset(k)] = store_as<T>(v);
  }
}

// An int64 value in T as the CPU's Copy converts it: != 0 for bool, through
// float for the 16-bit floats.
template <typename T>
__device__ __forceinline__ T from_int64(int64_t v) {
  if constexpr (std::is_same_v<T, bool>) return v != 0;
  else if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) return store_as<T>(static_cast<float>(v));
  else return static_cast<T>(v);
}

// low + (64 random bits mod range), range = high - low as uint64.
template <typename T>
__global__ void randint_kernel(T* y, Strided g, int64_t n, Stream s, int64_t low, uint64_t range) {
  LOOM_GRID_STRIDE_LOOP(k, n) {
    const uint64_t r = philox::bits64(s.seed, s.offset + static_cast<uint64_t>(k)) % range;
    y[g.offset(k)] = from_int64<T>(static_cast<int64_t>(static_cast<uint64_t>(low) + r));
  }
}

// Writes 0 or 1 as element `off` of an output of dtype `dt` (Copy's
// conversion of a bool): one kernel per p dtype serves every output dtype.
__device__ __forceinline__ void store_bool(void* y, int64_t off, DType dt, bool v) {
  switch (dt) {
    case DType::Float32: static_cast<float*>(y)[off] = v ? 1.0f : 0.0f; return;
    case DType::Float64: static_cast<double*>(y)[off] = v ? 1.0 : 0.0; return;
    case DType::Float16: static_cast<__half*>(y)[off] = __float2half_rn(v ? 1.0f : 0.0f); return;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(y)[off] = __float2bfloat16_rn(v ? 1.0f : 0.0f); return;
    case DType::Int32: static_cast<int32_t*>(y)[off] = v; return;
    case DType::Int64: static_cast<int64_t*>(y)[off] = v; return;
    case DType::UInt8: static_cast<uint8_t*>(y)[off] = v; return;
    case DType::Bool: static_cast<bool*>(y)[off] = v; return;
    case DType::Int8: static_cast<int8_t*>(y)[off] = v; return;
  }
}

// out = (u < p): u a float draw (24 bits) for float, float16 and bfloat16 p,
// a double draw for float64 p, compared in that type (as the CPU).
template <typename P>
__global__ void bernoulli_kernel(void* y, DType out_dtype, Strided gy, const P* p, Strided gp, int64_t n, Stream s) {
  LOOM_GRID_STRIDE_LOOP(k, n) {
    const uint64_t counter = s.offset + static_cast<uint64_t>(k);
    bool keep;
    if constexpr (std::is_same_v<P, double>) keep = philox::uniform_double(s.seed, counter) < p[gp.offset(k)];
    else keep = philox::uniform_float(s.seed, counter) < load_as(p + gp.offset(k));
    store_bool(y, gy.offset(k), out_dtype, keep);
  }
}

void uniform(const KernelCall& c) {
  TensorImpl* out = c.out[0];
  const int64_t n = out->numel();
  if (n == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const Strided g = strided_of(out);
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    uniform_kernel<T><<<grid_for(n), kThreads, 0, l.stream>>>(data_of<T>(out), g, n, stream_of(c),
                                                              static_cast<C>(c.f[0]), static_cast<C>(c.f[1] - c.f[0]));
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

void normal(const KernelCall& c) {
  TensorImpl* out = c.out[0];
  const int64_t n = out->numel();
  if (n == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const Strided g = strided_of(out);
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    normal_kernel<T><<<grid_for(n), kThreads, 0, l.stream>>>(data_of<T>(out), g, n, stream_of(c),
                                                             static_cast<C>(c.f[0]), static_cast<C>(c.f[1]));
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

void randint(const KernelCall& c) {
  const int64_t low = c.i[2], high = c.i[3];
  LOOM_CHECK(low < high, "randint: expected low < high, got low=", low, " and high=", high);
  const uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  TensorImpl* out = c.out[0];
  const int64_t n = out->numel();
  if (n == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const Strided g = strided_of(out);
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    randint_kernel<T><<<grid_for(n), kThreads, 0, l.stream>>>(data_of<T>(out), g, n, stream_of(c), low, range);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

void bernoulli(const KernelCall& c) {
  const TensorImpl* prob = c.in[0];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(prob->sizes == out->sizes, "Bernoulli: p of shape ", shape_str(prob->sizes), " for output ",
              shape_str(out->sizes));
  const int64_t n = out->numel();
  if (n == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  const Strided gy = strided_of(out), gp = strided_of(prob);
  dispatch_float(prob->dtype, [&](auto tag) {
    using P = typename decltype(tag)::type;
    bernoulli_kernel<P><<<grid_for(n), kThreads, 0, l.stream>>>(out->data(), out->dtype, gy, data_of<P>(prob), gp, n,
                                                                stream_of(c));
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void register_random(Backend& b) {
  b.kernels[static_cast<int>(OpKind::Uniform)] = &uniform;
  set_supported(OpKind::Uniform, {kFloat32, kFloat64, kFloat16, kBFloat16});
  b.kernels[static_cast<int>(OpKind::Normal)] = &normal;
  set_supported(OpKind::Normal, {kFloat32, kFloat64, kFloat16, kBFloat16});
  b.kernels[static_cast<int>(OpKind::RandInt)] = &randint;
  set_supported(OpKind::RandInt, {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool, kInt8});
  // Keyed by p's dtype; the output may be any dtype.
  b.kernels[static_cast<int>(OpKind::Bernoulli)] = &bernoulli;
  set_supported(OpKind::Bernoulli, {kFloat32, kFloat64, kFloat16, kBFloat16});
}

}  // namespace loom::cuda_detail
