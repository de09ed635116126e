// Whether the client of a request being answered has hung up, for the
// engine to cancel its generation (Note [Client disconnects] in
// src/serve/connection.cpp).
#pragma once

#include <mutex>
#include <string>

namespace loom::serve {

class ConnectionWatch {
 public:
  // The connection whose ends are local_port and remote_addr:remote_port
  // (httplib::Request's fields). Not found (no /proc, another kind of
  // socket): hung_up() is always false.
  ConnectionWatch(int local_port, const std::string& remote_addr, int remote_port);
  bool found() const { return fd_ >= 0; }
  // True once the peer has closed or reset the connection, or after release().
  // Safe from any thread.
  bool hung_up();
  // The handler is returning (httplib will close the socket): forget it.
  void release();

 private:
  std::mutex mu_;  // release() waits for a hung_up() in progress
  int fd_ = -1;
  bool released_ = false;
};

}  // namespace loom::serve
