// bench_graph: the graph layer's numbers for `make bench` (run.py's "graph"
// group): step time and memory of eager, compiled (loom::compile) and
// checkpointed training steps, the planner's arena against the liveness
// lower bound, and the replay of a dispatch-bound step.
//
//   bench_graph --json OUT.json [--reps R] [--only gpt,mlp_deep,planner,dispatch]
//
// Memory: peak_bytes is the CPU allocator's peak bytes in use over a steady
// step (everything alive: parameters, gradients, optimizer state, the
// compiled graph's arena, activations); activation_bytes is that minus the
// persistent bytes (parameters + gradients + optimizer state; the steps
// zero their gradients in place, so those stay allocated); rss_bytes is
// the resident high-water mark over the step minus the resident set before
// it, with the cache emptied first (torch_graph.py measures torch the same
// way). Times are per-rep wall times of one step; run.py takes medians.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "loom/loom.h"

using namespace loom;
namespace F = loom::nn::functional;

namespace {

using Clock = std::chrono::steady_clock;
using Step = std::function<Tensor(const Tensor&, const Tensor&)>;

int64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return int64_t{resident} * 4096;
}
int64_t peak_resident_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}
void reset_peak_resident() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

struct StepStats {
  std::vector<double> ms;
  int64_t peak_bytes = 0, activation_bytes = 0, rss_bytes = 0;
};

// Warm-up (recording and settling for a compiled step: three calls), one
// measured step for memory, then `reps` timed steps.
StepStats measure(const Step& step, const Tensor& x, const Tensor& y, int reps, int64_t persistent) {
  for (int k = 0; k < 3; ++k) step(x, y);
  StepStats s;
  cpu_empty_cache();
  reset_peak_resident();
  const int64_t rss_before = resident_bytes();
  cpu_reset_peak_stats();
  step(x, y);
  s.peak_bytes = static_cast<int64_t>(cpu_allocator_stats().peak_bytes_in_use);
  s.activation_bytes = s.peak_bytes - persistent;
  s.rss_bytes = std::max<int64_t>(0, peak_resident_bytes() - rss_before);
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    step(x, y);
    s.ms.push_back(ms_since(t0));
  }
  return s;
}

std::string json_list(const std::vector<double>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t k = 0; k < v.size(); ++k) os << (k ? ", " : "") << v[k];
  return os.str() + "]";
}
std::string json_list(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t k = 0; k < v.size(); ++k) os << (k ? ", " : "") << v[k];
  return os.str() + "]";
}
std::string json_stats(const StepStats& s) {
  std::ostringstream os;
  os << "{\"ms\": " << json_list(s.ms) << ", \"peak_bytes\": " << s.peak_bytes
     << ", \"activation_bytes\": " << s.activation_bytes << ", \"rss_bytes\": " << s.rss_bytes << "}";
  return os.str();
}

// Parameters + gradients + optimizer state of `params` (AdamW: two moments).
int64_t persistent_bytes(const std::vector<Tensor>& params, int moments) {
  int64_t b = 0;
  for (const Tensor& p : params) b += static_cast<int64_t>(p.nbytes()) * (2 + moments);
  return b;
}

// zero_grad(set_to_none = false): the gradients stay allocated between
// steps, so parameters + gradients + optimizer state are in use all along
// and peak - persistent is the step's own memory, eager and compiled alike.
Step train_step(std::function<Tensor(const Tensor&, const Tensor&)> loss_fn, optim::Optimizer& opt) {
  return [loss_fn, &opt](const Tensor& x, const Tensor& y) {
    opt.zero_grad(false);
    Tensor loss = loss_fn(x, y);
    loss.backward();
    opt.step();
    return loss;
  };
}

// The GPT of bench_ops's gpt_step: 4 layers, d_model 256, 4 heads, context
// 128, vocabulary 96, no dropout; batch 16; AdamW 3e-4.
std::string bench_gpt(int reps) {
  std::ostringstream os;
  os << "{";
  const char* modes[] = {"eager", "compiled", "eager_checkpoint", "compiled_checkpoint"};
  int64_t persistent = 0;
  for (int m = 0; m < 4; ++m) {
    manual_seed(0);
    models::GPT gpt(models::GPTConfig{
        .n_layer = 4, .n_embd = 256, .n_head = 4, .block_size = 128, .vocab_size = 96, .dropout = 0.0});
    gpt->set_checkpoint_activations(m == 2);
    optim::AdamW opt(gpt->parameters(), optim::AdamWOptions(3e-4));
    persistent = persistent_bytes(gpt->parameters(), 2);
    Tensor x = randint(96, {16, 128}), y = randint(96, {16, 128});
    Step eager = train_step([gpt](const Tensor& a, const Tensor& b) { return gpt->loss(a, b); }, opt);
    StepStats s;
    if (m == 1 || m == 3) {
      jit::CompileOptions o;
      if (m == 3) o.checkpoint_segments = -1;
      auto compiled = loom::compile(eager, o);
      s = measure([&](const Tensor& a, const Tensor& b) { return compiled(a, b); }, x, y, reps, persistent);
    } else {
      s = measure(eager, x, y, reps, persistent);
    }
    os << "\"" << modes[m] << "\": " << json_stats(s) << ", ";
    std::fprintf(stderr, "gpt_step %s: %.1f ms (first rep), activations %.1f MB\n", modes[m], s.ms.empty() ? 0.0 : s.ms[0],
                 static_cast<double>(s.activation_bytes) / 1e6);
  }
  os << "\"persistent_bytes\": " << persistent << "}";
  return os.str();
}

