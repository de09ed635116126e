// StateDict: named tensors in order, the one form that a module's state
// ("fc1.weight", "bn.running_mean"), an optimizer's ("state.3.exp_avg") and a
// scheduler's take, so a checkpoint is one set of named tensors. It sits
// below nn and optim so that neither needs the other for it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "loom/tensor.h"

namespace loom {

using StateDict = std::vector<std::pair<std::string, Tensor>>;

}  // namespace loom
