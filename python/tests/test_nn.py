"""loom.nn from Python (python/src/nn.cpp, python/loom/nn): every layer, loss,
functional and init against PyTorch on random inputs with the same weights
(forward values, then the gradients of sum(out * w) for a random w with
respect to every parameter and float input), and the Module machinery of
Python subclasses: registration by attribute, nesting, C++ containers running
Python forwards, state_dict names and order, train/eval, printing, errors.
"""
import collections
import gc
import math
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import loom
import loom.nn.functional as F
from loom import nn


# ---- helpers ----

def to_loom(t):
    return loom.tensor(t.detach().numpy())


def to_torch(x):
    return torch.from_numpy(x.detach().numpy().copy())


def flat(out):
    """The tensors of a result: a tensor, or a (nested) tuple of them (None left out)."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    return [] if out is None else [out]


def assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    a = actual.detach().numpy() if isinstance(actual, loom.Tensor) else np.asarray(actual)
    e = expected.detach().numpy() if isinstance(expected, (torch.Tensor, loom.Tensor)) else np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def copy_state(lm, tm):
    lm.load_state_dict({k: to_loom(v) for k, v in tm.state_dict().items()})


class Const:
    """An input that gets no gradient (running statistics, masks given as floats)."""

    def __init__(self, t):
        self.t = t


def to_side(x, side):
    """x for one side of a comparison: torch tensors become fresh leaves
    (loom copies on the loom side) requiring grad when floating; tuples,
    lists and Const recurse."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_side(v, side) for v in x)
    if isinstance(x, Const):
        return x.t if side == "torch" else to_loom(x.t)
    if not isinstance(x, torch.Tensor):
        return {torch.float64: loom.float64}.get(x, x) if side == "loom" else x
    if side == "torch":
        return x.detach().clone().requires_grad_(x.is_floating_point())
    return to_loom(x).requires_grad_(x.is_floating_point())


def check_call(lf, tf, *inputs, rtol=1e-4, atol=1e-5, **kwargs):
    """Calls lf (loom) and tf (torch) on the same inputs; compares outputs,
    then the gradients of sum(out * w) with respect to every float input."""
    t_in, l_in = to_side(inputs, "torch"), to_side(inputs, "loom")
    t_kw = {k: to_side(v, "torch") for k, v in kwargs.items()}
    l_kw = {k: to_side(v, "loom") for k, v in kwargs.items()}
    t_out, l_out = flat(tf(*t_in, **t_kw)), flat(lf(*l_in, **l_kw))
    assert len(t_out) == len(l_out)
    for lo, to in zip(l_out, t_out):
        assert_close(lo, to, rtol, atol)
    floats = [(lo, to) for lo, to in zip(l_out, t_out) if to.is_floating_point() and to.requires_grad]
    if floats:
        ws = [torch.randn(to.shape, dtype=to.dtype) for _, to in floats]
        sum((to * w).sum() for (_, to), w in zip(floats, ws)).backward()
        sum((lo * to_loom(w)).sum() for (lo, _), w in zip(floats, ws)).backward()
    leaves = zip(flat(list(l_in) + list(l_kw.values())), flat(list(t_in) + list(t_kw.values())))
    for li, ti in leaves:
        if isinstance(ti, torch.Tensor) and ti.requires_grad:
            assert_close(li.grad, ti.grad, rtol, atol)


def check_module(lm, tm, *inputs, train=False, rtol=1e-4, atol=1e-5, **kwargs):
    """check_call for loom module lm and torch module tm, with tm's state
    copied into lm first; parameter gradients are compared too."""
    copy_state(lm, tm)
    lm.train(train)
    tm.train(train)
    check_call(lm, tm, *inputs, rtol=rtol, atol=atol, **kwargs)
    t_params = dict(tm.named_parameters())
    l_params = dict(lm.named_parameters())
    assert list(l_params) == list(t_params)
    for name, tp in t_params.items():
        if tp.grad is None:
            assert l_params[name].grad is None, name
        else:
            assert_close(l_params[name].grad, tp.grad, rtol, atol)


def all_equal(x, value):
    return bool(np.all(x.detach().numpy() == value))


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    loom.manual_seed(0)


# ---- layers against torch ----

def test_linear_identity_flatten_unflatten():
    check_module(nn.Linear(5, 3), torch.nn.Linear(5, 3), torch.randn(2, 4, 5))
    check_module(nn.Linear(5, 3, bias=False), torch.nn.Linear(5, 3, bias=False), torch.randn(4, 5))
    check_module(nn.Identity(7, unused=True), torch.nn.Identity(7, unused=True), torch.randn(3, 2))
    check_module(nn.Flatten(), torch.nn.Flatten(), torch.randn(2, 3, 4, 5))
    check_module(nn.Flatten(0, 2), torch.nn.Flatten(0, 2), torch.randn(2, 3, 4, 5))
    check_module(nn.Unflatten(1, (3, 4)), torch.nn.Unflatten(1, (3, 4)), torch.randn(2, 12))

    fc = nn.Linear(5, 3, bias=False)
    assert (fc.in_features, fc.out_features, fc.bias) == (5, 3, None)
    assert isinstance(fc.weight, nn.Parameter) and fc.weight.shape == (3, 5)
    assert nn.Flatten(2, 3).start_dim == 2 and nn.Unflatten(1, [3, 4]).unflattened_size == (3, 4)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kwargs", [{}, {"stride": 2, "padding": 1}, {"dilation": 2, "groups": 2, "bias": False},
                                    {"padding": "same"}, {"padding": "valid"}])
def test_conv1d_conv2d(kwargs):
    check_module(nn.Conv1d(4, 6, 3, **kwargs), torch.nn.Conv1d(4, 6, 3, **kwargs), torch.randn(2, 4, 11))
    check_module(nn.Conv2d(4, 6, 3, **kwargs), torch.nn.Conv2d(4, 6, 3, **kwargs), torch.randn(2, 4, 9, 8))
    check_module(nn.Conv2d(4, 6, (3, 2), **kwargs), torch.nn.Conv2d(4, 6, (3, 2), **kwargs), torch.randn(4, 7, 6))


