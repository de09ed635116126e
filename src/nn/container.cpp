#include "loom/nn/container.h"

#include <algorithm>

#include "loom/fusion.h"
#include "loom/nn/linear.h"

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

// Note [Sequential executes a fusion plan]
// Sequential does not decide what fuses: each child describes its forward
// (Module::fusion_step: a Linear, a pointwise activation, or opaque), and
// plan_fusion (src/ops/fusion.cpp, Note [Fusion decisions]) turns the
// descriptions into runs. A run of two is a Linear child and the ReLU or GELU
// child after it, executed as one LinearImpl::forward_fused call: bit for bit
// the two modules one after the other, with the same gradients.
// The descriptions are only true when the forward they describe is the one
// that would run, so only LinearImpl, ReLUImpl and GELUImpl describe
// themselves, and they declare both forward and fusion_step final: a
// subclass can neither run other code in forward nor change the
// description, and a module that wants its own forward derives from Module
// (and stays opaque). The plan is made on every call, since a child's
// settings (GELU's approximate) are public and may change between calls.
Tensor SequentialImpl::forward(const Tensor& input) { return forward_range(input, 0, modules_.size()); }

Tensor SequentialImpl::forward_range(const Tensor& input, size_t begin, size_t end) {
  LOOM_CHECK(begin <= end && end <= modules_.size(), "Sequential: forward_range [", begin, ", ", end,
             ") is not a range of its ", modules_.size(), " children");
  std::vector<FusionStep> steps;
  steps.reserve(end - begin);
  for (size_t k = begin; k < end; ++k) steps.push_back(modules_[k]->fusion_step());
  Tensor x = input;
  for (const FusionRun& run : plan_fusion(steps)) {
    const size_t i = begin + run.first;
    try {
      if (run.count == 2) {
        // Runs of two start with a child described as a Linear: a LinearImpl,
        // unless a class outside loom claims the description.
        auto* linear = dynamic_cast<LinearImpl*>(modules_[i].get());
        LOOM_CHECK(linear != nullptr, "a ", modules_[i]->type_name(),
                   " describes itself as a Linear (fusion_step), which only nn::Linear may");
        x = linear->forward_fused(x, run.activation);
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
