// libFuzzer target for the safetensors reader (src/io/safetensors.cpp).
//
// Any input must either parse or throw loom::Error: a crash, a sanitizer
// report, another exception type, a leak, a timeout or a huge allocation is a
// bug. What parses must also survive a round trip: serialized again and
// re-parsed, it gives the same names, dtypes, shapes, bytes and metadata.
#include <loom/loom.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

void require(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz_safetensors: round trip mismatch: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  loom::io::SafetensorsFile parsed;
  try {
    parsed = loom::io::parse_safetensors(data, size, "fuzz-input");
  } catch (const loom::Error&) {
    return 0;  // rejected: the expected outcome for most inputs
  }
  // Accepted: the tensors must be well-formed loom tensors...
  size_t total = 0;
  for (const auto& [name, t] : parsed.tensors) {
    require(t.defined() && t.numel() >= 0, "undefined tensor");
    total += t.nbytes();
  }
  require(total + 8 <= size, "tensors hold more bytes than the input");
  // ...and round-trip exactly (bytes compared raw: NaN payloads included).
  std::vector<uint8_t> again = loom::io::serialize_safetensors(parsed.tensors, parsed.metadata);
  loom::io::SafetensorsFile back = loom::io::parse_safetensors(again.data(), again.size(), "round-trip");
  require(back.metadata == parsed.metadata, "metadata");
  require(back.tensors.size() == parsed.tensors.size(), "tensor count");
  for (size_t i = 0; i < parsed.tensors.size(); ++i) {
    const loom::Tensor& a = parsed.tensors[i].second;
    const loom::Tensor& b = back.tensors[i].second;
    require(back.tensors[i].first == parsed.tensors[i].first, "tensor name");
    require(a.dtype() == b.dtype(), "dtype");
    require(a.sizes() == b.sizes(), "shape");
    require(a.nbytes() == b.nbytes(), "byte size");
    require(a.nbytes() == 0 || std::memcmp(a.raw_data_ptr(), b.raw_data_ptr(), a.nbytes()) == 0, "tensor bytes");
  }
  return 0;
}
