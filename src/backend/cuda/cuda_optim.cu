// CUDA kernels: the multi-tensor optimizer steps FusedAdam (Adam, AdamW) and
// FusedSgd (ops.def "optimizers"), float32.
//
// Note [CUDA multi-tensor steps]
// One launch updates every parameter of a group. The host cuts the
// parameters into chunks of at most kChunk elements and writes a table (one
// entry per tensor: its pointers, size and constants; then one entry per
// chunk) into the call's workspace with cudaMemcpyAsync on the call's
// stream; block b updates chunk b. The copy is from pageable memory, which
// the driver stages before cudaMemcpyAsync returns, so the host table can
// die at once, and the workspace block goes back to the caching allocator
// only for later work on the same stream.
//
// Each element runs the CPU kernel's sequence of float32 operations
// (cpu_optim.cpp, Note [Fused optimizer steps] in src/ops/fused_optim.cpp)
// with the same constants, each operation written as its round-to-nearest
// intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn): nvcc would
// otherwise contract a * b + c into one FMA, which rounds once where the CPU
// rounds twice. So the GPU's results match the CPU's bitwise.
//
// Adam's per-parameter constants depend on its step count. The ops layer
// keeps the counts on the CPU (a 0-dim float64 tensor per parameter): the
// host reads them and computes every constant exactly as the CPU kernel
// does. A count on the device is not read back (that would synchronize):
// the kernel computes the two step-dependent constants there, in double,
// with the device's pow, whose result can differ from glibc's in the last
// bit of the double, so such a float32 constant (and the update) may in
// rare cases differ by one ulp from the CPU's.
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_tensor.cuh"
#include "backend/workspace.h"

