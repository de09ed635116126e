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
// way). Memory is measured with one mode alive at a time; times come from
// rounds that run one step of every mode of a row in turn, so the shared
// machine's load lands on all modes alike. run.py takes medians.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
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

// Warm-up calls before a mode is measured: a compiled step records and
// settles in three; an eager one allocates its gradients in the first.
int warmups(bool compiled) { return compiled ? 3 : 1; }

// Warm-up, then one measured step for memory. The step runs alone in the
// process (every other mode's model and graph are gone), so the peaks are
// its own.
// The caller sets activation_bytes (it knows the persistent bytes).
StepStats measure_memory(const Step& step, bool compiled, const Tensor& x, const Tensor& y) {
  for (int k = 0; k < warmups(compiled); ++k) step(x, y);
  StepStats s;
  cpu_empty_cache();
  reset_peak_resident();
  const int64_t rss_before = resident_bytes();
  cpu_reset_peak_stats();
  step(x, y);
  s.peak_bytes = static_cast<int64_t>(cpu_allocator_stats().peak_bytes_in_use);
  s.rss_bytes = std::max<int64_t>(0, peak_resident_bytes() - rss_before);
  return s;
}

// Step times of several modes side by side: each warms up, then `reps`
// rounds run one step of every mode in turn, so a change in the machine's
// load (it is shared) lands on all of them alike. times[m] gets mode m's.
void measure_times(const std::vector<Step>& steps, const std::vector<bool>& compiled, const Tensor& x, const Tensor& y,
                   int reps, std::vector<std::vector<double>>& times) {
  times.assign(steps.size(), {});
  for (size_t m = 0; m < steps.size(); ++m)
    for (int k = 0; k < warmups(compiled[m]); ++k) steps[m](x, y);
  for (int r = 0; r < reps; ++r)
    for (size_t m = 0; m < steps.size(); ++m) {
      const auto t0 = Clock::now();
      steps[m](x, y);
      times[m].push_back(ms_since(t0));
    }
}

