// Python-style spellings for extra_repr(), so `std::cout << model` prints
// exactly what PyTorch prints for the same module tree.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loom::nn::detail {

// repr(float) in Python: the shortest digits that round-trip, "1.0" for
// integral values, exponent form below 1e-4 or from 1e16 on ("1e-05").
std::string py_float(double v);
std::string py_optional_float(std::optional<double> v);  // "None" when empty
std::string py_bool(bool b);                              // "True" / "False"
// A Python tuple of ints: "(3,)", "(2, 5)", "()".
std::string py_tuple(const std::vector<int64_t>& v);

}  // namespace loom::nn::detail
