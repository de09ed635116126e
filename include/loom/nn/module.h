// nn::Module, the base of every layer and model, and ModuleHolder, the
// libtorch-style handle (`nn::Linear fc(784, 512); fc(x); fc->weight`).
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "loom/fusion.h"
#include "loom/state_dict.h"
#include "loom/tensor.h"

namespace loom::nn {

// Named tensors in registration order ("fc1.weight", "bn.running_mean", ...);
// loom::StateDict (loom/state_dict.h), spelled nn::StateDict as before.
using StateDict = loom::StateDict;

class Module : public std::enable_shared_from_this<Module> {
 public:
  // `type_name` is what printing shows ("Linear", "Sequential", ...).
  explicit Module(std::string type_name = "Module");
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& type_name() const { return type_name_; }

  // The single-tensor forward that Sequential chains. Modules with other
  // signatures add their own forward overloads.
  virtual Tensor forward(const Tensor& input);

  // What this module's forward is, for the fusion rules (loom/fusion.h):
  // opaque unless the class says otherwise. Only classes whose forward is
  // final may describe themselves, so a subclass cannot run other code than
  // the description promises (Note [Sequential executes a fusion plan] in
  // src/nn/container.cpp).
  virtual FusionStep fusion_step() const { return FusionStep::opaque(); }

  // Registration. Names must be unique among a module's parameters, buffers
  // and children, and must not contain '.'.
  Tensor& register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  Tensor& register_buffer(const std::string& name, Tensor t);
  std::shared_ptr<Module> register_module(const std::string& name, std::shared_ptr<Module> m);
  template <typename M, typename = std::enable_if_t<std::is_base_of_v<Module, M>>>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    register_module(name, std::static_pointer_cast<Module>(m));
    return m;
  }
  template <typename Holder, typename = decltype(std::declval<Holder>().ptr())>
  Holder register_module(const std::string& name, Holder h) {
    register_module(name, std::static_pointer_cast<Module>(h.ptr()));
    return h;
  }
  // Replaces an already registered child (e.g. to swap a head).
  void replace_module(const std::string& name, std::shared_ptr<Module> m);
  // Unregisters a parameter and returns it; the name is free again (a
  // quantized Linear registers its weight again as a buffer of codes).
  Tensor remove_parameter(const std::string& name);

  // Access, recursing into children in registration order.
  std::vector<Tensor> parameters(bool recurse = true) const;
  StateDict named_parameters(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  StateDict named_buffers(bool recurse = true) const;
  std::vector<std::shared_ptr<Module>> children() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  // This module and all its descendants, depth first.
  std::vector<std::shared_ptr<Module>> modules();
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules(const std::string& prefix = "");

  // Training mode (Dropout, BatchNorm): set recursively.
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Clears every parameter's gradient (set_to_none) or zeroes it in place.
  void zero_grad(bool set_to_none = true);

  // Moves/casts every parameter and buffer in place: the Tensor handles
  // (held by optimizers) stay valid. to(dtype) casts floating tensors only.
  void to(Device device);
  void to(DType dtype);

  // Module by module (own parameters, own buffers, then each child's under
  // its prefix) with dotted names, as PyTorch orders them.
  StateDict state_dict() const;
  // Copies values in (no_grad). strict: the names must match exactly; in any
  // mode a shape mismatch is an error naming the key and both shapes.
  void load_state_dict(const StateDict& sd, bool strict = true);

  // One line of constructor arguments for printing: "in_features=784, ...".
  virtual std::string extra_repr() const { return ""; }
  // PyTorch's module tree printout.
  void pretty_print(std::ostream& os, int indent = 0) const;

  int64_t num_parameters() const;

 protected:
  bool training_ = true;

 private:
  std::string type_name_;
  StateDict params_;
  StateDict buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  void check_new_name(const std::string& name) const;
};

std::ostream& operator<<(std::ostream& os, const Module& m);

// A shared handle to a module implementation, as libtorch's ModuleHolder:
// `nn::Linear fc(784, 512)` makes a LinearImpl; `fc->weight`, `fc(x)`.
template <typename Impl>
class ModuleHolder {
 public:
  using ImplType = Impl;
  // Default-constructs the implementation (when it can be).
  ModuleHolder() : impl_(make_default()) {}
  ModuleHolder(std::nullptr_t) {}  // NOLINT: an empty holder
  ModuleHolder(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}  // NOLINT
  template <typename Head, typename... Tail,
            typename = std::enable_if_t<!std::is_same_v<std::decay_t<Head>, ModuleHolder> &&
                                        !std::is_same_v<std::decay_t<Head>, std::shared_ptr<Impl>> &&
                                        !std::is_same_v<std::decay_t<Head>, std::nullptr_t>>>
  explicit ModuleHolder(Head&& head, Tail&&... tail)
      : impl_(std::make_shared<Impl>(std::forward<Head>(head), std::forward<Tail>(tail)...)) {}

  Impl* operator->() const { return get(); }
  Impl& operator*() const { return *get(); }
  Impl* get() const {
    LOOM_CHECK(impl_ != nullptr, "nn: accessing an empty module holder");
    return impl_.get();
  }
  const std::shared_ptr<Impl>& ptr() const { return impl_; }
  bool is_empty() const { return impl_ == nullptr; }
  // Forwards indexing to containers (seq[0]).
  template <typename Index>
  decltype(auto) operator[](Index&& i) const {
    return (*get())[std::forward<Index>(i)];
  }
  template <typename... Args>
  decltype(auto) operator()(Args&&... args) const {
    return get()->forward(std::forward<Args>(args)...);
  }

 private:
  static std::shared_ptr<Impl> make_default() {
    if constexpr (std::is_default_constructible_v<Impl>) return std::make_shared<Impl>();
    else return nullptr;
  }
  std::shared_ptr<Impl> impl_;
};

template <typename Impl>
std::ostream& operator<<(std::ostream& os, const ModuleHolder<Impl>& h) {
  return os << *h;
}

}  // namespace loom::nn

// Declares `Name` as the holder of `NameImpl` (libtorch's TORCH_MODULE).
#define LOOM_MODULE(Name)                                      \
  class Name : public ::loom::nn::ModuleHolder<Name##Impl> {   \
   public:                                                     \
    using ::loom::nn::ModuleHolder<Name##Impl>::ModuleHolder;  \
  }
