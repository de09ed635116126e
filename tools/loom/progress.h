// Training progress for one epoch: a bar redrawn in place on a terminal,
// plain log lines (every 10% of the epoch) when the output is a file or pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace loom::cli {

// Seconds as "m:ss" or "h:mm:ss" (negative or non-finite: "?").
std::string format_duration(double seconds);

// True when `fd` is a terminal (isatty), so a bar can be redrawn with '\r'.
bool is_terminal(int fd);

class EpochProgress {
 public:
  // epoch is 1-based; total_batches > 0. `interactive` selects the redrawn
  // bar, otherwise log lines; `width` is the terminal width for the bar.
  EpochProgress(std::ostream& out, bool interactive, int64_t epoch, int64_t epochs,
                int64_t total_batches, int width = 80);

  // After batch `batch` (1-based) finished: `running_loss` is the mean loss of
  // the epoch so far, `samples` the images seen so far in this epoch.
  void update(int64_t batch, double running_loss, int64_t samples);

  // Erases the bar (interactive mode) so the epoch summary can take its line.
  void finish();

  double elapsed_seconds() const;

 private:
  std::string status_line(int64_t batch, double running_loss, int64_t samples, int bar_width) const;

  std::ostream& out_;
  bool interactive_;
  int64_t epoch_, epochs_, total_batches_;
  int width_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  int64_t next_log_batch_;  // log mode: the next batch that prints a line
  bool drawn_ = false;
};

}  // namespace loom::cli
