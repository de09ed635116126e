// Convolution rows of the op harness (conv2d, conv1d, conv_transpose2d,
// conv2d_weight) with plain-loop references, and the float32 GEMM path of
// the kernels against the float64 reference kernel on odd sizes, strided
// inputs and both thread counts.
#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "fast_paths.h"
#include "harness.h"

namespace loom_test {

namespace {

using AL = std::vector<Array>;
using loom::ConvPadding;

struct Geo {
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
};

// y[n, o, oh, ow] = b[o] + sum x[n, g*cg + c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] w[o, c, kh, kw].
Array conv_ref(const Array& x, const Array& w, const Array* b, const Geo& g) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t o = w.size(0), cg = w.size(1), kh = w.size(2), kw = w.size(3), og = o / g.groups;
  const int64_t oh = (h + 2 * g.ph - g.dh * (kh - 1) - 1) / g.sh + 1;
  const int64_t ow = (wd + 2 * g.pw - g.dw * (kw - 1) - 1) / g.sw + 1;
  Array y({n, o, oh, ow});
  for (int64_t ni = 0; ni < n; ++ni)
    for (int64_t oi = 0; oi < o; ++oi)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j) {
          double acc = b != nullptr ? b->v[static_cast<size_t>(oi)] : 0.0;
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t a = 0; a < kh; ++a)
              for (int64_t bb = 0; bb < kw; ++bb) {
                const int64_t ih = i * g.sh - g.ph + a * g.dh, iw = j * g.sw - g.pw + bb * g.dw;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                acc += x.at({ni, (oi / og) * cg + ci, ih, iw}) * w.at({oi, ci, a, bb});
              }
          y.at({ni, oi, i, j}) = acc;
        }
  (void)c;
  return y;
}

// The transposed convolution by scattering each input pixel (an independent
// formulation): x (N, Cin, H, W), w (Cin, Cout/G, KH, KW).
Array conv_transpose_ref(const Array& x, const Array& w, const Array* b, const Geo& g, int64_t oph, int64_t opw) {
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t cog = w.size(1), kh = w.size(2), kw = w.size(3), cout = cog * g.groups, cig = cin / g.groups;
  const int64_t oh = (h - 1) * g.sh - 2 * g.ph + g.dh * (kh - 1) + oph + 1;
  const int64_t ow = (wd - 1) * g.sw - 2 * g.pw + g.dw * (kw - 1) + opw + 1;
  Array y({n, cout, oh, ow});
  for (int64_t ni = 0; ni < n; ++ni)
    for (int64_t ci = 0; ci < cin; ++ci)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < wd; ++j)
          for (int64_t co = 0; co < cog; ++co)
            for (int64_t a = 0; a < kh; ++a)
              for (int64_t bb = 0; bb < kw; ++bb) {
                const int64_t yh = i * g.sh - g.ph + a * g.dh, yw = j * g.sw - g.pw + bb * g.dw;
                if (yh < 0 || yh >= oh || yw < 0 || yw >= ow) continue;
                y.at({ni, (ci / cig) * cog + co, yh, yw}) += x.at({ni, ci, i, j}) * w.at({ci, co, a, bb});
              }
  if (b != nullptr)
    for (int64_t k = 0; k < y.numel(); ++k) y.v[static_cast<size_t>(k)] += b->v[static_cast<size_t>((k / (oh * ow)) % cout)];
  return y;
}

// dw[o, c, kh, kw] = sum over (n, oh, ow) of x * g.
Array conv_weight_ref(const Array& x, const Array& gy, const Shape& wsize, const Geo& g) {
  const int64_t n = x.size(0), h = x.size(2), wd = x.size(3), oh = gy.size(2), ow = gy.size(3);
  const int64_t o = wsize[0], cg = wsize[1], kh = wsize[2], kw = wsize[3], og = o / g.groups;
  Array dw(wsize);
  for (int64_t oi = 0; oi < o; ++oi)
    for (int64_t ci = 0; ci < cg; ++ci)
      for (int64_t a = 0; a < kh; ++a)
        for (int64_t bb = 0; bb < kw; ++bb) {
          double acc = 0;
          for (int64_t ni = 0; ni < n; ++ni)
            for (int64_t i = 0; i < oh; ++i)
              for (int64_t j = 0; j < ow; ++j) {
                const int64_t ih = i * g.sh - g.ph + a * g.dh, iw = j * g.sw - g.pw + bb * g.dw;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                acc += x.at({ni, (oi / og) * cg + ci, ih, iw}) * gy.at({ni, oi, i, j});
              }
          dw.at({oi, ci, a, bb}) = acc;
        }
  return dw;
}

