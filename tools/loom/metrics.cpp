#include "metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <loom/error.h>

namespace loom::cli {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Shortest text that reads back as the same double; JSON has no NaN or
// infinity, so those become null there (CSV keeps "nan"/"inf").
std::string number(double v, bool json) {
  if (!std::isfinite(v)) return json ? "null" : (std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace

const char* MetricsWriter::csv_header() { return "epoch,train_loss,test_loss,test_acc,seconds,samples_per_s"; }

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  if (ends_with(path, ".csv")) format_ = Format::kCsv;
  else if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || ends_with(path, ".json"))
    format_ = Format::kJsonLines;
  else
    LOOM_ERROR("metrics: cannot tell the format of '", path,
               "' from its extension: use .csv or .jsonl (JSON lines)");

  bool has_rows = false;
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && std::filesystem::file_size(path, ec) > 0 && !ec) {
    has_rows = true;
    if (format_ == Format::kCsv) {
      std::ifstream in(path);
      std::string first;
      std::getline(in, first);
      if (!first.empty() && first.back() == '\r') first.pop_back();
      LOOM_CHECK(first == csv_header(), "metrics: '", path, "' already exists with header '", first,
                 "', not '", csv_header(), "'; pick another file");
    }
  }
  out_.open(path, std::ios::app);
  LOOM_CHECK(out_.is_open(), "metrics: cannot open '", path, "' for appending");
  if (format_ == Format::kCsv && !has_rows) out_ << csv_header() << "\n" << std::flush;
}

void MetricsWriter::append(const EpochMetrics& m) {
  if (format_ == Format::kCsv) {
    out_ << m.epoch << "," << number(m.train_loss, false) << "," << number(m.test_loss, false) << ","
         << number(m.test_acc, false) << "," << number(m.seconds, false) << ","
         << number(m.samples_per_s, false) << "\n";
  } else {
    out_ << "{\"epoch\": " << m.epoch << ", \"train_loss\": " << number(m.train_loss, true)
         << ", \"test_loss\": " << number(m.test_loss, true) << ", \"test_acc\": " << number(m.test_acc, true)
         << ", \"seconds\": " << number(m.seconds, true)
         << ", \"samples_per_s\": " << number(m.samples_per_s, true) << "}\n";
  }
  out_.flush();
  LOOM_CHECK(out_.good(), "metrics: writing to '", path_, "' failed");
}

}  // namespace loom::cli
