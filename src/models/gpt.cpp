// models::GPT: nanoGPT's decoder-only transformer, with a KV cache for
// incremental decoding (include/loom/models/gpt.h).
#include "loom/models/gpt.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <nlohmann/json.hpp>
#include <sstream>

#include "loom/splitmix64.h"
#include "loom/autograd.h"
#include "loom/checkpoint.h"
#include "loom/error.h"
#include "loom/nn/functional.h"
#include "loom/nn/init.h"

namespace loom::models {
namespace {

namespace F = nn::functional;

void check_config(const GPTConfig& c) {
  LOOM_CHECK(c.n_layer >= 0 && c.n_embd > 0 && c.n_head > 0 && c.block_size > 0 && c.vocab_size > 0,
             "GPT: n_layer must be >= 0 and n_embd, n_head, block_size, vocab_size positive, got n_layer ", c.n_layer,
             ", n_embd ", c.n_embd, ", n_head ", c.n_head, ", block_size ", c.block_size, ", vocab_size ",
             c.vocab_size);
  LOOM_CHECK(c.n_embd % c.n_head == 0, "GPT: n_embd (", c.n_embd, ") must be a multiple of n_head (", c.n_head, ")");
  LOOM_CHECK(c.dropout >= 0 && c.dropout < 1, "GPT: dropout must be in [0, 1), got ", c.dropout);
}

// (B, T, C) -> (B, H, T, C / H).
Tensor heads(const Tensor& x, int64_t n_head) {
  const int64_t b = x.size(0), t = x.size(1), c = x.size(2);
  return x.reshape({b, t, n_head, c / n_head}).transpose(1, 2);
}

}  // namespace

// ---- the paged KV cache ----

// Note [Paged KV cache]
// Serving decodes many sequences of different lengths together (continuous
// batching), each growing a token a step; contiguous caches sized for the
// longest context would waste most of their memory. As vLLM (Kwon et al.,
// 2023): every layer's keys and values live in one pool of fixed blocks,
// (num_blocks, block_size, n_head, head_dim), and a sequence holds a block
// table; it takes a new block only when its last one is full, so at most
// block_size - 1 rows per sequence are unused. The allocator hands out the
// lowest free id first and counts references, so sequences sampled from one
// prompt (n > 1) share its blocks and copy one (copy_block) before writing
// into it.
//
// forward(tokens, PagedBatch, cache) runs a flattened batch: prefill chunks
// and decode tokens of many sequences are rows of one (T, C) activation, so
// every Linear is one GEMM over all of them. Each row is computed as it
// would be alone: the GEMM's element is one fixed chain over k whatever the
// rows around it (Note [GEMM summation order]), LayerNorm and GELU work per
// row, and paged_attention computes each (token, head) in a fixed order over
// its own sequence's keys. Serving a sequence in any batch therefore gives
// the bits of serving it alone.

BlockAllocator::BlockAllocator(int64_t num_blocks) {
  LOOM_CHECK(num_blocks >= 0, "BlockAllocator: num_blocks must be >= 0, got ", num_blocks);
  refs_.assign(static_cast<size_t>(num_blocks), 0);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

void BlockAllocator::check(const char* what, int64_t block) const {
  LOOM_CHECK(block >= 0 && block < num_blocks(), "BlockAllocator::", what, ": block ", block,
             " is out of range for ", num_blocks(), " blocks");
  LOOM_CHECK(refs_[static_cast<size_t>(block)] > 0, "BlockAllocator::", what, ": block ", block, " is free");
}

std::optional<int64_t> BlockAllocator::allocate() {
  if (free_.empty()) return std::nullopt;
  const int64_t b = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(b)] = 1;
  return b;
}

void BlockAllocator::retain(int64_t block) {
  check("retain", block);
  ++refs_[static_cast<size_t>(block)];
}

void BlockAllocator::release(int64_t block) {
  check("release", block);
  if (--refs_[static_cast<size_t>(block)] > 0) return;
  // Keep the free list sorted from the back, so the lowest id goes first.
  free_.insert(std::upper_bound(free_.begin(), free_.end(), block, std::greater<int64_t>()), block);
}

int64_t BlockAllocator::ref_count(int64_t block) const {
  LOOM_CHECK(block >= 0 && block < num_blocks(), "BlockAllocator::ref_count: block ", block,
             " is out of range for ", num_blocks(), " blocks");
  return refs_[static_cast<size_t>(block)];
}

void PagedKVCache::copy_block(int64_t from, int64_t to) {
  const int64_t n = blocks.num_blocks();
  LOOM_CHECK(from >= 0 && from < n && to >= 0 && to < n, "PagedKVCache::copy_block: blocks ", from, " -> ", to,
             " out of range for ", n, " blocks");
  NoGradGuard guard;
  for (size_t l = 0; l < k.size(); ++l) {
    k[l][to].copy_(k[l][from]);
    v[l][to].copy_(v[l][from]);
  }
}

bool PagedKVCache::reserve(std::vector<int64_t>& table, int64_t length) {
  const int64_t needed = (length + block_size - 1) / block_size - static_cast<int64_t>(table.size());
  if (needed <= 0) return true;
  if (needed > blocks.num_free()) return false;
  for (int64_t i = 0; i < needed; ++i) table.push_back(*blocks.allocate());
  return true;
}

void PagedKVCache::release(std::vector<int64_t>& table) {
  for (int64_t b : table) blocks.release(b);
  table.clear();
}

int64_t PagedBatchBuilder::add(const std::vector<int64_t>& table, int64_t start, const std::vector<int64_t>& tokens) {
  const int64_t end = start + static_cast<int64_t>(tokens.size());
  LOOM_CHECK(!tokens.empty() && start >= 0 && end <= static_cast<int64_t>(table.size()) * block_size_,
             "PagedBatchBuilder::add: positions [", start, ", ", end, ") need ", (end + block_size_ - 1) / block_size_,
             " blocks; the table has ", table.size());
  const auto s = static_cast<int64_t>(tables_.size());
  tables_.push_back(table);
  for (int64_t p = start; p < end; ++p) {
    tokens_.push_back(tokens[static_cast<size_t>(p - start)]);
    positions_.push_back(p);
    seq_index_.push_back(s);
    slots_.push_back(table[static_cast<size_t>(p / block_size_)] * block_size_ + p % block_size_);
  }
  return num_tokens() - 1;
}

std::pair<Tensor, PagedBatch> PagedBatchBuilder::build() const {
  size_t width = 1;
  for (const auto& t : tables_) width = std::max(width, t.size());
  std::vector<int64_t> flat(tables_.size() * width, 0);
  for (size_t s = 0; s < tables_.size(); ++s) std::copy(tables_[s].begin(), tables_[s].end(), flat.begin() + s * width);
  PagedBatch b;
  b.positions = tensor(positions_, kInt64);
  b.seq_index = tensor(seq_index_, kInt64);
  b.slots = tensor(slots_, kInt64);
  b.block_tables = tensor(flat, kInt64).reshape({static_cast<int64_t>(tables_.size()), static_cast<int64_t>(width)});
  return {tensor(tokens_, kInt64), b};
}

// ---- attention ----

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const GPTConfig& cfg)
    : Module("CausalSelfAttention"), n_head(cfg.n_head), n_embd(cfg.n_embd), dropout(cfg.dropout) {
  c_attn = register_module("c_attn", nn::Linear(cfg.n_embd, 3 * cfg.n_embd, cfg.bias));
  c_proj = register_module("c_proj", nn::Linear(cfg.n_embd, cfg.n_embd, cfg.bias));
  resid_dropout = register_module("resid_dropout", nn::Dropout(cfg.dropout));
}

