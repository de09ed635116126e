// The hooks a graph capture listens on (loom::compile, src/jit).
//
// Note [Capture hooks]
// A capture records a step where primitives meet kernels: every KernelCall
// that run_kernel executes, every Storage that allocate_storage creates,
// every block of Philox counters a random op reserves, and every time host
// code touches a tensor's bytes. Each of those places asks capture::active()
// (one thread-local load, null when nothing records) and, when a recorder is
// there, tells it. The recorder lives in src/jit; core only declares the
// interface, so core, backend and ops depend on nothing above them.
//
// The recording is per thread: kernels run by other threads (a DataLoader's
// workers) are not part of the step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "loom/generator.h"

namespace loom {

struct KernelCall;
struct Storage;
struct TensorImpl;
class Tensor;

namespace capture {

// An optimizer's hyperparameters as its fused kernels take them.
struct Hyperparameters {
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0, momentum = 0, dampening = 0;
};

class Recorder {
 public:
  virtual ~Recorder() = default;
  // A storage was created on the recording thread.
  virtual void on_alloc(const std::shared_ptr<Storage>& storage) = 0;
  // `call` is about to run (inputs still hold the values it will read).
  virtual void on_kernel(const KernelCall& call) = 0;
  // Host code reads or writes `impl`'s bytes (`what`: item, data_ptr,
  // print). Throws when the value was computed inside the step.
  virtual void on_host_access(const TensorImpl& impl, const char* what) = 0;
  // A random op reserved `n` counters from `generator` and got (seed, offset).
  virtual void on_rng(const Generator& generator, uint64_t n, uint64_t seed, uint64_t offset) = 0;
  // The next recorded fused optimizer call (FusedAdam, FusedSgd) takes its
  // hyperparameters from `source`, read again before each replay: a
  // scheduler changes the learning rate (and momentum) between steps.
  virtual void bind_hyperparameters(std::function<Hyperparameters()> source) = 0;
  // A check on values of the step that host code makes (a bounds check):
  // it runs now, and again at each replay after the kernels before it.
  virtual void on_host_check(const std::vector<Tensor>& values,
                             std::function<void(const std::vector<Tensor>&)> check) = 0;
  // A backward pass starts (the autograd engine): the nodes recorded from
  // here on are the backward's, which the recompute pass needs to know.
  virtual void on_backward() = 0;
  // Refuses what a replay cannot repeat (names `what` and says why).
  [[noreturn]] virtual void refuse(const char* what, const char* why) = 0;
};

// The recorder of this thread, or null.
Recorder* active();
// Installs `r` on this thread for the guard's lifetime (restores the previous one).
class ActiveGuard {
 public:
  explicit ActiveGuard(Recorder* r);
  ~ActiveGuard();
  ActiveGuard(const ActiveGuard&) = delete;
  ActiveGuard& operator=(const ActiveGuard&) = delete;

 private:
  Recorder* prev_;
};
// Suspends recording on this thread (the guard's lifetime): host checks run
// their own kernels and reads, which are not part of the step's kernels.
class PauseGuard {
 public:
  PauseGuard();
  ~PauseGuard();
  PauseGuard(const PauseGuard&) = delete;
  PauseGuard& operator=(const PauseGuard&) = delete;

 private:
  Recorder* prev_;
};

// Runs `check` on `values` now; under a capture, records it to run again at
// each replay. The check may read values on the host (item()).
void host_check(const std::vector<Tensor>& values, std::function<void(const std::vector<Tensor>&)> check);

}  // namespace capture
}  // namespace loom
