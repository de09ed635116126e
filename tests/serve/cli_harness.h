// What the tests of `loom serve` as a process share (test_serve_cli.cpp,
// test_openai_cli.cpp): children started and killed safely, a scratch
// folder, `loom serve --port 0` running once it names its port, and
// Prometheus text read back.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#ifndef LOOM_CLI_PATH
#error "LOOM_CLI_PATH must name the loom program (tests/serve/CMakeLists.txt sets it)"
#endif

namespace loom::serve_test {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

inline constexpr const char* kLoom = LOOM_CLI_PATH;

inline std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_text(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

inline double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Polls `done` every few milliseconds until it holds or `timeout` passes.
inline bool wait_for(const std::function<bool()>& done, milliseconds timeout) {
  const auto end = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

// ---- child processes ----

// A program run as a child, its stdout and stderr going to `log_file`.
// Start children from the main thread only: PR_SET_PDEATHSIG kills a child
// when the thread that forked it ends, so none outlives this process (a
// crash, ctest's timeout), and the destructor kills one still running.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& args, fs::path log_file) : log_file_(std::move(log_file)) {
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int log_fd = ::open(log_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) throw std::runtime_error("cannot create " + log_file_.string() + ": " + std::strerror(errno));
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls until exec: this process has threads.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::signal(SIGPIPE, SIG_DFL);
      ::dup2(log_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      // No inherited sockets: a client connection held open by a child
      // would keep another server's connection thread (and its shutdown)
      // waiting for the keep-alive timeout.
      ::close_range(3, ~0U, 0);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(log_fd);
    if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  }
  ~ChildProcess() { kill_now(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool running() { return !poll_exit().has_value(); }

  // The exit code (128 + N when killed by signal N), or nullopt when the
  // child is still running after `timeout`.
  std::optional<int> wait_exit(milliseconds timeout) {
    wait_for([&] { return poll_exit().has_value(); }, timeout);
    return poll_exit();
  }

  void send(int sig) {
    if (running()) ::kill(pid_, sig);
  }

  void kill_now() {
    if (pid_ > 0 && running()) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
      status_ = 128 + SIGKILL;
    }
  }

  std::string log() const { return read_text(log_file_); }

 private:
  std::optional<int> poll_exit() {
    if (!status_ && pid_ > 0) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_)
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
    }
    return status_;
  }

  fs::path log_file_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// A folder of this process's own, removed at exit.
inline const fs::path& scratch_dir() {
  struct Dir {
    fs::path path;
    Dir() {
      std::string tmpl = (fs::temp_directory_path() / "loom_serve_cli.XXXXXX").string();
      if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
      path = tmpl;
    }
    ~Dir() {
      std::error_code ec;
      if (!std::getenv("LOOM_KEEP_TEST_DIR")) fs::remove_all(path, ec);
    }
  };
  static Dir dir;
  return dir.path;
}

inline fs::path next_log_file(const std::string& what) {
  static std::atomic<int> n{0};
  return scratch_dir() / (what + "." + std::to_string(n++) + ".log");
}

// Runs `loom ARGS` to its end (at most `timeout`); its exit code and output.
inline std::pair<int, std::string> run_loom(const std::vector<std::string>& args, milliseconds timeout) {
  std::vector<std::string> argv = {kLoom};
  argv.insert(argv.end(), args.begin(), args.end());
  ChildProcess child(argv, next_log_file(args.empty() ? "loom" : args[0]));
  const std::optional<int> code = child.wait_exit(timeout);
  child.kill_now();
  return {code.value_or(-1), child.log()};
}

// `loom serve ARGS --port 0 --threads 1`, running once its "listening on"
// line names the port. stop() sends a signal and returns the exit code; the
// destructor kills a server still running.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {kLoom, "serve", "--port", "0", "--threads", "1"};
    argv.insert(argv.end(), args.begin(), args.end());
    child_ = std::make_unique<ChildProcess>(argv, next_log_file("serve"));
    static const std::regex listening(R"(loom serve: listening on http://127\.0\.0\.1:(\d+))");
    std::smatch m;
    std::string log;
    const bool up = wait_for(
        [&] {
          log = child_->log();
          return std::regex_search(log, m, listening) || !child_->running();
        },
        seconds(60));
    if (!up || m.empty()) {
      child_->kill_now();
      throw std::runtime_error("loom serve did not start listening:\n" + child_->log());
    }
    port_ = std::stoi(m[1].str());
  }

  int port() const { return port_; }
  std::string log() const { return child_->log(); }
  bool running() { return child_->running(); }
  void send(int sig) { child_->send(sig); }

  // The exit code once it has exited, waiting at most `timeout` (-1: it was
  // still running, and has been killed).
  int wait_exit(milliseconds timeout = seconds(20)) {
    const std::optional<int> code = child_->wait_exit(timeout);
    child_->kill_now();
    return code.value_or(-1);
  }
  int stop(int sig = SIGTERM) {
    send(sig);
    return wait_exit();
  }

 private:
  std::unique_ptr<ChildProcess> child_;
  int port_ = 0;
};

// A suite's checkpoints (C has a `file` map of model name -> path): those
// in the folder $env names, which ctest's fixture entry (`binary
// --make-checkpoints DIR`) filled, so each test's process need not train;
// without $env, made by the first call with make(fallback). A failure is
// thrown by every call, without trying again.
template <typename C>
const C& suite_checkpoints(const char* env, const char* binary, C (*in)(const fs::path&),
                           C (*make)(const fs::path&), const fs::path& fallback) {
  static std::string error;
  static const std::unique_ptr<C> made = [&]() -> std::unique_ptr<C> {
    try {
      if (const char* dir = std::getenv(env)) {
        auto c = std::make_unique<C>(in(dir));
        for (const auto& [name, f] : c->file)
          if (!fs::exists(f))
            throw std::runtime_error(fs::path(f).string() + " is missing: " + env + " names a folder that `" + binary +
                                     " --make-checkpoints DIR` has not filled");
        return c;
      }
      return std::make_unique<C>(make(fallback));
    } catch (const std::exception& e) {
      error = e.what();
      return nullptr;
    }
  }();
  if (!made) throw std::runtime_error("making the checkpoints failed: " + error);
  return *made;
}

// A fixture whose tests share one `loom serve` (Derived::main_flags()),
// started by the first test that asks and stopped, exit status 0 asserted,
// when the suite ends. Derived::prepare() builds what the servers read (the
// checkpoints); a failure there fails each test with its message.
template <typename Derived>
class SharedServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      Derived::prepare();
    } catch (const std::exception&) {
      // SetUp fails each test with the message.
    }
  }
  void SetUp() override { ASSERT_NO_THROW(Derived::prepare()); }
  static void TearDownTestSuite() {
    if (main_) {
      const int code = main_->stop(SIGTERM);
      EXPECT_EQ(code, 0) << "the main server did not stop cleanly:\n" << main_->log();
      main_.reset();
    }
  }
  static ServerProcess& main_server() {
    if (!main_) main_ = std::make_unique<ServerProcess>(Derived::main_flags());
    return *main_;
  }
  static int port() { return main_server().port(); }

  static inline std::unique_ptr<ServerProcess> main_;
};

// Prometheus text as sample -> value ("name{labels}" -> 3); HELP and TYPE
// lines under "#HELP name" and "#TYPE name".
inline std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# ", 0) == 0) {
      std::istringstream words(line.substr(2));
      std::string kind, name;
      words >> kind >> name;
      samples["#" + kind + " " + name] = 1;
      continue;
    }
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) throw std::runtime_error("bad metrics line: " + line);
    samples[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return samples;
}

}  // namespace loom::serve_test
