// Checkpointing a Sequential in segments (torch.utils.checkpoint.checkpoint_sequential).
//
//   nn::Sequential deep = ...;                       // N children
//   Tensor y = nn::checkpoint_sequential(deep, 4, x);  // keeps ~4 activations, not N
//
// The children are split into `segments` runs of N / segments children (the
// last run takes the remainder); every run but the last is a loom::checkpoint
// region, so only the runs' boundary activations stay alive after forward and
// each run's inside is recomputed in backward. sqrt(N) segments give memory
// that grows as sqrt(N) for one extra forward pass. Gradients equal those of
// deep(x) bit for bit (Note [Activation checkpointing] in
// src/autograd/checkpoint.cpp).
#pragma once

#include "loom/checkpoint.h"
#include "loom/nn/container.h"

namespace loom::nn {

// Runs module(input) with every segment but the last checkpointed;
// 1 <= segments <= module->size().
Tensor checkpoint_sequential(const Sequential& module, int64_t segments, const Tensor& input);

}  // namespace loom::nn
