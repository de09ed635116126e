// CUDA kernels: the conv family. Conv2d, ConvTranspose2d (the input
// gradient) and Conv2dWeight (the weight gradient) here, NCHW, calling
// conventions in ops.def; the pooling and batch norm kernels beside it
// (cuda_pool.cu, cuda_batch_norm.cu) register from register_conv.
//
// Note [CUDA convolution as GEMM]
// The CPU's Note [Convolution as GEMM] on the GPU: for a chunk of nb samples
// and L = OH * OW output positions, im2col writes the input patches as
// col (G, q, nb * L) with q = C/G * KH * KW rows (ci, kh, kw) and the
// samples side by side in the columns (sample i at [i L, (i + 1) L)), zeros
// in the padding. With the gradient or output gathered the same way,
// gbuf (G, O/G, nb * L), each op is one cuBLAS call batched over the groups:
//   forward          out (O/G, nb L)  = w_g (O/G, q) @ col_g, then y = out + bias
//   input gradient   colg (q, nb L)   = w_g^T (q, O/G) @ gbuf_g, then col2im
//                                       sums each input pixel's taps
//   weight gradient  dw_g (O/G, q)   += gbuf_g @ col_g^T (nb L, q), over chunks
// Every buffer is the call's workspace (Note [Kernel workspaces]), carved by
// conv_scratch for the size function and the kernel alike: the cuBLAS
// workspace, a contiguous copy of w, col / gbuf (the storage dtype T: im2col
// and the gathers only move values) and the products (compute_t: float for
// float16 / bfloat16, so the 16-bit types are rounded once, at the end). The
// chunk holds as many samples as fit kChunkBytes (at least one), a function
// of the shapes alone. col2im gathers (each input pixel sums its taps in
// (kh, kw) order), so no atomics: results do not change from run to run.
//
// Precision. cuBLAS runs as Note [CUDA GEMM] says (cuda_cublas.h's handles:
// no TF32): float32 sums in float32 as the CPU's float32 GEMM
// path (in another order; the CPU may also take Winograd), float64 in double
// as the CPU's reference. float16 / bfloat16 multiply and sum in float32
// with one rounding to T; the CPU's reference sums those in double, so the
// two agree to a unit in the last place of T (a float32 sum of a few
// thousand products is far inside a 16-bit ulp). Any strides in and out:
// the gathers and the final writes read and write through strides.
#include <cublas_v2.h>

#include <algorithm>

#include "backend/cuda/cuda_cublas.h"
#include "backend/cuda/cuda_tensor.cuh"
#include "backend/workspace.h"

