// Fit y = 3x - 1 by gradient descent: tensors, autograd and a manual SGD step.
#include <loom/loom.h>

#include <cmath>
#include <iostream>

int main() {
  loom::manual_seed(0);
  // 64 noisy points on the line y = 3x - 1; x: (64, 1), y: (64, 1).
  loom::Tensor x = loom::rand({64, 1}) * 2 - 1;
  loom::Tensor y = 3 * x - 1 + 0.01 * loom::randn({64, 1});

  // Parameters: leaves that collect gradients in .grad().
  auto opts = loom::TensorOptions().requires_grad(true);
  loom::Tensor w = loom::zeros({1, 1}, opts);
  loom::Tensor b = loom::zeros({1}, opts);

  for (int step = 0; step < 200; ++step) {
    loom::Tensor loss = (x.matmul(w) + b - y).pow(2).mean();
    loss.backward();
    {
      loom::NoGradGuard no_grad;  // the update is not part of the graph
      w -= 0.1 * w.grad();
      b -= 0.1 * b.grad();
      w.mutable_grad().zero_();
      b.mutable_grad().zero_();
    }
    if (step % 50 == 0) std::cout << "step " << step << "  loss " << loss.item<float>() << "\n";
  }
  std::cout << "w = " << w << "\nb = " << b << "\n";
  return std::abs(w.item<float>() - 3) < 0.05 && std::abs(b.item<float>() + 1) < 0.05 ? 0 : 1;
}