def test_conv_attributes():
    c, t = nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
    for name in ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"]:
        assert getattr(c, name) == getattr(t, name), name
    assert nn.Conv2d(1, 1, 3, padding="same").padding == "same"
    assert nn.Conv1d(2, 2, 3).kernel_size == (3,)
    assert repr(c) == repr(t)
    with pytest.raises(loom.Error, match="padding_mode"):
        nn.Conv2d(1, 1, 3, padding_mode="reflect")


@pytest.mark.parametrize("kwargs", [{}, {"stride": 2, "padding": 1, "output_padding": 1},
                                    {"groups": 2, "bias": False, "dilation": 2}])
def test_conv_transpose2d(kwargs):
    check_module(nn.ConvTranspose2d(4, 6, 3, **kwargs), torch.nn.ConvTranspose2d(4, 6, 3, **kwargs),
                 torch.randn(2, 4, 5, 6))
    assert repr(nn.ConvTranspose2d(4, 6, 3, **kwargs)) == repr(torch.nn.ConvTranspose2d(4, 6, 3, **kwargs))


def test_pooling_and_upsample():
    x = torch.randn(2, 3, 9, 8)
    for args, kwargs in [((2,), {}), ((3,), {"stride": 2, "padding": 1}), (((3, 2),), {"ceil_mode": True}),
                         ((2,), {"dilation": 2})]:
        check_module(nn.MaxPool2d(*args, **kwargs), torch.nn.MaxPool2d(*args, **kwargs), x)
        assert repr(nn.MaxPool2d(*args, **kwargs)) == repr(torch.nn.MaxPool2d(*args, **kwargs))
    check_module(nn.MaxPool2d(2, return_indices=True), torch.nn.MaxPool2d(2, return_indices=True), x)
    for args, kwargs in [((2,), {}), ((3,), {"stride": 2, "padding": 1, "count_include_pad": False}),
                         (((3, 2),), {"ceil_mode": True, "divisor_override": 5})]:
        check_module(nn.AvgPool2d(*args, **kwargs), torch.nn.AvgPool2d(*args, **kwargs), x)
        assert repr(nn.AvgPool2d(*args, **kwargs)) == repr(torch.nn.AvgPool2d(*args, **kwargs))
    for size in [1, (4, 3), 5]:
        check_module(nn.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size), x)
    for kwargs in [{"scale_factor": 2}, {"size": (5, 7)},
                   {"scale_factor": 2, "mode": "bilinear", "align_corners": False},
                   {"size": (4, 11), "mode": "bilinear", "align_corners": True}]:
        check_module(nn.Upsample(**kwargs), torch.nn.Upsample(**kwargs), x)
    p = nn.MaxPool2d(3, stride=2)
    assert (p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode, p.return_indices) == (3, 2, 0, 1, False, False)


@pytest.mark.parametrize("kind,shape", [("1d", (6, 4)), ("1d", (5, 4, 7)), ("2d", (3, 4, 5, 6))])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"affine": False, "eps": 1e-3},
                                    {"track_running_stats": False}])
def test_batch_norm(kind, shape, kwargs):
    L, T = (nn.BatchNorm1d, torch.nn.BatchNorm1d) if kind == "1d" else (nn.BatchNorm2d, torch.nn.BatchNorm2d)
    lm, tm = L(4, **kwargs), T(4, **kwargs)
    for _ in range(2):  # the running statistics follow torch's over several batches
        check_module(lm, tm, torch.randn(*shape), train=True)
    for name, buf in tm.named_buffers():
        assert_close(dict(lm.named_buffers())[name], buf)
    check_module(lm, tm, torch.randn(*shape), train=False)
    assert repr(lm) == repr(tm)
    if not kwargs.get("track_running_stats", True):
        assert lm.running_mean is None and lm.num_batches_tracked is None


def test_layer_norm_rms_norm():
    x = torch.randn(3, 4, 5)
    check_module(nn.LayerNorm(5), torch.nn.LayerNorm(5), x)
    check_module(nn.LayerNorm([4, 5], eps=1e-3), torch.nn.LayerNorm([4, 5], eps=1e-3), x)
    check_module(nn.LayerNorm(5, elementwise_affine=False), torch.nn.LayerNorm(5, elementwise_affine=False), x)
    assert repr(nn.LayerNorm([4, 5])) == repr(torch.nn.LayerNorm([4, 5]))
    assert nn.LayerNorm(5, bias=False).bias is None

    # torch 1.13 has no RMSNorm: its definition, x / sqrt(mean(x^2) + eps) * weight.
    rms = nn.RMSNorm([4, 5], eps=1e-6)
    nn.init.normal_(rms.weight)
    xl = to_loom(x).requires_grad_()
    out = rms(xl)
    w = to_torch(rms.weight).requires_grad_()
    xt = x.clone().requires_grad_()
    expected = xt / torch.sqrt(xt.pow(2).mean((-2, -1), keepdim=True) + 1e-6) * w
    assert_close(out, expected)
    g = torch.randn_like(expected)
    (out * to_loom(g)).sum().backward()
    (expected * g).sum().backward()
    assert_close(rms.weight.grad, w.grad)
    assert_close(xl.grad, xt.grad)
    assert rms.normalized_shape == (4, 5) and rms.eps == 1e-6


