// The Open Inference Protocol layer (src/serve/protocol.cpp): every datatype
// through JSON and binary data (parse -> to_tensor -> from_tensor -> encode),
// nested and flat data, the spec's examples, classification, requested
// outputs, rounding and ranges, and the corpus of malformed requests in
// tests/serve/malformed (each must be a loom::Error with the expected
// message).
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "serve/protocol.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using loom::Tensor;
using loom::serve::classify;
using loom::serve::DataType;
using loom::serve::encode_infer_response;
using loom::serve::from_tensor;
using loom::serve::InferRequest;
using loom::serve::parse_header_length;
using loom::serve::parse_infer_request;
using loom::serve::to_tensor;
using loom::serve::WireTensor;

namespace {

// The message of the loom::Error that f throws ("" and a test failure if it
// throws nothing or something else).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const loom::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-loom exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

InferRequest parse_json(const json& request) { return parse_infer_request(request.dump(), std::nullopt); }

// A request with a JSON header and binary data after it.
InferRequest parse_binary(const json& header, const std::string& blob) {
  const std::string text = header.dump();
  return parse_infer_request(text + blob, static_cast<int64_t>(text.size()));
}

template <typename T>
std::string le_bytes(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::string bytes_elements(const std::vector<std::string>& elements) {
  std::string out;
  for (const std::string& e : elements) {
    const uint32_t n = static_cast<uint32_t>(e.size());
    out.append(reinterpret_cast<const char*>(&n), 4);
    out += e;
  }
  return out;
}

json one_input(const std::string& datatype, const json& shape, const json& data) {
  return {{"inputs", {{{"name", "x"}, {"datatype", datatype}, {"shape", shape}, {"data", data}}}}};
}

uint16_t half_bits(float f) { return loom::Half(f).bits; }
uint16_t bf16_bits(float f) { return loom::BFloat16(f).bits; }

// One datatype's sample: JSON values, the wire bytes they make, the loom
// dtype of to_tensor, and the JSON the response carries for them.
struct Sample {
  std::string datatype;
  json values;
  std::string wire;
  loom::DType dtype;
  json response_values;  // as written in a JSON response
};

std::vector<Sample> samples() {
  constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
  constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
  constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
  return {
      {"BOOL", {true, false, true}, std::string("\1\0\1", 3), loom::kBool, {true, false, true}},
      {"UINT8", {0, 7, 255}, le_bytes<uint8_t>({0, 7, 255}), loom::kUInt8, {0, 7, 255}},
      {"UINT16", {0, 300, 65535}, le_bytes<uint16_t>({0, 300, 65535}), loom::kInt32, {0, 300, 65535}},
      {"UINT32", {0, 70000, 4294967295u}, le_bytes<uint32_t>({0, 70000, 4294967295u}), loom::kInt64,
       {0, 70000, 4294967295u}},
      {"UINT64", {0, 1, kU64Max}, le_bytes<uint64_t>({0, 1, kU64Max}), loom::kInt64, {0, 1, kU64Max}},
      {"INT8", {-128, 0, 127}, le_bytes<int8_t>({-128, 0, 127}), loom::kInt32, {-128, 0, 127}},
      {"INT16", {-32768, 5, 32767}, le_bytes<int16_t>({-32768, 5, 32767}), loom::kInt32, {-32768, 5, 32767}},
      {"INT32", {-2147483648LL, 42, 2147483647}, le_bytes<int32_t>({-2147483647 - 1, 42, 2147483647}), loom::kInt32,
       {-2147483648LL, 42, 2147483647}},
      {"INT64", {kI64Min, -1, kI64Max}, le_bytes<int64_t>({kI64Min, -1, kI64Max}), loom::kInt64, {kI64Min, -1, kI64Max}},
      {"FP16", {0.5, -2, 65504}, le_bytes<uint16_t>({half_bits(0.5f), half_bits(-2.0f), half_bits(65504.0f)}),
       loom::kFloat16, {0.5, -2.0, 65504.0}},
      {"BF16", {1, -0.15625, 3.0e38}, le_bytes<uint16_t>({bf16_bits(1.0f), bf16_bits(-0.15625f), bf16_bits(3.0e38f)}),
       loom::kBFloat16, {1.0, -0.15625, static_cast<float>(loom::BFloat16(3.0e38f))}},
      {"FP32", {0.1, -1.5, 3.4028234663852886e38}, le_bytes<float>({0.1f, -1.5f, 3.4028234663852886e38f}),
       loom::kFloat32, {0.1f, -1.5f, 3.4028234663852886e38f}},
      {"FP64", {0.1, -1e-300, 1.7976931348623157e308}, le_bytes<double>({0.1, -1e-300, 1.7976931348623157e308}),
       loom::kFloat64, {0.1, -1e-300, 1.7976931348623157e308}},
      {"BYTES", {"", "abc", "caf\u00e9"}, bytes_elements({"", "abc", "caf\u00e9"}), loom::kFloat32,
       {"", "abc", "caf\u00e9"}},
  };
}

// The datatypes whose to_tensor -> from_tensor gives back the same wire
// datatype and bytes (the others widen: UINT16 -> INT32, ...).
bool maps_one_to_one(const std::string& datatype) {
  return datatype == "BOOL" || datatype == "UINT8" || datatype == "INT32" || datatype == "INT64" ||
         datatype == "FP16" || datatype == "BF16" || datatype == "FP32" || datatype == "FP64";
}

// Checks what the response's JSON says of an output against the sample.
void expect_response_output(const json& output, const Sample& s) {
  EXPECT_EQ(output.at("name"), "x");
  EXPECT_EQ(output.at("datatype"), s.datatype);
  EXPECT_EQ(output.at("shape"), json({3}));
  const json& data = output.at("data");
  ASSERT_EQ(data.size(), 3u) << s.datatype;
  for (size_t i = 0; i < 3; ++i) {
    const json& want = s.response_values[i];
    if (want.is_number_float()) {
      ASSERT_TRUE(data[i].is_number_float()) << s.datatype << " element " << i << ": " << data[i];
      // Floats print as the shortest decimal of the float, so compare as float.
      if (s.datatype == "FP64")
        EXPECT_EQ(data[i].get<double>(), want.get<double>()) << s.datatype;
      else
        EXPECT_EQ(static_cast<float>(data[i].get<double>()), static_cast<float>(want.get<double>())) << s.datatype;
    } else {
      EXPECT_EQ(data[i], want) << s.datatype << " element " << i;
    }
  }
}

TEST(Protocol, DatatypeNamesAndSizes) {
  const std::vector<std::pair<std::string, size_t>> expected = {
      {"BOOL", 1}, {"UINT8", 1}, {"UINT16", 2}, {"UINT32", 4}, {"UINT64", 8}, {"INT8", 1}, {"INT16", 2},
      {"INT32", 4}, {"INT64", 8}, {"FP16", 2}, {"BF16", 2}, {"FP32", 4}, {"FP64", 8}, {"BYTES", 0}};
  for (const auto& [name, size] : expected) {
    const std::optional<DataType> t = loom::serve::parse_datatype(name);
    ASSERT_TRUE(t.has_value()) << name;
    EXPECT_EQ(loom::serve::datatype_name(*t), name);
    EXPECT_EQ(loom::serve::datatype_size(*t), size) << name;
  }
  EXPECT_FALSE(loom::serve::parse_datatype("fp32").has_value());
  EXPECT_FALSE(loom::serve::parse_datatype("FLOAT32").has_value());
  EXPECT_FALSE(loom::serve::parse_datatype("").has_value());
}

TEST(Protocol, HeaderLength) {
  EXPECT_EQ(parse_header_length("0", 0), 0);
  EXPECT_EQ(parse_header_length("120", 200), 120);
  EXPECT_EQ(parse_header_length("200", 200), 200);
  EXPECT_EQ(parse_header_length(" 17\t", 20), 17);
  for (const char* bad : {"", " ", "abc", "-5", "+5", "0x10", "1.5", "12 3", "1e2"})
    EXPECT_NE(error_of([&] { parse_header_length(bad, 100); }).find("is not a decimal byte count"), std::string::npos)
        << bad;
  EXPECT_EQ(error_of([] { parse_header_length("201", 200); }),
            "Inference-Header-Content-Length: 201 is more than the body's 200 bytes");
  EXPECT_NE(error_of([] { parse_header_length("99999999999999999999999", 200); }).find("more than the body"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_header_length("\xff\x01", 200); }).find("\\xff\\x01"), std::string::npos);
}

// Every datatype as JSON data: the wire bytes, the loom tensor, the way
// back, and the JSON and binary responses.
TEST(Protocol, EveryDatatypeJsonRoundTrip) {
  for (const Sample& s : samples()) {
    SCOPED_TRACE(s.datatype);
    const InferRequest r = parse_json(one_input(s.datatype, {3}, s.values));
    ASSERT_EQ(r.inputs.size(), 1u);
    const WireTensor& t = r.inputs[0];
    EXPECT_EQ(t.name, "x");
    EXPECT_EQ(loom::serve::datatype_name(t.datatype), s.datatype);
    EXPECT_EQ(t.shape, std::vector<int64_t>{3});
    EXPECT_EQ(t.data, s.wire);

    if (s.datatype == "BYTES") {
      EXPECT_NE(error_of([&] { to_tensor(t); }).find("BYTES has no loom tensor type"), std::string::npos);
    } else if (s.datatype == "UINT64") {
      // 2^64-1 does not fit loom's int64.
      EXPECT_NE(error_of([&] { to_tensor(t); }).find("UINT64 element 2 is 18446744073709551615"), std::string::npos);
    } else {
      const Tensor x = to_tensor(t);
      EXPECT_EQ(x.dtype(), s.dtype);
      EXPECT_EQ(x.sizes(), std::vector<int64_t>{3});
      if (loom::is_integral(s.dtype, /*include_bool=*/true)) {
        const std::vector<int64_t> v = x.to_vector<int64_t>();
        for (size_t i = 0; i < 3; ++i)
          EXPECT_EQ(v[i], s.values[i].is_boolean() ? s.values[i].get<bool>() : s.values[i].get<int64_t>());
      } else {
        const std::vector<double> v = x.to_vector<double>();
        for (size_t i = 0; i < 3; ++i) EXPECT_EQ(v[i], s.response_values[i].get<double>());
      }
      const WireTensor back = from_tensor("x", x);
      if (maps_one_to_one(s.datatype)) {
        EXPECT_EQ(back.datatype, t.datatype);
        EXPECT_EQ(back.data, t.data);
      }
    }

    // The parsed tensor as a JSON response...
    const loom::serve::EncodedResponse text = encode_infer_response("m", "1", "", {t});
    EXPECT_FALSE(text.header_length.has_value());
    const json body = json::parse(text.body);
    EXPECT_EQ(body.at("model_name"), "m");
    EXPECT_EQ(body.at("model_version"), "1");
    EXPECT_FALSE(body.contains("id"));
    expect_response_output(body.at("outputs").at(0), s);

    // ...and as a binary one: the same bytes after the header.
    WireTensor binary = t;
    binary.binary = true;
    const loom::serve::EncodedResponse raw = encode_infer_response("m", "1", "req", {binary});
    ASSERT_TRUE(raw.header_length.has_value());
    const json header = json::parse(raw.body.substr(0, *raw.header_length));
    EXPECT_EQ(header.at("id"), "req");
    const json& output = header.at("outputs").at(0);
    EXPECT_FALSE(output.contains("data"));
    EXPECT_EQ(output.at("parameters").at("binary_data_size"), s.wire.size());
    EXPECT_EQ(raw.body.substr(*raw.header_length), s.wire);
  }
}

// Every datatype as binary data gives the same wire tensor as JSON data.
TEST(Protocol, EveryDatatypeBinaryRoundTrip) {
  json inputs = json::array();
  std::string blob;
  for (const Sample& s : samples()) {
    inputs.push_back({{"name", s.datatype},
                      {"datatype", s.datatype},
                      {"shape", {3}},
                      {"parameters", {{"binary_data_size", s.wire.size()}}}});
    blob += s.wire;
  }
  const InferRequest r = parse_binary({{"inputs", inputs}}, blob);
  const std::vector<Sample> all = samples();
  ASSERT_EQ(r.inputs.size(), all.size());
  std::vector<WireTensor> outputs;
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(r.inputs[i].name, all[i].datatype);
    EXPECT_EQ(r.inputs[i].data, all[i].wire) << all[i].datatype;
    outputs.push_back(r.inputs[i]);
    outputs.back().binary = i % 2 == 0;  // binary and JSON outputs mixed
  }
  const loom::serve::EncodedResponse response = encode_infer_response("m", "", "", outputs);
  ASSERT_TRUE(response.header_length.has_value());
  const json header = json::parse(response.body.substr(0, *response.header_length));
  EXPECT_FALSE(header.contains("model_version"));
  std::string expected_blob;
  for (size_t i = 0; i < all.size(); ++i) {
    const json& output = header.at("outputs").at(i);
    if (i % 2 == 0) {
      EXPECT_EQ(output.at("parameters").at("binary_data_size"), all[i].wire.size());
      expected_blob += all[i].wire;
    } else {
      EXPECT_EQ(output.at("datatype"), all[i].datatype);
      EXPECT_EQ(output.at("data").size(), 3u);
    }
  }
  EXPECT_EQ(response.body.substr(*response.header_length), expected_blob);
}

