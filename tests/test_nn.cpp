// nn: module registration and naming, train/eval, state_dict round trips and
// strict-load errors, printing like PyTorch, every layer and loss against
// values computed by hand or by PyTorch's formulas in plain double loops,
// float64 central-difference gradchecks, and initializer statistics.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <functional>
#include <memory>
#include <sstream>
#include <tuple>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;
using namespace loom::test;
namespace F = loom::nn::functional;
using V = std::vector<double>;

V vals(const Tensor& t) { return t.to_vector<double>(); }

Tensor f64(const V& v, IntArrayRef shape) { return tensor(v, kFloat64).reshape(shape); }
Tensor i64(const std::vector<int64_t>& v, IntArrayRef shape) { return tensor(v, kInt64).reshape(shape); }

void expect_near(const V& got, const V& want, double tol = 1e-12) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol * (1 + std::abs(want[i]))) << "at " << i;
}

Tensor leaf64(IntArrayRef shape, double lo = -1, double hi = 1) {
  return (rand(shape, kFloat64) * (hi - lo) + lo).requires_grad_(true);
}

// A small model with nested names, a BatchNorm (buffers) and no bias in fc2.
struct NetImpl : nn::Module {
  NetImpl() : nn::Module("Net") {
    fc1 = register_module("fc1", nn::Linear(4, 3));
    bn = register_module("bn", nn::BatchNorm1d(3));
    fc2 = register_module("fc2", nn::Linear(3, 2, false));
  }
  Tensor forward(const Tensor& x) override { return fc2(F::relu(bn(fc1(x)))); }
  nn::Linear fc1{nullptr};
  nn::BatchNorm1d bn{nullptr};
  nn::Linear fc2{nullptr};
};
LOOM_MODULE(Net);

// ---------------------------------------------------------------- registration

