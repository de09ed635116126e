// loom.Tensor: every method and operator of loom::Tensor under PyTorch's
// Python names and keywords, indexing, printing, and the autograd view of a
// tensor (grad, grad_fn, hooks, backward).
#include <sstream>

#include "bind.h"

namespace loom::python {

void set_tensor_type(PyTypeObject* t);
bool is_numpy_array(py::handle h);  // interop.cpp

namespace {

using T = const Tensor&;

py::object g_max_type, g_min_type;  // namedtuples (values, indices), as torch.return_types

py::object not_implemented() { return py::reinterpret_borrow<py::object>(Py_NotImplemented); }

// a op b where b is a tensor or a number; NotImplemented otherwise, so Python
// tries the reflected operator.
template <typename FT, typename FS>
py::object binary(const Tensor& a, py::handle b, FT&& ft, FS&& fs) {
  if (is_tensor(b)) {
    const Tensor& bt = unwrap(b);
    Tensor r;
    {
      release_gil nogil;
      r = ft(a, bt);
    }
    return wrap(std::move(r));
  }
  Scalar s;
  if (load_scalar(b, true, s)) {
    Tensor r;
    {
      release_gil nogil;
      r = fs(a, s);
    }
    return wrap(std::move(r));
  }
  return not_implemented();
}

// A tensor argument that may also be given as a number: a 0-dim tensor with
// the dtype PyTorch gives `like op number` (int tensor.add(2.5) is float32).
Tensor as_operand(py::handle h, const Tensor& like) {
  if (is_tensor(h)) return unwrap(h);
  Scalar s;
  if (load_scalar(h, true, s)) return scalar_tensor(s, TensorOptions(like.device()).dtype(result_type(like, s)));
  return to_tensor(h, std::nullopt, like.device(), false);
}

indexing::TensorIndex index_item(py::handle h) {
  PyObject* p = h.ptr();
  if (PyLong_Check(p) && !PyBool_Check(p)) return indexing::TensorIndex(py::cast<int64_t>(h));
  if (PySlice_Check(p)) {
    auto* sl = reinterpret_cast<PySliceObject*>(p);
    auto bound = [](PyObject* o) -> indexing::SliceBound {
      if (o == Py_None) return indexing::None;
      return indexing::SliceBound(py::cast<int64_t>(py::handle(o)));
    };
    int64_t step = sl->step == Py_None ? 1 : py::cast<int64_t>(py::handle(sl->step));
    return indexing::TensorIndex(indexing::Slice(bound(sl->start), bound(sl->stop), step));
  }
  if (p == Py_None) return indexing::TensorIndex(indexing::None);
  if (p == Py_Ellipsis) return indexing::TensorIndex(indexing::Ellipsis);
  if (is_tensor(h)) return indexing::TensorIndex(unwrap(h));
  if (PyBool_Check(p)) LOOM_ERROR("index: a Python bool is not a supported index; use a bool tensor");
  // (A NumPy array has __index__ too, but indexes as a tensor.)
  if (PyIndex_Check(p) && !is_numpy_array(h)) return indexing::TensorIndex(py::cast<int64_t>(h));
  // Lists and NumPy arrays of ints or bools: an index tensor.
  Tensor t = to_tensor(h, std::nullopt, std::nullopt, false);
  LOOM_CHECK(t.dtype() == kBool || is_integral(t.dtype(), false),
             "index: tensors used as indices must be integer or bool, got ", dtype_name(t.dtype()));
  return indexing::TensorIndex(t.dtype() == kBool ? t : t.to(kInt64));
}

std::vector<indexing::TensorIndex> index_key(py::handle key) {
  std::vector<indexing::TensorIndex> idx;
  if (PyTuple_Check(key.ptr())) {
    for (py::handle item : py::reinterpret_borrow<py::tuple>(key)) idx.push_back(index_item(item));
  } else {
    idx.push_back(index_item(key));
  }
  return idx;
}

py::object tolist(const Tensor& t) {
  Tensor c;
  {
    release_gil nogil;
    c = t.detach().cpu().contiguous();
  }
  const int64_t n = c.numel();
  std::vector<py::object> flat;
  flat.reserve(n);
  if (c.dtype() == kBool) {
    for (bool v : c.to_vector<bool>()) flat.push_back(py::bool_(v));
  } else if (is_integral(c.dtype(), false)) {
    for (int64_t v : c.to_vector<int64_t>()) flat.push_back(py::int_(v));
  } else {
    for (double v : c.to_vector<double>()) flat.push_back(py::float_(v));
  }
  if (c.dim() == 0) return flat[0];
  // Nest from the innermost dim out.
  const auto& sizes = c.sizes();
  std::vector<py::object> level = std::move(flat);
  for (int64_t d = c.dim() - 1; d >= 0; --d) {
    const int64_t len = sizes[d];
    std::vector<py::object> next;
    const size_t groups = len == 0 ? (d == 0 ? 1 : 0) : level.size() / len;
    if (len == 0) {
      int64_t outer = 1;
      for (int64_t k = 0; k < d; ++k) outer *= sizes[k];
      for (int64_t g = 0; g < outer; ++g) next.push_back(py::list());
    } else {
      for (size_t g = 0; g < groups; ++g) {
        py::list l(len);
        for (int64_t k = 0; k < len; ++k) l[k] = std::move(level[g * len + k]);
        next.push_back(std::move(l));
      }
    }
    level = std::move(next);
  }
  return level.empty() ? py::object(py::list()) : level[0];
}

std::string repr(const Tensor& t) {
  std::ostringstream os;
  {
    release_gil nogil;
    os << t;
  }
  // The core prints dtype=float64; Python spells dtypes loom.float64.
  std::string s = os.str();
  for (size_t at = s.find("dtype="); at != std::string::npos; at = s.find("dtype=", at + 1))
    s.insert(at + 6, "loom.");
  return s;
}

// Tensor.to(*args, **kwargs): dtype, device, another tensor, or keywords.
Tensor to_args(const Tensor& self, const py::args& args, const py::kwargs& kwargs) {
  std::optional<DType> dtype;
  std::optional<Device> device;
  bool copy = false;
  for (py::handle a : args) {
    if (is_tensor(a)) {
      dtype = unwrap(a).dtype();
      device = unwrap(a).device();
    } else if (py::isinstance<DType>(a)) {
      dtype = a.cast<DType>();
    } else if (py::isinstance<Device>(a)) {
      device = a.cast<Device>();
    } else if (py::isinstance<py::str>(a)) {
      device = parse_device(a.cast<std::string>());
    } else if (PyBool_Check(a.ptr())) {
      // to(dtype, non_blocking, copy): positional flags after the target.
    } else {
      LOOM_ERROR("Tensor.to: expected a dtype, a device or a tensor, got ", std::string(py::str(py::type::of(a))));
    }
  }
  for (auto [k, v] : kwargs) {
    std::string key = py::cast<std::string>(k);
    if (key == "dtype") {
      if (!v.is_none()) dtype = v.cast<DType>();
    } else if (key == "device") {
      if (!v.is_none()) device = py::isinstance<py::str>(v) ? parse_device(v.cast<std::string>()) : v.cast<Device>();
    } else if (key == "copy") {
      copy = v.cast<bool>();
    } else if (key == "non_blocking" || key == "memory_format") {
    } else {
      LOOM_ERROR("Tensor.to: unexpected keyword argument '", key, "'");
    }
  }
  release_gil nogil;
  TensorOptions o = self.options();
  if (dtype) o = o.dtype(*dtype);
  if (device) o = o.device(*device);
  return self.to(o, copy);
}

// Sizes or dims as varargs, one sequence, or PyTorch's keyword (x.view(size=(2, 3))).
std::vector<int64_t> sizes_arg(const py::args& args, const py::object& kw, const char* what) {
  if (kw.is_none()) return sizes_from_args(args, what);
  LOOM_CHECK(args.empty(), what, ": sizes given both as arguments and by keyword");
  return kw.cast<IntArrayRef>().vec();
}

// A reduction's optional dims: None (all), an int or a sequence.
std::vector<int64_t> opt_dims(const py::object& dim) { return dims_arg(dim); }

py::object values_indices(const py::object& type, std::pair<Tensor, Tensor> r) {
  return type(wrap(std::move(r.first)), wrap(std::move(r.second)));
}

int64_t correction_of(std::optional<bool> unbiased, std::optional<int64_t> correction) {
  if (correction) return *correction;
  return unbiased.value_or(true) ? 1 : 0;
}

// var / std's dims, and x.var(False): PyTorch's overload with unbiased first.
std::vector<int64_t> var_dims(const py::object& dim, std::optional<bool>& unbiased) {
  if (!PyBool_Check(dim.ptr())) return opt_dims(dim);
  unbiased = dim.cast<bool>();
  return {};
}

struct HookHandle {
  Tensor t;
  int64_t id;
  bool removed = false;
  void remove() {
    if (!removed) t.remove_hook(id);
    removed = true;
  }
};

// The hot operators as C slots of the type: `a + b` goes straight here
// instead of through a looked-up __add__ method and pybind11's argument
// parsing (a third of a small op's cost from Python).
PyObject* g_error_type = nullptr;

template <typename F>
PyObject* guarded(F&& f) {
  try {
    return f().release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const Error& e) {
    PyErr_SetString(g_error_type, e.what());
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

template <typename FT, typename FS, typename FR>
PyObject* number_slot(PyObject* a, PyObject* b, FT ft, FS fs, FR fr) {
  return guarded([&]() -> py::object {
    if (is_tensor(a)) return binary(unwrap(a), b, ft, fs);
    // a is a number, b the tensor: the reflected form.
    return binary(unwrap(b), a, [&](T x, T y) { return ft(y, x); }, fr);
  });
}

PyObject* nb_add(PyObject* a, PyObject* b) {
  return number_slot(a, b, [](T x, T y) { return x + y; }, [](T x, Scalar s) { return x + s; },
                     [](T x, Scalar s) { return s + x; });
}
PyObject* nb_sub(PyObject* a, PyObject* b) {
  return number_slot(a, b, [](T x, T y) { return x - y; }, [](T x, Scalar s) { return x - s; },
                     [](T x, Scalar s) { return s - x; });
}
PyObject* nb_mul(PyObject* a, PyObject* b) {
  return number_slot(a, b, [](T x, T y) { return x * y; }, [](T x, Scalar s) { return x * s; },
                     [](T x, Scalar s) { return s * x; });
}
PyObject* nb_div(PyObject* a, PyObject* b) {
  return number_slot(a, b, [](T x, T y) { return x / y; }, [](T x, Scalar s) { return x / s; },
                     [](T x, Scalar s) { return s / x; });
}
// x op= y: in place on x, which is returned.
template <typename FT, typename FS>
PyObject* inplace_slot(PyObject* a, PyObject* b, FT ft, FS fs) {
  return guarded([&]() -> py::object {
    Tensor t = unwrap(a);
    if (is_tensor(b)) {
      const Tensor& o = unwrap(b);
      release_gil g;
      ft(t, o);
    } else {
      Scalar s;
      if (!load_scalar(b, true, s)) return not_implemented();
      release_gil g;
      fs(t, s);
    }
    return py::reinterpret_borrow<py::object>(a);
  });
}

PyObject* nb_iadd(PyObject* a, PyObject* b) {
  return inplace_slot(a, b, [](Tensor& t, T o) { t.add_(o); }, [](Tensor& t, Scalar s) { t.add_(s); });
}
PyObject* nb_isub(PyObject* a, PyObject* b) {
  return inplace_slot(a, b, [](Tensor& t, T o) { t.sub_(o); }, [](Tensor& t, Scalar s) { t.sub_(s); });
}
PyObject* nb_imul(PyObject* a, PyObject* b) {
  return inplace_slot(a, b, [](Tensor& t, T o) { t.mul_(o); }, [](Tensor& t, Scalar s) { t.mul_(s); });
}
PyObject* nb_idiv(PyObject* a, PyObject* b) {
  return inplace_slot(a, b, [](Tensor& t, T o) { t.div_(o); }, [](Tensor& t, Scalar s) { t.div_(s); });
}

PyObject* nb_neg(PyObject* a) {
  return guarded([&]() -> py::object {
    const Tensor& t = unwrap(a);
    Tensor r;
    {
      release_gil g;
      r = -t;
    }
    return wrap(std::move(r));
  });
}
PyObject* tp_richcompare(PyObject* a, PyObject* b, int op) {
  return guarded([&]() -> py::object {
    Scalar s;
    if (!is_tensor(b) && !load_scalar(b, true, s)) return not_implemented();
    switch (op) {
      case Py_EQ: return binary(unwrap(a), b, [](T x, T y) { return x == y; }, [](T x, Scalar v) { return x == v; });
      case Py_NE: return binary(unwrap(a), b, [](T x, T y) { return x != y; }, [](T x, Scalar v) { return x != v; });
      case Py_LT: return binary(unwrap(a), b, [](T x, T y) { return x < y; }, [](T x, Scalar v) { return x < v; });
      case Py_LE: return binary(unwrap(a), b, [](T x, T y) { return x <= y; }, [](T x, Scalar v) { return x <= v; });
      case Py_GT: return binary(unwrap(a), b, [](T x, T y) { return x > y; }, [](T x, Scalar v) { return x > v; });
      default: return binary(unwrap(a), b, [](T x, T y) { return x >= y; }, [](T x, Scalar v) { return x >= v; });
    }
  });
}

}  // namespace

// The Python view of an autograd node (Tensor.grad_fn).
struct PyNode {
  std::shared_ptr<autograd::Node> node;
};

void bind_tensor(py::module_& m) {
  py::module_ collections = py::module_::import("collections");
  g_max_type = collections.attr("namedtuple")("max", "values indices");
  g_min_type = collections.attr("namedtuple")("min", "values indices");

  py::class_<PyNode>(m, "Node")
      .def("name", [](const PyNode& n) { return autograd::node_name(*n.node); })
      .def_property_readonly("next_functions",
                             [](const PyNode& n) {
                               py::list out;
                               for (auto& [fn, nr] : autograd::next_functions(*n.node))
                                 out.append(py::make_tuple(fn ? py::cast(PyNode{fn}) : py::none(), nr));
                               return py::tuple(out);
                             })
      .def("__eq__", [](const PyNode& a, const PyNode& b) { return a.node == b.node; })
      .def("__hash__", [](const PyNode& n) { return reinterpret_cast<intptr_t>(n.node.get()); })
      .def("__repr__", [](const PyNode& n) { return "<" + autograd::node_name(*n.node) + " object>"; });

  py::class_<HookHandle>(m, "RemovableHandle")
      .def("remove", &HookHandle::remove)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](HookHandle& h, py::args) { h.remove(); });

