#include "flags.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include <loom/cuda.h>
#include <loom/error.h>

namespace loom::cli {
namespace {

// An integer in [lo, hi], written in decimal ("-3", "128"); false otherwise.
bool parse_integer(const std::string& text, int64_t lo, int64_t hi, int64_t& out) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return false;
  if (v < lo || v > hi) return false;
  out = v;
  return true;
}

bool parse_number(const std::string& text, double& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || errno != 0 || !std::isfinite(v)) return false;
  out = v;
  return true;
}

std::string got(const std::string& expected, const std::string& text) {
  return "expected " + expected + ", got " + (text.empty() ? "nothing" : text);
}

CLI::Validator integer_validator(int64_t lo, int64_t hi, std::string expected, std::string desc) {
  return CLI::Validator(
      [lo, hi, expected](std::string& text) {
        int64_t v = 0;
        if (!parse_integer(text, lo, hi, v)) return got(expected, text);
        text = std::to_string(v);
        return std::string();
      },
      std::move(desc));
}

CLI::Validator number_validator(double lo, double hi, bool lo_open, std::string expected, std::string desc) {
  return CLI::Validator(
      [lo, hi, lo_open, expected](std::string& text) {
        double v = 0;
        if (!parse_number(text, v) || v < lo || (lo_open && v == lo) || v > hi) return got(expected, text);
        return std::string();
      },
      std::move(desc));
}

constexpr unsigned kMlp = 1, kCnn = 2, kResnet9 = 4, kGpt = 8, kLstm = 16;
constexpr unsigned kImage = kMlp | kCnn | kResnet9, kLanguage = kGpt | kLstm, kAll = kImage | kLanguage;

unsigned model_bit(const std::string& model) {
  const auto& names = train_models();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == model) return 1u << i;
  LOOM_ERROR("train: unknown --model '", model, "' (known: mlp, cnn, resnet9, gpt, lstm)");
}

struct TrainFlag {
  const char* flag;
  unsigned models;     // the models it applies to
  const char* why_not; // said when given with another model
};

// Note [Flags per model]. Flags on every model have no reason.
const TrainFlag kTrainFlags[] = {
    {"--model", kAll, nullptr},
    {"--dataset", kAll, nullptr},
    {"--batch-size", kAll, nullptr},
    {"--lr", kAll, nullptr},
    {"--schedule", kAll, nullptr},
    {"--weight-decay", kAll, nullptr},
    {"--seed", kAll, nullptr},
    {"--threads", kAll, nullptr},
    {"--device", kAll, nullptr},
    {"--out", kAll, nullptr},
    {"--distributed", kAll, nullptr},
    {"--zero", kAll, nullptr},
    {"--timeout", kAll, nullptr},
    {"--metrics", kAll, nullptr},
    {"--amp", kAll, nullptr},
    {"--compile", kAll, nullptr},
    {"--checkpoint-activations", kAll, nullptr},
    {"--memory-budget-mb", kAll, nullptr},
    {"--dump-graph", kAll, nullptr},
    {"--hidden", kMlp, "only the mlp has hidden layer widths (cnn and resnet9 have fixed sizes; gpt and lstm take "
                       "--layers and --d-model)"},
    {"--data-dir", kImage, "it is the Fashion-MNIST folder; a language model reads --dataset text:PATH"},
    {"--epochs", kImage, "language models train for --max-steps steps"},
    {"--optimizer", kImage, "language models train with adamw"},
    {"--momentum", kImage, "language models train with adamw, which has no momentum"},
    {"--workers", kImage, "a language model cuts its batches from the token stream on the training thread"},
    {"--stop-after", kImage, "language models train for --max-steps steps in one run"},
    {"--resume", kImage, "a language model's checkpoint holds only its weights; it trains for --max-steps in one run"},
    {"--train-limit", kImage, "it counts Fashion-MNIST training images"},
    {"--test-limit", kImage, "it counts Fashion-MNIST test images"},
    {"--random-crop", kImage, "it augments images"},
    {"--hflip", kImage, "it augments images"},
    {"--layers", kLanguage, "it sizes the language models (gpt, lstm)"},
    {"--d-model", kLanguage, "it sizes the language models (gpt, lstm)"},
    {"--context", kLanguage, "it is the window length of the language models (gpt, lstm)"},
    {"--dropout", kLanguage, "it is the dropout of the language models (gpt, lstm)"},
    {"--tokenizer", kLanguage, "it tokenizes the text of the language models (gpt, lstm)"},
    {"--max-steps", kLanguage, "image models train for --epochs epochs"},
    {"--eval-every", kLanguage, "image models report and save after every epoch"},
    {"--eval-batches", kLanguage, "image models evaluate on the whole test set (or --test-limit images)"},
    {"--grad-clip", kLanguage, "only the language models clip their gradients"},
    {"--heads", kGpt, "only the gpt has attention heads"},
    {"--no-tie", kGpt, "only the gpt ties its output layer to the token embedding"},
};

