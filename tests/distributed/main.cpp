// main() of the suites that run under mpirun (ctest label `mpi`): every rank
// runs every test; the default group is up for the whole run. Rank 0 prints
// the usual report, other ranks print failures only.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "loom/distributed.h"

int main(int argc, char** argv) {
  // Before InitGoogleTest, which builds the printer: the launcher's rank.
  const char* launcher_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (launcher_rank != nullptr && std::string(launcher_rank) != "0") GTEST_FLAG_SET(brief, true);
  ::testing::InitGoogleTest(&argc, argv);
  loom::distributed::Options options;
  options.timeout = std::chrono::seconds(60);  // a desynchronized test fails instead of hanging
  loom::distributed::init_process_group("auto", options);
  const int rc = RUN_ALL_TESTS();
  // A rank whose test failed may leave the others waiting in a collective:
  // end the whole job instead of finalizing (which waits for every rank).
  if (rc != 0 && loom::distributed::get_world_size() > 1)
    loom::distributed::abort_job("a test failed on this rank", rc);
  loom::distributed::destroy_process_group();
  return rc;
}