  py::class_<PyTensor> cls(m, "Tensor");
  set_tensor_type(reinterpret_cast<PyTypeObject*>(cls.ptr()));
  using T = const Tensor&;
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  // Made from Python only by subclasses (nn.Parameter): Tensor(data) shares
  // data's storage as a new leaf.
  cls.def(py::init([](T data, bool requires_grad) {
            LOOM_CHECK(data.defined(), "loom.Tensor(data): data must be a tensor");
            Tensor t = data.detach();
            if (requires_grad) t.requires_grad_(true);
            return PyTensor(t);
          }),
          py::arg("data"), py::arg("requires_grad") = false);

  // ---- metadata ----
  cls.def_property_readonly("shape", [](T t) { return make_size(t.sizes()); })
      .def("size",
           [](T t, std::optional<int64_t> dim) -> py::object {
             if (dim) return py::int_(t.size(*dim));
             return make_size(t.sizes());
           },
           py::arg("dim") = py::none())
      .def("stride",
           [](T t, std::optional<int64_t> dim) -> py::object {
             if (dim) return py::int_(t.stride(*dim));
             return py::tuple(py::cast(t.strides()));
           },
           py::arg("dim") = py::none())
      .def("dim", [](T t) { return t.dim(); })
      .def("ndimension", [](T t) { return t.dim(); })
      .def_property_readonly("ndim", [](T t) { return t.dim(); })
      .def("numel", [](T t) { return t.numel(); })
      .def("nelement", [](T t) { return t.numel(); })
      .def_property_readonly("dtype", [](T t) { return t.dtype(); })
      .def_property_readonly("device", [](T t) { return t.device(); })
      .def_property_readonly("is_cuda", [](T t) { return t.device().is_cuda(); })
      .def_property_readonly("is_cpu", [](T t) { return t.device().is_cpu(); })
      .def("is_contiguous", [](T t) { return t.is_contiguous(); })
      .def("is_floating_point", [](T t) { return t.is_floating_point(); })
      .def("element_size", [](T t) { return t.element_size(); })
      .def_property_readonly("itemsize", [](T t) { return t.element_size(); })
      .def_property_readonly("nbytes", [](T t) { return t.nbytes(); })
      .def("storage_offset", [](T t) { return t.storage_offset(); })
      .def("data_ptr", [](T t) { return reinterpret_cast<uintptr_t>(t.raw_data_ptr()); })
      .def_property_readonly("_version", [](T t) { return t._version(); })
      .def("__len__",
           [](T t) {
             if (t.dim() == 0) throw py::type_error("len() of a 0-d tensor");
             return t.size(0);
           })
      .def("__hash__", [](py::handle self) { return reinterpret_cast<intptr_t>(self.ptr()); })
      .def("__repr__", &repr)
      .def("__str__", &repr)
      .def("__format__",
           [](py::handle self, const std::string& spec) -> py::object {
             const Tensor& t = unwrap(self);
             if (t.dim() == 0) return py::module_::import("builtins").attr("format")(py::cast(t.item()), spec);
             return py::str(repr(t));
           })
      .def("__bool__",
           [](T t) {
             LOOM_CHECK(t.numel() == 1, "Boolean value of Tensor with more than one value is ambiguous (shape ",
                        shape_str(t.sizes()), ")");
             return t.item().to_bool();
           })
      .def("__float__", [](T t) { return t.item<double>(); })
      .def("__int__", [](T t) { return t.item<int64_t>(); })
      .def("__index__",
           [](T t) {
             if (!is_integral(t.dtype(), true) || t.numel() != 1)
               throw py::type_error("only integer tensors of a single element can be converted to an index");
             return t.item<int64_t>();
           })
      .def("__iter__",
           [](T t) {
             if (t.dim() == 0) throw py::type_error("iteration over a 0-d tensor");
             return py::iter(wrap(t.unbind(0)));
           })
      .def("item", [](T t) { return t.item(); })
      .def("tolist", &tolist);

