// Harness rows for pooling, batch norm and interpolate (dropout2d is random:
// tests/test_nn.cpp checks it), each against a plain-loop reference over
// doubles written from PyTorch's definitions; then the fast float32 / float64
// pooling and batch norm kernels against the reference kernels (Note
// [Pooling kernels], Note [Batch norm kernels]) on odd sizes, strided
// inputs, every ISA path and thread count, and the ops' error messages.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>

#include "harness.h"

#include "../test_util.h"
#include "fast_paths.h"

namespace loom_test {
namespace {

using AL = std::vector<Array>;
using Cases = std::vector<std::vector<Shape>>;
namespace F = loom::nn::functional;

// ---- references ----

// A 2-D pooling geometry, PyTorch's arguments with both dims spelled out.
struct Geo {
  int64_t kh, kw, sh, sw, ph, pw, dh = 1, dw = 1;
  bool ceil = false;
};

// PyTorch's pooling_output_shape.
int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil) {
  const double span = static_cast<double>(in + 2 * p - d * (k - 1) - 1) / static_cast<double>(s);
  int64_t out = static_cast<int64_t>(ceil ? std::ceil(span) : std::floor(span)) + 1;
  if (ceil && (out - 1) * s >= in + p) --out;
  return out;
}

// Views x (C, H, W) or (N, C, H, W) as (planes, H, W); calls f per output.
struct Plan {
  int64_t planes, h, w, oh, ow;
  Shape out_shape;
};
Plan plan_of(const Array& x, int64_t oh, int64_t ow) {
  Plan p{1, x.size(-2), x.size(-1), oh, ow, x.shape};
  for (int64_t d = 0; d + 2 < x.dim(); ++d) p.planes *= x.shape[d];
  p.out_shape[x.dim() - 2] = oh;
  p.out_shape[x.dim() - 1] = ow;
  return p;
}

// max_pool2d: values and flat argmax indices (a larger value replaces the max).
AL max_pool_ref(const Array& x, const Geo& g) {
  const Plan p = plan_of(x, out_size(x.size(-2), g.kh, g.sh, g.ph, g.dh, g.ceil),
                         out_size(x.size(-1), g.kw, g.sw, g.pw, g.dw, g.ceil));
  Array y(p.out_shape), idx(p.out_shape);
  for (int64_t q = 0; q < p.planes; ++q)
    for (int64_t i = 0; i < p.oh; ++i)
      for (int64_t j = 0; j < p.ow; ++j) {
        double best = -INFINITY;
        int64_t arg = -1;
        for (int64_t a = 0; a < g.kh; ++a)
          for (int64_t b = 0; b < g.kw; ++b) {
            const int64_t r = i * g.sh - g.ph + a * g.dh, c = j * g.sw - g.pw + b * g.dw;
            if (r < 0 || r >= p.h || c < 0 || c >= p.w) continue;
            const double v = x.v[(q * p.h + r) * p.w + c];
            if (arg < 0 || v > best) {
              best = v;
              arg = r * p.w + c;
            }
          }
        y.v[(q * p.oh + i) * p.ow + j] = best;
        idx.v[(q * p.oh + i) * p.ow + j] = static_cast<double>(arg);
      }
  return {y, idx};
}

// avg_pool2d: the window sum over PyTorch's divisor.
Array avg_pool_ref(const Array& x, const Geo& g, bool count_include_pad, std::optional<int64_t> divisor) {
  const Plan p =
      plan_of(x, out_size(x.size(-2), g.kh, g.sh, g.ph, 1, g.ceil), out_size(x.size(-1), g.kw, g.sw, g.pw, 1, g.ceil));
  Array y(p.out_shape);
  for (int64_t q = 0; q < p.planes; ++q)
    for (int64_t i = 0; i < p.oh; ++i)
      for (int64_t j = 0; j < p.ow; ++j) {
        int64_t r0 = i * g.sh - g.ph, c0 = j * g.sw - g.pw;
        int64_t r1 = std::min(r0 + g.kh, p.h + g.ph), c1 = std::min(c0 + g.kw, p.w + g.pw);
        const int64_t padded = (r1 - r0) * (c1 - c0);
        r0 = std::max<int64_t>(r0, 0);
        c0 = std::max<int64_t>(c0, 0);
        r1 = std::min(r1, p.h);
        c1 = std::min(c1, p.w);
        double s = 0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) s += x.v[(q * p.h + r) * p.w + c];
        const int64_t div = divisor ? *divisor : count_include_pad ? padded : (r1 - r0) * (c1 - c0);
        y.v[(q * p.oh + i) * p.ow + j] = s / static_cast<double>(div);
      }
  return y;
}

