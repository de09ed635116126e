// Recurrent layers RNN, LSTM and GRU and their one-step cells RNNCell,
// LSTMCell and GRUCell, with PyTorch's parameter names, shapes, gate order
// and initialization, so a PyTorch state_dict maps one to one.
//
//   nn::LSTM lstm(256, 256, {.num_layers = 2, .dropout = 0.2});
//   auto [out, state] = lstm(x);        // x (L, N, 256) -> out (L, N, 256)
//   auto [h_n, c_n] = state;            // each (num_layers, N, 256)
//   nn::GRU gru(8, 16, {.batch_first = true, .bidirectional = true});
//   auto [y, h] = gru(x, h0);           // x (N, L, 8), h0 (2, N, 16) -> y (N, L, 32)
//
// Shapes (D = 2 when bidirectional, else 1; H = hidden_size):
//   input  (L, N, input_size), (N, L, input_size) with batch_first, or
//          unbatched (L, input_size);
//   h0/c0  (num_layers * D, N, H), or (num_layers * D, H) unbatched; undefined
//          means zeros;
//   output (L, N, D * H) (batch_first: (N, L, D * H); unbatched: (L, D * H)),
//          the last layer's h at every step, both directions side by side;
//   h_n/c_n like h0: the final state of every layer and direction, ordered
//          layer 0 forward, layer 0 reverse, layer 1 forward, ...
//
// Gates, as PyTorch (x: the step's input, h: the previous hidden state):
//   RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)          (or relu)
//   LSTM  i, f, g, o = chunks of W_ih x + b_ih + W_hh h + b_hh (in that order)
//         c' = sigmoid(f) c + sigmoid(i) tanh(g),  h' = sigmoid(o) tanh(c')
//   GRU   r, z, n: r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z likewise,
//         n = tanh(W_in x + b_in + r (W_hn h + b_hn)),  h' = (1 - z) n + z h
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loom/nn/module.h"
#include "loom/ops.h"

namespace loom::nn {

// PyTorch's keyword arguments, in its order. `nonlinearity` ("tanh" or
// "relu") is RNN's only; LSTM and GRU reject anything but the default.
// `dropout` applies to the output of every layer but the last, in training
// mode only.
struct RNNOptions {
  int64_t num_layers = 1;
  std::string nonlinearity = "tanh";
  bool bias = true;
  bool batch_first = false;
  double dropout = 0.0;
  bool bidirectional = false;
};

// The parameters and the sequence loop shared by RNN, LSTM and GRU
// (PyTorch's RNNBase). Parameters, registered in PyTorch's order: for each
// layer k and direction ("" or "_reverse"): weight_ih_l{k} (G * H, in_k),
// weight_hh_l{k} (G * H, H), bias_ih_l{k} (G * H), bias_hh_l{k} (G * H),
// with G = 1 (RNN), 4 (LSTM) or 3 (GRU), in_0 = input_size and
// in_k = D * H above. All drawn from U(-1/sqrt(H), 1/sqrt(H)).
class RNNBaseImpl : public Module {
 public:
  // Redraws every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t input_size;
  int64_t hidden_size;
  RNNOptions options;
  // all_weights[layer * D + direction] = {weight_ih, weight_hh, bias_ih,
  // bias_hh} (the biases undefined with bias = false): handles to the
  // registered parameters.
  std::vector<std::vector<Tensor>> all_weights;

 protected:
  enum class Kind { RnnTanh, RnnRelu, Lstm, Gru };
  RNNBaseImpl(const char* name, Kind kind, int64_t input_size, int64_t hidden_size, RNNOptions options);
  // The whole stack over the sequence: (output, h_n, c_n); c0 and c_n are
  // LSTM's only (undefined otherwise).
  struct Result {
    Tensor output, h_n, c_n;
  };
  Result run(const Tensor& input, const Tensor& h0, const Tensor& c0);

