#!/usr/bin/env python3
"""Writes the fuzzer's seed corpus: small valid safetensors files.

Usage: make_seeds.py OUT_DIR

Each seed is a well-formed file (loom's own layout and the variations other
writers produce), so the fuzzer starts from inputs that pass every check and
mutates them into near-misses.
"""
import json
import os
import struct
import sys

SIZE = {'F32': 4, 'F64': 8, 'F16': 2, 'BF16': 2, 'I32': 4, 'I64': 8, 'U8': 1, 'BOOL': 1}


def safetensors(tensors, metadata=None, pad=True, sort_keys=False, separators=(',', ':'), ensure_ascii=False):
    """tensors: [(name, dtype, shape)], data filled with a byte pattern."""
    header, blob = {}, b''
    if metadata is not None:
        header['__metadata__'] = metadata
    for name, dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        size = n * SIZE[dtype]
        data = bytes((i % 2) if dtype == 'BOOL' else (i * 37 + 11) % 256 for i in range(size))
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [len(blob), len(blob) + size]}
        blob += data
    text = json.dumps(header, sort_keys=sort_keys, separators=separators, ensure_ascii=ensure_ascii).encode('utf-8')
    if pad:
        text += b' ' * (-len(text) % 8)
    return struct.pack('<Q', len(text)) + text + blob


SEEDS = {
    'empty': safetensors([]),
    'metadata_only': safetensors([], {'format': 'pt', 'epoch': '3'}),
    'one_f32': safetensors([('w', 'F32', [2, 3])]),
    'scalar_i64': safetensors([('step', 'I64', [])]),
    'empty_tensor': safetensors([('e', 'F32', [0, 4]), ('x', 'U8', [3])]),
    'every_dtype': safetensors([('f32', 'F32', [2]), ('f64', 'F64', [2]), ('f16', 'F16', [3]),
                                ('bf16', 'BF16', [1, 2]), ('i32', 'I32', [2]), ('i64', 'I64', [1]),
                                ('u8', 'U8', [5]), ('bool', 'BOOL', [4])], {'k': 'v'}),
    # Large dims whose product still fits: one digit away from an overflow.
    'huge_empty': safetensors([('e', 'F32', [0, 4294967296, 4]), ('x', 'I64', [1])]),
    'mlp': safetensors([('fc1.weight', 'F32', [4, 3]), ('fc1.bias', 'F32', [4]),
                        ('fc2.weight', 'F32', [2, 4]), ('fc2.bias', 'F32', [2]),
                        ('bn.num_batches_tracked', 'I64', [])], {'format': 'pt'}),
    'python_style': safetensors([('b', 'F16', [2, 2]), ('a', 'I32', [3])], {'source': 'python'},
                                pad=False, sort_keys=True, separators=(', ', ': ')),
    'unicode_names': safetensors([('\u00e9t\u00e9', 'F32', [1]), ('\u6a21\u578b', 'BOOL', [2])],
                                 {'note': 'caf\u00e9 \u2713'}),
    'unicode_escaped': safetensors([('\u00e9t\u00e9\U0001f600', 'I32', [1])], {'note\u0000': '\u2713'},
                                   ensure_ascii=True),
}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name + '.safetensors'), 'wb') as f:
            f.write(data)


if __name__ == '__main__':
    main()
