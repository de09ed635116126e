"""Every op of include/loom/ops.h from Python (loom.<name>, bound in
python/src/ops.cpp), against PyTorch's values on random inputs.

One table drives it: each row names an op, a loom callable, a torch callable
and the inputs (odd sizes; some non-contiguous: a transposed or strided view
of a larger tensor, the same view taken on both sides). Each row runs
  - in float64: forward values, then the gradients of sum(out * w) (w random)
    with respect to every float input, loom's backward against torch's;
  - in float32: forward values (PyTorch's default dtype, loom's fast paths).
Integer and bool inputs keep their dtype. Factories and random ops, whose
values are loom's own stream, are checked for shape, dtype and range.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import loom


# ---- conversion ----

def to_loom(t):
    return loom.tensor(t.detach().numpy())


def to_torch(x):
    return torch.from_numpy(x.detach().numpy())


def dtype_name(d):
    return str(d).split(".")[-1]


def flat(out):
    """The tensors of an op's result: a tensor, or a (nested) tuple/list of them."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    return [out]


# ---- inputs ----

class Arg:
    """One tensor input: drawn as `shape` (float64, or int64/bool for those
    kinds), then `view` (the same on both sides) turns it into what the op
    gets. Gradients are taken with respect to the drawn tensor."""

    def __init__(self, *shape, kind="randn", view=None, high=None, grad=True):
        self.shape, self.kind, self.view, self.high = shape, kind, view, high
        self.grad = grad and kind in ("randn", "pos", "unit", "nan")

    def draw(self, rng):
        s = self.shape
        if self.kind == "randn":
            a = rng.standard_normal(s)
        elif self.kind == "pos":  # away from the poles of log, sqrt, reciprocal
            a = rng.uniform(0.5, 2.0, s)
        elif self.kind == "unit":
            a = rng.uniform(-0.9, 0.9, s)
        elif self.kind == "nan":
            a = rng.standard_normal(s)
            a.flat[:: 3] = np.nan
        elif self.kind == "int":
            a = rng.integers(0, self.high, s, dtype=np.int64)
        elif self.kind == "sint":  # signed ints, for integer arithmetic
            a = rng.integers(-9, 10, s, dtype=np.int64)
        elif self.kind == "bool":
            a = rng.random(s) < 0.5
        elif self.kind == "mask":  # an attention mask: each query sees key 0 at least
            a = rng.random(s) < 0.5
            a[..., 0] = True
        else:
            raise ValueError(self.kind)
        return torch.from_numpy(np.asarray(a))


def T(x):
    """A transposed view (non-contiguous)."""
    return x.transpose(0, -1)


def S(x):
    """A strided view: every other element of the last dim."""
    return x[..., ::2]


# ---- the table ----

def case(name, lfn, tfn, *args):
    return pytest.param(lfn, tfn, args, id=name)