namespace loom::cuda_detail {

// The families registered from register_conv (their files).
void register_pool(Backend& b);
void register_batch_norm(Backend& b);

namespace {

#define LOOM_CONV_LOOP(k, n)                                                             \
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < (n); \
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Row-major C (m, n) = op(A) (m, k) @ op(B) (k, n), batched with element
// strides sa, sb, sc. A is stored (m, k) row-major with row stride lda, or
// (k, m) when ta; B likewise (k, n), or (n, k) when tb. A and B hold
// `dtype`, C its compute_t (float32 for the 16-bit types); C = product, or
// C += product when `accumulate`. Row-major X is column-major X^T, so this
// is cuBLAS's C^T (n, m) = op(B)^T op(A)^T (Note [CUDA GEMM]).
struct GemmRm {
  bool ta, tb;
  int64_t m, n, k;
  const void* a;
  int64_t lda, sa;
  const void* b;
  int64_t ldb, sb;
  void* c;
  int64_t ldc, sc;
  int64_t batch;
  bool accumulate;
};

void gemm_rm(cublasHandle_t h, DType dtype, const GemmRm& g) {
  cudaDataType_t ab = CUDA_R_32F, ct = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (dtype) {
    case DType::Float64:
      ab = ct = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      break;
    case DType::Float16: ab = CUDA_R_16F; break;
    case DType::BFloat16: ab = CUDA_R_16BF; break;
    default: break;
  }
  const bool dbl = compute == CUBLAS_COMPUTE_64F;
  const float one32 = 1.0f, beta32 = g.accumulate ? 1.0f : 0.0f;
  const double one64 = 1.0, beta64 = g.accumulate ? 1.0 : 0.0;
  LOOM_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(
      h, g.tb ? CUBLAS_OP_T : CUBLAS_OP_N, g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, g.n, g.m, g.k,
      dbl ? static_cast<const void*>(&one64) : &one32, g.b, ab, g.ldb, g.sb, g.a, ab, g.lda, g.sa,
      dbl ? static_cast<const void*>(&beta64) : &beta32, g.c, ct, g.ldc, g.sc, g.batch, compute,
      CUBLAS_GEMM_DEFAULT));
}

// ---------------------------------------------------------------- geometry

// One convolution in the forward direction: x (N, C, H, W), w (O, C/G, KH,
// KW), y (N, O, OH, OW), and the window.
struct ConvDims {
  int64_t n, c, h, w, o, oh, ow, groups, kh, kw;
  int64_t sh, sw, ph, pw, dh, dw;
  __host__ __device__ int64_t cg() const { return c / groups; }
  __host__ __device__ int64_t og() const { return o / groups; }
  __host__ __device__ int64_t l() const { return oh * ow; }
  __host__ __device__ int64_t q() const { return cg() * kh * kw; }
};

// A 4-d tensor's strides (elements).
struct Strides4 {
  int64_t s0, s1, s2, s3;
};
Strides4 strides4(const TensorImpl* t) { return {t->strides[0], t->strides[1], t->strides[2], t->strides[3]}; }

ConvDims conv_dims(const char* op, const TensorImpl* x, const TensorImpl* w, const TensorImpl* y, const KernelCall& c) {
  const Window2d& win = window_of(c);
  const int64_t groups = c.param<ConvParams>().groups;
  LOOM_ASSERT(x->dim() == 4 && w->dim() == 4 && y->dim() == 4 && groups > 0 && x->sizes[1] % groups == 0 &&
                  w->sizes[0] % groups == 0 && w->sizes[1] == x->sizes[1] / groups && w->sizes[2] == win.kh &&
                  w->sizes[3] == win.kw && y->sizes[0] == x->sizes[0] && y->sizes[1] == w->sizes[0],
              op, ": shapes x ", shape_str(x->sizes), ", w ", shape_str(w->sizes), ", y ", shape_str(y->sizes));
  LOOM_ASSERT(x->dtype == w->dtype && x->dtype == y->dtype, op, ": mixed dtypes");
  return {x->sizes[0], x->sizes[1], x->sizes[2], x->sizes[3], w->sizes[0], y->sizes[2], y->sizes[3], groups,
          win.kh,      win.kw,      win.sh,      win.sw,      win.ph,      win.pw,      win.dh,      win.dw};
}

// The op's geometry: Conv2d (x, w) -> y; ConvTranspose2d (g, w) -> dx;
// Conv2dWeight (x, g) -> dw.
ConvDims dims_of(const KernelCall& c) {
  switch (c.op) {
    case OpKind::Conv2d: return conv_dims("Conv2d", c.in[0], c.in[1], c.out[0], c);
    case OpKind::ConvTranspose2d: return conv_dims("ConvTranspose2d", c.out[0], c.in[1], c.in[0], c);
    default: return conv_dims("Conv2dWeight", c.in[0], c.out[0], c.in[1], c);
  }
}

// Bytes of one chunk's buffers, at most (one sample always fits).
constexpr int64_t kChunkBytes = int64_t{64} << 20;

// Note [CUDA convolution as GEMM]'s buffers, in one order for the size
// function and the kernel.
struct ConvScratch {
  void* cublas = nullptr;
  size_t cublas_bytes = 0;
  int64_t per = 1;              // samples per chunk
  char* wmat = nullptr;         // (O, q) T: forward, input gradient
  char* col = nullptr;          // (G, q, per L) T: forward, weight gradient
  char* colg = nullptr;         // (G, q, per L) compute_t: input gradient
  char* gbuf = nullptr;         // (O, per L) T: input and weight gradients
  char* out = nullptr;          // (O, per L) compute_t: forward
  char* dwacc = nullptr;        // (O, q) compute_t: weight gradient
};

ConvScratch conv_scratch(WorkspaceLayout& ws, const KernelCall& c, const ConvDims& d, DType dtype, int device) {
  ConvScratch s;
  const int64_t e = static_cast<int64_t>(element_size(dtype));
  const int64_t ea = dtype == kFloat64 ? 8 : 4;
  const int64_t l = d.l(), cq = d.c * d.kh * d.kw;  // cq = G * q
  int64_t per_sample = 0;
  switch (c.op) {
    case OpKind::Conv2d: per_sample = cq * l * e + d.o * l * ea; break;
    case OpKind::ConvTranspose2d: per_sample = d.o * l * e + cq * l * ea; break;
    default: per_sample = cq * l * e + d.o * l * e; break;
  }
  s.per = std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(per_sample, 1), 1, std::max<int64_t>(d.n, 1));
  const int64_t cols = s.per * l;
  s.cublas_bytes = cublas_workspace_bytes(device);
  char* raw = ws.take<char>(static_cast<int64_t>(s.cublas_bytes + kCublasAlign));
  if (raw != nullptr) {
    const auto addr = reinterpret_cast<uintptr_t>(raw);
    s.cublas = raw + (((addr + kCublasAlign - 1) & ~uintptr_t{kCublasAlign - 1}) - addr);
  }
  switch (c.op) {
    case OpKind::Conv2d:
      s.wmat = ws.take<char>(d.o * d.q() * e);
      s.col = ws.take<char>(cq * cols * e);
      s.out = ws.take<char>(d.o * cols * ea);
      break;
    case OpKind::ConvTranspose2d:
      s.wmat = ws.take<char>(d.o * d.q() * e);
      s.gbuf = ws.take<char>(d.o * cols * e);
      s.colg = ws.take<char>(cq * cols * ea);
      break;
    default:
      s.col = ws.take<char>(cq * cols * e);
      s.gbuf = ws.take<char>(d.o * cols * e);
      s.dwacc = ws.take<char>(d.o * d.q() * ea);
      break;
  }
  return s;
}