Array adaptive_avg_ref(const Array& x, int64_t oh, int64_t ow) {
  const Plan p = plan_of(x, oh, ow);
  Array y(p.out_shape);
  for (int64_t q = 0; q < p.planes; ++q)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        const int64_t r0 = static_cast<int64_t>(std::floor(static_cast<double>(i * p.h) / static_cast<double>(oh)));
        const int64_t r1 =
            static_cast<int64_t>(std::ceil(static_cast<double>((i + 1) * p.h) / static_cast<double>(oh)));
        const int64_t c0 = static_cast<int64_t>(std::floor(static_cast<double>(j * p.w) / static_cast<double>(ow)));
        const int64_t c1 =
            static_cast<int64_t>(std::ceil(static_cast<double>((j + 1) * p.w) / static_cast<double>(ow)));
        double s = 0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) s += x.v[(q * p.h + r) * p.w + c];
        y.v[(q * oh + i) * ow + j] = s / static_cast<double>((r1 - r0) * (c1 - c0));
      }
  return y;
}

// Training-mode batch norm: per channel (dim 1) over every other dim.
Array batch_norm_ref(const Array& x, const Array* w, const Array* b, double eps) {
  const int64_t n = x.shape[0], c = x.shape[1], s = x.numel() / std::max<int64_t>(n * c, 1);
  Array y(x.shape);
  for (int64_t ch = 0; ch < c; ++ch) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < s; ++k) mean += x.v[(i * c + ch) * s + k];
    mean /= static_cast<double>(n * s);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < s; ++k) var += std::pow(x.v[(i * c + ch) * s + k] - mean, 2);
    var /= static_cast<double>(n * s);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < s; ++k) {
        double v = (x.v[(i * c + ch) * s + k] - mean) / std::sqrt(var + eps);
        if (w) v *= w->v[ch];
        if (b) v += b->v[ch];
        y.v[(i * c + ch) * s + k] = v;
      }
  }
  return y;
}

// interpolate's source positions along one dim, as PyTorch defines them.
// nearest: floor(dst * scale) in float, scale = 1 / scale_factor or in / out
// (and the exact shortcuts for equal and doubled sizes).
int64_t nearest_ref(int64_t dst, int64_t in, int64_t out, std::optional<double> sf) {
  if (out == in) return dst;
  if (out == 2 * in) return dst / 2;
  const float scale = sf ? static_cast<float>(1.0 / *sf) : static_cast<float>(in) / static_cast<float>(out);
  return std::min<int64_t>(static_cast<int64_t>(std::floor(static_cast<float>(dst) * scale)), in - 1);
}

// bilinear: taps (i0, i1) and weights (1 - l, l) of output dst.
struct Tap {
  int64_t i0, i1;
  double l;
};
Tap linear_ref(int64_t dst, int64_t in, int64_t out, bool align, std::optional<double> sf) {
  double src;
  if (align) {
    src = out > 1 ? static_cast<double>(dst) * static_cast<double>(in - 1) / static_cast<double>(out - 1) : 0.0;
  } else {
    const double scale = sf ? 1.0 / *sf : static_cast<double>(in) / static_cast<double>(out);
    src = std::max(0.0, (static_cast<double>(dst) + 0.5) * scale - 0.5);
  }
  const int64_t i0 = std::min<int64_t>(static_cast<int64_t>(std::floor(src)), in - 1);
  return {i0, std::min(i0 + 1, in - 1), std::clamp(src - static_cast<double>(i0), 0.0, 1.0)};
}

// x (N, C, *spatial) resized to `size` (one value per spatial dim).
Array interpolate_ref(const Array& x, const Shape& size, const std::string& mode, bool align,
                      const std::vector<double>& sf) {
  const int64_t spatial = x.dim() - 2;
  Shape out_shape = x.shape;
  for (int64_t k = 0; k < spatial; ++k) out_shape[2 + k] = size[k];
  Array y(out_shape);
  auto scale_of = [&](int64_t k) { return sf.empty() ? std::optional<double>() : std::optional<double>(sf[k]); };
  for_each_index(out_shape, [&](const std::vector<int64_t>& o) {
    if (mode == "nearest") {
      std::vector<int64_t> src = o;
      for (int64_t k = 0; k < spatial; ++k) src[2 + k] = nearest_ref(o[2 + k], x.shape[2 + k], size[k], scale_of(k));
      y.at(o) = x.at(src);
      return;
    }
    const Tap th = linear_ref(o[2], x.shape[2], size[0], align, scale_of(0));
    const Tap tw = linear_ref(o[3], x.shape[3], size[1], align, scale_of(1));
    auto at = [&](int64_t r, int64_t c) { return x.at({o[0], o[1], r, c}); };
    y.at(o) = (1 - th.l) * ((1 - tw.l) * at(th.i0, tw.i0) + tw.l * at(th.i0, tw.i1)) +
              th.l * ((1 - tw.l) * at(th.i1, tw.i0) + tw.l * at(th.i1, tw.i1));
  });
  return y;
}

