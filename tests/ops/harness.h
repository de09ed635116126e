// The op harness: every op passes through here.
//
// An op is one Row: a name, the op under test (a function from input tensors to
// output tensors, through the public API), how its inputs are drawn (domain
// and shapes), and a reference written independently in plain loops over
// doubles (Array). For every row the harness
//   (a) runs the op in float64 and float32 (and float16/bfloat16 for
//       elementwise rows, int64/int32 for rows that take integers) and
//       compares with the reference;
//   (b) runs a float64 central-difference gradcheck of loom::autograd::grad,
//       and checks that backward in float32 gives the float64 gradients;
//   (c) repeats (a) and (b) with operands that are transposed (permuted
//       strides), sliced (narrow + a step, so strided with holes), expanded
//       (stride-0 dims) or broadcast by the op itself, and for every shape
//       case the row lists (the extra cases hold size-1 dims and 0-dim
//       tensors);
// and, for rows marked gradgrad(), a second-order check.
//
// Note [Harness leaves]
// Gradients are taken with respect to the *leaves*: tensors holding the
// logical input values in the variant's memory layout (a detached
// non-contiguous view for the transposed and sliced variants). For the
// expanded variant the leaf is the small tensor and the op sees
// leaf.expand(shape), so the gradient also flows through expand. Finite
// differences rebuild the leaves from perturbed values each time, which
// keeps the layout identical to the analytic run.
#pragma once

#include <loom/loom.h>

#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace loom_test {

using loom::Tensor;
using Shape = std::vector<int64_t>;
using TL = std::vector<Tensor>;

// A dense row-major array of doubles: what references take and return.
struct Array {
  Shape shape;
  std::vector<double> v;

  Array() = default;
  explicit Array(Shape s, double fill = 0.0);
  Array(Shape s, std::vector<double> values);
  int64_t numel() const { return static_cast<int64_t>(v.size()); }
  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t d) const { return shape[static_cast<size_t>(d < 0 ? d + dim() : d)]; }
  double& at(const std::vector<int64_t>& idx);
  double at(const std::vector<int64_t>& idx) const;
};

int64_t numel_of(const Shape& s);
// Row-major multi-index of a flat position, and back.
std::vector<int64_t> unravel(int64_t flat, const Shape& shape);
int64_t ravel(const std::vector<int64_t>& idx, const Shape& shape);
// Calls fn(idx) for every multi-index of `shape` in row-major order.
void for_each_index(const Shape& shape, const std::function<void(const std::vector<int64_t>&)>& fn);
int64_t wrap(int64_t d, int64_t n);  // negative dim / index -> [0, n)

// ---- reference building blocks (plain loops) ----
Shape broadcast_shapes(const Shape& a, const Shape& b);
Array expand_to(const Array& a, const Shape& shape);
Array map(const Array& a, const std::function<double(double)>& f);
// f(a, b) after broadcasting a and b.
Array zip(const Array& a, const Array& b, const std::function<double(double, double)>& f);
// Applies f to the values along `dims` (empty = all dims) of every output position.
Array reduce(const Array& a, std::vector<int64_t> dims, bool keepdim,
             const std::function<double(const std::vector<double>&)>& f);
// Replaces each 1-D fiber along `dim` by f(fiber) (same length).
Array along(const Array& a, int64_t dim,
            const std::function<std::vector<double>(const std::vector<double>&)>& f);
Array ref_matmul(const Array& a, const Array& b);  // numpy / torch.matmul semantics
Array ref_permute(const Array& a, const std::vector<int64_t>& dims);
Array ref_reshape(const Array& a, Shape shape);  // one -1 allowed
Array ref_slice(const Array& a, int64_t dim, int64_t start, int64_t stop, int64_t step);
Array ref_select(const Array& a, int64_t dim, int64_t index);
Array ref_cat(const std::vector<Array>& as, int64_t dim);

// ---- input domains ----
struct Domain {
  enum class Kind { Uniform, Lattice, Distinct, Integers, Index, Mask };
  Kind kind = Kind::Uniform;
  double lo = -2, hi = 2;       // Uniform, Integers (hi exclusive)
  std::vector<double> kinks;    // Uniform: stay at least `gap` away from these
  double gap = 0;
  double offset = 0, step = 0;  // Lattice: offset + step * k, k in [0, count)
  int64_t count = 0;            // Lattice count; Index: values in [0, count)
  bool differentiable = true;   // gradcheck this input (float kinds only)

