#include "checkpoint.h"

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>

#include "quantize.h"

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

double parse_double(const std::string& text, const std::string& key, const std::string& file) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  LOOM_CHECK(!text.empty() && end == text.c_str() + text.size() && errno == 0, "checkpoint '", file,
             "': metadata '", key, "' should be a number, got '", text, "'");
  return v;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// ---- each setting's type as metadata text, and back ----

std::string to_text(const std::string& v) { return v; }
std::string to_text(int64_t v) { return std::to_string(v); }
std::string to_text(uint64_t v) { return std::to_string(v); }
std::string to_text(double v) { return exact_double(v); }
std::string to_text(bool v) { return v ? "1" : "0"; }
std::string to_text(const std::vector<int64_t>& v) { return join_ints(v); }

void from_text(const std::string& text, const std::string&, const std::string&, std::string& v) { v = text; }
void from_text(const std::string& text, const std::string& key, const std::string& file, int64_t& v) {
  v = parse_int<int64_t>(text, key, file);
}
void from_text(const std::string& text, const std::string& key, const std::string& file, uint64_t& v) {
  v = parse_int<uint64_t>(text, key, file);
}
void from_text(const std::string& text, const std::string& key, const std::string& file, double& v) {
  v = parse_double(text, key, file);
}
void from_text(const std::string& text, const std::string& key, const std::string& file, bool& v) {
  v = parse_int<int64_t>(text, key, file) != 0;
}
// "512,256"; "" is an MLP without hidden layers (a linear classifier).
void from_text(const std::string& text, const std::string& key, const std::string& file, std::vector<int64_t>& v) {
  v.clear();
  for (size_t pos = 0; pos < text.size();) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    v.push_back(parse_int<int64_t>(text.substr(pos, comma - pos), key, file));
    pos = comma + 1;
  }
}

// One row of Note [One table of training settings].
struct SettingField {
  std::string key;   // metadata key
  const char* flag;  // the `loom train` flag that sets it; nullptr: none (fixed by the dataset)
  const char* why;   // said after the flag in a resume error (nullptr: nothing)
  bool of_model;     // part of the ModelConfig (write_model_config)
  // Whether a resume must match it, given both sides (nullptr: always).
  bool (*must_match)(const TrainSettings& saved, const TrainSettings& asked);
  std::function<std::string(const TrainSettings&)> write;
  std::function<void(const std::string& text, TrainSettings&, const std::string& file)> read;
  std::function<void(const TrainSettings& from, TrainSettings& to)> copy;

  std::string label() const {
    std::string l = flag ? flag : key;
    if (why) l += std::string(" (") + why + ")";
    return l;
  }
};

// `ref` maps a TrainSettings (const or not) to the field: [](auto& s) -> auto& { return s.lr; }.
template <typename Ref>
SettingField field(std::string key, const char* flag, Ref ref, const char* why = nullptr, bool of_model = false,
                   bool (*must_match)(const TrainSettings&, const TrainSettings&) = nullptr) {
  return {key,
          flag,
          why,
          of_model,
          must_match,
          [ref](const TrainSettings& s) { return to_text(ref(s)); },
          [ref, key](const std::string& text, TrainSettings& s, const std::string& file) {
            from_text(text, key, file, ref(s));
          },
          [ref](const TrainSettings& from, TrainSettings& to) { ref(to) = ref(from); }};
}

// A constant lr may train on for more epochs; a cosine one spans --epochs.
bool epochs_shape_the_schedule(const TrainSettings& saved, const TrainSettings& asked) {
  return saved.schedule != "constant" || asked.schedule != "constant";
}

