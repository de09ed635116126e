// Convolution: conv2d, conv1d, conv_transpose2d and conv2d_weight
// (primitives Conv2d, ConvTranspose2d, Conv2dWeight; kernels in
// src/backend/cpu/cpu_conv.cpp).
//
// Note [Three convolution primitives]
// A convolution y = conv(x, w) is bilinear, and so are its two gradients:
//   dx = conv_transpose(g, w)      (ConvTranspose2d: the adjoint in x)
//   dw = conv_weight(x, g)         (Conv2dWeight: the adjoint in w)
// Each of the three has the other two as its derivatives, for the same
// geometry (stride, padding, dilation, groups):
//   d conv_transpose(g, w)  = conv_transpose(dg, w) + conv_transpose(g, dw)
//     backward: g  <- conv(h, w),            w <- conv_weight(h, g)
//   d conv_weight(x, g)
//     backward: x  <- conv_transpose(g, h),  g <- conv(x, h)
// so backward of any order is these three kernels, and create_graph needs no
// special path. conv1d is conv2d with a height of 1; conv_transpose2d (the
// layer) is the ConvTranspose2d kernel with output_padding deciding the
// output size, plus a bias.
#include <algorithm>
#include <array>

#include "core/autocast.h"
#include "backend/window2d.h"
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

// A one- or two-element list as (height, width).
std::array<int64_t, 2> pair_of(const char* op, const char* what, IntArrayRef v) {
  LOOM_CHECK(v.size() == 1 || v.size() == 2, op, ": ", what, " must have one or two values, got ",
             shape_str(v.vec()));
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

struct Geometry {
  Window2d win;
  int64_t groups;
};

void check_float_tensor(const char* op, const char* what, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": ", what, " is an undefined tensor");
  LOOM_CHECK(is_floating_point(t.dtype()), op, ": expected a floating point ", what, ", got ", dtype_name(t.dtype()),
             " (shape ", shape_str(t.sizes()), ")");
}

Geometry make_geometry(const char* op, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                       IntArrayRef dilation, int64_t groups) {
  const auto s = pair_of(op, "stride", stride), p = pair_of(op, "padding", padding),
             d = pair_of(op, "dilation", dilation);
  LOOM_CHECK(s[0] > 0 && s[1] > 0, op, ": stride must be positive, got ", shape_str(stride.vec()));
  LOOM_CHECK(p[0] >= 0 && p[1] >= 0, op, ": padding must be non-negative, got ", shape_str(padding.vec()));
  LOOM_CHECK(d[0] > 0 && d[1] > 0, op, ": dilation must be positive, got ", shape_str(dilation.vec()));
  LOOM_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  return {{kernel[0], kernel[1], s[0], s[1], p[0], p[1], d[0], d[1]}, groups};
}

// Output size of one dim, or an error naming the op and the shapes.
int64_t out_size(const char* op, int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, const Tensor& x,
                 const Tensor& w) {
  const int64_t span = d * (k - 1) + 1;
  const int64_t o = (in + 2 * p - span) / s + 1;
  LOOM_CHECK(in + 2 * p >= span && o > 0, op, ": input of shape ", shape_str(x.sizes()),
             " is too small for weight of shape ", shape_str(w.sizes()), " (padded size ", in + 2 * p,
             " < dilated kernel size ", span, ")");
  return o;
}

// The raw kernels (no autograd): x, w, g already of one compute dtype.
Tensor run_conv(const Tensor& x, const Tensor& w, const Tensor& b, const Geometry& geo, int64_t oh, int64_t ow) {
  Tensor xc = x.contiguous(), wc = w.contiguous();
  Tensor y = make_tensor({x.sizes()[0], w.sizes()[0], oh, ow}, x.dtype(), x.device());
  ops::launch(OpKind::Conv2d, {&xc, &wc, &b}, y, {}, {}, ConvParams{geo.win, geo.groups});
  return y;
}

Tensor run_transpose(const Tensor& g, const Tensor& w, const Geometry& geo, const Shape& x_sizes) {
  Tensor gc = g.contiguous(), wc = w.contiguous();
  Tensor dx = make_tensor(x_sizes, g.dtype(), g.device());
  ops::launch(OpKind::ConvTranspose2d, {&gc, &wc}, dx, {}, {}, ConvParams{geo.win, geo.groups});
  return dx;
}

