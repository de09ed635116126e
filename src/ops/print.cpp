// operator<<(ostream, Tensor): PyTorch's tensor printing.
//
// Note [Printing like PyTorch]
// The layout follows torch/_tensor_str.py with its default print options
// (precision 4, threshold 1000 elements, 3 edge items, line width 80):
//  - One formatter for the whole tensor picks a mode from the nonzero finite
//    values: "int mode" (all integral: `1.`), fixed (`0.1000`), or scientific
//    (`1.0000e+08`) when max/min > 1000, max > 1e8, or (non-int) min < 1e-4.
//    Every element is right-aligned to the widest one.
//  - Above the threshold each dim shows its first and last 3 entries around
//    `...`; the formatter only looks at the entries that are shown.
//  - Rows of a 1-D vector wrap at 80 columns; dims >= 2 separate their
//    sub-tensors with dim-1 newlines.
//  - Suffixes: device (non-CPU), dtype when it is not a default one
//    (float32, int64, bool), then grad_fn or requires_grad.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/capture.h"
#include "ops/op_utils.h"

namespace loom {

namespace {

constexpr int64_t kPrecision = 4;
constexpr int64_t kThreshold = 1000;
constexpr int64_t kEdgeItems = 3;
constexpr int64_t kLineWidth = 80;

// printf-style formatting; NaN and inf spelled as Python does ("nan", "inf").
std::string format_double(double v, const char* fmt) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string pad_left(const std::string& s, size_t width) {
  return s.size() >= width ? s : std::string(width - s.size(), ' ') + s;
}

// The values that are shown, on the host, flattened row-major. When the
// tensor is summarized, every dim longer than 2 * kEdgeItems keeps only its
// first and last kEdgeItems entries (cut[d]), so a huge tensor is never
// copied whole.
struct HostValues {
  Shape sizes;    // after cutting
  Shape strides;  // contiguous strides of `sizes`
  std::vector<bool> cut;
  DType dtype;
  std::vector<double> f;   // floating dtypes
  std::vector<int64_t> i;  // integer dtypes and bool
  bool floating() const { return is_floating_point(dtype); }
};

HostValues host_values(const Tensor& t, bool summarize) {
  NoGradGuard ng;
  Tensor c = t.detach();
  if (!c.device().is_cpu()) c = c.to(Device::cpu());
  std::vector<bool> cut(static_cast<size_t>(c.dim()), false);
  for (int64_t d = 0; summarize && d < c.dim(); ++d) {
    const int64_t n = c.size(d);
    if (n <= 2 * kEdgeItems) continue;
    c = loom::cat({c.narrow(d, 0, kEdgeItems), c.narrow(d, n - kEdgeItems, kEdgeItems)}, d);
    cut[static_cast<size_t>(d)] = true;
  }
  HostValues h{c.sizes(), contiguous_strides(c.sizes()), cut, c.dtype(), {}, {}};
  if (h.floating()) {
    Tensor v = ops::cast_raw(c, kFloat64).contiguous();
    const double* p = v.data_ptr<double>();
    h.f.assign(p, p + v.numel());
  } else {
    Tensor v = ops::cast_raw(c, kInt64).contiguous();
    const int64_t* p = v.data_ptr<int64_t>();
    h.i.assign(p, p + v.numel());
  }
  return h;
}

class Formatter {
 public:
  explicit Formatter(const HostValues& h) : h_(h) {
    if (!h.floating()) {
      for (int64_t v : h.i) max_width_ = std::max(max_width_, int_str(v).size());
      return;
    }
    std::vector<double> vals;  // nonzero finite values
    for (double v : h.f)
      if (std::isfinite(v) && v != 0) vals.push_back(v);
    if (vals.empty()) return;
    double lo = std::abs(vals[0]), hi = lo;
    for (double v : vals) {
      lo = std::min(lo, std::abs(v));
      hi = std::max(hi, std::abs(v));
      if (v != std::ceil(v)) int_mode_ = false;
    }
    sci_mode_ = hi / lo > 1000.0 || hi > 1.0e8 || (!int_mode_ && lo < 1.0e-4);
    for (double v : vals) {
      size_t w = sci_mode_ ? format_double(v, "%.4e").size()
                 : int_mode_ ? format_double(v, "%.0f").size() + 1  // the trailing "."
                             : format_double(v, "%.4f").size();
      max_width_ = std::max(max_width_, w);
    }
  }

  size_t width() const { return max_width_; }

