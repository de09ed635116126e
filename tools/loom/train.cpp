#include "train.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <numeric>
#include <filesystem>

#include "flags.h"
#include "mixed_precision.h"
#include "progress.h"

namespace loom::cli {
namespace F = nn::functional;

namespace {

// The dataset split by name. Only Fashion-MNIST so far; its loader's errors
// name the folder, the file and the package that provides it.
std::shared_ptr<data::Dataset> load_split(const std::string& dataset, const std::string& dir, bool train,
                                          int64_t limit) {
  LOOM_CHECK(dataset == "fashion-mnist", "dataset: unknown dataset '", dataset, "' (known: fashion-mnist)");
  std::shared_ptr<data::Dataset> ds = data::fashion_mnist(dir, train);
  LOOM_CHECK(limit >= 0, "train: a dataset limit must be >= 0, got ", limit);
  if (limit > 0 && limit < ds->size()) {
    std::vector<int64_t> first(static_cast<size_t>(limit));
    std::iota(first.begin(), first.end(), int64_t{0});
    ds = std::make_shared<data::Subset>(ds, std::move(first));
  }
  return ds;
}

data::DataLoaderOptions loader_options(int64_t batch_size, const Normalization& n) {
  data::DataLoaderOptions o;
  o.batch_size = batch_size;
  if (!n.mean.empty()) o.transform = data::Normalize(n.mean, n.std);
  return o;
}

// The optimizer of the settings over `groups` (ZeRO-1 makes it over its shards).
std::unique_ptr<optim::Optimizer> make_optimizer(const TrainSettings& s, std::vector<optim::ParamGroup> groups) {
  if (s.optimizer == "adamw")
    return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(s.lr).weight_decay(s.weight_decay));
  if (s.optimizer == "sgd")
    return std::make_unique<optim::SGD>(std::move(groups),
                                        optim::SGDOptions(s.lr).momentum(s.momentum).weight_decay(s.weight_decay));
  LOOM_ERROR("train: unknown optimizer '", s.optimizer, "' (known: adamw, sgd)");
}

int terminal_width() {
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

std::string percent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100 * fraction);
  return buf;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

void create_parent_folder(const std::string& file) {
  if (file.empty()) return;
  const std::filesystem::path parent = std::filesystem::path(file).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(parent, ec);
  LOOM_CHECK(!ec, "cannot create the folder '", parent.string(), "' for '", file, "': ", ec.message());
}

TrainSettings settings_of(const TrainOptions& o) { return o; }

void apply_settings(const TrainSettings& s, TrainOptions& o) { static_cast<TrainSettings&>(o) = s; }

Normalization dataset_normalization(const std::string& dataset) {
  LOOM_CHECK(dataset == "fashion-mnist", "dataset: unknown dataset '", dataset, "' (known: fashion-mnist)");
  return {{0.2860}, {0.3530}};
}

EvalResult evaluate(nn::Module& model, std::shared_ptr<data::Dataset> test, const Normalization& normalization,
                    int64_t batch_size) {
  LOOM_CHECK(batch_size > 0, "evaluate: batch_size must be positive, got ", batch_size);
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  double loss_sum = 0;
  int64_t correct = 0, count = 0;
  F::CrossEntropyOptions sum_reduction;
  sum_reduction.reduction = "sum";
  data::DataLoader loader(test, loader_options(batch_size, normalization));
  const std::vector<Tensor> params = model.parameters();
  const Device device = params.empty() ? Device::cpu() : params.front().device();
  for (data::Batch& b : loader) {
    const Tensor target = b.target.to(device);
    Tensor logits = model.forward(b.data.to(device));  // (B, classes)
    loss_sum += F::cross_entropy(logits, target, sum_reduction).item<double>();
    correct += logits.argmax(1).eq(target).sum().item<int64_t>();
    count += target.size(0);
  }
  model.train(was_training);
  LOOM_CHECK(count > 0, "evaluate: the test set '", test->name(), "' is empty");
  return {loss_sum / static_cast<double>(count), static_cast<double>(correct) / static_cast<double>(count), count};
}

Device training_device(const std::string& flag_value, const GraphOptions& graph, const DistributedOptions& dist) {
  const Device d = parse_device("--device", flag_value);
  LOOM_CHECK(!(d.is_cuda() && graph.compile), "train: --compile runs on the CPU only so far: a captured step "
             "replays into a CPU arena");
  LOOM_CHECK(!(d.is_cuda() && dist.enabled), "train: --distributed runs on the CPU only so far: DDP over NCCL "
             "with CUDA tensors is not built yet");
  return d;
}

TrainResult train(const TrainOptions& opts, std::ostream& rank0_log, bool interactive) {
  LOOM_CHECK(opts.epochs > 0, "train: --epochs must be positive, got ", opts.epochs);
  LOOM_CHECK(opts.batch_size > 0, "train: --batch-size must be positive, got ", opts.batch_size);
  LOOM_CHECK(opts.workers >= 0, "train: --workers must be >= 0, got ", opts.workers);
  LOOM_CHECK(opts.stop_after >= 0, "train: --stop-after must be >= 0, got ", opts.stop_after);
  LOOM_CHECK(opts.schedule == "cosine" || opts.schedule == "constant", "train: unknown --schedule '",
             opts.schedule, "' (known: cosine, constant)");
  if (opts.threads > 0) set_num_threads(opts.threads);
  // Note [Distributed loom train]: rank 0 alone logs, evaluates and saves.
  const Replica rep = replica();
  std::ostream& log = rep.writer() ? rank0_log : null_stream();
  // mpirun hands ranks a pseudo-terminal whatever its own output is: plain lines.
  interactive = interactive && rep.world == 1;
  LOOM_CHECK(!(opts.dist.enabled && opts.graph.compile), "train: --compile cannot be combined with --distributed: "
             "the gradient all-reduce is a collective, which a captured step cannot replay");
  MixedPrecision precision(opts.amp, opts.graph.compile, opts.dist.enabled && opts.dist.zero);
  const Device device = training_device(opts.device, opts.graph, opts.dist);
  const int64_t local_batch = rep.local_batch(opts.batch_size, "--batch-size");
  const TrainSettings settings = settings_of(opts);

  // A resume is checked before anything expensive happens.
  TrainCheckpoint resumed;
  if (!opts.resume.empty()) {
    resumed = load_checkpoint(opts.resume);
    try {
      check_resume_settings(opts.resume, resumed.settings, settings);
    } catch (const Error& e) {
      LOOM_ERROR("train: ", e.what());
    }
  }
  if (rep.writer()) create_parent_folder(opts.out);
  // Open the metrics file now, so a bad path fails before the first epoch.
  std::unique_ptr<MetricsWriter> metrics;
  if (!opts.metrics.empty() && rep.writer()) metrics = std::make_unique<MetricsWriter>(opts.metrics);

  auto train_set = load_split(opts.dataset, opts.data_dir, /*train=*/true, opts.train_limit);
  auto test_set = load_split(opts.dataset, opts.data_dir, /*train=*/false, opts.test_limit);
  const Normalization normalization = dataset_normalization(opts.dataset);
  data::DataLoaderOptions loader_opts = loader_options(local_batch, normalization);
  LOOM_CHECK(opts.random_crop >= 0, "train: --random-crop must be >= 0, got ", opts.random_crop);
  if (opts.random_crop > 0 || opts.hflip) {
    // Augmentations on the raw image, then the normalization.
    std::vector<data::Transform> steps;
    if (opts.random_crop > 0) {
      LOOM_CHECK(train_set->size() > 0, "train: --random-crop needs a non-empty training set");
      const Tensor image = train_set->get(0).data;  // (..., H, W): crop back to the image's own size
      steps.push_back(data::RandomCrop({image.size(-2), image.size(-1)}, opts.random_crop));
    }
    if (opts.hflip) steps.push_back(data::RandomHorizontalFlip());
    steps.push_back(loader_opts.transform);
    loader_opts.transform = data::Compose(std::move(steps));
  }
  if (opts.dist.enabled) {
    // Rank r takes every N-th example of the epoch's permutation, so the N
    // ranks' k-th batches together are the k-th global batch of one process.
    loader_opts.sampler = std::make_shared<data::DistributedSampler>(
        train_set->size(), rep.world, rep.rank, /*shuffle=*/true, opts.seed);
  } else {
    loader_opts.shuffle = true;
  }
  loader_opts.num_workers = opts.workers;
  loader_opts.seed = opts.seed;
  data::DataLoader loader(train_set, loader_opts);

  manual_seed(opts.seed);
  TrainResult result;
  result.model = make_model(opts.model);
  nn::Module& model = *result.model;
  model.to(device);  // before the optimizer makes state like the parameters
  DataParallelModel parallel(result.model, opts.dist);
  auto optimizer = distributed_optimizer(opts.dist, model.parameters(), [&](std::vector<optim::ParamGroup> groups) {
    return make_optimizer(settings, std::move(groups));
  });
  // Cosine decay from lr to 0, stepped after every batch (PyTorch's
  // CosineAnnealingLR with T_max = all the run's batches).
  std::unique_ptr<optim::LRScheduler> scheduler;
  if (opts.schedule == "cosine")
    scheduler = std::make_unique<optim::CosineAnnealingLR>(*optimizer, opts.epochs * loader.size());

  int64_t first_epoch = 1;
  if (!opts.resume.empty()) {
    LOOM_CHECK(resumed.normalization == normalization, "train: cannot resume from '", opts.resume,
               "': its inputs were normalized otherwise");
    try {
      model.load_state_dict(resumed.model_state, /*strict=*/true);
      optimizer->load_state_dict(resumed.optimizer_state);
      if (scheduler) scheduler->load_state_dict(resumed.scheduler_state);
    } catch (const Error& e) {
      LOOM_ERROR("train: cannot resume from '", opts.resume, "': ", e.what());
    }
    set_rng_state(resumed.rng);
    first_epoch = resumed.epoch + 1;
    result.last_epoch = resumed.epoch;
  }

  const int64_t n_train = train_set->size();
  log << "loom train: " << opts.model.name;
  if (opts.model.name == "mlp")
    log << " " << opts.model.in_features << "-"
        << (opts.model.hidden.empty() ? "" : join_ints(opts.model.hidden, '-') + "-") << opts.model.num_classes;
  log << " ("
      << model.num_parameters() << " parameters) on " << opts.dataset << ": " << n_train << " train / "
      << test_set->size() << " test images, batch " << opts.batch_size
      << (rep.world > 1 ? " (" + std::to_string(local_batch) + " on each of " + std::to_string(rep.world) + " ranks" +
                              (opts.dist.zero ? ", ZeRO-1" : "") + ")"
                        : "")
      << ", " << opts.optimizer << " lr "
      << opts.lr << (scheduler ? " (cosine decay)" : "") << ", " << precision.describe() << ", " << get_num_threads()
      << " threads\n";
  if (!opts.resume.empty())
    log << "resuming from '" << opts.resume << "' after epoch " << resumed.epoch << "\n";
  const int64_t last_epoch = opts.stop_after > 0 ? std::min(opts.stop_after, opts.epochs) : opts.epochs;
  if (first_epoch > last_epoch) {
    log << "nothing to train: the checkpoint has finished epoch " << resumed.epoch << " and this run stops after "
        << last_epoch << "\n";
    return result;
  }
  log << std::flush;

  // One training step: forward (checkpointed in sqrt(N) segments when asked,
  // unless the compiled recompute pass does it), loss, backward, update.
  const bool eager_checkpoint = opts.graph.checkpoint_activations && !opts.graph.compile;
  nn::Sequential chain(nullptr);
  if (eager_checkpoint) {
    auto seq = std::dynamic_pointer_cast<nn::SequentialImpl>(result.model);
    LOOM_CHECK(seq != nullptr, "train: --checkpoint-activations needs a Sequential model");
    chain = nn::Sequential(seq);
  }
  const int64_t segments =
      eager_checkpoint ? std::max<int64_t>(1, std::llround(std::sqrt(static_cast<double>(chain->size())))) : 0;
  TrainStep step(
      [&](const Tensor& x, const Tensor& y) {
        Tensor loss = precision.forward([&] {
          Tensor logits;  // (B, 10)
          if (eager_checkpoint) {
            parallel.before_forward();
            logits = nn::checkpoint_sequential(chain, segments, x);
          } else {
            logits = parallel.forward(x);
          }
          return F::cross_entropy(logits, y);
        });
        optimizer->zero_grad();
        precision.backward_and_step(loss, *optimizer);
        return loss;
      },
      opts.graph, log);

  const int width = interactive ? terminal_width() : 80;
  double train_seconds = 0;
  for (int64_t epoch = first_epoch; epoch <= last_epoch; ++epoch) {
    loader.set_epoch(epoch - 1);  // epoch e's order is a function of (seed, e): Note [Exact resume]
    model.train();
    EpochProgress progress(log, interactive, epoch, opts.epochs, loader.size(), width);
    double loss_sum = 0;
    int64_t batches = 0, samples = 0;
    for (data::Batch& b : loader) {
      Tensor loss = step(b.data.to(device), b.target.to(device));
      if (scheduler) scheduler->step();
      loss_sum += loss.item<double>();
      samples += b.target.size(0) * rep.world;  // every rank's batch is the same size
      ++batches;
      progress.update(batches, loss_sum / static_cast<double>(batches), samples);
    }
    const double seconds = progress.elapsed_seconds();
    progress.finish();
    train_seconds += seconds;

    const double train_loss = rep.mean(loss_sum / static_cast<double>(batches));
    EvalResult test;
    if (rep.writer()) test = evaluate(model, test_set, normalization);
    EpochMetrics m{epoch, train_loss, test.loss, test.accuracy, seconds, static_cast<double>(samples) / seconds};
    result.history.push_back(m);
    result.last_epoch = epoch;
    if (metrics) metrics->append(m);
    if (!opts.out.empty()) {
      nn::StateDict optimizer_state = optimizer->state_dict();  // every rank: ZeRO-1 gathers its shards
      if (rep.writer())
        save_checkpoint(opts.out, {settings, epoch, epoch * loader.size(), get_rng_state(), model.state_dict(),
                                   std::move(optimizer_state), scheduler ? scheduler->state_dict() : nn::StateDict{},
                                   normalization});
    }

    log << "epoch " << epoch << "/" << opts.epochs << ": train loss " << fixed(m.train_loss, 4) << ", test loss "
        << fixed(m.test_loss, 4) << ", test accuracy " << percent(m.test_acc) << "  (" << fixed(seconds, 1)
        << " s, " << fixed(m.samples_per_s, 0) << " samples/s)"
        << (opts.out.empty() ? "" : ", saved " + opts.out) << "\n"
        << std::flush;
  }
  step.report();
  const auto& last = result.history.back();
  log << "test accuracy " << percent(last.test_acc) << " after " << result.last_epoch
      << (result.last_epoch == 1 ? " epoch (" : " epochs (")
      << fixed(train_seconds / static_cast<double>(result.history.size()), 1) << " s per epoch)\n"
      << std::flush;
  return result;
}

EvalResult evaluate_checkpoint(const std::string& model_file, const std::string& data_dir, int64_t batch_size,
                               std::ostream& log) {
  LoadedModel loaded = load_model(model_file);
  auto test_set = load_split(loaded.dataset, data_dir, /*train=*/false, 0);
  log << "evaluating '" << model_file << "' (" << loaded.config.name << ", " << loaded.model->num_parameters()
      << " parameters) on " << test_set->size() << " " << loaded.dataset << " test images\n"
      << std::flush;
  return evaluate(*loaded.model, test_set, loaded.normalization, batch_size);
}

Prediction predict_checkpoint(const std::string& model_file, const std::string& data_dir, int64_t index) {
  LoadedModel loaded = load_model(model_file);
  nn::Module& model = *loaded.model;
  auto test_set = load_split(loaded.dataset, data_dir, /*train=*/false, 0);
  LOOM_CHECK(index >= 0 && index < test_set->size(), "predict: --index ", index,
             " is out of range: the test set has ", test_set->size(), " images (0..", test_set->size() - 1, ")");
  data::Example ex = test_set->get(index);
  if (!loaded.normalization.mean.empty()) {
    data::SampleGenerator unused(0);  // Normalize draws nothing
    ex = data::Normalize(loaded.normalization.mean, loaded.normalization.std)(ex, unused);
  }
  model.eval();
  NoGradGuard no_grad;
  Tensor probs = softmax(model.forward(ex.data.unsqueeze(0)), 1).squeeze(0);  // (classes)
  Prediction p;
  p.index = index;
  p.predicted = probs.argmax().item<int64_t>();
  p.probability = probs[p.predicted].item<double>();
  p.label = ex.target.item<int64_t>();
  const auto& names = data::fashion_mnist_classes();
  auto name_of = [&](int64_t c) {
    return c >= 0 && c < static_cast<int64_t>(names.size()) ? names[static_cast<size_t>(c)] : std::to_string(c);
  };
  p.predicted_name = name_of(p.predicted);
  p.label_name = name_of(p.label);
  return p;
}

}  // namespace loom::cli