const TrainFlag* find_flag(const std::string& flag) {
  for (const TrainFlag& f : kTrainFlags)
    if (flag == f.flag) return &f;
  return nullptr;
}

}  // namespace

CLI::Validator positive_integer(int64_t max) {
  return integer_validator(1, max, "a positive integer", "POSITIVE");
}
CLI::Validator non_negative_integer(int64_t max) {
  return integer_validator(0, max, "an integer >= 0", "NONNEGATIVE");
}

CLI::Validator unsigned_integer() {
  return CLI::Validator(
      [](std::string& text) {
        uint64_t v = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (text.empty() || ec != std::errc() || end != text.data() + text.size())
          return got("an integer from 0 to 18446744073709551615", text);
        text = std::to_string(v);
        return std::string();
      },
      "NONNEGATIVE");
}

CLI::Validator positive_number() {
  return number_validator(0, HUGE_VAL, /*lo_open=*/true, "a positive number", "POSITIVE");
}
CLI::Validator non_negative_number() {
  return number_validator(0, HUGE_VAL, /*lo_open=*/false, "a number >= 0", "NONNEGATIVE");
}
CLI::Validator number_between(double lo, double hi) {
  std::string range = "[" + CLI::detail::to_string(lo) + ", " + CLI::detail::to_string(hi) + "]";
  return number_validator(lo, hi, /*lo_open=*/false, "a number in " + range, range);
}

Device parse_device(const std::string& flag, const std::string& value) {
  Device d = Device::cpu();
  if (value == "cuda") {
    d = Device::cuda(0);
  } else if (value.rfind("cuda:", 0) == 0) {
    const std::string n = value.substr(5);
    int index = -1;
    const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), index);
    LOOM_CHECK(!n.empty() && ec == std::errc() && end == n.data() + n.size() && index >= 0, flag,
               ": expected cpu, cuda or cuda:N, got '", value, "'");
    d = Device::cuda(index);
  } else {
    LOOM_CHECK(value == "cpu", flag, ": expected cpu, cuda or cuda:N, got '", value, "'");
  }
  if (d.is_cuda()) {
    LOOM_CHECK(cuda::is_built(), flag, " ", value, ": loom was built without CUDA support");
    LOOM_CHECK(cuda::is_available(), flag, " ", value, ": no CUDA device is available on this machine");
    LOOM_CHECK(d.index < cuda::device_count(), flag, " ", value, ": device cuda:", d.index, " does not exist (",
               cuda::device_count(), " present)");
  }
  return d;
}

bool is_known_train_flag(const std::string& flag) { return find_flag(flag) != nullptr; }

std::vector<std::string> train_flag_refusals(const std::string& model, const std::string& optimizer,
                                             const std::vector<std::string>& given) {
  const unsigned bit = model_bit(model);
  std::vector<std::string> refusals;
  for (const std::string& flag : given) {
    const TrainFlag* f = find_flag(flag);
    LOOM_CHECK(f != nullptr, "train: the flag ", flag, " has no row in the flag table (tools/loom/flags.cpp)");
    if (!(f->models & bit))
      refusals.push_back(flag + " does not apply to --model " + model + ": " + f->why_not);
    else if (flag == "--momentum" && optimizer != "sgd")
      refusals.push_back("--momentum does not apply to --optimizer " + optimizer + ": only sgd has momentum");
  }
  return refusals;
}

void check_train_flags(const std::string& model, const std::string& optimizer, const std::vector<std::string>& given) {
  const std::vector<std::string> refusals = train_flag_refusals(model, optimizer, given);
  if (refusals.empty()) return;
  std::string msg;
  for (const std::string& r : refusals) msg += (msg.empty() ? "" : "\n") + ("train: " + r);
  LOOM_ERROR(msg);
}

}  // namespace loom::cli