TEST(Protocol, NestedAndFlatDataAgree) {
  const std::string flat = parse_json(one_input("INT32", {2, 2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}))
                               .inputs[0].data;
  // (json::parse, not initializer lists: nlohmann reads {{x}} as x.)
  const json nested = json::parse("[[[1,2,3],[4,5,6]],[[7,8,9],[10,11,12]]]");
  const json rows = json::parse("[[1,2,3,4,5,6],[7,8,9,10,11,12]]");  // a batch of flat rows
  const json odd = json::parse("[1,[2,[3,[4]]],[[[5,6]]],7,8,[9,10,11,12]]");  // any nesting: document order
  for (const json& data : {nested, rows, odd}) EXPECT_EQ(parse_json(one_input("INT32", {2, 2, 3}, data)).inputs[0].data, flat);
  const Tensor t = to_tensor(parse_json(one_input("INT32", {2, 2, 3}, nested)).inputs[0]);
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(t.to_vector<int32_t>(), (std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  // Empty arrays nested anywhere add nothing.
  EXPECT_EQ(parse_json(one_input("INT32", {0, 3}, json::parse("[[],[]]"))).inputs[0].data, "");
  EXPECT_EQ(parse_json(one_input("INT32", {2}, json::parse("[[],1,[[]],[2]]"))).inputs[0].data, le_bytes<int32_t>({1, 2}));
}

TEST(Protocol, KeysInAnyOrder) {
  // "data" before "datatype": kept as JSON values and converted at the end.
  const std::string body =
      R"({"outputs":[{"parameters":{"binary_data":true},"name":"y"}],)"
      R"("inputs":[{"data":[[1.5,2],[3,4]],"shape":[2,2],"parameters":{"extra":[1,{"a":null}]},"name":"m","datatype":"FP16"}],)"
      R"("id":"7"})";
  const InferRequest r = parse_infer_request(body, std::nullopt);
  EXPECT_EQ(r.id, "7");
  ASSERT_EQ(r.inputs.size(), 1u);
  EXPECT_EQ(r.inputs[0].data, le_bytes<uint16_t>({half_bits(1.5f), half_bits(2), half_bits(3), half_bits(4)}));
  ASSERT_EQ(r.outputs.size(), 1u);
  EXPECT_EQ(r.outputs[0].name, "y");
  EXPECT_TRUE(r.outputs[0].binary);
  // A bad element is still caught, with its index.
  EXPECT_EQ(error_of([] { parse_infer_request(R"({"inputs":[{"data":[1,2.5],"name":"i","shape":[2],"datatype":"INT8"}]})",
                                              std::nullopt); }),
            "input 'i': data element 1 is 2.5, but INT8 takes integers");
}

TEST(Protocol, ScalarsAndEmptyTensors) {
  const InferRequest r = parse_json({{"inputs",
                                      {{{"name", "s"}, {"datatype", "FP64"}, {"shape", json::array()}, {"data", {2.5}}},
                                       {{"name", "e"}, {"datatype", "INT64"}, {"shape", {0, 4}}, {"data", json::array()}},
                                       {{"name", "b"},
                                        {"datatype", "BYTES"},
                                        {"shape", {0}},
                                        {"parameters", {{"binary_data_size", 0}}}}}}});
  const Tensor s = to_tensor(r.inputs[0]);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<double>(), 2.5);
  const Tensor e = to_tensor(r.inputs[1]);
  EXPECT_EQ(e.sizes(), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(r.inputs[2].data, "");
  const json body = json::parse(encode_infer_response("m", "1", "", {r.inputs[0], r.inputs[1], r.inputs[2]}).body);
  EXPECT_EQ(body["outputs"][0]["shape"], json::array());
  EXPECT_EQ(body["outputs"][0]["data"], json({2.5}));
  EXPECT_EQ(body["outputs"][1]["data"], json::array());
  EXPECT_EQ(body["outputs"][2]["data"], json::array());
}

// The request and response of inference_rest.md's "Inference Request
// Examples".
TEST(Protocol, SpecExample) {
  const std::string request = R"({
    "id" : "42",
    "inputs" : [
      {
        "name" : "input0",
        "shape" : [ 2, 2 ],
        "datatype" : "UINT32",
        "data" : [ 1, 2, 3, 4 ]
      },
      {
        "name" : "input1",
        "shape" : [ 3 ],
        "datatype" : "BOOL",
        "data" : [ true ]
      }
    ],
    "outputs" : [
      {
        "name" : "output0"
      }
    ]
  })";
  // As printed, the example's input1 has shape [3] but one element: a
  // request the spec itself says is wrong ("the shape and data must
  // represent the full shape and contents"). Refused, naming the mismatch.
  EXPECT_EQ(error_of([&] { parse_infer_request(request, std::nullopt); }),
            "input 'input1': shape [3] has 3 elements, but data has 1");

  std::string fixed = request;
  fixed.replace(fixed.find("[ true ]"), 8, "[ true, false, true ]");
  const InferRequest r = parse_infer_request(fixed, std::nullopt);
  EXPECT_EQ(r.id, "42");
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_EQ(r.inputs[0].name, "input0");
  EXPECT_EQ(r.inputs[0].datatype, DataType::UInt32);
  EXPECT_EQ(r.inputs[0].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(to_tensor(r.inputs[0]).to_vector<int64_t>(), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(r.inputs[1].data, std::string("\1\0\1", 3));
  ASSERT_EQ(r.outputs.size(), 1u);
  EXPECT_EQ(r.outputs[0].name, "output0");
  EXPECT_FALSE(r.outputs[0].binary);
  EXPECT_EQ(r.outputs[0].classification, 0);
  EXPECT_FALSE(r.binary_output);
  EXPECT_EQ(r.timeout_us, 0);

  // The example response: output0, a [3, 2] FP32 tensor.
  const Tensor y = loom::tensor({{1.0f, 1.1f}, {2.0f, 2.1f}, {3.0f, 3.1f}});
  const loom::serve::EncodedResponse response = encode_infer_response("mymodel", "", r.id, {from_tensor("output0", y)});
  EXPECT_EQ(response.body,
            R"({"model_name":"mymodel","id":"42","outputs":[{"name":"output0","datatype":"FP32","shape":[3,2],)"
            R"("data":[1.0,1.1,2.0,2.1,3.0,3.1]}]})");
}

TEST(Protocol, RequestedOutputsAndParameters) {
  const InferRequest r = parse_json({{"id", "abc"},
                                     {"parameters", {{"binary_data_output", true}, {"timeout", 250000}, {"priority", 2},
                                                     {"sequence_id", "s"}}},
                                     {"inputs", one_input("FP32", {1}, {1})["inputs"]},
                                     {"outputs",
                                      {{{"name", "probs"}, {"parameters", {{"classification", 3}}}},
                                       {{"name", "logits"}, {"parameters", {{"binary_data", true}}}},
                                       {{"name", "plain"}},
                                       {{"name", "off"}, {"parameters", {{"binary_data", false}, {"other", {1, 2}}}}}}}});
  EXPECT_EQ(r.id, "abc");
  EXPECT_TRUE(r.binary_output);
  EXPECT_EQ(r.timeout_us, 250000);
  ASSERT_EQ(r.outputs.size(), 4u);
  EXPECT_EQ(r.outputs[0].name, "probs");
  EXPECT_EQ(r.outputs[0].classification, 3);
  EXPECT_FALSE(r.outputs[0].binary);
  EXPECT_EQ(r.outputs[1].name, "logits");
  EXPECT_TRUE(r.outputs[1].binary);
  EXPECT_EQ(r.outputs[1].classification, 0);
  EXPECT_EQ(r.outputs[2].name, "plain");
  EXPECT_FALSE(r.outputs[3].binary);
  // No "outputs", or an empty list: every output of the model.
  EXPECT_TRUE(parse_json(one_input("FP32", {1}, {1})).outputs.empty());
  json empty = one_input("FP32", {1}, {1});
  empty["outputs"] = json::array();
  EXPECT_TRUE(parse_json(empty).outputs.empty());
}

// Binary and JSON inputs in one request; binary slices go in input order.
TEST(Protocol, MixedBinaryAndJsonInputs) {
  const std::string image = le_bytes<float>({1.0f, 2.0f, -3.0f, 0.25f});
  const std::string words = bytes_elements({"hello", "", std::string("w\0rld", 5)});
  const json header = {{"inputs",
                        {{{"name", "image"},
                          {"datatype", "FP32"},
                          {"shape", {1, 4}},
                          {"parameters", {{"binary_data_size", image.size()}}}},
                         {{"name", "mask"}, {"datatype", "BOOL"}, {"shape", {4}}, {"data", {true, true, false, true}}},
                         {{"name", "words"},
                          {"datatype", "BYTES"},
                          {"shape", {3}},
                          {"parameters", {{"binary_data_size", words.size()}}}}}}};
  const InferRequest r = parse_binary(header, image + words);
  ASSERT_EQ(r.inputs.size(), 3u);
  EXPECT_EQ(r.inputs[0].data, image);
  EXPECT_EQ(r.inputs[1].data, std::string("\1\1\0\1", 4));
  EXPECT_EQ(r.inputs[2].data, words);
  EXPECT_EQ(to_tensor(r.inputs[0]).to_vector<float>(), (std::vector<float>{1.0f, 2.0f, -3.0f, 0.25f}));
  EXPECT_EQ(to_tensor(r.inputs[1]).to_vector<bool>(), (std::vector<bool>{true, true, false, true}));
  // BYTES in a JSON response: strings ("w\0rld" keeps its NUL, escaped).
  const json body = json::parse(encode_infer_response("m", "1", "", {r.inputs[2]}).body);
  EXPECT_EQ(body["outputs"][0]["data"], json({"hello", "", std::string("w\0rld", 5)}));

  // A header length with no binary input and nothing after it is fine.
  const InferRequest plain = parse_binary(one_input("FP32", {1}, {1}), "");
  EXPECT_EQ(plain.inputs[0].data, le_bytes<float>({1.0f}));
}

// Note [Rounding JSON numbers to FP16 and BF16] in protocol.cpp.
TEST(Protocol, HalfPrecisionRounding) {
  // The 16 bits a one-element input of `datatype` holds after parsing `number`.
  auto half_bits = [](const std::string& datatype, const std::string& number) {
    const std::string data = parse_infer_request(R"({"inputs":[{"name":"h","datatype":")" + datatype +
                                                     R"(","shape":[1],"data":[)" + number + "]}]}",
                                                 std::nullopt)
                                 .inputs[0]
                                 .data;
    uint16_t bits;
    std::memcpy(&bits, data.data(), 2);
    return bits;
  };
  auto fp16 = [&](const std::string& number) { return half_bits("FP16", number); };
  auto bf16 = [&](const std::string& number) { return half_bits("BF16", number); };
  EXPECT_EQ(fp16("1"), 0x3c00);
  EXPECT_EQ(fp16("1.00048828125"), 0x3c00);            // 1 + 2^-11: a tie, to even (down)
  EXPECT_EQ(fp16("1.00146484375"), 0x3c02);            // 1 + 3 * 2^-11: a tie, to even (up)
  // 1 + 2^-11 + 2^-40: above the tie, so up. In float it would be the tie
  // itself (2^-40 is below float's precision), and rounding twice gives 1.
  EXPECT_EQ(fp16("1.0004882812509094947017729282379150390625"), 0x3c01);
  EXPECT_EQ(fp16("0.99951171875"), 0x3bff);            // 1 - 2^-11, exact
  EXPECT_EQ(fp16("65504"), 0x7bff);
  EXPECT_EQ(fp16("65519.99"), 0x7bff);                 // below 65520 rounds down to the largest half
  EXPECT_EQ(fp16("-0.0"), 0x8000);
  EXPECT_EQ(fp16("1e-8"), 0x0000);                     // below half the smallest subnormal
  EXPECT_EQ(fp16("5.960464477539063e-8"), 0x0001);     // 2^-24, the smallest subnormal
  EXPECT_EQ(bf16("1.00390625"), 0x3f80);               // 1 + 2^-8: a tie, to even
  EXPECT_EQ(bf16("1.0039062500000009094947017729282379150390625"), 0x3f81);  // + 2^-50 over the tie
  EXPECT_EQ(bf16("3.3895313892515355e38"), 0x7f7f);  // the largest bfloat16
  EXPECT_EQ(error_of([&] { fp16("65520"); }), "input 'h': data element 0 is 65520, out of range for FP16");
  EXPECT_EQ(error_of([&] { bf16("3.4e38"); }), "input 'h': data element 0 is 3.4e38, out of range for BF16");
}