// A deep MLP: N Linear(1024, 1024) + ReLU layers, batch 256, SGD 0.01.
nn::Sequential deep_mlp(int n) {
  nn::Sequential s;
  for (int k = 0; k < n; ++k) {
    s->push_back(nn::Linear(1024, 1024));
    s->push_back(nn::ReLU());
  }
  return s;
}

std::string bench_mlp_deep(int reps) {
  const std::vector<int> sizes = {16, 32, 64, 128, 256};
  const char* modes[] = {"eager", "eager_checkpoint", "compiled_checkpoint"};
  std::ostringstream os;
  os << "{\"N\": [16, 32, 64, 128, 256]";
  for (int m = 0; m < 3; ++m) {
    std::vector<double> ms;
    std::vector<int64_t> act;
    for (int n : sizes) {
      manual_seed(0);
      nn::Sequential net = deep_mlp(n);
      optim::SGD opt(net->parameters(), optim::SGDOptions(0.01));
      const int64_t persistent = persistent_bytes(net->parameters(), 0);
      const int64_t segments = std::max<int64_t>(1, std::lround(std::sqrt(static_cast<double>(n))));
      Tensor x = randn({256, 1024}), y = randn({256, 1024});
      auto loss_fn = [net, m, segments](const Tensor& a, const Tensor& b) {
        Tensor out = m == 1 ? nn::checkpoint_sequential(net, segments, a) : net->forward(a);
        return F::mse_loss(out, b);
      };
      Step eager = train_step(loss_fn, opt);
      StepStats s;
      if (m == 2) {
        jit::CompileOptions o;
        o.checkpoint_segments = static_cast<int>(segments);
        auto compiled = loom::compile(eager, o);
        s = measure([&](const Tensor& a, const Tensor& b) { return compiled(a, b); }, x, y, reps, persistent);
      } else {
        s = measure(eager, x, y, reps, persistent);
      }
      std::sort(s.ms.begin(), s.ms.end());
      ms.push_back(s.ms[s.ms.size() / 2]);
      act.push_back(s.activation_bytes);
      std::fprintf(stderr, "mlp_deep %s N=%d: %.1f ms, activations %.1f MB\n", modes[m], n, ms.back(),
                   static_cast<double>(act.back()) / 1e6);
    }
    os << ", \"" << modes[m] << "\": {\"ms\": " << json_list(ms) << ", \"activation_bytes\": " << json_list(act) << "}";
  }
  return os.str() + "}";
}

