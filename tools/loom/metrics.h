// Per-epoch training metrics appended to a CSV or JSON-lines file, one row
// per epoch, flushed as it is written (so `tail -f` and a crash both see it).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace loom::cli {

struct EpochMetrics {
  int64_t epoch = 0;  // 1-based
  double train_loss = 0;
  double test_loss = 0;
  double test_acc = 0;  // fraction in [0, 1]
  double seconds = 0;   // training time of the epoch (evaluation excluded)
  double samples_per_s = 0;
};

class MetricsWriter {
 public:
  enum class Format { kCsv, kJsonLines };

  // The format comes from the extension: .csv, or .jsonl / .ndjson / .json
  // (JSON lines). Anything else is an Error. The file is appended to; a new
  // or empty CSV gets the header line first, and an existing CSV must start
  // with the same header (so columns never silently mix).
  explicit MetricsWriter(const std::string& path);

  void append(const EpochMetrics& m);

  Format format() const { return format_; }
  static const char* csv_header();  // "epoch,train_loss,test_loss,test_acc,seconds,samples_per_s"

 private:
  std::string path_;
  Format format_;
  std::ofstream out_;
};

}  // namespace loom::cli
