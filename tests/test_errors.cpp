// User mistakes throw loom::Error (never abort), and the message names the op
// and the shapes / dtypes / devices involved.
#include <gtest/gtest.h>
#include <loom/cuda.h>
#include <loom/loom.h>

#include <functional>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;

using loom::test::throws_with;

TEST(Errors, ErrorIsARuntimeError) {
  try {
    add(zeros({2}), zeros({3}));
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(dynamic_cast<const Error*>(&e), nullptr);
  }
}

TEST(Errors, ShapeMismatch) {
  EXPECT_TRUE(throws_with([] { add(zeros({2, 3}), zeros({4})); }, {"add", "[2, 3]", "[4]"}));
  EXPECT_TRUE(throws_with([] { zeros({2, 3}) * zeros({3, 2}); }, {"mul", "[2, 3]", "[3, 2]"}));
  EXPECT_TRUE(throws_with([] { where(zeros({2}, kBool), zeros({3}), zeros({2})); }, {"where", "[3]"}));
  EXPECT_TRUE(throws_with([] { matmul(zeros({2, 3}), zeros({4, 5})); }, {"matmul", "[2, 3]", "[4, 5]"}));
  EXPECT_TRUE(throws_with([] { matmul(zeros({2, 3, 4}), zeros({2, 5, 6})); }, {"matmul", "[2, 3, 4]", "[2, 5, 6]"}));
  EXPECT_TRUE(throws_with([] { matmul(zeros({3}), zeros({4})); }, {"matmul", "[3]", "[4]"}));
  EXPECT_TRUE(throws_with([] { matmul(zeros({2, 2, 3}), zeros({3, 3, 4})); }, {"matmul", "[2, 2, 3]", "[3, 3, 4]"}));
  EXPECT_TRUE(throws_with([] { mm(zeros({2, 3}), zeros({3})); }, {"mm", "[3]"}));
  EXPECT_TRUE(throws_with([] { bmm(zeros({2, 3}), zeros({3, 2})); }, {"bmm", "[2, 3]"}));
  EXPECT_TRUE(throws_with([] { cat({zeros({2, 3}), zeros({2, 4})}, 0); }, {"cat", "[2, 3]", "[2, 4]"}));
  EXPECT_TRUE(throws_with([] { stack({zeros({2, 3}), zeros({3, 2})}); }, {"stack", "[2, 3]", "[3, 2]"}));
  EXPECT_TRUE(throws_with([] { zeros({2, 3}).expand({4, 3}); }, {"expand", "[2, 3]", "[4, 3]"}));
  EXPECT_TRUE(throws_with([] { zeros({3, 4}).copy_(zeros({3})); }, {"copy_", "[3]", "[3, 4]"}));
  EXPECT_TRUE(throws_with([] { zeros({3}).add_(zeros({2, 3})); }, {"add_", "[3]", "[2, 3]"}));
  EXPECT_TRUE(throws_with([] { masked_fill(zeros({3}), zeros({4}, kBool), 1); }, {"masked_fill", "[3]", "[4]"}));
  EXPECT_TRUE(throws_with([] { gather(zeros({3, 4}), 1, zeros({3}, kInt64)); }, {"gather"}));
  EXPECT_TRUE(throws_with([] { scatter_add(zeros({3, 4}), 1, zeros({3, 2}, kInt64), zeros({2, 2})); },
                          {"scatter_add"}));
  EXPECT_TRUE(throws_with([] { broadcast_tensors({zeros({2}), zeros({3})}); }, {"[2]", "[3]"}));
}

TEST(Errors, BadDim) {
  Tensor x = zeros({2, 3});
  EXPECT_TRUE(throws_with([&] { sum(x, {2}); }, {"sum", "dim"}));
  EXPECT_TRUE(throws_with([&] { x.mean({-3}); }, {"mean", "dim"}));
  EXPECT_TRUE(throws_with([&] { softmax(x, 5); }, {"softmax", "dim"}));
  EXPECT_TRUE(throws_with([&] { log_softmax(x, -3); }, {"log_softmax", "dim"}));
  EXPECT_TRUE(throws_with([&] { x.transpose(0, 3); }, {"transpose", "dim"}));
  EXPECT_TRUE(throws_with([&] { x.unsqueeze(4); }, {"unsqueeze", "dim"}));
  EXPECT_TRUE(throws_with([&] { x.select(2, 0); }, {"select", "dim"}));
  EXPECT_TRUE(throws_with([&] { cat({x, x}, 2); }, {"cat", "dim"}));
  EXPECT_TRUE(throws_with([&] { cumsum(x, 2); }, {"cumsum", "dim"}));
  EXPECT_TRUE(throws_with([&] { x.argmax(3); }, {"argmax", "dim"}));
  EXPECT_TRUE(throws_with([&] { x.permute({0, 0}); }, {"permute"}));
  EXPECT_TRUE(throws_with([&] { x.permute({0}); }, {"permute"}));
  EXPECT_TRUE(throws_with([&] { x.flip({5}); }, {"flip", "dim"}));
  EXPECT_TRUE(throws_with([&] { x.max(2); }, {"max", "dim"}));
  EXPECT_TRUE(throws_with([&] { zeros({2, 3, 4}).t(); }, {"t", "[2, 3, 4]"}));
}

