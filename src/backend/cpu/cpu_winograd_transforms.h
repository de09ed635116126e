// The transforms of the Winograd convolution (Note [Winograd convolution] in
// cpu_winograd.h), each over one chunk of tiles (cpu_winograd_plan.h): the
// input (B^T d B), output (A^T M A) and output-gradient (A e A^T) transforms,
// chosen per call among their ISA clones, and the filter transforms.
#pragma once

#include <cstdint>

namespace loom::cpu::winograd {

// What the input transform of one chunk reads and writes.
struct InputJob {
  const float* x;  // (n, c, h, w)
  int64_t c, h, w, pad_h, pad_w;
  int64_t th, tw, row0, rows;  // tile rows [row0, row0 + rows)
  float* v;                    // V (36, c, nt)
  int64_t nt;
  float* tmp;  // input_tmp_floats(rows, th, tw)
};

// Floats of InputJob::tmp for a chunk of `rows` tile rows.
int64_t input_tmp_floats(int64_t rows, int64_t th, int64_t tw);

// V_f[ch][tile] = (B^T d B)_f for every channel and tile of the chunk.
void input_transform(const InputJob& a);

// What the output transform of one chunk reads and writes.
struct OutputJob {
  const float* m;  // M (36, o, nt)
  int64_t o, nt;
  int64_t oh, ow, th, tw, row0, rows;
  const float* bias;  // null: none
  int64_t bias_stride;
  float* y;    // (n, o, oh, ow)
  float* tmp;  // output_tmp_floats(rows, th, tw)
};

// Floats of OutputJob::tmp for a chunk of `rows` tile rows.
int64_t output_tmp_floats(int64_t rows, int64_t th, int64_t tw);

// y's 4x4 block of each tile of the chunk = A^T M A (+ bias).
void output_transform(const OutputJob& a);

// What the weight gradient's output-gradient transform of one chunk reads and writes.
struct GradJob {
  const float* g;  // (n, o, oh, ow)
  int64_t o, oh, ow, th, tw, row0, rows;
  float* e;  // E (36, o, nt)
  int64_t nt;
  float* tmp;  // grad_tmp_floats(rows, th, tw)
};

// Floats of GradJob::tmp for a chunk of `rows` tile rows.
int64_t grad_tmp_floats(int64_t rows, int64_t th, int64_t tw);

// E_f[oc][tile] = (A e A^T)_f, e the tile's 4x4 block of g (zeros past its edge).
void grad_transform(const GradJob& a);

// U_f[oc][ic] = (G g G^T)_f (f < 36) for every 3x3 filter g of w: w[oc][ic]
// of w (o, c, 3, 3) when !flip, else w[ic][oc] of w (c, o, 3, 3) rotated by
// 180 degrees. u: (36, o, c).
void filter_transform(const float* w, bool flip, int64_t o, int64_t c, float* u, float* tmp);

// dw (o, c, 3, 3) = G^T S G per filter, S from the weight gradient's summed
// products sums (36, o, c).
void filter_grad_transform(const float* sums, int64_t o, int64_t c, float* dw, float* rows);

}  // namespace loom::cpu::winograd
