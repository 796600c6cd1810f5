// tcp_round_trip: the floor of one brick request over loopback TCP, without
// pbrick: two processes, blocking sockets with TCP_NODELAY, a 64-byte request
// answered by a 4 KiB reply (the sizes of a 4k READ and its reply), one at a
// time. Each round trip puts each process to sleep and wakes it once, as a
// QD1 read does to the gateway's queue thread and the brick's thread.
//
// With --unix the two processes talk over a unix stream socket instead: the
// back hop of bench/nbd.sh's two-hop NBD proxy (b), beside which pbrick's
// gateway reaches its brick over loopback TCP.
//
// Usage: tcp_round_trip [--unix] [ROUND_TRIPS]   (default 2000, after 100 not counted)
// Prints one line: round trips, mean and p99 time per round trip, each
// process's CPU time (utime + stime) per round trip, and the socket's kind.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr size_t kRequestBytes = 64;
constexpr size_t kReplyBytes = 4096;
constexpr int kWarmup = 100;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "tcp_round_trip: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// Moves exactly `len` bytes; false at end of stream.
bool transfer(int fd, char* buf, size_t len, bool sending) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = sending ? ::send(fd, buf + done, len - done, MSG_NOSIGNAL) : ::recv(fd, buf + done, len - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die(sending ? "send" : "recv");
    if (n == 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

double cpu_us() {
  rusage r{};
  ::getrusage(RUSAGE_SELF, &r);
  return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

void no_delay(int fd) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("setsockopt(TCP_NODELAY)");
}

}  // namespace

int main(int argc, char** argv) {
  bool unix_socket = argc > 1 && std::strcmp(argv[1], "--unix") == 0;
  int arg = unix_socket ? 2 : 1;
  long rounds = argc > arg ? std::strtol(argv[arg], nullptr, 10) : 2000;
  if (argc > arg + 1 || rounds < 1 || rounds > 10000000) {
    std::fprintf(stderr, "usage: tcp_round_trip [--unix] [ROUND_TRIPS (1..10000000)]\n");
    return 2;
  }
  // TCP: a listener on 127.0.0.1 the server accepts on; unix: a connected pair.
  int listener = -1, pair[2] = {-1, -1};
  sockaddr_in addr{};
  if (unix_socket) {
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) die("socketpair");
  } else {
    listener = ::socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) die("socket");
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t addr_len = sizeof addr;
    if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("bind");
    if (::listen(listener, 1) != 0) die("listen");
    if (::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &addr_len) != 0) die("getsockname");
  }
  int cpu_pipe[2];
  if (::pipe(cpu_pipe) != 0) die("pipe");

  pid_t server = ::fork();
  if (server < 0) die("fork");
  if (server == 0) {  // the "brick": answers each request with a reply
    int conn = pair[1];
    if (!unix_socket) {
      conn = ::accept(listener, nullptr, nullptr);
      if (conn < 0) die("accept");
      no_delay(conn);
    }
    char request[kRequestBytes];
    std::vector<char> reply(kReplyBytes, 'r');
    double started = 0;
    for (long i = 0;; i++) {
      if (i == kWarmup) started = cpu_us();
      if (!transfer(conn, request, sizeof request, false)) break;
      transfer(conn, reply.data(), reply.size(), true);
    }
    double per_round = (cpu_us() - started) / static_cast<double>(rounds);
    if (::write(cpu_pipe[1], &per_round, sizeof per_round) != sizeof per_round) die("write");
    std::_Exit(0);
  }

  int conn = pair[0];
  if (unix_socket) {
    ::close(pair[1]);
  } else {
    conn = ::socket(AF_INET, SOCK_STREAM, 0);
    if (conn < 0) die("socket");
    if (::connect(conn, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("connect");
    no_delay(conn);
  }
  char request[kRequestBytes] = {};
  std::vector<char> reply(kReplyBytes);
  std::vector<double> times;
  times.reserve(static_cast<size_t>(rounds));
  double cpu_started = 0;
  for (long i = 0; i < kWarmup + rounds; i++) {
    if (i == kWarmup) cpu_started = cpu_us();
    auto t0 = std::chrono::steady_clock::now();
    transfer(conn, request, sizeof request, true);
    if (!transfer(conn, reply.data(), reply.size(), false)) {
      std::fprintf(stderr, "tcp_round_trip: the server closed early\n");
      return 1;
    }
    if (i >= kWarmup) {
      times.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  double client_cpu = (cpu_us() - cpu_started) / static_cast<double>(rounds);
  ::shutdown(conn, SHUT_WR);
  double server_cpu = 0;
  if (::read(cpu_pipe[0], &server_cpu, sizeof server_cpu) != sizeof server_cpu) die("read");
  int status = 0;
  ::waitpid(server, &status, 0);
  double sum = 0;
  for (double t : times) sum += t;
  std::sort(times.begin(), times.end());
  double p99 = times[std::min(times.size() - 1, times.size() * 99 / 100)];
  std::printf("round_trips %ld mean_us %.1f p99_us %.1f client_cpu_us %.1f server_cpu_us %.1f socket %s\n", rounds,
              sum / static_cast<double>(rounds), p99, client_cpu, server_cpu, unix_socket ? "unix" : "tcp");
  return 0;
}
