#include "checkpoint.h"

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>

namespace loom::cli {
namespace {

const std::string& meta_at(const std::map<std::string, std::string>& m, const std::string& key,
                           const std::string& file) {
  auto it = m.find(key);
  LOOM_CHECK(it != m.end(), "checkpoint '", file, "': metadata key '", key,
             "' is missing (was the file written by `loom train`?)");
  return it->second;
}

template <typename Int>
Int parse_int(const std::string& text, const std::string& key, const std::string& file) {
  Int v{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  LOOM_CHECK(ec == std::errc() && end == text.data() + text.size() && !text.empty(), "checkpoint '", file,
             "': metadata '", key, "' should be an integer, got '", text, "'");
  return v;
}

template <typename Int>
Int meta_int(const std::map<std::string, std::string>& m, const std::string& key, const std::string& file) {
  return parse_int<Int>(meta_at(m, key, file), key, file);
}

double meta_double(const std::map<std::string, std::string>& m, const std::string& key, const std::string& file) {
  const std::string& text = meta_at(m, key, file);
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  LOOM_CHECK(!text.empty() && end == text.c_str() + text.size() && errno == 0, "checkpoint '", file,
             "': metadata '", key, "' should be a number, got '", text, "'");
  return v;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string join_doubles(const std::vector<double>& values) {
  std::string s;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) s += ',';
    s += exact_double(values[i]);
  }
  return s;
}

std::vector<double> split_doubles(const std::string& text, const std::string& key, const std::string& file) {
  std::vector<double> values;
  for (size_t pos = 0; pos < text.size();) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    char* end = nullptr;
    errno = 0;
    double v = std::strtod(item.c_str(), &end);
    LOOM_CHECK(!item.empty() && end == item.c_str() + item.size() && errno == 0, "checkpoint '", file,
               "': metadata '", key, "' should be comma-separated numbers, got '", text, "'");
    values.push_back(v);
    pos = comma + 1;
  }
  return values;
}

// "loom.normalize.mean" / ".std": both or neither, of one length, std != 0.
Normalization read_normalization(const std::map<std::string, std::string>& m, const std::string& file) {
  Normalization n;
  auto mean = m.find("loom.normalize.mean"), std = m.find("loom.normalize.std");
  if (mean == m.end() && std == m.end()) return n;
  LOOM_CHECK(mean != m.end() && std != m.end(), "checkpoint '", file,
             "': metadata has only one of 'loom.normalize.mean' and 'loom.normalize.std'");
  n.mean = split_doubles(mean->second, mean->first, file);
  n.std = split_doubles(std->second, std->first, file);
  LOOM_CHECK(n.mean.size() == n.std.size() && !n.mean.empty(), "checkpoint '", file,
             "': 'loom.normalize.mean' and 'loom.normalize.std' have ", n.mean.size(), " and ", n.std.size(),
             " values");
  for (double v : n.std)
    LOOM_CHECK(v != 0, "checkpoint '", file, "': 'loom.normalize.std' has a zero");
  return n;
}

}  // namespace

void write_model_config(const ModelConfig& config, std::map<std::string, std::string>& metadata) {
  metadata["loom.model"] = config.name;
  metadata["loom.model.hidden"] = join_ints(config.hidden);
  metadata["loom.model.in_features"] = std::to_string(config.in_features);
  metadata["loom.model.num_classes"] = std::to_string(config.num_classes);
}

ModelConfig read_model_config(const std::map<std::string, std::string>& metadata, const std::string& file) {
  ModelConfig c;
  c.name = meta_at(metadata, "loom.model", file);
  c.hidden.clear();
  // "512,256"; "" is an MLP without hidden layers (a linear classifier).
  const std::string& hidden = meta_at(metadata, "loom.model.hidden", file);
  for (size_t pos = 0; pos < hidden.size();) {
    size_t comma = hidden.find(',', pos);
    if (comma == std::string::npos) comma = hidden.size();
    c.hidden.push_back(parse_int<int64_t>(hidden.substr(pos, comma - pos), "loom.model.hidden", file));
    pos = comma + 1;
  }
  c.in_features = meta_int<int64_t>(metadata, "loom.model.in_features", file);
  c.num_classes = meta_int<int64_t>(metadata, "loom.model.num_classes", file);
  return c;
}

