// Bmm: out[0] (B, M, N) = in[0] (B, M, K) @ in[1] (B, K, N), any strides.
// float32 runs loom's GEMM (cpu_gemm.h); bfloat16 and float16 run it on
// operands widened to float32 (Note [Low-precision GEMM]); every other
// dtype, and the float32 oracle the GEMM is tested against, is the
// reference below.
//
// The reference GEMM: a plain triple loop, accumulating in double for float
// dtypes and in (wrapping) int64 for integers. Threads split the (b, m) rows
// of the output; each element is summed over k in order on one thread.
#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/workspace.h"
#include "backend/cpu/cpu_vec.h"

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

namespace {

// ---- the fused Linear kernel's helpers ----

// A TensorImpl over part of `base`'s storage (no autograd), to hand a view of
// an operand to another kernel.
TensorImpl alias_impl(const TensorImpl* base, Shape sizes, Shape strides, int64_t offset) {
  TensorImpl t;
  t.storage = base->storage;
  t.sizes = std::move(sizes);
  t.strides = std::move(strides);
  t.offset = offset;
  t.dtype = base->dtype;
  return t;
}

// Runs the CPU kernel of elementwise `op` from `src` into `dst` (which may be src).
void run_elementwise(OpKind op, void (*kernel)(const KernelCall&), const TensorImpl& src, TensorImpl& dst) {
  KernelCall call;
  call.op = op;
  call.in.push_back(&src);
  call.out.push_back(&dst);
  kernel(call);
}

// The activation of Linear's i[0] as its own op and kernel (null for none).
struct Activation {
  OpKind op;
  void (*kernel)(const KernelCall&);
  VecUnary vec_op;  // its vectorized float32 function
};
Activation linear_activation(int64_t code) {
  switch (code) {
    case 1: return {OpKind::Relu, &kernel::Relu, VecUnary::Relu};
    case 2: return {OpKind::Gelu, &kernel::Gelu, VecUnary::Gelu};
    case 3: return {OpKind::GeluTanh, &kernel::GeluTanh, VecUnary::GeluTanh};
    default: return {OpKind::Copy, nullptr, VecUnary::Relu};
  }
}

// Note [GEMM epilogue]'s `post` for float32 Linear: on one finished block of
// the output, save the pre-activation (when asked) and run the activation's
// own kernel on the block in place, so the bits are those of the unfused op.
struct LinearPost {
  const TensorImpl* out;
  TensorImpl* pre;  // null: not saved
  Activation act;
};
void linear_post(void* ctx, float* c, int64_t rs, int64_t cs, int64_t rows, int64_t cols) {
  const LinearPost& p = *static_cast<const LinearPost*>(ctx);
  const int64_t offset = c - static_cast<float*>(p.out->storage->data);
  TensorImpl block = alias_impl(p.out, {rows, cols}, {rs, cs}, offset);
  if (p.pre != nullptr) {
    // pre has out's (contiguous) layout: the same position in its own storage.
    TensorImpl pre_block = alias_impl(p.pre, {rows, cols}, {rs, cs}, p.pre->offset + (offset - p.out->offset));
    run_elementwise(OpKind::Copy, &kernel::Copy, block, pre_block);
  }
  if (p.act.kernel == nullptr) return;
  // The unfused op runs on the whole contiguous output, which its kernel
  // takes as one vectorized run when vectorized kernels are on. A block's
  // rows may be too short for the kernel to pick that path itself (a
  // thread's share of the columns can end a few columns past a strip), so
  // the rows go to the same vector function directly: the bits do not
  // depend on where the blocks fall.
  if (vec_enabled() && cs == 1) {
    for (int64_t r = 0; r < rows; ++r) vec().unary_f32(p.act.vec_op, c + r * rs, c + r * rs, cols);
    return;
  }
  run_elementwise(p.act.op, p.act.kernel, block, block);
}

// Note [Low-precision GEMM]
// Bmm on bfloat16 and float16 widens its operands to float32 in the call's
// workspace (vectorized by the Copy kernel), runs the float32 GEMM on them
// and rounds each result once into the output. Every element is therefore
// the float32 chain of Note [GEMM summation order] over exactly widened
// inputs, rounded once: float32 accumulation, as the matrix units' bf16
// instructions do, and the error bound of one rounding to the format on top
// of float32's. Linear on these dtypes runs this Bmm and then the Add and
// activation kernels, so the fused op keeps its contract of giving the bits
// of the unfused ops (a rounding after each). The widening
// costs O(MK + KN + MN) against the product's O(MNK). An operand broadcast
// along a dim (stride 0, as matmul's weight over a batch) is widened once
// and keeps its stride 0. This is the fallback of issue 21's bf16 GEMM; the
// AVX512-BF16 and AMX kernels that would multiply bf16 directly need a CPU
// this project's machines do not have.

bool is_low_precision(DType t) { return t == kFloat16 || t == kBFloat16; }

// Sizes of `t` with its stride-0 dims counted once.
Shape stored_sizes(const TensorImpl* t) {
  Shape s = t->sizes;
  for (size_t d = 0; d < s.size(); ++d)
    if (t->strides[d] == 0) s[d] = 1;
  return s;
}

// Storage over memory someone else owns (a kernel's workspace).
std::shared_ptr<Storage> borrowed_storage(void* data, size_t nbytes) {
  auto st = std::make_shared<Storage>();
  st->data = data;
  st->nbytes = nbytes;
  return st;
}

// A contiguous float32 TensorImpl over `data` shaped like `t` (stride-0 dims
// kept at stride 0); `data` holds shape_numel(stored_sizes(t)) floats.
TensorImpl f32_like(const TensorImpl* t, float* data) {
  TensorImpl f;
  const Shape stored = stored_sizes(t);
  f.storage = borrowed_storage(data, static_cast<size_t>(shape_numel(stored)) * sizeof(float));
  f.sizes = t->sizes;
  f.strides = contiguous_strides(stored);
  for (size_t d = 0; d < f.sizes.size(); ++d)
    if (t->strides[d] == 0) f.strides[d] = 0;
  f.dtype = kFloat32;
  return f;
}

// Converts src into dst (same sizes; stride-0 dims of either are copied once).
void convert_into(const TensorImpl& src, TensorImpl& dst) {
  const Shape stored = stored_sizes(&dst);
  TensorImpl s = alias_impl(&src, stored, src.strides, src.offset);
  TensorImpl d = alias_impl(&dst, stored, dst.strides, dst.offset);
  run_elementwise(OpKind::Copy, &kernel::Copy, s, d);
}

// A float32 operand in the workspace: taken from `ws`, and (when carving)
// filled from `t`.
TensorImpl widened(WorkspaceLayout& ws, const TensorImpl* t) {
  float* data = ws.take<float>(shape_numel(stored_sizes(t)));
  if (!ws.carving()) return {};
  TensorImpl f = f32_like(t, data);
  convert_into(*t, f);
  return f;
}
// A float32 result in the workspace, shaped like `t` (contiguous).
TensorImpl result_buffer(WorkspaceLayout& ws, const TensorImpl* t) {
  float* data = ws.take<float>(t->numel());
  if (!ws.carving()) return {};
  TensorImpl f = f32_like(t, data);
  f.strides = contiguous_strides(t->sizes);
  return f;
}

// A low-precision Bmm's workspace (Note [Low-precision GEMM]): the widened
// operands, the float32 result and the float32 GEMM's packing space. The
// size function and the kernel walk the same layout; carving widens the
// operands as it goes.
struct LowpBmm {
  TensorImpl a, b, out;
  GemmWorkspace pack;
};
LowpBmm lowp_bmm(WorkspaceLayout& ws, const KernelCall& c) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  LowpBmm l;
  l.a = widened(ws, a);
  l.b = widened(ws, b);
  l.out = result_buffer(ws, c.out[0]);
  const int64_t floats = sgemm_workspace_floats(gemm_isa(), a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2]);
  l.pack = {ws.take<float>(floats), floats};
  return l;
}
bool lowp_bmm_call(const KernelCall& c) {
  return is_low_precision(c.in[0]->dtype) && c.in[0]->dim() == 3 && c.in[1]->dim() == 3;
}