Tensor CausalSelfAttentionImpl::forward(const Tensor& x) {
  const int64_t b = x.size(0), t = x.size(1);
  const Tensor qkv = c_attn(x);
  const Tensor q = heads(qkv.narrow(2, 0, n_embd), n_head);
  const Tensor k = heads(qkv.narrow(2, n_embd, n_embd), n_head);
  const Tensor v = heads(qkv.narrow(2, 2 * n_embd, n_embd), n_head);
  const Tensor y = scaled_dot_product_attention(q, k, v, {}, is_training() ? dropout : 0.0, true);
  return resid_dropout(c_proj(y.transpose(1, 2).reshape({b, t, n_embd})));
}

Tensor CausalSelfAttentionImpl::forward(const Tensor& x, KVCache& cache, size_t layer) {
  const int64_t b = x.size(0), t = x.size(1), past = cache.length, total = past + t;
  const Tensor qkv = c_attn(x);
  const Tensor q = heads(qkv.narrow(2, 0, n_embd), n_head);
  Tensor& kc = cache.k[layer];
  Tensor& vc = cache.v[layer];
  kc.narrow(2, past, t).copy_(heads(qkv.narrow(2, n_embd, n_embd), n_head));
  vc.narrow(2, past, t).copy_(heads(qkv.narrow(2, 2 * n_embd, n_embd), n_head));
  const Tensor k = kc.narrow(2, 0, total), v = vc.narrow(2, 0, total);
  Tensor y;
  if (t == 1) {
    y = scaled_dot_product_attention(q, k, v);  // the newest query sees every key
  } else if (past == 0) {
    y = scaled_dot_product_attention(q, k, v, {}, 0.0, true);
  } else {
    // Query i sits at position past + i: it may attend keys 0..past + i.
    const Tensor rows = arange(past, total, 1, kInt64).unsqueeze(1);
    const Tensor cols = arange(total, kInt64).unsqueeze(0);
    y = scaled_dot_product_attention(q, k, v, cols <= rows);
  }
  return resid_dropout(c_proj(y.transpose(1, 2).reshape({b, t, n_embd})));
}

