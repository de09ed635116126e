// nn::functional losses, written with loom ops so autograd differentiates
// them. Each follows PyTorch's definition exactly, including the
// normalization of weighted means and the label-smoothing mixture
// (Note [Cross entropy with label smoothing]).
#include <cmath>

#include "core/autocast.h"
#include "core/capture.h"
#include "loom/autograd.h"
#include "loom/nn/functional.h"

namespace loom::nn::functional {

namespace {

enum class Reduction { None, Mean, Sum, BatchMean };

Reduction parse_reduction(const char* op, const std::string& r, bool allow_batchmean = false) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  if (allow_batchmean && r == "batchmean") return Reduction::BatchMean;
  LOOM_ERROR(op, ": reduction must be \"mean\", \"sum\"", allow_batchmean ? ", \"batchmean\"" : "",
             " or \"none\", got \"", r, "\"");
}

Tensor reduce(const Tensor& loss, Reduction r) {
  switch (r) {
    case Reduction::Mean: return loss.mean();
    case Reduction::Sum: return loss.sum();
    default: return loss;
  }
}

void check_floating(const char* op, const char* what, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": ", what, " is an undefined tensor");
  LOOM_CHECK(t.is_floating_point(), op, ": expected a floating point ", what, ", got ", dtype_name(t.dtype()),
             " (shape ", shape_str(t.sizes()), ")");
}

// Elementwise losses compare input and target position by position. PyTorch
// broadcasts mismatched shapes with a warning, which nearly always hides a
// bug ((N, 1) against (N) makes an (N, N) loss), so loom refuses them.
void check_same_shape(const char* op, const Tensor& input, const Tensor& target) {
  check_floating(op, "input", input);
  check_floating(op, "target", target);
  LOOM_CHECK(input.sizes() == target.sizes(), op, ": target of shape ", shape_str(target.sizes()),
             " must have the input's shape ", shape_str(input.sizes()));
}

// An optional weight must broadcast to the input's shape without growing it.
void check_broadcasts_to(const char* op, const char* what, const Tensor& w, const Tensor& input) {
  if (!w.defined()) return;
  check_floating(op, what, w);
  bool ok = w.dim() <= input.dim();
  for (int64_t i = 1; ok && i <= w.dim(); ++i) {
    const int64_t ws = w.sizes()[w.dim() - i], is = input.sizes()[input.dim() - i];
    ok = ws == is || ws == 1;
  }
  LOOM_CHECK(ok, op, ": ", what, " of shape ", shape_str(w.sizes()), " cannot be broadcast to the input's shape ",
             shape_str(input.sizes()));
}

int64_t class_dim_of(const Tensor& input) { return input.dim() == 1 ? 0 : 1; }

// (C) -> (1, C, 1, ...) so a per-class weight broadcasts against the input.
Tensor per_class(const Tensor& w, const Tensor& input) {
  std::vector<int64_t> shape(static_cast<size_t>(input.dim()), 1);
  shape[static_cast<size_t>(class_dim_of(input))] = w.sizes()[0];
  return w.view(shape);
}

void check_class_weight(const char* op, const Tensor& weight, int64_t classes) {
  if (!weight.defined()) return;
  check_floating(op, "weight", weight);
  LOOM_CHECK(weight.dim() == 1 && weight.sizes()[0] == classes, op, ": expected weight of shape [", classes,
             "] (one per class), got ", shape_str(weight.sizes()));
}

// The shape a class-index target must have: input's without the class dim.
std::vector<int64_t> index_target_shape(const Tensor& input) {
  std::vector<int64_t> s = input.sizes();
  s.erase(s.begin() + class_dim_of(input));
  return s;
}

// Per-position negative log-likelihood of class-index targets.
struct Nll {
  Tensor loss;         // target's shape: -w[t] * logp[t], 0 where ignored
  Tensor valid;        // bool, target's shape: target != ignore_index
  Tensor total_weight; // 0-dim: sum of w[t] over valid positions
};

