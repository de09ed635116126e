// NumPy and DLPack: tensors that share memory with NumPy arrays and with
// other frameworks' tensors (torch.from_dlpack(loom_tensor),
// loom.from_dlpack(torch_tensor)). Nothing is copied; each side keeps the
// other's memory alive for as long as it uses it.
#include <pybind11/numpy.h>

#include "bind.h"

namespace loom::python {

namespace {

// ---- DLPack (the ABI of dlpack.h, version 0.8) ----
enum DLDeviceType : int32_t { kDLCPU = 1, kDLCUDA = 2 };
enum DLDataTypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6 };
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// What a loom tensor exported through DLPack keeps alive.
struct ExportContext {
  Tensor tensor;
  std::vector<int64_t> shape, strides;
  DLManagedTensor managed;
};

DLDataType to_dl(DType d) {
  switch (d) {
    case kFloat32: return {kDLFloat, 32, 1};
    case kFloat64: return {kDLFloat, 64, 1};
    case kFloat16: return {kDLFloat, 16, 1};
    case kBFloat16: return {kDLBfloat, 16, 1};
    case kInt32: return {kDLInt, 32, 1};
    case kInt64: return {kDLInt, 64, 1};
    case kUInt8: return {kDLUInt, 8, 1};
    case kInt8: return {kDLInt, 8, 1};
    case kBool: return {kDLBool, 8, 1};
  }
  LOOM_ERROR("__dlpack__: unknown dtype");
}

DType from_dl(DLDataType t) {
  LOOM_CHECK(t.lanes == 1, "from_dlpack: vector dtypes (lanes=", t.lanes, ") are not supported");
  if (t.code == kDLFloat && t.bits == 32) return kFloat32;
  if (t.code == kDLFloat && t.bits == 64) return kFloat64;
  if (t.code == kDLFloat && t.bits == 16) return kFloat16;
  if (t.code == kDLBfloat && t.bits == 16) return kBFloat16;
  if (t.code == kDLInt && t.bits == 32) return kInt32;
  if (t.code == kDLInt && t.bits == 64) return kInt64;
  if (t.code == kDLUInt && t.bits == 8) return kUInt8;
  if (t.code == kDLInt && t.bits == 8) return kInt8;
  if (t.code == kDLBool && t.bits == 8) return kBool;
  LOOM_ERROR("from_dlpack: loom has no dtype for DLPack type code ", int(t.code), " with ", int(t.bits), " bits");
}

py::capsule to_dlpack(const Tensor& t) {
  auto* ctx = new ExportContext{t.detach(), t.sizes(), t.strides(), {}};
  DLTensor& dl = ctx->managed.dl_tensor;
  dl.data = t.numel() ? t.raw_data_ptr() : nullptr;
  dl.device = {t.device().is_cpu() ? kDLCPU : kDLCUDA, t.device().is_cpu() ? 0 : t.device().index};
  dl.ndim = static_cast<int32_t>(t.dim());
  dl.dtype = to_dl(t.dtype());
  dl.shape = ctx->shape.data();
  dl.strides = ctx->strides.data();
  dl.byte_offset = 0;
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = [](DLManagedTensor* self) { delete static_cast<ExportContext*>(self->manager_ctx); };
  // A capsule nobody consumed still owns the tensor: free it with the capsule.
  return py::capsule(&ctx->managed, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      if (m && m->deleter) m->deleter(m);
    }
  });
}

Tensor from_dlpack(py::handle obj) {
  py::object cap = py::reinterpret_borrow<py::object>(obj);
  if (!PyCapsule_CheckExact(obj.ptr())) {
    LOOM_CHECK(py::hasattr(obj, "__dlpack__"), "from_dlpack: expected an object with __dlpack__ or a DLPack capsule, got ",
               std::string(py::str(py::type::of(obj))));
    cap = obj.attr("__dlpack__")();
  }
  LOOM_CHECK(PyCapsule_IsValid(cap.ptr(), "dltensor"),
             "from_dlpack: the capsule was already consumed (a DLPack capsule can be imported once)");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  const DLTensor& dl = managed->dl_tensor;
  LOOM_CHECK(dl.device.device_type == kDLCPU, "from_dlpack: only CPU tensors can be imported (device type ",
             dl.device.device_type, ")");
  const DType dtype = from_dl(dl.dtype);
  std::vector<int64_t> sizes(dl.shape, dl.shape + dl.ndim);
  std::vector<int64_t> strides(dl.ndim);
  if (dl.strides) {
    strides.assign(dl.strides, dl.strides + dl.ndim);
  } else {  // compact row-major
    int64_t s = 1;
    for (int64_t d = dl.ndim - 1; d >= 0; --d) {
      strides[d] = s;
      s *= sizes[d];
    }
  }
  void* data = static_cast<char*>(dl.data) + dl.byte_offset;
  PyCapsule_SetName(cap.ptr(), "used_dltensor");
  return from_blob(data, sizes, strides, TensorOptions(dtype), [managed](void*) {
    if (managed->deleter) {
      py::gil_scoped_acquire gil;  // a Python producer's deleter may touch Python objects
      managed->deleter(managed);
    }
  });
}

