// loom::data: datasets, the IDX reader (on files written here, and on the
// real Fashion-MNIST when installed), transforms, the DataLoader and samplers.
#include <gtest/gtest.h>
#include <loom/distributed.h>
#include <loom/loom.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;
using namespace loom::data;
namespace fs = std::filesystem;

using loom::test::throws_with;

// data: (n, 3) float32 with row i = (i, 10 i, 100 i); targets: (n) int64 = i.
std::shared_ptr<TensorDataset> rows_dataset(int64_t n) {
  Tensor i = arange(n).to(kFloat32).unsqueeze(1);
  return std::make_shared<TensorDataset>(cat({i, 10 * i, 100 * i}, 1), arange(n));
}

std::vector<int64_t> targets_of(const Batch& b) { return b.target.to_vector<int64_t>(); }

// ---- datasets ----

TEST(Datasets, TensorDatasetIndexesAlongDimZero) {
  auto ds = rows_dataset(5);
  EXPECT_EQ(ds->size(), 5);
  Example e = ds->get(3);
  EXPECT_EQ(e.data.sizes(), (std::vector<int64_t>{3}));
  EXPECT_EQ(e.data.to_vector<float>(), (std::vector<float>{3, 30, 300}));
  EXPECT_EQ(e.target.dim(), 0);
  EXPECT_EQ(e.target.item<int64_t>(), 3);
  // Unlabelled data: no target.
  TensorDataset unlabelled(zeros({4, 2}));
  EXPECT_EQ(unlabelled.size(), 4);
  EXPECT_FALSE(unlabelled.get(0).target.defined());
}

TEST(Datasets, TensorDatasetErrors) {
  EXPECT_TRUE(throws_with([] { TensorDataset(zeros({4, 2}), zeros({5})); },
                          {"TensorDataset", "same size in dim 0", "[4, 2]", "[5]"}));
  EXPECT_TRUE(throws_with([] { TensorDataset(scalar_tensor(1.0), zeros({1})); }, {"TensorDataset", "0-dim"}));
  auto ds = rows_dataset(5);
  EXPECT_TRUE(throws_with([&] { ds->get(5); }, {"TensorDataset", "index 5", "size 5"}));
  EXPECT_TRUE(throws_with([&] { ds->get(-1); }, {"TensorDataset", "index -1", "size 5"}));
}

TEST(Datasets, SubsetPicksIndicesInOrder) {
  auto base = rows_dataset(6);
  Subset sub(base, {4, 0, 4, 2});
  EXPECT_EQ(sub.size(), 4);
  std::vector<int64_t> got;
  for (int64_t i = 0; i < sub.size(); ++i) got.push_back(sub.get(i).target.item<int64_t>());
  EXPECT_EQ(got, (std::vector<int64_t>{4, 0, 4, 2}));
  EXPECT_TRUE(throws_with([&] { Subset(base, {1, 6}); }, {"Subset", "indices[1] = 6", "TensorDataset", "size 6"}));
  EXPECT_TRUE(throws_with([&] { sub.get(4); }, {"Subset of TensorDataset", "index 4", "size 4"}));
  EXPECT_TRUE(throws_with([] { Subset(nullptr, {0}); }, {"Subset", "null"}));
}

TEST(Datasets, ConcatDatasetChainsDatasets) {
  auto a = rows_dataset(3), b = rows_dataset(0), c = rows_dataset(2);
  ConcatDataset cd({a, b, c});
  EXPECT_EQ(cd.size(), 5);
  EXPECT_EQ(cd.cumulative_sizes(), (std::vector<int64_t>{3, 3, 5}));
  std::vector<int64_t> got;
  for (int64_t i = 0; i < cd.size(); ++i) got.push_back(cd.get(i).target.item<int64_t>());
  EXPECT_EQ(got, (std::vector<int64_t>{0, 1, 2, 0, 1}));
  EXPECT_TRUE(throws_with([&] { cd.get(5); }, {"ConcatDataset", "index 5", "size 5"}));
  EXPECT_TRUE(throws_with([] { ConcatDataset({}); }, {"ConcatDataset", "at least one"}));
}

// The parts of a split, as sorted index lists of the base dataset.
std::vector<std::vector<int64_t>> split_indices(const std::vector<std::shared_ptr<Subset>>& parts) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& p : parts) out.push_back(p->indices());
  return out;
}

TEST(Datasets, RandomSplitIsADeterministicPartition) {
  auto base = rows_dataset(20);
  auto parts = random_split(base, {12, 5, 3}, 7);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0]->size(), 12);
  EXPECT_EQ(parts[1]->size(), 5);
  EXPECT_EQ(parts[2]->size(), 3);
  std::vector<int64_t> all;
  for (const auto& p : parts)
    for (int64_t i = 0; i < p->size(); ++i) all.push_back(p->get(i).target.item<int64_t>());
  std::sort(all.begin(), all.end());
  std::vector<int64_t> expected(20);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(all, expected) << "the parts must cover every example exactly once";

  EXPECT_EQ(split_indices(parts), split_indices(random_split(base, {12, 5, 3}, 7))) << "same seed, same split";
  EXPECT_NE(split_indices(parts), split_indices(random_split(base, {12, 5, 3}, 8))) << "another seed, another split";
  EXPECT_NE(parts[0]->indices(), std::vector<int64_t>(expected.begin(), expected.begin() + 12)) << "not shuffled";

  // A std::vector works as well as a braced list.
  std::vector<int64_t> lengths = {10, 10};
  EXPECT_EQ(random_split(base, lengths, 1).size(), 2u);
}

TEST(Datasets, RandomSplitFractionsFollowPyTorch) {
  auto base = rows_dataset(11);
  // floor(11 * f) = 5, 3, 2 (sum 10); the one left over goes to the first split.
  auto parts = random_split(base, {0.5, 0.3, 0.2}, 3);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0]->size(), 6);
  EXPECT_EQ(parts[1]->size(), 3);
  EXPECT_EQ(parts[2]->size(), 2);
  // With the same seed, fractions and the lengths they resolve to split alike.
  EXPECT_EQ(split_indices(parts), split_indices(random_split(base, {6, 3, 2}, 3)));
}

TEST(Datasets, RandomSplitErrors) {
  auto base = rows_dataset(10);
  EXPECT_TRUE(throws_with([&] { random_split(base, {4, 5}, 0); }, {"random_split", "sum to 9", "10 examples"}));
  EXPECT_TRUE(throws_with([&] { random_split(base, {12, -2}, 0); }, {"random_split", "negative"}));
  EXPECT_TRUE(throws_with([&] { random_split(base, {0.5, 0.4}, 0); }, {"random_split", "sum to 1"}));
  EXPECT_TRUE(throws_with([&] { random_split(base, {1.5, -0.5}, 0); }, {"random_split", "not in [0, 1]"}));
  EXPECT_TRUE(throws_with([&] { random_split(base, std::vector<int64_t>{}, 0); }, {"random_split", "at least one"}));
}

// ---- SampleGenerator ----