def test_dropout():
    x = loom.ones(200, 50)
    d = nn.Dropout(0.25)
    y = d(x)
    zeros = (y == 0).float().mean().item()
    assert 0.2 < zeros < 0.3
    assert_close(y[y != 0], np.full(int((y != 0).sum().item()), 1 / 0.75, dtype=np.float32))
    assert d.eval() is d and not d.training
    assert_close(d(x), x.numpy())
    d2 = nn.Dropout2d(0.5, inplace=True)
    y = d2(loom.ones(8, 16, 3, 3))
    per_channel = y.numpy().reshape(8, 16, 9)
    assert np.all((per_channel == 0).all(-1) | (per_channel == 2).all(-1))
    assert repr(d) == repr(torch.nn.Dropout(0.25)) and repr(d2) == repr(torch.nn.Dropout2d(0.5))
    loom.manual_seed(5)
    a = nn.Dropout(0.5)(x)
    loom.manual_seed(5)
    assert loom.equal(nn.Dropout(0.5)(x), a)


def test_embedding():
    idx = torch.tensor([[1, 0, 4], [4, 3, 3]])
    check_module(nn.Embedding(6, 3), torch.nn.Embedding(6, 3), idx)
    check_module(nn.Embedding(6, 3, padding_idx=4), torch.nn.Embedding(6, 3, padding_idx=4), idx)
    e = nn.Embedding(6, 3, padding_idx=-1)
    assert e.padding_idx == 5 and all_equal(e.weight[5], 0)
    w = torch.randn(4, 2)
    pre = nn.Embedding.from_pretrained(to_loom(w))
    assert_close(pre.weight, w) and not pre.weight.requires_grad
    assert nn.Embedding.from_pretrained(to_loom(w), freeze=False).weight.requires_grad
    assert repr(nn.Embedding(6, 3, padding_idx=4)) == repr(torch.nn.Embedding(6, 3, padding_idx=4))


def test_activations():
    x = torch.randn(3, 7)
    pairs = [(nn.ReLU(), torch.nn.ReLU()), (nn.ReLU(inplace=True), torch.nn.ReLU()),
             (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)), (nn.GELU(), torch.nn.GELU()),
             (nn.GELU("tanh"), torch.nn.GELU("tanh")), (nn.SiLU(), torch.nn.SiLU()), (nn.Tanh(), torch.nn.Tanh()),
             (nn.Sigmoid(), torch.nn.Sigmoid()), (nn.Softmax(dim=1), torch.nn.Softmax(dim=1)),
             (nn.Softmax(0), torch.nn.Softmax(0)), (nn.LogSoftmax(dim=-1), torch.nn.LogSoftmax(dim=-1))]
    for lm, tm in pairs:
        check_module(lm, tm, x)
    for lm, tm in [(nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)), (nn.GELU("tanh"), torch.nn.GELU("tanh")),
                   (nn.Softmax(dim=1), torch.nn.Softmax(dim=1))]:
        assert repr(lm) == repr(tm)


# ---- losses ----

def loss_inputs():
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    probs = torch.sigmoid(torch.randn(6, 5))
    targets01 = torch.rand(6, 5)
    return logits, labels, probs, targets01


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_losses():
    logits, labels, probs, t01 = loss_inputs()
    cw = torch.rand(5) + 0.5
    cases = [
        (nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), logits, labels),
        (nn.CrossEntropyLoss(to_loom(cw), ignore_index=2, label_smoothing=0.1),
         torch.nn.CrossEntropyLoss(cw, ignore_index=2, label_smoothing=0.1), logits, labels),
        (nn.CrossEntropyLoss(reduction="sum"), torch.nn.CrossEntropyLoss(reduction="sum"), logits,
         torch.softmax(torch.randn(6, 5), 1)),
        (nn.CrossEntropyLoss(reduction="none"), torch.nn.CrossEntropyLoss(reduction="none"),
         torch.randn(2, 5, 3, 4), torch.randint(0, 5, (2, 3, 4))),
        (nn.NLLLoss(to_loom(cw)), torch.nn.NLLLoss(cw), torch.log_softmax(logits, 1), labels),
        (nn.MSELoss(), torch.nn.MSELoss(), logits, t01),
        (nn.L1Loss(reduction="sum"), torch.nn.L1Loss(reduction="sum"), logits, t01),
        (nn.SmoothL1Loss(beta=0.5), torch.nn.SmoothL1Loss(beta=0.5), logits, t01),
        (nn.BCELoss(to_loom(cw)), torch.nn.BCELoss(cw), probs, t01),
        (nn.BCEWithLogitsLoss(pos_weight=to_loom(cw)), torch.nn.BCEWithLogitsLoss(pos_weight=cw), logits, t01),
        (nn.KLDivLoss(reduction="batchmean"), torch.nn.KLDivLoss(reduction="batchmean"),
         torch.log_softmax(logits, 1), torch.softmax(torch.randn(6, 5), 1)),
        (nn.KLDivLoss(log_target=True), torch.nn.KLDivLoss(log_target=True), torch.log_softmax(logits, 1),
         torch.log_softmax(torch.randn(6, 5), 1)),
    ]
    for lm, tm, inp, tgt in cases:
        check_module(lm, tm, inp, tgt)
    ce = nn.CrossEntropyLoss(to_loom(cw), ignore_index=3, label_smoothing=0.2, reduction="sum")
    assert (ce.ignore_index, ce.label_smoothing, ce.reduction) == (3, 0.2, "sum")
    assert_close(ce.weight, cw) and list(dict(ce.named_buffers())) == ["weight"]
    assert nn.MSELoss().reduction == "mean" and nn.BCELoss().weight is None


# ---- recurrent layers ----

@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True, "batch_first": True},
                                    {"bias": False, "num_layers": 2}])
def test_recurrent(kind, kwargs):
    lm, tm = getattr(nn, kind)(3, 4, **kwargs), getattr(torch.nn, kind)(3, 4, **kwargs)
    x = torch.randn(2, 5, 3)
    check_module(lm, tm, x, atol=1e-5)
    d = 2 if kwargs.get("bidirectional") else 1
    h0 = torch.randn(kwargs.get("num_layers", 1) * d, 2 if kwargs.get("batch_first") else 5, 4)
    hx = (h0, torch.randn_like(h0)) if kind == "LSTM" else h0
    check_module(lm, tm, x, hx, atol=1e-5)
    check_module(lm, tm, torch.randn(6, 3), atol=1e-5)  # unbatched
    assert repr(lm) == repr(tm)
    assert [[tuple(w.shape) for w in ws] for ws in lm.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in tm.all_weights]
    assert (lm.input_size, lm.hidden_size, lm.num_layers, lm.batch_first) == \
        (tm.input_size, tm.hidden_size, tm.num_layers, tm.batch_first)
    assert isinstance(lm.weight_ih_l0, nn.Parameter)


