// CUDA kernels: the blas family. Bmm and Linear run on cuBLAS for the float
// dtypes and on a plain strided kernel for the integers; this file also
// registers the families written beside it (optimizers, random numbers,
// indexing: cuda_optim.cu, cuda_random.cu, cuda_index.cu).
//
// Note [CUDA GEMM]
// Bmm out (B, M, N) = a (B, M, K) @ b (B, K, N) is one
// cublasGemmStridedBatchedEx_64 call. cuBLAS reads column-major matrices:
// a row-major operand (unit column stride) is the transpose of a
// column-major one, so each operand that is row- or column-major per batch
// item is passed where it is, with the transpose flag and leading dimension
// that describe it; a row-major output C is computed as C^T = B^T A^T. The
// batch stride of a 3-d tensor is uniform by construction (0 for a
// broadcast batch). An operand that is neither (a slice with both strides
// above 1, an expanded matrix) is first copied into a contiguous scratch
// buffer, and an output that is neither is computed into one and copied
// back; the scratch is the call's workspace (Note [Kernel workspaces]), as
// is the cuBLAS workspace (cublasSetWorkspace, 256-byte aligned, sized as
// NVIDIA recommends: 32 MiB on Hopper, 4 MiB before), so cuBLAS allocates
// nothing and two streams never share a workspace: the caching allocator
// hands a block back only to the stream that freed it.
//
// Precision. float32 runs with CUBLAS_COMPUTE_32F and the default math mode,
// so no TF32: each product is a float32 sum, as the CPU's GEMM, and agrees
// with it to float rounding (the summation order differs). float64 runs in
// double. float16 and bfloat16 multiply in float32 with one rounding to the
// storage type (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION keeps
// split-K partial sums in float32 too), as Note [Low-precision GEMM] in
// cpu_linalg.cpp does on the CPU. Integers (not in cuBLAS) run the plain
// kernel bmm_naive_kernel: int64 wrapping sums in order over k, so they give
// the CPU's bits.
//
// Linear runs the same product (x (M, K) @ w^T) into its output, then
// linear_epilogue_kernel: + bias rounded to the dtype, the pre-activation
// copied out when asked, then the activation, rounded again. That is the
// rounding sequence of Bmm, Add and the activation's own kernel (ops.def).
// cuBLASLt's bias and activation epilogues are not used: they add the bias
// before rounding the product to a 16-bit type (one rounding, not two),
// their GELU is the tanh form only, and their ReLU need not keep NaN and -0
// as `x < 0 ? 0 : x` does.
#include <cublas_v2.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_cublas.h"
#include "backend/cuda/cuda_tensor.cuh"
#include "backend/workspace.h"

namespace loom::cuda_detail {

// The families registered from register_blas (their files).
void register_optim(Backend& b);
void register_random(Backend& b);
void register_index(Backend& b);

// ---------------------------------------------------------------- cuBLAS handles (cuda_cublas.h)

namespace {

constexpr int kMaxHandleDevices = 64;

// Handles given back by threads that ended, per device, for the next thread
// that needs one (creating a handle costs milliseconds). Never destroyed:
// destroying handles while the process exits races the driver's teardown.
struct HandlePool {
  std::mutex mu;
  std::array<std::vector<cublasHandle_t>, kMaxHandleDevices> free;
};
HandlePool& handle_pool() {
  static auto* pool = new HandlePool();
  return *pool;
}

// The calling thread's handle of each device: cuBLAS handles are not to be
// used by two threads at once, and one per thread needs no lock.
struct ThreadHandles {
  std::array<cublasHandle_t, kMaxHandleDevices> handles{};
  ~ThreadHandles() {
    HandlePool& pool = handle_pool();
    std::lock_guard<std::mutex> lock(pool.mu);
    for (size_t d = 0; d < handles.size(); ++d)
      if (handles[d] != nullptr) pool.free[d].push_back(handles[d]);
  }
};
thread_local ThreadHandles t_handles;

}  // namespace

void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  LOOM_ERROR("cuBLAS error: ", cublasGetStatusName(status), " (", cublasGetStatusString(status), ") in ", expr, " at ",
             file, ":", line);
}

