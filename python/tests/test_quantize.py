"""Quantized inference from Python: loom.nn.quantize_dynamic, Linear.quantize,
the ops under them (loom.quantize_weight, dequantize_weight,
quantized_linear) and the int8 dtype through NumPy and DLPack.
"""
import numpy as np
import pytest
import torch

import loom
from loom import nn


def rel_err(a, b):
    a, b = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def test_int8_dtype_through_numpy_and_dlpack():
    a = np.array([[-128, -1, 0], [1, 7, 127]], dtype=np.int8)
    x = loom.from_numpy(a)
    assert x.dtype == loom.int8
    assert x.numpy().dtype == np.int8
    np.testing.assert_array_equal(x.numpy(), a)
    t = torch.from_dlpack(x)
    assert t.dtype == torch.int8
    assert loom.from_dlpack(torch.tensor([-3, 4], dtype=torch.int8)).tolist() == [-3, 4]
    assert loom.promote_types(loom.int8, loom.uint8) == loom.int32
    assert (x.to(loom.float32) * 2).tolist() == [[-256.0, -2.0, 0.0], [2.0, 14.0, 254.0]]


@pytest.mark.parametrize("scheme,bound", [("int8", 0.02), ("int4", 0.15)])
def test_quantize_dynamic_keeps_outputs_close(scheme, bound):
    loom.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 10))
    x = loom.randn(8, 100)
    with loom.no_grad():
        ref = model(x)
    assert nn.quantize_dynamic(model, scheme) is model
    assert model[0].quantization == scheme
    assert model[0].weight.dtype == (loom.int8 if scheme == "int8" else loom.uint8)
    assert list(dict(model.named_parameters()).keys()) == ["0.bias", "2.bias"]
    assert "0.weight_scale" in model.state_dict()
    with loom.no_grad():
        out = model(x)
    assert rel_err(out, ref) < bound
    # The module is the op.
    l0 = model[0]
    with loom.no_grad():
        h = loom.quantized_linear(x, l0.weight, l0.weight_scale, l0.bias, scheme=scheme)
        assert model[0](x).equal(h)


def test_quantize_weight_round_trip_and_errors():
    loom.manual_seed(1)
    w = loom.randn(5, 40)
    codes, scales = loom.quantize_weight(w, "int4")
    assert list(codes.shape) == [5, 32] and codes.dtype == loom.uint8  # 2 groups of 16 bytes
    assert list(scales.shape) == [5, 2]
    back = loom.dequantize_weight(codes, scales, "int4", 40)
    assert list(back.shape) == [5, 40]
    assert rel_err(back, w) <= 1 / 8 + 1e-6
    with pytest.raises(loom.Error, match="expected int8 or int4"):
        loom.quantize_weight(w, "int3")
    lin = nn.Linear(4, 2)
    lin.quantize("int8")
    with pytest.raises(loom.Error, match="inference-only"):
        lin(loom.randn(1, 4, requires_grad=True))