Tensor CausalSelfAttentionImpl::forward(const Tensor& x, const PagedBatch& batch, PagedKVCache& cache,
                                        size_t layer) {
  const int64_t t = x.size(0), hd = n_embd / n_head;
  const Tensor qkv = c_attn(x);  // (T, 3C)
  const Tensor q = qkv.narrow(1, 0, n_embd).reshape({t, n_head, hd});
  Tensor& kc = cache.k[layer];
  Tensor& vc = cache.v[layer];
  const int64_t rows = kc.size(0) * kc.size(1);
  kc.view({rows, n_head, hd}).index_put_({batch.slots}, qkv.narrow(1, n_embd, n_embd).reshape({t, n_head, hd}));
  vc.view({rows, n_head, hd}).index_put_({batch.slots}, qkv.narrow(1, 2 * n_embd, n_embd).reshape({t, n_head, hd}));
  const Tensor y = paged_attention(q, kc, vc, batch.block_tables, batch.seq_index, batch.positions);
  return resid_dropout(c_proj(y.reshape({t, n_embd})));
}

// ---- MLP and block ----

MLPImpl::MLPImpl(const GPTConfig& cfg) : Module("MLP") {
  c_fc = register_module("c_fc", nn::Linear(cfg.n_embd, 4 * cfg.n_embd, cfg.bias));
  c_proj = register_module("c_proj", nn::Linear(4 * cfg.n_embd, cfg.n_embd, cfg.bias));
  dropout = register_module("dropout", nn::Dropout(cfg.dropout));
}

Tensor MLPImpl::forward(const Tensor& x) { return dropout(c_proj(c_fc->forward_fused(x, LinearActivation::Gelu))); }

BlockImpl::BlockImpl(const GPTConfig& cfg) : Module("Block") {
  ln_1 = register_module("ln_1", nn::LayerNorm(cfg.n_embd, 1e-5, true, cfg.bias));
  attn = register_module("attn", CausalSelfAttention(cfg));
  ln_2 = register_module("ln_2", nn::LayerNorm(cfg.n_embd, 1e-5, true, cfg.bias));
  mlp = register_module("mlp", MLP(cfg));
}

Tensor BlockImpl::forward(const Tensor& x) {
  const Tensor h = x + attn(ln_1(x));
  return h + mlp(ln_2(h));
}

// Each half is its own region: backward then holds one half's recomputed
// activations at a time (the MLP's 4 d_model-wide ones are the largest),
// for one more saved stream per block, and the same recomputation.
Tensor BlockImpl::forward_checkpointed(const Tensor& x) {
  const Tensor h = x + loom::checkpoint([this](const Tensor& in) { return attn(ln_1(in)); }, x);
  return h + loom::checkpoint([this](const Tensor& in) { return mlp(ln_2(in)); }, h);
}

