// loom._C._jit: loom::compile for Python callables (python/loom/jit.py).
// The untyped core, jit::detail::Compiler, takes a function from tensors to
// tensors: here that function calls the Python callable (with the GIL) and
// flattens what it returns. Only recordings run it; a replay runs the
// recorded kernels and no Python at all.
#include "bind.h"

namespace loom::python {

namespace {

// What the Python function returns, so a replay's tensors come back in the
// same form. Set by each recording (the only calls that run the function).
std::string type_name(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

enum class ResultKind { None, Tensor, Tuple, List };

class PyCompiled {
 public:
  PyCompiled(py::function fn, const jit::CompileOptions& options) : kind_(std::make_shared<ResultKind>()) {
    // Held by the Compiler's std::function, which may be destroyed without
    // the GIL (with the last reference to this object): the deleter takes it.
    std::shared_ptr<py::function> held(new py::function(std::move(fn)), [](py::function* f) {
      py::gil_scoped_acquire gil;
      delete f;
    });
    core_ = std::make_unique<jit::detail::Compiler>(
        [held, kind = kind_](const std::vector<Tensor>& args) {
          py::gil_scoped_acquire gil;
          py::tuple py_args(args.size());
          for (size_t i = 0; i < args.size(); ++i) py_args[i] = wrap(args[i]);
          py::object out = (*held)(*py_args);
          return flatten(out, *kind);
        },
        options);
  }

  py::object call(const py::args& args) {
    std::vector<Tensor> in;
    in.reserve(args.size());
    for (size_t i = 0; i < args.size(); ++i) {
      LOOM_CHECK(is_tensor(args[i]), "compile: argument ", i, " is a ", type_name(args[i]),
                 "; a compiled function takes tensors only (a replay cannot see other values change: close over "
                 "them, or pass them as tensors)");
      in.push_back(unwrap(args[i]));
    }
    std::vector<Tensor> out;
    {
      py::gil_scoped_release release;
      out = core_->call(in);
    }
    switch (*kind_) {
      case ResultKind::None:
        return py::none();
      case ResultKind::Tensor:
        return wrap(std::move(out.at(0)));
      case ResultKind::Tuple:
        return py::tuple(wrap(std::move(out)));
      case ResultKind::List:
        return wrap(std::move(out));
    }
    return py::none();
  }

  // Graph's methods are all const: the handle is shared with Python as is.
  std::shared_ptr<jit::Graph> graph() const { return std::const_pointer_cast<jit::Graph>(core_->graph()); }
  jit::CompileStats stats() const { return core_->stats(); }

 private:
  static std::vector<Tensor> flatten(const py::object& out, ResultKind& kind) {
    if (out.is_none()) {
      kind = ResultKind::None;
      return {};
    }
    if (is_tensor(out)) {
      kind = ResultKind::Tensor;
      return {unwrap(out)};
    }
    const bool tuple = py::isinstance<py::tuple>(out);
    LOOM_CHECK(tuple || py::isinstance<py::list>(out), "compile: the function returned a ", type_name(out),
               "; a compiled function returns None, a tensor, or a tuple or list of tensors");
    std::vector<Tensor> ts;
    for (py::handle h : out) {
      LOOM_CHECK(is_tensor(h), "compile: the function returned a ", tuple ? "tuple" : "list", " holding a ",
                 type_name(h), "; only tensors can be returned");
      ts.push_back(unwrap(h));
    }
    kind = tuple ? ResultKind::Tuple : ResultKind::List;
    return ts;
  }

  std::shared_ptr<ResultKind> kind_;
  std::unique_ptr<jit::detail::Compiler> core_;
};

}  // namespace

void bind_jit(py::module_& root) {
  py::module_ m = root.def_submodule("_jit", "loom.compile (use loom.compile)");

  py::class_<jit::MemoryPlan>(m, "MemoryPlan")
      .def_readonly("arena_bytes", &jit::MemoryPlan::arena_bytes)
      .def_readonly("serial_arena_bytes", &jit::MemoryPlan::serial_arena_bytes)
      .def_readonly("lower_bound_bytes", &jit::MemoryPlan::lower_bound_bytes)
      .def_readonly("persistent_bytes", &jit::MemoryPlan::persistent_bytes)
      .def_readonly("input_bytes", &jit::MemoryPlan::input_bytes)
      .def_readonly("output_bytes", &jit::MemoryPlan::output_bytes)
      .def_readonly("eager_peak_bytes", &jit::MemoryPlan::eager_peak_bytes)
      .def_readonly("buffers_in_arena", &jit::MemoryPlan::buffers_in_arena)
      .def_readonly("buffers_in_place", &jit::MemoryPlan::buffers_in_place)
      .def_readonly("recomputed_nodes", &jit::MemoryPlan::recomputed_nodes)
      .def_readonly("segments", &jit::MemoryPlan::segments);

  py::class_<jit::Graph, std::shared_ptr<jit::Graph>>(m, "Graph")
      .def_property_readonly("num_nodes", &jit::Graph::num_nodes)
      .def_property_readonly("num_values", &jit::Graph::num_values)
      .def("ops", &jit::Graph::ops)
      .def("memory_plan", &jit::Graph::memory_plan)
      .def("to_dot", &jit::Graph::to_dot)
      .def("save_dot", &jit::Graph::save_dot, py::arg("path"))
      .def("__str__", &jit::Graph::str);

  py::class_<jit::CompileStats>(m, "CompileStats")
      .def_readonly("calls", &jit::CompileStats::calls)
      .def_readonly("recordings", &jit::CompileStats::recordings)
      .def_readonly("replays", &jit::CompileStats::replays)
      .def_readonly("graphs", &jit::CompileStats::graphs)
      .def("__repr__", [](const jit::CompileStats& s) {
        return "CompileStats(calls=" + std::to_string(s.calls) + ", recordings=" + std::to_string(s.recordings) +
               ", replays=" + std::to_string(s.replays) + ", graphs=" + std::to_string(s.graphs) + ")";
      });

  // Keywords are jit::CompileOptions' fields (include/loom/jit.h says what each does).
  py::class_<PyCompiled>(m, "Compiled")
      .def(py::init([](py::function fn, int cache_size, bool plan_memory, bool optimize, bool fuse,
                       bool fuse_gemm_epilogues, bool parallel, int max_recordings, bool recompute_cheap,
                       int checkpoint_segments, size_t memory_budget_bytes) {
             jit::CompileOptions o;
             o.cache_size = cache_size;
             o.plan_memory = plan_memory;
             o.optimize = optimize;
             o.fuse = fuse;
             o.fuse_gemm_epilogues = fuse_gemm_epilogues;
             o.parallel = parallel;
             o.max_recordings = max_recordings;
             o.recompute_cheap = recompute_cheap;
             o.checkpoint_segments = checkpoint_segments;
             o.memory_budget_bytes = memory_budget_bytes;
             return std::make_unique<PyCompiled>(std::move(fn), o);
           }),
           py::arg("fn"), py::kw_only(), py::arg("cache_size") = 8, py::arg("plan_memory") = true,
           py::arg("optimize") = true, py::arg("fuse") = true, py::arg("fuse_gemm_epilogues") = false,
           py::arg("parallel") = true, py::arg("max_recordings") = 4, py::arg("recompute_cheap") = true,
           py::arg("checkpoint_segments") = 0, py::arg("memory_budget_bytes") = 0)
      .def("__call__", &PyCompiled::call)
      .def_property_readonly("graph", &PyCompiled::graph)
      .def_property_readonly("stats", &PyCompiled::stats);
}

}  // namespace loom::python
