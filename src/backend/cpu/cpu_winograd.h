// Winograd F(4x4, 3x3): the float32 path of 3x3, stride-1, undilated,
// ungrouped convolutions with enough channels (the driver in
// cpu_winograd.cpp, the chunk plan in cpu_winograd_plan.*, the transforms in
// cpu_winograd_transforms.*).
//
// Note [Winograd convolution]
// A 4x4 block of outputs of a 3x3 correlation reads a 6x6 patch d of the
// input. Winograd's minimal filtering algorithm F(4x4, 3x3) (Lavin and
// Gray's points 0, +-1, +-2 and infinity) computes it as
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A        ((.) elementwise, 6x6)
// with the constant matrices (rows separated by ';')
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
//          0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6;
//          1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
// Summed over input channels, each of the 36 positions f of the 6x6
// products is a matrix product: M_f (O, tiles) = U_f (O, C) @ V_f (C, tiles),
// U = G g G^T per (o, c), V = B^T d B per (c, tile). That is 36 multiplies
// per 4x4 outputs and channel pair instead of 144: 4x fewer flops, spent
// in 36 GEMMs on loom's GEMM micro-kernel. (F(2x2, 3x3) needs 16 per
// 2x2 outputs, 2.25x fewer; on the CNN's 14x14 maps, whose 4x4 tiles cover
// 16x16, F(4x4, 3x3) still does 0.73x of its GEMM work.)
//
// The input gradient of a stride-1 3x3 convolution with padding p is the
// same correlation of the output gradient with the filter flipped in space
// and transposed in channels, padded by 2 - p (any integer: reads outside
// the input are zeros). The weight gradient uses the transposed algorithm
// F(3x3, 4x4) on the same tiles:
//   dW (3x3) = G^T [ sum over tiles of (A e A^T) (.) (B^T d B) ] G
// with e the 4x4 block of the output gradient (zeros past its edge): 36
// GEMMs S_f (O, C) = E_f (O, tiles) @ V_f^T (tiles, C) summed over every
// tile of every sample, and one small transform at the end.
//
// Layout: lanes are tiles. A tile row of one sample (a "band" of them)
// is transformed at once: the 6x6 patches of tiles j = 0, 1, ... overlap
// (tile j reads columns 4j .. 4j + 5), so each input row is first split
// into six column phases (phase m holds column 4j + m of every tile j) and
// the rows by their remainder mod 4, after which both 1-D transforms are
// plain vector arithmetic over contiguous tiles. The output goes back the
// other way (four column phases interleaved into each output row).
//
// Work goes in chunks of whole tile rows (4 output rows of one sample),
// sized so the chunk's transformed inputs and products stay in L2 (about
// 512 KiB; at least 32 tiles, one GEMM panel; 128 or more for the weight
// gradient); the chunk's input transform, GEMMs and output transform run
// back to back on one thread. The GEMMs call the micro-kernel directly:
// the filters are packed into its A panels once per call and V is read in
// place. The input, output and output-gradient transforms multiply only by
// powers of two (exact), so only their additions round, and the ISA clones
// of the general path give the same bits (the 4x4-tile path of Note
// [Winograd 4x4-tile planes] adds in another order); the filter transform
// and the weight gradient's last step run in double, rounded once. The
// weight gradient sums each of a fixed number of ranges of chunks as one
// chain over its tiles in order, then adds the ranges in order. The chunk
// and range plan depends on the shapes only, so the bits do not depend on
// the thread count.
//
// Non-finite inputs: the transforms subtract neighbours, so an inf gives
// NaN where the direct sum would give +-inf.
//
// Accuracy: each output is a sum of products of transformed values, which
// are sums of up to 36 inputs with weights up to 25; the first-order error
// bound is (channels + a few) roundings of
//   |A^T| ( sum_c (|G| |g| |G^T|) (.) (|B^T| |d| |B|) ) |A|
// rather than of the direct sum's sum |g| |d|. tests/ops/test_ops_conv.cpp
// states the bound and checks it.
#pragma once

#include <cstdint>

#include "backend/workspace.h"

namespace loom::cpu {

// Whether a 3x3 stride-1 undilated ungrouped float32 correlation from
// `in_channels` to `out_channels` over an oh x ow output takes the Winograd path.
bool winograd_suits(int64_t in_channels, int64_t out_channels, int64_t oh, int64_t ow);

// y (n, o, oh, ow) = the correlation of x (n, c, h, w) with a 3x3 filter,
// padded by (pad_h, pad_w) (any integers), plus bias[o * bias_stride] when
// bias is not null. The filter for (out o, in c) is w[o][c] of w (o, c, 3, 3)
// when !flip, else w[c][o] of w (c, o, 3, 3) rotated by 180 degrees (the
// input gradient's filter). Every tensor contiguous.
void winograd_conv3x3_f32(WorkspaceLayout& ws, const float* x, int64_t n, int64_t c, int64_t h, int64_t w, const float* weight, bool flip,
                          int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, const float* bias,
                          int64_t bias_stride, float* y);

// dw (o, c, 3, 3) = the weight gradient of that correlation (!flip) for the
// input x (n, c, h, w) and the output gradient g (n, o, oh, ow).
void winograd_weight_grad3x3_f32(WorkspaceLayout& ws, const float* x, const float* g, int64_t n, int64_t c, int64_t h, int64_t w,
                                 int64_t o, int64_t oh, int64_t ow, int64_t pad_h, int64_t pad_w, float* dw);

}  // namespace loom::cpu
