// The graph scheduler (Note [Scheduling] in src/jit/scheduler.cpp): the
// dependency edges on hand-made graphs, the serial fallback for chains, and
// compiled steps whose nodes run side by side giving bitwise the serial
// order's results (wide graphs, arena reuse, MLP, LSTM and GPT training,
// 2 and 1 threads), and a failing host check leaving the state as serially.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "jit/graph.h"
#include "jit/scheduler.h"
#include "loom/loom.h"
#include "jit_test_util.h"
#include "test_util.h"

using namespace loom;
using jit::detail::BufferKind;
using jit::detail::GraphImpl;
using jit::detail::NodeKind;
using jit::detail::Schedule;
using jit::detail::SchedulePolicy;
using namespace loom::test;  // same_bits and the compiled-step helpers (jit_test_util.h)

namespace {

// The thread count and scheduling policy for one test, restored after it.
struct Setting {
  int threads;
  SchedulePolicy policy;
  Setting(int n, SchedulePolicy p) : threads(get_num_threads()), policy(jit::detail::schedule_policy_for_testing()) {
    set_num_threads(n);
    jit::detail::set_schedule_policy_for_testing(p);
  }
  ~Setting() {
    set_num_threads(threads);
    jit::detail::set_schedule_policy_for_testing(policy);
  }
};

jit::CompileOptions serial_options() {
  jit::CompileOptions o;
  o.parallel = false;
  return o;
}

// ---- hand-made graphs

// A graph under construction: f32 buffers of `floats` elements, nodes in order.
struct GraphBuilder {
  GraphImpl g;
  int buffer(BufferKind kind, int64_t floats, int64_t arena_offset = -1) {
    jit::detail::BufferInfo b;
    b.kind = kind;
    b.nbytes = static_cast<size_t>(floats) * 4;
    b.arena_offset = arena_offset;
    g.buffers.push_back(b);
    jit::detail::ValueInfo v;
    v.buffer = static_cast<int>(g.buffers.size()) - 1;
    v.sizes = {floats};
    v.strides = {1};
    g.values.push_back(v);
    return v.buffer;  // value id == buffer id here
  }
  int node(OpKind op, std::vector<int> in, std::vector<int> out) {
    jit::detail::NodeInfo n;
    n.op = op;
    n.in = std::move(in);
    n.out = std::move(out);
    g.nodes.push_back(n);
    return static_cast<int>(g.nodes.size()) - 1;
  }
  int check(std::vector<int> in) {
    jit::detail::NodeInfo n;
    n.kind = NodeKind::HostCheck;
    n.in = std::move(in);
    g.nodes.push_back(n);
    return static_cast<int>(g.nodes.size()) - 1;
  }
};

std::vector<int> preds_of(const Schedule& s, int k) {
  return {s.preds.begin() + s.pred_start[static_cast<size_t>(k)], s.preds.begin() + s.pred_start[static_cast<size_t>(k) + 1]};
}

// The schedule of `g`; without relayout its edges follow the planned offsets.
Schedule schedule_of(const GraphImpl& g, int threads, SchedulePolicy policy = SchedulePolicy::Auto,
                     bool relayout = false) {
  jit::detail::ScheduleOptions o;
  o.threads = threads;
  o.policy = policy;
  o.relayout = relayout;
  return jit::detail::build_schedule(g, o);
}


// `steps` training steps of models a (compiled, serial order) and b
// (compiled, scheduled) from the same weights, batches and seeds: losses
// and every parameter and buffer agree bitwise after each.
template <class M, class Opt, class LossOf, class Batch>
void scheduled_matches_serial(M a, M b, Opt& oa, Opt& ob, LossOf loss_of, Batch batch, int steps) {
  b->load_state_dict(a->state_dict());
  auto serial = loom::compile(training_step(a, oa, loss_of), serial_options());
  auto scheduled = loom::compile(training_step(b, ob, loss_of));
  for (int k = 0; k < steps; ++k) {
    auto [x, y] = batch(k);
    manual_seed(100 + static_cast<uint64_t>(k));
    Tensor la = serial(x, y);
    manual_seed(100 + static_cast<uint64_t>(k));
    Tensor lb = scheduled(x, y);
    EXPECT_TRUE(same_bits(la.detach(), lb.detach())) << "loss at step " << k;
    expect_same_state(*a, *b);
  }
  EXPECT_GE(scheduled.stats().replays, 2);
}

}  // namespace