// ---- rows ----

Row max_pool_row(const std::string& name, Geo g, Cases cases, bool with_indices = false) {
  const std::vector<int64_t> k{g.kh, g.kw}, s{g.sh, g.sw}, p{g.ph, g.pw}, d{g.dh, g.dw};
  Row r(name);
  // Distinct values: no ties inside a window, so the argmax (and the
  // gradient) is unambiguous. No expanded variant: it repeats values.
  r.in(Distinct(0.15)).shapes(std::move(cases)).no_expand();
  if (with_indices) {
    r.fm([=](const TL& x) {
       auto [y, i] = loom::max_pool2d_with_indices(x[0], k, s, p, d, g.ceil);
       return TL{y, i};
     })
        .rm([g](const AL& a) { return max_pool_ref(a[0], g); })
        .out({Out::Same, Out::Int64});
  } else {
    r.f([=](const TL& x) { return loom::max_pool2d(x[0], k, s, p, d, g.ceil); }).r([g](const AL& a) {
      return max_pool_ref(a[0], g)[0];
    });
  }
  return r;
}

Row avg_pool_row(const std::string& name, Geo g, bool count_include_pad, std::optional<int64_t> divisor, Cases cases) {
  const std::vector<int64_t> k{g.kh, g.kw}, s{g.sh, g.sw}, p{g.ph, g.pw};
  return Row(name)
      .in(U(-2, 2))
      .shapes(std::move(cases))
      .f([=](const TL& x) { return loom::avg_pool2d(x[0], k, s, p, g.ceil, count_include_pad, divisor); })
      .r([=](const AL& a) { return avg_pool_ref(a[0], g, count_include_pad, divisor); });
}

Row interpolate_row(const std::string& name, F::InterpolateOptions o, Cases cases) {
  return Row(name)
      .in(U(-2, 2))
      .shapes(std::move(cases))
      .f([o](const TL& x) { return F::interpolate(x[0], o); })
      .r([o](const AL& a) {
        const Array& x = a[0];
        const int64_t spatial = x.dim() - 2;
        Shape size;
        for (int64_t k = 0; k < spatial; ++k) {
          if (!o.size.empty())
            size.push_back(o.size[o.size.size() == 1 ? 0 : k]);
          else
            size.push_back(static_cast<int64_t>(
                std::floor(static_cast<double>(x.shape[2 + k]) * o.scale_factor[o.scale_factor.size() == 1 ? 0 : k])));
        }
        std::vector<double> sf;
        for (int64_t k = 0; k < spatial && !o.scale_factor.empty(); ++k)
          sf.push_back(o.scale_factor[o.scale_factor.size() == 1 ? 0 : k]);
        return interpolate_ref(x, size, o.mode, o.align_corners.value_or(false), sf);
      });
}

}  // namespace