const std::vector<SettingField>& setting_fields() {
  static const std::vector<SettingField> fields = {
      field("loom.model", "--model", [](auto& s) -> auto& { return s.model.name; }, nullptr, true),
      field("loom.model.hidden", "--hidden", [](auto& s) -> auto& { return s.model.hidden; }, nullptr, true),
      field("loom.model.in_features", nullptr, [](auto& s) -> auto& { return s.model.in_features; },
            "model input features", true),
      field("loom.model.num_classes", nullptr, [](auto& s) -> auto& { return s.model.num_classes; },
            "model classes", true),
      field("loom.dataset", "--dataset", [](auto& s) -> auto& { return s.dataset; }),
      field("loom.batch_size", "--batch-size", [](auto& s) -> auto& { return s.batch_size; }),
      field("loom.optimizer", "--optimizer", [](auto& s) -> auto& { return s.optimizer; }),
      field("loom.lr", "--lr", [](auto& s) -> auto& { return s.lr; }),
      field("loom.schedule", "--schedule", [](auto& s) -> auto& { return s.schedule; }),
      field("loom.epochs", "--epochs", [](auto& s) -> auto& { return s.epochs; }, "the cosine schedule spans them",
            false, epochs_shape_the_schedule),
      field("loom.weight_decay", "--weight-decay", [](auto& s) -> auto& { return s.weight_decay; }),
      field("loom.momentum", "--momentum", [](auto& s) -> auto& { return s.momentum; }),
      field("loom.seed", "--seed", [](auto& s) -> auto& { return s.seed; }),
      field("loom.train_limit", "--train-limit", [](auto& s) -> auto& { return s.train_limit; }),
      field("loom.augment.random_crop", "--random-crop", [](auto& s) -> auto& { return s.random_crop; }),
      field("loom.augment.hflip", "--hflip", [](auto& s) -> auto& { return s.hflip; }),
  };
  return fields;
}

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
  TrainSettings s;
  s.model = config;
  for (const SettingField& f : setting_fields())
    if (f.of_model) metadata[f.key] = f.write(s);
}

ModelConfig read_model_config(const std::map<std::string, std::string>& metadata, const std::string& file) {
  TrainSettings s;
  for (const SettingField& f : setting_fields())
    if (f.of_model) f.read(meta_at(metadata, f.key, file), s, file);
  return s.model;
}

train::Settings settings_to_metadata(const TrainSettings& s) {
  train::Settings meta;
  for (const SettingField& f : setting_fields()) meta[f.key] = f.write(s);
  return meta;
}

TrainSettings settings_from_metadata(const train::Settings& metadata, const std::string& file) {
  TrainSettings s;
  for (const SettingField& f : setting_fields()) f.read(meta_at(metadata, f.key, file), s, file);
  return s;
}

void check_resume_settings(const std::string& file, const TrainSettings& saved, const TrainSettings& asked) {
  std::vector<train::ResumeSetting> must_match;
  for (const SettingField& f : setting_fields())
    if (!f.must_match || f.must_match(saved, asked)) must_match.push_back({f.key, f.label()});
  train::check_resume(file, settings_to_metadata(saved), settings_to_metadata(asked), must_match);
}

void take_settings_not_given(const TrainSettings& saved, TrainSettings& settings,
                             const std::function<bool(const std::string& flag)>& given) {
  for (const SettingField& f : setting_fields())
    if (!f.flag || !given(f.flag)) f.copy(saved, settings);
}

std::string exact_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void save_checkpoint(const std::string& path, const TrainCheckpoint& ckpt) {
  train::TrainingCheckpoint c;
  c.settings = settings_to_metadata(ckpt.settings);
  if (!ckpt.normalization.mean.empty()) {
    c.settings["loom.normalize.mean"] = join_doubles(ckpt.normalization.mean);
    c.settings["loom.normalize.std"] = join_doubles(ckpt.normalization.std);
  }
  c.epoch = ckpt.epoch;
  c.step = ckpt.step;
  c.rng = ckpt.rng;
  c.model_state = ckpt.model_state;
  c.optimizer_state = ckpt.optimizer_state;
  c.scheduler_state = ckpt.scheduler_state;
  train::save_training_checkpoint(path, c);
}

TrainCheckpoint load_checkpoint(const std::string& path) {
  train::TrainingCheckpoint c = train::load_training_checkpoint(path);
  TrainCheckpoint ckpt;
  ckpt.settings = settings_from_metadata(c.settings, path);
  ckpt.normalization = read_normalization(c.settings, path);
  ckpt.epoch = c.epoch;
  ckpt.step = c.step;
  ckpt.rng = c.rng;
  ckpt.model_state = std::move(c.model_state);
  ckpt.optimizer_state = std::move(c.optimizer_state);
  ckpt.scheduler_state = std::move(c.scheduler_state);
  return ckpt;
}

LoadedModel load_model(const std::string& path) {
  io::SafetensorsFile file = io::load_safetensors(path);
  LoadedModel loaded;
  loaded.config = read_model_config(file.metadata, path);
  auto ds = file.metadata.find("loom.dataset");
  loaded.dataset = ds == file.metadata.end() ? "fashion-mnist" : ds->second;
  loaded.normalization = read_normalization(file.metadata, path);
  loaded.model = make_model(loaded.config);
  quantize_as_saved(*loaded.model, file.metadata, path);
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
