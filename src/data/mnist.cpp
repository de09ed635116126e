// MNIST / Fashion-MNIST datasets over read_idx.
#include "loom/data/mnist.h"

#include <cstring>
#include <filesystem>

#include "loom/data/idx.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::data {

namespace {

// Where each dataset comes from, for the message when it is missing.
std::string provider_hint(const std::string& name) {
  if (name == "FashionMNIST")
    return "The Debian package dataset-fashion-mnist provides it (apt-get install dataset-fashion-mnist; it installs "
           "into " +
           std::string(kFashionMnistRoot) + ").";
  return "Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
         "t10k-labels-idx1-ubyte, raw or .gz) in that folder.";
}

// root/stem, else root/stem.gz.
std::string find_file(const std::string& root, const std::string& stem, const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code ec;
  LOOM_CHECK(fs::is_directory(root, ec), name, ": the dataset folder '", root, "' does not exist. ", provider_hint(name));
  for (const std::string& file : {stem, stem + ".gz"}) {
    const fs::path p = fs::path(root) / file;
    if (fs::exists(p, ec)) return p.string();
  }
  LOOM_ERROR(name, ": cannot find ", stem, " or ", stem, ".gz in '", root, "'. ", provider_hint(name));
}

// read_idx's message names the path and offset; add where to get a good copy.
Tensor read_part(const std::string& path, const std::string& name) {
  try {
    return read_idx(path);
  } catch (const Error& e) {
    LOOM_ERROR(name, ": ", e.what(), ". ", provider_hint(name));
  }
}

}  // namespace

MNIST::MNIST(const std::string& root, bool train, std::string name) : name_(std::move(name)), train_(train) {
  const std::string split = train ? "train" : "t10k";
  const std::string image_path = find_file(root, split + "-images-idx3-ubyte", name_);
  const std::string label_path = find_file(root, split + "-labels-idx1-ubyte", name_);
  images_ = read_part(image_path, name_);
  Tensor labels = read_part(label_path, name_);

  LOOM_CHECK(images_.dtype() == kUInt8 && images_.dim() == 3, name_, ": '", image_path,
             "' should hold uint8 images shaped (N, H, W), got ", images_.dtype(), " ", shape_str(images_.sizes()));
  LOOM_CHECK(labels.dtype() == kUInt8 && labels.dim() == 1, name_, ": '", label_path,
             "' should hold uint8 labels shaped (N), got ", labels.dtype(), " ", shape_str(labels.sizes()));
  LOOM_CHECK(images_.size(0) == labels.size(0), name_, ": '", image_path, "' has ", images_.size(0), " images but '",
             label_path, "' has ", labels.size(0), " labels");
  const uint8_t* l = labels.data_ptr<uint8_t>();
  for (int64_t i = 0; i < labels.numel(); ++i)
    LOOM_CHECK(l[i] < 10, name_, ": '", label_path, "': label ", int{l[i]}, " of example ", i, " is not a class in 0..9");
  targets_ = labels.to(kInt64);
}

Example MNIST::get(int64_t index) {
  check_index(index);
  // data: (1, H, W) float32, pixel / 255 computed in float32 as
  // torchvision's ToTensor does, so values match PyTorch's bit for bit.
  const int64_t h = images_.size(1), w = images_.size(2);
  Tensor data = empty({1, h, w}, kFloat32);
  const uint8_t* src = images_.data_ptr<uint8_t>() + index * h * w;
  float* dst = data.data_ptr<float>();
  for (int64_t k = 0; k < h * w; ++k) dst[k] = static_cast<float>(src[k]) / 255.0f;
  return {data, scalar_tensor(targets_.data_ptr<int64_t>()[index], kInt64)};
}

int64_t MNIST::size() const { return images_.size(0); }

std::string MNIST::name() const { return name_ + (train_ ? "(train)" : "(test)"); }

std::shared_ptr<Dataset> fashion_mnist(const std::string& root, bool train) {
  return std::make_shared<MNIST>(root, train, "FashionMNIST");
}

std::shared_ptr<Dataset> mnist(const std::string& root, bool train) {
  return std::make_shared<MNIST>(root, train, "MNIST");
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> classes = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                   "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return classes;
}

}  // namespace loom::data
