// Saving and loading a module's state (parameters then buffers, with dotted
// names as state_dict() gives them) as one safetensors file.
#pragma once

#include <map>
#include <string>

#include "loom/io/safetensors.h"
#include "loom/nn/module.h"

namespace loom::io {

// torch.save(model.state_dict(), path), as a safetensors file written
// atomically. `metadata` is stored in the header's "__metadata__".
void save(const nn::Module& module, const std::string& path,
          const std::map<std::string, std::string>& metadata = {});

// model.load_state_dict(load(path), strict): strict requires the file's keys
// and the module's to match exactly; in either mode a shape mismatch is an
// error. Errors name the file.
void load(nn::Module& module, const std::string& path, bool strict = true);

// The same for module holders: `nn::Sequential net(...); loom::save(net, path)`.
template <typename Impl>
void save(const nn::ModuleHolder<Impl>& module, const std::string& path,
          const std::map<std::string, std::string>& metadata = {}) {
  save(*module, path, metadata);
}
template <typename Impl>
void load(const nn::ModuleHolder<Impl>& module, const std::string& path, bool strict = true) {
  load(*module, path, strict);
}

}  // namespace loom::io

namespace loom {
using io::load;
using io::load_safetensors;
using io::save;
using io::save_safetensors;
using io::SafetensorsFile;
}  // namespace loom
