// The CUDA runtime layer: copies between devices, pinned memory, streams,
// events and the caching allocator's statistics (on a GPU); and, where
// there is none, that every CUDA request says so clearly.
#include <loom/cuda.h>
#include <loom/loom.h>

#include <string>

#include "cuda_test_util.h"

namespace loom {
namespace {

using test::close_to_cpu;
using test::error_of;

// Runs where no GPU is: every entry point answers with an error naming the
// cause, never a crash.
TEST(CudaRuntime, WithoutAGpuEveryRequestSaysWhy) {
  if (cuda::is_available()) GTEST_SKIP() << "a GPU is present: the no-GPU answers cannot be checked here";
  EXPECT_EQ(cuda::device_count(), 0);
  const std::string expect = cuda::is_built() ? "no CUDA device is available" : "loom was built without CUDA support";
  for (const std::string& m : {error_of([] { (void)ones({3}).cuda(); }),
                               error_of([] { (void)zeros({2}, TensorOptions().device(Device::cuda())); }),
                               error_of([] { cuda::synchronize(); }),
                               error_of([] { (void)cuda::Stream::create(); }),
                               error_of([] { (void)cuda::memory_stats(); }),
                               error_of([] { (void)cuda::pin_memory(ones({2})); })})
    EXPECT_NE(m.find(expect), std::string::npos) << m;
  EXPECT_FALSE(cuda::is_pinned(ones({2})));
  cuda::empty_cache();  // nothing to return: no error
}

TEST(CudaRuntime, CopiesRoundTripEveryDtypeAndLayout) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool, kInt8}) {
    const Tensor x = (randn({5, 7}) * 10).to(dt);
    const Tensor g = x.cuda();
    EXPECT_TRUE(g.device().is_cuda());
    EXPECT_EQ(g.dtype(), dt);
    EXPECT_TRUE(close_to_cpu(g, x, 0, 0)) << dtype_name(dt);
    // Non-contiguous sources, both ways.
    EXPECT_TRUE(close_to_cpu(x.t().cuda(), x.t(), 0, 0)) << dtype_name(dt);
    const Tensor back = g.t().cpu();
    EXPECT_TRUE(back.equal(x.t())) << dtype_name(dt);
  }
  const Tensor empty = zeros({0, 3}).cuda();
  EXPECT_EQ(empty.cpu().sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(ones({2}).cuda().to(Device::cuda(), /*copy=*/false).device(), Device::cuda());
}

TEST(CudaRuntime, NonBlockingCopiesFromAndToPinnedMemory) {
  LOOM_REQUIRE_GPU();
  const Tensor x = randn({1 << 20});
  const Tensor pinned = cuda::pin_memory(x);
  EXPECT_TRUE(cuda::is_pinned(pinned));
  EXPECT_FALSE(cuda::is_pinned(x));
  const Tensor g = pinned.to(Device::cuda(), {.non_blocking = true});
  const Tensor host = g.to(Device::cpu(), {.non_blocking = true});
  EXPECT_TRUE(cuda::is_pinned(host));
  cuda::synchronize();
  EXPECT_TRUE(host.equal(x));
}

// pin_memory collates into page-locked memory on a GPU machine and is
// ignored elsewhere; the batches hold the same values either way.
TEST(CudaRuntime, DataLoaderPinsBatchesWhereAGpuIs) {
  auto ds = std::make_shared<data::TensorDataset>(arange(40).reshape({10, 4}).to(kFloat32), arange(10));
  data::DataLoader plain(ds, data::DataLoaderOptions{.batch_size = 4});
  data::DataLoader pinned(ds, data::DataLoaderOptions{.batch_size = 4, .num_workers = 2, .pin_memory = true});
  std::vector<data::Batch> a, b;
  for (data::Batch& x : plain) a.push_back(x);
  for (data::Batch& x : pinned) b.push_back(x);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_TRUE(a[k].data.equal(b[k].data));
    EXPECT_TRUE(a[k].target.equal(b[k].target));
    EXPECT_EQ(cuda::is_pinned(b[k].data), cuda::is_available());
    EXPECT_EQ(cuda::is_pinned(b[k].target), cuda::is_available());
  }
}

