#include "quantize.h"

#include "checkpoint.h"
#include "lm.h"

namespace loom::cli {

namespace {

int64_t state_bytes(const nn::Module& model) {
  int64_t bytes = 0;
  for (const auto& [name, t] : model.state_dict()) bytes += t.numel() * static_cast<int64_t>(element_size(t.dtype()));
  return bytes;
}

}  // namespace

void quantize_as_saved(nn::Module& model, const std::map<std::string, std::string>& metadata,
                       const std::string& file) {
  auto it = metadata.find(kQuantizationKey);
  if (it == metadata.end()) return;
  nn::quantize_dynamic(model, parse_quant_scheme(it->second, "checkpoint '" + file + "': metadata '" +
                                                                 kQuantizationKey + "'"));
}

QuantizeResult quantize_checkpoint(const std::string& in, QuantScheme scheme, const std::string& out) {
  io::SafetensorsFile f = io::load_safetensors(in);
  LOOM_CHECK(!f.metadata.count(kQuantizationKey), "quantize: '", in, "' is already quantized (",
             f.metadata.at(kQuantizationKey), ")");
  QuantizeResult r;
  std::shared_ptr<nn::Module> model;
  if (f.metadata.count("loom.lm")) {
    LoadedLm lm = load_lm(in);
    r.kind = lm.kind;
    model = lm.model;
  } else {
    LOOM_CHECK(f.metadata.count("loom.model"), "quantize: '", in,
               "' is not a checkpoint of `loom train` (no \"loom.model\" or \"loom.lm\" metadata)");
    LoadedModel loaded = load_model(in);
    r.kind = loaded.config.name;
    model = loaded.model;
  }
  r.bytes_before = state_bytes(*model);
  r.layers = nn::quantize_dynamic(*model, scheme);
  LOOM_CHECK(r.layers > 0, "quantize: the ", r.kind, " model in '", in, "' has no Linear layer to quantize");
  r.bytes_after = state_bytes(*model);
  std::map<std::string, std::string> metadata = f.metadata;
  metadata[kQuantizationKey] = quant_scheme_name(scheme);
  io::save_safetensors(out, model->state_dict(), metadata);
  return r;
}

}  // namespace loom::cli
