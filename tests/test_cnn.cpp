// Convolution modules (nn::Conv1d, Conv2d, ConvTranspose2d) and the models
// built from them (loom::models::cnn, resnet9): shapes, PyTorch's parameter
// names and initialization, parameter counts, and training through them.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace loom;
using Shape = std::vector<int64_t>;

std::string repr(const nn::Module& m) {
  std::ostringstream s;
  s << m;
  return s.str();
}

TEST(ConvModules, Conv2dShapesNamesAndInit) {
  manual_seed(0);
  nn::Conv2d conv(6, 8, 3, {.stride = {2}, .padding = {1}, .groups = 2});
  EXPECT_EQ(conv->weight.sizes(), (Shape{8, 3, 3, 3}));
  EXPECT_EQ(conv->bias.sizes(), (Shape{8}));
  nn::StateDict sd = conv->state_dict();
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_EQ(sd[0].first, "weight");
  EXPECT_EQ(sd[1].first, "bias");
  // kaiming_uniform_(a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 3 * 3 * 3.
  const double bound = 1 / std::sqrt(27.0);
  EXPECT_LE(conv->weight.abs().max().item<double>(), bound);
  EXPECT_GT(conv->weight.abs().max().item<double>(), 0.8 * bound);
  EXPECT_LE(conv->bias.abs().max().item<double>(), bound);
  EXPECT_EQ(conv(randn({4, 6, 9, 10})).sizes(), (Shape{4, 8, 5, 5}));
  EXPECT_EQ(conv(randn({6, 9, 10})).sizes(), (Shape{8, 5, 5}));  // unbatched
  EXPECT_EQ(repr(*conv), "Conv2d(6, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=2)");

  nn::Conv2d same(2, 3, std::vector<int64_t>{2, 3}, {.padding_mode = "same", .dilation = {2}, .bias = false});
  EXPECT_FALSE(same->bias.defined());
  EXPECT_EQ(same(randn({1, 2, 7, 6})).sizes(), (Shape{1, 3, 7, 6}));
  EXPECT_EQ(repr(*same), "Conv2d(2, 3, kernel_size=(2, 3), stride=(1, 1), padding=same, dilation=(2, 2), bias=False)");
  EXPECT_THROW(nn::Conv2d(3, 4, 3, {.groups = 2}), Error);
  EXPECT_THROW(nn::Conv2d(3, 4, 3, {.padding_mode = "full"}), Error);
  nn::Conv2d strided_same(2, 2, 3, {.stride = {2}, .padding_mode = "same"});
  EXPECT_THROW(strided_same(randn({1, 2, 5, 5})), Error);
}

TEST(ConvModules, Conv1dAndConvTranspose2d) {
  manual_seed(1);
  nn::Conv1d c1(4, 6, 5, {.stride = {2}, .padding = {2}});
  EXPECT_EQ(c1->weight.sizes(), (Shape{6, 4, 5}));
  EXPECT_EQ(c1(randn({3, 4, 11})).sizes(), (Shape{3, 6, 6}));
  EXPECT_EQ(repr(*c1), "Conv1d(4, 6, kernel_size=(5,), stride=(2,), padding=(2,))");
  // Matches the functional form with the module's weights.
  Tensor x = randn({2, 4, 9});
  EXPECT_TRUE(allclose(c1(x), conv1d(x, c1->weight, c1->bias, {2}, {2})));

  nn::ConvTranspose2d up(8, 4, 4, {.stride = {2}, .padding = {1}, .bias = false});
  EXPECT_EQ(up->weight.sizes(), (Shape{8, 4, 4, 4}));
  EXPECT_EQ(up(randn({2, 8, 7, 7})).sizes(), (Shape{2, 4, 14, 14}));
  nn::ConvTranspose2d up_op(3, 6, 3, {.stride = {2}, .output_padding = {1}, .groups = 3});
  EXPECT_EQ(up_op->weight.sizes(), (Shape{3, 2, 3, 3}));
  EXPECT_EQ(up_op(randn({1, 3, 5, 5})).sizes(), (Shape{1, 6, 12, 12}));
  EXPECT_EQ(repr(*up_op),
            "ConvTranspose2d(3, 6, kernel_size=(3, 3), stride=(2, 2), output_padding=(1, 1), groups=3)");
  // PyTorch's fan_in for the transposed weight (in, out / groups, k, k) is out / groups * k * k.
  const double bound = 1 / std::sqrt(2.0 * 9.0);
  EXPECT_LE(up_op->weight.abs().max().item<double>(), bound);
  EXPECT_LE(up_op->bias.abs().max().item<double>(), bound);
}

