// The Open Inference Protocol's infer messages: parsing requests, encoding
// responses, and the classification extension (see protocol.h).
#include "serve/protocol.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <unordered_set>
#include <utility>

#include "loom/error.h"
#include "loom/ops.h"

namespace loom::serve {

// Every multi-byte value on the wire is little-endian, and tensors are copied
// to and from it with memcpy.
static_assert(std::endian::native == std::endian::little, "the binary tensor format assumes a little-endian host");

namespace {

using json = nlohmann::json;

struct DataTypeInfo {
  const char* name;
  size_t size;  // bytes per element; 0 for BYTES
};
// Indexed by DataType.
constexpr DataTypeInfo kDataTypes[] = {
    {"BOOL", 1}, {"UINT8", 1}, {"UINT16", 2}, {"UINT32", 4}, {"UINT64", 8}, {"INT8", 1}, {"INT16", 2},
    {"INT32", 4}, {"INT64", 8}, {"FP16", 2},  {"BF16", 2},   {"FP32", 4},   {"FP64", 8}, {"BYTES", 0},
};
static_assert(std::size(kDataTypes) == static_cast<size_t>(DataType::Bytes) + 1, "one row per DataType");

const DataTypeInfo& info(DataType t) { return kDataTypes[static_cast<size_t>(t)]; }

// "BOOL, UINT8, ..., BYTES", for the unknown-datatype message.
std::string datatype_list() {
  std::string out;
  for (const DataTypeInfo& d : kDataTypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

bool is_integer_type(DataType t) { return t >= DataType::UInt8 && t <= DataType::Int64; }

// The range of an integer datatype.
struct IntRange {
  int64_t min;
  uint64_t max;
};
// In messages: " (0 to 255)".
std::ostream& operator<<(std::ostream& os, const IntRange& r) { return os << " (" << r.min << " to " << r.max << ")"; }

IntRange int_range(DataType t) {
  switch (t) {
    case DataType::UInt8: return {0, 0xffu};
    case DataType::UInt16: return {0, 0xffffu};
    case DataType::UInt32: return {0, 0xffffffffu};
    case DataType::UInt64: return {0, std::numeric_limits<uint64_t>::max()};
    case DataType::Int8: return {-128, 127};
    case DataType::Int16: return {-32768, 32767};
    case DataType::Int32: return {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
    case DataType::Int64:
      return {std::numeric_limits<int64_t>::min(), static_cast<uint64_t>(std::numeric_limits<int64_t>::max())};
    default: LOOM_ASSERT(false, "int_range of a non-integer datatype");
  }
  return {0, 0};
}

// A piece of the request quoted in a message: at most 64 bytes, cut on a
// UTF-8 character boundary so the message stays valid UTF-8 (the server sends
// it in a JSON error body).
std::string excerpt(std::string_view s) {
  constexpr size_t kMax = 64;
  if (s.size() <= kMax) return std::string(s);
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0u) == 0x80u) --cut;
  return std::string(s.substr(0, cut)) + "...(" + std::to_string(s.size()) + " bytes)";
}

// s with every byte outside printable ASCII written as \xNN: for quoting
// bytes that need not be UTF-8 (nlohmann's messages quote the offending
// input; a header's value is whatever the client sent).
std::string printable(std::string_view s, size_t max = 300) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : s.substr(0, max)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

// A shape as JSON writes it, [1,1,28,28]; long shapes are cut short.
std::string shape_text(const std::vector<int64_t>& shape) {
  constexpr size_t kMax = 16;
  std::string out = "[";
  for (size_t i = 0; i < shape.size() && i < kMax; ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  if (shape.size() > kMax) out += ",...(" + std::to_string(shape.size()) + " dims)";
  return out + "]";
}

// The number of elements of `shape`; std::nullopt when a dimension is
// negative, or when the count, or the product of the non-zero dimensions,
// overflows int64 (a tensor's strides multiply those even when another
// dimension is 0).
std::optional<int64_t> element_count(const std::vector<int64_t>& shape) {
  int64_t nonzero = 1;
  bool has_zero = false;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d == 0) {
      has_zero = true;
      continue;
    }
    if (__builtin_mul_overflow(nonzero, d, &nonzero)) return std::nullopt;
  }
  return has_zero ? 0 : nonzero;
}

// Elements of a tensor's shape, or an Error naming `subject`.
int64_t checked_element_count(const std::string& subject, const std::vector<int64_t>& shape) {
  for (size_t i = 0; i < shape.size(); ++i)
    LOOM_CHECK(shape[i] >= 0, subject, ": shape ", shape_text(shape), " has a negative dimension");
  std::optional<int64_t> n = element_count(shape);
  LOOM_CHECK(n.has_value(), subject, ": shape ", shape_text(shape), " has more elements than int64 can count");
  return *n;
}

void append_le(std::string& out, uint64_t v, size_t width) {
  for (size_t i = 0; i < width; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
}

uint32_t read_le32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Note [Rounding JSON numbers to FP16 and BF16]
// A JSON number for FP16 or BF16 is read as the nearest double (nlohmann,
// like every JSON reader), then rounded to nearest even in the datatype. Rounding the double
// to float and the float to half would round twice, and a double just above
// a half-way point between two halves can land exactly on it in float, then
// tie to even in the wrong direction. Rounding the double to float "to odd"
// (truncate, and set the last bit when anything was dropped) keeps the
// information that the value was not exact; a float has at least two more
// bits than FP16 (11) and BF16 (8), so the float's own round-to-nearest-even
// conversion then gives the correctly rounded result (Boldo and Melquiond,
// "When double rounding is odd", 2005). Overflow works out too: a double above
// FLT_MAX becomes FLT_MAX, which rounds to infinity in both. Only reading
// the decimal into a double rounds once before: a decimal within 2^-54 (relative)
// of a half-way point of the datatype, but not on it, can still round the
// wrong way; the shortest decimal of any FP16/BF16 value, as responses carry
// them, is far from one. (FP32 reads the decimal directly: nearest_float.)
float round_to_odd_float(double d) {
  float f = static_cast<float>(d);
  if (static_cast<double>(f) == d || std::isnan(d)) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);  // truncate
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= 1u;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The float nearest a JSON number's text, read directly: rounding the
// nearest double to float would round twice, and for some numbers the two
// roundings differ (7.038531e-26, the shortest decimal of a float, would come
// back as the next float up). `d` is the number as a double. from_chars
// reports a result beyond float's range, and also one that underflows to
// zero; the latter is zero.
float nearest_float(std::string_view text, double d) {
  float f = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), f);
  if (ec == std::errc::result_out_of_range)
    return std::fabs(d) < 1 ? std::copysign(0.0f, static_cast<float>(d)) : std::copysign(HUGE_VALF, static_cast<float>(d));
  if (ec != std::errc() || end != text.data() + text.size()) return static_cast<float>(d);  // not expected of JSON text
  return f;
}

// One JSON scalar of the request, as the SAX parser reports it.
struct JsonValue {
  enum class Kind : uint8_t { Null, Bool, Int, UInt, Float, String };
  Kind kind = Kind::Null;
  bool b = false;
  int64_t i = 0;           // Kind::Int (nlohmann reports negative integers so)
  uint64_t u = 0;          // Kind::UInt (non-negative integers)
  double d = 0;            // Kind::Float
  std::string_view text;   // Kind::String: the string; Kind::Float: the number as written
};

const char* kind_name(JsonValue::Kind k) {
  switch (k) {
    case JsonValue::Kind::Null: return "null";
    case JsonValue::Kind::Bool: return "a boolean";
    case JsonValue::Kind::Int:
    case JsonValue::Kind::UInt: return "an integer";
    case JsonValue::Kind::Float: return "a number";
    case JsonValue::Kind::String: return "a string";
  }
  return "?";
}

// How a value reads in a message: numbers and booleans as written, a string
// quoted (and cut short).
std::string value_text(const JsonValue& v) {
  switch (v.kind) {
    case JsonValue::Kind::Null: return "null";
    case JsonValue::Kind::Bool: return v.b ? "true" : "false";
    case JsonValue::Kind::Int: return std::to_string(v.i);
    case JsonValue::Kind::UInt: return std::to_string(v.u);
    case JsonValue::Kind::Float: return excerpt(v.text);
    case JsonValue::Kind::String: return "\"" + excerpt(v.text) + "\"";
  }
  return "?";
}

// Why a JSON value does not suit a datatype.
enum class ElementProblem : uint8_t { None, WrongKind, OutOfRange, TooLong };

// Appends one element of an input's JSON data to `out` in the wire form of
// `type` (WireTensor::data), if the value suits the datatype. Runs once per
// element, so it reports a problem rather than building a message.
ElementProblem append_element(DataType type, const JsonValue& v, std::string& out) {
  using Kind = JsonValue::Kind;
  if (type == DataType::Bool) {
    if (v.kind != Kind::Bool) return ElementProblem::WrongKind;
    out.push_back(v.b ? 1 : 0);
    return ElementProblem::None;
  }
  if (type == DataType::Bytes) {
    if (v.kind != Kind::String) return ElementProblem::WrongKind;
    if (v.text.size() > std::numeric_limits<uint32_t>::max()) return ElementProblem::TooLong;
    append_le(out, v.text.size(), 4);
    out.append(v.text);
    return ElementProblem::None;
  }
  if (is_integer_type(type)) {
    // A JSON integer beyond uint64 comes as a float from nlohmann; its text
    // tells it apart from a fraction.
    if (v.kind == Kind::Float && v.text.find_first_of(".eE") == std::string_view::npos) return ElementProblem::OutOfRange;
    if (v.kind != Kind::Int && v.kind != Kind::UInt) return ElementProblem::WrongKind;
    const IntRange r = int_range(type);
    if (v.kind == Kind::UInt ? v.u > r.max : v.i < r.min) return ElementProblem::OutOfRange;
    append_le(out, v.kind == Kind::UInt ? v.u : static_cast<uint64_t>(v.i), info(type).size);
    return ElementProblem::None;
  }
  if (v.kind != Kind::Int && v.kind != Kind::UInt && v.kind != Kind::Float) return ElementProblem::WrongKind;
  const double d = v.kind == Kind::Int ? static_cast<double>(v.i) : v.kind == Kind::UInt ? static_cast<double>(v.u) : v.d;
  // nlohmann reads a number beyond double's range (1e400) as infinity.
  bool finite = std::isfinite(d);
  uint64_t bits = 0;
  switch (type) {
    case DataType::FP64: std::memcpy(&bits, &d, 8); break;
    case DataType::FP32: {
      const float f = v.kind == Kind::Float ? nearest_float(v.text, v.d) : static_cast<float>(d);
      finite = finite && std::isfinite(f);
      uint32_t b32;
      std::memcpy(&b32, &f, 4);
      bits = b32;
      break;
    }
    case DataType::FP16: {  // Note [Rounding JSON numbers to FP16 and BF16]
      const Half h(round_to_odd_float(d));
      finite = finite && (h.bits & 0x7c00u) != 0x7c00u;
      bits = h.bits;
      break;
    }
    case DataType::BF16: {
      const BFloat16 h(round_to_odd_float(d));
      finite = finite && (h.bits & 0x7f80u) != 0x7f80u;
      bits = h.bits;
      break;
    }
    default: LOOM_ASSERT(false, "unhandled float datatype");
  }
  if (!finite) return ElementProblem::OutOfRange;
  append_le(out, bits, info(type).size);
  return ElementProblem::None;
}

// The message for element `index` of an input's data, which has `problem`.
[[noreturn]] void element_error(const std::string& subject, DataType type, int64_t index, const JsonValue& v,
                                ElementProblem problem) {
  const char* name = info(type).name;
  const std::string element = subject + ": data element " + std::to_string(index) + " is " + value_text(v);
  switch (problem) {
    case ElementProblem::WrongKind: {
      const char* takes = type == DataType::Bool    ? "true or false"
                          : type == DataType::Bytes ? "strings"
                          : is_integer_type(type)   ? "integers"
                                                    : "numbers";
      LOOM_ERROR(element, ", but ", name, " takes ", takes);
    }
    case ElementProblem::OutOfRange:
      if (is_integer_type(type)) LOOM_ERROR(element, ", out of range for ", name, int_range(type));
      LOOM_ERROR(element, ", out of range for ", name);
    case ElementProblem::TooLong:
      LOOM_ERROR(subject, ": data element ", index, " is longer than a BYTES element can be (4 GiB)");
    case ElementProblem::None: break;
  }
  LOOM_ASSERT(false, "element_error without a problem");
}

// Checks wire data (WireTensor::data) against its datatype and shape: the
// size for fixed-width types (and BOOL bytes 0 or 1), the length prefixes
// for BYTES. `count` is the shape's element count.
void check_wire_data(const std::string& subject, DataType type, const std::vector<int64_t>& shape, int64_t count,
                     std::string_view bytes) {
  if (type == DataType::Bytes) {
    // Each element: a 4-byte little-endian length, then that many bytes.
    size_t pos = 0;
    int64_t n = 0;
    while (pos < bytes.size()) {
      const size_t left = bytes.size() - pos;
      LOOM_CHECK(left >= 4, subject, ": BYTES element ", n, " at byte ", pos, " of its data has only ", left,
                 " of the 4 bytes of its length prefix");
      const uint32_t len = read_le32(bytes.data() + pos);
      LOOM_CHECK(len <= left - 4, subject, ": BYTES element ", n, " at byte ", pos, " of its data declares ", len,
                 " bytes, but ", left - 4, " remain");
      pos += 4 + static_cast<size_t>(len);
      ++n;
    }
    LOOM_CHECK(n == count, subject, ": shape ", shape_text(shape), " has ", count, " elements, but its data holds ", n,
               " BYTES elements");
    return;
  }
  const size_t size = info(type).size;
  LOOM_CHECK(bytes.size() % size == 0, subject, ": ", bytes.size(), " bytes of data are not a multiple of ",
             info(type).name, "'s ", size, " bytes");
  LOOM_CHECK(bytes.size() / size == static_cast<uint64_t>(count), subject, ": shape ", shape_text(shape), " has ",
             count, " elements, but its data holds ", bytes.size() / size, " (", bytes.size(), " bytes of ",
             info(type).name, ")");
  if (type == DataType::Bool) {
    // Any byte but 0 or 1 read as a C++ bool is undefined behaviour.
    for (size_t i = 0; i < bytes.size(); ++i)
      LOOM_CHECK(static_cast<unsigned char>(bytes[i]) <= 1, subject, ": BOOL element ", i, " is byte ",
                 static_cast<int>(static_cast<unsigned char>(bytes[i])), ", not 0 or 1");
  }
}

// Note [Parsing an infer request]
// The JSON header is read by a SAX handler (RequestParser) straight into
// WireTensors, not into a DOM first: a DOM costs 16 bytes per number plus
// the array's growth, so "[0,0,0,...]" would take over ten times the body's
// size; here an FP32 element costs its 4 bytes. nlohmann's SAX parser is
// iterative, and the handler refuses nesting deeper than kMaxJsonDepth, so
// no body can exhaust the stack, and memory stays proportional to the body.
//
//  1. Every value is checked when it arrives, against what its place expects
//     (the innermost open container and the key that introduced it); unknown
//     keys are skipped with whatever they hold, so clients may send extra
//     fields and parameters. A key the protocol defines may appear once per
//     object: a second "data" is an error, not a silent overwrite.
//  2. "data" may be flat or nested arrays to any depth: elements are taken in
//     document order (row-major) and only their count must match the shape,
//     as Triton does, since clients nest differently (a batch of flat rows,
//     fully nested, flat). Elements arriving before the input's "datatype"
//     (keys are unordered) are kept as JSON values and converted when the
//     input ends; otherwise they are converted as they arrive.
//  3. When an input ends, it must have a name, datatype and shape, whose
//     element count must not overflow, and exactly one of "data" and
//     parameters.binary_data_size. Only data actually present was stored, so
//     nothing is allocated from a shape alone.
//  4. When the whole header is read, the binary sizes must add up to exactly
//     the bytes after the header; then each input takes its slice, in input
//     order, checked against its shape (BYTES: its length prefixes; BOOL:
//     every byte 0 or 1).
constexpr size_t kMaxJsonDepth = 64;

class RequestParser {
 public:
  explicit RequestParser(InferRequest& request) : request_(request) {}

