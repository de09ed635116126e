// Train the small CNN on Fashion-MNIST: two conv-BN-ReLU-pool stages and a
// two-layer classifier (loom::models::cnn), with random crops and flips.
// The same loop as examples/fashion_mnist, with a conv net and augmentation.
//
//   build/example_fashion_mnist_cnn [data_dir] [epochs]   (about 91-92% after 5 epochs)
#include <loom/loom.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

namespace nn = loom::nn;
namespace F = loom::nn::functional;
using loom::Tensor;

// Mean loss and accuracy over a whole dataset, in eval mode (BatchNorm uses
// its running statistics) and without recording gradients.
std::pair<double, double> evaluate(nn::Sequential& model, loom::data::DataLoader& loader) {
  loom::NoGradGuard no_grad;
  model->eval();
  double loss = 0, correct = 0, count = 0;
  for (auto& batch : loader) {
    Tensor logits = model(batch.data);  // (B, 10)
    int64_t n = batch.target.size(0);
    loss += F::cross_entropy(logits, batch.target).item<double>() * n;
    correct += logits.argmax(1).eq(batch.target).sum().item<double>();
    count += n;
  }
  model->train();
  return {loss / count, correct / count};
}

int main(int argc, char** argv) {
  std::string root = argc > 1 ? argv[1] : loom::data::kFashionMnistRoot;
  int epochs = argc > 2 ? std::atoi(argv[2]) : 5;
  try {
    loom::manual_seed(0);
    auto train_set = loom::data::fashion_mnist(root, /*train=*/true);
    auto test_set = loom::data::fashion_mnist(root, /*train=*/false);
    const loom::data::Normalize normalize({0.2860}, {0.3530});  // the training set's mean and std
    loom::data::DataLoaderOptions train_opts, test_opts;
    train_opts.batch_size = 128;
    train_opts.shuffle = true;
    // Pad by 2 and crop a random 28x28 window, mirror half the images, normalize.
    train_opts.transform =
        loom::data::Compose({loom::data::RandomCrop(28, 2), loom::data::RandomHorizontalFlip(), normalize});
    test_opts.batch_size = 1000;
    test_opts.transform = normalize;
    loom::data::DataLoader train_loader(train_set, train_opts), test_loader(test_set, test_opts);

    nn::Sequential model = loom::models::cnn(/*in_channels=*/1, /*num_classes=*/10);
    std::cout << model << "\n" << model->num_parameters() << " parameters\n";
    loom::optim::AdamW optimizer(model->parameters(), loom::optim::AdamWOptions(1e-3));
    loom::optim::CosineAnnealingLR scheduler(optimizer, /*T_max=*/epochs * train_loader.size());

    for (int epoch = 1; epoch <= epochs; ++epoch) {
      double loss_sum = 0;
      for (auto& batch : train_loader) {
        Tensor loss = F::cross_entropy(model(batch.data), batch.target);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        scheduler.step();
        loss_sum += loss.item<double>();
      }
      auto [test_loss, test_acc] = evaluate(model, test_loader);
      std::printf("epoch %d  train loss %.4f  test loss %.4f  test accuracy %.2f%%\n", epoch,
                  loss_sum / static_cast<double>(train_loader.size()), test_loss, 100 * test_acc);
    }
    loom::save(model, "fashion_mnist_cnn.safetensors");
    std::printf("saved fashion_mnist_cnn.safetensors\n");
  } catch (const loom::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