// Every target that is not ignore_index names a class of `input` (`safe`:
// the targets with ignored ones replaced by 0).
void check_target_classes(const char* op, const Tensor& input, const Tensor& target, const Tensor& safe,
                          int64_t ignore_index) {
  const int64_t classes = input.sizes()[static_cast<size_t>(class_dim_of(input))];
  if (safe.numel() == 0) return;
  NoGradGuard ng;
  // A host check: a captured step (loom::compile) runs it at every replay.
  capture::host_check({amin(safe), amax(safe)}, [op, classes, in = input.sizes(), tg = target.sizes(),
                                                 ignore_index](const std::vector<Tensor>& v) {
    const int64_t lo = v[0].item<int64_t>(), hi = v[1].item<int64_t>();
    LOOM_CHECK(lo >= 0 && hi < classes, op, ": target class ", lo < 0 ? lo : hi, " is out of range [0, ", classes,
               ") for input of shape ", shape_str(in), " (target shape ", shape_str(tg), ", ignore_index=",
               ignore_index, ")");
  });
}

Nll nll_terms(const char* op, const Tensor& logp, const Tensor& target, const Tensor& weight, int64_t ignore_index) {
  const int64_t cdim = class_dim_of(logp);
  Nll r;
  r.valid = target != Scalar(ignore_index);
  // Ignored positions read class 0 (always a valid index) and are masked after.
  Tensor safe = where(r.valid, target, Scalar(int64_t{0}));
  check_target_classes(op, logp, target, safe, ignore_index);
  // (N, 1, d...) picks one log-probability per position -> (N, d...).
  Tensor picked = logp.gather(cdim, safe.unsqueeze(cdim)).squeeze(cdim);
  Tensor w = weight.defined() ? weight.index_select(0, safe.reshape({-1})).reshape(target.sizes())
                              : ones(target.sizes(), TensorOptions().dtype(logp.dtype()).device(logp.device()));
  w = where(r.valid, w, Scalar(0.0));
  // where() also keeps a -inf log-probability at an ignored position from becoming nan.
  r.loss = where(r.valid, -(picked * w), Scalar(0.0));
  r.total_weight = w.sum();
  return r;
}

Tensor reduce_nll(const Nll& n, Reduction red) {
  switch (red) {
    // The weighted mean divides by the weights of the targets that count;
    // with every target ignored this is 0/0 = nan, as PyTorch.
    case Reduction::Mean: return n.loss.sum() / n.total_weight;
    case Reduction::Sum: return n.loss.sum();
    default: return n.loss;
  }
}

void check_index_target(const char* op, const Tensor& input, const Tensor& target, bool probabilities_allowed) {
  const std::vector<int64_t> want = index_target_shape(input);
  if (target.sizes() != want) {
    if (probabilities_allowed)
      LOOM_ERROR(op, ": expected a target of class indices of shape ", shape_str(want),
                 " or of class probabilities of shape ", shape_str(input.sizes()), " for input of shape ",
                 shape_str(input.sizes()), ", got target of shape ", shape_str(target.sizes()));
    LOOM_ERROR(op, ": expected a target of shape ", shape_str(want), " for input of shape ",
               shape_str(input.sizes()), ", got ", shape_str(target.sizes()));
  }
  LOOM_CHECK(target.dtype() == kInt64, op, ": expected class-index targets of dtype int64, got ",
             dtype_name(target.dtype()), " (target shape ", shape_str(target.sizes()), ")");
}

void check_class_input(const char* op, const Tensor& input) {
  check_floating(op, "input", input);
  LOOM_CHECK(input.dim() >= 1, op, ": expected input of shape (C), (N, C) or (N, C, d1, ...), got a 0-dim tensor");
  LOOM_CHECK(input.sizes()[static_cast<size_t>(class_dim_of(input))] > 0, op,
             ": input of shape ", shape_str(input.sizes()), " has no classes");
}

}  // namespace