  // The binary_data_size of each input (std::nullopt for JSON data), in
  // request order.
  std::vector<std::optional<int64_t>> binary_sizes;
  std::vector<int64_t> element_counts;
  bool saw_inputs = false;

  // --- nlohmann's SAX interface ---
  bool null() {
    scalar(JsonValue{});
    return true;
  }
  bool boolean(bool b) {
    JsonValue v;
    v.kind = JsonValue::Kind::Bool;
    v.b = b;
    scalar(v);
    return true;
  }
  bool number_integer(json::number_integer_t i) {
    JsonValue v;
    v.kind = i < 0 ? JsonValue::Kind::Int : JsonValue::Kind::UInt;
    v.i = i;
    v.u = i < 0 ? 0 : static_cast<uint64_t>(i);
    scalar(v);
    return true;
  }
  bool number_unsigned(json::number_unsigned_t u) {
    JsonValue v;
    v.kind = JsonValue::Kind::UInt;
    v.u = u;
    scalar(v);
    return true;
  }
  bool number_float(json::number_float_t d, const json::string_t& text) {
    JsonValue v;
    v.kind = JsonValue::Kind::Float;
    v.d = d;
    v.text = text;
    scalar(v);
    return true;
  }
  bool string(json::string_t& s) {
    JsonValue v;
    v.kind = JsonValue::Kind::String;
    v.text = s;
    scalar(v);
    return true;
  }
  bool binary(json::binary_t&) {
    LOOM_ERROR("request body is not valid JSON: binary value");  // only CBOR and the like have them
  }
  bool start_object(size_t) {
    open(Container::Object);
    return true;
  }
  bool start_array(size_t) {
    open(Container::Array);
    return true;
  }
  bool key(json::string_t& k) {
    guarded([&] {
      Frame& f = stack_.back();
      if (f.ctx == Ctx::Skip) return;
      f.key = lookup_key(f.ctx, k);
      if (f.key != Key::Unknown) {
        const uint32_t bit = 1u << static_cast<unsigned>(f.key);
        LOOM_CHECK((f.seen & bit) == 0, subject(f.ctx), ": duplicate key \"", k, "\"");
        f.seen |= bit;
      }
    });
    return true;
  }
  bool end_object() {
    close();
    return true;
  }
  bool end_array() {
    close();
    return true;
  }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception& e) {
    LOOM_ERROR("request body is not valid JSON: ", json_error_text(e));
  }