// Reads and writes over buffers and arena bytes give exactly the needed
// edges: independent nodes none, RAW, WAR through a reused arena range
// (from the old buffer's last writer and readers), WAW on state, and the
// host check's edges.
TEST(SchedulerEdges, ReadWriteAndArenaReuse) {
  GraphBuilder b;
  const int x = b.buffer(BufferKind::Input, 16);
  const int a = b.buffer(BufferKind::Intermediate, 16, 0);
  const int bb = b.buffer(BufferKind::Intermediate, 16, 64);
  const int c = b.buffer(BufferKind::Intermediate, 8, 32);  // over the second half of a's bytes
  const int s = b.buffer(BufferKind::State, 16);
  const int o1 = b.buffer(BufferKind::Output, 16), o2 = b.buffer(BufferKind::Output, 16);
  const int n0 = b.node(OpKind::Neg, {x}, {a});
  const int n1 = b.node(OpKind::Neg, {x}, {bb});
  const int n2 = b.node(OpKind::Add, {a, bb}, {o1});
  const int n3 = b.node(OpKind::Neg, {x}, {c});  // takes a's bytes: after a's writer and reader
  const int n4 = b.node(OpKind::Add, {c, s}, {s});
  const int n5 = b.check({x});
  const int n6 = b.node(OpKind::Neg, {x}, {o2});
  const int n7 = b.node(OpKind::Neg, {bb}, {s});  // WAW on s, after the check
  jit::detail::compute_liveness(b.g);
  const Schedule sc = schedule_of(b.g, 2);
  EXPECT_EQ(preds_of(sc, n0), std::vector<int>{});
  EXPECT_EQ(preds_of(sc, n1), std::vector<int>{});
  EXPECT_EQ(preds_of(sc, n2), (std::vector<int>{n0, n1}));
  EXPECT_EQ(preds_of(sc, n3), (std::vector<int>{n0, n2}));
  EXPECT_EQ(preds_of(sc, n4), std::vector<int>{n3});
  EXPECT_EQ(preds_of(sc, n5), (std::vector<int>{n0, n1, n3}));  // a check orders after x's readers
  EXPECT_EQ(preds_of(sc, n6), std::vector<int>{n5});             // and before kernels that read x
  EXPECT_EQ(preds_of(sc, n7), (std::vector<int>{n1, n4, n5}));  // b read-after-write, s write-after-write
  EXPECT_EQ(sc.order.size(), 8u);

  // Relaid out for concurrency (every node in one parallel segment), c no
  // longer takes a's bytes: n3 waits for nothing, and the arena holds a, b
  // and c side by side.
  const Schedule relaid = schedule_of(b.g, 2, SchedulePolicy::Parallel, true);
  EXPECT_TRUE(relaid.relaid);
  EXPECT_EQ(preds_of(relaid, n3), std::vector<int>{});
  EXPECT_EQ(preds_of(relaid, n2), (std::vector<int>{n0, n1}));
  EXPECT_GE(relaid.arena_bytes, 64u + 64u + 32u);
}