// ---- NumPy ----
std::optional<DType> numpy_dtype(const py::dtype& d) {
  if (d.kind() == 'f' && d.itemsize() == 4) return kFloat32;
  if (d.kind() == 'f' && d.itemsize() == 8) return kFloat64;
  if (d.kind() == 'f' && d.itemsize() == 2) return kFloat16;
  if (d.kind() == 'i' && d.itemsize() == 4) return kInt32;
  if (d.kind() == 'i' && d.itemsize() == 8) return kInt64;
  if (d.kind() == 'u' && d.itemsize() == 1) return kUInt8;
  if (d.kind() == 'i' && d.itemsize() == 1) return kInt8;
  if (d.kind() == 'b') return kBool;
  return std::nullopt;
}

py::dtype to_numpy_dtype(DType d) {
  switch (d) {
    case kFloat32: return py::dtype("float32");
    case kFloat64: return py::dtype("float64");
    case kFloat16: return py::dtype("float16");
    case kInt32: return py::dtype("int32");
    case kInt64: return py::dtype("int64");
    case kUInt8: return py::dtype("uint8");
    case kInt8: return py::dtype("int8");
    case kBool: return py::dtype("bool");
    case kBFloat16: break;
  }
  LOOM_ERROR("numpy: NumPy has no bfloat16; convert first (t.float().numpy())");
}

py::array to_numpy(const Tensor& t, bool force) {
  LOOM_CHECK(t.device().is_cpu(), "numpy: can't convert a ", t.device().str(),
             " tensor to NumPy; use Tensor.cpu() to copy it to host memory first");
  LOOM_CHECK(force || !t.requires_grad(),
             "numpy: can't call numpy() on a tensor that requires grad; use tensor.detach().numpy() instead");
  Tensor base = t.detach();
  if (force && !t.device().is_cpu()) base = base.cpu();
  std::vector<py::ssize_t> shape(base.sizes().begin(), base.sizes().end());
  std::vector<py::ssize_t> strides;
  for (int64_t s : base.strides()) strides.push_back(static_cast<py::ssize_t>(s * base.element_size()));
  // The array's base object keeps the tensor's storage alive.
  py::capsule owner(new Tensor(base), [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(to_numpy_dtype(base.dtype()), shape, strides, base.numel() ? base.raw_data_ptr() : nullptr, owner);
}

}  // namespace

bool is_numpy_array(py::handle h) { return py::isinstance<py::array>(h); }

Tensor numpy_to_tensor(py::handle h, bool /*copy*/) {
  py::array a = py::reinterpret_borrow<py::array>(h);
  std::optional<DType> d = numpy_dtype(a.dtype());
  LOOM_CHECK(d.has_value(), "from_numpy: can't convert a NumPy array of dtype ", std::string(py::str(a.dtype())),
             "; the supported dtypes are float64, float32, float16, int64, int32, uint8 and bool");
  std::vector<int64_t> sizes(a.shape(), a.shape() + a.ndim());
  std::vector<int64_t> strides(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    LOOM_CHECK(a.strides(i) % a.itemsize() == 0 && a.strides(i) >= 0,
               "from_numpy: strides that are negative or not a multiple of the element size are not supported "
               "(got ", a.strides(i), " bytes at dim ", i, "); pass a copy (array.copy())");
    strides[i] = a.strides(i) / a.itemsize();
  }
  auto* keep = new py::object(py::reinterpret_borrow<py::object>(h));
  return from_blob(const_cast<void*>(a.data()), sizes, strides, TensorOptions(*d), [keep](void*) {
    py::gil_scoped_acquire gil;
    delete keep;
  });
}

void bind_interop(py::module_& m) {
  m.def("from_numpy",
        [](py::handle a) {
          LOOM_CHECK(is_numpy_array(a), "from_numpy: expected a numpy.ndarray, got ", std::string(py::str(py::type::of(a))));
          return numpy_to_tensor(a, false);
        },
        py::arg("ndarray"));
  m.def("from_dlpack", &from_dlpack, py::arg("ext_tensor"));
  py::object cls = m.attr("Tensor");
  cls.attr("numpy") = py::cpp_function([](const Tensor& t, bool force) { return to_numpy(t, force); },
                                       py::is_method(cls), py::name("numpy"), py::kw_only(),
                                       py::arg("force") = false);
  cls.attr("__array__") = py::cpp_function(
      [](const Tensor& t, py::object dtype) -> py::object {
        py::array a = to_numpy(t.requires_grad() ? t.detach() : t, false);
        if (dtype.is_none()) return a;
        return a.attr("astype")(dtype);
      },
      py::is_method(cls), py::name("__array__"), py::arg("dtype") = py::none());
  cls.attr("__dlpack__") = py::cpp_function([](const Tensor& t, py::object /*stream*/) {
        LOOM_CHECK(!t.requires_grad(), "__dlpack__: can't export a tensor that requires grad; use tensor.detach() first");
        return to_dlpack(t);
      },
      py::is_method(cls), py::name("__dlpack__"), py::arg("stream") = py::none());
  cls.attr("__dlpack_device__") = py::cpp_function(
      [](const Tensor& t) {
        return py::make_tuple(t.device().is_cpu() ? int(kDLCPU) : int(kDLCUDA), t.device().is_cpu() ? 0 : t.device().index);
      },
      py::is_method(cls), py::name("__dlpack_device__"));
}

}  // namespace loom::python
