// End to end: `loom train`'s training loop on Fashion-MNIST, exact resume
// from a checkpoint, the metrics file, and the `loom` binary's command line.
//
// The training loop lives in tools/loom (train.cpp and its helpers), which is
// a program, not part of the library; its code but main.cpp is the static
// library loom_cli_lib, which this test links, so it drives the very
// function the CLI runs. Tests that need the
// dataset skip when the OS package dataset-fashion-mnist is not installed.
#include <gtest/gtest.h>
#include <loom/cuda.h>
#include <loom/loom.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>

#include <CLI/CLI.hpp>

#include "../tools/loom/checkpoint.h"
#include "../tools/loom/flags.h"
#include "../tools/loom/metrics.h"
#include "../tools/loom/model_config.h"
#include "../tools/loom/progress.h"
#include "../tools/loom/train.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace loom;
using cli::TrainOptions;
using loom::test::throws_with;
using loom::test::error_of;

bool have_dataset() {
  return fs::exists(fs::path(cli::kFashionMnistDir) / "train-images-idx3-ubyte.gz") &&
         fs::exists(fs::path(cli::kFashionMnistDir) / "t10k-labels-idx1-ubyte.gz");
}

#define SKIP_WITHOUT_DATASET()                                                                                 \
  do {                                                                                                         \
    if (!have_dataset())                                                                                       \
      GTEST_SKIP() << "Fashion-MNIST is not in " << cli::kFashionMnistDir                                      \
                   << " (install the OS package dataset-fashion-mnist: `make deps` as root)";                  \
  } while (0)

using TempDir = loom::test::TempDir;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A small, fast configuration: 784-32-10 on 1,000 images.
TrainOptions tiny_options(const TempDir& dir) {
  TrainOptions o;
  o.model.hidden = {32};
  o.epochs = 2;
  o.batch_size = 50;
  o.train_limit = 1000;
  o.test_limit = 200;
  o.out = dir.file("model.safetensors");
  return o;
}

void expect_same_state(const nn::StateDict& a, const nn::StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(a[i].second.equal(b[i].second)) << a[i].first << " differs bitwise";
  }
}

// ---- the main job in small: a 5,000-image subset reaches 80% ----

TEST(TrainEndToEnd, SmallMlpReaches80PercentOnA5000ImageSubset) {
  SKIP_WITHOUT_DATASET();
  TempDir dir;
  TrainOptions o;
  o.model.hidden = {128};
  o.epochs = 3;
  o.batch_size = 64;
  o.lr = 3e-3;
  o.train_limit = 5000;
  o.test_limit = 1000;
  o.out = dir.file("mlp.safetensors");
  o.metrics = dir.file("metrics.csv");
  std::ostringstream log;
  cli::TrainResult r = cli::train(o, log, /*interactive=*/false);

  ASSERT_EQ(r.history.size(), 3u);
  EXPECT_EQ(r.last_epoch, 3);
  const cli::EpochMetrics& last = r.history.back();
  EXPECT_GE(last.test_acc, 0.80) << log.str();
  EXPECT_LT(last.train_loss, r.history.front().train_loss);
  // Plain log lines (not a redrawn bar), and the summary of each epoch.
  EXPECT_EQ(log.str().find('\r'), std::string::npos);
  EXPECT_NE(log.str().find("epoch 3/3: train loss"), std::string::npos) << log.str();

  // The checkpoint rebuilds the model by itself and evaluates to the same numbers.
  cli::LoadedModel loaded = cli::load_model(o.out);
  EXPECT_EQ(loaded.config, o.model);
  cli::EvalResult again = cli::evaluate_checkpoint(o.out, cli::kFashionMnistDir, 1000, log);
  EXPECT_EQ(again.count, 10000);
  EXPECT_GE(again.accuracy, 0.78);  // the whole test set, not only the first 1,000
  expect_same_state(loaded.model->state_dict(), r.model->state_dict());

  // One CSV row per epoch under the header.
  std::string csv = read_file(o.metrics);
  EXPECT_EQ(csv.rfind(std::string(cli::MetricsWriter::csv_header()) + "\n1,", 0), 0u) << csv;
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
}

// ---- Note [Exact resume] ----

