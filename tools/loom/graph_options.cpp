#include "graph_options.h"

#include <algorithm>
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
  c.fuse = c.parallel = o.compile_mode != "plan";
  if (o.checkpoint_activations) {
    c.checkpoint_segments = -1;  // sqrt(GEMM-like nodes), raised until the budget fits
    c.memory_budget_bytes = static_cast<size_t>(o.memory_budget_mb * 1e6);
  }
  return c;
}

TrainStep::TrainStep(Fn fn, const GraphOptions& o, std::ostream& log)
    : fn_(fn), o_(o), log_(log), compiled_(loom::compile(std::move(fn), compile_options(o))) {
  check_graph_options(o);
}

Tensor TrainStep::operator()(const Tensor& x, const Tensor& y) {
  if (!o_.compile) return fn_(x, y);
  Tensor loss = compiled_(x, y);
  if (!dumped_ && !o_.dump_graph.empty() && compiled_.stats().graphs > 0) {
    dumped_ = true;
    const auto graph = compiled_.graph();
    graph->save_dot(o_.dump_graph);
    log_ << "wrote the compiled step's graph (" << graph->num_nodes() << " nodes) to " << o_.dump_graph << "\n"
         << std::flush;
  }
  return loss;
}

void TrainStep::report() const {
  const auto graph = compiled_.graph();
  if (!o_.compile || graph == nullptr) return;
  const jit::CompileStats stats = compiled_.stats();
  const jit::MemoryPlan p = graph->memory_plan();
  log_ << "compiled step: " << stats.recordings << " recorded, " << stats.replays << " replayed; " << graph->num_nodes()
       << " kernels, arena " << mb(p.arena_bytes) << " (lower bound " << mb(p.lower_bound_bytes) << ", eager peak "
       << mb(p.eager_peak_bytes) << ")";
  const std::vector<std::string> ops = graph->ops();
  const auto fused = std::count(ops.begin(), ops.end(), std::string("Fused"));
  if (fused > 0) log_ << ", " << fused << " of them fused";
  if (p.recomputed_nodes > 0) log_ << ", " << p.recomputed_nodes << " kernels recomputed";
  if (p.segments > 0) log_ << " in " << p.segments << " checkpointed segments";
  log_ << "\n" << std::flush;
}

}  // namespace loom::cli
