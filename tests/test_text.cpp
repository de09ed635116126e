// loom::data text: tokenizers (bytes, UTF-8 code points) and their JSON form,
// TextDataset windows, split_tokens, the fortunes loader (on a fixture folder
// made here, and on /usr/share/games/fortunes when the package is installed)
// and load_text_corpus.
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using namespace loom;
using namespace loom::data;
namespace fs = std::filesystem;

using loom::test::throws_with;

// A fresh empty folder under the temp dir, removed with the object.
struct TempDir {
  fs::path path;
  TempDir() {
    static int count = 0;
    path = fs::temp_directory_path() / ("loom_test_text_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" +
                                        std::to_string(count++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& content) const {
    const fs::path p = path / name;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
};

// "héllo, 世界 🎉": 1-, 2-, 3- and 4-byte characters.
const std::string kUtf8Text = "h\xC3\xA9llo, \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x8E\x89";

// ---- ByteTokenizer ----

TEST(ByteTokenizer, RoundTripsAnyBytes) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.name(), "byte");
  EXPECT_EQ(tok.encode("Hi!"), (std::vector<int64_t>{72, 105, 33}));
  EXPECT_EQ(tok.decode(tok.encode("Hello, world\n")), "Hello, world\n");
  // Multi-byte UTF-8 becomes one id per byte, all in [0, 256).
  const std::vector<int64_t> ids = tok.encode(kUtf8Text);
  EXPECT_EQ(ids.size(), kUtf8Text.size());
  EXPECT_EQ(ids[1], 0xC3);
  EXPECT_EQ(tok.decode(ids), kUtf8Text);
  // Not UTF-8 at all, with a NUL: still round-trips.
  const std::string raw("\xFF\x00\x80z", 4);
  EXPECT_EQ(tok.encode(raw), (std::vector<int64_t>{255, 0, 128, 122}));
  EXPECT_EQ(tok.decode(tok.encode(raw)), raw);
  EXPECT_EQ(tok.decode(std::vector<int64_t>{}), "");
}

TEST(ByteTokenizer, BadIdsNameTheIdAndPosition) {
  ByteTokenizer tok;
  EXPECT_TRUE(throws_with([&] { tok.decode(std::vector<int64_t>{65, 256, 66}); },
                          {"ByteTokenizer.decode", "id 256", "position 1", "[0, 256)"}));
  EXPECT_TRUE(throws_with([&] { tok.decode(std::vector<int64_t>{-1}); }, {"id -1", "position 0"}));
}

TEST(ByteTokenizer, TensorHelpers) {
  ByteTokenizer tok;
  Tensor ids = tok.encode_tensor("abc");
  EXPECT_EQ(ids.dtype(), kInt64);
  EXPECT_EQ(ids.sizes(), (std::vector<int64_t>{3}));
  EXPECT_EQ(ids.to_vector<int64_t>(), (std::vector<int64_t>{97, 98, 99}));
  EXPECT_EQ(tok.decode(ids), "abc");
  EXPECT_EQ(tok.decode(ids.to(kInt32)), "abc");  // any integer dtype
  EXPECT_EQ(tok.decode(ids.view({1, 3})), "abc");  // read flattened
  EXPECT_TRUE(throws_with([&] { tok.decode(ids.to(kFloat32)); }, {"byte tokenizer decode", "integer", "float32"}));
}

// ---- CharTokenizer ----

TEST(CharTokenizer, VocabularyIsSortedUniqueCodePoints) {
  CharTokenizer tok = CharTokenizer::from_corpus("hello world");
  EXPECT_EQ(tok.name(), "char");
  EXPECT_EQ(tok.chars(), (std::vector<char32_t>{U' ', U'd', U'e', U'h', U'l', U'o', U'r', U'w'}));
  EXPECT_EQ(tok.vocab_size(), 8);
  EXPECT_EQ(tok.encode("hello"), (std::vector<int64_t>{3, 2, 4, 4, 5}));
  EXPECT_EQ(tok.decode(std::vector<int64_t>{7, 5, 6, 4, 1}), "world");

  CharTokenizer multi = CharTokenizer::from_corpus(kUtf8Text);
  EXPECT_EQ(multi.chars(), (std::vector<char32_t>{U' ', U',', U'h', U'l', U'o', U'\u00E9', U'\u4E16', U'\u754C',
                                                  U'\U0001F389'}));
}

TEST(CharTokenizer, RoundTripsAsciiAndMultiByte) {
  const std::string ascii = "The quick brown fox\njumps over the lazy dog.\t~!";
  CharTokenizer a = CharTokenizer::from_corpus(ascii);
  EXPECT_EQ(a.decode(a.encode(ascii)), ascii);
  EXPECT_EQ(a.encode(ascii).size(), ascii.size());

  CharTokenizer u = CharTokenizer::from_corpus(kUtf8Text);
  const std::vector<int64_t> ids = u.encode(kUtf8Text);
  EXPECT_EQ(ids.size(), 11u);  // code points, not bytes (19)
  EXPECT_EQ(kUtf8Text.size(), 19u);
  EXPECT_EQ(u.decode(ids), kUtf8Text);
  // Every character, including U+0000 and the last code point, survives.
  const std::string edges = std::string("\x00", 1) + "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80"
                            "\xF4\x8F\xBF\xBF";
  CharTokenizer e = CharTokenizer::from_corpus(edges);
  EXPECT_EQ(e.chars(), (std::vector<char32_t>{0, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF}));
  EXPECT_EQ(e.decode(e.encode(edges)), edges);
}

TEST(CharTokenizer, UnknownCharacterNamesItAndItsByteOffset) {
  CharTokenizer tok = CharTokenizer::from_corpus("abc ");
  // "ab é": é (U+00E9) starts at byte 3.
  EXPECT_TRUE(throws_with([&] { tok.encode("ab \xC3\xA9"); },
                          {"CharTokenizer.encode", "U+00E9", "'\xC3\xA9'", "byte offset 3", "not in the vocabulary",
                           "4 characters"}));
  // Byte offsets count bytes, not characters: 世 is 3 bytes, so 'z' is at 4.
  CharTokenizer wide = CharTokenizer::from_corpus("a\xE4\xB8\x96");
  EXPECT_TRUE(throws_with([&] { wide.encode("a\xE4\xB8\x96z"); }, {"U+007A 'z'", "byte offset 4"}));
  EXPECT_TRUE(throws_with([&] { wide.encode("\xF0\x9F\x8E\x89"); }, {"U+1F389", "byte offset 0"}));
  // Control characters are shown escaped, so the message stays readable.
  EXPECT_TRUE(throws_with([&] { tok.encode("a\nb"); }, {"U+000A '\\n'", "byte offset 1"}));
  EXPECT_TRUE(throws_with([&] { tok.encode("\x07"); }, {"U+0007 '\\x07'"}));
}

TEST(CharTokenizer, InvalidUtf8NamesTheByteOffset) {
  CharTokenizer tok = CharTokenizer::from_corpus("abc");
  struct Case {
    std::string text, offset, why;
  };
  const std::vector<Case> cases = {
      {"ab\x80", "byte offset 2", "continuation byte with no lead byte"},
      {"a\xC3", "byte offset 1", "cut off by the end"},
      {"abc\xE4\xB8", "byte offset 3", "cut off by the end"},
      {"a\xC3(", "byte offset 1", "expected a continuation byte"},
      {"\xC0\xAF", "byte offset 0", "overlong"},
      {"a\xE0\x80\xAF", "byte offset 1", "overlong"},
      {"a\xF0\x80\x80\xAF", "byte offset 1", "overlong"},
      {"ab\xED\xA0\x80", "byte offset 2", "surrogate"},
      {"\xF4\x90\x80\x80", "byte offset 0", "beyond U+10FFFF"},
      {"abc\xFF", "byte offset 3", "never occurs in UTF-8"},
      {"\xF5\x80\x80\x80", "byte offset 0", "never occurs in UTF-8"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(throws_with([&] { tok.encode(c.text); }, {"CharTokenizer.encode", "invalid UTF-8", c.offset, c.why}))
        << "text bytes: " << c.text.size();
    EXPECT_TRUE(throws_with([&] { CharTokenizer::from_corpus(c.text); },
                            {"CharTokenizer.from_corpus", "invalid UTF-8", c.offset}));
  }
}

TEST(CharTokenizer, BadIdsAndVocabularies) {
  CharTokenizer tok = CharTokenizer::from_corpus("abc");
  EXPECT_TRUE(throws_with([&] { tok.decode(std::vector<int64_t>{0, 1, 3}); },
                          {"CharTokenizer.decode", "id 3", "position 2", "vocab size 3"}));
  EXPECT_TRUE(throws_with([&] { tok.decode(std::vector<int64_t>{-2}); }, {"id -2", "position 0"}));
  EXPECT_TRUE(throws_with([] { CharTokenizer::from_corpus(""); }, {"CharTokenizer.from_corpus", "empty"}));
  EXPECT_TRUE(throws_with([] { CharTokenizer(std::vector<char32_t>{}); }, {"CharTokenizer", "empty"}));
  EXPECT_TRUE(throws_with([] { CharTokenizer({U'b', U'a'}); }, {"strictly increasing", "chars[0] = 98", "chars[1] = 97"}));
  EXPECT_TRUE(throws_with([] { CharTokenizer({U'a', U'a'}); }, {"strictly increasing"}));
  EXPECT_TRUE(throws_with([] { CharTokenizer({0xD800}); }, {"chars[0] = 55296", "not a Unicode scalar value"}));
  EXPECT_TRUE(throws_with([] { CharTokenizer({0x110000}); }, {"not a Unicode scalar value"}));
}

// ---- JSON ----

TEST(TokenizerJson, RoundTrips) {
  ByteTokenizer byte;
  EXPECT_EQ(byte.to_json(), R"({"type":"byte"})");
  std::unique_ptr<Tokenizer> b = tokenizer_from_json(byte.to_json());
  ASSERT_NE(dynamic_cast<ByteTokenizer*>(b.get()), nullptr);
  EXPECT_EQ(b->vocab_size(), 256);
  EXPECT_EQ(b->decode(b->encode(kUtf8Text)), kUtf8Text);

  CharTokenizer chr = CharTokenizer::from_corpus("ba\xC3\xA9");
  EXPECT_EQ(chr.to_json(), R"({"chars":[97,98,233],"type":"char"})");
  CharTokenizer big = CharTokenizer::from_corpus(kUtf8Text + "\nXYZ");
  std::unique_ptr<Tokenizer> c = tokenizer_from_json(big.to_json());
  auto* cc = dynamic_cast<CharTokenizer*>(c.get());
  ASSERT_NE(cc, nullptr);
  EXPECT_EQ(cc->chars(), big.chars());
  EXPECT_EQ(c->name(), "char");
  EXPECT_EQ(c->encode(kUtf8Text), big.encode(kUtf8Text));
  EXPECT_EQ(c->decode(big.encode(kUtf8Text)), kUtf8Text);
  // Key order and whitespace do not matter.
  EXPECT_EQ(tokenizer_from_json(R"( { "type" : "char", "chars" : [ 120 ] } )")->decode(std::vector<int64_t>{0}), "x");
}

TEST(TokenizerJson, RejectsBadInput) {
  EXPECT_TRUE(throws_with([] { tokenizer_from_json("{\"type\": \"char\""); }, {"tokenizer_from_json", "not valid JSON"}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json("[1, 2]"); }, {"expects a JSON object", "array"}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json("{}"); }, {"\"type\""}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": 3})"); }, {"\"type\""}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "bpe"})"); }, {"unknown tokenizer type \"bpe\""}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "byte", "vocab": 256})"); }, {"unknown key \"vocab\""}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "char"})"); }, {"\"chars\""}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "char", "chars": "abc"})"); }, {"\"chars\""}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "char", "chars": [97, -1]})"); },
                          {"chars[1] = -1", "not a code point"}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "char", "chars": [97, 98.5]})"); }, {"chars[1] = 98.5"}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "char", "chars": [1114112]})"); }, {"chars[0]"}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "char", "chars": [98, 97]})"); },
                          {"tokenizer_from_json", "strictly increasing"}));
  EXPECT_TRUE(throws_with([] { tokenizer_from_json(R"({"type": "char", "chars": []})"); }, {"empty"}));
}