// The GEMM's packing space (Note [GEMM packing space]) of a float32 Bmm or
// Linear call, and the call's workspace as that space.
int64_t bmm_pack_floats(const KernelCall& c) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  if (a->dtype != kFloat32 || a->dim() != 3 || b->dim() != 3) return 0;
  return sgemm_workspace_floats(gemm_isa(), a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2]);
}
int64_t linear_pack_floats(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.in[1], *bias = c.in.size() > 2 ? c.in[2] : nullptr;
  if (x->dtype != kFloat32 || x->dim() != 2 || w->dim() != 2) return 0;
  const bool strided_bias = bias != nullptr && bias->strides[0] != 1;
  return sgemm_workspace_floats(gemm_isa(), 1, x->sizes[0], w->sizes[0], x->sizes[1], strided_bias);
}
GemmWorkspace gemm_workspace(const KernelCall& c, int64_t floats) {
  if (floats == 0) return {nullptr, 0};
  WorkspaceLayout ws = carve(c);
  return {ws.take<float>(floats), floats};
}
size_t pack_bytes(int64_t floats) {
  if (floats == 0) return 0;
  WorkspaceLayout ws;
  ws.take<float>(floats);
  return ws.bytes();
}

// Linear's product as a Bmm call: x (1, M, K) @ w^T (1, K, N) -> out (1, M,
// N), views of the Linear call's operands, with its workspace (a
// low-precision Bmm's, sized by workspace::Linear).
struct LinearAsBmm {
  TensorImpl x3, wt3, out3;
  KernelCall call;
  explicit LinearAsBmm(const KernelCall& c) {
    const TensorImpl *x = c.in[0], *w = c.in[1], *out = c.out[0];
    const int64_t m = x->sizes[0], k = x->sizes[1], n = w->sizes[0];
    x3 = alias_impl(x, {1, m, k}, {0, x->strides[0], x->strides[1]}, x->offset);
    wt3 = alias_impl(w, {1, k, n}, {0, w->strides[1], w->strides[0]}, w->offset);
    out3 = alias_impl(out, {1, m, n}, {0, out->strides[0], out->strides[1]}, out->offset);
    call.op = OpKind::Bmm;
    call.in.push_back(&x3);
    call.in.push_back(&wt3);
    call.out.push_back(&out3);
    call.workspace = c.workspace;
  }
  LinearAsBmm(const LinearAsBmm&) = delete;  // call points at the views
  LinearAsBmm& operator=(const LinearAsBmm&) = delete;
};

}  // namespace

