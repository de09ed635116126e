"""NumPy and DLPack share memory both ways; the GIL is free while kernels run;
nothing leaks across many tensor creations."""
import gc
import threading
import time

import numpy as np
import pytest
import torch

import loom


def test_from_numpy_shares_memory_both_ways():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = loom.from_numpy(a)
    a[1, 2] = -7
    assert t[1, 2].item() == -7
    t[0] = 5.0
    assert (a[0] == 5).all()
    assert t.dtype == loom.float32 and t.shape == (3, 4)


@pytest.mark.parametrize("np_dtype,loom_dtype", [
    (np.float32, loom.float32), (np.float64, loom.float64), (np.float16, loom.float16), (np.int32, loom.int32),
    (np.int64, loom.int64), (np.uint8, loom.uint8), (np.bool_, loom.bool)])
def test_numpy_dtypes_round_trip(np_dtype, loom_dtype):
    a = (np.arange(6) % 3).astype(np_dtype).reshape(2, 3)
    t = loom.from_numpy(a)
    assert t.dtype == loom_dtype
    back = t.numpy()
    assert back.dtype == a.dtype
    np.testing.assert_array_equal(back, a)
    assert np.shares_memory(back, a)


def test_numpy_strided_views():
    a = np.arange(24, dtype=np.float64).reshape(4, 6)
    t = loom.from_numpy(a[:, 1::2])  # non-contiguous
    assert t.stride() == (6, 2)
    np.testing.assert_array_equal(t.numpy(), a[:, 1::2])
    tt = loom.from_numpy(a).t()
    n = tt.numpy()
    assert np.shares_memory(n, a)
    np.testing.assert_array_equal(n, a.T)
    with pytest.raises(loom.Error, match="negative"):
        loom.from_numpy(a[::-1])
    with pytest.raises(loom.Error, match="complex128"):
        loom.from_numpy(np.zeros(3, dtype=np.complex128))


def test_numpy_keeps_tensor_alive_and_vice_versa():
    t = loom.arange(5, dtype=loom.float32)
    n = t.numpy()
    del t
    gc.collect()
    np.testing.assert_array_equal(n, np.arange(5))
    a = np.ones(4)
    t = loom.from_numpy(a)
    del a
    gc.collect()
    assert t.sum().item() == 4.0


def test_numpy_requires_grad_is_an_error_and_array_protocol():
    x = loom.ones(3, requires_grad=True)
    with pytest.raises(loom.Error, match="detach"):
        x.numpy()
    np.testing.assert_array_equal(np.asarray(x.detach()), np.ones(3))
    assert np.asarray(loom.ones(2), dtype=np.int64).dtype == np.int64
    with pytest.raises(loom.Error, match="bfloat16"):
        loom.ones(2, dtype=loom.bfloat16).numpy()


def test_tensor_from_numpy_and_lists():
    t = loom.tensor(np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert t.dtype == loom.int32
    assert loom.tensor([[1.0, 2], [3, 4]]).dtype == loom.float32
    assert loom.tensor([1, 2]).dtype == loom.int64
    assert loom.tensor([True, False]).dtype == loom.bool
    a = np.zeros(3)
    c = loom.tensor(a)  # a copy, as torch.tensor
    a[0] = 1
    assert c[0].item() == 0
    s = loom.as_tensor(a)  # shares
    a[1] = 2
    assert s[1].item() == 2


def test_dlpack_torch_to_loom_shares_memory():
    tt = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t = loom.from_dlpack(tt)
    tt[0, 0] = 100
    assert t[0, 0].item() == 100
    t[1, 2] = -1
    assert tt[1, 2].item() == -1
    tv = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()
    lv = loom.from_dlpack(tv)
    assert lv.stride() == (1, 4)
    np.testing.assert_array_equal(lv.numpy(), tv.numpy())


def test_dlpack_loom_to_torch_shares_memory():
    t = loom.arange(6, dtype=loom.int64).reshape(2, 3)
    tt = torch.from_dlpack(t)
    assert tt.dtype == torch.int64 and tt.shape == (2, 3)
    tt[1, 1] = 42
    assert t[1, 1].item() == 42
    t[0, 0] = 9
    assert tt[0, 0].item() == 9
    assert t.__dlpack_device__() == (1, 0)
    for dt, tdt in [(loom.float32, torch.float32), (loom.float64, torch.float64), (loom.int32, torch.int32),
                    (loom.uint8, torch.uint8), (loom.float16, torch.float16)]:
        assert torch.from_dlpack(loom.ones(3, dtype=dt)).dtype == tdt
    cap = loom.ones(2).__dlpack__()
    loom.from_dlpack(cap)
    with pytest.raises(loom.Error, match="consumed"):
        loom.from_dlpack(cap)


def test_gil_released_while_kernels_run():
    # A 1024^2 GEMM takes milliseconds; another Python thread must keep running meanwhile.
    a = loom.randn(768, 768)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    th = threading.Thread(target=ticker)
    th.start()
    time.sleep(0.01)
    before = len(ticks)
    for _ in range(5):
        a @ a
    after = len(ticks)
    stop.set()
    th.join()
    assert after - before > 50, f"the ticker thread ran {after - before} times during the GEMMs"


def test_no_leaks_across_10000_tensors():
    import sys
    x = loom.ones(64, requires_grad=True)
    gc.collect()
    live0 = loom._C._live_tensor_objects()
    alloc0 = loom.cpu_memory_stats()["bytes_in_use"]
    refs0 = sys.getrefcount(x)
    for i in range(10000):
        y = loom.randn(64) * x + i
        z = y.sum()
        z.backward()
        x.grad = None
        n = y.detach().numpy()
        w = loom.from_numpy(n)
        del y, z, n, w
    gc.collect()
    assert sys.getrefcount(x) == refs0
    assert loom._C._live_tensor_objects() == live0
    assert loom.cpu_memory_stats()["bytes_in_use"] <= alloc0
