// safetensors reading and writing (format in include/loom/io/safetensors.h).
#include "loom/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "io/file_io.h"
#include "loom/error.h"
#include "loom/ops.h"

// Tensor bytes go to and from the file as they lie in memory; the format is
// little-endian.
static_assert(std::endian::native == std::endian::little,
              "loom's safetensors code copies tensor bytes as they are: it needs a little-endian host");

namespace loom::io {
namespace {

constexpr const char* kLoadOp = "load_safetensors";
constexpr const char* kMetadataKey = "__metadata__";

struct DTypeCode {
  const char* name;
  DType dtype;
};
constexpr DTypeCode kDTypeCodes[] = {
    {"F32", kFloat32}, {"F64", kFloat64}, {"F16", kFloat16}, {"BF16", kBFloat16},
    {"I32", kInt32},   {"I64", kInt64},   {"U8", kUInt8},    {"BOOL", kBool},   {"I8", kInt8},
};
static_assert(std::size(kDTypeCodes) == kNumDTypes, "one safetensors code per loom dtype");

// A string from the file or the caller, made fit for an error message: long
// keys are cut (a key may be megabytes long in a hostile file).
std::string excerpt(const std::string& s) {
  constexpr size_t kMax = 120;
  if (s.size() <= kMax) return s;
  return s.substr(0, kMax) + "...(" + std::to_string(s.size()) + " bytes)";
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void append_le64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF):
// the JSON header must be valid UTF-8, so every name and metadata string is
// checked before writing.
bool is_valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned c = p[i];
    size_t len;
    unsigned lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;  // overlong
      if (c == 0xed) hi = 0x9f;  // surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;  // overlong
      if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
    } else {
      return false;
    }
    if (i + len > n) return false;
    if (p[i + 1] < lo || p[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xbf) return false;
    i += len;
  }
  return true;
}

// One tensor as the header describes it; offsets are relative to the start
// of the data section.
struct TensorEntry {
  std::string key;
  DType dtype = kFloat32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

struct Header {
  std::vector<TensorEntry> entries;  // in file order
  std::map<std::string, std::string> metadata;
};

// Note [Validating a safetensors header]
// Nothing from the file is trusted until checked, and nothing is allocated
// from a size the file claims before that size is checked against the bytes
// the file really has:
//
//  1. The 8-byte length N must fit the file and the 100 MB cap, so the header
//     buffer is never larger than the file.
//  2. The JSON is read by a SAX handler (HeaderSax), not into a DOM: the
//     handler knows the only valid shape, {key: {dtype, shape, data_offsets}}
//     plus "__metadata__": {str: str}, and rejects anything else at the first
//     event that breaks it, so nesting never goes deeper than 3 and memory
//     stays proportional to the header. A DOM would also silently keep the
//     last of two duplicate keys; the handler sees every key and rejects
//     duplicates. nlohmann's lexer rejects invalid UTF-8 and lone surrogates.
//  3. Per tensor (validate_layout): the shape's element count and byte size
//     must not overflow int64 (also over the non-zero dims, because strides
//     of a shape with a 0 dim still multiply the others); begin <= end <= the
//     data section's size; end - begin == numel * element size.
//  4. Across tensors: sorted by (begin, end), the ranges must tile the data
//     section exactly: the first starts at 0, each starts where the previous
//     ended, the last ends at the section's end. An overlap (two tensors on
//     the same bytes) and a hole (bytes no tensor owns) are both errors, as
//     the format requires the buffer to be fully indexed.
//  5. Only then is each tensor allocated (its size is now at most the file's)
//     and filled; BOOL bytes must be 0 or 1, since any other byte read as a
//     C++ bool is undefined behaviour.
class HeaderSax {
 public:
  using json = nlohmann::json;

  explicit HeaderSax(std::string prefix) : prefix_(std::move(prefix)) {}

  Header result;
  bool finished() const { return state_ == State::Done; }