  bool is_float() const { return kind != Kind::Index && kind != Kind::Mask; }
};
Domain U(double lo, double hi);
Domain Away(double lo, double hi, std::vector<double> kinks, double gap);
Domain Lattice(double offset, double step, int64_t count);
Domain Distinct(double spacing);  // all values different, at least `spacing` apart
Domain Ints(int64_t lo, int64_t hi);  // integer-valued floats in [lo, hi)
Domain Index(int64_t high);          // int64 in [0, high)
Domain Mask();                       // bool
Domain Const(Domain d);              // a float input that is not gradchecked

// What dtype an output has. Accum: like Same, but int64 for integer inputs
// (sum, prod, cumsum accumulate integers in int64, as PyTorch).
enum class Out { Same, Bool, Int64, Float64, Accum };

struct Row {
  std::string name;
  std::vector<Domain> inputs;
  // Shape cases: cases[k][i] is input i's shape. cases[0] is the main one;
  // later ones add size-1 dims, 0-dim tensors, other ranks.
  std::vector<std::vector<Shape>> cases;
  std::function<TL(const TL&)> fn;
  std::function<std::vector<Array>(const std::vector<Array>&)> ref;
  std::vector<Out> outs = {Out::Same};
  bool grad = true;            // gradcheck (off for comparisons, argmax, one_hot)
  bool gradgrad = false;       // also a second-order check
  bool op_broadcasts = false;  // the op itself broadcasts its float inputs
  bool lowp = false;           // forward in float16 / bfloat16 too
  bool ints = false;           // forward in int64 / int32 too (float inputs drawn from -3..3)
  bool layouts = true;         // transposed / sliced / expanded variants
  bool expand = true;          // expanded variant (off where repeats make ties)

  explicit Row(std::string n) : name(std::move(n)) {}
  Row& in(Domain d) { inputs.push_back(std::move(d)); return *this; }
  Row& shapes(std::vector<std::vector<Shape>> c) { cases = std::move(c); return *this; }
  Row& f(std::function<Tensor(const TL&)> g) {
    fn = [g](const TL& x) { return TL{g(x)}; };
    return *this;
  }
  Row& fm(std::function<TL(const TL&)> g) { fn = std::move(g); return *this; }
  Row& r(std::function<Array(const std::vector<Array>&)> g) {
    ref = [g](const std::vector<Array>& x) { return std::vector<Array>{g(x)}; };
    return *this;
  }
  Row& rm(std::function<std::vector<Array>(const std::vector<Array>&)> g) { ref = std::move(g); return *this; }
  Row& out(std::vector<Out> o) { outs = std::move(o); return *this; }
  Row& forward_only() { grad = false; return *this; }
  Row& gradgrad_check() { gradgrad = true; return *this; }
  Row& broadcasting() { op_broadcasts = true; return *this; }
  Row& low_precision() { lowp = true; return *this; }
  Row& integers() { ints = true; return *this; }
  Row& contiguous_only() { layouts = false; return *this; }
  Row& no_expand() { expand = false; return *this; }
};

inline void PrintTo(const Row& r, std::ostream* os) { *os << r.name; }

// Rows kept in files of their own (all_rows() in test_ops.cpp gathers them).
void add_conv_rows(std::vector<Row>& rows);  // test_ops_conv.cpp
void add_pool_rows(std::vector<Row>& rows);  // test_ops_pool.cpp: pooling, batch norm, dropout2d, interpolate
void add_attention_rows(std::vector<Row>& rows);  // test_ops_attention.cpp

// Runs every check for one row, reporting failures through GoogleTest.
void run_row(const Row& row);

// Tolerances: |got - want| <= atol + rtol * |want|.
struct Tol {
  double rtol, atol;
};
inline constexpr Tol kTolF64{1e-9, 1e-10};
inline constexpr Tol kTolF32{1e-4, 1e-5};
inline constexpr Tol kTolF16{2e-3, 2e-3};
inline constexpr Tol kTolBF16{1.6e-2, 1.6e-2};
inline constexpr Tol kTolGrad{1e-6, 1e-6};  // float64 central differences, eps 1e-6
inline constexpr Tol kTolGradF32{1e-4, 1e-5};  // float32 backward vs float64 backward
inline constexpr double kGradEps = 1e-6;

}  // namespace loom_test