void expect_resume_is_exact(TrainOptions o, const TempDir& dir) {
  std::ostringstream log;
  o.out = dir.file("uninterrupted.safetensors");
  cli::TrainResult full = cli::train(o, log, false);

  TrainOptions first = o;
  first.stop_after = 1;  // "interrupted" after epoch 1
  first.out = dir.file("epoch1.safetensors");
  cli::train(first, log, false);
  cli::TrainCheckpoint ckpt = cli::load_checkpoint(first.out);
  EXPECT_EQ(ckpt.epoch, 1);
  EXPECT_EQ(ckpt.settings, cli::settings_of(o));
  EXPECT_FALSE(ckpt.optimizer_state.empty());

  // Resume in a process whose global generator has moved on, with data
  // workers this time: neither may change the result.
  manual_seed(12345);
  randn({100});
  TrainOptions second = o;
  second.resume = first.out;
  second.out = dir.file("resumed.safetensors");
  second.workers = 2;
  cli::TrainResult resumed = cli::train(second, log, false);
  ASSERT_EQ(resumed.history.size(), 1u);
  EXPECT_EQ(resumed.history[0].epoch, 2);
  EXPECT_EQ(resumed.last_epoch, 2);

  expect_same_state(resumed.model->state_dict(), full.model->state_dict());
  EXPECT_EQ(resumed.history[0].test_loss, full.history[1].test_loss);
  // The optimizer state written at the end matches too (step counts,
  // moments), compared by name: a loaded optimizer may list a parameter's
  // entries in another order.
  auto by_name = [](nn::StateDict sd) {
    std::sort(sd.begin(), sd.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    return sd;
  };
  cli::TrainCheckpoint end_resumed = cli::load_checkpoint(second.out), end_full = cli::load_checkpoint(o.out);
  expect_same_state(by_name(end_resumed.optimizer_state), by_name(end_full.optimizer_state));
  expect_same_state(end_resumed.scheduler_state, end_full.scheduler_state);
  EXPECT_EQ(end_resumed.rng.offset, end_full.rng.offset);
}

// The small CNN through `loom train`, with both augmentations on: it learns
// on a subset, and the checkpoint records the augmentation settings (a
// resume with other ones is refused).
TEST(TrainEndToEnd, SmallCnnWithAugmentationLearnsOnASubset) {
  SKIP_WITHOUT_DATASET();
  TempDir dir;
  TrainOptions o;
  o.model.name = "cnn";
  o.epochs = 2;
  o.lr = 2e-3;
  o.train_limit = 3000;
  o.test_limit = 1000;
  o.random_crop = 2;
  o.hflip = true;
  o.out = dir.file("cnn.safetensors");
  std::ostringstream log;
  cli::TrainResult r = cli::train(o, log, /*interactive=*/false);
  ASSERT_EQ(r.history.size(), 2u);
  EXPECT_GE(r.history.back().test_acc, 0.72) << log.str();
  EXPECT_NE(log.str().find("loom train: cnn ("), std::string::npos) << log.str();

  cli::TrainCheckpoint ckpt = cli::load_checkpoint(o.out);
  EXPECT_EQ(ckpt.settings.random_crop, 2);
  EXPECT_TRUE(ckpt.settings.hflip);
  EXPECT_EQ(ckpt.settings.model.name, "cnn");
  cli::LoadedModel loaded = cli::load_model(o.out);
  EXPECT_EQ(loaded.model->num_parameters(), r.model->num_parameters());

  TrainOptions again = o;
  again.epochs = 3;
  again.resume = o.out;
  again.hflip = false;
  std::ostringstream log2;
  try {
    cli::train(again, log2, false);
    ADD_FAILURE() << "resume with other augmentation settings was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--hflip"), std::string::npos) << e.what();
  }
}

TEST(TrainResume, AdamWWithCosineScheduleResumeGivesBitwiseTheSameWeights) {
  SKIP_WITHOUT_DATASET();
  TempDir dir;
  TrainOptions o = tiny_options(dir);
  ASSERT_EQ(o.optimizer, "adamw");
  ASSERT_EQ(o.schedule, "cosine");
  expect_resume_is_exact(o, dir);
}

TEST(TrainResume, SgdWithMomentumResumeGivesBitwiseTheSameWeights) {
  SKIP_WITHOUT_DATASET();
  TempDir dir;
  TrainOptions o = tiny_options(dir);
  o.optimizer = "sgd";
  o.lr = 0.05;
  o.momentum = 0.9;
  o.weight_decay = 0;
  o.schedule = "constant";
  expect_resume_is_exact(o, dir);
}

TEST(TrainResume, OtherSettingsAreRefusedByName) {
  SKIP_WITHOUT_DATASET();
  TempDir dir;
  TrainOptions o = tiny_options(dir);
  o.epochs = 1;
  o.train_limit = 200;
  std::ostringstream log;
  cli::train(o, log, false);

  TrainOptions other = o;
  other.resume = o.out;
  other.out = dir.file("other.safetensors");
  other.epochs = 2;
  other.batch_size = 64;
  other.lr = 0.01;
  try {
    cli::train(other, log, false);
    FAIL() << "resuming with another batch size and lr should fail";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("--batch-size 50 (asked: 64)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--lr"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--epochs"), std::string::npos) << msg;  // the cosine schedule spans them
    EXPECT_EQ(msg.find("--seed"), std::string::npos) << msg;
  }
  // A checkpoint already at --epochs trains nothing.
  TrainOptions done = o;
  done.resume = o.out;
  done.out = "";
  cli::TrainResult r = cli::train(done, log, false);
  EXPECT_TRUE(r.history.empty());
  EXPECT_EQ(r.last_epoch, 1);
}

// ---- pieces without the dataset ----

TEST(TrainModels, MlpMatchesPyTorchLayout) {
  manual_seed(0);
  auto model = cli::make_model({});
  nn::StateDict sd = model->state_dict();
  // nn.Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear) names.
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"1.weight", {512, 784}}, {"1.bias", {512}}, {"3.weight", {256, 512}},
      {"3.bias", {256}},        {"5.weight", {10, 256}}, {"5.bias", {10}}};
  ASSERT_EQ(sd.size(), expected.size());
  for (size_t i = 0; i < sd.size(); ++i) {
    EXPECT_EQ(sd[i].first, expected[i].first);
    EXPECT_EQ(sd[i].second.sizes(), expected[i].second);
  }
  EXPECT_EQ(model->num_parameters(), 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10);
  // PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  EXPECT_LE(sd[0].second.abs().max().item<double>(), 1 / std::sqrt(784.0));
  EXPECT_GT(sd[0].second.abs().max().item<double>(), 0.9 / std::sqrt(784.0));
  Tensor logits = model->forward(zeros({3, 1, 28, 28}));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 10}));

  cli::ModelConfig unknown;
  unknown.name = "resnet";
  EXPECT_THROW(cli::make_model(unknown), Error);
  cli::ModelConfig empty_layer;
  empty_layer.hidden = {64, 0};
  EXPECT_THROW(cli::make_model(empty_layer), Error);
}

