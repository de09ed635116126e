// nn::SyncBatchNorm under `mpirun -np 2` and `-np 4` (and alone, the
// "local" backend): every rank generates the same global batch from a fixed
// seed and feeds its own slice to SyncBatchNorm, then checks the result
// against nn::BatchNorm on the whole global batch, computed locally.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "loom/distributed.h"
#include "loom/loom.h"
#include "test_util.h"

namespace dist = loom::distributed;
namespace nn = loom::nn;
using loom::Tensor;

namespace {

int rank() { return dist::get_rank(); }
int world() { return dist::get_world_size(); }

std::vector<int> all_ranks() {
  std::vector<int> ranks;
  for (int r = 0; r < world(); ++r) ranks.push_back(r);
  return ranks;
}

// |a - b| <= tol * (|b| + max |b|) elementwise: relative, with the
// tensor's scale as the floor for elements near zero.
void expect_close(const Tensor& a, const Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const std::vector<double> va = a.to(loom::kFloat64).contiguous().to_vector<double>();
  const std::vector<double> vb = b.to(loom::kFloat64).contiguous().to_vector<double>();
  double scale = 0;
  for (double v : vb) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < va.size(); ++i)
    ASSERT_LE(std::abs(va[i] - vb[i]), tol * (std::abs(vb[i]) + scale))
        << what << " element " << i << ": " << va[i] << " vs " << vb[i] << " on rank " << rank();
}

void set_(Tensor t, const Tensor& values) {
  loom::NoGradGuard ng;
  t.copy_(values);
}

Tensor sum_over(const Tensor& t, const std::shared_ptr<dist::ProcessGroup>& group) {
  Tensor s = t.clone();
  dist::all_reduce(s, dist::ReduceOp::Sum, group.get());
  return s;
}

// The group's global batch is its members' slices in member order; member
// p holds rows_of(p) rows.
struct Slices {
  int64_t offset = 0, rows = 0, total = 0;
  Slices(const std::vector<int>& members, const std::function<int64_t(size_t)>& rows_of) {
    const size_t me = static_cast<size_t>(std::find(members.begin(), members.end(), rank()) - members.begin());
    for (size_t p = 0; p < members.size(); ++p) {
      if (p < me) offset += rows_of(p);
      if (p == me) rows = rows_of(p);
      total += rows_of(p);
    }
  }
};

int64_t uneven_rows(size_t p) { return static_cast<int64_t>(p) + 2; }

// Three training steps of SyncBatchNorm on this rank's slice against
// BatchNorm (1d for (N, C), 2d for (N, C, H, W)) on the whole batch: the
// output, the input gradient of a loss that weighs every element
// differently, weight and bias gradients summed over the group, and the
// running statistics.
void expect_matches_full_batch(std::vector<int64_t> features, std::optional<double> momentum,
                               const std::shared_ptr<dist::ProcessGroup>& group, const std::vector<int>& members,
                               const std::function<int64_t(size_t)>& rows_of) {
  const double tol = 1e-5;
  const int64_t channels = features[0];
  const Slices slice(members, rows_of);
  loom::manual_seed(7);
  Tensor weight = loom::randn({channels}), bias = loom::randn({channels});
  nn::SyncBatchNorm sync(channels, 1e-5, momentum, true, true, group);
  std::shared_ptr<nn::BatchNormImplBase> full;
  if (features.size() == 1)
    full = std::make_shared<nn::BatchNorm1dImpl>(channels, 1e-5, momentum);
  else
    full = std::make_shared<nn::BatchNorm2dImpl>(channels, 1e-5, momentum);
  for (nn::BatchNormImplBase* bn : std::vector<nn::BatchNormImplBase*>{sync.get(), full.get()}) {
    set_(bn->weight, weight);
    set_(bn->bias, bias);
  }
  std::vector<int64_t> global_shape{slice.total};
  global_shape.insert(global_shape.end(), features.begin(), features.end());
  for (int step = 0; step < 3; ++step) {
    loom::manual_seed(100 + static_cast<uint64_t>(step));
    Tensor x = loom::randn(global_shape) * 2.0 + 0.5 * (step + 1);
    Tensor w = loom::randn(global_shape);

    Tensor mine = x.narrow(0, slice.offset, slice.rows).clone();
    mine.requires_grad_();
    Tensor y = sync(mine);
    (y * w.narrow(0, slice.offset, slice.rows)).sum().backward();

    Tensor everything = x.clone();
    everything.requires_grad_();
    Tensor y_full = full->forward(everything);
    (y_full * w).sum().backward();

    const std::string at = "step " + std::to_string(step);
    expect_close(y, y_full.narrow(0, slice.offset, slice.rows), tol, "output, " + at);
    expect_close(mine.grad(), everything.grad().narrow(0, slice.offset, slice.rows), tol, "input grad, " + at);
    expect_close(sum_over(sync->weight.grad(), group), full->weight.grad(), tol, "weight grad, " + at);
    expect_close(sum_over(sync->bias.grad(), group), full->bias.grad(), tol, "bias grad, " + at);
    sync->zero_grad();
    full->zero_grad();
  }
  expect_close(sync->running_mean, full->running_mean, tol, "running_mean");
  expect_close(sync->running_var, full->running_var, tol, "running_var");
  EXPECT_EQ(sync->num_batches_tracked.item<int64_t>(), 3);
}

