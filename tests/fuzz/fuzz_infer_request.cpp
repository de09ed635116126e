// libFuzzer target for the Open Inference Protocol's request parser
// (src/serve/protocol.cpp).
//
// Input: a 4-byte little-endian header length, then the HTTP body. The length
// 0xffffffff means no Inference-Header-Content-Length (the whole body is
// JSON); any other value goes through parse_header_length first, as the
// server does.
//
// Any input must parse or throw loom::Error whose message is valid UTF-8 (the
// server sends it in a JSON body): a crash, a sanitizer report, another
// exception type, a leak, a timeout or a huge allocation is a bug. What parses
// must also
//   - become loom tensors (to_tensor; BYTES and a UINT64 above INT64_MAX may
//     throw loom::Error instead), and come back by from_tensor to the same
//     values;
//   - be encoded as a response whose outputs, read back as a request's
//     inputs, are the same tensors: exactly with binary outputs, and with
//     JSON outputs too unless a float is NaN or infinite (JSON has no such
//     numbers: they become null, which a request may not hold) or a BYTES
//     element is not UTF-8 (replaced by U+FFFD);
//   - classify (FP inputs of rank 1 or 2) into a well-formed BYTES tensor.
#include <loom/error.h>
#include <loom/tensor.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "serve/protocol.h"

namespace {

using loom::serve::DataType;
using loom::serve::WireTensor;

void require(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz_infer_request: %s\n", what);
    std::abort();
  }
}

bool is_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

void require_utf8_message(const loom::Error& e) { require(is_utf8(e.what()), "error message is not valid UTF-8"); }

// Whether JSON can carry t exactly: no NaN or infinite float, every BYTES
// element UTF-8.
bool json_exact(const WireTensor& t) {
  const char* p = t.data.data();
  const size_t n = t.data.size();
  auto u16 = [&](size_t i) { uint16_t v; std::memcpy(&v, p + 2 * i, 2); return v; };
  switch (t.datatype) {
    case DataType::FP16:
      for (size_t i = 0; i < n / 2; ++i) if ((u16(i) & 0x7c00u) == 0x7c00u) return false;
      return true;
    case DataType::BF16:
      for (size_t i = 0; i < n / 2; ++i) if ((u16(i) & 0x7f80u) == 0x7f80u) return false;
      return true;
    case DataType::FP32:
      for (size_t i = 0; i < n / 4; ++i) { float v; std::memcpy(&v, p + 4 * i, 4); if (!std::isfinite(v)) return false; }
      return true;
    case DataType::FP64:
      for (size_t i = 0; i < n / 8; ++i) { double v; std::memcpy(&v, p + 8 * i, 8); if (!std::isfinite(v)) return false; }
      return true;
    case DataType::Bytes:
      for (size_t pos = 0; pos + 4 <= n;) {
        uint32_t len;
        std::memcpy(&len, p + pos, 4);
        if (!is_utf8(t.data.substr(pos + 4, len))) return false;
        pos += 4 + len;
      }
      return true;
    default: return true;
  }
}

// The wire elements of an integer datatype as int64 (UINT64 reinterpreted).
int64_t wire_int(const WireTensor& t, size_t i) {
  const char* p = t.data.data() + i * loom::serve::datatype_size(t.datatype);
  switch (t.datatype) {
    case DataType::UInt16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
    case DataType::Int8: { int8_t v; std::memcpy(&v, p, 1); return v; }
    case DataType::Int16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case DataType::UInt32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
    case DataType::UInt64: { int64_t v; std::memcpy(&v, p, 8); return v; }
    default: require(false, "wire_int of a direct datatype"); return 0;
  }
}

void check_tensor_round_trip(const WireTensor& in) {
  loom::Tensor t;
  try {
    t = loom::serve::to_tensor(in);
  } catch (const loom::Error& e) {
    require_utf8_message(e);
    require(in.datatype == DataType::Bytes || in.datatype == DataType::UInt64, "to_tensor rejected a parsed input");
    return;
  }
  require(t.sizes() == in.shape, "to_tensor shape");
  const WireTensor back = loom::serve::from_tensor(in.name, t);
  require(back.shape == in.shape, "from_tensor shape");
  switch (in.datatype) {
    case DataType::UInt16:
    case DataType::Int8:
    case DataType::Int16:
    case DataType::UInt32:
    case DataType::UInt64: {  // widened: compare values
      const std::vector<int64_t> values = t.to_vector<int64_t>();
      for (size_t i = 0; i < values.size(); ++i) require(values[i] == wire_int(in, i), "widened value");
      break;
    }
    default:
      require(back.datatype == in.datatype, "from_tensor datatype");
      require(back.data == in.data, "from_tensor bytes");
  }
  if ((in.datatype == DataType::FP32 || in.datatype == DataType::FP16) && t.dim() >= 1 && t.dim() <= 2) {
    const int64_t k = 1 + static_cast<int64_t>(in.data.size() % 4);
    const WireTensor top = loom::serve::classify("top", t, k, {});
    (void)loom::serve::encode_infer_response("m", "1", "", {top});  // checks its BYTES layout
  }
}

// Encodes the inputs as a response (binary or JSON outputs), reads the
// response back as a request, and compares.
void check_response_round_trip(const loom::serve::InferRequest& request, bool binary) {
  std::vector<WireTensor> outputs = request.inputs;
  bool exact = true;
  for (WireTensor& t : outputs) {
    t.binary = binary;
    exact = exact && (binary || json_exact(t));
  }
  loom::serve::EncodedResponse response = loom::serve::encode_infer_response("model", "1", request.id, outputs);
  const std::string key = "\"outputs\":[";
  const size_t at = response.body.find(key);
  require(at != std::string::npos, "response has no outputs");
  std::string body = response.body;
  body.replace(at, key.size(), "\"inputs\":[");
  std::optional<int64_t> header;
  if (response.header_length) header = static_cast<int64_t>(*response.header_length) - 1;  // "inputs" is 1 shorter
  loom::serve::InferRequest again;
  try {
    again = loom::serve::parse_infer_request(body, header);
  } catch (const loom::Error& e) {
    require_utf8_message(e);
    require(!exact, "an encoded response does not parse back");
    return;
  }
  if (!exact) return;
  require(again.id == request.id, "id");
  require(again.inputs.size() == request.inputs.size(), "input count");
  for (size_t i = 0; i < outputs.size(); ++i) {
    const WireTensor& a = request.inputs[i];
    const WireTensor& b = again.inputs[i];
    require(a.name == b.name, "name");
    require(a.datatype == b.datatype, "datatype");
    require(a.shape == b.shape, "shape");
    require(a.data == b.data, binary ? "binary data" : "JSON data");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t prefix;
  std::memcpy(&prefix, data, 4);
  const std::string_view body(reinterpret_cast<const char*>(data) + 4, size - 4);
  loom::serve::InferRequest request;
  try {
    std::optional<int64_t> header;
    if (prefix != 0xffffffffu) header = loom::serve::parse_header_length(std::to_string(prefix), body.size());
    request = loom::serve::parse_infer_request(body, header);
  } catch (const loom::Error& e) {
    require_utf8_message(e);
    return 0;  // rejected: the expected outcome for most inputs
  }
  require(!request.inputs.empty(), "a parsed request has no inputs");
  for (const WireTensor& t : request.inputs) check_tensor_round_trip(t);
  check_response_round_trip(request, /*binary=*/true);
  check_response_round_trip(request, /*binary=*/false);
  return 0;
}
