// loom::distributed's collectives, run by every rank under `mpirun -np 2`
// and `-np 4` (and alone, as the "local" backend). Values are integers, so
// every reduction is exact in every dtype and the expected result is
// computed on each rank without communication.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "loom/loom.h"
#include "loom/distributed.h"

namespace dist = loom::distributed;
using loom::Tensor;

namespace {

int rank() { return dist::get_rank(); }
int world() { return dist::get_world_size(); }

// Element i of rank r's tensor: a small integer (products stay exact).
int64_t value(int r, int64_t i) { return 1 + (r + i) % 3; }

Tensor filled(int r, int64_t n, loom::DType dt) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<double>(value(r, i));
  return loom::tensor(v).to(dt);
}

double expected(dist::ReduceOp op, int64_t i) {
  double acc = op == dist::ReduceOp::Product ? 1 : (op == dist::ReduceOp::Max ? -1e300 : (op == dist::ReduceOp::Min ? 1e300 : 0));
  for (int r = 0; r < world(); ++r) {
    const double x = static_cast<double>(value(r, i));
    switch (op) {
      case dist::ReduceOp::Sum:
      case dist::ReduceOp::Avg: acc += x; break;
      case dist::ReduceOp::Max: acc = std::max(acc, x); break;
      case dist::ReduceOp::Min: acc = std::min(acc, x); break;
      case dist::ReduceOp::Product: acc *= x; break;
    }
  }
  return op == dist::ReduceOp::Avg ? acc / world() : acc;
}

std::vector<double> as_doubles(const Tensor& t) { return t.to(loom::kFloat64).contiguous().to_vector<double>(); }

const std::vector<int64_t> kSizes = {0, 1, 1000003};
const std::vector<loom::DType> kDTypes = {loom::kFloat32, loom::kFloat64, loom::kInt64};
const std::vector<dist::ReduceOp> kOps = {dist::ReduceOp::Sum, dist::ReduceOp::Avg, dist::ReduceOp::Max,
                                          dist::ReduceOp::Min, dist::ReduceOp::Product};

}  // namespace

TEST(Collectives, AllReduceEveryOpDtypeAndSize) {
  for (loom::DType dt : kDTypes)
    for (int64_t n : kSizes)
      for (dist::ReduceOp op : kOps) {
        Tensor t = filled(rank(), n, dt);
        if (op == dist::ReduceOp::Avg && !loom::is_floating_point(dt)) {
          EXPECT_THROW(dist::all_reduce(t, op), loom::Error);
          continue;
        }
        dist::all_reduce(t, op);
        const std::vector<double> got = as_doubles(t);
        ASSERT_EQ(static_cast<int64_t>(got.size()), n);
        for (int64_t i = 0; i < n; ++i) {
          const double want = expected(op, i);
          ASSERT_NEAR(got[static_cast<size_t>(i)], want, std::abs(want) * 1e-6)
              << dist::reduce_op_name(op) << " " << dt << " n=" << n << " i=" << i;
        }
      }
}

TEST(Collectives, AllReduceHalfBFloat16AndBool) {
  for (loom::DType dt : {loom::kFloat16, loom::kBFloat16}) {
    Tensor t = filled(rank(), 1001, dt);
    dist::all_reduce(t, dist::ReduceOp::Sum);
    const auto got = as_doubles(t);
    for (int64_t i = 0; i < 1001; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], expected(dist::ReduceOp::Sum, i));
    Tensor m = filled(rank(), 7, dt);
    dist::all_reduce(m, dist::ReduceOp::Max);
    for (int64_t i = 0; i < 7; ++i) ASSERT_EQ(as_doubles(m)[static_cast<size_t>(i)], expected(dist::ReduceOp::Max, i));
  }
  // bool: sum and max are "any", min and product "all".
  Tensor only_rank0 = loom::tensor(std::vector<double>{rank() == 0 ? 1.0 : 0.0}).to(loom::kBool);
  Tensor any = only_rank0.clone(), all = only_rank0.clone();
  dist::all_reduce(any, dist::ReduceOp::Sum);
  dist::all_reduce(all, dist::ReduceOp::Min);
  EXPECT_TRUE(any.item<bool>());
  EXPECT_EQ(all.item<bool>(), world() == 1);
}

TEST(Collectives, BroadcastFromEveryRoot) {
  for (loom::DType dt : kDTypes)
    for (int64_t n : kSizes)
      for (int root = 0; root < world(); ++root) {
        Tensor t = filled(rank(), n, dt);
        dist::broadcast(t, root);
        const auto got = as_doubles(t);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], static_cast<double>(value(root, i)));
      }
}