TEST(CudaRuntime, StreamsGuardsAndEvents) {
  LOOM_REQUIRE_GPU();
  const cuda::Stream main = cuda::current_stream();
  EXPECT_EQ(main, cuda::Stream::default_stream());
  const cuda::Stream side = cuda::Stream::create();
  EXPECT_NE(side, main);
  cuda::Event start(/*enable_timing=*/true), stop(/*enable_timing=*/true);
  Tensor y;
  {
    cuda::StreamGuard guard(side);
    EXPECT_EQ(cuda::current_stream(), side);
    start.record();
    const Tensor x = ones({1 << 22}).cuda();
    y = x * 2 + 1;
    stop.record();
    cuda::record_stream(y, side);
  }
  EXPECT_EQ(cuda::current_stream(), main);
  stop.synchronize();
  EXPECT_TRUE(stop.query());
  EXPECT_GE(start.elapsed_ms(stop), 0.0f);
  main.wait(stop);  // the default stream now orders after the side stream's work
  EXPECT_TRUE(close_to_cpu(y, full({1 << 22}, 3.0), 0, 0));
  side.synchronize();
  EXPECT_TRUE(side.query());
}

TEST(CudaRuntime, TheCachingAllocatorReusesBlocksAndReportsThem) {
  LOOM_REQUIRE_GPU();
  cuda::synchronize();
  cuda::empty_cache();
  cuda::reset_peak_memory_stats();
  const cuda::MemoryStats before = cuda::memory_stats();
  {
    const Tensor a = empty({1 << 20}, TensorOptions().device(Device::cuda()));
    EXPECT_GE(cuda::memory_stats().allocated_bytes, before.allocated_bytes + (4u << 20));
  }
  const cuda::MemoryStats freed = cuda::memory_stats();
  EXPECT_EQ(freed.allocated_bytes, before.allocated_bytes);
  EXPECT_GE(freed.reserved_bytes, before.reserved_bytes + (4u << 20));  // cached, not returned
  { const Tensor b = empty({1 << 20}, TensorOptions().device(Device::cuda())); }
  const cuda::MemoryStats reused = cuda::memory_stats();
  EXPECT_EQ(reused.cache_hits, freed.cache_hits + 1);
  EXPECT_EQ(reused.device_allocations, freed.device_allocations);
  EXPECT_GE(reused.peak_allocated_bytes, before.allocated_bytes + (4u << 20));
  cuda::synchronize();
  cuda::empty_cache();
  EXPECT_LT(cuda::memory_stats().reserved_bytes, reused.reserved_bytes);
}

TEST(CudaRuntime, OutOfMemoryIsAnErrorThatSaysSo) {
  LOOM_REQUIRE_GPU();
  const std::string m = error_of([] { (void)empty({int64_t{1} << 50}, TensorOptions().device(Device::cuda())); });
  EXPECT_NE(m.find("out of memory"), std::string::npos) << m;
  // The device still works afterwards.
  EXPECT_TRUE(close_to_cpu(ones({3}).cuda(), ones({3}), 0, 0));
}

TEST(CudaRuntime, GradientsFlowBackAcrossDevices) {
  LOOM_REQUIRE_GPU();
  const Tensor x = randn({4, 3}).requires_grad_();
  const Tensor y = (x.cuda() * 3).sum();
  y.backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(x.grad().device().is_cpu());
  EXPECT_TRUE(x.grad().equal(full({4, 3}, 3.0)));
}

TEST(CudaRuntime, CopiesBetweenTwoGpus) {
  LOOM_REQUIRE_GPU();
  if (cuda::device_count() < 2) GTEST_SKIP() << "one GPU: no peer copy to test";
  const Tensor x = randn({257, 3});
  const Tensor a = x.to(Device::cuda(0)), b = a.to(Device::cuda(1));
  EXPECT_EQ(b.device(), Device::cuda(1));
  EXPECT_TRUE(b.cpu().equal(x));
}

TEST(CudaRuntime, BadDeviceIndexIsAnError) {
  LOOM_REQUIRE_GPU();
  const std::string m = error_of([] { (void)ones({2}).to(Device::cuda(cuda::device_count())); });
  EXPECT_NE(m.find("does not exist"), std::string::npos) << m;
}

}  // namespace
}  // namespace loom
