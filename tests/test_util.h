// Helpers the test suites share: error text and error checks, module
// printing, state-dict names, bitwise tensor equality and a float64 gradcheck.
#pragma once

#include <gtest/gtest.h>
#include <loom/loom.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace loom::test {

// The small GPT the paged-cache and serving tests run: 2 layers, width 32,
// 4 heads, a 64-token context, 23 tokens.
inline models::GPTConfig tiny_gpt_config() {
  models::GPTConfig cfg;
  cfg.n_layer = 2;
  cfg.n_embd = 32;
  cfg.n_head = 4;
  cfg.block_size = 64;
  cfg.vocab_size = 23;
  return cfg;
}

// The binary ops that have vectorized float paths, by name (the fast-path
// tests run each against its reference loop).
struct NamedBinary {
  const char* name;
  Tensor (*fn)(const Tensor&, const Tensor&);
};
inline const NamedBinary kBinary[] = {
    {"add", [](const Tensor& a, const Tensor& b) { return loom::add(a, b); }},
    {"sub", [](const Tensor& a, const Tensor& b) { return loom::sub(a, b); }},
    {"mul", [](const Tensor& a, const Tensor& b) { return loom::mul(a, b); }},
    {"div", [](const Tensor& a, const Tensor& b) { return loom::div(a, b); }},
    {"maximum", [](const Tensor& a, const Tensor& b) { return loom::maximum(a, b); }},
    {"minimum", [](const Tensor& a, const Tensor& b) { return loom::minimum(a, b); }},
};

// A fresh folder per test, named after the suite, the test and the process
// (ctest runs tests in parallel), removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "loom_test") {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            (prefix + "_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Bitwise equality of two tensors of one dtype and shape (any layout).
inline ::testing::AssertionResult same_bits(const Tensor& a, const Tensor& b) {
  if (a.sizes() != b.sizes() || a.dtype() != b.dtype())
    return ::testing::AssertionFailure() << "shape/dtype " << shape_str(a.sizes()) << " " << dtype_name(a.dtype())
                                         << " vs " << shape_str(b.sizes()) << " " << dtype_name(b.dtype());
  Tensor x = a.contiguous(), y = b.contiguous();
  if (std::memcmp(x.raw_data_ptr(), y.raw_data_ptr(), x.nbytes()) != 0) {
    const double d = (x.to(kFloat64) - y.to(kFloat64)).abs().max().item<double>();
    return ::testing::AssertionFailure() << "values differ (max abs diff " << d << ") for shape " << shape_str(a.sizes());
  }
  return ::testing::AssertionSuccess();
}

// The message of the loom::Error that f throws ("<no error>" when none).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a loom::Error: ") + e.what();
  }
  return "<no error>";
}

// Passes when f throws loom::Error whose message contains every part.
inline ::testing::AssertionResult throws_with(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts)
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message lacks \"" << p << "\": " << msg;
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-loom exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

#define EXPECT_ERROR_HAS(stmt, text) \
  EXPECT_NE(error_of([&] { stmt; }).find(text), std::string::npos) << error_of([&] { stmt; })

// PyTorch-style printout of a module.
inline std::string str(const nn::Module& m) {
  std::ostringstream os;
  os << m;
  return os.str();
}

inline std::vector<std::string> names(const nn::StateDict& sd) {
  std::vector<std::string> out;
  for (const auto& [n, t] : sd) out.push_back(n);
  return out;
}

// Float64 central-difference gradcheck: f reads `leaves` (float64, contiguous)
// and returns any tensor; it is projected onto fixed random weights so every
// output element counts. Each leaf element is perturbed in place by +-eps.
// Grad mode stays on: f may itself call autograd (second-order checks).
inline void gradcheck(const std::function<Tensor()>& f, const std::vector<Tensor>& leaves, double tol = 1e-6) {
  const double eps = 1e-6;
  Tensor out0 = f();
  Tensor proj = randn(out0.sizes(), kFloat64);
  auto scalar = [&] { return (f() * proj).sum(); };
  std::vector<Tensor> analytic = autograd::grad({scalar()}, leaves);
  for (size_t k = 0; k < leaves.size(); ++k) {
    ASSERT_EQ(leaves[k].dtype(), kFloat64);
    ASSERT_TRUE(leaves[k].is_contiguous());
    double* p = leaves[k].data_ptr<double>();
    const std::vector<double> a = analytic[k].contiguous().to_vector<double>();
    ASSERT_EQ(static_cast<int64_t>(a.size()), leaves[k].numel());
    for (int64_t i = 0; i < leaves[k].numel(); ++i) {
      const double saved = p[i];
      p[i] = saved + eps;
      const double fp = scalar().item<double>();
      p[i] = saved - eps;
      const double fm = scalar().item<double>();
      p[i] = saved;
      const double num = (fp - fm) / (2 * eps);
      EXPECT_NEAR(a[static_cast<size_t>(i)], num, tol * (1 + std::abs(num))) << "leaf " << k << " element " << i;
    }
  }
}

}  // namespace loom::test
