// optim::ZeroRedundancyOptimizer (ZeRO-1) under mpirun -np 2 / -np 4 (and
// alone, the "local" backend): N ranks, each with B/N of a batch and 1/N of
// the optimizer state, end where the plain optimizer with the whole batch
// ends. The reference runs on every rank, locally, from the same initial
// weights; the data comes from a fixed seed, so every rank knows the whole
// batch and takes its own slice.
//
// Why a tolerance and not bitwise: the plain reference's gradient is that of
// the mean loss over the whole batch; ZeRO's is the average (reduce-scatter)
// of the ranks' gradients of their slices' mean losses. The two are equal as
// real numbers (equal slices) but summed in another order, so they differ in
// the last bits, and Adam's normalization carries that into the parameters.
// With one rank the gradients are the same, and so is every bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "loom/loom.h"
#include "test_util.h"

namespace dist = loom::distributed;
namespace optim = loom::optim;
using loom::Tensor;

namespace {

int rank() { return dist::get_rank(); }
int world() { return dist::get_world_size(); }

// A 13-31-7 MLP with biases: 658 elements, which 4 does not divide (and the
// two-group split, 434 and 224, leaves padding for 4 ranks too).
constexpr int64_t kIn = 13, kHidden = 31, kOut = 7;
constexpr int64_t kBatch = 16;  // divisible by 1, 2 and 4

// w1 (31, 13), b1 (31), w2 (7, 31), b2 (7); the same on every rank.
std::vector<Tensor> make_params() {
  loom::Generator g(7);
  std::vector<Tensor> ps = {loom::randn({kHidden, kIn}, {}, g) * 0.3, loom::randn({kHidden}, {}, g) * 0.1,
                            loom::randn({kOut, kHidden}, {}, g) * 0.2, loom::randn({kOut}, {}, g) * 0.1};
  for (Tensor& p : ps) p.requires_grad_(true);
  return ps;
}

// Independent leaves with the same values.
std::vector<Tensor> copy_params(const std::vector<Tensor>& ps) {
  std::vector<Tensor> out;
  for (const Tensor& p : ps) out.push_back(p.detach().clone().requires_grad_(true));
  return out;
}

struct Data {
  Tensor x, y;
};

// The global batch of step `step`.
Data batch(int step) {
  loom::Generator g(1000 + static_cast<uint64_t>(step));
  Data d;
  d.x = loom::randn({kBatch, kIn}, {}, g);
  d.y = loom::randn({kBatch, kOut}, {}, g);
  return d;
}

// Rows [begin, begin + count) of the batch: the mean loss over them, backward.
void backward_on(const std::vector<Tensor>& ps, const Data& d, int64_t begin, int64_t count) {
  Tensor x = d.x.narrow(0, begin, count), y = d.y.narrow(0, begin, count);
  Tensor h = loom::tanh(loom::linear(x, ps[0], ps[1]));
  Tensor out = loom::linear(h, ps[2], ps[3]);
  (out - y).square().mean().backward();
}

// Steps [from, to): every rank on its slice (ZeRO) or on the whole batch (the
// plain reference). `rank_in`/`ranks` slice for a subgroup.
void train(optim::Optimizer& opt, const std::vector<Tensor>& ps, int from, int to, bool sliced,
           int rank_in = rank(), int ranks = world()) {
  for (int step = from; step < to; ++step) {
    opt.zero_grad();
    const int64_t count = sliced ? kBatch / ranks : kBatch;
    backward_on(ps, batch(step), sliced ? rank_in * count : 0, count);
    opt.step();
  }
}

// Every element within rtol (plus a small atol for elements near zero).
void expect_close(const Tensor& got, const Tensor& want, const std::string& what, double rtol = 1e-5) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  EXPECT_TRUE(loom::allclose(got, want, rtol, 1e-7))
      << what << ": max |difference| " << (got - want).abs().max().item<double>();
}

// With one rank both see the same gradient, so the parameters are the same
// bit for bit (unless `bitwise_alone` is off).
void expect_params_close(const std::vector<Tensor>& got, const std::vector<Tensor>& want,
                         bool bitwise_alone = true) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    if (world() == 1 && bitwise_alone) {
      EXPECT_TRUE(loom::equal(got[k], want[k])) << "parameter " << k << " (one rank: bitwise)";
    } else {
      expect_close(got[k], want[k], "parameter " + std::to_string(k));
    }
  }
}