// loom::test::gradcheck's collectives as seen from a rank that only takes
// part: the same calls of f (one, then one with backward, then two per leaf
// element) with a zero projection, so this rank's outputs add nothing to
// the owner's loss while its collectives pair with the owner's.
void take_part_in_gradcheck(const std::function<Tensor()>& f, const std::vector<Tensor>& leaves) {
  f();
  loom::autograd::grad({(f() * 0.0).sum()}, leaves);
  int64_t elements = 0;
  for (const Tensor& leaf : leaves) elements += leaf.numel();
  for (int64_t i = 0; i < 2 * elements; ++i) f();
}

// Each rank in turn gradchecks f with respect to its own leaves while the
// others hold theirs fixed and take part. Leaves have the same shapes on
// every rank.
void gradcheck_on_every_rank(const std::function<Tensor()>& f, const std::vector<Tensor>& leaves) {
  for (int owner = 0; owner < world(); ++owner) {
    if (rank() == owner)
      loom::test::gradcheck(f, leaves);
    else
      take_part_in_gradcheck(f, leaves);
  }
}

// This rank's own group of one (every rank makes every group, in order).
std::shared_ptr<dist::ProcessGroup> group_of_one() {
  std::shared_ptr<dist::ProcessGroup> mine;
  for (int r = 0; r < world(); ++r) {
    auto g = dist::new_group({r});
    if (r == rank()) mine = g;
  }
  return mine;
}

}  // namespace

TEST(SyncBatchNorm, MatchesBatchNorm2dOnTheGlobalBatch) {
  expect_matches_full_batch({3, 4, 5}, 0.1, nullptr, all_ranks(), uneven_rows);
}

TEST(SyncBatchNorm, MatchesBatchNorm1dOnTheGlobalBatchWithCumulativeAverage) {
  expect_matches_full_batch({6}, std::nullopt, nullptr, all_ranks(), uneven_rows);
}

TEST(SyncBatchNorm, RankWithAnEmptySlice) {
  if (world() == 1) GTEST_SKIP() << "needs two ranks";
  expect_matches_full_batch({2, 3, 3}, 0.1, nullptr, all_ranks(), [](size_t p) { return p == 0 ? 0 : 3; });
}

TEST(SyncBatchNorm, SubgroupsNormalizeOverTheirOwnRanks) {
  // Even ranks form one group, odd ones another; each normalizes over its own ranks' slices.
  std::vector<int> evens, odds;
  for (int r = 0; r < world(); ++r) (r % 2 == 0 ? evens : odds).push_back(r);
  std::shared_ptr<dist::ProcessGroup> even_group = dist::new_group(evens);
  std::shared_ptr<dist::ProcessGroup> odd_group = odds.empty() ? nullptr : dist::new_group(odds);
  const bool even = rank() % 2 == 0;
  expect_matches_full_batch({3, 2, 2}, 0.1, even ? even_group : odd_group, even ? evens : odds, uneven_rows);
}