TEST(Collectives, AllGatherEvenUnevenAndIntoTensor) {
  for (loom::DType dt : kDTypes) {
    // Uneven: rank r contributes r + 1 elements (and an empty piece from rank 0 when n = 0).
    for (int64_t base : {int64_t{0}, int64_t{1}, int64_t{1000003}}) {
      std::vector<Tensor> outputs;
      for (int r = 0; r < world(); ++r) outputs.push_back(loom::zeros({base + r}, loom::TensorOptions().dtype(dt)));
      Tensor input = filled(rank(), base + rank(), dt);
      dist::all_gather(outputs, input);
      for (int r = 0; r < world(); ++r) {
        const auto got = as_doubles(outputs[static_cast<size_t>(r)]);
        for (int64_t i = 0; i < base + r; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], static_cast<double>(value(r, i)));
      }
    }
    // Into one tensor whose size does not divide by the world size.
    const int64_t n = 1000003;
    Tensor out = loom::zeros({n}, loom::TensorOptions().dtype(dt));
    const int64_t piece = n / world() + (rank() < n % world() ? 1 : 0);
    int64_t start = 0;
    for (int r = 0; r < rank(); ++r) start += n / world() + (r < n % world() ? 1 : 0);
    std::vector<double> mine(static_cast<size_t>(piece));
    for (int64_t i = 0; i < piece; ++i) mine[static_cast<size_t>(i)] = static_cast<double>((start + i) % 1000);
    Tensor in = loom::tensor(mine).to(dt);
    dist::default_group().all_gather_into_tensor(out, in)->wait();
    const auto got = as_doubles(out);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], static_cast<double>(i % 1000));
  }
}

TEST(Collectives, ReduceScatterListAndTensor) {
  for (loom::DType dt : kDTypes)
    for (dist::ReduceOp op : kOps) {
      if (op == dist::ReduceOp::Avg && !loom::is_floating_point(dt)) continue;
      // A tensor of 1000003 elements (not divisible by 2 or 4) split in rank order.
      const int64_t n = 1000003;
      Tensor input = filled(rank(), n, dt);
      const auto sizes = std::vector<int64_t>{};
      int64_t start = 0;
      for (int r = 0; r < rank(); ++r) start += n / world() + (r < n % world() ? 1 : 0);
      const int64_t piece = n / world() + (rank() < n % world() ? 1 : 0);
      Tensor out = loom::zeros({piece}, loom::TensorOptions().dtype(dt));
      dist::default_group().reduce_scatter_tensor(out, input, op)->wait();
      const auto got = as_doubles(out);
      for (int64_t i = 0; i < piece; ++i) {
        const double want = expected(op, start + i);
        ASSERT_NEAR(got[static_cast<size_t>(i)], want, std::abs(want) * 1e-6) << dist::reduce_op_name(op) << " " << dt;
      }
      // The list form with pieces of 0, 1, 2, ... elements.
      std::vector<Tensor> inputs;
      for (int r = 0; r < world(); ++r) inputs.push_back(filled(rank(), r, dt));
      Tensor small = loom::zeros({rank()}, loom::TensorOptions().dtype(dt));
      dist::reduce_scatter(small, inputs, op);
      const auto got_small = as_doubles(small);
      for (int64_t i = 0; i < rank(); ++i) ASSERT_NEAR(got_small[static_cast<size_t>(i)], expected(op, i), 1e-6);
    }
}

TEST(Collectives, GatherAndScatter) {
  for (loom::DType dt : kDTypes)
    for (int64_t n : kSizes) {
      const int root = world() - 1;
      std::vector<Tensor> outputs;
      if (rank() == root)
        for (int r = 0; r < world(); ++r) outputs.push_back(loom::zeros({n}, loom::TensorOptions().dtype(dt)));
      dist::gather(outputs, filled(rank(), n, dt), root);
      if (rank() == root)
        for (int r = 0; r < world(); ++r) {
          const auto got = as_doubles(outputs[static_cast<size_t>(r)]);
          for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], static_cast<double>(value(r, i)));
        }
      std::vector<Tensor> inputs;
      if (rank() == 0)
        for (int r = 0; r < world(); ++r) inputs.push_back(filled(r + 7, n, dt));
      Tensor out = loom::zeros({n}, loom::TensorOptions().dtype(dt));
      dist::scatter(out, inputs, 0);
      const auto got = as_doubles(out);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], static_cast<double>(value(rank() + 7, i)));
    }
}

TEST(Collectives, SendRecvRingAndAsyncExchange) {
  if (world() == 1) GTEST_SKIP() << "point-to-point needs two ranks";
  const int next = (rank() + 1) % world(), prev = (rank() + world() - 1) % world();
  for (int64_t n : kSizes) {
    // Every rank sends, then receives, asynchronously: needs both in flight.
    Tensor out = filled(rank(), n, loom::kFloat32);
    Tensor in = loom::zeros({n});
    dist::WorkPtr s = dist::default_group().send(out, next, 3);
    dist::WorkPtr r = dist::default_group().recv(in, prev, 3);
    s->wait();
    r->wait();
    EXPECT_TRUE(s->is_success() && r->is_success());
    const auto got = as_doubles(in);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], static_cast<double>(value(prev, i)));
  }
  // A message of the wrong size is an error on the receiver.
  if (rank() == 0) {
    dist::send(loom::ones({5}), 1, 9);
  } else if (rank() == 1) {
    Tensor in = loom::zeros({4});
    try {
      dist::recv(in, 0, 9);
      ADD_FAILURE() << "a 20-byte message into a 16-byte tensor was accepted";
    } catch (const loom::Error& e) {
      EXPECT_NE(std::string(e.what()).find("recv"), std::string::npos) << e.what();
    }
  }
  dist::barrier();
}