TEST(Protocol, NumberRanges) {
  EXPECT_EQ(parse_json(one_input("FP32", {1}, {3.4028235e38})).inputs[0].data, le_bytes<float>({3.4028235e38f}));
  EXPECT_EQ(error_of([] { parse_infer_request(R"({"inputs":[{"name":"f","datatype":"FP32","shape":[1],"data":[1e39]}]})",
                                              std::nullopt); }),
            "input 'f': data element 0 is 1e39, out of range for FP32");
  EXPECT_EQ(error_of([] { parse_infer_request(R"({"inputs":[{"name":"f","datatype":"FP64","shape":[1],"data":[-1e400]}]})",
                                              std::nullopt); }),
            "request body is not valid JSON: number overflow parsing '-1e400'");
  EXPECT_EQ(parse_infer_request(R"({"inputs":[{"name":"f","datatype":"FP64","shape":[1],"data":[1e-400]}]})",
                                std::nullopt)
                .inputs[0]
                .data,
            le_bytes<double>({0.0}));  // underflow: 0
  EXPECT_EQ(error_of([] { parse_json(one_input("UINT8", {2}, {1, 256})); }),
            "input 'x': data element 1 is 256, out of range for UINT8 (0 to 255)");
  EXPECT_EQ(error_of([] { parse_json(one_input("INT16", {1}, {-32769})); }),
            "input 'x': data element 0 is -32769, out of range for INT16 (-32768 to 32767)");
  EXPECT_EQ(error_of([] { parse_json(one_input("UINT32", {1}, {-1})); }),
            "input 'x': data element 0 is -1, out of range for UINT32 (0 to 4294967295)");
  EXPECT_EQ(error_of([] { parse_infer_request(
                              R"({"inputs":[{"name":"u","datatype":"UINT64","shape":[1],"data":[18446744073709551616]}]})",
                              std::nullopt); }),
            "input 'u': data element 0 is 18446744073709551616, out of range for UINT64 (0 to 18446744073709551615)");
  EXPECT_EQ(error_of([] { parse_infer_request(R"({"inputs":[{"name":"i","datatype":"INT32","shape":[1],"data":[2.0]}]})",
                                              std::nullopt); }),
            "input 'i': data element 0 is 2.0, but INT32 takes integers");
  // Integers are numbers for the float types, exactly when they can be.
  EXPECT_EQ(parse_json(one_input("FP64", {1}, {9007199254740993LL})).inputs[0].data,
            le_bytes<double>({9007199254740992.0}));
}

