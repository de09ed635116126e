// loom::compile: capture a step once, replay it as a graph of kernel calls.
//
//   auto step = loom::compile([&](const Tensor& x, const Tensor& y) {
//     opt.zero_grad();
//     Tensor loss = nn::functional::cross_entropy(model->forward(x), y);
//     loss.backward();
//     opt.step();
//     return loss;
//   });
//   for (auto& [x, y] : loader) {
//     Tensor loss = step(x, y);        // first calls run eagerly and record,
//     sched.step();                    // later ones replay the recording
//   }
//   step.graph()->print();             // one line per kernel, with shapes
//
// What a replay does (Note [Capture and replay] in src/jit/compile.cpp): the
// recorded kernel calls run again on the new inputs, writing the same
// persistent tensors (parameters, gradients, optimizer state, BatchNorm
// statistics) and an arena planned once for every intermediate; host code
// in the function does not run again. So:
// - Values that change between steps are read at each replay: the
//   optimizer's hyperparameters (a scheduler's learning rate), the step
//   count (a kernel), and random numbers (each replay reserves fresh
//   counters from the same generators, so dropout draws what eager
//   execution would draw after the same seed).
// - Host reads of a value computed in the step (item(), printing,
//   data-dependent branching) are refused with a loom::Error during capture,
//   as is anything else a replay could not repeat.
// - Returned tensors are fresh on every replay and carry no autograd history.
// - A call whose argument shapes differ captures a new graph (a small cache,
//   one graph per shape signature); a different dtype or device is an error.
// - The objects the function uses (model, optimizer) must outlive the
//   compiled function, and replacing a parameter tensor (rather than writing
//   it in place) needs a new compiled function.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "loom/tensor.h"

namespace loom {
namespace jit {

namespace detail {
struct GraphImpl;
class Compiler;
}  // namespace detail

// Where the bytes of a planned step live (Note [Static memory planning]).
struct MemoryPlan {
  size_t arena_bytes = 0;        // one block for every intermediate and kernel workspace
  // When the parallel scheduler laid the arena out again so that nearby
  // nodes do not share bytes (Note [Scheduling]): the serial order's arena,
  // which arena_bytes then exceeds (0: the replay runs on the serial plan).
  size_t serial_arena_bytes = 0;
  size_t lower_bound_bytes = 0;  // the peak of the summed live intermediate bytes (no plan can use less)
  size_t persistent_bytes = 0;   // parameters, gradients, optimizer state, constants the graph keeps
  size_t input_bytes = 0;        // the arguments
  size_t output_bytes = 0;       // returned tensors, allocated at each replay
  size_t eager_peak_bytes = 0;   // the most bytes the eager run that captured it had in use beyond its start
  int64_t buffers_in_arena = 0;
  int64_t buffers_in_place = 0;  // outputs that took over their dying input's buffer
  int64_t recomputed_nodes = 0;  // forward nodes copied into the backward (Note [Recomputing activations])
  int segments = 0;              // checkpointed segments (0: none)
};

// The captured step: values (a view of a buffer: dtype, sizes, strides,
// offset) and nodes (a kernel call, or a host check) in execution order.
class Graph {
 public:
  explicit Graph(std::shared_ptr<detail::GraphImpl> impl);

  int64_t num_nodes() const;
  int64_t num_values() const;
  // Op name of each node, in order ("Linear", "FusedAdam", "HostCheck", ...).
  std::vector<std::string> ops() const;
  MemoryPlan memory_plan() const;
  // One line per node, torch.fx style: "%7 f32[16,128] = Linear(%2, %3, %4)".
  std::string str() const;
  void print(std::ostream& os) const;
  void print() const;
  // The graph in Graphviz DOT; save_dot writes it atomically.
  std::string to_dot() const;
  void save_dot(const std::string& path) const;