// ---------------------------------------------------------------- kernels

// col (G * q, nb * L) for samples [n0, n0 + nb): element
// (((c * KH + kh) * KW + kw) * nb + i) * L + oh * OW + ow.
template <typename T>
__global__ void im2col_kernel(const T* x, Strides4 sx, ConvDims d, int64_t n0, int64_t nb, T* col) {
  const int64_t l = d.l(), total = d.c * d.kh * d.kw * nb * l;
  const T zero = store_as<T>(0.0f);
  LOOM_CONV_LOOP(e, total) {
    const int64_t pos = e % l;
    int64_t r = e / l;
    const int64_t i = r % nb;
    r /= nb;
    const int64_t kw = r % d.kw;
    r /= d.kw;
    const int64_t kh = r % d.kh, ch = r / d.kh;
    const int64_t ih = (pos / d.ow) * d.sh - d.ph + kh * d.dh, iw = (pos % d.ow) * d.sw - d.pw + kw * d.dw;
    col[e] = ih >= 0 && ih < d.h && iw >= 0 && iw < d.w ? x[(n0 + i) * sx.s0 + ch * sx.s1 + ih * sx.s2 + iw * sx.s3]
                                                         : zero;
  }
}

// gbuf (O, nb * L) = g (N, O, OH, OW) for samples [n0, n0 + nb): element (o * nb + i) * L + pos.
template <typename T>
__global__ void gather_grad_kernel(const T* g, Strides4 sg, ConvDims d, int64_t n0, int64_t nb, T* gbuf) {
  const int64_t l = d.l(), total = d.o * nb * l;
  LOOM_CONV_LOOP(e, total) {
    const int64_t pos = e % l, i = (e / l) % nb, o = e / (l * nb);
    gbuf[e] = g[(n0 + i) * sg.s0 + o * sg.s1 + (pos / d.ow) * sg.s2 + (pos % d.ow) * sg.s3];
  }
}

