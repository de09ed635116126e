// Training checkpoints (include/loom/train/checkpoint.h): one safetensors file
// per checkpoint, written atomically by save_safetensors.
#include "loom/train/checkpoint.h"

#include <charconv>
#include <sstream>

#include "loom/error.h"
#include "loom/io/safetensors.h"

namespace loom::train {
namespace {

// The metadata keys the checkpoint itself writes; a setting may not use them.
constexpr const char* kFormatKey = "format";
constexpr const char* kVersionKey = "loom.checkpoint";
constexpr const char* kEpochKey = "loom.epoch";
constexpr const char* kStepKey = "loom.step";
constexpr const char* kRngSeedKey = "loom.rng.seed";
constexpr const char* kRngOffsetKey = "loom.rng.offset";

bool is_reserved(const std::string& key) {
  for (const char* k : {kFormatKey, kVersionKey, kEpochKey, kStepKey, kRngSeedKey, kRngOffsetKey})
    if (key == k) return true;
  return false;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

template <typename Int>
Int read_int(const std::map<std::string, std::string>& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  LOOM_CHECK(it != meta.end(), "checkpoint '", path, "': metadata key '", key,
             "' is missing (was the file written by a training run?)");
  const std::string& text = it->second;
  Int v{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  LOOM_CHECK(ec == std::errc() && end == text.data() + text.size() && !text.empty(), "checkpoint '", path,
             "': metadata '", key, "' should be an integer, got '", text, "'");
  return v;
}

}  // namespace

void save_training_checkpoint(const std::string& path, const TrainingCheckpoint& c) {
  LOOM_CHECK(c.epoch >= 0 && c.step >= 0, "save_training_checkpoint: epoch and step must be >= 0, got ", c.epoch,
             " and ", c.step);
  std::map<std::string, std::string> meta;
  for (const auto& [key, value] : c.settings) {
    LOOM_CHECK(!is_reserved(key), "save_training_checkpoint: setting '", key,
               "' uses a key the checkpoint writes itself");
    meta[key] = value;
  }
  meta[kFormatKey] = "pt";  // what the Python safetensors library expects for torch tensors
  meta[kVersionKey] = "train/1";
  meta[kEpochKey] = std::to_string(c.epoch);
  meta[kStepKey] = std::to_string(c.step);
  meta[kRngSeedKey] = std::to_string(c.rng.seed);
  meta[kRngOffsetKey] = std::to_string(c.rng.offset);

  // A model tensor named "optimizer.x" would read back as optimizer state.
  for (const auto& [name, t] : c.model_state)
    LOOM_CHECK(!starts_with(name, kOptimizerPrefix) && !starts_with(name, kSchedulerPrefix),
               "save_training_checkpoint: model tensor '", name, "' starts with a prefix reserved for the ",
               starts_with(name, kOptimizerPrefix) ? "optimizer" : "scheduler", " state");
  nn::StateDict tensors = c.model_state;
  for (const auto& [name, t] : c.optimizer_state) tensors.emplace_back(kOptimizerPrefix + name, t);
  for (const auto& [name, t] : c.scheduler_state) tensors.emplace_back(kSchedulerPrefix + name, t);
  io::save_safetensors(path, tensors, meta);
}

TrainingCheckpoint load_training_checkpoint(const std::string& path) {
  io::SafetensorsFile file = io::load_safetensors(path);
  const auto& meta = file.metadata;
  TrainingCheckpoint c;
  c.epoch = read_int<int64_t>(meta, kEpochKey, path);
  c.step = meta.count(kStepKey) ? read_int<int64_t>(meta, kStepKey, path) : 0;
  c.rng.seed = read_int<uint64_t>(meta, kRngSeedKey, path);
  c.rng.offset = read_int<uint64_t>(meta, kRngOffsetKey, path);
  LOOM_CHECK(c.epoch >= 0, "checkpoint '", path, "': metadata '", kEpochKey, "' is negative (", c.epoch, ")");
  LOOM_CHECK(c.step >= 0, "checkpoint '", path, "': metadata '", kStepKey, "' is negative (", c.step, ")");
  for (const auto& [key, value] : meta)
    if (!is_reserved(key)) c.settings.emplace(key, value);
  const std::string opt_prefix = kOptimizerPrefix, sched_prefix = kSchedulerPrefix;
  for (auto& [name, t] : file.tensors) {
    if (starts_with(name, opt_prefix)) c.optimizer_state.emplace_back(name.substr(opt_prefix.size()), std::move(t));
    else if (starts_with(name, sched_prefix))
      c.scheduler_state.emplace_back(name.substr(sched_prefix.size()), std::move(t));
    else c.model_state.emplace_back(name, std::move(t));
  }
  return c;
}

void check_resume(const std::string& path, const Settings& saved, const Settings& asked,
                  const std::vector<ResumeSetting>& must_match) {
  auto value = [](const Settings& s, const std::string& key) {
    auto it = s.find(key);
    return it == s.end() ? std::string("(none)") : it->second;
  };
  std::ostringstream diff;
  for (const ResumeSetting& r : must_match) {
    const std::string theirs = value(saved, r.key), ours = value(asked, r.key);
    if (theirs != ours) diff << "\n  " << r.label << " " << theirs << " (asked: " << ours << ")";
  }
  LOOM_CHECK(diff.str().empty(), "cannot resume from '", path,
             "': it was trained with other settings, and resuming must reproduce that run exactly:", diff.str());
}

}  // namespace loom::train