void add_pool_rows(std::vector<Row>& rows) {
  // max_pool2d: PyTorch's geometries, floor and ceil mode, unbatched input.
  rows.push_back(max_pool_row("max_pool2d_k2", {2, 2, 2, 2, 0, 0}, {{{2, 3, 8, 8}}, {{3, 7, 6}}, {{2, 1, 2, 3}}})
                     .low_precision()
                     .gradgrad_check());
  rows.push_back(max_pool_row("max_pool2d_k3_s2_pad1", {3, 3, 2, 2, 1, 1}, {{{2, 3, 9, 8}}, {{2, 2, 4, 5}}}));
  rows.push_back(max_pool_row("max_pool2d_rect_stride", {2, 3, 1, 2, 1, 1}, {{{2, 2, 7, 9}}, {{3, 5, 4}}}));
  rows.push_back(max_pool_row("max_pool2d_dilation", {3, 3, 1, 2, 1, 1, 2, 2}, {{{2, 2, 8, 7}}}));
  rows.push_back(max_pool_row("max_pool2d_ceil", {3, 3, 2, 2, 0, 0, 1, 1, true}, {{{2, 3, 8, 8}}, {{2, 2, 6, 9}}}));
  // Ceil mode whose last window would start in the right padding: dropped.
  rows.push_back(max_pool_row("max_pool2d_ceil_pad", {2, 2, 2, 2, 1, 1, 1, 1, true}, {{{2, 2, 5, 5}}, {{2, 2, 4, 7}}}));
  rows.push_back(max_pool_row("max_pool2d_with_indices", {3, 2, 2, 1, 1, 0}, {{{2, 3, 7, 6}}, {{2, 5, 5}}}, true)
                     .gradgrad_check());

  // avg_pool2d: the divisor with and without the padding, ceil mode, override.
  const Cases avg_cases = {{{2, 3, 7, 8}}, {{3, 5, 6}}, {{2, 1, 3, 4}}};
  rows.push_back(avg_pool_row("avg_pool2d_k2", {2, 2, 2, 2, 0, 0}, true, std::nullopt, {{{2, 3, 8, 7}}, {{3, 4, 5}}})
                     .low_precision()
                     .gradgrad_check());
  rows.push_back(avg_pool_row("avg_pool2d_pad_count_include", {3, 3, 2, 2, 1, 1}, true, std::nullopt, avg_cases));
  rows.push_back(avg_pool_row("avg_pool2d_pad_count_exclude", {3, 3, 2, 2, 1, 1}, false, std::nullopt, avg_cases)
                     .gradgrad_check());
  rows.push_back(
      avg_pool_row("avg_pool2d_ceil_count_include", {3, 2, 2, 3, 1, 1, 1, 1, true}, true, std::nullopt, avg_cases));
  rows.push_back(
      avg_pool_row("avg_pool2d_ceil_count_exclude", {3, 2, 2, 3, 1, 1, 1, 1, true}, false, std::nullopt, avg_cases));
  rows.push_back(avg_pool_row("avg_pool2d_divisor_override", {3, 3, 2, 1, 1, 0}, true, 5, avg_cases));
  rows.push_back(avg_pool_row("avg_pool2d_overlap", {3, 3, 1, 1, 0, 1}, true, std::nullopt, {{{2, 2, 5, 6}}}));

  // adaptive_avg_pool2d: avg_pool2d when the sizes divide, averaging matrices otherwise.
  auto adaptive = [](const std::string& name, int64_t oh, int64_t ow, Cases cases) {
    return Row(name)
        .in(U(-2, 2))
        .shapes(std::move(cases))
        .f([=](const TL& x) {
          return loom::adaptive_avg_pool2d(x[0], {oh, ow});
        })
        .r([=](const AL& a) { return adaptive_avg_ref(a[0], oh, ow); });
  };
  rows.push_back(adaptive("adaptive_avg_pool2d_divisible", 4, 3, {{{2, 3, 8, 6}}, {{3, 4, 9}}}));
  rows.push_back(
      adaptive("adaptive_avg_pool2d_uneven", 3, 4, {{{2, 3, 7, 5}}, {{2, 6, 9}}, {{1, 2, 2, 3}}}).gradgrad_check());
  rows.push_back(adaptive("adaptive_avg_pool2d_global", 1, 1, {{{2, 3, 5, 7}}}));
  rows.push_back(Row("adaptive_avg_pool2d_single_value")
                     .in(U(-2, 2))
                     .shapes({{{2, 3, 6, 5}}})
                     .f([](const TL& x) { return loom::adaptive_avg_pool2d(x[0], {2}); })
                     .r([](const AL& a) { return adaptive_avg_ref(a[0], 2, 2); }));

  // batch_norm (training mode, batch statistics): the fused op, and through nn::functional.
  rows.push_back(Row("batch_norm_affine_4d")
                     .in(U(-2, 2))
                     .in(U(0.5, 2))
                     .in(U(-1, 1))
                     .shapes({{{3, 4, 3, 5}, {4}, {4}}, {{2, 3, 1, 1}, {3}, {3}}, {{4, 1, 2, 3}, {1}, {1}}})
                     .f([](const TL& x) { return loom::batch_norm(x[0], x[1], x[2], 1e-5); })
                     .r([](const AL& a) { return batch_norm_ref(a[0], &a[1], &a[2], 1e-5); })
                     .low_precision()
                     .gradgrad_check());
  rows.push_back(Row("batch_norm_plain_2d")
                     .in(U(-2, 2))
                     .shapes({{{6, 4}}, {{5, 1}}})
                     .f([](const TL& x) { return loom::batch_norm(x[0], {}, {}, 1e-3); })
                     .r([](const AL& a) { return batch_norm_ref(a[0], nullptr, nullptr, 1e-3); })
                     .gradgrad_check());
  rows.push_back(Row("batch_norm_weight_only_3d")
                     .in(U(-2, 2))
                     .in(U(0.5, 2))
                     .shapes({{{4, 3, 5}, {3}}})
                     .f([](const TL& x) { return loom::batch_norm(x[0], x[1], {}, 1e-5); })
                     .r([](const AL& a) { return batch_norm_ref(a[0], &a[1], nullptr, 1e-5); }));
  rows.push_back(Row("batch_norm_functional_training")
                     .in(U(-2, 2))
                     .in(U(0.5, 2))
                     .in(U(-1, 1))
                     .shapes({{{2, 3, 4, 4}, {3}, {3}}, {{5, 2}, {2}, {2}}})
                     .f([](const TL& x) { return F::batch_norm(x[0], {}, {}, x[1], x[2], true, 0.1, 1e-5); })
                     .r([](const AL& a) { return batch_norm_ref(a[0], &a[1], &a[2], 1e-5); }));
  rows.push_back(Row("batch_norm_with_stats")
                     .in(U(-2, 2))
                     .shapes({{{3, 2, 4}}})
                     .fm([](const TL& x) {
                       auto [y, mean, var] = loom::batch_norm_with_stats(x[0], {}, {}, 1e-5);
                       return TL{y, mean, var};
                     })
                     .rm([](const AL& a) {
                       const Array& x = a[0];
                       Array mean({2}), var({2});
                       for (int64_t c = 0; c < 2; ++c) {
                         for (int64_t i = 0; i < 3; ++i)
                           for (int64_t k = 0; k < 4; ++k) mean.v[c] += x.at({i, c, k}) / 12;
                         for (int64_t i = 0; i < 3; ++i)
                           for (int64_t k = 0; k < 4; ++k) var.v[c] += std::pow(x.at({i, c, k}) - mean.v[c], 2) / 12;
                       }
                       return AL{batch_norm_ref(x, nullptr, nullptr, 1e-5), mean, var};
                     })
                     .forward_only());

  // interpolate: nearest (PyTorch's float index rule) and bilinear, up and down.
  const Cases img = {{{2, 3, 4, 5}}, {{1, 2, 3, 1}}};
  rows.push_back(interpolate_row("interpolate_nearest_size_up", {.size = {7, 9}}, img).gradgrad_check());
  rows.push_back(interpolate_row("interpolate_nearest_scale2", {.scale_factor = {2}}, img));
  rows.push_back(interpolate_row("interpolate_nearest_scale_mixed", {.scale_factor = {1.5, 0.7}}, {{{2, 3, 6, 7}}}));
  rows.push_back(interpolate_row("interpolate_nearest_down", {.size = {3, 2}}, {{{2, 3, 7, 5}}}));
  rows.push_back(interpolate_row("interpolate_nearest_1d", {.scale_factor = {2.5}}, {{{2, 3, 5}}}));
  rows.push_back(
      interpolate_row("interpolate_bilinear_up", {.size = {7, 9}, .mode = "bilinear", .align_corners = false}, img)
          .gradgrad_check());
  rows.push_back(interpolate_row("interpolate_bilinear_up_align_corners",
                                 {.size = {7, 9}, .mode = "bilinear", .align_corners = true}, img));
  rows.push_back(interpolate_row("interpolate_bilinear_down", {.size = {3, 2}, .mode = "bilinear"}, {{{2, 3, 7, 5}}}));
  rows.push_back(interpolate_row("interpolate_bilinear_down_align_corners",
                                 {.size = {3, 1}, .mode = "bilinear", .align_corners = true}, {{{2, 3, 7, 5}}}));
  rows.push_back(
      interpolate_row("interpolate_bilinear_scale", {.scale_factor = {1.7, 2}, .mode = "bilinear"}, {{{2, 2, 4, 3}}}));
}

