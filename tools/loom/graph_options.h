// `loom train`'s graph flags: --compile, --checkpoint-activations,
// --memory-budget-mb, --dump-graph (every model).
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include <loom/loom.h>

namespace loom::cli {

struct GraphOptions {
  bool compile = false;                 // capture the training step once, replay it (loom::compile)
  std::string compile_mode;             // --compile=full (fusion and the parallel scheduler) or plan (neither)
  bool checkpoint_activations = false;  // eager: loom::checkpoint regions; compiled: the recompute pass
  double memory_budget_mb = 0;          // compiled checkpointing: the arena's budget (0: sqrt segments)
  std::string dump_graph;               // write the compiled step's graph as Graphviz DOT here
};

// Refuses flags that need others (--dump-graph without --compile, ...).
void check_graph_options(const GraphOptions& o);
// The compile options the flags ask for.
jit::CompileOptions compile_options(const GraphOptions& o);

// A training step (inputs, targets) -> loss, run eagerly or, with
// --compile, through loom::compile; writes --dump-graph once the compiled
// step has settled into a graph.
class TrainStep {
 public:
  using Fn = std::function<Tensor(const Tensor&, const Tensor&)>;
  TrainStep(Fn fn, const GraphOptions& o, std::ostream& log);
  Tensor operator()(const Tensor& x, const Tensor& y);
  // The last line of a compiled run: replays, the graph and its memory plan.
  void report() const;

 private:
  Fn fn_;
  GraphOptions o_;
  std::ostream& log_;
  jit::Compiled<Tensor, 2> compiled_;
  bool dumped_ = false;
};

}  // namespace loom::cli