// FP32 numbers are read as the float nearest the decimal, not through a
// double: 7.038531e-26 is the shortest decimal of a float that a double
// rounded again to float misses by one.
TEST(Protocol, Float32ReadsTheDecimalDirectly) {
  const uint32_t bits = 0x15ae43fd;
  float f;
  std::memcpy(&f, &bits, 4);
  WireTensor t = from_tensor("f", loom::tensor(std::vector<float>{f}));
  const std::string body = encode_infer_response("m", "1", "", {t}).body;
  EXPECT_NE(body.find("\"data\":[7.038531e-26]"), std::string::npos) << body;
  EXPECT_NE(static_cast<float>(7.038531e-26), f);  // the double, rounded to float
  const std::string request = R"({"inputs":[{"name":"f","datatype":"FP32","shape":[1],"data":[7.038531e-26]}]})";
  EXPECT_EQ(parse_infer_request(request, std::nullopt).inputs[0].data, t.data);
  // Beyond float's range is an Error; below half the smallest subnormal, zero.
  EXPECT_EQ(parse_json(one_input("FP32", {2}, {1.0e-46, -1.0e-46})).inputs[0].data, le_bytes<float>({0.0f, -0.0f}));
  EXPECT_EQ(parse_json(one_input("FP32", {1}, {1.4e-45})).inputs[0].data, le_bytes<float>({1.4e-45f}));
}

