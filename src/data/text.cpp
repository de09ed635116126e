// Tokenizers, TextDataset, split_tokens, the fortunes loader, load_text_corpus.
#include "loom/data/text.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "loom/splitmix64.h"
#include "loom/error.h"
#include "loom/ops.h"

namespace loom::data {

namespace {

using json = nlohmann::json;

// ---- UTF-8 ----

std::string hex_byte(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", static_cast<unsigned>(b));
  return buf;
}

// Decodes the code point starting at text[pos] and advances pos past it.
// Strict (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF.
// Throws "<who>: invalid UTF-8 at byte offset k: <why>".
char32_t next_code_point(std::string_view text, size_t& pos, const char* who) {
  const size_t start = pos;
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) {
    ++pos;
    return b0;
  }
  size_t len = 0;
  char32_t cp = 0;
  // The valid range of the second byte narrows for E0, ED, F0, F4 (overlong
  // forms, surrogates, beyond U+10FFFF); other continuation bytes are 80..BF.
  unsigned char lo = 0x80, hi = 0xBF;
  const char* narrowed = "";
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0, narrowed = " (an overlong encoding)";
    if (b0 == 0xED) hi = 0x9F, narrowed = " (a UTF-16 surrogate)";
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90, narrowed = " (an overlong encoding)";
    if (b0 == 0xF4) hi = 0x8F, narrowed = " (beyond U+10FFFF)";
  } else if (b0 == 0xC0 || b0 == 0xC1) {
    LOOM_ERROR(who, ": invalid UTF-8 at byte offset ", start, ": byte ", hex_byte(b0),
               " starts an overlong encoding");
  } else if (b0 >= 0x80 && b0 <= 0xBF) {
    LOOM_ERROR(who, ": invalid UTF-8 at byte offset ", start, ": byte ", hex_byte(b0),
               " is a continuation byte with no lead byte before it");
  } else {  // F5..FF
    LOOM_ERROR(who, ": invalid UTF-8 at byte offset ", start, ": byte ", hex_byte(b0), " never occurs in UTF-8");
  }
  LOOM_CHECK(start + len <= text.size(), who, ": invalid UTF-8 at byte offset ", start, ": the ", len,
             "-byte sequence starting with ", hex_byte(b0), " is cut off by the end of the text");
  for (size_t k = 1; k < len; ++k) {
    const unsigned char b = byte(start + k);
    const unsigned char klo = k == 1 ? lo : 0x80, khi = k == 1 ? hi : 0xBF;
    LOOM_CHECK(b >= klo && b <= khi, who, ": invalid UTF-8 at byte offset ", start, ": byte ", hex_byte(b),
               " at offset ", start + k, " cannot follow ", hex_byte(b0),
               b >= 0x80 && b <= 0xBF ? narrowed : " (expected a continuation byte 0x80..0xBF)");
    cp = (cp << 6) | (b & 0x3F);
  }
  pos = start + len;
  return cp;
}

bool is_scalar_value(char32_t cp) { return cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF); }

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// "U+00E9 'é'", "U+000A '\n'", "U+0007 '\x07'": control characters escaped
// so the message stays on one line and shows them.
std::string describe_char(char32_t cp) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(cp));
  std::string out = buf;
  out += " '";
  switch (cp) {
    case '\n': out += "\\n"; break;
    case '\t': out += "\\t"; break;
    case '\r': out += "\\r"; break;
    case '\'': out += "\\'"; break;
    case '\\': out += "\\\\"; break;
    default:
      if (cp < 0x20 || cp == 0x7F) {
        std::snprintf(buf, sizeof buf, "\\x%02X", static_cast<unsigned>(cp));
        out += buf;
      } else if (cp >= 0x80 && cp <= 0x9F) {
        std::snprintf(buf, sizeof buf, "\\u%04X", static_cast<unsigned>(cp));
        out += buf;
      } else {
        append_utf8(out, cp);
      }
  }
  return out + "'";
}

json parse_json(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    LOOM_ERROR("tokenizer_from_json: not valid JSON: ", e.what());
  }
}

std::string read_file(const std::string& path, const char* who) {
  std::ifstream in(path, std::ios::binary);
  LOOM_CHECK(in, who, ": cannot open '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  LOOM_CHECK(!in.bad(), who, ": error while reading '", path, "'");
  return ss.str();
}

// Appends the entries of one fortune file to `out` (see load_fortunes).
void append_fortunes(std::string_view text, std::string& out) {
  std::vector<std::string_view> entry;  // lines of the entry being read, without '\n'
  const auto is_blank = [](std::string_view line) {
    return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
  };
  const auto flush = [&] {
    size_t first = 0, last = entry.size();
    while (first < last && is_blank(entry[first])) ++first;
    while (last > first && is_blank(entry[last - 1])) --last;
    if (first < last) {
      if (!out.empty()) out += '\n';
      for (size_t k = first; k < last; ++k) {
        out += entry[k];
        out += '\n';
      }
    }
    entry.clear();
  };
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // CRLF files
    if (line == "%")
      flush();
    else
      entry.push_back(line);
  }
  flush();
}

}  // namespace

