// `loom quantize`: a checkpoint of `loom train` (an image model or a
// language model) with every Linear quantized (nn::quantize_dynamic, Note
// [Quantized Linear] in src/backend/cpu/cpu_quant.cpp), written as a new
// safetensors file. The file keeps the source's metadata, adds
// "loom.quantization" (int8 or int4) and holds the model's tensors only
// (no optimizer state: a quantized model does not train). `loom eval`,
// `predict`, `generate` and `serve` read that key and quantize the model
// they rebuild before its weights load.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <loom/loom.h>

namespace loom::cli {

inline constexpr const char* kQuantizationKey = "loom.quantization";

// Quantizes `model` (freshly built, before its weights load) as the
// checkpoint's metadata says; nothing when it names no scheme. An unknown
// scheme is an Error naming `file`.
void quantize_as_saved(nn::Module& model, const std::map<std::string, std::string>& metadata,
                       const std::string& file);

struct QuantizeResult {
  std::string kind;  // mlp | cnn | resnet9 | gpt | lstm
  int64_t layers = 0;                        // Linear layers quantized
  int64_t bytes_before = 0, bytes_after = 0;  // the model's tensors
};

// Reads `in`, quantizes its model with `scheme`, writes `out` (atomically).
QuantizeResult quantize_checkpoint(const std::string& in, QuantScheme scheme, const std::string& out);

}  // namespace loom::cli
