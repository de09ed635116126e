// loom.<op>: the factories and every op of include/loom/ops.h, with
// PyTorch's Python signatures (sizes as varargs or a sequence; dtype=,
// device=, requires_grad= keywords; numbers where PyTorch takes them).
#include "bind.h"

namespace loom::python {

namespace {

using T = const Tensor&;

// An op argument that may be a tensor or a number. A number becomes a 0-dim
// tensor on `other`'s device with the dtype PyTorch gives `other op number`
// (a wrapped number: int tensor * 2.5 is float32, not float64).
Tensor operand(py::handle h, py::handle other, const char* op) {
  if (is_tensor(h)) return unwrap(h);
  Scalar s;
  if (load_scalar(h, true, s)) {
    if (!is_tensor(other)) return scalar_tensor(s, TensorOptions(s.is_floating_point() ? default_dtype() : s.dtype()));
    const Tensor& o = unwrap(other);
    return scalar_tensor(s, TensorOptions(result_type(o, s)).device(o.device()));
  }
  LOOM_ERROR(op, ": expected a tensor or a number, got ", std::string(py::str(py::type::of(h))));
}

// A size-like argument in its PyTorch forms: an int or a sequence of ints.
std::vector<int64_t> int_list(py::handle h) { return h.cast<IntArrayRef>().vec(); }

// A factory's sizes: varargs, one sequence, or the keyword (loom.zeros(size=(2, 3))).
std::vector<int64_t> factory_sizes(const py::args& args, const py::object& size, const char* what) {
  if (size.is_none()) return sizes_from_args(args, what);
  LOOM_CHECK(args.empty(), what, ": sizes given both as arguments and as size=");
  return int_list(size);
}

LinearActivation linear_activation(const std::optional<std::string>& a) {
  if (!a || *a == "none") return LinearActivation::None;
  if (*a == "relu") return LinearActivation::Relu;
  if (*a == "gelu") return LinearActivation::Gelu;
  if (*a == "gelu_tanh") return LinearActivation::GeluTanh;
  LOOM_ERROR("linear: activation must be None, 'relu', 'gelu' or 'gelu_tanh', got '", *a, "'");
}

// Flattens nested lists/tuples of numbers (or 0-dim tensors) into values and sizes.
struct Nested {
  std::vector<int64_t> sizes;
  std::vector<double> values;
  std::vector<int64_t> ints;
  bool any_float = false, all_bool = true, any_value = false;

