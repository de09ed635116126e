// A job in which rank 1 fails while the others are in collectives, for
// tests/distributed/failures.sh. argv[1]:
//   kill   rank 1 SIGKILLs itself (mpirun must end the job)
//   throw  rank 1 throws a loom::Error (abort_job ends the job, naming rank 1)
//   hang   rank 1 stops calling collectives (the others time out after 2 s)
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

#include "loom/loom.h"

namespace dist = loom::distributed;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "kill" && mode != "throw" && mode != "hang") {
    std::fprintf(stderr, "usage: failing_rank kill|throw|hang\n");
    return 2;
  }
  try {
    dist::Options options;
    options.timeout = std::chrono::seconds(2);
    dist::init_process_group("auto", options);
    for (int step = 0;; ++step) {
      if (dist::get_rank() == 1 && step == 3) {
        if (mode == "kill") std::raise(SIGKILL);
        if (mode == "throw") LOOM_ERROR("rank 1 fails on purpose at step ", step);
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // hang
      }
      loom::Tensor t = loom::ones({1000});
      dist::all_reduce(t);
    }
  } catch (const std::exception& e) {
    dist::abort_job(e.what());
  }
}