TEST(Registration, LinearParametersAndShapes) {
  nn::Linear fc(4, 3);
  auto np = fc->named_parameters();
  ASSERT_EQ(names(np), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(fc->weight.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(fc->bias.sizes(), (std::vector<int64_t>{3}));
  EXPECT_TRUE(np[0].second.is_same(fc->weight));
  EXPECT_TRUE(np[1].second.is_same(fc->bias));
  EXPECT_TRUE(fc->weight.requires_grad());
  EXPECT_TRUE(fc->weight.is_leaf());
  EXPECT_EQ(fc->num_parameters(), 15);

  nn::Linear nob(4, 3, false);
  EXPECT_EQ(names(nob->named_parameters()), (std::vector<std::string>{"weight"}));
  EXPECT_FALSE(nob->bias.defined());
}

TEST(Registration, SequentialNamesChildrenAndOrder) {
  nn::Sequential seq(nn::Linear(4, 3), nn::ReLU(), nn::Linear(3, 2));
  EXPECT_EQ(seq->size(), 3u);
  EXPECT_EQ(names(seq->named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
  auto kids = seq->named_children();
  ASSERT_EQ(kids.size(), 3u);
  EXPECT_EQ(kids[0].first, "0");
  EXPECT_EQ(kids[1].first, "1");
  EXPECT_EQ(kids[2].first, "2");
  EXPECT_EQ(kids[1].second->type_name(), "ReLU");
  EXPECT_TRUE(seq->children()[2] == (*seq)[2]);
  EXPECT_TRUE(seq->ptr<nn::LinearImpl>(2)->weight.is_same(seq->parameters()[2]));
  EXPECT_EQ(seq->at<nn::LinearImpl>(-1).out_features, 2);

  // Shared pointers work as children too, and push_back appends "3".
  auto tail = std::make_shared<nn::SigmoidImpl>();
  seq->push_back(tail);
  EXPECT_EQ(seq->named_children()[3].first, "3");
  EXPECT_TRUE((*seq)[3] == tail);

  // Nested containers give dotted paths.
  nn::Sequential outer(nn::Sequential(nn::Linear(2, 2)), nn::Linear(2, 1));
  EXPECT_EQ(names(outer->named_parameters()),
            (std::vector<std::string>{"0.0.weight", "0.0.bias", "1.weight", "1.bias"}));
  auto mods = outer->named_modules();
  ASSERT_EQ(mods.size(), 4u);
  EXPECT_EQ(mods[1].first, "0");
  EXPECT_EQ(mods[2].first, "0.0");
  EXPECT_EQ(mods[3].first, "1");
}

TEST(Registration, SequentialNamedChildren) {
  nn::Sequential seq({{"fc", nn::Linear(3, 2)}, {"act", nn::Tanh()}});
  EXPECT_EQ(names(seq->named_parameters()), (std::vector<std::string>{"fc.weight", "fc.bias"}));
  Tensor x = randn({5, 3});
  auto fc = seq->ptr<nn::LinearImpl>(0);
  EXPECT_TRUE(seq(x).allclose(tanh(x.matmul(fc->weight.t()) + fc->bias)));
}

TEST(Registration, CustomModuleNamesBuffersAndStateDictOrder) {
  Net net;
  EXPECT_EQ(names(net->named_parameters()),
            (std::vector<std::string>{"fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "fc2.weight"}));
  EXPECT_EQ(names(net->named_buffers()),
            (std::vector<std::string>{"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}));
  // PyTorch's order: module by module, parameters then buffers.
  EXPECT_EQ(names(net->state_dict()),
            (std::vector<std::string>{"fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                      "bn.running_var", "bn.num_batches_tracked", "fc2.weight"}));
  EXPECT_EQ(net->parameters().size(), 5u);
  EXPECT_EQ(net->buffers().size(), 3u);
  EXPECT_FALSE(net->bn->running_mean.requires_grad());
  EXPECT_EQ(net->bn->num_batches_tracked.dtype(), kInt64);
  EXPECT_EQ(net->bn->num_batches_tracked.dim(), 0);
  auto kids = net->named_children();
  ASSERT_EQ(kids.size(), 3u);
  EXPECT_EQ(kids[1].first, "bn");
  EXPECT_TRUE(kids[1].second == net->bn.ptr());
  EXPECT_EQ(net->num_parameters(), (12 + 3) + (3 + 3) + 6);
}

TEST(Registration, ModuleList) {
  nn::ModuleList list(nn::Linear(2, 2), nn::ReLU());
  list->push_back(nn::Linear(2, 1));
  EXPECT_EQ(list->size(), 3u);
  EXPECT_EQ(names(list->named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
  std::vector<std::string> types;
  for (const auto& m : *list) types.push_back(m->type_name());
  EXPECT_EQ(types, (std::vector<std::string>{"Linear", "ReLU", "Linear"}));
  EXPECT_EQ(list->at(1)->type_name(), "ReLU");
  EXPECT_EQ((*list)[-1]->type_name(), "Linear");
  EXPECT_EQ(list->ptr<nn::LinearImpl>(2)->in_features, 2);
  EXPECT_ERROR_HAS(list->at(3), "ModuleList: index 3 is out of range for a ModuleList of size 3");
  EXPECT_ERROR_HAS(list->ptr<nn::LinearImpl>(1), "ModuleList: the module at 1 is a ReLU, not the requested type");
  EXPECT_ERROR_HAS(list(randn({2})), "ModuleList: this module has no single-tensor forward()");

  nn::ModuleList more;
  more->extend(*list);
  EXPECT_EQ(more->size(), 3u);
  EXPECT_TRUE((*more)[0] == (*list)[0]);
}

TEST(Registration, ModuleDict) {
  nn::ModuleDict dict({{"encoder", nn::Linear(4, 2)}, {"act", nn::GELU()}});
  dict->insert("head", nn::Linear(2, 1));
  EXPECT_EQ(dict->keys(), (std::vector<std::string>{"encoder", "act", "head"}));
  EXPECT_TRUE(dict->contains("head"));
  EXPECT_FALSE(dict->contains("decoder"));
  EXPECT_EQ(names(dict->named_parameters()),
            (std::vector<std::string>{"encoder.weight", "encoder.bias", "head.weight", "head.bias"}));
  EXPECT_EQ(dict->at<nn::LinearImpl>("encoder").in_features, 4);
  EXPECT_ERROR_HAS(dict->at("decoder"), "ModuleDict: no module named \"decoder\" (keys: \"encoder\", \"act\", \"head\")");
  // Inserting an existing key replaces the module in place (PyTorch's dict[key] = m).
  dict->insert("act", nn::ReLU());
  EXPECT_EQ(dict->keys(), (std::vector<std::string>{"encoder", "act", "head"}));
  EXPECT_EQ((*dict)["act"]->type_name(), "ReLU");
  EXPECT_EQ(dict->named_children()[1].second->type_name(), "ReLU");
  int n = 0;
  for (const auto& [k, m] : *dict) n += k.size() > 0 && m != nullptr;
  EXPECT_EQ(n, 3);
}

TEST(Registration, EmptyHolderIsAnError) {
  nn::Linear empty_fc{nullptr};
  EXPECT_ERROR_HAS(nn::Sequential seq(empty_fc), "Sequential: cannot add an empty module holder");
}

// ---------------------------------------------------------------- train / eval

TEST(TrainEval, PropagatesToEveryDescendant) {
  nn::Sequential seq(nn::Linear(3, 3), nn::Sequential(nn::Dropout(0.5), nn::BatchNorm1d(3)));
  for (auto& m : seq->modules()) EXPECT_TRUE(m->is_training());
  seq->eval();
  for (auto& m : seq->modules()) EXPECT_FALSE(m->is_training()) << m->type_name();
  seq->train();
  for (auto& m : seq->modules()) EXPECT_TRUE(m->is_training()) << m->type_name();
}

TEST(Dropout, TrainingZeroesAndScalesEvalIsIdentity) {
  manual_seed(1);
  nn::Dropout drop(0.25);
  Tensor x = ones({100000}, kFloat64);
  Tensor y = drop(x);
  const V v = vals(y);
  int64_t zeros = 0;
  for (double e : v) {
    if (e == 0) ++zeros;
    else EXPECT_NEAR(e, 1.0 / 0.75, 1e-15);
  }
  // Binomial(1e5, 0.25): standard deviation ~137, so 0.25 +- 0.006 is > 4 sigma.
  EXPECT_NEAR(static_cast<double>(zeros) / 1e5, 0.25, 0.006);

  // The same seed gives the same mask.
  manual_seed(1);
  EXPECT_TRUE(drop(x).equal(y));

  drop->eval();
  Tensor z = randn({7, 3});
  EXPECT_TRUE(drop(z).equal(z));
  EXPECT_TRUE(F::dropout(z, 0.5, false).equal(z));

  // The gradient is the mask, scaled.
  drop->train();
  Tensor leaf = ones({1000}, kFloat64).requires_grad_(true);
  Tensor out = drop(leaf);
  out.sum().backward();
  EXPECT_TRUE(leaf.grad().equal(out.detach()));

  EXPECT_TRUE(F::dropout(z, 0.0, true).equal(z));
  EXPECT_EQ(F::dropout(z, 1.0, true).abs().sum().item<double>(), 0.0);
  EXPECT_ERROR_HAS(nn::Dropout(1.5), "Dropout: probability has to be between 0 and 1, but got 1.5");
  EXPECT_ERROR_HAS(F::dropout(z, -0.1), "dropout: probability has to be between 0 and 1");
}

// ---------------------------------------------------------------- BatchNorm1d

TEST(BatchNorm1d, TrainingUsesBatchStatsAndUpdatesRunningStats) {
  nn::BatchNorm1d bn(2);
  bn->to(kFloat64);
  {
    NoGradGuard ng;
    bn->weight.copy_(f64({2.0, 0.5}, {2}));
    bn->bias.copy_(f64({1.0, -1.0}, {2}));
  }
  // Channel 0: 1, 2, 3, 6 (mean 3, biased var 3.5, unbiased 14/3);
  // channel 1: 0, 0, 4, 4 (mean 2, biased var 4, unbiased 16/3).
  Tensor x = f64({1, 0, 2, 0, 3, 4, 6, 4}, {4, 2});
  Tensor y = bn(x);
  V want;
  const V c0{1, 2, 3, 6}, c1{0, 0, 4, 4};
  for (int i = 0; i < 4; ++i) {
    want.push_back((c0[i] - 3) / std::sqrt(3.5 + 1e-5) * 2.0 + 1.0);
    want.push_back((c1[i] - 2) / std::sqrt(4.0 + 1e-5) * 0.5 - 1.0);
  }
  expect_near(vals(y), want);
  expect_near(vals(bn->running_mean), {0.1 * 3, 0.1 * 2});
  expect_near(vals(bn->running_var), {0.9 + 0.1 * 14.0 / 3.0, 0.9 + 0.1 * 16.0 / 3.0});
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 1);

  // A second batch: exponential moving average with momentum 0.1.
  Tensor x2 = f64({0, 1, 0, 1, 0, 1, 4, 5}, {4, 2});  // means 1, 2; unbiased vars 4, 4
  bn(x2);
  expect_near(vals(bn->running_mean), {0.9 * 0.3 + 0.1 * 1, 0.9 * 0.2 + 0.1 * 2});
  const double rv0 = 0.9 + 0.1 * 14.0 / 3.0, rv1 = 0.9 + 0.1 * 16.0 / 3.0;
  expect_near(vals(bn->running_var), {0.9 * rv0 + 0.1 * 4, 0.9 * rv1 + 0.1 * 4});
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 2);

  // Eval normalizes with the running statistics and leaves them alone.
  bn->eval();
  const V rm = vals(bn->running_mean), rv = vals(bn->running_var);
  Tensor y3 = bn(x);
  V want3;
  for (int i = 0; i < 4; ++i) {
    want3.push_back((c0[i] - rm[0]) / std::sqrt(rv[0] + 1e-5) * 2.0 + 1.0);
    want3.push_back((c1[i] - rm[1]) / std::sqrt(rv[1] + 1e-5) * 0.5 - 1.0);
  }
  expect_near(vals(y3), want3);
  expect_near(vals(bn->running_mean), rm);
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 2);
}

TEST(BatchNorm1d, ThreeDimInputReducesOverBatchAndLength) {
  nn::BatchNorm1d bn(3, 1e-5, 0.5);
  bn->to(kFloat64);
  manual_seed(3);
  Tensor x = randn({4, 3, 5}, kFloat64);
  Tensor y = bn(x);
  const V xv = vals(x), yv = vals(y);
  for (int c = 0; c < 3; ++c) {
    double mean = 0, ss = 0;
    for (int n = 0; n < 4; ++n)
      for (int l = 0; l < 5; ++l) mean += xv[(n * 3 + c) * 5 + l] / 20;
    for (int n = 0; n < 4; ++n)
      for (int l = 0; l < 5; ++l) ss += std::pow(xv[(n * 3 + c) * 5 + l] - mean, 2);
    for (int n = 0; n < 4; ++n)
      for (int l = 0; l < 5; ++l) {
        const int i = (n * 3 + c) * 5 + l;
        EXPECT_NEAR(yv[i], (xv[i] - mean) / std::sqrt(ss / 20 + 1e-5), 1e-12);
      }
    EXPECT_NEAR(vals(bn->running_mean)[c], 0.5 * mean, 1e-12);
    EXPECT_NEAR(vals(bn->running_var)[c], 0.5 + 0.5 * ss / 19, 1e-12);
  }
}

TEST(BatchNorm1d, CumulativeAverageWithoutMomentum) {
  nn::BatchNorm1d bn(1, 1e-5, std::nullopt);
  bn->to(kFloat64);
  bn(f64({1, 3}, {2, 1}));    // mean 2, unbiased var 2
  bn(f64({4, 8}, {2, 1}));    // mean 6, unbiased var 8
  bn(f64({0, 0}, {2, 1}));    // mean 0, unbiased var 0
  expect_near(vals(bn->running_mean), {(2.0 + 6.0 + 0.0) / 3});
  // Factor 1 on the first batch replaces the initial 1; then a plain average.
  expect_near(vals(bn->running_var), {(2.0 + 8.0 + 0.0) / 3});
  EXPECT_NE(str(*bn).find("momentum=None"), std::string::npos);
}

TEST(BatchNorm1d, WithoutRunningStatsAlwaysUsesTheBatch) {
  nn::BatchNorm1d bn(2, 1e-5, 0.1, false, false);
  EXPECT_TRUE(bn->state_dict().empty());
  EXPECT_FALSE(bn->running_mean.defined());
  Tensor x = randn({6, 2}, kFloat64);
  bn->to(kFloat64);
  Tensor train_out = bn(x);
  bn->eval();
  EXPECT_TRUE(bn(x).allclose(train_out, 0, 1e-14));
  EXPECT_NEAR(vals(train_out.mean({0}))[0], 0.0, 1e-12);
}

TEST(BatchNorm1d, Errors) {
  nn::BatchNorm1d bn(3);
  EXPECT_ERROR_HAS(bn(randn({2, 3, 4, 5})), "BatchNorm1d: expected 2D (N, C) or 3D (N, C, L) input, got 4D input");
  EXPECT_ERROR_HAS(bn(randn({2, 4})), "BatchNorm1d: expected input with 3 channels at dim 1 (num_features), got shape [2, 4]");
  EXPECT_ERROR_HAS(bn(randn({1, 3})), "batch_norm: expected more than 1 value per channel when training, got input of shape [1, 3]");
  bn->eval();
  EXPECT_NO_THROW(bn(randn({1, 3})));
}

// ---------------------------------------------------------------- state_dict

TEST(StateDict, RoundTripIntoAFreshModel) {
  manual_seed(10);
  Net a;
  a(randn({8, 4}));  // moves the BatchNorm's running statistics off their initial values
  manual_seed(11);
  Net b;
  const Tensor b_weight = b->fc1->weight;  // the handle an optimizer would hold
  EXPECT_FALSE(b->fc1->weight.equal(a->fc1->weight));
  b->load_state_dict(a->state_dict());
  EXPECT_TRUE(b->fc1->weight.is_same(b_weight));
  auto sa = a->state_dict(), sb = b->state_dict();
  ASSERT_EQ(names(sa), names(sb));
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(sa[i].second.equal(sb[i].second)) << sa[i].first;
  EXPECT_EQ(b->bn->num_batches_tracked.item<int64_t>(), 1);
  // Values were copied, not shared.
  const Tensor saved = a->fc1->weight.detach().clone();
  {
    NoGradGuard ng;
    a->fc1->weight.add_(1.0);
  }
  EXPECT_FALSE(a->fc1->weight.equal(b->fc1->weight));
  {
    NoGradGuard ng;
    a->fc1->weight.copy_(saved);
  }
  a->eval();
  b->eval();
  Tensor x = randn({5, 4});
  EXPECT_TRUE(a(x).equal(b(x)));
  EXPECT_FALSE(b->fc1->weight.grad_fn());
  EXPECT_TRUE(b->fc1->weight.requires_grad());
}

TEST(StateDict, StrictLoadErrors) {
  Net a, b;
  auto sd = a->state_dict();

  auto missing = sd;
  missing.pop_back();  // fc2.weight
  EXPECT_ERROR_HAS(b->load_state_dict(missing), "missing key(s): \"fc2.weight\"");
  EXPECT_ERROR_HAS(b->load_state_dict(missing), "error(s) in loading state_dict for Net");

  auto extra = sd;
  extra.emplace_back("fc3.weight", zeros({1}));
  EXPECT_ERROR_HAS(b->load_state_dict(extra), "unexpected key(s): \"fc3.weight\"");

  auto wrong = sd;
  wrong[0].second = zeros({5, 4});
  EXPECT_ERROR_HAS(b->load_state_dict(wrong),
                   "size mismatch for fc1.weight: copying a tensor of shape [5, 4] into a tensor of shape [3, 4]");
  EXPECT_ERROR_HAS(b->load_state_dict(wrong, false), "size mismatch for fc1.weight");

  // Non-strict loading takes what matches and ignores the rest.
  auto partial = missing;
  partial.emplace_back("unused", zeros({2}));
  EXPECT_NO_THROW(b->load_state_dict(partial, false));
  EXPECT_TRUE(b->fc1->weight.equal(a->fc1->weight));
  EXPECT_FALSE(b->fc2->weight.equal(a->fc2->weight));
}

TEST(StateDict, ToDtypeKeepsHandlesAndIntegerBuffers) {
  Net net;
  const Tensor w = net->fc1->weight;
  net->to(kFloat64);
  EXPECT_TRUE(net->fc1->weight.is_same(w));
  EXPECT_EQ(w.dtype(), kFloat64);
  EXPECT_EQ(net->bn->running_var.dtype(), kFloat64);
  EXPECT_EQ(net->bn->num_batches_tracked.dtype(), kInt64);
  EXPECT_EQ(net(randn({3, 4}, kFloat64)).dtype(), kFloat64);
}

TEST(ZeroGrad, ClearsEveryParameter) {
  nn::Sequential seq(nn::Linear(3, 2), nn::Tanh(), nn::Linear(2, 1));
  seq(randn({4, 3})).sum().backward();
  for (auto& p : seq->parameters()) EXPECT_TRUE(p.grad().defined());
  seq->zero_grad(false);
  for (auto& p : seq->parameters()) EXPECT_EQ(p.grad().abs().sum().item<double>(), 0.0);
  seq->zero_grad();
  for (auto& p : seq->parameters()) EXPECT_FALSE(p.grad().defined());
}

// ---------------------------------------------------------------- printing

TEST(Printing, SequentialLikePyTorch) {
  nn::Sequential mlp(nn::Linear(784, 512), nn::ReLU(), nn::Dropout(0.2), nn::Linear(512, 10));
  // print(nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10)))
  EXPECT_EQ(str(*mlp),
            "Sequential(\n"
            "  (0): Linear(in_features=784, out_features=512, bias=True)\n"
            "  (1): ReLU()\n"
            "  (2): Dropout(p=0.2, inplace=False)\n"
            "  (3): Linear(in_features=512, out_features=10, bias=True)\n"
            ")");
  std::ostringstream os;
  os << mlp;  // the holder prints its module
  EXPECT_EQ(os.str(), str(*mlp));
}

TEST(Printing, NestedTreeAndEveryModule) {
  nn::Sequential model(
      nn::Unflatten(1, {1, 28, 28}), nn::Flatten(),
      nn::Sequential(nn::Linear(784, 64, false), nn::LayerNorm(64), nn::GELU("tanh")),
      nn::BatchNorm1d(64), nn::LeakyReLU(0.2), nn::RMSNorm({64}), nn::SiLU(), nn::Sigmoid(), nn::Identity(),
      nn::Linear(64, 10), nn::LogSoftmax(1), nn::Softmax(-1));
  EXPECT_EQ(str(*model),
            "Sequential(\n"
            "  (0): Unflatten(dim=1, unflattened_size=(1, 28, 28))\n"
            "  (1): Flatten(start_dim=1, end_dim=-1)\n"
            "  (2): Sequential(\n"
            "    (0): Linear(in_features=784, out_features=64, bias=False)\n"
            "    (1): LayerNorm((64,), eps=1e-05, elementwise_affine=True)\n"
            "    (2): GELU(approximate='tanh')\n"
            "  )\n"
            "  (3): BatchNorm1d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
            "  (4): LeakyReLU(negative_slope=0.2)\n"
            "  (5): RMSNorm((64,), eps=None, elementwise_affine=True)\n"
            "  (6): SiLU()\n"
            "  (7): Sigmoid()\n"
            "  (8): Identity()\n"
            "  (9): Linear(in_features=64, out_features=10, bias=True)\n"
            "  (10): LogSoftmax(dim=1)\n"
            "  (11): Softmax(dim=-1)\n"
            ")");
  EXPECT_EQ(model(randn({2, 784})).sizes(), (std::vector<int64_t>{2, 10}));

  EXPECT_EQ(str(*nn::Embedding(10, 3, 0)), "Embedding(10, 3, padding_idx=0)");
  EXPECT_EQ(str(*nn::Embedding(10, 3, -1)), "Embedding(10, 3, padding_idx=9)");
  EXPECT_EQ(str(*nn::Embedding(10, 3)), "Embedding(10, 3)");
  EXPECT_EQ(str(*nn::GELU()), "GELU(approximate='none')");
  EXPECT_EQ(str(*nn::LeakyReLU()), "LeakyReLU(negative_slope=0.01)");
  EXPECT_EQ(str(*nn::LeakyReLU(1e-5)), "LeakyReLU(negative_slope=1e-05)");
  EXPECT_EQ(str(*nn::LeakyReLU(3.0)), "LeakyReLU(negative_slope=3.0)");
  EXPECT_EQ(str(*nn::LeakyReLU(0.0001)), "LeakyReLU(negative_slope=0.0001)");
  EXPECT_EQ(str(*nn::LeakyReLU(1.0 / 3)), "LeakyReLU(negative_slope=0.3333333333333333)");
  EXPECT_EQ(str(*nn::LeakyReLU(1e16)), "LeakyReLU(negative_slope=1e+16)");
  EXPECT_EQ(str(*nn::LeakyReLU(123456.5)), "LeakyReLU(negative_slope=123456.5)");
  EXPECT_EQ(str(*nn::RMSNorm({4, 8}, 1e-6, false)), "RMSNorm((4, 8), eps=1e-06, elementwise_affine=False)");
  EXPECT_EQ(str(*nn::LayerNorm({4, 8}, 1e-3)), "LayerNorm((4, 8), eps=0.001, elementwise_affine=True)");
  EXPECT_EQ(str(*nn::BatchNorm1d(16, 1e-3, 0.01, false, false)),
            "BatchNorm1d(16, eps=0.001, momentum=0.01, affine=False, track_running_stats=False)");
  EXPECT_EQ(str(*nn::ModuleDict({{"fc", nn::Linear(2, 1)}})),
            "ModuleDict(\n  (fc): Linear(in_features=2, out_features=1, bias=True)\n)");
  EXPECT_EQ(str(*nn::ModuleList()), "ModuleList()");
  EXPECT_EQ(str(*nn::CrossEntropyLoss()), "CrossEntropyLoss()");
}

// ---------------------------------------------------------------- layers

TEST(Layers, LinearForwardByHand) {
  nn::Linear fc(3, 2);
  fc->to(kFloat64);
  {
    NoGradGuard ng;
    fc->weight.copy_(f64({1, 2, 3, -1, 0, 1}, {2, 3}));
    fc->bias.copy_(f64({0.5, -0.5}, {2}));
  }
  Tensor x = f64({1, 1, 1, 2, 0, -1}, {2, 3});
  expect_near(vals(fc(x)), {6.5, -0.5, -0.5, -3.5});
  expect_near(vals(fc(f64({1, 1, 1}, {3}))), {6.5, -0.5});  // unbatched
  EXPECT_EQ(fc(randn({4, 5, 3}, kFloat64)).sizes(), (std::vector<int64_t>{4, 5, 2}));
  EXPECT_ERROR_HAS(fc(randn({2, 4}, kFloat64)), "Linear: expected input of shape (*, 3) (in_features=3), got [2, 4]");
  EXPECT_ERROR_HAS(F::linear(randn({2, 4}), randn({2, 3})), "linear: input of shape [2, 4] does not match weight of shape [2, 3]");
}

TEST(Layers, ActivationsShapesAndIdentity) {
  Tensor x = randn({3, 4}, kFloat64);
  EXPECT_TRUE(nn::ReLU()(x).equal(relu(x)));
  EXPECT_TRUE(nn::LeakyReLU(0.2)(x).equal(leaky_relu(x, 0.2)));
  EXPECT_TRUE(nn::GELU("tanh")(x).equal(gelu(x, "tanh")));
  EXPECT_TRUE(nn::SiLU()(x).equal(silu(x)));
  EXPECT_TRUE(nn::Tanh()(x).equal(tanh(x)));
  EXPECT_TRUE(nn::Sigmoid()(x).equal(sigmoid(x)));
  EXPECT_TRUE(nn::Softmax(0)(x).equal(softmax(x, 0)));
  EXPECT_TRUE(nn::LogSoftmax(1)(x).equal(log_softmax(x, 1)));
  EXPECT_TRUE(nn::Identity()(x).is_same(x));
  EXPECT_ERROR_HAS(nn::GELU("fast"), "GELU: approximate must be \"none\" or \"tanh\", got \"fast\"");

  Tensor img = randn({2, 1, 4, 4});
  EXPECT_EQ(nn::Flatten()(img).sizes(), (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(nn::Flatten(0, 1)(img).sizes(), (std::vector<int64_t>{2, 4, 4}));
  EXPECT_TRUE(nn::Unflatten(1, {1, 4, 4})(nn::Flatten()(img)).equal(img));
  EXPECT_EQ(nn::Unflatten(1, std::vector<int64_t>{4, -1})(randn({2, 16})).sizes(), (std::vector<int64_t>{2, 4, 4}));
}

TEST(Layers, SequentialChainsAndNamesTheFailingChild) {
  manual_seed(5);
  nn::Sequential seq(nn::Linear(4, 3), nn::ReLU(), nn::Linear(3, 2));
  Tensor x = randn({6, 4});
  auto l0 = seq->ptr<nn::LinearImpl>(0), l2 = seq->ptr<nn::LinearImpl>(2);
  Tensor want = relu(x.matmul(l0->weight.t()) + l0->bias).matmul(l2->weight.t()) + l2->bias;
  EXPECT_TRUE(seq(x).allclose(want));
  EXPECT_TRUE(nn::Sequential()(x).equal(x));  // empty: the identity
  EXPECT_ERROR_HAS(seq(randn({6, 5})), "Sequential: child (0): Linear: expected input of shape (*, 4)");
  EXPECT_ERROR_HAS(seq->at(3), "Sequential: index 3 is out of range for a Sequential of size 3");
  EXPECT_ERROR_HAS(seq->ptr<nn::LinearImpl>(1), "Sequential: the module at 1 is a ReLU, not the requested type");
}

// Reference layer norm over the last `k` values of each row of `x`.
V ref_layer_norm(const V& x, size_t k, const V& w, const V& b, double eps, bool rms) {
  V out(x.size());
  for (size_t r = 0; r < x.size() / k; ++r) {
    double mean = 0, ss = 0;
    for (size_t i = 0; i < k; ++i) mean += x[r * k + i] / static_cast<double>(k);
    if (rms) mean = 0;
    for (size_t i = 0; i < k; ++i) ss += std::pow(x[r * k + i] - mean, 2);
    for (size_t i = 0; i < k; ++i) {
      double y = (x[r * k + i] - mean) / std::sqrt(ss / static_cast<double>(k) + eps);
      out[r * k + i] = y * (w.empty() ? 1.0 : w[i]) + (b.empty() ? 0.0 : b[i]);
    }
  }
  return out;
}

TEST(Layers, LayerNormAndRMSNormAgainstReference) {
  manual_seed(7);
  nn::LayerNorm ln({3, 4});
  ln->to(kFloat64);
  EXPECT_EQ(names(ln->named_parameters()), (std::vector<std::string>{"weight", "bias"}));
  expect_near(vals(ln->weight), V(12, 1.0));
  expect_near(vals(ln->bias), V(12, 0.0));
  {
    NoGradGuard ng;
    ln->weight.normal_();
    ln->bias.normal_();
  }
  Tensor x = randn({2, 3, 4}, kFloat64) * 3 + 1;
  expect_near(vals(ln(x)), ref_layer_norm(vals(x), 12, vals(ln->weight), vals(ln->bias), 1e-5, false));

  nn::LayerNorm plain(4, 1e-3, false);
  EXPECT_TRUE(plain->parameters().empty());
  expect_near(vals(plain(x)), ref_layer_norm(vals(x), 4, {}, {}, 1e-3, false));
  nn::LayerNorm nobias(4, 1e-5, true, false);
  EXPECT_EQ(names(nobias->named_parameters()), (std::vector<std::string>{"weight"}));

  nn::RMSNorm rms(4);
  rms->to(kFloat64);
  {
    NoGradGuard ng;
    rms->weight.normal_();
  }
  // eps defaults to the input dtype's machine epsilon.
  expect_near(vals(rms(x)), ref_layer_norm(vals(x), 4, vals(rms->weight), {}, 2.220446049250313e-16, true));
  Tensor x32 = x.to(kFloat32);
  nn::RMSNorm rms32(4);
  expect_near(vals(rms32(x32)), ref_layer_norm(vals(x32), 4, {}, {}, 1.1920928955078125e-07, true), 1e-6);
  nn::RMSNorm rms_eps({4}, 0.5);
  expect_near(vals(rms_eps(x32)), ref_layer_norm(vals(x32), 4, {}, {}, 0.5, true), 1e-6);

  // float16 input: statistics in float32, output back in float16.
  Tensor xh = x.to(kFloat16);
  Tensor yh = nn::LayerNorm(4)(xh);
  EXPECT_EQ(yh.dtype(), kFloat16);
  expect_near(vals(yh), ref_layer_norm(vals(xh), 4, {}, {}, 1e-5, false), 2e-3);

  EXPECT_ERROR_HAS(ln(randn({2, 4, 3})),
                   "layer_norm: given normalized_shape=[3, 4], expected input with shape [*, 3, 4], but got input of shape [2, 4, 3]");
  EXPECT_ERROR_HAS(rms(randn({4, 5})), "rms_norm: given normalized_shape=[4]");
  EXPECT_ERROR_HAS(F::layer_norm(randn({2, 4}), {4}, randn({3})), "layer_norm: expected weight of shape [4], got [3]");
}

TEST(Layers, EmbeddingLookupAndPadding) {
  manual_seed(2);
  nn::Embedding emb(5, 3, 1);
  EXPECT_EQ(emb->weight.sizes(), (std::vector<int64_t>{5, 3}));
  expect_near(vals(emb->weight.select(0, 1)), {0, 0, 0});
  emb->to(kFloat64);
  Tensor idx = i64({0, 1, 4, 1, 2, 0}, {2, 3});
  Tensor out = emb(idx);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 3, 3}));
  const V w = vals(emb->weight), o = vals(out);
  const std::vector<int64_t> iv{0, 1, 4, 1, 2, 0};
  for (size_t p = 0; p < iv.size(); ++p)
    for (size_t d = 0; d < 3; ++d) EXPECT_EQ(o[p * 3 + d], w[static_cast<size_t>(iv[p]) * 3 + d]);
  // The padding row gets no gradient even after it was given values; others accumulate counts.
  {
    NoGradGuard ng;
    emb->weight.select(0, 1).fill_(7.0);
  }
  Tensor o2 = emb(idx);
  expect_near(vals(o2.select(0, 0).select(0, 1)), {7, 7, 7});
  o2.sum().backward();
  expect_near(vals(emb->weight.grad()), {2, 2, 2, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1});

  EXPECT_EQ(nn::Embedding(5, 3, -2)->padding_idx.value(), 3);
  EXPECT_ERROR_HAS(nn::Embedding(5, 3, 5), "Embedding: padding_idx must be within [-5, 5), got 5");
  EXPECT_ERROR_HAS(emb(i64({0, 5}, {2})), "out of bounds");
  EXPECT_ERROR_HAS(emb(f64({0, 1}, {2})), "embedding: expected indices of an integer dtype");
}

// ---------------------------------------------------------------- gradchecks

TEST(GradCheck, LinearLayerNormRMSNorm) {
  manual_seed(20);
  nn::Linear fc(4, 3);
  fc->to(kFloat64);
  Tensor x = leaf64({5, 4});
  gradcheck([&] { return fc(x); }, {x, fc->weight, fc->bias});

  nn::LayerNorm ln({2, 3});
  ln->to(kFloat64);
  {
    NoGradGuard ng;
    ln->weight.normal_();
    ln->bias.normal_();
  }
  Tensor y = leaf64({4, 2, 3}, -2, 2);
  gradcheck([&] { return ln(y); }, {y, ln->weight, ln->bias});

  nn::RMSNorm rms(3, 1e-3);
  rms->to(kFloat64);
  {
    NoGradGuard ng;
    rms->weight.normal_();
  }
  Tensor z = leaf64({4, 3}, -2, 2);
  gradcheck([&] { return rms(z); }, {z, rms->weight});
}

TEST(GradCheck, BatchNorm1dTrainAndEval) {
  manual_seed(21);
  nn::BatchNorm1d bn(3);
  bn->to(kFloat64);
  {
    NoGradGuard ng;
    bn->weight.normal_();
    bn->bias.normal_();
  }
  Tensor x2 = leaf64({5, 3}, -2, 2);
  gradcheck([&] { return bn(x2); }, {x2, bn->weight, bn->bias});
  Tensor x3 = leaf64({3, 3, 4}, -2, 2);
  gradcheck([&] { return bn(x3); }, {x3, bn->weight, bn->bias});
  bn->eval();
  gradcheck([&] { return bn(x3); }, {x3, bn->weight, bn->bias});
}

TEST(GradCheck, Losses) {
  manual_seed(22);
  Tensor logits = leaf64({5, 4}, -2, 2);
  Tensor target = i64({0, 3, -100, 2, 3}, {5});
  Tensor w = leaf64({4}, 0.5, 2);
  gradcheck([&] { return F::cross_entropy(logits, target, {.weight = w, .label_smoothing = 0.2}); }, {logits, w});
  gradcheck([&] { return F::cross_entropy(logits, target, {.reduction = "none", .label_smoothing = 0.1}); }, {logits});
  Tensor logits3 = leaf64({2, 3, 4}, -2, 2);
  Tensor target3 = i64({0, 1, 2, 1, 2, 2, 0, 0}, {2, 4});
  gradcheck([&] { return F::cross_entropy(logits3, target3, {.weight = w.narrow(0, 0, 3)}); }, {logits3});
  Tensor probs = softmax(randn({5, 4}, kFloat64), 1).requires_grad_(true);
  gradcheck([&] { return F::cross_entropy(logits, probs, {.weight = w, .label_smoothing = 0.3}); }, {logits, probs, w});
  Tensor logp = leaf64({5, 4}, -3, -0.1);
  gradcheck([&] { return F::nll_loss(logp, target, {.weight = w}); }, {logp, w});

  Tensor a = leaf64({3, 4}, -2, 2), b = leaf64({3, 4}, -2, 2);
  gradcheck([&] { return F::mse_loss(a, b); }, {a, b});
  gradcheck([&] { return F::l1_loss(a, b, {.reduction = "sum"}); }, {a, b});
  gradcheck([&] { return F::smooth_l1_loss(a, b, {.beta = 0.7}); }, {a, b});

  Tensor p = leaf64({3, 4}, 0.05, 0.95), t = leaf64({3, 4}, 0, 1), bw = leaf64({4}, 0.5, 2);
  gradcheck([&] { return F::binary_cross_entropy(p, t, {.weight = bw}); }, {p, t, bw});
  Tensor pw = leaf64({4}, 0.5, 3);
  gradcheck([&] { return F::binary_cross_entropy_with_logits(a, t, {.weight = bw, .pos_weight = pw}); },
            {a, t, bw, pw});
  gradcheck([&] { return F::binary_cross_entropy_with_logits(a, t, {.reduction = "none"}); }, {a, t});

  Tensor q = softmax(randn({3, 4}, kFloat64), 1).requires_grad_(true);
  gradcheck([&] { return F::kl_div(logp.narrow(0, 0, 3), q, {.reduction = "batchmean"}); }, {logp, q});
  Tensor lq = leaf64({3, 4}, -3, -0.1);
  gradcheck([&] { return F::kl_div(a, lq, {.reduction = "sum", .log_target = true}); }, {a, lq});
}

TEST(GradCheck, SecondOrderThroughCrossEntropy) {
  // Losses are loom ops, so a gradient penalty differentiates once more.
  manual_seed(23);
  Tensor x = leaf64({3, 4});
  Tensor target = i64({1, 0, 3}, {3});
  gradcheck(
      [&] {
        Tensor g = autograd::grad({F::cross_entropy(x, target, {.label_smoothing = 0.1})}, {x}, {}, true, true)[0];
        return (g * g).sum();
      },
      {x}, 1e-5);
}

// ---------------------------------------------------------------- losses by hand

// PyTorch's cross entropy in plain loops. x: (N, C, D) flattened, targets
// (N, D) of class indices (or ignore). Returns the "none" losses, and the
// sum of the weights of the counted targets through `total_weight`.
V ref_ce_indices(const V& x, int64_t N, int64_t C, int64_t D, const std::vector<int64_t>& t, const V& w,
                 int64_t ignore, double ls, double* total_weight) {
  V out(static_cast<size_t>(N * D), 0.0);
  *total_weight = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t tc = t[static_cast<size_t>(n * D + d)];
      if (tc == ignore) continue;
      double mx = -1e300;
      for (int64_t c = 0; c < C; ++c) mx = std::max(mx, x[static_cast<size_t>((n * C + c) * D + d)]);
      double se = 0;
      for (int64_t c = 0; c < C; ++c) se += std::exp(x[static_cast<size_t>((n * C + c) * D + d)] - mx);
      const double lse = mx + std::log(se);
      auto logp = [&](int64_t c) { return x[static_cast<size_t>((n * C + c) * D + d)] - lse; };
      auto wc = [&](int64_t c) { return w.empty() ? 1.0 : w[static_cast<size_t>(c)]; };
      double smooth = 0;
      for (int64_t c = 0; c < C; ++c) smooth -= wc(c) * logp(c);
      out[static_cast<size_t>(n * D + d)] = (1 - ls) * (-wc(tc) * logp(tc)) + ls / static_cast<double>(C) * smooth;
      *total_weight += wc(tc);
    }
  return out;
}

double sum_of(const V& v) {
  double s = 0;
  for (double e : v) s += e;
  return s;
}

TEST(Losses, CrossEntropyHandValues) {
  // -log softmax([1, 2, 3])[2] = log(1 + e^-1 + e^-2).
  Tensor x = f64({1, 2, 3}, {1, 3});
  EXPECT_NEAR(F::cross_entropy(x, i64({2}, {1})).item<double>(), std::log(1 + std::exp(-1.0) + std::exp(-2.0)), 1e-15);
  // Uniform logits: log C whatever the target.
  EXPECT_NEAR(F::cross_entropy(zeros({4, 10}, kFloat64), i64({0, 3, 9, 5}, {4})).item<double>(), std::log(10.0), 1e-15);
  // Unbatched (C) input with a 0-dim target.
  EXPECT_NEAR(F::cross_entropy(f64({1, 2, 3}, {3}), i64({0}, {}).reshape({})).item<double>(),
              std::log(1 + std::exp(1.0) + std::exp(2.0)), 1e-15);
  // Label smoothing 0.3 on two classes with logits [0, log 3] (p = [1/4, 3/4]), target 1:
  // 0.7 * -log(3/4) + 0.15 * (-log(1/4) - log(3/4)).
  const double ls = 0.7 * -std::log(0.75) + 0.15 * (-std::log(0.25) - std::log(0.75));
  EXPECT_NEAR(F::cross_entropy(f64({0, std::log(3.0)}, {1, 2}), i64({1}, {1}), {.label_smoothing = 0.3}).item<double>(),
              ls, 1e-15);
}

TEST(Losses, CrossEntropyClassIndicesAgainstReference) {
  manual_seed(30);
  const int64_t N = 6, C = 5;
  Tensor x = randn({N, C}, kFloat64) * 2;
  const std::vector<int64_t> tv{4, 0, -100, 2, 2, 1};
  Tensor t = i64(tv, {N});
  const V w{0.5, 1.0, 2.0, 0.25, 3.0};
  Tensor wt = f64(w, {C});
  for (double ls : {0.0, 0.15}) {
    for (bool weighted : {false, true}) {
      double tw = 0;
      const V none = ref_ce_indices(vals(x), N, C, 1, tv, weighted ? w : V{}, -100, ls, &tw);
      F::CrossEntropyOptions o{.weight = weighted ? wt : Tensor(), .label_smoothing = ls};
      SCOPED_TRACE("ls=" + std::to_string(ls) + " weighted=" + std::to_string(weighted));
      // The weighted mean divides by the weights of the counted targets, not by N.
      EXPECT_NEAR(F::cross_entropy(x, t, o).item<double>(), sum_of(none) / tw, 1e-13);
      o.reduction = "sum";
      EXPECT_NEAR(F::cross_entropy(x, t, o).item<double>(), sum_of(none), 1e-13);
      o.reduction = "none";
      expect_near(vals(F::cross_entropy(x, t, o)), none, 1e-13);
    }
  }
  // A custom ignore_index that is also a valid class (-100 is then an ordinary, invalid, class).
  std::vector<int64_t> tv2 = tv;
  tv2[2] = 3;
  double tw = 0;
  const V none2 = ref_ce_indices(vals(x), N, C, 1, tv2, {}, 2, 0.0, &tw);
  EXPECT_EQ(tw, 4.0);  // the two targets of class 2 do not count
  EXPECT_NEAR(F::cross_entropy(x, i64(tv2, {N}), {.ignore_index = 2}).item<double>(), sum_of(none2) / tw, 1e-13);

  // nll_loss on log-probabilities is the same computation.
  Tensor logp = log_softmax(x, 1);
  EXPECT_NEAR(F::nll_loss(logp, t, {.weight = wt}).item<double>(),
              F::cross_entropy(x, t, {.weight = wt}).item<double>(), 1e-14);
  // Every target ignored: 0 / 0 as PyTorch.
  EXPECT_TRUE(std::isnan(F::cross_entropy(x, full({N}, int64_t{-100}, kInt64)).item<double>()));
  EXPECT_EQ(F::cross_entropy(x, full({N}, int64_t{-100}, kInt64), {.reduction = "sum"}).item<double>(), 0.0);
}

TEST(Losses, CrossEntropyHigherDimsAgainstReference) {
  manual_seed(31);
  const int64_t N = 2, C = 3, D1 = 2, D2 = 2;
  Tensor x = randn({N, C, D1, D2}, kFloat64);
  const std::vector<int64_t> tv{0, 2, 1, -100, 2, 2, 0, 1};
  Tensor t = i64(tv, {N, D1, D2});
  const V w{1.5, 0.5, 2.0};
  double tw = 0;
  const V none = ref_ce_indices(vals(x), N, C, D1 * D2, tv, w, -100, 0.1, &tw);
  F::CrossEntropyOptions o{.weight = f64(w, {C}), .label_smoothing = 0.1};
  EXPECT_NEAR(F::cross_entropy(x, t, o).item<double>(), sum_of(none) / tw, 1e-13);
  o.reduction = "none";
  Tensor got = F::cross_entropy(x, t, o);
  EXPECT_EQ(got.sizes(), (std::vector<int64_t>{N, D1, D2}));
  expect_near(vals(got), none, 1e-13);
}

TEST(Losses, CrossEntropyProbabilityTargets) {
  manual_seed(32);
  const int64_t N = 4, C = 3;
  Tensor x = randn({N, C}, kFloat64);
  Tensor p = softmax(randn({N, C}, kFloat64), 1);
  const V xv = vals(x), pv = vals(p), w{2.0, 1.0, 0.5};
  for (double ls : {0.0, 0.2})
    for (bool weighted : {false, true}) {
      V none(N, 0.0);
      for (int64_t n = 0; n < N; ++n) {
        double se = 0;
        for (int64_t c = 0; c < C; ++c) se += std::exp(xv[n * C + c]);
        for (int64_t c = 0; c < C; ++c) {
          const double tc = (1 - ls) * pv[n * C + c] + ls / C;
          none[n] -= (weighted ? w[c] : 1.0) * tc * (xv[n * C + c] - std::log(se));
        }
      }
      F::CrossEntropyOptions o{.weight = weighted ? f64(w, {C}) : Tensor(), .label_smoothing = ls};
      // "mean" divides by the number of samples, even with weights.
      EXPECT_NEAR(F::cross_entropy(x, p, o).item<double>(), sum_of(none) / N, 1e-13);
      o.reduction = "sum";
      EXPECT_NEAR(F::cross_entropy(x, p, o).item<double>(), sum_of(none), 1e-13);
      o.reduction = "none";
      expect_near(vals(F::cross_entropy(x, p, o)), none, 1e-13);
    }
  // One-hot probabilities give the class-index loss.
  Tensor t = i64({2, 0, 1, 1}, {N});
  EXPECT_NEAR(F::cross_entropy(x, one_hot(t, C).to(kFloat64)).item<double>(), F::cross_entropy(x, t).item<double>(),
              1e-14);
}

TEST(Losses, CrossEntropyErrors) {
  Tensor x = randn({4, 10});
  EXPECT_ERROR_HAS(F::cross_entropy(x, i64({1, 2, 10, 3}, {4})),
                   "cross_entropy: target class 10 is out of range [0, 10) for input of shape [4, 10] (target shape [4], ignore_index=-100)");
  EXPECT_ERROR_HAS(F::cross_entropy(x, i64({1, -1, 0, 3}, {4})), "cross_entropy: target class -1 is out of range [0, 10)");
  EXPECT_ERROR_HAS(F::cross_entropy(x, i64({1, 2, 3, 4, 5}, {5})),
                   "cross_entropy: expected a target of class indices of shape [4] or of class probabilities of shape [4, 10] for input of shape [4, 10], got target of shape [5]");
  EXPECT_ERROR_HAS(F::cross_entropy(x, zeros({4})), "cross_entropy: expected class-index targets of dtype int64, got float32");
  EXPECT_ERROR_HAS(F::cross_entropy(x, zeros({4, 10}, kInt64)),
                   "cross_entropy: a target of the input's shape holds class probabilities and must be floating point, got int64");
  EXPECT_ERROR_HAS(F::cross_entropy(x, zeros({4, 10}), {.ignore_index = 0}),
                   "cross_entropy: ignore_index (0) is not supported for class-probability targets");
  EXPECT_ERROR_HAS(F::cross_entropy(x, i64({1, 2, 3, 4}, {4}), {.weight = ones({9})}),
                   "cross_entropy: expected weight of shape [10] (one per class), got [9]");
  EXPECT_ERROR_HAS(F::cross_entropy(x, i64({1, 2, 3, 4}, {4}), {.reduction = "avg"}),
                   "cross_entropy: reduction must be \"mean\", \"sum\" or \"none\", got \"avg\"");
  EXPECT_ERROR_HAS(F::cross_entropy(x, i64({1, 2, 3, 4}, {4}), {.label_smoothing = 1.5}),
                   "cross_entropy: label_smoothing must be between 0.0 and 1.0, got 1.5");
  EXPECT_ERROR_HAS(F::cross_entropy(zeros({4, 10}, kInt64), i64({1, 2, 3, 4}, {4})),
                   "cross_entropy: expected a floating point input, got int64");
  EXPECT_ERROR_HAS(F::nll_loss(x, i64({1, 2, 3}, {3})),
                   "nll_loss: expected a target of shape [4] for input of shape [4, 10], got [3]");
}

TEST(Losses, RegressionLossesByHand) {
  Tensor a = f64({1, 2, 3, 4}, {2, 2}), b = f64({1.5, 0, 3, 7}, {2, 2});
  // Differences: -0.5, 2, 0, -3.
  EXPECT_NEAR(F::mse_loss(a, b).item<double>(), (0.25 + 4 + 0 + 9) / 4, 1e-15);
  EXPECT_NEAR(F::mse_loss(a, b, {.reduction = "sum"}).item<double>(), 13.25, 1e-15);
  expect_near(vals(F::mse_loss(a, b, {.reduction = "none"})), {0.25, 4, 0, 9});
  EXPECT_NEAR(F::l1_loss(a, b).item<double>(), 5.5 / 4, 1e-15);
  expect_near(vals(F::l1_loss(a, b, {.reduction = "none"})), {0.5, 2, 0, 3});
  // beta = 1: 0.5 d^2 inside |d| < 1, |d| - 0.5 outside.
  expect_near(vals(F::smooth_l1_loss(a, b, {.reduction = "none"})), {0.125, 1.5, 0, 2.5});
  // beta = 2.5: 0.5 d^2 / 2.5 inside, |d| - 1.25 outside.
  expect_near(vals(F::smooth_l1_loss(a, b, {.reduction = "none", .beta = 2.5})), {0.05, 0.8, 0, 1.75});
  EXPECT_NEAR(F::smooth_l1_loss(a, b, {.beta = 0}).item<double>(), F::l1_loss(a, b).item<double>(), 1e-15);

  nn::MSELoss mse;
  EXPECT_NEAR(mse(a, b).item<double>(), 13.25 / 4, 1e-15);
  nn::SmoothL1Loss sl1(F::SmoothL1LossOptions{.reduction = "sum", .beta = 2.5});
  EXPECT_NEAR(sl1(a, b).item<double>(), 2.6, 1e-15);
  EXPECT_NEAR(nn::L1Loss()(a, b).item<double>(), 5.5 / 4, 1e-15);

  EXPECT_ERROR_HAS(F::mse_loss(randn({3}), randn({3, 1})), "mse_loss: target of shape [3, 1] must have the input's shape [3]");
  EXPECT_ERROR_HAS(F::l1_loss(randn({3}), zeros({3}, kInt64)), "l1_loss: expected a floating point target, got int64");
  EXPECT_ERROR_HAS(F::smooth_l1_loss(a, b, {.beta = -1}), "smooth_l1_loss: beta must be non-negative, got -1");
}

TEST(Losses, BinaryCrossEntropyByHand) {
  Tensor p = f64({0.9, 0.2, 0.5, 1.0, 0.0}, {5}), t = f64({1, 0, 1, 0, 0.25}, {5});
  const V want{-std::log(0.9), -std::log(0.8), -std::log(0.5),
               100.0,                       // log(1 - 1) = -inf clamps to -100
               0.25 * 100.0 - 0.0};         // 0.25 * (-log 0 -> 100) + 0.75 * -log(1)
  expect_near(vals(F::binary_cross_entropy(p, t, {.reduction = "none"})), want, 1e-14);
  const V w{1, 2, 3, 4, 5};
  EXPECT_NEAR(F::binary_cross_entropy(p, t, {.weight = f64(w, {5})}).item<double>(),
              (want[0] + 2 * want[1] + 3 * want[2] + 4 * want[3] + 5 * want[4]) / 5, 1e-13);
  EXPECT_NEAR(nn::BCELoss(F::BCELossOptions{.reduction = "sum"})(p, t).item<double>(), sum_of(want), 1e-13);
  EXPECT_ERROR_HAS(F::binary_cross_entropy(f64({1.5, 0.5}, {2}), f64({1, 0}, {2})),
                   "binary_cross_entropy: all elements of input should be between 0 and 1, got values in [0.5, 1.5]");
  EXPECT_ERROR_HAS(F::binary_cross_entropy(p, t, {.weight = ones({4})}),
                   "binary_cross_entropy: weight of shape [4] cannot be broadcast to the input's shape [5]");
}

TEST(Losses, BinaryCrossEntropyWithLogitsByHand) {
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  const V xv{0.3, -1.2, 2.0, 0.0, -0.7, 1.1}, tv{1, 0, 0.5, 1, 1, 0};
  const V pw{2.0, 0.5, 3.0}, w{1.0, 0.5, 2.0};
  Tensor x = f64(xv, {2, 3}), t = f64(tv, {2, 3});
  V plain, weighted;
  for (size_t i = 0; i < 6; ++i) {
    const double s = sig(xv[i]);
    plain.push_back(-(tv[i] * std::log(s) + (1 - tv[i]) * std::log(1 - s)));
    weighted.push_back(-w[i % 3] * (pw[i % 3] * tv[i] * std::log(s) + (1 - tv[i]) * std::log(1 - s)));
  }
  expect_near(vals(F::binary_cross_entropy_with_logits(x, t, {.reduction = "none"})), plain, 1e-14);
  EXPECT_NEAR(F::binary_cross_entropy_with_logits(x, t).item<double>(), sum_of(plain) / 6, 1e-14);
  F::BCEWithLogitsLossOptions o{.weight = f64(w, {3}), .reduction = "sum", .pos_weight = f64(pw, {3})};
  EXPECT_NEAR(F::binary_cross_entropy_with_logits(x, t, o).item<double>(), sum_of(weighted), 1e-13);
  nn::BCEWithLogitsLoss mod(o);
  EXPECT_EQ(names(mod->named_buffers()), (std::vector<std::string>{"weight", "pos_weight"}));
  EXPECT_NEAR(mod(x, t).item<double>(), sum_of(weighted), 1e-13);

  // Large logits stay finite and exact: log(1 + e^-100) ~ e^-100.
  Tensor big = f64({100, -100, 100, -100, 800}, {5}), tb = f64({0, 1, 1, 0, 1}, {5});
  expect_near(vals(F::binary_cross_entropy_with_logits(big, tb, {.reduction = "none"})),
              {100, 100, std::exp(-100.0), std::exp(-100.0), 0}, 1e-14);
  Tensor big32 = big.to(kFloat32).requires_grad_(true);
  Tensor l = F::binary_cross_entropy_with_logits(big32, tb.to(kFloat32), {.reduction = "sum"});
  EXPECT_NEAR(l.item<double>(), 200, 1e-4);
  l.backward();
  // d/dx = sigmoid(x) - t.
  expect_near(vals(big32.grad()), {1, -1, 0, 0, 0}, 1e-6);
  // At x = 0 exactly the slope is sigmoid(0) - t = -0.5 (no kink in softplus).
  Tensor zero = zeros({1}, kFloat64).requires_grad_(true);
  F::binary_cross_entropy_with_logits(zero, ones({1}, kFloat64)).backward();
  EXPECT_NEAR(zero.grad().item<double>(), -0.5, 1e-15);
}

TEST(Losses, KLDivByHand) {
  Tensor logq = log(f64({0.25, 0.25, 0.5, 0.1, 0.6, 0.3}, {2, 3}));
  Tensor p = f64({0.5, 0.5, 0.0, 0.2, 0.2, 0.6}, {2, 3});
  const V lq = vals(logq), pv = vals(p);
  V none;
  for (size_t i = 0; i < 6; ++i) none.push_back(pv[i] == 0 ? 0.0 : pv[i] * (std::log(pv[i]) - lq[i]));
  expect_near(vals(F::kl_div(logq, p, {.reduction = "none"})), none, 1e-14);
  EXPECT_NEAR(F::kl_div(logq, p).item<double>(), sum_of(none) / 6, 1e-14);
  EXPECT_NEAR(F::kl_div(logq, p, {.reduction = "sum"}).item<double>(), sum_of(none), 1e-14);
  // batchmean: the KL divergence per sample, sum / N.
  EXPECT_NEAR(F::kl_div(logq, p, {.reduction = "batchmean"}).item<double>(), sum_of(none) / 2, 1e-14);
  // log_target: the same divergence with the target given as log-probabilities (p > 0 here).
  Tensor p2 = f64({0.5, 0.25, 0.25, 0.2, 0.2, 0.6}, {2, 3});
  EXPECT_NEAR(F::kl_div(logq, log(p2), {.reduction = "sum", .log_target = true}).item<double>(),
              F::kl_div(logq, p2, {.reduction = "sum"}).item<double>(), 1e-14);
  EXPECT_NEAR(nn::KLDivLoss(F::KLDivLossOptions{.reduction = "batchmean"})(logq, p).item<double>(), sum_of(none) / 2,
              1e-14);
  EXPECT_ERROR_HAS(F::kl_div(logq, p, {.reduction = "batch"}),
                   "kl_div: reduction must be \"mean\", \"sum\", \"batchmean\" or \"none\", got \"batch\"");
}

TEST(Losses, ModulesRegisterWeightsAndForward) {
  Tensor w = f64({1, 2, 3}, {3});
  nn::CrossEntropyLoss ce(F::CrossEntropyOptions{.weight = w, .ignore_index = 1});
  EXPECT_EQ(names(ce->state_dict()), (std::vector<std::string>{"weight"}));
  Tensor x = randn({4, 3}, kFloat64);
  Tensor t = i64({0, 1, 2, 2}, {4});
  EXPECT_NEAR(ce(x, t).item<double>(),
              F::cross_entropy(x, t, {.weight = w, .ignore_index = 1}).item<double>(), 1e-15);
  nn::NLLLoss nll;
  EXPECT_TRUE(nll->state_dict().empty());
  EXPECT_NEAR(nll(log_softmax(x, 1), t).item<double>(), F::cross_entropy(x, t).item<double>(), 1e-14);
}

// ---------------------------------------------------------------- initializers

struct Stats {
  double mean, std, lo, hi;
};
Stats stats(const Tensor& t) {
  const V v = vals(t);
  double s = 0, lo = 1e300, hi = -1e300;
  for (double e : v) {
    s += e;
    lo = std::min(lo, e);
    hi = std::max(hi, e);
  }
  const double mean = s / static_cast<double>(v.size());
  double ss = 0;
  for (double e : v) ss += (e - mean) * (e - mean);
  return {mean, std::sqrt(ss / static_cast<double>(v.size() - 1)), lo, hi};
}

TEST(Init, UniformNormalConstant) {
  manual_seed(40);
  Tensor t = empty({400, 500});
  nn::init::uniform_(t, -2, 3);
  Stats s = stats(t);
  EXPECT_GE(s.lo, -2);
  EXPECT_LE(s.hi, 3);
  EXPECT_LT(s.lo, -1.99);
  EXPECT_GT(s.hi, 2.99);
  EXPECT_NEAR(s.mean, 0.5, 0.01);             // std of the mean ~ 0.0032
  EXPECT_NEAR(s.std, 5 / std::sqrt(12.0), 0.01);
  nn::init::normal_(t, 1, 2);
  s = stats(t);
  EXPECT_NEAR(s.mean, 1, 0.02);                // std of the mean ~ 0.0045
  EXPECT_NEAR(s.std, 2, 0.015);
  nn::init::constant_(t, 0.25);
  EXPECT_EQ(stats(t).lo, 0.25);
  EXPECT_EQ(stats(t).hi, 0.25);
  nn::init::zeros_(t);
  EXPECT_EQ(t.abs().sum().item<double>(), 0);
  nn::init::ones_(t);
  EXPECT_EQ(t.sum().item<double>(), 200000);
  Tensor e = empty({2, 3});
  nn::init::eye_(e);
  expect_near(vals(e), {1, 0, 0, 0, 1, 0});
}

TEST(Init, XavierAndKaimingStatistics) {
  manual_seed(41);
  Tensor t = empty({400, 600});  // fan_in 600, fan_out 400
  nn::init::xavier_uniform_(t);
  double bound = std::sqrt(6.0 / 1000);
  Stats s = stats(t);
  EXPECT_GE(s.lo, -bound);
  EXPECT_LE(s.hi, bound);
  EXPECT_GT(s.hi, 0.99 * bound);
  EXPECT_NEAR(s.std, std::sqrt(2.0 / 1000), 0.01 * std::sqrt(2.0 / 1000));
  nn::init::xavier_normal_(t, 2.0);
  s = stats(t);
  EXPECT_NEAR(s.mean, 0, 0.001);
  EXPECT_NEAR(s.std, 2 * std::sqrt(2.0 / 1000), 0.01 * 2 * std::sqrt(2.0 / 1000));

  nn::init::kaiming_uniform_(t);  // a = 0, leaky_relu: gain sqrt(2), fan_in 600
  bound = std::sqrt(3.0) * std::sqrt(2.0) / std::sqrt(600.0);
  s = stats(t);
  EXPECT_GE(s.lo, -bound);
  EXPECT_LE(s.hi, bound);
  EXPECT_GT(s.hi, 0.99 * bound);
  EXPECT_NEAR(s.std, bound / std::sqrt(3.0), 0.01 * bound / std::sqrt(3.0));
  nn::init::kaiming_normal_(t, 0, "fan_out", "relu");
  s = stats(t);
  EXPECT_NEAR(s.std, std::sqrt(2.0 / 400), 0.01 * std::sqrt(2.0 / 400));
  nn::init::kaiming_normal_(t, 0, "fan_in", "tanh");
  EXPECT_NEAR(stats(t).std, 5.0 / 3.0 / std::sqrt(600.0), 0.01 * 5.0 / 3.0 / std::sqrt(600.0));

  // Convolution-shaped weights count the receptive field.
  auto [fi, fo] = nn::init::calculate_fan_in_and_fan_out(empty({8, 4, 3, 3}));
  EXPECT_EQ(fi, 36);
  EXPECT_EQ(fo, 72);
}

TEST(Init, CalculateGainAndErrors) {
  EXPECT_EQ(nn::init::calculate_gain("linear"), 1.0);
  EXPECT_EQ(nn::init::calculate_gain("conv2d"), 1.0);
  EXPECT_EQ(nn::init::calculate_gain("sigmoid"), 1.0);
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain("tanh"), 5.0 / 3);
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain("relu"), std::sqrt(2.0));
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain("leaky_relu"), std::sqrt(2.0 / (1 + 0.01 * 0.01)));
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain("leaky_relu", 0.2), std::sqrt(2.0 / 1.04));
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain("selu"), 0.75);
  EXPECT_ERROR_HAS(nn::init::calculate_gain("swish"), "calculate_gain: unsupported nonlinearity \"swish\"");
  EXPECT_ERROR_HAS(nn::init::kaiming_uniform_(empty({3, 3}), 0, "fan_avg"),
                   "kaiming_uniform_: mode must be \"fan_in\" or \"fan_out\", got \"fan_avg\"");
  EXPECT_ERROR_HAS(nn::init::xavier_uniform_(empty({3})),
                   "calculate_fan_in_and_fan_out: fan in and fan out can not be computed for a tensor with fewer than 2 dims, got shape [3]");
  EXPECT_ERROR_HAS(nn::init::normal_(empty({3}, kInt64)), "normal_: expected a floating point tensor, got int64");
  EXPECT_ERROR_HAS(nn::init::orthogonal_(empty({3})), "orthogonal_: only tensors with 2 or more dims are supported");
}

// Gram matrix of the rows (rows_gram) or columns of a (r, c) tensor, in double.
V gram(const Tensor& t, bool of_rows) {
  Tensor m = t.to(kFloat64).reshape({t.sizes()[0], -1});
  return vals(of_rows ? m.matmul(m.t()) : m.t().matmul(m));
}

void expect_identity(const V& g, double scale, double tol) {
  const size_t n = static_cast<size_t>(std::llround(std::sqrt(static_cast<double>(g.size()))));
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) EXPECT_NEAR(g[i * n + j], i == j ? scale : 0.0, tol) << i << "," << j;
}

TEST(Init, OrthogonalGivesOrthonormalRowsOrColumns) {
  manual_seed(42);
  Tensor tall = empty({50, 30}, kFloat64);
  nn::init::orthogonal_(tall);
  expect_identity(gram(tall, false), 1.0, 1e-13);  // Q^T Q = I
  Tensor wide = empty({20, 60}, kFloat64);
  nn::init::orthogonal_(wide, 2.0);
  expect_identity(gram(wide, true), 4.0, 1e-12);   // (2Q)(2Q)^T = 4I
  Tensor conv = empty({8, 2, 3, 3});               // viewed as (8, 18)
  nn::init::orthogonal_(conv);
  expect_identity(gram(conv, true), 1.0, 1e-5);
  Tensor square = empty({16, 16});
  nn::init::orthogonal_(square);
  expect_identity(gram(square, true), 1.0, 1e-5);
  expect_identity(gram(square, false), 1.0, 1e-5);
  // Entries of a Haar-orthogonal n x n matrix have variance 1/n.
  Tensor big = empty({200, 200}, kFloat64);
  nn::init::orthogonal_(big);
  EXPECT_NEAR(stats(big).std, 1 / std::sqrt(200.0), 0.02 / std::sqrt(200.0));
}

TEST(Init, WritesInPlaceWithoutHistory) {
  nn::Linear fc(3, 2);
  const Tensor w = fc->weight;
  const void* data = w.raw_data_ptr();
  for (auto init : std::vector<std::function<void(Tensor)>>{
           [](Tensor t) { nn::init::xavier_uniform_(t); }, [](Tensor t) { nn::init::kaiming_normal_(t); },
           [](Tensor t) { nn::init::orthogonal_(t); }, [](Tensor t) { nn::init::constant_(t, 2); }}) {
    init(fc->weight);
    EXPECT_TRUE(fc->weight.is_same(w));
    EXPECT_EQ(w.raw_data_ptr(), data);
    EXPECT_TRUE(w.is_leaf());
    EXPECT_TRUE(w.requires_grad());
    EXPECT_FALSE(w.grad_fn());
  }
  EXPECT_EQ(stats(w).lo, 2.0);
  // The returned tensor is the same handle.
  EXPECT_TRUE(nn::init::zeros_(fc->bias).is_same(fc->bias));
}

TEST(Init, ModuleDefaults) {
  manual_seed(43);
  nn::Linear fc(400, 300);
  const double bound = 1 / std::sqrt(400.0);
  Stats s = stats(fc->weight);
  EXPECT_GE(s.lo, -bound);
  EXPECT_LE(s.hi, bound);
  EXPECT_GT(s.hi, 0.99 * bound);
  EXPECT_LT(s.lo, -0.99 * bound);
  EXPECT_NEAR(s.std, bound / std::sqrt(3.0), 0.01 * bound / std::sqrt(3.0));
  s = stats(fc->bias);
  EXPECT_GE(s.lo, -bound);
  EXPECT_LE(s.hi, bound);
  EXPECT_GT(s.hi - s.lo, bound);  // 300 draws spread over the range

  // Same seed, same model.
  manual_seed(7);
  nn::Linear a(5, 4);
  manual_seed(7);
  nn::Linear b(5, 4);
  EXPECT_TRUE(a->weight.equal(b->weight));
  EXPECT_TRUE(a->bias.equal(b->bias));

  nn::Embedding emb(300, 200, 3);
  s = stats(emb->weight);
  EXPECT_NEAR(s.mean, 0, 0.02);   // 60000 draws: std of the mean ~ 0.004
  EXPECT_NEAR(s.std, 1, 0.015);   // std of the estimate ~ 0.003
  EXPECT_EQ(emb->weight.select(0, 3).abs().sum().item<double>(), 0);

  nn::BatchNorm1d bn(4);
  expect_near(vals(bn->weight), {1, 1, 1, 1});
  expect_near(vals(bn->bias), {0, 0, 0, 0});
  expect_near(vals(bn->running_mean), {0, 0, 0, 0});
  expect_near(vals(bn->running_var), {1, 1, 1, 1});
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 0);
  bn(randn({5, 4}));
  bn->reset_running_stats();
  expect_near(vals(bn->running_mean), {0, 0, 0, 0});
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 0);
  expect_near(vals(nn::RMSNorm(3)->weight), {1, 1, 1});

  // fan_in 0: an empty weight and a zero bias range, as PyTorch.
  nn::Linear degenerate(0, 3);
  expect_near(vals(degenerate->bias), {0, 0, 0});
  EXPECT_EQ(degenerate(empty({2, 0})).sizes(), (std::vector<int64_t>{2, 3}));
}

// ---------------------------------------------------------------- CNN modules
// Pooling, BatchNorm2d, Dropout2d and Upsample (the ops themselves pass
// through tests/ops/test_ops_pool.cpp).

TEST(CnnModules, MaxPool2dForwardIndicesAndPrinting) {
  Tensor x = f64({1, 5, 2, 0, 3, 4, 8, 1, 9, 0, 2, 7, 6, 3, 1, 5}, {1, 1, 4, 4});
  nn::MaxPool2d pool(2);
  expect_near(vals(pool(x)), {5, 8, 9, 7});
  auto [y, ind] = pool->forward_with_indices(x);
  expect_near(vals(y), {5, 8, 9, 7});
  EXPECT_EQ(ind.to_vector<int64_t>(), (std::vector<int64_t>{1, 6, 8, 11}));
  EXPECT_TRUE(pool->parameters().empty());
  // Unbatched (C, H, W) input and PyTorch's defaults: stride = kernel_size.
  EXPECT_EQ(pool(randn({3, 7, 6})).sizes(), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_EQ(str(*pool), "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)");
  nn::MaxPool2d overlap({3, 2}, {.stride = {2, 1}, .padding = {1}, .ceil_mode = true});
  EXPECT_EQ(str(*overlap), "MaxPool2d(kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=1, ceil_mode=True)");
  EXPECT_TRUE(overlap(x).equal(max_pool2d(x, {3, 2}, {2, 1}, {1}, {1}, true)));
  nn::MaxPool2d three(3, {.stride = {2}});
  EXPECT_EQ(three(randn({2, 3, 9, 9})).sizes(), (std::vector<int64_t>{2, 3, 4, 4}));
  EXPECT_ERROR_HAS(nn::MaxPool2d(std::vector<int64_t>{2, 2, 2}), "MaxPool2d: kernel_size must be one int or two ints");
  // The gradient goes to each window's maximum.
  Tensor leaf = x.detach().requires_grad_(true);
  pool(leaf).sum().backward();
  V want(16, 0.0);
  for (int64_t i : {1, 6, 8, 11}) want[static_cast<size_t>(i)] = 1;
  expect_near(vals(leaf.grad()), want);
}

TEST(CnnModules, AvgPoolAndAdaptiveAvgPool) {
  Tensor x = f64({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {1, 1, 3, 4});
  nn::AvgPool2d avg(2);
  expect_near(vals(avg(x)), {(1 + 2 + 5 + 6) / 4.0, (3 + 4 + 7 + 8) / 4.0});
  EXPECT_EQ(str(*avg), "AvgPool2d(kernel_size=2, stride=2, padding=0)");
  // Ceil mode keeps the half window; count_include_pad=false divides by what it holds.
  nn::AvgPool2d ceil(2, {.ceil_mode = true, .count_include_pad = false});
  expect_near(vals(ceil(x)), {3.5, 5.5, 9.5, 11.5});
  nn::AvgPool2d padded({3}, {.stride = {1}, .padding = {1}, .divisor_override = 9});
  EXPECT_EQ(str(*padded), "AvgPool2d(kernel_size=3, stride=1, padding=1)");
  EXPECT_NEAR(vals(padded(x))[0], (1 + 2 + 5 + 6) / 9.0, 1e-15);

  nn::AdaptiveAvgPool2d gap(1);
  EXPECT_EQ(str(*gap), "AdaptiveAvgPool2d(output_size=1)");
  expect_near(vals(gap(x)), {6.5});
  nn::AdaptiveAvgPool2d two({2, 3});
  EXPECT_EQ(str(*two), "AdaptiveAvgPool2d(output_size=(2, 3))");
  // Rows [0, 2) and [1, 3); columns [0, 2), [1, 3), [2, 4).
  expect_near(vals(two(x)), {3.5, 4.5, 5.5, 7.5, 8.5, 9.5});
  EXPECT_EQ(two(randn({4, 5, 6})).sizes(), (std::vector<int64_t>{4, 2, 3}));
}

TEST(CnnModules, BatchNorm2dTrainEvalAndState) {
  nn::BatchNorm2d bn(2, 1e-5, 0.5);
  bn->to(kFloat64);
  {
    NoGradGuard ng;
    bn->weight.copy_(f64({2.0, 0.5}, {2}));
    bn->bias.copy_(f64({1.0, -1.0}, {2}));
  }
  manual_seed(4);
  Tensor x = randn({3, 2, 4, 5}, kFloat64) * 2 + 1;
  Tensor y = bn(x);
  const V xv = vals(x), yv = vals(y);
  for (int64_t c = 0; c < 2; ++c) {
    double mean = 0, var = 0;
    for (int64_t n = 0; n < 3; ++n)
      for (int64_t k = 0; k < 20; ++k) mean += xv[static_cast<size_t>((n * 2 + c) * 20 + k)] / 60;
    for (int64_t n = 0; n < 3; ++n)
      for (int64_t k = 0; k < 20; ++k) var += std::pow(xv[static_cast<size_t>((n * 2 + c) * 20 + k)] - mean, 2) / 60;
    const double w = c == 0 ? 2.0 : 0.5, b = c == 0 ? 1.0 : -1.0;
    for (int64_t n = 0; n < 3; ++n)
      for (int64_t k = 0; k < 20; ++k) {
        const size_t i = static_cast<size_t>((n * 2 + c) * 20 + k);
        EXPECT_NEAR(yv[i], (xv[i] - mean) / std::sqrt(var + 1e-5) * w + b, 1e-12);
      }
    EXPECT_NEAR(vals(bn->running_mean)[static_cast<size_t>(c)], 0.5 * mean, 1e-12);
    EXPECT_NEAR(vals(bn->running_var)[static_cast<size_t>(c)], 0.5 + 0.5 * var * 60 / 59, 1e-12);
  }
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 1);
  bn->eval();
  const V rm = vals(bn->running_mean), rv = vals(bn->running_var);
  const V ye = vals(bn(x));
  EXPECT_NEAR(ye[0], (xv[0] - rm[0]) / std::sqrt(rv[0] + 1e-5) * 2 + 1, 1e-12);
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 1);

  EXPECT_EQ(names(bn->state_dict()),
            (std::vector<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}));
  EXPECT_EQ(str(*nn::BatchNorm2d(32)), "BatchNorm2d(32, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)");
  EXPECT_ERROR_HAS(bn(randn({2, 2, 3})), "BatchNorm2d: expected 4D (N, C, H, W) input, got 3D input of shape [2, 2, 3]");
  EXPECT_ERROR_HAS(bn(randn({2, 3, 4, 4}, kFloat64)),
                   "BatchNorm2d: expected input with 2 channels at dim 1 (num_features), got shape [2, 3, 4, 4]");
  // float32 training matches the float64 result.
  nn::BatchNorm2d bn32(2);
  Tensor y32 = bn32(x.to(kFloat32));
  nn::BatchNorm2d ref(2);
  ref->to(kFloat64);
  expect_near(vals(y32), vals(ref(x)), 1e-5);
}

TEST(CnnModules, BatchNorm2dGradcheckAndSecondOrder) {
  manual_seed(22);
  nn::BatchNorm2d bn(3);
  bn->to(kFloat64);
  {
    NoGradGuard ng;
    bn->weight.normal_();
    bn->bias.normal_();
  }
  Tensor x = leaf64({2, 3, 2, 3}, -2, 2);
  gradcheck([&] { return bn(x); }, {x, bn->weight, bn->bias});
  // A gradient penalty: the first gradient recorded (create_graph), then differentiated.
  gradcheck(
      [&] {
        Tensor g = autograd::grad({(bn(x) * bn(x)).sum()}, {x}, {}, std::nullopt, true)[0];
        return g;
      },
      {x, bn->weight});
  bn->eval();
  gradcheck([&] { return bn(x); }, {x, bn->weight, bn->bias});
}

TEST(CnnModules, Dropout2dZeroesWholeChannels) {
  manual_seed(5);
  nn::Dropout2d drop(0.3);
  EXPECT_EQ(str(*drop), "Dropout2d(p=0.3, inplace=False)");
  Tensor x = ones({40, 50, 3, 4}, kFloat64);
  Tensor y = drop(x);
  const V v = vals(y);
  int64_t dropped = 0;
  for (int64_t plane = 0; plane < 2000; ++plane) {
    const double first = v[static_cast<size_t>(plane * 12)];
    EXPECT_TRUE(first == 0 || std::abs(first - 1 / 0.7) < 1e-15) << first;
    for (int64_t k = 1; k < 12; ++k) ASSERT_EQ(v[static_cast<size_t>(plane * 12 + k)], first) << "plane " << plane;
    if (first == 0) ++dropped;
  }
  // Binomial(2000, 0.3): standard deviation ~0.01 of the fraction.
  EXPECT_NEAR(static_cast<double>(dropped) / 2000, 0.3, 0.045);
  manual_seed(5);
  EXPECT_TRUE(drop(x).equal(y));
  // Unbatched (C, H, W): one draw per channel.
  Tensor u = drop(ones({30, 2, 2}, kFloat64));
  for (int64_t c = 0; c < 30; ++c) EXPECT_EQ(u[c].min().item<double>(), u[c].max().item<double>());
  // The gradient is the scaled mask.
  Tensor leaf = ones({4, 6, 2, 2}, kFloat64).requires_grad_(true);
  Tensor out = drop(leaf);
  out.sum().backward();
  EXPECT_TRUE(leaf.grad().equal(out.detach()));
  drop->eval();
  Tensor z = randn({2, 3, 4, 4});
  EXPECT_TRUE(drop(z).equal(z));
  EXPECT_TRUE(F::dropout2d(z, 0.0, true).equal(z));
  EXPECT_EQ(F::dropout2d(z, 1.0, true).abs().sum().item<double>(), 0.0);
  EXPECT_ERROR_HAS(nn::Dropout2d(-0.5), "Dropout2d: probability has to be between 0 and 1, but got -0.5");
}

TEST(CnnModules, UpsampleNearestAndBilinear) {
  Tensor x = f64({1, 2, 3, 4}, {1, 1, 2, 2});
  nn::Upsample up({.scale_factor = {2}});
  EXPECT_EQ(str(*up), "Upsample(scale_factor=2.0, mode='nearest')");
  expect_near(vals(up(x)), {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4});
  // align_corners maps the corner pixels onto each other; otherwise pixel centres.
  Tensor row = f64({0, 1}, {1, 1, 1, 2});
  nn::Upsample corners({.size = {1, 3}, .mode = "bilinear", .align_corners = true});
  expect_near(vals(corners(row)), {0, 0.5, 1});
  nn::Upsample centres({.size = {1, 4}, .mode = "bilinear"});
  EXPECT_EQ(str(*centres), "Upsample(size=(1, 4), mode='bilinear')");
  expect_near(vals(centres(row)), {0, 0.25, 0.75, 1});
  EXPECT_EQ(str(*nn::Upsample({.scale_factor = {2, 1.5}})), "Upsample(scale_factor=(2.0, 1.5), mode='nearest')");
  EXPECT_EQ(str(*nn::Upsample({.size = {7}})), "Upsample(size=7, mode='nearest')");
  EXPECT_ERROR_HAS(nn::Upsample(nn::UpsampleOptions{}), "Upsample: exactly one of size or scale_factor");
  EXPECT_ERROR_HAS(nn::Upsample({.size = {2}, .mode = "nearest", .align_corners = true}), "align_corners");
  // Bilinear upsampling differentiates (gradcheck through index_select).
  manual_seed(6);
  Tensor leaf = leaf64({1, 2, 3, 3});
  nn::Upsample smooth({.scale_factor = {1.5}, .mode = "bilinear"});
  gradcheck([&] { return smooth(leaf); }, {leaf});
}

TEST(CnnModules, SmallCnnTrainsAndPrints) {
  manual_seed(8);
  nn::Sequential net(nn::BatchNorm2d(3), nn::ReLU(), nn::MaxPool2d(2), nn::Dropout2d(0.1), nn::Upsample({.scale_factor = {2}}),
                     nn::AvgPool2d(2), nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(3, 2));
  EXPECT_EQ(str(*net),
            "Sequential(\n"
            "  (0): BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
            "  (1): ReLU()\n"
            "  (2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
            "  (3): Dropout2d(p=0.1, inplace=False)\n"
            "  (4): Upsample(scale_factor=2.0, mode='nearest')\n"
            "  (5): AvgPool2d(kernel_size=2, stride=2, padding=0)\n"
            "  (6): AdaptiveAvgPool2d(output_size=1)\n"
            "  (7): Flatten(start_dim=1, end_dim=-1)\n"
            "  (8): Linear(in_features=3, out_features=2, bias=True)\n"
            ")");
  Tensor x = randn({4, 3, 8, 8});
  Tensor loss = F::cross_entropy(net(x), i64({0, 1, 1, 0}, {4}));
  loss.backward();
  for (const auto& [name, p] : net->named_parameters()) EXPECT_TRUE(p.grad().defined()) << name;
  EXPECT_EQ(names(net->state_dict())[2], "0.running_mean");
}

// ---- fusion plans (Note [Fusion decisions], Note [Sequential executes a fusion plan]) ----

TEST(Fusion, PlanFusesLinearWithTheActivationRightAfterIt) {
  using A = LinearActivation;
  const FusionStep lin = FusionStep::linear(), relu = FusionStep::pointwise(A::Relu),
                   gelu = FusionStep::pointwise(A::GeluTanh), other = FusionStep::opaque();
  auto plan = [](const std::vector<FusionStep>& steps) {
    std::vector<std::tuple<size_t, size_t, A>> out;
    for (const FusionRun& r : plan_fusion(steps)) out.emplace_back(r.first, r.count, r.activation);
    return out;
  };
  using P = std::vector<std::tuple<size_t, size_t, A>>;
  EXPECT_EQ(plan({}), P{});
  EXPECT_EQ(plan({lin, relu, lin, gelu}), (P{{0, 2, A::Relu}, {2, 2, A::GeluTanh}}));
  // Only adjacent pairs; a second activation, a lone Linear or an opaque step runs alone.
  EXPECT_EQ(plan({lin, relu, relu, lin, other, gelu, lin}),
            (P{{0, 2, A::Relu}, {2, 1, A::None}, {3, 1, A::None}, {4, 1, A::None}, {5, 1, A::None}, {6, 1, A::None}}));
  EXPECT_EQ(plan({relu, lin, lin, relu}), (P{{0, 1, A::None}, {1, 1, A::None}, {2, 2, A::Relu}}));
}

TEST(Fusion, ModulesDescribeThemselves) {
  EXPECT_EQ(nn::Linear(2, 3)->fusion_step().kind, FusionStep::Kind::Linear);
  EXPECT_EQ(nn::ReLU()->fusion_step().activation, LinearActivation::Relu);
  EXPECT_EQ(nn::GELU()->fusion_step().activation, LinearActivation::Gelu);
  EXPECT_EQ(nn::GELU("tanh")->fusion_step().activation, LinearActivation::GeluTanh);
  EXPECT_EQ(nn::Tanh()->fusion_step().kind, FusionStep::Kind::Opaque);
  EXPECT_EQ(nn::Sequential(nn::Linear(2, 3))->fusion_step().kind, FusionStep::Kind::Opaque);
}

// A module that claims to be a Linear without being one cannot make
// Sequential run the wrong code: it gets a clear error.
struct ClaimsLinearImpl : nn::Module {
  ClaimsLinearImpl() : Module("ClaimsLinear") {}
  Tensor forward(const Tensor& x) override { return x; }
  FusionStep fusion_step() const override { return FusionStep::linear(); }
};

TEST(Fusion, OnlyLinearMayDescribeItselfAsLinear) {
  nn::Sequential model(std::make_shared<ClaimsLinearImpl>(), nn::ReLU());
  EXPECT_TRUE(throws_with([&] { model(randn({2, 3})); },
                          {"Sequential: child (0)", "ClaimsLinear describes itself as a Linear"}));
  nn::Sequential alone(std::make_shared<ClaimsLinearImpl>());  // no activation after it: runs as itself
  EXPECT_EQ(alone(ones({2})).sum().item<float>(), 2.0f);
}

// The plan is made on each call, so a GELU child's approximate switched
// after building still decides its form.
TEST(Fusion, SequentialFollowsChildSettingsChangedAfterBuilding) {
  manual_seed(9);
  nn::Sequential model(nn::Linear(4, 3), nn::GELU());
  Tensor x = randn({5, 4});
  auto fc = model->ptr<nn::LinearImpl>(0);
  model->ptr<nn::GELUImpl>(1)->approximate = "tanh";
  Tensor want = F::gelu(F::linear(x, fc->weight, fc->bias), "tanh");
  EXPECT_TRUE(equal(model(x), want));
}

}  // namespace
