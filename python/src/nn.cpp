// loom._C._nn: nn.Module and every layer of include/loom/nn under PyTorch's
// names, constructor signatures and attributes, and the submodules
// functional, init and utils (gradient clipping). python/loom/nn arranges
// the names.
//
// Note [Python modules over C++ modules]
// loom.nn.Module is the binding of nn::Module itself, with a trampoline
// (PyModule) through which C++ calls a Python forward, train or extra_repr.
// So every layer is a Module in Python, and a Python subclass is a C++
// module that C++ containers (Sequential) hold and run. What lives where:
// - Registration is the core's. A Python module's __setattr__ registers
//   parameters and children with register_parameter / register_module, so
//   parameters(), state_dict(), to(), train() and printing are C++'s.
// - Python objects live as long as the module object that registered them.
//   A Python module keeps what was assigned in its instance __dict__, so
//   `self.fc` is that object. A module made in C++ (a layer, a container)
//   keeps the objects of its children in __dict__["_loom_children"] and its
//   parameters, as nn.Parameter objects, in __dict__["_loom_parameters"],
//   filled when it is made (adopt). So `m.fc.weight is m.fc.weight` and
//   id(p) stay fixed as in PyTorch, and a Python child of a C++ container
//   keeps its Python half: pybind11 2.10 has no smart_holder, and a Python
//   subclass object owned only by a C++ shared_ptr loses its Python methods.
// - A parameter that a C++ layer registered is an nn.Parameter object
//   holding that very tensor (wrap_as), the one Python object
//   of the tensor (Note [One Python object per tensor] in bind.h).
// - The core cannot replace or remove a registered parameter or buffer, nor
//   a child of a C++ layer (whose forward keeps the handles it built), so
//   those assignments raise. A tensor assigned to a registered buffer's name
//   becomes that buffer's data (Tensor::set_data): the core and Python keep
//   seeing one buffer tensor.
#include <deque>
#include <sstream>
#include <unordered_set>

#include "bind.h"

