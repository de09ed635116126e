// Module checkpoints: state_dict() to a safetensors file and back.
#include "loom/io/checkpoint.h"

#include "loom/error.h"

namespace loom::io {

void save(const nn::Module& module, const std::string& path, const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, module.state_dict(), metadata);
}

void load(nn::Module& module, const std::string& path, bool strict) {
  SafetensorsFile file = load_safetensors(path);
  try {
    module.load_state_dict(file.tensors, strict);
  } catch (const Error& e) {
    // load_state_dict names the keys; the reader also needs the file.
    LOOM_ERROR("load: '", path, "' does not fit the ", module.type_name(), ": ", e.what());
  }
}

}  // namespace loom::io
