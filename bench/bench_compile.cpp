// bench_compile: loom::compile's replay, section by section.
//
//   bench_compile [--json OUT.json] [--reps R] [--threads N] [--only SECTION,...]
//
// Scheduler sections (Note [Scheduling] in src/jit/scheduler.cpp): each
// times one compiled function replayed with CompileOptions::parallel on
// and off, the two taking turns in rounds so the shared machine's load
// lands on both alike; a section's ratio is the median over rounds of
// serial time / parallel time.
//   scaling  one 256x256x256 float32 GEMM eager on 1 thread and on N: how
//            well a single product already uses the threads (the ceiling
//            for running products side by side is N / that speedup)
//   wide     8 independent 256x256x256 products in one compiled function
//   lstm     the LSTM language model's training step (bench_graph's: hidden
//            256, 2 layers, batch 32 x 64 tokens, AdamW)
//   chain    8 dependent 256x256x256 products: nothing to overlap, so the
//            schedule must stay the serial order (ratio about 1)
// Fusion sections (Note [Fusion] in src/jit/fusion.cpp): eager loom against
// the compiled function with every pass ("compiled"), and where it tells
// something, compiled without fusion and scheduling ("plan",
// --compile=plan); ratios are medians over rounds of eager / compiled.
//   chain4      relu(x * 1.5 + 0.25) * 0.5 over 64 MiB of float32: four
//               elementwise ops, one kernel compiled; against one STREAM
//               pass (copy_ of the same bytes) as the floor
//   linear_gelu Linear(784, 512) + bias + GELU forward and backward at the
//               MLP's batch of 128 (gradients of input, weight and bias)
//   gpt         the GPT training step (bench_graph's: 4 layers, d_model 256,
//               batch 16 x 128, AdamW)
//   lstm_step   the LSTM language model's training step (as lstm)
//   compile     the first call's capture-and-compile time of each model's
//               step (mlp, cnn, gpt, lstm) minus one eager step
// Every section is a function returning JSON, timed with measure_rounds.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "loom/loom.h"

using namespace loom;

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string json_list(const std::vector<double>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t k = 0; k < v.size(); ++k) os << (k ? ", " : "") << v[k];
  return os.str() + "]";
}

// Times of several modes side by side: `warmup` calls of each, then `reps`
// rounds in which every mode runs `inner` calls in turn. times[m][r] is mode
// m's mean call in round r, in milliseconds.
std::vector<std::vector<double>> measure_rounds(const std::vector<std::function<void()>>& modes, int reps, int inner,
                                                int warmup = 3) {
  for (const auto& m : modes)
    for (int k = 0; k < warmup; ++k) m();
  std::vector<std::vector<double>> times(modes.size());
  for (int r = 0; r < reps; ++r)
    for (size_t m = 0; m < modes.size(); ++m) {
      const auto t0 = Clock::now();
      for (int k = 0; k < inner; ++k) modes[m]();
      times[m].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / inner);
    }
  return times;
}

// The median over rounds of base[r] / other[r].
double round_ratio(const std::vector<double>& base, const std::vector<double>& other) {
  std::vector<double> r;
  for (size_t k = 0; k < base.size() && k < other.size(); ++k) r.push_back(base[k] / other[k]);
  return median(r);
}

// A section comparing serial (first) against parallel (second) replays.
std::string versus(const char* name, const std::vector<std::vector<double>>& t, double target, bool at_most) {
  const double ratio = round_ratio(t[0], t[1]);
  const bool met = at_most ? ratio >= 1.0 / target : ratio >= target;
  std::fprintf(stderr, "%-8s serial %.3f ms, parallel %.3f ms: serial / parallel %.3f (target %s %.2f: %s)\n", name,
               median(t[0]), median(t[1]), ratio, at_most ? "parallel within" : ">=", target, met ? "met" : "missed");
  std::ostringstream os;
  os << "{\"serial_ms\": " << json_list(t[0]) << ", \"parallel_ms\": " << json_list(t[1]) << ", \"ratio\": " << ratio
     << ", \"target\": " << target << ", \"met\": " << (met ? "true" : "false") << "}";
  return os.str();
}

jit::CompileOptions options(bool parallel) {
  jit::CompileOptions o;
  o.parallel = parallel;
  return o;
}

// ---- scheduler sections