namespace {

using loom::Tensor;
// ---- fast kernels against the reference kernels ----

Tensor random_values(const Shape& shape, uint32_t seed) {
  Tensor t = loom::empty(shape, loom::kFloat64);
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.5, 2.0);
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = normal(gen);
  return t;
}


void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_EQ(flat(got), flat(want)) << what;
}

// The layouts a CNN hands these kernels, and ones that must take the reference path.
std::vector<std::pair<std::string, Tensor>> layouts(const Tensor& base) {
  // base (N, C, H, W) float64; each entry holds the same values.
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back("contiguous", base);
  out.emplace_back("channels_last", base.permute({0, 2, 3, 1}).contiguous().permute({0, 3, 1, 2}));
  const Shape wide{base.size(0), base.size(1), base.size(2) + 3, base.size(3) * 2};
  // Row stride 2W, column stride 1: the fast paths' layout.
  Tensor rows = loom::zeros(wide, loom::kFloat64).narrow(2, 1, base.size(2)).narrow(3, 0, base.size(3));
  rows.copy_(base);
  out.emplace_back("row_strided", rows);
  // Column stride 2: the reference kernels.
  Tensor cols = loom::zeros(wide, loom::kFloat64)
                    .narrow(2, 2, base.size(2))
                    .index({loom::indexing::Ellipsis, loom::indexing::Slice(1, loom::indexing::None, 2)});
  cols.copy_(base);
  out.emplace_back("column_strided", cols);
  return out;
}

