// Umbrella header: everything in loom::data (datasets, the IDX reader,
// MNIST / Fashion-MNIST, transforms, samplers, DataLoader, text tokenizers and
// datasets).
#pragma once
#include "loom/data/dataloader.h"
#include "loom/data/dataset.h"
#include "loom/data/idx.h"
#include "loom/data/mnist.h"
#include "loom/data/sample_generator.h"
#include "loom/data/sampler.h"
#include "loom/data/text.h"
#include "loom/data/transforms.h"
