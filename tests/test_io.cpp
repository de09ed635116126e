// Checkpoints: safetensors round trips, the exact byte layout, interop with a
// Python reader/writer, every corrupt-file case, atomic writes, and module
// save/load.
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using loom::Tensor;
using loom::io::load_safetensors;
using loom::io::parse_safetensors;
using loom::io::save_safetensors;

namespace {

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("loom_test_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void append_le64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// A file from a header text and data bytes; `length` overrides the 8-byte
// header length field.
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data = {},
                               std::optional<uint64_t> length = std::nullopt) {
  std::vector<uint8_t> out;
  append_le64(out, length.value_or(header.size()));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// parse_safetensors must throw loom::Error whose message names the file and
// contains `expected`.
void expect_parse_error(const std::vector<uint8_t>& bytes, const std::string& expected) {
  try {
    parse_safetensors(bytes.data(), bytes.size(), "corrupt.safetensors");
    ADD_FAILURE() << "no error; expected one containing: " << expected;
  } catch (const loom::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("corrupt.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(expected), std::string::npos) << "message: " << msg << "\nexpected to contain: " << expected;
  }
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const loom::Error& e) {
    return e.what();
  }
  return "<no error>";
}

// A tensor of `dtype` and `shape` with distinct values (0/1 for bool), all
// exact in every dtype they are cast to.
Tensor sample(loom::DType dtype, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double x = static_cast<double>(i);
    v[i] = dtype == loom::kBool            ? (i % 3 == 1)
           : loom::is_floating_point(dtype) ? x * 0.5 - 3.25
           : dtype == loom::kUInt8          ? static_cast<double>((i * 7) % 256)
                                            : x * 1000003 - 17;
  }
  return loom::tensor(v, loom::kFloat64).to(dtype).reshape(shape);
}

const loom::DType kAllDTypes[] = {loom::kFloat32, loom::kFloat64, loom::kFloat16, loom::kBFloat16,
                                  loom::kInt32,   loom::kInt64,   loom::kUInt8,   loom::kBool};

}  // namespace

TEST(Safetensors, RoundTripEveryDTypeAndShape) {
  TempDir dir;
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {1}, {5}, {2, 3}, {2, 0, 4}, {3, 1, 2, 2}};
  loom::nn::StateDict sd;
  for (loom::DType dt : kAllDTypes)
    for (size_t s = 0; s < shapes.size(); ++s)
      sd.emplace_back(std::string(loom::dtype_name(dt)) + "/" + std::to_string(s), sample(dt, shapes[s]));
  save_safetensors(dir.file("all.safetensors"), sd);
  loom::io::SafetensorsFile f = load_safetensors(dir.file("all.safetensors"));
  ASSERT_EQ(f.tensors.size(), sd.size());
  EXPECT_TRUE(f.metadata.empty());
  for (size_t i = 0; i < sd.size(); ++i) {
    SCOPED_TRACE(sd[i].first);
    EXPECT_EQ(f.tensors[i].first, sd[i].first);  // file order is save order
    const Tensor& got = f.tensors[i].second;
    EXPECT_EQ(got.dtype(), sd[i].second.dtype());
    EXPECT_EQ(got.sizes(), sd[i].second.sizes());
    if (got.numel() > 0) {
      EXPECT_TRUE(got.is_contiguous());  // empty tensors have no layout to check
    }
    EXPECT_TRUE(got.equal(sd[i].second));
  }
}

