// loom._C._distributed: process groups, collectives and data-parallel
// training (include/loom/distributed.h, include/loom/nn/parallel.h), behind
// loom.distributed (python/loom/distributed). Every collective waits with
// the GIL released.
#include <pybind11/chrono.h>

#include <chrono>

#include "bind.h"

namespace loom::python {

namespace {

namespace dist = distributed;
using dist::ProcessGroup;
using dist::ReduceOp;
using dist::WorkPtr;

// The free functions' result: the Work with async_op, else None (PyTorch's).
py::object work_or_none(WorkPtr work, bool async_op) { return async_op ? py::cast(std::move(work)) : py::none(); }

// The C++ DDP of a model (loom.distributed.DistributedDataParallel holds it;
// a loom.nn.Module is an nn::Module, Note [Python modules over C++ modules]).
struct PyDDP {
  std::unique_ptr<nn::DistributedDataParallel> ddp;
};

// DDP's no_sync() as a context manager.
struct PyNoSync {
  nn::DistributedDataParallel* ddp;
  std::unique_ptr<nn::DistributedDataParallel::NoSyncGuard> guard;
};

}  // namespace

void bind_distributed(py::module_& root) {
  py::module_ m = root.def_submodule("_distributed", "loom's process groups (use loom.distributed)");

  py::enum_<ReduceOp>(m, "ReduceOp")
      .value("SUM", ReduceOp::Sum)
      .value("AVG", ReduceOp::Avg)
      .value("MAX", ReduceOp::Max)
      .value("MIN", ReduceOp::Min)
      .value("PRODUCT", ReduceOp::Product);

  py::class_<dist::Work, WorkPtr>(m, "Work")
      .def(
          "wait",
          [](dist::Work& w, std::optional<std::chrono::milliseconds> timeout) {
            w.wait(timeout.value_or(std::chrono::milliseconds(-1)));
            return true;
          },
          py::arg("timeout") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def("is_completed", &dist::Work::is_completed)
      .def("is_success", &dist::Work::is_success)
      .def("__repr__", [](const dist::Work& w) { return "<loom.distributed.Work " + w.description() + ">"; });

  py::class_<ProcessGroup, std::shared_ptr<ProcessGroup>>(m, "ProcessGroup")
      .def("rank", &ProcessGroup::rank)
      .def("size", &ProcessGroup::size)
      .def_property_readonly("backend", &ProcessGroup::backend);

  m.def(
      "init_process_group",
      [](const std::string& backend, std::optional<std::chrono::milliseconds> timeout) {
        dist::Options o;
        if (timeout) o.timeout = *timeout;
        dist::init_process_group(backend, o);
      },
      py::arg("backend") = "auto", py::arg("timeout") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("is_initialized", &dist::is_initialized);
  m.def("is_mpi_available", &dist::is_mpi_available);
  m.def("is_nccl_available", &dist::is_nccl_available);
  m.def("get_rank", &dist::get_rank);
  m.def("get_world_size", &dist::get_world_size);
  // The default group is owned by loom (a reference, never freed by Python).
  m.def("default_group", &dist::default_group, py::return_value_policy::reference);
  m.def("new_group", &dist::new_group, py::arg("ranks"), py::call_guard<py::gil_scoped_release>());
  m.def("destroy_process_group", &dist::destroy_process_group, py::call_guard<py::gil_scoped_release>());

  m.def(
      "all_reduce",
      [](Tensor tensor, ReduceOp op, ProcessGroup* group, bool async_op) {
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = dist::all_reduce(tensor, op, group, async_op);
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("tensor"), py::arg("op") = ReduceOp::Sum, py::arg("group") = nullptr, py::arg("async_op") = false);
  m.def(
      "broadcast",
      [](Tensor tensor, int src, ProcessGroup* group, bool async_op) {
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = dist::broadcast(tensor, src, group, async_op);
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("tensor"), py::arg("src"), py::arg("group") = nullptr, py::arg("async_op") = false);
  // The output tensors share their storage with the Python list's, which
  // the collective fills in place.
  m.def(
      "all_gather",
      [](std::vector<Tensor> tensor_list, const Tensor& tensor, ProcessGroup* group, bool async_op) {
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = dist::all_gather(tensor_list, tensor, group, async_op);
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("tensor_list"), py::arg("tensor"), py::arg("group") = nullptr, py::arg("async_op") = false);
  m.def(
      "all_gather_into_tensor",
      [](Tensor output, const Tensor& input, ProcessGroup* group, bool async_op) {
        ProcessGroup& g = group ? *group : dist::default_group();
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = g.all_gather_into_tensor(output, input);
          if (!async_op) w->wait();
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("output_tensor"), py::arg("input_tensor"), py::arg("group") = nullptr, py::arg("async_op") = false);
  m.def(
      "reduce_scatter",
      [](Tensor output, const std::vector<Tensor>& input_list, ReduceOp op, ProcessGroup* group, bool async_op) {
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = dist::reduce_scatter(output, input_list, op, group, async_op);
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("output"), py::arg("input_list"), py::arg("op") = ReduceOp::Sum, py::arg("group") = nullptr,
      py::arg("async_op") = false);
  m.def(
      "reduce_scatter_tensor",
      [](Tensor output, const Tensor& input, ReduceOp op, ProcessGroup* group, bool async_op) {
        ProcessGroup& g = group ? *group : dist::default_group();
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = g.reduce_scatter_tensor(output, input, op);
          if (!async_op) w->wait();
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("output"), py::arg("input"), py::arg("op") = ReduceOp::Sum, py::arg("group") = nullptr,
      py::arg("async_op") = false);
  m.def(
      "gather",
      [](const Tensor& tensor, std::optional<std::vector<Tensor>> gather_list, int dst, ProcessGroup* group,
         bool async_op) {
        std::vector<Tensor> outputs = gather_list.value_or(std::vector<Tensor>{});
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = dist::gather(outputs, tensor, dst, group, async_op);
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("tensor"), py::arg("gather_list") = py::none(), py::arg("dst") = 0, py::arg("group") = nullptr,
      py::arg("async_op") = false);
  m.def(
      "scatter",
      [](Tensor tensor, std::optional<std::vector<Tensor>> scatter_list, int src, ProcessGroup* group, bool async_op) {
        const std::vector<Tensor> inputs = scatter_list.value_or(std::vector<Tensor>{});
        WorkPtr w;
        {
          py::gil_scoped_release release;
          w = dist::scatter(tensor, inputs, src, group, async_op);
        }
        return work_or_none(std::move(w), async_op);
      },
      py::arg("tensor"), py::arg("scatter_list") = py::none(), py::arg("src") = 0, py::arg("group") = nullptr,
      py::arg("async_op") = false);
  m.def(
      "send",
      [](const Tensor& tensor, int dst, ProcessGroup* group, int tag) {
        py::gil_scoped_release release;
        dist::send(tensor, dst, tag, group)->wait();
      },
      py::arg("tensor"), py::arg("dst"), py::arg("group") = nullptr, py::arg("tag") = 0);
  m.def(
      "recv",
      [](Tensor tensor, int src, ProcessGroup* group, int tag) {
        py::gil_scoped_release release;
        dist::recv(tensor, src, tag, group)->wait();
        return src;
      },
      py::arg("tensor"), py::arg("src"), py::arg("group") = nullptr, py::arg("tag") = 0);
  m.def(
      "isend",
      [](const Tensor& tensor, int dst, ProcessGroup* group, int tag) { return dist::send(tensor, dst, tag, group); },
      py::arg("tensor"), py::arg("dst"), py::arg("group") = nullptr, py::arg("tag") = 0,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "irecv", [](Tensor tensor, int src, ProcessGroup* group, int tag) { return dist::recv(tensor, src, tag, group); },
      py::arg("tensor"), py::arg("src"), py::arg("group") = nullptr, py::arg("tag") = 0,
      py::call_guard<py::gil_scoped_release>());
  m.def("barrier", &dist::barrier, py::arg("group") = nullptr, py::call_guard<py::gil_scoped_release>());

  py::class_<PyNoSync>(m, "NoSync")
      .def("__enter__",
           [](PyNoSync& s) { s.guard = std::make_unique<nn::DistributedDataParallel::NoSyncGuard>(*s.ddp); })
      .def("__exit__", [](PyNoSync& s, const py::args&) { s.guard.reset(); });

  py::class_<nn::DistributedDataParallelStats>(m, "DistributedDataParallelStats")
      .def_readonly("buckets", &nn::DistributedDataParallelStats::buckets)
      .def_readonly("bytes", &nn::DistributedDataParallelStats::bytes)
      .def_readonly("wait_seconds", &nn::DistributedDataParallelStats::wait_seconds)
      .def_readonly("comm_seconds", &nn::DistributedDataParallelStats::comm_seconds)
      .def_readonly("overlapped_seconds", &nn::DistributedDataParallelStats::overlapped_seconds)
      .def_readonly("unused_parameters", &nn::DistributedDataParallelStats::unused_parameters);

  py::class_<PyDDP>(m, "Reducer")
      // Broadcasts rank 0's parameters and buffers, then hooks the gradients.
      .def(py::init([](std::shared_ptr<nn::Module> module, double bucket_cap_mb, bool find_unused_parameters,
                       bool broadcast_buffers, ProcessGroup* process_group) {
             nn::DistributedDataParallelOptions o;
             o.bucket_cap_mb = bucket_cap_mb;
             o.find_unused_parameters = find_unused_parameters;
             o.broadcast_buffers = broadcast_buffers;
             o.process_group = process_group;
             py::gil_scoped_release release;
             return PyDDP{std::make_unique<nn::DistributedDataParallel>(std::move(module), o)};
           }),
           py::arg("module"), py::arg("bucket_cap_mb"), py::arg("find_unused_parameters"), py::arg("broadcast_buffers"),
           py::arg("process_group"))
      .def(
          "sync_buffers", [](PyDDP& d) { d.ddp->sync_buffers(); }, py::call_guard<py::gil_scoped_release>())
      .def(
          "no_sync",
          [](PyDDP& d) {
            return PyNoSync{d.ddp.get(), nullptr};
          },
          py::keep_alive<0, 1>())
      .def("bucket_assignment", [](const PyDDP& d) { return d.ddp->bucket_assignment(); })
      .def_property_readonly("last_stats", [](const PyDDP& d) { return d.ddp->last_stats(); });

  m.def(
      "broadcast_module_state",
      [](nn::Module& module, int src, ProcessGroup* group) { nn::broadcast_module_state(module, src, group); },
      py::arg("module"), py::arg("src") = 0, py::arg("group") = nullptr, py::call_guard<py::gil_scoped_release>());
}

}  // namespace loom::python