  // --- nlohmann SAX interface ---
  bool null() { return unexpected("null"); }
  bool boolean(bool b) { return unexpected(b ? "true" : "false"); }
  bool number_integer(json::number_integer_t v) {
    if (v >= 0) return number_unsigned(static_cast<uint64_t>(v));
    return unexpected("the negative integer " + std::to_string(v));
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (state_ == State::Shape) {
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(tensor_subject(), ": shape dimension ", entry_.shape.size(), " is ", v, ", larger than int64 allows");
      entry_.shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (state_ == State::Offsets) {
      if (offsets_.size() == 2) fail(tensor_subject(), ": data_offsets has more than two values (expected [begin, end])");
      offsets_.push_back(v);
      return true;
    }
    return unexpected("the number " + std::to_string(v));
  }
  bool number_float(json::number_float_t, const json::string_t& text) {
    return unexpected("the number " + excerpt(text));
  }
  bool string(json::string_t& s) {
    if (state_ == State::Entry && field_ == "dtype") {
      for (const auto& code : kDTypeCodes) {
        if (s == code.name) {
          entry_.dtype = code.dtype;
          has_dtype_ = true;
          return true;
        }
      }
      fail(tensor_subject(), ": unsupported dtype '", excerpt(s),
           "' (loom reads F32, F64, F16, BF16, I32, I64, U8 and BOOL)");
    }
    if (state_ == State::Metadata) {
      result.metadata.emplace(field_, std::move(s));
      return true;
    }
    return unexpected("the string \"" + excerpt(s) + "\"");
  }
  bool binary(json::binary_t&) { return unexpected("binary data"); }
  bool start_object(std::size_t) {
    if (state_ == State::Start) {
      state_ = State::Top;
      return true;
    }
    if (state_ == State::Top) {
      if (key_ == kMetadataKey) {
        state_ = State::Metadata;
      } else {
        state_ = State::Entry;
        entry_ = TensorEntry{};
        entry_.key = key_;
        has_dtype_ = has_shape_ = has_offsets_ = false;
      }
      return true;
    }
    return unexpected("an object");
  }
  bool key(json::string_t& k) {
    if (state_ == State::Top) {
      if (!top_keys_.insert(k).second) fail("duplicate key '", excerpt(k), "' in the header");
      key_ = std::move(k);
    } else if (state_ == State::Entry) {
      bool* seen = k == "dtype" ? &has_dtype_ : k == "shape" ? &has_shape_ : k == "data_offsets" ? &has_offsets_ : nullptr;
      if (seen == nullptr)
        fail(tensor_subject(), ": unknown field '", excerpt(k), "' (a tensor entry has dtype, shape and data_offsets)");
      if (*seen) fail(tensor_subject(), ": field '", k, "' appears twice");
      field_ = std::move(k);
    } else {
      LOOM_ASSERT(state_ == State::Metadata, "safetensors header parser: key in state ", static_cast<int>(state_));
      if (result.metadata.count(k)) fail("__metadata__: duplicate key '", excerpt(k), "'");
      field_ = std::move(k);
    }
    return true;
  }
  bool end_object() {
    if (state_ == State::Top) {
      state_ = State::Done;
    } else if (state_ == State::Entry) {
      const char* missing = !has_dtype_ ? "dtype" : !has_shape_ ? "shape" : !has_offsets_ ? "data_offsets" : nullptr;
      if (missing) fail(tensor_subject(), ": missing field '", missing, "'");
      result.entries.push_back(std::move(entry_));
      state_ = State::Top;
    } else {
      LOOM_ASSERT(state_ == State::Metadata, "safetensors header parser: '}' in state ", static_cast<int>(state_));
      state_ = State::Top;
    }
    return true;
  }
  bool start_array(std::size_t) {
    if (state_ == State::Entry && field_ == "shape") {
      state_ = State::Shape;
      entry_.shape.clear();
      return true;
    }
    if (state_ == State::Entry && field_ == "data_offsets") {
      state_ = State::Offsets;
      offsets_.clear();
      return true;
    }
    return unexpected("a list");
  }
  bool end_array() {
    if (state_ == State::Shape) {
      has_shape_ = true;
    } else {
      LOOM_ASSERT(state_ == State::Offsets, "safetensors header parser: ']' in state ", static_cast<int>(state_));
      if (offsets_.size() != 2)
        fail(tensor_subject(), ": data_offsets has ", offsets_.size(), " value(s), expected two [begin, end]");
      entry_.begin = offsets_[0];
      entry_.end = offsets_[1];
      has_offsets_ = true;
    }
    state_ = State::Entry;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    // `position` counts header bytes read; the header starts at file byte 8.
    fail("the header is not valid JSON (near file offset ", 8 + position, "): ", excerpt(ex.what()));
  }

 private:
  enum class State { Start, Top, Entry, Metadata, Shape, Offsets, Done };

  template <typename... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    LOOM_ERROR(prefix_, parts...);
  }
  std::string tensor_subject() const { return "tensor '" + excerpt(entry_.key) + "'"; }