// Rank 0's parameters, broadcast, equal every rank's bit for bit.
void expect_replicas_identical(const std::vector<Tensor>& ps) {
  for (size_t k = 0; k < ps.size(); ++k) {
    Tensor root = ps[k].detach().clone();
    dist::broadcast(root, 0);
    EXPECT_TRUE(loom::equal(root, ps[k])) << "parameter " << k << " differs from rank 0's on rank " << rank();
  }
}

// The keys, shapes and dtypes, the hyperparameters and steps are the same;
// the other state within rtol. A loaded parameter state lists its entries
// by name (Optimizer::load_state_dict), a stepped one in the order the step
// made them: unless same_order, the keys are compared sorted.
void expect_state_dicts_match(loom::StateDict got, loom::StateDict want, bool bitwise, bool same_order = false) {
  if (!same_order) {
    auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
    std::stable_sort(got.begin(), got.end(), by_key);
    std::stable_sort(want.begin(), want.end(), by_key);
  }
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    const auto& [key, t] = got[k];
    ASSERT_EQ(key, want[k].first);
    ASSERT_EQ(t.sizes(), want[k].second.sizes()) << key;
    ASSERT_EQ(t.dtype(), want[k].second.dtype()) << key;
    const bool exact = bitwise || key.rfind("param_groups.", 0) == 0 || key.size() < 5 ||
                       key.compare(key.size() - 5, 5, ".step") == 0;
    if (exact) EXPECT_TRUE(loom::equal(t, want[k].second)) << key;
    else expect_close(t, want[k].second, key);
  }
}

optim::AdamWOptions adamw_options(double weight_decay) {
  return optim::AdamWOptions(1e-2).betas({0.9, 0.95}).weight_decay(weight_decay);
}

// One group of every parameter, or two with their own learning rates.
std::vector<optim::ParamGroup> groups_of(const std::vector<Tensor>& ps, bool two_groups, double weight_decay) {
  if (!two_groups) return {optim::ParamGroup(ps)};
  std::vector<optim::ParamGroup> groups;
  groups.emplace_back(std::vector<Tensor>{ps[0], ps[1]});  // the defaults
  groups.emplace_back(std::vector<Tensor>{ps[2], ps[3]}, adamw_options(weight_decay).lr(3e-3));
  return groups;
}

}  // namespace

TEST(Zero, MatchesAdamW) {
  struct Case {
    double weight_decay;
    bool two_groups;
  };
  for (const Case c : {Case{0.0, false}, Case{0.1, false}, Case{0.05, true}}) {
    SCOPED_TRACE("weight_decay " + std::to_string(c.weight_decay) + (c.two_groups ? ", two groups" : ""));
    const std::vector<Tensor> init = make_params();
    std::vector<Tensor> zp = copy_params(init), pp = copy_params(init);
    optim::ZeroRedundancyOptimizer zero(groups_of(zp, c.two_groups, c.weight_decay), adamw_options(c.weight_decay));
    optim::AdamW plain(groups_of(pp, c.two_groups, c.weight_decay), adamw_options(c.weight_decay));
    EXPECT_STREQ(zero.name(), "AdamW");
    train(zero, zp, 0, 10, true);
    train(plain, pp, 0, 10, false);
    expect_params_close(zp, pp);
    expect_replicas_identical(zp);
    // Each rank holds its shard's state only: ceil(P / W) elements per entry.
    for (size_t g = 0; g < zero.param_groups().size(); ++g) {
      int64_t numel = 0;
      for (const Tensor& p : zero.param_groups()[g].params()) numel += p.numel();
      const int64_t shard = (numel + world() - 1) / world();
      EXPECT_EQ(zero.shard(g).sizes(), (std::vector<int64_t>{shard}));
      const optim::ParamState* s = zero.local_optimizer().state_of(zero.shard(g));
      ASSERT_NE(s, nullptr);
      EXPECT_EQ(s->at("exp_avg").numel(), shard);
    }
  }
}

TEST(Zero, MatchesSgdWithMomentum) {
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> zp = copy_params(init), pp = copy_params(init);
  const auto options = optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-3);
  optim::ZeroRedundancyOptimizer zero(zp, [&](std::vector<optim::ParamGroup> groups) {
    return std::make_unique<optim::SGD>(std::move(groups), options);
  });
  optim::SGD plain(pp, options);
  train(zero, zp, 0, 10, true);
  train(plain, pp, 0, 10, false);
  expect_params_close(zp, pp);
  expect_replicas_identical(zp);
  expect_state_dicts_match(zero.state_dict(), plain.state_dict(), world() == 1, true);
}

