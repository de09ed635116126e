#include "lm.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include <loom/serve/engine.h>

#include "flags.h"
#include "mixed_precision.h"
#include "quantize.h"
#include "train.h"

namespace loom::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

Tensor lm_loss(nn::Module& model, const std::string& kind, const Tensor& x, const Tensor& y) {
  if (kind == "gpt") return static_cast<models::GPTImpl&>(model).loss(x, y);
  return static_cast<models::LSTMLMImpl&>(model).loss(x, y);
}

// Mean loss per token over `count` windows spread evenly over ids.
double evaluate_lm(nn::Module& model, const std::string& kind, const data::TextDataset& val, int64_t batch,
                   int64_t count) {
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  const int64_t last = val.ids().numel() - val.context_length() - 1;
  std::vector<int64_t> all(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i)
    all[static_cast<size_t>(i)] = count == 1 ? 0 : static_cast<int64_t>(static_cast<double>(i) * last / (count - 1));
  double sum = 0;
  const std::vector<Tensor> params = model.parameters();
  const Device device = params.empty() ? Device::cpu() : params.front().device();
  for (int64_t i = 0; i < count; i += batch) {
    const std::vector<int64_t> part(all.begin() + i, all.begin() + std::min(count, i + batch));
    const data::Batch b = val.windows(part);
    sum += lm_loss(model, kind, b.data.to(device), b.target.to(device)).item<double>() *
           static_cast<double>(part.size());
  }
  model.train(was_training);
  return sum / static_cast<double>(count);
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

const std::string& meta(const std::map<std::string, std::string>& m, const std::string& key, const std::string& file) {
  auto it = m.find(key);
  LOOM_CHECK(it != m.end(), "generate: '", file, "' is not a language-model checkpoint of `loom train`: its metadata has no \"",
             key, "\"");
  return it->second;
}

}  // namespace

