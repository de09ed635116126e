// The recorder: a capture::Recorder that builds a GraphImpl while the step
// runs eagerly (Note [Capture and replay] in src/jit/compile.cpp).
#pragma once

#include <map>
#include <tuple>
#include <unordered_map>

#include "jit/graph.h"

namespace loom::jit::detail {

class Recorder final : public capture::Recorder {
 public:
  // Registers the arguments' storages as the step's inputs.
  explicit Recorder(const std::vector<Tensor>& args);

  void on_alloc(const std::shared_ptr<Storage>& storage) override;
  void on_kernel(const KernelCall& call) override;
  void on_host_access(const TensorImpl& impl, const char* what) override;
  void on_rng(const Generator& generator, uint64_t n, uint64_t seed, uint64_t offset) override;
  void bind_hyperparameters(std::function<capture::Hyperparameters()> source) override;
  void on_host_check(const std::vector<Tensor>& values,
                     std::function<void(const std::vector<Tensor>&)> check) override;
  void on_backward() override;
  [[noreturn]] void refuse(const char* what, const char* why) override;

  // Classifies what survived the step (outputs, new state) and returns the
  // graph, unplanned. Throws for what a replay cannot repeat.
  std::shared_ptr<GraphImpl> finish(const std::vector<Tensor>& outputs);

 private:
  struct Known {
    std::weak_ptr<Storage> storage;
    int buffer = -1;
  };
  int buffer_of(const TensorImpl& impl);
  int value_of(const TensorImpl& impl);
  int new_buffer(BufferKind kind, const std::shared_ptr<Storage>& s, int alloc_node);

  std::shared_ptr<GraphImpl> g_;
  std::unordered_map<const Storage*, Known> known_;
  std::map<std::tuple<int, int, Shape, Shape, int64_t>, int> values_;
  std::function<capture::Hyperparameters()> pending_hyper_;
  bool in_backward_ = false;
};

}  // namespace loom::jit::detail
