"""loom.save / loom.load: safetensors files, state dicts and nested checkpoints, and corrupt files."""
import io
import json
import struct

import numpy as np
import pytest

import loom


def state_dict():
    rng = np.random.default_rng(0)
    return {
        "fc.weight": loom.tensor(rng.standard_normal((3, 4)).astype(np.float32)),
        "fc.bias": loom.tensor(rng.standard_normal(3)),  # float64
        "bn.num_batches_tracked": loom.tensor(7),
        "mask": loom.tensor([True, False, True]),
        "pixels": loom.tensor(np.arange(6, dtype=np.uint8).reshape(2, 3)),
    }


def assert_same(a, b):
    assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def read_header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def test_state_dict_round_trip_is_a_plain_safetensors_file(tmp_path):
    sd = state_dict()
    path = tmp_path / "model.safetensors"
    loom.save(sd, path)
    loaded = loom.load(path)
    assert list(loaded) == list(sd)
    for k in sd:
        assert_same(loaded[k], sd[k])
    # Any safetensors reader sees the tensors under their own names, no loom metadata.
    header, body = read_header(path)
    assert "__metadata__" not in header
    w = header["fc.weight"]
    assert w["dtype"] == "F32" and w["shape"] == [3, 4]
    begin, end = w["data_offsets"]
    np.testing.assert_array_equal(np.frombuffer(body[begin:end], dtype="<f4").reshape(3, 4), sd["fc.weight"].numpy())


def test_nested_checkpoint_round_trip(tmp_path):
    p = loom.tensor([1.0, 2.0], requires_grad=True)
    opt = loom.optim.AdamW([p], lr=1e-3)
    (p * p).sum().backward()
    opt.step()
    shared = loom.tensor([5, 6])
    ckpt = {"model": state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "lrs": [0.1, float("inf")],
            "name": "run", "extra": (None, True, {1: shared, 2: shared})}
    path = tmp_path / "ckpt.safetensors"
    loom.save(ckpt, str(path))
    back = loom.load(path)
    assert back["epoch"] == 3 and back["name"] == "run" and back["lrs"] == [0.1, float("inf")]
    assert back["extra"][:2] == (None, True)
    a, b = back["extra"][2][1], back["extra"][2][2]
    assert a is b  # one tensor saved once comes back as one
    assert_same(a, shared)
    for k, t in ckpt["model"].items():
        assert_same(back["model"][k], t)
    assert back["optimizer"]["param_groups"] == ckpt["optimizer"]["param_groups"]
    assert_same(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    header, _ = read_header(path)
    assert "model.fc.weight" in header and "optimizer.state.0.exp_avg" in header
    # The optimizer resumes from it.
    opt.load_state_dict(back["optimizer"])


def test_file_objects_and_map_location():
    buf = io.BytesIO()
    loom.save(state_dict(), buf)
    buf.seek(0)
    loaded = loom.load(buf, map_location="cpu")
    assert_same(loaded["fc.weight"], state_dict()["fc.weight"])


def test_unsupported_objects_raise_type_error(tmp_path):
    with pytest.raises(TypeError, match="cannot store a object .*at 'a.0'"):
        loom.save({"a": [object()]}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_save_into_a_missing_folder_names_it(tmp_path):
    with pytest.raises(loom.Error, match="missing"):
        loom.save(state_dict(), tmp_path / "missing" / "x.safetensors")


def test_corrupt_files_raise_loom_error_naming_file_and_field(tmp_path):
    path = tmp_path / "good.safetensors"
    loom.save(state_dict(), path)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-5])
    with pytest.raises(loom.Error, match="truncated.safetensors"):
        loom.load(truncated)

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 60) + data[8:])
    with pytest.raises(loom.Error, match="huge.safetensors"):
        loom.load(huge)

    header, body = read_header(path)
    header["fc.weight"]["dtype"] = "Q99"
    bad = json.dumps(header).encode()
    bad_dtype = tmp_path / "dtype.safetensors"
    bad_dtype.write_bytes(struct.pack("<Q", len(bad)) + bad + body)
    with pytest.raises(loom.Error, match=r"dtype\.safetensors.*fc\.weight.*dtype|fc\.weight.*dtype\.safetensors"):
        loom.load(bad_dtype)

    with pytest.raises(loom.Error, match="nothere.safetensors"):
        loom.load(tmp_path / "nothere.safetensors")


def test_corrupt_structure_metadata_raises_loom_error(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    loom.save({"epoch": 1, "w": loom.ones(2)}, path)
    header, body = read_header(path)
    header["__metadata__"]["loom.structure"] = '{"dict": [["w", {"tensor": "gone"}]]}'
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    with pytest.raises(loom.Error, match="ckpt.safetensors.*loom.structure.*gone"):
        loom.load(path)
