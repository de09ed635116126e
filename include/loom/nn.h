// Umbrella header: everything in loom::nn (modules, functional, init).
#pragma once
#include "loom/nn/module.h"
#include "loom/nn/activation.h"
#include "loom/nn/container.h"
#include "loom/nn/dropout.h"
#include "loom/nn/embedding.h"
#include "loom/nn/functional.h"
#include "loom/nn/init.h"
#include "loom/nn/linear.h"
#include "loom/nn/loss.h"
#include "loom/nn/normalization.h"