TEST(Protocol, ResponseFloats) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const Tensor y = loom::tensor(std::vector<float>{2.0f, -0.0f, nan, inf, -inf, 1e-45f, 0.1f, 1e20f});
  const std::string body = encode_infer_response("m", "1", "", {from_tensor("y", y)}).body;
  EXPECT_NE(body.find(R"("data":[2.0,-0.0,null,null,null,1e-45,0.1,1e+20])"), std::string::npos) << body;
  // Shortest decimals that read back to the same float.
  const Tensor z = loom::tensor(std::vector<float>{1.0f / 3, 16777216.0f, 3.4028235e38f});
  const json data = json::parse(encode_infer_response("m", "1", "", {from_tensor("z", z)}).body)["outputs"][0]["data"];
  EXPECT_EQ(data.dump(), "[0.33333334,16777216.0,3.4028235e+38]");
  // Half precision prints as its float value.
  const json h = json::parse(encode_infer_response("m", "1", "", {from_tensor("h", y.to(loom::kFloat16))}).body);
  EXPECT_EQ(static_cast<float>(h["outputs"][0]["data"][6].get<double>()), 0.0999755859375f);
}

TEST(Protocol, ToTensorAndFromTensor) {
  // A non-contiguous tensor goes on the wire in row-major order.
  const Tensor m = loom::tensor({{1, 2, 3}, {4, 5, 6}}).to(loom::kInt32).t();
  const WireTensor w = from_tensor("m", m);
  EXPECT_EQ(w.datatype, DataType::Int32);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(w.data, le_bytes<int32_t>({1, 4, 2, 5, 3, 6}));
  EXPECT_FALSE(w.binary);
  // A hand-made wire tensor is checked before use.
  WireTensor bad = w;
  bad.data.pop_back();
  EXPECT_NE(error_of([&] { to_tensor(bad); }).find("input 'm': 23 bytes of data are not a multiple of INT32's 4 bytes"),
            std::string::npos);
  WireTensor flag;
  flag.name = "f";
  flag.datatype = DataType::Bool;
  flag.shape = {2};
  flag.data = std::string("\1\2", 2);
  EXPECT_EQ(error_of([&] { to_tensor(flag); }), "input 'f': BOOL element 1 is byte 2, not 0 or 1");
  bad.binary = true;
  EXPECT_NE(error_of([&] { encode_infer_response("m", "1", "", {bad}); }).find("output 'm'"), std::string::npos);
}

