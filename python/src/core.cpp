// loom._C: dtypes, devices, generators, loom.Size, loom.Error, threads, and
// the table that keeps one Python object per tensor (Note [One Python object
// per tensor] in bind.h).
#include <random>
#include <utility>
#include <unordered_map>

#include "bind.h"

namespace loom::python {

namespace {

// TensorImpl -> the Python object wrapping it. Touched only with the GIL held.
std::unordered_map<const TensorImpl*, PyObject*>& registry() {
  static auto* r = new std::unordered_map<const TensorImpl*, PyObject*>();  // never destroyed: outlives exit-time objects
  return *r;
}

PyTypeObject* g_tensor_type = nullptr;
py::handle g_size_type;

}  // namespace

PyTensor::~PyTensor() {
  if (registered) registry().erase(t.unsafe_impl());
}

bool is_tensor(py::handle h) { return g_tensor_type && PyObject_TypeCheck(h.ptr(), g_tensor_type); }

PyTensor& unwrap_box(py::handle h) {
  auto* inst = reinterpret_cast<py::detail::instance*>(h.ptr());
  void* v = inst->simple_layout ? inst->simple_value_holder[0] : inst->nonsimple.values_and_holders[0];
  LOOM_CHECK(v != nullptr, "loom.Tensor: the object was not initialized (a subclass __init__ must call the base's)");
  auto* box = static_cast<PyTensor*>(v);
  if (!box->registered && box->t.defined()) {
    // Made from Python (a Parameter, a subclass): enter it unless another
    // object already stands for this impl.
    auto [it, inserted] = registry().emplace(box->t.unsafe_impl(), h.ptr());
    box->registered = inserted;
  }
  return *box;
}

const Tensor& unwrap(py::handle h) { return unwrap_box(h).t; }

py::object wrap(Tensor t) {
  if (!t.defined()) return py::none();
  auto& r = registry();
  auto it = r.find(t.unsafe_impl());
  if (it != r.end()) return py::reinterpret_borrow<py::object>(it->second);
  const TensorImpl* key = t.unsafe_impl();
  // pybind11's cast with the type looked up once (py::cast would hash the
  // type's name on every call).
  static const py::detail::type_info* tinfo = py::detail::get_type_info(typeid(PyTensor));
  PyTensor box(std::move(t));
  auto* moved = new PyTensor(std::move(box));
  moved->registered = true;
  py::object obj = py::reinterpret_steal<py::object>(py::detail::type_caster_generic::cast(
      moved, py::return_value_policy::take_ownership, py::handle(), tinfo, nullptr, nullptr));
  r.emplace(key, obj.ptr());
  return obj;
}

py::object wrap_as(const Tensor& t, py::handle type) {
  // Allocate the subclass instance without running its __init__ (which
  // would make a new leaf), then construct its PyTensor in place, as
  // pybind11 does for a value it owns.
  auto* pytype = reinterpret_cast<PyTypeObject*>(type.ptr());
  py::object obj = py::reinterpret_steal<py::object>(pytype->tp_new(pytype, py::tuple().ptr(), nullptr));
  if (!obj) throw py::error_already_set();
  auto* inst = reinterpret_cast<py::detail::instance*>(obj.ptr());
  py::detail::value_and_holder v_h = inst->get_value_and_holder(py::detail::get_type_info(typeid(PyTensor)));
  v_h.value_ptr() = new PyTensor(t);
  v_h.type->init_instance(inst, nullptr);
  unwrap_box(obj);  // enters the table
  return obj;
}

py::object wrap(std::vector<Tensor> ts) {
  py::list out(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) out[i] = wrap(std::move(ts[i]));
  return out;
}

py::object make_size(const std::vector<int64_t>& sizes) {
  py::tuple t(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) t[i] = py::int_(sizes[i]);
  if (!g_size_type) return t;
  return g_size_type(t);
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      size_t used = 0;
      int i = std::stoi(s.substr(5), &used);
      if (used == s.size() - 5 && i >= 0) return Device::cuda(i);
    } catch (const std::exception&) {
    }
  }
  LOOM_ERROR("loom.device: expected 'cpu', 'cuda' or 'cuda:N', got '", s, "'");
}

TensorOptions make_options(std::optional<DType> dtype, std::optional<Device> device, bool requires_grad,
                           std::optional<TensorOptions> base) {
  TensorOptions o = base.value_or(TensorOptions());
  if (dtype) o = o.dtype(*dtype);
  if (device) o = o.device(*device);
  return o.requires_grad(requires_grad);
}

