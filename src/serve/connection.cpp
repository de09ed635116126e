// Note [Client disconnects]
// A client that hangs up frees its slot within one engine step: the engine
// asks each request's RequestControl::disconnected at every step boundary,
// on its own thread. httplib 0.11 gives a handler no handle on its
// connection, but the Request carries both ends of it (local_port,
// remote_addr and remote_port, which httplib read with getsockname and
// getpeername), and only one socket of this process has those ends. So,
// once per request, ConnectionWatch scans /proc/self/fd for the socket whose
// peer is remote_addr:remote_port and whose own port is local_port; then
// each question is one poll(fd, POLLRDHUP, 0): POLLRDHUP (the client closed,
// or shut down its sending side), POLLHUP or POLLERR (a reset) mean gone.
// Bytes the client has sent (a pipelined request) do not count. The
// descriptor stays this connection's while the handler runs, since httplib
// closes it only after the handler returns; the handler calls release()
// before that (and Generation's destructor first waits until the engine
// has ended the request), and release() takes the lock a hung_up() in
// progress holds, so no question is ever asked of a reused descriptor.
// A streamed response also stops at its first failed write.
#include "serve/connection.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

namespace loom::serve {
namespace {

int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// The socket of this process with these ends; -1 when none.
int find_connection_socket(int local_port, const std::string& remote_addr, int remote_port) {
  if (local_port <= 0 || remote_port <= 0) return -1;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == ::dirfd(dir)) continue;
    struct stat st {};
    if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, self{};
    socklen_t peer_len = sizeof(peer), self_len = sizeof(self);
    if (::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        port_of(peer) != remote_port)
      continue;
    if (::getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&self), &self_len) != 0 ||
        port_of(self) != local_port)
      continue;
    // The address as httplib writes it (getnameinfo, numeric).
    char host[NI_MAXHOST];
    if (::getnameinfo(reinterpret_cast<sockaddr*>(&peer), peer_len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) !=
            0 ||
        remote_addr != host)
      continue;
    found = static_cast<int>(fd);
    break;
  }
  ::closedir(dir);
  return found;
}

}  // namespace

ConnectionWatch::ConnectionWatch(int local_port, const std::string& remote_addr, int remote_port)
    : fd_(find_connection_socket(local_port, remote_addr, remote_port)) {}

bool ConnectionWatch::hung_up() {
  std::lock_guard<std::mutex> lock(mu_);
  if (released_) return true;
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

void ConnectionWatch::release() {
  std::lock_guard<std::mutex> lock(mu_);
  released_ = true;
}

}  // namespace loom::serve