TEST(SampleGenerator, KeyedStreamsAreReproducibleAndDistinct) {
  auto draw = [](SampleGenerator g) {
    std::vector<uint64_t> v;
    for (int k = 0; k < 4; ++k) v.push_back(g.next_u64());
    return v;
  };
  EXPECT_EQ(draw(SampleGenerator::for_example(1, 2, 3)), draw(SampleGenerator::for_example(1, 2, 3)));
  EXPECT_NE(draw(SampleGenerator::for_example(1, 2, 3)), draw(SampleGenerator::for_example(1, 2, 4)));
  EXPECT_NE(draw(SampleGenerator::for_example(1, 2, 3)), draw(SampleGenerator::for_example(1, 3, 3)));
  EXPECT_NE(draw(SampleGenerator::for_example(1, 2, 3)), draw(SampleGenerator::for_example(2, 2, 3)));
  EXPECT_NE(draw(SampleGenerator::for_shuffle(1, 2)), draw(SampleGenerator::for_example(1, 2, 0)));

  SampleGenerator g(42);
  std::vector<int> hits(7, 0);
  for (int k = 0; k < 7000; ++k) {
    const int64_t r = g.randint(3, 10);
    ASSERT_GE(r, 3);
    ASSERT_LT(r, 10);
    hits[static_cast<size_t>(r - 3)]++;
  }
  // 1000 expected per value; 5 standard deviations is about +-150.
  for (int h : hits) EXPECT_NEAR(h, 1000, 150);
  for (int k = 0; k < 1000; ++k) {
    const double u = g.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
  std::vector<int64_t> p = g.permutation(50);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_TRUE(throws_with([&] { g.randint(5, 5); }, {"randint", "empty range"}));
}

// ---- IDX files written here ----

// A fresh folder under the system temp dir, removed afterwards.
class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "loom_test_data_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) const {
    const std::string path = (dir_ / name).string();
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  fs::path dir_;
};

void push_be32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

// An IDX file: magic (type, dims count), the dims, then `payload` verbatim.
std::vector<uint8_t> idx_file(uint8_t type, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> out = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) push_be32(out, d);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<uint8_t> iota_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 + 1);
  return v;
}

