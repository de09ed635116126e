// Containers: Sequential (runs its children in order), ModuleList and
// ModuleDict (hold children so their parameters are registered).
//
//   nn::Sequential model(nn::Linear(784, 512), nn::ReLU(), nn::Linear(512, 10));
//   Tensor logits = model(x);          // children are named "0", "1", "2"
//   auto fc = model->ptr<nn::LinearImpl>(0);
#pragma once

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "loom/nn/module.h"

namespace loom::nn {

namespace detail {
// A module handle: a holder (nn::Linear) or a std::shared_ptr to a Module subclass.
template <typename T>
concept ModulePointer = std::is_convertible_v<std::decay_t<T>, std::shared_ptr<Module>>;
template <typename T>
concept ModuleHolderLike = requires(const std::decay_t<T>& h) {
  { h.ptr() } -> std::convertible_to<std::shared_ptr<Module>>;
};
template <typename T>
concept AnyModule = ModulePointer<T> || ModuleHolderLike<T>;

template <AnyModule T>
std::shared_ptr<Module> module_ptr(T&& m, const char* container) {
  std::shared_ptr<Module> p;
  if constexpr (ModuleHolderLike<T>) p = m.ptr();
  else p = std::forward<T>(m);
  LOOM_CHECK(p != nullptr, container, ": cannot add an empty module holder");
  return p;
}

// The checked downcast behind the containers' typed accessors.
[[noreturn]] void throw_wrong_module_type(const char* container, const std::string& key, const Module& m);
template <typename T>
std::shared_ptr<T> module_as(const std::shared_ptr<Module>& m, const char* container, const std::string& key) {
  auto t = std::dynamic_pointer_cast<T>(m);
  if (!t) throw_wrong_module_type(container, key, *m);
  return t;
}
}  // namespace detail

// A name and a module, for building a Sequential or ModuleDict from a braced
// list: {{"fc", nn::Linear(4, 2)}, {"act", nn::ReLU()}}.
struct NamedModule {
  template <detail::AnyModule M>
  NamedModule(std::string n, M&& m)  // NOLINT: implicit, for braced lists
      : name(std::move(n)), module(detail::module_ptr(std::forward<M>(m), "NamedModule")) {}
  std::string name;
  std::shared_ptr<Module> module;
};

// Runs its children in order, each one's output feeding the next.
class SequentialImpl : public Module {
 public:
  SequentialImpl() : Module("Sequential") {}
  template <detail::AnyModule First, detail::AnyModule... Rest>
  explicit SequentialImpl(First&& first, Rest&&... rest) : Module("Sequential") {
    push_back(std::forward<First>(first));
    (push_back(std::forward<Rest>(rest)), ...);
  }
  // Named children, as PyTorch's Sequential(OrderedDict(...)).
  explicit SequentialImpl(const std::vector<NamedModule>& named);

  Tensor forward(const Tensor& input) override;
  // Runs children [begin, end) only, fused as forward fuses them: forward is
  // forward_range(input, 0, size()) (nn::checkpoint_sequential's segments).
  Tensor forward_range(const Tensor& input, size_t begin, size_t end);

  // Appends a child named by its position ("3").
  template <detail::AnyModule M>
  void push_back(M&& m) {
    add(std::to_string(modules_.size()), detail::module_ptr(std::forward<M>(m), "Sequential"));
  }
  template <detail::AnyModule M>
  void push_back(const std::string& name, M&& m) {
    add(name, detail::module_ptr(std::forward<M>(m), "Sequential"));
  }

  size_t size() const { return modules_.size(); }
  bool is_empty() const { return modules_.empty(); }
  // The child at `index` (negative counts from the end).
  std::shared_ptr<Module> operator[](int64_t index) const { return at(index); }
  std::shared_ptr<Module> at(int64_t index) const;
  // The child at `index` as its concrete type; an Error if it is another type.
  template <typename T>
  std::shared_ptr<T> ptr(int64_t index) const {
    return detail::module_as<T>(at(index), "Sequential", std::to_string(index));
  }
  template <typename T>
  T& at(int64_t index) const {
    return *ptr<T>(index);
  }
  auto begin() const { return modules_.begin(); }
  auto end() const { return modules_.end(); }