def test_lstm_returns_pytorch_structure():
    out, (h, c) = nn.LSTM(3, 4, num_layers=2)(loom.randn(5, 2, 3))
    assert out.shape == (5, 2, 4) and h.shape == c.shape == (2, 2, 4)
    out, h = nn.GRU(3, 4, batch_first=True)(loom.randn(2, 5, 3))
    assert out.shape == (2, 5, 4) and h.shape == (1, 2, 4)


def test_cells():
    x, h, c = torch.randn(3, 5), torch.randn(3, 4), torch.randn(3, 4)
    check_module(nn.RNNCell(5, 4), torch.nn.RNNCell(5, 4), x, h)
    check_module(nn.RNNCell(5, 4, nonlinearity="relu"), torch.nn.RNNCell(5, 4, nonlinearity="relu"), x)
    check_module(nn.LSTMCell(5, 4), torch.nn.LSTMCell(5, 4), x, (h, c))
    check_module(nn.LSTMCell(5, 4, bias=False), torch.nn.LSTMCell(5, 4, bias=False), x)
    check_module(nn.GRUCell(5, 4), torch.nn.GRUCell(5, 4), x, h)
    check_module(nn.GRUCell(5, 4), torch.nn.GRUCell(5, 4), torch.randn(5), torch.randn(4))
    assert repr(nn.GRUCell(5, 4, bias=False)) == repr(torch.nn.GRUCell(5, 4, bias=False))
    assert nn.LSTMCell(5, 4, bias=False).bias_ih is None


# ---- attention and transformers ----

def test_multihead_attention():
    q, k, v = torch.randn(4, 2, 8), torch.randn(6, 2, 8), torch.randn(6, 2, 8)
    pad = torch.tensor([[False] * 5 + [True], [False] * 6])
    causal = torch.triu(torch.ones(4, 6, dtype=torch.bool), 1)
    lm, tm = nn.MultiheadAttention(8, 2), torch.nn.MultiheadAttention(8, 2)
    check_module(lm, tm, q, k, v)
    check_module(lm, tm, q, k, v, pad, True, causal, False)
    check_module(lm, tm, q, k, v, key_padding_mask=pad, need_weights=False)
    lm, tm = nn.MultiheadAttention(8, 2, kdim=3, vdim=5, batch_first=True), \
        torch.nn.MultiheadAttention(8, 2, kdim=3, vdim=5, batch_first=True)
    check_module(lm, tm, torch.randn(2, 4, 8), torch.randn(2, 6, 3), torch.randn(2, 6, 5))
    assert lm.in_proj_weight is None and lm.k_proj_weight.shape == (8, 3)
    assert list(dict(lm.named_parameters())) == list(dict(tm.named_parameters()))
    assert (lm.embed_dim, lm.num_heads, lm.head_dim, lm.batch_first) == (8, 2, 4, True)
    assert isinstance(lm.out_proj, nn.Linear)


@pytest.mark.parametrize("kwargs", [{}, {"norm_first": True, "activation": "gelu", "batch_first": True}])
def test_transformer_encoder(kwargs):
    layer_l = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **kwargs)
    layer_t = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **kwargs)
    x = torch.randn(3, 5, 8)
    pad = torch.zeros(5 if not kwargs.get("batch_first") else 3, 3 if not kwargs.get("batch_first") else 5,
                      dtype=torch.bool)
    pad[:, -1] = True
    check_module(layer_l, layer_t, x, train=True)
    check_module(layer_l, layer_t, x, src_key_padding_mask=pad, train=True)
    enc_l = nn.TransformerEncoder(layer_l, 2, norm=nn.LayerNorm(8))
    enc_t = torch.nn.TransformerEncoder(layer_t, 2, norm=torch.nn.LayerNorm(8), enable_nested_tensor=False)
    check_module(enc_l, enc_t, x, train=True)
    assert list(enc_l.state_dict()) == list(enc_t.state_dict())
    assert isinstance(enc_l.layers[1].self_attn, nn.MultiheadAttention) and enc_l.num_layers == 2
    assert nn.TransformerEncoder(layer_l, 1).norm is None


def test_transformer_encoder_python_norm():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2

    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
    enc = nn.TransformerEncoder(layer, 1, norm=Scale())
    gc.collect()
    x = loom.randn(3, 2, 8)
    assert_close(enc(x), enc.layers[0](x) * 2)


# ---- functional ----

