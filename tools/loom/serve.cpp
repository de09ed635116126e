#include "serve.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <thread>

#include <loom/loom.h>

#include "checkpoint.h"
#include "lm.h"

namespace loom::cli {
namespace {

// mlp, cnn, resnet9: (n, 1, 28, 28) images -> class scores.
class ImageClassifier : public serve::Model {
 public:
  ImageClassifier(LoadedModel loaded) : loaded_(std::move(loaded)) {
    loaded_.model->eval();
    if (!loaded_.normalization.mean.empty())
      normalize_.emplace(loaded_.normalization.mean, loaded_.normalization.std);
    if (loaded_.dataset == "fashion-mnist") labels_ = data::fashion_mnist_classes();
  }

  std::vector<serve::TensorSpec> inputs() const override { return {{"input", "FP32", {-1, 1, 28, 28}}}; }
  std::vector<serve::TensorSpec> outputs() const override {
    const int64_t classes = loaded_.config.num_classes;
    return {{"logits", "FP32", {-1, classes}}, {"probabilities", "FP32", {-1, classes}}};
  }

  Tensor prepare(const std::string& name, const Tensor& value) const override {
    Tensor x;
    if (value.dtype() == kUInt8) {
      // Pixels 0..255, scaled exactly as the dataset loader scales them
      // (data/mnist.cpp), so a raw image gives the training inputs bit for bit.
      const Tensor u = value.contiguous();
      x = empty(u.sizes(), kFloat32);
      const uint8_t* src = u.data_ptr<uint8_t>();
      float* dst = x.data_ptr<float>();
      for (int64_t k = 0; k < u.numel(); ++k) dst[k] = static_cast<float>(src[k]) / 255.0f;
    } else {
      LOOM_CHECK(value.is_floating_point(), "input '", name, "' takes FP32 (or FP16, BF16, FP64, UINT8 pixels), not ",
                 value.dtype());
      x = value.to(kFloat32);
    }
    if (normalize_) {
      data::SampleGenerator unused(0);  // Normalize draws nothing
      x = (*normalize_)(data::Example{x, Tensor()}, unused).data;
    }
    return x;
  }

  std::map<std::string, Tensor> forward(const std::map<std::string, Tensor>& batch) override {
    Tensor logits = loaded_.model->forward(batch.at("input"));  // (N, classes)
    return {{"logits", logits}, {"probabilities", softmax(logits, 1)}};
  }

  std::vector<std::string> labels(const std::string&) const override { return labels_; }

 private:
  LoadedModel loaded_;
  std::optional<data::Normalize> normalize_;
  std::vector<std::string> labels_;
};

// gpt, lstm: (n, T) token ids -> (n, T, vocab) next-token logits. A GPT is
// also a TextGenerator: /v1 generates through its engine, which shares the
// weights with the KServe path (both only read them).
class LanguageModel : public serve::Model, public serve::TextGenerator {
 public:
  LanguageModel(LoadedLm lm, int64_t vocab, int64_t max_tokens)
      : lm_(std::move(lm)), vocab_(vocab), max_tokens_(max_tokens) {
    lm_.model->eval();
  }

  // A GPT's engine, stepping on its own thread from now on.
  void start_engine(serve::EngineOptions options) {
    engine_ = std::make_unique<serve::LlmEngine>(models::GPT(std::static_pointer_cast<models::GPTImpl>(lm_.model)),
                                                 std::move(options));
    engine_->start();
  }

  serve::TextGenerator* text_generator() override { return engine_ ? this : nullptr; }
  std::vector<int64_t> encode(const std::string& text) const override { return lm_.tokenizer->encode(text); }
  std::string decode(const std::vector<int64_t>& tokens) const override { return lm_.tokenizer->decode(tokens); }
  serve::LlmEngine& engine() override { return *engine_; }

  std::vector<serve::TensorSpec> inputs() const override { return {{"input_ids", "INT64", {-1, -1}}}; }
  std::vector<serve::TensorSpec> outputs() const override { return {{"logits", "FP32", {-1, -1, vocab_}}}; }

  Tensor prepare(const std::string& name, const Tensor& value) const override {
    LOOM_CHECK(value.dtype() == kInt64 || value.dtype() == kInt32 || value.dtype() == kUInt8, "input '", name,
               "' takes INT64 token ids (or another integer datatype), not ", value.dtype());
    const Tensor ids = value.to(kInt64).contiguous();  // (n, T)
    LOOM_CHECK(ids.size(1) >= 1, "input '", name, "' holds no tokens (shape [", ids.size(0), ",0])");
    LOOM_CHECK(max_tokens_ == 0 || ids.size(1) <= max_tokens_, "input '", name, "' holds ", ids.size(1),
               " tokens, more than the model's context of ", max_tokens_);
    const int64_t* p = ids.data_ptr<int64_t>();
    for (int64_t k = 0; k < ids.numel(); ++k)
      LOOM_CHECK(p[k] >= 0 && p[k] < vocab_, "input '", name, "': token id ", p[k], " at position ", k,
                 " is outside the vocabulary [0, ", vocab_, ")");
    return ids;
  }

  std::map<std::string, Tensor> forward(const std::map<std::string, Tensor>& batch) override {
    return {{"logits", lm_.model->forward(batch.at("input_ids"))}};
  }