TEST(Safetensors, SavesStridedAndGradTensorsAsTheirValues) {
  TempDir dir;
  Tensor base = loom::arange(12, loom::kFloat32).reshape({3, 4});
  Tensor w = loom::ones({2, 2}, loom::TensorOptions().requires_grad(true));
  loom::nn::StateDict sd = {{"t", base.t()},                                // (4, 3), strides (1, 4)
                            {"slice", base.index({loom::Slice(), 1})},     // (3,), stride 4
                            {"expanded", loom::tensor({1.5}).expand({3})},  // stride 0
                            {"w", w}};
  std::vector<uint8_t> bytes = loom::io::serialize_safetensors(sd);
  auto f = parse_safetensors(bytes.data(), bytes.size(), "mem");
  ASSERT_EQ(f.tensors.size(), 4u);
  EXPECT_TRUE(f.tensors[0].second.equal(base.t().contiguous()));
  EXPECT_EQ(f.tensors[1].second.to_vector<float>(), (std::vector<float>{1, 5, 9}));
  EXPECT_EQ(f.tensors[2].second.to_vector<float>(), (std::vector<float>{1.5, 1.5, 1.5}));
  EXPECT_FALSE(f.tensors[3].second.requires_grad());
  EXPECT_TRUE(f.tensors[3].second.equal(loom::ones({2, 2})));
}

TEST(Safetensors, MetadataRoundTrip) {
  TempDir dir;
  std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"epoch", "3"}, {"note", "quotes \" and \\ and \n newline, ünïcödé"}, {"empty", ""}};
  save_safetensors(dir.file("m.safetensors"), {{"x", loom::ones({2})}}, meta);
  auto f = load_safetensors(dir.file("m.safetensors"));
  EXPECT_EQ(f.metadata, meta);
  // Metadata alone, no tensors: an empty data section.
  save_safetensors(dir.file("only_meta.safetensors"), {}, meta);
  auto g = load_safetensors(dir.file("only_meta.safetensors"));
  EXPECT_TRUE(g.tensors.empty());
  EXPECT_EQ(g.metadata, meta);
}

TEST(Safetensors, ByteExactLayout) {
  TempDir dir;
  // b: int32 0-dim 7; a: float32 [1, -2]. The header, by hand: 138 bytes of
  // JSON, padded with 6 spaces to 144; data: b at [0, 4), a at [4, 12).
  std::string json =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"I32","shape":[],"data_offsets":[0,4]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  ASSERT_EQ(json.size(), 138u);
  std::vector<uint8_t> expected;
  expected.reserve(164);
  append_le64(expected, 144);
  expected.insert(expected.end(), json.begin(), json.end());
  expected.insert(expected.end(), 6, ' ');
  const uint8_t data[] = {7, 0, 0, 0,             // int32 7
                          0x00, 0x00, 0x80, 0x3f,  // float 1.0
                          0x00, 0x00, 0x00, 0xc0};  // float -2.0
  expected.insert(expected.end(), std::begin(data), std::end(data));
  ASSERT_EQ(expected.size(), 164u);

  loom::nn::StateDict sd = {{"b", loom::scalar_tensor(7, loom::kInt32)}, {"a", loom::tensor({1.0f, -2.0f})}};
  save_safetensors(dir.file("tiny.safetensors"), sd, {{"format", "pt"}});
  EXPECT_EQ(read_bytes(dir.file("tiny.safetensors")), expected);
  EXPECT_EQ(loom::io::serialize_safetensors(sd, {{"format", "pt"}}), expected);
  // Each dtype's code in the header.
  std::vector<std::string> codes;
  for (loom::DType dt : kAllDTypes) codes.push_back(loom::io::safetensors_dtype_name(dt));
  EXPECT_EQ(codes, (std::vector<std::string>{"F32", "F64", "F16", "BF16", "I32", "I64", "U8", "BOOL"}));
}

TEST(Safetensors, ReadsForeignLayouts) {
  // What other writers produce: whitespace in the JSON, an unpadded header,
  // keys in any order, and tensors whose data order differs from key order.
  std::string json = R"({ "y" : {"data_offsets": [8, 12], "shape": [1], "dtype": "I32"},
                           "x": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]} })";
  std::vector<uint8_t> data(12, 0);
  double x = 2.5;
  std::memcpy(data.data(), &x, 8);
  data[8] = 0xff;  // int32 -1
  data[9] = 0xff;
  data[10] = 0xff;
  data[11] = 0xff;
  auto bytes = make_file(json, data);
  auto f = parse_safetensors(bytes.data(), bytes.size(), "foreign");
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "y");
  EXPECT_EQ(f.tensors[0].second.to_vector<int32_t>(), std::vector<int32_t>{-1});
  EXPECT_EQ(f.tensors[1].first, "x");
  EXPECT_EQ(f.tensors[1].second.dim(), 0);
  EXPECT_EQ(f.tensors[1].second.item<double>(), 2.5);
  // Zero-size tensors may sit at the end of the data or at a boundary.
  auto empty = make_file(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
                         R"("s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
                         {0, 0, 0x80, 0x3f});
  auto g = parse_safetensors(empty.data(), empty.size(), "empty");
  EXPECT_EQ(g.tensors[0].second.sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(g.tensors[1].second.item<float>(), 1.0f);
}

