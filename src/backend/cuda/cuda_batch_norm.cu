// CUDA kernels: BatchNorm and BatchNormBackward (calling conventions in
// ops.def); registered from register_conv.
//
// Note [CUDA batch norm]
// The CPU reference (cpu_batch_norm.cpp) with one thread block per channel:
// the block's threads stride over the channel's N * S values and sum in
// double, and a block reduction (warp shuffles, then one warp over the
// warps' sums: a fixed order for the fixed block size, so results repeat
// run to run) gives the channel's total. Forward: the mean, then the sum of
// squared deviations (two passes, as the reference), then
// y = (x - mean) * rstd * weight + bias in double, rounded once to T; out[1]
// gets (mean, biased var) in float64. Backward: the sums of g and
// g (x - mean), then dx = (g - mean(g) - (x - mean) * k) * rstd * weight with
// k = rstd^2 * mean(g (x - mean)), in double, and (dweight, dbias) =
// (sum g xhat, sum g) in T. The running statistics are the ops layer's
// (nn::functional::batch_norm updates them from out[1] with tensor ops).
// One block per channel keeps each channel's sum in one place; a layer with
// few channels and many values per channel uses few SMs (correct first; a
// split reduction is a later version beside this one).
#include <cmath>

#include "backend/cuda/cuda_tensor.cuh"

namespace loom::cuda_detail {

void register_batch_norm(Backend& b);

namespace {

constexpr int kBnThreads = 512;  // a multiple of 32 (block_sum)

// An (N, C, S) tensor's geometry.
struct Ncs {
  int64_t n, c, s;
  int64_t sn, sc, ss;
  // Value j (of N * S) of channel ch.
  __device__ int64_t at(int64_t ch, int64_t j) const { return (j / s) * sn + ch * sc + (j % s) * ss; }
};

Ncs ncs_of(const TensorImpl* t) {
  LOOM_ASSERT(t->dim() == 3, "batch norm kernel: expected an (N, C, S) tensor, got ", shape_str(t->sizes));
  return {t->sizes[0], t->sizes[1], t->sizes[2], t->strides[0], t->strides[1], t->strides[2]};
}

// The sum of every thread's v, returned to every thread of the block.
__device__ double block_sum(double v) {
  __shared__ double part[32];
  __shared__ double total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? part[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) total = v;
  }
  __syncthreads();
  const double r = total;
  __syncthreads();  // part and total are reused by the next call
  return r;
}

// Block ch: channel ch. y (N, C, S) contiguous; stats (2, C).
template <typename T>
__global__ void batch_norm_kernel(const T* x, Ncs gx, const T* w, const T* b, double eps, T* y, double* stats) {
  const int64_t ch = blockIdx.x, count = gx.n * gx.s;
  double s = 0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) s += static_cast<double>(load_as(x + gx.at(ch, j)));
  const double mean = block_sum(s) / static_cast<double>(count);
  double sq = 0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const double d = static_cast<double>(load_as(x + gx.at(ch, j))) - mean;
    sq += d * d;
  }
  const double var = block_sum(sq) / static_cast<double>(count);
  const double rstd = 1.0 / sqrt(var + eps);
  const double wc = w != nullptr ? static_cast<double>(load_as(w + ch)) : 1.0;
  const double bc = b != nullptr ? static_cast<double>(load_as(b + ch)) : 0.0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const double v = static_cast<double>(load_as(x + gx.at(ch, j)));
    y[((j / gx.s) * gx.c + ch) * gx.s + j % gx.s] = store_as<T>((v - mean) * rstd * wc + bc);
  }
  if (threadIdx.x == 0) {
    stats[ch] = mean;
    stats[gx.c + ch] = var;
  }
}

// Block ch: channel ch. dx (N, C, S) contiguous; dwb (2, C) contiguous or null.
template <typename T>
__global__ void batch_norm_backward_kernel(const T* g, Ncs gg, const T* x, Ncs gx, const double* stats, const T* w,
                                           double eps, T* dx, T* dwb) {
  const int64_t ch = blockIdx.x, count = gx.n * gx.s;
  const double mean = stats[ch], rstd = 1.0 / sqrt(stats[gx.c + ch] + eps);
  const double wc = w != nullptr ? static_cast<double>(load_as(w + ch)) : 1.0;
  double s1 = 0, s2 = 0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const double gv = static_cast<double>(load_as(g + gg.at(ch, j)));
    s1 += gv;
    s2 += gv * (static_cast<double>(load_as(x + gx.at(ch, j))) - mean);
  }
  const double sg = block_sum(s1), sgx = block_sum(s2);
  const double k2 = rstd * rstd * sgx / static_cast<double>(count), mg = sg / static_cast<double>(count);
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const double gv = static_cast<double>(load_as(g + gg.at(ch, j)));
    const double xv = static_cast<double>(load_as(x + gx.at(ch, j))) - mean;
    dx[((j / gx.s) * gx.c + ch) * gx.s + j % gx.s] = store_as<T>((gv - mg - xv * k2) * rstd * wc);
  }
  if (dwb != nullptr && threadIdx.x == 0) {
    dwb[ch] = store_as<T>(sgx * rstd);
    dwb[gx.c + ch] = store_as<T>(sg);
  }
}

