// Umbrella header: everything in loom::io (safetensors checkpoints, atomic file writes).
#pragma once
#include "loom/io/checkpoint.h"
#include "loom/io/file.h"
#include "loom/io/safetensors.h"