std::string exact_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void save_checkpoint(const std::string& path, const TrainCheckpoint& ckpt) {
  const TrainSettings& s = ckpt.settings;
  std::map<std::string, std::string> meta;
  meta["format"] = "pt";  // what the Python safetensors library expects for torch tensors
  meta["loom.checkpoint"] = "train/1";
  write_model_config(s.model, meta);
  meta["loom.dataset"] = s.dataset;
  meta["loom.batch_size"] = std::to_string(s.batch_size);
  meta["loom.optimizer"] = s.optimizer;
  meta["loom.lr"] = exact_double(s.lr);
  meta["loom.schedule"] = s.schedule;
  meta["loom.epochs"] = std::to_string(s.epochs);
  meta["loom.weight_decay"] = exact_double(s.weight_decay);
  meta["loom.momentum"] = exact_double(s.momentum);
  meta["loom.seed"] = std::to_string(s.seed);
  meta["loom.train_limit"] = std::to_string(s.train_limit);
  meta["loom.augment.random_crop"] = std::to_string(s.random_crop);
  meta["loom.augment.hflip"] = s.hflip ? "1" : "0";
  meta["loom.epoch"] = std::to_string(ckpt.epoch);
  meta["loom.rng.seed"] = std::to_string(ckpt.rng.seed);
  meta["loom.rng.offset"] = std::to_string(ckpt.rng.offset);
  if (!ckpt.normalization.mean.empty()) {
    meta["loom.normalize.mean"] = join_doubles(ckpt.normalization.mean);
    meta["loom.normalize.std"] = join_doubles(ckpt.normalization.std);
  }

  nn::StateDict tensors = ckpt.model_state;
  for (const auto& [name, t] : ckpt.optimizer_state) tensors.emplace_back(kOptimizerPrefix + name, t);
  for (const auto& [name, t] : ckpt.scheduler_state) tensors.emplace_back(kSchedulerPrefix + name, t);
  io::save_safetensors(path, tensors, meta);
}

TrainCheckpoint load_checkpoint(const std::string& path) {
  io::SafetensorsFile file = io::load_safetensors(path);
  const auto& m = file.metadata;
  TrainCheckpoint c;
  TrainSettings& s = c.settings;
  s.model = read_model_config(m, path);
  s.dataset = meta_at(m, "loom.dataset", path);
  s.batch_size = meta_int<int64_t>(m, "loom.batch_size", path);
  s.optimizer = meta_at(m, "loom.optimizer", path);
  s.lr = meta_double(m, "loom.lr", path);
  s.schedule = meta_at(m, "loom.schedule", path);
  s.epochs = meta_int<int64_t>(m, "loom.epochs", path);
  s.weight_decay = meta_double(m, "loom.weight_decay", path);
  s.momentum = meta_double(m, "loom.momentum", path);
  s.seed = meta_int<uint64_t>(m, "loom.seed", path);
  s.train_limit = meta_int<int64_t>(m, "loom.train_limit", path);
  s.random_crop = meta_int<int64_t>(m, "loom.augment.random_crop", path);
  s.hflip = meta_int<int64_t>(m, "loom.augment.hflip", path) != 0;
  c.epoch = meta_int<int64_t>(m, "loom.epoch", path);
  c.rng.seed = meta_int<uint64_t>(m, "loom.rng.seed", path);
  c.rng.offset = meta_int<uint64_t>(m, "loom.rng.offset", path);
  c.normalization = read_normalization(m, path);
  LOOM_CHECK(c.epoch >= 0, "checkpoint '", path, "': metadata 'loom.epoch' is negative (", c.epoch, ")");
  const std::string opt_prefix = kOptimizerPrefix, sched_prefix = kSchedulerPrefix;
  for (auto& [name, t] : file.tensors) {
    if (starts_with(name, opt_prefix)) c.optimizer_state.emplace_back(name.substr(opt_prefix.size()), std::move(t));
    else if (starts_with(name, sched_prefix))
      c.scheduler_state.emplace_back(name.substr(sched_prefix.size()), std::move(t));
    else c.model_state.emplace_back(name, std::move(t));
  }
  return c;
}

LoadedModel load_model(const std::string& path) {
  io::SafetensorsFile file = io::load_safetensors(path);
  LoadedModel loaded;
  loaded.config = read_model_config(file.metadata, path);
  auto ds = file.metadata.find("loom.dataset");
  loaded.dataset = ds == file.metadata.end() ? "fashion-mnist" : ds->second;
  loaded.normalization = read_normalization(file.metadata, path);
  loaded.model = make_model(loaded.config);
  nn::StateDict weights;
  for (auto& [name, t] : file.tensors)
    if (!starts_with(name, kOptimizerPrefix) && !starts_with(name, kSchedulerPrefix))
      weights.emplace_back(name, std::move(t));
  try {
    loaded.model->load_state_dict(weights, /*strict=*/true);
  } catch (const Error& e) {
    LOOM_ERROR("checkpoint '", path, "': its weights do not fit the model its metadata describes: ", e.what());
  }
  return loaded;
}

}  // namespace loom::cli
