// nn::DistributedDataParallel under mpirun -np 2 / -np 4 (and alone): N
// ranks, each with B/N of a batch, end where one process with the whole
// batch ends. The reference runs on every rank, locally, from the same
// initial weights; the data comes from a fixed seed, so every rank knows the
// whole batch and takes its own slice.
#include <gtest/gtest.h>

#include "loom/loom.h"

namespace dist = loom::distributed;
namespace F = loom::nn::functional;
using loom::Tensor;

namespace {

int rank() { return dist::get_rank(); }
int world() { return dist::get_world_size(); }

constexpr int64_t kBatch = 16;  // divisible by 1, 2 and 4

std::shared_ptr<loom::nn::SequentialImpl> make_mlp(uint64_t seed) {
  loom::manual_seed(seed);
  loom::nn::Sequential net(loom::nn::Linear(13, 31), loom::nn::ReLU(), loom::nn::Linear(31, 17), loom::nn::Tanh(),
                           loom::nn::Linear(17, 7));
  return net.ptr();
}

struct Data {
  Tensor x, y;
};

Data batch(int step) {
  loom::Generator g(1000 + static_cast<uint64_t>(step));
  Data d;
  d.x = loom::randn({kBatch, 13}, {}, g);
  d.y = loom::randint(0, 7, {kBatch}, loom::TensorOptions().dtype(loom::kInt64), g);
  return d;
}

Data slice(const Data& d) {
  const int64_t n = kBatch / world();
  return {d.x.narrow(0, rank() * n, n).contiguous(), d.y.narrow(0, rank() * n, n).contiguous()};
}

void copy_weights(loom::nn::Module& from, loom::nn::Module& to) { to.load_state_dict(from.state_dict()); }

void expect_close(loom::nn::Module& a, loom::nn::Module& b, double rtol) {
  auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    const auto va = pa[i].to_vector<float>(), vb = pb[i].to_vector<float>();
    for (size_t k = 0; k < va.size(); ++k)
      ASSERT_NEAR(va[k], vb[k], rtol * std::max(1.0f, std::abs(vb[k]))) << "parameter " << i << " element " << k;
  }
}

// Every rank's parameters equal rank 0's, bit for bit.
void expect_replicas_identical(loom::nn::Module& m) {
  for (const Tensor& p : m.parameters()) {
    Tensor mine = p.detach().clone(), root = p.detach().clone();
    dist::broadcast(root, 0);
    const auto a = mine.to_vector<float>(), b = root.to_vector<float>();
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "rank " << rank();
  }
}

template <typename MakeOpt>
void train_and_compare(MakeOpt make_opt, double bucket_mb) {
  auto model = make_mlp(100 + static_cast<uint64_t>(rank()));  // different on every rank until DDP broadcasts
  loom::nn::DistributedDataParallelOptions o;
  o.bucket_cap_mb = bucket_mb;
  loom::nn::DistributedDataParallel ddp(model, o);
  auto reference = make_mlp(7);
  copy_weights(*model, *reference);  // rank 0's initial weights, everywhere
  auto opt = make_opt(model->parameters());
  auto ref_opt = make_opt(reference->parameters());
  for (int step = 0; step < 10; ++step) {
    const Data all = batch(step), mine = slice(all);
    Tensor loss = F::cross_entropy(ddp.forward(mine.x), mine.y);
    opt->zero_grad();
    loss.backward();
    opt->step();
    Tensor ref_loss = F::cross_entropy(reference->forward(all.x), all.y);
    ref_opt->zero_grad();
    ref_loss.backward();
    ref_opt->step();
  }
  // Not bitwise: the averaged gradient sums per-rank means, the reference
  // one mean over the whole batch (another summation order).
  expect_close(*model, *reference, 1e-5);
  expect_replicas_identical(*model);
}

}  // namespace

TEST(DistributedDataParallel, EqualsOneProcessWithTheWholeBatchSgdMomentum) {
  for (double bucket_mb : {25.0, 0.001}) {  // one bucket; a bucket per parameter or so
    train_and_compare(
        [](std::vector<Tensor> p) {
          return std::make_unique<loom::optim::SGD>(p, loom::optim::SGDOptions(0.1).momentum(0.9));
        },
        bucket_mb);
  }
}

TEST(DistributedDataParallel, EqualsOneProcessWithTheWholeBatchAdamW) {
  train_and_compare(
      [](std::vector<Tensor> p) {
        return std::make_unique<loom::optim::AdamW>(p, loom::optim::AdamWOptions(1e-2).weight_decay(0.05));
      },
      0.002);
}

TEST(DistributedDataParallel, BucketsFollowReverseRegistrationOrderUnderTheCap) {
  auto model = make_mlp(3);
  loom::nn::DistributedDataParallelOptions o;
  o.bucket_cap_mb = 2.0 * 31 * 17 * 4 / (1024.0 * 1024.0);  // room for about two middle weights
  loom::nn::DistributedDataParallel ddp(model, o);
  const auto buckets = ddp.bucket_assignment();
  std::vector<int64_t> order;
  for (const auto& b : buckets) order.insert(order.end(), b.begin(), b.end());
  const int64_t n = static_cast<int64_t>(model->parameters().size());
  ASSERT_EQ(static_cast<int64_t>(order.size()), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], n - 1 - i);
  EXPECT_GT(buckets.size(), 1u);
}