// ---- Tokenizer ----

Tensor Tokenizer::encode_tensor(std::string_view text) const { return tensor(encode(text)); }

std::string Tokenizer::decode(const Tensor& ids) const {
  LOOM_CHECK(ids.defined(), name(), " tokenizer decode: the ids tensor is undefined");
  LOOM_CHECK(is_integral(ids.dtype(), /*include_bool=*/false), name(),
             " tokenizer decode: expects an integer tensor of ids, got ", ids.dtype(), " ", shape_str(ids.sizes()));
  return decode(ids.cpu().to_vector<int64_t>());
}

// ---- ByteTokenizer ----

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids(text.size());
  for (size_t k = 0; k < text.size(); ++k) ids[k] = static_cast<unsigned char>(text[k]);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out(ids.size(), '\0');
  for (size_t k = 0; k < ids.size(); ++k) {
    LOOM_CHECK(ids[k] >= 0 && ids[k] < 256, "ByteTokenizer.decode: id ", ids[k], " at position ", k,
               " is not a byte (vocab size 256, ids in [0, 256))");
    out[k] = static_cast<char>(static_cast<unsigned char>(ids[k]));
  }
  return out;
}

std::string ByteTokenizer::to_json() const { return json{{"type", "byte"}}.dump(); }

// ---- CharTokenizer ----

CharTokenizer::CharTokenizer(std::vector<char32_t> chars) : chars_(std::move(chars)) {
  LOOM_CHECK(!chars_.empty(), "CharTokenizer: the vocabulary is empty");
  for (size_t k = 0; k < chars_.size(); ++k) {
    LOOM_CHECK(is_scalar_value(chars_[k]), "CharTokenizer: chars[", k, "] = ", static_cast<uint32_t>(chars_[k]),
               " is not a Unicode scalar value (0..0x10FFFF, no surrogates)");
    LOOM_CHECK(k == 0 || chars_[k - 1] < chars_[k], "CharTokenizer: chars must be strictly increasing, but chars[", k - 1,
               "] = ", static_cast<uint32_t>(chars_[k - 1]), " and chars[", k, "] = ", static_cast<uint32_t>(chars_[k]));
  }
  ascii_ids_.fill(-1);
  for (size_t k = 0; k < chars_.size() && chars_[k] < 128; ++k) ascii_ids_[chars_[k]] = static_cast<int64_t>(k);
}

CharTokenizer CharTokenizer::from_corpus(std::string_view corpus) {
  LOOM_CHECK(!corpus.empty(), "CharTokenizer.from_corpus: the corpus is empty");
  std::vector<bool> seen(0x110000, false);  // one bit per code point
  for (size_t pos = 0; pos < corpus.size();) seen[next_code_point(corpus, pos, "CharTokenizer.from_corpus")] = true;
  std::vector<char32_t> chars;
  for (char32_t cp = 0; cp < 0x110000; ++cp)
    if (seen[cp]) chars.push_back(cp);
  return CharTokenizer(std::move(chars));
}

std::vector<int64_t> CharTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    const char32_t cp = next_code_point(text, pos, "CharTokenizer.encode");
    int64_t id = -1;
    if (cp < 128) {
      id = ascii_ids_[cp];
    } else {
      const auto it = std::lower_bound(chars_.begin(), chars_.end(), cp);
      if (it != chars_.end() && *it == cp) id = it - chars_.begin();
    }
    LOOM_CHECK(id >= 0, "CharTokenizer.encode: character ", describe_char(cp), " at byte offset ", start,
               " is not in the vocabulary (", chars_.size(), " characters)");
    ids.push_back(id);
  }
  return ids;
}

std::string CharTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  const int64_t n = vocab_size();
  for (size_t k = 0; k < ids.size(); ++k) {
    LOOM_CHECK(ids[k] >= 0 && ids[k] < n, "CharTokenizer.decode: id ", ids[k], " at position ", k,
               " is not in the vocabulary (vocab size ", n, ", ids in [0, ", n, "))");
    append_utf8(out, chars_[static_cast<size_t>(ids[k])]);
  }
  return out;
}

std::string CharTokenizer::to_json() const {
  json chars = json::array();
  for (char32_t c : chars_) chars.push_back(static_cast<uint32_t>(c));
  return json{{"type", "char"}, {"chars", chars}}.dump();
}

// ---- factories ----