// The calling thread's cuBLAS handle of `device` (current, by the caller's
// DeviceGuard), set to run on `stream` with `workspace` (256-byte aligned).
cublasHandle_t cublas_handle(int device, cudaStream_t stream, void* workspace, size_t workspace_bytes) {
  LOOM_CHECK(device >= 0 && device < kMaxHandleDevices, "CUDA: device index ", device, " out of range");
  cublasHandle_t& h = t_handles.handles[static_cast<size_t>(device)];
  if (h == nullptr) {
    HandlePool& pool = handle_pool();
    {
      std::lock_guard<std::mutex> lock(pool.mu);
      auto& free = pool.free[static_cast<size_t>(device)];
      if (!free.empty()) {
        h = free.back();
        free.pop_back();
      }
    }
    if (h == nullptr) {
      LOOM_CUBLAS_CHECK(cublasCreate(&h));
      // Default math: no TF32 for float32 (Note [CUDA GEMM]).
      LOOM_CUBLAS_CHECK(cublasSetMathMode(
          h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    }
  }
  // Setting the stream resets the workspace to cuBLAS's own: set it after.
  LOOM_CUBLAS_CHECK(cublasSetStream(h, stream));
  LOOM_CUBLAS_CHECK(cublasSetWorkspace(h, workspace, workspace_bytes));
  return h;
}

// The cuBLAS workspace NVIDIA recommends for `device`: 32 MiB on Hopper
// (compute capability 9) and later, 4 MiB before.
size_t cublas_workspace_bytes(int device) {
  static std::array<std::atomic<int>, kMaxHandleDevices> major{};  // 0: not asked yet
  LOOM_CHECK(device >= 0 && device < kMaxHandleDevices, "CUDA: device index ", device, " out of range");
  int m = major[static_cast<size_t>(device)].load(std::memory_order_relaxed);
  if (m == 0) {
    LOOM_CUDA_CHECK(cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, device));
    major[static_cast<size_t>(device)].store(m, std::memory_order_relaxed);
  }
  return (m >= 9 ? size_t{32} : size_t{4}) << 20;
}


namespace {

// ---------------------------------------------------------------- operands

// One operand of a batched product: `batch` matrices of (rows, cols), element
// (b, i, j) at data + (b * bs + i * rs + j * cs) elements.
struct Mat {
  char* data;
  int64_t rows, cols, bs, rs, cs;
};

Mat transposed(Mat m) {
  std::swap(m.rows, m.cols);
  std::swap(m.rs, m.cs);
  return m;
}

// A 3-d tensor (B, R, C) as a Mat.
Mat mat_of(const TensorImpl* t) {
  return {t->data(), t->sizes[1], t->sizes[2], t->strides[0], t->strides[1], t->strides[2]};
}

// How cuBLAS reads a (rows, cols) matrix: as stored column-major (op N,
// element (i, j) at i + j * ld), or as the transpose (op T) of a column-major
// (cols, rows) matrix, i.e. row-major with ld its row stride. A size-1 dim's
// stride is free. `ok` false: neither (Note [CUDA GEMM]).
struct Layout {
  bool ok = false;
  cublasOperation_t op = CUBLAS_OP_N;
  int64_t ld = 0;
};
Layout column_major_layout(const Mat& m) {
  const int64_t r = m.rows, c = m.cols;
  if ((r == 1 || m.rs == 1) && (c == 1 || m.cs >= std::max<int64_t>(r, 1)))
    return {true, CUBLAS_OP_N, c == 1 ? std::max<int64_t>(r, 1) : m.cs};
  if ((c == 1 || m.cs == 1) && (r == 1 || m.rs >= std::max<int64_t>(c, 1)))
    return {true, CUBLAS_OP_T, r == 1 ? std::max<int64_t>(c, 1) : m.rs};
  return {};
}

// Can cuBLAS take `m` where it is? An output needs distinct batch items.
bool cublas_usable(const Mat& m, int64_t batch, bool output) {
  if (!column_major_layout(m).ok) return false;
  if (batch > 1 && (output ? m.bs <= 0 : m.bs < 0)) return false;
  return true;
}

bool is_cublas_dtype(DType dt) { return dt == kFloat32 || dt == kFloat64 || dt == kFloat16 || dt == kBFloat16; }

// One product of the family: out c (batch, m, n) = a (batch, m, k) @ b (batch, k, n).
struct Product {
  DType dtype;
  int device;
  int64_t batch, m, n, k;
  Mat a, b, c;
};

// The product's workspace (Note [CUDA GEMM]): the cuBLAS workspace, then a
// contiguous copy of each operand cuBLAS cannot take where it is. The size
// function and the kernel walk this same layout.
struct ProductScratch {
  void* cublas = nullptr;
  size_t cublas_bytes = 0;
  char *a = nullptr, *b = nullptr, *c = nullptr;  // null: used where it is
};
ProductScratch product_scratch(WorkspaceLayout& ws, const Product& p) {
  ProductScratch s;
  if (!is_cublas_dtype(p.dtype) || p.k == 0 || p.m * p.n == 0 || p.batch == 0) return s;
  const int64_t esize = static_cast<int64_t>(element_size(p.dtype));
  s.cublas_bytes = cublas_workspace_bytes(p.device);
  char* raw = ws.take<char>(static_cast<int64_t>(s.cublas_bytes + kCublasAlign));
  if (raw != nullptr) {
    const auto addr = reinterpret_cast<uintptr_t>(raw);
    s.cublas = raw + (((addr + kCublasAlign - 1) & ~uintptr_t{kCublasAlign - 1}) - addr);
  }
  if (!cublas_usable(p.a, p.batch, false)) s.a = ws.take<char>(p.batch * p.m * p.k * esize);
  if (!cublas_usable(p.b, p.batch, false)) s.b = ws.take<char>(p.batch * p.k * p.n * esize);
  if (!cublas_usable(p.c, p.batch, true)) s.c = ws.take<char>(p.batch * p.m * p.n * esize);
  return s;
}

size_t product_workspace_bytes(const Product& p) {
  WorkspaceLayout ws;
  const ProductScratch s = product_scratch(ws, p);
  return s.cublas_bytes == 0 ? 0 : ws.bytes();
}

// ---------------------------------------------------------------- small kernels

// The geometry of a (batch, rows, cols) operand for Strided kernels.
Strided strided_mat(const Mat& m, int64_t batch) {
  TensorImpl view;
  view.sizes = {batch, m.rows, m.cols};
  view.strides = {m.bs, m.rs, m.cs};
  return strided_of(&view);
}

// dst element k (row-major over the shared shape) = src element k.
template <typename U>
__global__ void copy_strided_kernel(const U* src, Strided s, U* dst, Strided d, int64_t n) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[d.offset(k)] = src[s.offset(k)];
}

template <typename U>
__global__ void fill_zero_kernel(U* dst, Strided d, int64_t n) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[d.offset(k)] = U{0};
}