// Runs f (float32 input -> outputs) on every layout, ISA path and thread
// count, against f on the float64 contiguous input; `exact` outputs
// (indices) must match exactly. Each ISA gives the same bits on one thread
// as on many, and the FMA paths (AVX2, AVX-512) the same bits as each other.
void check_against_float64(const std::function<TL(const Tensor&)>& f, const Tensor& x64, const std::string& what,
                           double tol, const std::vector<bool>& exact) {
  const TL want = f(x64);
  auto check = [&](const TL& got, const std::string& label) {
    for (size_t k = 0; k < want.size(); ++k) {
      const std::string l = label + " output " + std::to_string(k);
      if (exact[k])
        expect_same(got[k], want[k], l);
      else
        expect_close(got[k], want[k], tol, l);
    }
  };
  auto same = [&](const TL& a, const TL& b, const std::string& label) {
    for (size_t k = 0; k < a.size(); ++k) expect_same(a[k], b[k], label + " output " + std::to_string(k));
  };
  for (auto& [name, x] : layouts(x64)) {
    const Tensor x32 = x.to(loom::kFloat32);
    const std::string where = what + " " + name;
    TL fma_run;
    for (GemmIsa isa : runnable_isas()) {
      const std::string isa_name = loom::cpu::gemm_isa_name(isa);
      IsaGuard guard(isa);
      const TL many = f(x32);
      check(many, where + " " + isa_name);
      {
        ThreadsGuard one(1);
        same(f(x32), many, where + " " + isa_name + " one thread vs many");
      }
      if (isa == GemmIsa::Portable) continue;
      if (fma_run.empty())
        fma_run = many;
      else
        same(many, fma_run, where + " " + isa_name + " vs avx2");
    }
    ReferenceGuard ref;
    check(f(x32), where + " reference float32");
    check(f(x.to(loom::kFloat64)), where + " reference float64");
  }
}

TEST(PoolFastKernels, MaxPoolMatchesReference) {
  const Tensor x = random_values({3, 5, 17, 13}, 1);
  struct Case {
    std::vector<int64_t> k, s, p, d;
    bool ceil;
  };
  for (const Case& c :
       {Case{{2}, {2}, {0}, {1}, false}, Case{{3}, {2}, {1}, {1}, true}, Case{{3, 2}, {1, 3}, {1, 1}, {1}, false},
        Case{{3}, {1}, {1}, {2}, false}, Case{{2}, {2}, {1}, {1}, true}, Case{{5, 3}, {4, 1}, {2, 0}, {1, 2}, true}}) {
    auto f = [&](const Tensor& t) {
      Tensor in = t.detach().requires_grad_(true);
      auto [y, ind] = loom::max_pool2d_with_indices(in, c.k, c.s, c.p, c.d, c.ceil);
      Tensor g = random_values(y.sizes(), 7).to(y.dtype());
      y.backward(g);
      return TL{y, ind, in.grad()};
    };
    check_against_float64(f, x, "max_pool2d k" + loom::shape_str(c.k) + " s" + loom::shape_str(c.s), 1e-6,
                          {false, true, false});
  }
}

TEST(PoolFastKernels, MaxPoolNanAndInfinity) {
  // A NaN wins its window (the last NaN's index); -inf windows keep their first position.
  Tensor x = loom::tensor({{{{1.0, NAN, 3.0, 2.0}, {NAN, 0.0, -INFINITY, -INFINITY}}}});
  for (const bool reference : {false, true}) {
    std::optional<ReferenceGuard> ref;
    if (reference) ref.emplace();
    auto [y, ind] = loom::max_pool2d_with_indices(x, {2});
    const std::vector<float> v = y.to_vector<float>();
    EXPECT_TRUE(std::isnan(v[0]));
    EXPECT_EQ(v[1], 3.0f);
    EXPECT_EQ(ind.to_vector<int64_t>(), (std::vector<int64_t>{4, 2}));
    auto [y2, ind2] = loom::max_pool2d_with_indices(x.narrow(2, 1, 1).narrow(3, 2, 2), {1, 2});
    EXPECT_EQ(y2.to_vector<float>()[0], -INFINITY);
    EXPECT_EQ(ind2.to_vector<int64_t>()[0], 0);
  }
}

