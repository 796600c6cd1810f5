#include "gateway/control_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "common/log.h"

namespace pbrick {
namespace {

constexpr size_t kMaxLine = 4096;

Result<sockaddr_un> address_of(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return Error(ENAMETOOLONG, "control socket path " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// Reads one line (without its '\n'), the whole of it within the timeout (a
// peer sending a byte now and then gets no more time), or until `stop_fd`
// (when not -1) becomes readable: ECANCELED.
Result<std::string> read_line(int fd, int timeout_ms, int stop_fd = -1) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string line;
  char c;
  while (line.size() < kMaxLine) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Error(ETIMEDOUT, "control socket: no whole line in " + std::to_string(timeout_ms) + " ms");
    }
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    int r = ::poll(p, stop_fd < 0 ? 1 : 2, static_cast<int>(left.count()));
    if (r == 0) continue;  // the deadline, checked above
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno_error("control socket: poll");
    }
    if (stop_fd >= 0 && p[1].revents != 0) return Error(ECANCELED, "control socket: the daemon is stopping");
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error("control socket: read");
    if (n == 0 || c == '\n') return line;
    line.push_back(c);
  }
  return Error(EMSGSIZE, "control socket: a line longer than " + std::to_string(kMaxLine) + " bytes");
}

Status write_all(int fd, const std::string& text) {
  for (size_t done = 0; done < text.size();) {
    ssize_t n = ::send(fd, text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error("control socket: write");
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

std::vector<std::string> words_of(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

Result<std::unique_ptr<ControlSocket>> ControlSocket::Listen(const std::string& path, Handler handler,
                                                             int client_timeout_ms) {
  auto addr = address_of(path);
  if (!addr) return addr.error();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno_error("control socket: socket");
  ::unlink(path.c_str());  // a previous daemon's, which is gone (it unlinks its own)
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
    return errno_error("control socket: bind " + path);
  }
  if (::chmod(path.c_str(), 0600) != 0) return errno_error("control socket: chmod " + path);
  if (::listen(fd.get(), 4) != 0) return errno_error("control socket: listen " + path);
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
  if (!stop.valid()) return errno_error("control socket: eventfd");
  std::unique_ptr<ControlSocket> s(
      new ControlSocket(path, std::move(fd), std::move(stop), std::move(handler), client_timeout_ms));
  s->thread_ = std::thread([p = s.get()] { p->run(); });
  return s;
}

ControlSocket::ControlSocket(std::string path, UniqueFd listen_fd, UniqueFd stop_fd, Handler handler,
                             int client_timeout_ms)
    : path_(std::move(path)), listen_fd_(std::move(listen_fd)), stop_fd_(std::move(stop_fd)),
      handler_(std::move(handler)), client_timeout_ms_(client_timeout_ms) {}

ControlSocket::~ControlSocket() {
  uint64_t one = 1;
  if (::write(stop_fd_.get(), &one, sizeof one) < 0) PBRICK_LOG_WARN("control socket: eventfd write failed");
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void ControlSocket::run() {
  for (;;) {
    pollfd p[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      PBRICK_LOG_ERROR("control socket %s: poll: %s", path_.c_str(), std::strerror(errno));
      return;
    }
    if (p[1].revents != 0) return;
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) {
      // Out of descriptors or memory, the peer still queued: the listening
      // socket stays readable, so wait a moment (or for the stop) rather
      // than spin.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        pollfd stop{stop_fd_.get(), POLLIN, 0};
        (void)::poll(&stop, 1, 100);
      }
      continue;
    }
    serve_one(conn.get());
  }
}

void ControlSocket::serve_one(int fd) {
  auto line = read_line(fd, client_timeout_ms_, stop_fd_.get());
  if (!line && line.error().errnum() == ECANCELED) return;
  std::string answer;
  if (!line) {
    answer = "error " + std::to_string(line.error().errnum()) + " " + line.error().context();
  } else {
    auto r = handler_(words_of(*line));
    answer = r ? "ok " + *r : "error " + std::to_string(r.error().errnum()) + " " + r.error().context();
  }
  for (char& c : answer) {
    if (c == '\n') c = ' ';
  }
  Status st = write_all(fd, answer + "\n");
  if (!st) PBRICK_LOG_WARN("%s", st.error().message().c_str());
}

Result<std::string> control_request(const std::string& path, const std::vector<std::string>& words, int timeout_ms) {
  auto addr = address_of(path);
  if (!addr) return addr.error();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno_error("control socket: socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
    return errno_error("connect " + path);
  }
  std::string line;
  for (const std::string& w : words) line += (line.empty() ? "" : " ") + w;
  PBRICK_TRY(write_all(fd.get(), line + "\n"));
  auto answer = read_line(fd.get(), timeout_ms);
  if (!answer) return answer.error();
  if (answer->rfind("ok", 0) == 0) return answer->size() > 3 ? answer->substr(3) : std::string();
  int err = EIO;
  std::string text = *answer;
  if (answer->rfind("error ", 0) == 0) {
    size_t sp = answer->find(' ', 6);
    err = std::atoi(answer->substr(6, sp - 6).c_str());
    text = sp == std::string::npos ? "" : answer->substr(sp + 1);
    if (err <= 0) err = EIO;
  }
  return Error(err, text);
}

}  // namespace pbrick