// One product a (M, K) @ b (K, N) eager on 1 thread and on `threads`, for
// the wide section's shape and the LSTM step's per-time-step shapes.
std::string bench_scaling(int reps, int threads) {
  struct Shape3 {
    const char* name;
    int64_t m, k, n;
  };
  const Shape3 shapes[] = {{"gemm_256", 256, 256, 256},
                           {"lstm_recurrent", 32, 256, 1024},  // h @ W_hh^T, and dgates @ W_hh: (32, 1024) @ (1024, 256)
                           {"lstm_dgrad", 32, 1024, 256},
                           {"lstm_wgrad", 1024, 32, 256}};     // dgates^T @ h: the weight gradient of one step
  std::ostringstream os;
  os << "{";
  bool first = true;
  for (const Shape3& sh : shapes) {
    manual_seed(0);
    Tensor a = randn({sh.m, sh.k}), b = randn({sh.k, sh.n});
    auto at = [&](int n) {
      return [&, n] {
        set_num_threads(n);
        Tensor c = matmul(a, b);
      };
    };
    const int inner = std::max<int64_t>(1, 4000000 / (sh.m * sh.k * sh.n / 64));
    auto t = measure_rounds({at(1), at(threads)}, reps, static_cast<int>(std::min(inner, 200)));
    set_num_threads(threads);
    const double speedup = round_ratio(t[0], t[1]);
    std::fprintf(stderr, "scaling  %-15s (%ld x %ld x %ld): 1 thread %.4f ms, %d threads %.4f ms: speedup %.3f "
                 "(side by side can beat it by at most %.3f)\n", sh.name, static_cast<long>(sh.m),
                 static_cast<long>(sh.k), static_cast<long>(sh.n), median(t[0]), threads, median(t[1]), speedup,
                 threads / speedup);
    os << (first ? "" : ", ") << "\"" << sh.name << "\": {\"one_thread_ms\": " << json_list(t[0])
       << ", \"threads_ms\": " << json_list(t[1]) << ", \"speedup\": " << speedup
       << ", \"ceiling\": " << threads / speedup << "}";
    first = false;
  }
  return os.str() + "}";
}

// Eight 256^3 products of slices of a and b (8, 256, 256); each goes through
// a relu, since a product returned as it is (mm's result is a view) is new
// state to the capture.
std::string bench_wide(int reps) {
  manual_seed(0);
  Tensor a = randn({8, 256, 256}), b = randn({8, 256, 256});
  auto products = [](const Tensor& x, const Tensor& y) {
    std::vector<Tensor> out;
    for (int64_t k = 0; k < x.size(0); ++k) out.push_back(relu(matmul(x.select(0, k), y.select(0, k))));
    return out;
  };
  auto serial = loom::compile(products, options(false));
  auto parallel = loom::compile(products, options(true));
  auto t = measure_rounds({[&] { serial(a, b); }, [&] { parallel(a, b); }}, reps, 5);
  return versus("wide", t, 1.4, false);
}

// h <- relu(h @ w_k) for k < 8, h (256, 256).
std::string bench_chain(int reps) {
  manual_seed(0);
  Tensor x = randn({256, 256}), w = randn({8, 256, 256}) * (1.0 / 16);
  auto chain = [](const Tensor& h0, const Tensor& ws) {
    Tensor h = h0;
    for (int64_t k = 0; k < ws.size(0); ++k) h = relu(matmul(h, ws.select(0, k)));
    return h;
  };
  auto serial = loom::compile(chain, options(false));
  auto parallel = loom::compile(chain, options(true));
  auto t = measure_rounds({[&] { serial(x, w); }, [&] { parallel(x, w); }}, reps, 5);
  return versus("chain", t, 1.03, true);
}

// bench_graph's LSTM step: two models from one seed, one replayed
// serially, one scheduled.
std::string bench_lstm(int reps) {
  struct Mode {
    models::LSTMLM lm{nullptr};
    std::unique_ptr<optim::AdamW> opt;
    std::function<Tensor(const Tensor&, const Tensor&)> step;
  };
  auto make = [](bool parallel) {
    manual_seed(0);
    Mode m;
    m.lm = models::LSTMLM(models::LSTMLMConfig{.vocab_size = 96, .embed = 0, .hidden = 256, .layers = 2, .dropout = 0.0});
    m.opt = std::make_unique<optim::AdamW>(m.lm->parameters(), optim::AdamWOptions(3e-4));
    models::LSTMLM lm = m.lm;
    optim::AdamW* opt = m.opt.get();
    using StepFn = std::function<Tensor(const Tensor&, const Tensor&)>;
    StepFn step = [lm, opt](const Tensor& x, const Tensor& y) {
      opt->zero_grad(false);
      Tensor loss = lm->loss(x, y);
      loss.backward();
      opt->step();
      return loss;
    };
    auto compiled = std::make_shared<decltype(loom::compile(step))>(loom::compile(step, options(parallel)));
    m.step = [compiled](const Tensor& x, const Tensor& y) { return (*compiled)(x, y); };
    return m;
  };
  Mode serial = make(false), parallel = make(true);
  manual_seed(1);
  Tensor x = randint(96, {32, 64}), y = randint(96, {32, 64});
  auto t = measure_rounds({[&] { serial.step(x, y); }, [&] { parallel.step(x, y); }}, reps, 1, 4);
  return versus("lstm", t, 1.4, false);
}

