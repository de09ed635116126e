// `loom train`'s graph flags: --compile, --checkpoint-activations,
// --memory-budget-mb, --dump-graph (every model).
#pragma once

#include <memory>
#include <ostream>
#include <string>

#include <loom/loom.h>

namespace loom::cli {

struct GraphOptions {
  bool compile = false;                 // capture the training step once, replay it (loom::compile)
  bool checkpoint_activations = false;  // eager: loom::checkpoint regions; compiled: the recompute pass
  double memory_budget_mb = 0;          // compiled checkpointing: the arena's budget (0: sqrt segments)
  std::string dump_graph;               // write the compiled step's graph as Graphviz DOT here
};

// Refuses flags that need others (--dump-graph without --compile, ...).
void check_graph_options(const GraphOptions& o);
// The compile options the flags ask for.
jit::CompileOptions compile_options(const GraphOptions& o);
// Once the compiled step has settled into a graph: writes --dump-graph (once)
// and says so. `done` remembers that it did.
void report_graph(const GraphOptions& o, const std::shared_ptr<const jit::Graph>& graph, const jit::CompileStats& stats,
                  bool& done, std::ostream& log);
// The last line of a compiled run: replays, the graph and its memory plan.
void report_compiled_run(const std::shared_ptr<const jit::Graph>& graph, const jit::CompileStats& stats, std::ostream& log);

}  // namespace loom::cli