Array pad_zero_after(const Array& x) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  Array y({n, c, h + 1, w + 1});
  for_each_index(x.shape, [&](const std::vector<int64_t>& i) { y.at(i) = x.at(i); });
  return y;
}

// A conv2d row with bias: inputs x, w, b.
Row conv_row(const std::string& name, Shape x, Shape w, Geo g) {
  const Shape b{w[0]};
  return Row(name)
      .in(U(-1, 1))
      .in(U(-1, 1))
      .in(U(-1, 1))
      .shapes({{x, w, b}})
      .f([g](const TL& t) {
        return loom::conv2d(t[0], t[1], t[2], {g.sh, g.sw}, {g.ph, g.pw}, {g.dh, g.dw}, g.groups);
      })
      .r([g](const AL& a) { return conv_ref(a[0], a[1], &a[2], g); });
}

}  // namespace

void add_conv_rows(std::vector<Row>& rows) {
  rows.push_back(conv_row("conv2d", {2, 3, 5, 6}, {4, 3, 3, 2}, {}).gradgrad_check());
  rows.push_back(conv_row("conv2d_stride_pad", {2, 2, 7, 6}, {3, 2, 3, 3}, {.sh = 2, .sw = 1, .ph = 1, .pw = 2}));
  rows.push_back(conv_row("conv2d_dilation", {1, 2, 7, 8}, {3, 2, 3, 2}, {.ph = 1, .pw = 1, .dh = 2, .dw = 3}));
  rows.push_back(conv_row("conv2d_groups", {2, 4, 5, 5}, {6, 2, 3, 3}, {.sh = 2, .sw = 2, .ph = 1, .pw = 1, .groups = 2}));
  rows.push_back(conv_row("conv2d_depthwise", {2, 3, 5, 4}, {3, 1, 3, 3}, {.ph = 1, .pw = 1, .groups = 3}));
  rows.push_back(conv_row("conv2d_pointwise", {2, 3, 4, 5}, {5, 3, 1, 1}, {}));
  rows.push_back(conv_row("conv2d_pointwise_strided", {2, 3, 5, 5}, {2, 3, 1, 1}, {.sh = 2, .sw = 2}));
  rows.push_back(Row("conv2d_no_bias")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{2, 2, 5, 5}, {3, 2, 2, 2}}})
                     .f([](const TL& t) { return loom::conv2d(t[0], t[1], {}, {2}, {1}); })
                     .r([](const AL& a) { return conv_ref(a[0], a[1], nullptr, {.sh = 2, .sw = 2, .ph = 1, .pw = 1}); })
                     .gradgrad_check());
  rows.push_back(Row("conv2d_unbatched")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{3, 5, 4}, {2, 3, 3, 3}}})
                     .f([](const TL& t) { return loom::conv2d(t[0], t[1], {}, {1}, {1}); })
                     .r([](const AL& a) {
                       Array x = ref_reshape(a[0], {1, 3, 5, 4});
                       return ref_reshape(conv_ref(x, a[1], nullptr, {.ph = 1, .pw = 1}), {2, 5, 4});
                     }));
  // "same" with an even kernel: the odd padding goes right / bottom.
  rows.push_back(Row("conv2d_same")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{2, 2, 5, 6}, {3, 2, 2, 3}}})
                     .f([](const TL& t) { return loom::conv2d(t[0], t[1], {}, {1}, ConvPadding::Same, {2, 1}); })
                     .r([](const AL& a) {
                       // dilated kernel extents 3 and 3: padding 1 on every side.
                       return conv_ref(a[0], a[1], nullptr, {.ph = 1, .pw = 1, .dh = 2, .dw = 1});
                     }));
  rows.push_back(Row("conv2d_same_even")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{1, 2, 4, 5}, {2, 2, 2, 2}}})
                     .f([](const TL& t) { return loom::conv2d(t[0], t[1], {}, {1}, ConvPadding::Same); })
                     .r([](const AL& a) {
                       // total padding 1 per dim, all of it after the last row / column.
                       Array x = pad_zero_after(a[0]);
                       return conv_ref(x, a[1], nullptr, {});
                     }));
  rows.push_back(Row("conv1d")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{2, 3, 9}, {4, 3, 3}, {4}}})
                     .f([](const TL& t) { return loom::conv1d(t[0], t[1], t[2], {2}, {1}, {2}); })
                     .r([](const AL& a) {
                       Array x = ref_reshape(a[0], {2, 3, 1, 9}), w = ref_reshape(a[1], {4, 3, 1, 3});
                       Array y = conv_ref(x, w, &a[2], {.sw = 2, .pw = 1, .dw = 2});
                       return ref_reshape(y, {2, 4, y.size(3)});
                     }));
  rows.push_back(Row("conv1d_same_groups")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{4, 7}, {2, 2, 3}}})
                     .f([](const TL& t) { return loom::conv1d(t[0], t[1], {}, {1}, ConvPadding::Same, {1}, 2); })
                     .r([](const AL& a) {
                       Array x = ref_reshape(a[0], {1, 4, 1, 7}), w = ref_reshape(a[1], {2, 2, 1, 3});
                       return ref_reshape(conv_ref(x, w, nullptr, {.pw = 1, .groups = 2}), {2, 7});
                     }));
  rows.push_back(Row("conv_transpose2d")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{2, 3, 3, 4}, {3, 2, 3, 3}, {2}}})
                     .f([](const TL& t) { return loom::conv_transpose2d(t[0], t[1], t[2], {2}, {1}, {1, 0}); })
                     .r([](const AL& a) { return conv_transpose_ref(a[0], a[1], &a[2], {.sh = 2, .sw = 2, .ph = 1, .pw = 1}, 1, 0); })
                     .gradgrad_check());
  rows.push_back(Row("conv_transpose2d_groups_dilation")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{1, 4, 3, 3}, {4, 3, 2, 3}}})
                     .f([](const TL& t) { return loom::conv_transpose2d(t[0], t[1], {}, {1, 2}, {0, 1}, {0}, 2, {2, 1}); })
                     .r([](const AL& a) {
                       return conv_transpose_ref(a[0], a[1], nullptr, {.sh = 1, .sw = 2, .ph = 0, .pw = 1, .dh = 2, .dw = 1, .groups = 2}, 0, 0);
                     }));
  rows.push_back(Row("conv2d_weight")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{2, 4, 5, 6}, {2, 2, 3, 3}}})
                     .f([](const TL& t) { return loom::conv2d_weight(t[0], {2, 2, 3, 2}, t[1], {2, 2}, {1, 0}, {1}, 2); })
                     .r([](const AL& a) {
                       return conv_weight_ref(a[0], a[1], {2, 2, 3, 2}, {.sh = 2, .sw = 2, .ph = 1, .groups = 2});
                     })
                     .gradgrad_check());
}