namespace loom::python {

namespace {

using nn::Module;
namespace F = nn::functional;
using namespace pybind11::literals;

const auto nogil = py::call_guard<py::gil_scoped_release>();

// Set once by bind_nn (and parameter.py); types live as long as the interpreter.
PyTypeObject* g_tensor_type = nullptr;  // loom.Tensor
py::handle g_module_type;               // loom.nn.Module
py::handle g_parameter_type;            // loom.nn.Parameter
py::handle g_sequential_type;           // loom.nn.Sequential
py::handle g_module_list_type;          // loom.nn.ModuleList
py::handle g_incompatible_keys;         // what load_state_dict returns, as PyTorch's _IncompatibleKeys

// C++ calls a Python subclass's forward, train and extra_repr through this
// (PYBIND11_OVERRIDE takes the GIL: C++ forwards run without it).
class PyModule : public Module {
 public:
  using Module::Module;
  Tensor forward(const Tensor& input) override {
    try {
      PYBIND11_OVERRIDE(Tensor, Module, forward, input);
    } catch (py::error_already_set& e) {
      rethrow_parked(e);  // e.g. a checkpointed recomputation's early stop
      throw;
    }
  }
  void train(bool on) override { PYBIND11_OVERRIDE(void, Module, train, on); }
  std::string extra_repr() const override { PYBIND11_OVERRIDE(std::string, Module, extra_repr, ); }
};

// Module::training_ is protected; PyTorch's `m.training = False` sets one
// module's flag (train() recurses), so the setter reaches it through a
// pointer to member formed in a derived class.
struct TrainingFlag : Module {
  static constexpr bool Module::*member = &TrainingFlag::training_;
};

std::string type_name_of(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

bool is_module(py::handle h) { return PyObject_IsInstance(h.ptr(), g_module_type.ptr()) == 1; }
bool is_parameter(py::handle h) {
  return g_parameter_type && PyObject_IsInstance(h.ptr(), g_parameter_type.ptr()) == 1;
}

// The C++ module behind `self`; null before Module.__init__ ran (casting an
// instance whose holder is not constructed yet is not safe).
Module* module_of(py::handle self) {
  auto* inst = reinterpret_cast<py::detail::instance*>(self.ptr());
  if (!inst->get_value_and_holder().holder_constructed()) return nullptr;
  return py::cast<Module*>(self);
}

Module& module_ref(py::handle self) {
  Module* m = module_of(self);
  if (m == nullptr) throw py::attribute_error("the module was not initialized (__init__ must call Module.__init__())");
  return *m;
}

std::shared_ptr<Module> module_arg(py::handle h, const char* where) {
  if (!is_module(h)) throw py::type_error(std::string(where) + ": expected a loom.nn.Module, got " + type_name_of(h));
  auto p = h.cast<std::shared_ptr<Module>>();
  if (!p)
    throw py::type_error(std::string(where) + ": the " + type_name_of(h) +
                         " was not initialized (__init__ must call Module.__init__())");
  return p;
}

// The Python object of a C++ child: the one alive (pybind11 finds it by
// pointer), or a new one of its most derived bound class.
py::object module_object(const std::shared_ptr<Module>& m) { return py::cast(m); }

// A new nn.Parameter object holding `t` itself (Tensor.__init__ would make
// a new leaf): allocated as Parameter.__new__ does, then given the tensor as
// pybind11's constructors give a value, and entered in the tensor table.
// The Python object for a registered parameter (None for an undefined
// tensor): the one alive, or a new nn.Parameter. A plain loom.Tensor object
// that someone already holds stays what it is.
py::object as_parameter(const Tensor& t) {
  py::object o = wrap(t);
  if (Py_TYPE(o.ptr()) != g_tensor_type || !g_parameter_type || o.ref_count() > 1) return o;
  o = py::object();  // made just now: it goes, and its table entry with it
  return wrap_as(t, g_parameter_type);
}

// (prefixed name, object) pairs as PyTorch's named_parameters yields them;
// a tensor reached twice is given once unless remove_duplicate is off.
template <typename AsObject>
py::iterator named_tensors(const nn::StateDict& named, const std::string& prefix, bool remove_duplicate,
                           AsObject as_object) {
  py::list out;
  std::unordered_set<const TensorImpl*> seen;
  for (const auto& [n, t] : named)
    if (!remove_duplicate || seen.insert(t.unsafe_impl()).second)
      out.append(py::make_tuple(prefix.empty() ? n : prefix + "." + n, as_object(t)));
  return py::iter(out);
}

template <typename AsObject>
py::iterator unique_tensors(const std::vector<Tensor>& ts, AsObject as_object) {
  py::list out;
  std::unordered_set<const TensorImpl*> seen;
  for (const Tensor& t : ts)
    if (seen.insert(t.unsafe_impl()).second) out.append(as_object(t));
  return py::iter(out);
}

void generic_setattr(py::handle self, py::handle name, py::handle value) {
  if (PyObject_GenericSetAttr(self.ptr(), name.ptr(), value.ptr()) != 0) throw py::error_already_set();
}

// A property (or other data descriptor) of the class takes `self.name = v`
// itself, as in any Python class.
bool has_data_descriptor(py::handle self, py::handle name) {
  PyObject* d = _PyType_Lookup(Py_TYPE(self.ptr()), name.ptr());
  return d != nullptr && Py_TYPE(d)->tp_descr_set != nullptr;
}

// What a name is registered as in this module itself.
enum class Slot { None, Parameter, Buffer, Child };

Slot find_slot(const Module& m, const std::string& name) {
  for (const auto& [n, t] : m.named_parameters(false))
    if (n == name) return Slot::Parameter;
  for (const auto& [n, t] : m.named_buffers(false))
    if (n == name) return Slot::Buffer;
  for (const auto& [n, c] : m.named_children())
    if (n == name) return Slot::Child;
  return Slot::None;
}

Tensor own_tensor(const nn::StateDict& named, const std::string& name) {
  for (const auto& [n, t] : named)
    if (n == name) return t;
  return Tensor();
}

// Keeps `child`'s Python object alive as long as `parent`'s: the C++ module
// holds only the C++ half (Note [Python modules over C++ modules]).
void hold_child(py::handle parent, const std::string& name, py::handle child) {
  py::dict d = parent.attr("__dict__");
  if (!d.contains("_loom_children")) d["_loom_children"] = py::dict();
  py::dict held = d["_loom_children"];
  held[py::str(name)] = child;
}

// Gives a module object the Python objects of what its C++ module holds
// (Note [Python modules over C++ modules]): each child's object, as a Python
// module's attribute or else held, and, for a module made in C++, its
// parameters as nn.Parameter objects; then the same for each child. Run
// when a C++ module is made, and after C++ rearranged a tree
// (convert_sync_batchnorm's new Sequentials and ModuleDict inserts).
void adopt(py::handle self) {
  Module& m = module_ref(self);
  py::dict d = self.attr("__dict__");
  if (dynamic_cast<PyModule*>(&m) == nullptr) {
    py::dict params;
    for (const auto& [name, t] : m.named_parameters(false)) params[py::str(name)] = as_parameter(t);
    d["_loom_parameters"] = params;
  }
  for (const auto& [name, child] : m.named_children()) {
    py::object obj = module_object(child);
    py::str key(name);
    if (d.contains(key) && is_module(d[key]))
      d[key] = obj;
    else
      hold_child(self, name, obj);
    adopt(obj);
  }
}

void set_parameter(py::handle self, Module& m, py::handle name, Slot slot, py::handle value) {
  const std::string n = py::str(name);
  const Tensor& t = unwrap(value);
  if (slot == Slot::Parameter) {
    LOOM_CHECK(own_tensor(m.named_parameters(false), n).unsafe_impl() == t.unsafe_impl(), m.type_name(),
               ": cannot replace the registered parameter \"", n,
               "\" (a loom module keeps its parameters; assign to its .data instead)");
  } else {
    m.register_parameter(n, t, t.requires_grad());  // the core rejects a name taken by a buffer or child
  }
  generic_setattr(self, name, value);
}

void set_child(py::handle self, Module& m, py::handle name, Slot slot, py::handle value) {
  const std::string n = py::str(name);
  std::shared_ptr<Module> child = module_arg(value, "Module.__setattr__");
  if (slot == Slot::Child) {
    bool same = false;
    for (const auto& [cn, c] : m.named_children())
      if (cn == n) same = c == child;
    if (!same) {
      LOOM_CHECK(dynamic_cast<PyModule*>(&m) != nullptr, m.type_name(), ": cannot replace the child module \"", n,
                 "\" of a C++ module (its forward keeps the module it built)");
      m.replace_module(n, child);
    }
  } else {
    m.register_module(n, child);  // the core rejects a name taken by a parameter or buffer
  }
  generic_setattr(self, name, value);
}

void module_setattr(py::handle self, py::str name, py::handle value) {
  if (has_data_descriptor(self, name)) return generic_setattr(self, name, value);
  const bool param = is_parameter(value);
  const bool child = !param && is_module(value);
  Module* m = module_of(self);
  if (m == nullptr) {
    if (param || child)
      throw py::attribute_error(std::string("cannot assign ") + (param ? "parameters" : "module") +
                                " before Module.__init__() call");
    return generic_setattr(self, name, value);
  }
  const std::string n = name;
  const Slot slot = find_slot(*m, n);
  if (param) return set_parameter(self, *m, name, slot, value);
  if (child) return set_child(self, *m, name, slot, value);
  switch (slot) {
    case Slot::None:
      return generic_setattr(self, name, value);
    case Slot::Buffer:
      if (is_tensor(value)) {
        own_tensor(m->named_buffers(false), n).set_data(unwrap(value));
        return;
      }
      throw py::type_error("cannot assign '" + type_name_of(value) + "' as buffer '" + n + "' (loom.Tensor expected)");
    case Slot::Parameter:
      throw py::type_error("cannot assign '" + type_name_of(value) + "' as parameter '" + n +
                           "' (loom.nn.Parameter expected)");
    case Slot::Child:
      throw py::type_error("cannot assign '" + type_name_of(value) + "' as child module '" + n +
                           "' (loom.nn.Module expected)");
  }
}

// Only called when ordinary lookup fails: the parameters, buffers and
// children C++ registered (those of C++ layers, and "0", "1" of a Sequential).
py::object module_getattr(py::handle self, const std::string& name) {
  if (Module* m = module_of(self)) {
    for (const auto& [n, t] : m->named_parameters(false))
      if (n == name) return as_parameter(t);
    for (const auto& [n, t] : m->named_buffers(false))
      if (n == name) return wrap(t);
    for (const auto& [n, c] : m->named_children())
      if (n == name) return module_object(c);
  }
  throw py::attribute_error("'" + type_name_of(self) + "' object has no attribute '" + name + "'");
}

void module_delattr(py::handle self, py::str name) {
  if (Module* m = module_of(self); m != nullptr && find_slot(*m, name) != Slot::None)
    LOOM_ERROR(m->type_name(), ": cannot delete \"", std::string(name), "\": a loom module keeps what it registered");
  if (PyObject_GenericSetAttr(self.ptr(), name.ptr(), nullptr) != 0) throw py::error_already_set();
}

// Replaces cls.__init__ by body(construct, self, args, kwargs), where
// construct is the __init__ pybind11 made: for constructors that need
// `self` (a Python subclass's type name, containers holding Python children).
// The replacement keeps construct's docstring (its signatures) for help().
template <typename Class, typename Body>
void def_init_with_self(Class& cls, Body body) {
  static std::deque<std::string> docs;  // pybind11 keeps a pointer to each function's doc
  py::object construct = cls.attr("__init__");
  docs.push_back(py::str(construct.attr("__doc__")));
  cls.attr("__init__") = py::cpp_function(
      [construct, body](py::handle self, py::args args, py::kwargs kwargs) { body(construct, self, args, kwargs); },
      py::name("__init__"), py::is_method(cls), py::doc(docs.back().c_str()));
}

template <typename Impl>
using ModuleClass = py::class_<Impl, Module, std::shared_ptr<Impl>>;

// `name` reads a parameter member of a C++ layer (None when absent, as
// PyTorch's bias=False); assigning one raises (Note [Python modules over C++ modules]).
template <typename Impl, typename Owner>
void def_parameter(ModuleClass<Impl>& cls, const char* name, Tensor Owner::*member) {
  cls.def_property(
      name, [member](const Impl& m) { return as_parameter(m.*member); },
      [name](const Impl& m, py::handle) {
        LOOM_ERROR(m.type_name(), ": cannot replace the parameter \"", name, "\" of a C++ module; assign to ", name,
                   ".data instead");
      });
}

// A buffer member: assigning a tensor makes it the buffer's data, as for a
// Python module's buffer.
template <typename Impl, typename Owner>
void def_buffer(ModuleClass<Impl>& cls, const char* name, Tensor Owner::*member) {
  cls.def_property(
      name, [member](const Impl& m) { return m.*member; },
      [member, name](Impl& m, const Tensor& t) {
        LOOM_CHECK(t.defined() && (m.*member).defined(), m.type_name(), ": \"", name,
                   "\" is not a buffer of this module, or the value is not a tensor");
        (m.*member).set_data(t);
      });
}

py::tuple as_tuple(const std::vector<int64_t>& v) { return py::tuple(py::cast(v)); }
// Sizes kept "as given" (pooling): one value as an int, as PyTorch keeps them.
py::object int_or_tuple(const std::vector<int64_t>& v) {
  if (v.size() == 1) return py::int_(v[0]);
  return as_tuple(v);
}
std::vector<int64_t> ints_arg(py::handle h) { return h.cast<IntArrayRef>().vec(); }
// None, a number, or a sequence of numbers (a scale_factor).
std::vector<double> doubles_arg(py::handle h) {
  if (h.is_none()) return {};
  if (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr())) return {h.cast<double>()};
  return h.cast<std::vector<double>>();
}
std::vector<int64_t> optional_ints_arg(py::handle h) {
  if (h.is_none()) return {};
  return ints_arg(h);
}

// A convolution's padding: an int, a tuple, or PyTorch's "same" / "valid".
struct PaddingArg {
  std::vector<int64_t> amounts{0};
  std::string mode;
};
PaddingArg padding_arg(py::handle h) {
  if (py::isinstance<py::str>(h)) return {{0}, py::str(h)};
  return {ints_arg(h), ""};
}
ConvPadding conv_padding(const char* op, const std::string& mode) {
  LOOM_CHECK(mode == "same" || mode == "valid", op, ": padding must be an int, a tuple, 'same' or 'valid', got '", mode,
             "'");
  return mode == "same" ? ConvPadding::Same : ConvPadding::Valid;
}
void check_zeros_padding_mode(const char* module, const std::string& padding_mode) {
  LOOM_CHECK(padding_mode == "zeros", module, ": padding_mode must be 'zeros' (loom pads with zeros), got '",
             padding_mode, "'");
}
py::object conv_padding_attr(const std::vector<int64_t>& amounts, const std::string& mode) {
  if (!mode.empty()) return py::str(mode);
  return as_tuple(amounts);
}

std::vector<Tensor> parameters_arg(py::handle parameters) {
  if (is_tensor(parameters)) return {unwrap(parameters)};
  std::vector<Tensor> out;
  for (py::handle p : parameters) {
    if (!is_tensor(p)) throw py::type_error("expected tensors, got " + type_name_of(p));
    out.push_back(unwrap(p));
  }
  return out;
}

// SyncBatchNorm.convert_sync_batchnorm. The core converts trees of C++
// modules; it cannot swap a child of a module whose forward holds the child
// itself (Note [Converting to SyncBatchNorm]), but a Python module calls its
// children through its attributes, so the binding swaps those: a Python
// module's children are converted and assigned (module_setattr), and a C++
// module goes to the core once the Python modules under it are done.
py::object convert_sync_batchnorm(py::handle module, const std::shared_ptr<distributed::ProcessGroup>& group);

void convert_python_descendants(py::handle module, const std::shared_ptr<distributed::ProcessGroup>& group) {
  for (const auto& [name, child] : module_ref(module).named_children()) {
    py::object obj = module_object(child);
    if (dynamic_cast<PyModule*>(child.get()) != nullptr)
      convert_sync_batchnorm(obj, group);
    else
      convert_python_descendants(obj, group);
  }
}

py::object convert_sync_batchnorm(py::handle module, const std::shared_ptr<distributed::ProcessGroup>& group) {
  Module& m = module_ref(module);
  if (dynamic_cast<PyModule*>(&m) != nullptr) {
    for (const auto& [name, child] : m.named_children()) {
      py::object obj = module_object(child);
      py::object converted = convert_sync_batchnorm(obj, group);
      if (!converted.is(obj)) module_setattr(module, py::str(name), converted);
    }
    return py::reinterpret_borrow<py::object>(module);
  }
  convert_python_descendants(module, group);
  py::object out =
      module_object(nn::SyncBatchNorm::convert_sync_batchnorm(module.cast<std::shared_ptr<Module>>(), group));
  adopt(out);
  return out;
}

// ---------------------------------------------------------------------------
// nn.Module

void bind_module(py::module_& scope) {
  py::class_<Module, PyModule, std::shared_ptr<Module>> cls(
      scope, "Module",
      "Base class of every layer (torch.nn.Module). Subclass it, call super().__init__(), assign parameters and "
      "submodules as attributes and define forward.",
      py::dynamic_attr());
  g_module_type = cls;
  cls.def(py::init_alias<std::string>(), "type_name"_a);
  // A Python subclass prints under its class name ("Net(...)").
  def_init_with_self(cls, [](const py::object& construct, py::handle self, py::args args, py::kwargs kwargs) {
    if (!args.empty() || !kwargs.empty())
      throw py::type_error("Module.__init__() takes no arguments (got " + std::to_string(args.size() + kwargs.size()) +
                           ")");
    construct(self, py::type::of(self).attr("__name__"));
  });

  cls.def("__setattr__", &module_setattr)
      .def("__getattr__", &module_getattr)
      .def("__delattr__", &module_delattr)
      .def("__call__",
           [](py::handle self, py::args args, py::kwargs kwargs) { return self.attr("forward")(*args, **kwargs); })
      .def("forward", &Module::forward, "input"_a, nogil)
      .def("extra_repr", &Module::extra_repr)
      .def("__repr__",
           [](const Module& m) {
             std::ostringstream os;
             m.pretty_print(os);
             return os.str();
           })
      .def(
          "register_parameter",
          [](py::handle self, py::str name, py::handle param) {
            Module& m = module_ref(self);
            if (param.is_none()) return generic_setattr(self, name, param);
            if (!is_parameter(param))
              throw py::type_error("cannot assign '" + type_name_of(param) + "' object to parameter '" +
                                   std::string(name) + "' (loom.nn.Parameter or None required)");
            set_parameter(self, m, name, find_slot(m, name), param);
          },
          "name"_a, "param"_a)
      .def(
          "register_buffer",
          [](py::handle self, py::str name, py::handle tensor, bool persistent) {
            Module& m = module_ref(self);
            LOOM_CHECK(persistent, m.type_name(), ".register_buffer(\"", std::string(name),
                       "\"): loom buffers are always in the state dict (persistent=False is not supported)");
            if (tensor.is_none()) return generic_setattr(self, name, tensor);
            if (!is_tensor(tensor))
              throw py::type_error("cannot assign '" + type_name_of(tensor) + "' object to buffer '" +
                                   std::string(name) + "' (loom.Tensor or None required)");
            if (find_slot(m, name) == Slot::Buffer) return module_setattr(self, name, tensor);
            m.register_buffer(name, unwrap(tensor));
            generic_setattr(self, name, tensor);
          },
          "name"_a, "tensor"_a, "persistent"_a = true);
  auto add_module = [](py::handle self, py::str name, py::handle module) {
    Module& m = module_ref(self);
    if (module.is_none()) return generic_setattr(self, name, module);
    set_child(self, m, name, find_slot(m, name), module);
  };
  cls.def("add_module", add_module, "name"_a, "module"_a).def("register_module", add_module, "name"_a, "module"_a);

  // Iteration, as PyTorch's generators; a parameter or module reached twice
  // is given once (remove_duplicate).
  cls.def(
         "named_parameters",
         [](const Module& m, const std::string& prefix, bool recurse, bool remove_duplicate) {
           return named_tensors(m.named_parameters(recurse), prefix, remove_duplicate, as_parameter);
         },
         "prefix"_a = "", "recurse"_a = true, "remove_duplicate"_a = true)
      .def(
          "parameters",
          [](const Module& m, bool recurse) { return unique_tensors(m.parameters(recurse), as_parameter); },
          "recurse"_a = true)
      .def(
          "named_buffers",
          [](const Module& m, const std::string& prefix, bool recurse, bool remove_duplicate) {
            return named_tensors(m.named_buffers(recurse), prefix, remove_duplicate,
                                 [](const Tensor& t) { return wrap(t); });
          },
          "prefix"_a = "", "recurse"_a = true, "remove_duplicate"_a = true)
      .def(
          "buffers",
          [](const Module& m, bool recurse) {
            return unique_tensors(m.buffers(recurse), [](const Tensor& t) { return wrap(t); });
          },
          "recurse"_a = true)
      .def("named_children",
           [](const Module& m) {
             py::list out;
             std::unordered_set<const Module*> seen;
             for (const auto& [n, c] : m.named_children())
               if (seen.insert(c.get()).second) out.append(py::make_tuple(n, module_object(c)));
             return py::iter(out);
           })
      .def("children",
           [](const Module& m) {
             py::list out;
             std::unordered_set<const Module*> seen;
             for (const auto& c : m.children())
               if (seen.insert(c.get()).second) out.append(module_object(c));
             return py::iter(out);
           })
      .def(
          "named_modules",
          [](Module& m, py::object memo, const std::string& prefix, bool remove_duplicate) {
            // memo: a set of modules to leave out, which the walk adds to (PyTorch's).
            py::set seen_objects = memo.is_none() ? py::set() : py::set(memo);
            py::list out;
            for (const auto& [n, c] : m.named_modules(prefix)) {
              py::object obj = module_object(c);
              if (remove_duplicate) {
                if (seen_objects.contains(obj)) continue;
                seen_objects.add(obj);
              }
              out.append(py::make_tuple(n, obj));
            }
            return py::iter(out);
          },
          "memo"_a = py::none(), "prefix"_a = "", "remove_duplicate"_a = true)
      .def("modules", [](Module& m) {
        py::list out;
        std::unordered_set<const Module*> seen;
        for (const auto& c : m.modules())
          if (seen.insert(c.get()).second) out.append(module_object(c));
        return py::iter(out);
      });

  cls.def(
         "state_dict",
         [](const Module& m, py::object destination, const std::string& prefix, bool keep_vars) {
           py::object out =
               destination.is_none() ? py::module_::import("collections").attr("OrderedDict")() : destination;
           std::unordered_set<const TensorImpl*> params;
           if (keep_vars)
             for (const Tensor& t : m.parameters()) params.insert(t.unsafe_impl());
           for (const auto& [n, t] : m.state_dict()) {
             py::object v = !keep_vars ? wrap(t.detach()) : params.count(t.unsafe_impl()) ? as_parameter(t) : wrap(t);
             out[py::str(prefix + n)] = v;
           }
           return out;
         },
         py::kw_only(), "destination"_a = py::none(), "prefix"_a = "", "keep_vars"_a = false)
      .def(
          "load_state_dict",
          [](Module& m, py::handle state_dict, bool strict) {
            nn::StateDict sd;
            for (py::handle item : state_dict.attr("items")()) {
              auto kv = item.cast<py::tuple>();
              std::string key = py::str(kv[0]);
              if (!is_tensor(kv[1]))
                throw py::type_error("load_state_dict: expected a loom.Tensor for \"" + key + "\", got " +
                                     type_name_of(kv[1]));
              sd.emplace_back(key, unwrap(kv[1]));
            }
            const nn::StateDict own_sd = m.state_dict();
            std::unordered_set<std::string> own, given;
            for (const auto& [n, t] : own_sd) own.insert(n);
            for (const auto& [n, t] : sd) given.insert(n);
            py::list missing, unexpected;
            for (const auto& [n, t] : own_sd)
              if (!given.count(n)) missing.append(n);
            for (const auto& [n, t] : sd)
              if (!own.count(n)) unexpected.append(n);
            {
              release_gil g;
              m.load_state_dict(sd, strict);
            }
            return g_incompatible_keys(missing, unexpected);
          },
          "state_dict"_a, "strict"_a = true);

  cls.def(
         "train",
         [](py::handle self, bool mode) {
           module_ref(self).train(mode);
           return py::reinterpret_borrow<py::object>(self);
         },
         "mode"_a = true)
      .def("eval",
           [](py::handle self) {
             module_ref(self).train(false);
             return py::reinterpret_borrow<py::object>(self);
           })
      .def_property(
          "training", [](const Module& m) { return m.is_training(); },
          [](Module& m, bool on) { m.*TrainingFlag::member = on; })
      .def("zero_grad", &Module::zero_grad, "set_to_none"_a = true, nogil)
      .def(
          "requires_grad_",
          [](py::handle self, bool requires_grad) {
            for (Tensor t : module_ref(self).parameters()) t.requires_grad_(requires_grad);
            return py::reinterpret_borrow<py::object>(self);
          },
          "requires_grad"_a = true)
      .def(
          "apply",
          [](py::handle self, py::handle fn) {
            for (const auto& c : module_ref(self).children()) module_object(c).attr("apply")(fn);
            fn(self);
            return py::reinterpret_borrow<py::object>(self);
          },
          "fn"_a);

  // Device and dtype moves, in place (the handles optimizers hold stay valid); each returns self.
  cls.def("to", [](py::handle self, py::args args, py::kwargs kwargs) {
    Module& m = module_ref(self);
    std::optional<Device> device;
    std::optional<DType> dtype;
    auto take = [&](py::handle a) {
      if (a.is_none()) return;
      if (py::isinstance<DType>(a)) {
        dtype = a.cast<DType>();
      } else if (is_tensor(a)) {
        device = unwrap(a).device();
        dtype = unwrap(a).dtype();
      } else {
        device = a.cast<Device>();
      }
    };
    for (py::handle a : args) take(a);
    for (auto [k, v] : kwargs) {
      const std::string key = py::str(k);
      if (key == "device" || key == "dtype" || key == "tensor")
        take(v);
      else if (key != "non_blocking")
        throw py::type_error("to() got an unexpected keyword argument '" + key + "'");
    }
    {
      release_gil g;
      if (device) m.to(*device);
      if (dtype) m.to(*dtype);
    }
    return py::reinterpret_borrow<py::object>(self);
  });
  auto move_to = [](py::handle self, auto target) {
    {
      release_gil g;
      module_ref(self).to(target);
    }
    return py::reinterpret_borrow<py::object>(self);
  };
  cls.def("cpu", [move_to](py::handle self) { return move_to(self, Device::cpu()); })
      .def(
          "cuda",
          [move_to](py::handle self, py::handle device) {
            if (device.is_none()) return move_to(self, Device::cuda(0));
            if (PyLong_Check(device.ptr())) return move_to(self, Device::cuda(device.cast<int>()));
            return move_to(self, device.cast<Device>());
          },
          "device"_a = py::none())
      .def("float", [move_to](py::handle self) { return move_to(self, kFloat32); })
      .def("double", [move_to](py::handle self) { return move_to(self, kFloat64); })
      .def("half", [move_to](py::handle self) { return move_to(self, kFloat16); })
      .def("bfloat16", [move_to](py::handle self) { return move_to(self, kBFloat16); });
}

// ---------------------------------------------------------------------------
// Containers

// A C++ container runs a child through its C++ forward. A Python subclass of
// nn.Module gets there (the trampoline); a Python subclass of a C++ layer
// does not, so one that overrides forward is refused rather than skipped.
void check_forward_runs_in_cpp(py::handle module, const char* where) {
  std::string overriding;  // the last Python class above the C++ class that defines forward
  for (py::handle cls : py::type::of(module).attr("__mro__")) {
    if (py::str(cls.attr("__module__")).equal(py::str("loom._C._nn"))) {
      if (!overriding.empty() && !cls.is(g_module_type))
        LOOM_ERROR(where, ": ", overriding, " overrides the forward of ", std::string(py::str(cls.attr("__name__"))),
                   ", which loom's C++ containers would not call (they call the C++ layer's own); derive ",
                   overriding, " from nn.Module instead");
      return;
    }
    if (overriding.empty() && cls.attr("__dict__").contains("forward")) overriding = py::str(cls.attr("__name__"));
  }
}

void sequential_add(py::handle self, const std::string& name, py::handle module) {
  auto& s = self.cast<nn::SequentialImpl&>();
  std::shared_ptr<Module> child = module_arg(module, "Sequential");
  check_forward_runs_in_cpp(module, "Sequential");
  s.push_back(name, child);
  hold_child(self, name, module);
}

void module_list_add(py::handle self, py::handle module) {
  auto& l = self.cast<nn::ModuleListImpl&>();
  const std::string name = std::to_string(l.size());
  l.push_back(module_arg(module, "ModuleList"));
  hold_child(self, name, module);
}

void module_dict_set(py::handle self, const std::string& key, py::handle module) {
  self.cast<nn::ModuleDictImpl&>().insert(key, module_arg(module, "ModuleDict"));
  hold_child(self, key, module);
}

void module_dict_update(py::handle self, py::handle modules) {
  py::object items =
      py::hasattr(modules, "items") ? modules.attr("items")() : py::reinterpret_borrow<py::object>(modules);
  for (py::handle item : items) {
    auto kv = item.cast<py::sequence>();
    if (kv.size() != 2) throw py::value_error("ModuleDict.update: expected (key, module) pairs");
    module_dict_set(self, py::str(kv[0]), kv[1]);
  }
}

// Calls take(i) for each position a Python slice selects out of `size`.
void slice_indices(const py::slice& index, size_t size, const std::function<void(size_t)>& take) {
  size_t start = 0, stop = 0, step = 0, length = 0;
  if (!index.compute(size, &start, &stop, &step, &length)) throw py::error_already_set();
  for (size_t i = 0; i < length; ++i) take(start + i * step);
}

void bind_containers(py::module_& scope) {
  ModuleClass<nn::SequentialImpl> seq(scope, "Sequential");
  g_sequential_type = seq;
  seq.def(py::init<>());
  // Sequential(m0, m1, ...) names the children "0", "1", ...;
  // Sequential(OrderedDict(name=module)) keeps the names.
  def_init_with_self(seq, [](const py::object& construct, py::handle self, py::args args, py::kwargs kwargs) {
    if (!kwargs.empty()) throw py::type_error("Sequential() takes no keyword arguments");
    construct(self);
    if (args.size() == 1 && PyDict_Check(args[0].ptr())) {
      for (auto [k, v] : py::reinterpret_borrow<py::dict>(args[0])) sequential_add(self, py::str(k), v);
      return;
    }
    for (py::handle a : args) sequential_add(self, std::to_string(self.cast<nn::SequentialImpl&>().size()), a);
  });
  seq.def("forward", &nn::SequentialImpl::forward, "input"_a, nogil)
      .def("__len__", &nn::SequentialImpl::size)
      .def("__iter__",
           [](const nn::SequentialImpl& s) {
             py::list out;
             for (const auto& c : s) out.append(module_object(c));
             return py::iter(out);
           })
      .def(
          "__getitem__", [](const nn::SequentialImpl& s, int64_t i) { return module_object(s.at(i)); }, "idx"_a)
      .def(
          "__getitem__",
          [](const nn::SequentialImpl& s, const py::slice& index) {
            // A Sequential of the same modules under their names, as PyTorch's.
            auto named = s.named_children();
            py::object items = py::module_::import("collections").attr("OrderedDict")();
            slice_indices(index, named.size(),
                          [&](size_t i) { items[py::str(named[i].first)] = module_object(named[i].second); });
            return g_sequential_type(items);
          },
          "idx"_a)
      .def(
          "append",
          [](py::handle self, py::handle module) {
            sequential_add(self, std::to_string(self.cast<nn::SequentialImpl&>().size()), module);
            return py::reinterpret_borrow<py::object>(self);
          },
          "module"_a)
      .def(
          "extend",
          [](py::handle self, py::iterable modules) {
            for (py::handle m : modules)
              sequential_add(self, std::to_string(self.cast<nn::SequentialImpl&>().size()), m);
            return py::reinterpret_borrow<py::object>(self);
          },
          "sequential"_a);

  ModuleClass<nn::ModuleListImpl> list(scope, "ModuleList");
  g_module_list_type = list;
  list.def(py::init<>());
  def_init_with_self(list, [](const py::object& construct, py::handle self, py::args args, py::kwargs kwargs) {
    if (args.size() + kwargs.size() > 1)
      throw py::type_error("ModuleList() takes one argument, an iterable of modules");
    construct(self);
    py::object modules = !args.empty()                ? py::object(args[0])
                         : kwargs.contains("modules") ? py::object(kwargs["modules"])
                                                      : py::object(py::none());
    if (!modules.is_none())
      for (py::handle m : modules) module_list_add(self, m);
  });
  auto list_extend = [](py::handle self, py::iterable modules) {
    for (py::handle m : modules) module_list_add(self, m);
    return py::reinterpret_borrow<py::object>(self);
  };
  list.def("__len__", &nn::ModuleListImpl::size)
      .def("__iter__",
           [](const nn::ModuleListImpl& l) {
             py::list out;
             for (const auto& c : l) out.append(module_object(c));
             return py::iter(out);
           })
      .def(
          "__getitem__", [](const nn::ModuleListImpl& l, int64_t i) { return module_object(l.at(i)); }, "idx"_a)
      .def(
          "__getitem__",
          [](const nn::ModuleListImpl& l, const py::slice& index) {
            py::list items;
            slice_indices(index, l.size(),
                          [&](size_t i) { items.append(module_object(l.at(static_cast<int64_t>(i)))); });
            return g_module_list_type(items);
          },
          "idx"_a)
      .def(
          "append",
          [](py::handle self, py::handle module) {
            module_list_add(self, module);
            return py::reinterpret_borrow<py::object>(self);
          },
          "module"_a)
      .def("extend", list_extend, "modules"_a)
      .def("__iadd__", list_extend, "modules"_a);

  ModuleClass<nn::ModuleDictImpl> dict(scope, "ModuleDict");
  dict.def(py::init<>());
  def_init_with_self(dict, [](const py::object& construct, py::handle self, py::args args, py::kwargs kwargs) {
    if (args.size() + kwargs.size() > 1) throw py::type_error("ModuleDict() takes one argument, a mapping of modules");
    construct(self);
    py::object modules = !args.empty()                ? py::object(args[0])
                         : kwargs.contains("modules") ? py::object(kwargs["modules"])
                                                      : py::object(py::none());
    if (!modules.is_none()) module_dict_update(self, modules);
  });
  dict.def("__len__", &nn::ModuleDictImpl::size)
      .def("__contains__", &nn::ModuleDictImpl::contains, "key"_a)
      .def("__iter__", [](const nn::ModuleDictImpl& d) { return py::iter(py::cast(d.keys())); })
      .def(
          "__getitem__",
          [](const nn::ModuleDictImpl& d, const std::string& key) {
            if (!d.contains(key)) throw py::key_error(key);
            return module_object(d.at(key));
          },
          "key"_a)
      .def("__setitem__", &module_dict_set, "key"_a, "module"_a)
      .def("keys", &nn::ModuleDictImpl::keys)
      .def("values",
           [](const nn::ModuleDictImpl& d) {
             py::list out;
             for (const auto& [k, m] : d.items()) out.append(module_object(m));
             return out;
           })
      .def("items",
           [](const nn::ModuleDictImpl& d) {
             py::list out;
             for (const auto& [k, m] : d.items()) out.append(py::make_tuple(k, module_object(m)));
             return out;
           })
      .def("update", &module_dict_update, "modules"_a);
}

// ---------------------------------------------------------------------------
// Layers

void bind_layers(py::module_& scope) {
  ModuleClass<nn::LinearImpl> linear(scope, "Linear");
  linear.def(py::init<int64_t, int64_t, bool>(), "in_features"_a, "out_features"_a, "bias"_a = true)
      .def("forward", &nn::LinearImpl::forward, "input"_a, nogil)
      .def("reset_parameters", &nn::LinearImpl::reset_parameters, nogil)
      .def_readonly("in_features", &nn::LinearImpl::in_features)
      .def_readonly("out_features", &nn::LinearImpl::out_features)
      // Quantized inference: "int8" or "int4" (loom::nn::LinearImpl::quantize).
      .def("quantize", [](nn::LinearImpl& l, const std::string& scheme) { l.quantize(parse_quant_scheme(scheme)); },
           "scheme"_a, nogil)
      .def_property_readonly("quantization",
                             [](const nn::LinearImpl& l) -> std::optional<std::string> {
                               if (!l.quantization()) return std::nullopt;
                               return std::string(quant_scheme_name(*l.quantization()));
                             })
      .def_readonly("weight_scale", &nn::LinearImpl::weight_scale);
  def_parameter(linear, "weight", &nn::LinearImpl::weight);
  def_parameter(linear, "bias", &nn::LinearImpl::bias);

  // Identity(*args, **kwargs): PyTorch takes and ignores any arguments.
  ModuleClass<nn::IdentityImpl>(scope, "Identity")
      .def(py::init([](const py::args&, const py::kwargs&) { return std::make_shared<nn::IdentityImpl>(); }))
      .def("forward", &nn::IdentityImpl::forward, "input"_a);

  ModuleClass<nn::FlattenImpl>(scope, "Flatten")
      .def(py::init<int64_t, int64_t>(), "start_dim"_a = 1, "end_dim"_a = -1)
      .def("forward", &nn::FlattenImpl::forward, "input"_a, nogil)
      .def_readonly("start_dim", &nn::FlattenImpl::start_dim)
      .def_readonly("end_dim", &nn::FlattenImpl::end_dim);

  ModuleClass<nn::UnflattenImpl>(scope, "Unflatten")
      .def(py::init(
               [](int64_t dim, IntArrayRef sizes) { return std::make_shared<nn::UnflattenImpl>(dim, sizes.vec()); }),
           "dim"_a, "unflattened_size"_a)
      .def("forward", &nn::UnflattenImpl::forward, "input"_a, nogil)
      .def_readonly("dim", &nn::UnflattenImpl::dim)
      .def_property_readonly("unflattened_size",
                             [](const nn::UnflattenImpl& m) { return as_tuple(m.unflattened_size); });

  // ---- convolutions ----
  ModuleClass<nn::Conv1dImpl> conv1d(scope, "Conv1d");
  conv1d
      .def(py::init([](int64_t in, int64_t out, IntArrayRef kernel_size, IntArrayRef stride, py::handle padding,
                       IntArrayRef dilation, int64_t groups, bool bias, const std::string& padding_mode) {
             check_zeros_padding_mode("Conv1d", padding_mode);
             LOOM_CHECK(kernel_size.size() == 1, "Conv1d: kernel_size must have one value, got ",
                        shape_str(kernel_size.vec()));
             PaddingArg p = padding_arg(padding);
             nn::ConvOptions o{.stride = stride.vec(),
                               .padding = p.amounts,
                               .padding_mode = p.mode,
                               .dilation = dilation.vec(),
                               .groups = groups,
                               .bias = bias};
             return std::make_shared<nn::Conv1dImpl>(in, out, kernel_size[0], std::move(o));
           }),
           "in_channels"_a, "out_channels"_a, "kernel_size"_a, "stride"_a = 1, "padding"_a = 0, "dilation"_a = 1,
           "groups"_a = 1, "bias"_a = true, "padding_mode"_a = "zeros")
      .def("forward", &nn::Conv1dImpl::forward, "input"_a, nogil)
      .def("reset_parameters", &nn::Conv1dImpl::reset_parameters, nogil)
      .def_readonly("in_channels", &nn::Conv1dImpl::in_channels)
      .def_readonly("out_channels", &nn::Conv1dImpl::out_channels)
      .def_property_readonly("kernel_size", [](const nn::Conv1dImpl& m) { return as_tuple({m.kernel_size}); })
      .def_property_readonly("stride", [](const nn::Conv1dImpl& m) { return as_tuple(m.options.stride); })
      .def_property_readonly(
          "padding",
          [](const nn::Conv1dImpl& m) { return conv_padding_attr(m.options.padding, m.options.padding_mode); })
      .def_property_readonly("dilation", [](const nn::Conv1dImpl& m) { return as_tuple(m.options.dilation); })
      .def_property_readonly("groups", [](const nn::Conv1dImpl& m) { return m.options.groups; })
      .def_property_readonly("padding_mode", [](const nn::Conv1dImpl&) { return "zeros"; });
  def_parameter(conv1d, "weight", &nn::Conv1dImpl::weight);
  def_parameter(conv1d, "bias", &nn::Conv1dImpl::bias);

  ModuleClass<nn::Conv2dImpl> conv2d(scope, "Conv2d");
  conv2d
      .def(py::init([](int64_t in, int64_t out, IntArrayRef kernel_size, IntArrayRef stride, py::handle padding,
                       IntArrayRef dilation, int64_t groups, bool bias, const std::string& padding_mode) {
             check_zeros_padding_mode("Conv2d", padding_mode);
             PaddingArg p = padding_arg(padding);
             nn::ConvOptions o{.stride = stride.vec(),
                               .padding = p.amounts,
                               .padding_mode = p.mode,
                               .dilation = dilation.vec(),
                               .groups = groups,
                               .bias = bias};
             return std::make_shared<nn::Conv2dImpl>(in, out, kernel_size.vec(), std::move(o));
           }),
           "in_channels"_a, "out_channels"_a, "kernel_size"_a, "stride"_a = 1, "padding"_a = 0, "dilation"_a = 1,
           "groups"_a = 1, "bias"_a = true, "padding_mode"_a = "zeros")
      .def("forward", &nn::Conv2dImpl::forward, "input"_a, nogil)
      .def("reset_parameters", &nn::Conv2dImpl::reset_parameters, nogil)
      .def_readonly("in_channels", &nn::Conv2dImpl::in_channels)
      .def_readonly("out_channels", &nn::Conv2dImpl::out_channels)
      .def_property_readonly("kernel_size", [](const nn::Conv2dImpl& m) { return as_tuple(m.kernel_size); })
      .def_property_readonly("stride", [](const nn::Conv2dImpl& m) { return as_tuple(m.options.stride); })
      .def_property_readonly(
          "padding",
          [](const nn::Conv2dImpl& m) { return conv_padding_attr(m.options.padding, m.options.padding_mode); })
      .def_property_readonly("dilation", [](const nn::Conv2dImpl& m) { return as_tuple(m.options.dilation); })
      .def_property_readonly("groups", [](const nn::Conv2dImpl& m) { return m.options.groups; })
      .def_property_readonly("padding_mode", [](const nn::Conv2dImpl&) { return "zeros"; });
  def_parameter(conv2d, "weight", &nn::Conv2dImpl::weight);
  def_parameter(conv2d, "bias", &nn::Conv2dImpl::bias);

  ModuleClass<nn::ConvTranspose2dImpl> convt(scope, "ConvTranspose2d");
  convt
      .def(py::init([](int64_t in, int64_t out, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                       IntArrayRef output_padding, int64_t groups, bool bias, IntArrayRef dilation,
                       const std::string& padding_mode) {
             check_zeros_padding_mode("ConvTranspose2d", padding_mode);
             nn::ConvTransposeOptions o{.stride = stride.vec(),
                                        .padding = padding.vec(),
                                        .output_padding = output_padding.vec(),
                                        .groups = groups,
                                        .bias = bias,
                                        .dilation = dilation.vec()};
             return std::make_shared<nn::ConvTranspose2dImpl>(in, out, kernel_size.vec(), std::move(o));
           }),
           "in_channels"_a, "out_channels"_a, "kernel_size"_a, "stride"_a = 1, "padding"_a = 0, "output_padding"_a = 0,
           "groups"_a = 1, "bias"_a = true, "dilation"_a = 1, "padding_mode"_a = "zeros")
      .def("forward", &nn::ConvTranspose2dImpl::forward, "input"_a, nogil)
      .def("reset_parameters", &nn::ConvTranspose2dImpl::reset_parameters, nogil)
      .def_readonly("in_channels", &nn::ConvTranspose2dImpl::in_channels)
      .def_readonly("out_channels", &nn::ConvTranspose2dImpl::out_channels)
      .def_property_readonly("kernel_size", [](const nn::ConvTranspose2dImpl& m) { return as_tuple(m.kernel_size); })
      .def_property_readonly("stride", [](const nn::ConvTranspose2dImpl& m) { return as_tuple(m.options.stride); })
      .def_property_readonly("padding", [](const nn::ConvTranspose2dImpl& m) { return as_tuple(m.options.padding); })
      .def_property_readonly("output_padding",
                             [](const nn::ConvTranspose2dImpl& m) { return as_tuple(m.options.output_padding); })
      .def_property_readonly("dilation", [](const nn::ConvTranspose2dImpl& m) { return as_tuple(m.options.dilation); })
      .def_property_readonly("groups", [](const nn::ConvTranspose2dImpl& m) { return m.options.groups; })
      .def_property_readonly("padding_mode", [](const nn::ConvTranspose2dImpl&) { return "zeros"; });
  def_parameter(convt, "weight", &nn::ConvTranspose2dImpl::weight);
  def_parameter(convt, "bias", &nn::ConvTranspose2dImpl::bias);

  // ---- pooling ----
  // PyTorch's return_indices lives on the module; the core keeps it in the
  // call (forward_with_indices), so the binding's subclass carries the flag.
  struct MaxPool2d : nn::MaxPool2dImpl {
    MaxPool2d(std::vector<int64_t> kernel_size, nn::MaxPool2dOptions o, bool return_indices)
        : nn::MaxPool2dImpl(std::move(kernel_size), std::move(o)), return_indices(return_indices) {}
    bool return_indices;
  };
  ModuleClass<nn::MaxPool2dImpl>(scope, "MaxPool2d")
      .def(py::init([](IntArrayRef kernel_size, py::handle stride, IntArrayRef padding, IntArrayRef dilation,
                       bool return_indices, bool ceil_mode) -> std::shared_ptr<nn::MaxPool2dImpl> {
             nn::MaxPool2dOptions o{.stride = optional_ints_arg(stride),
                                    .padding = padding.vec(),
                                    .dilation = dilation.vec(),
                                    .ceil_mode = ceil_mode};
             return std::make_shared<MaxPool2d>(kernel_size.vec(), std::move(o), return_indices);
           }),
           "kernel_size"_a, "stride"_a = py::none(), "padding"_a = 0, "dilation"_a = 1, "return_indices"_a = false,
           "ceil_mode"_a = false)
      .def(
          "forward",
          [](nn::MaxPool2dImpl& m, const Tensor& input) -> py::object {
            auto* flagged = dynamic_cast<MaxPool2d*>(&m);
            if (flagged != nullptr && flagged->return_indices) {
              std::pair<Tensor, Tensor> r;
              {
                release_gil g;
                r = m.forward_with_indices(input);
              }
              return py::make_tuple(wrap(r.first), wrap(r.second));
            }
            Tensor r;
            {
              release_gil g;
              r = m.forward(input);
            }
            return wrap(r);
          },
          "input"_a)
      .def_property_readonly("kernel_size", [](const nn::MaxPool2dImpl& m) { return int_or_tuple(m.kernel_size); })
      .def_property_readonly("stride", [](const nn::MaxPool2dImpl& m) { return int_or_tuple(m.stride); })
      .def_property_readonly("padding", [](const nn::MaxPool2dImpl& m) { return int_or_tuple(m.padding); })
      .def_property_readonly("dilation", [](const nn::MaxPool2dImpl& m) { return int_or_tuple(m.dilation); })
      .def_readonly("ceil_mode", &nn::MaxPool2dImpl::ceil_mode)
      .def_property_readonly("return_indices", [](const nn::MaxPool2dImpl& m) {
        auto* flagged = dynamic_cast<const MaxPool2d*>(&m);
        return flagged != nullptr && flagged->return_indices;
      });

  ModuleClass<nn::AvgPool2dImpl>(scope, "AvgPool2d")
      .def(py::init([](IntArrayRef kernel_size, py::handle stride, IntArrayRef padding, bool ceil_mode,
                       bool count_include_pad, std::optional<int64_t> divisor_override) {
             nn::AvgPool2dOptions o{.stride = optional_ints_arg(stride),
                                    .padding = padding.vec(),
                                    .ceil_mode = ceil_mode,
                                    .count_include_pad = count_include_pad,
                                    .divisor_override = divisor_override};
             return std::make_shared<nn::AvgPool2dImpl>(kernel_size.vec(), std::move(o));
           }),
           "kernel_size"_a, "stride"_a = py::none(), "padding"_a = 0, "ceil_mode"_a = false,
           "count_include_pad"_a = true, "divisor_override"_a = py::none())
      .def("forward", &nn::AvgPool2dImpl::forward, "input"_a, nogil)
      .def_property_readonly("kernel_size", [](const nn::AvgPool2dImpl& m) { return int_or_tuple(m.kernel_size); })
      .def_property_readonly("stride", [](const nn::AvgPool2dImpl& m) { return int_or_tuple(m.stride); })
      .def_property_readonly("padding", [](const nn::AvgPool2dImpl& m) { return int_or_tuple(m.padding); })
      .def_readonly("ceil_mode", &nn::AvgPool2dImpl::ceil_mode)
      .def_readonly("count_include_pad", &nn::AvgPool2dImpl::count_include_pad)
      .def_readonly("divisor_override", &nn::AvgPool2dImpl::divisor_override);

  ModuleClass<nn::AdaptiveAvgPool2dImpl>(scope, "AdaptiveAvgPool2d")
      .def(py::init(
               [](IntArrayRef output_size) { return std::make_shared<nn::AdaptiveAvgPool2dImpl>(output_size.vec()); }),
           "output_size"_a)
      .def("forward", &nn::AdaptiveAvgPool2dImpl::forward, "input"_a, nogil)
      .def_property_readonly("output_size",
                             [](const nn::AdaptiveAvgPool2dImpl& m) { return int_or_tuple(m.output_size); });

  ModuleClass<nn::UpsampleImpl>(scope, "Upsample")
      .def(py::init([](py::handle size, py::handle scale_factor, const std::string& mode,
                       std::optional<bool> align_corners) {
             return std::make_shared<nn::UpsampleImpl>(nn::UpsampleOptions{.size = optional_ints_arg(size),
                                                                           .scale_factor = doubles_arg(scale_factor),
                                                                           .mode = mode,
                                                                           .align_corners = align_corners});
           }),
           "size"_a = py::none(), "scale_factor"_a = py::none(), "mode"_a = "nearest", "align_corners"_a = py::none())
      .def("forward", &nn::UpsampleImpl::forward, "input"_a, nogil)
      .def_property_readonly("size",
                             [](const nn::UpsampleImpl& m) -> py::object {
                               if (m.size.empty()) return py::none();
                               return int_or_tuple(m.size);
                             })
      .def_property_readonly("scale_factor",
                             [](const nn::UpsampleImpl& m) -> py::object {
                               if (m.scale_factor.empty()) return py::none();
                               if (m.scale_factor.size() == 1) return py::float_(m.scale_factor[0]);
                               return py::tuple(py::cast(m.scale_factor));
                             })
      .def_readonly("mode", &nn::UpsampleImpl::mode)
      .def_readonly("align_corners", &nn::UpsampleImpl::align_corners);

  // ---- normalization ----
  ModuleClass<nn::LayerNormImpl> layer_norm(scope, "LayerNorm");
  layer_norm
      .def(py::init([](IntArrayRef normalized_shape, double eps, bool elementwise_affine, bool bias) {
             return std::make_shared<nn::LayerNormImpl>(normalized_shape.vec(), eps, elementwise_affine, bias);
           }),
           "normalized_shape"_a, "eps"_a = 1e-5, "elementwise_affine"_a = true, "bias"_a = true)
      .def("forward", &nn::LayerNormImpl::forward, "input"_a, nogil)
      .def("reset_parameters", &nn::LayerNormImpl::reset_parameters, nogil)
      .def_property_readonly("normalized_shape",
                             [](const nn::LayerNormImpl& m) { return as_tuple(m.normalized_shape); })
      .def_readonly("eps", &nn::LayerNormImpl::eps)
      .def_readonly("elementwise_affine", &nn::LayerNormImpl::elementwise_affine);
  def_parameter(layer_norm, "weight", &nn::LayerNormImpl::weight);
  def_parameter(layer_norm, "bias", &nn::LayerNormImpl::bias);

  ModuleClass<nn::RMSNormImpl> rms_norm(scope, "RMSNorm");
  rms_norm
      .def(py::init([](IntArrayRef normalized_shape, std::optional<double> eps, bool elementwise_affine) {
             return std::make_shared<nn::RMSNormImpl>(normalized_shape.vec(), eps, elementwise_affine);
           }),
           "normalized_shape"_a, "eps"_a = py::none(), "elementwise_affine"_a = true)
      .def("forward", &nn::RMSNormImpl::forward, "input"_a, nogil)
      .def("reset_parameters", &nn::RMSNormImpl::reset_parameters, nogil)
      .def_property_readonly("normalized_shape", [](const nn::RMSNormImpl& m) { return as_tuple(m.normalized_shape); })
      .def_readonly("eps", &nn::RMSNormImpl::eps)
      .def_readonly("elementwise_affine", &nn::RMSNormImpl::elementwise_affine);
  def_parameter(rms_norm, "weight", &nn::RMSNormImpl::weight);

  // PyTorch's _BatchNorm: what BatchNorm1d, BatchNorm2d and SyncBatchNorm share.
  ModuleClass<nn::BatchNormImplBase> batch_norm(scope, "_BatchNorm");
  batch_norm.def("forward", &nn::BatchNormImplBase::forward, "input"_a, nogil)
      .def("reset_running_stats", &nn::BatchNormImplBase::reset_running_stats, nogil)
      .def("reset_parameters", &nn::BatchNormImplBase::reset_parameters, nogil)
      .def_readonly("num_features", &nn::BatchNormImplBase::num_features)
      .def_readonly("eps", &nn::BatchNormImplBase::eps)
      .def_readonly("momentum", &nn::BatchNormImplBase::momentum)
      .def_readonly("affine", &nn::BatchNormImplBase::affine)
      .def_readonly("track_running_stats", &nn::BatchNormImplBase::track_running_stats);
  def_parameter(batch_norm, "weight", &nn::BatchNormImplBase::weight);
  def_parameter(batch_norm, "bias", &nn::BatchNormImplBase::bias);
  def_buffer(batch_norm, "running_mean", &nn::BatchNormImplBase::running_mean);
  def_buffer(batch_norm, "running_var", &nn::BatchNormImplBase::running_var);
  def_buffer(batch_norm, "num_batches_tracked", &nn::BatchNormImplBase::num_batches_tracked);
  py::class_<nn::BatchNorm1dImpl, nn::BatchNormImplBase, std::shared_ptr<nn::BatchNorm1dImpl>>(scope, "BatchNorm1d")
      .def(py::init<int64_t, double, std::optional<double>, bool, bool>(), "num_features"_a, "eps"_a = 1e-5,
           "momentum"_a = 0.1, "affine"_a = true, "track_running_stats"_a = true);
  py::class_<nn::BatchNorm2dImpl, nn::BatchNormImplBase, std::shared_ptr<nn::BatchNorm2dImpl>>(scope, "BatchNorm2d")
      .def(py::init<int64_t, double, std::optional<double>, bool, bool>(), "num_features"_a, "eps"_a = 1e-5,
           "momentum"_a = 0.1, "affine"_a = true, "track_running_stats"_a = true);
  py::class_<nn::SyncBatchNormImpl, nn::BatchNormImplBase, std::shared_ptr<nn::SyncBatchNormImpl>>(scope,
                                                                                                   "SyncBatchNorm")
      .def(py::init([](int64_t num_features, double eps, std::optional<double> momentum, bool affine,
                       bool track_running_stats, py::handle process_group) {
             std::shared_ptr<distributed::ProcessGroup> group;
             if (!process_group.is_none()) group = process_group.cast<std::shared_ptr<distributed::ProcessGroup>>();
             return std::make_shared<nn::SyncBatchNormImpl>(num_features, eps, momentum, affine, track_running_stats,
                                                            std::move(group));
           }),
           "num_features"_a, "eps"_a = 1e-5, "momentum"_a = 0.1, "affine"_a = true, "track_running_stats"_a = true,
           "process_group"_a = py::none())
      .def("forward", &nn::SyncBatchNormImpl::forward, "input"_a, nogil)
      .def_static(
          "convert_sync_batchnorm",
          [](py::handle module, py::handle process_group) {
            std::shared_ptr<distributed::ProcessGroup> group;
            if (!process_group.is_none()) group = process_group.cast<std::shared_ptr<distributed::ProcessGroup>>();
            module_arg(module, "convert_sync_batchnorm");
            return convert_sync_batchnorm(module, group);
          },
          "module"_a, "process_group"_a = py::none());

  // ---- dropout, embedding ----
  // `inplace` is PyTorch's memory hint; loom's result is a new tensor, the same values.
  ModuleClass<nn::DropoutImpl>(scope, "Dropout")
      .def(py::init([](double p, bool) { return std::make_shared<nn::DropoutImpl>(p); }), "p"_a = 0.5,
           "inplace"_a = false)
      .def("forward", &nn::DropoutImpl::forward, "input"_a, nogil)
      .def_readonly("p", &nn::DropoutImpl::p);
  ModuleClass<nn::Dropout2dImpl>(scope, "Dropout2d")
      .def(py::init([](double p, bool) { return std::make_shared<nn::Dropout2dImpl>(p); }), "p"_a = 0.5,
           "inplace"_a = false)
      .def("forward", &nn::Dropout2dImpl::forward, "input"_a, nogil)
      .def_readonly("p", &nn::Dropout2dImpl::p);

  ModuleClass<nn::EmbeddingImpl> embedding(scope, "Embedding");
  embedding
      .def(py::init<int64_t, int64_t, std::optional<int64_t>>(), "num_embeddings"_a, "embedding_dim"_a,
           "padding_idx"_a = py::none())
      .def("forward", &nn::EmbeddingImpl::forward, "input"_a, nogil)
      .def("reset_parameters", &nn::EmbeddingImpl::reset_parameters, nogil)
      .def_static(
          "from_pretrained",
          [](const Tensor& embeddings, bool freeze, std::optional<int64_t> padding_idx) {
            LOOM_CHECK(embeddings.dim() == 2, "Embedding.from_pretrained: embeddings must be 2-dimensional, got shape ",
                       shape_str(embeddings.sizes()));
            std::shared_ptr<nn::EmbeddingImpl> e;
            {
              release_gil g;
              e = std::make_shared<nn::EmbeddingImpl>(embeddings.size(0), embeddings.size(1), padding_idx);
              NoGradGuard ng;
              e->weight.copy_(embeddings);
            }
            e->weight.requires_grad_(!freeze);
            py::object out = module_object(e);
            adopt(out);
            return out;
          },
          "embeddings"_a, "freeze"_a = true, "padding_idx"_a = py::none())
      .def_readonly("num_embeddings", &nn::EmbeddingImpl::num_embeddings)
      .def_readonly("embedding_dim", &nn::EmbeddingImpl::embedding_dim)
      .def_readonly("padding_idx", &nn::EmbeddingImpl::padding_idx);
  def_parameter(embedding, "weight", &nn::EmbeddingImpl::weight);

  // ---- activations ----
  ModuleClass<nn::ReLUImpl>(scope, "ReLU")
      .def(py::init([](bool) { return std::make_shared<nn::ReLUImpl>(); }), "inplace"_a = false)
      .def("forward", &nn::ReLUImpl::forward, "input"_a, nogil);
  ModuleClass<nn::LeakyReLUImpl>(scope, "LeakyReLU")
      .def(py::init([](double slope, bool) { return std::make_shared<nn::LeakyReLUImpl>(slope); }),
           "negative_slope"_a = 0.01, "inplace"_a = false)
      .def("forward", &nn::LeakyReLUImpl::forward, "input"_a, nogil)
      .def_readonly("negative_slope", &nn::LeakyReLUImpl::negative_slope);
  ModuleClass<nn::GELUImpl>(scope, "GELU")
      .def(py::init<std::string>(), "approximate"_a = "none")
      .def("forward", &nn::GELUImpl::forward, "input"_a, nogil)
      .def_readonly("approximate", &nn::GELUImpl::approximate);
  ModuleClass<nn::SiLUImpl>(scope, "SiLU")
      .def(py::init([](bool) { return std::make_shared<nn::SiLUImpl>(); }), "inplace"_a = false)
      .def("forward", &nn::SiLUImpl::forward, "input"_a, nogil);
  ModuleClass<nn::TanhImpl>(scope, "Tanh").def(py::init<>()).def("forward", &nn::TanhImpl::forward, "input"_a, nogil);
  ModuleClass<nn::SigmoidImpl>(scope, "Sigmoid")
      .def(py::init<>())
      .def("forward", &nn::SigmoidImpl::forward, "input"_a, nogil);
  ModuleClass<nn::SoftmaxImpl>(scope, "Softmax")
      .def(py::init<int64_t>(), "dim"_a)
      .def("forward", &nn::SoftmaxImpl::forward, "input"_a, nogil)
      .def_readonly("dim", &nn::SoftmaxImpl::dim);
  ModuleClass<nn::LogSoftmaxImpl>(scope, "LogSoftmax")
      .def(py::init<int64_t>(), "dim"_a)
      .def("forward", &nn::LogSoftmaxImpl::forward, "input"_a, nogil)
      .def_readonly("dim", &nn::LogSoftmaxImpl::dim);
}

// ---------------------------------------------------------------------------
// Losses: forward(input, target); the keyword arguments after weight are
// keyword-only (PyTorch's positional size_average / reduce are deprecated and
// not taken).

template <typename Impl>
ModuleClass<Impl> def_loss(py::module_& scope, const char* name) {
  ModuleClass<Impl> cls(scope, name);
  cls.def("forward", py::overload_cast<const Tensor&, const Tensor&>(&Impl::forward), "input"_a, "target"_a, nogil)
      .def_property_readonly("reduction", [](const Impl& m) { return m.options.reduction; });
  return cls;
}

void bind_losses(py::module_& scope) {
  def_loss<nn::CrossEntropyLossImpl>(scope, "CrossEntropyLoss")
      .def(py::init(
               [](const Tensor& weight, int64_t ignore_index, const std::string& reduction, double label_smoothing) {
                 return std::make_shared<nn::CrossEntropyLossImpl>(
                     F::CrossEntropyOptions{.weight = weight,
                                            .ignore_index = ignore_index,
                                            .reduction = reduction,
                                            .label_smoothing = label_smoothing});
               }),
           "weight"_a = py::none(), py::kw_only(), "ignore_index"_a = -100, "reduction"_a = "mean",
           "label_smoothing"_a = 0.0)
      .def_property_readonly("weight", [](const nn::CrossEntropyLossImpl& m) { return m.options.weight; })
      .def_property_readonly("ignore_index", [](const nn::CrossEntropyLossImpl& m) { return m.options.ignore_index; })
      .def_property_readonly("label_smoothing",
                             [](const nn::CrossEntropyLossImpl& m) { return m.options.label_smoothing; });
  def_loss<nn::NLLLossImpl>(scope, "NLLLoss")
      .def(py::init([](const Tensor& weight, int64_t ignore_index, const std::string& reduction) {
             return std::make_shared<nn::NLLLossImpl>(
                 F::NLLLossOptions{.weight = weight, .ignore_index = ignore_index, .reduction = reduction});
           }),
           "weight"_a = py::none(), py::kw_only(), "ignore_index"_a = -100, "reduction"_a = "mean")
      .def_property_readonly("weight", [](const nn::NLLLossImpl& m) { return m.options.weight; })
      .def_property_readonly("ignore_index", [](const nn::NLLLossImpl& m) { return m.options.ignore_index; });
  def_loss<nn::MSELossImpl>(scope, "MSELoss")
      .def(py::init([](const std::string& reduction) {
             return std::make_shared<nn::MSELossImpl>(F::MSELossOptions{.reduction = reduction});
           }),
           py::kw_only(), "reduction"_a = "mean");
  def_loss<nn::L1LossImpl>(scope, "L1Loss")
      .def(py::init([](const std::string& reduction) {
             return std::make_shared<nn::L1LossImpl>(F::L1LossOptions{.reduction = reduction});
           }),
           py::kw_only(), "reduction"_a = "mean");
  def_loss<nn::SmoothL1LossImpl>(scope, "SmoothL1Loss")
      .def(
          py::init([](const std::string& reduction, double beta) {
            return std::make_shared<nn::SmoothL1LossImpl>(F::SmoothL1LossOptions{.reduction = reduction, .beta = beta});
          }),
          py::kw_only(), "reduction"_a = "mean", "beta"_a = 1.0)
      .def_property_readonly("beta", [](const nn::SmoothL1LossImpl& m) { return m.options.beta; });
  def_loss<nn::BCELossImpl>(scope, "BCELoss")
      .def(py::init([](const Tensor& weight, const std::string& reduction) {
             return std::make_shared<nn::BCELossImpl>(F::BCELossOptions{.weight = weight, .reduction = reduction});
           }),
           "weight"_a = py::none(), py::kw_only(), "reduction"_a = "mean")
      .def_property_readonly("weight", [](const nn::BCELossImpl& m) { return m.options.weight; });
  def_loss<nn::BCEWithLogitsLossImpl>(scope, "BCEWithLogitsLoss")
      .def(py::init([](const Tensor& weight, const std::string& reduction, const Tensor& pos_weight) {
             return std::make_shared<nn::BCEWithLogitsLossImpl>(
                 F::BCEWithLogitsLossOptions{.weight = weight, .reduction = reduction, .pos_weight = pos_weight});
           }),
           "weight"_a = py::none(), py::kw_only(), "reduction"_a = "mean", "pos_weight"_a = py::none())
      .def_property_readonly("weight", [](const nn::BCEWithLogitsLossImpl& m) { return m.options.weight; })
      .def_property_readonly("pos_weight", [](const nn::BCEWithLogitsLossImpl& m) { return m.options.pos_weight; });
  def_loss<nn::KLDivLossImpl>(scope, "KLDivLoss")
      .def(py::init([](const std::string& reduction, bool log_target) {
             return std::make_shared<nn::KLDivLossImpl>(
                 F::KLDivLossOptions{.reduction = reduction, .log_target = log_target});
           }),
           py::kw_only(), "reduction"_a = "mean", "log_target"_a = false)
      .def_property_readonly("log_target", [](const nn::KLDivLossImpl& m) { return m.options.log_target; });
}

// ---------------------------------------------------------------------------
// Recurrent layers and transformers

// PyTorch's RNN, LSTM and GRU arguments; RNN's nonlinearity comes fourth.
nn::RNNOptions rnn_options(int64_t num_layers, std::string nonlinearity, bool bias, bool batch_first, double dropout,
                           bool bidirectional) {
  return {.num_layers = num_layers,
          .nonlinearity = std::move(nonlinearity),
          .bias = bias,
          .batch_first = batch_first,
          .dropout = dropout,
          .bidirectional = bidirectional};
}

void bind_recurrent(py::module_& scope) {
  ModuleClass<nn::RNNBaseImpl>(scope, "RNNBase")
      .def("reset_parameters", &nn::RNNBaseImpl::reset_parameters, nogil)
      .def_readonly("input_size", &nn::RNNBaseImpl::input_size)
      .def_readonly("hidden_size", &nn::RNNBaseImpl::hidden_size)
      .def_property_readonly("num_layers", [](const nn::RNNBaseImpl& m) { return m.options.num_layers; })
      .def_property_readonly("bias", [](const nn::RNNBaseImpl& m) { return m.options.bias; })
      .def_property_readonly("batch_first", [](const nn::RNNBaseImpl& m) { return m.options.batch_first; })
      .def_property_readonly("dropout", [](const nn::RNNBaseImpl& m) { return m.options.dropout; })
      .def_property_readonly("bidirectional", [](const nn::RNNBaseImpl& m) { return m.options.bidirectional; })
      .def_property_readonly("all_weights", [](const nn::RNNBaseImpl& m) {
        py::list out;
        for (const auto& layer : m.all_weights) {
          py::list ws;
          for (const Tensor& w : layer)
            if (w.defined()) ws.append(as_parameter(w));
          out.append(ws);
        }
        return out;
      });
  py::class_<nn::RNNImpl, nn::RNNBaseImpl, std::shared_ptr<nn::RNNImpl>>(scope, "RNN")
      .def(py::init([](int64_t input_size, int64_t hidden_size, int64_t num_layers, const std::string& nonlinearity,
                       bool bias, bool batch_first, double dropout, bool bidirectional) {
             return std::make_shared<nn::RNNImpl>(
                 input_size, hidden_size,
                 rnn_options(num_layers, nonlinearity, bias, batch_first, dropout, bidirectional));
           }),
           "input_size"_a, "hidden_size"_a, "num_layers"_a = 1, "nonlinearity"_a = "tanh", "bias"_a = true,
           "batch_first"_a = false, "dropout"_a = 0.0, "bidirectional"_a = false)
      .def("forward", &nn::RNNImpl::forward, "input"_a, "hx"_a = py::none(), nogil)
      .def_property_readonly("nonlinearity", [](const nn::RNNImpl& m) { return m.options.nonlinearity; });
  py::class_<nn::LSTMImpl, nn::RNNBaseImpl, std::shared_ptr<nn::LSTMImpl>>(scope, "LSTM")
      .def(py::init([](int64_t input_size, int64_t hidden_size, int64_t num_layers, bool bias, bool batch_first,
                       double dropout, bool bidirectional) {
             return std::make_shared<nn::LSTMImpl>(
                 input_size, hidden_size, rnn_options(num_layers, "tanh", bias, batch_first, dropout, bidirectional));
           }),
           "input_size"_a, "hidden_size"_a, "num_layers"_a = 1, "bias"_a = true, "batch_first"_a = false,
           "dropout"_a = 0.0, "bidirectional"_a = false)
      .def(
          "forward",
          [](nn::LSTMImpl& m, const Tensor& input, std::optional<nn::LSTMState> hx) {
            return m.forward(input, hx.value_or(nn::LSTMState{}));
          },
          "input"_a, "hx"_a = py::none(), nogil);
  py::class_<nn::GRUImpl, nn::RNNBaseImpl, std::shared_ptr<nn::GRUImpl>>(scope, "GRU")
      .def(py::init([](int64_t input_size, int64_t hidden_size, int64_t num_layers, bool bias, bool batch_first,
                       double dropout, bool bidirectional) {
             return std::make_shared<nn::GRUImpl>(
                 input_size, hidden_size, rnn_options(num_layers, "tanh", bias, batch_first, dropout, bidirectional));
           }),
           "input_size"_a, "hidden_size"_a, "num_layers"_a = 1, "bias"_a = true, "batch_first"_a = false,
           "dropout"_a = 0.0, "bidirectional"_a = false)
      .def("forward", &nn::GRUImpl::forward, "input"_a, "hx"_a = py::none(), nogil);

  // ---- cells ----
  ModuleClass<nn::RNNCellImpl> rnn_cell(scope, "RNNCell");
  rnn_cell
      .def(py::init([](int64_t input_size, int64_t hidden_size, bool bias, const std::string& nonlinearity) {
             return std::make_shared<nn::RNNCellImpl>(input_size, hidden_size,
                                                      nn::RNNCellOptions{.bias = bias, .nonlinearity = nonlinearity});
           }),
           "input_size"_a, "hidden_size"_a, "bias"_a = true, "nonlinearity"_a = "tanh")
      .def("forward", py::overload_cast<const Tensor&, const Tensor&>(&nn::RNNCellImpl::forward), "input"_a,
           "hx"_a = py::none(), nogil)
      .def("reset_parameters", &nn::RNNCellImpl::reset_parameters, nogil)
      .def_readonly("input_size", &nn::RNNCellImpl::input_size)
      .def_readonly("hidden_size", &nn::RNNCellImpl::hidden_size)
      .def_property_readonly("bias", [](const nn::RNNCellImpl& m) { return m.options.bias; })
      .def_property_readonly("nonlinearity", [](const nn::RNNCellImpl& m) { return m.options.nonlinearity; });
  def_parameter(rnn_cell, "weight_ih", &nn::RNNCellImpl::weight_ih);
  def_parameter(rnn_cell, "weight_hh", &nn::RNNCellImpl::weight_hh);
  def_parameter(rnn_cell, "bias_ih", &nn::RNNCellImpl::bias_ih);
  def_parameter(rnn_cell, "bias_hh", &nn::RNNCellImpl::bias_hh);

  ModuleClass<nn::LSTMCellImpl> lstm_cell(scope, "LSTMCell");
  lstm_cell.def(py::init<int64_t, int64_t, bool>(), "input_size"_a, "hidden_size"_a, "bias"_a = true)
      .def(
          "forward",
          [](nn::LSTMCellImpl& m, const Tensor& input, std::optional<nn::LSTMState> hx) {
            return m.forward(input, hx.value_or(nn::LSTMState{}));
          },
          "input"_a, "hx"_a = py::none(), nogil)
      .def("reset_parameters", &nn::LSTMCellImpl::reset_parameters, nogil)
      .def_readonly("input_size", &nn::LSTMCellImpl::input_size)
      .def_readonly("hidden_size", &nn::LSTMCellImpl::hidden_size)
      .def_property_readonly("bias", [](const nn::LSTMCellImpl& m) { return m.bias_ih.defined(); });
  def_parameter(lstm_cell, "weight_ih", &nn::LSTMCellImpl::weight_ih);
  def_parameter(lstm_cell, "weight_hh", &nn::LSTMCellImpl::weight_hh);
  def_parameter(lstm_cell, "bias_ih", &nn::LSTMCellImpl::bias_ih);
  def_parameter(lstm_cell, "bias_hh", &nn::LSTMCellImpl::bias_hh);

  ModuleClass<nn::GRUCellImpl> gru_cell(scope, "GRUCell");
  gru_cell.def(py::init<int64_t, int64_t, bool>(), "input_size"_a, "hidden_size"_a, "bias"_a = true)
      .def("forward", py::overload_cast<const Tensor&, const Tensor&>(&nn::GRUCellImpl::forward), "input"_a,
           "hx"_a = py::none(), nogil)
      .def("reset_parameters", &nn::GRUCellImpl::reset_parameters, nogil)
      .def_readonly("input_size", &nn::GRUCellImpl::input_size)
      .def_readonly("hidden_size", &nn::GRUCellImpl::hidden_size)
      .def_property_readonly("bias", [](const nn::GRUCellImpl& m) { return m.bias_ih.defined(); });
  def_parameter(gru_cell, "weight_ih", &nn::GRUCellImpl::weight_ih);
  def_parameter(gru_cell, "weight_hh", &nn::GRUCellImpl::weight_hh);
  def_parameter(gru_cell, "bias_ih", &nn::GRUCellImpl::bias_ih);
  def_parameter(gru_cell, "bias_hh", &nn::GRUCellImpl::bias_hh);

  // ---- attention and the transformer encoder ----
  // add_bias_kv and add_zero_attn are not in the core, so kdim, vdim and
  // batch_first (after them in PyTorch) are keyword-only.
  ModuleClass<nn::MultiheadAttentionImpl> mha(scope, "MultiheadAttention");
  mha.def(py::init([](int64_t embed_dim, int64_t num_heads, double dropout, bool bias, std::optional<int64_t> kdim,
                      std::optional<int64_t> vdim, bool batch_first) {
            return std::make_shared<nn::MultiheadAttentionImpl>(
                embed_dim, num_heads,
                nn::MultiheadAttentionOptions{
                    .dropout = dropout, .bias = bias, .kdim = kdim, .vdim = vdim, .batch_first = batch_first});
          }),
          "embed_dim"_a, "num_heads"_a, "dropout"_a = 0.0, "bias"_a = true, py::kw_only(), "kdim"_a = py::none(),
          "vdim"_a = py::none(), "batch_first"_a = false)
      .def("forward", &nn::MultiheadAttentionImpl::forward, "query"_a, "key"_a, "value"_a,
           "key_padding_mask"_a = py::none(), "need_weights"_a = true, "attn_mask"_a = py::none(),
           "average_attn_weights"_a = true, "is_causal"_a = false, nogil)
      .def("_reset_parameters", &nn::MultiheadAttentionImpl::reset_parameters, nogil)
      .def_readonly("embed_dim", &nn::MultiheadAttentionImpl::embed_dim)
      .def_readonly("num_heads", &nn::MultiheadAttentionImpl::num_heads)
      .def_readonly("head_dim", &nn::MultiheadAttentionImpl::head_dim)
      .def_readonly("kdim", &nn::MultiheadAttentionImpl::kdim)
      .def_readonly("vdim", &nn::MultiheadAttentionImpl::vdim)
      .def_property_readonly("dropout", [](const nn::MultiheadAttentionImpl& m) { return m.options.dropout; })
      .def_property_readonly("batch_first", [](const nn::MultiheadAttentionImpl& m) { return m.options.batch_first; });
  def_parameter(mha, "in_proj_weight", &nn::MultiheadAttentionImpl::in_proj_weight);
  def_parameter(mha, "q_proj_weight", &nn::MultiheadAttentionImpl::q_proj_weight);
  def_parameter(mha, "k_proj_weight", &nn::MultiheadAttentionImpl::k_proj_weight);
  def_parameter(mha, "v_proj_weight", &nn::MultiheadAttentionImpl::v_proj_weight);
  def_parameter(mha, "in_proj_bias", &nn::MultiheadAttentionImpl::in_proj_bias);

  ModuleClass<nn::TransformerEncoderLayerImpl>(scope, "TransformerEncoderLayer")
      .def(py::init([](int64_t d_model, int64_t nhead, int64_t dim_feedforward, double dropout,
                       const std::string& activation, double layer_norm_eps, bool batch_first, bool norm_first,
                       bool bias) {
             return std::make_shared<nn::TransformerEncoderLayerImpl>(
                 d_model, nhead,
                 nn::TransformerEncoderLayerOptions{.dim_feedforward = dim_feedforward,
                                                    .dropout = dropout,
                                                    .activation = activation,
                                                    .layer_norm_eps = layer_norm_eps,
                                                    .batch_first = batch_first,
                                                    .norm_first = norm_first,
                                                    .bias = bias});
           }),
           "d_model"_a, "nhead"_a, "dim_feedforward"_a = 2048, "dropout"_a = 0.1, "activation"_a = "relu",
           "layer_norm_eps"_a = 1e-5, "batch_first"_a = false, "norm_first"_a = false, "bias"_a = true)
      .def("forward",
           py::overload_cast<const Tensor&, const Tensor&, const Tensor&, bool>(
               &nn::TransformerEncoderLayerImpl::forward),
           "src"_a, "src_mask"_a = py::none(), "src_key_padding_mask"_a = py::none(), "is_causal"_a = false, nogil)
      .def_readonly("d_model", &nn::TransformerEncoderLayerImpl::d_model)
      .def_readonly("nhead", &nn::TransformerEncoderLayerImpl::nhead)
      .def_property_readonly("norm_first",
                             [](const nn::TransformerEncoderLayerImpl& m) { return m.options.norm_first; })
      .def_property_readonly("batch_first",
                             [](const nn::TransformerEncoderLayerImpl& m) { return m.options.batch_first; });

  // norm may be a Python module: keep_alive holds it with the encoder.
  ModuleClass<nn::TransformerEncoderImpl>(scope, "TransformerEncoder")
      .def(py::init([](const std::shared_ptr<nn::TransformerEncoderLayerImpl>& encoder_layer, int64_t num_layers,
                       py::handle norm) {
             LOOM_CHECK(encoder_layer != nullptr,
                        "TransformerEncoder: encoder_layer must be a TransformerEncoderLayer");
             std::shared_ptr<Module> norm_module;
             if (!norm.is_none()) {
               norm_module = module_arg(norm, "TransformerEncoder");
               check_forward_runs_in_cpp(norm, "TransformerEncoder");
             }
             return std::make_shared<nn::TransformerEncoderImpl>(nn::TransformerEncoderLayer(encoder_layer), num_layers,
                                                                 norm_module);
           }),
           "encoder_layer"_a, "num_layers"_a, "norm"_a = py::none(), py::keep_alive<1, 4>())
      .def(
          "forward",
          [](nn::TransformerEncoderImpl& m, const Tensor& src, const Tensor& mask, const Tensor& src_key_padding_mask,
             std::optional<bool> is_causal) {
            return m.forward(src, mask, src_key_padding_mask, is_causal.value_or(false));
          },
          "src"_a, "mask"_a = py::none(), "src_key_padding_mask"_a = py::none(), "is_causal"_a = py::none(), nogil)
      .def_readonly("num_layers", &nn::TransformerEncoderImpl::num_layers)
      .def_property_readonly("norm", [](const nn::TransformerEncoderImpl& m) -> py::object {
        if (!m.norm) return py::none();
        return module_object(m.norm);
      });
}

// ---------------------------------------------------------------------------
// nn.functional: nn::functional where the core has it, else the loom op under
// torch.nn.functional's signature. `inplace` is accepted as by the modules.

void bind_functional(py::module_& f) {
  f.def("linear", &F::linear, "input"_a, "weight"_a, "bias"_a = py::none(), nogil)
      .def(
          "dropout", [](const Tensor& input, double p, bool training, bool) { return F::dropout(input, p, training); },
          "input"_a, "p"_a = 0.5, "training"_a = true, "inplace"_a = false, nogil)
      .def(
          "dropout2d",
          [](const Tensor& input, double p, bool training, bool) { return F::dropout2d(input, p, training); },
          "input"_a, "p"_a = 0.5, "training"_a = true, "inplace"_a = false, nogil)
      .def(
          "interpolate",
          [](const Tensor& input, py::handle size, py::handle scale_factor, const std::string& mode,
             std::optional<bool> align_corners) {
            F::InterpolateOptions o{.size = optional_ints_arg(size),
                                    .scale_factor = doubles_arg(scale_factor),
                                    .mode = mode,
                                    .align_corners = align_corners};
            release_gil g;
            return F::interpolate(input, o);
          },
          "input"_a, "size"_a = py::none(), "scale_factor"_a = py::none(), "mode"_a = "nearest",
          "align_corners"_a = py::none())
      .def("layer_norm", &F::layer_norm, "input"_a, "normalized_shape"_a, "weight"_a = py::none(),
           "bias"_a = py::none(), "eps"_a = 1e-5, nogil)
      .def("rms_norm", &F::rms_norm, "input"_a, "normalized_shape"_a, "weight"_a = py::none(), "eps"_a = py::none(),
           nogil)
      .def("batch_norm", &F::batch_norm, "input"_a, "running_mean"_a, "running_var"_a, "weight"_a = py::none(),
           "bias"_a = py::none(), "training"_a = false, "momentum"_a = 0.1, "eps"_a = 1e-5, nogil)
      .def("embedding", &F::embedding, "input"_a, "weight"_a, "padding_idx"_a = py::none(), nogil)
      .def("one_hot", &loom::one_hot, "tensor"_a, "num_classes"_a = -1, nogil)
      .def(
          "pad",
          [](const Tensor& input, IntArrayRef pad, const std::string& mode, std::optional<Scalar> value) {
            LOOM_CHECK(mode == "constant", "pad: mode must be 'constant' (loom pads with a constant), got '", mode,
                       "'");
            return loom::pad(input, pad, value.value_or(Scalar(0)));
          },
          "input"_a, "pad"_a, "mode"_a = "constant", "value"_a = py::none(), nogil)
      .def(
          "scaled_dot_product_attention",
          [](const Tensor& query, const Tensor& key, const Tensor& value, const Tensor& attn_mask, double dropout_p,
             bool is_causal, std::optional<double> scale) {
            return loom::scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale);
          },
          "query"_a, "key"_a, "value"_a, "attn_mask"_a = py::none(), "dropout_p"_a = 0.0, "is_causal"_a = false,
          "scale"_a = py::none(), nogil);