TEST(SyncBatchNorm, GradcheckFloat64) {
  loom::manual_seed(11 + static_cast<uint64_t>(rank()));  // each rank its own input
  Tensor x = loom::randn({2, 3, 2}, loom::kFloat64) * 1.5 + 0.3;
  Tensor weight = loom::randn({3}, loom::kFloat64), bias = loom::randn({3}, loom::kFloat64);
  for (Tensor* t : {&x, &weight, &bias}) t->requires_grad_();
  // The differentiable path itself (it communicates even in a world of one).
  auto sync = [&] { return nn::functional::sync_batch_norm(x, {}, {}, weight, bias, 0.1, 1e-5); };
  gradcheck_on_every_rank(sync, {x, weight, bias});
  // Second order: the backward's all-reduce is recorded under create_graph.
  loom::manual_seed(12);
  Tensor proj = loom::randn({2, 3, 2}, loom::kFloat64);
  auto input_grad = [&] {
    return loom::autograd::grad({(sync() * proj).sum()}, {x}, {}, std::nullopt, /*create_graph=*/true)[0];
  };
  gradcheck_on_every_rank(input_grad, {x, weight});
  // The module in training mode (BatchNorm's own path in a world of one).
  nn::SyncBatchNorm module(3);
  module->to(loom::kFloat64);
  gradcheck_on_every_rank([&] { return module(x); }, {x, module->weight, module->bias});
}

TEST(SyncBatchNorm, EvalUsesRunningStatsWithoutCommunication) {
  loom::manual_seed(5);
  nn::SyncBatchNorm sync(3);
  nn::BatchNorm2d bn(3);
  for (nn::BatchNormImplBase* m : std::vector<nn::BatchNormImplBase*>{sync.get(), bn.get()}) {
    set_(m->running_mean, loom::tensor({0.5, -1.0, 2.0}));
    set_(m->running_var, loom::tensor({0.25, 4.0, 1.0}));
    set_(m->weight, loom::tensor({1.5, 0.5, -1.0}));
    set_(m->bias, loom::tensor({0.1, 0.2, 0.3}));
  }
  sync->eval();
  bn->eval();
  // A rank-dependent number of calls: a collective in eval would pair calls
  // of different ranks and fail.
  for (int k = 0; k <= rank(); ++k) {
    Tensor x = loom::randn({2, 3, 4, 4});
    Tensor y = sync(x);
    EXPECT_TRUE(y.equal(bn(x)));
    Tensor expected = (x - sync->running_mean.view({1, 3, 1, 1})) / (sync->running_var.view({1, 3, 1, 1}) + 1e-5).sqrt() *
                          sync->weight.view({1, 3, 1, 1}) +
                      sync->bias.view({1, 3, 1, 1});
    expect_close(y, expected, 1e-6, "eval output");
  }
  EXPECT_EQ(sync->num_batches_tracked.item<int64_t>(), 0);
  // Without running statistics eval normalizes with the local batch, as PyTorch.
  nn::SyncBatchNorm untracked(3, 1e-5, 0.1, true, false);
  nn::BatchNorm2d untracked_bn(3, 1e-5, 0.1, true, false);
  untracked->eval();
  untracked_bn->eval();
  for (int k = 0; k <= rank(); ++k) {
    Tensor x = loom::randn({2, 3, 2, 2});
    EXPECT_TRUE(untracked(x).equal(untracked_bn(x)));
  }
  dist::barrier();
}

TEST(SyncBatchNorm, WorldOfOneIsBatchNorm) {
  std::shared_ptr<dist::ProcessGroup> alone = group_of_one();
  ASSERT_EQ(alone->size(), 1);
  loom::manual_seed(21 + static_cast<uint64_t>(rank()));
  Tensor weight = loom::randn({4}), bias = loom::randn({4});
  // The module: BatchNorm's own code, bit for bit.
  nn::SyncBatchNorm sync(4, 1e-5, 0.1, true, true, alone);
  nn::BatchNorm2d bn(4);
  for (nn::BatchNormImplBase* m : std::vector<nn::BatchNormImplBase*>{sync.get(), bn.get()}) {
    set_(m->weight, weight);
    set_(m->bias, bias);
  }
  for (int step = 0; step < 2; ++step) {
    Tensor x = loom::randn({3, 4, 5, 5}) + 1.0, w = loom::randn({3, 4, 5, 5});
    Tensor xa = x.clone(), xb = x.clone();
    xa.requires_grad_();
    xb.requires_grad_();
    Tensor ya = sync(xa), yb = bn(xb);
    (ya * w).sum().backward();
    (yb * w).sum().backward();
    EXPECT_TRUE(ya.equal(yb));
    EXPECT_TRUE(xa.grad().equal(xb.grad()));
    EXPECT_TRUE(sync->weight.grad().equal(bn->weight.grad()));
    EXPECT_TRUE(sync->bias.grad().equal(bn->bias.grad()));
  }
  EXPECT_TRUE(sync->running_mean.equal(bn->running_mean));
  EXPECT_TRUE(sync->running_var.equal(bn->running_var));
  // The communicating path in a group of one: the same formula, within rounding.
  Tensor rm_sync = loom::zeros({4}), rv_sync = loom::ones({4}), rm = loom::zeros({4}), rv = loom::ones({4});
  Tensor wa = weight.clone(), wb = weight.clone();
  wa.requires_grad_();
  wb.requires_grad_();
  Tensor x = loom::randn({3, 4, 5, 5}) * 3.0 - 1.0, w = loom::randn({3, 4, 5, 5});
  Tensor xa = x.clone(), xb = x.clone();
  xa.requires_grad_();
  xb.requires_grad_();
  Tensor ya = nn::functional::sync_batch_norm(xa, rm_sync, rv_sync, wa, bias, 0.1, 1e-5, alone);
  Tensor yb = nn::functional::batch_norm(xb, rm, rv, wb, bias, true, 0.1, 1e-5);
  (ya * w).sum().backward();
  (yb * w).sum().backward();
  expect_close(ya, yb, 1e-6, "functional output");
  expect_close(xa.grad(), xb.grad(), 1e-6, "functional input grad");
  expect_close(wa.grad(), wb.grad(), 1e-6, "functional weight grad");
  expect_close(rm_sync, rm, 1e-6, "functional running_mean");
  expect_close(rv_sync, rv, 1e-6, "functional running_var");
}