TEST(TrainModels, ConfigRoundTripsThroughMetadata) {
  cli::ModelConfig c{.name = "mlp", .hidden = {64, 32, 16}, .in_features = 784, .num_classes = 10};
  std::map<std::string, std::string> meta;
  cli::write_model_config(c, meta);
  EXPECT_EQ(meta["loom.model.hidden"], "64,32,16");
  EXPECT_EQ(cli::read_model_config(meta, "f"), c);
  meta["loom.model.hidden"] = "64,x";
  EXPECT_THROW(cli::read_model_config(meta, "f"), Error);
  meta.erase("loom.model.hidden");
  try {
    cli::read_model_config(meta, "ckpt.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'loom.model.hidden' is missing"), std::string::npos) << e.what();
  }
}

TEST(TrainCheckpoint, RoundTripsSettingsRngAndState) {
  TempDir dir;
  cli::TrainCheckpoint c;
  c.settings.model.hidden = {7};
  c.settings.lr = 0.1 + 0.2;  // not exactly representable in few digits
  c.settings.seed = 18446744073709551615ull;
  c.epoch = 4;
  c.rng = {123, 456};
  c.model_state = {{"1.weight", arange(6, kFloat32).reshape({2, 3})}};
  c.optimizer_state = {{"state.0.step", scalar_tensor(3.0, kFloat64)}};
  c.scheduler_state = {{"last_epoch", scalar_tensor(int64_t{7}, kInt64)}};
  c.normalization = {{0.1, 0.2}, {0.3, 0.4}};
  cli::save_checkpoint(dir.file("c.safetensors"), c);
  cli::TrainCheckpoint back = cli::load_checkpoint(dir.file("c.safetensors"));
  EXPECT_EQ(back.settings, c.settings);
  EXPECT_EQ(back.epoch, 4);
  EXPECT_EQ(back.rng.seed, 123u);
  EXPECT_EQ(back.rng.offset, 456u);
  expect_same_state(back.model_state, c.model_state);
  expect_same_state(back.optimizer_state, c.optimizer_state);
  expect_same_state(back.scheduler_state, c.scheduler_state);
  EXPECT_EQ(back.normalization, c.normalization);

  // A safetensors file without loom's metadata is refused by name.
  io::save_safetensors(dir.file("plain.safetensors"), c.model_state);
  try {
    cli::load_model(dir.file("plain.safetensors"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'loom.model' is missing"), std::string::npos) << e.what();
  }
}

TEST(TrainMetrics, CsvAndJsonLines) {
  TempDir dir;
  cli::EpochMetrics m{1, 0.5, 0.25, 0.875, 2.5, 24000};
  {
    cli::MetricsWriter w(dir.file("m.csv"));
    w.append(m);
  }
  {
    cli::MetricsWriter w(dir.file("m.csv"));  // appends, no second header
    m.epoch = 2;
    w.append(m);
  }
  EXPECT_EQ(read_file(dir.file("m.csv")),
            "epoch,train_loss,test_loss,test_acc,seconds,samples_per_s\n"
            "1,0.5,0.25,0.875,2.5,24000\n2,0.5,0.25,0.875,2.5,24000\n");
  {
    cli::MetricsWriter w(dir.file("m.jsonl"));
    m.test_loss = std::nan("");
    w.append(m);
  }
  EXPECT_EQ(read_file(dir.file("m.jsonl")),
            "{\"epoch\": 2, \"train_loss\": 0.5, \"test_loss\": null, \"test_acc\": 0.875, \"seconds\": 2.5, "
            "\"samples_per_s\": 24000}\n");
  EXPECT_THROW(cli::MetricsWriter(dir.file("m.txt")), Error);
  std::ofstream(dir.file("other.csv")) << "a,b\n1,2\n";
  EXPECT_THROW(cli::MetricsWriter(dir.file("other.csv")), Error);
}

TEST(TrainProgress, LogLinesEveryTenthOfAnEpoch) {
  EXPECT_EQ(cli::format_duration(0), "0:00");
  EXPECT_EQ(cli::format_duration(75.4), "1:15");
  EXPECT_EQ(cli::format_duration(3723), "1:02:03");
  EXPECT_EQ(cli::format_duration(-1), "?");

  std::ostringstream out;
  cli::EpochProgress p(out, /*interactive=*/false, 2, 5, 100);
  for (int64_t b = 1; b <= 100; ++b) p.update(b, 0.5, b * 10);
  p.finish();
  std::string s = out.str();
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 10) << s;
  EXPECT_NE(s.find("epoch 2/5 batch 10/100  loss 0.5000"), std::string::npos) << s;
  EXPECT_NE(s.find("batch 100/100"), std::string::npos) << s;

  std::ostringstream tty;
  cli::EpochProgress bar(tty, /*interactive=*/true, 1, 1, 3, /*width=*/120);
  bar.update(1, 1.0, 8);
  bar.update(3, 1.0, 24);  // the last batch is always drawn
  bar.finish();
  EXPECT_EQ(tty.str().rfind("\r\033[K"), tty.str().size() - 4);
  EXPECT_NE(tty.str().find("[========================================] 3/3"), std::string::npos) << tty.str();
}

// ---- the library's training checkpoint (include/loom/train/checkpoint.h) ----

TEST(LibraryTrainingCheckpoint, RoundTripsStatesProgressRngAndSettings) {
  TempDir dir;
  train::TrainingCheckpoint c;
  c.model_state = {{"fc.weight", arange(6, kFloat32).reshape({2, 3})}, {"fc.bias", zeros({2})}};
  c.optimizer_state = {{"state.0.step", scalar_tensor(3.0, kFloat64)}};
  c.scheduler_state = {{"last_epoch", scalar_tensor(int64_t{7}, kInt64)}};
  c.rng = {11, 22};
  c.epoch = 2;
  c.step = 40;
  c.settings = {{"my.batch_size", "64"}, {"my.lr", "0.001"}, {"my.note", ""}};
  const std::string path = dir.file("c.safetensors");
  train::save_training_checkpoint(path, c);

  train::TrainingCheckpoint back = train::load_training_checkpoint(path);
  expect_same_state(back.model_state, c.model_state);
  expect_same_state(back.optimizer_state, c.optimizer_state);
  expect_same_state(back.scheduler_state, c.scheduler_state);
  EXPECT_EQ(back.rng.seed, 11u);
  EXPECT_EQ(back.rng.offset, 22u);
  EXPECT_EQ(back.epoch, 2);
  EXPECT_EQ(back.step, 40);
  EXPECT_EQ(back.settings, c.settings);

  // What Python's safetensors.torch.load_file sees: the model under its own
  // names, the rest prefixed, and the metadata the format asks for.
  io::SafetensorsFile raw = io::load_safetensors(path);
  ASSERT_EQ(raw.tensors.size(), 4u);
  EXPECT_EQ(raw.tensors[0].first, "fc.weight");
  EXPECT_EQ(raw.tensors[2].first, "optimizer.state.0.step");
  EXPECT_EQ(raw.tensors[3].first, "scheduler.last_epoch");
  EXPECT_EQ(raw.metadata["format"], "pt");
  EXPECT_EQ(raw.metadata["loom.epoch"], "2");
  EXPECT_EQ(raw.metadata["my.batch_size"], "64");

  // The checkpoint's own keys are not settings; tensor names may not collide.
  train::TrainingCheckpoint reserved = c;
  reserved.settings["loom.epoch"] = "9";
  EXPECT_TRUE(throws_with([&] { train::save_training_checkpoint(path, reserved); }, {"'loom.epoch'"}));
  train::TrainingCheckpoint colliding = c;
  colliding.model_state.emplace_back("optimizer.x", zeros({1}));
  EXPECT_TRUE(throws_with([&] { train::save_training_checkpoint(path, colliding); }, {"'optimizer.x'"}));
  // A plain state dict is not a training checkpoint.
  io::save_safetensors(dir.file("plain.safetensors"), c.model_state);
  EXPECT_TRUE(throws_with([&] { train::load_training_checkpoint(dir.file("plain.safetensors")); },
                               {"plain.safetensors", "'loom.epoch' is missing"}));
}

TEST(LibraryTrainingCheckpoint, ResumeMismatchNamesEverySettingInOrder) {
  const train::Settings saved = {{"a", "1"}, {"b", "x"}, {"c", "0.5"}, {"unchecked", "1"}};
  const std::vector<train::ResumeSetting> rules = {{"c", "--c"}, {"a", "--a"}, {"b", "--b"}, {"d", "--d"}};
  EXPECT_NO_THROW(train::check_resume("f.safetensors", saved, saved, rules));
  train::Settings asked = saved;
  asked["unchecked"] = "2";  // not in the rules: may differ
  EXPECT_NO_THROW(train::check_resume("f.safetensors", saved, asked, rules));
  asked["a"] = "2";
  asked["c"] = "0.25";
  asked["d"] = "new";
  try {
    train::check_resume("f.safetensors", saved, asked, rules);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cannot resume from 'f.safetensors'"), std::string::npos) << msg;
    const size_t c = msg.find("\n  --c 0.5 (asked: 0.25)"), a = msg.find("\n  --a 1 (asked: 2)"),
                 d = msg.find("\n  --d (none) (asked: new)");
    EXPECT_NE(c, std::string::npos) << msg;
    EXPECT_NE(a, std::string::npos) << msg;
    EXPECT_NE(d, std::string::npos) << msg;
    EXPECT_LT(c, a);
    EXPECT_LT(a, d);
    EXPECT_EQ(msg.find("--b"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("unchecked"), std::string::npos) << msg;
  }
}

// The command's settings table (Note [One table of training settings]): the
// resume check, the settings a resume takes from the checkpoint, and the file.
TEST(TrainSettingsTable, ResumeRuleAndTakingSettingsFromTheCheckpoint) {
  cli::TrainSettings saved;
  saved.random_crop = 2;
  saved.hflip = true;
  saved.seed = 5;
  cli::TrainSettings asked = saved;
  EXPECT_NO_THROW(cli::check_resume_settings("ckpt", saved, asked));
  asked.hflip = false;
  asked.random_crop = 0;
  asked.seed = 6;
  asked.model.hidden = {16};
  try {
    cli::check_resume_settings("ckpt", saved, asked);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* part : {"--hflip 1 (asked: 0)", "--random-crop 2 (asked: 0)", "--seed 5 (asked: 6)",
                             "--hidden 512,256 (asked: 16)"})
      EXPECT_NE(msg.find(part), std::string::npos) << part << "\n" << msg;
    EXPECT_EQ(msg.find("--batch-size"), std::string::npos) << msg;
  }
  // --epochs shapes a cosine schedule only.
  asked = saved;
  asked.epochs = 9;
  EXPECT_THROW(cli::check_resume_settings("ckpt", saved, asked), Error);
  saved.schedule = asked.schedule = "constant";
  EXPECT_NO_THROW(cli::check_resume_settings("ckpt", saved, asked));

  // Flags given keep their value; the rest come from the checkpoint.
  cli::TrainSettings ckpt;
  ckpt.model.name = "cnn";
  ckpt.batch_size = 64;
  ckpt.lr = 0.25;
  ckpt.hflip = true;
  cli::TrainSettings now;
  now.lr = 0.5;
  cli::take_settings_not_given(ckpt, now, [](const std::string& flag) { return flag == "--lr"; });
  EXPECT_EQ(now.model.name, "cnn");
  EXPECT_EQ(now.batch_size, 64);
  EXPECT_EQ(now.lr, 0.5);
  EXPECT_TRUE(now.hflip);

  // Every setting survives the metadata, and a missing one is named.
  cli::TrainSettings odd;
  odd.lr = 0.1 + 0.2;
  odd.momentum = 1.0 / 3;
  odd.seed = 18446744073709551615ull;
  odd.model.hidden = {};
  odd.train_limit = 123;
  train::Settings meta = cli::settings_to_metadata(odd);
  EXPECT_EQ(cli::settings_from_metadata(meta, "f"), odd);
  meta.erase("loom.augment.hflip");
  EXPECT_TRUE(throws_with([&] { cli::settings_from_metadata(meta, "f"); }, {"'loom.augment.hflip' is missing"}));
}

// ---- Note [Flags per model] ----

TEST(TrainFlags, LanguageModelsRefuseImageFlagsAndBack) {
  const std::vector<std::string> image_only = {"--epochs", "--optimizer", "--momentum", "--workers", "--hidden",
                                               "--data-dir", "--stop-after", "--resume", "--train-limit",
                                               "--test-limit", "--random-crop", "--hflip"};
  for (const char* lm : {"gpt", "lstm"}) {
    const auto refusals = cli::train_flag_refusals(lm, "adamw", image_only);
    ASSERT_EQ(refusals.size(), image_only.size()) << lm;
    for (size_t i = 0; i < image_only.size(); ++i)
      EXPECT_EQ(refusals[i].rfind(image_only[i] + " does not apply to --model " + lm + ": ", 0), 0u) << refusals[i];
  }
  EXPECT_EQ(cli::train_flag_refusals("gpt", "adamw", {"--epochs"}),
            std::vector<std::string>{"--epochs does not apply to --model gpt: language models train for --max-steps "
                                     "steps"});
  const std::vector<std::string> lm_only = {"--layers", "--d-model", "--heads", "--context", "--dropout",
                                            "--no-tie", "--tokenizer", "--max-steps", "--eval-every",
                                            "--eval-batches", "--grad-clip"};
  for (const char* image : {"mlp", "cnn", "resnet9"})
    EXPECT_EQ(cli::train_flag_refusals(image, "adamw", lm_only).size(), lm_only.size()) << image;
  // The gpt's own flags, refused for the lstm.
  EXPECT_EQ(cli::train_flag_refusals("lstm", "adamw", {"--heads", "--no-tie", "--layers"}).size(), 2u);
  EXPECT_TRUE(cli::train_flag_refusals("gpt", "adamw", lm_only).empty());
  // Flags every model takes.
  const std::vector<std::string> shared = {"--model", "--dataset", "--batch-size", "--lr", "--schedule",
                                           "--weight-decay", "--seed", "--threads", "--out", "--metrics"};
  for (const std::string& model : cli::train_models())
    EXPECT_TRUE(cli::train_flag_refusals(model, "adamw", shared).empty()) << model;
  // --hidden is the mlp's; --momentum is sgd's.
  EXPECT_TRUE(cli::train_flag_refusals("mlp", "adamw", {"--hidden"}).empty());
  EXPECT_EQ(cli::train_flag_refusals("cnn", "adamw", {"--hidden"}).size(), 1u);
  EXPECT_TRUE(cli::train_flag_refusals("mlp", "sgd", {"--momentum"}).empty());
  EXPECT_EQ(cli::train_flag_refusals("mlp", "adamw", {"--momentum"}),
            std::vector<std::string>{"--momentum does not apply to --optimizer adamw: only sgd has momentum"});
  EXPECT_TRUE(throws_with([] { cli::check_train_flags("lstm", "adamw", {"--workers", "--epochs"}); },
                               {"train: --workers does not apply to --model lstm", "\ntrain: --epochs"}));
}

// The numeric validators' words, on a CLI11 app of their own.
std::string validation_error(CLI::Validator v, const std::string& value) {
  CLI::App app;
  std::string out;
  app.add_option("--flag", out)->check(std::move(v));
  try {
    app.parse(std::vector<std::string>{value, "--flag"});  // CLI11 takes argv reversed
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

TEST(TrainFlags, NumericValidatorsSayWhatIsExpected) {
  EXPECT_EQ(validation_error(cli::positive_integer(), "0"), "--flag: expected a positive integer, got 0");
  EXPECT_EQ(validation_error(cli::positive_integer(), "-3"), "--flag: expected a positive integer, got -3");
  EXPECT_EQ(validation_error(cli::positive_integer(), "2.5"), "--flag: expected a positive integer, got 2.5");
  EXPECT_EQ(validation_error(cli::positive_integer(100), "101"), "--flag: expected a positive integer, got 101");
  EXPECT_EQ(validation_error(cli::positive_integer(), "12"), "");
  EXPECT_EQ(validation_error(cli::non_negative_integer(), "-1"), "--flag: expected an integer >= 0, got -1");
  EXPECT_EQ(validation_error(cli::non_negative_integer(), "0"), "");
  EXPECT_EQ(validation_error(cli::positive_number(), "abc"), "--flag: expected a positive number, got abc");
  EXPECT_EQ(validation_error(cli::positive_number(), "0"), "--flag: expected a positive number, got 0");
  EXPECT_EQ(validation_error(cli::positive_number(), "nan"), "--flag: expected a positive number, got nan");
  EXPECT_EQ(validation_error(cli::positive_number(), "1e-3"), "");
  EXPECT_EQ(validation_error(cli::non_negative_number(), "-0.5"), "--flag: expected a number >= 0, got -0.5");
  EXPECT_EQ(validation_error(cli::number_between(0, 0.99), "1"), "--flag: expected a number in [0, 0.99], got 1");
  EXPECT_EQ(validation_error(cli::unsigned_integer(), "-1"),
            "--flag: expected an integer from 0 to 18446744073709551615, got -1");
  EXPECT_EQ(validation_error(cli::unsigned_integer(), "18446744073709551615"), "");
}

TEST(TrainFlags, DeviceIsCpuCudaOrCudaN) {
  EXPECT_EQ(cli::parse_device("--device", "cpu"), Device::cpu());
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:1x", "CUDA"})
    EXPECT_TRUE(throws_with([&] { cli::parse_device("--device", bad); },
                            {"--device: expected cpu, cuda or cuda:N, got '", bad}))
        << bad;
  if (cuda::is_available()) {
    EXPECT_EQ(cli::parse_device("--device", "cuda"), Device::cuda(0));
    EXPECT_TRUE(throws_with([&] { cli::parse_device("--device", "cuda:99"); }, {"cuda:99 does not exist"}));
  } else {
    EXPECT_TRUE(throws_with([&] { cli::parse_device("--device", "cuda:0"); },
                            {"--device cuda:0", cuda::is_built() ? "no CUDA device" : "built without CUDA"}));
  }
  // Where the CUDA path does not exist yet, a clear refusal before anything runs.
  if (cuda::is_available()) {
    cli::GraphOptions compiled;
    compiled.compile = true;
    EXPECT_TRUE(throws_with([&] { cli::training_device("cuda", compiled, {}); }, {"--compile runs on the CPU only"}));
  }
}

TEST(LibraryAtomicWrite, WritesWholeFilesAndNamesTheMissingFolder) {
  TempDir dir;
  const std::string path = dir.file("bytes.bin");
  io::write_file_atomic(path, std::string_view("first"));
  io::write_file_atomic(path, std::vector<uint8_t>{'a', 'b', 0, 'c'});
  EXPECT_EQ(read_file(path), std::string("ab\0c", 4));
  EXPECT_TRUE(throws_with([&] { io::write_file_atomic(dir.file("no/such/x.png"), std::string_view("x")); },
                               {"write_file_atomic", "no/such", "does not exist"}));
}

// ---- the `loom` binary ----

// build/tests/test_train -> build/loom, unless CMake passes LOOM_CLI_PATH.
std::string loom_binary() {
#ifdef LOOM_CLI_PATH
  return LOOM_CLI_PATH;
#else
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  return (self.parent_path().parent_path() / "loom").string();
#endif
}

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

RunResult run_loom(const std::string& args) {
  RunResult r;
  std::string cmd = "'" + loom_binary() + "' " + args + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

#define SKIP_WITHOUT_BINARY()                                                                       \
  do {                                                                                              \
    if (!fs::exists(loom_binary()))                                                                 \
      GTEST_SKIP() << "the loom binary was not found at '" << loom_binary() << "' (build `loom`)"; \
  } while (0)

TEST(LoomCli, HelpForEveryCommand) {
  SKIP_WITHOUT_BINARY();
  RunResult top = run_loom("--help");
  EXPECT_EQ(top.exit_code, 0) << top.output;
  for (const char* cmd : {"train", "eval", "predict"}) EXPECT_NE(top.output.find(cmd), std::string::npos);

  RunResult train = run_loom("train --help");
  EXPECT_EQ(train.exit_code, 0) << train.output;
  for (const char* flag : {"--model", "--dataset", "--data-dir", "--epochs", "--batch-size", "--lr", "--optimizer",
                           "--seed", "--threads", "--out", "--resume", "--metrics", "--workers"})
    EXPECT_NE(train.output.find(flag), std::string::npos) << flag;
  EXPECT_NE(run_loom("eval --help").output.find("--model-file"), std::string::npos);
  EXPECT_NE(run_loom("predict --help").output.find("--index"), std::string::npos);

  RunResult none = run_loom("");
  EXPECT_NE(none.exit_code, 0);
  RunResult bad = run_loom("train --optimizer adam");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--optimizer"), std::string::npos) << bad.output;
}

TEST(LoomCli, MissingDatasetIsACleanError) {
  SKIP_WITHOUT_BINARY();
  TempDir dir;
  RunResult r = run_loom("train --epochs 1 --data-dir '" + dir.file("nowhere") + "' --out ''");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("loom: error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(dir.file("nowhere")), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("dataset-fashion-mnist"), std::string::npos) << r.output;
}

TEST(LoomCli, CorruptCheckpointIsACleanError) {
  SKIP_WITHOUT_BINARY();
  TempDir dir;
  std::ofstream(dir.file("bad.safetensors")) << "not a checkpoint";
  for (const std::string& args : {"eval --model-file '" + dir.file("bad.safetensors") + "'",
                                  "predict --index 0 --model-file '" + dir.file("bad.safetensors") + "'"}) {
    RunResult r = run_loom(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("loom: error: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("bad.safetensors"), std::string::npos) << r.output;
  }
}

TEST(LoomCli, TrainEvalPredictOnASubset) {
  SKIP_WITHOUT_BINARY();
  SKIP_WITHOUT_DATASET();
  TempDir dir;
  std::string ckpt = dir.file("m.safetensors");
  RunResult t = run_loom("train --hidden 32 --epochs 1 --train-limit 500 --test-limit 100 --out '" + ckpt +
                         "' --metrics '" + dir.file("m.jsonl") + "'");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  EXPECT_NE(t.output.find("epoch 1/1: train loss"), std::string::npos) << t.output;
  EXPECT_EQ(t.output.find('\r'), std::string::npos) << "a pipe gets log lines, not a redrawn bar";
  EXPECT_EQ(read_file(dir.file("m.jsonl")).rfind("{\"epoch\": 1, \"train_loss\": ", 0), 0u);

  RunResult e = run_loom("eval --model-file '" + ckpt + "'");
  EXPECT_EQ(e.exit_code, 0) << e.output;
  EXPECT_NE(e.output.find("test accuracy"), std::string::npos) << e.output;

  RunResult p = run_loom("predict --index 0 --model-file '" + ckpt + "'");
  EXPECT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("true Ankle boot"), std::string::npos) << p.output;  // test image 0 is an ankle boot

  RunResult out_of_range = run_loom("predict --index 10000 --model-file '" + ckpt + "'");
  EXPECT_EQ(out_of_range.exit_code, 1) << out_of_range.output;
  EXPECT_NE(out_of_range.output.find("out of range"), std::string::npos) << out_of_range.output;
}

TEST(LoomCli, FlagsThatDoNotApplyToTheModelAreRefused) {
  SKIP_WITHOUT_BINARY();
  struct Case {
    std::string args, expected;
  };
  for (const Case& c : std::vector<Case>{
           {"train --model gpt --epochs 3", "--epochs does not apply to --model gpt: language models train for "
                                            "--max-steps steps"},
           {"train --model lstm --optimizer sgd", "--optimizer does not apply to --model lstm"},
           {"train --model gpt --workers 2", "--workers does not apply to --model gpt"},
           {"train --model lstm --hidden 64", "--hidden does not apply to --model lstm"},
           {"train --model lstm --heads 2", "--heads does not apply to --model lstm"},
           {"train --model mlp --max-steps 10", "--max-steps does not apply to --model mlp"},
           {"train --layers 2", "--layers does not apply to --model mlp"},
           {"train --model cnn --hidden 64", "--hidden does not apply to --model cnn"},
           {"train --momentum 0.9", "--momentum does not apply to --optimizer adamw"}}) {
    RunResult r = run_loom(c.args + " --out ''");
    EXPECT_EQ(r.exit_code, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find("loom: error: train: " + c.expected), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST(LoomCli, NumericFlagErrorsSayWhatIsExpected) {
  SKIP_WITHOUT_BINARY();
  TempDir dir;
  const std::string file = dir.file("any.safetensors");
  std::ofstream(file) << "x";
  struct Case {
    std::string args, expected;
  };
  for (const Case& c : std::vector<Case>{
           {"train --epochs -3", "--epochs: expected a positive integer, got -3"},
           {"train --batch-size 0", "--batch-size: expected a positive integer, got 0"},
           {"train --lr abc", "--lr: expected a positive number, got abc"},
           {"train --weight-decay -1", "--weight-decay: expected a number >= 0, got -1"},
           {"train --hidden 64,0", "--hidden: expected a positive integer, got 0"},
           {"train --seed -1", "--seed: expected an integer from 0 to 18446744073709551615, got -1"},
           {"train --threads x", "--threads: expected an integer >= 0, got x"},
           {"train --model gpt --dropout 1.5", "--dropout: expected a number in [0, 0.99], got 1.5"},
           {"train --model gpt --context 0", "--context: expected a positive integer, got 0"},
           {"eval --batch-size 0 --model-file '" + file + "'", "--batch-size: expected a positive integer, got 0"},
           {"predict --index -1 --model-file '" + file + "'", "--index: expected an integer >= 0, got -1"},
           {"generate --temperature -1 --model-file '" + file + "'",
            "--temperature: expected a number >= 0, got -1"},
           {"generate --top-k 1.5 --model-file '" + file + "'", "--top-k: expected an integer >= 0, got 1.5"},
           {"generate --max-new-tokens -5 --model-file '" + file + "'",
            "--max-new-tokens: expected an integer >= 0, got -5"}}) {
    RunResult r = run_loom(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("not in range"), std::string::npos) << c.args << "\n" << r.output;
  }
}

}  // namespace

// ---- --compile and --checkpoint-activations: the same weights as eager training ----

TEST(TrainCompile, EveryImageModelEndsWithTheWeightsOfEagerTraining) {
  SKIP_WITHOUT_DATASET();
  TempDir dir;
  for (const std::string model : {"mlp", "cnn", "resnet9"}) {
    SCOPED_TRACE(model);
    TrainOptions o = tiny_options(dir);
    o.model.name = model;
    o.epochs = 1;
    o.train_limit = model == "mlp" ? 1000 : 120;  // the last batch is smaller: a second graph
    o.batch_size = model == "mlp" ? 64 : 16;
    o.test_limit = 50;
    o.optimizer = model == "resnet9" ? "sgd" : "adamw";
    o.momentum = model == "resnet9" ? 0.9 : 0.0;
    o.out = "";
    std::ostringstream l1, l2, l3, l4;
    const cli::TrainResult eager = cli::train(o, l1, false);
    o.graph.compile = true;
    o.graph.dump_graph = dir.file(model + ".dot");
    const cli::TrainResult compiled = cli::train(o, l2, false);
    {
      SCOPED_TRACE("--compile");
      expect_same_state(eager.model->state_dict(), compiled.model->state_dict());
    }
    EXPECT_NE(l2.str().find("compiled step:"), std::string::npos) << l2.str();
    EXPECT_EQ(read_file(o.graph.dump_graph).rfind("digraph loom {", 0), 0u);
    o.graph.checkpoint_activations = true;
    o.graph.dump_graph = "";
    const cli::TrainResult recomputed = cli::train(o, l3, false);
    {
      SCOPED_TRACE("--compile --checkpoint-activations");
      expect_same_state(eager.model->state_dict(), recomputed.model->state_dict());
    }
    EXPECT_NE(l3.str().find("checkpointed segments"), std::string::npos) << l3.str();
    o.graph.compile = false;
    const cli::TrainResult checkpointed = cli::train(o, l4, false);
    {
      SCOPED_TRACE("--checkpoint-activations");
      expect_same_state(eager.model->state_dict(), checkpointed.model->state_dict());
    }
  }
}

TEST(TrainCompile, GraphFlagsThatNeedOthersAreRefused) {
  TrainOptions o;
  o.graph.dump_graph = "x.dot";
  EXPECT_ERROR_HAS(cli::check_graph_options(o.graph), "--dump-graph writes the compiled step's graph: add --compile");
  o.graph = {};
  o.graph.memory_budget_mb = 10;
  o.graph.compile = true;
  EXPECT_ERROR_HAS(cli::check_graph_options(o.graph), "--memory-budget-mb is the compiled recompute pass's budget");
}
