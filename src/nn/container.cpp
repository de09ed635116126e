#include "loom/nn/container.h"

#include <algorithm>
#include <optional>
#include <typeinfo>

#include "loom/nn/activation.h"
#include "loom/nn/linear.h"
#include "loom/ops.h"

namespace loom::nn {

namespace detail {
void throw_wrong_module_type(const char* container, const std::string& key, const Module& m) {
  LOOM_ERROR(container, ": the module at ", key, " is a ", m.type_name(), ", not the requested type");
}
}  // namespace detail

namespace {
// A position in [-size, size), negative counting from the end.
size_t checked_index(const char* container, int64_t index, size_t size) {
  const int64_t n = static_cast<int64_t>(size);
  LOOM_CHECK(index >= -n && index < n, container, ": index ", index, " is out of range for a ", container,
             " of size ", n);
  return static_cast<size_t>(index < 0 ? index + n : index);
}
}  // namespace

// ---- Sequential ----

SequentialImpl::SequentialImpl(const std::vector<NamedModule>& named) : Module("Sequential") {
  for (const auto& nm : named) add(nm.name, nm.module);
}

void SequentialImpl::add(const std::string& name, std::shared_ptr<Module> m) {
  register_module(name, m);
  modules_.push_back(std::move(m));
}

std::shared_ptr<Module> SequentialImpl::at(int64_t index) const {
  return modules_[checked_index("Sequential", index, modules_.size())];
}

namespace {
// Note [Sequential fuses Linear + activation]
// A Linear child directly followed by a ReLU or GELU child runs as one fused
// op (loom::linear with the activation): the bias and activation are applied
// to each block of the product while it is in cache instead of in two more
// passes over the output. The fused op gives the bits of the two modules run
// one after the other, and its backward the same gradients. Only the exact
// classes fuse (typeid, not dynamic_cast): a subclass may override forward.
std::optional<LinearActivation> fused_activation(const Module& first, const Module& second) {
  if (typeid(first) != typeid(LinearImpl)) return std::nullopt;
  if (typeid(second) == typeid(ReLUImpl)) return LinearActivation::Relu;
  if (typeid(second) == typeid(GELUImpl))
    return static_cast<const GELUImpl&>(second).approximate == "tanh" ? LinearActivation::GeluTanh
                                                                       : LinearActivation::Gelu;
  return std::nullopt;
}
}  // namespace

Tensor SequentialImpl::forward(const Tensor& input) {
  Tensor x = input;
  for (size_t i = 0; i < modules_.size(); ++i) {
    try {
      const std::optional<LinearActivation> act =
          i + 1 < modules_.size() ? fused_activation(*modules_[i], *modules_[i + 1]) : std::nullopt;
      if (act) {
        x = static_cast<LinearImpl&>(*modules_[i]).forward_fused(x, *act);
        ++i;  // the activation child ran inside the fused op
      } else {
        x = modules_[i]->forward(x);
      }
    } catch (const Error& e) {
      // Say which child failed: "Sequential: child (2): Linear: expected input ...".
      LOOM_ERROR("Sequential: child (", named_children()[i].first, "): ", e.what());
    }
  }
  return x;
}

// ---- ModuleList ----

void ModuleListImpl::add(std::shared_ptr<Module> m) {
  register_module(std::to_string(modules_.size()), m);
  modules_.push_back(std::move(m));
}

void ModuleListImpl::extend(const ModuleListImpl& other) {
  // Copy first: `list->extend(*list)` must not iterate while it appends.
  const std::vector<std::shared_ptr<Module>> items = other.modules_;
  for (const auto& m : items) add(m);
}

std::shared_ptr<Module> ModuleListImpl::at(int64_t index) const {
  return modules_[checked_index("ModuleList", index, modules_.size())];
}

// ---- ModuleDict ----

ModuleDictImpl::ModuleDictImpl(const std::vector<NamedModule>& items) : Module("ModuleDict") {
  for (const auto& nm : items) put(nm.name, nm.module);
}

void ModuleDictImpl::put(const std::string& key, std::shared_ptr<Module> m) {
  auto it = std::find_if(items_.begin(), items_.end(), [&](const auto& p) { return p.first == key; });
  if (it != items_.end()) {
    replace_module(key, m);
    it->second = std::move(m);
    return;
  }
  register_module(key, m);
  items_.emplace_back(key, std::move(m));
}

bool ModuleDictImpl::contains(const std::string& key) const {
  return std::any_of(items_.begin(), items_.end(), [&](const auto& p) { return p.first == key; });
}

std::shared_ptr<Module> ModuleDictImpl::at(const std::string& key) const {
  for (const auto& [k, m] : items_)
    if (k == key) return m;
  std::string known;
  for (const auto& [k, m] : items_) known += (known.empty() ? "\"" : ", \"") + k + "\"";
  LOOM_ERROR("ModuleDict: no module named \"", key, "\" (keys: ", known.empty() ? "none" : known, ")");
}

std::vector<std::string> ModuleDictImpl::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, m] : items_) out.push_back(k);
  return out;
}

std::vector<std::shared_ptr<Module>> ModuleDictImpl::values() const {
  std::vector<std::shared_ptr<Module>> out;
  for (const auto& [k, m] : items_) out.push_back(m);
  return out;
}

}  // namespace loom::nn