Tensor run_weight(const Tensor& x, const Tensor& g, const Geometry& geo, const Shape& w_sizes) {
  Tensor xc = x.contiguous(), gc = g.contiguous();
  Tensor dw = make_tensor(w_sizes, x.dtype(), x.device());
  ops::launch(OpKind::Conv2dWeight, {&xc, &gc}, dw, {}, {}, ConvParams{geo.win, geo.groups});
  return dw;
}

// The differentiable forms of the three primitives (Note [Three convolution
// primitives]); arguments already checked, 4-d, one compute dtype.
Tensor conv_fwd(const Tensor& x, const Tensor& w, const Tensor& b, const Geometry& geo);
Tensor conv_transpose_fwd(const Tensor& g, const Tensor& w, const Geometry& geo, const Shape& x_sizes);
Tensor conv_weight_fwd(const Tensor& x, const Tensor& g, const Geometry& geo, const Shape& w_sizes);

Tensor conv_fwd(const Tensor& x, const Tensor& w, const Tensor& b, const Geometry& geo) {
  const Window2d& v = geo.win;
  const int64_t oh = (x.sizes()[2] + 2 * v.ph - v.dh * (v.kh - 1) - 1) / v.sh + 1;
  const int64_t ow = (x.sizes()[3] + 2 * v.pw - v.dw * (v.kw - 1) - 1) / v.sw + 1;
  Tensor y = run_conv(x, w, b, geo, oh, ow);
  const Shape xs = x.sizes(), ws = w.sizes();
  auto node = autograd::make_node("Conv2dBackward", {x, w, b}, [geo, xs, ws](FunctionNode& ctx, const TensorList& g) {
    Tensor xs_t = ctx.saved(0), wt = ctx.saved(1);
    TensorList r(3);
    if (ctx.needs_input_grad(0)) r[0] = conv_transpose_fwd(g[0], wt, geo, xs);
    if (ctx.needs_input_grad(1)) r[1] = conv_weight_fwd(xs_t, g[0], geo, ws);
    // Over the contiguous (H, W) rows first, then the batch: two streaming
    // passes instead of one that strides across the batch.
    if (ctx.needs_input_grad(2)) r[2] = sum(sum(g[0], {2, 3}), {0});
    return r;
  });
  if (node) {
    autograd::set_history(y, node);
    node->save(x);
    node->save(w);
  }
  return y;
}

Tensor conv_transpose_fwd(const Tensor& g, const Tensor& w, const Geometry& geo, const Shape& x_sizes) {
  Tensor dx = run_transpose(g, w, geo, x_sizes);
  const Shape ws = w.sizes();
  auto node = autograd::make_node("ConvTranspose2dBackward", {g, w}, [geo, ws](FunctionNode& ctx, const TensorList& h) {
    Tensor gt = ctx.saved(0), wt = ctx.saved(1);
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = conv_fwd(h[0], wt, Tensor(), geo);
    if (ctx.needs_input_grad(1)) r[1] = conv_weight_fwd(h[0], gt, geo, ws);
    return r;
  });
  if (node) {
    autograd::set_history(dx, node);
    node->save(g);
    node->save(w);
  }
  return dx;
}

Tensor conv_weight_fwd(const Tensor& x, const Tensor& g, const Geometry& geo, const Shape& w_sizes) {
  Tensor dw = run_weight(x, g, geo, w_sizes);
  const Shape xs = x.sizes();
  auto node = autograd::make_node("Conv2dWeightBackward", {x, g}, [geo, xs](FunctionNode& ctx, const TensorList& h) {
    Tensor xt = ctx.saved(0), gt = ctx.saved(1);
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = conv_transpose_fwd(gt, h[0], geo, xs);
    if (ctx.needs_input_grad(1)) r[1] = conv_fwd(xt, h[0], Tensor(), geo);
    return r;
  });
  if (node) {
    autograd::set_history(dw, node);
    node->save(x);
    node->save(g);
  }
  return dw;
}