  // ---- convolution and pooling (the loom ops) ----
  f.def(
       "conv1d",
       [](const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, py::handle padding,
          IntArrayRef dilation, int64_t groups) {
         PaddingArg p = padding_arg(padding);
         release_gil g;
         if (!p.mode.empty())
           return loom::conv1d(input, weight, bias, stride, conv_padding("conv1d", p.mode), dilation, groups);
         return loom::conv1d(input, weight, bias, stride, p.amounts, dilation, groups);
       },
       "input"_a, "weight"_a, "bias"_a = py::none(), "stride"_a = 1, "padding"_a = 0, "dilation"_a = 1, "groups"_a = 1)
      .def(
          "conv2d",
          [](const Tensor& input, const Tensor& weight, const Tensor& bias, IntArrayRef stride, py::handle padding,
             IntArrayRef dilation, int64_t groups) {
            PaddingArg p = padding_arg(padding);
            release_gil g;
            if (!p.mode.empty())
              return loom::conv2d(input, weight, bias, stride, conv_padding("conv2d", p.mode), dilation, groups);
            return loom::conv2d(input, weight, bias, stride, p.amounts, dilation, groups);
          },
          "input"_a, "weight"_a, "bias"_a = py::none(), "stride"_a = 1, "padding"_a = 0, "dilation"_a = 1,
          "groups"_a = 1)
      .def("conv_transpose2d", &loom::conv_transpose2d, "input"_a, "weight"_a, "bias"_a = py::none(), "stride"_a = 1,
           "padding"_a = 0, "output_padding"_a = 0, "groups"_a = 1, "dilation"_a = 1, nogil)
      .def(
          "max_pool2d",
          [](const Tensor& input, IntArrayRef kernel_size, py::handle stride, IntArrayRef padding, IntArrayRef dilation,
             bool ceil_mode, bool return_indices) -> py::object {
            std::vector<int64_t> s = optional_ints_arg(stride);
            if (return_indices) {
              std::pair<Tensor, Tensor> r;
              {
                release_gil g;
                r = loom::max_pool2d_with_indices(input, kernel_size, s, padding, dilation, ceil_mode);
              }
              return py::make_tuple(wrap(r.first), wrap(r.second));
            }
            Tensor r;
            {
              release_gil g;
              r = loom::max_pool2d(input, kernel_size, s, padding, dilation, ceil_mode);
            }
            return wrap(r);
          },
          "input"_a, "kernel_size"_a, "stride"_a = py::none(), "padding"_a = 0, "dilation"_a = 1, "ceil_mode"_a = false,
          "return_indices"_a = false)
      .def(
          "avg_pool2d",
          [](const Tensor& input, IntArrayRef kernel_size, py::handle stride, IntArrayRef padding, bool ceil_mode,
             bool count_include_pad, std::optional<int64_t> divisor_override) {
            std::vector<int64_t> s = optional_ints_arg(stride);
            release_gil g;
            return loom::avg_pool2d(input, kernel_size, s, padding, ceil_mode, count_include_pad, divisor_override);
          },
          "input"_a, "kernel_size"_a, "stride"_a = py::none(), "padding"_a = 0, "ceil_mode"_a = false,
          "count_include_pad"_a = true, "divisor_override"_a = py::none())
      .def("adaptive_avg_pool2d", &loom::adaptive_avg_pool2d, "input"_a, "output_size"_a, nogil);