// y[n0 + i, o, pos] = out (O, nb * L) + bias[o], rounded once to T.
template <typename T>
__global__ void conv_forward_epilogue_kernel(const compute_t<T>* out, const T* bias, int64_t bias_stride, ConvDims d,
                                             int64_t n0, int64_t nb, T* y, Strides4 sy) {
  const int64_t l = d.l(), total = d.o * nb * l;
  LOOM_CONV_LOOP(e, total) {
    const int64_t pos = e % l, i = (e / l) % nb, o = e / (l * nb);
    compute_t<T> v = out[e];
    if (bias != nullptr) v += load_as(bias + o * bias_stride);
    y[(n0 + i) * sy.s0 + o * sy.s1 + (pos / d.ow) * sy.s2 + (pos % d.ow) * sy.s3] = store_as<T>(v);
  }
}

// dx[n0 + i, c, ih, iw] = the sum of its taps' colg entries (colg laid out as im2col's col), in (kh, kw) order.
template <typename T>
__global__ void col2im_kernel(const compute_t<T>* colg, ConvDims d, int64_t n0, int64_t nb, T* dx, Strides4 sd) {
  const int64_t l = d.l(), total = nb * d.c * d.h * d.w;
  LOOM_CONV_LOOP(e, total) {
    const int64_t iw = e % d.w, ih = (e / d.w) % d.h, ch = (e / (d.w * d.h)) % d.c, i = e / (d.w * d.h * d.c);
    compute_t<T> acc = 0;
    for (int64_t kh = 0; kh < d.kh; ++kh) {
      const int64_t th = ih + d.ph - kh * d.dh;
      if (th < 0 || th % d.sh != 0 || th / d.sh >= d.oh) continue;
      for (int64_t kw = 0; kw < d.kw; ++kw) {
        const int64_t tw = iw + d.pw - kw * d.dw;
        if (tw < 0 || tw % d.sw != 0 || tw / d.sw >= d.ow) continue;
        acc += colg[(((ch * d.kh + kh) * d.kw + kw) * nb + i) * l + (th / d.sh) * d.ow + tw / d.sw];
      }
    }
    dx[(n0 + i) * sd.s0 + ch * sd.s1 + ih * sd.s2 + iw * sd.s3] = store_as<T>(acc);
  }
}

// dst (contiguous, row-major over src's sizes) = src (any strides).
template <typename T>
__global__ void pack_kernel(const T* src, Strided s, T* dst, int64_t n) {
  LOOM_CONV_LOOP(k, n) dst[k] = src[s.offset(k)];
}

// dst (any strides) = src (contiguous, compute_t), rounded to T.
template <typename T>
__global__ void unpack_kernel(const compute_t<T>* src, T* dst, Strided s, int64_t n) {
  LOOM_CONV_LOOP(k, n) dst[s.offset(k)] = store_as<T>(src[k]);
}

// ---------------------------------------------------------------- entry points

// The cuBLAS handle for `s`, on the call's stream.
cublasHandle_t handle_for(const Launch& l, const ConvScratch& s) {
  return cublas_handle(l.device, l.stream, s.cublas, s.cublas_bytes);
}

template <typename T>
void pack_weight(const Launch& l, const TensorImpl* w, char* wmat) {
  const int64_t n = w->numel();
  pack_kernel<T><<<grid_for(n), kThreads, 0, l.stream>>>(data_of<T>(w), strided_of(w), reinterpret_cast<T*>(wmat), n);
  LOOM_CUDA_CHECK_LAUNCH();
}

