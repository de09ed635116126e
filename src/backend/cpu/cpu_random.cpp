// Random kernels: Uniform, Normal, RandInt, Bernoulli.
//
// Element k of the output (row-major order) draws from the Philox block with
// key i[0] (the seed) and counter i[1] + k (the offset), see Note [Philox
// element mapping] in core/philox.h. Results therefore depend only on
// (seed, offset), never on the thread count. float16/bfloat16/float32 draw in
// float (24-bit uniforms), float64 in double (53-bit uniforms).
#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"
#include "core/philox.h"

namespace loom::cpu {
namespace {

struct Stream {
  uint64_t seed, offset;
};
Stream stream_of(const KernelCall& c) { return {static_cast<uint64_t>(c.i[0]), static_cast<uint64_t>(c.i[1])}; }

// Calls f(out_offset, k) for every element of out[0], k being its row-major
// index, with the elements split across threads.
template <typename F>
void for_each_draw(const TensorImpl* out, F f) {
  const LoopShape<1> l = make_loop<1>(out->sizes, {&out->strides});
  parallel_for(0, l.numel, kGrain, [&](int64_t b, int64_t e) {
    int64_t k = b;  // for_each_offset visits [b, e) in row-major order
    for_each_offset<1>(l, b, e, [&](const Offsets1& o) { f(o[0], static_cast<uint64_t>(k++)); });
  });
}

}  // namespace

namespace kernel {

// out[0] ~ U[f[0], f[1]). The unit draw has as many bits as the output's
// significand (24 float32, 11 float16, 8 bfloat16, 53 float64), so U[0, 1)
// never rounds up to 1 in the storage type.
void Uniform(const KernelCall& c) {
  const Stream s = stream_of(c);
  TensorImpl* out = c.out[0];
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C lo = static_cast<C>(c.f[0]), width = static_cast<C>(c.f[1] - c.f[0]);
    constexpr int digits = std::is_same_v<T, Half> ? 11 : std::is_same_v<T, BFloat16> ? 8 : 24;
    T* y = data_ptr<T>(out);
    for_each_draw(out, [&](int64_t o, uint64_t k) {
      C u;
      if constexpr (std::is_same_v<C, double>) u = philox::uniform_double(s.seed, s.offset + k);
      else u = philox::uniform_float(s.seed, s.offset + k, digits);
      y[o] = static_cast<T>(lo + u * width);
    });
  });
}

// out[0] ~ N(mean f[0], std f[1]).
void Normal(const KernelCall& c) {
  const Stream s = stream_of(c);
  TensorImpl* out = c.out[0];
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C mean = static_cast<C>(c.f[0]), stddev = static_cast<C>(c.f[1]);
    T* y = data_ptr<T>(out);
    for_each_draw(out, [&](int64_t o, uint64_t k) {
      C z;
      if constexpr (std::is_same_v<C, double>) z = philox::normal_double(s.seed, s.offset + k);
      else z = philox::normal_float(s.seed, s.offset + k);
      y[o] = static_cast<T>(mean + stddev * z);
    });
  });
}

// out[0] ~ integers in [i[2], i[3]): low + (64 random bits mod (high - low)).
// The modulo bias is below 2^-32 for ranges under 2^32.
void RandInt(const KernelCall& c) {
  const Stream s = stream_of(c);
  const int64_t low = c.i[2], high = c.i[3];
  LOOM_CHECK(low < high, "randint: expected low < high, got low=", low, " and high=", high);
  const uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  TensorImpl* out = c.out[0];
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* y = data_ptr<T>(out);
    for_each_draw(out, [&](int64_t o, uint64_t k) {
      const uint64_t r = philox::bits64(s.seed, s.offset + k) % range;
      y[o] = convert<T>(static_cast<int64_t>(static_cast<uint64_t>(low) + r));
    });
  });
}

// out[0] = (u < p) with p = in[0] (a float tensor expanded to out's shape),
// written as 0/1 in out's dtype.
void Bernoulli(const KernelCall& c) {
  const Stream s = stream_of(c);
  const TensorImpl* prob = c.in[0];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(prob->sizes == out->sizes, "Bernoulli: p of shape ", shape_str(prob->sizes), " for output ",
              shape_str(out->sizes));
  const LoopShape<2> l = make_loop<2>(out->sizes, {&out->strides, &prob->strides});
  const StoreFn<bool> write = store_fn<bool>(out->dtype);
  void* y = out->data();
  dispatch_float(prob->dtype, [&](auto p_tag) {
    using P = typename decltype(p_tag)::type;
    using C = compute_t<P>;
    const P* p = data_ptr<P>(prob);
    parallel_for(0, l.numel, kGrain, [&](int64_t b, int64_t e) {
      uint64_t k = static_cast<uint64_t>(b);
      for_each_offset<2>(l, b, e, [&](const Offsets2& o) {
        C u;
        if constexpr (std::is_same_v<C, double>) u = philox::uniform_double(s.seed, s.offset + k);
        else u = philox::uniform_float(s.seed, s.offset + k);
        ++k;
        write(y, o[0], u < to_compute(p[o[1]]));
      });
    });
  });
}

}  // namespace kernel
}  // namespace loom::cpu