TEST(TokenizerJson, MakeTokenizer) {
  EXPECT_EQ(make_tokenizer("byte", "")->vocab_size(), 256);
  EXPECT_EQ(make_tokenizer("char", "abca")->vocab_size(), 3);
  EXPECT_TRUE(throws_with([] { make_tokenizer("word", "x"); }, {"unknown tokenizer kind \"word\""}));
}

// ---- TextDataset ----

TEST(TextDataset, WindowsAndTargetsShiftedByOne) {
  // ids = 0..9, T = 3, stride T: windows at 0, 3, 6 (the one at 9 lacks a target).
  TextDataset ds(arange(10), 3);
  EXPECT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.stride(), 3);
  EXPECT_EQ(ds.context_length(), 3);
  for (int64_t i = 0; i < ds.size(); ++i) {
    Example e = ds.get(i);
    EXPECT_EQ(e.data.dtype(), kInt64);
    EXPECT_EQ(e.target.dtype(), kInt64);
    EXPECT_EQ(e.data.sizes(), (std::vector<int64_t>{3}));
    EXPECT_EQ(e.target.sizes(), (std::vector<int64_t>{3}));
    EXPECT_EQ(e.data.to_vector<int64_t>(), (std::vector<int64_t>{3 * i, 3 * i + 1, 3 * i + 2}));
    EXPECT_EQ(e.target.to_vector<int64_t>(), (std::vector<int64_t>{3 * i + 1, 3 * i + 2, 3 * i + 3}));
  }
  // Stride 1: every window; the last one ends at the last token.
  TextDataset every(arange(10), 3, 1);
  EXPECT_EQ(every.size(), 7);
  EXPECT_EQ(every.get(6).data.to_vector<int64_t>(), (std::vector<int64_t>{6, 7, 8}));
  EXPECT_EQ(every.get(6).target.to_vector<int64_t>(), (std::vector<int64_t>{7, 8, 9}));
  // Exactly T + 1 tokens: one window.
  EXPECT_EQ(TextDataset(arange(4), 3).size(), 1);
  EXPECT_EQ(TextDataset(arange(11), 3, 4).size(), 2);  // starts 0, 4 (8 + 3 + 1 > 11)
}

