// Multi-tensor optimizer kernels: FusedAdam (Adam and AdamW) and FusedSgd.
//
// One launch updates every parameter of a group. Work is cut into chunks of
// at most kChunk elements of one parameter and the chunks are spread over
// threads; each element's update is a fixed sequence of float32 operations,
// so results do not depend on the thread count. The sequence is the one the
// per-tensor optimizer runs as separate loom ops (Note [Fused optimizer
// steps] in src/ops/fused_optim.cpp): every constant is rounded to float32
// as a wrapped scalar is, and every operation rounds to float32, so the two
// paths agree bitwise. The inner loops are branch-free over the element
// index (flags are template parameters) so the compiler vectorizes them;
// this file is built with -fno-math-errno so that sqrt vectorizes too.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_dispatch.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/workspace.h"

namespace loom::cpu {
namespace {

constexpr int64_t kChunk = 16384;

struct Chunk {
  size_t param;
  int64_t begin, end;
};

// The call's tensor lists (ops.def "optimizers"): the n parameters are
// out[0, n); list k of the outputs is out[k n, (k + 1) n), of the inputs
// in[k n, (k + 1) n).
struct Lists {
  const KernelCall& c;
  int n;
  float* out(int list, size_t j) const { return data_ptr<float>(c.out[list * n + static_cast<int>(j)]); }
  const TensorImpl* in(int list, size_t j) const { return c.in[list * n + static_cast<int>(j)]; }
};

int64_t chunk_count(const Lists& l) {
  int64_t count = 0;
  for (int j = 0; j < l.n; ++j) count += (l.c.out[j]->numel() + kChunk - 1) / kChunk;
  return count;
}

// The parameters cut into chunks, written into `chunks` (chunk_count long).
void make_chunks(const Lists& l, Chunk* chunks) {
  int64_t k = 0;
  for (int j = 0; j < l.n; ++j) {
    const int64_t n = l.c.out[j]->numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks[k++] = {static_cast<size_t>(j), b, std::min(n, b + kChunk)};
  }
}

// Runs fn(chunk) over all chunks: inline when the total is small.
template <typename F>
void run_chunks(const Chunk* chunks, int64_t count, F fn) {
  int64_t total = 0;
  for (int64_t k = 0; k < count; ++k) total += chunks[k].end - chunks[k].begin;
  const int64_t grain = std::max<int64_t>(1, kGrain / kChunk);
  if (total <= kGrain) {
    for (int64_t k = 0; k < count; ++k) fn(chunks[k]);
    return;
  }
  parallel_for(0, count, grain, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) fn(chunks[k]);
  });
}

// PyTorch's maximum: NaN in either operand wins (the Maximum kernel's rule).
inline float nan_maximum(float a, float b) {
  if (std::isnan(a)) return a;
  if (std::isnan(b)) return b;
  return a < b ? b : a;
}

struct AdamConstants {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay;
  float neg_step_size, bias_correction2_sqrt, eps, decay;
};

template <bool kMaximize, bool kL2, bool kAmsgrad>
void adam_run(float* __restrict p, const float* __restrict g_in, float* __restrict m, float* __restrict v,
              float* __restrict vmax, int64_t n, const AdamConstants& k) {
  for (int64_t j = 0; j < n; ++j) {
    float g = g_in[j];
    if constexpr (kMaximize) g = -g;
    if constexpr (kL2) g = g + p[j] * k.weight_decay;
    const float mj = m[j] * k.beta1 + g * k.one_minus_beta1;
    const float vj = v[j] * k.beta2 + (g * k.one_minus_beta2) * g;
    m[j] = mj;
    v[j] = vj;
    float second = vj;
    if constexpr (kAmsgrad) {
      second = nan_maximum(vmax[j], vj);
      vmax[j] = second;
    }
    const float denom = std::sqrt(second) / k.bias_correction2_sqrt + k.eps;
    p[j] = p[j] * k.decay + (mj * k.neg_step_size) / denom;
  }
}

using AdamRunFn = void (*)(float*, const float*, float*, float*, float*, int64_t, const AdamConstants&);

template <bool kMaximize, bool kL2>
AdamRunFn pick_adam(bool amsgrad) {
  return amsgrad ? &adam_run<kMaximize, kL2, true> : &adam_run<kMaximize, kL2, false>;
}

struct SgdConstants {
  float weight_decay, momentum, one_minus_dampening, neg_lr;
};

template <bool kMaximize, bool kL2, int kMomentum, bool kNesterov>  // kMomentum: 0 none, 1 first step, 2 later
void sgd_run(float* __restrict p, const float* __restrict g_in, float* __restrict buf, int64_t n,
             const SgdConstants& k) {
  for (int64_t j = 0; j < n; ++j) {
    float d = g_in[j];
    if constexpr (kMaximize) d = -d;
    if constexpr (kL2) d = d + p[j] * k.weight_decay;
    if constexpr (kMomentum != 0) {
      float b = d;
      if constexpr (kMomentum == 2) b = buf[j] * k.momentum + d * k.one_minus_dampening;
      buf[j] = b;
      if constexpr (kNesterov) d = d + b * k.momentum;
      else d = b;
    }
    p[j] = p[j] + d * k.neg_lr;
  }
}

using SgdRunFn = void (*)(float*, const float*, float*, int64_t, const SgdConstants&);

