// loom::nn::init: parameter initializers, named and defined as
// torch.nn.init. Each writes into the tensor it is given (the handle an
// optimizer or module holds stays valid), runs without recording autograd
// history, draws from the generator it is given (as torch's `generator=`),
// or from the global one when left out (so manual_seed fixes the values), and
// returns the same tensor.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "loom/generator.h"
#include "loom/tensor.h"

namespace loom::nn::init {

// The recommended gain for a nonlinearity: "linear", "conv1d/2d/3d",
// "conv_transpose1d/2d/3d" and "sigmoid" give 1, "tanh" 5/3, "relu" sqrt(2),
// "leaky_relu" sqrt(2 / (1 + slope^2)) (param = slope, default 0.01), "selu" 3/4.
double calculate_gain(const std::string& nonlinearity, std::optional<double> param = std::nullopt);
// (fan_in, fan_out) of a weight with at least 2 dims: (size(1), size(0)) times
// the product of the remaining dims (a convolution's receptive field).
std::pair<int64_t, int64_t> calculate_fan_in_and_fan_out(const Tensor& tensor);

// U(a, b)
Tensor uniform_(Tensor tensor, double a = 0.0, double b = 1.0, std::optional<Generator> generator = std::nullopt);
// N(mean, std^2)
Tensor normal_(Tensor tensor, double mean = 0.0, double std = 1.0, std::optional<Generator> generator = std::nullopt);
Tensor constant_(Tensor tensor, Scalar value);
Tensor zeros_(Tensor tensor);
Tensor ones_(Tensor tensor);
// The identity matrix (2-D tensors only); extra rows or columns stay zero.
Tensor eye_(Tensor tensor);

// Glorot: std = gain * sqrt(2 / (fan_in + fan_out)); the uniform form draws
// from U(-sqrt(3) std, sqrt(3) std).
Tensor xavier_uniform_(Tensor tensor, double gain = 1.0, std::optional<Generator> generator = std::nullopt);
Tensor xavier_normal_(Tensor tensor, double gain = 1.0, std::optional<Generator> generator = std::nullopt);

// He: std = calculate_gain(nonlinearity, a) / sqrt(fan), fan chosen by mode
// ("fan_in" keeps the forward variance, "fan_out" the backward one); the
// uniform form draws from U(-sqrt(3) std, sqrt(3) std).
Tensor kaiming_uniform_(Tensor tensor, double a = 0.0, const std::string& mode = "fan_in",
                        const std::string& nonlinearity = "leaky_relu",
                        std::optional<Generator> generator = std::nullopt);
Tensor kaiming_normal_(Tensor tensor, double a = 0.0, const std::string& mode = "fan_in",
                       const std::string& nonlinearity = "leaky_relu",
                       std::optional<Generator> generator = std::nullopt);

// A (semi-)orthogonal matrix times gain: the tensor, viewed as
// (size(0), numel / size(0)), gets orthonormal rows or columns (whichever
// are fewer), from the QR decomposition of a Gaussian matrix with R's
// diagonal made positive (so the result is Haar-distributed). Computed on
// the CPU in float64.
Tensor orthogonal_(Tensor tensor, double gain = 1.0, std::optional<Generator> generator = std::nullopt);

}  // namespace loom::nn::init
