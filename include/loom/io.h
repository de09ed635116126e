// Umbrella header: everything in loom::io (safetensors checkpoints).
#pragma once
#include "loom/io/checkpoint.h"
#include "loom/io/safetensors.h"
