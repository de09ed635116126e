// Convolution rows of the op harness (conv2d, conv1d, conv_transpose2d,
// conv2d_weight) with plain-loop references, and the float32 GEMM path of
// the kernels against the float64 reference kernel on odd sizes, strided
// inputs and both thread counts.
#include <gtest/gtest.h>

#include <cmath>

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
// per side run F(2x2, 3x3). Its rounding is not bounded term by term like a
// direct sum: a tile's output mixes its whole 4x4 input patch d and 3x3
// filter g through the transforms. First-order error analysis (additions
// in the transforms round, products by 1 and 0.5 are exact):
//   forward   |err| <= (C + 12) u (9 sum_c |g_oc|_1 |d_c|_1 + |bias|)
//   dW        |err| <= (T + chunks + ranges + 9) u 4 sum_tiles |e_o|_1 |d_c|_1
// with |.|_1 the sum of magnitudes over the filter, the tile's 4x4 input
// patch and its 2x2 output-gradient block, C the input channels and T the
// tiles of all samples (chunks, ranges <= T). The input gradient is the
// forward correlation of the output gradient with the flipped filter,
// padded by 2 - p.

// sum |x[n, c, 2i - ph + a, 2j - pw + b]| over a, b < k (zeros outside), as
// (n, c, th, tw) doubles.
std::vector<double> patch_sums(const Tensor& x, int64_t ph, int64_t pw, int64_t th, int64_t tw, int64_t k) {
  Tensor a = x.to(loom::kFloat64).contiguous();
  const double* p = a.data_ptr<double>();
  const int64_t n = x.sizes()[0], c = x.sizes()[1], h = x.sizes()[2], w = x.sizes()[3];
  std::vector<double> out(static_cast<size_t>(n * c * th * tw), 0.0);
  for (int64_t pl = 0; pl < n * c; ++pl)
    for (int64_t i = 0; i < th; ++i)
      for (int64_t j = 0; j < tw; ++j) {
        double s = 0;
        for (int64_t r = 2 * i - ph; r < 2 * i - ph + k; ++r)
          for (int64_t q = 2 * j - pw; q < 2 * j - pw + k; ++q)
            if (r >= 0 && r < h && q >= 0 && q < w) s += std::abs(p[(pl * h + r) * w + q]);
        out[static_cast<size_t>((pl * th + i) * tw + j)] = s;
      }
  return out;
}