Tensor BlockImpl::forward(const Tensor& x, KVCache& cache, size_t layer) {
  const Tensor h = x + attn->forward(ln_1(x), cache, layer);
  return h + mlp(ln_2(h));
}

Tensor BlockImpl::forward(const Tensor& x, const PagedBatch& batch, PagedKVCache& cache, size_t layer) {
  const Tensor h = x + attn->forward(ln_1(x), batch, cache, layer);
  return h + mlp(ln_2(h));
}

// ---- the model ----

GPTImpl::GPTImpl(const GPTConfig& cfg) : Module("GPT"), config(cfg) {
  check_config(cfg);
  transformer = register_module("transformer", nn::ModuleDict());
  wte = nn::Embedding(cfg.vocab_size, cfg.n_embd);
  wpe = nn::Embedding(cfg.block_size, cfg.n_embd);
  drop = nn::Dropout(cfg.dropout);
  h = nn::ModuleList();
  for (int64_t i = 0; i < cfg.n_layer; ++i) h->push_back(Block(cfg));
  ln_f = nn::LayerNorm(cfg.n_embd, 1e-5, true, cfg.bias);
  transformer->insert("wte", wte);
  transformer->insert("wpe", wpe);
  transformer->insert("drop", drop);
  transformer->insert("h", h);
  transformer->insert("ln_f", ln_f);
  if (!cfg.tie_weights) lm_head = register_module("lm_head", nn::Linear(cfg.n_embd, cfg.vocab_size, false));
  reset_parameters();
}

void GPTImpl::reset_parameters() {
  NoGradGuard guard;
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config.n_layer));
  const auto linear = [](nn::LinearImpl& lin, double std) {
    nn::init::normal_(lin.weight, 0.0, std);
    if (lin.bias.defined()) nn::init::zeros_(lin.bias);
  };
  nn::init::normal_(wte->weight, 0.0, 0.02);
  nn::init::normal_(wpe->weight, 0.0, 0.02);
  for (size_t i = 0; i < h->size(); ++i) {
    BlockImpl& block = h->at<BlockImpl>(static_cast<int64_t>(i));
    linear(*block.attn->c_attn, 0.02);
    linear(*block.attn->c_proj, proj_std);
    linear(*block.mlp->c_fc, 0.02);
    linear(*block.mlp->c_proj, proj_std);
    block.ln_1->reset_parameters();
    block.ln_2->reset_parameters();
  }
  ln_f->reset_parameters();
  if (!config.tie_weights) linear(*lm_head, 0.02);
}

Tensor GPTImpl::forward(const Tensor& idx_in) {
  const Tensor idx = idx_in.dim() == 1 ? idx_in.unsqueeze(0) : idx_in;
  LOOM_CHECK(idx.dim() == 2, "GPT: expected token ids of shape (B, T) or (T), got ", shape_str(idx_in.sizes()));
  LOOM_CHECK(idx.dtype() == kInt64, "GPT: expected int64 token ids, got ", dtype_name(idx.dtype()));
  const int64_t t = idx.size(1);
  LOOM_CHECK(t <= config.block_size, "GPT: sequence of length ", t, " is longer than block_size ", config.block_size);
  Tensor x = drop(wte(idx) + wpe(arange(t, kInt64)));
  for (size_t i = 0; i < h->size(); ++i) {
    BlockImpl& block = h->at<BlockImpl>(static_cast<int64_t>(i));
    if (checkpoint_activations_ && is_grad_enabled())
      x = block.forward_checkpointed(x);
    else
      x = block.forward(x);
  }
  x = ln_f(x);
  return config.tie_weights ? F::linear(x, wte->weight) : lm_head(x);
}

KVCache GPTImpl::make_cache(int64_t batch) const {
  LOOM_CHECK(batch > 0, "GPT::make_cache: batch must be positive, got ", batch);
  KVCache c;
  c.batch = batch;
  const DType dt = wte->weight.dtype();
  const int64_t hd = config.n_embd / config.n_head;
  for (int64_t i = 0; i < config.n_layer; ++i) {
    c.k.push_back(zeros({batch, config.n_head, config.block_size, hd}, dt));
    c.v.push_back(zeros({batch, config.n_head, config.block_size, hd}, dt));
  }
  return c;
}

