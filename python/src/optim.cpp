// loom._C._optim: the optimizers, ZeRO-1 and the learning-rate schedulers of
// include/loom/optim (gradient clipping is bound with loom.nn.utils).
// python/loom/optim arranges them under PyTorch's names and keywords (params
// as tensors or group dicts, param_groups as dicts, PyTorch's state-dict
// layout).
#include <map>

#include "bind.h"

namespace loom::python {

namespace {

using optim::Optimizer;
using optim::OptimizerOptions;
using optim::ParamGroup;

// Options of optimizer `kind` (PyTorch's class name) with PyTorch's defaults.
// SGD has no default lr: its Python class requires one, so 0 is never used.
std::unique_ptr<OptimizerOptions> default_options(const std::string& kind) {
  if (kind == "SGD") return std::make_unique<optim::SGDOptions>(0.0);
  if (kind == "Adam") return std::make_unique<optim::AdamOptions>();
  if (kind == "AdamW") return std::make_unique<optim::AdamWOptions>();
  if (kind == "Adagrad") return std::make_unique<optim::AdagradOptions>();
  if (kind == "RMSprop") return std::make_unique<optim::RMSpropOptions>();
  LOOM_ERROR("loom.optim: unknown optimizer '", kind, "' (known: SGD, Adam, AdamW, Adagrad, RMSprop)");
}

// The multi-tensor step switch of SGD, Adam and AdamW: not a hyperparameter,
// so not reachable by name.
void set_fused(OptimizerOptions& o, std::optional<bool> v) {
  const std::string kind = o.optimizer_name();
  if (kind == "SGD") static_cast<optim::SGDOptions&>(o).fused(v);
  else if (kind == "Adam") static_cast<optim::AdamOptions&>(o).fused(v);
  else if (kind == "AdamW") static_cast<optim::AdamWOptions&>(o).fused(v);
  else LOOM_CHECK(!v, kind, ": has no fused step (only SGD, Adam and AdamW do)");
}

std::optional<bool> get_fused(const OptimizerOptions& o) {
  const std::string kind = o.optimizer_name();
  if (kind == "SGD") return static_cast<const optim::SGDOptions&>(o).fused();
  if (kind == "Adam") return static_cast<const optim::AdamOptions&>(o).fused();
  if (kind == "AdamW") return static_cast<const optim::AdamWOptions&>(o).fused();
  return std::nullopt;
}

// Sets options from PyTorch keywords: "betas" is the pair (betas0, betas1),
// "fused" the multi-tensor switch, booleans are 0/1, the rest by name.
void apply_keywords(OptimizerOptions& o, const py::dict& kw) {
  for (auto [key, value] : kw) {
    const std::string name = py::cast<std::string>(key);
    if (name == "betas") {
      auto betas = py::cast<std::pair<double, double>>(value);
      o.set_hyperparameter("betas0", betas.first);
      o.set_hyperparameter("betas1", betas.second);
    } else if (name == "fused") {
      set_fused(o, py::cast<std::optional<bool>>(value));
    } else {
      o.set_hyperparameter(name, py::cast<double>(value));
    }
  }
}

// groups: (params, keywords that differ from the defaults) per group.
using GroupSpecs = std::vector<std::pair<std::vector<Tensor>, py::dict>>;

std::vector<ParamGroup> make_groups(const OptimizerOptions& defaults, const GroupSpecs& specs) {
  std::vector<ParamGroup> groups;
  for (const auto& [params, kw] : specs) {
    auto options = defaults.clone();
    apply_keywords(*options, kw);
    groups.emplace_back(params, *options);
  }
  return groups;
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerOptions& defaults, std::vector<ParamGroup> groups) {
  const std::string kind = defaults.optimizer_name();
  if (kind == "SGD")
    return std::make_unique<optim::SGD>(std::move(groups), static_cast<const optim::SGDOptions&>(defaults));
  if (kind == "Adam")
    return std::make_unique<optim::Adam>(std::move(groups), static_cast<const optim::AdamOptions&>(defaults));
  if (kind == "AdamW")
    return std::make_unique<optim::AdamW>(std::move(groups), static_cast<const optim::AdamWOptions&>(defaults));
  if (kind == "Adagrad")
    return std::make_unique<optim::Adagrad>(std::move(groups), static_cast<const optim::AdagradOptions&>(defaults));
  return std::make_unique<optim::RMSprop>(std::move(groups), static_cast<const optim::RMSpropOptions&>(defaults));
}

ParamGroup& group_at(Optimizer& o, int64_t g) {
  auto& groups = o.param_groups();
  LOOM_CHECK(g >= 0 && g < static_cast<int64_t>(groups.size()), o.name(), ": no parameter group ", g, " (it has ",
             groups.size(), ")");
  return groups[static_cast<size_t>(g)];
}

optim::ZeroRedundancyOptimizer& zero_of(Optimizer& o) {
  auto* z = dynamic_cast<optim::ZeroRedundancyOptimizer*>(&o);
  LOOM_CHECK(z != nullptr, o.name(), ": not a ZeroRedundancyOptimizer");
  return *z;
}

StateDict state_dict_from(const py::dict& d) {
  StateDict sd;
  for (auto [k, v] : d) sd.emplace_back(py::cast<std::string>(k), py::cast<Tensor>(v));
  return sd;
}

// A scheduler written in Python (LambdaLR, a user's subclass): get_lr() is
// the Python method. python/loom/optim/lr_scheduler.py's LRScheduler takes
// the first step once the object exists (initial_step from Python), since a
// Python override is not reachable while the C++ constructor runs.
class PyLRScheduler : public optim::LRScheduler {
 public:
  explicit PyLRScheduler(Optimizer& optimizer) : LRScheduler(optimizer) {}
  const char* name() const override { return name_.c_str(); }
  std::vector<double> get_lr() override { PYBIND11_OVERRIDE_PURE(std::vector<double>, LRScheduler, get_lr, ); }
  // The first step, under the Python class's name (for error messages).
  void initial_step(std::string name) {
    name_ = std::move(name);
    LRScheduler::initial_step();
  }