// Python's json + struct, no safetensors package: reads what loom wrote and
// writes a file loom reads.
TEST(Safetensors, PythonInterop) {
  if (std::system("/usr/bin/python3 -c 'import json, struct' > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "/usr/bin/python3 is not available";
  TempDir dir;
  loom::nn::StateDict sd = {{"w", loom::tensor({{1.5f, -2.0f, 0.25f}, {4.0f, 5.0f, -6.5f}})},
                            {"h", loom::tensor({0.5, -1.0}).to(loom::kFloat16)},
                            {"bf", loom::tensor({3.0, -0.125}).to(loom::kBFloat16)},
                            {"step", loom::scalar_tensor(int64_t{12345678901}, loom::kInt64)},
                            {"mask", loom::tensor({true, false, true})},
                            {"bytes", loom::tensor({0, 255, 7}).to(loom::kUInt8)},
                            {"i", loom::tensor({-3, 4}).to(loom::kInt32)},
                            {"d", loom::tensor({0.1}, loom::kFloat64)}};
  save_safetensors(dir.file("from_loom.safetensors"), sd, {{"framework", "loom"}});

  std::string script = dir.file("check.py");
  std::ofstream(script) << R"PY(
import json, struct, sys
def bf16(b):
    return [struct.unpack('<f', b'\x00\x00' + b[i:i + 2])[0] for i in range(0, len(b), 2)]
fmt = {'F32': 'f', 'F64': 'd', 'F16': 'e', 'I32': 'i', 'I64': 'q', 'U8': 'B', 'BOOL': '?'}
size = {'F32': 4, 'F64': 8, 'F16': 2, 'BF16': 2, 'I32': 4, 'I64': 8, 'U8': 1, 'BOOL': 1}
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
assert n % 8 == 0, n
header = json.loads(raw[8:8 + n].decode('utf-8'))
data = raw[8 + n:]
assert header.pop('__metadata__') == {'framework': 'loom'}
end = 0
out = {}
for name, info in header.items():
    b, e = info['data_offsets']
    assert b == end, (name, b, end)
    end = e
    count = 1
    for d in info['shape']:
        count *= d
    assert e - b == count * size[info['dtype']], name
    chunk = data[b:e]
    vals = bf16(chunk) if info['dtype'] == 'BF16' else list(struct.unpack('<%d%s' % (count, fmt[info['dtype']]), chunk))
    out[name] = (info['dtype'], info['shape'], vals)
assert end == len(data)
assert out['w'] == ('F32', [2, 3], [1.5, -2.0, 0.25, 4.0, 5.0, -6.5]), out['w']
assert out['h'] == ('F16', [2], [0.5, -1.0]), out['h']
assert out['bf'] == ('BF16', [2], [3.0, -0.125]), out['bf']
assert out['step'] == ('I64', [], [12345678901]), out['step']
assert out['mask'] == ('BOOL', [3], [True, False, True]), out['mask']
assert out['bytes'] == ('U8', [3], [0, 255, 7]), out['bytes']
assert out['i'] == ('I32', [2], [-3, 4]), out['i']
assert out['d'] == ('F64', [1], [0.1]), out['d']
assert list(out) == ['w', 'h', 'bf', 'step', 'mask', 'bytes', 'i', 'd']

# A file written the way Python writers do: sorted keys, spaces after ':'
# and ',', header not padded to 8.
tensors = {'z': ('F32', [2, 2], struct.pack('<4f', 1, 2, 3, 4)),
           'a': ('I64', [3], struct.pack('<3q', -1, 0, 1 << 40))}
hdr, blob = {'__metadata__': {'source': 'python'}}, b''
for name in sorted(tensors):
    dt, shape, b = tensors[name]
    hdr[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [len(blob), len(blob) + len(b)]}
    blob += b
text = json.dumps(hdr, sort_keys=True).encode('utf-8')
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(text)) + text + blob)
)PY";
  std::string cmd = "/usr/bin/python3 " + script + " " + dir.file("from_loom.safetensors") + " " +
                    dir.file("from_python.safetensors");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  auto f = load_safetensors(dir.file("from_python.safetensors"));
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"source", "python"}}));
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "a");
  EXPECT_EQ(f.tensors[0].second.to_vector<int64_t>(), (std::vector<int64_t>{-1, 0, int64_t{1} << 40}));
  EXPECT_EQ(f.tensors[1].first, "z");
  EXPECT_EQ(f.tensors[1].second.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(f.tensors[1].second.to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
}

// ---- corrupt and hostile files: each gives a loom::Error naming the problem ----

TEST(SafetensorsCorrupt, LengthField) {
  expect_parse_error({}, "the file is 0 bytes, too short for the 8-byte header length");
  expect_parse_error({1, 2, 3, 4, 5}, "the file is 5 bytes, too short");
  // Length past the end of the file.
  expect_parse_error(make_file("{}", {}, 100), "header length 100 (file bytes 0-7) runs past the end of the file (10 bytes");
  // Length above the 100 MB cap: rejected before any allocation.
  expect_parse_error(make_file("{}", {}, uint64_t{1} << 40), "header length 1099511627776 (file bytes 0-7) exceeds the limit");
  expect_parse_error(make_file("{}", {}, ~uint64_t{0}), "exceeds the limit of 100000000 bytes");
  // A zero-length header is not JSON.
  expect_parse_error(make_file(""), "not valid JSON");
}

TEST(SafetensorsCorrupt, JsonSyntaxAndEncoding) {
  expect_parse_error(make_file(R"({"a": )"), "the header is not valid JSON");
  expect_parse_error(make_file(R"({} x)"), "the header is not valid JSON (near file offset");
  expect_parse_error(make_file("{\"\xff\xfe\":{}}"), "not valid JSON");     // invalid UTF-8
  expect_parse_error(make_file("{\"\xc0\xaf\":{}}"), "not valid JSON");     // overlong '/'
  expect_parse_error(make_file(R"({"\ud800":{}})"), "not valid JSON");     // lone surrogate
  expect_parse_error(make_file(std::string("{\"a\0\":{}}", 9)), "not valid JSON");  // raw NUL
  expect_parse_error(make_file("[1, 2]"), "the header must be a JSON object, found a list");
  expect_parse_error(make_file("\"text\""), "the header must be a JSON object, found the string \"text\"");
  expect_parse_error(make_file("null"), "the header must be a JSON object, found null");
}

TEST(SafetensorsCorrupt, EntryFields) {
  const std::vector<uint8_t> four(4, 0);
  expect_parse_error(make_file(R"({"a": 5})"), "tensor 'a': entry must be an object with dtype, shape and data_offsets, found the number 5");
  expect_parse_error(make_file(R"({"a": [1]})"), "tensor 'a': entry must be an object");
  expect_parse_error(make_file(R"({"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}})", four),
                     "tensor 'a': unsupported dtype 'I16' (loom reads F32, F64, F16, BF16, I32, I64, U8 and BOOL)");
  expect_parse_error(make_file(R"({"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", four),
                     "unsupported dtype 'f32'");
  expect_parse_error(make_file(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", four),
                     "tensor 'a': dtype must be a string, found the number 4");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four),
                     "tensor 'a': shape must be a list of non-negative integers, found the negative integer -1 at index 0");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1, 2.0],"data_offsets":[0,8]}})"),
                     "found the number 2.0 at index 1");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}})", four),
                     "shape must be a list of non-negative integers, found a list at index 0");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", four),
                     "tensor 'a': shape must be a list of non-negative integers, found the number 4");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})", four),
                     "found the string \"1\" at index 0");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", four),
                     "tensor 'a': data_offsets has 1 value(s), expected two [begin, end]");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", four),
                     "tensor 'a': data_offsets has more than two values");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]}})", four),
                     "data_offsets must be a list of two non-negative integers, found the negative integer -4 at index 1");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":{"b":0}}})", four),
                     "data_offsets must be a list of two non-negative integers, found an object");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1]}})", four), "tensor 'a': missing field 'data_offsets'");
  expect_parse_error(make_file(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", four), "tensor 'a': missing field 'dtype'");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four),
                     "tensor 'a': field 'dtype' appears twice");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":{}}})", four),
                     "tensor 'a': unknown field 'extra'");
  // An integer too large for uint64 arrives as a float.
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,99999999999999999999]}})", four),
                     "found the number 99999999999999999999 at index 1");
  // A dimension above int64.
  expect_parse_error(make_file(R"({"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}})"),
                     "tensor 'a': shape dimension 0 is 9223372036854775808, larger than int64 allows");
}