// Checks shared by conv2d and conv_transpose2d: x (N, C, H, W) or (C, H, W),
// w 4-d, bias (bias_len) or undefined, one dtype and device.
void check_conv_args(const char* op, const Tensor& input, const Tensor& weight, const Tensor& bias,
                     int64_t bias_len) {
  check_float_tensor(op, "input", input);
  check_float_tensor(op, "weight", weight);
  LOOM_CHECK(input.dim() == 3 || input.dim() == 4, op, ": expected a 3-d (unbatched) or 4-d (batched) input, got ",
             "shape ", shape_str(input.sizes()));
  LOOM_CHECK(weight.dim() == 4, op, ": expected a 4-d weight, got shape ", shape_str(weight.sizes()));
  LOOM_CHECK(input.dtype() == weight.dtype(), op, ": input (", dtype_name(input.dtype()), ") and weight (",
             dtype_name(weight.dtype()), ") must have the same dtype");
  std::vector<Tensor> devs{input, weight};
  if (bias.defined()) {
    check_float_tensor(op, "bias", bias);
    LOOM_CHECK(bias.dim() == 1 && bias.sizes()[0] == bias_len, op, ": expected bias of shape [", bias_len,
               "], got ", shape_str(bias.sizes()));
    LOOM_CHECK(bias.dtype() == input.dtype(), op, ": bias (", dtype_name(bias.dtype()), ") must have the input's dtype ",
               dtype_name(input.dtype()));
    devs.push_back(bias);
  }
  ops::check_same_device(op, devs);
}

}  // namespace

Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, IntArrayRef padding,
              IntArrayRef dilation, int64_t groups) {
  if (autocast::Region r{input, autocast::Policy::Low})
    return conv2d(r.cast(input), r.cast(weight), r.cast(bias), stride, padding, dilation, groups);
  const char* op = "conv2d";
  check_conv_args(op, input, weight, bias, weight.defined() && weight.dim() == 4 ? weight.sizes()[0] : 0);
  const Geometry geo = make_geometry(op, {weight.sizes()[2], weight.sizes()[3]}, stride, padding, dilation, groups);
  const bool batched = input.dim() == 4;
  const Tensor x4 = batched ? input : input.unsqueeze(0);
  const int64_t c = x4.sizes()[1], o = weight.sizes()[0];
  LOOM_CHECK(c % groups == 0 && o % groups == 0 && weight.sizes()[1] * groups == c, op, ": weight of shape ",
             shape_str(weight.sizes()), " with groups=", groups, " expects ", weight.sizes()[1] * groups,
             " input channels (and out channels divisible by groups), got input of shape ", shape_str(input.sizes()));
  const Window2d& v = geo.win;
  out_size(op, x4.sizes()[2], v.kh, v.sh, v.ph, v.dh, input, weight);
  out_size(op, x4.sizes()[3], v.kw, v.sw, v.pw, v.dw, input, weight);
  const DType ct = compute_dtype(input.dtype());
  Tensor y = conv_fwd(x4.to(ct), weight.to(ct), bias.defined() ? bias.to(ct) : Tensor(), geo).to(input.dtype());
  return batched ? y : y.squeeze(0);
}

Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, ConvPadding padding,
              IntArrayRef dilation, int64_t groups) {
  if (autocast::Region r{input, autocast::Policy::Low})
    return conv2d(r.cast(input), r.cast(weight), r.cast(bias), stride, padding, dilation, groups);
  if (padding == ConvPadding::Valid) return conv2d(input, weight, bias, stride, {0}, dilation, groups);
  const char* op = "conv2d";
  check_conv_args(op, input, weight, bias, weight.defined() && weight.dim() == 4 ? weight.sizes()[0] : 0);
  const auto s = pair_of(op, "stride", stride), d = pair_of(op, "dilation", dilation);
  LOOM_CHECK(s[0] == 1 && s[1] == 1, op, ": padding='same' is not supported for strided convolutions (stride ",
             shape_str(stride.vec()), ")");
  // Total padding d (k - 1) per dim; the odd one goes to the right / bottom.
  const int64_t th = d[0] * (weight.sizes()[2] - 1), tw = d[1] * (weight.sizes()[3] - 1);
  Tensor x = input;
  if (th % 2 != 0 || tw % 2 != 0) x = pad(x, {0, tw % 2, 0, th % 2});
  return conv2d(x, weight, bias, stride, {th / 2, tw / 2}, dilation, groups);
}

