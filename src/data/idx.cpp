// read_idx: the IDX format of MNIST / Fashion-MNIST, raw or gzipped.
//
// Note [Reading untrusted IDX files]
// The header is 4 + 4 * D bytes and declares the size of everything after
// it, so a damaged or hostile file can claim terabytes. Nothing is allocated
// from the header's word alone: raw files are checked against their size on
// disk first, and gzipped ones (whose inflated size is unknown until read)
// are inflated into a buffer that grows only with bytes actually produced.
// zlib's gzread reads raw files as they are ("transparent" mode), so both
// kinds go through the same reader and report offsets in the same
// (uncompressed) stream.
#include "loom/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "loom/error.h"
#include "loom/ops.h"

namespace loom::data {

namespace {

struct IdxType {
  uint8_t code;
  const char* name;
  size_t size;  // bytes per element in the file
  DType dtype;  // what loom stores it as
};

// int8 and int16 have no loom dtype: they widen to int32.
constexpr IdxType kIdxTypes[] = {
    {0x08, "uint8", 1, kUInt8},   {0x09, "int8", 1, kInt32},      {0x0B, "int16", 2, kInt32},
    {0x0C, "int32", 4, kInt32},   {0x0D, "float32", 4, kFloat32}, {0x0E, "float64", 8, kFloat64},
};

constexpr int kMaxDims = 8;
// Far above any real file, low enough that element counts times element
// sizes never overflow int64.
constexpr uint64_t kMaxBytes = uint64_t{1} << 50;

struct GzClose {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

// A gzip (or, transparently, raw) file read front to back, counting offsets.
class IdxStream {
 public:
  explicit IdxStream(const std::string& path) : path_(path) {
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    LOOM_CHECK(std::filesystem::exists(status), "read_idx: '", path, "' does not exist");
    LOOM_CHECK(std::filesystem::is_regular_file(status), "read_idx: '", path, "' is not a regular file");
    errno = 0;
    file_.reset(gzopen(path.c_str(), "rb"));
    LOOM_CHECK(file_ != nullptr, "read_idx: cannot open '", path, "': ", errno ? std::strerror(errno) : "out of memory");
    gzbuffer(file_.get(), 1 << 17);  // larger than zlib's 8 KiB default: fewer read calls
  }

  // Reads up to n bytes; fewer only at the end of the stream.
  size_t read(void* buf, size_t n) {
    size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, size_t{1} << 30));
      const int got = gzread(file_.get(), static_cast<char*>(buf) + done, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(file_.get(), &errnum);
        LOOM_ERROR("read_idx: '", path_, "': cannot read at byte offset ", offset_ + done, ": ",
                   errnum == Z_ERRNO ? std::strerror(errno) : msg);
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    offset_ += done;
    return done;
  }

  // Why the stream ended early, when zlib knows ("unexpected end of file").
  std::string end_reason() {
    int errnum = 0;
    const char* msg = gzerror(file_.get(), &errnum);
    return errnum == Z_OK ? std::string() : std::string(" (zlib: ") + msg + ")";
  }

  // True when the file is not gzip and is being read as it is.
  bool raw() { return gzdirect(file_.get()) == 1; }
  uint64_t offset() const { return offset_; }

 private:
  std::string path_;
  std::unique_ptr<gzFile_s, GzClose> file_;
  uint64_t offset_ = 0;
};

uint32_t load_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
uint64_t load_be64(const uint8_t* p) { return (uint64_t{load_be32(p)} << 32) | load_be32(p + 4); }

// Big-endian file elements into the output tensor's native values.
void convert(const IdxType& t, const uint8_t* in, int64_t n, Tensor& out) {
  switch (t.code) {
    case 0x08:
      std::memcpy(out.data_ptr<uint8_t>(), in, static_cast<size_t>(n));
      break;
    case 0x09: {
      int32_t* o = out.data_ptr<int32_t>();
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int8_t>(in[i]);
      break;
    }
    case 0x0B: {
      int32_t* o = out.data_ptr<int32_t>();
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int16_t>((in[2 * i] << 8) | in[2 * i + 1]);
      break;
    }
    case 0x0C: {
      int32_t* o = out.data_ptr<int32_t>();
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int32_t>(load_be32(in + 4 * i));
      break;
    }
    case 0x0D: {
      float* o = out.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = load_be32(in + 4 * i);
        std::memcpy(o + i, &bits, 4);
      }
      break;
    }
    case 0x0E: {
      double* o = out.data_ptr<double>();
      for (int64_t i = 0; i < n; ++i) {
        const uint64_t bits = load_be64(in + 8 * i);
        std::memcpy(o + i, &bits, 8);
      }
      break;
    }
    default:
      LOOM_ASSERT(false, "read_idx: unhandled type code ", int{t.code});
  }
}

std::string hex(uint32_t v, int digits) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%0*X", digits, v);
  return buf;
}

}  // namespace