TEST(SafetensorsCorrupt, SizesAndOffsets) {
  const std::vector<uint8_t> sixteen(16, 0);
  // numel overflows int64.
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", sixteen),
                     "tensor 'a': shape [4294967296, 4294967296] has too many elements for int64");
  // numel is 0, but the other dims' product (what strides multiply) overflows.
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", {}),
                     "has too many elements for int64");
  // Bytes overflow: 2^62 float64s.
  expect_parse_error(make_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]}})", sixteen),
                     "tensor 'a': shape [4611686018427387904] is too large in bytes");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", sixteen),
                     "tensor 'a': data_offsets [8, 4] begins after it ends");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}})", sixteen),
                     "tensor 'a': data_offsets [4, 20] ends beyond the data section, which holds 16 bytes");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", sixteen),
                     "tensor 'a': data_offsets [0, 16] span 16 bytes, but shape [3] of F32 needs 3 x 4 = 12 bytes");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", sixteen),
                     "tensor 'b' data_offsets [8, 12] overlaps tensor 'a' [0, 12]");
  // Two tensors on the very same bytes.
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"I32","shape":[4],"data_offsets":[0,16]}})", sixteen),
                     "overlaps tensor 'a' [0, 16]");
  // A zero-size tensor inside another one's bytes.
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                               R"("e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})", sixteen),
                     "tensor 'e' data_offsets [8, 8] overlaps tensor 'a' [0, 16]");
  // A hole between tensors, at the start, and at the end.
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", sixteen),
                     "data section bytes [4, 8) (file offsets");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[4,16]}})", sixteen),
                     "data section bytes [0, 4) (file offsets");
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", sixteen),
                     "data section bytes [12, 16) (file offsets");
  expect_parse_error(make_file("{}", sixteen), "data section bytes [0, 16)");
  // The file offsets in a message count the 8-byte length and the header.
  std::string h = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  expect_parse_error(make_file(h, sixteen), "(file offsets " + std::to_string(8 + h.size() + 12) + " to " +
                                                std::to_string(8 + h.size() + 16) + ")");
}