namespace {

using loom::Tensor;

// Every element of the float32 result within the rounding bound of its dot
// product against the float64 reference kernel: |got - want| <= (K + 2) u
// sum |terms| (u = 2^-24), with sum |terms| from the same op on |inputs|.
void expect_within_rounding(const Tensor& got32, const Tensor& want64, const Tensor& abs64, int64_t depth,
                            const std::string& what) {
  ASSERT_EQ(got32.sizes(), want64.sizes()) << what;
  Tensor g = got32.to(loom::kFloat64).contiguous(), w = want64.contiguous(), a = abs64.contiguous();
  const double* pg = g.data_ptr<double>();
  const double* pw = w.data_ptr<double>();
  const double* pa = a.data_ptr<double>();
  const double u = std::ldexp(1.0, -24);
  int bad = 0;
  for (int64_t k = 0; k < g.numel() && bad < 5; ++k) {
    const double bound = static_cast<double>(depth + 2) * u * pa[k] + 1e-30;
    if (std::abs(pg[k] - pw[k]) > bound) {
      ++bad;
      ADD_FAILURE() << what << ": element " << k << " got " << pg[k] << " want " << pw[k] << " bound " << bound;
    }
  }
}

struct FastCase {
  Shape x, w;
  Geo g;
};

// Odd sizes, every geometry the kernels special-case (pointwise, strides,
// dilation, groups), batches above and below the thread count, and outputs
// big enough that the weight gradient is cut into several chunks.
const std::vector<FastCase> kFastCases = {
    {{3, 5, 17, 13}, {7, 5, 3, 3}, {.ph = 1, .pw = 1}},
    {{1, 3, 11, 9}, {4, 3, 3, 2}, {.sh = 2, .sw = 3, .ph = 2, .pw = 1}},
    {{5, 4, 9, 10}, {6, 2, 3, 3}, {.ph = 1, .pw = 2, .dh = 2, .dw = 1, .groups = 2}},
    {{4, 6, 7, 7}, {6, 1, 3, 3}, {.ph = 1, .pw = 1, .groups = 6}},
    {{3, 7, 6, 5}, {9, 7, 1, 1}, {}},
    {{2, 3, 41, 43}, {5, 3, 5, 5}, {.ph = 2, .pw = 2}},
    {{9, 2, 3, 3}, {3, 2, 3, 3}, {.ph = 1, .pw = 1}},
    // Dead taps (only the centre one reads the 1x1 map; four reach the 2x2 one) and many samples per GEMM.
    {{37, 6, 1, 1}, {4, 6, 3, 3}, {.ph = 1, .pw = 1}},
    {{7, 4, 2, 2}, {5, 4, 3, 3}, {.sh = 2, .sw = 2, .ph = 1, .pw = 1}},
    {{6, 4, 1, 3}, {6, 2, 3, 3}, {.ph = 2, .pw = 1, .dh = 2, .dw = 1, .groups = 2}},
    // Stride 2 along rows: DCGAN's 4x4 kernels, rows of 14 and of 35 outputs, odd widths, padding 0 to 3 and
    // dilation.
    {{3, 2, 28, 28}, {4, 2, 4, 4}, {.sh = 2, .sw = 2, .ph = 1, .pw = 1}},
    {{2, 3, 9, 70}, {5, 3, 4, 4}, {.sh = 2, .sw = 2, .ph = 1, .pw = 1}},
    {{2, 2, 7, 37}, {3, 2, 3, 5}, {.sh = 1, .sw = 2, .ph = 0, .pw = 3}},
    {{2, 2, 6, 33}, {3, 2, 3, 3}, {.sh = 2, .sw = 2, .ph = 1, .pw = 0, .dh = 1, .dw = 2}},
};

TEST(ConvFastPath, MatchesReferenceKernel) {
  loom::manual_seed(7);
  for (const FastCase& fc : kFastCases) {
    const Geo& g = fc.g;
    // Non-contiguous float32 inputs: transposed storage, permuted back.
    Tensor x = loom::randn({fc.x[0], fc.x[1], fc.x[3], fc.x[2]}).transpose(2, 3);
    Tensor w = loom::randn(fc.w);
    Tensor b = loom::randn({fc.w[0], 2}).select(1, 1);  // stride 2
    auto conv = [&](const Tensor& xx, const Tensor& ww, const Tensor& bb) {
      return loom::conv2d(xx, ww, bb, {g.sh, g.sw}, {g.ph, g.pw}, {g.dh, g.dw}, g.groups);
    };
    Tensor x64 = x.to(loom::kFloat64), w64 = w.to(loom::kFloat64), b64 = b.to(loom::kFloat64);
    const std::string name = "x " + loom::shape_str(fc.x) + " w " + loom::shape_str(fc.w);
    Tensor y = conv(x, w, b);
    Tensor y64 = conv(x64, w64, b64);
    expect_within_rounding(y, y64, conv(x64.abs(), w64.abs(), b64.abs()), fc.w[1] * fc.w[2] * fc.w[3] + 1,
                           name + " forward");
    Tensor gy = loom::randn(y.sizes()).transpose(2, 3).contiguous().transpose(2, 3);  // strided grad
    if (gy.is_contiguous()) gy = loom::randn(y.sizes());
    Tensor gy64 = gy.to(loom::kFloat64);
    // Input gradient: the transposed convolution of gy with w.
    Tensor dx = loom::conv_transpose2d(gy, w, {}, {g.sh, g.sw}, {g.ph, g.pw},
                                       {x.sizes()[2] - ((y.sizes()[2] - 1) * g.sh - 2 * g.ph + g.dh * (fc.w[2] - 1) + 1),
                                        x.sizes()[3] - ((y.sizes()[3] - 1) * g.sw - 2 * g.pw + g.dw * (fc.w[3] - 1) + 1)},
                                       g.groups, {g.dh, g.dw});
    auto dx_of = [&](const Tensor& gg, const Tensor& ww) {
      return loom::conv_transpose2d(gg, ww, {}, {g.sh, g.sw}, {g.ph, g.pw},
                                    {dx.sizes()[2] - ((y.sizes()[2] - 1) * g.sh - 2 * g.ph + g.dh * (fc.w[2] - 1) + 1),
                                     dx.sizes()[3] - ((y.sizes()[3] - 1) * g.sw - 2 * g.pw + g.dw * (fc.w[3] - 1) + 1)},
                                    g.groups, {g.dh, g.dw});
    };
    ASSERT_EQ(dx.sizes(), x.sizes()) << name;
    expect_within_rounding(dx, dx_of(gy64, w64), dx_of(gy64.abs(), w64.abs()), fc.w[0] * fc.w[2] * fc.w[3],
                           name + " input gradient");
    auto dw_of = [&](const Tensor& xx, const Tensor& gg) {
      return loom::conv2d_weight(xx, fc.w, gg, {g.sh, g.sw}, {g.ph, g.pw}, {g.dh, g.dw}, g.groups);
    };
    expect_within_rounding(dw_of(x, gy), dw_of(x64, gy64), dw_of(x64.abs(), gy64.abs()),
                           fc.x[0] * y.sizes()[2] * y.sizes()[3], name + " weight gradient");
  }
}

// Note [Winograd convolution] (src/backend/cpu/cpu_winograd.h): 3x3 stride-1
// ungrouped float32 convolutions with 16+ channels each way and 4+ outputs
// per side run F(4x4, 3x3). Its rounding is not bounded term by term like a
// direct sum: a tile's output mixes its whole 6x6 input patch d and 3x3
// filter g through the transforms. First-order error analysis, with |M|
// the matrix of magnitudes and (.) the elementwise product:
//   forward  |err| <= (C + 12) u  |A^T| ( sum_c (|G| |g_oc| |G^T|) (.) (|B^T| |d_c| |B|) ) |A|  + |bias| u
//   dW       |err| <= (T + R + 9) u  |G^T| ( sum_tiles (|A| |e_o| |A^T|) (.) (|B^T| |d_c| |B|) ) |G|
// C the input channels; the 12: at most 2 roundings along any path of each
// 1-D input transform (4 for the 2-D one), 1 for U (computed in double),
// 3 and 4 for the two output steps (the second adds the bias). The weight
// gradient sums its T tiles in R <= 16 range chains, then adds the ranges;
// its transforms cost 2 + 2 (E), 4 (V) and 1 (G^T S G in double). e is the
// tile's 4x4 block of the output gradient (zeros past its edge). The input
// gradient is the forward correlation of the output gradient with the
// flipped, transposed filter, padded by 2 - p. The products by the
// transforms' constants in loom's kernels are by powers of two (exact).

constexpr double kWinoBt[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                  {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
constexpr double kWinoG[6][3] = {{0.25, 0, 0},         {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                 {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
constexpr double kWinoAt[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

// |L| |X| |L|^T for L (rows x k) given by l(i, j), X (k x k): the magnitude
// of a 2-D transform.
template <class L>
std::vector<double> abs_sandwich(int rows, int k, const L& l, const std::vector<double>& x) {
  std::vector<double> t(static_cast<size_t>(rows * k), 0.0), out(static_cast<size_t>(rows * rows), 0.0);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < k; ++j)
      for (int q = 0; q < k; ++q) t[static_cast<size_t>(i * k + j)] += std::abs(l(i, q)) * x[static_cast<size_t>(q * k + j)];
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < rows; ++j)
      for (int q = 0; q < k; ++q) out[static_cast<size_t>(i * rows + j)] += t[static_cast<size_t>(i * k + q)] * std::abs(l(j, q));
  return out;
}

// |x[n, c]| as doubles, (n, c, h, w) row-major.
std::vector<double> abs_values(const Tensor& x) {
  Tensor a = x.to(loom::kFloat64).abs().contiguous();
  return a.to_vector<double>();
}

// For each (n, c, tile): the 6x6 |B^T| |d| |B| of the tile's patch d of x,
// rows 4i - ph .. + 5 and columns 4j - pw .. + 5 (zeros outside).
std::vector<double> winograd_patch_mags(const Tensor& x, int64_t ph, int64_t pw, int64_t th, int64_t tw) {
  const std::vector<double> v = abs_values(x);
  const int64_t n = x.sizes()[0], c = x.sizes()[1], h = x.sizes()[2], w = x.sizes()[3];
  std::vector<double> out;
  out.reserve(static_cast<size_t>(n * c * th * tw * 36));
  std::vector<double> d(36);
  for (int64_t pl = 0; pl < n * c; ++pl)
    for (int64_t i = 0; i < th; ++i)
      for (int64_t j = 0; j < tw; ++j) {
        for (int a = 0; a < 6; ++a)
          for (int b = 0; b < 6; ++b) {
            const int64_t r = 4 * i - ph + a, q = 4 * j - pw + b;
            d[static_cast<size_t>(a * 6 + b)] =
                r >= 0 && r < h && q >= 0 && q < w ? v[static_cast<size_t>((pl * h + r) * w + q)] : 0.0;
          }
        const auto m = abs_sandwich(6, 6, [](int a, int b) { return kWinoBt[a][b]; }, d);
        out.insert(out.end(), m.begin(), m.end());
      }
  return out;
}

// The forward bound's magnitude for y (n, o, oh, ow) of the correlation of
// x with filters w (o, c, 3, 3) padded by (ph, pw), and |bias|.
Tensor winograd_forward_magnitude(const Tensor& x, const Tensor& w, const Tensor* bias, int64_t ph, int64_t pw,
                                  int64_t oh, int64_t ow) {
  const int64_t n = x.sizes()[0], c = x.sizes()[1], o = w.sizes()[0], th = (oh + 3) / 4, tw = (ow + 3) / 4;
  const std::vector<double> pd = winograd_patch_mags(x, ph, pw, th, tw);
  const std::vector<double> wv = abs_values(w);
  std::vector<double> pg;  // (o, c, 36): |G| |g| |G^T|
  for (int64_t k = 0; k < o * c; ++k) {
    const std::vector<double> g(wv.begin() + k * 9, wv.begin() + k * 9 + 9);
    const auto m = abs_sandwich(6, 3, [](int a, int b) { return kWinoG[a][b]; }, g);
    pg.insert(pg.end(), m.begin(), m.end());
  }
  const std::vector<double> bv = bias != nullptr ? abs_values(*bias) : std::vector<double>(static_cast<size_t>(o), 0.0);
  Tensor out = loom::zeros({n, o, oh, ow}, loom::kFloat64);
  double* po = out.data_ptr<double>();
  std::vector<double> sum(36);
  for (int64_t ni = 0; ni < n; ++ni)
    for (int64_t oi = 0; oi < o; ++oi)
      for (int64_t t = 0; t < th * tw; ++t) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int64_t ci = 0; ci < c; ++ci) {
          const double* a = &pg[static_cast<size_t>((oi * c + ci) * 36)];
          const double* b = &pd[static_cast<size_t>(((ni * c + ci) * th * tw + t) * 36)];
          for (int f = 0; f < 36; ++f) sum[static_cast<size_t>(f)] += a[f] * b[f];
        }
        const auto y = abs_sandwich(4, 6, [](int a, int b) { return kWinoAt[a][b]; }, sum);
        for (int r = 0; r < 4; ++r)
          for (int q = 0; q < 4; ++q) {
            const int64_t yi = 4 * (t / tw) + r, yj = 4 * (t % tw) + q;
            if (yi < oh && yj < ow) po[((ni * o + oi) * oh + yi) * ow + yj] = y[static_cast<size_t>(r * 4 + q)] + bv[static_cast<size_t>(oi)];
          }
      }
  return out;
}

// The weight gradient bound's magnitude (o, c, 3, 3).
Tensor winograd_weight_magnitude(const Tensor& x, const Tensor& gy, int64_t o, int64_t ph, int64_t pw) {
  const int64_t n = x.sizes()[0], c = x.sizes()[1], oh = gy.sizes()[2], ow = gy.sizes()[3];
  const int64_t th = (oh + 3) / 4, tw = (ow + 3) / 4;
  const std::vector<double> pd = winograd_patch_mags(x, ph, pw, th, tw);
  const std::vector<double> gv = abs_values(gy);
  std::vector<double> pe;  // (n, o, tiles, 36): |A| |e| |A^T|
  std::vector<double> e(16);
  for (int64_t pl = 0; pl < n * o; ++pl)
    for (int64_t t = 0; t < th * tw; ++t) {
      for (int r = 0; r < 4; ++r)
        for (int q = 0; q < 4; ++q) {
          const int64_t yi = 4 * (t / tw) + r, yj = 4 * (t % tw) + q;
          e[static_cast<size_t>(r * 4 + q)] = yi < oh && yj < ow ? gv[static_cast<size_t>((pl * oh + yi) * ow + yj)] : 0.0;
        }
      const auto m = abs_sandwich(6, 4, [](int a, int b) { return kWinoAt[b][a]; }, e);
      pe.insert(pe.end(), m.begin(), m.end());
    }
  Tensor mag = loom::zeros({o, c, 3, 3}, loom::kFloat64);
  double* pm = mag.data_ptr<double>();
  std::vector<double> sum(36);
  for (int64_t oi = 0; oi < o; ++oi)
    for (int64_t ci = 0; ci < c; ++ci) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t ni = 0; ni < n; ++ni)
        for (int64_t t = 0; t < th * tw; ++t) {
          const double* a = &pe[static_cast<size_t>(((ni * o + oi) * th * tw + t) * 36)];
          const double* b = &pd[static_cast<size_t>(((ni * c + ci) * th * tw + t) * 36)];
          for (int f = 0; f < 36; ++f) sum[static_cast<size_t>(f)] += a[f] * b[f];
        }
      const auto k = abs_sandwich(3, 6, [](int a, int b) { return kWinoG[b][a]; }, sum);
      for (int f = 0; f < 9; ++f) pm[(oi * c + ci) * 9 + f] = k[static_cast<size_t>(f)];
    }
  return mag;
}

struct WinogradCase {
  Shape x;
  int64_t o, ph, pw;
};

TEST(ConvWinograd, MatchesReferenceKernelWithinItsBound) {
  loom::manual_seed(11);
  const std::vector<WinogradCase> cases = {
      {{3, 16, 9, 11}, 17, 1, 1},   // odd sizes, "same" padding
      {{2, 17, 8, 7}, 16, 0, 0},    // no padding: the input gradient pads by 2
      {{2, 16, 7, 6}, 16, 2, 1},    // padding 2: the input gradient pads by 0
      {{5, 16, 14, 14}, 20, 1, 1},  // 4x4 tiles per plane, the padded columns 16, 17 all padding
      {{3, 18, 16, 16}, 16, 1, 1},  // 4x4 tiles, columns 16, 17 reach the input
      {{2, 16, 15, 17}, 17, 1, 0},  // 4x4 tiles, uneven padding, a 13-high input gradient
      {{2, 16, 13, 13}, 16, 0, 2},  // 11x15 outputs: 3x4 tiles, the general path
      {{16, 64, 34, 33}, 64, 1, 1},  // ~40 chunks: more than the weight gradient's 16 ranges
  };
  // Every ISA's transforms (the 4x4-tile register path is AVX-512's); the
  // largest case on the best ISA only.
  for (GemmIsa isa : runnable_isas())
  for (const WinogradCase& wc : cases) {
    if (isa != loom::cpu::gemm_best_isa() && wc.x[0] > 8) continue;
    IsaGuard guard(isa);
    const int64_t n = wc.x[0], c = wc.x[1];
    Tensor x = loom::randn({wc.x[0], wc.x[1], wc.x[3], wc.x[2]}).transpose(2, 3);
    Tensor w = loom::randn({wc.o, c, 3, 3}), b = loom::randn({wc.o});
    Tensor x64 = x.to(loom::kFloat64), w64 = w.to(loom::kFloat64), b64 = b.to(loom::kFloat64);
    const std::string name = std::string(loom::cpu::gemm_isa_name(isa)) + " x " + loom::shape_str(wc.x) + " o " +
                             std::to_string(wc.o);
    Tensor y = loom::conv2d(x, w, b, {1}, {wc.ph, wc.pw});
    const int64_t oh = y.sizes()[2], ow = y.sizes()[3];
    expect_within_rounding(y, loom::conv2d(x64, w64, b64, {1}, {wc.ph, wc.pw}),
                           winograd_forward_magnitude(x, w, &b, wc.ph, wc.pw, oh, ow), c + 12, name + " forward");

    Tensor gy = loom::randn(y.sizes());
    Tensor gy64 = gy.to(loom::kFloat64);
    Tensor dx = loom::conv_transpose2d(gy, w, {}, {1}, {wc.ph, wc.pw});
    ASSERT_EQ(dx.sizes(), x.sizes()) << name;
    // The input gradient's filters: w^T (c, o, 3, 3) flipped.
    Tensor wflip = w.transpose(0, 1).flip({2, 3});
    expect_within_rounding(dx, loom::conv_transpose2d(gy64, w64, {}, {1}, {wc.ph, wc.pw}),
                           winograd_forward_magnitude(gy, wflip, nullptr, 2 - wc.ph, 2 - wc.pw, wc.x[2], wc.x[3]),
                           wc.o + 12, name + " input gradient");

    Tensor dw = loom::conv2d_weight(x, {wc.o, c, 3, 3}, gy, {1}, {wc.ph, wc.pw});
    const int64_t tiles = n * ((oh + 3) / 4) * ((ow + 3) / 4);
    expect_within_rounding(dw, loom::conv2d_weight(x64, {wc.o, c, 3, 3}, gy64, {1}, {wc.ph, wc.pw}),
                           winograd_weight_magnitude(x, gy, wc.o, wc.ph, wc.pw), tiles + 16 + 9,
                           name + " weight gradient");
  }
}

// The float32 path's bits do not depend on the thread count.
TEST(ConvFastPath, SameBitsOnOneAndTwoThreads) {
  loom::manual_seed(3);
  for (const auto& [xs, ws] : std::vector<std::pair<Shape, Shape>>{{{6, 4, 23, 21}, {5, 4, 3, 3}},
                                                                  {{5, 24, 30, 29}, {32, 24, 3, 3}},
                                                                  {{6, 16, 14, 14}, {24, 16, 3, 3}}}) {
  Tensor x = loom::randn(xs), w = loom::randn(ws), b = loom::randn({ws[0]});
  auto run = [&]() {
    Tensor xx = x.detach().requires_grad_(true), ww = w.detach().requires_grad_(true);
    Tensor y = loom::conv2d(xx, ww, b, {1}, {1});
    (y * y).sum().backward();
    return std::vector<Tensor>{y.detach(), xx.grad(), ww.grad()};
  };
  const int saved = loom::get_num_threads();
  loom::set_num_threads(1);
  auto one = run();
  loom::set_num_threads(2);
  auto two = run();
  loom::set_num_threads(saved);
  for (size_t k = 0; k < one.size(); ++k) EXPECT_TRUE(loom::equal(one[k], two[k])) << "output " << k;
  }
}

TEST(ConvErrors, NameTheOpAndShapes) {
  Tensor x = loom::randn({2, 3, 5, 5});
  const auto msg = loom::test::error_of;
  EXPECT_NE(msg([&] { loom::conv2d(x, loom::randn({4, 2, 3, 3})); }).find("conv2d: weight of shape [4, 2, 3, 3]"),
            std::string::npos);
  EXPECT_NE(msg([&] { loom::conv2d(x, loom::randn({4, 3, 7, 7})); }).find("too small"), std::string::npos);
  EXPECT_NE(msg([&] { loom::conv2d(x, loom::randn({4, 3, 3, 3}), loom::randn({3})); }).find("bias of shape [4]"),
            std::string::npos);
  EXPECT_NE(msg([&] { loom::conv2d(x, loom::randn({4, 3, 3, 3}), {}, {0}); }).find("stride must be positive"),
            std::string::npos);
  EXPECT_NE(msg([&] { loom::conv2d(x, loom::randn({4, 3, 3, 3}), {}, {2}, ConvPadding::Same); }).find("same"),
            std::string::npos);
  EXPECT_NE(msg([&] { loom::conv2d(x.to(loom::kFloat64), loom::randn({4, 3, 3, 3})); }).find("same dtype"),
            std::string::npos);
  EXPECT_NE(msg([&] { loom::conv2d(loom::randn({5, 5}), loom::randn({4, 3, 3, 3})); }).find("[5, 5]"),
            std::string::npos);
  EXPECT_NE(msg([&] { loom::conv_transpose2d(x, loom::randn({3, 2, 3, 3}), {}, {2}, {0}, {2}); })
                .find("output padding must be smaller"),
            std::string::npos);
}

}  // namespace

}  // namespace loom_test