// A per-channel (C) parameter: contiguous (ops.def), or null when absent.
template <typename T>
const T* param_of(const TensorImpl* t, int64_t c, const char* op) {
  if (t == nullptr) return nullptr;
  LOOM_ASSERT(t->numel() == c && (c <= 1 || t->strides[0] == 1), op, ": weight / bias of shape ", shape_str(t->sizes));
  return data_of<T>(t);
}

void batch_norm_entry(const KernelCall& c) {
  const TensorImpl *x = c.in[0], *w = c.i[0] ? c.in[1] : nullptr, *b = c.i[1] ? c.in[2] : nullptr;
  TensorImpl *y = c.out[0], *stats = c.out[1];
  LOOM_ASSERT(x->sizes == y->sizes && x->dtype == y->dtype && y->is_contiguous(), "BatchNorm: x ", shape_str(x->sizes),
              ", y ", shape_str(y->sizes));
  LOOM_ASSERT(stats->dtype == kFloat64 && stats->is_contiguous() && stats->numel() == 2 * x->sizes[1],
              "BatchNorm: statistics of shape ", shape_str(stats->sizes));
  const Ncs gx = ncs_of(x);
  if (gx.c == 0) return;
  LOOM_ASSERT(gx.n * gx.s > 0, "BatchNorm: no values per channel in ", shape_str(x->sizes));
  LOOM_CHECK(gx.c <= 0x7fffffff, "BatchNorm: too many channels for one grid: ", gx.c);
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_norm_kernel<T><<<static_cast<unsigned>(gx.c), kBnThreads, 0, l.stream>>>(
        data_of<T>(x), gx, param_of<T>(w, gx.c, "BatchNorm"), param_of<T>(b, gx.c, "BatchNorm"), c.f[0],
        data_of<T>(y), data_of<double>(stats));
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_backward_entry(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1], *stats = c.in[2], *w = c.i[0] ? c.in[3] : nullptr;
  TensorImpl *dx = c.out[0], *dwb = c.out.size() > 1 ? c.out[1] : nullptr;
  LOOM_ASSERT(g->sizes == x->sizes && dx->sizes == x->sizes && g->dtype == x->dtype && dx->dtype == x->dtype &&
                  dx->is_contiguous(),
              "BatchNormBackward: grad ", shape_str(g->sizes), ", x ", shape_str(x->sizes));
  LOOM_ASSERT(stats->dtype == kFloat64 && stats->is_contiguous() && stats->numel() == 2 * x->sizes[1],
              "BatchNormBackward: statistics must be float64 (2, C)");
  LOOM_ASSERT(dwb == nullptr || (dwb->is_contiguous() && dwb->numel() == 2 * x->sizes[1] && dwb->dtype == x->dtype),
              "BatchNormBackward: (dweight, dbias) output of shape ", shape_str(dwb->sizes));
  const Ncs gx = ncs_of(x);
  if (gx.c == 0) return;
  LOOM_ASSERT(gx.n * gx.s > 0, "BatchNormBackward: no values per channel in ", shape_str(x->sizes));
  LOOM_CHECK(gx.c <= 0x7fffffff, "BatchNormBackward: too many channels for one grid: ", gx.c);
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_norm_backward_kernel<T><<<static_cast<unsigned>(gx.c), kBnThreads, 0, l.stream>>>(
        data_of<T>(g), ncs_of(g), data_of<T>(x), gx, data_of<double>(stats),
        param_of<T>(w, gx.c, "BatchNormBackward"), c.f[0], data_of<T>(dx), dwb != nullptr ? data_of<T>(dwb) : nullptr);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void register_batch_norm(Backend& b) {
  const auto floats = {kFloat32, kFloat64, kFloat16, kBFloat16};
  b.kernels[static_cast<int>(OpKind::BatchNorm)] = &batch_norm_entry;
  set_supported(OpKind::BatchNorm, floats);
  b.kernels[static_cast<int>(OpKind::BatchNormBackward)] = &batch_norm_backward_entry;
  set_supported(OpKind::BatchNormBackward, floats);
}

}  // namespace loom::cuda_detail