uint32_t crc32_of(const std::vector<uint8_t>& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (uint8_t b : data) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// A gzip file (RFC 1952) holding `raw` in deflate "stored" blocks (RFC 1951
// 3.2.4): valid input for zlib's inflate, written without zlib.
std::vector<uint8_t> gzip_stored(const std::vector<uint8_t>& raw) {
  std::vector<uint8_t> out = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
  size_t pos = 0;
  do {
    const size_t n = std::min<size_t>(raw.size() - pos, 65535);
    out.push_back(pos + n == raw.size() ? 1 : 0);  // BFINAL, BTYPE = 00 (stored)
    out.push_back(static_cast<uint8_t>(n));
    out.push_back(static_cast<uint8_t>(n >> 8));
    out.push_back(static_cast<uint8_t>(~n));
    out.push_back(static_cast<uint8_t>(~n >> 8));
    out.insert(out.end(), raw.begin() + static_cast<std::ptrdiff_t>(pos),
               raw.begin() + static_cast<std::ptrdiff_t>(pos + n));
    pos += n;
  } while (pos < raw.size());
  const uint32_t crc = crc32_of(raw), size = static_cast<uint32_t>(raw.size());
  for (int s = 0; s < 32; s += 8) out.push_back(static_cast<uint8_t>(crc >> s));
  for (int s = 0; s < 32; s += 8) out.push_back(static_cast<uint8_t>(size >> s));
  return out;
}

using Idx = TempDir;

TEST_F(Idx, ReadsRawAndGzippedUint8) {
  // 70000 bytes: two stored blocks in the gzip version.
  const std::vector<uint8_t> payload = iota_bytes(70000);
  const std::vector<uint8_t> file = idx_file(0x08, {7, 100, 100}, payload);
  for (const std::string& path : {write("images-idx3-ubyte", file), write("images-idx3-ubyte.gz", gzip_stored(file))}) {
    SCOPED_TRACE(path);
    Tensor t = read_idx(path);
    EXPECT_EQ(t.dtype(), kUInt8);
    EXPECT_EQ(t.sizes(), (std::vector<int64_t>{7, 100, 100}));
    EXPECT_EQ(t.to_vector<uint8_t>(), payload);
  }
  // Labels: 0x00000801.
  Tensor labels = read_idx(write("labels-idx1-ubyte", idx_file(0x08, {4}, {9, 0, 3, 9})));
  EXPECT_EQ(labels.sizes(), (std::vector<int64_t>{4}));
  EXPECT_EQ(labels.to_vector<int64_t>(), (std::vector<int64_t>{9, 0, 3, 9}));
}

TEST_F(Idx, ReadsWiderTypesBigEndian) {
  // int32 {1, -2}, big-endian.
  Tensor i32 = read_idx(write("i32", idx_file(0x0C, {2}, {0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFE})));
  EXPECT_EQ(i32.dtype(), kInt32);
  EXPECT_EQ(i32.to_vector<int32_t>(), (std::vector<int32_t>{1, -2}));
  // int16 {258, -1} and int8 {-1, 5} widen to int32.
  Tensor i16 = read_idx(write("i16", idx_file(0x0B, {2}, {0x01, 0x02, 0xFF, 0xFF})));
  EXPECT_EQ(i16.dtype(), kInt32);
  EXPECT_EQ(i16.to_vector<int32_t>(), (std::vector<int32_t>{258, -1}));
  Tensor i8 = read_idx(write("i8", idx_file(0x09, {2}, {0xFF, 0x05})));
  EXPECT_EQ(i8.to_vector<int32_t>(), (std::vector<int32_t>{-1, 5}));
  // float32 {1.5, -2} = 0x3FC00000, 0xC0000000; float64 {0.25} = 0x3FD0000000000000.
  Tensor f32 = read_idx(write("f32", idx_file(0x0D, {1, 2}, {0x3F, 0xC0, 0, 0, 0xC0, 0, 0, 0})));
  EXPECT_EQ(f32.dtype(), kFloat32);
  EXPECT_EQ(f32.sizes(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(f32.to_vector<float>(), (std::vector<float>{1.5f, -2.0f}));
  Tensor f64 = read_idx(write("f64", idx_file(0x0E, {1}, {0x3F, 0xD0, 0, 0, 0, 0, 0, 0})));
  EXPECT_EQ(f64.dtype(), kFloat64);
  EXPECT_EQ(f64.item<double>(), 0.25);
}

TEST_F(Idx, TruncatedFilesNameThePathAndOffset) {
  // The header promises 10 * 28 * 28 = 7840 bytes; 100 follow.
  const std::vector<uint8_t> file = idx_file(0x08, {10, 28, 28}, iota_bytes(100));
  const std::string raw = write("short", file);
  EXPECT_TRUE(throws_with([&] { read_idx(raw); }, {"read_idx", raw, "truncated at byte offset 116", "7840 bytes"}));
  const std::string gz = write("short.gz", gzip_stored(file));
  EXPECT_TRUE(throws_with([&] { read_idx(gz); }, {"read_idx", gz, "truncated at byte offset 116", "7840 bytes"}));

  // The gzip stream itself cut short (no final block, no trailer).
  std::vector<uint8_t> cut = gzip_stored(idx_file(0x08, {100}, iota_bytes(100)));
  cut.resize(cut.size() - 30);
  const std::string cut_path = write("cut.gz", cut);
  EXPECT_TRUE(throws_with([&] { read_idx(cut_path); }, {"read_idx", cut_path, "byte offset"}));

  // Cut inside the header.
  EXPECT_TRUE(throws_with([&] { read_idx(write("empty", {})); }, {"truncated at byte offset 0", "magic"}));
  const std::vector<uint8_t> half_header = {0, 0, 8, 3, 0, 0, 0, 10, 0, 0};
  EXPECT_TRUE(throws_with([&] { read_idx(write("half", half_header)); },
                          {"truncated at byte offset 10", "3 dims", "bytes 4 to 16"}));
}

TEST_F(Idx, TrailingBytesAreAnError) {
  std::vector<uint8_t> file = idx_file(0x08, {4}, {1, 2, 3, 4});
  file.push_back(0);
  const std::string raw = write("long", file);
  EXPECT_TRUE(throws_with([&] { read_idx(raw); }, {raw, "unexpected data at byte offset 12"}));
  const std::string gz = write("long.gz", gzip_stored(file));
  EXPECT_TRUE(throws_with([&] { read_idx(gz); }, {gz, "unexpected data at byte offset 12"}));
}

TEST_F(Idx, MalformedHeadersAreErrors) {
  EXPECT_TRUE(throws_with([&] { read_idx(write("magic", {0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0})); },
                          {"bad magic number 0x12345678 at byte offset 0"}));
  EXPECT_TRUE(throws_with([&] { read_idx(write("type", idx_file(0x07, {1}, {0}))); },
                          {"unknown type code 0x07 at byte offset 2"}));
  EXPECT_TRUE(throws_with([&] { read_idx(write("nodims", idx_file(0x08, {}, {}))); },
                          {"declares 0 dims at byte offset 3"}));
  std::vector<uint32_t> nine(9, 1);
  EXPECT_TRUE(throws_with([&] { read_idx(write("ninedims", idx_file(0x08, nine, {0}))); },
                          {"declares 9 dims at byte offset 3"}));
}

TEST_F(Idx, AbsurdSizesFailWithoutAllocating) {
  // 2^96 elements: rejected from the header alone.
  const std::string huge = write("huge", idx_file(0x0E, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, {1, 2, 3}));
  EXPECT_TRUE(throws_with([&] { read_idx(huge); }, {huge, "absurd size", "[4294967295, 4294967295, 4294967295]"}));
  // 4 GB promised by a 20-byte file: raw files are checked against their size,
  // gzipped ones fail as soon as the stream ends, before any large allocation.
  const std::vector<uint8_t> big = idx_file(0x08, {0xFFFFFFFF}, {1, 2, 3, 4});
  const std::string raw = write("big", big);
  EXPECT_TRUE(throws_with([&] { read_idx(raw); }, {raw, "truncated at byte offset 12", "4294967295 bytes"}));
  const std::string gz = write("big.gz", gzip_stored(big));
  EXPECT_TRUE(throws_with([&] { read_idx(gz); }, {gz, "truncated at byte offset 12", "4294967295 bytes"}));
}

TEST_F(Idx, CorruptGzipIsAnError) {
  std::vector<uint8_t> gz = gzip_stored(idx_file(0x08, {4}, {1, 2, 3, 4}));
  gz[gz.size() - 8] ^= 0xFF;  // the CRC32 of the trailer
  const std::string path = write("crc.gz", gz);
  EXPECT_TRUE(throws_with([&] { read_idx(path); }, {"read_idx", path, "incorrect data check"}));
}

TEST_F(Idx, MissingPathsAreErrors) {
  const std::string missing = (dir_ / "nope").string();
  EXPECT_TRUE(throws_with([&] { read_idx(missing); }, {missing, "does not exist"}));
  EXPECT_TRUE(throws_with([&] { read_idx(dir_.string()); }, {dir_.string(), "not a regular file"}));
}

// ---- MNIST-layout folders written here ----

using MnistFiles = TempDir;

TEST_F(MnistFiles, LoadsImagesAsFloatAndLabelsAsInt64) {
  std::vector<uint8_t> pixels(3 * 28 * 28);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i % 256);
  write("train-images-idx3-ubyte.gz", gzip_stored(idx_file(0x08, {3, 28, 28}, pixels)));
  write("train-labels-idx1-ubyte", idx_file(0x08, {3}, {9, 0, 4}));
  auto ds = mnist(dir_.string(), true);
  ASSERT_EQ(ds->size(), 3);
  EXPECT_EQ(ds->name(), "MNIST(train)");
  Example e = ds->get(1);
  EXPECT_EQ(e.data.dtype(), kFloat32);
  EXPECT_EQ(e.data.sizes(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(e.target.dtype(), kInt64);
  EXPECT_EQ(e.target.dim(), 0);
  EXPECT_EQ(e.target.item<int64_t>(), 0);
  const std::vector<float> v = e.data.to_vector<float>();
  for (size_t k = 0; k < v.size(); ++k) ASSERT_EQ(v[k], static_cast<float>(pixels[784 + k]) / 255.0f) << k;
  EXPECT_TRUE(throws_with([&] { ds->get(3); }, {"MNIST(train)", "index 3", "size 3"}));
  // No t10k files here.
  EXPECT_TRUE(throws_with([&] { mnist(dir_.string(), false); }, {"MNIST", "t10k-images-idx3-ubyte", dir_.string()}));
}

TEST_F(MnistFiles, InconsistentFilesAreErrors) {
  write("train-images-idx3-ubyte", idx_file(0x08, {2, 28, 28}, std::vector<uint8_t>(2 * 784)));
  write("train-labels-idx1-ubyte", idx_file(0x08, {3}, {1, 2, 3}));
  EXPECT_TRUE(throws_with([&] { mnist(dir_.string()); }, {"has 2 images", "has 3 labels"}));
  write("train-labels-idx1-ubyte", idx_file(0x08, {2}, {1, 10}));
  EXPECT_TRUE(throws_with([&] { mnist(dir_.string()); }, {"label 10 of example 1"}));
  write("train-labels-idx1-ubyte", idx_file(0x08, {2}, {1}));
  EXPECT_TRUE(throws_with([&] { fashion_mnist(dir_.string()); },
                          {"FashionMNIST", "train-labels-idx1-ubyte", "truncated", "dataset-fashion-mnist"}));
}

TEST_F(MnistFiles, MissingDatasetNamesTheFolderAndThePackage) {
  const std::string nowhere = (dir_ / "no-such-folder").string();
  EXPECT_TRUE(throws_with([&] { fashion_mnist(nowhere, true); },
                          {"FashionMNIST", nowhere, "does not exist", "apt-get install dataset-fashion-mnist"}));
  EXPECT_TRUE(throws_with([&] { fashion_mnist(dir_.string(), true); },
                          {"FashionMNIST", "train-images-idx3-ubyte", dir_.string(), "dataset-fashion-mnist"}));
}

// ---- the real Fashion-MNIST ----

bool have_fashion_mnist() { return fs::exists(fs::path(kFashionMnistRoot) / "train-images-idx3-ubyte.gz"); }

TEST(FashionMnist, RealDataset) {
  if (!have_fashion_mnist())
    GTEST_SKIP() << "Fashion-MNIST is not installed in " << kFashionMnistRoot
                 << " (apt-get install dataset-fashion-mnist)";
  auto train = fashion_mnist(kFashionMnistRoot, true);
  auto test = fashion_mnist(kFashionMnistRoot, false);
  ASSERT_EQ(train->size(), 60000);
  ASSERT_EQ(test->size(), 10000);
  Example first = train->get(0);
  EXPECT_EQ(first.data.sizes(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(first.target.item<int64_t>(), 9);
  EXPECT_EQ(fashion_mnist_classes().at(9), "Ankle boot");
  EXPECT_EQ(fashion_mnist_classes().size(), 10u);
  EXPECT_EQ(fashion_mnist_classes()[0], "T-shirt/top");

  // Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
  for (const auto& [ds, per_class] : {std::pair{train, 6000}, std::pair{test, 1000}}) {
    const auto& m = dynamic_cast<const MNIST&>(*ds);
    std::vector<int64_t> counts(10, 0);
    for (int64_t label : m.targets().to_vector<int64_t>()) {
      ASSERT_GE(label, 0);
      ASSERT_LT(label, 10);
      counts[static_cast<size_t>(label)]++;
    }
    for (int64_t c : counts) EXPECT_EQ(c, per_class);
  }
  // The training pixels' well-known statistics (mean 0.2860, std 0.3530) show
  // that the images decoded correctly.
  const Tensor& images = dynamic_cast<const MNIST&>(*train).images();
  ASSERT_EQ(images.sizes(), (std::vector<int64_t>{60000, 28, 28}));
  const uint8_t* px = images.data_ptr<uint8_t>();
  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < images.numel(); ++i) {
    const double v = px[i] / 255.0;
    sum += v;
    sum_sq += v * v;
  }
  const double n = static_cast<double>(images.numel()), mean = sum / n;
  EXPECT_NEAR(mean, 0.2860, 5e-4);
  EXPECT_NEAR(std::sqrt(sum_sq / n - mean * mean), 0.3530, 5e-4);

  // One epoch through a loader with workers.
  DataLoader loader(test, {.batch_size = 128, .shuffle = true, .num_workers = 2, .seed = 1});
  EXPECT_EQ(loader.size(), 79);
  int64_t batches = 0, seen = 0;
  for (Batch& b : loader) {
    ++batches;
    seen += b.data.size(0);
    if (batches == 1) {
      EXPECT_EQ(b.data.sizes(), (std::vector<int64_t>{128, 1, 28, 28}));
      EXPECT_EQ(b.target.sizes(), (std::vector<int64_t>{128}));
      EXPECT_EQ(b.target.dtype(), kInt64);
    }
  }
  EXPECT_EQ(batches, 79);
  EXPECT_EQ(seen, 10000);
}

// ---- transforms ----

TEST(Transforms, NormalizePerChannel) {
  // x: (2, 1, 2): channel 0 = {1, 2}, channel 1 = {3, 5}.
  Tensor x = tensor({{{1.0f, 2.0f}}, {{3.0f, 5.0f}}});
  SampleGenerator g(0);
  Example e = Normalize({0.5, 1.0}, {0.25, 2.0})({x, scalar_tensor(int64_t{1})}, g);
  // (1 - .5) / .25 = 2, (2 - .5) / .25 = 6, (3 - 1) / 2 = 1, (5 - 1) / 2 = 2.
  EXPECT_EQ(e.data.sizes(), (std::vector<int64_t>{2, 1, 2}));
  EXPECT_EQ(e.data.dtype(), kFloat32);
  EXPECT_EQ(e.data.to_vector<float>(), (std::vector<float>{2, 6, 1, 2}));
  EXPECT_EQ(e.target.item<int64_t>(), 1) << "the target passes through";

  // One mean and std normalise any shape, in the data's dtype.
  Tensor y = tensor({0.1f, 0.7f});
  Example f = Normalize({0.2860}, {0.3530})({y, Tensor()}, g);
  const std::vector<float> got = f.data.to_vector<float>();
  EXPECT_FLOAT_EQ(got[0], (0.1f - 0.2860f) / 0.3530f);
  EXPECT_FLOAT_EQ(got[1], (0.7f - 0.2860f) / 0.3530f);
}

TEST(Transforms, NormalizeErrors) {
  SampleGenerator g(0);
  EXPECT_TRUE(throws_with([] { Normalize({0.5, 0.5}, {1.0}); }, {"Normalize", "mean has 2 values but std has 1"}));
  EXPECT_TRUE(throws_with([] { Normalize({0.5}, {0.0}); }, {"Normalize", "std[0] is 0"}));
  EXPECT_TRUE(throws_with([&] { Normalize({0.5}, {1.0})({zeros({1, 2, 2}, kUInt8), Tensor()}, g); },
                          {"Normalize", "floating-point", "uint8"}));
  EXPECT_TRUE(throws_with([&] { Normalize({0.5, 0.5, 0.5}, {1, 1, 1})({zeros({1, 4, 4}), Tensor()}, g); },
                          {"Normalize", "[1, 4, 4]", "C = 3"}));
}

TEST(Transforms, RandomCropPadsWithZerosAndCutsAWindow) {
  // x: (1, 4, 4) = 1..16; padded by 2 into (1, 8, 8) with zeros around.
  Tensor x = (arange(16).to(kFloat32) + 1).view({1, 4, 4});
  const std::vector<float> xv = x.to_vector<float>();
  auto padded_at = [&](int64_t r, int64_t c) -> float {
    const int64_t i = r - 2, j = c - 2;
    return i >= 0 && i < 4 && j >= 0 && j < 4 ? xv[static_cast<size_t>(i * 4 + j)] : 0.0f;
  };
  RandomCrop crop(4, 2);
  std::set<std::pair<int64_t, int64_t>> offsets;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    SampleGenerator g(seed);
    Tensor out = crop({x, Tensor()}, g).data;
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 4, 4}));
    const std::vector<float> v = out.to_vector<float>();
    // The window's offset, found from the first row (re-drawn from a copy of
    // the same generator: top first, then left).
    SampleGenerator again(seed);
    const int64_t top = again.randint(0, 5), left = again.randint(0, 5);
    offsets.insert({top, left});
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t c = 0; c < 4; ++c)
        ASSERT_EQ(v[static_cast<size_t>(r * 4 + c)], padded_at(top + r, left + c))
            << "seed " << seed << " window (" << top << ", " << left << ")";
  }
  EXPECT_EQ(offsets.size(), 25u) << "every window position of the padded image should occur";

  // A rectangular crop without padding keeps the leading dims.
  SampleGenerator g(1);
  EXPECT_EQ(RandomCrop({3, 4})({zeros({2, 5, 6}), Tensor()}, g).data.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_TRUE(throws_with([&] { RandomCrop(9, 2)({zeros({1, 4, 4}), Tensor()}, g); },
                          {"RandomCrop", "(9, 9)", "[1, 4, 4]", "(8, 8)"}));
  EXPECT_TRUE(throws_with([] { RandomCrop(4, -1); }, {"RandomCrop", "padding"}));
}

TEST(Transforms, RandomHorizontalFlip) {
  Tensor x = arange(6).to(kFloat32).view({1, 2, 3});
  const std::vector<float> mirrored = {2, 1, 0, 5, 4, 3};
  SampleGenerator g(3);
  EXPECT_EQ(RandomHorizontalFlip(1.0)({x, Tensor()}, g).data.to_vector<float>(), mirrored);
  EXPECT_EQ(RandomHorizontalFlip(0.0)({x, Tensor()}, g).data.to_vector<float>(), x.to_vector<float>());
  int flips = 0;
  for (uint64_t seed = 0; seed < 1000; ++seed) {
    SampleGenerator gs(seed);
    if (RandomHorizontalFlip()({x, Tensor()}, gs).data.to_vector<float>() == mirrored) ++flips;
  }
  EXPECT_NEAR(flips, 500, 80);  // 5 standard deviations of a fair coin
  EXPECT_TRUE(throws_with([] { RandomHorizontalFlip(1.5); }, {"RandomHorizontalFlip", "[0, 1]"}));
}

TEST(Transforms, ComposeAppliesInOrderWithOneGenerator) {
  Tensor x = rand({1, 6, 6});
  Compose both({RandomCrop(4, 1), RandomHorizontalFlip(), Normalize({0.5}, {0.25})});
  SampleGenerator g1(11), g2(11);
  Tensor composed = both({x, Tensor()}, g1).data;
  Example step{x, Tensor()};
  step = RandomCrop(4, 1)(step, g2);
  step = RandomHorizontalFlip()(step, g2);
  step = Normalize({0.5}, {0.25})(step, g2);
  EXPECT_TRUE(composed.equal(step.data));
  EXPECT_TRUE(throws_with([] { Compose({Transform()}); }, {"Compose", "transforms[0] is empty"}));
}

// ---- DataLoader ----

TEST(DataLoader, BatchesInOrderWithShapes) {
  auto ds = rows_dataset(10);
  DataLoader loader(ds, {.batch_size = 4});
  EXPECT_EQ(loader.size(), 3);
  std::vector<std::vector<int64_t>> targets;
  std::vector<std::vector<int64_t>> shapes;
  for (Batch& b : loader) {
    targets.push_back(targets_of(b));
    shapes.push_back(b.data.sizes());
    EXPECT_EQ(b.target.dtype(), kInt64);
    EXPECT_EQ(b.data.dtype(), kFloat32);
  }
  EXPECT_EQ(targets, (std::vector<std::vector<int64_t>>{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}));
  EXPECT_EQ(shapes, (std::vector<std::vector<int64_t>>{{4, 3}, {4, 3}, {2, 3}}));
  // The data rows are the dataset's rows, stacked.
  Batch first = *loader.begin();
  EXPECT_TRUE(first.data.equal(ds->data().narrow(0, 0, 4)));

  DataLoader dropping(ds, {.batch_size = 4, .drop_last = true});
  EXPECT_EQ(dropping.size(), 2);
  int64_t n = 0;
  for (Batch& b : dropping) {
    EXPECT_EQ(b.data.size(0), 4);
    ++n;
  }
  EXPECT_EQ(n, 2);
  EXPECT_EQ(DataLoader(ds, {.batch_size = 5, .drop_last = true}).size(), 2);
  EXPECT_EQ(DataLoader(ds, {.batch_size = 11, .drop_last = true}).size(), 0);
  EXPECT_EQ(DataLoader(ds, {.batch_size = 11}).size(), 1);
}

TEST(DataLoader, EmptyDatasetGivesNoBatches) {
  DataLoader loader(rows_dataset(0), {.batch_size = 2, .num_workers = 2});
  EXPECT_EQ(loader.size(), 0);
  EXPECT_TRUE(loader.begin() == loader.end());
}

TEST(DataLoader, OptionErrors) {
  auto ds = rows_dataset(4);
  EXPECT_TRUE(throws_with([&] { DataLoader(ds, {.batch_size = 0}); }, {"DataLoader", "batch_size", "0"}));
  EXPECT_TRUE(throws_with([&] { DataLoader(ds, {.num_workers = -1}); }, {"DataLoader", "num_workers"}));
  EXPECT_TRUE(throws_with([&] { DataLoader(ds, {.prefetch_factor = 0}); }, {"DataLoader", "prefetch_factor"}));
  EXPECT_TRUE(throws_with([] { DataLoader(nullptr); }, {"DataLoader", "null"}));
  DataLoader loader(ds);
  EXPECT_TRUE(throws_with([&] { loader.set_epoch(-1); }, {"set_epoch", "-1"}));
}

// Every batch's targets for one epoch.
std::vector<std::vector<int64_t>> epoch_targets(DataLoader& loader) {
  std::vector<std::vector<int64_t>> out;
  for (Batch& b : loader) out.push_back(targets_of(b));
  return out;
}

TEST(DataLoader, ShuffleIsAPermutationKeyedBySeedAndEpoch) {
  auto ds = rows_dataset(50);
  DataLoader a(ds, {.batch_size = 8, .shuffle = true, .seed = 5});
  const auto e0 = epoch_targets(a), e1 = epoch_targets(a);  // epochs 0 and 1
  EXPECT_EQ(a.epoch(), 2);
  std::vector<int64_t> flat;
  for (const auto& b : e0) flat.insert(flat.end(), b.begin(), b.end());
  std::vector<int64_t> sorted = flat;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> expected(50);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(sorted, expected) << "an epoch visits every example once";
  EXPECT_NE(flat, expected) << "shuffled";
  EXPECT_NE(e0, e1) << "each epoch has its own order";

  // Same seed: same orders. set_epoch(1) replays epoch 1 (resuming).
  DataLoader b(ds, {.batch_size = 8, .shuffle = true, .seed = 5});
  EXPECT_EQ(epoch_targets(b), e0);
  DataLoader resumed(ds, {.batch_size = 8, .shuffle = true, .seed = 5});
  resumed.set_epoch(1);
  EXPECT_EQ(epoch_targets(resumed), e1);
  EXPECT_EQ(resumed.epoch(), 2);
  // Calling set_epoch before every epoch works the same way.
  resumed.set_epoch(0);
  EXPECT_EQ(epoch_targets(resumed), e0);

  DataLoader other(ds, {.batch_size = 8, .shuffle = true, .seed = 6});
  EXPECT_NE(epoch_targets(other), e0) << "another seed, another order";

  // Shuffling does not touch the global generator.
  manual_seed(123);
  const float before = rand({1}).item<float>();
  manual_seed(123);
  epoch_targets(a);
  EXPECT_EQ(rand({1}).item<float>(), before);
}

// All batches of one epoch, data and target.
std::vector<Batch> epoch_batches(DataLoader& loader) {
  std::vector<Batch> out;
  for (Batch& b : loader) out.push_back(b);
  return out;
}

// Every batch of every epoch equal, bit for bit.
void expect_same_batches(const std::vector<std::vector<Batch>>& epochs,
                         const std::vector<std::vector<Batch>>& reference) {
  ASSERT_EQ(epochs.size(), reference.size());
  for (size_t e = 0; e < epochs.size(); ++e) {
    ASSERT_EQ(epochs[e].size(), reference[e].size());
    for (size_t k = 0; k < epochs[e].size(); ++k) {
      EXPECT_TRUE(epochs[e][k].data.equal(reference[e][k].data)) << "epoch " << e << " batch " << k;
      EXPECT_TRUE(epochs[e][k].target.equal(reference[e][k].target)) << "epoch " << e << " batch " << k;
    }
  }
}

TEST(DataLoader, WorkerCountDoesNotChangeTheBatches) {
  // Images (40, 1, 6, 6) with random crops and flips, shuffled, 3 epochs.
  manual_seed(0);
  auto ds = std::make_shared<TensorDataset>(rand({40, 1, 6, 6}), arange(40));
  Transform augment = Compose({RandomCrop(6, 2), RandomHorizontalFlip(), Normalize({0.5}, {0.5})});
  std::vector<std::vector<Batch>> reference;
  for (int64_t workers : {0, 1, 3}) {
    SCOPED_TRACE("num_workers = " + std::to_string(workers));
    DataLoader loader(ds, {.batch_size = 6, .shuffle = true, .num_workers = workers, .seed = 9, .transform = augment});
    std::vector<std::vector<Batch>> epochs;
    for (int e = 0; e < 3; ++e) epochs.push_back(epoch_batches(loader));
    if (reference.empty()) {
      reference = epochs;
      // The transforms did something: some example differs from its source.
      const Batch& b = reference[0][0];
      Tensor source = index_select(ds->data(), 0, b.target);
      EXPECT_FALSE(b.data.equal((source - 0.5) / 0.5));
      EXPECT_NE(reference[0][0].data.to_vector<float>(), reference[1][0].data.to_vector<float>());
      continue;
    }
    expect_same_batches(epochs, reference);
  }
}

// A dataset that counts calls, can be slow, can fail at one index, and
// records whether gradient recording was on when it was called.
class ProbeDataset : public Dataset {
 public:
  ProbeDataset(int64_t n, int64_t fail_at = -1, int sleep_us = 0) : n_(n), fail_at_(fail_at), sleep_us_(sleep_us) {}
  Example get(int64_t index) override {
    check_index(index);
    calls++;
    if (is_grad_enabled()) grad_enabled_calls++;
    if (sleep_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    LOOM_CHECK(index != fail_at_, "ProbeDataset: broken example ", index);
    return {full({2}, static_cast<double>(index)), scalar_tensor(index)};
  }
  int64_t size() const override { return n_; }
  std::string name() const override { return "ProbeDataset"; }
  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> grad_enabled_calls{0};

 private:
  int64_t n_, fail_at_;
  int sleep_us_;
};

TEST(DataLoader, WorkerExceptionReachesTheLoopInOrder) {
  for (int64_t workers : {0, 1, 3}) {
    SCOPED_TRACE("num_workers = " + std::to_string(workers));
    // Example 7 sits in batch 3 (examples 6, 7): batches 0-2 arrive first.
    DataLoader loader(std::make_shared<ProbeDataset>(20, 7), {.batch_size = 2, .num_workers = workers});
    int64_t delivered = 0;
    EXPECT_TRUE(throws_with(
        [&] {
          for (Batch& b : loader) {
            EXPECT_EQ(targets_of(b)[0], 2 * delivered);
            ++delivered;
          }
        },
        {"ProbeDataset: broken example 7"}));
    EXPECT_EQ(delivered, 3);
    // The next epoch fails again, at the same place.
    delivered = 0;
    EXPECT_THROW(
        {
          for (Batch& b : loader) {
            (void)b;
            ++delivered;
          }
        },
        Error);
    EXPECT_EQ(delivered, 3);
  }
}

TEST(DataLoader, EarlyBreakStopsTheWorkers) {
  auto ds = std::make_shared<ProbeDataset>(400, -1, 200);
  {
    DataLoader loader(ds, {.batch_size = 4, .num_workers = 3, .prefetch_factor = 2});
    for (Batch& b : loader) {
      (void)b;
      break;
    }
    // The iterator is gone: its workers were joined, so no more calls happen.
    const int64_t after_break = ds->calls.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(ds->calls.load(), after_break);
    // At most the batch delivered plus 3 workers * 2 prefetched were built.
    EXPECT_LE(after_break, (1 + 3 * 2) * 4);
    // The next epoch runs in full.
    int64_t n = 0;
    for (Batch& b : loader) {
      (void)b;
      ++n;
    }
    EXPECT_EQ(n, 100);
  }
  // Destroying the loader while an iterator lives on stops its workers; the
  // iterator keeps its current batch and then ends.
  auto loader = std::make_unique<DataLoader>(ds, DataLoaderOptions{.batch_size = 4, .num_workers = 3});
  auto it = loader->begin();
  loader.reset();
  EXPECT_EQ(it->data.size(0), 4);
  ++it;
  EXPECT_TRUE(it == DataLoader::Iterator());
}

TEST(DataLoader, PrefetchIsBounded) {
  auto ds = std::make_shared<ProbeDataset>(200);
  DataLoader loader(ds, {.batch_size = 5, .num_workers = 2, .prefetch_factor = 1});
  auto it = loader.begin();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Batch 0 is delivered; the workers may hold batches 1 and 2, no more.
  EXPECT_LE(ds->calls.load(), 3 * 5);
  EXPECT_GE(ds->calls.load(), 5);
}

TEST(DataLoader, BatchesAreBuiltWithoutGradientRecording) {
  for (int64_t workers : {0, 2}) {
    auto ds = std::make_shared<ProbeDataset>(12);
    DataLoader loader(ds, {.batch_size = 3, .num_workers = workers});
    ASSERT_TRUE(is_grad_enabled());
    for (Batch& b : loader) EXPECT_FALSE(b.data.requires_grad());
    EXPECT_TRUE(is_grad_enabled()) << "the guard is scoped to building";
    EXPECT_EQ(ds->calls.load(), 12);
    EXPECT_EQ(ds->grad_enabled_calls.load(), 0) << "num_workers = " << workers;
  }
  // Data that requires grad comes out as plain values.
  Tensor w = ones({4, 2}, TensorOptions().requires_grad(true));
  DataLoader loader(std::make_shared<TensorDataset>(w, arange(4)), {.batch_size = 2});
  for (Batch& b : loader) EXPECT_FALSE(b.data.requires_grad());
}

TEST(DataLoader, CollateChecksThatExamplesMatch) {
  EXPECT_TRUE(throws_with([] { collate({}); }, {"collate", "at least one"}));
  EXPECT_TRUE(throws_with([] { collate({{zeros({2}), scalar_tensor(int64_t{0})}, {zeros({3}), scalar_tensor(int64_t{1})}}); },
                          {"collate", "example 1", "[3]", "[2]"}));
  EXPECT_TRUE(throws_with([] { collate({{zeros({2}), scalar_tensor(int64_t{0})}, {zeros({2}), Tensor()}}); },
                          {"collate", "example 1", "no target"}));
  Batch b = collate({{zeros({2}), Tensor()}, {ones({2}), Tensor()}});
  EXPECT_EQ(b.data.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(b.data.to_vector<float>(), (std::vector<float>{0, 0, 1, 1}));
  EXPECT_FALSE(b.target.defined());
  // Non-contiguous examples are copied in logical order.
  Tensor t = arange(6).view({2, 3}).t();  // (3, 2)
  Batch c = collate({{t, Tensor()}});
  EXPECT_EQ(c.data.to_vector<int64_t>(), (std::vector<int64_t>{0, 3, 1, 4, 2, 5}));
}

// ---- samplers ----
//
// PyTorch's DistributedSampler (torch/utils/data/distributed.py), the
// reference these tests follow:
//   num_samples = ceil((N - R) / R) if drop_last and N % R else ceil(N / R)
//   total_size = num_samples * R
//   indices = randperm(N, generator seeded seed + epoch) if shuffle else range(N)
//   if not drop_last: indices += (indices * ceil(pad / N))[:pad]   # pad = total_size - N
//   else: indices = indices[:total_size]
//   return indices[rank:total_size:R]
// loom keys the permutation by (seed, epoch) through SampleGenerator instead
// of torch's generator, so the orders differ from torch's but the structure
// is the same.

// Every rank's indices of one epoch, rank by rank.
std::vector<std::vector<int64_t>> all_ranks(int64_t n, int replicas, int64_t epoch, bool shuffle, uint64_t seed,
                                            bool drop_last) {
  std::vector<std::vector<int64_t>> out;
  for (int r = 0; r < replicas; ++r)
    out.push_back(DistributedSampler(n, replicas, r, shuffle, seed, drop_last).indices(epoch));
  return out;
}

// The list the ranks took their strides of: position r + k R is rank r's k-th.
std::vector<int64_t> interleave(const std::vector<std::vector<int64_t>>& ranks) {
  std::vector<int64_t> out;
  for (size_t k = 0; k < ranks[0].size(); ++k)
    for (const auto& r : ranks) out.push_back(r[k]);
  return out;
}

TEST(DistributedSampler, PaddingRepeatsTheFirstIndicesOfThePermutation) {
  // N = 10, R = 4: total_size 12, 3 samples per rank, padded with perm[0..2).
  const std::vector<int64_t> perm = SampleGenerator::for_shuffle(7, 2).permutation(10);
  const auto ranks = all_ranks(10, 4, /*epoch=*/2, /*shuffle=*/true, /*seed=*/7, /*drop_last=*/false);
  for (int r = 0; r < 4; ++r) {
    DistributedSampler s(10, 4, r, true, 7);
    EXPECT_EQ(s.size(), 3);
    EXPECT_EQ(s.total_size(), 12);
    ASSERT_EQ(ranks[r].size(), 3u);
  }
  std::vector<int64_t> padded = perm;
  padded.push_back(perm[0]);
  padded.push_back(perm[1]);
  EXPECT_EQ(interleave(ranks), padded) << "rank r takes padded[r], padded[r + 4], padded[r + 8]";
  // Together the ranks cover the dataset; exactly perm[0] and perm[1] twice.
  std::vector<int64_t> count(10, 0);
  for (const auto& r : ranks)
    for (int64_t i : r) count[static_cast<size_t>(i)]++;
  for (int64_t i = 0; i < 10; ++i) {
    const bool repeated = i == perm[0] || i == perm[1];
    EXPECT_EQ(count[static_cast<size_t>(i)], repeated ? 2 : 1) << "index " << i;
  }
  // Padding longer than the list cycles through it again: N = 2, R = 7 pads
  // 0 1 to 0 1 0 1 0 1 0 (torch: indices * ceil(5 / 2), cut to 5).
  EXPECT_EQ(interleave(all_ranks(2, 7, 0, false, 0, false)), (std::vector<int64_t>{0, 1, 0, 1, 0, 1, 0}));
  EXPECT_EQ(interleave(all_ranks(1, 3, 0, true, 0, false)), (std::vector<int64_t>{0, 0, 0}));
}

TEST(DistributedSampler, DropLastCutsTheTail) {
  // N = 10, R = 4: floor(10 / 4) = 2 samples each, perm[8] and perm[9] skipped.
  const std::vector<int64_t> perm = SampleGenerator::for_shuffle(3, 0).permutation(10);
  const auto ranks = all_ranks(10, 4, 0, true, 3, /*drop_last=*/true);
  for (const auto& r : ranks) EXPECT_EQ(r.size(), 2u);
  EXPECT_EQ(DistributedSampler(10, 4, 1, true, 3, true).size(), 2);
  EXPECT_EQ(DistributedSampler(10, 4, 1, true, 3, true).total_size(), 8);
  EXPECT_EQ(interleave(ranks), std::vector<int64_t>(perm.begin(), perm.begin() + 8));
  // An even split drops nothing; fewer examples than ranks leaves none.
  EXPECT_EQ(interleave(all_ranks(12, 4, 0, false, 0, true)), interleave(all_ranks(12, 4, 0, false, 0, false)));
  EXPECT_EQ(DistributedSampler(12, 4, 0, false, 0, true).size(), 3);
  for (const auto& r : all_ranks(3, 4, 0, true, 0, true)) EXPECT_TRUE(r.empty());
}

TEST(DistributedSampler, OrderIsKeyedBySeedAndEpoch) {
  const auto e0 = all_ranks(50, 3, 0, true, 11, false);
  // Fresh objects, same (seed, epoch): the same indices on every rank, so the
  // ranks agree on one permutation.
  EXPECT_EQ(all_ranks(50, 3, 0, true, 11, false), e0);
  DistributedSampler s(50, 3, 1, true, 11);
  EXPECT_EQ(s.indices(0), e0[1]);
  EXPECT_EQ(s.indices(0), s.indices(0));
  const std::vector<int64_t> list = interleave(e0);
  std::vector<int64_t> firsts(list.begin(), list.begin() + 50);
  std::sort(firsts.begin(), firsts.end());
  std::vector<int64_t> expected(50);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(firsts, expected) << "the shared list starts with a permutation of 0..49";
  EXPECT_NE(all_ranks(50, 3, 1, true, 11, false), e0) << "another epoch, another order";
  EXPECT_NE(all_ranks(50, 3, 0, true, 12, false), e0) << "another seed, another order";
  // One replica visits what a DataLoader with shuffle and the same seed does.
  auto ds = rows_dataset(50);
  DataLoader shuffled(ds, {.batch_size = 50, .shuffle = true, .seed = 11});
  shuffled.set_epoch(4);
  EXPECT_EQ(targets_of(*shuffled.begin()), DistributedSampler(50, 1, 0, true, 11).indices(4));
}

TEST(DistributedSampler, WithoutShuffleRanksStrideThroughTheDataset) {
  // N = 10, R = 3: total_size 12, the list 0..9 0 1.
  const auto ranks = all_ranks(10, 3, 0, /*shuffle=*/false, 0, false);
  EXPECT_EQ(ranks, (std::vector<std::vector<int64_t>>{{0, 3, 6, 9}, {1, 4, 7, 0}, {2, 5, 8, 1}}));
  EXPECT_EQ(all_ranks(10, 3, 5, false, 0, false), ranks) << "the epoch does not matter";
  EXPECT_EQ(all_ranks(10, 3, 0, false, 0, true), (std::vector<std::vector<int64_t>>{{0, 3, 6}, {1, 4, 7}, {2, 5, 8}}));
  EXPECT_EQ(DistributedSampler(6, 1, 0, false).indices(0), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
}

TEST(DistributedSampler, EmptyDatasetGivesNoSamples) {
  for (bool drop_last : {false, true})
    for (bool shuffle : {false, true})
      for (int r = 0; r < 3; ++r) {
        DistributedSampler s(0, 3, r, shuffle, 0, drop_last);
        EXPECT_EQ(s.size(), 0);
        EXPECT_TRUE(s.indices(0).empty());
      }
  DataLoader loader(rows_dataset(0), {.batch_size = 2, .sampler = std::make_shared<DistributedSampler>(0, 2, 1)});
  EXPECT_EQ(loader.size(), 0);
  EXPECT_TRUE(loader.begin() == loader.end());
}

TEST(DistributedSampler, ReplicasAndRankFromLoomDistributed) {
  // No process group here: world size 1, rank 0 (whatever loom::distributed says).
  DistributedSampler s(7);
  EXPECT_EQ(s.num_replicas(), distributed::get_world_size());
  EXPECT_EQ(s.rank(), distributed::get_rank());
  EXPECT_TRUE(s.shuffle());
  EXPECT_FALSE(s.drop_last());
  DistributedSampler half(7, {.num_replicas = 2, .shuffle = false});
  EXPECT_EQ(half.num_replicas(), 2);
  EXPECT_EQ(half.rank(), distributed::get_rank());
  DistributedSampler given(7, {.num_replicas = 2, .rank = 1, .shuffle = false, .drop_last = true});
  EXPECT_EQ(given.indices(0), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(given.seed(), 0u);
}

TEST(DistributedSampler, Errors) {
  EXPECT_TRUE(throws_with([] { DistributedSampler(10, 4, 4); }, {"DistributedSampler", "rank 4", "num_replicas 4"}));
  EXPECT_TRUE(throws_with([] { DistributedSampler(10, 4, -1); }, {"DistributedSampler", "rank -1", "num_replicas 4"}));
  EXPECT_TRUE(throws_with([] { DistributedSampler(10, 0, 0); }, {"DistributedSampler", "num_replicas", "got 0"}));
  EXPECT_TRUE(throws_with([] { DistributedSampler(-1, 2, 0); }, {"DistributedSampler", "dataset_size", "-1"}));
  EXPECT_TRUE(throws_with([] { DistributedSampler(10, {.num_replicas = -2}); }, {"num_replicas", "-2"}));
  if (distributed::get_world_size() == 1) {
    EXPECT_TRUE(throws_with([] { DistributedSampler(10, {.rank = 1}); }, {"rank 1", "num_replicas 1"}));
  }
  EXPECT_TRUE(throws_with([] { DistributedSampler(10, 2, 0).indices(-1); }, {"indices", "epoch", "-1"}));
}

// Unlabelled data whose example i is the int64 scalar i: a batch's data is
// the indices it was built from.
std::shared_ptr<TensorDataset> index_dataset(int64_t n) { return std::make_shared<TensorDataset>(arange(n)); }

TEST(DataLoaderSampler, VisitsTheSamplersIndicesInOrder) {
  auto ds = index_dataset(10);
  auto sampler = std::make_shared<DistributedSampler>(10, 4, 3, true, 5);  // 3 samples: batches of 2, then 1
  DataLoader loader(ds, {.batch_size = 2, .sampler = sampler, .seed = 1});
  EXPECT_EQ(loader.size(), 2);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    SCOPED_TRACE("epoch " + std::to_string(epoch));
    std::vector<int64_t> seen;
    std::vector<int64_t> batch_sizes;
    for (Batch& b : loader) {
      const std::vector<int64_t> got = b.data.to_vector<int64_t>();
      seen.insert(seen.end(), got.begin(), got.end());
      batch_sizes.push_back(b.data.size(0));
      EXPECT_FALSE(b.target.defined());
    }
    EXPECT_EQ(seen, sampler->indices(epoch)) << "the loader's epoch is the sampler's";
    EXPECT_EQ(batch_sizes, (std::vector<int64_t>{2, 1}));
  }
  EXPECT_EQ(loader.epoch(), 3);
  // set_epoch replays an epoch, as in PyTorch's sampler.set_epoch(e).
  const std::vector<int64_t> e0 = sampler->indices(0), e1 = sampler->indices(1);
  loader.set_epoch(1);
  EXPECT_EQ(loader.begin()->data.to_vector<int64_t>(), std::vector<int64_t>(e1.begin(), e1.begin() + 2));
  // The loader's drop_last still drops the short last batch.
  DataLoader dropping(ds, {.batch_size = 2, .sampler = sampler, .drop_last = true});
  EXPECT_EQ(dropping.size(), 1);
  int64_t n = 0;
  for (Batch& b : dropping) {
    EXPECT_EQ(b.data.to_vector<int64_t>(), std::vector<int64_t>(e0.begin(), e0.begin() + 2));
    ++n;
  }
  EXPECT_EQ(n, 1);
}

TEST(DataLoaderSampler, WorkerCountDoesNotChangeTheBatches) {
  // The images test above, through rank 1 of 3 with padding (40 -> 42), random
  // crops and flips keyed by the loader's seed.
  manual_seed(0);
  auto ds = std::make_shared<TensorDataset>(rand({40, 1, 6, 6}), arange(40));
  auto sampler = std::make_shared<DistributedSampler>(40, 3, 1, true, 4);
  Transform augment = Compose({RandomCrop(6, 2), RandomHorizontalFlip()});
  std::vector<std::vector<Batch>> reference;
  for (int64_t workers : {0, 1, 3}) {
    SCOPED_TRACE("num_workers = " + std::to_string(workers));
    DataLoader loader(ds,
                      {.batch_size = 4, .sampler = sampler, .num_workers = workers, .seed = 9, .transform = augment});
    std::vector<std::vector<Batch>> epochs;
    for (int e = 0; e < 2; ++e) epochs.push_back(epoch_batches(loader));
    if (reference.empty()) {
      reference = epochs;
      // The transforms did something: some example differs from its source.
      const Batch& b = reference[0][0];
      EXPECT_FALSE(b.data.equal(index_select(ds->data(), 0, b.target)));
      for (int e = 0; e < 2; ++e) {
        std::vector<int64_t> seen;
        for (const Batch& b : epochs[e]) {
          const auto t = targets_of(b);
          seen.insert(seen.end(), t.begin(), t.end());
        }
        EXPECT_EQ(seen, sampler->indices(e));
      }
      continue;
    }
    expect_same_batches(epochs, reference);
  }
}

// A sampler that returns a fixed list, whatever it claims as its size.
class FixedSampler : public Sampler {
 public:
  FixedSampler(std::vector<int64_t> indices, int64_t size) : indices_(std::move(indices)), size_(size) {}
  std::vector<int64_t> indices(int64_t) const override { return indices_; }
  int64_t size() const override { return size_; }

 private:
  std::vector<int64_t> indices_;
  int64_t size_;
};

TEST(DataLoaderSampler, Errors) {
  auto ds = index_dataset(10);
  auto sampler = std::make_shared<DistributedSampler>(10, 2, 0);
  EXPECT_TRUE(throws_with([&] { DataLoader(ds, {.shuffle = true, .sampler = sampler}); },
                          {"DataLoader", "sampler option is mutually exclusive with shuffle"}));
  // A sampler for a bigger dataset reaches past this one.
  for (int64_t workers : {0, 2}) {
    auto past_the_end = std::make_shared<FixedSampler>(std::vector<int64_t>{1, 12, 3}, 3);
    DataLoader loader(ds, {.batch_size = 3, .sampler = past_the_end, .num_workers = workers});
    EXPECT_TRUE(
        throws_with([&] { loader.begin(); }, {"DataLoader", "index 12", "position 1", "TensorDataset", "size 10"}));
  }
  DataLoader negative(ds, {.sampler = std::make_shared<FixedSampler>(std::vector<int64_t>{-1}, 1)});
  EXPECT_TRUE(throws_with([&] { negative.begin(); }, {"DataLoader", "index -1"}));
  DataLoader liar(ds, {.sampler = std::make_shared<FixedSampler>(std::vector<int64_t>{1, 2}, 3)});
  EXPECT_TRUE(throws_with([&] { liar.begin(); }, {"DataLoader", "gave 2 indices", "size() is 3"}));
}

}  // namespace