LmResult train_lm(const LmOptions& o, std::ostream& rank0_log) {
  LOOM_CHECK(o.model == "gpt" || o.model == "lstm", "train: --model '", o.model,
             "' is not a language model (known: gpt, lstm)");
  LOOM_CHECK(o.batch_size > 0 && o.max_steps > 0 && o.eval_every > 0 && o.eval_batches > 0 && o.context > 0,
             "train: --batch-size, --max-steps, --eval-every, --eval-batches and --context must be positive");
  LOOM_CHECK(o.lr > 0 && o.weight_decay >= 0 && o.grad_clip >= 0, "train: --lr must be positive and --weight-decay, "
             "--grad-clip >= 0");
  LOOM_CHECK(o.schedule == "cosine" || o.schedule == "constant", "train: unknown --schedule '", o.schedule,
             "' (known: cosine, constant)");
  if (o.threads > 0) set_num_threads(o.threads);
  // Note [Distributed loom train]: rank 0 alone logs, evaluates and saves.
  const Replica rep = replica();
  std::ostream& log = rep.writer() ? rank0_log : null_stream();
  LOOM_CHECK(!(o.dist.enabled && o.graph.compile), "train: --compile cannot be combined with --distributed: "
             "the gradient all-reduce is a collective, which a captured step cannot replay");
  MixedPrecision precision(o.amp, o.graph.compile, o.dist.enabled && o.dist.zero);
  const Device device = training_device(o.device, o.graph, o.dist);
  rep.local_batch(o.batch_size, "--batch-size");
  data::TextCorpus corpus = data::load_text_corpus(o.text, o.context, o.tokenizer, o.val_fraction);
  const int64_t vocab = corpus.tokenizer->vocab_size();
  // Batches: Note [Next-token batches]; validation: a fixed spread of windows.
  const data::TextDataset train_windows(corpus.train_ids, o.context), val_windows(corpus.val_ids, o.context);
  if (rep.writer()) create_parent_folder(o.out);

  manual_seed(o.seed);
  LmResult result;
  result.tokenizer = corpus.tokenizer;
  std::map<std::string, std::string> metadata = {{"loom.lm", o.model}, {"loom.tokenizer", corpus.tokenizer->to_json()}};
  if (o.model == "gpt") {
    models::GPTConfig c{.n_layer = o.layers, .n_embd = o.d_model, .n_head = o.heads, .block_size = o.context,
                        .vocab_size = vocab, .dropout = o.dropout, .bias = true, .tie_weights = o.tie_weights};
    result.model = models::GPT(c).ptr();
    metadata["loom.lm.config"] = models::gpt_config_to_json(c);
  } else {
    models::LSTMLMConfig c{.vocab_size = vocab, .embed = 0, .hidden = o.d_model, .layers = o.layers,
                           .dropout = o.dropout};
    result.model = models::LSTMLM(c).ptr();
    metadata["loom.lm.config"] = models::lstm_lm_config_to_json(c);
  }
  nn::Module& model = *result.model;
  model.to(device);  // before the optimizer makes state like the parameters
  DataParallelModel parallel(result.model, o.dist);
  auto opt = distributed_optimizer(o.dist, model.parameters(), [&](std::vector<optim::ParamGroup> groups) {
    return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  });
  // With ZeRO-1 the gradients are averaged inside step(), so it clips there.
  auto* zero = dynamic_cast<optim::ZeroRedundancyOptimizer*>(opt.get());
  if (zero != nullptr) zero->set_max_grad_norm(o.grad_clip);
  std::unique_ptr<optim::LRScheduler> sched;
  if (o.schedule == "cosine") sched = std::make_unique<optim::CosineAnnealingLR>(*opt, o.max_steps);
  std::ofstream metrics;
  if (!o.metrics.empty() && rep.writer()) {
    const bool fresh = !std::ifstream(o.metrics).good();
    metrics.open(o.metrics, std::ios::app);
    LOOM_CHECK(metrics.good(), "train: cannot open --metrics file '", o.metrics, "'");
    if (fresh) metrics << "step,train_loss,val_loss,seconds\n" << std::flush;
  }

  const int64_t n_train = corpus.train_ids.numel();
  log << "loom train: " << o.model << " (" << model.num_parameters() << " parameters) on " << o.text << ": "
      << corpus.num_bytes << " bytes, " << o.tokenizer << " tokenizer of " << vocab << " tokens, " << n_train
      << " train / " << corpus.val_ids.numel() << " val tokens; context " << o.context << ", batch "
      << o.batch_size
      << (rep.world > 1 ? " (" + std::to_string(o.batch_size / rep.world) + " on each of " +
                              std::to_string(rep.world) + " ranks" + (zero ? ", ZeRO-1" : "") + ")"
                        : "")
      << ", adamw lr " << o.lr << (sched ? " (cosine decay)" : "") << ", " << precision.describe() << ", "
      << get_num_threads()
      << " threads\n"
      << std::flush;

  model.train();
  double train_seconds = 0, loss_sum = 0;
  int64_t loss_count = 0;
  const std::vector<Tensor> params = model.parameters();
  // Eager checkpointing: each GPT half-block (the LSTM) is a loom::checkpoint
  // region; compiled, the recompute pass does it instead.
  if (o.graph.checkpoint_activations && !o.graph.compile) {
    if (o.model == "gpt") static_cast<models::GPTImpl&>(model).set_checkpoint_activations(true);
    else static_cast<models::LSTMLMImpl&>(model).set_checkpoint_activations(true);
  }
  TrainStep train_step(
      [&](const Tensor& x, const Tensor& y) {
        parallel.before_forward();
        Tensor loss = precision.forward([&] { return lm_loss(model, o.model, x, y); });
        opt->zero_grad();
        precision.backward_and_step(loss, *opt, [&] {
          if (o.grad_clip > 0 && zero == nullptr) nn::utils::clip_grad_norm_tensor_(params, o.grad_clip);
        });
        return loss;
      },
      o.graph, log);
  for (int64_t step = 1; step <= o.max_steps; ++step) {
    const auto t0 = Clock::now();
    const data::Batch batch = train_windows.random_batch(o.batch_size, o.seed, step);  // (B, T) each
    Tensor loss = train_step(rep.slice(batch.data).to(device), rep.slice(batch.target).to(device));  // this rank's rows
    if (sched) sched->step();
    loss_sum += loss.item<double>();
    ++loss_count;
    train_seconds += seconds_since(t0);
    if (step % o.eval_every != 0 && step != o.max_steps) continue;
    LmPoint p{step, rep.mean(loss_sum / static_cast<double>(loss_count)),
              rep.writer() ? evaluate_lm(model, o.model, val_windows, o.batch_size, o.eval_batches * o.batch_size)
                           : 0.0,
              train_seconds};
    loss_sum = 0;
    loss_count = 0;
    result.history.push_back(p);
    if (metrics.is_open())
      metrics << p.step << "," << fixed(p.train_loss, 6) << "," << fixed(p.val_loss, 6) << "," << fixed(p.seconds, 3)
              << "\n"
              << std::flush;
    if (!o.out.empty() && rep.writer()) {
      metadata["loom.lm.step"] = std::to_string(step);
      save_safetensors(o.out, model.state_dict(), metadata);
    }
    const double tokens = static_cast<double>(step * o.batch_size * o.context);
    log << "step " << step << "/" << o.max_steps << ": train loss " << fixed(p.train_loss, 4) << ", val loss "
        << fixed(p.val_loss, 4) << " nats per " << (o.tokenizer == "char" ? "character" : "byte") << " ("
        << fixed(p.val_loss / std::log(2.0), 3) << " bits)  " << fixed(tokens / train_seconds, 0) << " tokens/s"
        << (o.out.empty() ? "" : ", saved " + o.out) << "\n"
        << std::flush;
  }
  train_step.report();
  return result;
}

