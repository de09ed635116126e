// Winograd F(2x2, 3x3): the float32 path of 3x3, stride-1, undilated,
// ungrouped convolutions with enough channels (cpu_winograd.cpp).
//
// Note [Winograd convolution]
// A 2x2 block of outputs of a 3x3 correlation reads a 4x4 patch d of the
// input. Winograd's minimal filtering algorithm F(2x2, 3x3) computes it as
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A        ((.) elementwise, 4x4)
// with the constant matrices (rows separated by ';')
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   G   = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
// Summed over input channels, each of the 16 positions f of the 4x4
// products is a matrix product: M_f (O, tiles) = U_f (O, C) @ V_f (C, tiles),
// U = G g G^T per (o, c), V = B^T d B per (c, tile). That is 16 multiplies
// per 2x2 outputs and channel pair instead of 36: 2.25x fewer flops, spent
// in 16 GEMMs of loom's sgemm (one batched call).
//
// The input gradient of a stride-1 3x3 convolution with padding p is the
// same correlation of the output gradient with the filter flipped in space
// and transposed in channels, padded by 2 - p (any integer: reads outside
// the input are zeros). The weight gradient uses the transposed algorithm
// F(3x3, 2x2) on the same tiles:
//   dW (3x3) = G^T [ sum over tiles of (A e A^T) (.) (B^T d B) ] G
// with e the 2x2 block of the output gradient (zeros past its edge): 16
// GEMMs S_f (O, C) = E_f (O, tiles) @ V_f^T (tiles, C) summed over every
// tile of every sample, and one small transform at the end.
//
// Work goes in chunks of whole tile rows (2 output rows of one sample): at
// least 256 tiles, more while the chunk's transformed inputs and products
// stay under 1.5 MiB; the chunk's input transform, GEMMs and output
// transform run back to back on one thread. The transforms multiply only
// by 1 and 0.5 (exact), so only their additions round; the weight gradient
// adds its chunks' partial sums in chunk order within a fixed number of
// ranges, then the ranges in order. The chunk and range plan depends on
// the shapes only, so the bits do not depend on the thread count.
//
// Non-finite inputs: the transforms subtract neighbours, so an inf gives
// NaN where the direct sum would give +-inf.
//
// Accuracy: each output is a sum of products of transformed values, which
// are sums of up to 16 inputs; the error bound is a small multiple of the
// direct convolution's, taken over the whole 4x4 patch and filter rather
// than term by term (tests/ops/test_ops_conv.cpp states it).
#pragma once

#include <cstdint>

namespace loom::cpu {

// Whether a 3x3 stride-1 undilated ungrouped float32 correlation from
// `in_channels` to `out_channels` over an oh x ow output takes the Winograd path.
bool winograd_suits(int64_t in_channels, int64_t out_channels, int64_t oh, int64_t ow);

// y (n, o, oh, ow) = the correlation of x (n, c, h, w) with a 3x3 filter,
// padded by (pad_h, pad_w) (any integers), plus bias[o * bias_stride] when
// bias is not null. The filter for (out o, in c) is w[o][c] of w (o, c, 3, 3)
// when !flip, else w[c][o] of w (c, o, 3, 3) rotated by 180 degrees (the
// input gradient's filter). Every tensor contiguous.
void winograd_conv3x3_f32(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, const float* weight, bool flip,
                          int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, const float* bias,
                          int64_t bias_stride, float* y);

// dw (o, c, 3, 3) = the weight gradient of that correlation (!flip) for the
// input x (n, c, h, w) and the output gradient g (n, o, oh, ow).
void winograd_weight_grad3x3_f32(const float* x, const float* g, int64_t n, int64_t c, int64_t h, int64_t w,
                                 int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, float* dw);

}  // namespace loom::cpu