  // nlohmann's message without its "[json.exception.parse_error.101] "
  // prefix, made printable.
  static std::string json_error_text(const std::exception& e) {
    std::string_view what = e.what();
    if (!what.empty() && what[0] == '[') {
      const size_t end = what.find("] ");
      if (end != std::string_view::npos) what.remove_prefix(end + 2);
    }
    return printable(what);
  }

 private:
  enum class Container : uint8_t { Array, Object };
  // Where a value is: the innermost open container.
  enum class Ctx : uint8_t {
    Root, RequestParams, Inputs, Input, Shape, InputParams, Data, Outputs, Output, OutputParams,
    Skip,  // inside a value nobody reads (an unknown key's)
  };
  // The keys the protocol defines (each at most once per object).
  enum class Key : uint8_t {
    Id, Parameters, Inputs, Outputs, Name, Datatype, Shape, Data,
    BinaryDataSize, BinaryData, Classification, BinaryDataOutput, Timeout, Unknown,
  };
  struct Frame {
    Ctx ctx;
    Key key = Key::Unknown;  // objects: the key of the value that comes next
    uint32_t seen = 0;       // objects: the defined keys met so far, as bits
  };

  // Data met before its input's datatype (Note [Parsing an infer request],
  // 2), kept compactly since serializers that sort keys always send "data"
  // before "datatype": per element its kind and 8 bytes (the boolean, the
  // integer or the double's bits), and for strings and floats the text, each
  // as a 4-byte length and the bytes, in one buffer that for_each walks.
  class EarlyData {
   public:
    void add(const JsonValue& v) {
      kinds_.push_back(v.kind);
      uint64_t bits = 0;
      switch (v.kind) {
        case JsonValue::Kind::Bool: bits = v.b; break;
        case JsonValue::Kind::Int: bits = static_cast<uint64_t>(v.i); break;
        case JsonValue::Kind::UInt: bits = v.u; break;
        case JsonValue::Kind::Float: std::memcpy(&bits, &v.d, 8); break;
        case JsonValue::Kind::Null:
        case JsonValue::Kind::String: break;
      }
      if (v.kind == JsonValue::Kind::String || v.kind == JsonValue::Kind::Float) {
        LOOM_CHECK(v.text.size() <= std::numeric_limits<uint32_t>::max(), "a string of the request is over 4 GiB");
        append_le(text_, v.text.size(), 4);
        text_.append(v.text);
      }
      values_.push_back(bits);
    }
    size_t size() const { return kinds_.size(); }
    // Calls f(JsonValue) for each element in order.
    template <typename F>
    void for_each(F&& f) const {
      size_t at = 0;  // the next text in text_
      for (size_t i = 0; i < kinds_.size(); ++i) {
        JsonValue v;
        v.kind = kinds_[i];
        const uint64_t bits = values_[i];
        switch (v.kind) {
          case JsonValue::Kind::Bool: v.b = bits != 0; break;
          case JsonValue::Kind::Int: v.i = static_cast<int64_t>(bits); break;
          case JsonValue::Kind::UInt: v.u = bits; break;
          case JsonValue::Kind::Float: std::memcpy(&v.d, &bits, 8); break;
          case JsonValue::Kind::Null:
          case JsonValue::Kind::String: break;
        }
        if (v.kind == JsonValue::Kind::String || v.kind == JsonValue::Kind::Float) {
          const uint32_t len = read_le32(text_.data() + at);
          v.text = std::string_view(text_).substr(at + 4, len);
          at += 4 + static_cast<size_t>(len);
        }
        f(v);
      }
    }

