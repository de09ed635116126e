// A fused kernel's program: what the `Fused` op computes (typed parameter
// FusedParams of its KernelCall). The graph layer's fusion pass
// (src/jit/fusion.cpp) writes programs; backends interpret them. Kernels
// know nothing of graphs: a program is a value like a ConvParams.
//
// Note [Fused programs]
// A program is a list of instructions over float registers, each register a
// tile of the iteration domain's elements (the CPU kernel runs each
// instruction over a block of 16-float tiles before the next one), so the
// intermediates of a fused group live in registers and cache, never in
// tensors. An instruction that computes stands for one primitive of the
// unfused graph and carries that primitive's op and scalar parameters (f[],
// i[] as ops.def defines them), so the program means exactly what the nodes
// it replaces meant, and a backend gives it the bits those nodes' own
// kernels give (the CPU interpreter calls the same vector functions as the
// elementwise kernels, and sums rows in the Sum kernel's order).
//
// Values. Registers hold float32. Bool values (comparisons, LogicalNot,
// IsNan, a Where's condition) are 1.0f or 0.0f; operands of LogicalAnd,
// LogicalOr, LogicalNot and a Where's condition count as true when nonzero.
// Inputs and outputs are float32 or bool tensors; a bool load gives 0/1, a
// bool store writes value != 0. A Copy instruction is a cast between the
// two (float -> bool: x != 0, NaN counts as true as static_cast<bool>).
//
// The domain. `domain` is the shape of the group's full-size values. With
// reduce_dims = k > 0, its last k dims are reduced by the one Reduce
// instruction (at most one per program, tinygrad's rule), and every
// instruction has a phase:
//   Pre   full-size, before the reduction (feeds it)
//   Row   one value per row (domain[:-k]), after the reduction: the reduced
//         value and elementwise ops on it (a norm's sqrt, a mean's scaling)
//   Post  full-size, after the reduction: reads Pre registers (recomputed:
//         the interpreter runs the Pre instructions again over the row,
//         which is still in cache) and Row registers (broadcast along the
//         row): softmax's exp(x - max) / sum
// Without a reduction every instruction is Pre. Operands of an instruction
// are registers written by earlier instructions of the same or an earlier
// phase (a Post may read Pre and Row registers; a Row reads only Row
// registers).
//
// GEMM epilogues. With `product`, the call's in[0] (batch, M, K) and in[1]
// (batch, K, N) are the operands of a float32 Bmm (any strides), the domain
// is (batch, M, N), out[0] is a dense float32 tensor of the domain's shape
// that overlaps no input, and the program has no reduction. The kernel
// multiplies into out[0] and runs the program on each block of it as the
// GEMM finishes the block, while it is in cache (Note [GEMM epilogue] in
// src/backend/cpu/cpu_gemm.h): a Product instruction reads the product at
// the current element, Loads read in[2] and up, and a Store to out[0]
// overwrites the product with the program's result. The product's bits are
// the Bmm kernel's, so the program gives the bits of the Bmm followed by
// the elementwise kernels.
//
// Order. The fusion pass writes the Pre instructions, then the Row ones,
// then the Post ones; within a phase, Loads, then the computing
// instructions in their nodes' order, then Stores.
//
// What the CPU kernel also relies on (and checks: Note [Fused kernel] in
// src/backend/cpu/cpu_fused.cpp): a Copy's i[0] names its target dtype as
// static_cast<int64_t>(DType): Bool gives x != 0 as 1 / 0, anything else
// (Float32 = 0, the default) the value itself. A register written in the
// Row phase (the Reduce's result included) is written in no other phase. An
// output stored before the Post phase (a Pre or Row Store) does not overlap
// an input the Post phase reads again (the Post pass re-reads its Loads).
//
// Operands in the KernelCall. in[s] is the tensor of input slot s, out[s]
// of output slot s. A Pre or Post Load or Store addresses its tensor with
// the domain's rank and sizes (any strides, 0 where it broadcasts); a Row
// Load or Store with domain[:-k] (the reduced value's shape). Outputs do
// not overlap inputs or each other, except that in a program without a
// reduction an output may be exactly an input (same storage, offset, sizes
// and strides: the planner's in-place reuse), which the Loads-before-Stores
// order makes safe block by block.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/window2d.h"
#include "core/tensor_impl.h"

namespace loom {

enum class OpKind : uint16_t;

struct FusedInstr {
  enum class Kind : uint8_t {
    Load,    // r[dst] = in[a] at the current element (converted to float)
    Const,   // r[dst] = imm
    Op,      // r[dst] = op(r[a], r[b], r[c]) with f[], i[]: one primitive (unary, binary, Where,
             // ThresholdBackward, GeluBackward, Copy as a cast); unused operands are -1
    Reduce,  // r[dst] = op over the row of r[a] (a Pre register): op is Sum, Amax or Amin; phase Row,
             // and the first Row instruction (the interpreter folds r[a] during the Pre pass)
    Store,   // out[dst] at the current element = r[a] (converted to the output's dtype)
    Product, // r[dst] = the product at the current element (a program with `product`; Pre)
  };
  enum class Phase : uint8_t { Pre, Row, Post };
  Kind kind = Kind::Op;
  Phase phase = Phase::Pre;
  OpKind op{};
  int16_t dst = -1;
  int16_t a = -1, b = -1, c = -1;
  float imm = 0;
  double f[2] = {};
  int64_t i[2] = {};
  bool operator==(const FusedInstr&) const = default;
};

struct FusedProgram {
  std::vector<FusedInstr> code;
  int registers = 0;
  Shape domain;         // full-size shape
  int reduce_dims = 0;  // trailing dims of the domain that the Reduce folds (0: none)
  // A GEMM epilogue (Note [Fused programs]): in[0] (batch, M, K) @ in[1]
  // (batch, K, N) is computed into out[0] and the program runs on each
  // finished block of it.
  bool product = false;
  bool operator==(const FusedProgram&) const = default;
  // One instruction per line: "r3 = Mul r1 r2", "out0 <- r3", "r4 = Sum(row) r3".
  std::string str() const;
  size_t hash() const;
};

// The typed parameter of a Fused call: the program, shared by every replay
// of the graph (a value: compared and hashed by its contents).
struct FusedParams {
  std::shared_ptr<const FusedProgram> program;
  bool operator==(const FusedParams& o) const {
    return program == o.program || (program && o.program && *program == *o.program);
  }
};

}  // namespace loom