 private:
  LoadedLm lm_;
  int64_t vocab_, max_tokens_;  // max_tokens_ 0: no limit (recurrent)
  std::unique_ptr<serve::LlmEngine> engine_;  // gpt only; stops (joins its thread) first
};

// The engine options of a served GPT, its draft model loaded and checked.
serve::EngineOptions engine_options(const LlmServeOptions& o, const std::string& file, const LoadedLm& target) {
  serve::EngineOptions e;
  e.slots = o.slots;
  e.kv_cache_mb = o.kv_cache_mb;
  e.prefill_chunk = o.prefill_chunk;
  e.draft_tokens = o.draft_tokens;
  if (!o.draft_model.empty()) {
    LoadedLm draft = load_lm(o.draft_model);
    LOOM_CHECK(draft.kind == "gpt", "serve: --draft-model '", o.draft_model, "' is a ", draft.kind,
               " checkpoint; the draft must be a GPT");
    LOOM_CHECK(draft.tokenizer->to_json() == target.tokenizer->to_json(), "serve: --draft-model '", o.draft_model,
               "' has another tokenizer than '", file, "' (", draft.tokenizer->name(), " of ",
               draft.tokenizer->vocab_size(), " tokens against ", target.tokenizer->name(), " of ",
               target.tokenizer->vocab_size(),
               "): train the draft on the same text with the same --tokenizer");
    draft.model->eval();
    e.draft = models::GPT(std::static_pointer_cast<models::GPTImpl>(draft.model));
  }
  return e;
}

}  // namespace

std::shared_ptr<serve::Model> load_served_model(const std::string& file, const LlmServeOptions& llm) {
  const SafetensorsFile f = load_safetensors(file);
  if (f.metadata.count("loom.lm")) {
    LoadedLm lm = load_lm(file);
    if (lm.kind == "gpt") {
      const models::GPTConfig cfg = static_cast<models::GPTImpl&>(*lm.model).config;
      serve::EngineOptions options = engine_options(llm, file, lm);
      auto served = std::make_shared<LanguageModel>(std::move(lm), cfg.vocab_size, cfg.block_size);
      served->start_engine(std::move(options));
      return served;
    }
    const int64_t vocab = static_cast<models::LSTMLMImpl&>(*lm.model).config.vocab_size;
    return std::make_shared<LanguageModel>(std::move(lm), vocab, 0);  // KServe only: no paged cache for an LSTM
  }
  LOOM_CHECK(f.metadata.count("loom.model"), "serve: '", file,
             "' is not a checkpoint of `loom train` (no \"loom.model\" or \"loom.lm\" metadata)");
  return std::make_shared<ImageClassifier>(load_model(file));
}

serve::ServerOptions server_options(const ServeOptions& o) {
  serve::ServerOptions s;
  s.host = o.host;
  s.port = o.port;
  s.model_repository = o.model_repository;
  for (const std::string& m : o.models) {
    const size_t eq = m.find('=');
    LOOM_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < m.size(), "serve: --model takes NAME=FILE, got '", m,
               "'");
    const std::string name = m.substr(0, eq);
    LOOM_CHECK(name.find('/') == std::string::npos, "serve: model name '", name, "' may not contain '/'");
    for (const auto& [other, file] : s.models)
      LOOM_CHECK(other != name, "serve: --model ", name, " is given twice");
    s.models.emplace_back(name, m.substr(eq + 1));
  }
  LOOM_CHECK(!s.model_repository.empty() || !s.models.empty(),
             "serve: give --model-repository DIR or --model NAME=FILE");
  LOOM_CHECK(o.llm.draft_model.empty() || std::filesystem::is_regular_file(o.llm.draft_model),
             "serve: --draft-model '", o.llm.draft_model, "' is not a file");
  s.loader = [llm = o.llm](const std::string& file) { return load_served_model(file, llm); };
  LOOM_CHECK(o.request_timeout_s >= 0, "serve: --request-timeout-s must be >= 0, got ", o.request_timeout_s);
  s.generation_timeout_s = o.request_timeout_s;
  s.batching.max_batch_size = o.max_batch_size;
  s.batching.max_queue_delay_us = o.max_queue_delay_us;
  s.batching.max_queue_size = o.max_queue_size;
  LOOM_CHECK(o.timeout_ms >= 0, "serve: --timeout-ms must be >= 0, got ", o.timeout_ms);
  s.batching.timeout_us = o.timeout_ms * 1000;
  s.http_threads = o.http_threads;
  LOOM_CHECK(o.max_body_mb > 0 && o.max_body_mb <= 1 << 20, "serve: --max-body-mb must be in (0, 1048576], got ",
             o.max_body_mb);
  s.max_body_bytes = static_cast<int64_t>(std::llround(o.max_body_mb * (1 << 20)));
  return s;
}

void serve(const ServeOptions& o, std::ostream& log) {
  // Note [Serving signals]: SIGINT and SIGTERM are blocked in this thread
  // before any other starts (the server's, loom's pool, OpenMP's), so every
  // thread inherits the mask and the signal waits for sigwait below instead
  // of killing the process mid-request.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not the end of the server

  if (o.threads > 0) set_num_threads(o.threads);
  serve::Server server(server_options(o));
  log << "loom serve: listening on http://" << o.host << ":" << server.port() << " (" << get_num_threads()
      << " compute threads, " << o.http_threads << " HTTP threads)" << std::endl;

  std::atomic<bool> finished{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (finished) return;  // run() ended on its own and woke this thread
    log << "loom serve: " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
        << ": answering the requests in flight, then stopping" << std::endl;
    server.stop();
  });
  auto end_waiter = [&] {
    finished = true;
    pthread_kill(waiter.native_handle(), SIGTERM);  // blocked here, so it waits for that sigwait
    waiter.join();
  };
  try {
    server.run();
  } catch (...) {
    end_waiter();
    throw;
  }
  end_waiter();
  log << "loom serve: stopped" << std::endl;
}

}  // namespace loom::cli