def sdpa_ref(q, k, v, attn_mask=None, is_causal=False, scale=None):
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    w = q @ k.transpose(-2, -1) * s
    if is_causal:
        tq, tk = w.shape[-2:]
        w = w.masked_fill(torch.ones(tq, tk, dtype=torch.bool).triu(1), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            w = w.masked_fill(~attn_mask, float("-inf"))
        else:
            w = w + attn_mask
    return torch.softmax(w, -1) @ v


def bn_ref(x, w=None, b=None, eps=1e-5):
    return F.batch_norm(x, None, None, w, b, training=True, eps=eps)


def bn_stats_ref(x, w=None, b=None, eps=1e-5):
    dims = [d for d in range(x.dim()) if d != 1]
    return (bn_ref(x, w, b, eps), x.mean(dims).detach(), x.var(dims, unbiased=False).detach())


B = Arg(3, 1, 5)  # broadcasts against (4, 5)
UNARY = [
    ("neg", loom.neg, torch.neg, "randn"),
    ("negative", loom.negative, torch.negative, "randn"),
    ("exp", loom.exp, torch.exp, "randn"),
    ("log", loom.log, torch.log, "pos"),
    ("log1p", loom.log1p, torch.log1p, "unit"),
    ("sqrt", loom.sqrt, torch.sqrt, "pos"),
    ("rsqrt", loom.rsqrt, torch.rsqrt, "pos"),
    ("abs", loom.abs, torch.abs, "randn"),
    ("sign", loom.sign, torch.sign, "randn"),
    ("sin", loom.sin, torch.sin, "randn"),
    ("cos", loom.cos, torch.cos, "randn"),
    ("tanh", loom.tanh, torch.tanh, "randn"),
    ("erf", loom.erf, torch.erf, "randn"),
    ("sigmoid", loom.sigmoid, torch.sigmoid, "randn"),
    ("relu", loom.relu, torch.relu, "randn"),
    ("silu", loom.silu, F.silu, "randn"),
    ("square", loom.square, torch.square, "randn"),
    ("reciprocal", loom.reciprocal, torch.reciprocal, "pos"),
]

CASES = [
    *[case(n, lf, tf, Arg(5, 7, kind=k, view=T)) for n, lf, tf, k in UNARY],
    case("leaky_relu", lambda x: loom.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2), Arg(4, 7)),
    case("leaky_relu_default", loom.leaky_relu, F.leaky_relu, Arg(4, 7)),
    case("elu", lambda x: loom.elu(x, alpha=1.5), lambda x: F.elu(x, alpha=1.5), Arg(4, 7, view=T)),
    case("gelu", loom.gelu, F.gelu, Arg(4, 7)),
    case("gelu_tanh", lambda x: loom.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
         Arg(4, 7)),
    case("softplus", loom.softplus, F.softplus, Arg(4, 7)),
    # beta * x crosses the threshold for some elements: both branches.
    case("softplus_beta", lambda x: loom.softplus(x, beta=2.0, threshold=1.0),
         lambda x: F.softplus(x, beta=2.0, threshold=1.0), Arg(4, 7)),
    case("clamp", lambda x: loom.clamp(x, -0.5, 0.7), lambda x: torch.clamp(x, -0.5, 0.7), Arg(4, 7, view=T)),
    case("clamp_min", lambda x: loom.clamp(x, min=-0.3), lambda x: torch.clamp(x, min=-0.3), Arg(4, 7)),
    case("clip_max", lambda x: loom.clip(x, max=0.3), lambda x: torch.clip(x, max=0.3), Arg(4, 7)),
    case("isnan", loom.isnan, torch.isnan, Arg(4, 7, kind="nan")),
    case("logical_not", loom.logical_not, torch.logical_not, Arg(4, 7, kind="bool")),
    # binary, broadcasting, one operand non-contiguous
    case("add", loom.add, torch.add, Arg(5, 1, 3, view=T), Arg(4, 5)),
    case("add_alpha", lambda a, b: loom.add(a, b, alpha=2.5), lambda a, b: torch.add(a, b, alpha=2.5), B, Arg(4, 5)),
    case("add_number", lambda a: loom.add(a, 2), lambda a: torch.add(a, 2), Arg(4, 5)),
    case("sub", loom.sub, torch.sub, B, Arg(5, 4, view=T)),
    case("sub_alpha", lambda a, b: loom.sub(a, b, alpha=0.5), lambda a, b: torch.sub(a, b, alpha=0.5), B, Arg(4, 5)),
    case("mul", loom.mul, torch.mul, B, Arg(4, 10, view=S)),
    case("mul_number", lambda a: loom.mul(a, 1.5), lambda a: torch.mul(a, 1.5), Arg(4, 5)),
    case("div", loom.div, torch.div, B, Arg(4, 5, kind="pos")),
    case("rdiv_number", lambda a: loom.div(3, a), lambda a: torch.div(3, a), Arg(4, 5, kind="pos")),
    case("pow", loom.pow, torch.pow, Arg(3, 1, 5, kind="pos"), Arg(4, 5)),
    case("pow_scalar_exp", lambda a: loom.pow(a, 2.5), lambda a: torch.pow(a, 2.5), Arg(4, 5, kind="pos")),
    case("pow_int_exp", lambda a: loom.pow(a, 3), lambda a: torch.pow(a, 3), Arg(4, 5, view=T)),
    case("pow_scalar_exp_third", lambda a: loom.pow(a, 1 / 3), lambda a: torch.pow(a, 1 / 3),
         Arg(4, 5, kind="pos")),
    case("pow_scalar_base", lambda a: loom.pow(2.0, a), lambda a: torch.pow(2.0, a), Arg(4, 5)),
    case("maximum", loom.maximum, torch.maximum, B, Arg(4, 5)),
    case("minimum", loom.minimum, torch.minimum, B, Arg(5, 4, view=T)),
    case("eq", loom.eq, torch.eq, Arg(3, 1, 5, kind="sint"), Arg(4, 5, kind="sint")),
    case("ne", loom.ne, torch.ne, Arg(3, 1, 5, kind="sint"), Arg(4, 5, kind="sint")),
    case("lt", loom.lt, torch.lt, B, Arg(4, 5)),
    case("le", loom.le, torch.le, Arg(3, 1, 5, kind="sint"), Arg(4, 5, kind="sint")),
    case("gt", loom.gt, torch.gt, B, Arg(5, 4, view=T)),
    case("ge", loom.ge, torch.ge, B, Arg(4, 5)),
    case("gt_number", lambda a: loom.gt(a, 0.25), lambda a: torch.gt(a, 0.25), Arg(4, 5)),
    case("logical_and", loom.logical_and, torch.logical_and, Arg(3, 1, 5, kind="bool"), Arg(4, 5, kind="bool")),
    case("logical_or", loom.logical_or, torch.logical_or, Arg(3, 1, 5, kind="bool"), Arg(4, 5, kind="bool")),
    case("int_add", loom.add, torch.add, Arg(3, 1, 5, kind="sint"), Arg(4, 5, kind="sint")),
    case("int_mul", loom.mul, torch.mul, Arg(5, 4, kind="sint", view=T), Arg(4, 5, kind="sint")),
    case("int_div", loom.div, torch.div, Arg(4, 5, kind="sint"), Arg(4, 5, kind="int", high=5, view=lambda x: x + 1)),
    case("int_times_float", lambda a: loom.mul(a, 2.5), lambda a: torch.mul(a, 2.5), Arg(4, 5, kind="sint")),
    case("int_abs_neg_sign", lambda a: (loom.abs(a), loom.neg(a), loom.sign(a)),
         lambda a: (torch.abs(a), torch.neg(a), torch.sign(a)), Arg(4, 5, kind="sint")),
    case("int_maximum", loom.maximum, torch.maximum, Arg(4, 5, kind="sint"), Arg(4, 5, kind="sint")),
    case("where", loom.where, torch.where, Arg(4, 5, kind="bool"), B, Arg(4, 5)),
    case("where_number", lambda c, a: loom.where(c, a, 0.0), lambda c, a: torch.where(c, a, 0.0),
         Arg(4, 5, kind="bool"), Arg(5, 4, view=T)),
    case("masked_fill", lambda x, m: loom.masked_fill(x, m, -2.0), lambda x, m: torch.masked_fill(x, m, -2.0),
         Arg(4, 5), Arg(1, 5, kind="bool")),
    case("masked_fill_tensor_value", loom.masked_fill, torch.masked_fill, Arg(4, 5),
         Arg(4, 1, kind="bool"), Arg()),
    case("threshold_backward", lambda g, x: loom.threshold_backward(g, x, 0.1),
         lambda g, x: torch.where(x > 0.1, g, torch.zeros_like(g)), Arg(4, 5), Arg(5, 4, view=T)),
    # reductions
    case("sum", loom.sum, torch.sum, Arg(5, 4, 3, view=T)),
    case("sum_dims", lambda x: loom.sum(x, (0, 2)), lambda x: torch.sum(x, (0, 2)), Arg(3, 4, 5)),
    case("sum_keepdim", lambda x: loom.sum(x, dim=1, keepdim=True), lambda x: torch.sum(x, dim=1, keepdim=True),
         Arg(3, 4, 5, view=T)),
    case("sum_neg_dim", lambda x: loom.sum(x, -1), lambda x: torch.sum(x, -1), Arg(3, 4, 5)),
    case("sum_int", lambda x: loom.sum(x, 1), lambda x: torch.sum(x, 1), Arg(3, 4, kind="sint")),
    case("sum_bool", loom.sum, torch.sum, Arg(3, 4, kind="bool")),
    case("sum_dtype", lambda x: loom.sum(x, dtype=loom.float64), lambda x: torch.sum(x, dtype=torch.float64),
         Arg(3, 4, kind="sint")),
    case("mean", loom.mean, torch.mean, Arg(5, 3, view=T)),
    case("mean_dims", lambda x: loom.mean(x, [0, 2], keepdim=True), lambda x: torch.mean(x, [0, 2], keepdim=True),
         Arg(3, 4, 5)),
    case("prod", loom.prod, torch.prod, Arg(3, 4, kind="unit")),
    case("prod_dim", lambda x: loom.prod(x, 1, keepdim=True), lambda x: torch.prod(x, 1, keepdim=True),
         Arg(3, 5, view=T)),
    case("amax", lambda x: loom.amax(x, (0, 2)), lambda x: torch.amax(x, (0, 2)), Arg(3, 4, 5)),
    case("amax_all", loom.amax, torch.amax, Arg(3, 4, 5)),
    case("amin", lambda x: loom.amin(x, -1, True), lambda x: torch.amin(x, -1, True), Arg(3, 4, 5, view=T)),
    case("max_all", loom.max, torch.max, Arg(3, 4, 5)),
    case("min_all", loom.min, torch.min, Arg(5, 4, view=T)),
    case("max_dim", lambda x: loom.max(x, 1), lambda x: torch.max(x, 1), Arg(3, 4, 5)),
    case("max_dim_keepdim", lambda x: loom.max(x, dim=0, keepdim=True), lambda x: torch.max(x, dim=0, keepdim=True),
         Arg(5, 4, view=T)),
    case("min_dim", lambda x: loom.min(x, -1), lambda x: torch.min(x, -1), Arg(3, 4, 5)),
    case("max_binary", loom.max, torch.max, Arg(4, 5), Arg(4, 5)),
    case("min_binary", loom.min, torch.min, Arg(4, 5), Arg(4, 5)),
    case("argmax", loom.argmax, torch.argmax, Arg(3, 4, 5)),
    case("argmax_dim", lambda x: loom.argmax(x, 1, keepdim=True), lambda x: torch.argmax(x, 1, keepdim=True),
         Arg(3, 4, 5, view=T)),
    case("argmin_dim", lambda x: loom.argmin(x, dim=-1), lambda x: torch.argmin(x, dim=-1), Arg(3, 4, 5)),
    case("argmin", loom.argmin, torch.argmin, Arg(3, 4, 5)),
    case("var", loom.var, torch.var, Arg(4, 7, view=T)),
    case("var_dim_unbiased", lambda x: loom.var(x, 1, unbiased=False), lambda x: torch.var(x, 1, unbiased=False),
         Arg(4, 7)),
    case("var_correction", lambda x: loom.var(x, (0, 1), correction=0, keepdim=True),
         lambda x: torch.var(x, (0, 1), correction=0, keepdim=True), Arg(3, 4, 5)),
    case("std", lambda x: loom.std(x, 0), lambda x: torch.std(x, 0), Arg(4, 7, view=T)),
    case("std_keepdim", lambda x: loom.std(x, -1, keepdim=True), lambda x: torch.std(x, -1, keepdim=True),
         Arg(4, 7)),
    case("norm", loom.norm, torch.norm, Arg(4, 7, view=T)),
    case("norm_p1_dim", lambda x: loom.norm(x, 1, 1), lambda x: torch.norm(x, 1, 1), Arg(4, 7)),
    case("norm_p3_keepdim", lambda x: loom.norm(x, p=3, dim=0, keepdim=True),
         lambda x: torch.norm(x, p=3, dim=0, keepdim=True), Arg(4, 7)),
    case("logsumexp", lambda x: loom.logsumexp(x, 1), lambda x: torch.logsumexp(x, 1), Arg(4, 7, view=T)),
    case("logsumexp_dims", lambda x: loom.logsumexp(x, (0, 2), keepdim=True),
         lambda x: torch.logsumexp(x, (0, 2), keepdim=True), Arg(3, 4, 5)),
    case("cumsum", lambda x: loom.cumsum(x, 1), lambda x: torch.cumsum(x, 1), Arg(4, 7, view=T)),
    case("cumsum_int", lambda x: loom.cumsum(x, 0), lambda x: torch.cumsum(x, 0), Arg(4, 7, kind="sint")),
    case("softmax", lambda x: loom.softmax(x, -1), lambda x: torch.softmax(x, -1), Arg(3, 4, 7)),
    case("softmax_dim0", lambda x: loom.softmax(x, 0), lambda x: torch.softmax(x, 0), Arg(7, 5, view=T)),
    case("softmax_dtype", lambda x: loom.softmax(x, 1, dtype=loom.float64),
         lambda x: torch.softmax(x, 1, dtype=torch.float64), Arg(3, 7)),
    case("log_softmax", lambda x: loom.log_softmax(x, 1), lambda x: torch.log_softmax(x, 1), Arg(3, 7, 4, view=T)),
    case("softmax_backward", lambda g, y: loom.softmax_backward(g, y, 1),
         lambda g, y: y * (g - (g * y).sum(1, keepdim=True)), Arg(3, 7), Arg(7, 3, view=T)),
    case("log_softmax_backward", lambda g, y: loom.log_softmax_backward(g, y, -1),
         lambda g, y: g - y.exp() * g.sum(-1, keepdim=True), Arg(3, 7), Arg(3, 7)),
    case("layer_norm", lambda x, w, b: loom.layer_norm(x, (5,), w, b), lambda x, w, b: F.layer_norm(x, (5,), w, b),
         Arg(3, 4, 5), Arg(5), Arg(5)),
    case("layer_norm_2d_noaffine", lambda x: loom.layer_norm(x, [4, 3], eps=1e-3),
         lambda x: F.layer_norm(x, [4, 3], eps=1e-3), Arg(3, 4, 2, view=T)),
    case("cross_entropy_per_row", lambda x, t: loom.cross_entropy_per_row(x, t),
         lambda x, t: F.cross_entropy(x, t, reduction="none"), Arg(6, 5), Arg(6, kind="int", high=5)),
    case("cross_entropy_smooth_ignore",
         lambda x, t: loom.cross_entropy_per_row(x, t, label_smoothing=0.2, ignore_index=2),
         lambda x, t: F.cross_entropy(x, t, reduction="none", label_smoothing=0.2, ignore_index=2),
         Arg(5, 6, view=T), Arg(6, kind="int", high=5)),
    # linear algebra
    case("matmul_2d", loom.matmul, torch.matmul, Arg(3, 5), Arg(7, 5, view=T)),
    case("matmul_1d_1d", loom.matmul, torch.matmul, Arg(5), Arg(5)),
    case("matmul_2d_1d", loom.matmul, torch.matmul, Arg(3, 5), Arg(5)),
    case("matmul_1d_2d", loom.matmul, torch.matmul, Arg(5), Arg(5, 3)),
    case("matmul_batched_broadcast", loom.matmul, torch.matmul, Arg(2, 1, 3, 4), Arg(5, 4, 6)),
    case("matmul_1d_batched", loom.matmul, torch.matmul, Arg(4), Arg(2, 4, 3)),
    case("matmul_operator", lambda a, b: a @ b, lambda a, b: a @ b, Arg(3, 4), Arg(2, 4, 5)),
    case("mm", loom.mm, torch.mm, Arg(5, 3, view=T), Arg(5, 4)),
    case("bmm", loom.bmm, torch.bmm, Arg(2, 3, 5), Arg(2, 5, 4)),
    case("linear", loom.linear, F.linear, Arg(2, 3, 5), Arg(4, 5), Arg(4)),
    case("linear_nobias", loom.linear, F.linear, Arg(5, 3, view=T), Arg(4, 5)),
    case("linear_relu", lambda x, w, b: loom.linear(x, w, b, activation="relu"),
         lambda x, w, b: F.relu(F.linear(x, w, b)), Arg(6, 5), Arg(4, 5), Arg(4)),
    case("linear_gelu", lambda x, w, b: loom.linear(x, w, b, activation="gelu"),
         lambda x, w, b: F.gelu(F.linear(x, w, b)), Arg(6, 5), Arg(4, 5), Arg(4)),
    case("linear_gelu_tanh", lambda x, w: loom.linear(x, w, activation="gelu_tanh"),
         lambda x, w: F.gelu(F.linear(x, w), approximate="tanh"), Arg(6, 5), Arg(5, 4, view=T)),
    # convolution and pooling
    case("conv2d", loom.conv2d, F.conv2d, Arg(2, 3, 7, 6), Arg(4, 3, 3, 2), Arg(4)),
    case("conv2d_strided", lambda x, w, b: loom.conv2d(x, w, b, (2, 1), (1, 2), (1, 2), 2),
         lambda x, w, b: F.conv2d(x, w, b, (2, 1), (1, 2), (1, 2), 2), Arg(2, 4, 9, 8), Arg(6, 2, 3, 3), Arg(6)),
    case("conv2d_noncontig", lambda x, w: loom.conv2d(x, w, stride=2, padding=1),
         lambda x, w: F.conv2d(x, w, stride=2, padding=1), Arg(7, 6, 3, 2, view=lambda x: x.permute(3, 2, 0, 1)),
         Arg(4, 3, 3, 3)),
    case("conv2d_same", lambda x, w: loom.conv2d(x, w, padding="same", dilation=2),
         lambda x, w: F.conv2d(x, w, padding="same", dilation=2), Arg(1, 2, 7, 6), Arg(3, 2, 2, 3)),
    case("conv2d_valid_unbatched", lambda x, w: loom.conv2d(x, w, padding="valid"),
         lambda x, w: F.conv2d(x, w, padding="valid"), Arg(2, 7, 6), Arg(3, 2, 3, 3)),
    case("conv1d", lambda x, w, b: loom.conv1d(x, w, b, 2, 1), lambda x, w, b: F.conv1d(x, w, b, 2, 1),
         Arg(2, 3, 11), Arg(5, 3, 3), Arg(5)),
    case("conv1d_groups_dilation", lambda x, w: loom.conv1d(x, w, dilation=2, groups=3, padding="same"),
         lambda x, w: F.conv1d(x, w, dilation=2, groups=3, padding="same"), Arg(2, 6, 9), Arg(3, 2, 3)),
    case("conv1d_unbatched", loom.conv1d, F.conv1d, Arg(9, 3, view=T), Arg(4, 3, 2)),
    case("conv_transpose2d", loom.conv_transpose2d, F.conv_transpose2d, Arg(2, 3, 5, 4), Arg(3, 2, 3, 2), Arg(2)),
    case("conv_transpose2d_strided",
         lambda x, w, b: loom.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2, dilation=1),
         lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2, dilation=1),
         Arg(2, 4, 5, 3), Arg(4, 3, 3, 3), Arg(6)),
    case("conv_transpose2d_dilation", lambda x, w: loom.conv_transpose2d(x, w, stride=(1, 2), dilation=(2, 1)),
         lambda x, w: F.conv_transpose2d(x, w, stride=(1, 2), dilation=(2, 1)), Arg(1, 2, 4, 5), Arg(2, 3, 2, 3)),
    case("conv2d_weight", lambda x, g: loom.conv2d_weight(x, (4, 3, 3, 2), g, stride=2, padding=1),
         lambda x, g: torch.nn.grad.conv2d_weight(x, (4, 3, 3, 2), g, stride=2, padding=1),
         Arg(2, 3, 7, 6), Arg(2, 4, 4, 4)),
    case("max_pool2d", lambda x: loom.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), Arg(2, 3, 9, 8)),
    case("max_pool2d_ceil_dilation", lambda x: loom.max_pool2d(x, (2, 3), dilation=(2, 1), ceil_mode=True),
         lambda x: F.max_pool2d(x, (2, 3), dilation=(2, 1), ceil_mode=True), Arg(8, 9, 3, 2, view=T)),
    case("max_pool2d_indices", lambda x: loom.max_pool2d(x, 2, return_indices=True),
         lambda x: F.max_pool2d(x, 2, return_indices=True), Arg(3, 7, 5)),
    case("max_pool2d_with_indices", lambda x: loom.max_pool2d_with_indices(x, 3, 2, padding=1, ceil_mode=True),
         lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True, return_indices=True), Arg(2, 2, 8, 7)),
    case("avg_pool2d", lambda x: loom.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1), Arg(2, 3, 9, 8)),
    case("avg_pool2d_exclude_pad_ceil",
         lambda x: loom.avg_pool2d(x, (3, 2), (2, 2), (1, 1), ceil_mode=True, count_include_pad=False),
         lambda x: F.avg_pool2d(x, (3, 2), (2, 2), (1, 1), ceil_mode=True, count_include_pad=False),
         Arg(7, 8, 3, 2, view=T)),
    case("avg_pool2d_divisor", lambda x: loom.avg_pool2d(x, 2, divisor_override=3),
         lambda x: F.avg_pool2d(x, 2, divisor_override=3), Arg(3, 7, 5)),
    case("adaptive_avg_pool2d", lambda x: loom.adaptive_avg_pool2d(x, (3, 4)),
         lambda x: F.adaptive_avg_pool2d(x, (3, 4)), Arg(2, 3, 7, 9)),
    case("adaptive_avg_pool2d_int", lambda x: loom.adaptive_avg_pool2d(x, 2), lambda x: F.adaptive_avg_pool2d(x, 2),
         Arg(3, 5, 5)),
    case("batch_norm", loom.batch_norm, bn_ref, Arg(4, 3, 5, 2), Arg(3), Arg(3)),
    case("batch_norm_noaffine_2d", lambda x: loom.batch_norm(x, eps=1e-3), lambda x: bn_ref(x, eps=1e-3),
         Arg(3, 6, view=T)),
    case("batch_norm_with_stats", loom.batch_norm_with_stats, bn_stats_ref, Arg(4, 3, 5), Arg(3), Arg(3)),
    case("sdpa", loom.scaled_dot_product_attention, sdpa_ref, Arg(2, 3, 5, 4), Arg(2, 3, 7, 4), Arg(2, 3, 7, 6)),
    case("sdpa_causal_scale", lambda q, k, v: loom.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3),
         lambda q, k, v: sdpa_ref(q, k, v, is_causal=True, scale=0.3), Arg(2, 6, 4), Arg(2, 6, 4), Arg(2, 6, 3)),
    case("sdpa_bool_mask", lambda q, k, v, m: loom.scaled_dot_product_attention(q, k, v, attn_mask=m),
         lambda q, k, v, m: sdpa_ref(q, k, v, attn_mask=m), Arg(2, 5, 4), Arg(2, 6, 4), Arg(2, 6, 3),
         Arg(5, 6, kind="mask")),
    case("sdpa_float_mask", lambda q, k, v, m: loom.scaled_dot_product_attention(q, k, v, m),
         lambda q, k, v, m: sdpa_ref(q, k, v, m), Arg(2, 5, 4), Arg(2, 6, 4), Arg(2, 6, 3), Arg(5, 6)),
    case("sdpa_noncontig", loom.scaled_dot_product_attention, sdpa_ref,
         Arg(2, 5, 3, 4, view=lambda x: x.transpose(1, 2)), Arg(2, 6, 3, 4, view=lambda x: x.transpose(1, 2)),
         Arg(2, 6, 3, 4, view=lambda x: x.transpose(1, 2))),
    # joining, splitting, indexing
    case("cat", lambda a, b, c: loom.cat([a, b, c], 1), lambda a, b, c: torch.cat([a, b, c], 1),
         Arg(3, 2), Arg(3, 4), Arg(5, 3, view=T)),
    case("cat_neg_dim", lambda a, b: loom.concat((a, b), dim=-1), lambda a, b: torch.concat((a, b), dim=-1),
         Arg(2, 3, 2), Arg(2, 3, 6, view=S)),
    case("stack", lambda a, b: loom.stack([a, b]), lambda a, b: torch.stack([a, b]), Arg(3, 4), Arg(4, 3, view=T)),
    case("stack_dim", lambda a, b: loom.stack((a, b), dim=2), lambda a, b: torch.stack((a, b), dim=2),
         Arg(3, 4), Arg(3, 4)),
    case("split", lambda x: loom.split(x, 2, 1), lambda x: torch.split(x, 2, 1), Arg(3, 7)),
    case("split_sections", lambda x: loom.split(x, [1, 4, 2], dim=0), lambda x: torch.split(x, [1, 4, 2], dim=0),
         Arg(3, 7, view=T)),
    case("chunk", lambda x: loom.chunk(x, 3, -1), lambda x: torch.chunk(x, 3, -1), Arg(3, 7)),
    case("unbind", lambda x: loom.unbind(x, 1), lambda x: torch.unbind(x, 1), Arg(3, 4, view=T)),
    case("gather", lambda x, i: loom.gather(x, 1, i), lambda x, i: torch.gather(x, 1, i),
         Arg(4, 5), Arg(4, 7, kind="int", high=5)),
    case("gather_noncontig", lambda x, i: loom.gather(x, 0, i), lambda x, i: torch.gather(x, 0, i),
         Arg(5, 4, view=T), Arg(6, 3, kind="int", high=4)),
    case("scatter_add", lambda x, i, s: loom.scatter_add(x, 1, i, s), lambda x, i, s: torch.scatter_add(x, 1, i, s),
         Arg(4, 5), Arg(4, 3, kind="int", high=5), Arg(4, 3)),
    case("scatter_add_dim0", lambda x, i, s: loom.scatter_add(x, 0, i, s),
         lambda x, i, s: torch.scatter_add(x, 0, i, s), Arg(5, 3, view=T), Arg(6, 5, kind="int", high=3), Arg(6, 5)),
    case("index_select", lambda x, i: loom.index_select(x, 1, i), lambda x, i: torch.index_select(x, 1, i),
         Arg(4, 5, view=T), Arg(7, kind="int", high=4)),
    case("index_select_dim0", lambda x, i: loom.index_select(x, 0, i), lambda x, i: torch.index_select(x, 0, i),
         Arg(4, 5, 2), Arg(6, kind="int", high=4)),
    case("embedding", loom.embedding, torch.embedding, Arg(6, 5), Arg(3, 4, kind="int", high=6)),
    case("one_hot", loom.one_hot, F.one_hot, Arg(3, 4, kind="int", high=6)),
    case("one_hot_classes", lambda i: loom.one_hot(i, num_classes=9), lambda i: F.one_hot(i, num_classes=9),
         Arg(7, kind="int", high=6)),
    case("tril", loom.tril, torch.tril, Arg(5, 4, view=T)),
    case("tril_diag", lambda x: loom.tril(x, -1), lambda x: torch.tril(x, -1), Arg(2, 4, 5)),
    case("triu", lambda x: loom.triu(x, diagonal=2), lambda x: torch.triu(x, diagonal=2), Arg(4, 6)),
    case("flip", lambda x: loom.flip(x, (0, 2)), lambda x: torch.flip(x, (0, 2)), Arg(3, 4, 5)),
    case("flip_noncontig", lambda x: loom.flip(x, [-1]), lambda x: torch.flip(x, [-1]), Arg(5, 3, view=T)),
    case("pad", lambda x: loom.pad(x, (1, 2)), lambda x: F.pad(x, (1, 2)), Arg(3, 4)),
    case("pad_2d_value", lambda x: loom.pad(x, [2, 1, 0, 3], value=1.5), lambda x: F.pad(x, [2, 1, 0, 3], value=1.5),
         Arg(2, 3, 4, view=T)),
    case("pad_crop", lambda x: loom.pad(x, (-1, 2, 1, -2)), lambda x: F.pad(x, (-1, 2, 1, -2)), Arg(2, 5, 6)),
    # views
    case("reshape", lambda x: loom.reshape(x, (2, -1)), lambda x: torch.reshape(x, (2, -1)), Arg(4, 3, view=T)),
    case("permute", lambda x: loom.permute(x, (2, 0, 1)), lambda x: torch.permute(x, (2, 0, 1)), Arg(2, 3, 4)),
    case("transpose", lambda x: loom.transpose(x, 0, 2), lambda x: torch.transpose(x, 0, 2), Arg(2, 3, 4)),
    case("swapaxes", lambda x: loom.swapaxes(x, -1, 0), lambda x: torch.swapaxes(x, -1, 0), Arg(2, 3, 4)),
    case("t", loom.t, torch.t, Arg(3, 5)),
    case("unsqueeze", lambda x: loom.unsqueeze(x, -1), lambda x: torch.unsqueeze(x, -1), Arg(3, 5, view=T)),
    case("squeeze", loom.squeeze, torch.squeeze, Arg(3, 1, 5, 1)),
    case("squeeze_dim", lambda x: loom.squeeze(x, 1), lambda x: torch.squeeze(x, 1), Arg(3, 1, 5, 1)),
    case("flatten", loom.flatten, torch.flatten, Arg(2, 3, 4, view=T)),
    case("flatten_range", lambda x: loom.flatten(x, 1, 2), lambda x: torch.flatten(x, 1, 2), Arg(2, 3, 4, 5)),
    case("narrow", lambda x: loom.narrow(x, 1, 1, 3), lambda x: torch.narrow(x, 1, 1, 3), Arg(5, 6, view=T)),
    case("select", lambda x: loom.select(x, 1, -2), lambda x: torch.select(x, 1, -2), Arg(3, 5, 4)),
    case("broadcast_to", lambda x: loom.broadcast_to(x, (2, 3, 4)), lambda x: torch.broadcast_to(x, (2, 3, 4)),
         Arg(3, 1)),
    case("clone", loom.clone, torch.clone, Arg(5, 3, view=T)),
    case("broadcast_tensors", loom.broadcast_tensors, torch.broadcast_tensors, Arg(3, 1), Arg(1, 4), Arg(2, 1, 1)),
]


