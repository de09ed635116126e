// The graph IR behind loom::jit::Graph (include/loom/jit.h).
//
// Note [The graph IR]
// A captured step is a list of nodes in execution order. A node is a kernel
// call (a KernelCall recorded where run_kernel ran it: op, scalar and typed
// parameters) or a host check (a bounds check that host code made on values
// of the step). Nodes read and write values; a value is a view of a buffer
// (dtype, sizes, strides, offset in elements), so the aliasing that views
// create is explicit: two values alias exactly when they share a buffer. A
// buffer is a block of memory with a kind that says where its bytes live at
// replay:
//   Input        an argument of the step (rebound at each replay)
//   State        existed before the step and outlives it: parameters,
//                gradients, optimizer state, BatchNorm running statistics
//   NewState     created by the step and outliving it, held by host objects
//                (gradients that backward allocates after zero_grad(true)):
//                the replay writes the storage the capture created
//   Output       created by the step and returned (fresh at each replay)
//   Intermediate created and dead within the step: planned into the arena
//   Constant     filled on the host during the step (a tensor({...})) or
//                folded from frozen state: the graph keeps its bytes
//   Workspace    a kernel's scratch: an intermediate live for one node
// Nodes are in a valid topological order by construction (they ran in it);
// the read and write sets over buffers give the dependencies that a
// scheduler needs (read-after-write, write-after-read, write-after-write).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/capture.h"
#include "loom/generator.h"
#include "loom/jit.h"

namespace loom::jit::detail {

// "[2,3]"
std::string dims(const Shape& s);

enum class BufferKind : uint8_t { Input, State, NewState, Output, Intermediate, Constant, Workspace };
const char* buffer_kind_name(BufferKind k);

struct BufferInfo {
  BufferKind kind = BufferKind::Intermediate;
  size_t nbytes = 0;
  Device device = Device::cpu();
  std::weak_ptr<Storage> captured;  // the storage the capture saw (State, NewState, Input, Output)
  std::shared_ptr<Storage> owned;   // a Constant's bytes
  int arg = -1;                     // Input: the argument
  int64_t arg_offset = 0;           // Input: the argument's storage offset at capture (elements)
  int alloc_node = -1;              // created before node alloc_node ran (-1: before the step)
  int first = -1, last = -1;        // nodes that touch it (arena interval)
  bool written = false;             // some node writes it
  bool kernel_touched = false;      // capture: a kernel has used it
  int64_t arena_offset = -1;        // planned offset (Intermediate, Workspace)
  int merged_into = -1;             // in-place reuse: the buffer whose bytes it takes over
};

struct ValueInfo {
  int buffer = -1;
  DType dtype = kFloat32;
  Shape sizes, strides;
  int64_t offset = 0;
};

enum class NodeKind : uint8_t { Kernel, HostCheck };

struct NodeInfo {
  NodeKind kind = NodeKind::Kernel;
  OpKind op{};
  std::vector<int> in;   // value ids; -1 = an absent optional input
  std::vector<int> out;  // value ids
  double f[4] = {};
  int64_t i[4] = {};
  KernelParams params;
  int workspace = -1;    // buffer id of its scratch
  size_t workspace_bytes = 0;
  int rng = -1;          // the random reservation it draws from
  int rng_slot = -1;     // i[rng_slot] = seed, i[rng_slot + 1] = offset
  std::function<capture::Hyperparameters()> hyper;  // fused optimizers: read before each replay
  std::function<void(const std::vector<Tensor>&)> check;  // HostCheck
  bool folded = false;   // constant folding: runs once, not at each replay
  bool backward = false; // recorded after a backward pass began (forward nodes come before)
  bool recompute = false;  // a copy of a forward node, run again before the backward needs its outputs
  std::string name() const;
};

struct RngDraw {
  Generator generator;
  uint64_t n = 0;
  uint64_t seed = 0, offset = 0;  // at capture
  bool used = false;
};

struct GraphImpl {
  std::vector<BufferInfo> buffers;
  std::vector<ValueInfo> values;
  std::vector<NodeInfo> nodes;
  std::vector<RngDraw> draws;
  std::vector<int> outputs;  // value ids returned, in order
  std::vector<int> args;     // value id of each argument
  MemoryPlan plan;
  int threads = 0;           // the thread count the workspaces were sized for
  std::vector<int> frozen;   // State buffers the folded nodes read (refolded when written outside)

  // Buffers that a node reads / writes (through any of its values).
  std::vector<int> reads(const NodeInfo& n) const;
  std::vector<int> writes(const NodeInfo& n) const;
  std::string value_str(int v) const;  // "%3 f32[16,128]"
  std::string str() const;
  // Where the intermediates peak, and which ops wrote what is live there.
  std::string peak_str() const;
  std::string dot() const;
  // A hash of the structure (ops, geometry, buffer kinds; not the values of
  // scalars that change between steps): two recordings of a settled step agree.
  size_t structure_hash() const;
};

// Passes (src/jit/passes.cpp), in the order compile runs them.
// Removes nodes whose writes nobody reads (intermediates only); returns how many.
int eliminate_dead_code(GraphImpl& g);
// Lets an Add that reads state right after a Copy filled it with +0 from a
// Fill read the zeros instead, and drops the fill when a Copy then
// overwrites the state whole; returns how many Adds it rewrote.
int forward_zero_fills(GraphImpl& g);
// Removes copies from a value onto itself, copies into a fresh intermediate
// from one that dies there (the copy's output takes over its input's
// buffer), and copies that overwrite state whole from such an intermediate
// (its writer writes the state instead); returns how many.
int remove_noop_copies(GraphImpl& g);
// Runs, once, the nodes that read only constants and State the graph never
// writes (frozen parameters in an inference graph), and turns what they
// produce into Constants; returns how many nodes were folded.
int fold_constants(GraphImpl& g);
// The recompute pass (src/jit/remat.cpp, Note [Recomputing activations]).
// Copies cheap producers of activations to the backward's first use; returns
// how many nodes it inserted.
int recompute_cheap(GraphImpl& g);
// Checkpoints the forward in `segments` runs (<= 0: sqrt of its heavy nodes)
// and recomputes each run's activations in the backward; returns how many
// nodes it inserted.
int recompute_segments(GraphImpl& g, int segments);
// Ops whose kernel computes output element k from element k of each input
// in one dtype (unary and binary arithmetic, Where, relu's and gelu's
// backward masks): the planner's in-place reuse and the fusion pass use it.
bool elementwise_kernel(OpKind op);
// The fusion pass (src/jit/fusion.cpp, Note [Fusion]): groups elementwise
// chains, with at most one row reduction each, into Fused nodes; returns how
// many Fused nodes it made.
int fuse(GraphImpl& g, bool gemm_epilogues);
// Recomputes first/last use of every buffer from the nodes.
void compute_liveness(GraphImpl& g);

// The planner (src/jit/planner.cpp): in-place reuse, then offsets in one
// arena for every Intermediate and Workspace buffer. Fills g.plan.
void plan_memory(GraphImpl& g, bool in_place);
// Offsets for intervals (inclusive node ranges) and sizes: largest first,
// best fit among the gaps left by buffers live at the same time. Returns
// the arena size. Exposed for the planner's exhaustive test.
struct Interval {
  int first = 0, last = 0;
  size_t bytes = 0;
};
size_t assign_offsets(const std::vector<Interval>& intervals, std::vector<int64_t>& offsets);
// The peak over nodes of the summed bytes of the intervals live there.
size_t liveness_lower_bound(const std::vector<Interval>& intervals);

}  // namespace loom::jit::detail
