// Umbrella header: everything in loom::nn.
#pragma once
#include "loom/nn/module.h"