std::unique_ptr<Tokenizer> tokenizer_from_json(const std::string& text) {
  const json j = parse_json(text);
  LOOM_CHECK(j.is_object(), "tokenizer_from_json: expects a JSON object, got ", j.type_name());
  LOOM_CHECK(j.contains("type") && j["type"].is_string(), "tokenizer_from_json: expects a string field \"type\"");
  const std::string type = j["type"].get<std::string>();
  const auto check_keys = [&](std::initializer_list<const char*> allowed) {
    for (const auto& item : j.items()) {
      const bool ok = std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return item.key() == a; });
      LOOM_CHECK(ok, "tokenizer_from_json: unknown key \"", item.key(), "\" for a tokenizer of type \"", type, "\"");
    }
  };
  if (type == "byte") {
    check_keys({"type"});
    return std::make_unique<ByteTokenizer>();
  }
  if (type == "char") {
    check_keys({"type", "chars"});
    LOOM_CHECK(j.contains("chars") && j["chars"].is_array(),
               "tokenizer_from_json: a \"char\" tokenizer needs an array field \"chars\" of code points");
    const json& arr = j["chars"];
    std::vector<char32_t> chars;
    chars.reserve(arr.size());
    for (size_t k = 0; k < arr.size(); ++k) {
      const json& c = arr[k];
      LOOM_CHECK(c.is_number_unsigned() && c.get<uint64_t>() <= 0x10FFFF, "tokenizer_from_json: chars[", k, "] = ",
                 c.dump(), " is not a code point (an integer in 0..0x10FFFF)");
      chars.push_back(static_cast<char32_t>(c.get<uint64_t>()));
    }
    try {
      return std::make_unique<CharTokenizer>(std::move(chars));
    } catch (const Error& e) {
      LOOM_ERROR("tokenizer_from_json: ", e.what());
    }
  }
  LOOM_ERROR("tokenizer_from_json: unknown tokenizer type \"", type, "\" (expected \"byte\" or \"char\")");
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& kind, std::string_view corpus) {
  if (kind == "byte") return std::make_unique<ByteTokenizer>();
  if (kind == "char") return std::make_unique<CharTokenizer>(CharTokenizer::from_corpus(corpus));
  LOOM_ERROR("make_tokenizer: unknown tokenizer kind \"", kind, "\" (expected \"byte\" or \"char\")");
}

// ---- TextDataset ----

TextDataset::TextDataset(Tensor ids, int64_t context_length, std::optional<int64_t> stride)
    : context_length_(context_length), stride_(stride.value_or(context_length)) {
  LOOM_CHECK(ids.defined(), "TextDataset: ids is an undefined tensor");
  LOOM_CHECK(ids.dtype() == kInt64 && ids.dim() == 1, "TextDataset: expects ids as an int64 1-d tensor, got ",
             ids.dtype(), " ", shape_str(ids.sizes()));
  LOOM_CHECK(context_length_ >= 1, "TextDataset: context_length must be at least 1, got ", context_length_);
  LOOM_CHECK(stride_ >= 1, "TextDataset: stride must be at least 1, got ", stride_);
  LOOM_CHECK(ids.size(0) >= context_length_ + 1, "TextDataset: ", ids.size(0),
             " tokens hold no window of context_length ", context_length_, " (it needs ", context_length_ + 1,
             " tokens: T inputs and the target one further)");
  ids_ = ids.contiguous();
}

Example TextDataset::get(int64_t index) {
  check_index(index);
  const int64_t s = index * stride_;
  // data: (T) = ids[s, s + T); target: (T) = ids[s + 1, s + T + 1).
  return {ids_.narrow(0, s, context_length_), ids_.narrow(0, s + 1, context_length_)};
}

int64_t TextDataset::size() const { return (ids_.size(0) - context_length_ - 1) / stride_ + 1; }

std::vector<int64_t> TextDataset::random_starts(int64_t batch_size, uint64_t seed, int64_t step) const {
  LOOM_CHECK(batch_size >= 1, "TextDataset::random_starts: batch_size must be at least 1, got ", batch_size);
  // Note [Next-token batches]: starts 0 .. N - T - 1, keyed by (seed, step).
  const uint64_t range = static_cast<uint64_t>(ids_.size(0) - context_length_);
  std::vector<int64_t> starts(static_cast<size_t>(batch_size));
  uint64_t state = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(step) + 1));
  for (int64_t& s : starts) {
    state = splitmix64(state);
    s = static_cast<int64_t>(state % range);
  }
  return starts;
}

