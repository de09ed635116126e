// Tensor basics: dtypes, geometry, views sharing storage, copies, type
// promotion, broadcasting, factories, random state and printing.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace loom;
using loom::indexing::Ellipsis;
using loom::indexing::None;
using loom::indexing::Slice;
using V = std::vector<double>;

V vals(const Tensor& t) { return t.to_vector<double>(); }
std::vector<int64_t> ivals(const Tensor& t) { return t.to_vector<int64_t>(); }
std::string str(const Tensor& t) {
  std::ostringstream os;
  os << t;
  return os.str();
}
// 0, 1, ..., n-1 as float32 with the given shape.
Tensor iota(std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return arange(n, kFloat32).view(shape);
}

const std::vector<DType> kAllDTypes = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool};

// ---------------------------------------------------------------- dtypes

TEST(DType, ElementSizesAndNames) {
  EXPECT_EQ(element_size(kFloat32), 4u);
  EXPECT_EQ(element_size(kFloat64), 8u);
  EXPECT_EQ(element_size(kFloat16), 2u);
  EXPECT_EQ(element_size(kBFloat16), 2u);
  EXPECT_EQ(element_size(kInt32), 4u);
  EXPECT_EQ(element_size(kInt64), 8u);
  EXPECT_EQ(element_size(kUInt8), 1u);
  EXPECT_EQ(element_size(kBool), 1u);
  EXPECT_STREQ(dtype_name(kFloat32), "float32");
  EXPECT_STREQ(dtype_name(kBFloat16), "bfloat16");
  EXPECT_STREQ(dtype_name(kBool), "bool");
  EXPECT_TRUE(is_floating_point(kFloat16));
  EXPECT_FALSE(is_floating_point(kInt32));
}

TEST(DType, CreateEveryDType) {
  for (DType d : kAllDTypes) {
    SCOPED_TRACE(dtype_name(d));
    Tensor z = zeros({2, 3}, d);
    EXPECT_EQ(z.dtype(), d);
    EXPECT_EQ(z.element_size(), element_size(d));
    EXPECT_EQ(z.nbytes(), 6 * element_size(d));
    EXPECT_EQ(vals(z), V(6, 0.0));
    Tensor o = ones({4}, TensorOptions().dtype(d));
    EXPECT_EQ(vals(o), V(4, 1.0));
    Tensor f = full({2}, 1, d);
    EXPECT_EQ(f.dtype(), d);
    EXPECT_EQ(vals(f), V(2, 1.0));
  }
}

TEST(DType, ConversionRoundTrips) {
  Tensor small = tensor({0, 1, 2, 3, 100, 127});
  for (DType d : kAllDTypes) {
    if (d == kBool) continue;
    SCOPED_TRACE(dtype_name(d));
    Tensor t = small.to(d);
    EXPECT_EQ(t.dtype(), d);
    EXPECT_EQ(ivals(t.to(kInt64)), (std::vector<int64_t>{0, 1, 2, 3, 100, 127}));
    EXPECT_EQ(vals(t.to(kFloat64)), (V{0, 1, 2, 3, 100, 127}));
  }
  // float -> int truncates toward zero; -> bool is "nonzero".
  Tensor f = tensor({1.7, -1.7, 0.0, 2.0});
  EXPECT_EQ(ivals(f.to(kInt64)), (std::vector<int64_t>{1, -1, 0, 2}));
  EXPECT_EQ(ivals(f.to(kInt32)), (std::vector<int64_t>{1, -1, 0, 2}));
  EXPECT_EQ(vals(f.to(kBool)), (V{1, 1, 0, 1}));
  EXPECT_EQ(vals(tensor({true, false}).to(kFloat32)), (V{1, 0}));
  // int64 -> uint8 wraps modulo 256, as PyTorch.
  EXPECT_EQ(ivals(tensor({300, 255}).to(kUInt8)), (std::vector<int64_t>{44, 255}));
  // Large int64 survive a float64 round trip exactly up to 2^53.
  int64_t big = (int64_t{1} << 53) - 1;
  EXPECT_EQ(tensor({big}).to(kFloat64).to(kInt64).item<int64_t>(), big);
}