TEST(TextDataset, BatchesThroughDataLoader) {
  auto ds = std::make_shared<TextDataset>(arange(100), 8, 4);
  DataLoader loader(ds, {.batch_size = 5});
  Batch b = *loader.begin();
  EXPECT_EQ(b.data.sizes(), (std::vector<int64_t>{5, 8}));
  EXPECT_EQ(b.target.sizes(), (std::vector<int64_t>{5, 8}));
  EXPECT_TRUE(b.target.narrow(1, 0, 7).equal(b.data.narrow(1, 1, 7)));
  EXPECT_EQ(b.data.select(0, 2).to_vector<int64_t>()[0], 8);
}

TEST(TextDataset, Errors) {
  EXPECT_TRUE(throws_with([] { TextDataset(arange(3), 3); },
                          {"TextDataset", "3 tokens", "context_length 3", "4 tokens"}));
  EXPECT_TRUE(throws_with([] { TextDataset(arange(10).to(kInt32), 3); }, {"TextDataset", "int64", "int32"}));
  EXPECT_TRUE(throws_with([] { TextDataset(arange(10).view({2, 5}), 3); }, {"TextDataset", "1-d", "[2, 5]"}));
  EXPECT_TRUE(throws_with([] { TextDataset(arange(10), 0); }, {"context_length must be at least 1"}));
  EXPECT_TRUE(throws_with([] { TextDataset(arange(10), 3, 0); }, {"stride must be at least 1"}));
  TextDataset ds(arange(10), 3);
  EXPECT_TRUE(throws_with([&] { ds.get(3); }, {"TextDataset", "index 3", "size 3"}));
  EXPECT_TRUE(throws_with([&] { ds.get(-1); }, {"index -1"}));
}