std::vector<std::string> bytes_of(const WireTensor& t) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < t.data.size();) {
    uint32_t n;
    std::memcpy(&n, t.data.data() + pos, 4);
    out.push_back(t.data.substr(pos + 4, n));
    pos += 4 + n;
  }
  return out;
}

TEST(Protocol, Classification) {
  const Tensor scores = loom::tensor({{0.1f, 0.7f, 0.2f, 0.7f}, {5.0f, -1.0f, 3.5f, 0.0f}});
  const WireTensor top2 = classify("probs", scores, 2, {});
  EXPECT_EQ(top2.datatype, DataType::Bytes);
  EXPECT_EQ(top2.shape, (std::vector<int64_t>{2, 2}));
  // Ties: the lower index first.
  EXPECT_EQ(bytes_of(top2), (std::vector<std::string>{"0.7:1", "0.7:3", "5:0", "3.5:2"}));
  // Labels; k beyond the class count is clamped.
  const WireTensor all = classify("probs", scores, 10, {"cat", "dog", "emu", "yak"});
  EXPECT_EQ(all.shape, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(bytes_of(all), (std::vector<std::string>{"0.7:1:dog", "0.7:3:yak", "0.2:2:emu", "0.1:0:cat", "5:0:cat",
                                                      "3.5:2:emu", "0:3:yak", "-1:1:dog"}));
  // Scores without a batch dimension, integer scores, float64 scores, NaN.
  EXPECT_EQ(bytes_of(classify("c", loom::tensor(std::vector<int64_t>{3, 9, 9}), 2, {})),
            (std::vector<std::string>{"9:1", "9:2"}));
  EXPECT_EQ(classify("c", loom::tensor(std::vector<int64_t>{3, 9, 9}), 2, {}).shape, std::vector<int64_t>{2});
  EXPECT_EQ(bytes_of(classify("c", loom::tensor(std::vector<double>{0.1, 0.30000000000000004}), 1, {})),
            std::vector<std::string>{"0.30000000000000004:1"});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(bytes_of(classify("c", loom::tensor(std::vector<float>{nan, -1.0f, nan}), 3, {})),
            (std::vector<std::string>{"-1:1", "nan:0", "nan:2"}));
  // The result encodes as strings.
  const json body = json::parse(encode_infer_response("m", "1", "", {top2}).body);
  EXPECT_EQ(body["outputs"][0]["data"], json({"0.7:1", "0.7:3", "5:0", "3.5:2"}));
  EXPECT_EQ(body["outputs"][0]["datatype"], "BYTES");

  EXPECT_EQ(error_of([&] { classify("p", scores, 0, {}); }), "output 'p': classification count 0 must be positive");
  EXPECT_EQ(error_of([&] { classify("p", scores, 1, {"a"}); }), "output 'p': 4 classes, but 1 labels");
  EXPECT_NE(error_of([&] { classify("p", loom::zeros({2, 2, 2}), 1, {}); }).find("needs scores (N, C) or (C)"),
            std::string::npos);
}

// The lead's examples of messages, exactly.
TEST(Protocol, ErrorMessages) {
  json mnist = one_input("FP32", {1, 1, 28, 28}, std::vector<float>(783, 0.5f));
  mnist["inputs"][0]["name"] = "input";
  EXPECT_EQ(error_of([&] { parse_json(mnist); }), "input 'input': shape [1,1,28,28] has 784 elements, but data has 783");
  EXPECT_EQ(error_of([] { parse_json(one_input("FP33", {1}, {1})); }),
            "input 'x': datatype \"FP33\" is not a protocol datatype (BOOL, UINT8, UINT16, UINT32, UINT64, INT8, "
            "INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES)");
  EXPECT_EQ(error_of([] { parse_infer_request("{\"inputs\": [", std::nullopt); }).rfind("request body is not valid JSON: ", 0),
            0u);
  const json header = {{"inputs",
                        {{{"name", "input"},
                          {"datatype", "FP32"},
                          {"shape", {1, 1, 28, 28}},
                          {"parameters", {{"binary_data_size", 3136}}}}}}};
  EXPECT_EQ(error_of([&] { parse_binary(header, std::string(3000, '\0')); }),
            "binary data: inputs declare 3136 bytes, but 3000 follow the JSON header");
  // A name too long to quote whole is cut short, on a UTF-8 boundary.
  const std::string long_name = std::string(63, 'a') + "\u00e9" + std::string(100, 'b');
  json named = one_input("FP32", {2}, {1});
  named["inputs"][0]["name"] = long_name;
  const std::string message = error_of([&] { parse_json(named); });
  EXPECT_EQ(message.rfind("input '" + std::string(63, 'a') + "...(165 bytes)': shape [2]", 0), 0u) << message;
}

TEST(Protocol, NestingLimit) {
  // The root object, "inputs", the input and 61 levels of data: 64 in all.
  auto nested = [](int levels) {
    return R"({"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":)" + std::string(levels, '[') + "1" +
           std::string(levels, ']') + "}]}";
  };
  EXPECT_EQ(parse_infer_request(nested(61), std::nullopt).inputs[0].data, le_bytes<float>({1.0f}));
  EXPECT_EQ(error_of([&] { parse_infer_request(nested(62), std::nullopt); }),
            "request body nests arrays and objects deeper than 64 levels");
}

// ---- the malformed corpus ----

fs::path corpus_dir() { return LOOM_SERVE_MALFORMED_DIR; }

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// What the server does with a corpus file: a .json body alone, a .bin body
// with the header length from its .hdr file.
InferRequest parse_corpus_file(const fs::path& path) {
  const std::string body = read_file(path);
  if (path.extension() == ".json") return parse_infer_request(body, std::nullopt);
  fs::path hdr = path;
  hdr.replace_extension(".hdr");
  std::string value = read_file(hdr);
  value = value.substr(0, value.find('\n'));
  return parse_infer_request(body, parse_header_length(value, body.size()));
}

// A piece of the message each corpus case must produce: the case is refused
// for the reason its name gives, not some accident of the file.
const std::map<std::string, std::string>& expected_messages() {
  static const std::map<std::string, std::string> kExpected = {
      {"01-empty-body", R"(request body is not valid JSON: parse error at line 1, column 1)"},
      {"02-not-json", R"(request body is not valid JSON: parse error at line 1, column 1)"},
      {"03-truncated", R"(unexpected end of input)"},
      {"04-trailing-garbage", R"(expected end of input)"},
      {"05-root-array", R"(request body must be a JSON object, got an array)"},
      {"06-root-string", R"(request body must be a JSON object, got a string)"},
      {"07-invalid-utf8", R"(ill-formed UTF-8 byte; last read: '"x\xff')"},
      {"08-lone-surrogate", R"(surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF)"},
      {"09-deep-nesting-data", R"(deeper than 64 levels)"},
      {"10-deep-nesting-unknown-key", R"(deeper than 64 levels)"},
      {"11-deep-nesting-unclosed", R"(deeper than 64 levels)"},
      {"12-inputs-missing", R"(request: "inputs" is missing)"},
      {"13-inputs-empty", R"(request: "inputs" is empty)"},
      {"14-inputs-object", R"(request: "inputs" must be an array, got an object)"},
      {"15-input-not-object", R"(inputs[0] must be an object, got an integer)"},
      {"16-id-number", R"(request: "id" must be a string, got an integer)"},
      {"17-parameters-array", R"(request: "parameters" must be an object, got an array)"},
      {"18-binary-data-output-string", R"(request: "parameters.binary_data_output" must be a boolean, got a string)"},
      {"19-timeout-negative", R"(request: "parameters.timeout" is -1; it must not be negative)"},
      {"20-timeout-float", R"(request: "parameters.timeout" must be a non-negative integer, got a number)"},
      {"21-duplicate-key", R"(input 'x': duplicate key "data")"},
      {"22-duplicate-inputs-key", R"(request: duplicate key "inputs")"},
      {"23-name-missing", R"(inputs[0]: "name" is missing)"},
      {"24-name-number", R"(inputs[0]: "name" must be a string, got an integer)"},
      {"25-name-empty", R"(inputs[0]: "name" is empty)"},
      {"26-datatype-missing", R"(input 'x': "datatype" is missing)"},
      {"27-datatype-unknown", R"(input 'x': datatype "FP33" is not a protocol datatype (BOOL, UINT8,)"},
      {"28-datatype-lowercase", R"(input 'x': datatype "fp32" is not a protocol datatype)"},
      {"29-datatype-number", R"(input 'x': "datatype" must be a string, got an integer)"},
      {"30-shape-missing", R"(input 'x': "shape" is missing)"},
      {"31-shape-string", R"(input 'x': "shape" must be an array, got a string)"},
      {"32-shape-negative", R"(input 'x': shape dimension 0 is -1; dimensions must be non-negative integers)"},
      {"33-shape-float", R"(input 'x': shape dimension 0 is 2.0; dimensions must be non-negative integers)"},
      {"34-shape-nested", R"(input 'x': shape dimension 0 is an array)"},
      {"35-shape-overflow", R"(input 'x': shape [4294967296,4294967296] has more elements than int64 can count)"},
      {"36-shape-overflow-beside-zero", R"(input 'x': shape [0,4294967296,4294967296] has more elements than int64 can count)"},
      {"37-shape-dim-beyond-int64", R"(input 'x': shape dimension 0 is 18446744073709551615, more than int64 holds)"},
      {"38-duplicate-input-names", R"(inputs[1]: duplicate input name 'x')"},
      {"39-parameters-string", R"(input 'x': "parameters" must be an object, got a string)"},
      {"40-no-data", R"(input 'x': has neither "data" nor "parameters.binary_data_size")"},
      {"41-data-and-binary-size", R"(input 'x': has both "data" and "parameters.binary_data_size")"},
      {"42-data-too-few", R"(input 'x': shape [2,2] has 4 elements, but data has 3)"},
      {"43-data-too-many", R"(input 'x': shape [2] has 2 elements, but data has 3)"},
      {"44-data-ragged-short", R"(input 'x': shape [2,2] has 4 elements, but data has 3)"},
      {"45-data-scalar", R"(input 'x': "data" must be an array, got an integer)"},
      {"46-data-object-element", R"(input 'x': data element 0 is an object)"},
      {"47-data-string-for-fp32", R"(input 'x': data element 0 is "1.0", but FP32 takes numbers)"},
      {"48-data-null-element", R"(input 'x': data element 1 is null, but FP32 takes numbers)"},
      {"49-data-bool-for-fp32", R"(input 'x': data element 0 is true, but FP32 takes numbers)"},
      {"50-int32-fraction", R"(input 'x': data element 1 is 1.5, but INT32 takes integers)"},
      {"51-int32-exponent", R"(input 'x': data element 1 is 1e3, but INT32 takes integers)"},
      {"52-int32-out-of-range", R"(input 'x': data element 1 is 2147483648, out of range for INT32 (-2147483648 to 2147483647))"},
      {"53-uint8-out-of-range", R"(input 'x': data element 1 is 300, out of range for UINT8 (0 to 255))"},
      {"54-uint8-negative", R"(input 'x': data element 1 is -1, out of range for UINT8 (0 to 255))"},
      {"55-int8-below-range", R"(input 'x': data element 0 is -129, out of range for INT8 (-128 to 127))"},
      {"56-int64-out-of-range", R"(input 'x': data element 1 is 9223372036854775808, out of range for INT64)"},
      {"57-uint64-beyond-uint64", R"(input 'x': data element 1 is 18446744073709551616, out of range for UINT64)"},
      {"58-fp16-overflow", R"(input 'x': data element 1 is 65520, out of range for FP16)"},
      {"59-bf16-overflow", R"(input 'x': data element 1 is 3.4e+38, out of range for BF16)"},
      {"60-fp32-overflow", R"(input 'x': data element 1 is 1e+39, out of range for FP32)"},
      {"61-fp64-huge-number", R"(request body is not valid JSON: number overflow parsing '1e400')"},
      {"62-bool-as-integer", R"(input 'x': data element 0 is 1, but BOOL takes true or false)"},
      {"63-bytes-number-element", R"(input 'x': data element 1 is 1, but BYTES takes strings)"},
      {"64-bytes-nested-object", R"(input 'x': data element 1 is an object)"},
      {"65-outputs-not-array", R"(request: "outputs" must be an array, got an object)"},
      {"66-output-not-object", R"(outputs[0] must be an object, got a string)"},
      {"67-output-name-missing", R"(outputs[0]: "name" is missing)"},
      {"68-duplicate-output-names", R"(outputs[1]: duplicate output name 'y')"},
      {"69-classification-zero", R"(output 'y': "parameters.classification" is 0; it must be positive)"},
      {"70-classification-float", R"(output 'y': "parameters.classification" must be a positive integer, got a number)"},
      {"71-classification-negative", R"(output 'y': "parameters.classification" is -3; it must be positive)"},
      {"72-binary-data-string", R"(output 'y': "parameters.binary_data" must be a boolean, got a string)"},
      {"73-binary-size-without-header", R"(binary data: inputs declare 8 bytes (parameters.binary_data_size), but the request has no Inference-Header-Content-Length)"},
      {"74-binary-size-negative", R"(input 'x': "parameters.binary_data_size" is -8; it must not be negative)"},
      {"75-binary-size-string", R"(input 'x': "parameters.binary_data_size" must be a non-negative integer, got a string)"},
      {"76-header-longer-than-body", R"(Inference-Header-Content-Length: 100000 is more than the body's 99 bytes)"},
      {"77-header-not-a-number", R"(Inference-Header-Content-Length: "abc" is not a decimal byte count)"},
      {"78-header-negative", R"(Inference-Header-Content-Length: "-5" is not a decimal byte count)"},
      {"79-header-hex", R"(Inference-Header-Content-Length: "0x40" is not a decimal byte count)"},
      {"80-header-empty", R"(Inference-Header-Content-Length: "" is not a decimal byte count)"},
      {"81-header-overflows", R"(Inference-Header-Content-Length: 99999999999999999999999 is more than the body's 99 bytes)"},
      {"82-header-zero", R"(request body is not valid JSON: parse error at line 1, column 1: syntax error while parsing value - unexpected end of input)"},
      {"83-header-cuts-json", R"(request body is not valid JSON: parse error at line 1, column 87)"},
      {"84-header-includes-binary", R"(request body is not valid JSON: a NUL byte at offset 91)"},
      {"85-binary-size-not-multiple", R"(input 'x': 7 bytes of data are not a multiple of FP32's 4 bytes)"},
      {"86-binary-sizes-exceed-body", R"(binary data: inputs declare 16 bytes, but 8 follow the JSON header)"},
      {"87-binary-sizes-short-of-body", R"(binary data: inputs declare 4 bytes, but 8 follow the JSON header)"},
      {"88-binary-size-shape-mismatch", R"(input 'x': shape [3] has 3 elements, but its data holds 2 (8 bytes of FP32))"},
      {"89-binary-unused-bytes", R"(binary data: inputs declare 0 bytes, but 8 follow the JSON header)"},
      {"90-binary-sizes-overflow", R"(binary data: inputs declare more bytes than uint64 can count)"},
      {"91-binary-bool-byte-2", R"(input 'x': BOOL element 1 is byte 2, not 0 or 1)"},
      {"92-binary-second-input-short", R"(binary data: inputs declare 16 bytes, but 12 follow the JSON header)"},
      {"93-bytes-truncated-prefix", R"(input 'x': BYTES element 0 at byte 0 of its data has only 2 of the 4 bytes of its length prefix)"},
      {"94-bytes-length-past-end", R"(input 'x': BYTES element 0 at byte 0 of its data declares 100 bytes, but 3 remain)"},
      {"95-bytes-huge-length", R"(input 'x': BYTES element 0 at byte 0 of its data declares 4294967295 bytes, but 3 remain)"},
      {"96-bytes-count-mismatch", R"(input 'x': shape [2] has 2 elements, but its data holds 1 BYTES elements)"},
      {"97-bytes-trailing-bytes", R"(input 'x': BYTES element 1 at byte 7 of its data has only 2 of the 4 bytes of its length prefix)"},
  };
  return kExpected;
}

TEST(Protocol, MalformedCorpus) {
  ASSERT_TRUE(fs::is_directory(corpus_dir())) << corpus_dir();
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(corpus_dir())) {
    const fs::path& p = entry.path();
    if (p.extension() == ".json" || p.extension() == ".bin") files.push_back(p);
  }
  std::sort(files.begin(), files.end());
  EXPECT_GE(files.size(), 40u);
  for (const fs::path& path : files) {
    SCOPED_TRACE(path.filename().string());
    if (path.extension() == ".bin") {
      fs::path hdr = path;
      hdr.replace_extension(".hdr");
      EXPECT_TRUE(fs::exists(hdr)) << "a .bin case needs its .hdr";
    }
    const std::string message = error_of([&] { parse_corpus_file(path); });
    // Every message must fit in a JSON error body.
    EXPECT_NO_THROW((void)json(message).dump());
    const std::string stem = path.stem().string();
    const auto it = expected_messages().find(stem);
    if (it == expected_messages().end()) {
      ADD_FAILURE() << "no expected message listed; it says: " << message;
    } else {
      EXPECT_NE(message.find(it->second), std::string::npos) << message;
    }
  }
}

}  // namespace