  // ---- activations ----
  f.def(
       "relu", [](const Tensor& x, bool) { return F::relu(x); }, "input"_a, "inplace"_a = false, nogil)
      .def(
          "leaky_relu", [](const Tensor& x, double slope, bool) { return F::leaky_relu(x, slope); }, "input"_a,
          "negative_slope"_a = 0.01, "inplace"_a = false, nogil)
      .def(
          "elu", [](const Tensor& x, double alpha, bool) { return F::elu(x, alpha); }, "input"_a, "alpha"_a = 1.0,
          "inplace"_a = false, nogil)
      .def("gelu", &F::gelu, "input"_a, "approximate"_a = "none", nogil)
      .def(
          "silu", [](const Tensor& x, bool) { return F::silu(x); }, "input"_a, "inplace"_a = false, nogil)
      .def("softplus", &F::softplus, "input"_a, "beta"_a = 1.0, "threshold"_a = 20.0, nogil)
      .def("tanh", &F::tanh, "input"_a, nogil)
      .def("sigmoid", &F::sigmoid, "input"_a, nogil)
      // dtype: the input is cast to it first, as PyTorch's.
      .def(
          "softmax",
          [](const Tensor& x, int64_t dim, std::optional<DType> dtype) {
            return F::softmax(dtype ? x.to(*dtype) : x, dim);
          },
          "input"_a, "dim"_a, py::kw_only(), "dtype"_a = py::none(), nogil)
      .def(
          "log_softmax",
          [](const Tensor& x, int64_t dim, std::optional<DType> dtype) {
            return F::log_softmax(dtype ? x.to(*dtype) : x, dim);
          },
          "input"_a, "dim"_a, py::kw_only(), "dtype"_a = py::none(), nogil);