TEST(Zero, StateDictIsThePlainOptimizers) {
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> zp = copy_params(init), pp = copy_params(init);
  optim::ZeroRedundancyOptimizer zero(groups_of(zp, true, 0.05), adamw_options(0.05));
  optim::AdamW plain(groups_of(pp, true, 0.05), adamw_options(0.05));
  // Before any step neither holds per-parameter state.
  expect_state_dicts_match(zero.state_dict(), plain.state_dict(), true, true);
  train(zero, zp, 0, 10, true);
  train(plain, pp, 0, 10, false);
  const loom::StateDict sd = zero.state_dict();
  expect_state_dicts_match(sd, plain.state_dict(), world() == 1, true);
  // Every rank got the whole of it.
  for (const auto& [key, t] : sd) {
    Tensor root = t.clone();
    dist::broadcast(root, 0);
    EXPECT_TRUE(loom::equal(root, t)) << key << " differs from rank 0's on rank " << rank();
  }
}

TEST(Zero, StateDictRoundTripContinuesIdentically) {
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> straight = copy_params(init), first = copy_params(init);
  optim::ZeroRedundancyOptimizer uninterrupted(groups_of(straight, true, 0.05), adamw_options(0.05));
  train(uninterrupted, straight, 0, 10, true);

  optim::ZeroRedundancyOptimizer before(groups_of(first, true, 0.05), adamw_options(0.05));
  train(before, first, 0, 5, true);
  // Through Optimizer&, as a checkpointing loop holds it.
  const loom::StateDict saved = static_cast<const optim::Optimizer&>(before).state_dict();
  // A fresh run: new parameter tensors, other learning rates (the dict restores them).
  std::vector<Tensor> resumed = copy_params(first);
  optim::ZeroRedundancyOptimizer after(groups_of(resumed, true, 0.05), adamw_options(0.05).lr(0.5));
  static_cast<optim::Optimizer&>(after).load_state_dict(saved);
  EXPECT_EQ(after.param_groups()[0].options().get_lr(), 1e-2);
  EXPECT_EQ(after.param_groups()[1].options().get_lr(), 3e-3);
  expect_state_dicts_match(after.state_dict(), saved, true);
  train(after, resumed, 5, 10, true);
  for (size_t k = 0; k < resumed.size(); ++k) EXPECT_TRUE(loom::equal(resumed[k], straight[k])) << "parameter " << k;
  expect_state_dicts_match(after.state_dict(), uninterrupted.state_dict(), true);
}

TEST(Zero, LoadsThePlainOptimizersStateDictAndBack) {
  const std::vector<Tensor> init = make_params();
  {
    SCOPED_TRACE("AdamW -> ZeRO");
    std::vector<Tensor> pp = copy_params(init);
    optim::AdamW plain(groups_of(pp, true, 0.05), adamw_options(0.05));
    train(plain, pp, 0, 5, false);
    std::vector<Tensor> zp = copy_params(pp);
    optim::ZeroRedundancyOptimizer zero(groups_of(zp, true, 0.05), adamw_options(0.05));
    zero.load_state_dict(plain.state_dict());
    expect_state_dicts_match(zero.state_dict(), plain.state_dict(), true);
    train(plain, pp, 5, 10, false);
    train(zero, zp, 5, 10, true);
    expect_params_close(zp, pp);
  }
  {
    SCOPED_TRACE("ZeRO -> AdamW");
    std::vector<Tensor> zp = copy_params(init);
    optim::ZeroRedundancyOptimizer zero(groups_of(zp, true, 0.05), adamw_options(0.05));
    train(zero, zp, 0, 5, true);
    std::vector<Tensor> pp = copy_params(zp);
    optim::AdamW plain(groups_of(pp, true, 0.05), adamw_options(0.05));
    plain.load_state_dict(zero.state_dict());
    expect_state_dicts_match(plain.state_dict(), zero.state_dict(), true);
    train(plain, pp, 5, 10, false);
    train(zero, zp, 5, 10, true);
    expect_params_close(zp, pp);
  }
}

