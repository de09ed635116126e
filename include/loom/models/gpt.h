// A decoder-only transformer language model (nanoGPT's GPT-2 layout):
//
//   loom::models::GPTConfig cfg{.n_layer = 4, .n_embd = 256, .n_head = 4,
//                               .block_size = 128, .vocab_size = 113};
//   loom::models::GPT gpt(cfg);
//   Tensor logits = gpt(idx);                       // idx (B, T) int64 -> (B, T, V)
//   Tensor loss = gpt->loss(idx, targets);          // mean cross entropy, nats
//   Tensor out = gpt->generate(prompt, 200, {.temperature = 0.8, .top_k = 40, .seed = 1});
//
// Pre-norm blocks x + attn(ln_1(x)), x + mlp(ln_2(x)); learned token and
// position embeddings; a final LayerNorm and a linear head, whose weight is
// the token embedding when tie_weights is set. Parameter names are
// nanoGPT's ("transformer.h.0.attn.c_attn.weight"), so its state dicts map
// one to one (with tied weights loom has no "lm_head.weight": nanoGPT's is
// the same tensor as "transformer.wte.weight"). Initialization is nanoGPT's:
// N(0, 0.02) weights, zero biases, and the residual projections (c_proj)
// N(0, 0.02 / sqrt(2 n_layer)), from the global generator.
//
// Incremental decoding: a KVCache holds each layer's keys and values of the
// tokens seen so far, so forward(idx, &cache) with the next token costs one
// position, not the whole sequence; its logits equal those of recomputing
// the whole sequence (tests/test_gpt.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "loom/nn.h"

namespace loom::models {

struct GPTConfig {
  int64_t n_layer = 4;
  int64_t n_embd = 256;  // d_model
  int64_t n_head = 4;
  int64_t block_size = 128;  // context length
  int64_t vocab_size = 256;
  double dropout = 0.0;     // embeddings, attention weights, residual branches
  bool bias = true;         // Linear and LayerNorm biases
  bool tie_weights = true;  // lm_head.weight = transformer.wte.weight
};

// Keys and values of the positions seen so far, per layer: (B, H, block_size,
// head_dim) buffers of which the first `length` positions are filled.
struct KVCache {
  std::vector<Tensor> k, v;
  int64_t length = 0;
  int64_t batch = 0;
  void reset() { length = 0; }
};

// Note [Paged KV cache] (src/models/gpt.cpp): the cache of a server that
// decodes many sequences together (continuous batching, as vLLM). Every
// layer's keys and values live in one pool of blocks, (num_blocks,
// block_size, n_head, head_dim); a sequence holds a block table, the ids of
// its blocks in position order, so position p is row p % block_size of
// block table[p / block_size]. Blocks are reference-counted so sequences can
// share a prefix and copy a block only when they write to it.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks = 0);
  // A free block with one reference; none when every block is in use.
  std::optional<int64_t> allocate();
  void retain(int64_t block);   // one more reference (a shared prefix)
  void release(int64_t block);  // one fewer; the block is free at zero
  int64_t ref_count(int64_t block) const;
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_blocks() const { return static_cast<int64_t>(refs_.size()); }

 private:
  void check(const char* what, int64_t block) const;
  std::vector<int32_t> refs_;
  std::vector<int64_t> free_;  // handed out from the back: the lowest ids first
};

struct PagedKVCache {
  int64_t block_size = 16;
  std::vector<Tensor> k, v;  // per layer: (num_blocks, block_size, n_head, head_dim)
  BlockAllocator blocks;
  // Copies block `from` into block `to` in every layer (copy-on-write).
  void copy_block(int64_t from, int64_t to);
  // Appends blocks to a sequence's table until positions [0, length) have
  // rows. False, with the table unchanged, when too few blocks are free.
  bool reserve(std::vector<int64_t>& table, int64_t length);
  // Releases every block of a table (and clears it).
  void release(std::vector<int64_t>& table);
};

// One step of a paged batch: T tokens of S sequences, flattened. Token t
// belongs to sequence seq_index[t] at position positions[t]; its keys and
// values go to cache row slots[t] (block * block_size + offset) of every
// layer; sequence s reads its positions through block_tables[s].
struct PagedBatch {
  Tensor positions;     // (T) int64
  Tensor seq_index;     // (T) int64, in [0, S)
  Tensor block_tables;  // (S, MB) int64 block ids
  Tensor slots;         // (T) int64 cache rows
};

// Gathers the tokens of many sequences into one paged batch.
class PagedBatchBuilder {
 public:
  explicit PagedBatchBuilder(int64_t block_size) : block_size_(block_size) {}
  // The tokens of one sequence at positions [start, start + size), which its
  // block table covers. Returns the row of its last token in the batch.
  int64_t add(const std::vector<int64_t>& table, int64_t start, const std::vector<int64_t>& tokens);
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  // The token ids (T) and the batch; tables are padded to the longest.
  std::pair<Tensor, PagedBatch> build() const;

 private:
  int64_t block_size_;
  std::vector<int64_t> tokens_, positions_, seq_index_, slots_;
  std::vector<std::vector<int64_t>> tables_;
};

struct GenerateOptions {
  double temperature = 1.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: the whole vocabulary
  double top_p = 1.0;        // nucleus: the smallest set of likeliest tokens whose probability reaches top_p
  uint64_t seed = 0;
  bool use_cache = true;  // false: recompute the whole (cropped) sequence every step
};