TEST(Errors, DtypeMismatch) {
  EXPECT_TRUE(throws_with([] { matmul(zeros({2, 3}, kFloat32), zeros({3, 2}, kFloat64)); },
                          {"matmul", "float32", "float64"}));
  EXPECT_TRUE(throws_with([] { mm(zeros({2, 3}, kFloat32), zeros({3, 2}, kFloat64)); }, {"mm", "float32", "float64"}));
  EXPECT_TRUE(throws_with([] { gather(zeros({3}), 0, zeros({3}, kFloat32)); }, {"gather", "float32"}));
  EXPECT_TRUE(throws_with([] { index_select(zeros({3}), 0, zeros({2}, kFloat32)); }, {"index_select", "float32"}));
  EXPECT_TRUE(throws_with([] { embedding(zeros({4, 2}), zeros({2}, kFloat32)); }, {"embedding", "float32"}));
  EXPECT_TRUE(throws_with([] { where(zeros({2}, kFloat32), zeros({2}), zeros({2})); }, {"where", "bool"}));
  EXPECT_TRUE(throws_with([] { masked_fill(zeros({2}), zeros({2}, kInt64), 1); }, {"masked_fill", "int64"}));
  // An in-place result that cannot be cast back to the tensor's dtype.
  EXPECT_TRUE(throws_with([] { zeros({2}, kInt64).add_(zeros({2}, kFloat32)); }, {"add_", "float32", "int64"}));
  EXPECT_TRUE(throws_with([] { zeros({2}, kInt32).mul_(1.5); }, {"mul_", "int32"}));
  EXPECT_TRUE(throws_with([] { zeros({2}, kInt64).uniform_(); }, {"uniform_", "int64"}));
  EXPECT_TRUE(throws_with([] { zeros({2}).data_ptr<int64_t>(); }, {"float32", "int64"}));
}

TEST(Errors, DevicesWithoutCuda) {
  if (cuda_is_available()) GTEST_SKIP() << "this build has a GPU";
  // A CPU-only build says so; a CUDA build on a machine without a GPU says that.
  const std::string msg = cuda::is_built() ? "no CUDA device is available" : "loom was built without CUDA support";
  EXPECT_TRUE(throws_with([] { zeros({2}, Device::cuda()); }, {msg}));
  EXPECT_TRUE(throws_with([] { zeros({2}).to(Device::cuda()); }, {msg, "cuda:0"}));
  EXPECT_TRUE(throws_with([] { zeros({2}).cuda(); }, {msg}));
  EXPECT_TRUE(throws_with([] { ones({2}, TensorOptions().device(Device::cuda(1))); }, {msg, "cuda:1"}));
  EXPECT_TRUE(throws_with([] { randn({2}, Device::cuda()); }, {msg}));
}

TEST(Errors, BackwardOfNonScalarWithoutGradient) {
  Tensor x = ones({3}, TensorOptions().dtype(kFloat64).requires_grad(true));
  Tensor y = x * 2;
  EXPECT_TRUE(throws_with([&] { y.backward(); }, {"backward", "scalar", "[3]"}));
  EXPECT_TRUE(throws_with([&] { y.backward(ones({2}, kFloat64)); }, {"backward", "[2]", "[3]"}));
  EXPECT_TRUE(throws_with([] { zeros({}).backward(); }, {"backward", "require"}));
}

