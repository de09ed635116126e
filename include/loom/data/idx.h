// The IDX file format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).
//
// Layout (all integers big-endian): two zero bytes, a type code, the number
// of dims D, then D uint32 sizes, then the elements in row-major order.
// Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
// 0x0E float64. So MNIST images start with magic 0x00000803 (uint8, 3 dims:
// N, 28, 28) and labels with 0x00000801 (uint8, 1 dim: N).
#pragma once

#include <string>

#include "loom/tensor.h"

namespace loom::data {

// Reads an IDX file into a tensor shaped as its header says. uint8, int32,
// float32 and float64 keep their type; int8 and int16 (which loom has no dtype
// for) widen to int32. A path ending in .gz, or any gzip file, is inflated
// on the fly with zlib.
//
// Everything is checked before it is trusted: the magic and type code, a dim
// count of 1 to 8, the element count, and that the file holds exactly the
// bytes the header promises. Memory grows only with data actually read, so a
// header declaring an absurd size costs nothing. Any problem is a loom::Error
// naming the path and the byte offset (in the uncompressed stream).
Tensor read_idx(const std::string& path);

}  // namespace loom::data