Tensor conv1d(const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, IntArrayRef padding,
              IntArrayRef dilation, int64_t groups) {
  if (autocast::Region r{input, autocast::Policy::Low})
    return conv1d(r.cast(input), r.cast(weight), r.cast(bias), stride, padding, dilation, groups);
  const char* op = "conv1d";
  check_float_tensor(op, "input", input);
  check_float_tensor(op, "weight", weight);
  LOOM_CHECK(input.dim() == 2 || input.dim() == 3, op, ": expected a 2-d (unbatched) or 3-d (batched) input, got ",
             "shape ", shape_str(input.sizes()));
  LOOM_CHECK(weight.dim() == 3, op, ": expected a 3-d weight (out, in / groups, k), got shape ",
             shape_str(weight.sizes()));
  for (const IntArrayRef* a : {&stride, &padding, &dilation})
    LOOM_CHECK(a->size() == 1, op, ": stride, padding and dilation take one value each, got ", shape_str(a->vec()));
  const int64_t hd = input.dim() - 1;  // the height dim to insert, before L
  Tensor y = conv2d(input.unsqueeze(hd), weight.unsqueeze(2), bias, {1, stride[0]}, {0, padding[0]},
                    {1, dilation[0]}, groups);
  return y.squeeze(hd);
}

Tensor conv1d(const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, ConvPadding padding,
              IntArrayRef dilation, int64_t groups) {
  if (autocast::Region r{input, autocast::Policy::Low})
    return conv1d(r.cast(input), r.cast(weight), r.cast(bias), stride, padding, dilation, groups);
  if (padding == ConvPadding::Valid) return conv1d(input, weight, bias, stride, {0}, dilation, groups);
  const char* op = "conv1d";
  check_float_tensor(op, "input", input);
  check_float_tensor(op, "weight", weight);
  LOOM_CHECK(weight.dim() == 3, op, ": expected a 3-d weight (out, in / groups, k), got shape ",
             shape_str(weight.sizes()));
  LOOM_CHECK(stride.size() == 1 && stride[0] == 1, op,
             ": padding='same' is not supported for strided convolutions (stride ", shape_str(stride.vec()), ")");
  LOOM_CHECK(dilation.size() == 1, op, ": dilation takes one value, got ", shape_str(dilation.vec()));
  const int64_t t = dilation[0] * (weight.sizes()[2] - 1);
  Tensor x = t % 2 != 0 ? pad(input, {0, 1}) : input;
  return conv1d(x, weight, bias, stride, {t / 2}, dilation, groups);
}

