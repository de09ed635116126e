// What every binding file of loom._C shares: how a loom::Tensor, Scalar,
// IntArrayRef, DType and Device cross into and out of Python, and the
// conventions the binders follow.
//
// Note [One Python object per tensor]
// A loom::Tensor is a handle; many handles share one TensorImpl. PyTorch
// keeps one Python object per TensorImpl, so `p.grad is p.grad`, tensors
// hash by identity (dict keys, optimizer state) and a Parameter stays a
// Parameter when a module hands it back. loom._C does the same with a table
// from TensorImpl to the Python object that wraps it: wrap() returns the
// object already in the table (a new reference) or makes one and enters it;
// the object's destructor removes its entry. An object made from Python (a
// Parameter) enters the table the first time it is passed into loom. The
// object holds the impl, so an entry never outlives its impl.
//
// Conventions:
// - Every binding that runs kernels releases the GIL while they run
//   (py::call_guard<py::gil_scoped_release> or release_gil{}); a C++
//   callback into Python (hooks, Python autograd Functions, Python datasets,
//   deleters of NumPy-owned memory) takes it back with py::gil_scoped_acquire.
// - loom::Error arrives in Python as loom.Error, a RuntimeError.
// - Names and keyword arguments are PyTorch's.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "loom/loom.h"

namespace py = pybind11;

namespace loom::python {

// The instance layout of loom.Tensor (see Note [One Python object per tensor]).
struct PyTensor {
  Tensor t;
  bool registered = false;
  explicit PyTensor(Tensor x) : t(std::move(x)) {}
  PyTensor(PyTensor&& o) noexcept : t(std::move(o.t)), registered(false) {}
  PyTensor(const PyTensor&) = delete;
  ~PyTensor();
};

// The Python object for `t` (None for an undefined tensor).
py::object wrap(Tensor t);
py::object wrap(std::vector<Tensor> ts);  // a list
// A new object of `type` (loom.Tensor or a Python subclass, e.g.
// nn.Parameter) standing for `t`, entered in the table unless another
// object already stands for t's impl.
py::object wrap_as(const Tensor& t, py::handle type);
// Is `h` a loom.Tensor (or a subclass)? unwrap() requires it.
bool is_tensor(py::handle h);
const Tensor& unwrap(py::handle h);
PyTensor& unwrap_box(py::handle h);

// loom.Size (a tuple subclass, defined in python/loom/_tensor.py and handed
// over by _C._set_size_type) holding `sizes`.
py::object make_size(const std::vector<int64_t>& sizes);

// Keyword arguments every factory takes: dtype=None, device=None, requires_grad=False.
TensorOptions make_options(std::optional<DType> dtype, std::optional<Device> device, bool requires_grad = false,
                           std::optional<TensorOptions> base = std::nullopt);
Device parse_device(const std::string& s);
// Python int/float/bool (or anything with __index__ / __float__) as a Scalar.
bool load_scalar(py::handle src, bool convert, Scalar& out);
// A dims argument: an int, or a tuple/list of ints (or None: all dims).
std::vector<int64_t> dims_arg(const py::object& dim);
// Sizes given as varargs or as one sequence: x.view(2, 3) and x.view((2, 3)).
std::vector<int64_t> sizes_from_args(const py::args& args, const char* what);
// Turns a Python number, nested list, NumPy array or tensor into a tensor
// (loom.tensor / loom.as_tensor semantics).
Tensor to_tensor(py::handle data, std::optional<DType> dtype, std::optional<Device> device, bool copy);

// A Python callback failed: when the failure is a C++ signal of the core
// that crossed Python (Note [C++ signals through Python] in core.cpp),
// throws it again; otherwise returns, and the caller rethrows e.
void rethrow_parked(py::error_already_set& e);

// Releases the GIL for its scope (the kernel part of a binding).
using release_gil = py::gil_scoped_release;

// Registration of each part of the module (one file each).
void bind_core(py::module_& m);       // dtype, device, Generator, Size, errors, threads  (core.cpp)
void bind_tensor(py::module_& m);     // loom.Tensor                                      (tensor.cpp)
void bind_ops(py::module_& m);        // factories and every op of loom/ops.h             (ops.cpp)
void bind_interop(py::module_& m);    // NumPy and DLPack                                 (interop.cpp)
void bind_autograd(py::module_& m);   // grad modes, autograd.grad, Python Functions      (autograd.cpp)
void bind_nn(py::module_& m);         // modules, functional, init                        (nn.cpp)
void bind_optim(py::module_& m);      // optimizers, schedulers, clip_grad                (optim.cpp)
void bind_data(py::module_& m);       // datasets, samplers, DataLoader                   (data.cpp)
void bind_io(py::module_& m);         // save / load (safetensors)                        (io.cpp)
void bind_jit(py::module_& m);        // loom.compile                                     (jit.cpp)
void bind_distributed(py::module_& m);// loom.distributed                                 (distributed.cpp)

}  // namespace loom::python

namespace pybind11::detail {

template <>
struct type_caster<loom::Tensor> {
  PYBIND11_TYPE_CASTER(loom::Tensor, const_name("loom.Tensor"));
  bool load(handle src, bool /*convert*/) {
    if (src.is_none()) {  // None where a tensor may be left out (an undefined Tensor)
      value = loom::Tensor();
      return true;
    }
    if (!loom::python::is_tensor(src)) return false;
    value = loom::python::unwrap(src);
    return true;
  }
  static handle cast(const loom::Tensor& t, return_value_policy, handle) {
    return loom::python::wrap(t).release();
  }
};

template <>
struct type_caster<loom::Scalar> {
  PYBIND11_TYPE_CASTER(loom::Scalar, const_name("Number"));
  bool load(handle src, bool convert) { return loom::python::load_scalar(src, convert, value); }
  static handle cast(const loom::Scalar& s, return_value_policy, handle) {
    if (s.is_bool()) return pybind11::bool_(s.to_bool()).release();
    if (s.is_integral()) return PyLong_FromLongLong(s.to_long());
    return PyFloat_FromDouble(s.to_double());
  }
};

template <>
struct type_caster<loom::IntArrayRef> {
  PYBIND11_TYPE_CASTER(loom::IntArrayRef, const_name("Sequence[int]"));
  bool load(handle src, bool convert) {
    if (PyLong_Check(src.ptr()) && !PyBool_Check(src.ptr())) {
      value = loom::IntArrayRef(static_cast<int64_t>(PyLong_AsLongLong(src.ptr())));
      return !PyErr_Occurred() || (PyErr_Clear(), false);
    }
    if (!PyTuple_Check(src.ptr()) && !PyList_Check(src.ptr())) {
      if (!convert || !PySequence_Check(src.ptr()) || PyUnicode_Check(src.ptr())) return false;
    }
    std::vector<int64_t> v;
    pybind11::sequence seq = reinterpret_borrow<pybind11::sequence>(src);
    v.reserve(seq.size());
    for (handle item : seq) {
      if (PyBool_Check(item.ptr())) return false;
      PyObject* idx = PyNumber_Index(item.ptr());
      if (!idx) {
        PyErr_Clear();
        return false;
      }
      v.push_back(PyLong_AsLongLong(idx));
      Py_DECREF(idx);
    }
    value = loom::IntArrayRef(std::move(v));
    return true;
  }
  static handle cast(const loom::IntArrayRef& a, return_value_policy, handle) {
    return loom::python::make_size(a.vec()).release();
  }
};

}  // namespace pybind11::detail
