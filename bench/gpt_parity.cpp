// loom's side of the GPT training parity check (bench/gpt_parity.py, which
// runs this program and then the same training in PyTorch):
//
//   gpt_parity --out DIR [--steps 300] [--eval-every 100] [--eval-batches 8]
//              [--batch 16] [--seed 1337] [--lr 3e-4] [--threads N]
//
// Reads the fortunes corpus with the character tokenizer, splits it 90/10,
// builds the GPT (4 layers, d_model 256, 4 heads, context 128, no dropout,
// tied head) from seed --seed, and writes everything the PyTorch side needs
// to train the very same model on the very same batches:
//   DIR/train_ids.bin, DIR/val_ids.bin  token ids, int64 little-endian
//   DIR/init.safetensors                the initial weights (nanoGPT names),
//                                       metadata "config" (gpt_config_to_json)
// then trains --steps AdamW steps and writes the curves to DIR/loom.json
// (validation loss at step 0, every --eval-every steps and the last; the
// training loss and the seconds of every step).
//
// Batches (Note [Parity batches]) are drawn by splitmix64, which
// gpt_parity.py implements too, so the data order needs no file of its own.
#include <loom/loom.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

using loom::Tensor;

// Note [Parity batches]
// Training batch rows start at splitmix64(seed) % (N_train - T), one draw per
// row, rows in order, steps in order: row r of step s is the window
// ids[o, o + T) with targets ids[o + 1, o + T + 1). Validation is a fixed set
// of eval_batches * batch windows spread evenly over the validation ids
// (window j starts at j * (N_val - T - 1) / (count - 1), integer division),
// the same at every evaluation; the reported loss is the mean of the batches'
// mean losses. bench/torch_gpt.py's SplitMix64 and gpt_parity.py's
// val_offsets repeat this exactly.

struct Options {
  std::string out;
  int64_t steps = 300, eval_every = 100, eval_batches = 8, batch = 16;
  uint64_t seed = 1337;
  double lr = 3e-4;
  int threads = 0;  // 0: loom's default
};

// (x, y), each (B, T) int64: the windows starting at `offsets` of `ids`.
std::pair<Tensor, Tensor> windows(const std::vector<int64_t>& ids, const std::vector<int64_t>& offsets, int64_t t) {
  std::vector<int64_t> x, y;
  x.reserve(offsets.size() * static_cast<size_t>(t));
  y.reserve(x.capacity());
  for (int64_t o : offsets) {
    x.insert(x.end(), ids.begin() + o, ids.begin() + o + t);
    y.insert(y.end(), ids.begin() + o + 1, ids.begin() + o + t + 1);
  }
  const int64_t rows = static_cast<int64_t>(offsets.size());
  return {loom::tensor(x, loom::kInt64).reshape({rows, t}), loom::tensor(y, loom::kInt64).reshape({rows, t})};
}

void write_ids(const std::string& path, const std::vector<int64_t>& ids) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * sizeof(int64_t)));
  LOOM_CHECK(f.good(), "gpt_parity: cannot write ", path);
}

