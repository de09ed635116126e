// Ready-made models (loom::models): the ones `loom train` knows and the
// course reference networks. Each returns freshly initialized modules
// (PyTorch's default init, drawn from the global generator: seed it first);
// children are numbered as in PyTorch's nn.Sequential, so state dict names
// match the PyTorch definitions given with each.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loom/models/gpt.h"
#include "loom/models/lstm_lm.h"
#include "loom/nn.h"

namespace loom::models {

// Flatten, then Linear + ReLU per hidden width, then a Linear to the classes:
// (N, 1, 28, 28) -> (N, 784) -> ... -> (N, num_classes) logits.
nn::Sequential mlp(int64_t in_features, const std::vector<int64_t>& hidden, int64_t num_classes);

// The small CNN for 28x28 images: two conv-BN-ReLU-pool stages, then a
// two-layer classifier. (N, in_channels, 28, 28) -> (N, num_classes).
//   Conv2d(in, 32, 3, padding 1), BatchNorm2d(32), ReLU, MaxPool2d(2),
//   Conv2d(32, 64, 3, padding 1), BatchNorm2d(64), ReLU, MaxPool2d(2),
//   Flatten, Linear(64 * 7 * 7 = 3136, 128), ReLU, Linear(128, num_classes)
nn::Sequential cnn(int64_t in_channels = 1, int64_t num_classes = 10);

// needle's ConvBN: Conv2d(in, out, kernel, stride, padding kernel / 2, bias),
// BatchNorm2d(out), ReLU.
nn::Sequential conv_bn(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride);

// y = body(x) + x (needle's nn.Residual). The body is the child "fn".
class ResidualImpl : public nn::Module {
 public:
  explicit ResidualImpl(nn::Sequential body);
  Tensor forward(const Tensor& input) override;

  nn::Sequential fn;
};
LOOM_MODULE(Residual);

// needle's ResNet9 (CMU 10-414 hw4):
//   ConvBN(in, 16, 7, 4), ConvBN(16, 32, 3, 2),
//   Residual(ConvBN(32, 32, 3, 1), ConvBN(32, 32, 3, 1)),
//   ConvBN(32, 64, 3, 2), ConvBN(64, 128, 3, 2),
//   Residual(ConvBN(128, 128, 3, 1), ConvBN(128, 128, 3, 1)),
//   Flatten, Linear(128, 128), ReLU, Linear(128, num_classes)
// 431,946 parameters for 3-channel input and 10 classes. The stride-4, -2,
// -2, -2 stages take 32x32 images (and 28x28 ones) down to 1x1 maps.
nn::Sequential resnet9(int64_t in_channels = 3, int64_t num_classes = 10);

}  // namespace loom::models