// The 2x2 / stride 2 path (the CNN's pool): rows of 35 outputs take two
// full 16-wide steps and a masked one; ties, NaNs and infinities scattered
// through them give the reference's values and indices exactly.
TEST(PoolFastKernels, MaxPool2x2WideRows) {
  Tensor x64 = random_values({2, 3, 9, 70}, 7);
  double* p = x64.data_ptr<double>();
  for (int64_t i = 0; i < x64.numel(); i += 37) p[i] = NAN;
  for (int64_t i = 5; i < x64.numel(); i += 41) p[i] = INFINITY;
  for (int64_t i = 11; i < x64.numel(); i += 29) p[i] = -INFINITY;
  for (int64_t i = 3; i + 1 < x64.numel(); i += 23) p[i + 1] = p[i];  // ties
  const Tensor x = x64.to(loom::kFloat32);
  auto run = [&](bool reference) {
    std::optional<ReferenceGuard> ref;
    if (reference) ref.emplace();
    return loom::max_pool2d_with_indices(x, {2});
  };
  const auto [want_y, want_i] = run(true);
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    const auto [y, i] = run(false);
    const std::vector<float> a = y.to_vector<float>(), b = want_y.to_vector<float>();
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k)
      EXPECT_TRUE(a[k] == b[k] || (std::isnan(a[k]) && std::isnan(b[k]))) << loom::cpu::gemm_isa_name(isa) << " " << k;
    EXPECT_EQ(i.to_vector<int64_t>(), want_i.to_vector<int64_t>()) << loom::cpu::gemm_isa_name(isa);
  }
}

TEST(PoolFastKernels, AvgPoolMatchesReference) {
  const Tensor x = random_values({3, 5, 17, 13}, 2);
  struct Case {
    std::vector<int64_t> k, s, p;
    bool ceil, include_pad;
    std::optional<int64_t> divisor;
  };
  for (const Case& c :
       {Case{{2}, {2}, {0}, false, true, std::nullopt}, Case{{3}, {2}, {1}, true, true, std::nullopt},
        Case{{3}, {2}, {1}, true, false, std::nullopt}, Case{{3, 2}, {1, 3}, {1, 1}, false, false, std::nullopt},
        Case{{4, 3}, {3, 1}, {2, 1}, true, true, 7}}) {
    auto f = [&](const Tensor& t) {
      Tensor in = t.detach().requires_grad_(true);
      Tensor y = loom::avg_pool2d(in, c.k, c.s, c.p, c.ceil, c.include_pad, c.divisor);
      y.backward(random_values(y.sizes(), 8).to(y.dtype()));
      return TL{y, in.grad()};
    };
    check_against_float64(f, x, "avg_pool2d k" + loom::shape_str(c.k) + " s" + loom::shape_str(c.s), 1e-5,
                          {false, false});
  }
}

TEST(PoolFastKernels, BatchNormMatchesReference) {
  for (const Shape& shape : {Shape{3, 5, 17, 13}, Shape{7, 3, 1, 1}, Shape{2, 4, 5, 33}}) {
    const Tensor x = random_values(shape, 3).mul_(3.0).add_(10.0);  // an offset mean: the shifted sums at work
    const Tensor w = random_values({shape[1]}, 4), b = random_values({shape[1]}, 5);
    auto f = [&](const Tensor& t) {
      Tensor in = t.detach().requires_grad_(true);
      // Fresh leaves each run (w and b themselves never require grad).
      Tensor wt = w.to(t.dtype(), true).requires_grad_(true), bt = b.to(t.dtype(), true).requires_grad_(true);
      auto [y, mean, var] = loom::batch_norm_with_stats(in, wt, bt, 1e-5);
      y.backward(random_values(y.sizes(), 9).to(y.dtype()));
      return TL{y, mean, var, in.grad(), wt.grad(), bt.grad()};
    };
    check_against_float64(f, x, "batch_norm " + loom::shape_str(shape), 1e-4, std::vector<bool>(6, false));
  }
  // (N, C) input: runs of one element.
  const Tensor x2 = random_values({9, 6}, 6);
  Tensor want = loom::batch_norm(x2), got;
  {
    ReferenceGuard ref;
    got = loom::batch_norm(x2);
  }
  expect_close(got, want, 1e-12, "batch_norm (N, C)");
}

// ---- error messages ----

using loom::test::throws_with;