TEST(DistributedDataParallel, NoSyncAccumulationEqualsTheLargeBatch) {
  auto model = make_mlp(5);
  loom::nn::DistributedDataParallel ddp(model);
  auto reference = make_mlp(5);
  copy_weights(*model, *reference);
  loom::optim::SGD opt(model->parameters(), loom::optim::SGDOptions(0.1).momentum(0.9));
  loom::optim::SGD ref_opt(reference->parameters(), loom::optim::SGDOptions(0.1).momentum(0.9));
  for (int step = 0; step < 4; ++step) {
    // Two micro-batches per rank; the first under no_sync.
    const Data a = batch(2 * step), b = batch(2 * step + 1);
    const Data ma = slice(a), mb = slice(b);
    opt.zero_grad();
    {
      auto guard = ddp.no_sync();
      (F::cross_entropy(ddp.forward(ma.x), ma.y) * 0.5).backward();
    }
    (F::cross_entropy(ddp.forward(mb.x), mb.y) * 0.5).backward();
    opt.step();
    Tensor x = loom::cat({a.x, b.x}, 0), y = loom::cat({a.y, b.y}, 0);
    ref_opt.zero_grad();
    F::cross_entropy(reference->forward(x), y).backward();
    ref_opt.step();
  }
  expect_close(*model, *reference, 1e-5);
  expect_replicas_identical(*model);
}

namespace {
// Uses `head_b` on rank 0 only and `unused` never.
struct Branchy : loom::nn::Module {
  loom::nn::Linear body{4, 6}, head_a{6, 3}, head_b{6, 3}, unused{6, 3};
  Branchy() : Module("Branchy") {
    register_module("body", body);
    register_module("head_a", head_a);
    register_module("head_b", head_b);
    register_module("unused", unused);
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = body(x).relu();
    return rank() == 0 ? head_a(h) + head_b(h) : head_a(h);
  }
};
}  // namespace

TEST(DistributedDataParallel, UnusedParametersDoNotHang) {
  loom::manual_seed(11);
  auto model = std::make_shared<Branchy>();
  loom::nn::DistributedDataParallelOptions o;
  o.find_unused_parameters = true;
  o.bucket_cap_mb = 0.0001;  // several buckets, some holding unused parameters
  loom::nn::DistributedDataParallel ddp(model, o);
  Tensor x = loom::randn({8, 4});
  model->zero_grad();
  ddp.forward(x).sum().backward();
  EXPECT_FALSE(model->unused->weight.grad().defined()) << "a parameter no rank used keeps no gradient";
  // head_b: rank 0's gradient averaged with zeros from the others.
  Tensor local_b = model->head_b->weight.grad().clone();
  ASSERT_TRUE(local_b.defined());
  Tensor r0 = loom::zeros_like(local_b);
  {
    // Rank 0's own gradient of head_b, recomputed locally.
    loom::nn::Linear b2(6, 3);
    b2->load_state_dict(model->head_b->state_dict());
    Tensor h = model->body(x).relu().detach();
    b2(h).sum().backward();
    r0 = b2->weight.grad();
  }
  if (rank() == 0) {
    const auto got = local_b.to_vector<float>(), want = (r0 / static_cast<double>(world())).to_vector<float>();
    for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], want[k], 1e-6);
  }
  EXPECT_EQ(ddp.last_stats().unused_parameters, rank() == 0 ? 2 : 4);
}

TEST(DistributedDataParallel, UnusedParameterWithoutTheOptionIsAnError) {
  loom::manual_seed(12);
  auto model = std::make_shared<Branchy>();
  loom::nn::DistributedDataParallel ddp(model);
  if (world() > 1) {
    // Every rank must see the error (rank 0 uses head_b, the others do not,
    // and none uses `unused`).
    try {
      ddp.forward(loom::randn({2, 4})).sum().backward();
      ADD_FAILURE() << "no error for a parameter without a gradient";
    } catch (const loom::Error& e) {
      EXPECT_NE(std::string(e.what()).find("unused.weight"), std::string::npos) << e.what();
    }
  }
  dist::barrier();
}

TEST(DistributedDataParallel, BuffersComeFromRankZero) {
  loom::manual_seed(13);
  auto bn = std::make_shared<loom::nn::BatchNorm1dImpl>(3);
  loom::nn::DistributedDataParallel ddp(bn);
  // Each rank's batch differs, so its running mean does too; the next forward
  // starts from rank 0's.
  ddp.forward(loom::randn({5, 3}) + static_cast<double>(rank()));
  Tensor mine = bn->running_mean.clone();
  Tensor root = mine.clone();
  dist::broadcast(root, 0);
  ddp.sync_buffers();
  const auto got = bn->running_mean.to_vector<float>(), want = root.to_vector<float>();
  for (size_t k = 0; k < got.size(); ++k) EXPECT_EQ(got[k], want[k]);
}

TEST(DistributedDataParallel, WithoutOverlapGivesTheSameResult) {
  auto a = make_mlp(21), b = make_mlp(21);
  loom::nn::DistributedDataParallelOptions late;
  late.overlap = false;
  late.bucket_cap_mb = 0.001;
  loom::nn::DistributedDataParallel da(a), db(b, late);
  const Data d = slice(batch(0));
  F::cross_entropy(da.forward(d.x), d.y).backward();
  F::cross_entropy(db.forward(d.x), d.y).backward();
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    const auto ga = pa[i].grad().to_vector<float>(), gb = pb[i].grad().to_vector<float>();
    ASSERT_EQ(0, std::memcmp(ga.data(), gb.data(), ga.size() * sizeof(float)));
  }
  EXPECT_GT(db.last_stats().buckets, 1);
}