TEST(SyncBatchNorm, ConvertSyncBatchnormKeepsParametersAndState) {
  loom::manual_seed(3);
  nn::Sequential model(nn::Conv2d(3, 4, 3), nn::BatchNorm2d(4), nn::ReLU());
  auto bn = model->ptr<nn::BatchNorm2dImpl>(1);
  model(loom::randn({2, 3, 6, 6}));  // moves the running statistics and the batch count
  set_(bn->weight, loom::randn({4}));
  set_(bn->bias, loom::randn({4}));
  bn->eval();  // a child's own flag, kept
  const nn::StateDict before = model->state_dict();
  std::vector<Tensor> values_before;
  for (const auto& [name, t] : before) values_before.push_back(t.clone());

  nn::Sequential converted = nn::SyncBatchNorm::convert_sync_batchnorm(model);
  ASSERT_NE(converted.ptr(), model.ptr());  // a Sequential is rebuilt (Note [Converting to SyncBatchNorm])
  auto sync = converted->ptr<nn::SyncBatchNormImpl>(1);
  EXPECT_EQ(converted[0].get(), model[0].get());
  EXPECT_EQ(converted[2].get(), model[2].get());
  EXPECT_TRUE(converted->is_training());
  EXPECT_FALSE(sync->is_training());
  EXPECT_EQ(sync->num_features, 4);
  EXPECT_EQ(sync->eps, bn->eps);
  EXPECT_EQ(sync->momentum, bn->momentum);
  EXPECT_TRUE(sync->affine);
  EXPECT_TRUE(sync->track_running_stats);
  EXPECT_EQ(sync->process_group, nullptr);
  EXPECT_EQ(loom::test::str(*sync), "SyncBatchNorm(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)");
  // The same tensors under the same names: an optimizer made before still holds the model's parameters.
  const nn::StateDict after = converted->state_dict();
  ASSERT_EQ(loom::test::names(after), loom::test::names(before));
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].second.unsafe_impl(), before[i].second.unsafe_impl()) << after[i].first;
    EXPECT_TRUE(after[i].second.equal(values_before[i])) << after[i].first;
  }
  EXPECT_EQ(sync->num_batches_tracked.item<int64_t>(), 1);
  EXPECT_TRUE(sync->weight.requires_grad());
  // Eval: the same output as before the conversion.
  converted->eval();
  model->eval();
  Tensor x = loom::randn({2, 3, 6, 6});
  EXPECT_TRUE(converted(x).equal(model(x)));
  // Training with the same input on every rank: the global statistics are the local ones.
  converted->train();
  Tensor y_sync = converted(x);
  model->train();
  expect_close(y_sync, model(x), 1e-5, "training output");
}

