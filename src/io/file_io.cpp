// Atomic writes and positional reads for checkpoints (Note [Atomic checkpoint
// writes] in file_io.h).
#include "io/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <system_error>

#include "loom/error.h"
#include "loom/io/file.h"

namespace loom::io {
namespace {

std::string os_reason(int err) { return std::error_code(err, std::generic_category()).message(); }

std::string parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// A name no other writer (thread or process) picks: the target's name, hidden,
// with the pid, a per-process counter and the clock. O_EXCL catches the rest.
std::string temp_name_for(const std::string& path, int attempt) {
  static std::atomic<uint64_t> counter{0};
  std::filesystem::path p(path);
  auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
  // Appended piece by piece: GCC 12 gives a false -Wrestrict on "." + str.
  std::string leaf = ".";
  leaf += p.filename().string();
  leaf += ".tmp";
  for (uint64_t part : {static_cast<uint64_t>(::getpid()), counter.fetch_add(1),
                        static_cast<uint64_t>(ticks % 1000000007), static_cast<uint64_t>(attempt)}) {
    leaf += '-';
    leaf += std::to_string(part);
  }
  return (p.parent_path() / leaf).string();
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(const std::string& path, const std::string& op)
    : path_(path), op_(op), dir_(parent_dir(path)) {
  LOOM_CHECK(!path.empty(), op_, ": empty file path");
  struct stat st;
  if (::stat(dir_.c_str(), &st) != 0) {
    int err = errno;
    LOOM_ERROR(op_, ": cannot write '", path_, "': directory '", dir_,
               err == ENOENT ? "' does not exist" : "' is not accessible: " + os_reason(err));
  }
  LOOM_CHECK(S_ISDIR(st.st_mode), op_, ": cannot write '", path_, "': '", dir_, "' is not a directory");
  if (::stat(path_.c_str(), &st) == 0)
    LOOM_CHECK(!S_ISDIR(st.st_mode), op_, ": cannot write '", path_, "': it is a directory");
  // 0666 before the umask, as fopen would give: the checkpoint gets the same
  // permissions as any file the user creates.
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp_path_ = temp_name_for(path_, attempt);
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0 || errno != EEXIST) break;
  }
  if (fd_ < 0) {
    int err = errno;
    std::string tmp = temp_path_;
    temp_path_.clear();  // nothing to remove
    LOOM_ERROR(op_, ": cannot create temporary file '", tmp, "' next to '", path_, "': ", os_reason(err));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFileWriter::fail(const std::string& what, int err) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
  LOOM_ERROR(op_, ": writing '", path_, "' failed (", what, "): ", os_reason(err));
}

void AtomicFileWriter::write(const void* data, size_t n) {
  LOOM_ASSERT(fd_ >= 0 && !committed_, "AtomicFileWriter::write after commit or failure");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    // Large writes go in chunks: Linux writes at most ~2 GiB per call anyway.
    size_t chunk = n < (size_t{1} << 30) ? n : (size_t{1} << 30);
    ssize_t w = ::write(fd_, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("write to '" + temp_path_ + "'", errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFileWriter::commit() {
  LOOM_ASSERT(fd_ >= 0 && !committed_, "AtomicFileWriter::commit twice or after failure");
  if (::fsync(fd_) != 0) fail("fsync of '" + temp_path_ + "'", errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close of '" + temp_path_ + "'", errno);
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail("rename of '" + temp_path_ + "'", errno);
  committed_ = true;
  // The rename is durable only once the directory entry is on disk. Some file
  // systems cannot fsync a directory (EINVAL): the data is safe regardless.
  int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    int rc = ::fsync(dfd);
    int err = errno;
    ::close(dfd);
    LOOM_CHECK(rc == 0 || err == EINVAL || err == EROFS, op_, ": fsync of directory '", dir_, "' after writing '",
               path_, "' failed: ", os_reason(err));
  }
}

FileReader::FileReader(const std::string& path, const std::string& op) : path_(path), op_(op) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    int err = errno;
    LOOM_ERROR(op_, ": cannot open '", path_, "': ", os_reason(err));
  }
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    int err = errno;
    ::close(fd_);
    LOOM_ERROR(op_, ": cannot stat '", path_, "': ", os_reason(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    LOOM_ERROR(op_, ": '", path_, "' is not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

FileReader::~FileReader() {
  if (fd_ >= 0) ::close(fd_);
}

void FileReader::read_at(uint64_t offset, void* dst, size_t n) {
  char* p = static_cast<char*>(dst);
  uint64_t at = offset;
  while (n > 0) {
    size_t chunk = n < (size_t{1} << 30) ? n : (size_t{1} << 30);
    ssize_t r = ::pread(fd_, p, chunk, static_cast<off_t>(at));
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      LOOM_ERROR(op_, ": reading '", path_, "' at byte ", at, " failed: ", os_reason(err));
    }
    LOOM_CHECK(r > 0, op_, ": '", path_, "' ended at byte ", at, " while ", n,
               " more bytes were expected (was the file truncated while loading?)");
    p += r;
    at += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFileWriter file(path, "write_file_atomic");
  if (size > 0) file.write(data, size);
  file.commit();
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic(path, bytes.data(), bytes.size());
}

void write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace loom::io