TEST(DType, HalfAndBFloat16Rounding) {
  auto via = [](double x, DType d) { return tensor({x}, kFloat64).to(d).to(kFloat64).item<double>(); };
  // Round to nearest even.
  EXPECT_EQ(via(1.0 / 3.0, kFloat16), 0.333251953125);
  EXPECT_EQ(via(2049, kFloat16), 2048);
  EXPECT_EQ(via(2051, kFloat16), 2052);
  EXPECT_EQ(via(1.0 / 3.0, kBFloat16), 0.333984375);
  EXPECT_EQ(via(257, kBFloat16), 256);
  EXPECT_EQ(via(259, kBFloat16), 260);
  // Overflow, subnormals, infinities and NaN.
  EXPECT_TRUE(std::isinf(via(1e5, kFloat16)));
  EXPECT_EQ(via(65504, kFloat16), 65504);
  EXPECT_EQ(via(1e-7, kFloat16), 1.1920928955078125e-07);
  EXPECT_EQ(via(-std::numeric_limits<double>::infinity(), kFloat16), -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(via(std::nan(""), kFloat16)));
  EXPECT_TRUE(std::isnan(via(std::nan(""), kBFloat16)));
  EXPECT_EQ(via(1e30, kBFloat16), static_cast<double>(static_cast<float>(BFloat16(1e30f))));
  // The storage types themselves.
  EXPECT_EQ(static_cast<float>(Half(0.5f)), 0.5f);
  EXPECT_EQ(Half(1.0f).bits, 0x3c00);
  EXPECT_EQ(Half(-2.0f).bits, 0xc000);
  EXPECT_EQ(BFloat16(1.0f).bits, 0x3f80);
  // float16 arithmetic keeps the dtype.
  Tensor h = tensor({1.5, 2.25}).to(kFloat16);
  Tensor s = h + h;
  EXPECT_EQ(s.dtype(), kFloat16);
  EXPECT_EQ(vals(s), (V{3.0, 4.5}));
  Tensor b = tensor({1.5, 2.25}).to(kBFloat16) * 2;
  EXPECT_EQ(b.dtype(), kBFloat16);
  EXPECT_EQ(vals(b), (V{3.0, 4.5}));
}

TEST(DType, ItemDataPtrAndToVector) {
  Tensor t = tensor({{1.5, 2.5}, {3.5, 4.5}});
  EXPECT_EQ(t.dtype(), kFloat32);
  EXPECT_EQ(t.data_ptr<float>()[3], 4.5f);
  EXPECT_EQ(t[1][0].item<float>(), 3.5f);
  EXPECT_EQ(t[1][1].item<int>(), 4);
  EXPECT_THROW(t.item(), Error);  // more than one element
  EXPECT_THROW(t.data_ptr<double>(), Error);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f}));
  EXPECT_EQ(t.t().to_vector<float>(), (std::vector<float>{1.5f, 3.5f, 2.5f, 4.5f}));
  EXPECT_TRUE(tensor({true}).item<bool>());
  EXPECT_EQ(scalar_tensor(7).item<int64_t>(), 7);
}

// ---------------------------------------------------------------- geometry

