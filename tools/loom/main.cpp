// The `loom` command: train, eval, predict, generate and serve (see `loom --help`).
//
// Flags are parsed here with CLI11; the work lives in train.cpp and lm.cpp,
// and the flag rules (numeric checks, which flag applies to which model) in
// flags.cpp, all in loom_cli_lib, so tests call the same code. Every loom::Error (bad flag values, missing dataset, corrupt
// checkpoint) ends the program with "loom: error: ..." and exit code 1.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "flags.h"
#include "lm.h"
#include "progress.h"
#include "quantize.h"
#include "serve.h"
#include "train.h"

namespace {

using loom::cli::TrainOptions;

constexpr const char* kTextPrefix = "text:";

bool is_language_model(const std::string& model) { return model == "gpt" || model == "lstm"; }

void add_data_dir(CLI::App& cmd, std::string& dir) {
  cmd.add_option("--data-dir", dir,
                 "Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (OS package: dataset-fashion-mnist)")
      ->capture_default_str();
}

void add_threads(CLI::App& cmd, int& threads) {
  cmd.add_option("--threads", threads, "Threads for loom's kernels (0: one per core)")
      ->check(loom::cli::non_negative_integer(std::numeric_limits<int>::max()))
      ->capture_default_str();
}

void set_threads(int threads) {
  if (threads > 0) loom::set_num_threads(threads);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loom: train and run models with the loom deep-learning framework"};
  app.require_subcommand(1);
  app.footer("Run `loom <command> --help` for the flags of each command.");

  // ---- loom train ----
  TrainOptions topts;
  CLI::App* train = app.add_subcommand("train", "Train a model and write a checkpoint after every epoch");
  train->add_option("--device", topts.device, "Where to train: cpu, cuda or cuda:N")->capture_default_str();
  train->add_option("--model", topts.model.name, "Model to train")
      ->check(CLI::IsMember(loom::cli::train_models()))
      ->capture_default_str();
  train->add_option("--hidden", topts.model.hidden, "mlp: hidden layer widths, e.g. --hidden 512,256")
      ->delimiter(',')
      ->check(loom::cli::positive_integer())
      ->default_str("512,256");
  CLI::Option* o_dataset =
      train->add_option("--dataset", topts.dataset,
                        "fashion-mnist (mlp, cnn, resnet9) or text:PATH, a text file or a folder of fortune files "
                        "(gpt, lstm; default text:/usr/share/games/fortunes)")
          ->check([](const std::string& v) {
            return v == "fashion-mnist" || (v.rfind(kTextPrefix, 0) == 0 && v.size() > 5)
                       ? std::string()
                       : "expected fashion-mnist or text:PATH, got '" + v + "'";
          })
          ->capture_default_str();
  add_data_dir(*train, topts.data_dir);
  train->add_option("--epochs", topts.epochs, "mlp/cnn/resnet9: epochs to train (in total, counting resumed ones)")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  CLI::Option* o_batch = train->add_option("--batch-size", topts.batch_size, "Examples per batch (gpt/lstm: windows per step, default 16)")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--optimizer", topts.optimizer, "mlp/cnn/resnet9: adamw or sgd (language models: adamw)")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  CLI::Option* o_lr =
      train->add_option("--lr", topts.lr, "Learning rate")->check(loom::cli::positive_number())->capture_default_str();
  CLI::Option* o_schedule =
      train->add_option("--schedule", topts.schedule, "lr schedule: cosine (decay to 0 over all epochs, or --max-steps) or constant")
          ->check(CLI::IsMember({"cosine", "constant"}))
          ->capture_default_str();
  CLI::Option* o_wd = train->add_option("--weight-decay", topts.weight_decay,
                                      "Weight decay (default: 0.01 for adamw, 0 for sgd, as PyTorch)")
                        ->check(loom::cli::non_negative_number());
  train->add_option("--momentum", topts.momentum, "mlp/cnn/resnet9 with --optimizer sgd: momentum")
      ->check(loom::cli::non_negative_number())
      ->capture_default_str();
  train->add_option("--seed", topts.seed, "Seed for initialization and data order")
      ->check(loom::cli::unsigned_integer())
      ->capture_default_str();
  add_threads(*train, topts.threads);
  train->add_option("--workers", topts.workers, "mlp/cnn/resnet9: data-loading worker threads (0: load on the training thread)")
      ->check(loom::cli::non_negative_integer())
      ->capture_default_str();
  train->add_option("--stop-after", topts.stop_after,
                    "mlp/cnn/resnet9: stop after this epoch, as if interrupted (the schedule still spans --epochs); "
                    "continue later with --resume")
      ->check(loom::cli::non_negative_integer());
  CLI::Option* o_out = train->add_option("--out", topts.out,
                                         "Checkpoint written (atomically) after every epoch, or every --eval-every "
                                         "steps (default: runs/<model>.safetensors; '' for none)");
  train->add_option("--resume", topts.resume,
                    "mlp/cnn/resnet9: continue from this checkpoint (training settings not given here are taken "
                    "from it)")
      ->check(CLI::ExistingFile);
  train->add_option("--metrics", topts.metrics, "Append metrics (per epoch, or per report of a language model) to this .csv (or, "
                    "mlp/cnn/resnet9, .jsonl) file");
  train->add_option("--train-limit", topts.train_limit, "mlp/cnn/resnet9: train on the first N images only (0: all)")
      ->check(loom::cli::non_negative_integer());
  train->add_option("--random-crop", topts.random_crop,
                    "mlp/cnn/resnet9: augment, padding each training image by P pixels and cropping a random 28x28 "
                    "window (0: off)")
      ->check(loom::cli::non_negative_integer())
      ->capture_default_str();
  train->add_flag("--hflip", topts.hflip, "mlp/cnn/resnet9: augment, mirroring each training image with probability 1/2");
  train->add_option("--test-limit", topts.test_limit, "mlp/cnn/resnet9: evaluate on the first N test images only (0: all)")
      ->check(loom::cli::non_negative_integer());

  // Language models (--model gpt|lstm): sizes and the step loop.
  loom::cli::LmOptions lopts;
  train->add_option("--layers", lopts.layers, "gpt/lstm: transformer blocks or LSTM layers")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--d-model", lopts.d_model, "gpt: model width; lstm: hidden size")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--heads", lopts.heads, "gpt: attention heads")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--context", lopts.context, "gpt/lstm: tokens per training window (gpt: the context length)")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--dropout", lopts.dropout, "gpt/lstm: dropout")
      ->check(loom::cli::number_between(0.0, 0.99))
      ->capture_default_str();
  bool no_tie = false;
  train->add_flag("--no-tie", no_tie, "gpt: a separate output layer instead of the token embedding");
  train->add_option("--tokenizer", lopts.tokenizer, "gpt/lstm: char (UTF-8 characters of the text) or byte")
      ->check(CLI::IsMember({"char", "byte"}))
      ->capture_default_str();
  train->add_option("--max-steps", lopts.max_steps, "gpt/lstm: optimizer steps")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--eval-every", lopts.eval_every, "gpt/lstm: steps between validation reports and checkpoints")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--eval-batches", lopts.eval_batches, "gpt/lstm: validation batches per report")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  train->add_option("--grad-clip", lopts.grad_clip, "gpt/lstm: max gradient norm (0: off)")
      ->check(loom::cli::non_negative_number())
      ->capture_default_str();
  train
      ->add_flag("--compile{full}", topts.graph.compile_mode,
                 "Capture the training step once and replay it (loom::compile): one planned arena, no per-op dispatch; "
                 "fused elementwise kernels and independent kernels run side by side (--compile=plan: capture and "
                 "memory plan only)")
      ->check(CLI::IsMember({"full", "plan"}))
      ->each([&topts](const std::string&) { topts.graph.compile = true; });
  train->add_option("--amp", topts.amp,
                    "Mixed precision: bf16 (bfloat16 autocast) or fp16 (float16 autocast with a dynamic loss scale); "
                    "float32 parameters and optimizer state")
      ->check(CLI::IsMember({"bf16", "fp16", "off"}));
  train->add_flag("--checkpoint-activations", topts.graph.checkpoint_activations,
                  "Recompute activations in the backward instead of keeping them (eager: loom::checkpoint regions; "
                  "with --compile: the recompute pass, sqrt(N) segments)");
  train->add_option("--memory-budget-mb", topts.graph.memory_budget_mb,
                    "With --compile --checkpoint-activations: more segments until the step's arena fits (0: sqrt(N))")
      ->check(loom::cli::non_negative_number());
  train->add_option("--dump-graph", topts.graph.dump_graph, "With --compile: write the step's graph as Graphviz DOT");
  train->add_flag("--distributed", topts.dist.enabled,
                  "Run as one rank of `mpirun -np N loom train ...`: --batch-size is split over the ranks, gradients "
                  "are averaged (DistributedDataParallel), rank 0 prints and saves (alone: one rank)");
  train->add_flag("--zero", topts.dist.zero,
                  "With --distributed: shard the optimizer state over the ranks (ZeRO-1) instead of all-reducing "
                  "gradients");
  train->add_option("--timeout", topts.dist.timeout_s,
                    "With --distributed: seconds a rank waits for the others in a collective before the job ends with "
                    "an error")
      ->check(loom::cli::positive_number())
      ->capture_default_str();

  // ---- loom eval ----
  std::string eval_file, eval_dir = loom::cli::kFashionMnistDir;
  int64_t eval_batch = 1000;
  int eval_threads = 0;
  CLI::App* eval = app.add_subcommand("eval", "Test accuracy and loss of a checkpoint");
  eval->add_option("--model-file", eval_file, "Checkpoint written by `loom train`")
      ->required()
      ->check(CLI::ExistingFile);
  add_data_dir(*eval, eval_dir);
  eval->add_option("--batch-size", eval_batch, "Examples per batch")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  add_threads(*eval, eval_threads);
  std::string eval_text = loom::data::kFortunesDir;
  int64_t eval_windows = 200;
  eval->add_option("--text", eval_text, "Language models: the text they were trained on (its validation split is scored)")
      ->capture_default_str();
  eval->add_option("--windows", eval_windows, "Language models: context windows of the validation split to score")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();

  // ---- loom predict ----
  std::string pred_file, pred_dir = loom::cli::kFashionMnistDir;
  int64_t pred_index = 0;
  CLI::App* predict = app.add_subcommand("predict", "Classify one test image with a checkpoint");
  predict->add_option("--model-file", pred_file, "Checkpoint written by `loom train`")
      ->required()
      ->check(CLI::ExistingFile);
  predict->add_option("--index", pred_index, "Index of the test image (0-based)")
      ->required()
      ->check(loom::cli::non_negative_integer());
  add_data_dir(*predict, pred_dir);

  // ---- loom generate ----
  loom::cli::GenerateRequest greq;
  int gen_threads = 0;
  bool gen_no_cache = false;
  CLI::App* generate = app.add_subcommand("generate", "Continue a prompt with a language model trained by `loom train`");
  generate->add_option("--model-file", greq.model_file, "Checkpoint written by `loom train --model gpt|lstm`")
      ->required()
      ->check(CLI::ExistingFile);
  generate->add_option("--prompt", greq.prompt, "Text to continue (empty: start a new fortune)");
  generate->add_option("--max-new-tokens", greq.max_new_tokens, "Tokens to generate")
      ->check(loom::cli::non_negative_integer())
      ->capture_default_str();
  generate->add_option("--temperature", greq.temperature, "Sampling temperature (0: greedy)")
      ->check(loom::cli::non_negative_number())
      ->capture_default_str();
  generate->add_option("--top-k", greq.top_k, "Sample among the k most likely tokens (0: all)")
      ->check(loom::cli::non_negative_integer())
      ->capture_default_str();
  generate->add_option("--seed", greq.seed, "Seed of the sampler")
      ->check(loom::cli::unsigned_integer())
      ->capture_default_str();
  generate->add_flag("--no-cache", gen_no_cache, "Recompute the whole context for every token (no KV cache)");
  generate->add_option("--device", greq.device, "Where to run the model: cpu, cuda or cuda:N")->capture_default_str();
  add_threads(*generate, gen_threads);

  // ---- loom quantize ----
  std::string quant_in, quant_out, quant_scheme = "int8";
  CLI::App* quantize = app.add_subcommand(
      "quantize", "Quantize the Linear layers of a checkpoint for inference (int8 per channel, or int4 in groups of 32)");
  quantize->add_option("--model-file", quant_in, "Checkpoint written by `loom train`")
      ->required()
      ->check(CLI::ExistingFile);
  quantize->add_option("--scheme", quant_scheme, "int8 (per-channel weights, per-token activations) or int4")
      ->check(CLI::IsMember({"int8", "int4"}))
      ->capture_default_str();
  quantize->add_option("--out", quant_out, "Where to write the quantized checkpoint")->required();

  // ---- loom serve ----
  loom::cli::ServeOptions sopts;
  CLI::App* serve = app.add_subcommand(
      "serve",
      "Serve checkpoints over the Open Inference Protocol (KServe v2 REST) with dynamic batching, and GPTs also over "
      "OpenAI's API (/v1/completions, /v1/chat/completions) with continuous batching");
  serve->add_option("--model-repository", sopts.model_repository,
                    "Folder laid out as Triton's: <repo>/<model>/<version>/model.safetensors, optional "
                    "<repo>/<model>/config.json with batching options")
      ->check(CLI::ExistingDirectory);
  serve->add_option("--model", sopts.models, "NAME=FILE: serve a checkpoint of `loom train` as version 1 (repeatable)");
  serve->add_option("--host", sopts.host, "Address to listen on")->capture_default_str();
  serve->add_option("--port", sopts.port, "Port to listen on (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  add_threads(*serve, sopts.threads);
  serve->add_option("--http-threads", sopts.http_threads,
                    "Connections served at once (a keep-alive connection holds one while open)")
      ->check(loom::cli::positive_integer(1 << 16))
      ->capture_default_str();
  serve->add_option("--max-batch-size", sopts.max_batch_size,
                    "Rows one forward pass may batch from concurrent requests (1: each request alone)")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  serve->add_option("--max-queue-delay-us", sopts.max_queue_delay_us,
                    "Microseconds the oldest queued request may wait for a fuller batch")
      ->check(loom::cli::non_negative_integer())
      ->capture_default_str();
  serve->add_option("--max-queue-size", sopts.max_queue_size,
                    "Requests that may wait per model version; one more is answered 503 at once")
      ->check(loom::cli::positive_integer())
      ->capture_default_str();
  serve->add_option("--timeout-ms", sopts.timeout_ms,
                    "A request still queued after this many milliseconds is answered 503 (0: no limit)")
      ->check(loom::cli::non_negative_integer())
      ->capture_default_str();
  serve->add_option("--max-body-mb", sopts.max_body_mb, "Largest request body, in MiB (larger: 413)")
      ->check(loom::cli::positive_number())
      ->capture_default_str();
  // GPTs at /v1: each has an engine of its own (serve::EngineOptions).
  serve->add_option("--slots", sopts.llm.slots,
                    "GPTs at /v1: sequences that decode together, in one forward pass a step")
      ->check(loom::cli::positive_integer(1 << 16))
      ->capture_default_str();
  serve->add_option("--kv-cache-mb", sopts.llm.kv_cache_mb,
                    "GPTs at /v1: MiB of each model's paged KV cache (blocks of 16 positions); at least one full "
                    "context")
      ->check(loom::cli::positive_number())
      ->capture_default_str();
  serve->add_option("--prefill-chunk", sopts.llm.prefill_chunk,
                    "GPTs at /v1: prompt tokens prefilled per step, over all sequences (a long prompt waits its turn "
                    "in chunks rather than stalling the running streams)")
      ->check(loom::cli::positive_integer(1 << 20))
      ->capture_default_str();
  serve->add_option("--draft-model", sopts.llm.draft_model,
                    "GPTs at /v1: speculative decoding with this smaller GPT checkpoint (the same tokenizer) as the "
                    "draft")
      ->check(CLI::ExistingFile);
  serve->add_option("--draft-tokens", sopts.llm.draft_tokens,
                    "With --draft-model: tokens the draft proposes per sequence and step")
      ->check(loom::cli::positive_integer(64))
      ->capture_default_str();
  serve->add_option("--request-timeout-s", sopts.request_timeout_s,
                    "GPTs at /v1: a generation still running after this many seconds ends (504, or an error event "
                    "in its stream; 0: no limit)")
      ->check(loom::cli::non_negative_number())
      ->capture_default_str();

  // Note [Flags per model]: every flag of `loom train` must have a row.
  for (const CLI::Option* opt : train->get_options()) {
    const std::string name = opt->get_name();
    if (name != "--help" && !loom::cli::is_known_train_flag(name)) {
      std::cerr << "loom: internal error: `loom train` flag " << name << " has no row in tools/loom/flags.cpp\n";
      return 2;
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (train->parsed()) {
      std::vector<std::string> given;
      for (const CLI::Option* opt : train->get_options())
        if (opt->count() > 0) given.push_back(opt->get_name());
      auto was_given = [&](const std::string& flag) { return train->count(flag) > 0; };
      if (topts.optimizer == "sgd" && !o_wd->count()) topts.weight_decay = 0;
      if (!topts.resume.empty() && !is_language_model(topts.model.name)) {
        // Settings not given on the command line come from the checkpoint;
        // given ones must agree with it (train() checks).
        loom::cli::take_settings_not_given(loom::cli::load_checkpoint(topts.resume).settings, topts, was_given);
      }
      loom::cli::check_train_flags(topts.model.name, topts.optimizer, given);
      LOOM_CHECK(!topts.dist.zero || topts.dist.enabled, "train: --zero needs --distributed");
      if (!o_out->count()) topts.out = loom::cli::default_out(topts.model.name);
    }
    if (train->parsed() && (is_language_model(topts.model.name) ||
                            (o_dataset->count() && topts.dataset.rfind(kTextPrefix, 0) == 0))) {
      LOOM_CHECK(is_language_model(topts.model.name), "train: --dataset ", topts.dataset,
                 " is text: train a language model on it (--model gpt or lstm), not ", topts.model.name);
      LOOM_CHECK(!o_dataset->count() || topts.dataset.rfind(kTextPrefix, 0) == 0, "train: --model ",
                 topts.model.name, " is a language model: give it --dataset text:PATH, not ", topts.dataset);
      lopts.model = topts.model.name;
      if (o_dataset->count()) lopts.text = topts.dataset.substr(5);
      if (o_batch->count()) lopts.batch_size = topts.batch_size;
      if (o_lr->count()) lopts.lr = topts.lr;
      if (o_schedule->count()) lopts.schedule = topts.schedule;
      if (o_wd->count()) lopts.weight_decay = topts.weight_decay;
      lopts.tie_weights = !no_tie;
      lopts.seed = topts.seed;
      lopts.threads = topts.threads;
      lopts.device = topts.device;
      lopts.out = topts.out;
      lopts.metrics = topts.metrics;
      lopts.amp = topts.amp;
      lopts.graph = topts.graph;
      lopts.dist = topts.dist;
      loom::cli::start_distributed(topts.dist);
      loom::cli::train_lm(lopts, std::cout);
      loom::cli::stop_distributed();
    } else if (train->parsed()) {
      loom::cli::start_distributed(topts.dist);
      loom::cli::train(topts, std::cout, loom::cli::is_terminal(STDOUT_FILENO));
      loom::cli::stop_distributed();
    } else if (eval->parsed()) {
      set_threads(eval_threads);
      if (loom::io::load_safetensors(eval_file).metadata.count("loom.lm")) {
        auto r = loom::cli::evaluate_lm_checkpoint(eval_file, eval_text, eval_batch, eval_windows);
        std::printf("validation loss %.4f nats per token (%s, %lld windows of %lld tokens)\n", r.loss, r.kind.c_str(),
                    static_cast<long long>(r.windows), static_cast<long long>(r.context));
      } else {
        auto r = loom::cli::evaluate_checkpoint(eval_file, eval_dir, eval_batch, std::cout);
        std::printf("test accuracy %.2f%% (%lld images), test loss %.4f\n", 100 * r.accuracy,
                    static_cast<long long>(r.count), r.loss);
      }
    } else if (generate->parsed()) {
      set_threads(gen_threads);
      greq.use_cache = !gen_no_cache;
      auto g = loom::cli::generate_text(greq);
      std::cout << g.text << "\n" << std::flush;
      std::fprintf(stderr, "%lld tokens in %.2f s (%.1f tokens/s%s)\n", static_cast<long long>(g.new_tokens),
                   g.seconds, g.seconds > 0 ? static_cast<double>(g.new_tokens) / g.seconds : 0.0,
                   g.kind == "lstm" ? ", recurrent state" : greq.use_cache ? ", KV cache" : ", no cache");
    } else if (quantize->parsed()) {
      auto q = loom::cli::quantize_checkpoint(quant_in, loom::parse_quant_scheme(quant_scheme), quant_out);
      std::printf("quantized %lld Linear layers of the %s model to %s: %.2f MB -> %.2f MB of tensors, wrote %s\n",
                  static_cast<long long>(q.layers), q.kind.c_str(), quant_scheme.c_str(), q.bytes_before / 1e6,
                  q.bytes_after / 1e6, quant_out.c_str());
    } else if (serve->parsed()) {
      loom::cli::serve(sopts, std::cout);
    } else if (predict->parsed()) {
      auto p = loom::cli::predict_checkpoint(pred_file, pred_dir, pred_index);
      std::printf("test image %lld: predicted %s (class %lld, p=%.3f), true %s (class %lld)%s\n",
                  static_cast<long long>(p.index), p.predicted_name.c_str(), static_cast<long long>(p.predicted),
                  p.probability, p.label_name.c_str(), static_cast<long long>(p.label),
                  p.predicted == p.label ? "" : "  [wrong]");
    }
  } catch (const std::exception& e) {
    // loom::Error for user mistakes; anything else (std::bad_alloc, a
    // filesystem error) is reported the same way rather than aborting.
    std::cout.flush();
    // One rank of several: end every rank now (Note [Distributed loom train]).
    if (loom::distributed::get_world_size() > 1) loom::distributed::abort_job(std::string("error: ") + e.what());
    std::cerr << "loom: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