// A small parallel region (48 independent tanh of 4096 floats, which the
// plan stacks in one slot) before a long chain of large tanh (two slots):
// only the region's buffers are spread out, so the arena is the plan's
// plus at most their bytes, where widening every interval by a window
// would keep about a window of the chain's buffers live. And with no
// parallel segment the plan's layout stays as it is.
TEST(SchedulerPlan, ArenaWidensOnlyWhereNodesRunInParallel) {
  constexpr int kRegion = 48, kChain = 100;
  constexpr int64_t kSmall = 4096, kLarge = 1 << 20;
  GraphBuilder b;
  const int x = b.buffer(BufferKind::Input, kSmall), big = b.buffer(BufferKind::Input, kLarge);
  std::vector<int> region;
  for (int k = 0; k < kRegion; ++k) {
    const int t = b.buffer(BufferKind::Intermediate, kSmall);
    b.node(OpKind::Tanh, {x}, {t});
    region.push_back(t);
  }
  int prev = big;
  for (int k = 0; k < kChain; ++k) {
    const int t = b.buffer(k + 1 == kChain ? BufferKind::Output : BufferKind::Intermediate, kLarge);
    b.node(OpKind::Tanh, {prev}, {t});
    prev = t;
  }
  jit::detail::plan_memory(b.g, false);
  const size_t planned = b.g.plan.arena_bytes;
  ASSERT_EQ(planned, 2u * kLarge * 4);  // the chain's two live slots; the region fits beside them in time

  const Schedule s = schedule_of(b.g, 2, SchedulePolicy::Auto, true);
  ASSERT_FALSE(s.serial()) << s.summary();
  ASSERT_EQ(s.segments.size(), 2u) << s.summary();
  EXPECT_TRUE(s.segments[0].parallel);
  EXPECT_EQ(s.segments[0].end, kRegion);
  EXPECT_TRUE(s.relaid);
  EXPECT_EQ(s.planned_arena_bytes, planned);
  EXPECT_LE(s.arena_bytes, planned + static_cast<size_t>(kRegion) * kSmall * 4) << s.summary();
  EXPECT_LT(s.arena_bytes, 4u * kLarge * 4) << s.summary();
  // The region's buffers no longer share bytes: its nodes wait for nothing.
  for (int k = 0; k < kRegion; ++k) EXPECT_EQ(preds_of(s, k), std::vector<int>{}) << "node " << k;
  // Within the region every buffer has bytes of its own.
  for (int p = 0; p < kRegion; ++p)
    for (int q = p + 1; q < kRegion; ++q)
      EXPECT_NE(s.arena_offsets[static_cast<size_t>(region[static_cast<size_t>(p)])],
                s.arena_offsets[static_cast<size_t>(region[static_cast<size_t>(q)])]);
  // The chain still reuses bytes: write-after-read edges from two back.
  EXPECT_EQ(preds_of(s, kRegion + 2), (std::vector<int>{kRegion, kRegion + 1}));

  for (const Schedule& serial :
       {schedule_of(b.g, 2, SchedulePolicy::Serial, true), schedule_of(b.g, 1, SchedulePolicy::Auto, true)}) {
    EXPECT_TRUE(serial.serial());
    EXPECT_FALSE(serial.relaid);
    EXPECT_EQ(serial.arena_bytes, planned);
    EXPECT_EQ(serial.scratch_bytes, 0u);
    for (size_t v = 0; v < b.g.buffers.size(); ++v)
      EXPECT_EQ(serial.arena_offsets[v], b.g.buffers[v].arena_offset) << "buffer " << v;
    EXPECT_EQ(preds_of(serial, 1), std::vector<int>{0});  // the plan's reuse orders the region
  }
}

// Folded nodes do not run and have no edges; arena buffers whose bytes do
// not overlap never order each other.
TEST(SchedulerEdges, FoldedNodesAndDisjointArenaRanges) {
  GraphBuilder b;
  const int x = b.buffer(BufferKind::Input, 16);
  const int k = b.buffer(BufferKind::Constant, 16);
  const int a = b.buffer(BufferKind::Intermediate, 16, 0);
  const int c = b.buffer(BufferKind::Intermediate, 16, 64);  // right after a: no overlap
  const int o = b.buffer(BufferKind::Output, 16);
  const int f = b.node(OpKind::Neg, {k}, {k});
  b.g.nodes[static_cast<size_t>(f)].folded = true;
  const int n1 = b.node(OpKind::Neg, {x}, {a});
  const int n2 = b.node(OpKind::Add, {a, k}, {o});
  const int n3 = b.node(OpKind::Neg, {x}, {c});
  jit::detail::compute_liveness(b.g);
  const Schedule sc = schedule_of(b.g, 2);
  EXPECT_EQ(sc.order, (std::vector<int>{n1, n2, n3}));
  EXPECT_EQ(preds_of(sc, n2), std::vector<int>{n1});
  EXPECT_EQ(preds_of(sc, n3), std::vector<int>{});
}

