// The backward engine: runs the graph below some roots in dependency order.
//
// 1. Discover the nodes reachable from the roots and count, for each, how many
//    edges point at it (its dependencies).
// 2. Seed the roots' input buffers with their gradients. A node is ready once
//    every edge into it has delivered (or passed on nothing); among ready nodes
//    the most recently created runs first, which keeps memory low for the
//    usual chain-shaped graphs.
// 3. Running a node: fill missing gradients with zeros, run its hooks, call
//    apply() (with grad mode = create_graph, see Note [Backward formulas are
//    loom ops]), add each result into the buffer of the node its edge names.
// For autograd::grad the engine only walks nodes that lead to the requested
// inputs, and captures their gradients instead of running AccumulateGrad.
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "autograd/node.h"
#include "core/autocast.h"
#include "core/capture.h"
#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::autograd {

namespace {

struct ByNewest {
  bool operator()(const Node* a, const Node* b) const { return a->sequence_nr < b->sequence_nr; }
};

// Fits a gradient produced by `producer` to the metadata of the output it is
// for, or explains why it cannot.
Tensor validate_grad(const Tensor& g, const OutputMeta& meta, const std::string& producer, size_t index) {
  LOOM_CHECK(g.sizes() == meta.sizes, "backward: ", producer, " returned a gradient of shape ",
             shape_str(g.sizes()), " for input ", index, ", expected shape ", shape_str(meta.sizes));
  LOOM_CHECK(g.device() == meta.device, "backward: ", producer, " returned a gradient on ", g.device().str(),
             " for input ", index, ", expected ", meta.device.str());
  if (g.dtype() != meta.dtype && is_floating_point(meta.dtype)) return g.to(meta.dtype);
  return g;
}

void apply_hooks(const std::vector<std::pair<int64_t, Hook>>& hooks, Tensor& g) {
  for (const auto& [handle, hook] : hooks) {
    (void)handle;
    Tensor r = hook(g);
    if (r.defined()) g = r;
  }
}

}  // namespace

namespace {

TensorList run_backward_pass(const TensorList& roots, const TensorList& root_grads, bool keep_graph,
                             bool create_graph, const TensorList& inputs, bool allow_unused) {
  const char* api = inputs.empty() ? "backward" : "autograd::grad";
  if (capture::Recorder* r = capture::active()) r->on_backward();
  LOOM_CHECK(root_grads.empty() || root_grads.size() == roots.size(), api, ": got ", roots.size(),
             " outputs but ", root_grads.size(), " gradients");

  // Roots and their gradients.
  std::vector<Edge> root_edges;
  TensorList seeds;
  for (size_t k = 0; k < roots.size(); ++k) {
    const Tensor& r = roots[k];
    LOOM_CHECK(r.defined(), api, ": output ", k, " is an undefined tensor");
    Edge e = gradient_edge(r);
    LOOM_CHECK(e.valid(), api, ": output ", k, " (shape ", shape_str(r.sizes()),
               ") does not require grad and has no grad_fn");
    Tensor g = root_grads.empty() ? Tensor() : root_grads[k];
    if (!g.defined()) {
      LOOM_CHECK(r.numel() == 1, api, ": grad can be implicitly created only for scalar outputs, but output ",
                 k, " has shape ", shape_str(r.sizes()), "; pass a gradient of that shape");
      g = ones_like(r);
    } else {
      LOOM_CHECK(g.sizes() == r.sizes(), api, ": gradient ", k, " has shape ", shape_str(g.sizes()),
                 " but output ", k, " has shape ", shape_str(r.sizes()));
    }
    root_edges.push_back(e);
    seeds.push_back(g);
  }

  // Gradients to capture (autograd::grad).
  std::unordered_map<Node*, std::vector<std::pair<uint32_t, size_t>>> captures;
  for (size_t k = 0; k < inputs.size(); ++k) {
    Edge e = gradient_edge(inputs[k]);
    LOOM_CHECK(e.valid(), "autograd::grad: input ", k, " (shape ", shape_str(inputs[k].sizes()),
               ") does not require grad");
    captures[e.fn.get()].push_back({e.input_nr, k});
  }
  const bool capture_mode = !inputs.empty();

  // 1. Discover the graph (iterative post-order so `needed` can be computed).
  std::unordered_map<Node*, int> deps;
  std::unordered_map<Node*, bool> needed;  // capture mode: leads to a captured input
  {
    std::unordered_set<Node*> seen;
    std::vector<std::pair<Node*, size_t>> stack;
    for (const Edge& e : root_edges) {
      if (seen.insert(e.fn.get()).second) stack.push_back({e.fn.get(), 0});
    }
    while (!stack.empty()) {
      auto& [node, child] = stack.back();
      if (child < node->next.size()) {
        Node* c = node->next[child++].fn.get();
        if (c && seen.insert(c).second) stack.push_back({c, 0});
        continue;
      }
      bool need = captures.count(node) > 0;
      for (const Edge& e : node->next)
        if (e.fn) need = need || needed[e.fn.get()];
      needed[node] = need;
      stack.pop_back();
    }
    for (Node* n : seen) {
      if (capture_mode && !needed[n]) continue;
      for (const Edge& e : n->next) {
        if (!e.fn) continue;
        if (capture_mode && !needed[e.fn.get()]) continue;
        deps[e.fn.get()]++;
      }
    }
  }

  AutoGradMode mode(create_graph);
  std::unordered_map<Node*, TensorList> buffers;
  std::unordered_map<Node*, std::shared_ptr<Node>> keep_alive;
  auto deliver = [&](const Edge& e, Tensor g, const std::string& producer, size_t index) {
    Node* n = e.fn.get();
    TensorList& buf = buffers[n];
    if (buf.empty()) {
      buf.resize(n->outputs.size());
      keep_alive[n] = e.fn;
    }
    LOOM_ASSERT(e.input_nr < buf.size(), "edge into ", n->name(), " names output ", e.input_nr);
    g = validate_grad(g, n->outputs[e.input_nr], producer, index);
    Tensor& slot = buf[e.input_nr];
    slot = slot.defined() ? slot + g : g;
  };

  std::priority_queue<Node*, std::vector<Node*>, ByNewest> ready;
  for (size_t k = 0; k < root_edges.size(); ++k) {
    if (capture_mode && !needed[root_edges[k].fn.get()]) continue;
    deliver(root_edges[k], seeds[k], "the root gradient", k);
  }
  {
    std::unordered_set<Node*> queued;
    for (const Edge& e : root_edges) {
      Node* n = e.fn.get();
      if (capture_mode && !needed[n]) continue;
      if (deps[n] == 0 && queued.insert(n).second) ready.push(n);
    }
  }

  TensorList results(inputs.size());
  while (!ready.empty()) {
    Node* node = ready.top();
    ready.pop();
    std::shared_ptr<Node> hold = keep_alive.count(node) ? keep_alive[node] : node->shared_from_this();
    TensorList grads = std::move(buffers[node]);
    buffers.erase(node);
    keep_alive.erase(node);
    grads.resize(node->outputs.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) {
        const OutputMeta& m = node->outputs[i];
        grads[i] = zeros(m.sizes, TensorOptions().dtype(m.dtype).device(m.device));
      }
      if (i < node->pre_hooks.size()) apply_hooks(node->pre_hooks[i], grads[i]);
    }
    auto* acc = dynamic_cast<AccumulateGrad*>(node);
    if (acc && acc->leaf->autograd) apply_hooks(acc->leaf->autograd->leaf_hooks, grads[0]);

    if (auto it = captures.find(node); it != captures.end())
      for (auto [input_nr, k] : it->second) results[k] = grads[input_nr];

    bool run = !capture_mode || (!acc && [&] {
      for (const Edge& e : node->next)
        if (e.fn && needed[e.fn.get()]) return true;
      return false;
    }());
    TensorList outs;
    if (run) {
      outs = node->apply(std::move(grads));
      if (!keep_graph) node->release_saved();
    }
    for (size_t k = 0; k < node->next.size(); ++k) {
      const Edge& e = node->next[k];
      if (!e.fn) continue;
      if (capture_mode && !needed[e.fn.get()]) continue;
      if (k < outs.size() && outs[k].defined()) deliver(e, outs[k], node->name(), k);
      if (--deps[e.fn.get()] == 0) {
        if (!buffers.count(e.fn.get())) keep_alive[e.fn.get()] = e.fn;
        ready.push(e.fn.get());
      }
    }
  }