// Copies `from` into `to` (both batch x rows x cols, elements of `esize` bytes).
void copy_mat(const Launch& l, size_t esize, int64_t batch, const Mat& from, const Mat& to) {
  const int64_t n = batch * from.rows * from.cols;
  const Strided s = strided_mat(from, batch), d = strided_mat(to, batch);
  dispatch_bytes(esize, [&](auto tag) {
    using U = typename decltype(tag)::type;
    copy_strided_kernel<U><<<grid_for(n), kThreads, 0, l.stream>>>(reinterpret_cast<const U*>(from.data), s,
                                                                    reinterpret_cast<U*>(to.data), d, n);
    LOOM_CUDA_CHECK_LAUNCH();
  });
}

// A contiguous (batch, rows, cols) Mat over `data`.
Mat contiguous_mat(char* data, int64_t rows, int64_t cols) { return {data, rows, cols, rows * cols, cols, 1}; }

// The integer product (Note [CUDA GEMM]): one thread per output element,
// the CPU reference's sum: int64 products and sums wrapping mod 2^64, in
// order over k, narrowed to T at the end.
template <typename T>
__global__ void bmm_naive_kernel(int64_t batch, int64_t m, int64_t n, int64_t k, const T* a, Mat ma, const T* b,
                                 Mat mb, T* c, Mat mc) {
  const int64_t total = batch * m * n;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bi = e / (m * n), i = (e / n) % m, j = e % n;
    const T* arow = a + bi * ma.bs + i * ma.rs;
    const T* bcol = b + bi * mb.bs + j * mb.cs;
    uint64_t acc = 0;
    for (int64_t p = 0; p < k; ++p)
      acc += static_cast<uint64_t>(static_cast<int64_t>(arow[p * ma.cs])) *
             static_cast<uint64_t>(static_cast<int64_t>(bcol[p * mb.rs]));
    c[bi * mc.bs + i * mc.rs + j * mc.cs] = static_cast<T>(static_cast<int64_t>(acc));
  }
}