   private:
    std::vector<JsonValue::Kind> kinds_;
    std::vector<uint64_t> values_;
    std::string text_;
  };

  // The input being read.
  struct PendingInput {
    WireTensor tensor;
    size_t index = 0;
    bool has_name = false, has_datatype = false, has_shape = false, has_data = false;
    std::optional<int64_t> binary_size;
    int64_t elements = 0;  // data elements met
    EarlyData early;
    std::optional<std::string> held_error;  // Note [Naming the input in a message]
  };
  struct PendingOutput {
    RequestedOutput output;
    size_t index = 0;
    bool has_name = false;
  };

  static Key lookup_key(Ctx ctx, std::string_view k) {
    struct Entry {
      Ctx ctx;
      const char* name;
      Key key;
    };
    static constexpr Entry kKeys[] = {
        {Ctx::Root, "id", Key::Id},
        {Ctx::Root, "parameters", Key::Parameters},
        {Ctx::Root, "inputs", Key::Inputs},
        {Ctx::Root, "outputs", Key::Outputs},
        {Ctx::RequestParams, "binary_data_output", Key::BinaryDataOutput},
        {Ctx::RequestParams, "timeout", Key::Timeout},
        {Ctx::Input, "name", Key::Name},
        {Ctx::Input, "datatype", Key::Datatype},
        {Ctx::Input, "shape", Key::Shape},
        {Ctx::Input, "parameters", Key::Parameters},
        {Ctx::Input, "data", Key::Data},
        {Ctx::InputParams, "binary_data_size", Key::BinaryDataSize},
        {Ctx::Output, "name", Key::Name},
        {Ctx::Output, "parameters", Key::Parameters},
        {Ctx::OutputParams, "binary_data", Key::BinaryData},
        {Ctx::OutputParams, "classification", Key::Classification},
    };
    for (const Entry& e : kKeys)
      if (e.ctx == ctx && k == e.name) return e.key;
    return Key::Unknown;
  }

  static const char* key_name(Key k) {
    static constexpr const char* kNames[] = {"id", "parameters", "inputs", "outputs", "name", "datatype", "shape", "data",
                                             "binary_data_size", "binary_data", "classification", "binary_data_output",
                                             "timeout", "?"};
    static_assert(std::size(kNames) == static_cast<size_t>(Key::Unknown) + 1, "one name per Key");
    return kNames[static_cast<size_t>(k)];
  }

  // Who a message is about, for a value inside `ctx`.
  std::string subject(Ctx ctx) const {
    switch (ctx) {
      case Ctx::Input:
      case Ctx::Shape:
      case Ctx::InputParams:
      case Ctx::Data: return input_subject();
      case Ctx::Output:
      case Ctx::OutputParams:
        return output_.has_name ? "output '" + excerpt(output_.output.name) + "'"
                                : "outputs[" + std::to_string(output_.index) + "]";
      case Ctx::Inputs: return "inputs[" + std::to_string(inputs_seen_) + "]";
      case Ctx::Outputs: return "outputs[" + std::to_string(outputs_seen_) + "]";
      default: return "request";
    }
  }
  std::string input_subject() const {
    return input_.has_name ? "input '" + excerpt(input_.tensor.name) + "'" : "inputs[" + std::to_string(input_.index) + "]";
  }

  // Where a parameter lives, for messages: parameters.binary_data_size.
  static std::string field_name(Ctx ctx, Key key) {
    const bool param = ctx == Ctx::RequestParams || ctx == Ctx::InputParams || ctx == Ctx::OutputParams;
    return std::string("\"") + (param ? "parameters." : "") + key_name(key) + "\"";
  }

  [[noreturn]] void wrong_type(const Frame& f, const char* expected, const char* got) const {
    LOOM_ERROR(subject(f.ctx), ": ", field_name(f.ctx, f.key), " must be ", expected, ", got ", got);
  }