Tensor GPTImpl::forward(const Tensor& idx_in, KVCache& cache) {
  const Tensor idx = idx_in.dim() == 1 ? idx_in.unsqueeze(0) : idx_in;
  LOOM_CHECK(idx.dim() == 2 && idx.dtype() == kInt64, "GPT: expected int64 token ids of shape (B, T) or (T), got ",
             dtype_name(idx_in.dtype()), " ", shape_str(idx_in.sizes()));
  LOOM_CHECK(static_cast<int64_t>(cache.k.size()) == config.n_layer && idx.size(0) == cache.batch,
             "GPT: the KV cache was made for batch ", cache.batch, " and ", cache.k.size(),
             " layers; got token ids of shape ", shape_str(idx.sizes()), " for a model of ", config.n_layer,
             " layers");
  const int64_t t = idx.size(1), past = cache.length;
  LOOM_CHECK(past + t <= config.block_size, "GPT: ", past, " cached + ", t, " new positions exceed block_size ",
             config.block_size, " (reset the cache and start from the last block_size tokens)");
  NoGradGuard guard;
  Tensor x = drop(wte(idx) + wpe(arange(past, past + t, 1, kInt64)));
  for (size_t i = 0; i < h->size(); ++i) x = h->at<BlockImpl>(static_cast<int64_t>(i)).forward(x, cache, i);
  cache.length = past + t;
  x = ln_f(x);
  return config.tie_weights ? F::linear(x, wte->weight) : lm_head(x);
}

PagedKVCache GPTImpl::make_paged_cache(int64_t num_blocks, int64_t block_size) const {
  LOOM_CHECK(num_blocks > 0 && block_size > 0, "GPT::make_paged_cache: num_blocks and block_size must be positive, got ",
             num_blocks, " and ", block_size);
  PagedKVCache c;
  c.block_size = block_size;
  c.blocks = BlockAllocator(num_blocks);
  const DType dt = wte->weight.dtype();
  const int64_t hd = config.n_embd / config.n_head;
  for (int64_t i = 0; i < config.n_layer; ++i) {
    c.k.push_back(zeros({num_blocks, block_size, config.n_head, hd}, dt));
    c.v.push_back(zeros({num_blocks, block_size, config.n_head, hd}, dt));
  }
  return c;
}

int64_t GPTImpl::paged_block_bytes(int64_t block_size) const {
  return 2 * config.n_layer * block_size * config.n_embd * static_cast<int64_t>(element_size(wte->weight.dtype()));
}

Tensor GPTImpl::forward(const Tensor& tokens, const PagedBatch& batch, PagedKVCache& cache) {
  LOOM_CHECK(tokens.dim() == 1 && tokens.dtype() == kInt64, "GPT: a paged batch takes int64 token ids of shape (T), got ",
             dtype_name(tokens.dtype()), " ", shape_str(tokens.sizes()));
  const int64_t t = tokens.size(0);
  for (const auto& [name, v] : {std::pair<const char*, const Tensor&>{"positions", batch.positions},
                                {"seq_index", batch.seq_index}, {"slots", batch.slots}})
    LOOM_CHECK(v.defined() && v.dim() == 1 && v.size(0) == t && v.dtype() == kInt64, "GPT: the paged batch's ", name,
               " must be int64 of shape [", t, "] (one per token), got ",
               v.defined() ? dtype_name(v.dtype()) + std::string(" ") + shape_str(v.sizes()) : std::string("none"));
  LOOM_CHECK(static_cast<int64_t>(cache.k.size()) == config.n_layer && cache.blocks.num_blocks() > 0,
             "GPT: the paged cache has ", cache.k.size(), " layers; the model has ", config.n_layer);
  const int64_t rows = cache.blocks.num_blocks() * cache.block_size;
  if (t > 0) {
    const int64_t max_pos = batch.positions.max().item<int64_t>(), min_pos = batch.positions.min().item<int64_t>();
    LOOM_CHECK(min_pos >= 0 && max_pos < config.block_size, "GPT: positions must be in [0, block_size ",
               config.block_size, "), got ", min_pos, "..", max_pos);
    const int64_t max_slot = batch.slots.max().item<int64_t>(), min_slot = batch.slots.min().item<int64_t>();
    LOOM_CHECK(min_slot >= 0 && max_slot < rows, "GPT: slots must be in [0, ", rows, ") (num_blocks x block_size), got ",
               min_slot, "..", max_slot);
  }
  NoGradGuard guard;
  Tensor x = drop(wte(tokens) + wpe(batch.positions));
  for (size_t i = 0; i < h->size(); ++i) x = h->at<BlockImpl>(static_cast<int64_t>(i)).forward(x, batch, cache, i);
  x = ln_f(x);
  return config.tie_weights ? F::linear(x, wte->weight) : lm_head(x);
}