Tensor read_idx(const std::string& path) {
  IdxStream in(path);
  const std::string where = "read_idx: '" + path + "': ";

  // Magic: 0x00 0x00 <type code> <number of dims>.
  uint8_t magic[4];
  const size_t got_magic = in.read(magic, 4);
  LOOM_CHECK(got_magic == 4, where, "truncated at byte offset ", got_magic,
             ": an IDX file starts with a 4-byte magic number", in.end_reason());
  const uint32_t magic_word = load_be32(magic);
  LOOM_CHECK(magic[0] == 0 && magic[1] == 0, where, "bad magic number ", hex(magic_word, 8),
             " at byte offset 0: an IDX file starts with two zero bytes, a type code and the number of dims "
             "(0x00000803 for MNIST images, 0x00000801 for labels)");
  const IdxType* type = nullptr;
  for (const IdxType& t : kIdxTypes)
    if (t.code == magic[2]) type = &t;
  LOOM_CHECK(type != nullptr, where, "unknown type code ", hex(magic[2], 2), " at byte offset 2 (magic ",
             hex(magic_word, 8), "): expected 0x08 (uint8), 0x09 (int8), 0x0B (int16), 0x0C (int32), 0x0D (float32) or 0x0E "
             "(float64)");
  const int ndims = magic[3];
  LOOM_CHECK(ndims >= 1 && ndims <= kMaxDims, where, "the header declares ", ndims, " dims at byte offset 3 (magic ",
             hex(magic_word, 8), "); expected 1 to ", kMaxDims);

  // Sizes: one big-endian uint32 per dim.
  uint8_t dim_bytes[4 * kMaxDims];
  const size_t want_dims = 4 * static_cast<size_t>(ndims);
  const size_t got_dims = in.read(dim_bytes, want_dims);
  LOOM_CHECK(got_dims == want_dims, where, "truncated at byte offset ", 4 + got_dims, ": the header declares ", ndims,
             " dims, whose sizes need bytes 4 to ", 4 + want_dims, in.end_reason());
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  for (int d = 0; d < ndims; ++d) {
    const uint32_t s = load_be32(dim_bytes + 4 * d);
    shape.push_back(s);
    // Every size is below 2^32 and kMaxBytes below 2^63, so a product that
    // has not yet passed kMaxBytes cannot overflow on the next multiply.
    if (numel <= kMaxBytes) numel *= s;
  }
  const uint64_t header_bytes = 4 + want_dims;
  LOOM_CHECK(numel <= kMaxBytes / type->size, where, "the header at byte offset 4 declares shape ", shape_str(shape),
             " of ", type->name, ", an absurd size (more than ", kMaxBytes, " bytes)");
  const uint64_t data_bytes = numel * type->size;
  const std::string promise = std::to_string(data_bytes) + " bytes of " + type->name + " data (shape " + shape_str(shape) +
                              ") from byte offset " + std::to_string(header_bytes);

  // A raw file's size is known: check it before allocating anything.
  if (in.raw()) {
    std::error_code ec;
    const uint64_t file_bytes = std::filesystem::file_size(path, ec);
    if (!ec) {
      LOOM_CHECK(file_bytes >= header_bytes + data_bytes, where, "truncated at byte offset ", file_bytes,
                 ": the header promises ", promise, " but the file has only ", file_bytes, " bytes");
      LOOM_CHECK(file_bytes == header_bytes + data_bytes, where, "unexpected data at byte offset ",
                 header_bytes + data_bytes, ": the header promises ", promise, " but the file has ", file_bytes,
                 " bytes, ", file_bytes - header_bytes - data_bytes, " more than that");
    }
  }

  // The data, in chunks that grow with what has been read (Note [Reading
  // untrusted IDX files]).
  std::vector<uint8_t> buf;
  while (buf.size() < data_bytes) {
    const size_t have = buf.size();
    const size_t want = static_cast<size_t>(std::min<uint64_t>(data_bytes - have, std::max<size_t>(have, size_t{1} << 20)));
    buf.resize(have + want);
    const size_t got = in.read(buf.data() + have, want);
    LOOM_CHECK(got == want, where, "truncated at byte offset ", header_bytes + have + got, ": the header promises ",
               promise, " but the data ends after ", have + got, " bytes", in.end_reason());
  }
  uint8_t extra;
  LOOM_CHECK(in.read(&extra, 1) == 0, where, "unexpected data at byte offset ", header_bytes + data_bytes,
             ": the header promises ", promise, " and nothing after it");

  Tensor out = empty(shape, type->dtype);
  convert(*type, buf.data(), static_cast<int64_t>(numel), out);
  return out;
}

}  // namespace loom::data
