#include "loom/models.h"

namespace loom::models {

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

nn::Sequential cnn(int64_t in_channels, int64_t num_classes) {
  return nn::Sequential(nn::Conv2d(in_channels, 32, 3, {.padding = {1}}), nn::BatchNorm2d(32), nn::ReLU(),
                        nn::MaxPool2d(2), nn::Conv2d(32, 64, 3, {.padding = {1}}), nn::BatchNorm2d(64), nn::ReLU(),
                        nn::MaxPool2d(2), nn::Flatten(), nn::Linear(64 * 7 * 7, 128), nn::ReLU(),
                        nn::Linear(128, num_classes));
}

nn::Sequential conv_bn(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride) {
  return nn::Sequential(
      nn::Conv2d(in_channels, out_channels, kernel_size, {.stride = {stride}, .padding = {kernel_size / 2}}),
      nn::BatchNorm2d(out_channels), nn::ReLU());
}

ResidualImpl::ResidualImpl(nn::Sequential body) : Module("Residual"), fn(std::move(body)) {
  register_module("fn", fn);
}

Tensor ResidualImpl::forward(const Tensor& input) { return fn->forward(input) + input; }

nn::Sequential resnet9(int64_t in_channels, int64_t num_classes) {
  return nn::Sequential(conv_bn(in_channels, 16, 7, 4), conv_bn(16, 32, 3, 2),
                        Residual(nn::Sequential(conv_bn(32, 32, 3, 1), conv_bn(32, 32, 3, 1))),
                        conv_bn(32, 64, 3, 2), conv_bn(64, 128, 3, 2),
                        Residual(nn::Sequential(conv_bn(128, 128, 3, 1), conv_bn(128, 128, 3, 1))), nn::Flatten(),
                        nn::Linear(128, 128), nn::ReLU(), nn::Linear(128, num_classes));
}

}  // namespace loom::models