// A chain has nothing to overlap: one serial segment. Eight independent
// 256^3 products are worth a team.
TEST(SchedulerPlan, ChainIsSerialAndWideGemmsAreParallel) {
  GraphBuilder chain;
  int prev = chain.buffer(BufferKind::Input, 256 * 256);
  for (int k = 0; k < 8; ++k) {
    const int w = chain.buffer(BufferKind::Input, 256 * 256);
    const int out = chain.buffer(k == 7 ? BufferKind::Output : BufferKind::Intermediate, 256 * 256,
                                 k == 7 ? -1 : (k % 2) * 256 * 256 * 4);
    for (int v : {prev, w, out}) chain.g.values[static_cast<size_t>(v)].sizes = {1, 256, 256};
    chain.node(OpKind::Bmm, {prev, w}, {out});
    prev = out;
  }
  const Schedule cs = schedule_of(chain.g, 2);
  EXPECT_TRUE(cs.serial()) << cs.summary();
  EXPECT_EQ(cs.segments.size(), 1u);

  GraphBuilder wide;
  for (int k = 0; k < 8; ++k) {
    const int l = wide.buffer(BufferKind::Input, 256 * 256), r = wide.buffer(BufferKind::Input, 256 * 256);
    const int out = wide.buffer(BufferKind::Output, 256 * 256);
    for (int v : {l, r, out}) wide.g.values[static_cast<size_t>(v)].sizes = {1, 256, 256};
    wide.node(OpKind::Bmm, {l, r}, {out});
  }
  const Schedule ws = schedule_of(wide.g, 2);
  EXPECT_FALSE(ws.serial()) << ws.summary();
  EXPECT_EQ(ws.parallel_nodes(), 8);
  EXPECT_TRUE(schedule_of(wide.g, 1).serial());  // one thread: nothing to split
  EXPECT_TRUE(schedule_of(wide.g, 2, SchedulePolicy::Serial).serial());
}

// ---- compiled functions: scheduled replays give the serial order's bits

// Eight independent products in one compiled function.
TEST(Scheduler, WideMatmulsMatchSerialAndEager) {
  for (SchedulePolicy policy : {SchedulePolicy::Auto, SchedulePolicy::Parallel}) {
    Setting setting(2, policy);
    // a, b: (8, 96, 96); eight products of their slices, each through a
    // relu (a product returned as it is would be new state to the capture:
    // mm's result is a view).
    auto products = [](const Tensor& a, const Tensor& b) {
      std::vector<Tensor> out;
      for (int64_t k = 0; k < a.size(0); ++k) out.push_back(relu(matmul(a.select(0, k), b.select(0, k))));
      return out;
    };
    auto scheduled = loom::compile(products);
    auto serial = loom::compile(products, serial_options());
    for (int call = 0; call < 4; ++call) {
      Tensor a = randn({8, 96, 96}), b = randn({8, 96, 96});
      const std::vector<Tensor> want = products(a, b), got = scheduled(a, b), base = serial(a, b);
      ASSERT_EQ(got.size(), 8u);
      for (size_t k = 0; k < 8; ++k) {
        EXPECT_TRUE(same_bits(got[k], want[k])) << "product " << k << ", call " << call;
        EXPECT_TRUE(same_bits(got[k], base[k])) << "product " << k << ", call " << call;
      }
    }
    EXPECT_GE(scheduled.stats().replays, 3);
  }
}

// Many short-lived temporaries in independent branches: the arena gives the
// same bytes to buffers of different branches, and the write-after-read
// edges that reuse adds keep every branch's values intact: with the
// scheduler's own layout (reuse beyond its window) and with the plan's
// (a memory budget keeps it: reuse everywhere). Unfused, so that every op
// has its own temporary.
TEST(Scheduler, ArenaReuseAcrossBranchesStaysCorrect) {
  Setting setting(2, SchedulePolicy::Parallel);
  auto branches = [](const Tensor& x) {
    NoGradGuard ng;
    Tensor total;
    for (int b = 0; b < 6; ++b) {
      Tensor t = x * static_cast<double>(b + 1);
      for (int k = 0; k < 12; ++k) t = (k % 3 == 0) ? tanh(t) : (k % 3 == 1) ? t * 0.75 + 0.1 : sigmoid(t) - 0.5;
      total = total.defined() ? total + t : t;
    }
    return total;
  };
  for (bool plan_layout : {false, true}) {
    jit::CompileOptions o = serial_options(), p;
    o.fuse = p.fuse = false;
    if (plan_layout) p.memory_budget_bytes = size_t{1} << 40;
    auto scheduled = loom::compile(branches, p);
    auto serial = loom::compile(branches, o);
    const int64_t n = 64 * 1024;
    for (int call = 0; call < 5; ++call) {
      Tensor x = randn({n});
      Tensor want = branches(x);
      EXPECT_TRUE(same_bits(scheduled(x), want)) << "call " << call;
      EXPECT_TRUE(same_bits(serial(x), want)) << "call " << call;
    }
    // 6 x 12 temporaries of n floats live in a few slots of the arena.
    const jit::MemoryPlan plan = scheduled.graph()->memory_plan();
    EXPECT_LT(plan.arena_bytes, static_cast<size_t>(n) * 4 * 6 * 12 / 4);
    EXPECT_GE(plan.buffers_in_arena, 3);
  }
}

