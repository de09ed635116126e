// The whole public API of loom.
#pragma once

#include "loom/allocator.h"
#include "loom/amp.h"
#include "loom/autocast.h"
#include "loom/autograd.h"
#include "loom/autograd_function.h"
#include "loom/checkpoint.h"
#include "loom/cuda.h"
#include "loom/device.h"
#include "loom/distributed.h"
#include "loom/dtype.h"
#include "loom/error.h"
#include "loom/fusion.h"
#include "loom/generator.h"
#include "loom/splitmix64.h"
#include "loom/io.h"
#include "loom/jit.h"
#include "loom/models.h"
#include "loom/data.h"
#include "loom/nn.h"
#include "loom/optim.h"
#include "loom/ops.h"
#include "loom/state_dict.h"
#include "loom/tensor.h"
#include "loom/threads.h"
#include "loom/train/checkpoint.h"

namespace loom {
using indexing::Ellipsis;
using indexing::None;
using indexing::Slice;
}  // namespace loom
