// The ublk daemon's control socket: how `pbrick-gateway replace` reaches the
// daemon that serves a device. A unix stream socket at a path only root may
// use (mode 0600 in /run/pbrick); one request per connection: a line of
// words ("replace OLD NEW\n"), answered by one line, "ok TEXT" or
// "error ERRNO TEXT". The handler runs on the socket's own thread, one
// request at a time; it may block (control round trips) but not forever.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace pbrick {

class ControlSocket {
 public:
  // The words of a request line; its answer (Status: "ok MESSAGE" with the
  // result's text, or "error ERRNO MESSAGE").
  using Handler = std::function<Result<std::string>(const std::vector<std::string>& words)>;

  // A peer that has not sent its whole line this long after it connected
  // is answered ETIMEDOUT and dropped.
  static constexpr int kClientTimeoutMs = 5000;

  // Listens at `path` (a stale socket file there is replaced) and serves
  // until destroyed, which also removes the file; destroying it does not
  // wait for a peer still sending its line.
  static Result<std::unique_ptr<ControlSocket>> Listen(const std::string& path, Handler handler,
                                                       int client_timeout_ms = kClientTimeoutMs);
  ~ControlSocket();
  ControlSocket(const ControlSocket&) = delete;
  ControlSocket& operator=(const ControlSocket&) = delete;

 private:
  ControlSocket(std::string path, UniqueFd listen_fd, UniqueFd stop_fd, Handler handler, int client_timeout_ms);
  void run();
  void serve_one(int fd);

  std::string path_;
  UniqueFd listen_fd_, stop_fd_;
  Handler handler_;
  int client_timeout_ms_;
  std::thread thread_;
};

// Sends one request (words joined by spaces) to the socket at `path` and
// waits up to `timeout_ms` for the answer: the text after "ok", or the
// daemon's error. ENOENT/ECONNREFUSED when no daemon listens there.
Result<std::string> control_request(const std::string& path, const std::vector<std::string>& words, int timeout_ms);

}  // namespace pbrick