TEST(Geometry, SizesStridesOffset) {
  Tensor x = zeros({2, 3, 4});
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(x.strides(), (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(x.dim(), 3);
  EXPECT_EQ(x.numel(), 24);
  EXPECT_EQ(x.size(-1), 4);
  EXPECT_EQ(x.stride(0), 12);
  EXPECT_EQ(x.storage_offset(), 0);
  EXPECT_TRUE(x.is_contiguous());

  Tensor n = x.narrow(1, 1, 2);
  EXPECT_EQ(n.sizes(), (std::vector<int64_t>{2, 2, 4}));
  EXPECT_EQ(n.strides(), (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(n.storage_offset(), 4);
  EXPECT_FALSE(n.is_contiguous());

  Tensor s = x.select(0, 1);
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(s.storage_offset(), 12);
  EXPECT_TRUE(s.is_contiguous());

  Tensor p = x.permute({2, 0, 1});
  EXPECT_EQ(p.sizes(), (std::vector<int64_t>{4, 2, 3}));
  EXPECT_EQ(p.strides(), (std::vector<int64_t>{1, 12, 4}));
  EXPECT_FALSE(p.is_contiguous());

  Tensor e = zeros({3, 1}).expand({2, 3, 5});
  EXPECT_EQ(e.strides(), (std::vector<int64_t>{0, 1, 0}));

  Tensor st = x.index({Slice(), Slice(None, None, 2), Slice(1, None)});
  EXPECT_EQ(st.sizes(), (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(st.strides(), (std::vector<int64_t>{12, 8, 1}));
  EXPECT_EQ(st.storage_offset(), 1);

  Tensor u = x.unsqueeze(1);
  EXPECT_EQ(u.sizes(), (std::vector<int64_t>{2, 1, 3, 4}));
  EXPECT_TRUE(u.is_contiguous());
  Tensor scalar = zeros({});
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.numel(), 1);
}

// ---------------------------------------------------------------- views

TEST(Views, WritesThroughViewsAreSeenByTheBase) {
  Tensor x = iota({3, 4});
  x.narrow(1, 1, 2).fill_(-1);
  EXPECT_EQ(vals(x), (V{0, -1, -1, 3, 4, -1, -1, 7, 8, -1, -1, 11}));

  x = iota({3, 4});
  x.select(0, 2).zero_();
  EXPECT_EQ(vals(x), (V{0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0}));

  x = iota({3, 4});
  x.t().select(0, 1).fill_(9);  // column 1
  EXPECT_EQ(vals(x), (V{0, 9, 2, 3, 4, 9, 6, 7, 8, 9, 10, 11}));

  x = iota({3, 4});
  x.view({12}).narrow(0, 10, 2).mul_(2);
  EXPECT_EQ(vals(x), (V{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 22}));

  x = iota({3, 4});
  x.reshape({2, 6})[1].add_(100);  // reshape of a contiguous tensor is a view
  EXPECT_EQ(vals(x), (V{0, 1, 2, 3, 4, 5, 106, 107, 108, 109, 110, 111}));

  x = iota({3, 4});
  x.permute({1, 0}).unsqueeze(0).squeeze(0)[3].fill_(-5);  // column 3
  EXPECT_EQ(vals(x), (V{0, 1, 2, -5, 4, 5, 6, -5, 8, 9, 10, -5}));

  x = iota({2, 3, 4});
  x.flatten(1).narrow(1, 0, 1).fill_(7);
  EXPECT_EQ(x.index({Slice(), 0, 0}).to_vector<float>(), (std::vector<float>{7, 7}));

  x = iota({3, 4});
  x.unflatten(1, {2, 2}).select(2, 1).fill_(0);  // odd columns
  EXPECT_EQ(vals(x), (V{0, 0, 2, 0, 4, 0, 6, 0, 8, 0, 10, 0}));
}

TEST(Views, IndexWithSlicesStepsNegativesNoneEllipsis) {
  Tensor x = iota({4, 5});
  // Every other row, last column.
  Tensor v = x.index({Slice(None, None, 2), -1});
  EXPECT_EQ(vals(v), (V{4, 14}));
  v.fill_(-1);
  EXPECT_EQ(x[0][4].item<float>(), -1);
  EXPECT_EQ(x[2][4].item<float>(), -1);
  EXPECT_EQ(x[1][4].item<float>(), 9);

  x = iota({4, 5});
  Tensor w = x.index({Slice(-3, -1), Slice(1, None, 3)});  // rows 1..2, cols 1, 4
  EXPECT_EQ(w.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(vals(w), (V{6, 9, 11, 14}));
  w.zero_();
  EXPECT_EQ(vals(x.index({1})), (V{5, 0, 7, 8, 0}));
  EXPECT_EQ(vals(x.index({-2})), (V{10, 0, 12, 13, 0}));

  x = iota({2, 3, 4});
  Tensor e = x.index({Ellipsis, 1});  // (2, 3)
  EXPECT_EQ(e.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(vals(e), (V{1, 5, 9, 13, 17, 21}));
  Tensor n = x.index({None, Ellipsis, None, Slice(0, 1)});  // (1, 2, 3, 1, 1)
  EXPECT_EQ(n.sizes(), (std::vector<int64_t>{1, 2, 3, 1, 1}));
  n.fill_(-3);
  EXPECT_EQ(x[1][2][0].item<float>(), -3);
  EXPECT_EQ(x[1][2][1].item<float>(), 21);
  Tensor s = x.index({"...", Slice(None, None, 2)});  // step 2 on the last dim
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{2, 3, 2}));
  // Out-of-range slice bounds clamp, as in Python.
  EXPECT_EQ(x.index({Slice(1, 100)}).size(0), 1);
  EXPECT_EQ(x.index({Slice(-100, 1)}).size(0), 1);
}

TEST(Views, ShareStorageAndVersion) {
  Tensor x = zeros({3, 4});
  Tensor t = x.t();
  EXPECT_EQ(t.raw_data_ptr(), x.raw_data_ptr());
  Tensor n = x.narrow(1, 2, 2);
  EXPECT_EQ(static_cast<char*>(n.raw_data_ptr()), static_cast<char*>(x.raw_data_ptr()) + 2 * sizeof(float));
  uint64_t v0 = x._version();
  n.add_(1);
  EXPECT_GT(x._version(), v0);
  EXPECT_EQ(t._version(), x._version());
  // An expanded view sees writes made to its base.
  Tensor b = zeros({3, 1});
  Tensor e = b.expand({3, 4});
  b.fill_(2);
  EXPECT_EQ(vals(e), V(12, 2.0));
}

TEST(Views, ContiguousCloneCopy) {
  Tensor x = iota({3, 4});
  Tensor c = x.contiguous();
  EXPECT_EQ(c.raw_data_ptr(), x.raw_data_ptr());  // already contiguous: no copy
  Tensor tc = x.t().contiguous();
  EXPECT_TRUE(tc.is_contiguous());
  EXPECT_NE(tc.raw_data_ptr(), x.raw_data_ptr());
  EXPECT_EQ(vals(tc), (V{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));

  Tensor cl = x.clone();
  cl.fill_(0);
  EXPECT_EQ(x[2][3].item<float>(), 11);  // the clone owns its memory

  // copy_ broadcasts the source and converts its dtype.
  Tensor dst = zeros({3, 4}, kFloat64);
  dst.copy_(tensor({1, 2, 3, 4}));  // int64 source
  EXPECT_EQ(vals(dst), (V{1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}));
  EXPECT_EQ(dst.dtype(), kFloat64);
  // copy_ into a non-contiguous destination writes the right elements.
  Tensor y = zeros({2, 3});
  y.t().copy_(iota({3, 2}));
  EXPECT_EQ(vals(y), (V{0, 2, 4, 1, 3, 5}));
  // copy_ between overlapping views of one storage reads the source first.
  Tensor z = iota({4});
  z.copy_(z.flip({0}));
  EXPECT_EQ(vals(z), (V{3, 2, 1, 0}));
  // to(dtype) converts; to the same dtype returns the same tensor unless copy.
  Tensor h = x.to(kFloat16);
  EXPECT_EQ(h.dtype(), kFloat16);
  EXPECT_EQ(vals(h), vals(x));
  EXPECT_EQ(x.to(kFloat32).raw_data_ptr(), x.raw_data_ptr());
  EXPECT_NE(x.to(kFloat32, true).raw_data_ptr(), x.raw_data_ptr());
  // reshape of a non-contiguous tensor copies.
  Tensor r = x.t().reshape({12});
  EXPECT_EQ(vals(r), (V{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
}

TEST(Views, FlipAndPadCopy) {
  Tensor x = iota({2, 3});
  Tensor f = x.flip({1});
  EXPECT_EQ(vals(f), (V{2, 1, 0, 5, 4, 3}));
  Tensor p = pad(x, {1, 1}, -1);
  EXPECT_EQ(p.sizes(), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(vals(p), (V{-1, 0, 1, 2, -1, -1, 3, 4, 5, -1}));
}

TEST(Views, IndexPut) {
  Tensor x = zeros({3, 4});
  x.index_put_({Slice(), 1}, 5.0);
  x.index_put_({0}, tensor({1.0f, 2.0f, 3.0f, 4.0f}));
  EXPECT_EQ(vals(x), (V{1, 2, 3, 4, 0, 5, 0, 0, 0, 5, 0, 0}));
}

// x[:, idx] = v and x[mask] = v as PyTorch: integer tensors (negative ones
// too) and masks over leading dims, with the value broadcast to the
// indexed shape.
TEST(Views, IndexPutThroughTensorIndices) {
  Tensor x = zeros({3, 4});
  x.index_put_({Slice(), tensor({3, -4})}, tensor({7.0f, 8.0f}));
  EXPECT_EQ(vals(x), (V{8, 0, 0, 7, 8, 0, 0, 7, 8, 0, 0, 7}));
  Tensor y = zeros({3, 2});
  y.index_put_({tensor({true, false, true})}, tensor({1.0f, 2.0f}));
  EXPECT_EQ(vals(y), (V{1, 2, 0, 0, 1, 2}));
  Tensor z = zeros({2, 3});
  z.index_put_({tensor({{1, 0}, {1, 1}}), 2}, tensor({{1.0f, 2.0f}, {3.0f, 4.0f}}));
  EXPECT_EQ(vals(z), (V{0, 0, 2, 0, 0, 4}));  // repeated positions: the last write stays
  Tensor w = zeros({2, 2, 2});
  w.index_put_({Ellipsis, tensor({1})}, 9.0);
  EXPECT_EQ(vals(w), (V{0, 9, 0, 9, 0, 9, 0, 9}));
  try {
    x.index_put_({tensor({5})}, 1.0);
    ADD_FAILURE() << "an out-of-range index did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index 5 is out of bounds for dim 0 with size 3"),
              std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- promotion

TEST(TypePromotion, PromoteTypesLattice) {
  EXPECT_EQ(promote_types(kInt32, kFloat32), kFloat32);
  EXPECT_EQ(promote_types(kInt64, kFloat16), kFloat16);
  EXPECT_EQ(promote_types(kInt32, kInt64), kInt64);
  EXPECT_EQ(promote_types(kBool, kInt32), kInt32);
  EXPECT_EQ(promote_types(kBool, kBool), kBool);
  EXPECT_EQ(promote_types(kUInt8, kBool), kUInt8);
  EXPECT_EQ(promote_types(kUInt8, kInt32), kInt32);
  EXPECT_EQ(promote_types(kFloat16, kBFloat16), kFloat32);
  EXPECT_EQ(promote_types(kBFloat16, kFloat32), kFloat32);
  EXPECT_EQ(promote_types(kFloat32, kFloat64), kFloat64);
  EXPECT_EQ(promote_types(kBool, kBFloat16), kBFloat16);
  for (DType a : kAllDTypes)
    for (DType b : kAllDTypes) EXPECT_EQ(promote_types(a, b), promote_types(b, a)) << a << " " << b;
  EXPECT_EQ(default_dtype(), kFloat32);
}

TEST(TypePromotion, TensorTensor) {
  Tensor i32 = tensor({1, 2}).to(kInt32), i64 = tensor({1, 2}), f32 = tensor({0.5, 1.5});
  Tensor f64 = f32.to(kFloat64), b = tensor({true, false}), u8 = tensor({1, 2}).to(kUInt8);
  EXPECT_EQ((i32 + f32).dtype(), kFloat32);
  EXPECT_EQ(vals(i32 + f32), (V{1.5, 3.5}));
  EXPECT_EQ((i32 + i64).dtype(), kInt64);
  EXPECT_EQ((b + i32).dtype(), kInt32);
  EXPECT_EQ(vals(b + i32), (V{2, 2}));
  EXPECT_EQ((u8 * i32).dtype(), kInt32);
  EXPECT_EQ((f32 * f64).dtype(), kFloat64);
  EXPECT_EQ((f32.to(kFloat16) + f32.to(kBFloat16)).dtype(), kFloat32);
  EXPECT_EQ(maximum(i64, f32).dtype(), kFloat32);
  EXPECT_EQ(where(b, i32, f64).dtype(), kFloat64);
  // Integer division is true division into the default float dtype.
  Tensor q = tensor({1, 3}) / tensor({2, 2});
  EXPECT_EQ(q.dtype(), kFloat32);
  EXPECT_EQ(vals(q), (V{0.5, 1.5}));
  // Float-only ops on integers compute in the default float dtype.
  Tensor r = sqrt(tensor({4, 9}));
  EXPECT_EQ(r.dtype(), kFloat32);
  EXPECT_EQ(vals(r), (V{2, 3}));
  // Comparisons give bool and compare in the promoted type.
  Tensor c = i32 < tensor({1.5, 1.5});
  EXPECT_EQ(c.dtype(), kBool);
  EXPECT_EQ(vals(c), (V{1, 0}));
  // Sums of integers and bools accumulate in int64.
  EXPECT_EQ(sum(i32).dtype(), kInt64);
  EXPECT_EQ(sum(b).dtype(), kInt64);
  EXPECT_EQ(sum(b).item<int64_t>(), 1);
  EXPECT_EQ(sum(f32.to(kFloat16)).dtype(), kFloat16);
}

TEST(TypePromotion, ZeroDimTensorsCountLess) {
  Tensor f32 = tensor({0.5, 1.5});
  Tensor i32 = tensor({1, 2}).to(kInt32);
  Tensor s64 = scalar_tensor(2.0, kFloat64);   // 0-dim float64
  Tensor si64 = scalar_tensor(2, kInt64);      // 0-dim int64
  // Same category: the dimensioned tensor decides.
  EXPECT_EQ((f32 + s64).dtype(), kFloat32);
  EXPECT_EQ((i32 + si64).dtype(), kInt32);
  EXPECT_EQ(result_type(f32, s64), kFloat32);
  // Higher category in the 0-dim tensor: its dtype is used.
  EXPECT_EQ((i32 + s64).dtype(), kFloat64);
  EXPECT_EQ(result_type(i32, s64), kFloat64);
  // Two 0-dim tensors promote normally.
  EXPECT_EQ((s64 + scalar_tensor(1.0, kFloat32)).dtype(), kFloat64);
  EXPECT_EQ((s64 + si64).sizes(), (std::vector<int64_t>{}));
}

TEST(TypePromotion, TensorScalar) {
  Tensor i32 = tensor({1, 2}).to(kInt32);
  Tensor b = tensor({true, false});
  Tensor h = tensor({1.0, 2.0}).to(kFloat16);
  Tensor u8 = tensor({250, 1}).to(kUInt8);
  EXPECT_EQ((i32 + 2).dtype(), kInt32);
  EXPECT_EQ((i32 + 2.5).dtype(), kFloat32);  // default dtype, not float64
  EXPECT_EQ(vals(i32 + 2.5), (V{3.5, 4.5}));
  EXPECT_EQ((i32 * 2.0).dtype(), kFloat32);
  EXPECT_EQ((h + 2.5).dtype(), kFloat16);
  EXPECT_EQ((b + 1).dtype(), kInt64);
  EXPECT_EQ((b + 1.5).dtype(), kFloat32);
  EXPECT_EQ((b + true).dtype(), kBool);
  EXPECT_EQ((u8 + 10).dtype(), kUInt8);
  EXPECT_EQ(ivals(u8 + 10), (std::vector<int64_t>{4, 11}));  // wraps
  EXPECT_EQ((tensor({1.0}, kFloat64) * 2).dtype(), kFloat64);
  EXPECT_EQ((2 - i32).dtype(), kInt32);
  EXPECT_EQ(vals(2 - i32), (V{1, 0}));
  EXPECT_EQ(result_type(i32, Scalar(1.5)), kFloat32);
  EXPECT_EQ(result_type(i32, Scalar(1)), kInt32);
  EXPECT_EQ((i32 > 1.5).dtype(), kBool);
  EXPECT_EQ(vals(i32 > 1.5), (V{0, 1}));
  EXPECT_EQ(pow(i32, 2).dtype(), kInt32);
  EXPECT_EQ(vals(pow(i32, 2)), (V{1, 4}));
  EXPECT_EQ(pow(i32, 0.5).dtype(), kFloat32);
}

// ---------------------------------------------------------------- broadcasting

TEST(Broadcasting, Shapes) {
  EXPECT_EQ(broadcast_shapes({3, 1}, {1, 4}), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(broadcast_shapes({2, 1, 3}, {4, 1}), (std::vector<int64_t>{2, 4, 3}));
  EXPECT_EQ(broadcast_shapes({}, {3}), (std::vector<int64_t>{3}));
  EXPECT_EQ(broadcast_shapes({5, 0}, {1, 0}), (std::vector<int64_t>{5, 0}));
  EXPECT_THROW(broadcast_shapes({3}, {4}), Error);
  auto ts = broadcast_tensors({zeros({3, 1}), zeros({4})});
  EXPECT_EQ(ts[0].sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(ts[1].sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(ts[1].stride(0), 0);
}

TEST(Broadcasting, Values) {
  Tensor a = tensor({{1.0}, {2.0}, {3.0}});  // (3, 1)
  Tensor b = tensor({10.0, 20.0});           // (2)
  Tensor s = a + b;
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(vals(s), (V{11, 21, 12, 22, 13, 23}));
  EXPECT_EQ(vals(a * scalar_tensor(2.0)), (V{2, 4, 6}));
  Tensor m = tensor({{true, false}});
  EXPECT_EQ(vals(where(m, a, b)), (V{1, 20, 2, 20, 3, 20}));
}

// ---------------------------------------------------------------- factories

TEST(Factories, Basic) {
  Tensor e = empty({2, 3});
  EXPECT_EQ(e.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(e.dtype(), kFloat32);
  EXPECT_EQ(vals(full({2, 2}, 1.5)), V(4, 1.5));
  EXPECT_EQ(full({2}, 1.5).dtype(), kFloat32);
  EXPECT_EQ(full({2}, 7).dtype(), kInt64);   // as torch.full: an integer fill gives int64
  EXPECT_EQ(full({2}, true).dtype(), kBool);
  EXPECT_EQ(full({2}, 7, kInt32).dtype(), kInt32);
  EXPECT_EQ(zeros({2}, TensorOptions().dtype(kFloat64).requires_grad(true)).requires_grad(), true);

  Tensor a = arange(5);
  EXPECT_EQ(a.dtype(), kInt64);
  EXPECT_EQ(ivals(a), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(vals(arange(0, 1, 0.25)), (V{0, 0.25, 0.5, 0.75}));
  EXPECT_EQ(arange(0, 1, 0.25).dtype(), kFloat32);
  EXPECT_EQ(ivals(arange(1, 10, 3)), (std::vector<int64_t>{1, 4, 7}));
  EXPECT_EQ(ivals(arange(5, 0, -2)), (std::vector<int64_t>{5, 3, 1}));
  EXPECT_EQ(arange(4, kFloat64).dtype(), kFloat64);
  EXPECT_EQ(arange(0.0, 3.0).size(0), 3);

  Tensor l = linspace(0, 1, 5);
  EXPECT_EQ(l.dtype(), kFloat32);
  EXPECT_EQ(vals(l), (V{0, 0.25, 0.5, 0.75, 1}));
  EXPECT_EQ(vals(linspace(-1, 1, 1)), (V{-1}));
  EXPECT_EQ(vals(linspace(2, -2, 3, kFloat64)), (V{2, 0, -2}));

  EXPECT_EQ(vals(eye(3)), (V{1, 0, 0, 0, 1, 0, 0, 0, 1}));
  Tensor e23 = eye(2, 3, kInt64);
  EXPECT_EQ(e23.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(e23.dtype(), kInt64);
  EXPECT_EQ(vals(e23), (V{1, 0, 0, 0, 1, 0}));
  EXPECT_EQ(scalar_tensor(2.5).dim(), 0);
}

TEST(Factories, NestedLists) {
  Tensor i = tensor({{1, 2}, {3, 4}});
  EXPECT_EQ(i.dtype(), kInt64);
  EXPECT_EQ(i.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(ivals(i), (std::vector<int64_t>{1, 2, 3, 4}));
  Tensor f = tensor({1.5, 2});
  EXPECT_EQ(f.dtype(), kFloat32);
  EXPECT_EQ(vals(f), (V{1.5, 2}));
  Tensor b = tensor({true, false});
  EXPECT_EQ(b.dtype(), kBool);
  Tensor d = tensor({{{1.0}, {2.0}}}, kFloat64);
  EXPECT_EQ(d.sizes(), (std::vector<int64_t>{1, 2, 1}));
  EXPECT_EQ(d.dtype(), kFloat64);
  EXPECT_EQ(tensor({3}).sizes(), (std::vector<int64_t>{1}));
  EXPECT_EQ(tensor(3.5).dim(), 0);
  int64_t big = int64_t{1} << 60;
  EXPECT_EQ(tensor({big}).item<int64_t>(), big);  // int64 values are not squeezed through double
  EXPECT_THROW(tensor({{1, 2}, {3}}), Error);     // ragged

  Tensor vf = tensor(std::vector<float>{1.f, 2.f, 3.f});
  EXPECT_EQ(vf.dtype(), kFloat32);
  EXPECT_EQ(vals(vf), (V{1, 2, 3}));
  Tensor vi = tensor(std::vector<int64_t>{4, 5});
  EXPECT_EQ(vi.dtype(), kInt64);
  Tensor vd = tensor(std::vector<double>{0.25}, kFloat32);
  EXPECT_EQ(vd.dtype(), kFloat32);
  EXPECT_EQ(vals(vd), (V{0.25}));
}

TEST(Factories, FromBlobDoesNotCopy) {
  float buf[6] = {0, 1, 2, 3, 4, 5};
  Tensor t = from_blob(buf, {2, 3});
  EXPECT_EQ(t.raw_data_ptr(), static_cast<void*>(buf));
  buf[4] = 40;
  EXPECT_EQ(t[1][1].item<float>(), 40);
  t.fill_(7);
  EXPECT_EQ(buf[0], 7);
  double dbuf[4] = {1, 2, 3, 4};
  Tensor s = from_blob(dbuf, {2, 2}, {1, 2}, kFloat64);  // column-major
  EXPECT_EQ(vals(s), (V{1, 3, 2, 4}));
  bool freed = false;
  {
    auto* heap = new int32_t[3]{1, 2, 3};
    Tensor h = from_blob(heap, {3}, kInt32, [&freed](void* p) {
      delete[] static_cast<int32_t*>(p);
      freed = true;
    });
    Tensor view = h.narrow(0, 1, 2);
    h = Tensor();
    EXPECT_FALSE(freed);  // the view still holds the storage
    EXPECT_EQ(ivals(view), (std::vector<int64_t>{2, 3}));
  }
  EXPECT_TRUE(freed);
}

TEST(Factories, Likes) {
  Tensor x = zeros({2, 3}, kFloat64);
  EXPECT_EQ(zeros_like(x).dtype(), kFloat64);
  EXPECT_EQ(ones_like(x).sizes(), x.sizes());
  EXPECT_EQ(vals(ones_like(x)), V(6, 1.0));
  EXPECT_EQ(ones_like(x, TensorOptions().dtype(kInt32)).dtype(), kInt32);
  EXPECT_EQ(vals(full_like(x, 3)), V(6, 3.0));
  EXPECT_EQ(full_like(x, 3).dtype(), kFloat64);
  EXPECT_EQ(empty_like(x).sizes(), x.sizes());
  EXPECT_EQ(rand_like(x).dtype(), kFloat64);
  EXPECT_EQ(randn_like(x).sizes(), x.sizes());
  Tensor ri = randint_like(x, 2, 5);
  EXPECT_EQ(ri.dtype(), kFloat64);
  for (double v : vals(ri)) {
    EXPECT_GE(v, 2);
    EXPECT_LT(v, 5);
    EXPECT_EQ(v, std::floor(v));
  }
  // A non-contiguous source still gives a plain result of its shape.
  EXPECT_EQ(zeros_like(x.t()).sizes(), (std::vector<int64_t>{3, 2}));
}

TEST(Factories, RandomDistributions) {
  manual_seed(123);
  Tensor u = rand({20000});
  EXPECT_EQ(u.dtype(), kFloat32);
  V uv = vals(u);
  double mn = *std::min_element(uv.begin(), uv.end()), mx = *std::max_element(uv.begin(), uv.end());
  EXPECT_GE(mn, 0.0);
  EXPECT_LT(mx, 1.0);
  EXPECT_NEAR(mean(u).item<double>(), 0.5, 0.01);
  Tensor n = randn({20000}, kFloat64);
  EXPECT_EQ(n.dtype(), kFloat64);
  EXPECT_NEAR(mean(n).item<double>(), 0.0, 0.03);
  EXPECT_NEAR(n.std().item<double>(), 1.0, 0.03);
  Tensor ri = randint(-3, 4, {5000});
  EXPECT_EQ(ri.dtype(), kInt64);
  EXPECT_EQ(ri.min().item<int64_t>(), -3);
  EXPECT_EQ(ri.max().item<int64_t>(), 3);
  Tensor r2 = randint(10, {2, 3}, kInt32);
  EXPECT_EQ(r2.dtype(), kInt32);
  EXPECT_EQ(r2.sizes(), (std::vector<int64_t>{2, 3}));
  Tensor p = randperm(50);
  EXPECT_EQ(p.dtype(), kInt64);
  std::vector<int64_t> pv = ivals(p);
  std::vector<int64_t> sorted = pv;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> want(50);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(sorted, want);
  EXPECT_NE(pv, want);  // 1 in 50! chance of a false failure
  Tensor b0 = bernoulli(zeros({100}));
  EXPECT_EQ(vals(b0), V(100, 0.0));
  EXPECT_EQ(vals(bernoulli(ones({100}))), V(100, 1.0));
  Tensor b = bernoulli(full({20000}, 0.3));
  EXPECT_NEAR(mean(b.to(kFloat64)).item<double>(), 0.3, 0.015);
  Tensor bl = bernoulli(zeros({20000}, kFloat64), 0.7);
  EXPECT_EQ(bl.dtype(), kFloat64);
  EXPECT_NEAR(mean(bl).item<double>(), 0.7, 0.015);
  Tensor un = empty({10000}).uniform_(-2, -1);
  EXPECT_GE(un.min().item<double>(), -2);
  EXPECT_LT(un.max().item<double>(), -1);
  Tensor nn = empty({10000}, kFloat64).normal_(5, 0.5);
  EXPECT_NEAR(mean(nn).item<double>(), 5, 0.03);
}

TEST(Random, ManualSeedReproducible) {
  manual_seed(42);
  EXPECT_EQ(initial_seed(), 42u);
  Tensor a = randn({1000});
  Tensor a2 = randn({1000});
  manual_seed(42);
  Tensor b = randn({1000});
  EXPECT_TRUE(equal(a, b));
  EXPECT_FALSE(equal(a, a2));  // the draw counter advances
  manual_seed(43);
  EXPECT_FALSE(equal(randn({1000}), b));
}

TEST(Random, IndependentOfThreadCount) {
  int saved = get_num_threads();
  auto draw = [](int threads) {
    set_num_threads(threads);
    manual_seed(7);
    std::vector<Tensor> r = {rand({100000}), randn({100000}, kFloat64), randint(0, 1000, {100000}),
                             bernoulli(full({100000}, 0.5)), randperm(1000), empty({100000}).uniform_(-1, 1)};
    return r;
  };
  std::vector<Tensor> one = draw(1), two = draw(2);
  set_num_threads(saved);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(equal(one[i], two[i])) << "draw " << i;
}

// ---------------------------------------------------------------- printing

TEST(Printing, LikePyTorch) {
  EXPECT_EQ(str(tensor({1.0, 2.0, 3.0})), "tensor([1., 2., 3.])");
  EXPECT_EQ(str(tensor({1.5, 2.25})), "tensor([1.5000, 2.2500])");
  EXPECT_EQ(str(tensor({-1.5, 2.0})), "tensor([-1.5000,  2.0000])");
  EXPECT_EQ(str(tensor({{1, 2}, {3, 4}})), "tensor([[1, 2],\n        [3, 4]])");
  EXPECT_EQ(str(tensor({-1, 10})), "tensor([-1, 10])");
  EXPECT_EQ(str(tensor({{1.5, 2.0}, {3.0, 4.0}})), "tensor([[1.5000, 2.0000],\n        [3.0000, 4.0000]])");
  EXPECT_EQ(str(tensor({true, false})), "tensor([ True, False])");
  EXPECT_EQ(str(scalar_tensor(3.5, kFloat32)), "tensor(3.5000)");
  EXPECT_EQ(str(scalar_tensor(7, kInt64)), "tensor(7)");
  std::string d = str(tensor({0.5, 1.25}, kFloat64));
  EXPECT_EQ(d.rfind("tensor([0.5000, 1.2500], dtype=", 0), 0u) << d;
  EXPECT_NE(d.find("float64"), std::string::npos) << d;
  std::string i32 = str(tensor({1, 2}).to(kInt32));
  EXPECT_EQ(i32.rfind("tensor([1, 2], dtype=", 0), 0u) << i32;
  EXPECT_NE(i32.find("int32"), std::string::npos) << i32;
  std::string rg = str(ones({2}, TensorOptions().requires_grad(true)));
  EXPECT_EQ(rg, "tensor([1., 1.], requires_grad=True)");
  // Non-contiguous tensors print their logical values.
  EXPECT_EQ(str(tensor({{1, 2}, {3, 4}}).t()), "tensor([[1, 3],\n        [2, 4]])");
}

TEST(Misc, EqualAndAllclose) {
  Tensor a = tensor({1.0, 2.0});
  EXPECT_TRUE(equal(a, tensor({1.0, 2.0})));
  EXPECT_FALSE(equal(a, tensor({1.0, 2.5})));
  EXPECT_FALSE(equal(a, tensor({1.0, 2.0, 3.0})));
  EXPECT_TRUE(allclose(a, a + 1e-7));
  EXPECT_FALSE(allclose(a, a + 1e-3));
  EXPECT_TRUE(a.allclose(a + 1e-3, 1e-2));
  Tensor nan = tensor({std::nan("")});
  EXPECT_FALSE(allclose(nan, nan));
  EXPECT_TRUE(allclose(nan, nan, 1e-5, 1e-8, true));
  EXPECT_EQ(vals(isnan(tensor({1.0, std::nan("")}))), (V{0, 1}));
  EXPECT_EQ(vals(logical_and(tensor({true, true, false}), tensor({true, false, false}))), (V{1, 0, 0}));
  EXPECT_EQ(vals(logical_or(tensor({true, false, false}), tensor({false, false, true}))), (V{1, 0, 1}));
  EXPECT_EQ(vals(logical_not(tensor({true, false}))), (V{0, 1}));
}

// Tensors with a zero-size dim follow PyTorch: reductions give the identity,
// shapes propagate, nothing reads memory that is not there.
TEST(EmptyTensors, ShapesAndReductions) {
  Tensor e = zeros({0, 3});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(sum(e).item<double>(), 0);
  EXPECT_EQ(prod(e).item<double>(), 1);
  EXPECT_EQ(sum(e, {0}).sizes(), (std::vector<int64_t>{3}));
  EXPECT_EQ(vals(sum(e, {0})), V(3, 0.0));
  EXPECT_EQ(sum(e, {1}).sizes(), (std::vector<int64_t>{0}));
  EXPECT_EQ((e + ones({3})).sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(exp(e).sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(vals(matmul(zeros({2, 0}), zeros({0, 3}))), V(6, 0.0));
  EXPECT_EQ(cat({e, ones({2, 3})}, 0).sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(e.t().contiguous().sizes(), (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(softmax(e, 1).sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(cumsum(e, 0).sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(ones({3}).narrow(0, 1, 0).numel(), 0);
  EXPECT_EQ(arange(0).numel(), 0);
  EXPECT_EQ(str(zeros({0})), "tensor([])");
  EXPECT_THROW(e.max(), Error);  // no identity for max
  Tensor x = ones({0, 2}, TensorOptions().dtype(kFloat64).requires_grad(true));
  (x * 2).sum().backward();
  EXPECT_EQ(x.grad().sizes(), (std::vector<int64_t>{0, 2}));
}

TEST(Devices, CpuOnlyBuild) {
  Tensor x = zeros({2});
  EXPECT_TRUE(x.device().is_cpu());
  EXPECT_EQ(x.device(), Device::cpu());
  EXPECT_EQ(Device::cuda(1).str(), "cuda:1");
  EXPECT_TRUE(x.to(Device::cpu()).is_same(x) || x.to(Device::cpu()).raw_data_ptr() == x.raw_data_ptr());
}

}  // namespace