template <bool kMaximize, bool kL2>
SgdRunFn pick_sgd(int momentum_kind, bool nesterov) {
  if (momentum_kind == 0) return &sgd_run<kMaximize, kL2, 0, false>;
  if (momentum_kind == 1) return nesterov ? &sgd_run<kMaximize, kL2, 1, true> : &sgd_run<kMaximize, kL2, 1, false>;
  return nesterov ? &sgd_run<kMaximize, kL2, 2, true> : &sgd_run<kMaximize, kL2, 2, false>;
}

const float* f32(const TensorImpl* t) { return data_ptr<float>(t); }

Lists adam_lists(const KernelCall& c) { return {c, c.in.size() / 2}; }
Lists sgd_lists(const KernelCall& c) { return {c, c.in.size()}; }

// One layout for FusedAdam's workspace and its size: the chunks, then one
// set of constants per parameter.
struct AdamScratch {
  Chunk* chunks;
  AdamConstants* consts;
};
AdamScratch adam_scratch(WorkspaceLayout& ws, const Lists& l) {
  return {ws.take<Chunk>(chunk_count(l)), ws.take<AdamConstants>(l.n)};
}

}  // namespace

namespace kernel {

void FusedAdam(const KernelCall& c) {
  const AdamParams& a = c.param<AdamParams>();
  const Lists l = adam_lists(c);  // out: params, exp_avgs, exp_avg_sqs [, max_exp_avg_sqs]; in: grads, steps
  WorkspaceLayout ws = carve(c);
  const AdamScratch scratch = adam_scratch(ws, l);
  const bool l2 = !a.decoupled && a.weight_decay != 0.0;
  AdamRunFn run = a.maximize ? (l2 ? pick_adam<true, true>(a.amsgrad) : pick_adam<true, false>(a.amsgrad))
                             : (l2 ? pick_adam<false, true>(a.amsgrad) : pick_adam<false, false>(a.amsgrad));
  // Per-parameter constants: the step count may differ between parameters.
  AdamConstants* consts = scratch.consts;
  for (int j = 0; j < l.n; ++j) {
    const double step = *data_ptr<double>(l.in(1, j));
    const double bias_correction1 = 1.0 - std::pow(a.beta1, step);
    const double bias_correction2 = 1.0 - std::pow(a.beta2, step);
    const double step_size = a.lr / bias_correction1;
    AdamConstants& k = consts[j];
    k.beta1 = static_cast<float>(a.beta1);
    k.one_minus_beta1 = static_cast<float>(1.0 - a.beta1);
    k.beta2 = static_cast<float>(a.beta2);
    k.one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
    k.weight_decay = static_cast<float>(a.weight_decay);
    k.neg_step_size = static_cast<float>(-step_size);
    k.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
    k.eps = static_cast<float>(a.eps);
    k.decay = static_cast<float>(a.decoupled ? 1.0 - a.lr * a.weight_decay : 1.0);
  }
  make_chunks(l, scratch.chunks);
  run_chunks(scratch.chunks, chunk_count(l), [&](const Chunk& ch) {
    const size_t j = ch.param;
    float* vmax = a.amsgrad ? l.out(3, j) + ch.begin : nullptr;
    run(l.out(0, j) + ch.begin, f32(l.in(0, j)) + ch.begin, l.out(1, j) + ch.begin, l.out(2, j) + ch.begin, vmax,
        ch.end - ch.begin, consts[j]);
  });
}

void FusedSgd(const KernelCall& c) {
  const SgdParams& a = c.param<SgdParams>();
  const Lists l = sgd_lists(c);  // out: params [, momentum_buffers]; in: grads
  WorkspaceLayout ws = carve(c);
  Chunk* chunks = ws.take<Chunk>(chunk_count(l));
  make_chunks(l, chunks);
  const bool l2 = a.weight_decay != 0.0;
  const int momentum_kind = a.momentum == 0.0 ? 0 : a.first_step ? 1 : 2;
  SgdRunFn run = a.maximize ? (l2 ? pick_sgd<true, true>(momentum_kind, a.nesterov)
                                  : pick_sgd<true, false>(momentum_kind, a.nesterov))
                            : (l2 ? pick_sgd<false, true>(momentum_kind, a.nesterov)
                                  : pick_sgd<false, false>(momentum_kind, a.nesterov));
  SgdConstants k;
  k.weight_decay = static_cast<float>(a.weight_decay);
  k.momentum = static_cast<float>(a.momentum);
  k.one_minus_dampening = static_cast<float>(1.0 - a.dampening);
  k.neg_lr = static_cast<float>(-a.lr);
  run_chunks(chunks, chunk_count(l), [&](const Chunk& ch) {
    const size_t j = ch.param;
    float* buf = momentum_kind != 0 ? l.out(1, j) + ch.begin : nullptr;
    run(l.out(0, j) + ch.begin, f32(l.in(0, j)) + ch.begin, buf, ch.end - ch.begin, k);
  });
}

}  // namespace kernel

namespace workspace {

size_t FusedAdam(const KernelCall& c) {
  WorkspaceLayout ws;
  adam_scratch(ws, adam_lists(c));
  return ws.bytes();
}

size_t FusedSgd(const KernelCall& c) {
  WorkspaceLayout ws;
  ws.take<Chunk>(chunk_count(sgd_lists(c)));
  return ws.bytes();
}

}  // namespace workspace
}  // namespace loom::cpu
