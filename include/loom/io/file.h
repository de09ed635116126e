// Writing a whole file atomically, the way loom writes its checkpoints
// (Note [Atomic checkpoint writes] in src/io/file_io.h): the bytes go to a
// temporary file in the target's directory, which is fsync'ed and renamed over
// the target, then the directory is fsync'ed. A reader sees the old file or
// the whole new one; a failed write leaves the old file untouched.
//
//   loom::io::write_file_atomic("runs/gan/epoch_1.png", png_bytes);
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace loom::io {

// The directory must exist. Errors are loom::Error naming the path and the OS
// reason ("write_file_atomic: cannot write 'x/y.png': directory 'x' does not exist").
void write_file_atomic(const std::string& path, const void* data, size_t size);
void write_file_atomic(const std::string& path, std::string_view bytes);
void write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace loom::io
