// Copy (with dtype conversion), Fill and Where: the data-movement kernels.
#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"

namespace loom::cpu::kernel {

// out[0] <- in[0] converted to out's dtype; in[0] already has out's shape.
void Copy(const KernelCall& c) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(in->sizes == out->sizes, "Copy: input ", shape_str(in->sizes), " vs output ", shape_str(out->sizes));
  dispatch_all(in->dtype, [&](auto in_tag) {
    using I = typename decltype(in_tag)::type;
    dispatch_all(out->dtype, [&](auto out_tag) {
      using O = typename decltype(out_tag)::type;
      const I* x = data_ptr<I>(in);
      O* y = data_ptr<O>(out);
      parallel_elementwise<2>(out->sizes, {&out->strides, &in->strides},
                              [&](const Offsets2& o) { y[o[0]] = convert<O>(x[o[1]]); });
    });
  });
}

// out[0] <- scalar: f[0] as double, i[0] as int64, i[1] = 1 when the scalar
// is integral (so int64 values beyond 2^53 stay exact).
void Fill(const KernelCall& c) {
  TensorImpl* out = c.out[0];
  const bool integral = c.i[1] != 0;
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T value = integral ? convert<T>(c.i[0]) : convert<T>(c.f[0]);
    T* y = data_ptr<T>(out);
    parallel_elementwise<1>(out->sizes, {&out->strides}, [&](const Offsets1& o) { y[o[0]] = value; });
  });
}

// out[0] = in[0] ? in[1] : in[2]; in[0] bool; all expanded to out's shape.
void Where(const KernelCall& c) {
  const TensorImpl *cond = c.in[0], *a = c.in[1], *b = c.in[2];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(cond->dtype == kBool, "Where: condition of dtype ", dtype_name(cond->dtype));
  LOOM_ASSERT(a->dtype == out->dtype && b->dtype == out->dtype, "Where: mixed dtypes");
  dispatch_all(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool* pc = data_ptr<bool>(cond);
    const T *pa = data_ptr<T>(a), *pb = data_ptr<T>(b);
    T* y = data_ptr<T>(out);
    parallel_elementwise<4>(out->sizes, {&out->strides, &cond->strides, &a->strides, &b->strides},
                            [&](const Offsets4& o) { y[o[0]] = pc[o[1]] ? pa[o[2]] : pb[o[3]]; });
  });
}

}  // namespace loom::cpu::kernel
