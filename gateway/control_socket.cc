#include "gateway/control_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "common/log.h"

namespace pbrick {
namespace {

constexpr size_t kMaxLine = 4096;
constexpr int kClientTimeoutMs = 5000;  // a peer that does not send its line in time is dropped

Result<sockaddr_un> address_of(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return Error(ENAMETOOLONG, "control socket path " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// Reads one line (without its '\n') within the timeout.
Result<std::string> read_line(int fd, int timeout_ms) {
  std::string line;
  char c;
  while (line.size() < kMaxLine) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r == 0) return Error(ETIMEDOUT, "control socket: no answer in " + std::to_string(timeout_ms) + " ms");
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno_error("control socket: poll");
    }
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

Result<std::unique_ptr<ControlSocket>> ControlSocket::Listen(const std::string& path, Handler handler) {
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
  std::unique_ptr<ControlSocket> s(new ControlSocket(path, std::move(fd), std::move(stop), std::move(handler)));
  s->thread_ = std::thread([p = s.get()] { p->run(); });
  return s;
}

ControlSocket::ControlSocket(std::string path, UniqueFd listen_fd, UniqueFd stop_fd, Handler handler)
    : path_(std::move(path)), listen_fd_(std::move(listen_fd)), stop_fd_(std::move(stop_fd)),
      handler_(std::move(handler)) {}

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
    if (!conn.valid()) continue;
    serve_one(conn.get());
  }
}

void ControlSocket::serve_one(int fd) {
  auto line = read_line(fd, kClientTimeoutMs);
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
