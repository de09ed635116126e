// Kernel calls as values (Note [Kernel calls are values] in
// src/backend/backend.h) and their workspaces (Note [Kernel workspaces] in
// src/backend/workspace.h): hashing, arity, and that a kernel's scratch is
// all in the workspace its call is given. This suite includes internal
// headers (src/ is on the tests' include path).
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "backend/backend.h"
#include "test_util.h"

// Heap allocations of 4 KiB or more while `g_counting` is set: kernel
// scratch would be that large; the small std::function and shape vectors
// around a call are not.
namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_large_allocations{0};
constexpr size_t kLarge = 4096;
void note(size_t n) {
  if (n >= kLarge && g_counting.load(std::memory_order_relaxed)) g_large_allocations.fetch_add(1);
}
}  // namespace

// The replacements pair malloc with free themselves; GCC's check for
// mismatched new/delete cannot see that inside the replacements.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t n) {
  note(n);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new(size_t n, std::align_val_t a) {
  note(n);
  const size_t al = static_cast<size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n, std::align_val_t a) { return operator new(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

using loom::KernelCall;
using loom::test::error_of;
using loom::OpKind;
using loom::Tensor;

// Large heap allocations made while fn runs.
template <class Fn>
int64_t large_allocations_in(const Fn& fn) {
  g_large_allocations = 0;
  g_counting = true;
  fn();
  g_counting = false;
  return g_large_allocations.load();
}

KernelCall call_of(OpKind op, std::initializer_list<const Tensor*> ins, std::initializer_list<const Tensor*> outs) {
  KernelCall c;
  c.op = op;
  for (const Tensor* t : ins) c.in.push_back(t->defined() ? t->unsafe_impl() : nullptr);
  for (const Tensor* t : outs) c.out.push_back(t->unsafe_impl());
  return c;
}

// The counter itself: what a kernel's own std::vector or aligned new of
// scratch would look like.
TEST(KernelWorkspace, TheCounterSeesLargeAllocations) {
  EXPECT_EQ(large_allocations_in([] { std::vector<float> v(1 << 16); }), 1);
  EXPECT_EQ(large_allocations_in([] { delete[] new (std::align_val_t{64}) float[1 << 12]; }), 1);
  EXPECT_EQ(large_allocations_in([] { std::vector<float> v(16); }), 0);
}

TEST(KernelCall, HashSeesGeometryAndParametersNotData) {
  Tensor a = loom::randn({8, 3, 10, 10}), b = loom::randn({8, 3, 10, 10}), w = loom::randn({4, 3, 3, 3});
  Tensor y = loom::empty({8, 4, 8, 8});
  KernelCall c1 = call_of(OpKind::Conv2d, {&a, &w}, {&y}), c2 = call_of(OpKind::Conv2d, {&b, &w}, {&y});
  c1.params = c2.params = loom::ConvParams{{3, 3, 1, 1, 0, 0, 1, 1}, 1};
  EXPECT_EQ(loom::hash_kernel_call(c1), loom::hash_kernel_call(c2));  // other data, same function
  c2.params = loom::ConvParams{{3, 3, 1, 1, 0, 0, 1, 1}, 3};
  EXPECT_NE(loom::hash_kernel_call(c1), loom::hash_kernel_call(c2));  // groups differ
  Tensor at = a.transpose(2, 3);
  KernelCall c3 = call_of(OpKind::Conv2d, {&at, &w}, {&y});
  c3.params = c1.params;
  EXPECT_NE(loom::hash_kernel_call(c1), loom::hash_kernel_call(c3));  // strides differ
  KernelCall c4 = c1;  // a call is a value: a copy hashes alike
  EXPECT_EQ(loom::hash_kernel_call(c1), loom::hash_kernel_call(c4));
  EXPECT_EQ(c4.param<loom::ConvParams>(), c1.param<loom::ConvParams>());
}

TEST(KernelCall, ArityAndParametersAreChecked) {
  Tensor a = loom::randn({4}), out = loom::empty({4});
  KernelCall one_input = call_of(OpKind::Add, {&a}, {&out});
  EXPECT_ERROR_HAS(loom::run_kernel(one_input), "Add: kernel call with 1 inputs and 1 outputs");
  KernelCall no_output = call_of(OpKind::Exp, {&a}, {});
  EXPECT_ERROR_HAS(loom::run_kernel(no_output), "Exp: kernel call with 1 inputs and 0 outputs");
  Tensor x = loom::randn({1, 1, 4, 4}), y = loom::empty({1, 1, 2, 2});
  KernelCall pool = call_of(OpKind::MaxPool2d, {&x}, {&y});  // no Window2d
  EXPECT_ERROR_HAS(loom::run_kernel(pool), "MaxPool2d: kernel call without its typed parameters");
  EXPECT_EQ(loom::op_arity(OpKind::Linear).max_in, 3);
  EXPECT_EQ(loom::op_arity(OpKind::FusedAdam).max_in, -1);
}

// A call given a workspace of exactly kernel_workspace_bytes: the kernel
// takes nothing from the allocator or the heap, and computes what it
// computes with a workspace of its own.
void expect_runs_in_its_workspace(KernelCall c, const Tensor& out) {
  const size_t need = loom::kernel_workspace_bytes(c);
  Tensor expected;
  {
    loom::run_kernel(c);  // run_kernel borrows the workspace itself
    expected = out.clone();
  }
  std::vector<unsigned char> ws(need + 64, 0xff);  // garbage: kernels must not read before writing
  c.workspace = {ws.data(), need};
  const loom::CpuAllocatorStats before = loom::cpu_allocator_stats();
  const int64_t large = large_allocations_in([&] { loom::run_kernel(c); });
  const loom::CpuAllocatorStats after = loom::cpu_allocator_stats();
  EXPECT_EQ(large, 0) << loom::op_name(c.op) << ": heap allocations inside the kernel";
  EXPECT_EQ(after.cache_hits + after.system_allocations, before.cache_hits + before.system_allocations)
      << loom::op_name(c.op) << ": allocator use inside the kernel";
  EXPECT_TRUE(loom::equal(out, expected)) << loom::op_name(c.op);
}

TEST(KernelWorkspace, ConvolutionsRunInTheirWorkspace) {
  loom::manual_seed(1);
  // Winograd (3x3, 16+ channels), im2col with chunks of several samples
  // (5x5 on a 6x6 map), a dead-tap 3x3 on a 1x1 map.
  struct Case {
    int64_t n, c, h, o, k, pad;
  };
  for (const Case& s : {Case{4, 16, 14, 16, 3, 1}, Case{3, 5, 6, 7, 5, 2}, Case{6, 8, 1, 9, 3, 1}}) {
    const int64_t oh = s.h + 2 * s.pad - s.k + 1;
    Tensor x = loom::randn({s.n, s.c, s.h, s.h}), w = loom::randn({s.o, s.c, s.k, s.k}), b = loom::randn({s.o});
    Tensor g = loom::randn({s.n, s.o, oh, oh});
    const loom::ConvParams p{{s.k, s.k, 1, 1, s.pad, s.pad, 1, 1}, 1};
    Tensor y = loom::empty({s.n, s.o, oh, oh}), dx = loom::empty({s.n, s.c, s.h, s.h}), dw = loom::empty(w.sizes());
    KernelCall fwd = call_of(OpKind::Conv2d, {&x, &w, &b}, {&y});
    KernelCall bwd_x = call_of(OpKind::ConvTranspose2d, {&g, &w}, {&dx});
    KernelCall bwd_w = call_of(OpKind::Conv2dWeight, {&x, &g}, {&dw});
    fwd.params = bwd_x.params = bwd_w.params = p;
    expect_runs_in_its_workspace(fwd, y);
    expect_runs_in_its_workspace(bwd_x, dx);
    expect_runs_in_its_workspace(bwd_w, dw);
  }
}

TEST(KernelWorkspace, PoolingRunsInItsWorkspace) {
  Tensor x = loom::randn({3, 5, 17, 13}), xd = x.to(loom::kFloat64);
  const loom::Window2d w3{3, 3, 2, 2, 1, 1, 1, 1}, w2{2, 2, 2, 2, 0, 0, 1, 1};
  for (const Tensor* in : {&x, &xd}) {
    Tensor y = loom::empty({3, 5, 9, 7}, in->dtype()), ind = loom::empty({3, 5, 9, 7}, loom::kInt64);
    KernelCall maxp = call_of(OpKind::MaxPool2d, {in}, {&y, &ind});
    maxp.params = w3;
    expect_runs_in_its_workspace(maxp, y);
    Tensor y2 = loom::empty({3, 5, 8, 6}, in->dtype());
    KernelCall max2 = call_of(OpKind::MaxPool2d, {in}, {&y2});
    max2.params = w2;
    expect_runs_in_its_workspace(max2, y2);
    Tensor ya = loom::empty({3, 5, 9, 7}, in->dtype());
    KernelCall avg = call_of(OpKind::AvgPool2d, {in}, {&ya});
    avg.params = w3;
    avg.i[0] = 1;
    expect_runs_in_its_workspace(avg, ya);
    Tensor g = loom::randn({3, 5, 9, 7}).to(in->dtype()), dx = loom::empty(in->sizes(), in->dtype());
    KernelCall avg_b = call_of(OpKind::AvgPool2dBackward, {&g}, {&dx});
    avg_b.params = w3;
    expect_runs_in_its_workspace(avg_b, dx);
    // The max pool's backward on a strided gradient: the reference path.
    Tensor gt = loom::randn({3, 5, 7, 9}).to(in->dtype()).transpose(2, 3), dxm = loom::empty(in->sizes(), in->dtype());
    KernelCall max_b = call_of(OpKind::MaxPool2dBackward, {&gt, &ind}, {&dxm});
    expect_runs_in_its_workspace(max_b, dxm);
  }
}

TEST(KernelWorkspace, AttentionRunsInItsWorkspace) {
  for (loom::DType dt : {loom::kFloat32, loom::kFloat64}) {
    Tensor q = loom::randn({2, 3, 70, 16}).to(dt), k = loom::randn({2, 3, 150, 16}).to(dt);
    Tensor v = loom::randn({2, 3, 150, 8}).to(dt);
    Tensor o = loom::empty({2, 3, 70, 8}, dt), lse = loom::empty({2, 3, 70}, dt), none;
    KernelCall fwd = call_of(OpKind::Attention, {&q, &k, &v, &none}, {&o, &lse});
    fwd.f[0] = 0.25;
    expect_runs_in_its_workspace(fwd, o);
    Tensor g = loom::randn({2, 3, 70, 8}).to(dt);
    Tensor dq = loom::empty(q.sizes(), dt), dk = loom::empty(k.sizes(), dt), dv = loom::empty(v.sizes(), dt);
    KernelCall bwd = call_of(OpKind::AttentionBackward, {&g, &q, &k, &v, &o, &lse, &none}, {&dq, &dk, &dv});
    bwd.f[0] = 0.25;
    expect_runs_in_its_workspace(bwd, dk);
  }
}

TEST(KernelWorkspace, ProductsReductionsAndRowOpsRunInTheirWorkspace) {
  // Bmm large enough to split over threads; Linear with a strided bias.
  Tensor a = loom::randn({3, 130, 70}), b = loom::randn({3, 70, 90}), out = loom::empty({3, 130, 90});
  expect_runs_in_its_workspace(call_of(OpKind::Bmm, {&a, &b}, {&out}), out);
  Tensor x = loom::randn({200, 64}), w = loom::randn({48, 64}), bias = loom::randn({48, 2}).select(1, 0);
  Tensor y = loom::empty({200, 48});
  KernelCall lin = call_of(OpKind::Linear, {&x, &w, &bias}, {&y});
  lin.i[0] = 1;  // relu
  expect_runs_in_its_workspace(lin, y);
  // Sum over long rows (partial sums per block).
  Tensor r = loom::randn({3, 70000}), s = loom::empty({3});
  KernelCall sum = call_of(OpKind::Sum, {&r}, {&s});
  sum.i[0] = 1;
  expect_runs_in_its_workspace(sum, s);
  // LayerNorm's backward (chunk sums) and the float64 references (offset tables).
  for (loom::DType dt : {loom::kFloat32, loom::kFloat64}) {
    Tensor lx = loom::randn({300, 40}).to(dt), lg = loom::randn({300, 40}).to(dt), lw = loom::randn({40}).to(dt);
    Tensor ly = loom::empty({300, 40}, dt), stats = loom::empty({300, 2}, dt), none;
    KernelCall ln = call_of(OpKind::LayerNorm, {&lx, &lw, &none}, {&ly, &stats});
    ln.f[0] = 1e-5;
    ln.i[0] = 1;
    ln.i[1] = 1;
    expect_runs_in_its_workspace(ln, ly);
    Tensor ldx = loom::empty({300, 40}, dt), dwb = loom::empty({2, 40}, dt);
    KernelCall lnb = call_of(OpKind::LayerNormBackward, {&lg, &lx, &stats, &lw}, {&ldx, &dwb});
    lnb.i[0] = 1;
    lnb.i[1] = 1;
    expect_runs_in_its_workspace(lnb, dwb);
    Tensor sy = loom::softmax(lx, -1), sdx = loom::empty({300, 40}, dt);
    expect_runs_in_its_workspace(call_of(OpKind::SoftmaxBackward, {&lg, &sy}, {&sdx}), sdx);
  }
}

TEST(KernelWorkspace, FusedOptimizerListsEveryTensor) {
  std::vector<Tensor> params, grads, m, v, steps;
  for (int64_t n : {5, 40000, 3}) {
    params.push_back(loom::randn({n}));
    grads.push_back(loom::randn({n}));
    m.push_back(loom::zeros({n}));
    v.push_back(loom::zeros({n}));
    steps.push_back(loom::full({}, 1.0, loom::kFloat64));
  }
  KernelCall c;
  c.op = OpKind::FusedAdam;
  for (auto* list : {&params, &m, &v})
    for (const Tensor& t : *list) c.out.push_back(t.unsafe_impl());
  for (auto* list : {&grads, &steps})
    for (const Tensor& t : *list) c.in.push_back(t.unsafe_impl());
  c.params = loom::AdamParams{1e-3, 0.9, 0.999, 1e-8, 0.0, false, false, true};
  EXPECT_EQ(c.in.size(), 6);
  EXPECT_EQ(c.out.size(), 9);
  const size_t need = loom::kernel_workspace_bytes(c);
  EXPECT_GT(need, 0u);
  std::vector<unsigned char> ws(need);
  c.workspace = {ws.data(), need};
  Tensor before = params[1].clone();
  EXPECT_EQ(large_allocations_in([&] { loom::run_kernel(c); }), 0);
  EXPECT_FALSE(loom::equal(before, params[1]));
  // A list of the wrong length is refused.
  c.in.push_back(grads[0].unsafe_impl());
  EXPECT_ERROR_HAS(loom::run_kernel(c), "FusedAdam: tensor lists of unequal length");
}

}  // namespace
