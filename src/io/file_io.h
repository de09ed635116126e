// POSIX file helpers for checkpoints: an atomic writer (temp file, fsync,
// rename, fsync of the directory) and a positional reader. Errors are
// loom::Error naming the operation, the path and the OS reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace loom::io {

// Note [Atomic checkpoint writes]
// A checkpoint is written to a fresh temporary file in the target's own
// directory (rename is atomic only within one file system), flushed to disk
// with fsync, and renamed over the target; then the directory is fsync'ed so
// the rename itself survives a crash. Readers see the old file or the new one,
// never a prefix of the new one. If anything fails, or the writer is
// destroyed before commit() (an exception while producing the bytes), the
// temporary file is removed and the target is untouched.
class AtomicFileWriter {
 public:
  // `op` prefixes error messages ("save_safetensors").
  AtomicFileWriter(const std::string& path, const std::string& op);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  // fsync, rename over the target, fsync the directory.
  void commit();
  const std::string& temp_path() const { return temp_path_; }

 private:
  [[noreturn]] void fail(const std::string& what, int err);
  std::string path_, op_, dir_, temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Reads a regular file by absolute offsets (pread), so each byte is read once
// straight into its destination.
class FileReader {
 public:
  FileReader(const std::string& path, const std::string& op);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  uint64_t size() const { return size_; }
  // Reads exactly n bytes at `offset`; a short read (the file shrank) is an error.
  void read_at(uint64_t offset, void* dst, size_t n);

 private:
  std::string path_, op_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace loom::io