Tensor GPTImpl::loss(const Tensor& idx, const Tensor& targets) {
  const Tensor logits = forward(idx);
  return F::cross_entropy(logits.reshape({-1, config.vocab_size}), targets.reshape({-1}));
}

SamplingDistribution sampling_distribution(const float* logits, int64_t v, const GenerateOptions& o) {
  SamplingDistribution d;
  d.order.resize(static_cast<size_t>(v));
  std::iota(d.order.begin(), d.order.end(), 0);
  std::stable_sort(d.order.begin(), d.order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  size_t keep = o.top_k > 0 && o.top_k < v ? static_cast<size_t>(o.top_k) : d.order.size();
  const double mx = logits[d.order[0]] / o.temperature;
  d.weight.resize(keep);
  for (size_t i = 0; i < keep; ++i) d.sum += (d.weight[i] = std::exp(logits[d.order[i]] / o.temperature - mx));
  if (o.top_p < 1) {
    double acc = 0;
    size_t n = 0;
    while (n < keep && acc < o.top_p * d.sum) acc += d.weight[n++];
    keep = std::max<size_t>(n, 1);
    d.sum = std::accumulate(d.weight.begin(), d.weight.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
  }
  d.order.resize(keep);
  d.weight.resize(keep);
  return d;
}

int64_t SamplingDistribution::draw(uint64_t& state) const {
  const double u = static_cast<double>(splitmix64_next(state) >> 11) * 0x1.0p-53 * sum;
  double acc = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    acc += weight[i];
    if (u < acc) return order[i];
  }
  return order.back();
}

std::vector<double> SamplingDistribution::probabilities(int64_t vocab) const {
  std::vector<double> p(static_cast<size_t>(vocab), 0.0);
  for (size_t i = 0; i < order.size(); ++i) p[static_cast<size_t>(order[i])] = weight[i] / sum;
  return p;
}

int64_t sample_token(const float* logits, int64_t v, const GenerateOptions& o, uint64_t& state) {
  if (o.temperature <= 0) return static_cast<int64_t>(std::max_element(logits, logits + v) - logits);
  return sampling_distribution(logits, v, o).draw(state);
}

Tensor GPTImpl::generate(const Tensor& idx_in, int64_t max_new_tokens, const GenerateOptions& options) {
  const bool flat = idx_in.dim() == 1;
  Tensor idx = flat ? idx_in.unsqueeze(0) : idx_in;
  LOOM_CHECK(idx.dim() == 2 && idx.dtype() == kInt64 && idx.size(1) > 0,
             "GPT::generate: expected a non-empty int64 prompt of shape (B, T) or (T), got ",
             dtype_name(idx_in.dtype()), " ", shape_str(idx_in.sizes()));
  LOOM_CHECK(max_new_tokens >= 0, "GPT::generate: max_new_tokens must be >= 0, got ", max_new_tokens);
  LOOM_CHECK(options.top_k >= 0, "GPT::generate: top_k must be >= 0, got ", options.top_k);
  LOOM_CHECK(options.top_p > 0 && options.top_p <= 1, "GPT::generate: top_p must be in (0, 1], got ", options.top_p);
  NoGradGuard guard;
  const bool was_training = is_training();
  eval();
  const int64_t b = idx.size(0), v = config.vocab_size, ctx = config.block_size;
  std::vector<int64_t> tokens = idx.contiguous().to_vector<int64_t>();
  int64_t len = idx.size(1);
  const auto window = [&](int64_t from) {  // tokens [from, len) of every row, (B, len - from)
    std::vector<int64_t> w;
    for (int64_t r = 0; r < b; ++r)
      for (int64_t i = from; i < len; ++i) w.push_back(tokens[static_cast<size_t>(r * len + i)]);
    return tensor(w, kInt64).reshape({b, len - from});
  };
  KVCache cache = options.use_cache ? make_cache(b) : KVCache{};
  uint64_t state = options.seed;
  Tensor logits;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    if (!options.use_cache) {
      logits = forward(window(std::max<int64_t>(0, len - ctx)));
    } else if (step == 0 || cache.length >= ctx) {
      // The first step, or the window slid: positions moved, so recompute it.
      cache.reset();
      logits = forward(window(std::max<int64_t>(0, len - ctx)), cache);
    } else {
      logits = forward(window(len - 1), cache);
    }
    const Tensor last = logits.select(1, logits.size(1) - 1).to(kFloat32).contiguous();
    const float* lp = last.data_ptr<float>();
    std::vector<int64_t> next(static_cast<size_t>(b));
    for (int64_t r = 0; r < b; ++r) next[static_cast<size_t>(r)] = sample_token(lp + r * v, v, options, state);
    std::vector<int64_t> grown;
    grown.reserve(static_cast<size_t>(b * (len + 1)));
    for (int64_t r = 0; r < b; ++r) {
      grown.insert(grown.end(), tokens.begin() + r * len, tokens.begin() + (r + 1) * len);
      grown.push_back(next[static_cast<size_t>(r)]);
    }
    tokens = std::move(grown);
    ++len;
  }
  train(was_training);
  Tensor out = tensor(tokens, kInt64).reshape({b, len});
  return flat ? out.squeeze(0) : out;
}

