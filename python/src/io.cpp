// loom._C._io: safetensors files (include/loom/io), behind loom.save and
// loom.load (python/loom/serialization.py). Tensors cross as an ordered dict
// {name: tensor}, metadata as {str: str}.
#include <map>

#include "bind.h"

namespace loom::python {

namespace {

using Metadata = std::map<std::string, std::string>;

StateDict to_state_dict(const py::dict& tensors) {
  StateDict sd;
  sd.reserve(tensors.size());
  for (auto [k, v] : tensors) sd.emplace_back(py::cast<std::string>(k), py::cast<Tensor>(v));
  return sd;
}

py::tuple to_python(io::SafetensorsFile file) {
  py::dict tensors;
  for (auto& [k, t] : file.tensors) tensors[py::str(k)] = wrap(std::move(t));
  return py::make_tuple(tensors, file.metadata);
}

}  // namespace

void bind_io(py::module_& root) {
  py::module_ m = root.def_submodule("_io", "safetensors files (use loom.save / loom.load)");

  // Atomic: a failed or interrupted save leaves any previous file untouched.
  m.def(
      "save_file",
      [](const py::dict& tensors, const std::string& path, const Metadata& metadata) {
        StateDict sd = to_state_dict(tensors);
        py::gil_scoped_release release;
        io::save_safetensors(path, sd, metadata);
      },
      py::arg("tensors"), py::arg("path"), py::arg("metadata") = Metadata{});
  m.def(
      "load_file",
      [](const std::string& path) {
        io::SafetensorsFile file;
        {
          py::gil_scoped_release release;
          file = io::load_safetensors(path);
        }
        return to_python(std::move(file));
      },
      py::arg("path"));
  // The same bytes in memory, for file objects (io.BytesIO, sockets).
  m.def(
      "serialize",
      [](const py::dict& tensors, const Metadata& metadata) {
        StateDict sd = to_state_dict(tensors);
        std::vector<uint8_t> bytes;
        {
          py::gil_scoped_release release;
          bytes = io::serialize_safetensors(sd, metadata);
        }
        return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      },
      py::arg("tensors"), py::arg("metadata") = Metadata{});
  m.def(
      "deserialize",
      [](const py::bytes& data, const std::string& name) {
        std::string_view view = data;  // the bytes object outlives the call
        io::SafetensorsFile file;
        {
          py::gil_scoped_release release;
          file = io::parse_safetensors(reinterpret_cast<const uint8_t*>(view.data()), view.size(), name);
        }
        return to_python(std::move(file));
      },
      py::arg("data"), py::arg("name"));
}

}  // namespace loom::python
