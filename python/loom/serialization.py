"""loom.save and loom.load: objects as safetensors files (include/loom/io/safetensors.h).

    loom.save(model.state_dict(), "model.safetensors")
    model.load_state_dict(loom.load("model.safetensors"))
    loom.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, "ckpt.safetensors")

A dict of tensors under string keys (a state_dict) is stored as it is: a plain
safetensors file that any safetensors reader, and loom's C++ loom::load, opens.
Any other object made of dicts, lists, tuples, tensors, numbers, strings,
booleans and None is stored with its tensors under dotted paths
("optimizer.state.0.exp_avg") and its shape as JSON in the metadata entry
"loom.structure" (see _encode), so loading gives the same object back; a
tensor that appears twice is stored once and comes back as one tensor.
Nothing is pickled, so loading a file never runs code.

A path is written atomically (a temporary file renamed over it: a reader sees
the old file or the whole new one); a file object gets the same bytes.
Malformed files raise loom.Error naming the file and the field.
"""
import json
import os

from loom import _C

__all__ = ["save", "load"]

_STRUCTURE_KEY = "loom.structure"


def _is_state_dict(obj):
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, _C.Tensor) for k, v in obj.items())


def _encode(obj, path, tensors, seen):
    """The JSON form of `obj`; its tensors go into `tensors` under dotted paths.

    Scalars (None, bool, int, float, str) are themselves; the rest are objects
    with one key: {"tensor": key}, {"list": [...]}, {"tuple": [...]} and
    {"dict": [[key, value], ...]} (pairs, so that int keys stay ints).
    """
    if isinstance(obj, _C.Tensor):
        key = seen.get(id(obj))
        if key is None:
            key = path or "tensor"
            n = 1
            while key in tensors or key == "__metadata__":
                key = f"{path}#{n}"
                n += 1
            tensors[key] = obj
            seen[id(obj)] = key
        return {"tensor": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    prefix = path + "." if path else ""
    if isinstance(obj, dict):
        pairs = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"loom.save: a dict key must be a str, number, bool or None, got "
                                f"{type(k).__name__} at '{path}'")
            pairs.append([k, _encode(v, prefix + str(k), tensors, seen)])
        return {"dict": pairs}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, prefix + str(i), tensors, seen) for i, v in enumerate(obj)]
        return {"tuple" if isinstance(obj, tuple) else "list": items}
    raise TypeError(f"loom.save: cannot store a {type(obj).__name__} (at '{path or '<root>'}'): loom.save takes "
                    "tensors, numbers, strings, booleans, None, and dicts, lists and tuples of them")


def _decode(node, tensors, name):
    if not isinstance(node, dict):
        return node
    if len(node) != 1:
        raise _C.Error(f"loom.load: '{name}': metadata \"{_STRUCTURE_KEY}\" holds a malformed node {node!r}")
    (kind, value), = node.items()
    if kind == "tensor":
        if value not in tensors:
            raise _C.Error(f"loom.load: '{name}': metadata \"{_STRUCTURE_KEY}\" names the tensor \"{value}\", "
                           "which the file does not hold")
        return tensors[value]
    if kind in ("list", "tuple") and isinstance(value, list):
        items = [_decode(v, tensors, name) for v in value]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        return {k: _decode(v, tensors, name) for k, v in value}
    raise _C.Error(f"loom.load: '{name}': metadata \"{_STRUCTURE_KEY}\" holds a malformed node {node!r}")


def save(obj, f):
    """torch.save(obj, f) as a safetensors file: f is a path (written atomically) or a binary file object."""
    if _is_state_dict(obj):
        tensors, metadata = obj, {}
    else:
        tensors = {}
        structure = _encode(obj, "", tensors, {})
        metadata = {_STRUCTURE_KEY: json.dumps(structure)}
    if isinstance(f, (str, os.PathLike)):
        _C._io.save_file(tensors, os.fspath(f), metadata)
    else:
        f.write(_C._io.serialize(tensors, metadata))


def load(f, map_location=None):
    """torch.load(f): what save() stored. map_location moves the tensors (they load on the CPU)."""
    if isinstance(f, (str, os.PathLike)):
        name = os.fspath(f)
        tensors, metadata = _C._io.load_file(name)
    else:
        name = getattr(f, "name", "<file object>")
        tensors, metadata = _C._io.deserialize(f.read(), str(name))
    if map_location is not None:
        tensors = {k: t.to(map_location) for k, t in tensors.items()}
    if _STRUCTURE_KEY not in metadata:
        return tensors
    try:
        structure = json.loads(metadata[_STRUCTURE_KEY])
    except ValueError as e:
        raise _C.Error(f"loom.load: '{name}': metadata \"{_STRUCTURE_KEY}\" is not valid JSON: {e}") from None
    return _decode(structure, tensors, name)