  std::string format(int64_t k) const {
    if (!h_.floating()) return pad_left(int_str(h_.i[k]), max_width_);
    const double v = h_.f[k];
    std::string s;
    if (sci_mode_) {
      s = format_double(v, "%.4e");
    } else if (int_mode_) {
      s = format_double(v, "%.0f");
      if (std::isfinite(v)) s += ".";
    } else {
      s = format_double(v, "%.4f");
    }
    return pad_left(s, max_width_);
  }

 private:
  std::string int_str(int64_t v) const {
    if (h_.dtype == kBool) return v ? "True" : "False";
    return std::to_string(v);
  }

  const HostValues& h_;
  bool int_mode_ = true;
  bool sci_mode_ = false;
  size_t max_width_ = 1;
};

// One dim of the body: `[a, b, c]` or nested brackets; `indent` is the column
// the opening bracket sits at.
std::string format_dim(const HostValues& h, const Formatter& fmt, int64_t dim, int64_t base, int64_t indent) {
  const int64_t ndim = static_cast<int64_t>(h.sizes.size());
  if (dim == ndim) return fmt.format(base);  // 0-dim tensor
  const int64_t n = h.sizes[dim];
  std::vector<std::string> items;
  for (int64_t k = 0; k < n; ++k) {
    if (h.cut[dim] && k == kEdgeItems) items.push_back(dim == ndim - 1 ? " ..." : "...");
    const int64_t at = base + k * h.strides[dim];
    items.push_back(dim == ndim - 1 ? fmt.format(at) : format_dim(h, fmt, dim + 1, at, indent + 1));
  }
  std::string out = "[";
  if (dim == ndim - 1) {
    // A vector wraps to as many elements per line as fit in the line width.
    const int64_t element_length = static_cast<int64_t>(fmt.width()) + 2;
    const int64_t per_line = std::max<int64_t>(1, (kLineWidth - indent) / element_length);
    for (size_t k = 0; k < items.size(); ++k) {
      if (k > 0) out += static_cast<int64_t>(k) % per_line == 0 ? ",\n" + std::string(indent + 1, ' ') : ", ";
      out += items[k];
    }
  } else {
    const std::string sep = "," + std::string(ndim - dim - 1, '\n') + std::string(indent + 1, ' ');
    for (size_t k = 0; k < items.size(); ++k) {
      if (k > 0) out += sep;
      out += items[k];
    }
  }
  return out + "]";
}

// Appends ", suffix" or wraps to a new line when it would pass the line width
// (PyTorch's _add_suffixes, including its count of the last line).
std::string add_suffixes(const std::string& body, const std::vector<std::string>& suffixes, int64_t indent) {
  std::string out = body;
  const size_t nl = body.rfind('\n');
  int64_t last_line_len = static_cast<int64_t>(body.size()) - (nl == std::string::npos ? -1 : static_cast<int64_t>(nl)) + 1;
  for (const std::string& s : suffixes) {
    const auto len = static_cast<int64_t>(s.size());
    if (last_line_len + len + 2 > kLineWidth) {
      out += ",\n" + std::string(indent, ' ') + s;
      last_line_len = indent + len;
    } else {
      out += ", " + s;
      last_line_len += len + 2;
    }
  }
  return out + ")";
}

}  // namespace

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "[ Tensor (undefined) ]";
  if (capture::Recorder* r = capture::active()) r->on_host_access(*t.unsafe_impl(), "print");
  const std::string prefix = "tensor(";
  const auto indent = static_cast<int64_t>(prefix.size());
  std::vector<std::string> suffixes;
  if (!t.device().is_cpu()) suffixes.push_back("device='" + t.device().str() + "'");

  std::string body;
  if (t.numel() == 0) {
    // No values to show: the shape (unless it is (0,)) and any non-float32
    // dtype are spelled out.
    if (t.dim() != 1) {
      std::string size = "size=(";
      for (int64_t d = 0; d < t.dim(); ++d) size += std::to_string(t.size(d)) + (d + 1 < t.dim() ? ", " : "");
      suffixes.push_back(size + ")");
    }
    if (t.dtype() != default_dtype()) suffixes.push_back(std::string("dtype=") + dtype_name(t.dtype()));
    body = "[]";
  } else {
    if (t.dtype() != default_dtype() && t.dtype() != kInt64 && t.dtype() != kBool)
      suffixes.push_back(std::string("dtype=") + dtype_name(t.dtype()));
    const HostValues h = host_values(t, t.numel() > kThreshold);
    const Formatter fmt(h);
    body = format_dim(h, fmt, 0, 0, indent);
  }

  if (auto fn = t.grad_fn())
    suffixes.push_back("grad_fn=<" + fn->name() + ">");
  else if (t.requires_grad())
    suffixes.push_back("requires_grad=True");
  return os << add_suffixes(prefix + body, suffixes, indent);
}

}  // namespace loom