TEST(Collectives, AsyncWorkOverlapsAndCompletes) {
  Tensor big = filled(rank(), 1 << 20, loom::kFloat32);
  dist::WorkPtr w = dist::all_reduce(big, dist::ReduceOp::Sum, nullptr, /*async_op=*/true);
  Tensor busy = loom::ones({256, 256}).matmul(loom::ones({256, 256}));  // the caller goes on meanwhile
  w->wait();
  EXPECT_TRUE(w->is_completed());
  EXPECT_TRUE(w->is_success());
  EXPECT_EQ(w->exception(), nullptr);
  EXPECT_EQ(as_doubles(big)[5], expected(dist::ReduceOp::Sum, 5));
  EXPECT_EQ(busy.sum().item<float>(), 256.0f * 256 * 256);
}

TEST(Collectives, WaitTimesOutNamingTheOperation) {
  if (world() == 1) GTEST_SKIP() << "needs a peer that is late";
  if (rank() == 1) {
    Tensor in = loom::zeros({3});
    dist::WorkPtr r = dist::default_group().recv(in, 0, 11);
    try {
      r->wait(std::chrono::milliseconds(200));
      ADD_FAILURE() << "a receive nobody sent completed";
    } catch (const loom::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("did not complete within"), std::string::npos) << msg;
      EXPECT_NE(msg.find("recv(float32[3], from rank 0"), std::string::npos) << msg;
    }
    dist::barrier();  // now rank 0 sends, and the receive completes
    r->wait();
    EXPECT_EQ(in.sum().item<float>(), 3.0f);
  } else {
    dist::barrier();
    if (rank() == 0) dist::send(loom::ones({3}), 1, 11);
  }
  dist::barrier();
}

TEST(Collectives, MismatchedShapesAreAnErrorOnEveryRank) {
  if (world() == 1) GTEST_SKIP() << "needs two ranks to disagree";
  Tensor t = loom::zeros({rank() == 0 ? 1000 : 999});
  try {
    dist::all_reduce(t);
    ADD_FAILURE() << "mismatched all_reduce was not detected";
  } catch (const loom::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank 0 all_reduce(float32[1000], sum)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 1 all_reduce(float32[999], sum)"), std::string::npos) << msg;
  }
  // Ranks in different collectives, and different dtypes, are caught too.
  try {
    Tensor x = loom::zeros({4}, loom::TensorOptions().dtype(rank() == 0 ? loom::kFloat32 : loom::kFloat64));
    if (rank() == 0)
      dist::all_reduce(x);
    else
      dist::broadcast(x, 0);
    ADD_FAILURE() << "different collectives were not detected";
  } catch (const loom::Error& e) {
    EXPECT_NE(std::string(e.what()).find("different collectives"), std::string::npos) << e.what();
  }
  // The group is still usable.
  Tensor ok = loom::ones({2});
  dist::all_reduce(ok);
  EXPECT_EQ(ok.sum().item<float>(), 2.0f * world());
}

TEST(Collectives, BadArgumentsAreErrors) {
  Tensor strided = loom::ones({4, 4}).t();
  EXPECT_THROW(dist::all_reduce(strided), loom::Error);
  Tensor ints = loom::ones({3}, loom::TensorOptions().dtype(loom::kInt64));
  EXPECT_THROW(dist::all_reduce(ints, dist::ReduceOp::Avg), loom::Error);
  Tensor t = loom::ones({3});
  EXPECT_THROW(dist::broadcast(t, world()), loom::Error);
  std::vector<Tensor> too_few;
  EXPECT_THROW(dist::all_gather(too_few, t), loom::Error);
  EXPECT_THROW(dist::init_process_group("local"), loom::Error);  // already initialized
  EXPECT_THROW(dist::new_group({0, 0}), loom::Error);
}

TEST(Collectives, SubgroupOfEvenRanks) {
  std::vector<int> evens;
  for (int r = 0; r < world(); r += 2) evens.push_back(r);
  std::shared_ptr<dist::ProcessGroup> g = dist::new_group(evens);
  if (rank() % 2 != 0) {
    EXPECT_EQ(g, nullptr);
    return;
  }
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->size(), static_cast<int>(evens.size()));
  EXPECT_EQ(g->rank(), rank() / 2);
  Tensor t = loom::full({5}, static_cast<double>(rank()));
  g->all_reduce(t)->wait();
  double want = 0;
  for (int r : evens) want += r;
  EXPECT_EQ(as_doubles(t)[4], want);
}

TEST(Collectives, BarrierAndWorldInfo) {
  EXPECT_TRUE(dist::is_initialized());
  EXPECT_GE(world(), 1);
  EXPECT_LT(rank(), world());
  EXPECT_EQ(dist::default_group().rank(), rank());
  dist::barrier();
}