template <typename T>
void conv_forward(const KernelCall& c, const Launch& l, const ConvDims& d) {
  using A = compute_t<T>;
  const TensorImpl *x = c.in[0], *w = c.in[1], *b = c.in.size() > 2 ? c.in[2] : nullptr;
  TensorImpl* y = c.out[0];
  WorkspaceLayout ws = carve(c);
  const ConvScratch s = conv_scratch(ws, c, d, x->dtype, l.device);
  pack_weight<T>(l, w, s.wmat);
  const int64_t L = d.l(), og = d.og(), q = d.q();
  cublasHandle_t h = handle_for(l, s);
  for (int64_t n0 = 0; n0 < d.n; n0 += s.per) {
    const int64_t nb = std::min(s.per, d.n - n0), cols = nb * L;
    if (q == 0) {
      LOOM_CUDA_CHECK(cudaMemsetAsync(s.out, 0, static_cast<size_t>(d.o * cols) * sizeof(A), l.stream));
    } else {
      const int64_t ncol = d.c * d.kh * d.kw * cols;
      im2col_kernel<T><<<grid_for(ncol), kThreads, 0, l.stream>>>(data_of<T>(x), strides4(x), d, n0, nb,
                                                                   reinterpret_cast<T*>(s.col));
      LOOM_CUDA_CHECK_LAUNCH();
      // out_g (og, cols) = wmat_g (og, q) @ col_g (q, cols).
      gemm_rm(h, x->dtype, {false, false, og, cols, q, s.wmat, q, og * q, s.col, cols, q * cols, s.out, cols,
                            og * cols, d.groups, false});
    }
    const int64_t nout = d.o * cols;
    conv_forward_epilogue_kernel<T><<<grid_for(nout), kThreads, 0, l.stream>>>(
        reinterpret_cast<const A*>(s.out), b != nullptr ? data_of<T>(b) : nullptr, b != nullptr ? b->strides[0] : 0, d,
        n0, nb, data_of<T>(y), strides4(y));
    LOOM_CUDA_CHECK_LAUNCH();
  }
}

template <typename T>
void conv_input_grad(const KernelCall& c, const Launch& l, const ConvDims& d) {
  using A = compute_t<T>;
  const TensorImpl *g = c.in[0], *w = c.in[1];
  TensorImpl* dx = c.out[0];
  WorkspaceLayout ws = carve(c);
  const ConvScratch s = conv_scratch(ws, c, d, g->dtype, l.device);
  pack_weight<T>(l, w, s.wmat);
  const int64_t L = d.l(), og = d.og(), q = d.q();
  cublasHandle_t h = handle_for(l, s);
  for (int64_t n0 = 0; n0 < d.n; n0 += s.per) {
    const int64_t nb = std::min(s.per, d.n - n0), cols = nb * L;
    if (cols > 0 && q > 0) {
      if (og == 0) {
        LOOM_CUDA_CHECK(
            cudaMemsetAsync(s.colg, 0, static_cast<size_t>(d.c * d.kh * d.kw * cols) * sizeof(A), l.stream));
      } else {
        const int64_t ng = d.o * cols;
        gather_grad_kernel<T><<<grid_for(ng), kThreads, 0, l.stream>>>(data_of<T>(g), strides4(g), d, n0, nb,
                                                                       reinterpret_cast<T*>(s.gbuf));
        LOOM_CUDA_CHECK_LAUNCH();
        // colg_g (q, cols) = wmat_g^T (q, og) @ gbuf_g (og, cols).
        gemm_rm(h, g->dtype, {true, false, q, cols, og, s.wmat, q, og * q, s.gbuf, cols, og * cols, s.colg, cols,
                              q * cols, d.groups, false});
      }
    }
    const int64_t ndx = nb * d.c * d.h * d.w;
    col2im_kernel<T><<<grid_for(ndx), kThreads, 0, l.stream>>>(reinterpret_cast<const A*>(s.colg), d, n0, nb,
                                                               data_of<T>(dx), strides4(dx));
    LOOM_CUDA_CHECK_LAUNCH();
  }
}

