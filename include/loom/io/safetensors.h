// Checkpoints as safetensors files, the format the Python safetensors /
// PyTorch / Hugging Face ecosystem reads and writes.
//
// Layout (https://github.com/huggingface/safetensors, "Format"):
//
//   bytes [0, 8)          N, the header length: uint64, little-endian
//   bytes [8, 8 + N)      UTF-8 JSON object, padded with spaces:
//                           {"__metadata__": {"key": "value", ...},
//                            "fc.weight": {"dtype": "F32", "shape": [10, 784],
//                                          "data_offsets": [begin, end]}, ...}
//   bytes [8 + N, EOF)    the data section: each tensor's elements, row-major
//                         and little-endian, at [begin, end) relative to 8 + N
//
// loom writes the header in the order given (metadata first, then tensors in
// StateDict order, their data back to back in the same order) and pads it to a
// multiple of 8 bytes so the data section starts 8-byte aligned.
//
// Reading checks every field before trusting it (Note [Validating a
// safetensors header] in src/io/safetensors.cpp): a truncated, oversized,
// overlapping or malformed file gives a loom::Error that names the file, the
// tensor key and the field or byte offset, never a crash, and nothing is
// allocated for a tensor until the whole header has been validated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "loom/nn/module.h"

namespace loom::io {

// What a safetensors file holds: the tensors in file order (CPU, contiguous)
// and the free-form string metadata ("__metadata__").
struct SafetensorsFile {
  nn::StateDict tensors;
  std::map<std::string, std::string> metadata;
};

// The largest header loom accepts, as the Python safetensors library (100 MB):
// a bigger length field is a corrupt or hostile file, not a checkpoint.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Writes `tensors` (any device, dtype among the eight, any strides; names
// unique and not "__metadata__") and `metadata` to `path` atomically: the
// bytes go to a temporary file in the same directory, which is fsync'ed and
// renamed over `path`, then the directory is fsync'ed. A save that fails or is
// interrupted leaves any previous file at `path` untouched.
void save_safetensors(const std::string& path, const nn::StateDict& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and validates a whole file; each tensor gets fresh CPU memory.
SafetensorsFile load_safetensors(const std::string& path);

// The same validation and decoding over bytes already in memory; errors name
// `name_for_errors` where they would name the file. Used by load tests and
// the fuzzer (tests/fuzz).
SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& name_for_errors);

// The exact bytes save_safetensors writes, in memory (for sending a state
// over a socket, hashing, or tests).
std::vector<uint8_t> serialize_safetensors(const nn::StateDict& tensors,
                                           const std::map<std::string, std::string>& metadata = {});

// The safetensors dtype string of a loom dtype ("F32", "BF16", "BOOL", ...).
const char* safetensors_dtype_name(DType dtype);

}  // namespace loom::io
