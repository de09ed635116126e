// CUDA kernels: pooling. MaxPool2d, MaxPool2dBackward, AvgPool2d and
// AvgPool2dBackward, NCHW (calling conventions in ops.def, window geometry
// in src/backend/window2d.h); registered from register_conv.
//
// Note [CUDA pooling]
// The CPU reference (cpu_pool.cpp), one thread per output element:
//  - MaxPool2d walks its window in the reference's order (rows, then
//    columns) with PyTorch's rule (a larger value or a NaN replaces the
//    max), so values and indices are the CPU's bits; a window with no input
//    inside gives -inf and index -1, as the reference.
//  - AvgPool2d sums in double and divides by the CPU's divisor (avg_extent).
//  - AvgPool2dBackward gathers: each input pixel sums, in double, grad / divisor
//    over the (output, tap) pairs whose window reads it: the reference's
//    terms, added in another order.
//  - MaxPool2dBackward carries no window, so it scatters: each gradient value
//    is added with a double atomicAdd into a zeroed double plane (the
//    workspace), then rounded once into dx. Where several windows share an
//    argmax, their sum is taken in an order that may change from run to run
//    (exact for two terms; for more, double rounding far below the result's
//    ulp). Indices are checked first (Note [CUDA index errors]): a bad one
//    throws the CPU's message before anything is written.
// Inputs take any strides; outputs are contiguous (ops.def).
#include <cmath>

#include "backend/cuda/cuda_tensor.cuh"
#include "backend/workspace.h"