def run_case(lfn, tfn, args, dtype, seed):
    rng = np.random.default_rng(seed)
    drawn = [a.draw(rng) for a in args]
    tin, lin = [], []
    for a, t in zip(args, drawn):
        if t.is_floating_point():
            t = t.to(dtype)
        lt = to_loom(t)
        if a.grad and dtype == torch.float64:
            t.requires_grad_(True)
            lt.requires_grad_(True)
        tin.append(t)
        lin.append(lt)
    view = [a.view or (lambda x: x) for a in args]
    tout = flat(tfn(*[v(t) for v, t in zip(view, tin)]))
    lout = flat(lfn(*[v(x) for v, x in zip(view, lin)]))
    return rng, tin, lin, tout, lout


def check_values(tout, lout, rtol, atol):
    assert len(lout) == len(tout)
    for t, x in zip(tout, lout):
        assert isinstance(x, loom.Tensor), type(x)
        assert tuple(x.shape) == tuple(t.shape)
        assert dtype_name(x.dtype) == dtype_name(t.dtype)
        got = to_torch(x)
        if t.is_floating_point():
            torch.testing.assert_close(got, t.detach(), rtol=rtol, atol=atol, equal_nan=True)
        else:
            assert torch.equal(got, t), (got, t)


@pytest.mark.parametrize("lfn,tfn,args", CASES)
def test_op_float64_with_grad(lfn, tfn, args):
    rng, tin, lin, tout, lout = run_case(lfn, tfn, args, torch.float64, 0)
    check_values(tout, lout, 1e-10, 1e-12)
    leaves = [i for i, t in enumerate(tin) if t.requires_grad]
    outs = [i for i, t in enumerate(tout) if t.requires_grad]
    if not leaves or not outs:
        return
    for i in outs:
        assert lout[i].requires_grad
    ws = [torch.from_numpy(rng.standard_normal(tuple(tout[i].shape))) for i in outs]
    sum((tout[i] * w).sum() for i, w in zip(outs, ws)).backward()
    sum((lout[i] * to_loom(w)).sum() for i, w in zip(outs, ws)).backward()
    for i in leaves:
        if tin[i].grad is None:  # torch: no path from this input (e.g. a mask)
            assert lin[i].grad is None or not to_torch(lin[i].grad).any()
            continue
        assert lin[i].grad is not None, f"input {i} got no gradient"
        assert tuple(lin[i].grad.shape) == tuple(tin[i].shape)
        torch.testing.assert_close(to_torch(lin[i].grad), tin[i].grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("lfn,tfn,args", CASES)
def test_op_float32(lfn, tfn, args):
    _, _, _, tout, lout = run_case(lfn, tfn, args, torch.float32, 1)
    check_values(tout, lout, 1e-5, 1e-5)


# ---- factories ----

def same_meta(x, t):
    assert tuple(x.shape) == tuple(t.shape)
    assert dtype_name(x.dtype) == dtype_name(t.dtype)


@pytest.mark.parametrize("name", ["zeros", "ones", "empty"])
def test_sized_factories(name):
    lf, tf = getattr(loom, name), getattr(torch, name)
    for args, kw, tkw in [((2, 3), {}, {}), (((4, 1, 2),), {}, {}), (((),), {}, {}),
                          (([3],), {"dtype": loom.int64}, {"dtype": torch.int64}),
                          ((0, 2), {"dtype": loom.bool}, {"dtype": torch.bool})]:
        x, t = lf(*args, **kw), tf(*args, **tkw)
        same_meta(x, t)
        if name != "empty":
            assert torch.equal(to_torch(x), t)
    x = lf(2, requires_grad=True)
    assert x.requires_grad and x.is_leaf
    same_meta(lf(size=(2, 3), dtype=loom.int64), tf(size=(2, 3), dtype=torch.int64))


def test_full():
    for v in (2.5, 3, True):
        x, t = loom.full((2, 3), v), torch.full((2, 3), v)
        same_meta(x, t)
        assert torch.equal(to_torch(x), t)
    x = loom.full([2], 7, dtype=loom.float64)
    assert x.dtype == loom.float64 and x.tolist() == [7.0, 7.0]


def test_scalar_tensor():
    for v in (2.5, 3):
        x, t = loom.scalar_tensor(v), torch.scalar_tensor(v)
        same_meta(x, t)
        assert x.item() == t.item()
    assert loom.scalar_tensor(1, dtype=loom.int64).dtype == loom.int64


@pytest.mark.parametrize("args,kw", [((5,), {}), ((2, 9), {}), ((1, 10, 3), {}), ((0, 1, 0.125), {}), ((2.5,), {}),
                                     ((-3, 4, 2), {}), ((5, -1, -2), {}), ((4,), {"dtype": "float64"}),
                                     ((0, 1, 0.1), {"dtype": "float64"})])
def test_arange(args, kw):
    lkw = {k: getattr(loom, v) for k, v in kw.items()}
    tkw = {k: getattr(torch, v) for k, v in kw.items()}
    x, t = loom.arange(*args, **lkw), torch.arange(*args, **tkw)
    same_meta(x, t)
    torch.testing.assert_close(to_torch(x), t)


def test_arange_keywords():
    x, t = loom.arange(start=1, end=7, step=2), torch.arange(start=1, end=7, step=2)
    same_meta(x, t)
    assert x.tolist() == t.tolist()
    x, t = loom.arange(end=4), torch.arange(end=4)
    assert x.tolist() == t.tolist()


@pytest.mark.parametrize("args", [(0, 1, 5), (-2.0, 3.0, 7), (1, 1, 1), (0, 1, 0), (3, -1, 4)])
def test_linspace(args):
    x, t = loom.linspace(*args), torch.linspace(*args)
    same_meta(x, t)
    torch.testing.assert_close(to_torch(x), t)
    x = loom.linspace(*args, dtype=loom.float64)
    torch.testing.assert_close(to_torch(x), torch.linspace(*args, dtype=torch.float64))


@pytest.mark.parametrize("args", [(3,), (3, 5), (4, 2)])
def test_eye(args):
    x, t = loom.eye(*args), torch.eye(*args)
    same_meta(x, t)
    assert torch.equal(to_torch(x), t)
    assert loom.eye(*args, dtype=loom.int64).dtype == loom.int64


def test_random_factories():
    loom.manual_seed(0)
    for name in ("rand", "randn"):
        x = getattr(loom, name)(200, 51)
        same_meta(x, getattr(torch, name)(200, 51))
        a = x.numpy()
        if name == "rand":
            assert a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.01
        else:
            assert abs(a.mean()) < 0.02 and abs(a.std() - 1) < 0.02
        assert getattr(loom, name)((3, 2), dtype=loom.float64).dtype == loom.float64
        assert getattr(loom, name)(3, requires_grad=True).requires_grad
        assert tuple(getattr(loom, name)(size=[2, 5]).shape) == (2, 5)
    # the global stream and explicit generators repeat
    loom.manual_seed(5)
    a = loom.randn(7).tolist()
    loom.manual_seed(5)
    assert loom.randn(7).tolist() == a
    g = loom.Generator().manual_seed(3)
    b = loom.rand(5, generator=g).tolist()
    assert loom.rand(5, generator=loom.Generator().manual_seed(3)).tolist() == b


def test_randint_randperm_bernoulli():
    x, t = loom.randint(3, 10, (50, 7)), torch.randint(3, 10, (50, 7))
    same_meta(x, t)
    a = x.numpy()
    assert a.min() == 3 and a.max() == 9
    x = loom.randint(5, (4,))
    same_meta(x, torch.randint(5, (4,)))
    assert 0 <= x.numpy().min() and x.numpy().max() < 5
    assert loom.randint(0, 4, [3], dtype=loom.int32).dtype == loom.int32
    p = loom.randperm(17)
    same_meta(p, torch.randperm(17))
    assert sorted(p.tolist()) == list(range(17))
    probs = loom.tensor([[0.0, 1.0, 0.5]] * 400)
    b = loom.bernoulli(probs)
    same_meta(b, torch.bernoulli(torch.full((400, 3), 0.5)))
    col = b.numpy().mean(0)
    assert col[0] == 0 and col[1] == 1 and abs(col[2] - 0.5) < 0.1
    b = loom.bernoulli(loom.zeros(300), p=0.25)
    assert set(b.tolist()) <= {0.0, 1.0} and abs(b.numpy().mean() - 0.25) < 0.1


@pytest.mark.parametrize("name", ["empty_like", "zeros_like", "ones_like", "rand_like", "randn_like"])
def test_like_factories(name):
    base = loom.zeros(3, 5, dtype=loom.float64).t()
    x, t = getattr(loom, name)(base), getattr(torch, name)(torch.zeros(3, 5, dtype=torch.float64).t())
    same_meta(x, t)
    y = getattr(loom, name)(base, dtype=loom.float32, requires_grad=True)
    assert y.dtype == loom.float32 and y.requires_grad and tuple(y.shape) == (5, 3)


def test_full_like_randint_like():
    base = loom.zeros(2, 3, dtype=loom.int64)
    x, t = loom.full_like(base, 4), torch.full_like(torch.zeros(2, 3, dtype=torch.int64), 4)
    same_meta(x, t)
    assert x.tolist() == t.tolist()
    assert loom.full_like(base, 0.5, dtype=loom.float32).tolist() == [[0.5] * 3] * 2
    r = loom.randint_like(base, 2, 6)
    same_meta(r, torch.randint_like(torch.zeros(2, 3, dtype=torch.int64), 2, 6))
    assert all(2 <= v < 6 for row in r.tolist() for v in row)
    r = loom.randint_like(loom.zeros(40), 3)
    assert r.dtype == loom.float32 and set(r.tolist()) <= {0.0, 1.0, 2.0}


@pytest.mark.parametrize("data", [
    [1, 2, 3], [1.5, 2], [[1, 2], [3, 4]], [True, False], [[True], [False]], 3, 2.5, True, [], [[], []],
    [1, True], [1, 2.0], (1, 2), np.arange(6, dtype=np.int32).reshape(2, 3), np.ones(3, dtype=np.float64),
    np.array([True, False]), np.float32(1.5), np.float64(1.5), np.int32(3),
])
def test_tensor_dtype_inference(data):
    x, t = loom.tensor(data), torch.tensor(data)
    same_meta(x, t)
    assert x.tolist() == t.tolist()


def test_tensor_from_tensors_and_options():
    x = loom.tensor([loom.tensor(1.5), loom.tensor(2.0)])
    assert x.dtype == loom.float32 and x.tolist() == [1.5, 2.0]
    x = loom.tensor([[1, 2], [3, 4]], dtype=loom.float64, requires_grad=True)
    assert x.dtype == loom.float64 and x.requires_grad and x.is_leaf
    y = loom.tensor(x)  # a copy, detached
    assert not y.requires_grad and y.data_ptr() != x.data_ptr()
    with pytest.raises(RuntimeError):
        loom.tensor([[1, 2], [3]])
    a = np.arange(4.0)
    assert loom.as_tensor(a).data_ptr() == a.ctypes.data  # no copy
    assert loom.as_tensor(a, dtype=loom.float32).dtype == loom.float32
    assert loom.tensor(np.bool_(True)).dtype == loom.bool
    assert loom.is_tensor(x) and not loom.is_tensor(a)
    assert loom.numel(loom.zeros(3, 4)) == 12


# ---- helpers of the op list that return no tensor ----

def test_broadcast_shapes_result_type_allclose_equal():
    shapes = [(3, 1), (1, 4), (2, 1, 1)]
    assert tuple(loom.broadcast_shapes(*shapes)) == tuple(torch.broadcast_shapes(*shapes))
    pairs = [
        (loom.zeros(2, dtype=loom.int64), 2.5, torch.zeros(2, dtype=torch.int64), 2.5),
        (loom.zeros(2, dtype=loom.int32), 3, torch.zeros(2, dtype=torch.int32), 3),
        (loom.zeros(2, dtype=loom.float32), loom.zeros(2, dtype=loom.float64),
         torch.zeros(2, dtype=torch.float32), torch.zeros(2, dtype=torch.float64)),
        (loom.zeros(2, dtype=loom.float32), loom.tensor(1.0, dtype=loom.float64),
         torch.zeros(2, dtype=torch.float32), torch.tensor(1.0, dtype=torch.float64)),
        (loom.zeros(2, dtype=loom.bool), 1, torch.zeros(2, dtype=torch.bool), 1),
        (loom.zeros(2, dtype=loom.uint8), loom.zeros(2, dtype=loom.int32),
         torch.zeros(2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32)),
    ]
    for la, lb, ta, tb in pairs:
        assert dtype_name(loom.result_type(la, lb)) == dtype_name(torch.result_type(ta, tb))
    a = loom.tensor([1.0, 2.0])
    assert loom.allclose(a, a + 1e-9) and not loom.allclose(a, a + 1e-3)
    assert loom.allclose(a, a + 1e-3, atol=1e-2)
    assert loom.equal(a, loom.tensor([1.0, 2.0])) and not loom.equal(a, loom.tensor([1.0, 3.0]))
    assert loom.promote_types(loom.int64, loom.float16) == loom.float16


# ---- keywords and overloads as PyTorch spells them ----

def test_signatures():
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((3, 4)))
    lx = to_loom(x)
    pairs = [
        (loom.softmax(lx, 1, loom.float32), torch.softmax(x, 1, torch.float32)),
        (loom.log_softmax(lx, 0, dtype=loom.float32), torch.log_softmax(x, 0, dtype=torch.float32)),
        (loom.cumsum(lx, 1, dtype=loom.float32), torch.cumsum(x, 1, dtype=torch.float32)),
        (loom.prod(lx, 1, dtype=loom.float32), torch.prod(x, 1, dtype=torch.float32)),
        (loom.var(lx, False), torch.var(x, False)),
        (loom.std(lx, True), torch.std(x, True)),
        (loom.embedding(weight=lx, indices=loom.tensor([2, 0])),
         torch.embedding(weight=x, indices=torch.tensor([2, 0]))),
        (loom.where(loom.tensor([True, False]), 1.0, 0.0), torch.where(torch.tensor([True, False]), 1.0, 0.0)),
        (loom.where(loom.tensor([True, False]), loom.tensor([1, 2]), 0.5),
         torch.where(torch.tensor([True, False]), torch.tensor([1, 2]), 0.5)),
        (loom.add(loom.tensor([1, 2], dtype=loom.int32), 3), torch.add(torch.tensor([1, 2], dtype=torch.int32), 3)),
        (loom.maximum(loom.tensor(2.0, dtype=loom.float64), loom.tensor([1, 3])),
         torch.maximum(torch.tensor(2.0, dtype=torch.float64), torch.tensor([1, 3]))),
        (loom.div(loom.tensor([1, 2]), 2), torch.div(torch.tensor([1, 2]), 2)),
        (loom.sub(1.5, loom.tensor([1, 2])), torch.sub(1.5, torch.tensor([1, 2]))),
        (loom.eq(loom.tensor([1, 2]), 2.0), torch.eq(torch.tensor([1, 2]), 2.0)),
    ]
    for got, want in pairs:
        same_meta(got, want)
        torch.testing.assert_close(to_torch(got), want)
    for lparts, tparts in [(loom.split(lx, 3, 1), torch.split(x, 3, 1)), (loom.chunk(lx, 2), torch.chunk(x, 2)),
                           (loom.unbind(lx), torch.unbind(x)),
                           (loom.broadcast_tensors(lx, lx[:1]), torch.broadcast_tensors(x, x[:1]))]:
        assert isinstance(lparts, tuple) and len(lparts) == len(tparts)