LoadedLm load_lm(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  LoadedLm l;
  l.kind = meta(f.metadata, "loom.lm", path);
  const std::string& config = meta(f.metadata, "loom.lm.config", path);
  l.tokenizer = data::tokenizer_from_json(meta(f.metadata, "loom.tokenizer", path));
  if (l.kind == "gpt") {
    l.model = models::GPT(models::gpt_config_from_json(config)).ptr();
  } else {
    LOOM_CHECK(l.kind == "lstm", "generate: '", path, "' holds an unknown model \"", l.kind, "\" (known: gpt, lstm)");
    l.model = models::LSTMLM(models::lstm_lm_config_from_json(config)).ptr();
  }
  quantize_as_saved(*l.model, f.metadata, path);
  try {
    l.model->load_state_dict(f.tensors, /*strict=*/true);
  } catch (const Error& e) {
    LOOM_ERROR("generate: cannot load the weights of '", path, "': ", e.what());
  }
  auto it = f.metadata.find("loom.lm.step");
  if (it != f.metadata.end()) l.step = std::stoll(it->second);
  return l;
}

LmEvalResult evaluate_lm_checkpoint(const std::string& path, const std::string& text, int64_t batch_size,
                                    int64_t windows) {
  LOOM_CHECK(batch_size > 0 && windows > 0, "eval: --batch-size and --windows must be positive");
  LoadedLm l = load_lm(path);
  LmEvalResult r;
  r.kind = l.kind;
  r.context = l.kind == "gpt" ? static_cast<models::GPTImpl&>(*l.model).config.block_size : 128;
  const data::TextCorpus corpus = data::load_text_corpus(text, r.context, l.tokenizer->name());
  LOOM_CHECK(corpus.tokenizer->to_json() == l.tokenizer->to_json(), "eval: the text '", text,
             "' gives another vocabulary than the one '", path, "' was trained with");
  const data::TextDataset val(corpus.val_ids, r.context);
  r.windows = windows;
  r.loss = evaluate_lm(*l.model, l.kind, val, batch_size, windows);
  return r;
}

