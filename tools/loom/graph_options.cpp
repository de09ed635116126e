#include "graph_options.h"

#include <cstdio>

namespace loom::cli {

namespace {
std::string mb(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}
}  // namespace

void check_graph_options(const GraphOptions& o) {
  LOOM_CHECK(o.dump_graph.empty() || o.compile, "train: --dump-graph writes the compiled step's graph: add --compile");
  LOOM_CHECK(o.memory_budget_mb == 0 || (o.compile && o.checkpoint_activations),
             "train: --memory-budget-mb is the compiled recompute pass's budget: add --compile --checkpoint-activations");
}

jit::CompileOptions compile_options(const GraphOptions& o) {
  jit::CompileOptions c;
  if (o.checkpoint_activations) {
    c.checkpoint_segments = -1;  // sqrt(GEMM-like nodes), raised until the budget fits
    c.memory_budget_bytes = static_cast<size_t>(o.memory_budget_mb * 1e6);
  }
  return c;
}

void report_graph(const GraphOptions& o, const std::shared_ptr<const jit::Graph>& graph, const jit::CompileStats& stats,
                  bool& done, std::ostream& log) {
  if (done || stats.graphs == 0 || graph == nullptr) return;
  done = true;
  if (o.dump_graph.empty()) return;
  graph->save_dot(o.dump_graph);
  log << "wrote the compiled step's graph (" << graph->num_nodes() << " nodes) to " << o.dump_graph << "\n" << std::flush;
}

void report_compiled_run(const std::shared_ptr<const jit::Graph>& graph, const jit::CompileStats& stats, std::ostream& log) {
  if (graph == nullptr) return;
  const jit::MemoryPlan p = graph->memory_plan();
  log << "compiled step: " << stats.recordings << " recorded, " << stats.replays << " replayed; " << graph->num_nodes()
      << " kernels, arena " << mb(p.arena_bytes) << " (lower bound " << mb(p.lower_bound_bytes) << ", eager peak "
      << mb(p.eager_peak_bytes) << ")";
  if (p.recomputed_nodes > 0) log << ", " << p.recomputed_nodes << " kernels recomputed";
  if (p.segments > 0) log << " in " << p.segments << " checkpointed segments";
  log << "\n" << std::flush;
}

}  // namespace loom::cli