 private:
  std::shared_ptr<detail::GraphImpl> impl_;
};

struct CompileOptions {
  // Graphs kept, one per argument-shape signature (PyTorch keeps one CUDA
  // graph per shape). The least recently used one goes first.
  int cache_size = 8;
  // Plan the intermediates into one arena (off: every intermediate gets its
  // own allocation at each replay, for debugging the planner).
  bool plan_memory = true;
  // Run the passes: dead code, no-op copies, constant folding.
  bool optimize = true;
  // Fuse chains of elementwise ops, with at most one row reduction each, into
  // single kernels whose intermediates never reach memory (Note [Fusion] in
  // src/jit/fusion.cpp). LOOM_LOG_COMPILE=1 prints what fused and why groups broke.
  bool fuse = true;
  // Fuse the elementwise ops after a batched matrix product into its
  // epilogue (they run on each block of the product as the GEMM finishes
  // it). Off by default: the interpreter's dispatch per block of the
  // product costs more than the memory pass it saves at the sizes measured
  // (make bench's compile group); tests turn it on.
  bool fuse_gemm_epilogues = false;
  // Run independent kernels at the same time, the pool's threads split
  // between them (Note [Scheduling] in src/jit/scheduler.cpp); results are
  // bitwise those of the serial order.
  bool parallel = true;
  // How many eager recordings a step may take before its structure settles
  // (the first steps create optimizer state and gradients).
  int max_recordings = 4;
  // Recompute in the backward the activations that cheap forward kernels
  // (elementwise, normalization) produce from values it keeps anyway,
  // instead of keeping them (Note [Recomputing activations]).
  bool recompute_cheap = true;
  // Activation checkpointing: cut the forward into this many segments and
  // keep only the buffers that cross the cuts; -1: sqrt(GEMM-like nodes);
  // 0: off.
  int checkpoint_segments = 0;
  // With checkpointing: raise the number of segments until the planned
  // arena (intermediates and workspaces) fits in this many bytes (0: no budget).
  size_t memory_budget_bytes = 0;
};

struct CompileStats {
  int64_t calls = 0, recordings = 0, replays = 0, graphs = 0;
};

namespace detail {
// The untyped core of a compiled function: tensors in, tensors out.
class Compiler {
 public:
  using Fn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;
  Compiler(Fn fn, CompileOptions options);
  ~Compiler();
  std::vector<Tensor> call(const std::vector<Tensor>& args);
  std::shared_ptr<const Graph> graph() const;
  CompileStats stats() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

template <class T>
struct Returns {
  static std::vector<Tensor> pack(T&& v) {
    if constexpr (std::is_same_v<T, Tensor>) return {std::move(v)};
    else if constexpr (std::is_same_v<T, std::vector<Tensor>>) return std::move(v);
    else return std::apply([](auto&&... t) { return std::vector<Tensor>{Tensor(t)...}; }, std::move(v));
  }
  static T unpack(std::vector<Tensor>&& v) {
    if constexpr (std::is_same_v<T, Tensor>) return std::move(v.at(0));
    else if constexpr (std::is_same_v<T, std::vector<Tensor>>) return std::move(v);
    else
      return [&]<size_t... I>(std::index_sequence<I...>) { return T{std::move(v.at(I))...}; }(
                 std::make_index_sequence<std::tuple_size_v<T>>{});
  }
};

template <class F>
struct Signature : Signature<decltype(&F::operator())> {};
template <class C, class R, class... A>
struct Signature<R (C::*)(A...) const> {
  using Result = R;
  static constexpr size_t arity = sizeof...(A);
};
template <class C, class R, class... A>
struct Signature<R (C::*)(A...)> : Signature<R (C::*)(A...) const> {};
template <class R, class... A>
struct Signature<R (*)(A...)> : Signature<R (Signature<R (*)(A...)>::*)(A...) const> {};
}  // namespace detail

// A compiled function: call it as the function it wraps.
template <class R, size_t N>
class Compiled {
 public:
  Compiled(detail::Compiler::Fn fn, CompileOptions options)
      : core_(std::make_shared<detail::Compiler>(std::move(fn), options)) {}

  template <class... A>
  R operator()(const A&... args) const {
    static_assert(sizeof...(A) == N, "loom::compile: called with a different number of arguments");
    std::vector<Tensor> out = core_->call(std::vector<Tensor>{Tensor(args)...});
    if constexpr (!std::is_void_v<R>) return detail::Returns<R>::unpack(std::move(out));
  }
  // The graph the most recent call replayed or settled into (before any has:
  // the first recording, unplanned; null before the first call).
  std::shared_ptr<const Graph> graph() const { return core_->graph(); }
  CompileStats stats() const { return core_->stats(); }

 private:
  std::shared_ptr<detail::Compiler> core_;
};

}  // namespace jit

// Compiles `fn`, a callable over tensors (every parameter a Tensor or const
// Tensor&) returning void, a Tensor, a std::vector<Tensor> or a tuple of
// Tensors: see the top of this header.
template <class F>
auto compile(F fn, jit::CompileOptions options = {}) {
  using Sig = jit::detail::Signature<F>;
  using R = typename Sig::Result;
  constexpr size_t N = Sig::arity;
  jit::detail::Compiler::Fn erased = [fn = std::move(fn)](const std::vector<Tensor>& a) mutable -> std::vector<Tensor> {
    return [&]<size_t... I>(std::index_sequence<I...>) -> std::vector<Tensor> {
      if constexpr (std::is_void_v<R>) {
        fn(a[I]...);
        return {};
      } else {
        return jit::detail::Returns<R>::pack(fn(a[I]...));
      }
    }(std::make_index_sequence<N>{});
  };
  return jit::Compiled<R, N>(std::move(erased), options);
}

}  // namespace loom