def test_functional():
    x = torch.randn(2, 4, 7, 6)
    w2, b = torch.randn(6, 2, 3, 3), torch.randn(6)
    cases = [
        (F.linear, TF.linear, (torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)), {}),
        (F.conv2d, TF.conv2d, (x, w2, b), {"stride": 2, "padding": 1, "groups": 2}),
        (F.conv2d, TF.conv2d, (x, torch.randn(5, 4, 3, 2)), {"padding": "same"}),
        (F.conv1d, TF.conv1d, (torch.randn(2, 4, 9), torch.randn(3, 4, 2)), {"dilation": 2}),
        (F.conv_transpose2d, TF.conv_transpose2d, (x, torch.randn(4, 3, 2, 2)), {"stride": 2}),
        (F.max_pool2d, TF.max_pool2d, (x, 2), {}),
        (F.max_pool2d, TF.max_pool2d, (x, 3), {"stride": 2, "padding": 1, "return_indices": True}),
        (F.avg_pool2d, TF.avg_pool2d, (x, (2, 3)), {"ceil_mode": True}),
        (F.adaptive_avg_pool2d, TF.adaptive_avg_pool2d, (x, (3, 2)), {}),
        (F.interpolate, TF.interpolate, (x,), {"scale_factor": 2, "mode": "bilinear", "align_corners": True}),
        (F.layer_norm, TF.layer_norm, (x, (7, 6), torch.randn(7, 6), torch.randn(7, 6)), {"eps": 1e-3}),
        (F.batch_norm, TF.batch_norm, (x, Const(torch.zeros(4)), Const(torch.ones(4)), torch.randn(4),
                                       torch.randn(4)), {"training": True, "momentum": 0.3}),
        (F.batch_norm, TF.batch_norm, (x, Const(torch.rand(4)), Const(torch.rand(4) + 0.5)), {}),
        (F.pad, TF.pad, (x, (1, 2, 0, 1)), {"value": 0.5}),
        (F.scaled_dot_product_attention, lambda q, k, v, **kw: torch.softmax(
            q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + torch.triu(torch.full((5, 5), -math.inf), 1),
            -1) @ v, (torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 3)), {"is_causal": True}),
        (F.relu, TF.relu, (x,), {}), (F.leaky_relu, TF.leaky_relu, (x, 0.3), {}),
        (F.elu, TF.elu, (x,), {"alpha": 0.5}), (F.gelu, TF.gelu, (x,), {"approximate": "tanh"}),
        (F.silu, TF.silu, (x,), {}), (F.softplus, TF.softplus, (x,), {"beta": 2.0, "threshold": 1.0}),
        (F.tanh, torch.tanh, (x,), {}), (F.sigmoid, torch.sigmoid, (x,), {}),
        (F.softmax, TF.softmax, (x,), {"dim": 1}), (F.log_softmax, TF.log_softmax, (x, -1), {}),
        (F.softmax, TF.softmax, (x, 2), {"dtype": torch.float64}),
        (F.dropout, TF.dropout, (x,), {"training": False}),
        (F.cross_entropy, TF.cross_entropy, (torch.randn(4, 3), torch.tensor([0, 2, 1, 2])),
         {"label_smoothing": 0.1, "reduction": "sum"}),
        (F.nll_loss, TF.nll_loss, (torch.randn(4, 3), torch.tensor([0, 2, 1, 2])), {"ignore_index": 1}),
        (F.mse_loss, TF.mse_loss, (x, torch.randn_like(x)), {}),
        (F.l1_loss, TF.l1_loss, (x, torch.randn_like(x)), {"reduction": "none"}),
        (F.smooth_l1_loss, TF.smooth_l1_loss, (x, torch.randn_like(x)), {"beta": 0.3}),
        (F.binary_cross_entropy, TF.binary_cross_entropy, (torch.rand(5), torch.rand(5)), {}),
        (F.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits, (torch.randn(5), torch.rand(5)),
         {"pos_weight": Const(torch.rand(5))}),
        (F.kl_div, TF.kl_div, (torch.log_softmax(torch.randn(3, 4), 1), torch.softmax(torch.randn(3, 4), 1)),
         {"reduction": "batchmean"}),
    ]
    for lf, tf, args, kwargs in cases:
        check_call(lf, tf, *args, **kwargs)


def test_functional_extras():
    idx = torch.tensor([2, 0, 3])
    assert_close(F.one_hot(to_loom(idx), 5), TF.one_hot(idx, 5))
    w = torch.randn(5, 3)
    assert_close(F.embedding(to_loom(idx), to_loom(w)), TF.embedding(idx, w))
    x = loom.ones(100, 100)
    assert 0.4 < (F.dropout(x, 0.5) == 0).float().mean().item() < 0.6
    assert_close(F.rms_norm(x, (100,)), x.numpy())
    with pytest.raises(loom.Error, match="pad"):
        F.pad(x, (1, 1), mode="reflect")


# ---- init and utils ----

def test_init():
    for name, param in [("linear", None), ("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("selu", None),
                        ("sigmoid", None), ("conv2d", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))
    w = nn.Parameter(loom.empty(64, 32, 3, 3))
    assert nn.init._calculate_fan_in_and_fan_out(w) == torch.nn.init._calculate_fan_in_and_fan_out(
        torch.empty(64, 32, 3, 3))
    assert nn.init.kaiming_uniform_(w, a=math.sqrt(5)) is w
    bound = 1 / math.sqrt(32 * 9)
    assert w.abs().max().item() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    m = nn.Parameter(loom.empty(300, 200))
    nn.init.xavier_uniform_(m, gain=2.0)
    assert m.std().item() == pytest.approx(2 * math.sqrt(2 / 500), rel=0.05)
    nn.init.xavier_normal_(m)
    assert m.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.05)
    nn.init.normal_(m, mean=3, std=0.5)
    assert m.mean().item() == pytest.approx(3, abs=0.01) and m.std().item() == pytest.approx(0.5, rel=0.02)
    nn.init.uniform_(m, -2, -1)
    assert -2 <= m.min().item() and m.max().item() <= -1
    nn.init.constant_(m, 0.25)
    assert all_equal(m, 0.25)
    assert all_equal(nn.init.zeros_(m), 0) and all_equal(nn.init.ones_(m), 1)
    e = nn.init.eye_(loom.empty(3, 4))
    assert_close(e, np.eye(3, 4, dtype=np.float32))
    q = nn.init.orthogonal_(loom.empty(4, 6), gain=1.0)
    assert_close(q @ q.t(), np.eye(4, dtype=np.float32), atol=1e-5)
    g1, g2 = loom.Generator().manual_seed(3), loom.Generator().manual_seed(3)
    a, b = loom.empty(10), loom.empty(10)
    nn.init.normal_(a, generator=g1)
    nn.init.normal_(b, generator=g2)
    assert loom.equal(a, b)
    assert not m.requires_grad or m.grad_fn is None


