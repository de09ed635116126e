// bench_distributed: the distributed layer's numbers for `make bench`
// (run.py's "distributed" group), one program under mpirun:
//
//   mpirun -np 2 ... bench_distributed --json OUT.json [--reps R] [--only allreduce,ddp,scaling]
//                                      [--no-check] [--bucket-cap-mb MB]
//
// allreduce  loom's synchronous distributed::all_reduce(t, Sum) on float32
//            (the hop to loom's MPI worker thread and, unless --no-check, the
//            cross-rank signature check included) against a plain
//            MPI_Allreduce(MPI_IN_PLACE) loop on MPI_COMM_WORLD, 8 bytes and
//            4 KiB .. 64 MiB: microseconds per call.
// ddp        the ResNet9 training step (batch 64 per rank, 28x28 1-channel
//            random images, AdamW) under nn::DistributedDataParallel with
//            overlap on and off, each its own replica, and the all-reduces of
//            the same buckets alone (no compute): milliseconds per step and
//            last_stats().wait_seconds.
// scaling    the CNN training step at batch 64 per rank: rank 0 alone, with
//            no DDP, while the other ranks sleep (what `-np 1` runs), against
//            every rank under DDP, and every rank alone at once (no DDP):
//            milliseconds per step.
//
// One thread per rank (set_num_threads(1)). Every part runs its modes in
// rounds, one after the other and in the opposite order every other round,
// so the shared machine's load lands on all of them alike, and stops adding
// rounds past a time budget (more_rounds) so a loaded machine cannot make
// the group run for long. The JSON holds each round's numbers on rank 0's
// clock (a collective ends on every rank at about the same time), and
// run.py takes medians and per-round ratios (Note [The distributed group]
// in run.py). Only rank 0 writes the JSON.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "loom/loom.h"

using namespace loom;
namespace F = loom::nn::functional;
namespace dist = loom::distributed;

