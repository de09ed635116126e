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
#include "metrics.h"
#include "models.h"

namespace loom::cli {

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

struct TrainOptions {
  ModelConfig model;  // --model, --hidden
  std::string dataset = "fashion-mnist";
  std::string data_dir = kFashionMnistDir;
  int64_t epochs = 5;
  int64_t stop_after = 0;  // stop after this epoch, as if interrupted (0: run all --epochs)
  int64_t batch_size = 128;
  std::string optimizer = "adamw";  // adamw | sgd
  double lr = 1e-3;                 // the peak: the cosine schedule decays it to 0
  std::string schedule = "cosine";  // cosine (per batch, over all epochs) | constant
  double weight_decay = 0.01;  // PyTorch's AdamW default; SGD's is 0
  double momentum = 0;         // SGD only
  uint64_t seed = 0;
  int threads = 0;      // 0: loom's default (the hardware count)
  int64_t workers = 0;  // DataLoader worker threads (0: load on the training thread)
  std::string out = "model.safetensors";  // checkpoint written after every epoch; "" for none
  std::string resume;                     // checkpoint to continue from
  std::string metrics;                    // .csv or .jsonl file; "" for none
  int64_t train_limit = 0;  // use only the first N training images (0: all)
  int64_t test_limit = 0;   // evaluate on the first N test images (0: all)
  int64_t random_crop = 0;  // --random-crop P: pad by P, then a random crop of the image size (0: off)
  bool hflip = false;       // --hflip: random horizontal flips
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
// Note [Exact resume]
// An uninterrupted run and one resumed from the checkpoint of epoch k give
// bitwise the same weights, because everything the weights depend on is a
// function of what the checkpoint stores: the weights and optimizer state
// (step counts, moments) are restored exactly; the data order of epoch e is
// a function of (seed, e) alone (DataLoader::set_epoch, Note [Deterministic
// data loading]); and loom's global generator (dropout, random init of
// anything built later) is restored to its state after epoch k. The
// settings that shape training (TrainSettings) must equal the checkpoint's.
TrainResult train(const TrainOptions& opts, std::ostream& log, bool interactive);

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