Tensor conv_transpose2d(const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride,
                        IntArrayRef padding, IntArrayRef output_padding, int64_t groups, IntArrayRef dilation) {
  if (autocast::Region r{input, autocast::Policy::Low})
    return conv_transpose2d(r.cast(input), r.cast(weight), r.cast(bias), stride, padding, output_padding, groups,
        dilation);
  const char* op = "conv_transpose2d";
  // weight (C_in, C_out / groups, KH, KW): as a convolution's weight, C_in is its out channels.
  check_conv_args(op, input, weight, bias,
                  weight.defined() && weight.dim() == 4 ? weight.sizes()[1] * std::max<int64_t>(groups, 1) : 0);
  const Geometry geo = make_geometry(op, {weight.sizes()[2], weight.sizes()[3]}, stride, padding, dilation, groups);
  const auto op_pad = pair_of(op, "output_padding", output_padding);
  const Window2d& v = geo.win;
  LOOM_CHECK(op_pad[0] >= 0 && op_pad[1] >= 0 && (op_pad[0] < v.sh || op_pad[0] < v.dh) &&
                 (op_pad[1] < v.sw || op_pad[1] < v.dw),
             op, ": output padding must be smaller than either stride or dilation, got output_padding ",
             shape_str(output_padding.vec()), ", stride ", shape_str(stride.vec()), ", dilation ",
             shape_str(dilation.vec()));
  const bool batched = input.dim() == 4;
  const Tensor g4 = batched ? input : input.unsqueeze(0);
  const int64_t cin = g4.sizes()[1];
  LOOM_CHECK(weight.sizes()[0] == cin && cin % groups == 0, op, ": weight of shape ", shape_str(weight.sizes()),
             " with groups=", groups, " expects ", weight.sizes()[0],
             " input channels (divisible by groups), got input of shape ", shape_str(input.sizes()));
  const int64_t h = (g4.sizes()[2] - 1) * v.sh - 2 * v.ph + v.dh * (v.kh - 1) + op_pad[0] + 1;
  const int64_t w = (g4.sizes()[3] - 1) * v.sw - 2 * v.pw + v.dw * (v.kw - 1) + op_pad[1] + 1;
  LOOM_CHECK(h > 0 && w > 0, op, ": input of shape ", shape_str(input.sizes()), " with weight of shape ",
             shape_str(weight.sizes()), " gives an empty output (", h, " x ", w, ")");
  const DType ct = compute_dtype(input.dtype());
  const Shape out_sizes{g4.sizes()[0], weight.sizes()[1] * groups, h, w};
  Tensor y = conv_transpose_fwd(g4.to(ct), weight.to(ct), geo, out_sizes);
  if (bias.defined()) y = y + bias.to(ct).view({1, out_sizes[1], 1, 1});
  y = y.to(input.dtype());
  return batched ? y : y.squeeze(0);
}

Tensor conv2d_weight(const Tensor& input, IntArrayRef weight_size, const Tensor& grad_output, IntArrayRef stride,
                     IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "conv2d_weight";
  check_float_tensor(op, "input", input);
  check_float_tensor(op, "grad_output", grad_output);
  LOOM_CHECK(input.dim() == 4 && grad_output.dim() == 4 && weight_size.size() == 4, op,
             ": expected 4-d input and grad_output and a 4-element weight_size, got ", shape_str(input.sizes()), ", ",
             shape_str(grad_output.sizes()), " and ", shape_str(weight_size.vec()));
  LOOM_CHECK(input.dtype() == grad_output.dtype(), op, ": input and grad_output must have the same dtype, got ",
             dtype_name(input.dtype()), " and ", dtype_name(grad_output.dtype()));
  ops::check_same_device(op, {input, grad_output});
  const Geometry geo = make_geometry(op, {weight_size[2], weight_size[3]}, stride, padding, dilation, groups);
  const Window2d& v = geo.win;
  const int64_t o = weight_size[0];
  LOOM_CHECK(o % groups == 0 && weight_size[1] * groups == input.sizes()[1] && grad_output.sizes()[1] == o &&
                 grad_output.sizes()[0] == input.sizes()[0],
             op, ": weight_size ", shape_str(weight_size.vec()), " with groups=", groups,
             " does not fit input of shape ", shape_str(input.sizes()), " and grad_output of shape ",
             shape_str(grad_output.sizes()));
  LOOM_CHECK(weight_size[2] > 0 && weight_size[3] > 0, op, ": kernel size must be positive, got ",
             shape_str(weight_size.vec()));
  const Tensor wdummy = make_tensor(weight_size.vec(), input.dtype(), input.device());
  const int64_t oh = out_size(op, input.sizes()[2], v.kh, v.sh, v.ph, v.dh, input, wdummy);
  const int64_t ow = out_size(op, input.sizes()[3], v.kw, v.sw, v.pw, v.dw, input, wdummy);
  LOOM_CHECK(grad_output.sizes()[2] == oh && grad_output.sizes()[3] == ow, op, ": grad_output of shape ",
             shape_str(grad_output.sizes()), " does not match the convolution's output size (", oh, ", ", ow, ")");
  const DType ct = compute_dtype(input.dtype());
  return conv_weight_fwd(input.to(ct), grad_output.to(ct), geo, weight_size.vec()).to(input.dtype());
}

}  // namespace loom
