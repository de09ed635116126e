// The Open Inference Protocol's infer messages (KServe v2 REST,
// inference_rest.md) and its binary tensor data extension: parsing a request
// body into tensors, and encoding a response. No HTTP and no models here, so
// the libFuzzer target (tests/fuzz/fuzz_infer_request.cpp) drives the parser
// alone.
//
// Every malformed body is a loom::Error whose message names what is wrong
// (the field, the input's name, what was expected and what came), which the
// server answers with 400 {"error": message}. Messages are valid UTF-8 (bytes
// of the request that may not be are escaped as \xNN) and short (quoted
// pieces of the request are cut at 64 bytes), so they fit a JSON body. Nothing is allocated from a
// shape alone: an element count must be met by the data actually present
// before any buffer of that size exists.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "loom/tensor.h"

namespace loom::serve {

// The protocol's tensor datatypes.
enum class DataType : uint8_t { Bool, UInt8, UInt16, UInt32, UInt64, Int8, Int16, Int32, Int64, FP16, BF16, FP32, FP64, Bytes };

// "FP32" -> DataType::FP32; std::nullopt for an unknown name.
std::optional<DataType> parse_datatype(std::string_view name);
const char* datatype_name(DataType t);
// Bytes per element; 0 for BYTES (variable length).
size_t datatype_size(DataType t);

// One tensor as it travels: elements in row-major order, little-endian, in
// the datatype's own width (BOOL: one byte, 0 or 1). BYTES elements are each
// a 4-byte little-endian length followed by that many bytes, as the binary
// extension sends them.
struct WireTensor {
  std::string name;
  DataType datatype = DataType::FP32;
  std::vector<int64_t> shape;
  std::string data;
  bool binary = false;  // response: send as binary data (the extension) rather than JSON
};

// An entry of the request's "outputs".
struct RequestedOutput {
  std::string name;
  bool binary = false;         // parameters.binary_data
  int64_t classification = 0;  // parameters.classification: top-k labels instead of the tensor (0: off)
};

struct InferRequest {
  std::string id;                        // "" when absent
  std::vector<WireTensor> inputs;        // in request order, names unique
  std::vector<RequestedOutput> outputs;  // empty: every output of the model
  bool binary_output = false;            // parameters.binary_data_output: every output as binary
  int64_t timeout_us = 0;                // parameters.timeout (Triton, microseconds); 0: none
};

// Parses the value of the Inference-Header-Content-Length header: a decimal
// count of bytes, 0 <= n <= body_size (spaces and tabs around it allowed).
// Throws loom::Error otherwise.
int64_t parse_header_length(std::string_view value, size_t body_size);

// Parses an infer request. `header_length`: the JSON header's length from
// Inference-Header-Content-Length (the rest of the body is binary tensor
// data, consumed in input order by every input whose parameters carry
// binary_data_size); std::nullopt: the whole body is JSON.
//
// Checks: valid JSON; "inputs" a non-empty array; each input has a string
// name (unique), a known datatype, a shape of non-negative integers whose
// element count does not overflow, and exactly one of "data" (nested or flat
// arrays; JSON booleans for BOOL, integers within range for the integer
// types, numbers for FP16/BF16/FP32/FP64, strings for BYTES) or
// parameters.binary_data_size (a multiple of the element size matching the
// shape; BYTES: well-formed length prefixes); the element count equals the
// shape's; the binary sizes add up to exactly the bytes after the header;
// "outputs" entries have unique string names, binary_data a boolean,
// classification a positive integer; "id" a string; parameters.timeout a
// non-negative integer. Unknown keys and parameters are ignored; a key the
// protocol defines may appear once per object; nesting deeper than 64 levels
// is an Error. "data" may be nested to any depth, or flat: elements are read
// in row-major (document) order and only their count must equal the shape's,
// as Triton does. A number for FP32 becomes the float nearest its decimal
// value; for FP16/BF16, the nearest double rounded to nearest even in the
// datatype; a number that rounds to infinity is an Error. Note [Parsing an infer request] in protocol.cpp has the order
// of the checks.
InferRequest parse_infer_request(std::string_view body, std::optional<int64_t> header_length);

// A wire tensor as a loom tensor of the nearest dtype: BOOL -> bool, UINT8 ->
// uint8, INT8/INT16/UINT16/INT32 -> int32, UINT32/INT64/UINT64 -> int64
// (a UINT64 above INT64_MAX is an Error), FP16 -> float16, BF16 -> bfloat16,
// FP32 -> float32, FP64 -> float64. BYTES has no tensor type: an Error.
Tensor to_tensor(const WireTensor& t);

// A loom tensor (any layout) as a wire tensor of its datatype: bool -> BOOL,
// uint8 -> UINT8, int32 -> INT32, int64 -> INT64, float16 -> FP16,
// bfloat16 -> BF16, float32 -> FP32, float64 -> FP64.
WireTensor from_tensor(const std::string& name, const Tensor& t);

// The classification extension (as Triton): scores (N, C) -> a BYTES tensor
// (N, k) whose elements are "<score>:<index>" or "<score>:<index>:<label>"
// for the k highest scores of each row, highest first (ties: lower index
// first; NaN below every number). k is clamped to C. labels: empty, or one
// per class. Scores (C) give (k), as for a model without a batch dimension.
// <score> is the shortest decimal that reads back to the score in its dtype
// (float16/bfloat16 as float32); integer dtypes print as integers.
WireTensor classify(const std::string& name, const Tensor& scores, int64_t k, const std::vector<std::string>& labels);

struct EncodedResponse {
  std::string body;
  std::optional<size_t> header_length;  // set when some output is binary: the JSON header's length
};

// {"model_name", "model_version"?, "id"?, "outputs": [{name, datatype, shape,
// data}]} (model_version and id omitted when empty, as the spec asks of a
// server without versions) with data flat in row-major order; an output
// marked binary carries parameters.binary_data_size instead, and its bytes
// follow the JSON header in output order. Floats are written as the shortest
// decimal that reads back to the same value (FP16/BF16: the same float),
// whole ones with ".0"; JSON has no NaN or infinity, so they are written as
// null (as nlohmann, Python's orjson and MLServer do): a client that needs
// them asks for binary output. BYTES elements that are not UTF-8 have their
// bad bytes replaced by U+FFFD. Throws loom::Error when an output's data does
// not match its shape and datatype.
EncodedResponse encode_infer_response(const std::string& model_name, const std::string& model_version,
                                      const std::string& id, const std::vector<WireTensor>& outputs);

}  // namespace loom::serve