// The transposed convolution undoes the shape of the convolution it mirrors,
// and its gradient with respect to its input is that convolution.
TEST(ConvModules, TransposeIsTheAdjointOfConv) {
  manual_seed(2);
  Tensor w = randn({5, 3, 3, 3}, TensorOptions().dtype(kFloat64));
  Tensor x = randn({2, 3, 8, 7}, TensorOptions().dtype(kFloat64));
  Tensor g = randn({2, 5, 4, 4}, TensorOptions().dtype(kFloat64));
  // <conv(x, w), g> = <x, conv_transpose(g, w)>
  Tensor y = conv2d(x, w, {}, {2}, {1});
  ASSERT_EQ(y.sizes(), g.sizes());
  Tensor xt = conv_transpose2d(g, w, {}, {2}, {1}, {1, 0});
  ASSERT_EQ(xt.sizes(), x.sizes());
  EXPECT_NEAR((y * g).sum().item<double>(), (x * xt).sum().item<double>(), 1e-9);
}

TEST(Models, Resnet9HasNeedlesParameterCount) {
  manual_seed(0);
  nn::Sequential net = models::resnet9(3, 10);
  EXPECT_EQ(net->num_parameters(), 431946);
  EXPECT_EQ(net(randn({2, 3, 32, 32})).sizes(), (Shape{2, 10}));
  EXPECT_EQ(models::resnet9(1, 10)(randn({2, 1, 28, 28})).sizes(), (Shape{2, 10}));
  // PyTorch names: the residual body is child "fn" of the Residual at position 2.
  nn::StateDict sd = net->state_dict();
  bool found = false;
  for (const auto& [name, t] : sd)
    if (name == "2.fn.0.0.weight") {
      found = true;
      EXPECT_EQ(t.sizes(), (Shape{32, 32, 3, 3}));
    }
  EXPECT_TRUE(found);
}

TEST(Models, SmallCnnLayout) {
  manual_seed(0);
  nn::Sequential net = models::cnn(1, 10);
  // conv 32*9+32, bn 2*32, conv 64*32*9+64, bn 2*64, fc 3136*128+128, fc 128*10+10
  EXPECT_EQ(net->num_parameters(), 320 + 64 + 18496 + 128 + 401536 + 1290);
  nn::StateDict sd = net->state_dict();
  std::vector<std::pair<std::string, Shape>> some = {{"0.weight", {32, 1, 3, 3}},     {"1.running_mean", {32}},
                                                     {"4.weight", {64, 32, 3, 3}},    {"9.weight", {128, 3136}},
                                                     {"11.weight", {10, 128}}};
  for (const auto& [name, shape] : some) {
    bool found = false;
    for (const auto& [n, t] : sd)
      if (n == name) {
        found = true;
        EXPECT_EQ(t.sizes(), shape) << name;
      }
    EXPECT_TRUE(found) << name;
  }
  EXPECT_EQ(net(randn({3, 1, 28, 28})).sizes(), (Shape{3, 10}));
}

// A few AdamW steps on a fixed batch drive the loss of the CNN down: the
// whole backward chain (conv, batch norm, pooling, linear) carries gradient.
TEST(Models, CnnFitsAFixedBatch) {
  manual_seed(3);
  nn::Sequential net = models::cnn(1, 10);
  Tensor x = randn({16, 1, 28, 28});
  Tensor y = randint(0, 10, {16});
  optim::AdamW opt(net->parameters(), optim::AdamWOptions(3e-3));
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    Tensor loss = nn::functional::cross_entropy(net(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.1 * first);
  for (const Tensor& p : net->parameters()) EXPECT_TRUE(p.grad().defined());
}

}  // namespace