  // ---- autograd ----
  cls.def_property(
         "requires_grad", [](T t) { return t.requires_grad(); },
         [](py::handle self, bool r) { unwrap_box(self).t.requires_grad_(r); })
      .def("requires_grad_",
           [](py::handle self, bool r) {
             unwrap_box(self).t.requires_grad_(r);
             return py::reinterpret_borrow<py::object>(self);
           },
           py::arg("requires_grad") = true)
      .def_property(
          "grad", [](T t) { return t.grad(); },
          [](py::handle self, py::handle g) {
            LOOM_CHECK(g.is_none() || is_tensor(g), "Tensor.grad: assigned grad must be a tensor or None");
            unwrap_box(self).t.set_grad(g.is_none() ? Tensor() : unwrap(g));
          })
      .def_property_readonly("grad_fn",
                             [](T t) -> py::object {
                               auto fn = t.grad_fn();
                               if (!fn) return py::none();
                               return py::cast(PyNode{fn});
                             })
      .def_property_readonly("is_leaf", [](T t) { return t.is_leaf(); })
      .def("retain_grad", [](T t) { t.retain_grad(); })
      .def_property_readonly("retains_grad", [](T t) { return t.retains_grad(); })
      .def(
          "backward",
          [](T t, T gradient, std::optional<bool> retain_graph, bool create_graph, py::object inputs) {
            const bool keep = retain_graph.value_or(create_graph);
            if (!inputs.is_none()) {
              std::vector<Tensor> in = is_tensor(inputs) ? std::vector<Tensor>{unwrap(inputs)}
                                                         : inputs.cast<std::vector<Tensor>>();
              release_gil g;
              auto grads = autograd::grad({t}, in, {gradient}, keep, create_graph, true);
              NoGradGuard ng;
              for (size_t i = 0; i < in.size(); ++i) {
                if (!grads[i].defined()) continue;
                Tensor& acc = in[i].mutable_grad();
                if (acc.defined()) acc.add_(grads[i]);
                else in[i].set_grad(grads[i].detach());
              }
              return;
            }
            release_gil g;
            t.backward(gradient, keep, create_graph);
          },
          py::arg("gradient") = py::none(), py::arg("retain_graph") = py::none(), py::arg("create_graph") = false,
          py::arg("inputs") = py::none())
      .def("detach", [](T t) { return t.detach(); })
      .def("detach_",
           [](py::handle self) {
             unwrap_box(self).t.detach_();
             return py::reinterpret_borrow<py::object>(self);
           })
      .def_property(
          "data", [](T t) { return t.detach(); },
          [](py::handle self, T d) {
            release_gil g;
            unwrap_box(self).t.set_data(d);
          })
      .def(
          "register_hook",
          [](T t, std::function<Tensor(const Tensor&)> hook) {
            return HookHandle{t, t.register_hook(std::move(hook))};
          },
          py::arg("hook"))
      .def(
          "register_post_accumulate_grad_hook",
          [](T t, std::function<void(const Tensor&)> hook) {
            return HookHandle{t, t.register_post_accumulate_grad_hook(std::move(hook))};
          },
          py::arg("hook"));

