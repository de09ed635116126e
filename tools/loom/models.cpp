#include "models.h"

namespace loom::cli {

std::vector<std::string> model_names() { return {"mlp"}; }

std::string join_ints(const std::vector<int64_t>& values, char sep) {
  std::string s;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) s += sep;
    s += std::to_string(values[i]);
  }
  return s;
}

namespace models {

nn::Sequential mlp(int64_t in_features, const std::vector<int64_t>& hidden, int64_t num_classes) {
  nn::Sequential net;
  net->push_back(nn::Flatten());
  int64_t width = in_features;
  for (int64_t h : hidden) {
    net->push_back(nn::Linear(width, h));
    net->push_back(nn::ReLU());
    width = h;
  }
  net->push_back(nn::Linear(width, num_classes));
  return net;
}

}  // namespace models

std::shared_ptr<nn::Module> make_model(const ModelConfig& config) {
  LOOM_CHECK(config.name == "mlp", "model: unknown model '", config.name, "' (known: mlp)");
  LOOM_CHECK(config.in_features > 0 && config.num_classes > 0, "model: mlp needs positive sizes, got in_features=",
             config.in_features, " num_classes=", config.num_classes);
  for (int64_t h : config.hidden)
    LOOM_CHECK(h > 0, "model: mlp hidden widths must be positive, got ", shape_str(config.hidden));
  return models::mlp(config.in_features, config.hidden, config.num_classes).ptr();
}

}  // namespace loom::cli