namespace loom::cuda_detail {

namespace {

constexpr int64_t kChunk = 16384;

struct Chunk {
  int64_t tensor;  // entry in the tensor table
  int64_t begin, end;
};

// The call's tensor lists (ops.def "optimizers"): list k of the outputs is
// out[k n, (k + 1) n), of the inputs in[k n, (k + 1) n).
struct Lists {
  const KernelCall& c;
  int n;
  float* out(int list, int j) const { return data_of<float>(c.out[list * n + j]); }
  const TensorImpl* in(int list, int j) const { return c.in[list * n + j]; }
  int64_t numel(int j) const { return c.out[j]->numel(); }
};

int64_t chunk_count(const Lists& l) {
  int64_t count = 0;
  for (int j = 0; j < l.n; ++j) count += (l.numel(j) + kChunk - 1) / kChunk;
  return count;
}

std::vector<Chunk> make_chunks(const Lists& l) {
  std::vector<Chunk> chunks;
  chunks.reserve(static_cast<size_t>(chunk_count(l)));
  for (int j = 0; j < l.n; ++j)
    for (int64_t b = 0; b < l.numel(j); b += kChunk) chunks.push_back({j, b, std::min(l.numel(j), b + kChunk)});
  return chunks;
}

// The table in the workspace: the tensor entries, then the chunks.
template <typename Entry>
struct Table {
  Entry* entries;
  Chunk* chunks;
};
template <typename Entry>
Table<Entry> table_layout(WorkspaceLayout& ws, const Lists& l) {
  Entry* e = ws.take<Entry>(l.n);
  Chunk* c = ws.take<Chunk>(chunk_count(l));
  return {e, c};
}

// Copies the host table to the workspace (Note [CUDA multi-tensor steps]).
template <typename Entry>
void upload(const Table<Entry>& t, const std::vector<Entry>& entries, const std::vector<Chunk>& chunks,
            cudaStream_t stream) {
  LOOM_CUDA_CHECK(cudaMemcpyAsync(t.entries, entries.data(), entries.size() * sizeof(Entry), cudaMemcpyHostToDevice,
                                  stream));
  LOOM_CUDA_CHECK(
      cudaMemcpyAsync(t.chunks, chunks.data(), chunks.size() * sizeof(Chunk), cudaMemcpyHostToDevice, stream));
}

// PyTorch's maximum: NaN in either operand wins (the Maximum kernel's rule).
__device__ __forceinline__ float nan_maximum(float a, float b) {
  if (isnan(a)) return a;
  if (isnan(b)) return b;
  return a < b ? b : a;
}

// ---------------------------------------------------------------- Adam

struct AdamConstants {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay;
  float neg_step_size, bias_correction2_sqrt, eps, decay;
};

struct AdamEntry {
  float* p;
  const float* g;
  float* m;
  float* v;
  float* vmax;         // amsgrad only
  const double* step;  // a step count on the device, or null: `k` is complete
  AdamConstants k;
};

struct AdamFlags {
  bool maximize, l2, amsgrad;
  double lr, beta1, beta2;  // for constants computed on the device
};

// cpu_optim.cpp's constants for a parameter at step `step`.
AdamConstants adam_constants(const AdamParams& a, double step) {
  const double bias_correction1 = 1.0 - std::pow(a.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(a.beta2, step);
  const double step_size = a.lr / bias_correction1;
  AdamConstants k;
  k.beta1 = static_cast<float>(a.beta1);
  k.one_minus_beta1 = static_cast<float>(1.0 - a.beta1);
  k.beta2 = static_cast<float>(a.beta2);
  k.one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
  k.weight_decay = static_cast<float>(a.weight_decay);
  k.neg_step_size = static_cast<float>(-step_size);
  k.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  k.eps = static_cast<float>(a.eps);
  k.decay = static_cast<float>(a.decoupled ? 1.0 - a.lr * a.weight_decay : 1.0);
  return k;
}

__global__ void fused_adam_kernel(const AdamEntry* entries, const Chunk* chunks, AdamFlags f) {
  const Chunk ch = chunks[blockIdx.x];
  const AdamEntry& t = entries[ch.tensor];
  __shared__ AdamConstants shared;
  if (threadIdx.x == 0) {
    shared = t.k;
    if (t.step != nullptr) {
      // The step-dependent constants (Note [CUDA multi-tensor steps]).
      const double step = *t.step;
      const double bias_correction1 = __dsub_rn(1.0, pow(f.beta1, step));
      const double bias_correction2 = __dsub_rn(1.0, pow(f.beta2, step));
      shared.neg_step_size = static_cast<float>(-__ddiv_rn(f.lr, bias_correction1));
      shared.bias_correction2_sqrt = static_cast<float>(__dsqrt_rn(bias_correction2));
    }
  }
  __syncthreads();
  const AdamConstants k = shared;
  for (int64_t j = ch.begin + threadIdx.x; j < ch.end; j += blockDim.x) {
    float g = t.g[j];
    const float p = t.p[j];
    if (f.maximize) g = -g;
    if (f.l2) g = __fadd_rn(g, __fmul_rn(p, k.weight_decay));
    const float mj = __fadd_rn(__fmul_rn(t.m[j], k.beta1), __fmul_rn(g, k.one_minus_beta1));
    const float vj = __fadd_rn(__fmul_rn(t.v[j], k.beta2), __fmul_rn(__fmul_rn(g, k.one_minus_beta2), g));
    t.m[j] = mj;
    t.v[j] = vj;
    float second = vj;
    if (f.amsgrad) {
      second = nan_maximum(t.vmax[j], vj);
      t.vmax[j] = second;
    }
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(second), k.bias_correction2_sqrt), k.eps);
    t.p[j] = __fadd_rn(__fmul_rn(p, k.decay), __fdiv_rn(__fmul_rn(mj, k.neg_step_size), denom));
  }
}

Lists adam_lists(const KernelCall& c) { return {c, c.in.size() / 2}; }

void fused_adam(const KernelCall& c) {
  const AdamParams& a = c.param<AdamParams>();
  const Lists l = adam_lists(c);  // out: params, exp_avgs, exp_avg_sqs [, max_exp_avg_sqs]; in: grads, steps
  LOOM_ASSERT(c.out.size() == (a.amsgrad ? 4 : 3) * l.n && c.in.size() == 2 * l.n, "FusedAdam: ", c.out.size(),
              " outputs and ", c.in.size(), " inputs");
  const std::vector<Chunk> chunks = make_chunks(l);
  if (chunks.empty()) return;
  std::vector<AdamEntry> entries(static_cast<size_t>(l.n));
  for (int j = 0; j < l.n; ++j) {
    AdamEntry& e = entries[static_cast<size_t>(j)];
    e.p = l.out(0, j);
    e.g = data_of<float>(l.in(0, j));
    e.m = l.out(1, j);
    e.v = l.out(2, j);
    e.vmax = a.amsgrad ? l.out(3, j) : nullptr;
    const TensorImpl* step = l.in(1, j);
    LOOM_ASSERT(step->dtype == kFloat64 && step->numel() == 1, "FusedAdam: step of dtype ", dtype_name(step->dtype));
    if (step->device().is_cpu()) {
      e.step = nullptr;
      e.k = adam_constants(a, *data_of<double>(step));
    } else {
      e.step = data_of<double>(step);
      e.k = adam_constants(a, 1.0);  // the step-independent constants; the kernel fills in the rest
    }
  }
  const Launch launch = launch_of(c);
  DeviceGuard guard(launch.device);
  WorkspaceLayout ws = carve(c);
  const Table<AdamEntry> t = table_layout<AdamEntry>(ws, l);
  upload(t, entries, chunks, launch.stream);
  const AdamFlags f{a.maximize, !a.decoupled && a.weight_decay != 0.0, a.amsgrad, a.lr, a.beta1, a.beta2};
  fused_adam_kernel<<<static_cast<unsigned>(chunks.size()), kThreads, 0, launch.stream>>>(t.entries, t.chunks, f);
  LOOM_CUDA_CHECK_LAUNCH();
}

size_t fused_adam_workspace(const KernelCall& c) {
  WorkspaceLayout ws;
  table_layout<AdamEntry>(ws, adam_lists(c));
  return ws.bytes();
}

// ---------------------------------------------------------------- SGD

struct SgdConstants {
  float weight_decay, momentum, one_minus_dampening, neg_lr;
};

struct SgdEntry {
  float* p;
  const float* g;
  float* buf;  // momentum only
};

struct SgdFlags {
  bool maximize, l2, nesterov;
  int momentum_kind;  // 0 none, 1 first step (buf = d), 2 later steps
};

__global__ void fused_sgd_kernel(const SgdEntry* entries, const Chunk* chunks, SgdConstants k, SgdFlags f) {
  const Chunk ch = chunks[blockIdx.x];
  const SgdEntry& t = entries[ch.tensor];
  for (int64_t j = ch.begin + threadIdx.x; j < ch.end; j += blockDim.x) {
    const float p = t.p[j];
    float d = t.g[j];
    if (f.maximize) d = -d;
    if (f.l2) d = __fadd_rn(d, __fmul_rn(p, k.weight_decay));
    if (f.momentum_kind != 0) {
      float b = d;
      if (f.momentum_kind == 2) b = __fadd_rn(__fmul_rn(t.buf[j], k.momentum), __fmul_rn(d, k.one_minus_dampening));
      t.buf[j] = b;
      d = f.nesterov ? __fadd_rn(d, __fmul_rn(b, k.momentum)) : b;
    }
    t.p[j] = __fadd_rn(p, __fmul_rn(d, k.neg_lr));
  }
}

Lists sgd_lists(const KernelCall& c) { return {c, c.in.size()}; }

void fused_sgd(const KernelCall& c) {
  const SgdParams& a = c.param<SgdParams>();
  const Lists l = sgd_lists(c);  // out: params [, momentum_buffers]; in: grads
  const int momentum_kind = a.momentum == 0.0 ? 0 : a.first_step ? 1 : 2;
  LOOM_ASSERT(c.out.size() == (momentum_kind != 0 ? 2 : 1) * l.n, "FusedSgd: ", c.out.size(), " outputs and ",
              c.in.size(), " inputs");
  const std::vector<Chunk> chunks = make_chunks(l);
  if (chunks.empty()) return;
  std::vector<SgdEntry> entries(static_cast<size_t>(l.n));
  for (int j = 0; j < l.n; ++j) {
    SgdEntry& e = entries[static_cast<size_t>(j)];
    e.p = l.out(0, j);
    e.g = data_of<float>(l.in(0, j));
    e.buf = momentum_kind != 0 ? l.out(1, j) : nullptr;
  }
  SgdConstants k;
  k.weight_decay = static_cast<float>(a.weight_decay);
  k.momentum = static_cast<float>(a.momentum);
  k.one_minus_dampening = static_cast<float>(1.0 - a.dampening);
  k.neg_lr = static_cast<float>(-a.lr);
  const SgdFlags f{a.maximize, a.weight_decay != 0.0, a.nesterov, momentum_kind};
  const Launch launch = launch_of(c);
  DeviceGuard guard(launch.device);
  WorkspaceLayout ws = carve(c);
  const Table<SgdEntry> t = table_layout<SgdEntry>(ws, l);
  upload(t, entries, chunks, launch.stream);
  fused_sgd_kernel<<<static_cast<unsigned>(chunks.size()), kThreads, 0, launch.stream>>>(t.entries, t.chunks, k, f);
  LOOM_CUDA_CHECK_LAUNCH();
}

size_t fused_sgd_workspace(const KernelCall& c) {
  WorkspaceLayout ws;
  table_layout<SgdEntry>(ws, sgd_lists(c));
  return ws.bytes();
}

}  // namespace

void register_optim(Backend& b) {
  b.kernels[static_cast<int>(OpKind::FusedAdam)] = &fused_adam;
  b.workspace[static_cast<int>(OpKind::FusedAdam)] = &fused_adam_workspace;
  set_supported(OpKind::FusedAdam, {kFloat32});
  b.kernels[static_cast<int>(OpKind::FusedSgd)] = &fused_sgd;
  b.workspace[static_cast<int>(OpKind::FusedSgd)] = &fused_sgd_workspace;
  set_supported(OpKind::FusedSgd, {kFloat32});
}

}  // namespace loom::cuda_detail