 private:
  std::string name_ = "LRScheduler";
};

// A scheduler's state dict with PyTorch's keys and Python values:
// {"last_epoch": 3, "_step_count": 4, "base_lrs": [...], "_last_lr": [...]},
// and SequentialLR's "_schedulers": [state dicts] (Note [Scheduler state dict]).
py::dict scheduler_state_to_python(const StateDict& sd) {
  py::dict out;
  std::map<int64_t, StateDict> nested;
  for (const auto& [key, t] : sd) {
    if (key.rfind("schedulers.", 0) == 0) {
      const size_t dot = key.find('.', 11);
      nested[std::stoll(key.substr(11, dot - 11))].emplace_back(key.substr(dot + 1), t);
    } else if (key == "last_epoch" || key == "step_count") {
      out[key == "last_epoch" ? "last_epoch" : "_step_count"] = t.item<int64_t>();
    } else {
      out[key == "last_lr" ? "_last_lr" : key.c_str()] = py::cast(t.to_vector<double>());
    }
  }
  if (!nested.empty()) {
    py::list subs;
    for (auto& [k, s] : nested) subs.append(scheduler_state_to_python(s));
    out["_schedulers"] = subs;
  }
  return out;
}

Tensor double_vector(const std::vector<double>& v) {
  Tensor t = empty({static_cast<int64_t>(v.size())}, kFloat64);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t;
}

void scheduler_state_from_python(const py::dict& d, const std::string& prefix, StateDict& out) {
  for (auto [k, v] : d) {
    const std::string key = py::cast<std::string>(k);
    if (key == "_schedulers") {
      int64_t i = 0;
      for (py::handle s : v)
        scheduler_state_from_python(s.cast<py::dict>(), prefix + "schedulers." + std::to_string(i++) + ".", out);
    } else if (key == "last_epoch" || key == "_step_count") {
      out.emplace_back(prefix + (key == "last_epoch" ? "last_epoch" : "step_count"),
                       scalar_tensor(py::cast<int64_t>(v), kInt64));
    } else if (key == "base_lrs" || key == "_last_lr") {
      out.emplace_back(prefix + (key == "base_lrs" ? "base_lrs" : "last_lr"),
                       double_vector(py::cast<std::vector<double>>(v)));
    } else {
      // Checked here: the C++ loader would name the translated key instead.
      LOOM_ERROR("load_state_dict: unexpected key \"", prefix, key,
                 "\" (a scheduler state dict holds last_epoch, _step_count, base_lrs, _last_lr, _schedulers)");
    }
  }
}

}  // namespace

void bind_optim(py::module_& root) {
  py::module_ m = root.def_submodule("_optim", "loom's optimizers and schedulers (use loom.optim)");

  py::class_<Optimizer>(m, "Optimizer")
      // (kind, [(params, group keywords)], default keywords): loom.optim's
      // classes build themselves through this. With zero, the optimizer is
      // ZeRO-1 (torch.distributed.optim.ZeroRedundancyOptimizer) with `kind`
      // as the local optimizer over the flat shards, made by C++ alone.
      .def(py::init([](const std::string& kind, const GroupSpecs& groups, const py::dict& defaults, bool zero,
                       distributed::ProcessGroup* process_group) -> std::unique_ptr<Optimizer> {
             std::shared_ptr<OptimizerOptions> options = default_options(kind);
             apply_keywords(*options, defaults);
             options->validate();
             std::vector<ParamGroup> made = make_groups(*options, groups);
             py::gil_scoped_release release;  // Adagrad fills its accumulators, ZeRO shards
             if (!zero) return make_optimizer(*options, std::move(made));
             return std::make_unique<optim::ZeroRedundancyOptimizer>(
                 std::move(made),
                 [options](std::vector<ParamGroup> local) { return make_optimizer(*options, std::move(local)); },
                 process_group);
           }),
           py::arg("kind"), py::arg("groups"), py::arg("defaults"), py::arg("zero") = false,
           py::arg("process_group") = nullptr)
      .def(
          "step",
          [](Optimizer& o, const py::object& closure) {
            Optimizer::LossClosure fn;
            if (!closure.is_none()) {
              fn = [&closure]() {
                py::gil_scoped_acquire gil;
                return py::cast<Tensor>(closure());
              };
            }
            py::gil_scoped_release release;
            return o.step(fn);
          },
          py::arg("closure") = py::none())
      .def("zero_grad", &Optimizer::zero_grad, py::arg("set_to_none") = true, py::call_guard<py::gil_scoped_release>())
      .def("_num_groups", [](const Optimizer& o) { return o.param_groups().size(); })
      .def("_group_params", [](Optimizer& o, int64_t g) { return group_at(o, g).params(); })
      .def("_group_hyperparameters", [](Optimizer& o, int64_t g) { return group_at(o, g).options().hyperparameters(); })
      .def("_group_set",
           [](Optimizer& o, int64_t g, const std::string& name, double value) {
             ParamGroup& group = group_at(o, g);
             // Checked on a copy, so that a bad value (PyTorch raises at
             // construction; loom checks here) leaves the group as it was.
             auto options = group.options().clone();
             options->set_hyperparameter(name, value);
             options->validate();
             group.set_options(std::move(options));
           })
      .def("_group_fused", [](Optimizer& o, int64_t g) { return get_fused(group_at(o, g).options()); })
      .def("_group_set_fused",
           [](Optimizer& o, int64_t g, std::optional<bool> v) { set_fused(group_at(o, g).options(), v); })
      .def("_group_initial_lr", [](Optimizer& o, int64_t g) { return group_at(o, g).initial_lr(); })
      .def("_group_set_initial_lr", [](Optimizer& o, int64_t g, double lr) { group_at(o, g).set_initial_lr(lr); })
      .def(
          "_add_param_group",
          [](Optimizer& o, std::vector<Tensor> params, const py::dict& kw) {
            auto options = o.defaults().clone();
            apply_keywords(*options, kw);
            o.add_param_group(ParamGroup(std::move(params), *options));
          },
          py::arg("params"), py::arg("keywords"))
      .def("_state_of",
           [](const Optimizer& o, const Tensor& p) -> py::object {
             const optim::ParamState* s = o.state_of(p);
             if (s == nullptr) return py::none();
             py::dict d;
             for (const auto& [n, t] : s->entries()) d[py::str(n)] = wrap(t);
             return d;
           })
      // Note [Optimizer state dict]: the flat form; loom.optim converts it
      // to PyTorch's nested one.
      .def("_state_dict",
           [](const Optimizer& o) {
             StateDict sd;
             {
               py::gil_scoped_release release;  // ZeRO-1 gathers its shards
               sd = o.state_dict();
             }
             py::dict d;
             for (auto& [k, t] : sd) d[py::str(k)] = wrap(t);
             return d;
           })
      .def("_load_state_dict",
           [](Optimizer& o, const py::dict& d) {
             StateDict sd = state_dict_from(d);
             py::gil_scoped_release release;
             o.load_state_dict(sd);
           })
      .def_property(
          "_max_grad_norm", [](Optimizer& o) { return zero_of(o).max_grad_norm(); },
          [](Optimizer& o, double v) { zero_of(o).set_max_grad_norm(v); });

  using optim::LRScheduler;
  py::class_<LRScheduler, PyLRScheduler, std::shared_ptr<LRScheduler>>(m, "LRScheduler")
      .def(py::init<Optimizer&>(), py::arg("optimizer"), py::keep_alive<1, 2>())
      .def("_initial_step",
           [](py::object self) {
             self.cast<PyLRScheduler&>().initial_step(py::str(py::type::of(self).attr("__name__")));
           })
      .def("step", &LRScheduler::step)
      .def("get_last_lr", &LRScheduler::get_last_lr)
      .def_property_readonly("last_epoch", &LRScheduler::last_epoch)
      .def_property_readonly("base_lrs", &LRScheduler::base_lrs)
      .def_property_readonly("optimizer", &LRScheduler::optimizer, py::return_value_policy::reference)
      .def("state_dict", [](const LRScheduler& s) { return scheduler_state_to_python(s.state_dict()); })
      .def("load_state_dict", [](LRScheduler& s, const py::dict& d) {
        StateDict sd;
        scheduler_state_from_python(d, "", sd);
        s.load_state_dict(sd);
      });

  py::class_<optim::StepLR, LRScheduler, std::shared_ptr<optim::StepLR>>(m, "StepLR")
      .def(py::init<Optimizer&, int64_t, double>(), py::arg("optimizer"), py::arg("step_size"), py::arg("gamma") = 0.1,
           py::keep_alive<1, 2>());
  py::class_<optim::MultiStepLR, LRScheduler, std::shared_ptr<optim::MultiStepLR>>(m, "MultiStepLR")
      .def(py::init<Optimizer&, std::vector<int64_t>, double>(), py::arg("optimizer"), py::arg("milestones"),
           py::arg("gamma") = 0.1, py::keep_alive<1, 2>());
  py::class_<optim::ExponentialLR, LRScheduler, std::shared_ptr<optim::ExponentialLR>>(m, "ExponentialLR")
      .def(py::init<Optimizer&, double>(), py::arg("optimizer"), py::arg("gamma"), py::keep_alive<1, 2>());
  py::class_<optim::CosineAnnealingLR, LRScheduler, std::shared_ptr<optim::CosineAnnealingLR>>(m, "CosineAnnealingLR")
      .def(py::init<Optimizer&, int64_t, double>(), py::arg("optimizer"), py::arg("T_max"), py::arg("eta_min") = 0.0,
           py::keep_alive<1, 2>());
  py::class_<optim::LinearLR, LRScheduler, std::shared_ptr<optim::LinearLR>>(m, "LinearLR")
      .def(py::init<Optimizer&, double, double, int64_t>(), py::arg("optimizer"), py::arg("start_factor") = 1.0 / 3,
           py::arg("end_factor") = 1.0, py::arg("total_iters") = 5, py::keep_alive<1, 2>());
  py::class_<optim::OneCycleLR, LRScheduler, std::shared_ptr<optim::OneCycleLR>>(m, "OneCycleLR")
      .def(py::init([](Optimizer& opt, const py::object& max_lr, std::optional<int64_t> total_steps,
                       std::optional<int64_t> epochs, std::optional<int64_t> steps_per_epoch, double pct_start,
                       const std::string& anneal_strategy, bool cycle_momentum, double base_momentum,
                       double max_momentum, double div_factor, double final_div_factor, bool three_phase) {
             // PyTorch's rule: total_steps, or else epochs * steps_per_epoch.
             if (!total_steps) {
               LOOM_CHECK(epochs && steps_per_epoch,
                          "OneCycleLR: you must define either total_steps OR (epochs AND steps_per_epoch)");
               total_steps = *epochs * *steps_per_epoch;
             }
             optim::OneCycleLROptions o;
             o.pct_start(pct_start)
                 .anneal_strategy(anneal_strategy)
                 .cycle_momentum(cycle_momentum)
                 .base_momentum(base_momentum)
                 .max_momentum(max_momentum)
                 .div_factor(div_factor)
                 .final_div_factor(final_div_factor)
                 .three_phase(three_phase);
             if (py::isinstance<py::sequence>(max_lr))
               return std::make_shared<optim::OneCycleLR>(opt, py::cast<std::vector<double>>(max_lr), *total_steps, o);
             return std::make_shared<optim::OneCycleLR>(opt, py::cast<double>(max_lr), *total_steps, o);
           }),
           py::arg("optimizer"), py::arg("max_lr"), py::arg("total_steps") = py::none(), py::arg("epochs") = py::none(),
           py::arg("steps_per_epoch") = py::none(), py::arg("pct_start") = 0.3, py::arg("anneal_strategy") = "cos",
           py::arg("cycle_momentum") = true, py::arg("base_momentum") = 0.85, py::arg("max_momentum") = 0.95,
           py::arg("div_factor") = 25.0, py::arg("final_div_factor") = 1e4, py::arg("three_phase") = false,
           py::keep_alive<1, 2>());
  // loom.amp.GradScaler (include/loom/amp.h): PyTorch's GradScaler; step()
  // returns whether the optimizer stepped.
  py::class_<amp::GradScaler>(m, "GradScaler")
      .def(py::init([](double init_scale, double growth_factor, double backoff_factor, int64_t growth_interval,
                       bool enabled) {
             return amp::GradScaler(
                 {.init_scale = init_scale, .growth_factor = growth_factor, .backoff_factor = backoff_factor,
                  .growth_interval = growth_interval, .enabled = enabled});
           }),
           py::arg("init_scale") = 65536.0, py::arg("growth_factor") = 2.0, py::arg("backoff_factor") = 0.5,
           py::arg("growth_interval") = 2000, py::arg("enabled") = true)
      .def("scale", &amp::GradScaler::scale, py::arg("outputs"))
      .def("unscale_", &amp::GradScaler::unscale_, py::arg("optimizer"))
      .def("step", &amp::GradScaler::step, py::arg("optimizer"))
      .def("update",
           [](amp::GradScaler& s, std::optional<double> new_scale) {
             if (new_scale) s.update(*new_scale);
             else s.update();
           },
           py::arg("new_scale") = py::none())
      .def("get_scale", &amp::GradScaler::get_scale)
      .def("is_enabled", &amp::GradScaler::is_enabled)
      .def("state_dict",
           [](const amp::GradScaler& s) {
             py::dict d;
             for (const auto& [key, t] : s.state_dict()) {
               if (key == "_growth_tracker" || key == "growth_interval") d[key.c_str()] = static_cast<int64_t>(t.item<double>());
               else d[key.c_str()] = t.item<double>();
             }
             return d;
           })
      .def("load_state_dict", [](amp::GradScaler& s, const py::dict& d) {
        StateDict state;
        for (auto [key, value] : d) state.emplace_back(py::cast<std::string>(key), full({}, py::cast<double>(value), kFloat64));
        s.load_state_dict(state);
      }, py::arg("state_dict"));
  py::class_<optim::SequentialLR, LRScheduler, std::shared_ptr<optim::SequentialLR>>(m, "SequentialLR")
      .def(py::init<Optimizer&, std::vector<std::shared_ptr<LRScheduler>>, std::vector<int64_t>>(),
           py::arg("optimizer"), py::arg("schedulers"), py::arg("milestones"), py::keep_alive<1, 2>(),
           py::keep_alive<1, 3>());
}

}  // namespace loom::python