TEST(SafetensorsCorrupt, KeysAndMetadata) {
  const std::vector<uint8_t> eight(8, 0);
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight),
                     "duplicate key 'a' in the header");
  expect_parse_error(make_file(R"({"__metadata__":{},"__metadata__":{}})"), "duplicate key '__metadata__'");
  expect_parse_error(make_file(R"({"__metadata__":[]})"), "__metadata__ must be an object of strings, found a list");
  expect_parse_error(make_file(R"({"__metadata__":"x"})"), "__metadata__ must be an object of strings");
  expect_parse_error(make_file(R"({"__metadata__":{"epoch":3}})"),
                     "__metadata__: the value of 'epoch' must be a string, found the number 3");
  expect_parse_error(make_file(R"({"__metadata__":{"k":{"nested":"x"}}})"),
                     "__metadata__: the value of 'k' must be a string, found an object");
  expect_parse_error(make_file(R"({"__metadata__":{"k":"1","k":"2"}})"), "__metadata__: duplicate key 'k'");
  // Huge keys are cut in messages.
  std::string long_key(5000, 'k');
  std::string msg = error_of([&] {
    auto b = make_file("{\"" + long_key + "\": 1}");
    parse_safetensors(b.data(), b.size(), "f");
  });
  EXPECT_NE(msg.find("...(5000 bytes)"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 400u);
}

