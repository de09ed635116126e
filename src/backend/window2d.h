// The geometry of a 2-D sliding window, shared by the convolution and pooling
// kernels (ops.def: "convolution" and "pooling" rows). The ops layer fills one
// and passes its address in KernelCall::i[0] (the kernels read it with
// window_of); the kernels take output sizes from their output tensors, so
// ceil_mode and output_padding are the ops layer's business.
//
// Output position (oh, ow) reads input rows oh * sh - ph + kh_i * dh and
// columns ow * sw - pw + kw_i * dw for kh_i < kh, kw_i < kw; positions
// outside the input are padding (zeros for convolution, skipped by pooling).
#pragma once

#include <cstdint>

#include "backend/backend.h"

namespace loom {

struct Window2d {
  int64_t kh, kw;  // window (kernel) size
  int64_t sh, sw;  // stride
  int64_t ph, pw;  // padding before the first row / column
  int64_t dh, dw;  // dilation
};

// The window a convolution or pooling kernel was called with.
inline const Window2d& window_of(const KernelCall& c) { return *reinterpret_cast<const Window2d*>(c.i[0]); }

}  // namespace loom