// The planned arena against the liveness lower bound, per model's
// compiled training step (the default options).
std::string bench_planner() {
  std::ostringstream os;
  os << "{";
  auto plan_of = [](const Step& step, const Tensor& x, const Tensor& y) {
    auto compiled = loom::compile(step);
    for (int k = 0; k < 4; ++k) compiled(x, y);
    return compiled.graph()->memory_plan();
  };
  auto row = [&](const char* name, const jit::MemoryPlan& p, bool last) {
    os << "\"" << name << "\": {\"arena_bytes\": " << p.arena_bytes << ", \"lower_bound_bytes\": " << p.lower_bound_bytes
       << "}" << (last ? "" : ", ");
    std::fprintf(stderr, "planner %s: arena %.2f MB, lower bound %.2f MB\n", name, static_cast<double>(p.arena_bytes) / 1e6,
                 static_cast<double>(p.lower_bound_bytes) / 1e6);
  };
  auto classify = [](nn::Sequential net) {
    return [net](const Tensor& a, const Tensor& b) { return F::cross_entropy(net->forward(a), b); };
  };
  {
    manual_seed(0);
    models::GPT gpt(models::GPTConfig{
        .n_layer = 4, .n_embd = 256, .n_head = 4, .block_size = 128, .vocab_size = 96, .dropout = 0.0});
    optim::AdamW opt(gpt->parameters(), optim::AdamWOptions(3e-4));
    row("gpt_step", plan_of(train_step([gpt](const Tensor& a, const Tensor& b) { return gpt->loss(a, b); }, opt),
                            randint(96, {16, 128}), randint(96, {16, 128})),
        false);
  }
  {
    nn::Sequential net = deep_mlp(64);
    optim::SGD opt(net->parameters(), optim::SGDOptions(0.01));
    row("mlp_deep_64",
        plan_of(train_step([net](const Tensor& a, const Tensor& b) { return F::mse_loss(net->forward(a), b); }, opt),
                randn({256, 1024}), randn({256, 1024})),
        false);
  }
  {
    nn::Sequential net = models::mlp(784, {128}, 10);
    optim::SGD opt(net->parameters(), optim::SGDOptions(0.1).momentum(0.9));
    row("mlp", plan_of(train_step(classify(net), opt), randn({64, 784}), randint(10, {64})), false);
  }
  {
    nn::Sequential net = models::cnn(1, 10);
    optim::Adam opt(net->parameters(), optim::AdamOptions(1e-3));
    row("cnn", plan_of(train_step(classify(net), opt), randn({64, 1, 28, 28}), randint(10, {64})), false);
  }
  {
    nn::Sequential net = models::resnet9(1, 10);
    optim::SGD opt(net->parameters(), optim::SGDOptions(0.05).momentum(0.9));
    row("resnet9", plan_of(train_step(classify(net), opt), randn({32, 1, 28, 28}), randint(10, {32})), false);
  }
  {
    models::LSTMLM lm(models::LSTMLMConfig{.vocab_size = 96, .embed = 0, .hidden = 256, .layers = 2, .dropout = 0.0});
    optim::AdamW opt(lm->parameters(), optim::AdamWOptions(3e-4));
    row("lstm", plan_of(train_step([lm](const Tensor& a, const Tensor& b) { return lm->loss(a, b); }, opt),
                        randint(96, {32, 64}), randint(96, {32, 64})),
        true);
  }
  return os.str() + "}";
}

// A dispatch-bound step: MLP 784-128-10, batch 1, SGD 0.01. Eager and
// replayed steps alternate, so both see the same machine.
std::string bench_dispatch(int reps) {
  manual_seed(0);
  nn::Sequential a = models::mlp(784, {128}, 10), b = models::mlp(784, {128}, 10);
  optim::SGD oa(a->parameters(), optim::SGDOptions(0.01)), ob(b->parameters(), optim::SGDOptions(0.01));
  auto loss_of = [](nn::Sequential net) {
    return [net](const Tensor& x, const Tensor& y) { return F::cross_entropy(net->forward(x), y); };
  };
  Step eager = train_step(loss_of(a), oa);
  auto compiled = loom::compile(train_step(loss_of(b), ob));
  Tensor x = randn({1, 784}), y = randint(10, {1});
  for (int k = 0; k < 50; ++k) {
    eager(x, y);
    compiled(x, y);
  }
  std::vector<double> e_us, r_us;
  const int inner = 200;
  for (int r = 0; r < std::max(reps, 5); ++r) {
    auto t0 = Clock::now();
    for (int k = 0; k < inner; ++k) eager(x, y);
    e_us.push_back(ms_since(t0) * 1000.0 / inner);
    t0 = Clock::now();
    for (int k = 0; k < inner; ++k) compiled(x, y);
    r_us.push_back(ms_since(t0) * 1000.0 / inner);
  }
  std::fprintf(stderr, "dispatch: eager %.1f us, replay %.1f us\n", e_us[0], r_us[0]);
  return "{\"eager_us\": " + json_list(e_us) + ", \"replay_us\": " + json_list(r_us) + "}";
}

}  // namespace

int main(int argc, char** argv) {
  std::string json, only;
  int reps = 5;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    auto value = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "bench_graph: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--json") json = value();
    else if (a == "--reps") reps = std::stoi(value());
    else if (a == "--only") only = value();
    else {
      std::fprintf(stderr, "usage: bench_graph --json OUT.json [--reps R] [--only gpt,mlp_deep,planner,dispatch]\n");
      return 2;
    }
  }
  if (json.empty()) {
    std::fprintf(stderr, "bench_graph: --json OUT.json is required\n");
    return 2;
  }
  std::set<std::string> groups;
  std::stringstream ss(only);
  for (std::string g; std::getline(ss, g, ',');) groups.insert(g);
  auto want = [&](const char* g) { return groups.empty() || groups.count(g) > 0; };
  try {
    std::ostringstream os;
    os << "{\"threads\": " << get_num_threads();
    if (want("gpt")) os << ",\n \"gpt_step\": " << bench_gpt(reps);
    if (want("mlp_deep")) os << ",\n \"mlp_deep\": " << bench_mlp_deep(std::max(1, reps / 2));
    if (want("planner")) os << ",\n \"planner\": " << bench_planner();
    if (want("dispatch")) os << ",\n \"dispatch\": " << bench_dispatch(reps);
    os << "}\n";
    const std::string text = os.str();
    io::write_file_atomic(json, text.data(), text.size());
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_graph: %s\n", e.what());
    return 1;
  }
  return 0;
}
