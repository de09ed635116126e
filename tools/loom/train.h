// The training loop behind `loom train`, and evaluation/prediction behind
// `loom eval` / `loom predict`. main.cpp only parses flags and calls these;
// tests/test_train.cpp drives the same functions.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <loom/loom.h>

#include "checkpoint.h"
#include "graph_options.h"
#include "parallel.h"
#include "metrics.h"
#include "model_config.h"

namespace loom::cli {

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Where `loom train --model <model>` writes its checkpoint without --out:
// "runs/<model>.safetensors", under the working directory and out of the way
// of sources (.gitignore lists runs/). The folder is created when missing.
inline std::string default_out(const std::string& model) { return "runs/" + model + ".safetensors"; }

// Creates the folder `file` goes in when it is missing ("" and a bare file
// name: nothing to do). An Error names the folder and the OS reason.
void create_parent_folder(const std::string& file);

// Everything `loom train` takes: the settings that decide the weights (the
// checkpoint's, TrainSettings) and those that do not.
struct TrainOptions : TrainSettings {
  std::string data_dir = kFashionMnistDir;
  int64_t stop_after = 0;  // stop after this epoch, as if interrupted (0: run all --epochs)
  int threads = 0;         // 0: loom's default (the hardware count)
  std::string device = "cpu";  // --device: cpu, cuda or cuda:N (not part of a checkpoint's settings)
  int64_t workers = 0;     // DataLoader worker threads (0: load on the training thread)
  std::string out = default_out("mlp");  // checkpoint written after every epoch; "" for none
  std::string resume;                    // checkpoint to continue from
  std::string metrics;                   // .csv or .jsonl file; "" for none
  int64_t test_limit = 0;  // evaluate on the first N test images (0: all)
  std::string amp;         // --amp bf16|fp16: mixed precision (nor is this; "" or "off": float32)
  GraphOptions graph;      // --compile, --checkpoint-activations, ... (not part of a checkpoint's settings)
  DistributedOptions dist; // --distributed, --zero, --timeout (nor is this)
};

// The options that must agree with a checkpoint to resume from it, and back.
TrainSettings settings_of(const TrainOptions& opts);
void apply_settings(const TrainSettings& settings, TrainOptions& opts);

struct TrainResult {
  std::shared_ptr<nn::Module> model;
  std::vector<EpochMetrics> history;  // the epochs this call ran
  int64_t last_epoch = 0;             // the epoch the model has finished (counting resumed ones)
};

// Trains as `loom train` does and returns the model. Logs to `log`: a bar
// redrawn in place when `interactive`, otherwise plain lines. Throws
// loom::Error on bad options, missing data or a mismatched checkpoint.
//
// Resuming follows Note [Exact resume] (include/loom/train/checkpoint.h): the
// weights, optimizer and scheduler states and the global generator come from
// the checkpoint, the data order of epoch e is a function of (seed, e) alone
// (DataLoader::set_epoch), and the settings must equal the checkpoint's
// (check_resume_settings).
TrainResult train(const TrainOptions& opts, std::ostream& log, bool interactive);

// --device for training: parse_device (flags.h), refused where the CUDA
// path does not exist yet (--compile, --distributed).
Device training_device(const std::string& flag_value, const GraphOptions& graph, const DistributedOptions& dist);

struct EvalResult {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // fraction correct
  int64_t count = 0;    // images evaluated
};

// Test-set loss and accuracy of `model` (eval mode, no grad), in batches,
// with the inputs normalized as in training.
EvalResult evaluate(nn::Module& model, std::shared_ptr<data::Dataset> test, const Normalization& normalization,
                    int64_t batch_size = 1000);

// The input normalization `loom train` uses for a dataset: Fashion-MNIST's
// training-set pixel mean and std (0.2860, 0.3530), as torchvision examples do.
Normalization dataset_normalization(const std::string& dataset);

// `loom eval`: rebuilds the model from a checkpoint and evaluates it on the
// test split of the dataset named in the checkpoint.
EvalResult evaluate_checkpoint(const std::string& model_file, const std::string& data_dir,
                               int64_t batch_size, std::ostream& log);

struct Prediction {
  int64_t index = 0;
  int64_t predicted = 0, label = 0;
  std::string predicted_name, label_name;
  double probability = 0;  // softmax probability of the predicted class
};

// `loom predict`: the model's class for test image `index`.
Prediction predict_checkpoint(const std::string& model_file, const std::string& data_dir, int64_t index);

}  // namespace loom::cli