 private:
  void add(const std::string& name, std::shared_ptr<Module> m);
  std::vector<std::shared_ptr<Module>> modules_;
};
// The holder also takes a braced list of named children.
class Sequential : public ModuleHolder<SequentialImpl> {
 public:
  using ModuleHolder<SequentialImpl>::ModuleHolder;
  Sequential() = default;
  Sequential(std::initializer_list<NamedModule> named)
      : ModuleHolder(std::make_shared<SequentialImpl>(std::vector<NamedModule>(named))) {}
};

// Holds children by position ("0", "1", ...); it has no forward of its own.
class ModuleListImpl : public Module {
 public:
  ModuleListImpl() : Module("ModuleList") {}
  template <detail::AnyModule First, detail::AnyModule... Rest>
  explicit ModuleListImpl(First&& first, Rest&&... rest) : Module("ModuleList") {
    push_back(std::forward<First>(first));
    (push_back(std::forward<Rest>(rest)), ...);
  }

  template <detail::AnyModule M>
  void push_back(M&& m) {
    add(detail::module_ptr(std::forward<M>(m), "ModuleList"));
  }
  // Appends every child of `other` (the same module objects, not copies).
  void extend(const ModuleListImpl& other);

  size_t size() const { return modules_.size(); }
  bool is_empty() const { return modules_.empty(); }
  std::shared_ptr<Module> operator[](int64_t index) const { return at(index); }
  std::shared_ptr<Module> at(int64_t index) const;
  template <typename T>
  std::shared_ptr<T> ptr(int64_t index) const {
    return detail::module_as<T>(at(index), "ModuleList", std::to_string(index));
  }
  template <typename T>
  T& at(int64_t index) const {
    return *ptr<T>(index);
  }
  auto begin() const { return modules_.begin(); }
  auto end() const { return modules_.end(); }

 private:
  void add(std::shared_ptr<Module> m);
  std::vector<std::shared_ptr<Module>> modules_;
};
LOOM_MODULE(ModuleList);

// Holds children by name, in insertion order; it has no forward of its own.
class ModuleDictImpl : public Module {
 public:
  ModuleDictImpl() : Module("ModuleDict") {}
  explicit ModuleDictImpl(const std::vector<NamedModule>& items);

  // Adds `m` under `key`, or replaces the module already there (keeping its
  // position), as PyTorch's dict[key] = m.
  template <detail::AnyModule M>
  void insert(const std::string& key, M&& m) {
    put(key, detail::module_ptr(std::forward<M>(m), "ModuleDict"));
  }

  size_t size() const { return items_.size(); }
  bool is_empty() const { return items_.empty(); }
  bool contains(const std::string& key) const;
  std::shared_ptr<Module> operator[](const std::string& key) const { return at(key); }
  std::shared_ptr<Module> at(const std::string& key) const;
  template <typename T>
  std::shared_ptr<T> ptr(const std::string& key) const {
    return detail::module_as<T>(at(key), "ModuleDict", "\"" + key + "\"");
  }
  template <typename T>
  T& at(const std::string& key) const {
    return *ptr<T>(key);
  }
  std::vector<std::string> keys() const;
  std::vector<std::shared_ptr<Module>> values() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& items() const { return items_; }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  void put(const std::string& key, std::shared_ptr<Module> m);
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> items_;
};
class ModuleDict : public ModuleHolder<ModuleDictImpl> {
 public:
  using ModuleHolder<ModuleDictImpl>::ModuleHolder;
  ModuleDict() = default;
  ModuleDict(std::initializer_list<NamedModule> items)
      : ModuleHolder(std::make_shared<ModuleDictImpl>(std::vector<NamedModule>(items))) {}
};

}  // namespace loom::nn
