// A DCGAN on Fashion-MNIST: a generator that turns noise into 28x28 images
// with transposed convolutions, a convolutional discriminator that tells
// them from real ones, trained against each other (PyTorch's examples/dcgan,
// in loom). After every epoch it writes an 8x8 grid of samples from the same
// fixed noise, so the grids show the generator learning.
//
//   build/example_gan --epochs 3                          (runs/gan/epoch_1.png, ...)
//   build/example_gan --epochs 1 --limit 6000             (a quick look)
#include <png.h>

#include <CLI/CLI.hpp>
#include <loom/loom.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace nn = loom::nn;
namespace F = loom::nn::functional;
using loom::Tensor;

constexpr int64_t kNoise = 64;  // size of the generator's input z

// z (B, 64) -> image (B, 1, 28, 28) in [-1, 1].
nn::Sequential make_generator() {
  return nn::Sequential(nn::Linear(kNoise, 128 * 7 * 7), nn::Unflatten(1, {128, 7, 7}), nn::BatchNorm2d(128),
                        nn::ReLU(),
                        nn::ConvTranspose2d(128, 64, 4, {.stride = {2}, .padding = {1}}),  // (B, 64, 14, 14)
                        nn::BatchNorm2d(64), nn::ReLU(),
                        nn::ConvTranspose2d(64, 1, 4, {.stride = {2}, .padding = {1}}),  // (B, 1, 28, 28)
                        nn::Tanh());
}

// image (B, 1, 28, 28) -> logit (B, 1) that the image is real.
nn::Sequential make_discriminator() {
  return nn::Sequential(nn::Conv2d(1, 64, 4, {.stride = {2}, .padding = {1}}),  // (B, 64, 14, 14)
                        nn::LeakyReLU(0.2),
                        nn::Conv2d(64, 128, 4, {.stride = {2}, .padding = {1}}),  // (B, 128, 7, 7)
                        nn::BatchNorm2d(128), nn::LeakyReLU(0.2), nn::Flatten(), nn::Linear(128 * 7 * 7, 1));
}

// images (64, 1, 28, 28) in [-1, 1] -> an 8x8 grid PNG (grey, 2-pixel gaps).
void save_grid(const Tensor& images, const std::string& path) {
  constexpr int kCols = 8, kSize = 28, kGap = 2, kSide = kCols * (kSize + kGap) + kGap;
  std::vector<float> px = images.to_vector<float>();
  std::vector<unsigned char> grid(kSide * kSide, 0);
  for (int i = 0; i < kCols * kCols; ++i)
    for (int y = 0; y < kSize; ++y)
      for (int x = 0; x < kSize; ++x) {
        float v = (px[static_cast<size_t>((i * kSize + y) * kSize + x)] + 1.0f) * 127.5f;
        int row = kGap + (i / kCols) * (kSize + kGap) + y, col = kGap + (i % kCols) * (kSize + kGap) + x;
        grid[static_cast<size_t>(row * kSide + col)] = static_cast<unsigned char>(std::clamp(v, 0.0f, 255.0f));
      }
  // libpng's simplified API: one call to size the PNG, one to write it.
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = kSide;
  image.height = kSide;
  image.format = PNG_FORMAT_GRAY;
  png_alloc_size_t size = 0;
  std::vector<unsigned char> png;
  if (png_image_write_to_memory(&image, nullptr, &size, 0, grid.data(), kSide, nullptr)) {
    png.resize(size);
    png_image_write_to_memory(&image, png.data(), &size, 0, grid.data(), kSide, nullptr);
  }
  if (PNG_IMAGE_FAILED(image)) throw std::runtime_error("cannot encode " + path + ": " + image.message);
  png.resize(size);
  loom::io::write_file_atomic(path, png);  // a viewer never sees half a PNG
}

