// Autograd from Python: grad mode, loom.autograd.grad / backward, and the
// node behind loom.autograd.Function (python/loom/autograd/function.py).
#include "bind.h"

namespace loom::python {

void bind_autograd(py::module_& m) {
  auto ag = m.def_submodule("_autograd");
  ag.def("is_grad_enabled", &is_grad_enabled);
  ag.def("set_grad_enabled", &set_grad_enabled, py::arg("mode"));
  // loom.autocast (python/loom/amp.py) saves and restores this thread's
  // autocast state around its block (include/loom/autocast.h).
  auto device_type = [](const std::string& name) {
    LOOM_CHECK(name == "cpu" || name == "cuda", "autocast: device_type must be 'cpu' or 'cuda', got '", name, "'");
    return name == "cpu" ? DeviceType::CPU : DeviceType::CUDA;
  };
  ag.def("autocast_state", [device_type](const std::string& name) {
    const DeviceType t = device_type(name);
    return py::make_tuple(is_autocast_enabled(t), autocast_dtype(t));
  });
  ag.def(
      "set_autocast_state",
      [device_type](const std::string& name, bool enabled, DType dtype) {
        const DeviceType t = device_type(name);
        set_autocast_dtype(t, dtype);
        set_autocast_enabled(t, enabled);
      },
      py::arg("device_type"), py::arg("enabled"), py::arg("dtype"));
  ag.def(
      "grad",
      [](std::vector<Tensor> outputs, std::vector<Tensor> inputs, std::vector<Tensor> grad_outputs,
         std::optional<bool> retain_graph, bool create_graph, bool allow_unused) {
        release_gil g;
        return autograd::grad(outputs, inputs, grad_outputs, retain_graph, create_graph, allow_unused);
      },
      py::arg("outputs"), py::arg("inputs"), py::arg("grad_outputs"), py::arg("retain_graph"),
      py::arg("create_graph"), py::arg("allow_unused"));
  ag.def(
      "backward",
      [](std::vector<Tensor> outputs, std::vector<Tensor> grad_outputs, bool retain_graph, bool create_graph) {
        release_gil g;
        autograd::backward(outputs, grad_outputs, retain_graph, create_graph);
      },
      py::arg("tensors"), py::arg("grad_tensors"), py::arg("retain_graph"), py::arg("create_graph"));
  // Activation checkpointing (loom/checkpoint.h): `fn` is Python; backward
  // runs it again (with the GIL) to rebuild what the forward dropped.
  ag.def(
      "checkpoint",
      [](py::function fn, std::vector<Tensor> inputs) {
        // The node may outlive this call and die without the GIL.
        std::shared_ptr<py::function> held(new py::function(std::move(fn)), [](py::function* f) {
          py::gil_scoped_acquire gil;
          delete f;
        });
        CheckpointFn run = [held](const std::vector<Tensor>& xs) {
          py::gil_scoped_acquire gil;
          try {
            return (*held)(wrap(xs)).cast<Tensor>();
          } catch (py::error_already_set& e) {
            rethrow_parked(e);  // the recomputation's early stop
            throw;
          }
        };
        release_gil g;
        return checkpoint(std::move(run), inputs);
      },
      py::arg("function"), py::arg("inputs"));
  // The Python Function's node. `backward(saved, grads)` is Python; the
  // engine calls it with the GIL taken (pybind11's std::function caster
  // acquires it for the call and for releasing the callable).
  ag.def(
      "custom_function",
      [](const std::string& name, std::vector<Tensor> inputs, std::vector<Tensor> outputs,
         std::vector<Tensor> to_save, autograd::CustomBackward backward, std::vector<size_t> non_differentiable) {
        return autograd::custom_function(name, inputs, outputs, to_save, std::move(backward), non_differentiable);
      },
      py::arg("name"), py::arg("inputs"), py::arg("outputs"), py::arg("to_save"), py::arg("backward"),
      py::arg("non_differentiable"));
}

}  // namespace loom::python