Batch TextDataset::windows(const std::vector<int64_t>& starts) const {
  const int64_t t = context_length_, last = ids_.size(0) - t - 1;
  LOOM_CHECK(!starts.empty(), "TextDataset::windows: no starts given");
  std::vector<int64_t> x, y;  // (B, T) each, row-major
  x.reserve(starts.size() * static_cast<size_t>(t));
  y.reserve(starts.size() * static_cast<size_t>(t));
  const int64_t* p = ids_.data_ptr<int64_t>();
  for (int64_t s : starts) {
    LOOM_CHECK(s >= 0 && s <= last, "TextDataset::windows: start ", s, " is outside [0, ", last,
               "] (", ids_.size(0), " tokens, context_length ", t, ")");
    x.insert(x.end(), p + s, p + s + t);
    y.insert(y.end(), p + s + 1, p + s + t + 1);
  }
  const int64_t b = static_cast<int64_t>(starts.size());
  return {tensor(x, kInt64).reshape({b, t}), tensor(y, kInt64).reshape({b, t})};
}

Batch TextDataset::random_batch(int64_t batch_size, uint64_t seed, int64_t step) const {
  return windows(random_starts(batch_size, seed, step));
}

// ---- split_tokens ----

TokenSplit split_tokens(const Tensor& ids, double val_fraction, int64_t context_length) {
  LOOM_CHECK(ids.defined() && ids.dim() == 1, "split_tokens: expects a 1-d tensor of token ids, got ",
             ids.defined() ? shape_str(ids.sizes()) : std::string("an undefined tensor"));
  LOOM_CHECK(val_fraction > 0 && val_fraction < 1, "split_tokens: val_fraction must be in (0, 1), got ", val_fraction);
  LOOM_CHECK(context_length >= 1, "split_tokens: context_length must be at least 1, got ", context_length);
  const int64_t n = ids.size(0);
  // floor(n (1 - f)), except that a product within 1e-6 of an integer is
  // that integer: 20 * (1 - 0.9) is 1.9999999999999996 in doubles, and the
  // user means 2.
  const double exact = static_cast<double>(n) * (1.0 - val_fraction);
  const double nearest = std::round(exact);
  const int64_t n_train = static_cast<int64_t>(std::abs(exact - nearest) <= 1e-6 ? nearest : std::floor(exact));
  const int64_t n_val = n - n_train;
  const int64_t need = context_length + 1;
  LOOM_CHECK(n_train >= need && n_val >= need, "split_tokens: ", n, " tokens with val_fraction ", val_fraction,
             " give ", n_train, " train and ", n_val, " validation tokens, but each part needs at least ", need,
             " (context_length ", context_length, " + 1)");
  return {ids.narrow(0, 0, n_train), ids.narrow(0, n_train, n_val)};
}

// ---- fortunes ----

std::string load_fortunes(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  LOOM_CHECK(fs::is_directory(dir, ec), "load_fortunes: the folder '", dir,
             "' does not exist; install the Debian package fortunes (apt-get install fortunes), which puts the "
             "fortune files in ",
             kFortunesDir);
  std::vector<fs::path> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::directory_entry& e = *it;
    const std::string file = e.path().filename().string();
    // fortune-mod's layout: "name" (text), "name.dat" (strfile index),
    // "name.u8" (symlink to name), "off/" (the offensive set, a folder).
    if (e.is_symlink(ec) || !e.is_regular_file(ec)) continue;
    if (file.empty() || file[0] == '.' || e.path().extension() == ".dat") continue;
    files.push_back(e.path());
  }
  LOOM_CHECK(!ec, "load_fortunes: cannot list '", dir, "': ", ec.message());
  LOOM_CHECK(!files.empty(), "load_fortunes: '", dir,
             "' holds no fortune files; install the Debian package fortunes (apt-get install fortunes)");
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  std::string out;
  for (const fs::path& p : files) append_fortunes(read_file(p.string(), "load_fortunes"), out);
  LOOM_CHECK(!out.empty(), "load_fortunes: the fortune files in '", dir, "' hold no entries");
  return out;
}

// ---- load_text_corpus ----

TextCorpus load_text_corpus(const std::string& path, int64_t context_length, const std::string& kind,
                            double val_fraction) {
  namespace fs = std::filesystem;
  std::error_code ec;
  LOOM_CHECK(fs::exists(path, ec), "load_text_corpus: '", path, "' does not exist");
  const std::string text = fs::is_directory(path, ec) ? load_fortunes(path) : read_file(path, "load_text_corpus");
  LOOM_CHECK(!text.empty(), "load_text_corpus: '", path, "' is empty");
  TextCorpus corpus;
  try {
    corpus.tokenizer = make_tokenizer(kind, text);
    Tensor ids = corpus.tokenizer->encode_tensor(text);
    TokenSplit split = split_tokens(ids, val_fraction, context_length);
    corpus.train_ids = split.train_ids;
    corpus.val_ids = split.val_ids;
  } catch (const Error& e) {
    LOOM_ERROR("load_text_corpus('", path, "'): ", e.what());
  }
  corpus.num_bytes = static_cast<int64_t>(text.size());
  return corpus;
}

}  // namespace loom::data
