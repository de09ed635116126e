// The "local" backend: a group of one process. Every collective is what it
// is for N = 1 (a copy or nothing), after the same argument checks as MPI's,
// so a program written for N ranks runs, and fails, the same way alone.
#include "distributed/backends.h"
#include "loom/autograd.h"
#include "loom/error.h"

namespace loom::distributed::detail {

namespace {

class LocalGroup final : public ProcessGroup {
 public:
  explicit LocalGroup(const Options& o) : ProcessGroup("local", 0, 1, o) {}

  WorkPtr all_reduce(Tensor& t, ReduceOp op) override {
    check_tensor("all_reduce", t);
    check_reduce("all_reduce", op, t);
    return done("all_reduce");
  }
  WorkPtr broadcast(Tensor& t, int root) override {
    check_tensor("broadcast", t);
    check_rank("broadcast", "root", root, 1);
    return done("broadcast");
  }
  WorkPtr all_gather(std::vector<Tensor>& outputs, const Tensor& input) override {
    check_tensor("all_gather", input, "input");
    check_list("all_gather", "outputs", outputs, 1);
    copy("all_gather", outputs[0], input);
    return done("all_gather");
  }
  WorkPtr reduce_scatter(Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    check_tensor("reduce_scatter", output, "output");
    check_list("reduce_scatter", "inputs", inputs, 1);
    check_reduce("reduce_scatter", op, output);
    copy("reduce_scatter", output, inputs[0]);
    return done("reduce_scatter");
  }
  WorkPtr gather(std::vector<Tensor>& outputs, const Tensor& input, int root) override {
    check_tensor("gather", input, "input");
    check_rank("gather", "root", root, 1);
    check_list("gather", "outputs", outputs, 1);
    copy("gather", outputs[0], input);
    return done("gather");
  }
  WorkPtr scatter(Tensor& output, const std::vector<Tensor>& inputs, int root) override {
    check_tensor("scatter", output, "output");
    check_rank("scatter", "root", root, 1);
    check_list("scatter", "inputs", inputs, 1);
    copy("scatter", output, inputs[0]);
    return done("scatter");
  }
  WorkPtr send(const Tensor& t, int dst, int) override {
    check_tensor("send", t);
    LOOM_ERROR("distributed::send: rank ", dst, ": a \"local\" group has one rank and no peer to send to");
  }
  WorkPtr recv(Tensor& t, int src, int) override {
    check_tensor("recv", t);
    LOOM_ERROR("distributed::recv: rank ", src, ": a \"local\" group has one rank and no peer to receive from");
  }
  WorkPtr barrier() override { return done("barrier"); }

 private:
  WorkPtr done(const char* op) {
    auto w = std::make_shared<Work>(op, options().timeout);
    w->finish();
    return w;
  }
  static void copy(const char* op, Tensor& dst, const Tensor& src) {
    LOOM_CHECK(dst.dtype() == src.dtype() && dst.sizes() == src.sizes(), "distributed::", op, ": the output ",
               geometry(dst), " does not match the input ", geometry(src));
    if (dst.is_same(src)) return;
    NoGradGuard no_grad;
    dst.copy_(src);
  }
};

}  // namespace

std::shared_ptr<ProcessGroup> make_local_group(const Options& options) {
  return std::make_shared<LocalGroup>(options);
}

}  // namespace loom::distributed::detail