// ---- fusion sections

// A section comparing eager (first) against compiled (second) and, when
// given, the plan-only compile (third).
std::string speedup(const char* name, const std::vector<std::vector<double>>& t, double target) {
  const double ratio = round_ratio(t[0], t[1]);
  std::fprintf(stderr, "%-11s eager %.3f ms, compiled %.3f ms", name, median(t[0]), median(t[1]));
  std::ostringstream os;
  os << "{\"eager_ms\": " << json_list(t[0]) << ", \"compiled_ms\": " << json_list(t[1]);
  if (t.size() > 2) {
    std::fprintf(stderr, ", plan %.3f ms (eager / plan %.3f)", median(t[2]), round_ratio(t[0], t[2]));
    os << ", \"plan_ms\": " << json_list(t[2]) << ", \"plan_ratio\": " << round_ratio(t[0], t[2]);
  }
  const bool met = ratio >= target;
  std::fprintf(stderr, ": eager / compiled %.3f (target >= %.2f: %s)\n", ratio, target, met ? "met" : "missed");
  os << ", \"ratio\": " << ratio << ", \"target\": " << target << ", \"met\": " << (met ? "true" : "false") << "}";
  return os.str();
}

jit::CompileOptions plan_only() {
  jit::CompileOptions o;
  o.fuse = o.parallel = false;
  return o;
}

std::string bench_chain4(int reps) {
  manual_seed(0);
  Tensor x = randn({16 << 20});  // 64 MiB
  Tensor y = empty_like(x);
  auto chain = [](const Tensor& a) { return relu(a * 1.5 + 0.25) * 0.5; };
  auto compiled = loom::compile(chain);
  auto plan = loom::compile(chain, plan_only());
  auto t = measure_rounds({[&] { chain(x); }, [&] { compiled(x); }, [&] { plan(x); }, [&] { y.copy_(x); }}, reps, 3);
  const double stream = round_ratio(t[1], t[3]);
  std::fprintf(stderr, "chain4      one STREAM pass (copy_) %.3f ms: compiled / STREAM %.3f\n", median(t[3]), stream);
  std::string out = speedup("chain4", {t[0], t[1], t[2]}, 2.5);
  out.pop_back();
  std::ostringstream os;
  os << out << ", \"stream_ms\": " << json_list(t[3]) << ", \"compiled_over_stream\": " << stream << "}";
  return os.str();
}

std::string bench_linear_gelu(int reps) {
  manual_seed(0);
  nn::Sequential layer(nn::Linear(784, 512), nn::GELU());
  Tensor x = randn({128, 784}).requires_grad_(true), gy = randn({128, 512});
  std::vector<Tensor> params = layer->parameters();
  params.push_back(x);
  auto step = [layer, params](const Tensor& a, const Tensor& g) {
    for (Tensor p : params) p.mutable_grad() = Tensor();
    Tensor out = layer->forward(a);
    out.backward(g);
    return out.detach();
  };
  auto compiled = loom::compile(step);
  auto plan = loom::compile(step, plan_only());
  auto t = measure_rounds({[&] { step(x, gy); }, [&] { compiled(x, gy); }, [&] { plan(x, gy); }}, reps, 20);
  return speedup("linear_gelu", t, 1.15);
}

// The models' training steps, each mode on its own model from one seed.
struct Model {
  std::shared_ptr<nn::Module> module;
  std::unique_ptr<optim::Optimizer> opt;
  Tensor x, y;
  std::function<Tensor(const Tensor&, const Tensor&)> step;
};

Model make_model(const std::string& name) {
  manual_seed(0);
  Model m;
  std::function<Tensor(const Tensor&, const Tensor&)> loss;
  if (name == "gpt") {
    models::GPT gpt(models::GPTConfig{
        .n_layer = 4, .n_embd = 256, .n_head = 4, .block_size = 128, .vocab_size = 96, .dropout = 0.0});
    m.module = gpt.ptr();
    m.x = randint(96, {16, 128});
    m.y = randint(96, {16, 128});
    loss = [gpt](const Tensor& a, const Tensor& b) { return gpt->loss(a, b); };
  } else if (name == "lstm") {
    models::LSTMLM lm(models::LSTMLMConfig{.vocab_size = 96, .embed = 0, .hidden = 256, .layers = 2, .dropout = 0.0});
    m.module = lm.ptr();
    m.x = randint(96, {32, 64});
    m.y = randint(96, {32, 64});
    loss = [lm](const Tensor& a, const Tensor& b) { return lm->loss(a, b); };
  } else {
    nn::Sequential net = name == "mlp" ? models::mlp(784, {512, 256}, 10) : models::cnn();
    m.module = net.ptr();
    m.x = name == "mlp" ? randn({128, 784}) : randn({128, 1, 28, 28});
    m.y = randint(10, {128});
    loss = [net](const Tensor& a, const Tensor& b) { return nn::functional::cross_entropy(net->forward(a), b); };
  }
  m.opt = std::make_unique<optim::AdamW>(m.module->parameters(), optim::AdamWOptions(3e-4));
  optim::Optimizer* opt = m.opt.get();
  m.step = [loss, opt](const Tensor& a, const Tensor& b) {
    opt->zero_grad(false);
    Tensor l = loss(a, b);
    l.backward();
    opt->step();
    return l;
  };
  return m;
}