  // ---- conversion ----
  cls.def("to", &to_args)
      .def("cpu", [](T t) { return t.cpu(); }, nogil)
      .def("cuda", [](T t) { return t.cuda(); }, nogil)
      .def("contiguous", [](T t) { return t.contiguous(); }, nogil)
      .def("clone", [](T t) { return t.clone(); }, nogil)
      .def("__deepcopy__",
           [](py::handle self, py::dict memo) -> py::object {
             // copy.deepcopy: a leaf's copy with its requires_grad and grad; a
             // subclass (nn.Parameter) is remade as type(self)(copy, requires_grad).
             py::int_ key(reinterpret_cast<intptr_t>(self.ptr()));
             if (memo.contains(key)) return memo[key];
             const Tensor& t = unwrap(self);
             LOOM_CHECK(t.is_leaf(), "deepcopy: only tensors created explicitly by the user (graph leaves) support "
                                     "the deepcopy protocol");
             Tensor c;
             {
               release_gil g;
               c = t.detach().clone();
             }
             py::object out = wrap(c);
             if (!py::type::of(self).is(py::type::of(out))) out = py::type::of(self)(out, t.requires_grad());
             unwrap_box(out).t.requires_grad_(t.requires_grad());
             if (t.grad().defined()) unwrap_box(out).t.set_grad(t.grad().detach().clone());
             if (py::hasattr(self, "__dict__")) {
               py::object deepcopy = py::module_::import("copy").attr("deepcopy");
               out.attr("__dict__").attr("update")(deepcopy(self.attr("__dict__"), memo));
             }
             memo[key] = out;
             return out;
           },
           py::arg("memo"))
      .def("type_as", [](T t, T o) { return t.type_as(o); }, nogil)
      .def("float", [](T t) { return t.to(kFloat32); }, nogil)
      .def("double", [](T t) { return t.to(kFloat64); }, nogil)
      .def("half", [](T t) { return t.to(kFloat16); }, nogil)
      .def("bfloat16", [](T t) { return t.to(kBFloat16); }, nogil)
      .def("int", [](T t) { return t.to(kInt32); }, nogil)
      .def("long", [](T t) { return t.to(kInt64); }, nogil)
      .def("bool", [](T t) { return t.to(kBool); }, nogil)
      .def("byte", [](T t) { return t.to(kUInt8); }, nogil)
      .def("new_zeros",
           [](T t, const py::args& size, std::optional<DType> dtype, std::optional<Device> device, bool rg) {
             return zeros(sizes_from_args(size, "new_zeros"), make_options(dtype, device, rg, t.options()));
           },
           py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
           py::arg("requires_grad") = false)
      .def("new_ones",
           [](T t, const py::args& size, std::optional<DType> dtype, std::optional<Device> device, bool rg) {
             return ones(sizes_from_args(size, "new_ones"), make_options(dtype, device, rg, t.options()));
           },
           py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
           py::arg("requires_grad") = false)
      .def("new_empty",
           [](T t, const py::args& size, std::optional<DType> dtype, std::optional<Device> device, bool rg) {
             return empty(sizes_from_args(size, "new_empty"), make_options(dtype, device, rg, t.options()));
           },
           py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
           py::arg("requires_grad") = false)
      .def("new_full",
           [](T t, IntArrayRef size, Scalar v, std::optional<DType> dtype, std::optional<Device> device, bool rg) {
             return full(size, v, make_options(dtype, device, rg, t.options()));
           },
           py::arg("size"), py::arg("fill_value"), py::kw_only(), py::arg("dtype") = py::none(),
           py::arg("device") = py::none(), py::arg("requires_grad") = false)
      .def("new_tensor",
           [](T t, py::handle data, std::optional<DType> dtype, std::optional<Device> device, bool rg) {
             Tensor r = to_tensor(data, dtype.value_or(t.dtype()), device.value_or(t.device()), true);
             if (rg) r.requires_grad_(true);
             return r;
           },
           py::arg("data"), py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
           py::arg("requires_grad") = false);