  // ---- losses ----
  f.def(
       "cross_entropy",
       [](const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
          const std::string& reduction, double label_smoothing) {
         return F::cross_entropy(input, target,
                                 {.weight = weight,
                                  .ignore_index = ignore_index,
                                  .reduction = reduction,
                                  .label_smoothing = label_smoothing});
       },
       "input"_a, "target"_a, "weight"_a = py::none(), py::kw_only(), "ignore_index"_a = -100, "reduction"_a = "mean",
       "label_smoothing"_a = 0.0, nogil)
      .def(
          "nll_loss",
          [](const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
             const std::string& reduction) {
            return F::nll_loss(input, target, {.weight = weight, .ignore_index = ignore_index, .reduction = reduction});
          },
          "input"_a, "target"_a, "weight"_a = py::none(), py::kw_only(), "ignore_index"_a = -100,
          "reduction"_a = "mean", nogil)
      .def(
          "mse_loss",
          [](const Tensor& input, const Tensor& target, const std::string& reduction) {
            return F::mse_loss(input, target, {.reduction = reduction});
          },
          "input"_a, "target"_a, py::kw_only(), "reduction"_a = "mean", nogil)
      .def(
          "l1_loss",
          [](const Tensor& input, const Tensor& target, const std::string& reduction) {
            return F::l1_loss(input, target, {.reduction = reduction});
          },
          "input"_a, "target"_a, py::kw_only(), "reduction"_a = "mean", nogil)
      .def(
          "smooth_l1_loss",
          [](const Tensor& input, const Tensor& target, const std::string& reduction, double beta) {
            return F::smooth_l1_loss(input, target, {.reduction = reduction, .beta = beta});
          },
          "input"_a, "target"_a, py::kw_only(), "reduction"_a = "mean", "beta"_a = 1.0, nogil)
      .def(
          "binary_cross_entropy",
          [](const Tensor& input, const Tensor& target, const Tensor& weight, const std::string& reduction) {
            return F::binary_cross_entropy(input, target, {.weight = weight, .reduction = reduction});
          },
          "input"_a, "target"_a, "weight"_a = py::none(), py::kw_only(), "reduction"_a = "mean", nogil)
      .def(
          "binary_cross_entropy_with_logits",
          [](const Tensor& input, const Tensor& target, const Tensor& weight, const std::string& reduction,
             const Tensor& pos_weight) {
            return F::binary_cross_entropy_with_logits(
                input, target, {.weight = weight, .reduction = reduction, .pos_weight = pos_weight});
          },
          "input"_a, "target"_a, "weight"_a = py::none(), py::kw_only(), "reduction"_a = "mean",
          "pos_weight"_a = py::none(), nogil)
      .def(
          "kl_div",
          [](const Tensor& input, const Tensor& target, const std::string& reduction, bool log_target) {
            return F::kl_div(input, target, {.reduction = reduction, .log_target = log_target});
          },
          "input"_a, "target"_a, py::kw_only(), "reduction"_a = "mean", "log_target"_a = false, nogil);
}

// ---------------------------------------------------------------------------
// nn.init: each fills the tensor in place and returns it (the same object).

void bind_init(py::module_& init) {
  namespace I = nn::init;
  init.def("calculate_gain", &I::calculate_gain, "nonlinearity"_a, "param"_a = py::none())
      .def("_calculate_fan_in_and_fan_out", &I::calculate_fan_in_and_fan_out, "tensor"_a)
      .def("uniform_", &I::uniform_, "tensor"_a, "a"_a = 0.0, "b"_a = 1.0, "generator"_a = py::none(), nogil)
      .def("normal_", &I::normal_, "tensor"_a, "mean"_a = 0.0, "std"_a = 1.0, "generator"_a = py::none(), nogil)
      .def("constant_", &I::constant_, "tensor"_a, "val"_a, nogil)
      .def("zeros_", &I::zeros_, "tensor"_a, nogil)
      .def("ones_", &I::ones_, "tensor"_a, nogil)
      .def("eye_", &I::eye_, "tensor"_a, nogil)
      .def("xavier_uniform_", &I::xavier_uniform_, "tensor"_a, "gain"_a = 1.0, "generator"_a = py::none(), nogil)
      .def("xavier_normal_", &I::xavier_normal_, "tensor"_a, "gain"_a = 1.0, "generator"_a = py::none(), nogil)
      .def("kaiming_uniform_", &I::kaiming_uniform_, "tensor"_a, "a"_a = 0.0, "mode"_a = "fan_in",
           "nonlinearity"_a = "leaky_relu", "generator"_a = py::none(), nogil)
      .def("kaiming_normal_", &I::kaiming_normal_, "tensor"_a, "a"_a = 0.0, "mode"_a = "fan_in",
           "nonlinearity"_a = "leaky_relu", "generator"_a = py::none(), nogil)
      .def("orthogonal_", &I::orthogonal_, "tensor"_a, "gain"_a = 1.0, "generator"_a = py::none(), nogil);
}

// nn.utils: gradient clipping (loom/optim/clip_grad.h). clip_grad_norm_
// returns the total norm as a tensor, as PyTorch's.
void bind_utils(py::module_& utils) {
  utils
      .def(
          "clip_grad_norm_",
          [](py::handle parameters, double max_norm, double norm_type, bool error_if_nonfinite, py::handle) {
            std::vector<Tensor> ps = parameters_arg(parameters);
            release_gil g;
            return nn::utils::clip_grad_norm_tensor_(ps, max_norm, norm_type, error_if_nonfinite);
          },
          "parameters"_a, "max_norm"_a, "norm_type"_a = 2.0, "error_if_nonfinite"_a = false, "foreach"_a = py::none())
      .def(
          "clip_grad_value_",
          [](py::handle parameters, double clip_value, py::handle) {
            std::vector<Tensor> ps = parameters_arg(parameters);
            release_gil g;
            nn::utils::clip_grad_value_(ps, clip_value);
          },
          "parameters"_a, "clip_value"_a, "foreach"_a = py::none());
}

}  // namespace