int main(int argc, char** argv) {
  CLI::App app{"Train a DCGAN on Fashion-MNIST and write a grid of samples after every epoch"};
  int epochs = 3, threads = 0;
  int64_t batch_size = 128, limit = 0, log_every = 100;
  uint64_t seed = 0;
  std::string out_dir = "runs/gan", data_dir = loom::data::kFashionMnistRoot;
  app.add_option("--epochs", epochs, "Epochs to train")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch-size", batch_size, "Images per batch")->check(CLI::Range(2, 1 << 16))->capture_default_str();
  app.add_option("--out-dir", out_dir, "Folder for epoch_<n>.png")->capture_default_str();
  app.add_option("--seed", seed, "Seed for initialization, noise and data order")->capture_default_str();
  app.add_option("--limit", limit, "Train on the first N images only (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--log-every", log_every, "Print the mean losses every N batches (0: per epoch only)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--data-dir", data_dir, "Fashion-MNIST folder (OS package: dataset-fashion-mnist)")
      ->capture_default_str();
  app.add_option("--threads", threads, "Threads (0: one per core)")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) loom::set_num_threads(threads);
    loom::manual_seed(seed);
    auto train_set = loom::data::fashion_mnist(data_dir, /*train=*/true);
    if (limit > 0 && limit < train_set->size()) {
      std::vector<int64_t> first(static_cast<size_t>(limit));
      std::iota(first.begin(), first.end(), int64_t{0});
      train_set = std::make_shared<loom::data::Subset>(train_set, std::move(first));
    }
    loom::data::DataLoaderOptions opts;
    opts.batch_size = batch_size;
    opts.shuffle = true;
    opts.drop_last = true;  // batch norm needs more than one image
    opts.seed = seed;
    opts.transform = loom::data::Normalize({0.5}, {0.5});  // pixels to [-1, 1], the generator's tanh range
    loom::data::DataLoader loader(train_set, opts);
    if (loader.size() == 0) throw std::runtime_error("--limit leaves less than one batch of images");
    std::filesystem::create_directories(out_dir);

    nn::Sequential generator = make_generator(), discriminator = make_discriminator();
    // DCGAN's settings: Adam with lr 2e-4 and beta1 0.5.
    auto adam = loom::optim::AdamOptions(2e-4).betas({0.5, 0.999});
    loom::optim::Adam opt_g(generator->parameters(), adam), opt_d(discriminator->parameters(), adam);
    Tensor fixed_noise = loom::randn({64, kNoise});  // the same 64 samples in every grid
    std::printf("DCGAN on %lld images, batch %lld: generator %lld, discriminator %lld parameters\n",
                static_cast<long long>(train_set->size()), static_cast<long long>(batch_size),
                static_cast<long long>(generator->num_parameters()),
                static_cast<long long>(discriminator->num_parameters()));

    for (int epoch = 1; epoch <= epochs; ++epoch) {
      auto start = std::chrono::steady_clock::now();
      double d_sum = 0, g_sum = 0, d_recent = 0, g_recent = 0;
      int64_t batch = 0;
      for (auto& b : loader) {
        Tensor real = b.data;  // (B, 1, 28, 28)
        Tensor ones = loom::ones({real.size(0), 1}), zeros = loom::zeros({real.size(0), 1});
        Tensor fake = generator(loom::randn({real.size(0), kNoise}));

        // The discriminator learns to say 1 for real images, 0 for fakes
        // (detached: this step leaves the generator alone).
        Tensor d_loss = F::binary_cross_entropy_with_logits(discriminator(real), ones) +
                        F::binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros);
        opt_d.zero_grad();
        d_loss.backward();
        opt_d.step();

        // The generator learns to make the discriminator say 1 for its fakes.
        Tensor g_loss = F::binary_cross_entropy_with_logits(discriminator(fake), ones);
        opt_g.zero_grad();
        g_loss.backward();
        opt_g.step();

        double d = d_loss.item<double>(), g = g_loss.item<double>();
        d_sum += d;
        g_sum += g;
        d_recent += d;
        g_recent += g;
        ++batch;
        if (log_every > 0 && batch % log_every == 0) {
          std::printf("  epoch %d batch %lld/%lld  D loss %.4f  G loss %.4f\n", epoch, static_cast<long long>(batch),
                      static_cast<long long>(loader.size()), d_recent / static_cast<double>(log_every),
                      g_recent / static_cast<double>(log_every));
          std::fflush(stdout);
          d_recent = g_recent = 0;
        }
      }
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

      std::string path = out_dir + "/epoch_" + std::to_string(epoch) + ".png";
      {
        loom::NoGradGuard no_grad;
        generator->eval();  // batch norm with its running statistics
        save_grid(generator(fixed_noise), path);
        generator->train();
      }
      std::printf("epoch %d/%d: D loss %.4f  G loss %.4f  (%.1f s)  wrote %s\n", epoch, epochs,
                  d_sum / static_cast<double>(batch), g_sum / static_cast<double>(batch), seconds, path.c_str());
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {  // loom::Error (e.g. the dataset is not installed) or a file error
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
