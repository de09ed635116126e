// The rules for `loom` flags that CLI11 alone does not state: numeric values
// checked with messages in words, and which `loom train` flags apply to which
// model (one table, kTrainFlags in flags.cpp).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <loom/device.h>

namespace loom::cli {

// Validators for numeric flags. A bad value is refused as
//   "--batch-size: expected a positive integer, got 0"
//   "--lr: expected a positive number, got abc"
// (CLI11 puts the flag in front). The integer ones also rewrite the value in
// plain decimal, so CLI11 never reads "010" as octal; `max` is the largest
// value the flag's variable holds.
CLI::Validator positive_integer(int64_t max = std::numeric_limits<int64_t>::max());
CLI::Validator non_negative_integer(int64_t max = std::numeric_limits<int64_t>::max());
CLI::Validator unsigned_integer();  // 0 .. 2^64 - 1 (seeds)
CLI::Validator positive_number();
CLI::Validator non_negative_number();
CLI::Validator number_between(double lo, double hi);  // lo <= x <= hi

// --device: "cpu", "cuda" (cuda:0) or "cuda:N". Throws a loom::Error naming
// the flag for any other spelling, and, for a CUDA device, when this build
// has no CUDA or the machine no such GPU.
Device parse_device(const std::string& flag, const std::string& value);

// Note [Flags per model]
// Every flag of `loom train` is one row of kTrainFlags: the models it applies
// to, and why it does not apply to the others. main.cpp refuses a flag given
// with a model it does not apply to (nothing is ignored silently), and
// refuses to start if a flag of `loom train` has no row.
inline const std::vector<std::string>& train_models() {
  static const std::vector<std::string> names = {"mlp", "cnn", "resnet9", "gpt", "lstm"};
  return names;
}

// Whether the table has a row for `flag` ("--epochs").
bool is_known_train_flag(const std::string& flag);

// The reasons the flags `given` (as "--epochs") do not apply to `model`, one
// line each ("--epochs does not apply to --model gpt: language models train
// for --max-steps steps"); empty when they all apply. `optimizer` is the
// one in effect (--momentum applies to sgd only).
std::vector<std::string> train_flag_refusals(const std::string& model, const std::string& optimizer,
                                             const std::vector<std::string>& given);

// Throws loom::Error "train: <each refusal on its own line>" when any.
void check_train_flags(const std::string& model, const std::string& optimizer, const std::vector<std::string>& given);

}  // namespace loom::cli