TEST(SafetensorsCorrupt, BoolBytes) {
  auto bytes = make_file(R"({"m":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})", {0, 1, 2, 0});
  std::string h = R"({"m":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})";
  expect_parse_error(bytes, "tensor 'm': BOOL element 2 (file offset " + std::to_string(8 + h.size() + 2) +
                                ") is 2; booleans must be 0 or 1");
  TempDir dir;
  write_bytes(dir.file("b.safetensors"), bytes);
  EXPECT_NE(error_of([&] { load_safetensors(dir.file("b.safetensors")); }).find("BOOL element 2"), std::string::npos);
}

TEST(SafetensorsCorrupt, FilesOnDisk) {
  TempDir dir;
  std::string path = dir.file("ckpt.safetensors");
  save_safetensors(path, {{"a", loom::arange(16, loom::kFloat32)}, {"b", loom::ones({3}, loom::kInt64)}});
  std::vector<uint8_t> good = read_bytes(path);
  // Every truncation of a valid file is an error naming the file (the last
  // one in the data section misses the tail of 'b').
  for (size_t cut : {size_t{0}, size_t{3}, size_t{8}, size_t{20}, good.size() - 1}) {
    std::vector<uint8_t> part(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut));
    write_bytes(path, part);
    std::string msg = error_of([&] { load_safetensors(path); });
    EXPECT_NE(msg.find("load_safetensors: '" + path + "'"), std::string::npos) << "cut " << cut << ": " << msg;
  }
  EXPECT_NE(error_of([&] { load_safetensors(path); }).find("tensor 'b': data_offsets [64, 88] ends beyond the data section"),
            std::string::npos);
  // Extra bytes after the data.
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  write_bytes(path, longer);
  EXPECT_NE(error_of([&] { load_safetensors(path); }).find("belong to no tensor"), std::string::npos);
  EXPECT_NE(error_of([&] { load_safetensors(dir.file("missing.safetensors")); })
                .find("cannot open '" + dir.file("missing.safetensors") + "': No such file or directory"),
            std::string::npos);
  fs::create_directory(dir.file("a_dir"));
  EXPECT_NE(error_of([&] { load_safetensors(dir.file("a_dir")); }).find("is not a regular file"), std::string::npos);
}

// ---- writing ----

TEST(SafetensorsSave, AtomicReplaceLeavesNoTempFiles) {
  TempDir dir;
  std::string path = dir.file("model.safetensors");
  save_safetensors(path, {{"x", loom::zeros({4})}});
  save_safetensors(path, {{"x", loom::ones({8})}}, {{"v", "2"}});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  auto f = load_safetensors(path);
  EXPECT_TRUE(f.tensors[0].second.equal(loom::ones({8})));
  // A save that fails on its input leaves the previous file and no temp file.
  std::string msg = error_of([&] { save_safetensors(path, {{"x", loom::ones({2})}, {"x", loom::ones({2})}}); });
  EXPECT_NE(msg.find("save_safetensors: duplicate tensor name 'x'"), std::string::npos) << msg;
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(load_safetensors(path).tensors[0].second.equal(loom::ones({8})));
}