  // A non-negative integer parameter (binary_data_size, timeout, ...).
  int64_t non_negative(const Frame& f, const JsonValue& v) const {
    if (v.kind == JsonValue::Kind::Int) {
      LOOM_ERROR(subject(f.ctx), ": ", field_name(f.ctx, f.key), " is ", v.i, "; it must not be negative");
    }
    if (v.kind != JsonValue::Kind::UInt) wrong_type(f, "a non-negative integer", kind_name(v.kind));
    LOOM_CHECK(v.u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), subject(f.ctx), ": ",
               field_name(f.ctx, f.key), " is ", v.u, ", more than int64 holds");
    return static_cast<int64_t>(v.u);
  }

  // Note [Naming the input in a message]
  // Keys are unordered, and serializers that sort them put an input's "name"
  // after its "data" and "datatype". So a problem found inside an input whose
  // name has not come yet is held, parsing goes on to the end of the input,
  // and the first problem held is thrown there, naming the input: "input 'x':
  // ..." rather than "inputs[0]: ...". Every handler checks before it changes
  // anything (open() then pushes Skip for the container it refused), so the
  // parser stays consistent after a held problem. Nesting too deep and JSON
  // syntax errors are thrown at once.
  template <typename F>
  void guarded(F&& handle) {
    if (!input_open_ || (input_.has_name && !input_.held_error)) return handle();
    try {
      handle();
    } catch (const Error& e) {
      if (!input_.held_error) input_.held_error = e.what();
    }
  }

  void open(Container c) {
    LOOM_CHECK(stack_.size() < kMaxJsonDepth, "request body nests arrays and objects deeper than ", kMaxJsonDepth,
               " levels");
    Ctx next = Ctx::Skip;
    guarded([&] { next = open_ctx(c); });
    stack_.push_back({next});
  }

  // The context of a container that opens.
  Ctx open_ctx(Container c) {
    if (stack_.empty()) {
      LOOM_CHECK(c == Container::Object, "request body must be a JSON object, got an array");
      return Ctx::Root;
    }
    const Frame& f = stack_.back();
    const char* got = c == Container::Array ? "an array" : "an object";
    switch (f.ctx) {
      case Ctx::Skip: return Ctx::Skip;
      case Ctx::Data:
        LOOM_CHECK(c == Container::Array, input_subject(), ": data element ", input_.elements, " is an object");
        return Ctx::Data;
      case Ctx::Shape:
        LOOM_ERROR(input_subject(), ": shape dimension ", input_.tensor.shape.size(), " is ", got,
                   "; dimensions must be non-negative integers");
      case Ctx::Inputs:
        LOOM_CHECK(c == Container::Object, subject(f.ctx), " must be an object, got ", got);
        input_ = PendingInput{};
        input_.index = inputs_seen_;
        input_open_ = true;
        return Ctx::Input;
      case Ctx::Outputs:
        LOOM_CHECK(c == Container::Object, subject(f.ctx), " must be an object, got ", got);
        output_ = PendingOutput{};
        output_.index = outputs_seen_;
        return Ctx::Output;
      default: return open_field(f, c, got);
    }
  }

  // An array or object as the value of key f.key in the object f.
  Ctx open_field(const Frame& f, Container c, const char* got) {
    const bool array = c == Container::Array;
    switch (f.key) {
      case Key::Unknown: return Ctx::Skip;
      case Key::Parameters:
        if (array) wrong_type(f, "an object", got);
        return f.ctx == Ctx::Root ? Ctx::RequestParams : f.ctx == Ctx::Input ? Ctx::InputParams : Ctx::OutputParams;
      case Key::Inputs:
        if (!array) wrong_type(f, "an array", got);
        saw_inputs = true;
        return Ctx::Inputs;
      case Key::Outputs:
        if (!array) wrong_type(f, "an array", got);
        return Ctx::Outputs;
      case Key::Shape:
        if (!array) wrong_type(f, "an array", got);
        input_.has_shape = true;
        return Ctx::Shape;
      case Key::Data:
        if (!array) wrong_type(f, "an array", got);
        input_.has_data = true;
        return Ctx::Data;
      case Key::Id:
      case Key::Name:
      case Key::Datatype: wrong_type(f, "a string", got);
      case Key::BinaryData:
      case Key::BinaryDataOutput: wrong_type(f, "a boolean", got);
      case Key::BinaryDataSize:
      case Key::Timeout: wrong_type(f, "a non-negative integer", got);
      case Key::Classification: wrong_type(f, "a positive integer", got);
    }
    return Ctx::Skip;
  }

  void close() {
    const Ctx ctx = stack_.back().ctx;
    stack_.pop_back();
    if (ctx == Ctx::Input) finish_input();
    if (ctx == Ctx::Output) finish_output();
  }

  void scalar(const JsonValue& v) {
    guarded([&] { on_scalar(v); });
  }

  void on_scalar(const JsonValue& v) {
    LOOM_CHECK(!stack_.empty(), "request body must be a JSON object, got ", kind_name(v.kind));
    const Frame& f = stack_.back();
    switch (f.ctx) {
      case Ctx::Skip: return;
      case Ctx::Data: return data_element(v);
      case Ctx::Shape: return shape_dim(v);
      case Ctx::Inputs:
      case Ctx::Outputs: LOOM_ERROR(subject(f.ctx), " must be an object, got ", kind_name(v.kind));
      default: return field(f, v);
    }
  }

  // A scalar as the value of key f.key in the object f.
  void field(const Frame& f, const JsonValue& v) {
    using Kind = JsonValue::Kind;
    switch (f.key) {
      case Key::Unknown: return;
      case Key::Id:
        if (v.kind != Kind::String) wrong_type(f, "a string", kind_name(v.kind));
        request_.id = v.text;
        return;
      case Key::Name: {
        if (v.kind != Kind::String) wrong_type(f, "a string", kind_name(v.kind));
        LOOM_CHECK(!v.text.empty(), subject(f.ctx), ": \"name\" is empty");
        if (f.ctx == Ctx::Input) {
          input_.tensor.name = v.text;
          input_.has_name = true;
        } else {
          output_.output.name = v.text;
          output_.has_name = true;
        }
        return;
      }
      case Key::Datatype: {
        if (v.kind != Kind::String) wrong_type(f, "a string", kind_name(v.kind));
        std::optional<DataType> t = parse_datatype(v.text);
        LOOM_CHECK(t.has_value(), input_subject(), ": datatype \"", excerpt(v.text), "\" is not a protocol datatype (",
                   datatype_list(), ")");
        input_.tensor.datatype = *t;
        input_.has_datatype = true;
        return;
      }
      case Key::BinaryDataSize: input_.binary_size = non_negative(f, v); return;
      case Key::BinaryData:
        if (v.kind != Kind::Bool) wrong_type(f, "a boolean", kind_name(v.kind));
        output_.output.binary = v.b;
        return;
      case Key::BinaryDataOutput:
        if (v.kind != Kind::Bool) wrong_type(f, "a boolean", kind_name(v.kind));
        request_.binary_output = v.b;
        return;
      case Key::Timeout: request_.timeout_us = non_negative(f, v); return;
      case Key::Classification: {
        if (v.kind != Kind::Int && v.kind != Kind::UInt) wrong_type(f, "a positive integer", kind_name(v.kind));
        LOOM_CHECK(v.kind == Kind::UInt && v.u > 0, subject(f.ctx), ": \"parameters.classification\" is ",
                   value_text(v), "; it must be positive");
        const int64_t k = non_negative(f, v);
        output_.output.classification = k;
        return;
      }
      case Key::Parameters: wrong_type(f, "an object", kind_name(v.kind));
      case Key::Inputs:
      case Key::Outputs:
      case Key::Shape:
      case Key::Data: wrong_type(f, "an array", kind_name(v.kind));
    }
  }

  void shape_dim(const JsonValue& v) {
    const size_t dim = input_.tensor.shape.size();
    LOOM_CHECK(v.kind == JsonValue::Kind::UInt, input_subject(), ": shape dimension ", dim, " is ", value_text(v),
               "; dimensions must be non-negative integers");
    LOOM_CHECK(v.u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), input_subject(), ": shape dimension ",
               dim, " is ", v.u, ", more than int64 holds");
    input_.tensor.shape.push_back(static_cast<int64_t>(v.u));
  }

  void data_element(const JsonValue& v) {
    if (input_.has_datatype) {
      const ElementProblem problem = append_element(input_.tensor.datatype, v, input_.tensor.data);
      if (problem != ElementProblem::None)
        element_error(input_subject(), input_.tensor.datatype, input_.elements, v, problem);
    } else {
      input_.early.add(v);
    }
    ++input_.elements;
  }

  void finish_input() {
    PendingInput& in = input_;
    input_open_ = false;
    if (in.held_error) {
      // Note [Naming the input in a message]
      std::string message = std::move(*in.held_error);
      const std::string unnamed = "inputs[" + std::to_string(in.index) + "]";
      if (in.has_name && message.rfind(unnamed, 0) == 0) message = input_subject() + message.substr(unnamed.size());
      LOOM_ERROR(message);
    }
    LOOM_CHECK(in.has_name, "inputs[", in.index, "]: \"name\" is missing");
    const std::string who = input_subject();
    LOOM_CHECK(in.has_datatype, who, ": \"datatype\" is missing");
    LOOM_CHECK(in.has_shape, who, ": \"shape\" is missing");
    const int64_t count = checked_element_count(who, in.tensor.shape);
    LOOM_CHECK(!(in.has_data && in.binary_size), who, ": has both \"data\" and \"parameters.binary_data_size\"");
    LOOM_CHECK(in.has_data || in.binary_size, who, ": has neither \"data\" nor \"parameters.binary_data_size\"");
    if (in.has_data) {
      int64_t i = 0;
      in.early.for_each([&](const JsonValue& v) {
        const ElementProblem problem = append_element(in.tensor.datatype, v, in.tensor.data);
        if (problem != ElementProblem::None) element_error(who, in.tensor.datatype, i, v, problem);
        ++i;
      });
      in.early = {};
      LOOM_CHECK(in.elements == count, who, ": shape ", shape_text(in.tensor.shape), " has ", count,
                 " elements, but data has ", in.elements);
    }
    LOOM_CHECK(input_names_.insert(in.tensor.name).second, "inputs[", in.index, "]: duplicate input name '",
               excerpt(in.tensor.name), "'");
    binary_sizes.push_back(in.binary_size);
    element_counts.push_back(count);
    request_.inputs.push_back(std::move(in.tensor));
    ++inputs_seen_;
  }

  void finish_output() {
    LOOM_CHECK(output_.has_name, "outputs[", output_.index, "]: \"name\" is missing");
    LOOM_CHECK(output_names_.insert(output_.output.name).second, "outputs[", output_.index, "]: duplicate output name '",
               excerpt(output_.output.name), "'");
    request_.outputs.push_back(std::move(output_.output));
    ++outputs_seen_;
  }

  InferRequest& request_;
  std::vector<Frame> stack_;
  PendingInput input_;
  bool input_open_ = false;  // inside an input object
  PendingOutput output_;
  size_t inputs_seen_ = 0, outputs_seen_ = 0;
  std::unordered_set<std::string> input_names_, output_names_;
};