  // ---- views ----
  cls.def("view", [](T t, const py::args& a, py::object k) { return t.view(sizes_arg(a, k, "view")); },
          py::arg("size") = py::none())
      .def("reshape", [](T t, const py::args& a, py::object k) {
        auto s = sizes_arg(a, k, "reshape");
        release_gil g;
        return t.reshape(s);
      }, py::arg("shape") = py::none())
      .def("view_as", [](T t, T o) { return t.view_as(o); }, py::arg("other"))
      .def("reshape_as", [](T t, T o) { return t.reshape_as(o); }, py::arg("other"), nogil)
      .def("flatten", [](T t, int64_t s, int64_t e) { return t.flatten(s, e); }, py::arg("start_dim") = 0,
           py::arg("end_dim") = -1, nogil)
      .def("unflatten", [](T t, int64_t d, IntArrayRef s) { return t.unflatten(d, s); }, py::arg("dim"),
           py::arg("sizes"))
      .def("permute", [](T t, const py::args& a, py::object k) { return t.permute(sizes_arg(a, k, "permute")); },
           py::arg("dims") = py::none())
      .def("transpose", [](T t, int64_t a, int64_t b) { return t.transpose(a, b); }, py::arg("dim0"),
           py::arg("dim1"))
      .def("swapaxes", [](T t, int64_t a, int64_t b) { return t.transpose(a, b); }, py::arg("axis0"),
           py::arg("axis1"))
      .def("t", [](T t) { return t.t(); })
      .def_property_readonly("T", [](T t) {
        std::vector<int64_t> d(t.dim());
        for (int64_t i = 0; i < t.dim(); ++i) d[i] = t.dim() - 1 - i;
        return t.permute(d);
      })
      .def_property_readonly("mT", [](T t) { return t.mT(); })
      .def("unsqueeze", [](T t, int64_t d) { return t.unsqueeze(d); }, py::arg("dim"))
      .def("squeeze",
           [](T t, std::optional<int64_t> d) { return d ? t.squeeze(*d) : t.squeeze(); },
           py::arg("dim") = py::none())
      .def("expand", [](T t, const py::args& a, py::object k) { return t.expand(sizes_arg(a, k, "expand")); },
           py::arg("size") = py::none())
      .def("expand_as", [](T t, T o) { return t.expand_as(o); }, py::arg("other"))
      .def("broadcast_to", [](T t, IntArrayRef s) { return t.broadcast_to(s); }, py::arg("size"))
      .def("narrow", [](T t, int64_t d, int64_t s, int64_t l) { return t.narrow(d, s, l); }, py::arg("dim"),
           py::arg("start"), py::arg("length"))
      .def("select", [](T t, int64_t d, int64_t i) { return t.select(d, i); }, py::arg("dim"), py::arg("index"))
      .def("as_strided",
           [](T t, IntArrayRef size, IntArrayRef stride, std::optional<int64_t> off) {
             return t.as_strided(size, stride, off);
           },
           py::arg("size"), py::arg("stride"), py::arg("storage_offset") = py::none())
      .def("flip", [](T t, const py::args& a, py::object k) {
        auto d = sizes_arg(a, k, "flip");
        release_gil g;
        return t.flip(d);
      }, py::arg("dims") = py::none())
      .def("split",
           [](T t, py::handle s, int64_t dim) -> py::object {
             if (PyLong_Check(s.ptr())) return py::tuple(wrap(t.split(s.cast<int64_t>(), dim)));
             return py::tuple(wrap(t.split(s.cast<std::vector<int64_t>>(), dim)));
           },
           py::arg("split_size_or_sections"), py::arg("dim") = 0)
      .def("chunk", [](T t, int64_t c, int64_t d) { return py::tuple(wrap(t.chunk(c, d))); }, py::arg("chunks"),
           py::arg("dim") = 0)
      .def("unbind", [](T t, int64_t d) { return py::tuple(wrap(t.unbind(d))); }, py::arg("dim") = 0)
      .def("__getitem__",
           [](T t, py::handle key) {
             auto idx = index_key(key);
             release_gil g;
             return t.index(idx);
           })
      .def("__setitem__", [](T t, py::handle key, py::handle value) {
        auto idx = index_key(key);
        Tensor self = t;
        if (is_tensor(value)) {
          const Tensor& v = unwrap(value);
          release_gil g;
          self.index_put_(idx, v);
          return;
        }
        Scalar s;
        if (load_scalar(value, true, s)) {
          release_gil g;
          self.index_put_(idx, s);
          return;
        }
        Tensor v = to_tensor(value, t.dtype(), t.device(), false);
        release_gil g;
        self.index_put_(idx, v);
      });