// The forward bound's magnitudes 9 sum_c |g_oc|_1 |d_c|_1 + |bias| for y (n, o, oh, ow)
// of the correlation of x with filters w (o, c, 3, 3) padded by (ph, pw).
Tensor winograd_forward_magnitude(const Tensor& x, const Tensor& w, const Tensor* bias, int64_t ph, int64_t pw,
                                  int64_t oh, int64_t ow) {
  const int64_t n = x.sizes()[0], c = x.sizes()[1], o = w.sizes()[0], th = (oh + 1) / 2, tw = (ow + 1) / 2;
  const std::vector<double> pd = patch_sums(x, ph, pw, th, tw, 4);
  Tensor wa = w.to(loom::kFloat64).abs().sum({2, 3}).contiguous();  // (o, c)
  const double* sg = wa.data_ptr<double>();
  Tensor ba = bias != nullptr ? bias->to(loom::kFloat64).abs().contiguous() : loom::zeros({o}, loom::kFloat64);
  const double* sb = ba.data_ptr<double>();
  Tensor out = loom::zeros({n, o, oh, ow}, loom::kFloat64);
  double* po = out.data_ptr<double>();
  for (int64_t ni = 0; ni < n; ++ni)
    for (int64_t oi = 0; oi < o; ++oi)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j) {
          double s = 0;
          for (int64_t ci = 0; ci < c; ++ci)
            s += sg[oi * c + ci] * pd[static_cast<size_t>(((ni * c + ci) * th + i / 2) * tw + j / 2)];
          po[((ni * o + oi) * oh + i) * ow + j] = 9 * s + sb[oi];
        }
  return out;
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
      {{16, 64, 34, 33}, 64, 1, 1},  // ~20 chunks: more than the weight gradient's 16 ranges
  };
  for (const WinogradCase& wc : cases) {
    const int64_t n = wc.x[0], c = wc.x[1];
    Tensor x = loom::randn({wc.x[0], wc.x[1], wc.x[3], wc.x[2]}).transpose(2, 3);
    Tensor w = loom::randn({wc.o, c, 3, 3}), b = loom::randn({wc.o});
    Tensor x64 = x.to(loom::kFloat64), w64 = w.to(loom::kFloat64), b64 = b.to(loom::kFloat64);
    const std::string name = "x " + loom::shape_str(wc.x) + " o " + std::to_string(wc.o);
    Tensor y = loom::conv2d(x, w, b, {1}, {wc.ph, wc.pw});
    const int64_t oh = y.sizes()[2], ow = y.sizes()[3];
    expect_within_rounding(y, loom::conv2d(x64, w64, b64, {1}, {wc.ph, wc.pw}),
                           winograd_forward_magnitude(x, w, &b, wc.ph, wc.pw, oh, ow), c + 10, name + " forward");

    Tensor gy = loom::randn(y.sizes());
    Tensor gy64 = gy.to(loom::kFloat64);
    Tensor dx = loom::conv_transpose2d(gy, w, {}, {1}, {wc.ph, wc.pw});
    ASSERT_EQ(dx.sizes(), x.sizes()) << name;
    // The input gradient's filters: w^T (c, o, 3, 3) flipped.
    Tensor wflip = w.transpose(0, 1).flip({2, 3});
    expect_within_rounding(dx, loom::conv_transpose2d(gy64, w64, {}, {1}, {wc.ph, wc.pw}),
                           winograd_forward_magnitude(gy, wflip, nullptr, 2 - wc.ph, 2 - wc.pw, wc.x[2], wc.x[3]),
                           wc.o + 10, name + " input gradient");

    Tensor dw = loom::conv2d_weight(x, {wc.o, c, 3, 3}, gy, {1}, {wc.ph, wc.pw});
    const int64_t th = (oh + 1) / 2, tw = (ow + 1) / 2, tiles = n * th * tw;
    const std::vector<double> pd = patch_sums(x, wc.ph, wc.pw, th, tw, 4);
    const std::vector<double> pe = patch_sums(gy, 0, 0, th, tw, 2);
    Tensor mag = loom::zeros({wc.o, c, 3, 3}, loom::kFloat64);
    double* pm = mag.data_ptr<double>();
    for (int64_t oi = 0; oi < wc.o; ++oi)
      for (int64_t ci = 0; ci < c; ++ci) {
        double s = 0;
        for (int64_t ni = 0; ni < n; ++ni)
          for (int64_t t = 0; t < th * tw; ++t)
            s += pe[static_cast<size_t>((ni * wc.o + oi) * th * tw + t)] * pd[static_cast<size_t>((ni * c + ci) * th * tw + t)];
        for (int k = 0; k < 9; ++k) pm[(oi * c + ci) * 9 + k] = 4 * s;
      }
    expect_within_rounding(dw, loom::conv2d_weight(x64, {wc.o, c, 3, 3}, gy64, {1}, {wc.ph, wc.pw}), mag,
                           3 * tiles + 7, name + " weight gradient");
  }
}

// The float32 path's bits do not depend on the thread count.
TEST(ConvFastPath, SameBitsOnOneAndTwoThreads) {
  loom::manual_seed(3);
  for (const auto& [xs, ws] : std::vector<std::pair<Shape, Shape>>{{{6, 4, 23, 21}, {5, 4, 3, 3}},
                                                                  {{5, 24, 30, 29}, {32, 24, 3, 3}}}) {
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
  auto msg = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const loom::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
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