// ---- Note [Next-token batches]: TextDataset::random_batch ----

// The documented draw, written out here independently of text.cpp.
uint64_t reference_mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

TEST(TextDatasetRandomBatch, StartsAreTheDocumentedSplitmix64DrawsOfSeedAndStep) {
  TextDataset ds(arange(1000), 8);
  for (uint64_t seed : {uint64_t{0}, uint64_t{7}, ~uint64_t{0}})
    for (int64_t step : {1, 2, 500}) {
      uint64_t state = reference_mix(seed ^ reference_mix(static_cast<uint64_t>(step) + 1));
      std::vector<int64_t> expected;
      for (int i = 0; i < 5; ++i) expected.push_back(static_cast<int64_t>((state = reference_mix(state)) % 992));
      EXPECT_EQ(ds.random_starts(5, seed, step), expected) << "seed " << seed << " step " << step;
    }
}

TEST(TextDatasetRandomBatch, DeterministicPerSeedAndStepAndIndependentOfOtherDraws) {
  TextDataset ds(arange(500), 16);
  Batch a = ds.random_batch(4, 3, 10);
  manual_seed(99);
  randn({50});                          // the global generator does not move it
  (void)ds.random_batch(4, 3, 11);      // nor do other steps drawn before
  Batch b = ds.random_batch(4, 3, 10);
  EXPECT_TRUE(a.data.equal(b.data));
  EXPECT_TRUE(a.target.equal(b.target));
  EXPECT_FALSE(ds.random_batch(4, 3, 11).data.equal(a.data));
  EXPECT_FALSE(ds.random_batch(4, 4, 10).data.equal(a.data));
  // (B, T) int64 rows of consecutive ids, the target one further.
  EXPECT_EQ(a.data.sizes(), (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(a.data.dtype(), kInt64);
  const std::vector<int64_t> starts = ds.random_starts(4, 3, 10);
  for (int64_t r = 0; r < 4; ++r) {
    EXPECT_TRUE(a.data[r].equal(arange(starts[static_cast<size_t>(r)], starts[static_cast<size_t>(r)] + 16)));
    EXPECT_TRUE(a.target[r].equal(arange(starts[static_cast<size_t>(r)] + 1, starts[static_cast<size_t>(r)] + 17)));
  }
}

TEST(TextDatasetRandomBatch, EveryOffsetAndOnlyValidOnes) {
  // N = T + 1: one window, start 0 only; N = T + 3: starts 0..2, all reached.
  TextDataset one(arange(9), 8);
  for (int64_t s : one.random_starts(20, 1, 1)) EXPECT_EQ(s, 0);
  TextDataset three(arange(11), 8);
  std::vector<int> seen(3, 0);
  for (int64_t step = 1; step <= 20; ++step)
    for (int64_t s : three.random_starts(4, 0, step)) {
      ASSERT_GE(s, 0);
      ASSERT_LE(s, 2);
      ++seen[static_cast<size_t>(s)];
    }
  for (int n : seen) EXPECT_GT(n, 0);
  EXPECT_TRUE(throws_with([&] { three.windows({3}); }, {"TextDataset::windows", "start 3", "[0, 2]"}));
  EXPECT_TRUE(throws_with([&] { three.random_starts(0, 0, 1); }, {"batch_size must be at least 1"}));
}

// ---- split_tokens ----

TEST(SplitTokens, ContiguousTrainThenVal) {
  TokenSplit s = split_tokens(arange(100), 0.1, 8);
  EXPECT_EQ(s.train_ids.size(0), 90);
  EXPECT_EQ(s.val_ids.size(0), 10);
  EXPECT_EQ(s.train_ids.to_vector<int64_t>().front(), 0);
  EXPECT_EQ(s.train_ids.to_vector<int64_t>().back(), 89);
  EXPECT_EQ(s.val_ids.to_vector<int64_t>().front(), 90);
  EXPECT_EQ(s.val_ids.to_vector<int64_t>().back(), 99);
  // nanoGPT's int(n * 0.9): 1001 tokens -> 900 train, 101 val.
  TokenSplit odd = split_tokens(arange(1001), 0.1, 8);
  EXPECT_EQ(odd.train_ids.size(0), 900);
  EXPECT_EQ(odd.val_ids.size(0), 101);
  // 20 * (1 - 0.9) is 1.9999999999999996 in doubles: still 2 train tokens.
  TokenSplit most_val = split_tokens(arange(20), 0.9, 1);
  EXPECT_EQ(most_val.train_ids.size(0), 2);
  EXPECT_EQ(most_val.val_ids.size(0), 18);
  EXPECT_EQ(split_tokens(arange(45), 0.8, 1).train_ids.size(0), 9);  // 45 * (1 - 0.8) = 8.999999999999998
  auto [train, val] = split_tokens(arange(20), 0.5, 4);
  EXPECT_EQ(train.size(0), 10);
  EXPECT_EQ(val.size(0), 10);
}

TEST(SplitTokens, Errors) {
  // 20 tokens, f = 0.1: 18 train, 2 val; T = 4 needs 5 in each.
  EXPECT_TRUE(throws_with([] { split_tokens(arange(20), 0.1, 4); },
                          {"split_tokens", "20 tokens", "18 train", "2 validation", "at least 5"}));
  EXPECT_TRUE(throws_with([] { split_tokens(arange(20), 0.9, 4); }, {"2 train", "18 validation"}));
  EXPECT_TRUE(throws_with([] { split_tokens(arange(20), 0.0, 4); }, {"val_fraction must be in (0, 1)"}));
  EXPECT_TRUE(throws_with([] { split_tokens(arange(20), 1.0, 4); }, {"val_fraction must be in (0, 1)"}));
  EXPECT_TRUE(throws_with([] { split_tokens(arange(20).view({4, 5}), 0.5, 4); }, {"1-d", "[4, 5]"}));
  EXPECT_TRUE(throws_with([] { split_tokens(arange(20), 0.5, 0); }, {"context_length must be at least 1"}));
}

// ---- fortunes ----

TEST(Fortunes, LoadsEntriesSkippingIndexesLinksAndFolders) {
  TempDir dir;
  // Read in file-name order: "animals" before "zen" whatever the listing order.
  dir.write("zen", "Be here now.\n%\n\n  \nSit.\nBreathe.\n\n%\n");
  dir.write("animals", "A cat.\n%\nA dog\n  barks.\n%\n%\nA %-sign in text stays.\n%\n");
  dir.write("animals.dat", std::string("\x00\x00\x00\x02\xFF", 5));  // strfile index: skipped
  dir.write(".hidden", "not a fortune\n%\n");
  fs::create_directory(dir.path / "off");
  dir.write("off/rude", "offensive\n%\n");
  fs::create_symlink(dir.path / "animals", dir.path / "animals.u8");
  const std::string text = load_fortunes(dir.path.string());
  EXPECT_EQ(text,
            "A cat.\n"
            "\n"
            "A dog\n  barks.\n"
            "\n"
            "A %-sign in text stays.\n"
            "\n"
            "Be here now.\n"
            "\n"
            "Sit.\nBreathe.\n");
  // A file without a trailing separator or newline still gives its last entry.
  TempDir bare;
  bare.write("one", "first\n%\nlast line");
  EXPECT_EQ(load_fortunes(bare.path.string()), "first\n\nlast line\n");
}

TEST(Fortunes, Errors) {
  EXPECT_TRUE(throws_with([] { load_fortunes("/nonexistent/loom/fortunes"); },
                          {"load_fortunes", "/nonexistent/loom/fortunes", "install the Debian package fortunes"}));
  TempDir empty;
  empty.write("x.dat", "index");
  EXPECT_TRUE(throws_with([&] { load_fortunes(empty.path.string()); }, {"no fortune files", "fortunes"}));
  TempDir blank;
  blank.write("x", "%\n\n%\n");
  EXPECT_TRUE(throws_with([&] { load_fortunes(blank.path.string()); }, {"hold no entries"}));
}

// ---- load_text_corpus ----

TEST(TextCorpus, LoadsFileAndFolder) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 20; ++i) text += "line " + std::to_string(i) + " \xC3\xA9t\xC3\xA9\n";
  const std::string file = dir.write("corpus.txt", text);

  TextCorpus c = load_text_corpus(file, 8);
  EXPECT_EQ(c.tokenizer->name(), "char");
  EXPECT_EQ(c.num_bytes, static_cast<int64_t>(text.size()));
  const int64_t n = c.train_ids.size(0) + c.val_ids.size(0);
  EXPECT_EQ(n, static_cast<int64_t>(text.size()) - 40);  // each é is 2 bytes, 1 char
  EXPECT_EQ(c.train_ids.size(0), static_cast<int64_t>(static_cast<double>(n) * 0.9));
  EXPECT_EQ(c.tokenizer->decode(c.train_ids) + c.tokenizer->decode(c.val_ids), text);

  TextCorpus b = load_text_corpus(file, 8, "byte", 0.25);
  EXPECT_EQ(b.tokenizer->vocab_size(), 256);
  EXPECT_EQ(b.val_ids.size(0), static_cast<int64_t>(text.size()) - b.train_ids.size(0));
  EXPECT_EQ(b.tokenizer->decode(b.train_ids) + b.tokenizer->decode(b.val_ids), text);

  // A folder is read as fortune files.
  TempDir folder;
  folder.write("f", "abcdefghij\n%\nklmnopqrstuvwxyz\n%\n");
  TextCorpus f = load_text_corpus(folder.path.string(), 4, "char", 0.2);
  EXPECT_EQ(f.tokenizer->decode(f.train_ids) + f.tokenizer->decode(f.val_ids), "abcdefghij\n\nklmnopqrstuvwxyz\n");

  EXPECT_TRUE(throws_with([&] { load_text_corpus(file, 8, "word"); }, {"load_text_corpus", "unknown tokenizer kind"}));
  EXPECT_TRUE(throws_with([&] { load_text_corpus(file, 1000); }, {"load_text_corpus", "split_tokens", "at least 1001"}));
  EXPECT_TRUE(throws_with([] { load_text_corpus("/nonexistent/loom.txt", 8); }, {"/nonexistent/loom.txt", "does not exist"}));
  const std::string bad = dir.write("bad.txt", "good text then \xFF and more text");
  EXPECT_TRUE(throws_with([&] { load_text_corpus(bad, 2); }, {"bad.txt", "invalid UTF-8", "byte offset 15"}));
}

