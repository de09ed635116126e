// Umbrella header: everything in loom::optim (optimizers, parameter groups,
// learning-rate schedulers) and gradient clipping (loom::nn::utils).
#pragma once

#include "loom/optim/adagrad.h"
#include "loom/optim/adam.h"
#include "loom/optim/adamw.h"
#include "loom/optim/clip_grad.h"
#include "loom/optim/lr_scheduler.h"
#include "loom/optim/optimizer.h"
#include "loom/optim/rmsprop.h"
#include "loom/optim/sgd.h"
#include "loom/optim/zero.h"
