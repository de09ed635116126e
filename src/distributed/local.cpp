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
    return done(check_all_reduce(*this, t, op));
  }
  WorkPtr broadcast(Tensor& t, int root) override {
    return done(check_broadcast(*this, t, root));
  }
  WorkPtr all_gather(std::vector<Tensor>& outputs, const Tensor& input) override {
    std::string desc = check_all_gather(*this, outputs, input);
    copy("all_gather", outputs[0], input);
    return done(std::move(desc));
  }
  WorkPtr reduce_scatter(Tensor& output, const std::vector<Tensor>& inputs, ReduceOp op) override {
    std::string desc = check_reduce_scatter(*this, output, inputs, op);
    copy("reduce_scatter", output, inputs[0]);
    return done(std::move(desc));
  }
  WorkPtr gather(std::vector<Tensor>& outputs, const Tensor& input, int root) override {
    std::string desc = check_gather(*this, outputs, input, root);
    copy("gather", outputs[0], input);
    return done(std::move(desc));
  }
  WorkPtr scatter(Tensor& output, const std::vector<Tensor>& inputs, int root) override {
    std::string desc = check_scatter(*this, output, inputs, root);
    copy("scatter", output, inputs[0]);
    return done(std::move(desc));
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
  WorkPtr done(std::string description) {
    auto w = std::make_shared<Work>(std::move(description), options().timeout);
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