// ---- response encoding ----

// s as a JSON string. Bytes that are not UTF-8 (a BYTES element may hold
// anything) become U+FFFD rather than an exception.
void append_json_string(std::string& out, std::string_view s) {
  out += json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

// A float as the shortest decimal that reads back to the same value, with a
// ".0" on whole numbers so that JSON readers keep it a float. JSON has no
// NaN or infinity: they are written as null (see encode_infer_response in
// protocol.h).
template <typename F>
void append_float(std::string& out, F v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  LOOM_ASSERT(ec == std::errc(), "to_chars failed");
  const std::string_view text(buf, static_cast<size_t>(end - buf));
  out += text;
  if (text.find_first_of(".e") == std::string_view::npos) out += ".0";
}

template <typename I>
void append_int(std::string& out, I v) {
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  LOOM_ASSERT(ec == std::errc(), "to_chars failed");
  out.append(buf, static_cast<size_t>(end - buf));
}

template <typename T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Appends element i of t's wire data as JSON.
void append_json_element(std::string& out, const WireTensor& t, size_t i) {
  const char* p = t.data.data() + i * info(t.datatype).size;
  switch (t.datatype) {
    case DataType::Bool: out += *p ? "true" : "false"; break;
    case DataType::UInt8: append_int(out, load<uint8_t>(p)); break;
    case DataType::UInt16: append_int(out, load<uint16_t>(p)); break;
    case DataType::UInt32: append_int(out, load<uint32_t>(p)); break;
    case DataType::UInt64: append_int(out, load<uint64_t>(p)); break;
    case DataType::Int8: append_int(out, load<int8_t>(p)); break;
    case DataType::Int16: append_int(out, load<int16_t>(p)); break;
    case DataType::Int32: append_int(out, load<int32_t>(p)); break;
    case DataType::Int64: append_int(out, load<int64_t>(p)); break;
    case DataType::FP16: {
      Half h;
      h.bits = load<uint16_t>(p);
      append_float(out, static_cast<float>(h));
      break;
    }
    case DataType::BF16: {
      BFloat16 h;
      h.bits = load<uint16_t>(p);
      append_float(out, static_cast<float>(h));
      break;
    }
    case DataType::FP32: append_float(out, load<float>(p)); break;
    case DataType::FP64: append_float(out, load<double>(p)); break;
    case DataType::Bytes: LOOM_ASSERT(false, "BYTES elements are walked by their prefixes");
  }
}

// Checks a WireTensor made elsewhere (a response, or to_tensor's argument);
// returns its element count.
int64_t check_wire_tensor(const std::string& subject, const WireTensor& t) {
  const int64_t count = checked_element_count(subject, t.shape);
  check_wire_data(subject, t.datatype, t.shape, count, t.data);
  return count;
}

DType loom_dtype(DataType t) {
  switch (t) {
    case DataType::Bool: return kBool;
    case DataType::UInt8: return kUInt8;
    case DataType::UInt16:
    case DataType::Int8:
    case DataType::Int16:
    case DataType::Int32: return kInt32;
    case DataType::UInt32:
    case DataType::UInt64:
    case DataType::Int64: return kInt64;
    case DataType::FP16: return kFloat16;
    case DataType::BF16: return kBFloat16;
    case DataType::FP32: return kFloat32;
    case DataType::FP64: return kFloat64;
    case DataType::Bytes: break;
  }
  LOOM_ASSERT(false, "BYTES has no loom dtype");
  return kFloat32;
}

// Widens each element from the wire type From to the tensor type To.
template <typename From, typename To>
void widen(const std::string& data, To* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<To>(load<From>(data.data() + i * sizeof(From)));
}

}  // namespace

