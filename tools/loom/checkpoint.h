// The checkpoint `loom train` writes after every epoch: a library training
// checkpoint (loom::train::TrainingCheckpoint, include/loom/train/checkpoint.h:
// the model's state dict under its own names, "optimizer." and "scheduler."
// states, the epoch, the step and the global generator's state) whose settings
// are the model config, the input normalization and the training settings,
// each under a "loom." metadata key.
//
// Note [One table of training settings]
// Every setting that decides the weights is one row of kSettingFields in
// checkpoint.cpp: its metadata key, its `loom train` flag, how it is written
// and read, and whether a resume must match it. Saving, loading, the resume
// check (train::check_resume) and the flags a resume takes from the
// checkpoint all walk that table, so a new setting is a field of
// TrainSettings plus one row (and its flag in main.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <loom/loom.h>

#include "model_config.h"

namespace loom::cli {

using train::kOptimizerPrefix;
using train::kSchedulerPrefix;

// Per-channel input normalization, (x - mean) / std, as data::Normalize.
// Empty: none.
struct Normalization {
  std::vector<double> mean, std;
  bool operator==(const Normalization&) const = default;
};

// The settings that decide the weights: resuming with any of them changed
// would not reproduce an uninterrupted run. TrainOptions extends it.
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
  int64_t step = 0;   // optimizer steps taken
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

// The training settings as checkpoint settings ("loom.batch_size" -> "128"),
// and back (an Error names `file` and the key of a missing or malformed one).
train::Settings settings_to_metadata(const TrainSettings& settings);
TrainSettings settings_from_metadata(const train::Settings& metadata, const std::string& file);

// Throws unless a run asking for `asked` may resume from `saved` (read from
// `file`): every setting of the table must match, by its flag, except
// --epochs when both schedules are constant (a constant lr may train on).
void check_resume_settings(const std::string& file, const TrainSettings& saved, const TrainSettings& asked);

// `loom train --resume`: the settings whose flag `given` says was not on the
// command line are taken from the checkpoint's; given ones stay (and must then
// match, check_resume_settings).
void take_settings_not_given(const TrainSettings& saved, TrainSettings& settings,
                             const std::function<bool(const std::string& flag)>& given);

// Writes atomically (train::save_training_checkpoint).
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