void bind_nn(py::module_& m) {
  g_tensor_type = reinterpret_cast<PyTypeObject*>(m.attr("Tensor").ptr());
  auto scope = m.def_submodule("_nn", "nn.Module, the layers, functional, init and utils (use loom.nn)");
  g_incompatible_keys = py::module_::import("collections")
                            .attr("namedtuple")("IncompatibleKeys", py::make_tuple("missing_keys", "unexpected_keys"))
                            .release();
  scope.def("_set_parameter_type", [](py::handle t) { g_parameter_type = t.inc_ref(); });

  bind_module(scope);
  bind_containers(scope);
  bind_layers(scope);
  bind_losses(scope);
  bind_recurrent(scope);
  scope.def(
      "quantize_dynamic",
      [](const std::shared_ptr<nn::Module>& model, const std::string& scheme) {
        return nn::quantize_dynamic(*model, parse_quant_scheme(scheme));
      },
      "model"_a, "scheme"_a = "int8", nogil);
  scope.def(
      "checkpoint_sequential",
      [](const std::shared_ptr<nn::SequentialImpl>& functions, int64_t segments, const Tensor& input) {
        return nn::checkpoint_sequential(nn::Sequential(functions), segments, input);
      },
      "functions"_a, "segments"_a, "input"_a, nogil);

  // Every module class made in C++ adopts what its constructor built.
  for (auto [name, cls] : scope.attr("__dict__").cast<py::dict>()) {
    if (!PyType_Check(cls.ptr()) || cls.is(g_module_type) || !PyObject_IsSubclass(cls.ptr(), g_module_type.ptr()) ||
        !cls.attr("__dict__").contains("__init__"))
      continue;
    def_init_with_self(cls, [](const py::object& construct, py::handle self, py::args args, py::kwargs kwargs) {
      construct(self, *args, **kwargs);
      adopt(self);
    });
  }

  auto functional = scope.def_submodule("functional", "torch.nn.functional's names (use loom.nn.functional)");
  bind_functional(functional);
  auto init = scope.def_submodule("init", "torch.nn.init's names (use loom.nn.init)");
  bind_init(init);
  auto utils = scope.def_submodule("utils", "torch.nn.utils' gradient clipping (use loom.nn.utils)");
  bind_utils(utils);
}

}  // namespace loom::python