TEST(SyncBatchNorm, ConvertSyncBatchnormWalksTheTree) {
  // A root BatchNorm becomes a SyncBatchNorm with the group given.
  std::shared_ptr<dist::ProcessGroup> alone = group_of_one();
  auto root = nn::SyncBatchNorm::convert_sync_batchnorm(std::make_shared<nn::BatchNorm1dImpl>(5, 1e-3), alone);
  auto root_sync = std::dynamic_pointer_cast<nn::SyncBatchNormImpl>(root);
  ASSERT_NE(root_sync, nullptr);
  EXPECT_EQ(root_sync->process_group, alone);
  EXPECT_EQ(root_sync->eps, 1e-3);
  // Nested Sequentials are rebuilt; a ModuleDict takes its SyncBatchNorm in
  // place; a SyncBatchNorm and a module shared twice stay what they are.
  nn::BatchNorm1d shared(3);
  nn::SyncBatchNorm already(3);
  nn::ModuleDict heads({{"norm", nn::BatchNorm1d(3, 1e-5, 0.1, false, false)}});
  nn::Sequential tree(nn::Linear(3, 3), nn::Sequential(shared, nn::ReLU()), shared, already, heads);
  nn::Sequential converted = nn::SyncBatchNorm::convert_sync_batchnorm(tree);
  auto inner = converted->ptr<nn::SequentialImpl>(1);
  EXPECT_NE(inner.get(), tree[1].get());
  EXPECT_NE(std::dynamic_pointer_cast<nn::SyncBatchNormImpl>(inner->at(0)), nullptr);
  EXPECT_EQ(inner->at(0).get(), converted[2].get());
  EXPECT_EQ(converted[3].get(), already.get());
  EXPECT_EQ(converted[4].get(), heads.get());
  auto head = heads->ptr<nn::SyncBatchNormImpl>("norm");
  EXPECT_FALSE(head->affine);
  EXPECT_FALSE(head->track_running_stats);
  EXPECT_EQ(loom::test::names(converted->state_dict()), loom::test::names(tree->state_dict()));
}

namespace {
// A module that calls its BatchNorm through a member, which a conversion cannot reach.
class BlockImpl : public nn::Module {
 public:
  BlockImpl() : Module("Block") {
    heads = register_module("heads", nn::ModuleDict({{"norm", nn::BatchNorm1d(2)}}));
    bn = register_module("bn", nn::BatchNorm2d(2));
  }
  Tensor forward(const Tensor& x) override { return bn(x); }
  nn::ModuleDict heads{nullptr};
  nn::BatchNorm2d bn{nullptr};
};
LOOM_MODULE(Block);
}  // namespace

TEST(SyncBatchNorm, ConvertSyncBatchnormRefusesAModuleItCannotReach) {
  nn::Sequential model(nn::Identity{}, Block{});
  EXPECT_TRUE(loom::test::throws_with([&] { nn::SyncBatchNorm::convert_sync_batchnorm(model); },
                                      {"cannot replace the child \"bn\" of the Block at \"1\"", "nn::SyncBatchNorm"}));
  // Nothing changed, not even the ModuleDict that could have been converted.
  auto block = model->ptr<BlockImpl>(1);
  EXPECT_NE(std::dynamic_pointer_cast<nn::BatchNorm1dImpl>(block->heads["norm"]), nullptr);
}

TEST(SyncBatchNorm, BadInputNamesTheShapes) {
  using loom::test::error_of;
  nn::SyncBatchNorm sync(3);
  EXPECT_ERROR_HAS(sync(loom::randn({2, 4, 5})),
                   "SyncBatchNorm: expected input with 3 channels at dim 1 (num_features), got shape [2, 4, 5]");
  EXPECT_ERROR_HAS(sync(loom::randn({5})),
                   "SyncBatchNorm: expected input of shape (N, C) or (N, C, *), got 1D input of shape [5]");
  EXPECT_ERROR_HAS(nn::functional::sync_batch_norm(loom::randn({2, 3}), {}, {}, loom::ones({4})),
                   "sync_batch_norm: expected weight of shape [3] for input of shape [2, 3], got shape [4]");
  EXPECT_ERROR_HAS(nn::functional::sync_batch_norm(loom::randn({2}), {}, {}),
                   "sync_batch_norm: expected input of shape (N, C) or (N, C, *), got shape [2]");
  // One value per channel over the whole group is an error on every rank alike.
  Tensor one_row = loom::randn({1, 3});
  if (world() == 1)
    EXPECT_ERROR_HAS(nn::functional::sync_batch_norm(one_row, {}, {}),
                     "sync_batch_norm: expected more than 1 value per channel over the 1 ranks of the group");
  else
    EXPECT_EQ(nn::functional::sync_batch_norm(one_row, {}, {}).sizes(), one_row.sizes());
}