def test_clip_grad():
    ts = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    for norm_type in [2.0, 1.0, math.inf]:
        for clip in [0.5, 100.0]:
            ls = [nn.Parameter(to_loom(t)) for t in ts]
            for lp, tp in zip(ls, ts):
                tp.grad = torch.randn_like(tp)
                lp.grad = to_loom(tp.grad)
            total_l = nn.utils.clip_grad_norm_(ls, clip, norm_type=norm_type)
            total_t = torch.nn.utils.clip_grad_norm_(ts, clip, norm_type=norm_type)
            assert isinstance(total_l, loom.Tensor) and total_l.item() == pytest.approx(total_t.item(), rel=1e-5)
            for lp, tp in zip(ls, ts):
                assert_close(lp.grad, tp.grad)
    lp = nn.Parameter(loom.randn(6))
    lp.grad = loom.randn(6) * 3
    expected = np.clip(lp.grad.numpy(), -1, 1)
    assert nn.utils.clip_grad_value_(lp, 1.0) is None
    assert_close(lp.grad, expected)
    model = nn.Linear(3, 2)
    model(loom.randn(4, 3)).sum().backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    total = math.sqrt(sum((p.grad ** 2).sum().item() for p in model.parameters()))
    assert total == pytest.approx(1e-3, rel=1e-3)


# ---- Python modules ----

class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(n, n)
        self.scale = nn.Parameter(loom.ones(n))
        self.register_buffer("shift", loom.zeros(n))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x)) * self.scale + self.shift


class TorchBlock(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = torch.nn.Linear(n, n)
        self.scale = torch.nn.Parameter(torch.ones(n))
        self.register_buffer("shift", torch.zeros(n))
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x)) * self.scale + self.shift


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([Block(4), Block(4)])
        self.head = nn.Sequential(Block(4), nn.Linear(4, 2))
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.norm(self.head(x))


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(3, 4)
        self.blocks = torch.nn.ModuleList([TorchBlock(4), TorchBlock(4)])
        self.head = torch.nn.Sequential(TorchBlock(4), torch.nn.Linear(4, 2))
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.norm(self.head(x))


def test_python_module_matches_torch():
    lm, tm = Net(), TorchNet()
    assert list(lm.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in lm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert [n for n, _ in lm.named_buffers()] == [n for n, _ in tm.named_buffers()]
    assert [n for n, _ in lm.named_modules()] == [n for n, _ in tm.named_modules()]
    assert [n for n, _ in lm.named_children()] == [n for n, _ in tm.named_children()]
    assert repr(lm).replace("TorchBlock", "Block").replace("TorchNet", "Net") == \
        repr(tm).replace("TorchBlock", "Block").replace("TorchNet", "Net")
    # Gradients through BatchNorm's mean are zero up to rounding: atol.
    check_module(lm, tm, torch.randn(5, 3), train=True, atol=1e-4)
    check_module(lm, tm, torch.randn(5, 3), train=False)
    for name, buf in tm.named_buffers():
        assert_close(lm.state_dict()[name], buf)


def test_attribute_registration_and_identity():
    b = Block(3)
    p = nn.Parameter(loom.randn(2))
    b.extra = p
    assert b.extra is p and b.fc is b.fc and isinstance(b.fc.weight, nn.Parameter)
    assert [n for n, _ in b.named_parameters()] == ["scale", "extra", "fc.weight", "fc.bias"]
    assert list(b.parameters())[1] is p and dict(b.named_parameters())["scale"] is b.scale
    assert b.fc.weight is dict(b.named_parameters())["fc.weight"]
    b.note = "plain attribute"
    b.cache = loom.ones(2)  # a plain tensor attribute is no buffer
    assert b.note == "plain attribute" and "cache" not in dict(b.named_buffers())
    assert [n for n, _ in b.named_children()] == ["fc", "act"]
    b.act = nn.GELU()  # replacing a child of a Python module
    assert isinstance(b.act, nn.GELU) and isinstance(dict(b.named_children())["act"], nn.GELU)
    frozen = nn.Parameter(loom.ones(2), requires_grad=False)
    b.frozen = frozen
    assert not b.frozen.requires_grad
    b.register_parameter("none_param", None)
    b.add_module("none_module", None)
    assert b.none_param is None and b.none_module is None
    b.register_module("sub", nn.Tanh())
    assert isinstance(b.sub, nn.Tanh) and "sub" in dict(b.named_children())
    with pytest.raises(AttributeError):
        b.missing


def test_objects_stay_the_same():
    # PyTorch's idioms that compare parameter objects by id() need each
    # module to keep the same objects while it lives.
    net = Net()
    ids = [id(p) for p in net.embed.parameters()]
    gc.collect()
    rest = [p for p in net.parameters() if id(p) not in ids]
    assert len(rest) == len(list(net.parameters())) - 2
    mha = nn.MultiheadAttention(4, 2)
    weight_id = id(mha.out_proj.weight)
    gc.collect()
    assert id(mha.out_proj.weight) == weight_id and mha.out_proj is mha.out_proj
    assert all(type(p) is nn.Parameter for p in nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2), 2).parameters())


def test_modules_leave_no_tensor_objects():
    gc.collect()
    before = loom._C._live_tensor_objects()
    for _ in range(20):
        net = Net()
        net(loom.randn(2, 3)).sum().backward()
        seq = nn.Sequential(Block(3), nn.LSTM(3, 3))
        list(seq.parameters()), seq.state_dict()
        del net, seq
    gc.collect()
    assert loom._C._live_tensor_objects() == before


def test_buffers():
    b = Block(3)
    shift = b.shift
    b.shift = loom.full((3,), 2.0)  # a registered buffer's name: the buffer takes the value
    assert b.shift is shift and all_equal(b.state_dict()["shift"], 2)
    with pytest.raises(TypeError):
        b.shift = 3
    with pytest.raises(loom.Error, match="persistent"):
        b.register_buffer("tmp", loom.ones(1), persistent=False)
    bn = nn.BatchNorm1d(3)
    bn.running_mean = loom.ones(3)
    assert all_equal(bn.state_dict()["running_mean"], 1)