// The float product on cuBLAS, the operands already where cuBLAS can read
// them (Note [CUDA GEMM]).
void cublas_product(const Launch& l, const Product& p, Mat a, Mat b, Mat c, const ProductScratch& s) {
  Layout lc = column_major_layout(c);
  if (lc.op == CUBLAS_OP_T) {
    // C row-major: C^T (n, m) = B^T (n, k) A^T (k, m), all column-major.
    const Mat at = transposed(b), bt = transposed(a);
    a = at;
    b = bt;
    c = transposed(c);
    lc = column_major_layout(c);
  }
  const Layout la = column_major_layout(a), lb = column_major_layout(b);
  LOOM_ASSERT(la.ok && lb.ok && lc.ok && lc.op == CUBLAS_OP_N, "Bmm: operand layouts for cuBLAS");
  cudaDataType_t type = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (p.dtype) {
    case DType::Float64:
      type = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      break;
    case DType::Float16: type = CUDA_R_16F; break;
    case DType::BFloat16: type = CUDA_R_16BF; break;
    default: break;
  }
  const float alpha32 = 1.0f, beta32 = 0.0f;
  const double alpha64 = 1.0, beta64 = 0.0;
  const bool dbl = compute == CUBLAS_COMPUTE_64F;
  const bool batched = p.batch > 1;
  cublasHandle_t h = cublas_handle(l.device, l.stream, s.cublas, s.cublas_bytes);
  LOOM_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(
      h, la.op, lb.op, c.rows, c.cols, a.cols, dbl ? static_cast<const void*>(&alpha64) : &alpha32, a.data, type,
      la.ld, batched ? a.bs : 0, b.data, type, lb.ld, batched ? b.bs : 0,
      dbl ? static_cast<const void*>(&beta64) : &beta32, c.data, type, lc.ld, batched ? c.bs : 0, p.batch, compute,
      CUBLAS_GEMM_DEFAULT));
}

