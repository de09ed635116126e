// The checkpoint `loom train` writes after every epoch: one safetensors file
// holding the model's state dict under its own names ("1.weight", ...), the
// optimizer's state dict under "optimizer." ("optimizer.state.0.exp_avg",
// see Note [Optimizer state dict] in loom/optim/optimizer.h), the lr
// scheduler's under "scheduler." (Note [Scheduler state dict]), and in the
// header's metadata everything else needed to rebuild the model and resume
// exactly: the model config, the input normalization, the training
// settings, the finished epoch and the global generator's state.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <loom/loom.h>

#include "models.h"

namespace loom::cli {

inline constexpr const char* kOptimizerPrefix = "optimizer.";
inline constexpr const char* kSchedulerPrefix = "scheduler.";

// Per-channel input normalization, (x - mean) / std, as data::Normalize.
// Empty: none.
struct Normalization {
  std::vector<double> mean, std;
  bool operator==(const Normalization&) const = default;
};

// The settings that decide the weights: resuming with any of them changed
// would not reproduce an uninterrupted run.
struct TrainSettings {
  ModelConfig model;
  std::string dataset = "fashion-mnist";
  int64_t batch_size = 128;
  std::string optimizer = "adamw";
  double lr = 1e-3;
  std::string schedule = "cosine";
  int64_t epochs = 5;  // the cosine schedule spans all epochs, so it is part of it
  double weight_decay = 0.01;
  double momentum = 0;
  uint64_t seed = 0;
  int64_t train_limit = 0;
  int64_t random_crop = 0;  // augmentation: pad by this many pixels, then a random 28x28 crop (0: off)
  bool hflip = false;       // augmentation: mirror each training image with probability 1/2

  bool operator==(const TrainSettings&) const = default;
};

struct TrainCheckpoint {
  TrainSettings settings;
  int64_t epoch = 0;  // epochs finished (1-based count)
  RngState rng;       // loom's global generator after that epoch
  nn::StateDict model_state;
  nn::StateDict optimizer_state;  // without the "optimizer." prefix
  nn::StateDict scheduler_state;  // without the "scheduler." prefix; empty without a schedule
  Normalization normalization;    // what the model's inputs were normalized with
};

// The model config as metadata ("loom.model", "loom.model.hidden", ...) and
// back. Reading checks every field and names `file` and the key when one is
// missing or malformed.
void write_model_config(const ModelConfig& config, std::map<std::string, std::string>& metadata);
ModelConfig read_model_config(const std::map<std::string, std::string>& metadata, const std::string& file);

// Writes atomically (save_safetensors: temp file, fsync, rename).
void save_checkpoint(const std::string& path, const TrainCheckpoint& ckpt);

// Reads and checks a checkpoint written by save_checkpoint: every metadata
// key must be present and well formed (an Error names the file and the key).
TrainCheckpoint load_checkpoint(const std::string& path);

// What eval/predict need: the model rebuilt from the config in the metadata,
// with the file's weights loaded (strictly: names and shapes must match).
// Optimizer entries and the other training metadata are ignored, so any file
// with the "loom.model*" keys and the model's tensors works.
struct LoadedModel {
  std::shared_ptr<nn::Module> model;
  ModelConfig config;
  std::string dataset;          // "loom.dataset", "fashion-mnist" when absent
  Normalization normalization;  // "loom.normalize.*", none when absent
};
LoadedModel load_model(const std::string& path);

// Exact text for a double ("%.17g"), so lr and friends survive the metadata.
std::string exact_double(double v);

}  // namespace loom::cli
