// Philox4x32-10: a counter-based random generator (Salmon et al., "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011). Each call maps a
// (key, counter) pair to 4 independent uint32 words with no hidden state, so
// any thread can draw element k of a tensor directly.
//
// Note [Philox element mapping]
// Every random kernel draws element k (in row-major order) of its output
// from exactly one Philox block:
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(offset + k), hi32(offset + k), 0, 0)      (offset + k wraps mod 2^64)
// and uses the block's words as follows:
//   uniform float  : word 0, top 24 bits               -> [0, 1)
//                    (top 11 bits for float16 and 8 for bfloat16 outputs of
//                    Uniform, so rounding to the storage type cannot reach 1)
//   uniform double : words 0,1 (0 high), top 53 bits   -> [0, 1)
//   normal float   : Box-Muller, u1 from word 0 (in (0, 1]), u2 from word 1; the cos branch
//   normal double  : Box-Muller, u1 from words 0,1, u2 from words 2,3
//   64 random bits : words 0,1 (0 high)
// So element k depends only on (seed, offset + k), never on the thread count
// or on how the output is split. A caller that draws n elements advances its
// offset by n so the next draw uses fresh counters.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

// The functions below run on the host and, compiled by nvcc, on the device
// too (the CUDA random kernels draw the same numbers as the CPU's).
#ifndef LOOM_HOST_DEVICE
#ifdef __CUDACC__
#define LOOM_HOST_DEVICE __host__ __device__
#else
#define LOOM_HOST_DEVICE
#endif
#endif

namespace loom::philox {

using Block = std::array<uint32_t, 4>;

// The general form: a 64-bit key and a 128-bit counter.
LOOM_HOST_DEVICE inline Block philox4x32_10(std::array<uint32_t, 2> key, Block c) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c[2];
    c = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0, static_cast<uint32_t>(p1),
         static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1, static_cast<uint32_t>(p0)};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return c;
}

// The form the kernels use (Note [Philox element mapping]).
LOOM_HOST_DEVICE inline Block philox4x32_10(uint64_t seed, uint64_t counter) {
  return philox4x32_10({static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
                       {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u});
}

// [0, 1) from the top `digits` (1..24) bits of a word: a multiple of
// 2^-digits, exact in any float type with that many significand bits.
LOOM_HOST_DEVICE inline float to_unit_float(uint32_t w, int digits = 24) {
  return std::ldexp(static_cast<float>(w >> (32 - digits)), -digits);
}
// [0, 1) from the top 53 bits of two words: every value is exact in double.
LOOM_HOST_DEVICE inline double to_unit_double(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 32) | lo;
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

LOOM_HOST_DEVICE inline float uniform_float(uint64_t seed, uint64_t counter, int digits = 24) {
  return to_unit_float(philox4x32_10(seed, counter)[0], digits);
}
LOOM_HOST_DEVICE inline double uniform_double(uint64_t seed, uint64_t counter) {
  const Block b = philox4x32_10(seed, counter);
  return to_unit_double(b[0], b[1]);
}
LOOM_HOST_DEVICE inline uint64_t bits64(uint64_t seed, uint64_t counter) {
  const Block b = philox4x32_10(seed, counter);
  return (static_cast<uint64_t>(b[0]) << 32) | b[1];
}

// Standard normal by Box-Muller: u1 is taken in (0, 1] so log(u1) is finite.
LOOM_HOST_DEVICE inline float normal_float(uint64_t seed, uint64_t counter) {
  const Block b = philox4x32_10(seed, counter);
  const float u1 = static_cast<float>((b[0] >> 8) + 1u) * 0x1p-24f;
  const float u2 = to_unit_float(b[1]);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
}
LOOM_HOST_DEVICE inline double normal_double(uint64_t seed, uint64_t counter) {
  const Block b = philox4x32_10(seed, counter);
  const uint64_t bits = (static_cast<uint64_t>(b[0]) << 32) | b[1];
  const double u1 = static_cast<double>((bits >> 11) + 1u) * 0x1p-53;
  const double u2 = to_unit_double(b[2], b[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace loom::philox
