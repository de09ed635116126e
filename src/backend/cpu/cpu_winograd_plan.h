// The chunk plan of the Winograd convolution (Note [Winograd convolution] in
// cpu_winograd.h): how the 4x4 output tiles of one call are cut into chunks
// whose transformed inputs and products stay in L2, and where each tile's
// column lies in a chunk's V, M and E.
#pragma once

#include <cstdint>

#include "backend/cpu/cpu_gemm.h"

namespace loom::cpu::winograd {

// 6x6 transformed tiles: 36 positions f = 6 * k + l (row k, column l).
constexpr int kPositions = 36;

// The chunk plan: columns (tiles) a chunk aims at, from the bytes of its
// V and M (about half of L2, so the input transform's output, the GEMMs
// and the output transform pass the chunk through L2), at least
// kMinColumns (one GEMM panel) and at most kMaxColumns. The weight
// gradient's GEMMs have the tiles as their depth, and each chunk loads and
// stores the sums S once: there chunks of kMinColumnsDw tiles ran best
// (32 x 64 channels at 14x14 on Zen 5: 64-128 tiles 10% faster than 32 or 256).
constexpr int64_t kChunkBytes = 512 * 1024;
constexpr int64_t kMinColumns = 32;
constexpr int64_t kMinColumnsDw = 128;
constexpr int64_t kMaxColumns = 256;
// The weight gradient's ranges of chunks: at most this many, and their
// partial sums at most kPartialFloats floats in all.
constexpr int64_t kMaxRanges = 16;
constexpr int64_t kPartialFloats = int64_t{8} << 20;

// The tile plan of one call: 4x4 output tiles, th x tw per sample, cut
// into chunks of whole tile rows (global tile row r = sample * th + i).
// Tile j of global row r is column (r - row0) * tw + j of its chunk's V, M
// and E, whose rows are nt floats apart.
struct Tiling {
  int64_t th, tw, rows, rows_per_chunk, chunks, nt;
};

// Planes of 4x4 tiles (Note [Winograd 4x4-tile planes] in
// cpu_winograd_transforms.cpp).
inline bool tiles4(int64_t th, int64_t tw) { return th == 4 && tw == 4; }
// A chunk of whole samples of such planes: its transforms take the register
// path (all of them, so V, M and E agree on the order of the tiles).
inline bool tiles4_chunk(int64_t th, int64_t tw, int64_t row0, int64_t rows) {
  return tiles4(th, tw) && row0 % 4 == 0 && rows % 4 == 0;
}

// The plan for n samples of oh x ow outputs, chunks of about kChunkBytes of
// floats_per_tile floats a tile, at least `least` tiles each, cut so the
// GEMM micro-kernel g's last panel of a chunk wastes the least.
Tiling tiling(int64_t n, int64_t oh, int64_t ow, int64_t floats_per_tile, const GemmKernel& g, int64_t least);

// Floats from one position's matrix of V, M or E (rows x nt) to the next:
// one cache line more than the matrix, so the 36 lines a tile's transform
// writes or reads at once fall in different L1 sets (a multiple of 4 KiB
// would put them all in one).
inline int64_t slab(int64_t rows, int64_t nt) { return rows * nt + 16; }

}  // namespace loom::cpu::winograd
