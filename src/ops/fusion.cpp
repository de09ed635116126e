// The fusion rules for chains of ops (include/loom/fusion.h).
//
// Note [Fusion decisions]
// Every decision to run several ops as one fused op is made here, from
// descriptions of the steps (FusionStep), never by the layers that run them:
// nn::Sequential describes its children (Module::fusion_step), asks
// plan_fusion for runs and executes them. A compiler pass that fuses captured
// graphs is meant to own these rules next, with the same descriptions.
//
// The one rule today: a Linear directly followed by a pointwise activation the
// Linear op applies in its GEMM epilogue (ReLU, GELU, GELU tanh) is one
// loom::linear(x, w, b, act) call. The bias and activation run on each block of
// the product while it is in cache instead of in two more passes over the
// output, and the fused op gives the bits of the unfused ops and the same
// gradients (Note [GEMM epilogue] in src/backend/cpu/cpu_gemm.h), so fusing
// never changes a result. Runs are taken greedily from the left: in
// Linear, ReLU, ReLU only the first ReLU fuses.
#include "loom/fusion.h"

namespace loom {

std::vector<FusionRun> plan_fusion(const std::vector<FusionStep>& steps) {
  std::vector<FusionRun> runs;
  runs.reserve(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const bool fuses = steps[i].kind == FusionStep::Kind::Linear && i + 1 < steps.size() &&
                       steps[i + 1].kind == FusionStep::Kind::Activation &&
                       steps[i + 1].activation != LinearActivation::None;
    if (fuses) {
      runs.push_back({i, 2, steps[i + 1].activation});
      ++i;
    } else {
      runs.push_back({i, 1, LinearActivation::None});
    }
  }
  return runs;
}

}  // namespace loom