def test_registration_errors():
    b = Block(3)
    with pytest.raises(loom.Error, match="replace"):
        b.scale = nn.Parameter(loom.ones(3))
    with pytest.raises(TypeError, match="parameter 'scale'"):
        b.scale = loom.ones(3)
    with pytest.raises(TypeError, match="child module 'fc'"):
        b.fc = 3
    with pytest.raises(loom.Error, match="already registered"):
        b.shift = nn.Parameter(loom.ones(3))
    with pytest.raises(loom.Error, match="cannot delete"):
        del b.fc
    with pytest.raises(loom.Error, match="weight"):
        b.fc.weight = nn.Parameter(loom.ones(3, 3))
    with pytest.raises(loom.Error, match="C\\+\\+ module"):
        nn.TransformerEncoderLayer(4, 2).linear1 = nn.Linear(4, 4)
    with pytest.raises(TypeError, match="Parameter or None"):
        b.register_parameter("p", loom.ones(1))

    class Early(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)
            super().__init__()

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()

    class Forgot(nn.Module):
        def __init__(self):
            pass

    with pytest.raises(TypeError):
        Forgot()
    with pytest.raises(TypeError):
        nn.Module(3)


def test_sequential_runs_python_forward():
    blocks = [Block(4) for _ in range(3)]
    seq = nn.Sequential(*blocks, nn.Linear(4, 2))
    del blocks
    gc.collect()  # the Python halves live on in the Sequential
    x = loom.randn(5, 4)
    expected = x
    for m in list(seq)[:3]:
        expected = m.act(m.fc(expected)) * m.scale + m.shift
    expected = seq[3](expected)
    assert_close(seq(x), expected)
    assert isinstance(seq[0], Block) and seq[-1] is seq[3] and len(seq) == 4
    assert type(seq[1:3]) is nn.Sequential and [n for n, _ in seq[1:3].named_children()] == ["1", "2"]
    assert seq[1:3][0] is seq[1]
    assert seq.append(nn.ReLU()) is seq and len(seq) == 5
    seq.extend([nn.Tanh()])
    assert isinstance(seq[5], nn.Tanh) and getattr(seq, "5") is seq[5]

    class Doubled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert Doubled(2, 2)(loom.ones(1, 2)).shape == (1, 2)
    with pytest.raises(loom.Error, match="Doubled overrides the forward of Linear"):
        nn.Sequential(Doubled(2, 2))

    class Named(nn.Linear):  # a subclass that keeps Linear's forward is fine
        pass

    assert isinstance(nn.Sequential(Named(2, 2))[0], Named)

    named = nn.Sequential(collections.OrderedDict([("first", Block(2)), ("act", nn.ReLU())]))
    assert [n for n, _ in named.named_children()] == ["first", "act"]
    assert isinstance(named.first, Block)
    t = torch.nn.Sequential(collections.OrderedDict([("first", TorchBlock(2)), ("act", torch.nn.ReLU())]))
    assert list(named.state_dict()) == list(t.state_dict())


def test_module_list_and_dict():
    ml = nn.ModuleList([Block(2), nn.ReLU()])
    ml.append(Block(2))
    ml += [nn.Tanh()]
    gc.collect()
    assert len(ml) == 4 and isinstance(ml[2], Block) and isinstance(ml[-1], nn.Tanh)
    assert type(ml[::2]) is nn.ModuleList and ml[::2][1] is ml[2]
    assert [n for n, _ in ml.named_children()] == ["0", "1", "2", "3"]
    md = nn.ModuleDict({"a": Block(2), "b": nn.ReLU()})
    md["c"] = nn.Linear(2, 2)
    md["a"] = Block(2)  # replaces, keeping the position
    gc.collect()
    assert list(md) == ["a", "b", "c"] == md.keys() and "c" in md and "z" not in md
    assert isinstance(md["a"], Block) and md["a"](loom.ones(1, 2)).shape == (1, 2)
    assert [k for k, _ in md.items()] == ["a", "b", "c"] and len(md.values()) == 3
    md.update([("d", nn.Tanh())])
    assert len(md) == 4
    with pytest.raises(KeyError):
        md["zz"]
    tml = torch.nn.ModuleDict({"a": TorchBlock(2), "b": torch.nn.ReLU(), "c": torch.nn.Linear(2, 2)})
    md2 = nn.ModuleDict({"a": Block(2), "b": nn.ReLU(), "c": nn.Linear(2, 2)})
    assert list(md2.state_dict()) == list(tml.state_dict())