TEST(Zero, LearningRateChangesReachTheShards) {
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> zp = copy_params(init), pp = copy_params(init);
  optim::ZeroRedundancyOptimizer zero(groups_of(zp, true, 0.1), adamw_options(0.1));
  optim::AdamW plain(groups_of(pp, true, 0.1), adamw_options(0.1));
  train(zero, zp, 0, 3, true);
  train(plain, pp, 0, 3, false);

  // lr 0: AdamW leaves every parameter as it is, weight decay included.
  for (optim::ParamGroup& g : zero.param_groups()) g.options().set_lr(0.0);
  const std::vector<Tensor> frozen = copy_params(zp);
  train(zero, zp, 3, 4, true);
  for (size_t k = 0; k < zp.size(); ++k) EXPECT_TRUE(loom::equal(zp[k], frozen[k])) << "parameter " << k;
  for (optim::ParamGroup& g : plain.param_groups()) g.options().set_lr(0.0);
  train(plain, pp, 3, 4, false);

  // A scheduler drives both through Optimizer&.
  for (auto* opt : std::vector<optim::Optimizer*>{&zero, &plain}) {
    opt->param_groups()[0].options().set_lr(2e-2);
    opt->param_groups()[1].options().set_lr(5e-3);
  }
  optim::StepLR zero_schedule(zero, 2, 0.5), plain_schedule(plain, 2, 0.5);
  for (int step = 4; step < 10; ++step) {
    train(zero, zp, step, step + 1, true);
    train(plain, pp, step, step + 1, false);
    zero_schedule.step();
    plain_schedule.step();
  }
  EXPECT_EQ(zero.param_groups()[0].options().get_lr(), plain.param_groups()[0].options().get_lr());
  expect_params_close(zp, pp);
  expect_replicas_identical(zp);
}

TEST(Zero, ClipsTheAveragedGradient) {
  // ZeRO clips inside step(), after the average; the reference clips the
  // whole batch's gradient (the same average) with clip_grad_norm_.
  constexpr double kMaxNorm = 0.05;
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> zp = copy_params(init), pp = copy_params(init);
  optim::ZeroRedundancyOptimizer zero(groups_of(zp, true, 0.05), adamw_options(0.05));
  zero.set_max_grad_norm(kMaxNorm);
  optim::AdamW plain(groups_of(pp, true, 0.05), adamw_options(0.05));
  for (int step = 0; step < 8; ++step) {
    zero.zero_grad();
    plain.zero_grad();
    backward_on(zp, batch(step), rank() * (kBatch / world()), kBatch / world());
    backward_on(pp, batch(step), 0, kBatch);
    const double norm = loom::nn::utils::clip_grad_norm_(pp, kMaxNorm);
    if (step == 0) {
      EXPECT_GT(norm, 2 * kMaxNorm);  // it does clip
    }
    zero.step();
    plain.step();
  }
  // The norms are summed in another order (ZeRO: float64 over the shards).
  expect_params_close(zp, pp, /*bitwise_alone=*/false);
  expect_replicas_identical(zp);
}

TEST(Zero, MissingGradientsCountAsZeros) {
  // b2 never gets a gradient: ZeRO steps it as if its gradient were zeros
  // (it decays), as the plain optimizer does with explicit zeros.
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> zp = copy_params(init), pp = copy_params(init);
  optim::ZeroRedundancyOptimizer zero(zp, adamw_options(0.1));
  optim::AdamW plain(pp, adamw_options(0.1));
  for (int step = 0; step < 4; ++step) {
    zero.zero_grad();
    plain.zero_grad();
    backward_on(zp, batch(step), rank() * (kBatch / world()), kBatch / world());
    backward_on(pp, batch(step), 0, kBatch);
    zp[3].set_grad(Tensor());
    pp[3].set_grad(loom::zeros_like(pp[3]));
    zero.step();
    plain.step();
  }
  EXPECT_FALSE(loom::equal(zp[3], init[3]));
  expect_params_close(zp, pp);
}

TEST(Zero, AddParamGroup) {
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> zp = copy_params(init), lazy = copy_params(init), pp = copy_params(init);
  optim::ZeroRedundancyOptimizer zero(std::vector<Tensor>{zp[0], zp[1]}, adamw_options(0.05));
  optim::ZeroRedundancyOptimizer through_base(std::vector<Tensor>{lazy[0], lazy[1]}, adamw_options(0.05));
  optim::AdamW plain(std::vector<Tensor>{pp[0], pp[1]}, adamw_options(0.05));
  zero.add_param_group(optim::ParamGroup({zp[2], zp[3]}, adamw_options(0.05).lr(3e-3)));
  // Through Optimizer&: sharded at the next step.
  static_cast<optim::Optimizer&>(through_base).add_param_group(optim::ParamGroup({lazy[2], lazy[3]},
                                                                                 adamw_options(0.05).lr(3e-3)));
  plain.add_param_group(optim::ParamGroup({pp[2], pp[3]}, adamw_options(0.05).lr(3e-3)));
  train(zero, zp, 0, 6, true);
  train(through_base, lazy, 0, 6, true);
  train(plain, pp, 0, 6, false);
  expect_params_close(zp, pp);
  for (size_t k = 0; k < zp.size(); ++k) EXPECT_TRUE(loom::equal(zp[k], lazy[k])) << "parameter " << k;
}