  // A JSON value where the layout allows none of its kind: says what was
  // expected there.
  [[noreturn]] bool unexpected(const std::string& found) const {
    switch (state_) {
      case State::Start:
        fail("the header must be a JSON object, found ", found);
      case State::Top:
        if (key_ == kMetadataKey) fail("__metadata__ must be an object of strings, found ", found);
        fail("tensor '", excerpt(key_), "': entry must be an object with dtype, shape and data_offsets, found ", found);
      case State::Entry:
        if (field_ == "dtype") fail(tensor_subject(), ": dtype must be a string, found ", found);
        if (field_ == "shape") fail(tensor_subject(), ": shape must be a list of non-negative integers, found ", found);
        fail(tensor_subject(), ": data_offsets must be a list of two non-negative integers, found ", found);
      case State::Metadata:
        fail("__metadata__: the value of '", excerpt(field_), "' must be a string, found ", found);
      case State::Shape:
        fail(tensor_subject(), ": shape must be a list of non-negative integers, found ", found, " at index ",
             entry_.shape.size());
      case State::Offsets:
        fail(tensor_subject(), ": data_offsets must be a list of two non-negative integers, found ", found,
             " at index ", offsets_.size());
      case State::Done:
        break;
    }
    LOOM_ASSERT(false, "safetensors header parser: value after the end of the header");
  }

