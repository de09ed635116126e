// Text data for character-level language models: tokenizers (bytes, UTF-8
// code points), next-token windows over a token stream (nanoGPT's get_batch
// as a Dataset), a contiguous train/val split, and the fortunes corpus.
//
//   TextCorpus c = load_text_corpus("/usr/share/games/fortunes", 64);  // char tokenizer
//   TextDataset train(c.train_ids, 64);    // example i: (ids[64 i, 64 i + 64), ids[64 i + 1, 64 i + 65))
//   std::string s = c.tokenizer->decode(train.get(0).data);
//
// A tokenizer serializes to a JSON string, so a checkpoint's metadata can
// carry it and `tokenizer_from_json` rebuilds it for generation.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "loom/data/dataloader.h"
#include "loom/data/dataset.h"

namespace loom::data {

// Text <-> token ids. Implementations are immutable after construction, so
// every method is safe to call from several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids in [0, vocab_size()). Text the tokenizer cannot represent is a
  // loom::Error naming what and where (byte offset).
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  // An id outside [0, vocab_size()) is a loom::Error naming it and its position.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  // {"type": name(), ...}: what tokenizer_from_json reads back.
  virtual std::string to_json() const = 0;
  // The kind: "byte" or "char" (the JSON "type", load_text_corpus's argument).
  virtual std::string name() const = 0;

  // encode() as an int64 tensor (N) on the CPU.
  Tensor encode_tensor(std::string_view text) const;
  // decode() of any integer tensor, read in flattened order.
  std::string decode(const Tensor& ids) const;
};

// One token per byte: vocab 256, any byte string round-trips (UTF-8 or not).
class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  using Tokenizer::decode;
  int64_t vocab_size() const override { return 256; }
  std::string to_json() const override;  // {"type":"byte"}
  std::string name() const override { return "byte"; }
};

// One token per Unicode code point of UTF-8 text. The vocabulary is a sorted
// list of distinct code points; the id of a character is its place in it.
class CharTokenizer : public Tokenizer {
 public:
  // chars: strictly increasing Unicode scalar values (no surrogates, at most
  // U+10FFFF), at least one; anything else is a loom::Error.
  explicit CharTokenizer(std::vector<char32_t> chars);
  // The vocabulary of `corpus`: its distinct code points, sorted. Invalid
  // UTF-8 or an empty corpus is a loom::Error (with the byte offset).
  static CharTokenizer from_corpus(std::string_view corpus);

  // A character outside the vocabulary or invalid UTF-8 is a loom::Error
  // naming the character (U+XXXX and printable form) and its byte offset.
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  using Tokenizer::decode;
  int64_t vocab_size() const override { return static_cast<int64_t>(chars_.size()); }
  std::string to_json() const override;  // {"type":"char","chars":[10,32,33,...]}
  std::string name() const override { return "char"; }
  const std::vector<char32_t>& chars() const { return chars_; }

 private:
  std::vector<char32_t> chars_;
  // id of each ASCII character, -1 when absent: encoding text that is mostly
  // ASCII skips the binary search.
  std::array<int64_t, 128> ascii_ids_;
};

// Rebuilds a tokenizer from to_json()'s output. Malformed JSON, an unknown
// "type", unknown keys or a bad vocabulary are a loom::Error.
std::unique_ptr<Tokenizer> tokenizer_from_json(const std::string& json);
// A new tokenizer of `kind`: "byte", or "char" with the vocabulary of `corpus`.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& kind, std::string_view corpus);

// Next-token windows over a token stream, as nanoGPT's get_batch: example i is
//   data   = ids[s, s + T)
//   target = ids[s + 1, s + T + 1),   s = i * stride
// both int64 (T) views of `ids` (no copy). size() is the number of full
// windows, (N - T - 1) / stride + 1. stride defaults to T (windows that do not
// overlap); stride 1 gives every window.
//
// Language models train on random windows instead (random_batch): the one
// next-token batch sampler of loom, used by `loom train --model gpt|lstm`
// and examples/char_gpt.
//
// Note [Next-token batches]
// Batch `step` of a run seeded `seed` takes batch_size windows whose starts
// are uniform over every offset [0, N - T - 1] (the stride does not apply),
// drawn by splitmix64 from a state keyed by (seed, step) alone:
//   state = splitmix64(seed ^ splitmix64(step + 1)),
//   start_b = (state = splitmix64(state)) mod (N - T),   b = 0 .. B - 1.
// So a run is reproducible, any step's batch can be drawn without the ones
// before it (a resumed or skipped run sees the same data), and nothing else
// in the program (the global generator, data workers) moves it.
class TextDataset : public Dataset {
 public:
  // ids: int64 (N) with N >= T + 1.
  TextDataset(Tensor ids, int64_t context_length, std::optional<int64_t> stride = std::nullopt);
  Example get(int64_t index) override;
  int64_t size() const override;

  // The starts of batch `step` (Note [Next-token batches]), each in [0, N - T - 1].
  std::vector<int64_t> random_starts(int64_t batch_size, uint64_t seed, int64_t step) const;
  // The windows at `starts` as one batch: data (B, T) with row b = ids[s_b,
  // s_b + T), target (B, T) = ids[s_b + 1, s_b + T + 1); int64 copies. A
  // start outside [0, N - T - 1] is a loom::Error.
  Batch windows(const std::vector<int64_t>& starts) const;
  // windows(random_starts(batch_size, seed, step)).
  Batch random_batch(int64_t batch_size, uint64_t seed, int64_t step) const;
  std::string name() const override { return "TextDataset"; }
  const Tensor& ids() const { return ids_; }
  int64_t context_length() const { return context_length_; }
  int64_t stride() const { return stride_; }

 private:
  Tensor ids_;
  int64_t context_length_, stride_;
};

// A token stream cut in two, contiguous: train = the first floor(N (1 - f))
// tokens, val = the rest (views of the input). A product within 1e-6 of an
// integer counts as that integer, so float rounding never drops a token
// (20 tokens, f = 0.9: 2 train, not 1).
struct TokenSplit {
  Tensor train_ids, val_ids;
};
// val_fraction f in (0, 1). Each part must hold a window of context_length
// (T + 1 tokens); otherwise a loom::Error naming both sizes. For f = 0.1 this
// is nanoGPT's int(n * 0.9).
TokenSplit split_tokens(const Tensor& ids, double val_fraction, int64_t context_length);

inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

// The fortune cookies of the Debian package `fortunes` as one text: the
// plain-text files of `dir` (not *.dat indexes, symlinks, folders or dotfiles)
// in file-name order; in each, entries are separated by lines holding only
// "%". Entries (blank lines around them trimmed, empty ones dropped) are
// joined with one blank line between them; the text ends with a newline.
// A missing folder, or one without fortune files, is a loom::Error saying to
// install the package.
std::string load_fortunes(const std::string& dir = kFortunesDir);

// A text corpus tokenized and split for language modelling.
struct TextCorpus {
  std::shared_ptr<Tokenizer> tokenizer;
  Tensor train_ids, val_ids;  // int64 (N_train), (N_val)
  int64_t num_bytes = 0;      // size of the text read
};
// Reads `path` (a text file, or a folder in the fortunes layout, read with
// load_fortunes), builds a tokenizer of `kind` ("char": vocabulary of the
// whole text; "byte") and splits the ids with split_tokens.
TextCorpus load_text_corpus(const std::string& path, int64_t context_length, const std::string& kind = "char",
                            double val_fraction = 0.1);

}  // namespace loom::data