TEST(Errors, IndexOutOfRange) {
  Tensor x = zeros({3, 4});
  EXPECT_TRUE(throws_with([&] { x.select(0, 3); }, {"select", "3"}));
  EXPECT_TRUE(throws_with([&] { x.select(1, -5); }, {"select", "-5"}));
  EXPECT_TRUE(throws_with([&] { x[7]; }, {"select", "7"}));
  EXPECT_TRUE(throws_with([&] { x.index({5}); }, {"index", "5"}));
  EXPECT_TRUE(throws_with([&] { x.index({0, 0, 0}); }, {"index"}));  // too many indices
  EXPECT_TRUE(throws_with([&] { x.narrow(1, 2, 3); }, {"narrow"}));
  EXPECT_TRUE(throws_with([&] { index_select(x, 0, tensor({0, 3})); }, {"index_select", "3"}));
  EXPECT_TRUE(throws_with([&] { index_select(x, 1, tensor({-1})); }, {"index_select", "-1"}));
  EXPECT_TRUE(throws_with([&] { gather(x, 1, tensor({{0}, {4}, {1}})); }, {"gather", "4"}));
  EXPECT_TRUE(throws_with([&] { scatter_add(x, 0, tensor({{3, 0, 0, 0}}), ones({1, 4})); }, {"scatter_add", "3"}));
  EXPECT_TRUE(throws_with([&] { embedding(zeros({4, 2}), tensor({1, 4})); }, {"embedding", "4"}));
  EXPECT_TRUE(throws_with([&] { one_hot(tensor({0, 5}), 3); }, {"one_hot"}));
  EXPECT_TRUE(throws_with([&] { x.index({tensor({0, 9})}); }, {"index", "9"}));
  EXPECT_TRUE(throws_with([&] { x.item(); }, {"item"}));
}

TEST(Errors, RequiresGradOnIntegerTensor) {
  EXPECT_TRUE(throws_with([] { zeros({2}, kInt64).requires_grad_(); }, {"requires_grad", "int64"}));
  EXPECT_TRUE(throws_with([] { zeros({2}, kBool).requires_grad_(true); }, {"requires_grad", "bool"}));
  EXPECT_TRUE(throws_with([] { zeros({2}, TensorOptions().dtype(kInt32).requires_grad(true)); },
                          {"requires_grad", "int32"}));
  EXPECT_NO_THROW(zeros({2}, kInt64).requires_grad_(false));
}

TEST(Errors, ViewOfIncompatibleSize) {
  Tensor x = zeros({2, 3});
  // As PyTorch: the op, the requested shape and the input's size.
  EXPECT_TRUE(throws_with([&] { x.view({5}); }, {"view", "[5]", "6"}));
  EXPECT_TRUE(throws_with([&] { x.view({-1, 4}); }, {"view", "[-1, 4]", "6"}));
  EXPECT_TRUE(throws_with([&] { x.view({-1, -1}); }, {"view"}));
  EXPECT_TRUE(throws_with([&] { x.reshape({4}); }, {"reshape", "[4]", "6"}));
  // Strides that no view can express: the message points at reshape.
  EXPECT_TRUE(throws_with([&] { x.t().view({6}); }, {"view", "reshape"}));
  EXPECT_TRUE(throws_with([&] { x.unflatten(1, {2, 2}); }, {"unflatten"}));
  EXPECT_TRUE(throws_with([&] { x.squeeze(0).view({7}); }, {"view"}));
}

TEST(Errors, OtherMistakes) {
  EXPECT_TRUE(throws_with([] { tensor({{1, 2}, {3}}); }, {"tensor"}));
  EXPECT_TRUE(throws_with([] { zeros({-1}); }, {"negative"}));
  EXPECT_TRUE(throws_with([] { arange(0, 5, 0); }, {"arange", "step"}));
  EXPECT_TRUE(throws_with([] { randint(5, 5, {2}); }, {"randint"}));
  EXPECT_TRUE(throws_with([] { chunk(zeros({4}), 0); }, {"chunk"}));
  EXPECT_TRUE(throws_with([] { split(zeros({4}), std::vector<int64_t>{1, 2}); }, {"split"}));
  EXPECT_TRUE(throws_with([] { pad(zeros({2}), {1, 1, 1, 1}); }, {"pad"}));
  EXPECT_TRUE(throws_with([] { cat({}, 0); }, {"cat"}));
  EXPECT_TRUE(throws_with([] { set_num_threads(0); }, {"set_num_threads"}));
  EXPECT_TRUE(throws_with([] { gelu(zeros({2}), "fast"); }, {"gelu", "fast"}));
  EXPECT_TRUE(throws_with([] { Tensor x = zeros({2}); x.backward(); }, {"backward"}));
}

TEST(Errors, UndefinedTensorsDoNotCrash) {
  Tensor u;
  EXPECT_FALSE(u.defined());
  EXPECT_THROW(u.sizes(), Error);
  EXPECT_THROW(u.dim(), Error);
  EXPECT_THROW(add(u, zeros({2})), Error);
  EXPECT_THROW(zeros({2}).copy_(u), Error);
}

}  // namespace