// The distribution a row of `vocab` logits is sampled from at temperature
// > 0: softmax(logits / temperature) restricted to the top_k largest (all
// when top_k is 0), then to the smallest set, by decreasing probability
// with ties by index, whose probability reaches top_p. Weights are
// unnormalized, most likely first.
struct SamplingDistribution {
  std::vector<int64_t> order;
  std::vector<double> weight;
  double sum = 0;
  // One token, from one draw of the splitmix64 stream `state`.
  int64_t draw(uint64_t& state) const;
  // Every token's probability (zero outside the kept set).
  std::vector<double> probabilities(int64_t vocab) const;
};
SamplingDistribution sampling_distribution(const float* logits, int64_t vocab, const GenerateOptions& options);

// One token from a row of logits: the first largest at temperature 0, else
// sampling_distribution(...).draw(state). `loom generate`, GPT::generate
// and the serving engine all sample with it.
int64_t sample_token(const float* logits, int64_t vocab, const GenerateOptions& options, uint64_t& state);

class CausalSelfAttentionImpl : public nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const GPTConfig& cfg);
  Tensor forward(const Tensor& x) override;
  // x (B, T, C) at positions [cache.length, cache.length + T); appends its keys
  // and values to layer `layer`'s cache (no grad).
  Tensor forward(const Tensor& x, KVCache& cache, size_t layer);
  // x (T, C) of a paged batch: writes its keys and values to the cache,
  // attends through the block tables (paged_attention).
  Tensor forward(const Tensor& x, const PagedBatch& batch, PagedKVCache& cache, size_t layer);

  int64_t n_head, n_embd;
  double dropout;
  nn::Linear c_attn{nullptr}, c_proj{nullptr};
  nn::Dropout resid_dropout{nullptr};
};
LOOM_MODULE(CausalSelfAttention);

class MLPImpl : public nn::Module {
 public:
  explicit MLPImpl(const GPTConfig& cfg);
  Tensor forward(const Tensor& x) override;

  nn::Linear c_fc{nullptr}, c_proj{nullptr};
  nn::Dropout dropout{nullptr};
};
LOOM_MODULE(MLP);

class BlockImpl : public nn::Module {
 public:
  explicit BlockImpl(const GPTConfig& cfg);
  Tensor forward(const Tensor& x) override;
  Tensor forward(const Tensor& x, KVCache& cache, size_t layer);
  Tensor forward(const Tensor& x, const PagedBatch& batch, PagedKVCache& cache, size_t layer);
  // forward with the attention and the MLP half each in a loom::checkpoint.
  Tensor forward_checkpointed(const Tensor& x);

  nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  CausalSelfAttention attn{nullptr};
  MLP mlp{nullptr};
};
LOOM_MODULE(Block);

class GPTImpl : public nn::Module {
 public:
  explicit GPTImpl(const GPTConfig& cfg);
  // idx (B, T) or (T) int64 token ids, T <= block_size -> logits (B, T, vocab).
  Tensor forward(const Tensor& idx) override;
  // The next positions of a cached sequence: idx (B, T) continues the
  // cache's tokens (cache.length + T <= block_size); returns their logits
  // and extends the cache. Runs without autograd.
  Tensor forward(const Tensor& idx, KVCache& cache);
  // Mean cross entropy of forward(idx) against targets (B, T), in nats.
  Tensor loss(const Tensor& idx, const Tensor& targets);
  // An empty cache for `batch` sequences (buffers sized block_size).
  KVCache make_cache(int64_t batch) const;
  // A paged cache of num_blocks free blocks of block_size positions, and
  // the bytes one block takes over every layer's keys and values.
  PagedKVCache make_paged_cache(int64_t num_blocks, int64_t block_size = 16) const;
  int64_t paged_block_bytes(int64_t block_size = 16) const;
  // The logits (T, vocab) of a paged batch's tokens (T) int64: each token's
  // keys and values are written to its slot, then it attends its sequence's
  // positions 0..positions[t]. Row t depends on its own sequence alone, bit
  // for bit, whatever else the batch holds (Note [Paged KV cache]). Runs
  // without autograd.
  Tensor forward(const Tensor& tokens, const PagedBatch& batch, PagedKVCache& cache);
  // Appends max_new_tokens sampled tokens to idx (B, T) (or (T)); beyond
  // block_size the model sees the last block_size tokens, as nanoGPT.
  Tensor generate(const Tensor& idx, int64_t max_new_tokens, const GenerateOptions& options = {});
  void reset_parameters();
  std::string extra_repr() const override;
  // Activation checkpointing: each block's activations are dropped after
  // the forward and recomputed in the backward (loom::checkpoint on each
  // half of a block), so training keeps one half-block's activations at a
  // time.
  void set_checkpoint_activations(bool on) { checkpoint_activations_ = on; }
  bool checkpoint_activations() const { return checkpoint_activations_; }

  GPTConfig config;
  nn::ModuleDict transformer{nullptr};  // wte, wpe, drop, h (ModuleList of Block), ln_f
  nn::Embedding wte{nullptr}, wpe{nullptr};
  nn::Dropout drop{nullptr};
  nn::ModuleList h{nullptr};
  nn::LayerNorm ln_f{nullptr};
  nn::Linear lm_head{nullptr};  // null with tie_weights
 private:
  bool checkpoint_activations_ = false;
};
LOOM_MODULE(GPT);

// The model config as JSON ({"n_layer":4,...}) and back (checked).
std::string gpt_config_to_json(const GPTConfig& cfg);
GPTConfig gpt_config_from_json(const std::string& json);

}  // namespace loom::models