template <typename T>
void conv_weight_grad(const KernelCall& c, const Launch& l, const ConvDims& d) {
  using A = compute_t<T>;
  const TensorImpl *x = c.in[0], *g = c.in[1];
  TensorImpl* dw = c.out[0];
  WorkspaceLayout ws = carve(c);
  const ConvScratch s = conv_scratch(ws, c, d, x->dtype, l.device);
  const int64_t L = d.l(), og = d.og(), q = d.q();
  const int64_t nw = d.o * q;
  // An empty sum (no samples or no output positions) is zeros.
  LOOM_CUDA_CHECK(cudaMemsetAsync(s.dwacc, 0, static_cast<size_t>(nw) * sizeof(A), l.stream));
  cublasHandle_t h = handle_for(l, s);
  for (int64_t n0 = 0; n0 < d.n && L > 0 && og > 0; n0 += s.per) {
    const int64_t nb = std::min(s.per, d.n - n0), cols = nb * L;
    const int64_t ncol = d.c * d.kh * d.kw * cols, ng = d.o * cols;
    im2col_kernel<T><<<grid_for(ncol), kThreads, 0, l.stream>>>(data_of<T>(x), strides4(x), d, n0, nb,
                                                                reinterpret_cast<T*>(s.col));
    LOOM_CUDA_CHECK_LAUNCH();
    gather_grad_kernel<T><<<grid_for(ng), kThreads, 0, l.stream>>>(data_of<T>(g), strides4(g), d, n0, nb,
                                                                   reinterpret_cast<T*>(s.gbuf));
    LOOM_CUDA_CHECK_LAUNCH();
    // dwacc_g (og, q) += gbuf_g (og, cols) @ col_g^T (cols, q).
    gemm_rm(h, x->dtype,
            {false, true, og, q, cols, s.gbuf, cols, og * cols, s.col, cols, q * cols, s.dwacc, q, og * q, d.groups,
             true});
  }
  unpack_kernel<T><<<grid_for(nw), kThreads, 0, l.stream>>>(reinterpret_cast<const A*>(s.dwacc), data_of<T>(dw),
                                                            strided_of(dw), nw);
  LOOM_CUDA_CHECK_LAUNCH();
}

void conv2d_kernel(const KernelCall& c) {
  const ConvDims d = dims_of(c);
  const TensorImpl* b = c.in.size() > 2 ? c.in[2] : nullptr;
  LOOM_ASSERT(b == nullptr || (b->dim() == 1 && b->sizes[0] == d.o && b->dtype == c.in[0]->dtype),
              "Conv2d: bias ", shape_str(b->sizes));
  if (c.out[0]->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(c.in[0]->dtype, [&](auto tag) { conv_forward<typename decltype(tag)::type>(c, l, d); });
}

void conv_transpose2d_kernel(const KernelCall& c) {
  const ConvDims d = dims_of(c);
  if (c.out[0]->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(c.in[0]->dtype, [&](auto tag) { conv_input_grad<typename decltype(tag)::type>(c, l, d); });
}

void conv2d_weight_kernel(const KernelCall& c) {
  const ConvDims d = dims_of(c);
  if (c.out[0]->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  dispatch_float(c.in[0]->dtype, [&](auto tag) { conv_weight_grad<typename decltype(tag)::type>(c, l, d); });
}

size_t conv_workspace(const KernelCall& c) {
  if (c.out[0]->numel() == 0) return 0;
  const ConvDims d = dims_of(c);
  WorkspaceLayout ws;
  conv_scratch(ws, c, d, c.in[0]->dtype, c.out[0]->device().index);
  return ws.bytes();
}

}  // namespace

void register_conv(Backend& b) {
  const auto floats = {kFloat32, kFloat64, kFloat16, kBFloat16};
  for (OpKind op : {OpKind::Conv2d, OpKind::ConvTranspose2d, OpKind::Conv2dWeight}) {
    b.workspace[static_cast<int>(op)] = &conv_workspace;
    set_supported(op, floats);
  }
  b.kernels[static_cast<int>(OpKind::Conv2d)] = &conv2d_kernel;
  b.kernels[static_cast<int>(OpKind::ConvTranspose2d)] = &conv_transpose2d_kernel;
  b.kernels[static_cast<int>(OpKind::Conv2dWeight)] = &conv2d_weight_kernel;
  register_pool(b);
  register_batch_norm(b);
}

}  // namespace loom::cuda_detail