TEST(Scheduler, MlpTrainingMatchesSerial) {
  for (int threads : {2, 1}) {
    Setting setting(threads, SchedulePolicy::Parallel);
    manual_seed(1);
    nn::Sequential a = models::mlp(20, {32, 16}, 5), b = models::mlp(20, {32, 16}, 5);
    optim::SGD oa(a->parameters(), optim::SGDOptions(0.1).momentum(0.9));
    optim::SGD ob(b->parameters(), optim::SGDOptions(0.1).momentum(0.9));
    scheduled_matches_serial(a, b, oa, ob, classify, batches({8, 20}, 0, 5, {8}, 0), 6);
  }
}

TEST(Scheduler, LstmTrainingMatchesSerial) {
  for (SchedulePolicy policy : {SchedulePolicy::Parallel, SchedulePolicy::Auto}) {
    Setting setting(2, policy);
    const models::LSTMLMConfig cfg = tiny_lstm();
    manual_seed(5);
    models::LSTMLM a(cfg), b(cfg);
    optim::Adam oa(a->parameters(), optim::AdamOptions(2e-3));
    optim::Adam ob(b->parameters(), optim::AdamOptions(2e-3));
    scheduled_matches_serial(a, b, oa, ob, language_model, batches({2, 10}, 30, 30, {2, 10}, 17), 6);
  }
}

TEST(Scheduler, GptTrainingMatchesSerial) {
  for (int threads : {2, 1}) {
    Setting setting(threads, SchedulePolicy::Parallel);
    const models::GPTConfig cfg = tiny_gpt(2);
    manual_seed(4);
    models::GPT a(cfg), b(cfg);
    optim::AdamW oa(a->parameters(), optim::AdamWOptions(1e-3));
    optim::AdamW ob(b->parameters(), optim::AdamWOptions(1e-3));
    scheduled_matches_serial(a, b, oa, ob, language_model, batches({3, 16}, 40, 40, {3, 16}, 13), 6);
  }
}

// A host check that fails mid-replay throws as in the serial order, and the
// kernels recorded after it that write state (backward, the optimizer) have
// not run: the parameters are those of the serial replay.
TEST(Scheduler, FailingHostCheckLeavesTheStateAsSerially) {
  Setting setting(2, SchedulePolicy::Parallel);
  manual_seed(6);
  nn::Sequential a = models::mlp(12, {16}, 4), b = models::mlp(12, {16}, 4);
  b->load_state_dict(a->state_dict());
  optim::SGD oa(a->parameters(), optim::SGDOptions(0.1)), ob(b->parameters(), optim::SGDOptions(0.1));
  auto serial = loom::compile(training_step(a, oa, classify), serial_options());
  auto scheduled = loom::compile(training_step(b, ob, classify));
  Tensor x = randn({6, 12}), y = randint(0, 4, {6});
  for (int k = 0; k < 4; ++k) {
    serial(x, y);
    scheduled(x, y);
  }
  Tensor bad = tensor(std::vector<int64_t>{0, 1, 2, 3, 9, 1});
  const std::string es = test::error_of([&] { serial(x, bad); });
  const std::string ep = test::error_of([&] { scheduled(x, bad); });
  EXPECT_NE(es, "<no error>");
  EXPECT_EQ(es, ep);
  expect_same_state(*a, *b);
  EXPECT_TRUE(same_bits(serial(x, y), scheduled(x, y)));  // and both still replay
  expect_same_state(*a, *b);
}