std::string GPTImpl::extra_repr() const {
  std::ostringstream os;
  os << "n_layer=" << config.n_layer << ", n_embd=" << config.n_embd << ", n_head=" << config.n_head
     << ", block_size=" << config.block_size << ", vocab_size=" << config.vocab_size << ", dropout=" << config.dropout
     << ", tie_weights=" << (config.tie_weights ? "True" : "False");
  return os.str();
}

std::string gpt_config_to_json(const GPTConfig& c) {
  nlohmann::json j = {{"n_layer", c.n_layer},       {"n_embd", c.n_embd},   {"n_head", c.n_head},
                      {"block_size", c.block_size}, {"vocab_size", c.vocab_size}, {"dropout", c.dropout},
                      {"bias", c.bias},             {"tie_weights", c.tie_weights}};
  return j.dump();
}

GPTConfig gpt_config_from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    LOOM_CHECK(false, "GPT config: not valid JSON: ", e.what());
  }
  LOOM_CHECK(j.is_object(), "GPT config: expected a JSON object, got ", text);
  GPTConfig c;
  const auto get_int = [&](const char* key, int64_t& out) {
    LOOM_CHECK(j.contains(key) && j[key].is_number_integer(), "GPT config: missing or non-integer \"", key, "\" in ",
               text);
    out = j[key].get<int64_t>();
  };
  get_int("n_layer", c.n_layer);
  get_int("n_embd", c.n_embd);
  get_int("n_head", c.n_head);
  get_int("block_size", c.block_size);
  get_int("vocab_size", c.vocab_size);
  if (j.contains("dropout")) {
    LOOM_CHECK(j["dropout"].is_number(), "GPT config: \"dropout\" must be a number in ", text);
    c.dropout = j["dropout"].get<double>();
  }
  for (const char* key : {"bias", "tie_weights"}) {
    if (!j.contains(key)) continue;
    LOOM_CHECK(j[key].is_boolean(), "GPT config: \"", key, "\" must be true or false in ", text);
    (std::string(key) == "bias" ? c.bias : c.tie_weights) = j[key].get<bool>();
  }
  check_config(c);
  return c;
}

}  // namespace loom::models