# ---- fused optimizer steps, against torch.optim's per-tensor step ----

@pytest.mark.parametrize("name", ["adam", "adamw", "adam_amsgrad", "sgd", "sgd_nesterov"])
def test_fused_optimizer_steps(name):
    rng = np.random.default_rng(3)
    shapes = [(3, 5), (7,)]
    ps = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    gs = [[torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes] for _ in range(3)]
    lp = [to_loom(p) for p in ps]
    tp = [p.clone().requires_grad_(True) for p in ps]
    hp = dict(lr=0.01, weight_decay=0.1)
    if name.startswith("adam"):
        amsgrad = name == "adam_amsgrad"
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        opt = cls(tp, betas=(0.9, 0.99), eps=1e-6, amsgrad=amsgrad, foreach=False, **hp)
        m = [loom.zeros_like(p) for p in lp]
        v = [loom.zeros_like(p) for p in lp]
        vmax = [loom.zeros_like(p) for p in lp] if amsgrad else []
        steps = [loom.zeros((), dtype=loom.float64) for _ in lp]
        fused = loom._C._fused_adamw_ if name == "adamw" else loom._C._fused_adam_
    else:
        nesterov = name == "sgd_nesterov"
        opt = torch.optim.SGD(tp, momentum=0.9, dampening=0.0, nesterov=nesterov, foreach=False, **hp)
        bufs = [loom.zeros_like(p) for p in lp]
    for k, g in enumerate(gs):
        for p, gi in zip(tp, g):
            p.grad = gi.clone()
        opt.step()
        lg = [to_loom(gi) for gi in g]
        if name.startswith("adam"):
            for s in steps:
                s.add_(1)
            fused(lp, lg, m, v, vmax, steps, lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, eps=1e-6,
                  amsgrad=amsgrad, maximize=False)
        else:
            loom._C._fused_sgd_(lp, lg, bufs, weight_decay=0.1, momentum=0.9, lr=0.01, dampening=0.0,
                             nesterov=nesterov, maximize=False, is_first_step=k == 0)
    for p, t in zip(lp, tp):
        torch.testing.assert_close(to_torch(p), t.detach(), rtol=1e-6, atol=1e-6)
    assert loom._C._fused_optim_supported(loom.device("cpu"))
