// A training checkpoint that resumes a run exactly: the model's state dict,
// the optimizer's and the lr scheduler's, loom's global generator, the
// progress (epochs and steps done) and the settings the run was started with,
// in one safetensors file. `loom train` writes and reads it through these
// functions; a user program can too:
//
//   train::TrainingCheckpoint c;
//   c.model_state = model->state_dict();
//   c.optimizer_state = opt.state_dict();
//   c.rng = get_rng_state();
//   c.epoch = epoch;
//   c.settings = {{"my.batch_size", "64"}, {"my.lr", "0.001"}};
//   train::save_training_checkpoint("runs/ckpt.safetensors", c);
//   ...
//   auto saved = train::load_training_checkpoint("runs/ckpt.safetensors");
//   train::check_resume("runs/ckpt.safetensors", saved.settings, asked,
//                       {{"my.batch_size", "--batch-size"}, {"my.lr", "--lr"}});
//
// Layout of the file: the model's tensors under their own names ("1.weight",
// so Python's safetensors.torch.load_file reads a PyTorch state dict), the
// optimizer's under "optimizer." (Note [Optimizer state dict]) and the
// scheduler's under "scheduler." (Note [Scheduler state dict]); in the
// header's metadata "format" = "pt", "loom.checkpoint" = "train/1",
// "loom.epoch", "loom.step", "loom.rng.seed", "loom.rng.offset", and every
// setting under its own key.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "loom/nn/module.h"
#include "loom/ops.h"

namespace loom::train {

inline constexpr const char* kOptimizerPrefix = "optimizer.";
inline constexpr const char* kSchedulerPrefix = "scheduler.";

// Settings as text, keyed by their metadata key ("loom.batch_size" -> "128").
// Keys must not be one the checkpoint itself uses (format, loom.checkpoint,
// loom.epoch, loom.step, loom.rng.seed, loom.rng.offset).
using Settings = std::map<std::string, std::string>;

struct TrainingCheckpoint {
  nn::StateDict model_state;
  nn::StateDict optimizer_state;  // without the "optimizer." prefix
  nn::StateDict scheduler_state;  // without the "scheduler." prefix; empty without a schedule
  RngState rng;                   // loom's global generator when saved
  int64_t epoch = 0;              // epochs finished
  int64_t step = 0;               // optimizer steps taken
  Settings settings;              // how the run was configured, and anything else to keep
};

// Writes atomically (save_safetensors: temp file, fsync, rename). A setting
// under a reserved key, or a tensor name that collides after prefixing, is a
// loom::Error.
void save_training_checkpoint(const std::string& path, const TrainingCheckpoint& checkpoint);

// Reads a file written by save_training_checkpoint: the tensors are split by
// prefix, and every metadata entry other than the checkpoint's own becomes a
// setting. A missing or malformed "loom.epoch" or "loom.rng.*" is a
// loom::Error naming the file and the key; "loom.step" reads as 0 when
// absent (files written before it existed).
TrainingCheckpoint load_training_checkpoint(const std::string& path);

// A setting a resume must match: its key in Settings and the name a user
// knows it by (a flag, "--batch-size"), used in the error.
struct ResumeSetting {
  std::string key;
  std::string label;
};

// Note [Exact resume]
// A run resumed from a checkpoint ends with bitwise the weights of an
// uninterrupted one only if everything the weights depend on is what the
// checkpoint stores: the model, optimizer and scheduler states (restored
// exactly), the global generator (rng), a data order that is a function of
// (seed, epoch) or (seed, step) alone (DataLoader::set_epoch, Note [Next-token
// batches]), and the settings that shape training. check_resume refuses the
// last kind of difference: it throws a loom::Error listing every key of
// `must_match` whose value in `asked` differs from `saved`, one per line as
//   "  --batch-size 50 (asked: 64)"
// in the order of `must_match` (a key missing on one side reads "(none)").
void check_resume(const std::string& path, const Settings& saved, const Settings& asked,
                  const std::vector<ResumeSetting>& must_match);

}  // namespace loom::train
