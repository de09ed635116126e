// Pooling: max_pool2d and max_pool2d_with_indices (primitives MaxPool2d,
// MaxPool2dBackward), avg_pool2d (AvgPool2d, AvgPool2dBackward) and
// adaptive_avg_pool2d (a composite). Kernels in src/backend/cpu/cpu_pool.cpp.
//
// Each backward is itself an op with a backward, so second-order gradients
// work: MaxPool2dBackward scatters the gradient into the argmax positions and
// is differentiated by gathering at the same positions; AvgPool2dBackward is
// the transpose of the (linear) average pool, whose own transpose is the
// average pool again.
#include <algorithm>
#include <string>

#include "backend/window2d.h"
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

// A one-element list applies to both spatial dims; two give (height, width).
std::pair<int64_t, int64_t> pair_of(const char* op, const char* what, IntArrayRef v) {
  LOOM_CHECK(v.size() == 1 || v.size() == 2, op, ": ", what, " must be one int or two ints, got ", shape_str(v.vec()));
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

std::string pair_str(int64_t a, int64_t b) { return shape_str(std::vector<int64_t>{a, b}); }

// PyTorch's pooling output size: floor (or ceil) of (in + 2 pad - dilation
// (k - 1) - 1) / stride + 1, where with ceil_mode the last window must start
// inside the input or the left padding.
int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dilation, bool ceil_mode) {
  const int64_t num = in + 2 * pad - dilation * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// The checked geometry of one 2-D pooling call on an (N, C, H, W) view.
struct PoolGeometry {
  Window2d w{};
  int64_t oh = 0, ow = 0;
};

void check_pool_input(const char* op, const Tensor& input) {
  LOOM_CHECK(input.defined(), op, ": input is an undefined tensor");
  LOOM_CHECK(is_floating_point(input.dtype()), op, ": expected a floating point input, got ", dtype_name(input.dtype()),
             " (shape ", shape_str(input.sizes()), ")");
  const int64_t d = input.dim();
  bool ok = d == 3 || d == 4;
  for (int64_t k = d - 3; ok && k < d; ++k) ok = input.sizes()[k] > 0;
  LOOM_CHECK(ok, op, ": expected a 3D (C, H, W) or 4D (N, C, H, W) input with non-zero C, H and W, got shape ",
             shape_str(input.sizes()));
}

PoolGeometry pool_geometry(const char* op, const Shape& sizes, IntArrayRef kernel_size, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  const auto [kh, kw] = pair_of(op, "kernel_size", kernel_size);
  const auto [sh, sw] = stride.empty() ? std::pair<int64_t, int64_t>{kh, kw} : pair_of(op, "stride", stride);
  const auto [ph, pw] = pair_of(op, "padding", padding);
  const auto [dh, dw] = pair_of(op, "dilation", dilation);
  LOOM_CHECK(kh > 0 && kw > 0, op, ": kernel_size must be greater than zero, got ", pair_str(kh, kw));
  LOOM_CHECK(sh > 0 && sw > 0, op, ": stride must be greater than zero, got ", pair_str(sh, sw));
  LOOM_CHECK(dh > 0 && dw > 0, op, ": dilation must be greater than zero, got ", pair_str(dh, dw));
  LOOM_CHECK(ph >= 0 && pw >= 0 && ph <= kh / 2 && pw <= kw / 2, op,
             ": pad should be non-negative and at most half of kernel size, got padding ", pair_str(ph, pw),
             " for kernel_size ", pair_str(kh, kw));
  const int64_t h = sizes[sizes.size() - 2], wd = sizes.back();
  PoolGeometry g;
  g.w = {kh, kw, sh, sw, ph, pw, dh, dw};
  g.oh = pool_out_size(h, kh, ph, sh, dh, ceil_mode);
  g.ow = pool_out_size(wd, kw, pw, sw, dw, ceil_mode);
  LOOM_CHECK(g.oh >= 1 && g.ow >= 1, op, ": given input of shape ", shape_str(sizes), ", kernel_size ",
             pair_str(kh, kw), ", stride ", pair_str(sh, sw), ", padding ", pair_str(ph, pw), " and dilation ",
             pair_str(dh, dw), ", the output size ", pair_str(g.oh, g.ow), " is too small");
  return g;
}

// With dilation a window can step over the whole input and see only
// padding; PyTorch then returns -inf with an index outside the plane. loom
// refuses the geometry instead.
void check_windows_see_input(const char* op, const Shape& sizes, const PoolGeometry& g) {
  auto check = [&](const char* dim, int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t d) {
    for (int64_t o = 0; o < out; ++o) {
      bool any = false;
      for (int64_t j = 0; j < k && !any; ++j) {
        const int64_t i = o * s - p + j * d;
        any = i >= 0 && i < in;
      }
      LOOM_CHECK(any, op, ": the window of output ", dim, " ", o, " covers only padding (input of shape ",
                 shape_str(sizes), ", kernel_size ", pair_str(g.w.kh, g.w.kw), ", padding ", pair_str(g.w.ph, g.w.pw),
                 ", dilation ", pair_str(g.w.dh, g.w.dw), ")");
    }
  };
  check("row", sizes[sizes.size() - 2], g.oh, g.w.kh, g.w.sh, g.w.ph, g.w.dh);
  check("column", sizes.back(), g.ow, g.w.kw, g.w.sw, g.w.pw, g.w.dw);
}


// ---- max pooling ----

Tensor max_pool2d_backward(const Tensor& grad, const Tensor& indices, const Shape& input_sizes);

// The gradient of max_pool2d: grad (N, C, OH, OW) scattered into zeros of
// input_sizes at the argmax positions. Its own gradient gathers from the same
// positions.
Tensor max_pool2d_backward(const Tensor& grad, const Tensor& indices, const Shape& input_sizes) {
  Tensor gc = grad.detach().contiguous();
  Tensor dx = make_tensor(input_sizes, grad.dtype(), grad.device());
  ops::launch(OpKind::MaxPool2dBackward, {&gc, &indices}, dx);
  auto node =
      autograd::make_node("MaxPool2DWithIndicesBackwardBackward", {grad}, [](FunctionNode& ctx, const TensorList& g) {
        Tensor ind = ctx.saved(0);
        const Shape& s = ind.sizes();
        Tensor h = g[0].reshape({s[0], s[1], -1});
        return TensorList{h.gather(2, ind.reshape({s[0], s[1], -1})).reshape(s)};
      });
  if (node) {
    autograd::set_history(dx, node);
    node->save(indices);
  }
  return dx;
}

// x (N, C, H, W), checked. Returns the output and, when asked for or needed
// by backward, the indices.
std::pair<Tensor, Tensor> max_pool2d_4d(const Tensor& x, const PoolGeometry& g, bool want_indices) {
  const Shape& s = x.sizes();
  Tensor y = make_tensor({s[0], s[1], g.oh, g.ow}, x.dtype(), x.device());
  const bool record = autograd::compute_requires_grad({&x});
  Tensor ind;
  if (want_indices || record) {
    ind = make_tensor(y.sizes(), kInt64, x.device());
    ops::launch(OpKind::MaxPool2d, {&x}, {&y, &ind}, {}, {}, g.w);
  } else {
    ops::launch(OpKind::MaxPool2d, {&x}, {&y}, {}, {}, g.w);
  }
  const Shape input_sizes = s;
  auto node =
      autograd::make_node("MaxPool2DWithIndicesBackward", {x}, [input_sizes](FunctionNode& ctx, const TensorList& gs) {
        return TensorList{max_pool2d_backward(gs[0], ctx.saved(0), input_sizes)};
      });
  if (node) {
    autograd::set_history(y, node);
    node->save(ind);
  }
  return {y, ind};
}

std::pair<Tensor, Tensor> max_pool2d_impl(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                                          IntArrayRef padding, IntArrayRef dilation, bool ceil_mode,
                                          bool want_indices) {
  const char* op = "max_pool2d";
  check_pool_input(op, input);
  const PoolGeometry g = pool_geometry(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
  check_windows_see_input(op, input.sizes(), g);
  if (input.dim() == 3) {
    auto [y, ind] = max_pool2d_4d(input.unsqueeze(0), g, want_indices);
    return {y.squeeze(0), ind.defined() ? ind.squeeze(0) : ind};
  }
  return max_pool2d_4d(input, g, want_indices);
}

// ---- average pooling ----

struct AvgParams {
  Window2d w;
  bool count_include_pad;
  int64_t divisor_override;  // 0: none
};

Tensor avg_pool2d_backward(const Tensor& grad, const Shape& input_sizes, const AvgParams& p);

// x (N, C, H, W) -> (N, C, oh, ow), the sizes already decided (ceil_mode).
Tensor avg_pool2d_4d(const Tensor& x, const AvgParams& p, int64_t oh, int64_t ow) {
  const Shape& s = x.sizes();
  Tensor y = make_tensor({s[0], s[1], oh, ow}, x.dtype(), x.device());
  ops::launch(OpKind::AvgPool2d, {&x}, y, {}, {p.count_include_pad ? 1 : 0, p.divisor_override}, p.w);
  const Shape input_sizes = s;
  auto node = autograd::make_node("AvgPool2DBackward", {x}, [input_sizes, p](FunctionNode&, const TensorList& gs) {
    return TensorList{avg_pool2d_backward(gs[0], input_sizes, p)};
  });
  if (node) autograd::set_history(y, node);
  return y;
}

// The transpose of avg_pool2d_4d: each output's gradient / divisor added over its window.
Tensor avg_pool2d_backward(const Tensor& grad, const Shape& input_sizes, const AvgParams& p) {
  Tensor gc = grad.detach().contiguous();
  Tensor dx = make_tensor(input_sizes, grad.dtype(), grad.device());
  ops::launch(OpKind::AvgPool2dBackward, {&gc}, dx, {},
              {p.count_include_pad ? 1 : 0, p.divisor_override}, p.w);
  const int64_t oh = grad.sizes()[2], ow = grad.sizes()[3];
  auto node = autograd::make_node("AvgPool2DBackwardBackward", {grad}, [p, oh, ow](FunctionNode&, const TensorList& g) {
    return TensorList{avg_pool2d_4d(g[0], p, oh, ow)};
  });
  if (node) autograd::set_history(dx, node);
  return dx;
}

}  // namespace

Tensor max_pool2d(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                  IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_impl(input, kernel_size, stride, padding, dilation, ceil_mode, false).first;
}

std::pair<Tensor, Tensor> max_pool2d_with_indices(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                                                  IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_impl(input, kernel_size, stride, padding, dilation, ceil_mode, true);
}

Tensor avg_pool2d(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
                  bool count_include_pad, std::optional<int64_t> divisor_override) {
  const char* op = "avg_pool2d";
  check_pool_input(op, input);
  LOOM_CHECK(!divisor_override || *divisor_override != 0, op, ": divisor must be not zero");
  const PoolGeometry g = pool_geometry(op, input.sizes(), kernel_size, stride, padding, {1}, ceil_mode);
  const AvgParams p{g.w, count_include_pad, divisor_override.value_or(0)};
  if (input.dim() == 3) return avg_pool2d_4d(input.unsqueeze(0), p, g.oh, g.ow).squeeze(0);
  return avg_pool2d_4d(input, p, g.oh, g.ow);
}

// Window i of a dim of size n spans [floor(i n / out), ceil((i + 1) n / out)).
// When both dims divide evenly that is avg_pool2d with kernel = stride = n /
// out; otherwise y = A_h x A_w^T with averaging matrices (exact weights
// 1 / window length), which matmul differentiates.
Tensor adaptive_avg_pool2d(const Tensor& input, IntArrayRef output_size) {
  const char* op = "adaptive_avg_pool2d";
  check_pool_input(op, input);
  const auto [oh, ow] = pair_of(op, "output_size", output_size);
  LOOM_CHECK(oh >= 1 && ow >= 1, op, ": output_size must be positive, got ", pair_str(oh, ow));
  const int64_t h = input.sizes()[input.dim() - 2], w = input.sizes().back();
  if (h % oh == 0 && w % ow == 0) return avg_pool2d(input, {h / oh, w / ow});
  auto averaging = [&](int64_t in, int64_t out) {
    std::vector<double> a(static_cast<size_t>(out * in), 0.0);
    for (int64_t i = 0; i < out; ++i) {
      const int64_t start = i * in / out, end = ((i + 1) * in + out - 1) / out;
      for (int64_t j = start; j < end; ++j) a[i * in + j] = 1.0 / static_cast<double>(end - start);
    }
    return tensor(a, TensorOptions(kFloat64).device(input.device())).reshape({out, in}).to(input.dtype());
  };
  return matmul(averaging(h, oh), matmul(input, averaging(w, ow).t()));
}

}  // namespace loom
