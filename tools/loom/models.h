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
  std::vector<int64_t> hidden = {512, 256};  // MLP hidden widths
  int64_t in_features = 784;                 // 28 x 28 images, flattened
  int64_t num_classes = 10;

  bool operator==(const ModelConfig&) const = default;
};

// Names accepted by --model ("mlp").
std::vector<std::string> model_names();

// A freshly initialized model (PyTorch's default init, drawn from the global
// generator: seed it first). Unknown names and bad sizes are an Error.
std::shared_ptr<nn::Module> make_model(const ModelConfig& config);

// "512,256"
std::string join_ints(const std::vector<int64_t>& values, char sep = ',');

namespace models {

// Flatten, then Linear + ReLU per hidden width, then a Linear to the classes:
// (N, 1, 28, 28) -> (N, 784) -> ... -> (N, num_classes) logits. The children
// are numbered as in PyTorch's nn.Sequential, so the state dict's names
// ("1.weight", "3.bias", ...) match bench/torch_mlp.py's model.
nn::Sequential mlp(int64_t in_features, const std::vector<int64_t>& hidden, int64_t num_classes);

}  // namespace models
}  // namespace loom::cli
