// Bmm: out[0] (B, M, N) = in[0] (B, M, K) @ in[1] (B, K, N), any strides.
// float32 runs loom's GEMM (cpu_gemm.h); every other dtype, and the float32
// oracle the GEMM is tested against, is the reference below.
//
// The reference GEMM: a plain triple loop, accumulating in double for float
// dtypes and in (wrapping) int64 for integers. Threads split the (b, m) rows
// of the output; each element is summed over k in order on one thread.
#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_kernels.h"

namespace loom::cpu {

namespace {

// Strides of a (batch, rows, cols) operand, in elements.
struct Strides3 {
  int64_t batch, row, col;
};

template <typename T>
void bmm_reference_loops(int64_t batch, int64_t m, int64_t n, int64_t k, const T* pa, Strides3 sa, const T* pb,
                         Strides3 sb, T* py, Strides3 so) {
  using A = acc_t<T>;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(n * k, 1));
  parallel_for(0, batch * m, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = row / m, i = row % m;
      const T* arow = pa + bi * sa.batch + i * sa.row;
      const T* bmat = pb + bi * sb.batch;
      T* yrow = py + bi * so.batch + i * so.row;
      for (int64_t j = 0; j < n; ++j) {
        A acc = 0;
        for (int64_t p = 0; p < k; ++p) {
          const A lhs = convert<A>(arow[p * sa.col]);
          const A rhs = convert<A>(bmat[p * sb.row + j * sb.col]);
          if constexpr (std::is_integral_v<A>) acc = wrap_add(acc, wrap_mul(lhs, rhs));
          else acc += lhs * rhs;
        }
        yrow[j * so.col] = convert<T>(acc);
      }
    }
  });
}

Strides3 strides3(const TensorImpl* t) { return {t->strides[0], t->strides[1], t->strides[2]}; }

void check_bmm_call(const KernelCall& c) {
  const TensorImpl *a = c.in[0], *b = c.in[1], *out = c.out[0];
  LOOM_ASSERT(a->dim() == 3 && b->dim() == 3 && out->dim() == 3, "Bmm: expected 3-d tensors, got ",
              shape_str(a->sizes), " @ ", shape_str(b->sizes), " -> ", shape_str(out->sizes));
  const int64_t batch = a->sizes[0], m = a->sizes[1], k = a->sizes[2], n = b->sizes[2];
  LOOM_ASSERT(b->sizes[0] == batch && b->sizes[1] == k && out->sizes == Shape({batch, m, n}), "Bmm: shapes ",
              shape_str(a->sizes), " @ ", shape_str(b->sizes), " -> ", shape_str(out->sizes));
  LOOM_ASSERT(a->dtype == b->dtype && a->dtype == out->dtype, "Bmm: mixed dtypes");
}

}  // namespace

void bmm_reference(const KernelCall& c) {
  check_bmm_call(c);
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* out = c.out[0];
  dispatch_numeric(a->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bmm_reference_loops<T>(a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2], data_ptr<T>(a), strides3(a),
                           data_ptr<T>(b), strides3(b), data_ptr<T>(out), strides3(out));
  });
}

void sgemm_reference(int64_t batch, int64_t m, int64_t n, int64_t k, SgemmInput a, SgemmInput b, SgemmOutput c) {
  bmm_reference_loops<float>(batch, m, n, k, a.data, {a.bs, a.rs, a.cs}, b.data, {b.bs, b.rs, b.cs}, c.data,
                             {c.bs, c.rs, c.cs});
}

namespace kernel {

void Bmm(const KernelCall& c) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* out = c.out[0];
  if (a->dtype != kFloat32) {
    bmm_reference(c);
    return;
  }
  check_bmm_call(c);
  // a: (B, M, K), b: (B, K, N), out: (B, M, N)
  sgemm(gemm_isa(), a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2],
        {data_ptr<float>(a), a->strides[0], a->strides[1], a->strides[2]},
        {data_ptr<float>(b), b->strides[0], b->strides[1], b->strides[2]},
        {data_ptr<float>(out), out->strides[0], out->strides[1], out->strides[2]});
}

}  // namespace kernel

}  // namespace loom::cpu