TEST(PoolErrors, Messages) {
  const Tensor x = loom::zeros({2, 3, 6, 6});
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(loom::zeros({6, 6}), {2}); }, {"max_pool2d", "3D", "4D", "[6, 6]"}));
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(loom::zeros({2, 0, 6, 6}), {2}); }, {"max_pool2d", "[2, 0, 6, 6]"}));
  EXPECT_TRUE(throws_with(
      [&] {
        loom::max_pool2d(loom::zeros({2, 3, 6, 6}, loom::kInt64), {2});
      },
      {"max_pool2d", "floating point", "int64"}));
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(x, {2, 2, 2}); }, {"max_pool2d", "kernel_size", "one int or two"}));
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(x, {0}); }, {"max_pool2d", "kernel_size", "greater than zero"}));
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(x, {2}, {0}); }, {"max_pool2d", "stride"}));
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(x, {2}, {}, {0}, {0}); }, {"max_pool2d", "dilation"}));
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(x, {3}, {}, {2}); },
                          {"max_pool2d", "half of kernel size", "padding [2, 2]", "kernel_size [3, 3]"}));
  EXPECT_TRUE(throws_with([&] { loom::max_pool2d(x, {7}); }, {"max_pool2d", "[2, 3, 6, 6]", "too small"}));
  EXPECT_TRUE(throws_with(
      [&] {
        loom::max_pool2d(loom::zeros({1, 1, 1, 1}), {2}, {1}, {1}, {2});
      },
      {"max_pool2d", "covers only padding"}));
  EXPECT_TRUE(throws_with([&] { loom::avg_pool2d(x, {2}, {}, {0}, false, true, 0); }, {"avg_pool2d", "divisor"}));
  EXPECT_TRUE(throws_with([&] { loom::avg_pool2d(x, {2}, {}, {2}); }, {"avg_pool2d", "half of kernel size"}));
  EXPECT_TRUE(throws_with([&] { loom::adaptive_avg_pool2d(x, {0, 2}); }, {"adaptive_avg_pool2d", "positive"}));
  EXPECT_TRUE(throws_with([&] { loom::adaptive_avg_pool2d(loom::zeros({4}), {2}); }, {"adaptive_avg_pool2d", "[4]"}));

  EXPECT_TRUE(throws_with([&] { loom::batch_norm(loom::zeros({4})); }, {"batch_norm", "(N, C)", "[4]"}));
  EXPECT_TRUE(throws_with([&] { loom::batch_norm(x, loom::ones({4})); }, {"batch_norm", "weight", "[3]", "[4]"}));
  EXPECT_TRUE(
      throws_with([&] { loom::batch_norm(x, {}, loom::ones({3}, loom::kInt64)); }, {"batch_norm", "bias", "int64"}));
  EXPECT_TRUE(throws_with([&] { loom::batch_norm(loom::zeros({0, 3})); }, {"batch_norm", "one value per channel"}));
  EXPECT_TRUE(throws_with([&] { loom::batch_norm(x, {}, {}, -1.0); }, {"batch_norm", "eps"}));
  EXPECT_TRUE(throws_with(
      [&] {
        F::batch_norm(loom::zeros({1, 3}), {}, {}, {}, {}, true);
      },
      {"batch_norm", "more than 1 value per channel"}));

  EXPECT_TRUE(throws_with([&] { F::interpolate(x, {.size = {3}, .scale_factor = {2}}); }, {"interpolate", "only one"}));
  EXPECT_TRUE(throws_with([&] { F::interpolate(x, {}); }, {"interpolate", "either size or scale_factor"}));
  EXPECT_TRUE(throws_with([&] { F::interpolate(x, {.size = {3, 3, 3}}); }, {"interpolate", "size", "[2, 3, 6, 6]"}));
  EXPECT_TRUE(throws_with([&] { F::interpolate(x, {.size = {4}, .mode = "bicubic"}); }, {"interpolate", "bicubic"}));
  EXPECT_TRUE(throws_with(
      [&] {
        F::interpolate(loom::zeros({2, 3, 6}), {.size = {4}, .mode = "bilinear"});
      },
      {"interpolate", "bilinear mode needs 4D", "[2, 3, 6]"}));
  EXPECT_TRUE(
      throws_with([&] { F::interpolate(x, {.size = {4}, .align_corners = true}); }, {"interpolate", "align_corners"}));
  EXPECT_TRUE(throws_with([&] { F::interpolate(x, {.scale_factor = {0.1}}); }, {"interpolate", "greater than 0"}));
  EXPECT_TRUE(
      throws_with([&] { F::interpolate(x, {.scale_factor = {-2}}); }, {"interpolate", "scale_factor", "positive"}));
  EXPECT_TRUE(throws_with([&] { F::dropout2d(loom::zeros({3, 4}), 0.5, true); }, {"dropout2d", "[3, 4]"}));
  EXPECT_TRUE(throws_with([&] { F::dropout2d(x, 1.5, true); }, {"dropout2d", "between 0 and 1"}));
}

}  // namespace
}  // namespace loom_test
