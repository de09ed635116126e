// MNIST and Fashion-MNIST as datasets (torchvision.datasets.MNIST / FashionMNIST).
//
// Both come as four IDX files in one folder:
//   train-images-idx3-ubyte  train-labels-idx1-ubyte   (60000 examples)
//   t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte    (10000 examples)
// each either raw or gzipped (name + ".gz"). On Debian the package
// dataset-fashion-mnist installs Fashion-MNIST into
// /usr/share/datasets/fashion-mnist.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "loom/data/dataset.h"

namespace loom::data {

inline constexpr const char* kFashionMnistRoot = "/usr/share/datasets/fashion-mnist";

// 28x28 grey images with labels 0..9. Example i is
//   data:   float32 (1, 28, 28), pixel / 255 in [0, 1]
//   target: int64 scalar, the class
// The images stay uint8 in memory (47 MB for the training set) and are
// converted one example at a time in get().
class MNIST : public Dataset {
 public:
  // `name` is used in messages ("FashionMNIST"); `train` picks train-* or
  // t10k-*. Throws a loom::Error naming `root` and the missing or bad file.
  MNIST(const std::string& root, bool train, std::string name = "MNIST");
  Example get(int64_t index) override;
  int64_t size() const override;
  std::string name() const override;
  // uint8 (N, 28, 28) as stored in the file.
  const Tensor& images() const { return images_; }
  // int64 (N).
  const Tensor& targets() const { return targets_; }
  bool train() const { return train_; }

 private:
  Tensor images_, targets_;
  std::string name_;
  bool train_;
};

// Fashion-MNIST from `root`. A missing or unreadable file gives a loom::Error
// naming the folder and the file, and that the Debian package
// dataset-fashion-mnist provides it.
std::shared_ptr<Dataset> fashion_mnist(const std::string& root = kFashionMnistRoot, bool train = true);
// MNIST (the digits) from `root`, same layout.
std::shared_ptr<Dataset> mnist(const std::string& root, bool train = true);

// Class names of Fashion-MNIST by label: "T-shirt/top", "Trouser", ..., "Ankle boot".
const std::vector<std::string>& fashion_mnist_classes();

}  // namespace loom::data
