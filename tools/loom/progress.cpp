#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace loom::cli {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto total = static_cast<int64_t>(std::llround(seconds));
  int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  char buf[32];
  if (h > 0) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(h),
                           static_cast<long long>(m), static_cast<long long>(s));
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(m), static_cast<long long>(s));
  return buf;
}

bool is_terminal(int fd) { return ::isatty(fd) == 1; }

EpochProgress::EpochProgress(std::ostream& out, bool interactive, int64_t epoch, int64_t epochs,
                             int64_t total_batches, int width)
    : out_(out),
      interactive_(interactive),
      epoch_(epoch),
      epochs_(epochs),
      total_batches_(std::max<int64_t>(total_batches, 1)),
      width_(std::max(width, 40)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_),
      next_log_batch_(std::max<int64_t>(total_batches_ / 10, 1)) {}

double EpochProgress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

// "epoch 2/5 [=====>    ] 234/469  loss 0.4123  5120 samples/s  ETA 0:12"
// (bar_width 0 leaves the bar out: the log-line form).
std::string EpochProgress::status_line(int64_t batch, double running_loss, int64_t samples,
                                       int bar_width) const {
  double elapsed = elapsed_seconds();
  double rate = elapsed > 0 ? static_cast<double>(samples) / elapsed : 0;
  double eta = batch > 0 ? elapsed / static_cast<double>(batch) * static_cast<double>(total_batches_ - batch) : -1;
  char head[64], tail[128];
  std::snprintf(head, sizeof head, "epoch %lld/%lld ", static_cast<long long>(epoch_),
                static_cast<long long>(epochs_));
  std::snprintf(tail, sizeof tail, " %lld/%lld  loss %.4f  %.0f samples/s  ETA %s",
                static_cast<long long>(batch), static_cast<long long>(total_batches_), running_loss, rate,
                format_duration(eta).c_str());
  std::string line = head;
  if (bar_width > 0) {
    int filled = static_cast<int>(static_cast<double>(bar_width) * static_cast<double>(batch) /
                                  static_cast<double>(total_batches_));
    filled = std::clamp(filled, 0, bar_width);
    std::string bar(static_cast<size_t>(bar_width), ' ');
    std::fill(bar.begin(), bar.begin() + filled, '=');
    if (filled < bar_width && filled > 0) bar[static_cast<size_t>(filled)] = '>';
    line += "[" + bar + "]";
  } else {
    line += "batch";
  }
  return line + tail;
}

void EpochProgress::update(int64_t batch, double running_loss, int64_t samples) {
  if (interactive_) {
    // Redraw at most ~10 times a second (and always for the last batch):
    // terminal writes cost more than a small batch.
    auto now = std::chrono::steady_clock::now();
    if (drawn_ && batch < total_batches_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    // Width left for the bar: the text around it is about 70 characters.
    int bar_width = std::clamp(width_ - 72, 10, 40);
    out_ << "\r\033[K" << status_line(batch, running_loss, samples, bar_width) << std::flush;
    drawn_ = true;
    return;
  }
  if (batch >= next_log_batch_ || batch == total_batches_) {
    out_ << status_line(batch, running_loss, samples, 0) << "\n" << std::flush;
    int64_t step = std::max<int64_t>(total_batches_ / 10, 1);
    while (next_log_batch_ <= batch) next_log_batch_ += step;
  }
}

void EpochProgress::finish() {
  if (interactive_ && drawn_) out_ << "\r\033[K" << std::flush;
  drawn_ = false;
}

}  // namespace loom::cli
