#include "model_config.h"

#include <loom/models.h>

namespace loom::cli {

std::string join_ints(const std::vector<int64_t>& values, char sep) {
  std::string s;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) s += sep;
    s += std::to_string(values[i]);
  }
  return s;
}

std::shared_ptr<nn::Module> make_model(const ModelConfig& config) {
  LOOM_CHECK(config.in_features > 0 && config.num_classes > 0, "model: ", config.name,
             " needs positive sizes, got in_features=", config.in_features, " num_classes=", config.num_classes);
  if (config.name == "mlp") {
    for (int64_t h : config.hidden)
      LOOM_CHECK(h > 0, "model: mlp hidden widths must be positive, got ", shape_str(config.hidden));
    return models::mlp(config.in_features, config.hidden, config.num_classes).ptr();
  }
  // The image models take (N, 1, 28, 28): one channel of in_features pixels.
  LOOM_CHECK(config.name == "cnn" || config.name == "resnet9", "model: unknown model '", config.name,
             "' (known: mlp, cnn, resnet9)");
  LOOM_CHECK(config.in_features == 784, "model: ", config.name, " takes 28x28 images (in_features 784), got ",
             config.in_features);
  if (config.name == "cnn") return models::cnn(1, config.num_classes).ptr();
  return models::resnet9(1, config.num_classes).ptr();
}

}  // namespace loom::cli