  // ---- in place: each returns the tensor itself ----
  auto inplace = [&](const char* name, auto fn, auto... extra) {
    cls.def(
        name,
        [fn](py::handle self, py::handle o, Scalar alpha) {
          Tensor t = unwrap(self);
          if (is_tensor(o)) {
            const Tensor& ot = unwrap(o);
            release_gil g;
            fn(t, ot, alpha);
          } else {
            Scalar s;
            LOOM_CHECK(load_scalar(o, true, s), "in-place op: expected a tensor or a number");
            Tensor ot = scalar_tensor(s, TensorOptions(t.device()).dtype(result_type(t, s)));
            release_gil g;
            fn(t, ot, alpha);
          }
          return py::reinterpret_borrow<py::object>(self);
        },
        py::arg("other"), extra...);
  };
  inplace("add_", [](Tensor& t, T o, Scalar a) { t.add_(o, a); }, py::arg("alpha") = 1);
  inplace("sub_", [](Tensor& t, T o, Scalar a) { t.sub_(o, a); }, py::arg("alpha") = 1);
  inplace("mul_", [](Tensor& t, T o, Scalar) { t.mul_(o); }, py::arg("_alpha") = 1);
  inplace("div_", [](Tensor& t, T o, Scalar) { t.div_(o); }, py::arg("_alpha") = 1);
  // `x += y` runs the C slots (nb_inplace_add, ...); these names are for
  // explicit calls (x.__iadd__(y)) and do the same.
  auto slot_method = [&](const char* name, binaryfunc f) {
    cls.def(name, [f](py::handle self, py::handle o) {
      PyObject* r = f(self.ptr(), o.ptr());
      if (!r) throw py::error_already_set();
      return py::reinterpret_steal<py::object>(r);
    });
  };
  slot_method("__iadd__", nb_iadd);
  slot_method("__isub__", nb_isub);
  slot_method("__imul__", nb_imul);
  slot_method("__itruediv__", nb_idiv);
  // Runs fn(t) without the GIL and returns self.
  auto in_place = [](py::handle self, auto&& fn) {
    Tensor t = unwrap(self);
    {
      release_gil g;
      fn(t);
    }
    return py::reinterpret_borrow<py::object>(self);
  };
  cls.def("zero_", [in_place](py::handle self) { return in_place(self, [](Tensor& t) { t.zero_(); }); })
      .def("fill_",
           [in_place](py::handle self, py::handle v) {
             Scalar s;
             if (is_tensor(v)) {
               const Tensor& vt = unwrap(v);
               LOOM_CHECK(vt.dim() == 0, "fill_: only supports a 0-dimension value tensor, got shape ",
                          shape_str(vt.sizes()));
               s = vt.item();
             } else {
               LOOM_CHECK(load_scalar(v, true, s), "fill_: expected a number");
             }
             return in_place(self, [s](Tensor& t) { t.fill_(s); });
           },
           py::arg("value"))
      .def("copy_",
           [in_place](py::handle self, T src, bool) {
             return in_place(self, [&src](Tensor& t) { t.copy_(src); });
           },
           py::arg("src"), py::arg("non_blocking") = false)
      .def("masked_fill_",
           [in_place](py::handle self, T mask, py::handle v) {
             Scalar s;
             if (is_tensor(v)) {
               const Tensor& vt = unwrap(v);
               LOOM_CHECK(vt.dim() == 0, "masked_fill_: only supports a 0-dimension value tensor, got shape ",
                          shape_str(vt.sizes()));
               s = vt.item();
             } else {
               LOOM_CHECK(load_scalar(v, true, s), "masked_fill_: value must be a number or a tensor");
             }
             return in_place(self, [&](Tensor& t) { t.masked_fill_(mask, s); });
           },
           py::arg("mask"), py::arg("value"))
      .def("clamp_",
           [in_place](py::handle self, std::optional<Scalar> lo, std::optional<Scalar> hi) {
             return in_place(self, [&](Tensor& t) { t.clamp_(lo, hi); });
           },
           py::arg("min") = py::none(), py::arg("max") = py::none())
      .def("clip_",
           [in_place](py::handle self, std::optional<Scalar> lo, std::optional<Scalar> hi) {
             return in_place(self, [&](Tensor& t) { t.clamp_(lo, hi); });
           },
           py::arg("min") = py::none(), py::arg("max") = py::none())
      .def("uniform_",
           [in_place](py::handle self, double a, double b, std::optional<Generator> gen) {
             return in_place(self, [&](Tensor& t) { t.uniform_(a, b, gen); });
           },
           py::arg("from") = 0.0, py::arg("to") = 1.0, py::kw_only(), py::arg("generator") = py::none())
      .def("normal_",
           [in_place](py::handle self, double a, double b, std::optional<Generator> gen) {
             return in_place(self, [&](Tensor& t) { t.normal_(a, b, gen); });
           },
           py::arg("mean") = 0.0, py::arg("std") = 1.0, py::kw_only(), py::arg("generator") = py::none());