// Note [Cross entropy with label smoothing]
// With smoothing s and C classes the target distribution is
// (1 - s) * target + s / C. For class-index targets PyTorch computes
//   (1 - s) * nll_loss(logp, t) + (s / C) * smooth,
//   smooth_i = -sum_c w_c logp_ic (0 at ignored positions),
// and "mean" divides smooth's sum by the same total weight as nll_loss (the
// weights of the non-ignored targets). For probability targets the mixed
// distribution is used directly, and "mean" divides by the number of
// positions (N * d1 * ...), not by any weight.
Tensor cross_entropy(const Tensor& input, const Tensor& target, const CrossEntropyOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32}) return cross_entropy(r.cast(input), r.cast(target), o);
  const char* op = "cross_entropy";
  const Reduction red = parse_reduction(op, o.reduction);
  check_class_input(op, input);
  LOOM_CHECK(target.defined(), op, ": target is an undefined tensor");
  LOOM_CHECK(o.label_smoothing >= 0 && o.label_smoothing <= 1, op,
             ": label_smoothing must be between 0.0 and 1.0, got ", o.label_smoothing);
  const int64_t cdim = class_dim_of(input);
  const int64_t classes = input.sizes()[static_cast<size_t>(cdim)];
  check_class_weight(op, o.weight, classes);
  const double s = o.label_smoothing;

  if (target.sizes() == input.sizes()) {
    // Class probabilities.
    LOOM_CHECK(target.is_floating_point(), op,
               ": a target of the input's shape holds class probabilities and must be floating point, got ",
               dtype_name(target.dtype()), " (shape ", shape_str(target.sizes()), ")");
    LOOM_CHECK(o.ignore_index < 0, op, ": ignore_index (", o.ignore_index,
               ") is not supported for class-probability targets");
    Tensor logp = loom::log_softmax(input, cdim);
    Tensor t = s > 0 ? target * (1 - s) + s / static_cast<double>(classes) : target;
    Tensor terms = logp * t;
    if (o.weight.defined()) terms = terms * per_class(o.weight, input);
    switch (red) {
      case Reduction::None: return -terms.sum(cdim);
      case Reduction::Sum: return -terms.sum();
      default: return -terms.sum() / static_cast<double>(input.numel() / classes);
    }
  }

  check_index_target(op, input, target, true);
  if (!o.weight.defined() && input.dim() <= 2) {
    // (C) or (N, C) without class weights: one fused kernel per row forward
    // and backward (loom::cross_entropy_per_row); the rest below composes ops.
    check_target_classes(op, input, target, where(target != Scalar(o.ignore_index), target, Scalar(int64_t{0})),
                         o.ignore_index);
    const Tensor rows = input.dim() == 1 ? input.unsqueeze(0) : input;
    const Tensor t = target.reshape({-1});
    const Tensor per_row = loom::cross_entropy_per_row(rows, t, s, o.ignore_index);
    switch (red) {
      case Reduction::None: return per_row.reshape(target.sizes());
      case Reduction::Sum: return per_row.sum();
      // Divided by the number of targets that count; all ignored is 0/0 = nan, as PyTorch.
      default: return per_row.sum() / (t != Scalar(o.ignore_index)).sum().to(per_row.dtype());
    }
  }
  Tensor logp = loom::log_softmax(input, cdim);
  Nll n = nll_terms(op, logp, target, o.weight, o.ignore_index);
  Tensor loss = reduce_nll(n, red);
  if (s == 0) return loss;
  Tensor smooth = o.weight.defined() ? -(logp * per_class(o.weight, input)).sum(cdim) : -logp.sum(cdim);
  smooth = where(n.valid, smooth, Scalar(0.0));
  Tensor smooth_red = red == Reduction::None ? smooth
                      : red == Reduction::Sum ? smooth.sum()
                                              : smooth.sum() / n.total_weight;
  return loss * (1 - s) + smooth_red * (s / static_cast<double>(classes));
}

Tensor nll_loss(const Tensor& input, const Tensor& target, const NLLLossOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32}) return nll_loss(r.cast(input), r.cast(target), o);
  const char* op = "nll_loss";
  const Reduction red = parse_reduction(op, o.reduction);
  check_class_input(op, input);
  LOOM_CHECK(target.defined(), op, ": target is an undefined tensor");
  check_class_weight(op, o.weight, input.sizes()[static_cast<size_t>(class_dim_of(input))]);
  check_index_target(op, input, target, false);
  return reduce_nll(nll_terms(op, input, target, o.weight, o.ignore_index), red);
}

Tensor mse_loss(const Tensor& input, const Tensor& target, const MSELossOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32}) return mse_loss(r.cast(input), r.cast(target), o);
  const Reduction red = parse_reduction("mse_loss", o.reduction);
  check_same_shape("mse_loss", input, target);
  Tensor d = input - target;
  return reduce(d * d, red);
}

Tensor l1_loss(const Tensor& input, const Tensor& target, const L1LossOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32}) return l1_loss(r.cast(input), r.cast(target), o);
  const Reduction red = parse_reduction("l1_loss", o.reduction);
  check_same_shape("l1_loss", input, target);
  return reduce((input - target).abs(), red);
}