// The real corpus, when the Debian package is installed.
TEST(Fortunes, DebianPackageSmoke) {
  if (!fs::is_directory(kFortunesDir)) GTEST_SKIP() << kFortunesDir << " is missing (apt-get install fortunes)";
  const std::string text = load_fortunes();
  EXPECT_GT(text.size(), 100000u);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.find("\n%\n"), std::string::npos);  // no separators left
  CharTokenizer tok = CharTokenizer::from_corpus(text);
  const std::vector<int64_t> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_GE(tok.vocab_size(), 60);
  EXPECT_LE(tok.vocab_size(), 1000);
  std::cout << "fortunes: " << text.size() << " bytes, " << ids.size() << " characters, char vocab "
            << tok.vocab_size() << "\n";

  TextCorpus c = load_text_corpus(kFortunesDir, 256);
  EXPECT_EQ(c.tokenizer->vocab_size(), tok.vocab_size());
  EXPECT_EQ(c.train_ids.size(0) + c.val_ids.size(0), static_cast<int64_t>(ids.size()));
  TextDataset train(c.train_ids, 256);
  EXPECT_GT(train.size(), 1000);
  EXPECT_EQ(c.tokenizer->decode(train.get(0).data), text.substr(0, c.tokenizer->decode(train.get(0).data).size()));
}

}  // namespace
