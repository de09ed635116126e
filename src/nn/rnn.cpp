#include "loom/nn/rnn.h"

#include <cmath>
#include <tuple>

#include "loom/nn/functional.h"
#include "loom/nn/init.h"
#include "nn/repr.h"

namespace loom::nn {

namespace {

using Shape = std::vector<int64_t>;

// Note [Recurrent loops without quadratic backward]
// A layer computes the input projection of its whole sequence with one
// matmul, xp = x W_ih^T + b: (L, N, G*H), and then needs xp's L steps, and
// each step's gates split in G pieces. Tensor::select / narrow give one view
// at a time, and each view's backward scatters its gradient into a fresh
// zero tensor of the whole input, which the engine then adds up: L views of
// an (L, N, G*H) tensor cost O(L^2 N G H) in backward. So the loops below
// take their pieces with Tensor::unbind / split, which record one node for
// all pieces whose backward is a single stack (or cat) of their gradients
// (Note [Multi-output views] in src/ops/shape.cpp), written with loom ops,
// so higher order gradients still work.

// b_ih + b_hh where both enter the gates as a sum (RNN, LSTM): one bias for
// the input projection, so a step adds only h W_hh^T.
Tensor folded_bias(const Tensor& b_ih, const Tensor& b_hh) {
  if (!b_ih.defined()) return b_hh;
  if (!b_hh.defined()) return b_ih;
  return b_ih + b_hh;
}

// ---- one step; xp = W_ih x + bias (RNN, LSTM: b_ih + b_hh; GRU: b_ih) ----

Tensor rnn_step(const Tensor& xp, const Tensor& h, const Tensor& w_hh, bool relu) {
  Tensor pre = xp + loom::linear(h, w_hh);
  return relu ? loom::relu(pre) : loom::tanh(pre);
}

LSTMState lstm_step(const Tensor& xp, const Tensor& h, const Tensor& c, const Tensor& w_hh) {
  // gates: (N, 4H) in the order i, f, g, o.
  Tensor gates = xp + loom::linear(h, w_hh);
  const int64_t hs = w_hh.size(1);
  std::vector<Tensor> g = gates.split({hs, hs, hs, hs}, -1);
  Tensor c1 = loom::sigmoid(g[1]) * c + loom::sigmoid(g[0]) * loom::tanh(g[2]);
  Tensor h1 = loom::sigmoid(g[3]) * loom::tanh(c1);
  return {h1, c1};
}

Tensor gru_step(const Tensor& xp, const Tensor& h, const Tensor& w_hh, const Tensor& b_hh) {
  // xp, hp: (N, 3H) in the order r, z, n; r and z come out of one sigmoid.
  const int64_t hs = w_hh.size(1);
  Tensor hp = loom::linear(h, w_hh, b_hh);
  std::vector<Tensor> x3 = xp.split({2 * hs, hs}, -1);
  std::vector<Tensor> h3 = hp.split({2 * hs, hs}, -1);
  std::vector<Tensor> rz = loom::sigmoid(x3[0] + h3[0]).split({hs, hs}, -1);
  Tensor n = loom::tanh(x3[1] + rz[0] * h3[1]);
  return n + rz[1] * (h - n);  // (1 - z) n + z h
}

std::string describe(const Tensor& t) { return t.defined() ? shape_str(t.sizes()) : "an undefined tensor"; }

// Checks that the input is a floating tensor of the parameters' dtype with
// `features` in its last dim.
void check_input(const std::string& module, const Tensor& input, const Tensor& weight, int64_t input_size,
                 int64_t batched_dim) {
  LOOM_CHECK(input.defined() && (input.dim() == batched_dim || input.dim() == batched_dim - 1), module,
             ": expected input of ", batched_dim, " dims (batched) or ", batched_dim - 1, " (unbatched), got ",
             describe(input));
  LOOM_CHECK(input.dtype() == weight.dtype(), module, ": input of dtype ", input.dtype(),
             " does not match the parameters' dtype ", weight.dtype(), " (input shape ", shape_str(input.sizes()),
             ")");
  LOOM_CHECK(input.size(-1) == input_size, module, ": input of shape ", shape_str(input.sizes()), " has ",
             input.size(-1), " features, expected input_size ", input_size);
}

// Checks a given state tensor against its expected shape and dtype.
void check_state(const std::string& module, const char* what, const Tensor& s, const Shape& expected,
                 const Tensor& input) {
  if (!s.defined()) return;
  LOOM_CHECK(s.sizes() == expected, module, ": ", what, " of shape ", shape_str(s.sizes()), " does not match ",
             shape_str(expected), " expected for input of shape ", shape_str(input.sizes()));
  LOOM_CHECK(s.dtype() == input.dtype(), module, ": ", what, " of dtype ", s.dtype(),
             " does not match the input's dtype ", input.dtype());
}

void init_uniform(const std::vector<Tensor>& params, int64_t hidden_size) {
  const double bound = hidden_size > 0 ? 1.0 / std::sqrt(static_cast<double>(hidden_size)) : 0.0;
  for (const Tensor& p : params) init::uniform_(p, -bound, bound);
}

}  // namespace

// ---------------------------------------------------------------- RNNBase

RNNBaseImpl::RNNBaseImpl(const char* name, Kind kind, int64_t in, int64_t hidden, RNNOptions opts)
    : Module(name), input_size(in), hidden_size(hidden), options(std::move(opts)), kind_(kind) {
  LOOM_CHECK(in >= 0, name, ": input_size must be non-negative, got ", in);
  LOOM_CHECK(hidden > 0, name, ": hidden_size must be positive, got ", hidden);
  LOOM_CHECK(options.num_layers >= 1, name, ": num_layers must be at least 1, got ", options.num_layers);
  LOOM_CHECK(options.dropout >= 0 && options.dropout <= 1, name,
             ": dropout must be a probability in [0, 1], got ", options.dropout);
  if (kind == Kind::Lstm || kind == Kind::Gru)
    LOOM_CHECK(options.nonlinearity == "tanh", name, ": nonlinearity is RNN's option only, got \"",
               options.nonlinearity, "\"");
  else
    LOOM_CHECK(options.nonlinearity == "tanh" || options.nonlinearity == "relu", name,
               ": nonlinearity must be \"tanh\" or \"relu\", got \"", options.nonlinearity, "\"");
  const int64_t gates = (kind == Kind::Lstm ? 4 : kind == Kind::Gru ? 3 : 1) * hidden;
  const int64_t dirs = options.bidirectional ? 2 : 1;
  for (int64_t layer = 0; layer < options.num_layers; ++layer) {
    const int64_t layer_in = layer == 0 ? in : hidden * dirs;
    for (int64_t dir = 0; dir < dirs; ++dir) {
      const std::string suffix = "_l" + std::to_string(layer) + (dir == 1 ? "_reverse" : "");
      std::vector<Tensor> w(4);
      w[0] = register_parameter("weight_ih" + suffix, loom::empty({gates, layer_in}));
      w[1] = register_parameter("weight_hh" + suffix, loom::empty({gates, hidden}));
      if (options.bias) {
        w[2] = register_parameter("bias_ih" + suffix, loom::empty({gates}));
        w[3] = register_parameter("bias_hh" + suffix, loom::empty({gates}));
      }
      all_weights.push_back(std::move(w));
    }
  }
  reset_parameters();
}

void RNNBaseImpl::reset_parameters() { init_uniform(parameters(), hidden_size); }

std::string RNNBaseImpl::extra_repr() const {
  std::string s = std::to_string(input_size) + ", " + std::to_string(hidden_size);
  if (options.num_layers != 1) s += ", num_layers=" + std::to_string(options.num_layers);
  if (!options.bias) s += ", bias=False";
  if (options.batch_first) s += ", batch_first=True";
  if (options.dropout != 0) s += ", dropout=" + detail::py_float(options.dropout);
  if (options.bidirectional) s += ", bidirectional=True";
  return s;
}

RNNBaseImpl::Result RNNBaseImpl::run(const Tensor& input, const Tensor& h0, const Tensor& c0) {
  const std::string& name = type_name();
  check_input(name, input, all_weights[0][0], input_size, 3);
  const bool batched = input.dim() == 3;
  const int64_t dirs = options.bidirectional ? 2 : 1;
  const int64_t layers = options.num_layers;
  // x: (L, N, in), time-major.
  Tensor x = !batched ? input.unsqueeze(1) : options.batch_first ? input.transpose(0, 1) : input;
  const int64_t steps = x.size(0), batch = x.size(1);
  LOOM_CHECK(steps > 0, name, ": expected a sequence of length at least 1, got input of shape ",
             shape_str(input.sizes()));
  const Shape state_shape =
      batched ? Shape{layers * dirs, batch, hidden_size} : Shape{layers * dirs, hidden_size};
  check_state(name, kind_ == Kind::Lstm ? "h0" : "hx", h0, state_shape, input);
  check_state(name, "c0", c0, state_shape, input);

  // Initial states, one (N, H) per layer and direction.
  auto initial = [&](const Tensor& s) {
    if (!s.defined()) {
      Tensor z = loom::zeros({batch, hidden_size}, input.options());
      return std::vector<Tensor>(static_cast<size_t>(layers * dirs), z);
    }
    return (batched ? s : s.unsqueeze(1)).unbind(0);
  };
  const std::vector<Tensor> hs0 = initial(h0);
  const std::vector<Tensor> cs0 = kind_ == Kind::Lstm ? initial(c0) : std::vector<Tensor>{};

  std::vector<Tensor> h_n, c_n;
  for (int64_t layer = 0; layer < layers; ++layer) {
    std::vector<Tensor> outs;
    for (int64_t dir = 0; dir < dirs; ++dir) {
      const size_t k = static_cast<size_t>(layer * dirs + dir);
      const std::vector<Tensor>& w = all_weights[k];
      // The whole sequence's input projection in one matmul: (L, N, G*H).
      const Tensor bias = kind_ == Kind::Gru ? w[2] : folded_bias(w[2], w[3]);
      const std::vector<Tensor> xp = loom::linear(x, w[0], bias).unbind(0);
      Tensor h = hs0[k], c = kind_ == Kind::Lstm ? cs0[k] : Tensor();
      std::vector<Tensor> seq(static_cast<size_t>(steps));
      for (int64_t s = 0; s < steps; ++s) {
        const size_t t = static_cast<size_t>(dir == 0 ? s : steps - 1 - s);
        switch (kind_) {
          case Kind::RnnTanh: h = rnn_step(xp[t], h, w[1], false); break;
          case Kind::RnnRelu: h = rnn_step(xp[t], h, w[1], true); break;
          case Kind::Lstm: std::tie(h, c) = lstm_step(xp[t], h, c, w[1]); break;
          case Kind::Gru: h = gru_step(xp[t], h, w[1], w[3]); break;
        }
        seq[t] = h;
      }
      outs.push_back(loom::stack(seq, 0));
      h_n.push_back(h);
      if (kind_ == Kind::Lstm) c_n.push_back(c);
    }
    x = dirs == 1 ? outs[0] : loom::cat(outs, 2);
    // As PyTorch: dropout on every layer's output but the last, in training only.
    if (layer + 1 < layers && options.dropout > 0 && is_training())
      x = functional::dropout(x, options.dropout, true);
  }

  Result r;
  r.output = !batched ? x.squeeze(1) : options.batch_first ? x.transpose(0, 1) : x;
  r.h_n = loom::stack(h_n, 0);
  if (!batched) r.h_n = r.h_n.squeeze(1);
  if (kind_ == Kind::Lstm) {
    r.c_n = loom::stack(c_n, 0);
    if (!batched) r.c_n = r.c_n.squeeze(1);
  }
  return r;
}

RNNImpl::RNNImpl(int64_t in, int64_t hidden, RNNOptions opts)
    : RNNBaseImpl("RNN", opts.nonlinearity == "relu" ? Kind::RnnRelu : Kind::RnnTanh, in, hidden, opts) {}

std::pair<Tensor, Tensor> RNNImpl::forward(const Tensor& input, const Tensor& h0) {
  Result r = run(input, h0, {});
  return {r.output, r.h_n};
}

LSTMImpl::LSTMImpl(int64_t in, int64_t hidden, RNNOptions opts)
    : RNNBaseImpl("LSTM", Kind::Lstm, in, hidden, std::move(opts)) {}

std::pair<Tensor, LSTMState> LSTMImpl::forward(const Tensor& input, const LSTMState& state) {
  LOOM_CHECK(state.first.defined() == state.second.defined(),
             "LSTM: give both h0 and c0 or neither, got h0 ", describe(state.first), " and c0 ",
             describe(state.second));
  Result r = run(input, state.first, state.second);
  return {r.output, {r.h_n, r.c_n}};
}

GRUImpl::GRUImpl(int64_t in, int64_t hidden, RNNOptions opts)
    : RNNBaseImpl("GRU", Kind::Gru, in, hidden, std::move(opts)) {}

std::pair<Tensor, Tensor> GRUImpl::forward(const Tensor& input, const Tensor& h0) {
  Result r = run(input, h0, {});
  return {r.output, r.h_n};
}

// ---------------------------------------------------------------- cells

namespace {

// Registers PyTorch's cell parameters (weight_ih, weight_hh, bias_ih, bias_hh).
void register_cell(Module& m, const char* name, int64_t in, int64_t hidden, int64_t gates, bool bias,
                   Tensor& w_ih, Tensor& w_hh, Tensor& b_ih, Tensor& b_hh) {
  LOOM_CHECK(in >= 0, name, ": input_size must be non-negative, got ", in);
  LOOM_CHECK(hidden > 0, name, ": hidden_size must be positive, got ", hidden);
  w_ih = m.register_parameter("weight_ih", loom::empty({gates * hidden, in}));
  w_hh = m.register_parameter("weight_hh", loom::empty({gates * hidden, hidden}));
  if (bias) {
    b_ih = m.register_parameter("bias_ih", loom::empty({gates * hidden}));
    b_hh = m.register_parameter("bias_hh", loom::empty({gates * hidden}));
  }
}

// The cell's input as (N, in) and its state as (N, H) (zeros when undefined);
// `batched` says whether to squeeze the batch dim off the result.
struct CellArgs {
  Tensor x;
  std::vector<Tensor> states;
  bool batched;
};
CellArgs cell_args(const char* name, const Tensor& input, const std::vector<std::pair<const char*, Tensor>>& states,
                   const Tensor& weight, int64_t input_size, int64_t hidden_size) {
  check_input(name, input, weight, input_size, 2);
  CellArgs a;
  a.batched = input.dim() == 2;
  a.x = a.batched ? input : input.unsqueeze(0);
  const Shape expected = a.batched ? Shape{input.size(0), hidden_size} : Shape{hidden_size};
  for (const auto& [what, s] : states) {
    check_state(name, what, s, expected, input);
    a.states.push_back(!s.defined() ? loom::zeros({a.x.size(0), hidden_size}, input.options())
                       : a.batched  ? s
                                    : s.unsqueeze(0));
  }
  return a;
}

std::string cell_repr(int64_t in, int64_t hidden, bool bias) {
  return std::to_string(in) + ", " + std::to_string(hidden) + (bias ? "" : ", bias=False");
}

}  // namespace

RNNCellImpl::RNNCellImpl(int64_t in, int64_t hidden, RNNCellOptions opts)
    : Module("RNNCell"), input_size(in), hidden_size(hidden), options(std::move(opts)) {
  LOOM_CHECK(options.nonlinearity == "tanh" || options.nonlinearity == "relu",
             "RNNCell: nonlinearity must be \"tanh\" or \"relu\", got \"", options.nonlinearity, "\"");
  register_cell(*this, "RNNCell", in, hidden, 1, options.bias, weight_ih, weight_hh, bias_ih, bias_hh);
  reset_parameters();
}

void RNNCellImpl::reset_parameters() { init_uniform(parameters(), hidden_size); }

Tensor RNNCellImpl::forward(const Tensor& input) { return forward(input, {}); }

Tensor RNNCellImpl::forward(const Tensor& input, const Tensor& hx) {
  CellArgs a = cell_args("RNNCell", input, {{"hx", hx}}, weight_ih, input_size, hidden_size);
  Tensor h = rnn_step(loom::linear(a.x, weight_ih, folded_bias(bias_ih, bias_hh)), a.states[0], weight_hh,
                      options.nonlinearity == "relu");
  return a.batched ? h : h.squeeze(0);
}

std::string RNNCellImpl::extra_repr() const {
  return cell_repr(input_size, hidden_size, options.bias) +
         (options.nonlinearity != "tanh" ? ", nonlinearity=" + options.nonlinearity : "");
}

LSTMCellImpl::LSTMCellImpl(int64_t in, int64_t hidden, bool bias)
    : Module("LSTMCell"), input_size(in), hidden_size(hidden) {
  register_cell(*this, "LSTMCell", in, hidden, 4, bias, weight_ih, weight_hh, bias_ih, bias_hh);
  reset_parameters();
}

void LSTMCellImpl::reset_parameters() { init_uniform(parameters(), hidden_size); }

LSTMState LSTMCellImpl::forward(const Tensor& input, const LSTMState& state) {
  LOOM_CHECK(state.first.defined() == state.second.defined(), "LSTMCell: give both h and c or neither, got h ",
             describe(state.first), " and c ", describe(state.second));
  CellArgs a = cell_args("LSTMCell", input, {{"h", state.first}, {"c", state.second}}, weight_ih, input_size,
                         hidden_size);
  auto [h, c] = lstm_step(loom::linear(a.x, weight_ih, folded_bias(bias_ih, bias_hh)), a.states[0], a.states[1],
                          weight_hh);
  if (!a.batched) return {h.squeeze(0), c.squeeze(0)};
  return {h, c};
}

std::string LSTMCellImpl::extra_repr() const { return cell_repr(input_size, hidden_size, bias_ih.defined()); }

GRUCellImpl::GRUCellImpl(int64_t in, int64_t hidden, bool bias)
    : Module("GRUCell"), input_size(in), hidden_size(hidden) {
  register_cell(*this, "GRUCell", in, hidden, 3, bias, weight_ih, weight_hh, bias_ih, bias_hh);
  reset_parameters();
}

void GRUCellImpl::reset_parameters() { init_uniform(parameters(), hidden_size); }

Tensor GRUCellImpl::forward(const Tensor& input) { return forward(input, {}); }

Tensor GRUCellImpl::forward(const Tensor& input, const Tensor& hx) {
  CellArgs a = cell_args("GRUCell", input, {{"hx", hx}}, weight_ih, input_size, hidden_size);
  Tensor h = gru_step(loom::linear(a.x, weight_ih, bias_ih), a.states[0], weight_hh, bias_hh);
  return a.batched ? h : h.squeeze(0);
}

std::string GRUCellImpl::extra_repr() const { return cell_repr(input_size, hidden_size, bias_ih.defined()); }

}  // namespace loom::nn
