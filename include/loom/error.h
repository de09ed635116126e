// loom::Error and the checking macros.
//
// LOOM_CHECK(cond, parts...) is for user mistakes: it throws loom::Error with a
// message built from `parts` (streamed with operator<<). LOOM_ASSERT marks an
// internal invariant: if it fails, loom has a bug, and it still throws rather
// than aborting so a host program can report it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace loom {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void stream_parts(std::ostringstream&) {}
template <typename T, typename... Rest>
void stream_parts(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  stream_parts(os, rest...);
}
template <typename... Parts>
std::string str_cat(const Parts&... parts) {
  std::ostringstream os;
  stream_parts(os, parts...);
  return os.str();
}
[[noreturn]] void throw_error(const std::string& msg);
[[noreturn]] void throw_internal(const char* file, int line, const char* cond, const std::string& msg);
}  // namespace detail

// Prints a shape as [2, 3].
std::string shape_str(const std::vector<int64_t>& sizes);

}  // namespace loom

#define LOOM_CHECK(cond, ...)                                           \
  do {                                                                  \
    if (!(cond)) ::loom::detail::throw_error(::loom::detail::str_cat(__VA_ARGS__)); \
  } while (0)

#define LOOM_ERROR(...) ::loom::detail::throw_error(::loom::detail::str_cat(__VA_ARGS__))

#define LOOM_ASSERT(cond, ...)                                                      \
  do {                                                                              \
    if (!(cond))                                                                    \
      ::loom::detail::throw_internal(__FILE__, __LINE__, #cond,                     \
                                     ::loom::detail::str_cat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)
