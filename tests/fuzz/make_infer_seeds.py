#!/usr/bin/env python3
"""Writes fuzz_infer_request's seed corpus: valid infer requests.

Usage: make_infer_seeds.py OUT_DIR

Each seed is the fuzzer's input format: a 4-byte little-endian
Inference-Header-Content-Length (0xffffffff: none, the body is all JSON),
then the body. The seeds cover every datatype, JSON data flat and nested,
binary data (alone and mixed with JSON), BYTES, requested outputs and
parameters, so the fuzzer starts from requests that pass every check and
mutates them into near-misses; the malformed requests of tests/serve/malformed
join them, as near-misses of every check.
"""
import json
import os
import struct
import sys

NO_HEADER = 0xFFFFFFFF

# datatype -> (struct format, sample values)
SAMPLES = {
    'BOOL': ('?', [True, False, True]),
    'UINT8': ('B', [0, 7, 255]),
    'UINT16': ('H', [0, 300, 65535]),
    'UINT32': ('I', [0, 70000, 4294967295]),
    'UINT64': ('Q', [0, 1, 18446744073709551615]),
    'INT8': ('b', [-128, 0, 127]),
    'INT16': ('h', [-32768, 5, 32767]),
    'INT32': ('i', [-2147483648, 42, 2147483647]),
    'INT64': ('q', [-9223372036854775808, -1, 9223372036854775807]),
    'FP16': ('e', [0.5, -2.0, 65504.0]),
    'BF16': (None, [1.0, -0.15625, 3.0e38]),
    'FP32': ('f', [0.1, -1.5, 3.4028234663852886e38]),
    'FP64': ('d', [0.1, -1e-300, 1.7976931348623157e308]),
    'BYTES': (None, ['', 'abc', 'caf\u00e9']),
}


def pack(datatype, values):
    fmt, _ = SAMPLES[datatype]
    if datatype == 'BYTES':
        out = b''
        for v in values:
            b = v.encode('utf-8')
            out += struct.pack('<I', len(b)) + b
        return out
    if datatype == 'BF16':
        return b''.join(struct.pack('<f', v)[2:] for v in values)
    return struct.pack('<%d%s' % (len(values), fmt), *values)


def json_seed(request, **dump_args):
    return struct.pack('<I', NO_HEADER) + json.dumps(request, **dump_args).encode('utf-8')


def binary_seed(request, blobs):
    header = json.dumps(request, separators=(',', ':')).encode('utf-8')
    return struct.pack('<I', len(header)) + header + b''.join(blobs)


def every_datatype_json():
    inputs = [{'name': dt.lower(), 'datatype': dt, 'shape': [3], 'data': values}
              for dt, (_, values) in SAMPLES.items()]
    return json_seed({'id': 'all', 'inputs': inputs})


def every_datatype_binary():
    inputs, blobs = [], []
    for dt, (_, values) in SAMPLES.items():
        blob = pack(dt, values)
        inputs.append({'name': dt.lower(), 'datatype': dt, 'shape': [3],
                       'parameters': {'binary_data_size': len(blob)}})
        blobs.append(blob)
    return binary_seed({'inputs': inputs, 'parameters': {'binary_data_output': True}}, blobs)


SEEDS = {
    'spec_example': json_seed({
        'id': '42',
        'inputs': [{'name': 'input0', 'shape': [2, 2], 'datatype': 'UINT32', 'data': [1, 2, 3, 4]},
                   {'name': 'input1', 'shape': [3], 'datatype': 'BOOL', 'data': [True, False, True]}],
        'outputs': [{'name': 'output0'}]}, indent=2),
    'every_datatype_json': every_datatype_json(),
    'every_datatype_binary': every_datatype_binary(),
    'nested': json_seed({'inputs': [{'name': 'x', 'datatype': 'FP32', 'shape': [2, 1, 3],
                                     'data': [[[1, 2, 3]], [[4.5, -6e-3, 7]]]}]}),
    'batch_of_rows': json_seed({'inputs': [{'name': 'x', 'datatype': 'INT64', 'shape': [2, 2, 2],
                                            'data': [[1, 2, 3, 4], [5, 6, 7, 8]]}]}),
    'data_before_datatype': json_seed({'inputs': [{'data': [[1, 0], [0, 1]], 'shape': [2, 2], 'name': 'm',
                                                   'datatype': 'FP16'}]}, sort_keys=False),
    'scalar_and_empty': json_seed({'inputs': [{'name': 's', 'datatype': 'FP64', 'shape': [], 'data': [2.5]},
                                              {'name': 'e', 'datatype': 'INT32', 'shape': [0, 4], 'data': []}]}),
    'outputs_and_parameters': json_seed({
        'id': 'req-7',
        'parameters': {'binary_data_output': False, 'timeout': 100000, 'priority': 1},
        'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': [1, 2, 2],
                    'parameters': {'content_type': 'raw'}, 'data': [0, 128, 255, 1]}],
        'outputs': [{'name': 'probs', 'parameters': {'classification': 3}},
                    {'name': 'logits', 'parameters': {'binary_data': True}}]}),
    'mixed_binary_json': binary_seed({
        'inputs': [{'name': 'image', 'datatype': 'FP32', 'shape': [1, 4],
                    'parameters': {'binary_data_size': 16}},
                   {'name': 'mask', 'datatype': 'BOOL', 'shape': [4], 'data': [True, True, False, True]},
                   {'name': 'words', 'datatype': 'BYTES', 'shape': [2],
                    'parameters': {'binary_data_size': 13}}],
        'outputs': [{'name': 'y', 'parameters': {'binary_data': True}}]},
        [pack('FP32', [1.0, 2.0, -3.0, 0.25]), pack('BYTES', ['hello', ''])]),
    'binary_empty_section': binary_seed({'inputs': [{'name': 'x', 'datatype': 'FP32', 'shape': [2],
                                                     'data': [1, 2]}]}, []),
    'mnist_like': binary_seed({'inputs': [{'name': 'input', 'datatype': 'FP32', 'shape': [1, 1, 4, 4],
                                           'parameters': {'binary_data_size': 64}}]},
                              [pack('FP32', [i / 16 for i in range(16)])]),
}


def malformed_seeds():
    """The malformed requests of tests/serve/malformed, in the fuzzer's format:
    near-misses of every check. A .bin case whose .hdr is not a byte count
    that fits the prefix is left out."""
    corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'serve', 'malformed')
    seeds = {}
    for name in sorted(os.listdir(corpus)):
        stem, ext = os.path.splitext(name)
        with open(os.path.join(corpus, name), 'rb') as f:
            body = f.read()
        if ext == '.json':
            seeds['malformed-' + stem] = struct.pack('<I', NO_HEADER) + body
        elif ext == '.bin':
            with open(os.path.join(corpus, stem + '.hdr')) as f:
                header = f.readline().strip()
            if header.isdigit() and int(header) < NO_HEADER:
                seeds['malformed-' + stem] = struct.pack('<I', int(header)) + body
    return seeds


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, data in {**SEEDS, **malformed_seeds()}.items():
        with open(os.path.join(out, name + '.bin'), 'wb') as f:
            f.write(data)


if __name__ == '__main__':
    main()