// A row's modes: make(m, x, y) builds mode m (a struct with .step) and
// sets the batch. Each mode's memory is measured with it alone, then the
// times of all of them side by side (measure_times).
template <class Make>
void measure_modes(Make make, const std::vector<bool>& compiled, int reps, std::vector<StepStats>& memory,
                   std::vector<std::vector<double>>& times) {
  const size_t modes = compiled.size();
  Tensor x, y;
  memory.clear();
  for (size_t m = 0; m < modes; ++m) {
    auto mode = make(static_cast<int>(m), x, y);
    memory.push_back(measure_memory(mode.step, compiled[m], x, y));
  }
  std::vector<decltype(make(0, x, y))> all;
  std::vector<Step> steps;
  for (size_t m = 0; m < modes; ++m) {
    all.push_back(make(static_cast<int>(m), x, y));
    steps.push_back(all.back().step);
  }
  measure_times(steps, compiled, x, y, reps, times);
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
// 128, vocabulary 96, no dropout; batch 16; AdamW 3e-4. Memory is measured
// with one mode alive at a time, then the times of all four side by side.
std::string bench_gpt(int reps) {
  const char* modes[] = {"eager", "compiled", "eager_checkpoint", "compiled_checkpoint"};
  constexpr int kModes = 4;
  struct Mode {
    models::GPT gpt{nullptr};
    std::unique_ptr<optim::AdamW> opt;
    Step step;
  };
  int64_t persistent = 0;
  // Mode m from the same seed: the same weights and batch for every mode.
  auto make = [&](int m, Tensor& x, Tensor& y) {
    manual_seed(0);
    Mode mode;
    mode.gpt = models::GPT(models::GPTConfig{
        .n_layer = 4, .n_embd = 256, .n_head = 4, .block_size = 128, .vocab_size = 96, .dropout = 0.0});
    mode.gpt->set_checkpoint_activations(m == 2);
    mode.opt = std::make_unique<optim::AdamW>(mode.gpt->parameters(), optim::AdamWOptions(3e-4));
    persistent = persistent_bytes(mode.gpt->parameters(), 2);
    x = randint(96, {16, 128});
    y = randint(96, {16, 128});
    models::GPT gpt = mode.gpt;
    mode.step = train_step([gpt](const Tensor& a, const Tensor& b) { return gpt->loss(a, b); }, *mode.opt);
    if (m == 1 || m == 3) {
      jit::CompileOptions o;
      if (m == 3) o.checkpoint_segments = -1;
      auto compiled = std::make_shared<decltype(loom::compile(mode.step, o))>(loom::compile(mode.step, o));
      mode.step = [compiled](const Tensor& a, const Tensor& b) { return (*compiled)(a, b); };
    }
    return mode;
  };
  std::vector<StepStats> stats;
  std::vector<std::vector<double>> times;
  measure_modes(make, {false, true, false, true}, reps, stats, times);
  std::ostringstream os;
  os << "{";
  for (int m = 0; m < kModes; ++m) {
    stats[m].activation_bytes = stats[m].peak_bytes - persistent;
    std::fprintf(stderr, "gpt_step %s: activations %.1f MB\n", modes[m], static_cast<double>(stats[m].activation_bytes) / 1e6);
    stats[m].ms = times[m];
    os << "\"" << modes[m] << "\": " << json_stats(stats[m]) << ", ";
    std::fprintf(stderr, "gpt_step %s: %.1f ms (first round)\n", modes[m], times[m][0]);
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

// Per N: each mode's memory alone, then the three modes' times side by side.
std::string bench_mlp_deep(int reps) {
  const std::vector<int> sizes = {16, 32, 64, 128, 256};
  const char* modes[] = {"eager", "eager_checkpoint", "compiled_checkpoint"};
  constexpr int kModes = 3;
  std::vector<double> ms[kModes], round_ratio[kModes];
  std::vector<int64_t> act[kModes];
  for (int n : sizes) {
    const int64_t segments = std::max<int64_t>(1, std::lround(std::sqrt(static_cast<double>(n))));
    int64_t persistent = 0;
    struct Mode {
      nn::Sequential net{nullptr};
      std::unique_ptr<optim::SGD> opt;
      Step step;
    };
    auto make = [&](int m, Tensor& x, Tensor& y) {
      manual_seed(0);
      Mode mode;
      mode.net = deep_mlp(n);
      mode.opt = std::make_unique<optim::SGD>(mode.net->parameters(), optim::SGDOptions(0.01));
      persistent = persistent_bytes(mode.net->parameters(), 0);
      x = randn({256, 1024});
      y = randn({256, 1024});
      nn::Sequential net = mode.net;
      auto loss_fn = [net, m, segments](const Tensor& a, const Tensor& b) {
        Tensor out = m == 1 ? nn::checkpoint_sequential(net, segments, a) : net->forward(a);
        return F::mse_loss(out, b);
      };
      mode.step = train_step(loss_fn, *mode.opt);
      if (m == 2) {
        jit::CompileOptions o;
        o.checkpoint_segments = static_cast<int>(segments);
        auto compiled = std::make_shared<decltype(loom::compile(mode.step, o))>(loom::compile(mode.step, o));
        mode.step = [compiled](const Tensor& a, const Tensor& b) { return (*compiled)(a, b); };
      }
      return mode;
    };
    std::vector<StepStats> memory;
    std::vector<std::vector<double>> times;
    measure_modes(make, {false, false, true}, reps, memory, times);
    for (int m = 0; m < kModes; ++m) act[m].push_back(memory[static_cast<size_t>(m)].peak_bytes - persistent);
    // Each round's ratio to eager's step of the same round, then their median.
    for (int m = 0; m < kModes; ++m) {
      std::vector<double> r;
      for (size_t k = 0; k < times[m].size(); ++k) r.push_back(times[m][k] / times[0][k]);
      std::sort(r.begin(), r.end());
      round_ratio[m].push_back(r[r.size() / 2]);
    }
    for (int m = 0; m < kModes; ++m) {
      std::sort(times[m].begin(), times[m].end());
      ms[m].push_back(times[m][times[m].size() / 2]);
      std::fprintf(stderr, "mlp_deep %s N=%d: %.1f ms, activations %.1f MB\n", modes[m], n, ms[m].back(),
                   static_cast<double>(act[m].back()) / 1e6);
    }
  }
  std::ostringstream os;
  os << "{\"N\": [16, 32, 64, 128, 256]";
  for (int m = 0; m < kModes; ++m)
    os << ", \"" << modes[m] << "\": {\"ms\": " << json_list(ms[m]) << ", \"round_ratio\": " << json_list(round_ratio[m])
       << ", \"activation_bytes\": " << json_list(act[m]) << "}";
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
  // The planner's arena: the serial order's, when a parallel schedule laid it out wider.
  auto row = [&](const char* name, const jit::MemoryPlan& p, bool last) {
    const size_t arena = p.serial_arena_bytes > 0 ? p.serial_arena_bytes : p.arena_bytes;
    os << "\"" << name << "\": {\"arena_bytes\": " << arena << ", \"lower_bound_bytes\": " << p.lower_bound_bytes
       << "}" << (last ? "" : ", ");
    std::fprintf(stderr, "planner %s: arena %.2f MB, lower bound %.2f MB\n", name, static_cast<double>(arena) / 1e6,
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
    if (want("mlp_deep")) os << ",\n \"mlp_deep\": " << bench_mlp_deep(std::max(3, reps / 2));
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