// eager, compiled and plan-only steps of one model, side by side.
std::string bench_train(const char* section, const std::string& name, double target, int reps) {
  Model eager = make_model(name), full = make_model(name), plan = make_model(name);
  auto cf = std::make_shared<decltype(loom::compile(full.step))>(loom::compile(full.step));
  auto cp = std::make_shared<decltype(loom::compile(plan.step))>(loom::compile(plan.step, plan_only()));
  auto t = measure_rounds({[&] { eager.step(eager.x, eager.y); }, [&] { (*cf)(full.x, full.y); },
                           [&] { (*cp)(plan.x, plan.y); }},
                          reps, 1, 4);
  return speedup(section, t, target);
}

// The first call of a compiled step (capture, passes, plan, schedule)
// minus an eager step: what compiling costs.
std::string bench_compile_time() {
  std::ostringstream os;
  os << "{";
  bool first = true;
  for (const char* name : {"mlp", "cnn", "lstm", "gpt"}) {
    Model eager = make_model(name), full = make_model(name);
    for (int k = 0; k < 2; ++k) eager.step(eager.x, eager.y);
    auto t0 = Clock::now();
    eager.step(eager.x, eager.y);
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    auto compiled = loom::compile(full.step);
    t0 = Clock::now();
    int calls = 0;
    while (compiled.stats().graphs == 0 && calls < 8) {
      compiled(full.x, full.y);
      ++calls;
    }
    const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const double compile_s = std::max(0.0, total_s - calls * step_s);
    std::fprintf(stderr, "compile     %-5s %d recording calls in %.2f s, an eager step %.3f s: compiling %.2f s "
                 "(target < 5 s)\n", name, calls, total_s, step_s, compile_s);
    os << (first ? "" : ", ") << "\"" << name << "\": {\"calls\": " << calls << ", \"total_s\": " << total_s
       << ", \"eager_step_s\": " << step_s << ", \"compile_s\": " << compile_s << ", \"met\": "
       << (compile_s < 5 ? "true" : "false") << "}";
    first = false;
  }
  return os.str() + "}";
}

}  // namespace

int main(int argc, char** argv) {
  std::string json, only;
  int reps = 11, threads = 2;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    auto value = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "bench_compile: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--json") json = value();
    else if (a == "--reps") reps = std::stoi(value());
    else if (a == "--threads") threads = std::stoi(value());
    else if (a == "--only") only = value();
    else {
      std::fprintf(stderr, "usage: bench_compile [--json OUT.json] [--reps R] [--threads N] [--only SECTION,...]\n"
                           "sections: scaling wide lstm chain chain4 linear_gelu gpt lstm_step compile\n");
      return 2;
    }
  }
  std::set<std::string> sections;
  std::stringstream ss(only);
  for (std::string s; std::getline(ss, s, ',');) sections.insert(s);
  auto want = [&](const char* s) { return sections.empty() || sections.count(s) > 0; };
  set_num_threads(threads);
  try {
    std::ostringstream os;
    os << "{\"threads\": " << get_num_threads();
    if (want("scaling")) os << ",\n \"scaling\": " << bench_scaling(reps, threads);
    if (want("wide")) os << ",\n \"wide\": " << bench_wide(reps);
    if (want("lstm")) os << ",\n \"lstm\": " << bench_lstm(reps);
    if (want("chain")) os << ",\n \"chain\": " << bench_chain(reps);
    if (want("chain4")) os << ",\n \"chain4\": " << bench_chain4(reps);
    if (want("linear_gelu")) os << ",\n \"linear_gelu\": " << bench_linear_gelu(reps);
    if (want("gpt")) os << ",\n \"gpt\": " << bench_train("gpt", "gpt", 1.25, reps);
    if (want("lstm_step")) os << ",\n \"lstm_step\": " << bench_train("lstm_step", "lstm", 1.3, reps);
    if (want("compile")) os << ",\n \"compile\": " << bench_compile_time();
    os << "}\n";
    const std::string text = os.str();
    if (json.empty()) std::fputs(text.c_str(), stdout);
    else io::write_file_atomic(json, text.data(), text.size());
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_compile: %s\n", e.what());
    return 1;
  }
  return 0;
}