// Runs `p` on the current device, in the workspace of `call`.
void run_product(const Launch& l, const Product& p, const KernelCall& call) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  const size_t esize = element_size(p.dtype);
  if (p.k == 0) {  // an empty sum: zeros
    const int64_t n = p.batch * p.m * p.n;
    const Strided d = strided_mat(p.c, p.batch);
    dispatch_bytes(esize, [&](auto tag) {
      using U = typename decltype(tag)::type;
      fill_zero_kernel<U><<<grid_for(n), kThreads, 0, l.stream>>>(reinterpret_cast<U*>(p.c.data), d, n);
      LOOM_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  if (!is_cublas_dtype(p.dtype)) {
    const int64_t total = p.batch * p.m * p.n;
    const auto run = [&](auto tag) {
      using T = typename decltype(tag)::type;
      bmm_naive_kernel<T><<<grid_for(total), kThreads, 0, l.stream>>>(
          p.batch, p.m, p.n, p.k, reinterpret_cast<const T*>(p.a.data), p.a, reinterpret_cast<const T*>(p.b.data),
          p.b, reinterpret_cast<T*>(p.c.data), p.c);
      LOOM_CUDA_CHECK_LAUNCH();
    };
    switch (p.dtype) {
      case DType::Int32: run(TypeTag<int32_t>{}); return;
      case DType::Int64: run(TypeTag<int64_t>{}); return;
      case DType::Int8: run(TypeTag<int8_t>{}); return;
      case DType::UInt8: run(TypeTag<uint8_t>{}); return;
      default: break;
    }
    LOOM_ASSERT(false, "Bmm: CUDA kernel called with dtype ", dtype_name(p.dtype));
  }
  WorkspaceLayout ws = carve(call);
  const ProductScratch s = product_scratch(ws, p);
  Mat a = p.a, b = p.b, c = p.c;
  if (s.a != nullptr) {
    a = contiguous_mat(s.a, p.m, p.k);
    copy_mat(l, esize, p.batch, p.a, a);
  }
  if (s.b != nullptr) {
    b = contiguous_mat(s.b, p.k, p.n);
    copy_mat(l, esize, p.batch, p.b, b);
  }
  if (s.c != nullptr) c = contiguous_mat(s.c, p.m, p.n);
  cublas_product(l, p, a, b, c, s);
  if (s.c != nullptr) copy_mat(l, esize, p.batch, c, p.c);
}

// ---------------------------------------------------------------- Bmm

Product bmm_product(const KernelCall& call) {
  const TensorImpl *a = call.in[0], *b = call.in[1], *out = call.out[0];
  LOOM_ASSERT(a->dim() == 3 && b->dim() == 3 && out->dim() == 3 && b->sizes[0] == a->sizes[0] &&
                  b->sizes[1] == a->sizes[2] && out->sizes == Shape({a->sizes[0], a->sizes[1], b->sizes[2]}),
              "Bmm: shapes ", shape_str(a->sizes), " @ ", shape_str(b->sizes), " -> ", shape_str(out->sizes));
  LOOM_ASSERT(a->dtype == b->dtype && a->dtype == out->dtype, "Bmm: mixed dtypes");
  return {a->dtype, out->device().index, a->sizes[0], a->sizes[1], b->sizes[2], a->sizes[2],
          mat_of(a),  mat_of(b),          mat_of(out)};
}

void bmm_kernel(const KernelCall& call) {
  const Product p = bmm_product(call);
  const Launch l = launch_of(call);
  DeviceGuard guard(l.device);
  run_product(l, p, call);
}

size_t bmm_workspace(const KernelCall& call) { return product_workspace_bytes(bmm_product(call)); }

// ---------------------------------------------------------------- Linear

// Linear's product as a batch of one: x (M, K) @ w^T (K, N) -> out (M, N).
Product linear_product(const KernelCall& call) {
  const TensorImpl *x = call.in[0], *w = call.in[1], *out = call.out[0];
  LOOM_ASSERT(x->dim() == 2 && w->dim() == 2 && out->dim() == 2 && x->sizes[1] == w->sizes[1] &&
                  out->sizes == Shape({x->sizes[0], w->sizes[0]}) && out->is_contiguous(),
              "Linear: shapes ", shape_str(x->sizes), ", weight ", shape_str(w->sizes), " -> ", shape_str(out->sizes));
  LOOM_ASSERT(x->dtype == w->dtype && x->dtype == out->dtype, "Linear: mixed dtypes");
  const int64_t m = x->sizes[0], k = x->sizes[1], n = w->sizes[0];
  return {x->dtype,
          out->device().index,
          1,
          m,
          n,
          k,
          {x->data(), m, k, 0, x->strides[0], x->strides[1]},
          {w->data(), k, n, 0, w->strides[1], w->strides[0]},
          {out->data(), m, n, 0, n, 1}};
}

// Linear's i[0] (ops.def).
enum LinearAct : int { kActNone = 0, kActRelu = 1, kActGelu = 2, kActGeluTanh = 3 };

template <typename C>
__device__ __forceinline__ C linear_activation(C v, int act) {
  if (act == kActRelu) return v < C(0) ? C(0) : v;  // keeps NaN and -0, as the Relu kernel
  if constexpr (std::is_floating_point_v<C>) {
    if (act == kActGelu) {
      // 0.5 x (1 + erf(x / sqrt 2))
      if constexpr (std::is_same_v<C, float>) return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
      else return 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
    }
    if (act == kActGeluTanh) {
      // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
      const C k = static_cast<C>(0.7978845608028654);
      const C u = k * (v + static_cast<C>(0.044715) * v * v * v);
      if constexpr (std::is_same_v<C, float>) return 0.5f * v * (1.0f + tanhf(u));
      else return 0.5 * v * (1.0 + tanh(u));
    }
  }
  return v;
}

// After the product is in `out` (contiguous (M, N)): out = act(out + bias),
// pre = out + bias when asked, each rounded to T as the unfused kernels
// round (Note [CUDA GEMM]). Integers add wrapping, as the Add kernel.
template <typename T>
__global__ void linear_epilogue_kernel(T* out, T* pre, const T* bias, int64_t bias_stride, int64_t cols, int64_t total,
                                       int act) {
  using C = compute_t<T>;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T y = out[e];
    if (bias != nullptr) {
      const T bj = bias[(e % cols) * bias_stride];
      if constexpr (std::is_integral_v<T>)
        y = static_cast<T>(static_cast<uint64_t>(static_cast<int64_t>(y)) + static_cast<uint64_t>(static_cast<int64_t>(bj)));
      else
        y = store_as<T>(load_as(&y) + load_as(&bj));
    }
    if (pre != nullptr) pre[e] = y;
    if (act != kActNone) {
      if constexpr (std::is_integral_v<T>) {
        if constexpr (std::is_signed_v<T>) y = y < T(0) ? T(0) : y;  // relu; unsigned values are kept
      } else {
        y = store_as<T>(linear_activation<C>(load_as(&y), act));
      }
    }
    out[e] = y;
  }
}

void linear_kernel(const KernelCall& call) {
  const Product p = linear_product(call);
  const TensorImpl* bias = call.in.size() > 2 ? call.in[2] : nullptr;
  TensorImpl* out = call.out[0];
  TensorImpl* pre = call.out.size() > 1 ? call.out[1] : nullptr;
  LOOM_ASSERT(bias == nullptr || (bias->dim() == 1 && bias->sizes[0] == p.n && bias->dtype == p.dtype),
              "Linear: bias ", shape_str(bias->sizes));
  LOOM_ASSERT(pre == nullptr || (pre->sizes == out->sizes && pre->is_contiguous() && pre->dtype == p.dtype),
              "Linear: pre-activation output");
  const int act = static_cast<int>(call.i[0]);
  LOOM_ASSERT(act >= kActNone && act <= kActGeluTanh, "Linear: activation code ", act);
  LOOM_ASSERT(act < kActGelu || is_floating_point(p.dtype), "Linear: GELU on dtype ", dtype_name(p.dtype));
  const int64_t total = p.m * p.n;
  if (total == 0) return;
  const Launch l = launch_of(call);
  DeviceGuard guard(l.device);
  if (p.k == 0) {
    LOOM_CUDA_CHECK(cudaMemsetAsync(out->data(), 0, static_cast<size_t>(total) * element_size(p.dtype), l.stream));
  } else {
    run_product(l, p, call);
  }
  if (bias == nullptr && pre == nullptr && act == kActNone) return;
  const auto epilogue = [&](auto tag) {
    using T = typename decltype(tag)::type;
    linear_epilogue_kernel<T><<<grid_for(total), kThreads, 0, l.stream>>>(
        data_of<T>(out), pre != nullptr ? data_of<T>(pre) : nullptr, bias != nullptr ? data_of<T>(bias) : nullptr,
        bias != nullptr ? bias->strides[0] : 0, p.n, total, act);
    LOOM_CUDA_CHECK_LAUNCH();
  };
  switch (p.dtype) {
    case DType::Int32: epilogue(TypeTag<int32_t>{}); return;
    case DType::Int64: epilogue(TypeTag<int64_t>{}); return;
    case DType::Int8: epilogue(TypeTag<int8_t>{}); return;
    case DType::UInt8: epilogue(TypeTag<uint8_t>{}); return;
    default: dispatch_float(p.dtype, epilogue); return;
  }
}

size_t linear_workspace(const KernelCall& call) { return product_workspace_bytes(linear_product(call)); }

}  // namespace

void register_blas(Backend& b) {
  const auto numeric = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kInt8, kUInt8};
  b.kernels[static_cast<int>(OpKind::Bmm)] = &bmm_kernel;
  b.workspace[static_cast<int>(OpKind::Bmm)] = &bmm_workspace;
  set_supported(OpKind::Bmm, numeric);
  b.kernels[static_cast<int>(OpKind::Linear)] = &linear_kernel;
  b.workspace[static_cast<int>(OpKind::Linear)] = &linear_workspace;
  set_supported(OpKind::Linear, numeric);
  register_optim(b);
  register_random(b);
  register_index(b);
}

}  // namespace loom::cuda_detail