  // ---- operators ----
  cls.def("__add__", [](T a, py::handle b) {
       return binary(a, b, [](T x, T y) { return x + y; }, [](T x, Scalar s) { return x + s; });
     })
      .def("__radd__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return y + x; }, [](T x, Scalar s) { return s + x; });
      })
      .def("__sub__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return x - y; }, [](T x, Scalar s) { return x - s; });
      })
      .def("__rsub__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return y - x; }, [](T x, Scalar s) { return s - x; });
      })
      .def("__mul__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return x * y; }, [](T x, Scalar s) { return x * s; });
      })
      .def("__rmul__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return y * x; }, [](T x, Scalar s) { return s * x; });
      })
      .def("__truediv__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return x / y; }, [](T x, Scalar s) { return x / s; });
      })
      .def("__rtruediv__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return y / x; }, [](T x, Scalar s) { return s / x; });
      })
      .def("__pow__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return loom::pow(x, y); }, [](T x, Scalar s) { return loom::pow(x, s); });
      })
      .def("__rpow__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return loom::pow(y, x); }, [](T x, Scalar s) { return loom::pow(s, x); });
      })
      .def("__matmul__", [](T a, py::handle b) -> py::object {
        if (!is_tensor(b)) return not_implemented();
        const Tensor& bt = unwrap(b);
        Tensor r;
        {
          release_gil g;
          r = loom::matmul(a, bt);
        }
        return wrap(std::move(r));
      })
      .def("__rmatmul__", [](T a, py::handle b) -> py::object {
        if (!is_tensor(b)) return not_implemented();
        const Tensor& bt = unwrap(b);
        release_gil g;
        Tensor r = loom::matmul(bt, a);
        py::gil_scoped_acquire acq;
        return wrap(std::move(r));
      })
      .def("__neg__", [](T a) { return -a; }, nogil)
      .def("__pos__", [](py::handle self) { return py::reinterpret_borrow<py::object>(self); })
      .def("__abs__", [](T a) { return a.abs(); }, nogil)
      .def("__invert__",
           [](T a) {
             LOOM_CHECK(a.dtype() == kBool, "~ (bitwise not) is only supported on bool tensors in loom, got ",
                        dtype_name(a.dtype()));
             return a.logical_not();
           },
           nogil)
      .def("__and__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return x.logical_and(y); },
                      [](T x, Scalar s) { return x.logical_and(scalar_tensor(s, TensorOptions(kBool))); });
      })
      .def("__or__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return x.logical_or(y); },
                      [](T x, Scalar s) { return x.logical_or(scalar_tensor(s, TensorOptions(kBool))); });
      })
      .def("__rand__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return y.logical_and(x); },
                      [](T x, Scalar s) { return scalar_tensor(s, TensorOptions(kBool)).logical_and(x); });
      })
      .def("__ror__", [](T a, py::handle b) {
        return binary(a, b, [](T x, T y) { return y.logical_or(x); },
                      [](T x, Scalar s) { return scalar_tensor(s, TensorOptions(kBool)).logical_or(x); });
      });
  auto cmp = [&](const char* name, auto ft, auto fs) {
    cls.def(name, [ft, fs](T a, py::handle b) -> py::object {
      if (!is_tensor(b)) {
        Scalar s;
        if (!load_scalar(b, true, s)) return not_implemented();
      }
      return binary(a, b, ft, fs);
    });
  };
  cmp("__eq__", [](T x, T y) { return x == y; }, [](T x, Scalar s) { return x == s; });
  cmp("__ne__", [](T x, T y) { return x != y; }, [](T x, Scalar s) { return x != s; });
  cmp("__lt__", [](T x, T y) { return x < y; }, [](T x, Scalar s) { return x < s; });
  cmp("__le__", [](T x, T y) { return x <= y; }, [](T x, Scalar s) { return x <= s; });
  cmp("__gt__", [](T x, T y) { return x > y; }, [](T x, Scalar s) { return x > s; });
  cmp("__ge__", [](T x, T y) { return x >= y; }, [](T x, Scalar s) { return x >= s; });
  // __eq__ removes the default hash; tensors hash by identity, as PyTorch's.
  cls.def("__hash__", [](py::handle self) { return reinterpret_cast<intptr_t>(self.ptr()); });

  // ---- math methods (the free functions of loom/ops.h) ----
  auto method_bin = [&](const char* name, auto ft, auto fs, const char* arg = "other") {
    cls.def(name, [name, ft, fs](T a, py::handle b) -> py::object {
      py::object r = binary(a, b, ft, fs);
      if (r.ptr() == Py_NotImplemented)
        throw py::type_error(std::string("Tensor.") + name + ": expected a tensor or a number as the argument");
      return r;
    }, py::arg(arg));
  };
  cls.def("add", [](T a, py::handle b, Scalar alpha) {
       Tensor bt = as_operand(b, a);
       release_gil g;
       return a.add(bt, alpha);
     }, py::arg("other"), py::kw_only(), py::arg("alpha") = 1)
      .def("sub", [](T a, py::handle b, Scalar alpha) {
        Tensor bt = as_operand(b, a);
        release_gil g;
        return a.sub(bt, alpha);
      }, py::arg("other"), py::kw_only(), py::arg("alpha") = 1);
  method_bin("mul", [](T x, T y) { return x * y; }, [](T x, Scalar s) { return x * s; });
  method_bin("div", [](T x, T y) { return x / y; }, [](T x, Scalar s) { return x / s; });
  method_bin("pow", [](T x, T y) { return loom::pow(x, y); }, [](T x, Scalar s) { return loom::pow(x, s); },
             "exponent");
  method_bin("eq", [](T x, T y) { return x.eq(y); }, [](T x, Scalar s) { return x.eq(s); });
  method_bin("ne", [](T x, T y) { return x.ne(y); }, [](T x, Scalar s) { return x.ne(s); });
  method_bin("lt", [](T x, T y) { return x.lt(y); }, [](T x, Scalar s) { return x.lt(s); });
  method_bin("le", [](T x, T y) { return x.le(y); }, [](T x, Scalar s) { return x.le(s); });
  method_bin("gt", [](T x, T y) { return x.gt(y); }, [](T x, Scalar s) { return x.gt(s); });
  method_bin("ge", [](T x, T y) { return x.ge(y); }, [](T x, Scalar s) { return x.ge(s); });
  cls.def("maximum", [](T a, T b) { return a.maximum(b); }, py::arg("other"), nogil)
      .def("minimum", [](T a, T b) { return a.minimum(b); }, py::arg("other"), nogil)
      .def("logical_and", [](T a, T b) { return a.logical_and(b); }, py::arg("other"), nogil)
      .def("logical_or", [](T a, T b) { return a.logical_or(b); }, py::arg("other"), nogil)
      .def("logical_not", [](T a) { return a.logical_not(); }, nogil)
      .def("matmul", [](T a, T b) { return a.matmul(b); }, py::arg("other"), nogil)
      .def("mm", [](T a, T b) { return a.mm(b); }, py::arg("mat2"), nogil)
      .def("bmm", [](T a, T b) { return a.bmm(b); }, py::arg("mat2"), nogil)
      .def("clamp", [](T a, std::optional<Scalar> lo, std::optional<Scalar> hi) { return a.clamp(lo, hi); },
           py::arg("min") = py::none(), py::arg("max") = py::none(), nogil)
      .def("clip", [](T a, std::optional<Scalar> lo, std::optional<Scalar> hi) { return a.clamp(lo, hi); },
           py::arg("min") = py::none(), py::arg("max") = py::none(), nogil)
      .def("clamp_min", [](T a, Scalar lo) { return a.clamp_min(lo); }, py::arg("min"), nogil)
      .def("clamp_max", [](T a, Scalar hi) { return a.clamp_max(hi); }, py::arg("max"), nogil)
      .def("masked_fill", [](T a, T mask, py::handle v) {
        if (is_tensor(v)) {
          const Tensor& vt = unwrap(v);
          release_gil g;
          return a.masked_fill(mask, vt);
        }
        Scalar s;
        LOOM_CHECK(load_scalar(v, true, s), "masked_fill: value must be a number or a tensor");
        release_gil g;
        return a.masked_fill(mask, s);
      }, py::arg("mask"), py::arg("value"))
      .def("where", [](T a, T cond, py::handle other) {
        Tensor o = as_operand(other, a);
        release_gil g;
        return loom::where(cond, a, o);
      }, py::arg("condition"), py::arg("other"))
      .def("gather", [](T a, int64_t d, T i) { return a.gather(d, i); }, py::arg("dim"), py::arg("index"), nogil)
      .def("scatter_add", [](T a, int64_t d, T i, T s) { return a.scatter_add(d, i, s); }, py::arg("dim"),
           py::arg("index"), py::arg("src"), nogil)
      .def("index_select", [](T a, int64_t d, T i) { return a.index_select(d, i); }, py::arg("dim"),
           py::arg("index"), nogil)
      .def("tril", [](T a, int64_t k) { return a.tril(k); }, py::arg("diagonal") = 0, nogil)
      .def("triu", [](T a, int64_t k) { return a.triu(k); }, py::arg("diagonal") = 0, nogil)
      .def("allclose", [](T a, T b, double rtol, double atol, bool nan) { return a.allclose(b, rtol, atol, nan); },
           py::arg("other"), py::arg("rtol") = 1e-5, py::arg("atol") = 1e-8, py::arg("equal_nan") = false, nogil)
      .def("equal", [](T a, T b) { return a.equal(b); }, py::arg("other"), nogil);
  auto unary = [&](const char* name, Tensor (*fn)(const Tensor&)) { cls.def(name, fn, nogil); };
  unary("neg", &loom::neg);
  unary("negative", &loom::neg);
  unary("exp", &loom::exp);
  unary("log", &loom::log);
  unary("log1p", &loom::log1p);
  unary("sqrt", &loom::sqrt);
  unary("rsqrt", &loom::rsqrt);
  unary("abs", &loom::abs);
  unary("sign", &loom::sign);
  unary("sin", &loom::sin);
  unary("cos", &loom::cos);
  unary("tanh", &loom::tanh);
  unary("erf", &loom::erf);
  unary("sigmoid", &loom::sigmoid);
  unary("relu", &loom::relu);
  unary("square", &loom::square);
  unary("reciprocal", &loom::reciprocal);
  unary("isnan", &loom::isnan);

  // ---- reductions ----
  cls.def("sum",
          [](T a, py::object dim, bool keepdim, std::optional<DType> dtype) {
            auto d = opt_dims(dim);
            release_gil g;
            return dtype ? loom::sum(a, d, keepdim, *dtype) : loom::sum(a, d, keepdim);
          },
          py::arg("dim") = py::none(), py::arg("keepdim") = false, py::kw_only(), py::arg("dtype") = py::none())
      .def("mean",
           [](T a, py::object dim, bool keepdim, std::optional<DType> dtype) {
             auto d = opt_dims(dim);
             release_gil g;
             return loom::mean(dtype ? a.to(*dtype) : a, d, keepdim);
           },
           py::arg("dim") = py::none(), py::arg("keepdim") = false, py::kw_only(), py::arg("dtype") = py::none())
      .def("prod",
           [](T a, std::optional<int64_t> dim, bool keepdim, std::optional<DType> dtype) {
             release_gil g;
             Tensor ad = dtype ? a.to(*dtype) : a;
             return dim ? ad.prod(*dim, keepdim) : ad.prod();
           },
           py::arg("dim") = py::none(), py::arg("keepdim") = false, py::kw_only(), py::arg("dtype") = py::none())
      .def("amax", [](T a, py::object dim, bool keepdim) { return a.amax(opt_dims(dim), keepdim); },
           py::arg("dim") = py::tuple(), py::arg("keepdim") = false)
      .def("amin", [](T a, py::object dim, bool keepdim) { return a.amin(opt_dims(dim), keepdim); },
           py::arg("dim") = py::tuple(), py::arg("keepdim") = false)
      .def("max",
           [](T a, py::object dim, bool keepdim) -> py::object {
             if (dim.is_none()) return wrap(a.max());
             if (is_tensor(dim)) return wrap(a.maximum(unwrap(dim)));
             return values_indices(g_max_type, a.max(dim.cast<int64_t>(), keepdim));
           },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("min",
           [](T a, py::object dim, bool keepdim) -> py::object {
             if (dim.is_none()) return wrap(a.min());
             if (is_tensor(dim)) return wrap(a.minimum(unwrap(dim)));
             return values_indices(g_min_type, a.min(dim.cast<int64_t>(), keepdim));
           },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("argmax", [](T a, std::optional<int64_t> dim, bool keepdim) { return loom::argmax(a, dim, keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false, nogil)
      .def("argmin", [](T a, std::optional<int64_t> dim, bool keepdim) { return loom::argmin(a, dim, keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false, nogil)
      .def("var",
           [](T a, py::object dim, std::optional<bool> unbiased, bool keepdim, std::optional<int64_t> correction) {
             auto d = var_dims(dim, unbiased);
             return a.var(d, correction_of(unbiased, correction), keepdim);
           },
           py::arg("dim") = py::none(), py::arg("unbiased") = py::none(), py::arg("keepdim") = false, py::kw_only(),
           py::arg("correction") = py::none())
      .def("std",
           [](T a, py::object dim, std::optional<bool> unbiased, bool keepdim, std::optional<int64_t> correction) {
             auto d = var_dims(dim, unbiased);
             return a.std(d, correction_of(unbiased, correction), keepdim);
           },
           py::arg("dim") = py::none(), py::arg("unbiased") = py::none(), py::arg("keepdim") = false, py::kw_only(),
           py::arg("correction") = py::none())
      .def("norm", [](T a, double p, py::object dim, bool keepdim) { return a.norm(p, opt_dims(dim), keepdim); },
           py::arg("p") = 2.0, py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("logsumexp", [](T a, py::object dim, bool keepdim) { return a.logsumexp(opt_dims(dim), keepdim); },
           py::arg("dim"), py::arg("keepdim") = false)
      .def("cumsum", [](T a, int64_t d, std::optional<DType> dt) { return (dt ? a.to(*dt) : a).cumsum(d); },
           py::arg("dim"), py::kw_only(), py::arg("dtype") = py::none(), nogil)
      .def("softmax", [](T a, int64_t d, std::optional<DType> dt) { return (dt ? a.to(*dt) : a).softmax(d); },
           py::arg("dim"), py::arg("dtype") = py::none(), nogil)
      .def("log_softmax", [](T a, int64_t d, std::optional<DType> dt) { return (dt ? a.to(*dt) : a).log_softmax(d); },
           py::arg("dim"), py::arg("dtype") = py::none(), nogil);

  g_error_type = m.attr("Error").ptr();
  auto* type = reinterpret_cast<PyTypeObject*>(cls.ptr());
  type->tp_as_number->nb_add = nb_add;
  type->tp_as_number->nb_subtract = nb_sub;
  type->tp_as_number->nb_multiply = nb_mul;
  type->tp_as_number->nb_true_divide = nb_div;
  type->tp_as_number->nb_negative = nb_neg;
  type->tp_as_number->nb_inplace_add = nb_iadd;
  type->tp_as_number->nb_inplace_subtract = nb_isub;
  type->tp_as_number->nb_inplace_multiply = nb_imul;
  type->tp_as_number->nb_inplace_true_divide = nb_idiv;
  type->tp_richcompare = tp_richcompare;
  PyType_Modified(type);
}

}  // namespace loom::python