TEST(SafetensorsSave, Errors) {
  TempDir dir;
  std::string missing_dir = dir.file("no/such/dir");
  EXPECT_NE(error_of([&] { save_safetensors(missing_dir + "/m.safetensors", {{"x", loom::ones({1})}}); })
                .find("save_safetensors: cannot write '" + missing_dir + "/m.safetensors': directory '" + missing_dir +
                      "' does not exist"),
            std::string::npos);
  fs::create_directory(dir.file("d"));
  EXPECT_NE(error_of([&] { save_safetensors(dir.file("d"), {{"x", loom::ones({1})}}); }).find("it is a directory"),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_safetensors(dir.file("m"), {{"__metadata__", loom::ones({1})}}); })
                .find("'__metadata__' is reserved"),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_safetensors(dir.file("m"), {{"bad\xff", loom::ones({1})}}); })
                .find("tensor name 'bad\xff' is not valid UTF-8"),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_safetensors(dir.file("m"), {{"x", loom::ones({1})}}, {{"k", "\xc0\xaf"}}); })
                .find("metadata value of 'k' is not valid UTF-8"),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_safetensors(dir.file("m"), {{"x", Tensor()}}); }).find("tensor 'x' is undefined"),
            std::string::npos);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"d"});
}

// ---- modules ----

namespace {
struct BlockImpl : loom::nn::Module {
  BlockImpl() : Module("Block") {
    weight = register_parameter("weight", loom::zeros({2, 3}));
    running = register_buffer("running", loom::zeros({3}));
    steps = register_buffer("steps", loom::zeros({}, loom::kInt64));
  }
  Tensor weight, running, steps;
};
LOOM_MODULE(Block);

struct NetImpl : loom::nn::Module {
  NetImpl() : Module("Net") {
    bias = register_parameter("bias", loom::zeros({3}));
    block = register_module("block", Block());
  }
  Tensor bias;
  Block block;
};
LOOM_MODULE(Net);
}  // namespace

TEST(Checkpoint, ModuleSaveLoadRoundTrip) {
  TempDir dir;
  Net a;
  {
    loom::NoGradGuard ng;
    a->bias.copy_(loom::tensor({1.0f, 2.0f, 3.0f}));
    a->block->weight.copy_(loom::arange(6, loom::kFloat32).reshape({2, 3}));
    a->block->running.fill_(0.5);
    a->block->steps.fill_(42);
  }
  std::string path = dir.file("net.safetensors");
  loom::save(a, path, {{"epoch", "7"}});
  auto f = load_safetensors(path);
  std::vector<std::string> names;
  for (const auto& [n, t] : f.tensors) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"bias", "block.weight", "block.running", "block.steps"}));
  EXPECT_EQ(f.metadata.at("epoch"), "7");

  Net b;
  Tensor weight_handle = b->block->weight;  // optimizers hold these handles
  loom::load(b, path);
  EXPECT_TRUE(b->bias.equal(a->bias));
  EXPECT_TRUE(weight_handle.equal(a->block->weight));
  EXPECT_TRUE(b->block->running.equal(a->block->running));
  EXPECT_EQ(b->block->steps.item<int64_t>(), 42);
  EXPECT_TRUE(b->bias.requires_grad());
  EXPECT_FALSE(b->block->running.requires_grad());

  // A file for another model: strict loading names the file and the keys.
  loom::io::save_safetensors(dir.file("other.safetensors"), {{"bias", loom::ones({3})}, {"head", loom::ones({1})}});
  std::string msg = error_of([&] { loom::load(b, dir.file("other.safetensors")); });
  EXPECT_NE(msg.find("load: '" + dir.file("other.safetensors") + "' does not fit the Net"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"block.weight\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"head\""), std::string::npos) << msg;
  // Non-strict: loads what matches.
  loom::load(b, dir.file("other.safetensors"), /*strict=*/false);
  EXPECT_TRUE(b->bias.equal(loom::ones({3})));
  // A shape mismatch is an error in either mode.
  loom::io::save_safetensors(dir.file("shape.safetensors"), {{"bias", loom::ones({4})}});
  msg = error_of([&] { loom::load(*b, dir.file("shape.safetensors"), false); });
  EXPECT_NE(msg.find("size mismatch for bias"), std::string::npos) << msg;
}