  void walk(py::handle h, size_t depth) {
    if (PyList_Check(h.ptr()) || PyTuple_Check(h.ptr()) || (is_tensor(h) && unwrap(h).dim() > 0)) {
      py::sequence seq = is_tensor(h) ? py::sequence(wrap(unwrap(h).unbind(0))) : py::reinterpret_borrow<py::sequence>(h);
      const int64_t n = static_cast<int64_t>(seq.size());
      if (sizes.size() == depth) {
        LOOM_CHECK(!any_value || depth == 0, "tensor: ragged nested sequence (a list where a number was expected)");
        sizes.push_back(n);
      } else {
        LOOM_CHECK(depth < sizes.size() && sizes[depth] == n, "tensor: expected a sequence of length ",
                   depth < sizes.size() ? sizes[depth] : 0, " at dim ", depth, " (got ", n, ")");
      }
      for (py::handle item : seq) walk(item, depth + 1);
      return;
    }
    LOOM_CHECK(depth == sizes.size(), "tensor: ragged nested sequence: a number at dim ", depth, " where dim ",
               sizes.size(), " was expected");
    any_value = true;
    Scalar s;
    if (is_tensor(h)) {
      s = unwrap(h).item();
      if (unwrap(h).is_floating_point()) s = Scalar(s.to_double());
    } else {
      LOOM_CHECK(load_scalar(h, true, s), "tensor: could not convert an element of type ",
                 std::string(py::str(py::type::of(h))), " to a number");
    }
    if (s.is_floating_point()) any_float = true;
    if (!s.is_bool()) all_bool = false;
    values.push_back(s.to_double());
    ints.push_back(s.to_long());
  }
};

}  // namespace

Tensor numpy_to_tensor(py::handle array, bool copy);  // interop.cpp
bool is_numpy_array(py::handle h);                    // interop.cpp

Tensor to_tensor(py::handle data, std::optional<DType> dtype, std::optional<Device> device, bool copy) {
  Tensor t;
  if (is_tensor(data)) {
    t = unwrap(data).detach();
  } else if (is_numpy_array(data)) {
    t = numpy_to_tensor(data, false);
  } else if (PyObject_HasAttrString(data.ptr(), "dtype") && PyObject_HasAttrString(data.ptr(), "__array__")) {
    // A NumPy scalar (np.float64(1.5)) keeps its dtype, as in torch.tensor.
    t = numpy_to_tensor(py::module_::import("numpy").attr("asarray")(data), false);
  } else if (py::hasattr(data, "__dlpack__") && !PyList_Check(data.ptr()) && !PyTuple_Check(data.ptr())) {
    t = py::module_::import("loom").attr("from_dlpack")(data).cast<Tensor>();
  } else {
    Scalar s;
    if (load_scalar(data, true, s)) {
      DType d = s.is_floating_point() ? default_dtype() : s.dtype();
      return scalar_tensor(s, TensorOptions(dtype.value_or(d)).device(device.value_or(Device::cpu())));
    }
    Nested n;
    n.walk(data, 0);
    if (n.sizes.empty()) n.sizes.push_back(0);
    const DType natural = n.any_float || !n.any_value ? default_dtype() : n.all_bool ? kBool : kInt64;
    const DType d = dtype.value_or(natural);
    if (!n.any_float && is_integral(d, true) && d != kBool) {
      t = loom::tensor(n.ints, kInt64).to(d);
    } else {
      t = loom::tensor(n.values, kFloat64).to(d);
    }
    t = t.reshape(n.sizes);
    if (device && *device != t.device()) t = t.to(*device);
    return t;
  }
  TensorOptions o = t.options();
  if (dtype) o = o.dtype(*dtype);
  if (device) o = o.device(*device);
  return t.to(o, copy);
}

void bind_ops(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  auto kw_opts = [] {
    return std::make_tuple(py::arg("dtype") = py::none(), py::arg("device") = py::none(),
                           py::arg("requires_grad") = false);
  };
  (void)kw_opts;

  // ---- factories ----
  using OD = std::optional<DType>;
  using ODev = std::optional<Device>;
  using OG = std::optional<Generator>;
  auto sized = [&](const char* name, Tensor (*fn)(IntArrayRef, const TensorOptions&)) {
    m.def(
        name,
        [fn, name](const py::args& args, py::object size, OD dtype, ODev device, bool rg) {
          auto s = factory_sizes(args, size, name);
          auto o = make_options(dtype, device, rg);
          release_gil g;
          return fn(s, o);
        },
        py::kw_only(), py::arg("size") = py::none(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
        py::arg("requires_grad") = false);
  };
  sized("empty", [](IntArrayRef s, const TensorOptions& o) { return empty(s, o); });
  sized("zeros", [](IntArrayRef s, const TensorOptions& o) { return zeros(s, o); });
  sized("ones", [](IntArrayRef s, const TensorOptions& o) { return ones(s, o); });
  auto random_sized = [&](const char* name, Tensor (*fn)(IntArrayRef, const TensorOptions&, OG)) {
    m.def(
        name,
        [fn, name](const py::args& args, py::object size, OG gen, OD dtype, ODev device, bool rg) {
          auto s = factory_sizes(args, size, name);
          auto o = make_options(dtype, device, false);
          release_gil g;
          Tensor t = fn(s, o, gen);
          if (rg) t.requires_grad_(true);
          return t;
        },
        py::kw_only(), py::arg("size") = py::none(), py::arg("generator") = py::none(),
        py::arg("dtype") = py::none(), py::arg("device") = py::none(), py::arg("requires_grad") = false);
  };
  random_sized("rand", [](IntArrayRef s, const TensorOptions& o, OG g) { return rand(s, o, g); });
  random_sized("randn", [](IntArrayRef s, const TensorOptions& o, OG g) { return randn(s, o, g); });
  m.def("full",
        [](IntArrayRef size, Scalar v, OD dtype, ODev device, bool rg) {
          // PyTorch infers the dtype from the fill value.
          DType d = dtype.value_or(v.is_floating_point() ? default_dtype() : v.dtype());
          return full(size, v, make_options(d, device, rg));
        },
        py::arg("size"), py::arg("fill_value"), py::kw_only(), py::arg("dtype") = py::none(),
        py::arg("device") = py::none(), py::arg("requires_grad") = false);
  m.def("scalar_tensor",
        [](Scalar v, OD dtype, ODev device, bool rg) {
          return scalar_tensor(v, make_options(dtype.value_or(default_dtype()), device, rg));
        },
        py::arg("s"), py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
        py::arg("requires_grad") = false);
  m.def("arange",
        [](std::optional<Scalar> start, std::optional<Scalar> end, Scalar step, OD dtype, ODev device, bool rg) {
          // arange(end), arange(start, end, step), or keywords: arange(end=4).
          LOOM_CHECK(start || end, "arange: expected an end (arange(end) or arange(start, end, step))");
          auto o = make_options(dtype, device, rg);
          if (!dtype) o = TensorOptions(o.device()).requires_grad(rg);  // inferred from the bounds
          release_gil g;
          if (!end) return arange(*start, o);
          return arange(start.value_or(Scalar(int64_t{0})), *end, step, o);
        },
        py::arg("start") = py::none(), py::arg("end") = py::none(), py::arg("step") = 1, py::kw_only(),
        py::arg("dtype") = py::none(), py::arg("device") = py::none(), py::arg("requires_grad") = false);
  m.def("linspace",
        [](double a, double b, int64_t steps, OD dtype, ODev device, bool rg) {
          return linspace(a, b, steps, make_options(dtype, device, rg));
        },
        py::arg("start"), py::arg("end"), py::arg("steps"), py::kw_only(), py::arg("dtype") = py::none(),
        py::arg("device") = py::none(), py::arg("requires_grad") = false, nogil);
  m.def("eye",
        [](int64_t n, std::optional<int64_t> mm, OD dtype, ODev device, bool rg) {
          return eye(n, mm, make_options(dtype, device, rg));
        },
        py::arg("n"), py::arg("m") = py::none(), py::kw_only(), py::arg("dtype") = py::none(),
        py::arg("device") = py::none(), py::arg("requires_grad") = false, nogil);
  m.def("randint",
        [](int64_t a, py::object b, py::object size, OG gen, OD dtype, ODev device, bool rg) {
          // randint(high, size) or randint(low, high, size)
          int64_t low = 0, high = a;
          std::vector<int64_t> s;
          if (size.is_none()) {
            LOOM_CHECK(!b.is_none(), "randint: expected randint(high, size) or randint(low, high, size)");
            s = int_list(b);
          } else {
            low = a;
            high = b.cast<int64_t>();
            s = int_list(size);
          }
          auto o = make_options(dtype.value_or(kInt64), device, false);
          release_gil g;
          Tensor t = randint(low, high, s, o, gen);
          if (rg) t.requires_grad_(true);
          return t;
        },
        py::arg("low"), py::arg("high") = py::none(), py::arg("size") = py::none(), py::kw_only(),
        py::arg("generator") = py::none(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
        py::arg("requires_grad") = false);
  m.def("randperm",
        [](int64_t n, OG gen, OD dtype, ODev device) { return randperm(n, make_options(dtype.value_or(kInt64), device), gen); },
        py::arg("n"), py::kw_only(), py::arg("generator") = py::none(), py::arg("dtype") = py::none(),
        py::arg("device") = py::none(), nogil);
  m.def("bernoulli",
        [](T input, std::optional<double> p, OG gen) { return p ? bernoulli(input, *p, gen) : bernoulli(input, gen); },
        py::arg("input"), py::arg("p") = py::none(), py::kw_only(), py::arg("generator") = py::none(), nogil);
  auto like = [&](const char* name, Tensor (*fn)(const Tensor&, std::optional<TensorOptions>)) {
    m.def(
        name,
        [fn](T t, OD dtype, ODev device, bool rg) {
          std::optional<TensorOptions> o;
          if (dtype || device || rg) o = make_options(dtype, device, rg, t.options());
          release_gil g;
          return fn(t, o);
        },
        py::arg("input"), py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
        py::arg("requires_grad") = false);
  };
  like("empty_like", [](const Tensor& t, std::optional<TensorOptions> o) { return empty_like(t, o); });
  like("zeros_like", [](const Tensor& t, std::optional<TensorOptions> o) { return zeros_like(t, o); });
  like("ones_like", [](const Tensor& t, std::optional<TensorOptions> o) { return ones_like(t, o); });
  like("rand_like", [](const Tensor& t, std::optional<TensorOptions> o) { return rand_like(t, o); });
  like("randn_like", [](const Tensor& t, std::optional<TensorOptions> o) { return randn_like(t, o); });
  m.def("full_like",
        [](T t, Scalar v, OD dtype, ODev device, bool rg) {
          std::optional<TensorOptions> o;
          if (dtype || device || rg) o = make_options(dtype, device, rg, t.options());
          return full_like(t, v, o);
        },
        py::arg("input"), py::arg("fill_value"), py::kw_only(), py::arg("dtype") = py::none(),
        py::arg("device") = py::none(), py::arg("requires_grad") = false, nogil);
  m.def("randint_like",
        [](T t, int64_t a, std::optional<int64_t> b, OD dtype, ODev device) {
          std::optional<TensorOptions> o;
          if (dtype || device) o = make_options(dtype, device, false, t.options());
          return b ? randint_like(t, a, *b, o) : randint_like(t, 0, a, o);
        },
        py::arg("input"), py::arg("low"), py::arg("high") = py::none(), py::kw_only(), py::arg("dtype") = py::none(),
        py::arg("device") = py::none(), nogil);
  m.def("tensor",
        [](py::handle data, OD dtype, ODev device, bool rg) {
          Tensor t = to_tensor(data, dtype, device, true);
          if (rg) t.requires_grad_(true);
          return t;
        },
        py::arg("data"), py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
        py::arg("requires_grad") = false);
  m.def("as_tensor", [](py::handle data, OD dtype, ODev device) { return to_tensor(data, dtype, device, false); },
        py::arg("data"), py::arg("dtype") = py::none(), py::arg("device") = py::none());
  m.def("is_tensor", [](py::handle h) { return is_tensor(h); }, py::arg("obj"));
  m.def("clone", [](T t) { return t.clone(); }, py::arg("input"), nogil);
  m.def("numel", [](T t) { return t.numel(); }, py::arg("input"));

  // ---- elementwise ----
  auto bin = [&](const char* name, Tensor (*fn)(const Tensor&, const Tensor&)) {
    m.def(
        name,
        [fn, name](py::handle a, py::handle b) {
          Tensor x = operand(a, b, name), y = operand(b, a, name);
          release_gil g;
          return fn(x, y);
        },
        py::arg("input"), py::arg("other"));
  };
  m.def("add",
        [](py::handle a, py::handle b, Scalar alpha) {
          Tensor x = operand(a, b, "add"), y = operand(b, a, "add");
          release_gil g;
          return add(x, y, alpha);
        },
        py::arg("input"), py::arg("other"), py::kw_only(), py::arg("alpha") = 1);
  m.def("sub",
        [](py::handle a, py::handle b, Scalar alpha) {
          Tensor x = operand(a, b, "sub"), y = operand(b, a, "sub");
          release_gil g;
          return sub(x, y, alpha);
        },
        py::arg("input"), py::arg("other"), py::kw_only(), py::arg("alpha") = 1);
  bin("mul", &mul);
  bin("div", &div);
  bin("maximum", &maximum);
  bin("minimum", &minimum);
  bin("eq", &eq);
  bin("ne", &ne);
  bin("lt", &lt);
  bin("le", &le);
  bin("gt", &gt);
  bin("ge", &ge);
  bin("logical_and", &logical_and);
  bin("logical_or", &logical_or);
  m.def("pow",
        [](py::handle a, py::handle b) {
          Scalar s;
          if (!is_tensor(a) && load_scalar(a, true, s)) {
            Tensor y = operand(b, a, "pow");
            release_gil g;
            return pow(s, y);
          }
          Tensor x = operand(a, b, "pow");
          if (!is_tensor(b) && load_scalar(b, true, s)) {
            release_gil g;
            return pow(x, s);
          }
          Tensor y = operand(b, a, "pow");
          release_gil g;
          return pow(x, y);
        },
        py::arg("input"), py::arg("exponent"));
  auto un = [&](const char* name, Tensor (*fn)(const Tensor&)) { m.def(name, fn, py::arg("input"), nogil); };
  un("neg", &neg);
  un("negative", &neg);
  un("exp", &exp);
  un("log", &log);
  un("log1p", &log1p);
  un("sqrt", &sqrt);
  un("rsqrt", &rsqrt);
  un("abs", &abs);
  un("sign", &sign);
  un("sin", &sin);
  un("cos", &cos);
  un("tanh", &tanh);
  un("erf", &erf);
  un("sigmoid", &sigmoid);
  un("relu", &relu);
  un("silu", &silu);
  un("square", &square);
  un("reciprocal", &reciprocal);
  un("logical_not", &logical_not);
  un("isnan", &isnan);
  m.def("leaky_relu", &leaky_relu, py::arg("input"), py::arg("negative_slope") = 0.01, nogil);
  m.def("elu", &elu, py::arg("input"), py::arg("alpha") = 1.0, nogil);
  m.def("gelu", &gelu, py::arg("input"), py::kw_only(), py::arg("approximate") = "none", nogil);
  m.def("softplus", &softplus, py::arg("input"), py::arg("beta") = 1.0, py::arg("threshold") = 20.0, nogil);
  m.def("clamp", [](T x, std::optional<Scalar> lo, std::optional<Scalar> hi) { return clamp(x, lo, hi); },
        py::arg("input"), py::arg("min") = py::none(), py::arg("max") = py::none(), nogil);
  m.def("clip", [](T x, std::optional<Scalar> lo, std::optional<Scalar> hi) { return clamp(x, lo, hi); },
        py::arg("input"), py::arg("min") = py::none(), py::arg("max") = py::none(), nogil);
  m.def("where",
        [](T cond, py::handle a, py::handle b) {
          Tensor x = operand(a, b, "where"), y = operand(b, a, "where");
          release_gil g;
          return where(cond, x, y);
        },
        py::arg("condition"), py::arg("input"), py::arg("other"));
  m.def("masked_fill",
        [](T x, T mask, py::handle v) {
          if (is_tensor(v)) {  // a 0-dim tensor value (differentiable)
            const Tensor& vt = unwrap(v);
            release_gil g;
            return x.masked_fill(mask, vt);
          }
          Scalar s;
          LOOM_CHECK(load_scalar(v, true, s), "masked_fill: value must be a number or a tensor");
          release_gil g;
          return masked_fill(x, mask, s);
        },
        py::arg("input"), py::arg("mask"), py::arg("value"));
  m.def("threshold_backward", &threshold_backward, py::arg("grad_output"), py::arg("self"), py::arg("threshold"),
        nogil);

  // ---- reductions ----
  m.def("sum",
        [](T x, py::object dim, bool keepdim, OD dtype) {
          auto d = dims_arg(dim);
          release_gil g;
          return dtype ? sum(x, d, keepdim, *dtype) : sum(x, d, keepdim);
        },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false, py::kw_only(),
        py::arg("dtype") = py::none());
  m.def("mean",
        [](T x, py::object dim, bool keepdim, OD dtype) {
          auto d = dims_arg(dim);
          release_gil g;
          return mean(dtype ? x.to(*dtype) : x, d, keepdim);
        },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false, py::kw_only(),
        py::arg("dtype") = py::none());
  m.def("prod",
        [](T x, std::optional<int64_t> dim, bool keepdim, OD dtype) {
          Tensor xd = dtype ? x.to(*dtype) : x;
          return dim ? prod(xd, {*dim}, keepdim) : prod(xd);
        },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false, py::kw_only(),
        py::arg("dtype") = py::none(), nogil);
  m.def("amax", [](T x, py::object dim, bool keepdim) { return amax(x, dims_arg(dim), keepdim); }, py::arg("input"),
        py::arg("dim") = py::tuple(), py::arg("keepdim") = false);
  m.def("amin", [](T x, py::object dim, bool keepdim) { return amin(x, dims_arg(dim), keepdim); }, py::arg("input"),
        py::arg("dim") = py::tuple(), py::arg("keepdim") = false);
  py::object tensor_cls = m.attr("Tensor");
  m.def("max",
        [tensor_cls](py::handle x, py::object dim, bool keepdim) {
          return tensor_cls.attr("max")(x, dim, keepdim);
        },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false);
  m.def("min",
        [tensor_cls](py::handle x, py::object dim, bool keepdim) {
          return tensor_cls.attr("min")(x, dim, keepdim);
        },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false);
  m.def("argmax", [](T x, std::optional<int64_t> dim, bool keepdim) { return argmax(x, dim, keepdim); },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false, nogil);
  m.def("argmin", [](T x, std::optional<int64_t> dim, bool keepdim) { return argmin(x, dim, keepdim); },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("keepdim") = false, nogil);
  for (const char* name : {"var", "std"}) {
    const bool is_var = name[0] == 'v';
    m.def(
        name,
        [is_var](T x, py::object dim, std::optional<bool> unbiased, bool keepdim, std::optional<int64_t> correction) {
          if (PyBool_Check(dim.ptr())) {  // var(input, unbiased): PyTorch's second overload
            unbiased = dim.cast<bool>();
            dim = py::none();
          }
          auto d = dims_arg(dim);
          int64_t c = correction ? *correction : (unbiased.value_or(true) ? 1 : 0);
          release_gil g;
          return is_var ? var(x, d, c, keepdim) : loom::std(x, d, c, keepdim);
        },
        py::arg("input"), py::arg("dim") = py::none(), py::arg("unbiased") = py::none(),
        py::arg("keepdim") = false, py::kw_only(), py::arg("correction") = py::none());
  }
  m.def("norm", [](T x, double p, py::object dim, bool keepdim) { return norm(x, p, dims_arg(dim), keepdim); },
        py::arg("input"), py::arg("p") = 2.0, py::arg("dim") = py::none(), py::arg("keepdim") = false);
  m.def("logsumexp", [](T x, py::object dim, bool keepdim) { return logsumexp(x, dims_arg(dim), keepdim); },
        py::arg("input"), py::arg("dim"), py::arg("keepdim") = false);
  m.def("cumsum", [](T x, int64_t dim, OD dtype) { return cumsum(dtype ? x.to(*dtype) : x, dim); }, py::arg("input"),
        py::arg("dim"), py::kw_only(), py::arg("dtype") = py::none(), nogil);
  m.def("softmax", [](T x, int64_t dim, OD dtype) { return softmax(dtype ? x.to(*dtype) : x, dim); },
        py::arg("input"), py::arg("dim"), py::arg("dtype") = py::none(), nogil);
  m.def("log_softmax", [](T x, int64_t dim, OD dtype) { return log_softmax(dtype ? x.to(*dtype) : x, dim); },
        py::arg("input"), py::arg("dim"), py::arg("dtype") = py::none(), nogil);
  m.def("softmax_backward", &softmax_backward, py::arg("grad_output"), py::arg("output"), py::arg("dim"), nogil);
  m.def("log_softmax_backward", &log_softmax_backward, py::arg("grad_output"), py::arg("output"), py::arg("dim"),
        nogil);
  m.def("layer_norm",
        [](T x, IntArrayRef shape, T w, T b, double eps) { return layer_norm(x, shape, w, b, eps); },
        py::arg("input"), py::arg("normalized_shape"), py::arg("weight") = py::none(), py::arg("bias") = py::none(),
        py::arg("eps") = 1e-5, nogil);
  m.def("cross_entropy_per_row", &cross_entropy_per_row, py::arg("logits"), py::arg("target"),
        py::arg("label_smoothing") = 0.0, py::arg("ignore_index") = -100, nogil);

  // ---- linear algebra ----
  m.def("matmul", &matmul, py::arg("input"), py::arg("other"), nogil);
  m.def("mm", &mm, py::arg("input"), py::arg("mat2"), nogil);
  m.def("bmm", &bmm, py::arg("input"), py::arg("mat2"), nogil);
  m.def("linear",
        [](T x, T w, T b, std::optional<std::string> act) {
          auto a = linear_activation(act);
          release_gil g;
          return linear(x, w, b, a);
        },
        py::arg("input"), py::arg("weight"), py::arg("bias") = py::none(), py::kw_only(),
        py::arg("activation") = py::none());

  // ---- quantized inference: scheme "int8" or "int4" ----
  m.def("quantize_weight", [](T w, const std::string& scheme) {
        auto s = parse_quant_scheme(scheme);
        release_gil g;
        return quantize_weight(w, s);
      }, py::arg("weight"), py::arg("scheme") = "int8");
  m.def("dequantize_weight", [](T codes, T scales, const std::string& scheme, int64_t in_features) {
        auto s = parse_quant_scheme(scheme);
        release_gil g;
        return dequantize_weight(codes, scales, s, in_features);
      }, py::arg("codes"), py::arg("scales"), py::arg("scheme"), py::arg("in_features"));
  m.def("quantized_linear", [](T x, T codes, T scales, T bias, const std::string& scheme) {
        auto s = parse_quant_scheme(scheme);
        release_gil g;
        return quantized_linear(x, codes, scales, bias, s);
      }, py::arg("input"), py::arg("codes"), py::arg("scales"), py::arg("bias") = py::none(), py::kw_only(),
      py::arg("scheme") = "int8");

  // ---- convolution and pooling ----
  auto conv = [&](const char* name, auto fn_list, auto fn_str) {
    m.def(
        name,
        [fn_list, fn_str](T x, T w, T b, py::handle stride, py::handle padding, py::handle dilation,
                          int64_t groups) {
          auto s = int_list(stride), d = int_list(dilation);
          if (py::isinstance<py::str>(padding)) {
            std::string p = padding.cast<std::string>();
            LOOM_CHECK(p == "valid" || p == "same", "conv: padding must be 'valid', 'same' or ints, got '", p, "'");
            ConvPadding cp = p == "same" ? ConvPadding::Same : ConvPadding::Valid;
            release_gil g;
            return fn_str(x, w, b, s, cp, d, groups);
          }
          auto p = int_list(padding);
          release_gil g;
          return fn_list(x, w, b, s, p, d, groups);
        },
        py::arg("input"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 1,
        py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1);
  };
  conv("conv2d",
       [](T x, T w, T b, IntArrayRef s, IntArrayRef p, IntArrayRef d, int64_t g) { return conv2d(x, w, b, s, p, d, g); },
       [](T x, T w, T b, IntArrayRef s, ConvPadding p, IntArrayRef d, int64_t g) { return conv2d(x, w, b, s, p, d, g); });
  conv("conv1d",
       [](T x, T w, T b, IntArrayRef s, IntArrayRef p, IntArrayRef d, int64_t g) { return conv1d(x, w, b, s, p, d, g); },
       [](T x, T w, T b, IntArrayRef s, ConvPadding p, IntArrayRef d, int64_t g) { return conv1d(x, w, b, s, p, d, g); });
  m.def("conv_transpose2d",
        [](T x, T w, T b, IntArrayRef s, IntArrayRef p, IntArrayRef op, int64_t groups, IntArrayRef d) {
          return conv_transpose2d(x, w, b, s, p, op, groups, d);
        },
        py::arg("input"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 1,
        py::arg("padding") = 0, py::arg("output_padding") = 0, py::arg("groups") = 1, py::arg("dilation") = 1, nogil);
  m.def("conv2d_weight",
        [](T x, IntArrayRef ws, T go, IntArrayRef s, IntArrayRef p, IntArrayRef d, int64_t g) {
          return conv2d_weight(x, ws, go, s, p, d, g);
        },
        py::arg("input"), py::arg("weight_size"), py::arg("grad_output"), py::arg("stride") = 1,
        py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1, nogil);
  m.def("max_pool2d",
        [](T x, IntArrayRef k, std::optional<IntArrayRef> s, IntArrayRef p, IntArrayRef d, bool ceil,
           bool return_indices) -> py::object {
          IntArrayRef st = s.value_or(IntArrayRef());
          if (return_indices) {
            std::pair<Tensor, Tensor> r;
            {
              release_gil g;
              r = max_pool2d_with_indices(x, k, st, p, d, ceil);
            }
            return py::make_tuple(wrap(r.first), wrap(r.second));
          }
          Tensor r;
          {
            release_gil g;
            r = max_pool2d(x, k, st, p, d, ceil);
          }
          return wrap(r);
        },
        py::arg("input"), py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
        py::arg("dilation") = 1, py::arg("ceil_mode") = false, py::arg("return_indices") = false);
  m.def("max_pool2d_with_indices",
        [](T x, IntArrayRef k, std::optional<IntArrayRef> s, IntArrayRef p, IntArrayRef d, bool ceil) {
          return max_pool2d_with_indices(x, k, s.value_or(IntArrayRef()), p, d, ceil);
        },
        py::arg("input"), py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
        py::arg("dilation") = 1, py::arg("ceil_mode") = false, nogil);
  m.def("avg_pool2d",
        [](T x, IntArrayRef k, std::optional<IntArrayRef> s, IntArrayRef p, bool ceil, bool count_pad,
           std::optional<int64_t> div) { return avg_pool2d(x, k, s.value_or(IntArrayRef()), p, ceil, count_pad, div); },
        py::arg("input"), py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
        py::arg("ceil_mode") = false, py::arg("count_include_pad") = true, py::arg("divisor_override") = py::none(),
        nogil);
  m.def("adaptive_avg_pool2d", [](T x, IntArrayRef s) { return adaptive_avg_pool2d(x, s); }, py::arg("input"),
        py::arg("output_size"), nogil);
  m.def("batch_norm", [](T x, T w, T b, double eps) { return batch_norm(x, w, b, eps); }, py::arg("input"),
        py::arg("weight") = py::none(), py::arg("bias") = py::none(), py::arg("eps") = 1e-5, nogil);
  m.def("batch_norm_with_stats", [](T x, T w, T b, double eps) { return batch_norm_with_stats(x, w, b, eps); },
        py::arg("input"), py::arg("weight") = py::none(), py::arg("bias") = py::none(), py::arg("eps") = 1e-5, nogil);
  m.def("scaled_dot_product_attention",
        [](T q, T k, T v, T mask, double p, bool causal, std::optional<double> scale, OG gen) {
          return scaled_dot_product_attention(q, k, v, mask, p, causal, scale, gen);
        },
        py::arg("query"), py::arg("key"), py::arg("value"), py::arg("attn_mask") = py::none(),
        py::arg("dropout_p") = 0.0, py::arg("is_causal") = false, py::kw_only(), py::arg("scale") = py::none(),
        py::arg("generator") = py::none(), nogil);
  m.def("paged_attention",
        [](T q, T kc, T vc, T tables, T seqs, T pos, std::optional<double> scale) {
          return paged_attention(q, kc, vc, tables, seqs, pos, scale);
        },
        py::arg("query"), py::arg("key_cache"), py::arg("value_cache"), py::arg("block_tables"),
        py::arg("seq_index"), py::arg("positions"), py::kw_only(), py::arg("scale") = py::none(), nogil);

  // ---- joining, splitting, indexing ----
  m.def("cat", [](std::vector<Tensor> ts, int64_t dim) { return cat(ts, dim); }, py::arg("tensors"),
        py::arg("dim") = 0, nogil);
  m.def("concat", [](std::vector<Tensor> ts, int64_t dim) { return cat(ts, dim); }, py::arg("tensors"),
        py::arg("dim") = 0, nogil);
  m.def("stack", [](std::vector<Tensor> ts, int64_t dim) { return stack(ts, dim); }, py::arg("tensors"),
        py::arg("dim") = 0, nogil);
  m.def("split",
        [](T x, py::handle s, int64_t dim) -> py::object {
          if (PyLong_Check(s.ptr())) return py::tuple(wrap(split(x, s.cast<int64_t>(), dim)));
          return py::tuple(wrap(split(x, s.cast<std::vector<int64_t>>(), dim)));
        },
        py::arg("tensor"), py::arg("split_size_or_sections"), py::arg("dim") = 0);
  m.def("chunk", [](T x, int64_t c, int64_t dim) { return py::tuple(wrap(chunk(x, c, dim))); }, py::arg("input"),
        py::arg("chunks"), py::arg("dim") = 0);
  m.def("unbind", [](T x, int64_t dim) { return py::tuple(wrap(x.unbind(dim))); }, py::arg("input"),
        py::arg("dim") = 0);
  m.def("gather", &gather, py::arg("input"), py::arg("dim"), py::arg("index"), nogil);
  m.def("scatter_add", &scatter_add, py::arg("input"), py::arg("dim"), py::arg("index"), py::arg("src"), nogil);
  m.def("index_select", &index_select, py::arg("input"), py::arg("dim"), py::arg("index"), nogil);
  m.def("embedding", &embedding, py::arg("weight"), py::arg("indices"), nogil);
  m.def("one_hot", &one_hot, py::arg("tensor"), py::arg("num_classes") = -1, nogil);
  m.def("tril", &tril, py::arg("input"), py::arg("diagonal") = 0, nogil);
  m.def("triu", &triu, py::arg("input"), py::arg("diagonal") = 0, nogil);
  m.def("flip", [](T x, IntArrayRef dims) { return flip(x, dims); }, py::arg("input"), py::arg("dims"), nogil);
  m.def("pad", [](T x, IntArrayRef p, Scalar v) { return pad(x, p, v); }, py::arg("input"), py::arg("pad"),
        py::arg("value") = 0, nogil);

  // ---- views ----
  m.def("reshape", [](T x, IntArrayRef s) { return reshape(x, s); }, py::arg("input"), py::arg("shape"), nogil);
  m.def("permute", [](T x, IntArrayRef d) { return permute(x, d); }, py::arg("input"), py::arg("dims"));
  m.def("transpose", &transpose, py::arg("input"), py::arg("dim0"), py::arg("dim1"));
  m.def("swapaxes", &transpose, py::arg("input"), py::arg("axis0"), py::arg("axis1"));
  m.def("t", [](T x) { return x.t(); }, py::arg("input"));
  m.def("unsqueeze", &unsqueeze, py::arg("input"), py::arg("dim"));
  m.def("squeeze", &squeeze, py::arg("input"), py::arg("dim") = py::none());
  m.def("flatten", &flatten, py::arg("input"), py::arg("start_dim") = 0, py::arg("end_dim") = -1, nogil);
  m.def("narrow", &narrow, py::arg("input"), py::arg("dim"), py::arg("start"), py::arg("length"));
  m.def("select", &select, py::arg("input"), py::arg("dim"), py::arg("index"));
  m.def("broadcast_to", [](T x, IntArrayRef s) { return broadcast_to(x, s); }, py::arg("input"), py::arg("size"));
  m.def("broadcast_shapes", [](const py::args& shapes) {
    std::vector<int64_t> r;
    for (py::handle s : shapes) r = broadcast_shapes(r, int_list(s));
    return make_size(r);
  });
  m.def("broadcast_tensors", [](const py::args& ts) {
    std::vector<Tensor> v;
    for (py::handle t : ts) v.push_back(unwrap(t));
    return py::tuple(wrap(broadcast_tensors(v)));
  });
  m.def("result_type",
        [](py::handle a, py::handle b) {
          Scalar s;
          if (is_tensor(a) && !is_tensor(b) && load_scalar(b, true, s)) return result_type(unwrap(a), s);
          if (is_tensor(b) && !is_tensor(a) && load_scalar(a, true, s)) return result_type(unwrap(b), s);
          return result_type(operand(a, b, "result_type"), operand(b, a, "result_type"));
        },
        py::arg("tensor1"), py::arg("tensor2"));
  m.def("allclose", &allclose, py::arg("input"), py::arg("other"), py::arg("rtol") = 1e-5, py::arg("atol") = 1e-8,
        py::arg("equal_nan") = false, nogil);
  m.def("equal", &equal, py::arg("input"), py::arg("other"), nogil);

  // ---- fused optimizer steps (torch._fused_adam_ and friends) ----
  using TL = const std::vector<Tensor>&;
  m.def("_fused_adam_",
        [](TL p, TL g, TL m1, TL v, TL vmax, TL steps, double lr, double b1, double b2, double wd, double eps,
           bool amsgrad, bool maximize) { _fused_adam_(p, g, m1, v, vmax, steps, lr, b1, b2, wd, eps, amsgrad, maximize); },
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("state_steps"), py::kw_only(), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"), nogil);
  m.def("_fused_adamw_",
        [](TL p, TL g, TL m1, TL v, TL vmax, TL steps, double lr, double b1, double b2, double wd, double eps,
           bool amsgrad, bool maximize) { _fused_adamw_(p, g, m1, v, vmax, steps, lr, b1, b2, wd, eps, amsgrad, maximize); },
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("state_steps"), py::kw_only(), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"), nogil);
  m.def("_fused_sgd_",
        [](TL p, TL g, TL bufs, double wd, double momentum, double lr, double dampening, bool nesterov, bool maximize,
           bool is_first_step) { _fused_sgd_(p, g, bufs, wd, momentum, lr, dampening, nesterov, maximize, is_first_step); },
        py::arg("params"), py::arg("grads"), py::arg("momentum_buffer_list"), py::kw_only(),
        py::arg("weight_decay"), py::arg("momentum"), py::arg("lr"), py::arg("dampening"), py::arg("nesterov"),
        py::arg("maximize"), py::arg("is_first_step"), nogil);
  m.def("_fused_optim_supported", &_fused_optim_supported, py::arg("device"));
}

}  // namespace loom::python