  std::string prefix_;
  State state_ = State::Start;
  std::string key_;    // the top-level key whose value is being read
  std::string field_;  // the field of an entry, or the metadata key
  TensorEntry entry_;
  bool has_dtype_ = false, has_shape_ = false, has_offsets_ = false;
  std::vector<uint64_t> offsets_;
  std::set<std::string> top_keys_;  // a tree: no hash collisions to exploit
};

std::string error_prefix(const std::string& name) { return std::string(kLoadOp) + ": '" + name + "': "; }

// Step 1 of Note [Validating a safetensors header]. Returns N.
uint64_t check_header_length(uint64_t file_size, const uint8_t* first8, const std::string& prefix) {
  LOOM_CHECK(file_size >= 8, prefix, "the file is ", file_size,
             " bytes, too short for the 8-byte header length that starts a safetensors file");
  uint64_t n = read_le64(first8);
  LOOM_CHECK(n <= kSafetensorsMaxHeaderBytes, prefix, "header length ", n, " (file bytes 0-7) exceeds the limit of ",
             kSafetensorsMaxHeaderBytes, " bytes: not a safetensors file, or a corrupt one");
  LOOM_CHECK(n <= file_size - 8, prefix, "header length ", n, " (file bytes 0-7) runs past the end of the file (",
             file_size, " bytes, so at most ", file_size - 8, " header bytes)");
  return n;
}

// Steps 3 and 4 of Note [Validating a safetensors header].
void validate_layout(const Header& h, uint64_t data_begin, uint64_t data_size, const std::string& prefix) {
  for (const TensorEntry& e : h.entries) {
    std::string subject = "tensor '" + excerpt(e.key) + "'";
    int64_t numel = 1, nonzero_numel = 1;
    for (int64_t d : e.shape) {
      bool overflow = d != 0 && __builtin_mul_overflow(nonzero_numel, d, &nonzero_numel);
      LOOM_CHECK(!overflow, prefix, subject, ": shape ", shape_str(e.shape), " has too many elements for int64");
      numel = d == 0 ? 0 : numel * d;  // |numel| <= nonzero_numel: cannot overflow
    }
    uint64_t nbytes;
    bool overflow = __builtin_mul_overflow(static_cast<uint64_t>(numel), element_size(e.dtype), &nbytes);
    LOOM_CHECK(!overflow, prefix, subject, ": shape ", shape_str(e.shape), " is too large in bytes");
    LOOM_CHECK(e.begin <= e.end, prefix, subject, ": data_offsets [", e.begin, ", ", e.end,
               "] begins after it ends");
    LOOM_CHECK(e.end <= data_size, prefix, subject, ": data_offsets [", e.begin, ", ", e.end,
               "] ends beyond the data section, which holds ", data_size, " bytes (file offsets ", data_begin, " to ",
               data_begin + data_size, ")");
    LOOM_CHECK(e.end - e.begin == nbytes, prefix, subject, ": data_offsets [", e.begin, ", ", e.end, "] span ",
               e.end - e.begin, " bytes, but shape ", shape_str(e.shape), " of ", safetensors_dtype_name(e.dtype),
               " needs ", numel, " x ", element_size(e.dtype), " = ", nbytes, " bytes");
  }
  std::vector<size_t> order(h.entries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const TensorEntry &x = h.entries[a], &y = h.entries[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  uint64_t covered = 0;  // [0, covered) is owned by the tensors seen so far
  const TensorEntry* last = nullptr;
  for (size_t i : order) {
    const TensorEntry& e = h.entries[i];
    LOOM_CHECK(e.begin >= covered, prefix, "tensor '", excerpt(e.key), "' data_offsets [", e.begin, ", ", e.end,
               "] overlaps tensor '", excerpt(last ? last->key : ""), "' [", last ? last->begin : 0, ", ", covered,
               "] (file offset ", data_begin + e.begin, ")");
    LOOM_CHECK(e.begin == covered, prefix, "data section bytes [", covered, ", ", e.begin,
               ") (file offsets ", data_begin + covered, " to ", data_begin + e.begin,
               ") belong to no tensor: the data section must be fully indexed");
    covered = e.end;
    last = &e;
  }
  LOOM_CHECK(covered == data_size, prefix, "data section bytes [", covered, ", ", data_size, ") (file offsets ",
             data_begin + covered, " to ", data_begin + data_size,
             ") belong to no tensor: the data section must be fully indexed");
}

// Step 2 and the checks of validate_layout: the whole header, validated.
Header parse_header(const char* json, size_t n, uint64_t data_size, const std::string& prefix) {
  HeaderSax sax(prefix);
  bool ok = nlohmann::json::sax_parse(json, json + n, &sax);
  // The handler throws on every error; a false return without one would be a
  // parser path this code does not know.
  LOOM_ASSERT(ok && sax.finished(), "safetensors header parser stopped without an error");
  validate_layout(sax.result, 8 + n, data_size, prefix);
  return std::move(sax.result);
}

void check_bool_bytes(const TensorEntry& e, const uint8_t* bytes, uint64_t file_offset, const std::string& prefix) {
  if (e.dtype != kBool) return;
  for (uint64_t i = 0; i < e.end - e.begin; ++i)
    LOOM_CHECK(bytes[i] <= 1, prefix, "tensor '", excerpt(e.key), "': BOOL element ", i, " (file offset ",
               file_offset + i, ") is ", static_cast<int>(bytes[i]), "; booleans must be 0 or 1");
}

// The header and the tensors' bytes, ready to write: each tensor detached,
// on the CPU and contiguous.
struct Serialized {
  std::string prefix_and_header;  // 8-byte length + padded JSON
  std::vector<Tensor> data;
};

// The header is written as text rather than built as a JSON DOM: an ordered
// DOM looks keys up linearly (quadratic in the tensor count), and the text is
// simple. nlohmann escapes each string exactly as JSON requires.
std::string json_string(const std::string& s) { return nlohmann::json(s).dump(); }

Serialized serialize_header(const nn::StateDict& tensors, const std::map<std::string, std::string>& metadata,
                            const char* op) {
  Serialized out;
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (const auto& [k, v] : metadata) {
      LOOM_CHECK(is_valid_utf8(k), op, ": metadata key '", excerpt(k), "' is not valid UTF-8");
      LOOM_CHECK(is_valid_utf8(v), op, ": metadata value of '", excerpt(k), "' is not valid UTF-8");
      if (json.back() != '{') json += ',';
      json += json_string(k);
      json += ':';
      json += json_string(v);
    }
    json += '}';
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    LOOM_CHECK(name != kMetadataKey, op, ": '__metadata__' is reserved and cannot name a tensor");
    LOOM_CHECK(is_valid_utf8(name), op, ": tensor name '", excerpt(name), "' is not valid UTF-8");
    LOOM_CHECK(names.insert(name).second, op, ": duplicate tensor name '", excerpt(name), "'");
    LOOM_CHECK(t.defined(), op, ": tensor '", excerpt(name), "' is undefined");
    Tensor c = t.detach();
    if (c.device() != Device::cpu()) c = c.to(Device::cpu());
    c = c.contiguous();
    uint64_t nbytes = c.nbytes();
    if (json.size() > 1) json += ',';
    json += json_string(name);
    json += ":{\"dtype\":\"";
    json += safetensors_dtype_name(c.dtype());
    json += "\",\"shape\":[";
    for (size_t d = 0; d < c.sizes().size(); ++d) {
      if (d > 0) json += ',';
      json += std::to_string(c.sizes()[d]);
    }
    json += "],\"data_offsets\":[";
    json += std::to_string(offset);
    json += ',';
    json += std::to_string(offset + nbytes);
    json += "]}";
    offset += nbytes;
    out.data.push_back(std::move(c));
  }
  json += '}';
  // Pad with spaces so the data section starts 8-byte aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  append_le64(out.prefix_and_header, json.size());
  out.prefix_and_header += json;
  return out;
}

}  // namespace

const char* safetensors_dtype_name(DType dtype) {
  for (const auto& code : kDTypeCodes)
    if (code.dtype == dtype) return code.name;
  LOOM_ASSERT(false, "no safetensors code for dtype ", static_cast<int>(dtype));
}

SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& name_for_errors) {
  std::string prefix = error_prefix(name_for_errors);
  LOOM_CHECK(data != nullptr || size == 0, prefix, "null buffer of ", size, " bytes");
  uint8_t first8[8] = {};
  if (size >= 8) std::memcpy(first8, data, 8);
  uint64_t n = check_header_length(size, first8, prefix);
  uint64_t data_begin = 8 + n;
  Header h = parse_header(reinterpret_cast<const char*>(data) + 8, n, size - data_begin, prefix);
  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.tensors.reserve(h.entries.size());
  for (const TensorEntry& e : h.entries) {
    const uint8_t* src = data + data_begin + e.begin;
    check_bool_bytes(e, src, data_begin + e.begin, prefix);
    Tensor t = empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw_data_ptr(), src, e.end - e.begin);
    out.tensors.emplace_back(e.key, std::move(t));
  }
  return out;
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::string prefix = error_prefix(path);
  FileReader file(path, kLoadOp);
  uint8_t first8[8] = {};
  if (file.size() >= 8) file.read_at(0, first8, 8);
  uint64_t n = check_header_length(file.size(), first8, prefix);
  std::string json(n, '\0');
  file.read_at(8, json.data(), n);
  uint64_t data_begin = 8 + n;
  Header h = parse_header(json.data(), n, file.size() - data_begin, prefix);
  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.tensors.reserve(h.entries.size());
  // The layout tiles the data section, so these reads cover each byte once.
  for (const TensorEntry& e : h.entries) {
    Tensor t = empty(e.shape, e.dtype);
    if (e.end > e.begin) {
      file.read_at(data_begin + e.begin, t.raw_data_ptr(), e.end - e.begin);
      check_bool_bytes(e, static_cast<const uint8_t*>(t.raw_data_ptr()), data_begin + e.begin, prefix);
    }
    out.tensors.emplace_back(e.key, std::move(t));
  }
  return out;
}

std::vector<uint8_t> serialize_safetensors(const nn::StateDict& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  Serialized s = serialize_header(tensors, metadata, "serialize_safetensors");
  size_t total = s.prefix_and_header.size();
  for (const Tensor& t : s.data) total += t.nbytes();
  std::vector<uint8_t> out;
  out.reserve(total);
  out.insert(out.end(), s.prefix_and_header.begin(), s.prefix_and_header.end());
  for (const Tensor& t : s.data) {
    const auto* p = static_cast<const uint8_t*>(t.raw_data_ptr());
    if (t.nbytes() > 0) out.insert(out.end(), p, p + t.nbytes());
  }
  return out;
}

void save_safetensors(const std::string& path, const nn::StateDict& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Everything that can fail on the caller's input fails here, before a
  // temporary file exists.
  Serialized s = serialize_header(tensors, metadata, "save_safetensors");
  AtomicFileWriter file(path, "save_safetensors");
  file.write(s.prefix_and_header.data(), s.prefix_and_header.size());
  for (const Tensor& t : s.data)
    if (t.nbytes() > 0) file.write(t.raw_data_ptr(), t.nbytes());
  file.commit();
}

}  // namespace loom::io