std::optional<DataType> parse_datatype(std::string_view name) {
  for (size_t i = 0; i < std::size(kDataTypes); ++i)
    if (name == kDataTypes[i].name) return static_cast<DataType>(i);
  return std::nullopt;
}

const char* datatype_name(DataType t) { return info(t).name; }

size_t datatype_size(DataType t) { return info(t).size; }

int64_t parse_header_length(std::string_view value, size_t body_size) {
  // HTTP allows spaces and tabs around a header's value.
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  uint64_t n = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  const bool digits_only = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; });
  LOOM_CHECK(digits_only && end == value.data() + value.size(), "Inference-Header-Content-Length: \"",
             printable(value, 40), "\" is not a decimal byte count");
  LOOM_CHECK(ec == std::errc() && n <= body_size, "Inference-Header-Content-Length: ", excerpt(value),
             " is more than the body's ", body_size, " bytes");
  return static_cast<int64_t>(n);
}

InferRequest parse_infer_request(std::string_view body, std::optional<int64_t> header_length) {
  if (header_length) {
    LOOM_CHECK(*header_length >= 0 && static_cast<uint64_t>(*header_length) <= body.size(),
               "Inference-Header-Content-Length: ", *header_length, " is outside the body's ", body.size(), " bytes");
  }
  const size_t json_size = header_length ? static_cast<size_t>(*header_length) : body.size();
  const std::string_view header = body.substr(0, json_size);
  const std::string_view binary = body.substr(json_size);

  // nlohmann's lexer takes a NUL byte for the end of the input, so whatever
  // followed one would be ignored; JSON text never holds one (in strings it
  // must be escaped).
  const size_t nul = header.find('\0');
  LOOM_CHECK(nul == std::string_view::npos, "request body is not valid JSON: a NUL byte at offset ", nul);

  InferRequest request;
  RequestParser parser(request);
  try {
    json::sax_parse(header.begin(), header.end(), &parser);
  } catch (const json::exception& e) {
    // The handler throws loom::Error itself; this is for anything nlohmann
    // raises outside its parse_error callback.
    LOOM_ERROR("request body is not valid JSON: ", RequestParser::json_error_text(e));
  }
  LOOM_CHECK(parser.saw_inputs, "request: \"inputs\" is missing");
  LOOM_CHECK(!request.inputs.empty(), "request: \"inputs\" is empty");

  // Note [Parsing an infer request], 4.
  uint64_t declared = 0;
  for (const std::optional<int64_t>& n : parser.binary_sizes) {
    if (n) LOOM_CHECK(!__builtin_add_overflow(declared, static_cast<uint64_t>(*n), &declared),
                      "binary data: inputs declare more bytes than uint64 can count");
  }
  if (!header_length) {
    LOOM_CHECK(declared == 0, "binary data: inputs declare ", declared,
               " bytes (parameters.binary_data_size), but the request has no Inference-Header-Content-Length, so no "
               "binary data follows the JSON");
  } else {
    LOOM_CHECK(declared == binary.size(), "binary data: inputs declare ", declared, " bytes, but ", binary.size(),
               " follow the JSON header");
  }
  size_t offset = 0;
  for (size_t i = 0; i < request.inputs.size(); ++i) {
    const std::optional<int64_t>& n = parser.binary_sizes[i];
    if (!n) continue;
    WireTensor& t = request.inputs[i];
    const std::string_view bytes = binary.substr(offset, static_cast<size_t>(*n));
    check_wire_data("input '" + excerpt(t.name) + "'", t.datatype, t.shape, parser.element_counts[i], bytes);
    t.data.assign(bytes);
    offset += static_cast<size_t>(*n);
  }
  return request;
}

Tensor to_tensor(const WireTensor& t) {
  const std::string who = "input '" + excerpt(t.name) + "'";
  LOOM_CHECK(t.datatype != DataType::Bytes, who, ": BYTES has no loom tensor type");
  const int64_t n = check_wire_tensor(who, t);  // BOOL bytes included: they become C++ bools
  Tensor out = loom::empty(t.shape, loom_dtype(t.datatype));
  void* dst = out.raw_data_ptr();
  switch (t.datatype) {
    case DataType::Bool:
    case DataType::UInt8:
    case DataType::Int32:
    case DataType::Int64:
    case DataType::FP16:
    case DataType::BF16:
    case DataType::FP32:
    case DataType::FP64:
      if (!t.data.empty()) std::memcpy(dst, t.data.data(), t.data.size());
      break;
    case DataType::UInt16: widen<uint16_t>(t.data, static_cast<int32_t*>(dst), n); break;
    case DataType::Int8: widen<int8_t>(t.data, static_cast<int32_t*>(dst), n); break;
    case DataType::Int16: widen<int16_t>(t.data, static_cast<int32_t*>(dst), n); break;
    case DataType::UInt32: widen<uint32_t>(t.data, static_cast<int64_t*>(dst), n); break;
    case DataType::UInt64:
      for (int64_t i = 0; i < n; ++i) {
        const uint64_t v = load<uint64_t>(t.data.data() + i * 8);
        LOOM_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), who, ": UINT64 element ", i, " is ", v,
                   ", more than loom's int64 holds");
        static_cast<int64_t*>(dst)[i] = static_cast<int64_t>(v);
      }
      break;
    case DataType::Bytes: break;
  }
  return out;
}