TEST(Zero, OnASubgroup) {
  // Ranks 0 and 1 (rank 0 alone on one rank) train together; the others
  // are outside the group and get no optimizer.
  std::vector<int> members = {0};
  if (world() > 1) members.push_back(1);
  std::shared_ptr<dist::ProcessGroup> sub = dist::new_group(members);
  if (!sub) return;
  const std::vector<Tensor> init = make_params();
  std::vector<Tensor> zp = copy_params(init), pp = copy_params(init);
  optim::ZeroRedundancyOptimizer zero(zp, adamw_options(0.05), sub.get());
  optim::AdamW plain(pp, adamw_options(0.05));
  EXPECT_EQ(zero.shard(0).numel(), (658 + sub->size() - 1) / sub->size());
  train(zero, zp, 0, 6, true, sub->rank(), sub->size());
  train(plain, pp, 0, 6, false);
  if (sub->size() == 1) {
    for (size_t k = 0; k < zp.size(); ++k) EXPECT_TRUE(loom::equal(zp[k], pp[k])) << "parameter " << k;
  } else {
    for (size_t k = 0; k < zp.size(); ++k) expect_close(zp[k], pp[k], "parameter " + std::to_string(k));
  }
}

TEST(Zero, Errors) {
  using loom::test::throws_with;
  const std::vector<Tensor> init = make_params();
  {
    std::vector<Tensor> mixed = {init[0].detach().clone().requires_grad_(true),
                                 init[1].detach().to(loom::kFloat64).requires_grad_(true)};
    EXPECT_TRUE(throws_with([&] { optim::ZeroRedundancyOptimizer zero(mixed, adamw_options(0.0)); },
                            {"ZeroRedundancyOptimizer", "parameter 1 of group 0", "float64", "must share a dtype"}));
  }
  EXPECT_TRUE(throws_with(
      [&] {
        optim::ZeroRedundancyOptimizer zero(copy_params(init), [](std::vector<optim::ParamGroup>) {
          return std::make_unique<optim::AdamW>(std::vector<Tensor>{loom::zeros({3}).requires_grad_(true)});
        });
      },
      {"make_local must return an optimizer over exactly the parameter groups"}));

  std::vector<Tensor> zp = copy_params(init);
  optim::ZeroRedundancyOptimizer zero(groups_of(zp, true, 0.05), adamw_options(0.05));
  train(zero, zp, 0, 2, true);
  const loom::StateDict good = zero.state_dict();
  auto with = [&](const std::string& key, Tensor value) {
    loom::StateDict sd = good;
    for (auto& [k, t] : sd)
      if (k == key) t = value;
    return sd;
  };
  EXPECT_TRUE(throws_with([&] { zero.load_state_dict(with("state.1.exp_avg", loom::zeros({30}))); },
                          {"\"state.1.exp_avg\" has shape [30]", "parameter 1 has shape [31]"}));
  EXPECT_TRUE(throws_with([&] { zero.load_state_dict(with("state.2.step", loom::scalar_tensor(7.0, loom::kFloat64))); },
                          {"\"state.3.step\" is 2 but \"state.2.step\" of the same group is 7"}));
  {
    loom::StateDict sd;
    for (const auto& [k, t] : good)
      if (k.rfind("state.3.", 0) != 0) sd.emplace_back(k, t);
    EXPECT_TRUE(throws_with([&] { zero.load_state_dict(sd); }, {"has state but the group's parameter at position 1"}));
  }
  {
    optim::AdamW one_group(copy_params(init), adamw_options(0.0));
    EXPECT_TRUE(throws_with([&] { zero.load_state_dict(one_group.state_dict()); },
                            {"group 0: 4 parameters saved, 2 in the optimizer"}));
  }
  EXPECT_TRUE(throws_with(
      [&] { zero.load_state_dict(with("param_groups.0.lr", loom::scalar_tensor(-1.0, loom::kFloat64))); },
      {"Invalid learning rate"}));
  EXPECT_TRUE(throws_with([&] { zero.set_max_grad_norm(-1); }, {"max_grad_norm must be >= 0"}));
  // Nothing changed: the failed loads left the state as it was.
  expect_state_dicts_match(zero.state_dict(), good, true);
}
