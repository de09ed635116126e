#include "loom/nn/module.h"

#include <algorithm>

#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::nn {

Module::Module(std::string type_name) : type_name_(std::move(type_name)) {}

Tensor Module::forward(const Tensor&) {
  LOOM_ERROR(type_name_, ": this module has no single-tensor forward(); call its own forward overload");
}

void Module::check_new_name(const std::string& name) const {
  LOOM_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name_, ": invalid name \"", name,
             "\" (names must be non-empty and contain no '.')");
  auto taken = [&](const auto& v) {
    return std::any_of(v.begin(), v.end(), [&](const auto& p) { return p.first == name; });
  };
  LOOM_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_), type_name_, ": the name \"", name,
             "\" is already registered");
}

Tensor& Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_new_name(name);
  LOOM_CHECK(t.defined(), type_name_, ": parameter \"", name, "\" is an undefined tensor");
  if (requires_grad) t.requires_grad_(true);
  params_.emplace_back(name, t);
  return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name);
  buffers_.emplace_back(name, t);
  return buffers_.back().second;
}

std::shared_ptr<Module> Module::register_module(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name);
  LOOM_CHECK(m != nullptr, type_name_, ": submodule \"", name, "\" is null");
  children_.emplace_back(name, m);
  return m;
}

void Module::replace_module(const std::string& name, std::shared_ptr<Module> m) {
  for (auto& [n, c] : children_)
    if (n == name) {
      c = std::move(m);
      return;
    }
  LOOM_ERROR(type_name_, ": no submodule named \"", name, "\" to replace");
}

Tensor Module::remove_parameter(const std::string& name) {
  for (auto it = params_.begin(); it != params_.end(); ++it)
    if (it->first == name) {
      Tensor t = it->second;
      params_.erase(it);
      return t;
    }
  LOOM_ERROR(type_name_, ": no parameter named \"", name, "\" to remove");
}

StateDict Module::named_parameters(bool recurse) const {
  StateDict out;
  for (const auto& p : params_) out.push_back(p);
  if (recurse)
    for (const auto& [cname, c] : children_)
      for (auto& [n, t] : c->named_parameters(true)) out.emplace_back(cname + "." + n, t);
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

StateDict Module::named_buffers(bool recurse) const {
  StateDict out;
  for (const auto& b : buffers_) out.push_back(b);
  if (recurse)
    for (const auto& [cname, c] : children_)
      for (auto& [n, t] : c->named_buffers(true)) out.emplace_back(cname + "." + n, t);
  return out;
}

std::vector<Tensor> Module::buffers(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_buffers(recurse)) out.push_back(t);
  return out;
}

std::vector<std::shared_ptr<Module>> Module::children() const {
  std::vector<std::shared_ptr<Module>> out;
  for (const auto& [n, c] : children_) out.push_back(c);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const { return children_; }

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules(const std::string& prefix) {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out{{prefix, shared_from_this()}};
  for (const auto& [n, c] : children_)
    for (auto& p : c->named_modules(prefix.empty() ? n : prefix + "." + n)) out.push_back(std::move(p));
  return out;
}

std::vector<std::shared_ptr<Module>> Module::modules() {
  std::vector<std::shared_ptr<Module>> out;
  for (auto& [n, m] : named_modules()) out.push_back(m);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::zero_grad(bool set_to_none) {
  for (Tensor& p : parameters()) {
    if (!p.grad().defined()) continue;
    if (set_to_none) {
      p.set_grad(Tensor());
    } else {
      NoGradGuard ng;
      p.mutable_grad().zero_();
    }
  }
}

void Module::to(Device device) {
  NoGradGuard ng;
  for (Tensor t : parameters()) t.set_data(t.to(device));
  for (Tensor t : buffers()) t.set_data(t.to(device));
}

void Module::to(DType dtype) {
  LOOM_CHECK(is_floating_point(dtype), type_name_, ".to: expected a floating point dtype, got ", dtype_name(dtype));
  NoGradGuard ng;
  for (Tensor t : parameters())
    if (t.is_floating_point()) t.set_data(t.to(dtype));
  for (Tensor t : buffers())
    if (t.is_floating_point()) t.set_data(t.to(dtype));
}

StateDict Module::state_dict() const {
  // Module by module, as PyTorch: this module's parameters, then its buffers,
  // then each child's entries under its prefix.
  StateDict out = params_;
  for (const auto& b : buffers_) out.push_back(b);
  for (const auto& [cname, c] : children_)
    for (auto& [n, t] : c->state_dict()) out.emplace_back(cname + "." + n, t);
  return out;
}

void Module::load_state_dict(const StateDict& sd, bool strict) {
  StateDict own = state_dict();
  std::vector<std::string> missing, unexpected;
  // Lambdas capture `key`, not the structured binding (clang 14 rejects that).
  for (const auto& [name, t] : own) {
    const std::string& key = name;
    auto it = std::find_if(sd.begin(), sd.end(), [&](const auto& p) { return p.first == key; });
    if (it == sd.end()) {
      missing.push_back(name);
      continue;
    }
    LOOM_CHECK(it->second.sizes() == t.sizes(), "load_state_dict: size mismatch for ", name,
               ": copying a tensor of shape ", shape_str(it->second.sizes()), " into a tensor of shape ",
               shape_str(t.sizes()));
  }
  for (const auto& [name, t] : sd) {
    const std::string& key = name;
    bool known = std::any_of(own.begin(), own.end(), [&](const auto& p) { return p.first == key; });
    if (!known) unexpected.push_back(name);
  }
  if (strict && (!missing.empty() || !unexpected.empty())) {
    std::string msg = "load_state_dict: error(s) in loading state_dict for " + type_name_ + ":";
    auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", \"" : "\"") + v[i] + "\"";
      return s;
    };
    if (!missing.empty()) msg += " missing key(s): " + list(missing) + ".";
    if (!unexpected.empty()) msg += " unexpected key(s): " + list(unexpected) + ".";
    LOOM_ERROR(msg);
  }
  NoGradGuard ng;
  for (auto& [name, t] : own) {
    const std::string& key = name;
    auto it = std::find_if(sd.begin(), sd.end(), [&](const auto& p) { return p.first == key; });
    if (it != sd.end()) t.copy_(it->second);
  }
}

void Module::pretty_print(std::ostream& os, int indent) const {
  os << type_name_ << "(";
  std::string extra = extra_repr();
  if (children_.empty()) {
    os << extra << ")";
    return;
  }
  std::string pad(indent + 2, ' ');
  os << "\n";
  if (!extra.empty()) os << pad << extra << "\n";
  for (const auto& [n, c] : children_) {
    os << pad << "(" << n << "): ";
    c->pretty_print(os, indent + 2);
    os << "\n";
  }
  os << std::string(indent, ' ') << ")";
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

std::ostream& operator<<(std::ostream& os, const Module& m) {
  m.pretty_print(os);
  return os;
}

}  // namespace loom::nn