Tensor smooth_l1_loss(const Tensor& input, const Tensor& target, const SmoothL1LossOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32}) return smooth_l1_loss(r.cast(input), r.cast(target), o);
  const Reduction red = parse_reduction("smooth_l1_loss", o.reduction);
  check_same_shape("smooth_l1_loss", input, target);
  LOOM_CHECK(o.beta >= 0, "smooth_l1_loss: beta must be non-negative, got ", o.beta);
  Tensor d = input - target;
  Tensor ad = d.abs();
  if (o.beta == 0) return reduce(ad, red);
  // Quadratic inside |d| < beta, linear outside; value and slope meet at beta.
  return reduce(where(ad < Scalar(o.beta), d * d * (0.5 / o.beta), ad - 0.5 * o.beta), red);
}

Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, const BCELossOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32})
    return binary_cross_entropy(r.cast(input), r.cast(target), o);
  const char* op = "binary_cross_entropy";
  const Reduction red = parse_reduction(op, o.reduction);
  check_same_shape(op, input, target);
  check_broadcasts_to(op, "weight", o.weight, input);
  if (input.numel() > 0) {
    NoGradGuard ng;
    const double lo = amin(input).item<double>(), hi = amax(input).item<double>();
    LOOM_CHECK(lo >= 0 && hi <= 1, op, ": all elements of input should be between 0 and 1, got values in [", lo,
               ", ", hi, "] (for logits use binary_cross_entropy_with_logits)");
  }
  // log(0) = -inf is clamped to -100 as PyTorch, so a confident mistake costs
  // 100 rather than inf, and 0 * log(0) terms stay 0.
  Tensor log_x = clamp(input.log(), Scalar(-100.0), std::nullopt);
  Tensor log_1mx = clamp((1 - input).log(), Scalar(-100.0), std::nullopt);
  Tensor loss = -(target * log_x + (1 - target) * log_1mx);
  if (o.weight.defined()) loss = loss * o.weight;
  return reduce(loss, red);
}

Tensor binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target,
                                        const BCEWithLogitsLossOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32})
    return binary_cross_entropy_with_logits(r.cast(input), r.cast(target), o);
  const char* op = "binary_cross_entropy_with_logits";
  const Reduction red = parse_reduction(op, o.reduction);
  check_same_shape(op, input, target);
  check_broadcasts_to(op, "weight", o.weight, input);
  check_broadcasts_to(op, "pos_weight", o.pos_weight, input);
  // -log sigmoid(x) = softplus(-x) and -log(1 - sigmoid(x)) = x + softplus(-x), so
  //   loss = (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x).
  // softplus is exact for either sign of x; its threshold is raised from 20 to
  // 36, past which log1p(exp(z)) equals z in float64 too.
  Tensor sp = loom::softplus(-input, 1.0, 36.0);
  Tensor loss;
  if (o.pos_weight.defined()) {
    Tensor log_weight = (o.pos_weight - 1) * target + 1;
    loss = (1 - target) * input + log_weight * sp;
  } else {
    loss = (1 - target) * input + sp;
  }
  if (o.weight.defined()) loss = loss * o.weight;
  return reduce(loss, red);
}

Tensor kl_div(const Tensor& input, const Tensor& target, const KLDivLossOptions& o) {
  if (autocast::Region r{input, autocast::Policy::Float32}) return kl_div(r.cast(input), r.cast(target), o);
  const char* op = "kl_div";
  const Reduction red = parse_reduction(op, o.reduction, true);
  check_same_shape(op, input, target);
  Tensor loss;
  if (o.log_target) {
    loss = target.exp() * (target - input);
  } else {
    // target * log(target) with 0 where target == 0 (xlogy), minus target * input.
    Tensor safe = where(target == Scalar(0.0), Scalar(1.0), target);
    loss = target * safe.log() - target * input;
  }
  if (red == Reduction::BatchMean) {
    LOOM_CHECK(input.dim() >= 1, op, ": reduction \"batchmean\" needs a batch dim, got a 0-dim input");
    return loss.sum() / static_cast<double>(input.sizes()[0]);
  }
  return reduce(loss, red);
}

}  // namespace loom::nn::functional