  Kind kind_;
};

// Elman RNN: h' = tanh (or relu) of W_ih x + b_ih + W_hh h + b_hh.
class RNNImpl : public RNNBaseImpl {
 public:
  RNNImpl(int64_t input_size, int64_t hidden_size, RNNOptions options = {});
  // (output, h_n); h0 undefined means zeros.
  std::pair<Tensor, Tensor> forward(const Tensor& input, const Tensor& h0 = {});
};
// The holders spell out the constructors so that a braced options list
// works: nn::LSTM(4, 8, {.num_layers = 2}).
class RNN : public ModuleHolder<RNNImpl> {
 public:
  using ModuleHolder<RNNImpl>::ModuleHolder;
  RNN() = default;
  RNN(int64_t input_size, int64_t hidden_size, RNNOptions options = {})
      : ModuleHolder(std::make_shared<RNNImpl>(input_size, hidden_size, std::move(options))) {}
};

// (h, c): LSTM's state.
using LSTMState = std::pair<Tensor, Tensor>;

class LSTMImpl : public RNNBaseImpl {
 public:
  LSTMImpl(int64_t input_size, int64_t hidden_size, RNNOptions options = {});
  // (output, (h_n, c_n)); state = {h0, c0}, both undefined (zeros) or both given.
  std::pair<Tensor, LSTMState> forward(const Tensor& input, const LSTMState& state = {});
};
class LSTM : public ModuleHolder<LSTMImpl> {
 public:
  using ModuleHolder<LSTMImpl>::ModuleHolder;
  LSTM() = default;
  LSTM(int64_t input_size, int64_t hidden_size, RNNOptions options = {})
      : ModuleHolder(std::make_shared<LSTMImpl>(input_size, hidden_size, std::move(options))) {}
  // Spelled out so that a braced state works: lstm(x, {h0, c0}).
  std::pair<Tensor, LSTMState> operator()(const Tensor& input, const LSTMState& state = {}) const {
    return get()->forward(input, state);
  }
};

class GRUImpl : public RNNBaseImpl {
 public:
  GRUImpl(int64_t input_size, int64_t hidden_size, RNNOptions options = {});
  // (output, h_n); h0 undefined means zeros.
  std::pair<Tensor, Tensor> forward(const Tensor& input, const Tensor& h0 = {});
};
class GRU : public ModuleHolder<GRUImpl> {
 public:
  using ModuleHolder<GRUImpl>::ModuleHolder;
  GRU() = default;
  GRU(int64_t input_size, int64_t hidden_size, RNNOptions options = {})
      : ModuleHolder(std::make_shared<GRUImpl>(input_size, hidden_size, std::move(options))) {}
};

// ---- cells: one time step ----
// input (N, input_size) or unbatched (input_size); hx (N, H) or (H), matching
// the input's batching; undefined means zeros. Parameters weight_ih
// (G * H, input_size), weight_hh (G * H, H), bias_ih and bias_hh (G * H),
// from U(-1/sqrt(H), 1/sqrt(H)).

struct RNNCellOptions {
  bool bias = true;
  std::string nonlinearity = "tanh";  // or "relu"
};

// h' = tanh (or relu) of W_ih x + b_ih + W_hh h + b_hh.
class RNNCellImpl : public Module {
 public:
  RNNCellImpl(int64_t input_size, int64_t hidden_size, RNNCellOptions options = {});
  Tensor forward(const Tensor& input) override;  // hx = zeros
  Tensor forward(const Tensor& input, const Tensor& hx);
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t input_size, hidden_size;
  RNNCellOptions options;
  Tensor weight_ih, weight_hh;  // (H, input_size), (H, H)
  Tensor bias_ih, bias_hh;      // (H); undefined with bias = false
};
class RNNCell : public ModuleHolder<RNNCellImpl> {
 public:
  using ModuleHolder<RNNCellImpl>::ModuleHolder;
  RNNCell() = default;
  RNNCell(int64_t input_size, int64_t hidden_size, RNNCellOptions options = {})
      : ModuleHolder(std::make_shared<RNNCellImpl>(input_size, hidden_size, std::move(options))) {}
};

// One LSTM step: (h', c') from (input, (h, c)); gate order i, f, g, o.
class LSTMCellImpl : public Module {
 public:
  LSTMCellImpl(int64_t input_size, int64_t hidden_size, bool bias = true);
  // state = {h, c}, both undefined (zeros) or both given.
  LSTMState forward(const Tensor& input, const LSTMState& state = {});
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t input_size, hidden_size;
  Tensor weight_ih, weight_hh;  // (4 H, input_size), (4 H, H)
  Tensor bias_ih, bias_hh;      // (4 H); undefined with bias = false
};
class LSTMCell : public ModuleHolder<LSTMCellImpl> {
 public:
  using ModuleHolder<LSTMCellImpl>::ModuleHolder;
  // cell(x, {h, c}) with a braced state.
  LSTMState operator()(const Tensor& input, const LSTMState& state = {}) const { return get()->forward(input, state); }
};

// One GRU step; gate order r, z, n.
class GRUCellImpl : public Module {
 public:
  GRUCellImpl(int64_t input_size, int64_t hidden_size, bool bias = true);
  Tensor forward(const Tensor& input) override;  // hx = zeros
  Tensor forward(const Tensor& input, const Tensor& hx);
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t input_size, hidden_size;
  Tensor weight_ih, weight_hh;  // (3 H, input_size), (3 H, H)
  Tensor bias_ih, bias_hh;      // (3 H); undefined with bias = false
};
LOOM_MODULE(GRUCell);

}  // namespace loom::nn