def test_train_eval_and_overrides():
    calls = []

    class Tracked(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

        def extra_repr(self):
            return "tracked=True"

    net = nn.Sequential(Tracked(), nn.BatchNorm1d(2))
    assert net.eval() is net and calls == [False]
    assert not net.training and not net[0].drop.training and not net[1].training
    assert net.train() is net and calls == [False, True] and net[0].drop.training
    net[0].training = False  # one module's flag, as PyTorch
    assert not net[0].training and net[0].drop.training
    assert repr(net) == "Sequential(\n  (0): Tracked(\n    tracked=True\n    (drop): Dropout(p=0.5, inplace=False)\n" \
                        "  )\n  (1): BatchNorm1d(2, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n)"


def test_state_dict_round_trip():
    a, b = Net(), Net()
    sd = a.state_dict()
    assert isinstance(sd, collections.OrderedDict)
    assert all(not v.requires_grad for v in sd.values())
    assert type(a.state_dict(keep_vars=True)["embed.weight"]) is nn.Parameter
    assert list(a.state_dict(prefix="model."))[0] == "model.embed.weight"
    result = b.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = loom.randn(4, 3)
    a.eval(), b.eval()
    assert_close(a(x), b(x))
    partial = {k: v for k, v in sd.items() if not k.startswith("norm")}
    partial["extra"] = loom.ones(1)
    with pytest.raises(loom.Error, match="missing key"):
        b.load_state_dict(partial)
    result = b.load_state_dict(partial, strict=False)
    assert result.missing_keys == [k for k in sd if k.startswith("norm")] and result.unexpected_keys == ["extra"]
    with pytest.raises(loom.Error, match="size mismatch for embed.weight"):
        b.load_state_dict({**sd, "embed.weight": loom.ones(2, 2)})


def test_module_utilities():
    net = Net()
    weight = net.embed.weight
    net(loom.randn(4, 3)).sum().backward()
    assert weight.grad is not None
    net.zero_grad(set_to_none=False)
    assert all_equal(weight.grad, 0)
    net.zero_grad()
    assert weight.grad is None
    assert net.to(loom.float64) is net and weight.dtype == loom.float64 and net.embed.weight is weight
    assert net.blocks[0].shift.dtype == loom.float64
    assert net.float() is net and weight.dtype == loom.float32
    assert net.to("cpu") is net and net.cpu() is net and net.to(loom.zeros(1, dtype=loom.float64)) is net
    assert weight.dtype == loom.float64
    net.float()
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen[-1] == "Net" and seen.count("Block") == 3
    assert net.requires_grad_(False) is net and not any(p.requires_grad for p in net.parameters())
    net.requires_grad_()
    shared = nn.Linear(2, 2)
    tied = nn.Sequential(shared, shared)
    assert len(list(tied.parameters())) == 2 and len(list(tied.modules())) == 2
    assert len(list(tied.named_parameters(remove_duplicate=False))) == 4
    assert next(net.parameters()) is net.embed.weight
    assert [n for n, _ in net.named_parameters(prefix="m", recurse=False)] == []
    assert [n for n, _ in net.embed.named_parameters(prefix="m")] == ["m.weight", "m.bias"]


def test_errors_name_op_and_shapes():
    with pytest.raises(loom.Error, match=r"Linear: .*\(\*, 4\).*got \[2, 5\]") as e:
        nn.Linear(4, 3)(loom.randn(2, 5))
    assert isinstance(e.value, RuntimeError)
    with pytest.raises(loom.Error, match=r"conv2d: weight of shape \[4, 3, 3, 3\].*input of shape \[2, 5, 8, 8\]"):
        nn.Conv2d(3, 4, 3)(loom.randn(2, 5, 8, 8))
    with pytest.raises(loom.Error, match=r"LSTM: input of shape \[5, 2, 6\]"):
        nn.LSTM(3, 4)(loom.randn(5, 2, 6))
    with pytest.raises(loom.Error, match=r"Sequential: child \(1\): Linear: .*got \[2, 3\]"):
        nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 3))(loom.randn(2, 4))
    with pytest.raises(loom.Error, match=r"cross_entropy: .*input of shape \[3, 4\], got target of shape \[2\]"):
        F.cross_entropy(loom.randn(3, 4), loom.tensor([0, 1]))
    with pytest.raises(loom.Error, match="embed_dim \\(8\\) must be divisible by num_heads \\(3\\)"):
        nn.MultiheadAttention(8, 3)

    class NoForward(nn.Module):
        pass

    with pytest.raises(loom.Error, match="NoForward"):
        nn.Sequential(NoForward())(loom.randn(2))

    class Boom(nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        nn.Sequential(nn.ReLU(), Boom())(loom.randn(2))


def test_sync_batch_norm_without_process_group():
    # Without a process group SyncBatchNorm is BatchNorm, bit for bit.
    check_module(nn.SyncBatchNorm(4), torch.nn.BatchNorm2d(4), torch.randn(3, 4, 2, 2), train=True)
    assert repr(nn.SyncBatchNorm(4)) == repr(torch.nn.SyncBatchNorm(4))

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(4)
            self.seq = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

        def forward(self, x):
            return self.seq(self.bn(x))

    h = Holder()
    weight = h.bn.weight
    assert nn.SyncBatchNorm.convert_sync_batchnorm(h) is h
    assert isinstance(h.bn, nn.SyncBatchNorm) and h.bn.weight is weight
    assert isinstance(h.seq[1], nn.SyncBatchNorm) and isinstance(dict(h.named_children())["bn"], nn.SyncBatchNorm)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(Holder(), nn.BatchNorm1d(4), nn.ReLU()))
    gc.collect()
    assert isinstance(model[0], Holder) and isinstance(model[0].seq[1], nn.SyncBatchNorm)
    assert isinstance(model[1], nn.SyncBatchNorm)
    assert model(loom.randn(5, 4)).shape == (5, 4)
    assert [type(m).__name__ for m in model.modules()].count("SyncBatchNorm") == 3


def test_checkpoint_sequential_equals_plain_forward():
    seq = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    x = loom.randn(3, 4, requires_grad=True)
    seq(x).sum().backward()
    expected = [p.grad.numpy().copy() for p in seq.parameters()]
    seq.zero_grad()
    loom._C._nn.checkpoint_sequential(seq, 2, x).sum().backward()
    for p, e in zip(seq.parameters(), expected):
        assert_close(p.grad, e)


def test_forward_releases_the_gil():
    # While one long C++ forward runs in a thread, this thread keeps running
    # Python: the longest pause between its iterations is far shorter than
    # the forward (it would be all of it if the forward held the GIL).
    fc = nn.Linear(1024, 1024)
    x = loom.randn(1024, 1024)
    start = time.perf_counter()
    fc(x)
    duration = time.perf_counter() - start
    worker = threading.Thread(target=fc, args=(x,))
    stamps = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    assert max(np.diff(stamps)) < duration / 2


def test_python_children_in_threads():
    # Threads run a C++ Sequential side by side; its Python child takes the
    # GIL back for its forward.
    seq = nn.Sequential(nn.Linear(64, 64), Block(64), nn.Linear(64, 8))
    x = loom.randn(32, 64)
    expected = seq(x).detach().numpy()
    results, errors = [], []

    def run():
        try:
            for _ in range(20):
                results.append(seq(x).detach().numpy())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    for r in results:
        np.testing.assert_array_equal(r, expected)
