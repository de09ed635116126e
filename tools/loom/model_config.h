// The models `loom train` knows, built from a ModelConfig (which a checkpoint
// stores, so `loom eval` / `loom predict` can rebuild the model).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <loom/nn.h>

namespace loom::cli {

// Everything needed to rebuild a model's modules (not its weights).
struct ModelConfig {
  std::string name = "mlp";
  std::vector<int64_t> hidden = {512, 256};  // MLP hidden widths (unused by the image models)
  int64_t in_features = 784;                 // 28 x 28 images, flattened
  int64_t num_classes = 10;

  bool operator==(const ModelConfig&) const = default;
};

// A freshly initialized mlp, cnn (loom::models::cnn) or resnet9
// (loom::models::resnet9, one input channel), with PyTorch's default init
// drawn from the global generator (seed it first). Unknown names and bad
// sizes are an Error.
std::shared_ptr<nn::Module> make_model(const ModelConfig& config);

// "512,256"
std::string join_ints(const std::vector<int64_t>& values, char sep = ',');

}  // namespace loom::cli