  if (capture_mode && !allow_unused) {
    for (size_t k = 0; k < inputs.size(); ++k)
      LOOM_CHECK(results[k].defined(), "autograd::grad: input ", k,
                 " appears not to have been used in the graph; pass allow_unused=true if this is intended");
  }
  return results;
}

// queue_callback's callbacks, and how deep in nested backward passes (a
// checkpoint's recomputation runs one inside another) this thread is.
thread_local std::vector<std::function<void()>> t_callbacks;
thread_local int t_depth = 0;

}  // namespace

void queue_callback(std::function<void()> fn) {
  LOOM_CHECK(t_depth > 0, "autograd::queue_callback: no backward pass is running on this thread");
  t_callbacks.push_back(std::move(fn));
}

TensorList run_backward(const TensorList& roots, const TensorList& root_grads, bool keep_graph,
                        bool create_graph, const TensorList& inputs, bool allow_unused) {
  // Backward formulas run in the dtypes their forward ops ran in (Note
  // [Autocast op policy]).
  autocast::Off no_autocast;
  ++t_depth;
  TensorList results;
  try {
    results = run_backward_pass(roots, root_grads, keep_graph, create_graph, inputs, allow_unused);
  } catch (...) {
    if (--t_depth == 0) t_callbacks.clear();
    throw;
  }
  if (--t_depth == 0) {
    // The outermost pass is done: run the callbacks (they may queue more).
    ++t_depth;
    try {
      for (size_t i = 0; i < t_callbacks.size(); ++i) {
        std::function<void()> fn = std::move(t_callbacks[i]);
        fn();
      }
    } catch (...) {
      --t_depth;
      t_callbacks.clear();
      throw;
    }
    --t_depth;
    t_callbacks.clear();
  }
  return results;
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, std::optional<bool> retain_graph,
                         bool create_graph, bool allow_unused) {
  LOOM_CHECK(!inputs.empty(), "autograd::grad: no inputs given");
  return run_backward(outputs, grad_outputs, retain_graph.value_or(create_graph), create_graph, inputs,
                      allow_unused);
}

void backward(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs, bool retain_graph,
              bool create_graph) {
  run_backward(outputs, grad_outputs, retain_graph || create_graph, create_graph, {}, false);
}

}  // namespace loom::autograd