namespace kernel {

// Linear: out[0] (M, N) = act(in[0] (M, K) @ in[1]^T + in[2]) (ops.def);
// out[1], when given, gets the pre-activation. float32 runs the GEMM with the
// bias (and ReLU) in its register epilogue and GELU on each block in cache;
// other dtypes run the Bmm kernel (the widened GEMM for bfloat16 and
// float16, Note [Low-precision GEMM]; the reference for the rest), then the
// Add and activation kernels.
void Linear(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.in[1], *bias = c.in.size() > 2 ? c.in[2] : nullptr;
  TensorImpl* out = c.out[0];
  TensorImpl* pre = c.out.size() > 1 ? c.out[1] : nullptr;
  LOOM_ASSERT(x->dim() == 2 && w->dim() == 2 && out->dim() == 2 && x->sizes[1] == w->sizes[1] &&
                  out->sizes == Shape({x->sizes[0], w->sizes[0]}) && out->is_contiguous(),
              "Linear: shapes ", shape_str(x->sizes), ", weight ", shape_str(w->sizes), " -> ", shape_str(out->sizes));
  LOOM_ASSERT(bias == nullptr || (bias->dim() == 1 && bias->sizes[0] == w->sizes[0]), "Linear: bias ",
              shape_str(bias->sizes));
  LOOM_ASSERT(pre == nullptr || (pre->sizes == out->sizes && pre->is_contiguous()), "Linear: pre-activation output");
  LOOM_ASSERT(x->dtype == w->dtype && x->dtype == out->dtype && (bias == nullptr || bias->dtype == x->dtype),
              "Linear: mixed dtypes");
  const int64_t m = x->sizes[0], k = x->sizes[1], n = w->sizes[0];
  const Activation act = linear_activation(c.i[0]);
  if (x->dtype == kFloat32) {
    LinearPost post{out, pre, act};
    const bool gelu = act.kernel != nullptr && act.op != OpKind::Relu;
    SgemmEpilogue ep{bias != nullptr ? data_ptr<float>(bias) : nullptr, bias != nullptr ? bias->strides[0] : 0,
                     act.op == OpKind::Relu, gelu || pre != nullptr ? &linear_post : nullptr, &post};
    if (!gelu) post.act = Activation{OpKind::Copy, nullptr, VecUnary::Relu};  // relu ran in registers
    // B (K, N) is the weight transposed: element (p, j) at w[j, p].
    sgemm(gemm_isa(), 1, m, n, k, {data_ptr<float>(x), 0, x->strides[0], x->strides[1]},
          {data_ptr<float>(w), 0, w->strides[1], w->strides[0]},
          {data_ptr<float>(out), 0, out->strides[0], out->strides[1]}, &ep, gemm_workspace(c, linear_pack_floats(c)));
    return;
  }
  // The reference path: the unfused kernels, one after another, on views.
  LinearAsBmm mm(c);
  if (k > 0) {
    Bmm(mm.call);
  } else {
    KernelCall fill;
    fill.op = OpKind::Fill;
    fill.out.push_back(out);
    fill.i[1] = 1;  // 0 as an integral value: exact for every dtype
    kernel::Fill(fill);
  }
  if (bias != nullptr) {
    TensorImpl bias2 = alias_impl(bias, {m, n}, {0, bias->strides[0]}, bias->offset);
    KernelCall add;
    add.op = OpKind::Add;
    add.in.push_back(out);
    add.in.push_back(&bias2);
    add.out.push_back(out);
    kernel::Add(add);
  }
  if (pre != nullptr) run_elementwise(OpKind::Copy, &kernel::Copy, *out, *pre);
  if (act.kernel != nullptr) run_elementwise(act.op, act.kernel, *out, *out);
}

void Bmm(const KernelCall& c) {
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* out = c.out[0];
  check_bmm_call(c);
  if (is_low_precision(a->dtype)) {
    WorkspaceLayout ws = carve(c);
    LowpBmm l = lowp_bmm(ws, c);
    sgemm(gemm_isa(), a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2],
          {data_ptr<float>(&l.a), l.a.strides[0], l.a.strides[1], l.a.strides[2]},
          {data_ptr<float>(&l.b), l.b.strides[0], l.b.strides[1], l.b.strides[2]},
          {data_ptr<float>(&l.out), l.out.strides[0], l.out.strides[1], l.out.strides[2]}, nullptr, l.pack);
    convert_into(l.out, *out);
    return;
  }
  if (a->dtype != kFloat32) {
    bmm_reference(c);
    return;
  }
  // a: (B, M, K), b: (B, K, N), out: (B, M, N)
  sgemm(gemm_isa(), a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2],
        {data_ptr<float>(a), a->strides[0], a->strides[1], a->strides[2]},
        {data_ptr<float>(b), b->strides[0], b->strides[1], b->strides[2]},
        {data_ptr<float>(out), out->strides[0], out->strides[1], out->strides[2]}, nullptr,
        gemm_workspace(c, bmm_pack_floats(c)));
}

}  // namespace kernel

namespace workspace {

size_t Bmm(const KernelCall& c) {
  if (!lowp_bmm_call(c)) return pack_bytes(bmm_pack_floats(c));
  WorkspaceLayout ws;
  lowp_bmm(ws, c);
  return ws.bytes();
}
size_t Linear(const KernelCall& c) {
  if (!is_low_precision(c.in[0]->dtype) || c.in[0]->dim() != 2 || c.in[1]->dim() != 2)
    return pack_bytes(linear_pack_floats(c));
  return Bmm(LinearAsBmm(c).call);
}

}  // namespace workspace

}  // namespace loom::cpu