// Mean over the validation batches of each batch's mean cross entropy.
double val_loss(loom::models::GPT& gpt, const std::vector<int64_t>& val, const Options& o, int64_t t) {
  loom::NoGradGuard no_grad;
  gpt->eval();
  const int64_t count = o.eval_batches * o.batch, span = static_cast<int64_t>(val.size()) - t - 1;
  double total = 0;
  for (int64_t e = 0; e < o.eval_batches; ++e) {
    std::vector<int64_t> offsets;
    for (int64_t r = 0; r < o.batch; ++r) {
      const int64_t j = e * o.batch + r;
      offsets.push_back(count > 1 ? j * span / (count - 1) : 0);
    }
    auto [x, y] = windows(val, offsets, t);
    total += gpt->loss(x, y).item<double>();
  }
  gpt->train();
  return total / static_cast<double>(o.eval_batches);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    LOOM_CHECK(k + 1 < argc, "gpt_parity: ", a, " needs a value");
    const char* v = argv[++k];
    if (a == "--out") o.out = v;
    else if (a == "--steps") o.steps = std::atoll(v);
    else if (a == "--eval-every") o.eval_every = std::atoll(v);
    else if (a == "--eval-batches") o.eval_batches = std::atoll(v);
    else if (a == "--batch") o.batch = std::atoll(v);
    else if (a == "--seed") o.seed = std::strtoull(v, nullptr, 10);
    else if (a == "--lr") o.lr = std::atof(v);
    else if (a == "--threads") o.threads = std::atoi(v);
    else LOOM_CHECK(false, "gpt_parity: unknown flag ", a);
  }
  LOOM_CHECK(!o.out.empty(), "gpt_parity: --out DIR is required");
  LOOM_CHECK(o.steps >= 0 && o.eval_every > 0 && o.eval_batches > 0 && o.batch > 0,
             "gpt_parity: --steps must be >= 0 and --eval-every, --eval-batches, --batch positive");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (o.threads > 0) loom::set_num_threads(o.threads);
    constexpr int64_t kContext = 128;
    loom::data::TextCorpus corpus = loom::data::load_text_corpus(loom::data::kFortunesDir, kContext, "char", 0.1);
    const std::vector<int64_t> train = corpus.train_ids.contiguous().to_vector<int64_t>();
    const std::vector<int64_t> val = corpus.val_ids.contiguous().to_vector<int64_t>();
    write_ids(o.out + "/train_ids.bin", train);
    write_ids(o.out + "/val_ids.bin", val);

    const loom::models::GPTConfig cfg{.n_layer = 4, .n_embd = 256, .n_head = 4, .block_size = kContext,
                                      .vocab_size = corpus.tokenizer->vocab_size(), .dropout = 0.0};
    loom::manual_seed(o.seed);
    loom::models::GPT gpt(cfg);
    loom::io::save_safetensors(o.out + "/init.safetensors", gpt->state_dict(),
                               {{"config", loom::models::gpt_config_to_json(cfg)}});
    loom::optim::AdamW optimizer(gpt->parameters(), loom::optim::AdamWOptions(o.lr));
    std::fprintf(stderr, "loom: vocab %lld, %lld train / %lld val tokens, %lld parameters, %d threads\n",
                 static_cast<long long>(cfg.vocab_size), static_cast<long long>(train.size()),
                 static_cast<long long>(val.size()), static_cast<long long>(gpt->num_parameters()),
                 loom::get_num_threads());

    uint64_t rng = o.seed;  // loom::splitmix64_next's stream
    const uint64_t span = train.size() - static_cast<uint64_t>(kContext);
    std::vector<std::pair<int64_t, double>> evals{{0, val_loss(gpt, val, o, kContext)}};
    std::vector<double> train_losses, step_seconds;
    std::fprintf(stderr, "loom: step 0 val %.4f\n", evals.back().second);
    for (int64_t step = 1; step <= o.steps; ++step) {
      std::vector<int64_t> offsets;
      for (int64_t r = 0; r < o.batch; ++r) offsets.push_back(static_cast<int64_t>(loom::splitmix64_next(rng) % span));
      auto [x, y] = windows(train, offsets, kContext);
      const auto start = std::chrono::steady_clock::now();
      Tensor loss = gpt->loss(x, y);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      train_losses.push_back(loss.item<double>());
      step_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      if (step % o.eval_every == 0 || step == o.steps) {
        evals.emplace_back(step, val_loss(gpt, val, o, kContext));
        std::fprintf(stderr, "loom: step %lld train %.4f val %.4f\n", static_cast<long long>(step),
                     train_losses.back(), evals.back().second);
      }
    }

    // {"side": "loom", "vocab_size", "steps", "val": [[step, loss], ...],
    //  "train_loss": [...], "step_seconds": [...]}
    std::ofstream f(o.out + "/loom.json");
    f.precision(9);
    f << "{\"side\": \"loom\", \"vocab_size\": " << cfg.vocab_size << ", \"steps\": " << o.steps
      << ", \"threads\": " << loom::get_num_threads() << ", \"val\": [";
    for (size_t i = 0; i < evals.size(); ++i) f << (i ? ", " : "") << "[" << evals[i].first << ", " << evals[i].second << "]";
    f << "], \"train_loss\": [";
    for (size_t i = 0; i < train_losses.size(); ++i) f << (i ? ", " : "") << train_losses[i];
    f << "], \"step_seconds\": [";
    for (size_t i = 0; i < step_seconds.size(); ++i) f << (i ? ", " : "") << step_seconds[i];
    f << "]}\n";
    LOOM_CHECK(f.good(), "gpt_parity: cannot write ", o.out, "/loom.json");
  } catch (const loom::Error& e) {
    std::fprintf(stderr, "gpt_parity: %s\n", e.what());
    return 1;
  }
  return 0;
}