namespace {

using Clock = std::chrono::steady_clock;

double us_since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

bool is_root() { return dist::get_rank() == 0; }

double median(std::vector<double> v) {  // for the progress lines; run.py takes its own
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void progress(const std::string& line) {
  if (is_root()) std::fprintf(stderr, "%s\n", line.c_str());
}

// Note [Raw MPI beside loom]
// loom initializes MPI with MPI_THREAD_SERIALIZED and makes its MPI calls
// from its one worker thread (Note [One MPI thread] in src/distributed/
// mpi.cpp). This program also calls MPI from the main thread (the baseline
// loop, barriers between timed runs), but only while loom's queue is empty
// and no loom Work is in flight: every loom call here is synchronous or
// waited on before the next raw call. SERIALIZED lets any thread call MPI as
// long as no two calls overlap, and Work::wait() (an acquire of what the
// worker released when it finished) orders the worker's last MPI call before
// ours. The worker's idle spin after a task makes no MPI call unless loom
// has point-to-point messages in flight, and this program sends none.

// Lines the ranks up before a timed run (MPI's own barrier spins).
void barrier() { MPI_Barrier(MPI_COMM_WORLD); }

// Waits for every rank, sleeping between tests instead of spinning as
// MPI_Barrier does: ranks that idle through rank 0's solo steps must leave
// their cores free, as they would be in an `-np 1` run.
void sleeping_barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  for (int done = 0;;) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// Rank 0's value on every rank: the ranks must make the same calls, and
// rank 0's clock decides how many.
int agreed(int value) {
  MPI_Bcast(&value, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return value;
}

// Whether to run round `done` (0-based): up to `max_rounds`, and past
// `min_rounds` only while the part has run under `budget_s` seconds. A
// loaded machine can slow a collective a hundredfold (a rank waits for its
// peer to be scheduled at every handoff), and the group must still end.
bool more_rounds(int done, int min_rounds, int max_rounds, Clock::time_point start, double budget_s) {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  return agreed(done < max_rounds && (done < min_rounds || elapsed < budget_s)) != 0;
}

template <class T>
std::string json_list(const std::vector<T>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t k = 0; k < v.size(); ++k) os << (k ? ", " : "") << v[k];
  return os.str() + "]";
}
template <class T>
std::string json_lists(const std::vector<std::vector<T>>& v) {
  std::string s = "[";
  for (size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + json_list(v[k]);
  return s + "]";
}

// loom against MPI on the same float32 sizes. Both buffers hold zeros, so
// repeated sums stay finite and equal. A timed run makes k calls back to
// back, k chosen per size for about 50 ms of the slower side; each size
// gets up to `reps` rounds, at least 3, within about 5 s.
std::string bench_allreduce(int reps) {
  std::vector<int64_t> sizes = {8};
  for (int64_t kib = 4; kib <= 64 * 1024; kib *= 4) sizes.push_back(kib << 10);  // 4 KiB .. 64 MiB
  std::vector<int> calls;
  std::vector<std::vector<double>> loom_us, mpi_us;
  for (const int64_t bytes : sizes) {
    const int64_t n = bytes / 4;
    Tensor t = zeros({n});  // float32[n]
    std::vector<float> raw(static_cast<size_t>(n), 0.0f);
    int k = 1;
    auto time_loom = [&] {
      barrier();
      const auto t0 = Clock::now();
      for (int i = 0; i < k; ++i) dist::all_reduce(t, dist::ReduceOp::Sum);
      return us_since(t0) / k;
    };
    auto time_mpi = [&] {  // Note [Raw MPI beside loom]
      barrier();
      const auto t0 = Clock::now();
      for (int i = 0; i < k; ++i)
        MPI_Allreduce(MPI_IN_PLACE, raw.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      return us_since(t0) / k;
    };
    time_loom();  // warm-up: buffers faulted in, MPI's shared-memory segments set up
    time_mpi();
    k = agreed(static_cast<int>(std::clamp(50e3 / std::max(time_loom(), time_mpi()), 2.0, 2000.0)));
    std::vector<double> lu, mu;
    const auto start = Clock::now();
    for (int r = 0; more_rounds(r, 3, reps, start, 5); ++r) {
      if (r % 2 == 0) {
        lu.push_back(time_loom());
        mu.push_back(time_mpi());
      } else {
        mu.push_back(time_mpi());
        lu.push_back(time_loom());
      }
    }
    calls.push_back(k);
    loom_us.push_back(lu);
    mpi_us.push_back(mu);
    std::ostringstream line;
    line << "allreduce " << bytes << " B: loom " << median(lu) << " us, MPI " << median(mu) << " us (" << lu.size()
         << " rounds of " << k << " calls, " << ms_since(start) / 1e3 << " s)";
    progress(line.str());
  }
  std::ostringstream os;
  os << "{\"bytes\": " << json_list(sizes) << ", \"calls\": " << json_list(calls)
     << ", \"loom_us\": " << json_lists(loom_us) << ", \"mpi_us\": " << json_lists(mpi_us) << "}";
  return os.str();
}

// AdamW as `loom train` sets it up by default (lr 1e-3, weight decay 0.01).
std::unique_ptr<optim::AdamW> adamw(const std::vector<Tensor>& params) {
  return std::make_unique<optim::AdamW>(params, optim::AdamWOptions(1e-3).weight_decay(0.01));
}

// One training step of `forward` (the module, or DDP around it) on (x, y).
template <class Forward>
void train_step(Forward& forward, optim::Optimizer& opt, const Tensor& x, const Tensor& y) {
  opt.zero_grad();
  Tensor loss = F::cross_entropy(forward(x), y);  // x: (64, 1, 28, 28) -> logits (64, 10)
  loss.backward();
  opt.step();
}

// A model under DDP with its own optimizer.
struct Replica {
  nn::Sequential net{nullptr};
  std::unique_ptr<nn::DistributedDataParallel> ddp;
  std::unique_ptr<optim::AdamW> opt;
};

Replica make_replica(nn::Sequential net, nn::DistributedDataParallelOptions options) {
  Replica r;
  r.net = net;
  r.ddp = std::make_unique<nn::DistributedDataParallel>(net, options);
  r.opt = adamw(net->parameters());
  return r;
}

// Each rank's own batch: 64 random 28x28 one-channel images and labels.
void rank_batch(Tensor& x, Tensor& y) {
  manual_seed(1000 + static_cast<uint64_t>(dist::get_rank()));
  x = randn({64, 1, 28, 28});
  y = randint(10, {64});
}

// ResNet9 under DDP, overlap on (the default) and off, and the same
// buckets' all-reduces with no compute. A round times one step of each of
// the three (barrier before each), in the opposite order every other round;
// up to `rounds` rounds, at least 8, within about 30 s.
std::string bench_ddp(int rounds, double bucket_cap_mb) {
  int64_t default_buckets = 0;
  {
    manual_seed(0);
    nn::DistributedDataParallel probe(models::resnet9(1, 10));
    default_buckets = static_cast<int64_t>(probe.bucket_assignment().size());
  }
  nn::DistributedDataParallelOptions o;
  o.bucket_cap_mb = bucket_cap_mb;
  manual_seed(0);
  Replica overlap = make_replica(models::resnet9(1, 10), o);
  o.overlap = false;
  manual_seed(0);
  Replica serial = make_replica(models::resnet9(1, 10), o);
  Tensor x, y;
  rank_batch(x, y);

  // The buckets' flat buffers, as DDP lays them out (all float32 here).
  const std::vector<Tensor> params = overlap.net->parameters();
  std::vector<Tensor> buckets;
  std::vector<int64_t> bucket_bytes;
  for (const std::vector<int64_t>& b : overlap.ddp->bucket_assignment()) {
    int64_t n = 0;
    for (const int64_t i : b) n += params[static_cast<size_t>(i)].numel();
    buckets.push_back(zeros({n}));
    bucket_bytes.push_back(n * 4);
  }
  auto comm_alone = [&] {  // as DDP issues them: all started, then all waited on
    std::vector<dist::WorkPtr> works;
    for (Tensor& b : buckets) works.push_back(dist::default_group().all_reduce(b, dist::ReduceOp::Avg));
    for (const dist::WorkPtr& w : works) w->wait();
  };

  std::vector<double> overlap_ms, serial_ms, comm_ms, overlap_wait_ms, serial_wait_ms, hidden;
  auto timed_step = [&](Replica& r, std::vector<double>& ms, std::vector<double>& wait_ms) {
    barrier();
    const auto t0 = Clock::now();
    train_step(*r.ddp, *r.opt, x, y);
    ms.push_back(ms_since(t0));
    const nn::DistributedDataParallelStats& s = r.ddp->last_stats();
    wait_ms.push_back(s.wait_seconds * 1e3);
    // DDP's own timeline: the share of the buckets' all-reduce time that ran
    // before backward ended.
    if (&r == &overlap && s.comm_seconds > 0) hidden.push_back(s.overlapped_seconds / s.comm_seconds);
  };
  auto timed_comm = [&] {
    barrier();
    const auto t0 = Clock::now();
    comm_alone();
    comm_ms.push_back(ms_since(t0));
  };
  for (int k = 0; k < 3; ++k) {  // warm-up: gradients, optimizer state and caches allocated
    train_step(*overlap.ddp, *overlap.opt, x, y);
    train_step(*serial.ddp, *serial.opt, x, y);
    comm_alone();
  }
  const auto start = Clock::now();
  for (int r = 0; more_rounds(r, 8, rounds, start, 30); ++r) {
    if (r % 2 == 0) {
      timed_step(overlap, overlap_ms, overlap_wait_ms);
      timed_step(serial, serial_ms, serial_wait_ms);
      timed_comm();
    } else {
      timed_comm();
      timed_step(serial, serial_ms, serial_wait_ms);
      timed_step(overlap, overlap_ms, overlap_wait_ms);
    }
  }
  int64_t n_params = 0;
  for (const Tensor& p : params) n_params += p.numel();
  std::ostringstream line;
  line << "ddp: " << buckets.size() << " buckets; step with overlap " << median(overlap_ms) << " ms, without "
       << median(serial_ms) << " ms; all-reduces alone " << median(comm_ms) << " ms (" << comm_ms.size()
       << " rounds, " << ms_since(start) / 1e3 << " s)";
  progress(line.str());
  std::ostringstream os;
  os << "{\"model\": \"resnet9\", \"batch\": 64, \"parameters\": " << n_params
     << ", \"bucket_cap_mb\": " << bucket_cap_mb << ", \"bucket_bytes\": " << json_list(bucket_bytes)
     << ", \"default_cap_buckets\": " << default_buckets << ",\n  \"overlap_ms\": " << json_list(overlap_ms)
     << ",\n  \"no_overlap_ms\": " << json_list(serial_ms) << ",\n  \"comm_ms\": " << json_list(comm_ms)
     << ",\n  \"overlap_wait_ms\": " << json_list(overlap_wait_ms)
     << ",\n  \"no_overlap_wait_ms\": " << json_list(serial_wait_ms)
     << ",\n  \"hidden_fraction\": " << json_list(hidden) << "}";
  return os.str();
}

// The CNN step at batch 64 per rank: rank 0 alone (no DDP; the other ranks
// sleep in sleeping_barrier, so their cores are free as in `-np 1`) against
// all ranks under DDP (its defaults, as `loom train` would use). A third
// phase, every rank training its own model at once with no communication,
// tells what sharing the machine's cores costs apart from what DDP adds. A
// round runs `steps` steps of each phase and records the mean step time (of
// the slowest rank where several train); up to `rounds` rounds, at least 3,
// within about 30 s.
std::string bench_scaling(int rounds) {
  constexpr int steps = 5;
  manual_seed(0);
  nn::Sequential solo = models::cnn(1, 10);
  auto solo_opt = adamw(solo->parameters());
  manual_seed(0);
  Replica ddp = make_replica(models::cnn(1, 10), {});
  Tensor x, y;
  rank_batch(x, y);
  auto solo_forward = [&](const Tensor& in) { return solo->forward(in); };

  std::vector<double> solo_ms, ddp_ms, ddp_wait_ms, apart_ms;
  auto slowest = [](double ms) {  // Note [Raw MPI beside loom]
    MPI_Allreduce(MPI_IN_PLACE, &ms, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return ms;
  };
  auto solo_phase = [&] {
    if (is_root()) {
      const auto t0 = Clock::now();
      for (int k = 0; k < steps; ++k) train_step(solo_forward, *solo_opt, x, y);
      solo_ms.push_back(ms_since(t0) / steps);
    }
    sleeping_barrier();
  };
  auto ddp_phase = [&] {
    barrier();
    double wait = 0;
    const auto t0 = Clock::now();
    for (int k = 0; k < steps; ++k) {
      train_step(*ddp.ddp, *ddp.opt, x, y);
      wait += ddp.ddp->last_stats().wait_seconds;
    }
    ddp_ms.push_back(slowest(ms_since(t0) / steps));
    ddp_wait_ms.push_back(wait * 1e3 / steps);
  };
  auto apart_phase = [&] {
    barrier();
    const auto t0 = Clock::now();
    for (int k = 0; k < steps; ++k) train_step(solo_forward, *solo_opt, x, y);
    apart_ms.push_back(slowest(ms_since(t0) / steps));
  };
  for (int k = 0; k < 2; ++k) {  // warm-up
    train_step(solo_forward, *solo_opt, x, y);
    train_step(*ddp.ddp, *ddp.opt, x, y);
  }
  sleeping_barrier();
  const auto start = Clock::now();
  for (int r = 0; more_rounds(r, 3, rounds, start, 30); ++r) {
    if (r % 2 == 0) {
      solo_phase();
      ddp_phase();
      apart_phase();
    } else {
      apart_phase();
      ddp_phase();
      solo_phase();
    }
  }
  std::ostringstream line;
  line << "scaling: rank 0 alone " << median(solo_ms) << " ms/step, " << dist::get_world_size() << " ranks under DDP "
       << median(ddp_ms) << " ms/step, all ranks apart " << median(apart_ms) << " ms/step (" << ddp_ms.size()
       << " rounds, " << ms_since(start) / 1e3 << " s)";
  progress(line.str());
  std::ostringstream os;
  os << "{\"model\": \"cnn\", \"batch_per_rank\": 64, \"steps_per_round\": " << steps
     << ", \"buckets\": " << ddp.ddp->bucket_assignment().size() << ",\n  \"solo_ms\": " << json_list(solo_ms)
     << ",\n  \"ddp_ms\": " << json_list(ddp_ms) << ",\n  \"ddp_wait_ms\": " << json_list(ddp_wait_ms)
     << ",\n  \"apart_ms\": " << json_list(apart_ms) << "}";
  return os.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string json, only;
  int reps = 11;
  bool check = true;
  double bucket_cap_mb = 25;  // DDP's default (its first bucket holds 1 MiB)
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    auto value = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "bench_distributed: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--json") json = value();
    else if (a == "--reps") reps = std::stoi(value());
    else if (a == "--only") only = value();
    else if (a == "--no-check") check = false;
    else if (a == "--bucket-cap-mb") bucket_cap_mb = std::stod(value());
    else {
      std::fprintf(stderr, "usage: bench_distributed --json OUT.json [--reps R] [--only allreduce,ddp,scaling] "
                           "[--no-check] [--bucket-cap-mb MB]\n");
      return 2;
    }
  }
  if (json.empty() || reps < 1) {
    std::fprintf(stderr, "bench_distributed: --json OUT.json is required, and --reps must be at least 1\n");
    return 2;
  }
  std::set<std::string> parts;
  std::stringstream ss(only);
  for (std::string p; std::getline(ss, p, ',');) parts.insert(p);
  auto want = [&](const char* p) { return parts.empty() || parts.count(p) > 0; };
  try {
    set_num_threads(1);
    dist::Options options;
    options.check = check;
    dist::init_process_group("mpi", options);
    LOOM_CHECK(dist::get_world_size() >= 2, "bench_distributed: run it under mpirun -np 2 or more, got ",
               dist::get_world_size(), " rank(s)");
    std::ostringstream os;
    os << "{\"world_size\": " << dist::get_world_size() << ", \"threads\": " << get_num_threads()
       << ", \"check\": " << (check ? "true" : "false");
    if (want("allreduce")) os << ",\n \"allreduce\": " << bench_allreduce(reps);
    // A round times a single step of each mode, and the difference that
    // matters is a fraction of a step: sixteen times the rounds.
    if (want("ddp")) os << ",\n \"ddp\": " << bench_ddp(16 * reps, bucket_cap_mb);
    if (want("scaling")) os << ",\n \"scaling\": " << bench_scaling(reps);
    os << "}\n";
    if (is_root()) {
      const std::string text = os.str();
      io::write_file_atomic(json, text.data(), text.size());
    }
    dist::destroy_process_group();
  } catch (const Error& e) {
    // Every rank must stop: the others would wait in a collective forever.
    dist::abort_job(std::string("bench_distributed: ") + e.what());
  }
  return 0;
}