namespace {

// A GPT continuation that fits the model's context runs through the
// serving engine (one slot, a paged cache of one context), so `loom
// generate` gives exactly the tokens `loom serve` gives for the same
// prompt, temperature, top_k and seed. Longer ones slide the context
// window over the sequence (GPT::generate), which a paged cache cannot.
std::vector<int64_t> generate_paged(models::GPT gpt, const std::vector<int64_t>& prompt, const GenerateRequest& r) {
  const int64_t block = 16;
  const int64_t blocks = (gpt->config.block_size + block - 1) / block;
  const double mb = (static_cast<double>(blocks) + 0.5) * static_cast<double>(gpt->paged_block_bytes(block)) / (1 << 20);
  serve::LlmEngine engine(gpt, {.slots = 1, .kv_cache_mb = mb, .block_size = block});
  std::vector<int64_t> out = prompt;
  bool done = false;
  serve::SamplingParams params;
  params.max_tokens = r.max_new_tokens;
  params.temperature = r.temperature;
  params.top_k = r.top_k;
  params.seed = r.seed;
  engine.submit(prompt, params, [&](const serve::TokenEvent& e) {
    out.insert(out.end(), e.tokens.begin(), e.tokens.end());
    done = done || e.finish != serve::FinishReason::None;
  });
  while (!done && engine.step()) {
  }
  LOOM_CHECK(done, "generate: the engine stopped before the continuation ended");
  return out;
}

}  // namespace

GenerateResult generate_text(const GenerateRequest& r) {
  LOOM_CHECK(r.max_new_tokens >= 0, "generate: --max-new-tokens must be >= 0, got ", r.max_new_tokens);
  LOOM_CHECK(r.temperature >= 0, "generate: --temperature must be >= 0, got ", r.temperature);
  LOOM_CHECK(r.top_k >= 0, "generate: --top-k must be >= 0, got ", r.top_k);
  LoadedLm l = load_lm(r.model_file);
  std::vector<int64_t> ids;
  try {
    ids = l.tokenizer->encode(r.prompt);
  } catch (const Error& e) {
    LOOM_ERROR("generate: the prompt cannot be encoded with the model's tokenizer: ", e.what());
  }
  if (ids.empty()) {
    // No prompt: start from a newline (a document boundary), or token 0.
    std::vector<int64_t> nl;
    try {
      nl = l.tokenizer->encode("\n");
    } catch (const Error&) {
    }
    ids = nl.empty() ? std::vector<int64_t>{0} : nl;
  }
  const models::GenerateOptions go{.temperature = r.temperature, .top_k = r.top_k, .seed = r.seed,
                                   .use_cache = r.use_cache};
  const Device device = parse_device("--device", r.device);
  l.model->to(device);
  const Tensor prompt = tensor(ids, kInt64).to(device);
  const auto t0 = Clock::now();
  std::vector<int64_t> all;
  const bool gpt = l.kind == "gpt";
  const int64_t context = gpt ? static_cast<models::GPTImpl&>(*l.model).config.block_size : 0;
  // The paged engine (LlmEngine) keeps its KV cache in CPU blocks; on a GPU
  // the model's own cache serves.
  if (gpt && device.is_cpu() && r.use_cache && r.max_new_tokens > 0 &&
      static_cast<int64_t>(ids.size()) + r.max_new_tokens <= context) {
    all = generate_paged(models::GPT(std::static_pointer_cast<models::GPTImpl>(l.model)), ids, r);
  } else {
    const Tensor out = gpt ? static_cast<models::GPTImpl&>(*l.model).generate(prompt, r.max_new_tokens, go)
                           : static_cast<models::LSTMLMImpl&>(*l.model).generate(prompt, r.max_new_tokens, go);
    all = out.to_vector<int64_t>();
  }
  GenerateResult g;
  g.kind = l.kind;
  g.seconds = seconds_since(t0);
  g.new_tokens = static_cast<int64_t>(all.size() - ids.size());
  std::vector<int64_t> shown = all;
  if (r.prompt.empty()) shown.erase(shown.begin(), shown.begin() + static_cast<std::ptrdiff_t>(ids.size()));
  g.text = l.tokenizer->decode(shown);
  return g;
}

}  // namespace loom::cli
