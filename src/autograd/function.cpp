// User-written backward functions (loom/autograd_function.h) and the graph's
// public view (node names, next functions).
#include "loom/autograd_function.h"

#include "autograd/node.h"
#include "core/tensor_impl.h"

namespace loom::autograd {

std::vector<Tensor> custom_function(const std::string& name, const std::vector<Tensor>& inputs,
                                    const std::vector<Tensor>& outputs, const std::vector<Tensor>& to_save,
                                    CustomBackward backward, const std::vector<size_t>& non_differentiable) {
  for (size_t i = 0; i < outputs.size(); ++i)
    LOOM_CHECK(outputs[i].defined(), name, ": output ", i, " is not a tensor");
  for (size_t k : non_differentiable)
    LOOM_CHECK(k < outputs.size(), name, ": mark_non_differentiable names output ", k, " of ", outputs.size());
  // Aliases, so history never lands on a tensor the caller also holds (an
  // output may be an input returned as it is).
  std::vector<Tensor> outs;
  outs.reserve(outputs.size());
  for (const Tensor& o : outputs) outs.push_back(o.detach());

  std::vector<Shape> input_sizes;
  for (const Tensor& t : inputs) input_sizes.push_back(t.defined() ? t.sizes() : Shape{});
  auto node = make_node(name.c_str(), inputs,
                        [name, input_sizes, fn = std::move(backward), n_saved = to_save.size()](
                            FunctionNode& ctx, const TensorList& grads) -> TensorList {
                          std::vector<Tensor> saved;
                          saved.reserve(n_saved);
                          for (size_t i = 0; i < n_saved; ++i) saved.push_back(ctx.saved(i));
                          std::vector<Tensor> g = fn(saved, grads);
                          LOOM_CHECK(g.size() == input_sizes.size(), name, ": backward returned ", g.size(),
                                     " gradients; expected ", input_sizes.size(), " (one per input)");
                          for (size_t k = 0; k < g.size(); ++k) {
                            if (!g[k].defined()) continue;
                            if (!ctx.needs_input_grad(k)) {
                              g[k] = Tensor();
                              continue;
                            }
                            LOOM_CHECK(g[k].sizes() == input_sizes[k], name,
                                       ": backward returned an invalid gradient at index ", k, ": got ",
                                       shape_str(g[k].sizes()), " but expected shape ", shape_str(input_sizes[k]));
                          }
                          return g;
                        });
  if (!node) return outs;
  std::vector<bool> skip(outs.size(), false);
  for (size_t k : non_differentiable) skip[k] = true;
  std::vector<Tensor*> ptrs;
  for (auto& o : outs) ptrs.push_back(&o);
  // A non-differentiable output keeps no history: an alias of it that is
  // dropped afterwards takes its slot, so the node still records the
  // output's metadata (for the zero gradient the engine makes in its place).
  std::vector<Tensor> unrecorded(outs.size());
  for (size_t i = 0; i < outs.size(); ++i)
    if (skip[i]) {
      unrecorded[i] = outs[i].detach();
      ptrs[i] = &unrecorded[i];
    }
  set_history(ptrs, node);
  for (const Tensor& s : to_save) {
    size_t out_index = outputs.size();
    for (size_t i = 0; i < outputs.size(); ++i)
      if (s.defined() && s.is_same(outputs[i])) out_index = i;
    if (out_index < outputs.size() && !skip[out_index])
      node->save_output(outs[out_index]);
    else
      node->save(out_index < outputs.size() ? outs[out_index] : s);
  }
  return outs;
}

std::string node_name(const Node& node) { return node.name(); }

std::vector<std::pair<std::shared_ptr<Node>, uint32_t>> next_functions(const Node& node) {
  std::vector<std::pair<std::shared_ptr<Node>, uint32_t>> out;
  out.reserve(node.next.size());
  for (const Edge& e : node.next) out.emplace_back(e.fn, e.input_nr);
  return out;
}

}  // namespace loom::autograd
