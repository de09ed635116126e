// Fusion decisions: which adjacent steps of a chain of ops run as one fused
// op. The rules live here, in the ops layer, and nowhere else; nn::Sequential
// asks for a plan and executes it (Note [Fusion decisions] in src/ops/fusion.cpp).
//
//   std::vector<FusionStep> steps = {FusionStep::linear(), FusionStep::pointwise(LinearActivation::Relu)};
//   plan_fusion(steps);  // one run: steps [0, 2) as linear(x, w, b, Relu)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "loom/ops.h"

namespace loom {

// What one step of a chain is, as far as fusion is concerned: an op the rules
// know (a linear layer, a pointwise activation the Linear op can apply in its
// epilogue) or something opaque that never fuses.
struct FusionStep {
  enum class Kind : uint8_t { Opaque, Linear, Activation };
  Kind kind = Kind::Opaque;
  LinearActivation activation = LinearActivation::None;  // Kind::Activation: which one

  static FusionStep opaque() { return {}; }
  static FusionStep linear() { return {Kind::Linear, LinearActivation::None}; }
  static FusionStep pointwise(LinearActivation a) { return {Kind::Activation, a}; }
};

// One unit of a plan: steps [first, first + count). count 1: the step runs on
// its own (activation is None). count 2: a Linear step and the activation
// after it run as one loom::linear(input, weight, bias, activation).
struct FusionRun {
  size_t first = 0;
  size_t count = 1;
  LinearActivation activation = LinearActivation::None;
};

// Covers steps in order, each step in exactly one run.
std::vector<FusionRun> plan_fusion(const std::vector<FusionStep>& steps);

}  // namespace loom