namespace loom::cuda_detail {

void register_pool(Backend& b);

namespace {

#define LOOM_POOL_LOOP(k, n)                                                             \
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < (n); \
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)

// An (N, C, H, W) tensor's sizes and strides.
struct Nchw {
  int64_t n, c, h, w;
  int64_t sn, sc, sh, sw;
  // Element (plane p = n * C + c, i, j).
  __host__ __device__ int64_t at(int64_t p, int64_t i, int64_t j) const {
    return (p / c) * sn + (p % c) * sc + i * sh + j * sw;
  }
};

Nchw nchw_of(const TensorImpl* t) {
  LOOM_ASSERT(t->dim() == 4, "pooling kernel: expected an (N, C, H, W) tensor, got ", shape_str(t->sizes));
  return {t->sizes[0], t->sizes[1], t->sizes[2], t->sizes[3], t->strides[0], t->strides[1], t->strides[2], t->strides[3]};
}

// The window as kernels read it.
struct Win {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};
Win win_of(const KernelCall& c) {
  const Window2d& w = window_of(c);
  return {w.kh, w.kw, w.sh, w.sw, w.ph, w.pw, w.dh, w.dw};
}

// The CPU's avg_extent: the divisor's share of one dim.
__device__ int64_t avg_extent(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t in,
                              bool count_include_pad) {
  int64_t start = o * stride - pad;
  int64_t end = min(start + kernel, in + pad);
  if (count_include_pad) return end - start;
  start = max(start, int64_t{0});
  end = min(end, in);
  return max(end - start, int64_t{0});
}

// The CPU's avg_divisors for output (oh, ow); 0 for a window without input.
__device__ double avg_divisor(const Win& w, int64_t h, int64_t wd, int64_t oh, int64_t ow, bool cip,
                              int64_t divisor_override) {
  const bool empty = avg_extent(oh, w.sh, w.ph, w.kh, h, false) == 0 || avg_extent(ow, w.sw, w.pw, w.kw, wd, false) == 0;
  if (empty) return 0.0;
  if (divisor_override != 0) return static_cast<double>(divisor_override);
  return static_cast<double>(avg_extent(oh, w.sh, w.ph, w.kh, h, cip) * avg_extent(ow, w.sw, w.pw, w.kw, wd, cip));
}

template <typename T>
__global__ void max_pool_kernel(const T* x, Nchw gx, Win w, int64_t oh_n, int64_t ow_n, T* y, int64_t* ind,
                                int64_t total) {
  using C = compute_t<T>;
  LOOM_POOL_LOOP(e, total) {
    const int64_t ow = e % ow_n, oh = (e / ow_n) % oh_n, p = e / (ow_n * oh_n);
    C best = -INFINITY;
    int64_t arg = -1;
    for (int64_t i = 0; i < w.kh; ++i) {
      const int64_t ih = oh * w.sh - w.ph + i * w.dh;
      if (ih < 0 || ih >= gx.h) continue;
      for (int64_t j = 0; j < w.kw; ++j) {
        const int64_t iw = ow * w.sw - w.pw + j * w.dw;
        if (iw < 0 || iw >= gx.w) continue;
        const C v = load_as(x + gx.at(p, ih, iw));
        if (arg < 0 || v > best || v != v) {
          best = v;
          arg = ih * gx.w + iw;
        }
      }
    }
    y[e] = store_as<T>(best);
    if (ind != nullptr) ind[e] = arg;
  }
}

template <typename T>
__global__ void avg_pool_kernel(const T* x, Nchw gx, Win w, int64_t oh_n, int64_t ow_n, bool cip,
                                int64_t divisor_override, T* y, int64_t total) {
  LOOM_POOL_LOOP(e, total) {
    const int64_t ow = e % ow_n, oh = (e / ow_n) % oh_n, p = e / (ow_n * oh_n);
    double s = 0;
    for (int64_t i = 0; i < w.kh; ++i) {
      const int64_t ih = oh * w.sh - w.ph + i * w.dh;
      if (ih < 0 || ih >= gx.h) continue;
      for (int64_t j = 0; j < w.kw; ++j) {
        const int64_t iw = ow * w.sw - w.pw + j * w.dw;
        if (iw >= 0 && iw < gx.w) s += static_cast<double>(load_as(x + gx.at(p, ih, iw)));
      }
    }
    const double d = avg_divisor(w, gx.h, gx.w, oh, ow, cip, divisor_override);
    y[e] = store_as<T>(d == 0 ? 0.0 : s / d);
  }
}

// dx (contiguous (N, C, H, W)) from grad (N, C, OH, OW): each pixel's terms gathered.
template <typename T>
__global__ void avg_pool_backward_kernel(const T* g, Nchw gg, Win w, int64_t h, int64_t wd, bool cip,
                                         int64_t divisor_override, T* dx, int64_t total) {
  LOOM_POOL_LOOP(e, total) {
    const int64_t iw = e % wd, ih = (e / wd) % h, p = e / (wd * h);
    double acc = 0;
    for (int64_t i = 0; i < w.kh; ++i) {
      const int64_t th = ih + w.ph - i * w.dh;
      if (th < 0 || th % w.sh != 0 || th / w.sh >= gg.h) continue;
      const int64_t oh = th / w.sh;
      for (int64_t j = 0; j < w.kw; ++j) {
        const int64_t tw = iw + w.pw - j * w.dw;
        if (tw < 0 || tw % w.sw != 0 || tw / w.sw >= gg.w) continue;
        const int64_t ow = tw / w.sw;
        const double d = avg_divisor(w, h, wd, oh, ow, cip, divisor_override);
        if (d == 0) continue;
        acc += static_cast<double>(load_as(g + gg.at(p, oh, ow))) / d;
      }
    }
    dx[e] = store_as<T>(acc);
  }
}

constexpr unsigned long long kNoBadIndex = ~0ull;

// Note [CUDA index errors], step 2: the first position of an index outside [0, plane).
__global__ void check_pool_index_kernel(const int64_t* ind, Strided s, int64_t n, int64_t plane,
                                        unsigned long long* bad) {
  LOOM_POOL_LOOP(k, n) {
    const int64_t v = ind[s.offset(k)];
    if (v < 0 || v >= plane) atomicMin(bad, static_cast<unsigned long long>(k));
  }
}

// acc (N * C planes of H * W, double, zeroed) += grad at its index.
template <typename T>
__global__ void max_pool_scatter_kernel(const T* g, Nchw gg, const int64_t* ind, Nchw gi, int64_t plane, double* acc,
                                        int64_t total) {
  LOOM_POOL_LOOP(e, total) {
    const int64_t ow = e % gg.w, oh = (e / gg.w) % gg.h, p = e / (gg.w * gg.h);
    const int64_t k = ind[gi.at(p, oh, ow)];
    atomicAdd(acc + p * plane + k, static_cast<double>(load_as(g + gg.at(p, oh, ow))));
  }
}

template <typename T>
__global__ void round_kernel(const double* acc, T* dx, int64_t total) {
  LOOM_POOL_LOOP(e, total) dx[e] = store_as<T>(acc[e]);
}

void check_pool_shapes(const KernelCall& c, const TensorImpl* in, const TensorImpl* out) {
  LOOM_ASSERT(in->dim() == 4 && out->dim() == 4 && in->sizes[0] == out->sizes[0] && in->sizes[1] == out->sizes[1],
              op_name(c.op), ": input ", shape_str(in->sizes), ", output ", shape_str(out->sizes));
  for (int k = 0; k < c.out.size(); ++k)
    LOOM_ASSERT(c.out[k]->is_contiguous(), op_name(c.op), ": CUDA kernel expects contiguous outputs");
}

void max_pool_kernel_entry(const KernelCall& c) {
  const TensorImpl* x = c.in[0];
  TensorImpl *y = c.out[0], *ind = c.out.size() > 1 ? c.out[1] : nullptr;
  check_pool_shapes(c, x, y);
  LOOM_ASSERT(x->dtype == y->dtype && (ind == nullptr || (ind->dtype == kInt64 && ind->sizes == y->sizes)),
              "MaxPool2d: output dtypes");
  const int64_t total = y->numel();
  if (total == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    max_pool_kernel<T><<<grid_for(total), kThreads, 0, l.stream>>>(
        data_of<T>(x), nchw_of(x), win_of(c), y->sizes[2], y->sizes[3], data_of<T>(y),
        ind != nullptr ? data_of<int64_t>(ind) : nullptr, total);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

void avg_pool_kernel_entry(const KernelCall& c) {
  const TensorImpl* x = c.in[0];
  TensorImpl* y = c.out[0];
  check_pool_shapes(c, x, y);
  LOOM_ASSERT(x->dtype == y->dtype, "AvgPool2d: mixed dtypes");
  const int64_t total = y->numel();
  if (total == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(x->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool_kernel<T><<<grid_for(total), kThreads, 0, l.stream>>>(data_of<T>(x), nchw_of(x), win_of(c), y->sizes[2],
                                                                   y->sizes[3], c.i[0] != 0, c.i[1], data_of<T>(y),
                                                                   total);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

void avg_pool_backward_kernel_entry(const KernelCall& c) {
  const TensorImpl* g = c.in[0];
  TensorImpl* dx = c.out[0];
  check_pool_shapes(c, dx, g);
  LOOM_ASSERT(g->dtype == dx->dtype, "AvgPool2dBackward: mixed dtypes");
  const int64_t total = dx->numel();
  if (total == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(g->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool_backward_kernel<T><<<grid_for(total), kThreads, 0, l.stream>>>(
        data_of<T>(g), nchw_of(g), win_of(c), dx->sizes[2], dx->sizes[3], c.i[0] != 0, c.i[1], data_of<T>(dx), total);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

// MaxPool2dBackward's workspace: the bad-index flag, then the double planes.
struct MaxBackwardScratch {
  unsigned long long* bad;
  double* acc;
};
MaxBackwardScratch max_backward_scratch(WorkspaceLayout& ws, const KernelCall& c) {
  MaxBackwardScratch s;
  s.bad = ws.take<unsigned long long>(1);
  s.acc = ws.take<double>(c.out[0]->numel());
  return s;
}

void max_pool_backward_kernel_entry(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *ind = c.in[1];
  TensorImpl* dx = c.out[0];
  check_pool_shapes(c, dx, g);
  LOOM_ASSERT(g->sizes == ind->sizes && g->dtype == dx->dtype, "MaxPool2dBackward: grad ", shape_str(g->sizes),
              ", indices ", shape_str(ind->sizes));
  LOOM_CHECK(ind->dtype == kInt64, "MaxPool2dBackward: CUDA takes int64 indices, got ", dtype_name(ind->dtype));
  const int64_t total = dx->numel();
  if (total == 0) return;
  const int64_t h = dx->sizes[2], wd = dx->sizes[3], plane = h * wd, n = g->numel();
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  WorkspaceLayout ws = carve(c);
  const MaxBackwardScratch s = max_backward_scratch(ws, c);
  if (n > 0) {
    // Note [CUDA index errors]: every index checked (and read back) before anything is written.
    LOOM_CUDA_CHECK(cudaMemsetAsync(s.bad, 0xFF, sizeof(unsigned long long), l.stream));
    const Strided si = strided_of(ind);
    check_pool_index_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(data_of<int64_t>(ind), si, n, plane, s.bad);
    LOOM_CUDA_CHECK_LAUNCH();
    unsigned long long bad = 0;
    LOOM_CUDA_CHECK(cudaMemcpyAsync(&bad, s.bad, sizeof bad, cudaMemcpyDeviceToHost, l.stream));
    LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
    if (bad != kNoBadIndex) {
      int64_t value = 0;
      LOOM_CUDA_CHECK(cudaMemcpyAsync(&value, data_of<int64_t>(ind) + si.offset(static_cast<int64_t>(bad)),
                                      sizeof value, cudaMemcpyDeviceToHost, l.stream));
      LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
      LOOM_ERROR("MaxPool2dBackward: index ", value, " is out of range for a plane of ", h, "x", wd);
    }
  }
  LOOM_CUDA_CHECK(cudaMemsetAsync(s.acc, 0, static_cast<size_t>(total) * sizeof(double), l.stream));
  dispatch_float(g->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n > 0) {
      max_pool_scatter_kernel<T><<<grid_for(n), kThreads, 0, l.stream>>>(data_of<T>(g), nchw_of(g),
                                                                         data_of<int64_t>(ind), nchw_of(ind), plane,
                                                                         s.acc, n);
      LOOM_CUDA_CHECK_LAUNCH();
    }
    round_kernel<T><<<grid_for(total), kThreads, 0, l.stream>>>(s.acc, data_of<T>(dx), total);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

size_t max_pool_backward_workspace(const KernelCall& c) {
  if (c.out[0]->numel() == 0) return 0;
  WorkspaceLayout ws;
  max_backward_scratch(ws, c);
  return ws.bytes();
}

}  // namespace

void register_pool(Backend& b) {
  const auto floats = {kFloat32, kFloat64, kFloat16, kBFloat16};
  b.kernels[static_cast<int>(OpKind::MaxPool2d)] = &max_pool_kernel_entry;
  set_supported(OpKind::MaxPool2d, floats);
  b.kernels[static_cast<int>(OpKind::MaxPool2dBackward)] = &max_pool_backward_kernel_entry;
  b.workspace[static_cast<int>(OpKind::MaxPool2dBackward)] = &max_pool_backward_workspace;
  set_supported(OpKind::MaxPool2dBackward, floats);
  b.kernels[static_cast<int>(OpKind::AvgPool2d)] = &avg_pool_kernel_entry;
  set_supported(OpKind::AvgPool2d, floats);
  b.kernels[static_cast<int>(OpKind::AvgPool2dBackward)] = &avg_pool_backward_kernel_entry;
  set_supported(OpKind::AvgPool2dBackward, floats);
}

}  // namespace loom::cuda_detail
