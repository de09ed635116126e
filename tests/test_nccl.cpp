// The "nccl" backend as a world of one (no mpirun: Open MPI starts as a
// singleton), with the CPU tensors it stages through the GPU. Every test
// that needs a CUDA GPU skips without one; a build without NCCL checks that
// init says so.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <string>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;
namespace dist = loom::distributed;

using loom::test::throws_with;

// The CUDA GPUs this process sees. The CUDA runtime comes with loom only
// when loom was built with NCCL, so it is looked up at run time: this file
// builds, and skips, without CUDA headers or libraries.
int cuda_device_count() {
  using GetDeviceCount = int (*)(int*);  // cudaError_t cudaGetDeviceCount(int*)
  auto fn = reinterpret_cast<GetDeviceCount>(dlsym(RTLD_DEFAULT, "cudaGetDeviceCount"));
  int n = 0;
  return fn != nullptr && fn(&n) == 0 ? n : 0;
}

// 0, 0.5, 1, ...: exact in float32 up to 2^24 elements.
Tensor halves(int64_t n) { return arange(Scalar(n), kFloat32) * 0.5; }

TEST(Nccl, WithoutNcclInitSaysWhatIsMissing) {
  if (dist::is_nccl_available()) GTEST_SKIP() << "loom was built with NCCL";
  EXPECT_TRUE(throws_with([] { dist::init_process_group("nccl"); }, {"nccl", "built without"}));
  EXPECT_FALSE(dist::is_initialized());
}

TEST(Nccl, NoGpuIsAnError) {
  if (!dist::is_nccl_available()) GTEST_SKIP() << "loom was built without NCCL";
  if (cuda_device_count() > 0) GTEST_SKIP() << "this machine has a CUDA GPU";
  EXPECT_TRUE(throws_with([] { dist::init_process_group("nccl"); },
                          {"NCCL needs one GPU per rank", "none was found on this rank"}));
  EXPECT_FALSE(dist::is_initialized());
}

// MPI starts once per process, so one test runs every check of the group.
TEST(Nccl, WorldOfOne) {
  if (!dist::is_nccl_available()) GTEST_SKIP() << "loom was built without NCCL";
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  dist::init_process_group("nccl");
  ASSERT_TRUE(dist::is_initialized());
  dist::ProcessGroup& world = dist::default_group();
  EXPECT_EQ(world.backend(), "nccl");
  EXPECT_EQ(dist::get_rank(), 0);
  EXPECT_EQ(dist::get_world_size(), 1);

  // An odd size, so that no piece of it lines up with anything.
  constexpr int64_t n = 1000003;
  const Tensor expected = halves(n);

  // all_reduce over one rank: every op gives the tensor back.
  for (dist::ReduceOp op : {dist::ReduceOp::Sum, dist::ReduceOp::Avg, dist::ReduceOp::Max}) {
    Tensor x = expected.clone();
    dist::all_reduce(x, op);
    EXPECT_TRUE(equal(x, expected)) << dist::reduce_op_name(op);
  }
  {
    Tensor x = expected.clone();
    dist::WorkPtr work = world.all_reduce(x, dist::ReduceOp::Sum);  // asynchronous
    work->wait();
    EXPECT_TRUE(work->is_success());
    EXPECT_TRUE(equal(x, expected));
  }

  // Every dtype and op goes through NCCL (bool as uint8 with max/min).
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool}) {
    const Tensor values = dt == kBool ? arange(Scalar(7)).gt(Scalar(3)) : arange(Scalar(7)).to(dt);
    for (dist::ReduceOp op : {dist::ReduceOp::Sum, dist::ReduceOp::Avg, dist::ReduceOp::Max, dist::ReduceOp::Min,
                              dist::ReduceOp::Product}) {
      Tensor x = values.clone();
      if (op == dist::ReduceOp::Avg && !is_floating_point(dt)) {
        EXPECT_TRUE(throws_with([&] { dist::all_reduce(x, op); }, {"all_reduce", "avg needs a floating-point"}));
        continue;
      }
      dist::all_reduce(x, op);
      EXPECT_TRUE(equal(x, values)) << dtype_name(dt) << " " << dist::reduce_op_name(op);
    }
  }

  // Zero-size tensors skip NCCL but still complete.
  {
    Tensor empty_x = zeros({0});
    EXPECT_TRUE(dist::all_reduce(empty_x)->is_success());
    EXPECT_TRUE(dist::broadcast(empty_x, 0)->is_success());
    Tensor empty_out = zeros({0});
    world.all_gather_into_tensor(empty_out, empty_x)->wait();
    world.reduce_scatter_tensor(empty_out, empty_x)->wait();
  }

  {
    Tensor x = expected.clone();
    dist::broadcast(x, 0);
    EXPECT_TRUE(equal(x, expected));
  }
  {
    Tensor out = zeros({n});
    world.all_gather_into_tensor(out, expected)->wait();
    EXPECT_TRUE(equal(out, expected));
  }
  {
    Tensor out = zeros({n});
    world.reduce_scatter_tensor(out, expected)->wait();
    EXPECT_TRUE(equal(out, expected));
    world.reduce_scatter_tensor(out, expected, dist::ReduceOp::Avg)->wait();
    EXPECT_TRUE(equal(out, expected));
  }
  {
    std::vector<Tensor> outputs = {zeros({n})};
    dist::all_gather(outputs, expected);
    EXPECT_TRUE(equal(outputs[0], expected));
    Tensor out = zeros({n});
    dist::reduce_scatter(out, {expected}, dist::ReduceOp::Max);
    EXPECT_TRUE(equal(out, expected));
  }
  {
    std::vector<Tensor> outputs = {zeros({n})};
    dist::gather(outputs, expected, 0);
    EXPECT_TRUE(equal(outputs[0], expected));
    Tensor out = zeros({n});
    dist::scatter(out, {expected}, 0);
    EXPECT_TRUE(equal(out, expected));
  }
  dist::barrier();

  // Argument checks run on the calling thread, as the MPI group's do.
  {
    Tensor x = expected.clone();
    EXPECT_TRUE(throws_with([&] { dist::broadcast(x, 1); }, {"broadcast", "root 1", "group of 1"}));
    EXPECT_TRUE(throws_with([&] { dist::send(x, 0); }, {"send", "cannot send to itself"}));
    EXPECT_TRUE(throws_with([&] { dist::recv(x, 1); }, {"recv", "source 1"}));
    Tensor wrong = zeros({n + 1});
    EXPECT_TRUE(throws_with([&] { world.all_gather_into_tensor(wrong, x); }, {"all_gather_into_tensor"}));
  }

  // A subgroup gets its own communicator.
  {
    std::shared_ptr<dist::ProcessGroup> group = dist::new_group({0});
    ASSERT_NE(group, nullptr);
    EXPECT_EQ(group->backend(), "nccl");
    Tensor x = expected.clone();
    dist::all_reduce(x, dist::ReduceOp::Sum, group.get());
    EXPECT_TRUE(equal(x, expected));
    dist::barrier(group.get());
  }

  dist::destroy_process_group();
  EXPECT_FALSE(dist::is_initialized());
}

}  // namespace
