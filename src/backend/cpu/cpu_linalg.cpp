// Bmm: out[0] (B, M, N) = in[0] (B, M, K) @ in[1] (B, K, N), any strides.
// The reference GEMM: a plain triple loop, accumulating in double for float
// dtypes and in (wrapping) int64 for integers. Threads split the (b, m) rows
// of the output; each element is summed over k in order on one thread.
#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"

namespace loom::cpu::kernel {

void Bmm(const KernelCall& c) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(a->dim() == 3 && b->dim() == 3 && out->dim() == 3, "Bmm: expected 3-d tensors, got ",
              shape_str(a->sizes), " @ ", shape_str(b->sizes), " -> ", shape_str(out->sizes));
  const int64_t batch = a->sizes[0], m = a->sizes[1], k = a->sizes[2], n = b->sizes[2];
  LOOM_ASSERT(b->sizes[0] == batch && b->sizes[1] == k && out->sizes == Shape({batch, m, n}), "Bmm: shapes ",
              shape_str(a->sizes), " @ ", shape_str(b->sizes), " -> ", shape_str(out->sizes));
  LOOM_ASSERT(a->dtype == b->dtype && a->dtype == out->dtype, "Bmm: mixed dtypes");
  dispatch_numeric(a->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const T *pa = data_ptr<T>(a), *pb = data_ptr<T>(b);
    T* py = data_ptr<T>(out);
    const Shape &sa = a->strides, &sb = b->strides, &so = out->strides;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(n * k, 1));
    parallel_for(0, batch * m, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bi = row / m, i = row % m;
        const T* arow = pa + bi * sa[0] + i * sa[1];
        const T* bmat = pb + bi * sb[0];
        T* yrow = py + bi * so[0] + i * so[1];
        for (int64_t j = 0; j < n; ++j) {
          A acc = 0;
          for (int64_t p = 0; p < k; ++p) {
            const A lhs = convert<A>(arow[p * sa[2]]);
            const A rhs = convert<A>(bmat[p * sb[1] + j * sb[2]]);
            if constexpr (std::is_integral_v<A>) acc = wrap_add(acc, wrap_mul(lhs, rhs));
            else acc += lhs * rhs;
          }
          yrow[j * so[2]] = convert<T>(acc);
        }
      }
    });
  });
}

}  // namespace loom::cpu::kernel