WireTensor from_tensor(const std::string& name, const Tensor& t) {
  LOOM_CHECK(t.defined(), "output '", excerpt(name), "': the tensor is undefined");
  WireTensor out;
  out.name = name;
  switch (t.dtype()) {
    case kBool: out.datatype = DataType::Bool; break;
    case kUInt8: out.datatype = DataType::UInt8; break;
    case kInt8: out.datatype = DataType::Int8; break;
    case kInt32: out.datatype = DataType::Int32; break;
    case kInt64: out.datatype = DataType::Int64; break;
    case kFloat16: out.datatype = DataType::FP16; break;
    case kBFloat16: out.datatype = DataType::BF16; break;
    case kFloat32: out.datatype = DataType::FP32; break;
    case kFloat64: out.datatype = DataType::FP64; break;
  }
  const Tensor c = t.to(Device::cpu()).contiguous();
  out.shape = c.sizes();
  if (c.nbytes() > 0) out.data.assign(static_cast<const char*>(c.raw_data_ptr()), c.nbytes());
  return out;
}

WireTensor classify(const std::string& name, const Tensor& scores, int64_t k, const std::vector<std::string>& labels) {
  const std::string who = "output '" + excerpt(name) + "'";
  LOOM_CHECK(scores.defined(), who, ": classification of an undefined tensor");
  LOOM_CHECK(scores.dim() == 1 || scores.dim() == 2, who, ": classification needs scores (N, C) or (C), got shape ",
             shape_text(scores.sizes()));
  LOOM_CHECK(k > 0, who, ": classification count ", k, " must be positive");
  const bool batched = scores.dim() == 2;
  const int64_t rows = batched ? scores.size(0) : 1;
  const int64_t classes = scores.size(batched ? 1 : 0);
  LOOM_CHECK(labels.empty() || static_cast<int64_t>(labels.size()) == classes, who, ": ", classes, " classes, but ",
             labels.size(), " labels");
  k = std::min(k, classes);

  // Scores compare in float64, which holds every value of the float dtypes
  // and of int32, uint8 and bool exactly; int64 keeps its own values so that
  // scores beyond 2^53 still order and print exactly.
  const DType dtype = scores.dtype();
  const bool integral = is_integral(dtype, /*include_bool=*/true);
  const Tensor values = scores.to(Device::cpu()).to(integral ? kInt64 : kFloat64).contiguous();
  const int64_t* ints = integral ? values.data_ptr<int64_t>() : nullptr;
  const double* floats = integral ? nullptr : values.data_ptr<double>();

  WireTensor out;
  out.name = name;
  out.datatype = DataType::Bytes;
  out.shape = batched ? std::vector<int64_t>{rows, k} : std::vector<int64_t>{k};
  std::vector<int64_t> order(static_cast<size_t>(classes));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * classes;
    for (int64_t c = 0; c < classes; ++c) order[static_cast<size_t>(c)] = c;
    // Highest first; ties keep the lower index first; NaN ranks below every
    // number (a NaN score is no class's evidence).
    auto higher = [&](int64_t a, int64_t b) {
      if (integral) return ints[base + a] != ints[base + b] ? ints[base + a] > ints[base + b] : a < b;
      const double x = floats[base + a], y = floats[base + b];
      if (std::isnan(x) || std::isnan(y)) return std::isnan(x) != std::isnan(y) ? !std::isnan(x) : a < b;
      return x != y ? x > y : a < b;
    };
    std::partial_sort(order.begin(), order.begin() + k, order.end(), higher);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = order[static_cast<size_t>(j)];
      std::string s;
      // The score in its own type's shortest form: float32, float16 and
      // bfloat16 as float, float64 as double; no ".0" is added here.
      if (integral) {
        append_int(s, ints[base + c]);
      } else if (dtype == kFloat64) {
        char buf[64];
        s.append(buf, static_cast<size_t>(std::to_chars(buf, buf + sizeof(buf), floats[base + c]).ptr - buf));
      } else {
        char buf[64];
        const float f = static_cast<float>(floats[base + c]);
        s.append(buf, static_cast<size_t>(std::to_chars(buf, buf + sizeof(buf), f).ptr - buf));
      }
      s += ':';
      append_int(s, c);
      if (!labels.empty()) s += ":" + labels[static_cast<size_t>(c)];
      append_le(out.data, s.size(), 4);
      out.data += s;
    }
  }
  return out;
}

EncodedResponse encode_infer_response(const std::string& model_name, const std::string& model_version,
                                      const std::string& id, const std::vector<WireTensor>& outputs) {
  std::string header = "{\"model_name\":";
  append_json_string(header, model_name);
  if (!model_version.empty()) {
    header += ",\"model_version\":";
    append_json_string(header, model_version);
  }
  if (!id.empty()) {
    header += ",\"id\":";
    append_json_string(header, id);
  }
  header += ",\"outputs\":[";
  std::string binary;
  for (size_t o = 0; o < outputs.size(); ++o) {
    const WireTensor& t = outputs[o];
    const int64_t count = check_wire_tensor("output '" + excerpt(t.name) + "'", t);
    if (o) header += ',';
    header += "{\"name\":";
    append_json_string(header, t.name);
    header += ",\"datatype\":\"";
    header += info(t.datatype).name;
    header += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) header += ',';
      append_int(header, t.shape[i]);
    }
    header += ']';
    if (t.binary) {
      header += ",\"parameters\":{\"binary_data_size\":";
      append_int(header, t.data.size());
      header += '}';
      binary += t.data;
    } else {
      header += ",\"data\":[";
      if (t.datatype == DataType::Bytes) {
        size_t pos = 0;
        for (int64_t i = 0; i < count; ++i) {
          const uint32_t len = read_le32(t.data.data() + pos);
          if (i) header += ',';
          append_json_string(header, std::string_view(t.data).substr(pos + 4, len));
          pos += 4 + len;
        }
      } else {
        for (int64_t i = 0; i < count; ++i) {
          if (i) header += ',';
          append_json_element(header, t, static_cast<size_t>(i));
        }
      }
      header += ']';
    }
    header += '}';
  }
  header += "]}";

  EncodedResponse out;
  const bool any_binary = std::any_of(outputs.begin(), outputs.end(), [](const WireTensor& t) { return t.binary; });
  if (any_binary) out.header_length = header.size();
  out.body = std::move(header);
  out.body += binary;
  return out;
}

}  // namespace loom::serve
