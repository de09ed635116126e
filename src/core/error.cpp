#include "loom/error.h"

namespace loom {

namespace detail {
void throw_error(const std::string& msg) { throw Error(msg); }
void throw_internal(const char* file, int line, const char* cond, const std::string& msg) {
  throw Error(str_cat("loom internal error (please report): ", cond, " failed at ", file, ":", line,
                      msg.empty() ? "" : ": ", msg));
}
}  // namespace detail

std::string shape_str(const std::vector<int64_t>& sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  return s + "]";
}

}  // namespace loom