bool load_scalar(py::handle src, bool convert, Scalar& out) {
  PyObject* p = src.ptr();
  if (PyBool_Check(p)) {
    out = Scalar(p == Py_True);
    return true;
  }
  if (PyLong_Check(p)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(p, &overflow);
    if (overflow) return false;
    out = Scalar(static_cast<int64_t>(v));
    return true;
  }
  if (PyFloat_Check(p)) {
    out = Scalar(PyFloat_AS_DOUBLE(p));
    return true;
  }
  if (!convert || is_tensor(src)) return false;
  // NumPy scalars and other numbers: integers through __index__, the rest
  // through __float__.
  if (PyIndex_Check(p)) {
    PyObject* i = PyNumber_Index(p);
    if (i) {
      long long v = PyLong_AsLongLong(i);
      Py_DECREF(i);
      if (!PyErr_Occurred()) {
        out = Scalar(static_cast<int64_t>(v));
        return true;
      }
    }
    PyErr_Clear();
    return false;
  }
  if (PyNumber_Check(p) && Py_TYPE(p)->tp_as_number && Py_TYPE(p)->tp_as_number->nb_float) {
    double d = PyFloat_AsDouble(p);
    if (d == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    out = Scalar(d);
    return true;
  }
  return false;
}

std::vector<int64_t> dims_arg(const py::object& dim) {
  if (dim.is_none()) return {};
  return dim.cast<IntArrayRef>().vec();
}

std::vector<int64_t> sizes_from_args(const py::args& args, const char* what) {
  if (args.size() == 1 && !PyLong_Check(args[0].ptr())) {
    try {
      return args[0].cast<IntArrayRef>().vec();
    } catch (const py::cast_error&) {
      LOOM_ERROR(what, ": expected a sequence of ints or ints, got ", std::string(py::str(py::type::of(args[0]))));
    }
  }
  std::vector<int64_t> v;
  v.reserve(args.size());
  for (py::handle a : args) {
    LOOM_CHECK(PyLong_Check(a.ptr()) || PyIndex_Check(a.ptr()), what, ": sizes must be ints, got ",
               std::string(py::str(py::type::of(a))));
    v.push_back(py::cast<int64_t>(a));
  }
  return v;
}

namespace {
// Note [C++ signals through Python]: the core ends some callbacks early by
// throwing a type of its own (activation checkpointing stops a
// recomputation once it has what backward needs). When such a callback is
// Python code calling loom, the throw crosses Python: pybind11 would turn it
// into "unknown exception". Instead the exception is parked here and Python
// sees _ForeignSignal; the C++ caller of the Python callback calls
// rethrow_parked, which throws the original again.
thread_local std::exception_ptr t_parked;
PyObject* g_foreign_signal = nullptr;
}  // namespace

void rethrow_parked(py::error_already_set& e) {
  if (t_parked && e.matches(g_foreign_signal)) {
    std::exception_ptr p = std::exchange(t_parked, nullptr);
    std::rethrow_exception(p);
  }
}

void bind_core(py::module_& m) {
  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  static py::exception<void> foreign(m, "_ForeignSignal", PyExc_BaseException);
  g_foreign_signal = foreign.ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::exception&) {
      throw;  // the next translators know these
    } catch (...) {
      t_parked = p;
      PyErr_SetString(g_foreign_signal, "a C++ signal of loom's core passing through Python");
    }
  });
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      error(e.what());
    }
  });

  py::enum_<DType> dtype(m, "dtype");
  const std::pair<const char*, DType> names[] = {
      {"float32", kFloat32}, {"float64", kFloat64}, {"float16", kFloat16}, {"bfloat16", kBFloat16},
      {"int32", kInt32},     {"int64", kInt64},     {"uint8", kUInt8},     {"int8", kInt8},
      {"bool", kBool}};
  for (auto& [name, d] : names) dtype.value(name, d);
  dtype.export_values();
  // PyTorch's repr is torch.float32; loom's is loom.float32.
  auto dtype_repr = py::cpp_function([](DType d) { return std::string("loom.") + dtype_name(d); }, py::is_method(dtype));
  py::setattr(dtype, "__repr__", dtype_repr);
  py::setattr(dtype, "__str__", dtype_repr);
  dtype.def_property_readonly("is_floating_point", [](DType d) { return is_floating_point(d); })
      .def_property_readonly("itemsize", [](DType d) { return element_size(d); })
      .def_property_readonly("is_signed", [](DType d) { return d != kUInt8 && d != kBool; });
  m.def("promote_types", &promote_types, py::arg("type1"), py::arg("type2"));
  m.def("get_default_dtype", &default_dtype);

  py::class_<Device>(m, "device")
      .def(py::init([](const std::string& s) { return parse_device(s); }), py::arg("type"))
      .def(py::init([](const std::string& type, int index) {
             LOOM_CHECK(type == "cuda" || (type == "cpu" && index == 0), "loom.device: no device ", type, ":", index);
             return type == "cpu" ? Device::cpu() : Device::cuda(index);
           }),
           py::arg("type"), py::arg("index"))
      .def_property_readonly("type", [](const Device& d) { return d.is_cpu() ? "cpu" : "cuda"; })
      .def_property_readonly("index", [](const Device& d) -> py::object {
        return d.is_cpu() ? py::none() : py::object(py::int_(d.index));
      })
      .def("__eq__", [](const Device& a, const Device& b) { return a == b; })
      .def("__hash__", [](const Device& d) { return static_cast<int>(d.type) * 1024 + d.index; })
      .def("__str__", &Device::str)
      .def("__repr__", [](const Device& d) {
        return d.is_cpu() ? std::string("device(type='cpu')")
                          : "device(type='cuda', index=" + std::to_string(d.index) + ")";
      });
  py::implicitly_convertible<py::str, Device>();

  py::class_<Generator>(m, "Generator")
      .def(py::init<>())
      .def(py::init([](const Device& d) {
             LOOM_CHECK(d.is_cpu(), "loom.Generator: only CPU generators exist, got ", d.str());
             return Generator();
           }),
           py::arg("device"))
      .def("manual_seed", [](Generator& g, uint64_t s) -> Generator& { return g.manual_seed(s); },
           py::arg("seed"), py::return_value_policy::reference_internal)
      .def("initial_seed", &Generator::initial_seed)
      .def("seed", [](Generator& g) {
        uint64_t s = static_cast<uint64_t>(std::random_device{}()) << 32 | std::random_device{}();
        g.manual_seed(s);
        return s;
      })
      .def("get_state", [](const Generator& g) { auto s = g.get_state(); return py::make_tuple(s.seed, s.offset); })
      .def("set_state", [](Generator& g, std::pair<uint64_t, uint64_t> s) { g.set_state({s.first, s.second}); },
           py::arg("state"))
      .def_property_readonly("device", [](const Generator&) { return Device::cpu(); });
  m.def("default_generator", &default_generator);
  m.def("manual_seed", [](uint64_t s) { manual_seed(s); return default_generator(); }, py::arg("seed"));
  m.def("initial_seed", &initial_seed);
  m.def("seed", []() {
    uint64_t s = static_cast<uint64_t>(std::random_device{}()) << 32 | std::random_device{}();
    manual_seed(s);
    return s;
  });
  m.def("get_rng_state", []() { auto s = get_rng_state(); return py::make_tuple(s.seed, s.offset); });
  m.def("set_rng_state", [](std::pair<uint64_t, uint64_t> s) { set_rng_state({s.first, s.second}); },
        py::arg("new_state"));

  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("_cuda_is_available", &cuda_is_available);

  // The CPU caching allocator (loom/allocator.h).
  m.def("cpu_memory_stats", []() {
    CpuAllocatorStats s = cpu_allocator_stats();
    py::dict d;
    d["bytes_in_use"] = s.bytes_in_use;
    d["peak_bytes_in_use"] = s.peak_bytes_in_use;
    d["bytes_cached"] = s.bytes_cached;
    d["cache_limit"] = s.cache_limit;
    d["system_allocations"] = s.system_allocations;
    d["system_frees"] = s.system_frees;
    d["cache_hits"] = s.cache_hits;
    d["caching"] = s.caching;
    return d;
  });
  m.def("cpu_empty_cache", &cpu_empty_cache);
  m.def("cpu_reset_peak_stats", &cpu_reset_peak_stats);

  m.def("_set_size_type", [](py::object t) { g_size_type = t.release(); });
  m.def("_live_tensor_objects", []() { return registry().size(); });
}

void set_tensor_type(PyTypeObject* t);
void set_tensor_type(PyTypeObject* t) { g_tensor_type = t; }

}  // namespace loom::python
