// For the gateway's tests: a real brick (Store + Server on a file store in a
// directory of the test) served from a thread of the test over TCP on
// loopback, which can be stopped and started again on the same port - on the
// same store, or on another one (a replaced brick).
//
// TestDir is a test's directory under /tmp, removed with what is in it when
// the test ends; start_test_bricks() starts bricks on subdirectories of it.
//
// SlowLink stands between a gateway and a brick and holds the brick's
// replies back for a while: a slow brick (or network) that still answers.
//
// Errors come back as Status/Result: a test ASSERTs on them, so a failed
// precondition stops it.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/client.h"
#include "common/result.h"
#include "target/pmem_region.h"
#include "target/server.h"
#include "target/store.h"

namespace pbrick {

// Stops the test (from the test body, not a helper) when `expr`, a Status or
// Result, is an error, naming it.
#define PBRICK_ASSERT_OK(expr)                                  \
  do {                                                          \
    const auto& pbrick_assert_ok_ = (expr);                     \
    ASSERT_TRUE(pbrick_assert_ok_.ok()) << pbrick_assert_ok_.error().message(); \
  } while (0)

class TestBrick {
 public:
  static constexpr uint64_t kStoreSize = 128ull << 20;

  explicit TestBrick(std::string dir) : dir_(std::move(dir)) {}
  ~TestBrick() { stop(); }
  TestBrick(const TestBrick&) = delete;
  TestBrick& operator=(const TestBrick&) = delete;

  // Serves the store in file `store_name` of the directory (formatted when it
  // does not exist yet), on the port of the previous start if there was one.
  // `boot_id`: the one HELLO reports (another one stands in for a reboot of
  // the brick's host); unset: the host's.
  Status start(const std::string& store_name = "brick.store",
               std::optional<std::array<uint8_t, proto::kUuidSize>> boot_id = std::nullopt) {
    RegionOptions ro;
    ro.path = dir_ + "/" + store_name;
    ro.size = kStoreSize;
    auto region = open_pmem_region(ro);
    if (!region) return region.error().wrap("test brick: " + ro.path);
    auto store = Store::Open(std::move(*region), {});
    if (!store) return store.error().wrap("test brick: " + ro.path);
    ServerOptions so;
    so.listen = Endpoint{"127.0.0.1", port_};
    so.boot_id = boot_id;
    auto server = Server::Create(**store, so);
    if (!server) return server.error().wrap("test brick: listen");
    store_ = std::move(*store);
    server_ = std::move(*server);
    port_ = server_->port();
    thread_ = std::thread([this] {
      Status st = server_->run();
      EXPECT_TRUE(st.ok()) << st.error().message();
    });
    return Status::Ok();
  }

  void stop() {
    if (!thread_.joinable()) return;
    server_->stop();
    thread_.join();
    server_.reset();
    store_.reset();
  }

  ClientOptions client() const {
    ClientOptions o;
    o.endpoint = Endpoint{"127.0.0.1", port_};
    return o;
  }

  Result<proto::StatReply> stat() const {
    auto c = BrickClient::Connect(client());
    if (!c) return c.error();
    return (*c)->stat();
  }

 private:
  std::string dir_;
  uint16_t port_ = 0;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

// A TCP relay on 127.0.0.1 in front of a brick: every chunk of bytes the
// brick sends is passed on `delay` after it arrived (0: at once); requests
// go through at once. Threads of the test; stop() (or the destructor) ends
// every connection.
// A directory of one test, /tmp/pbrick-NAME-XXXXXX, made by make() and
// removed with everything in it when the object goes. A fixture declares it
// before its bricks, so they are stopped before their stores go.
class TestDir {
 public:
  TestDir() = default;
  ~TestDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  TestDir(const TestDir&) = delete;
  TestDir& operator=(const TestDir&) = delete;

  Status make(const std::string& name) {
    std::string tmpl = "/tmp/pbrick-" + name + "-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) return errno_error("test directory " + tmpl);
    path_ = tmpl;
    return Status::Ok();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Starts `count` more bricks, each on its own subdirectory brickN of `dir`
// (N counting on from the bricks already there), appending them to `bricks`.
inline Status start_test_bricks(const std::string& dir, uint32_t count,
                                std::vector<std::unique_ptr<TestBrick>>* bricks) {
  for (uint32_t i = 0; i < count; i++) {
    std::string d = dir + "/brick" + std::to_string(bricks->size());
    if (::mkdir(d.c_str(), 0700) != 0) return errno_error("test brick directory " + d);
    bricks->push_back(std::make_unique<TestBrick>(d));
    Status st = bricks->back()->start();
    if (!st) return st;
  }
  return Status::Ok();
}

class SlowLink {
 public:
  explicit SlowLink(ClientOptions brick) : brick_(std::move(brick)) {}
  ~SlowLink() { stop(); }
  SlowLink(const SlowLink&) = delete;
  SlowLink& operator=(const SlowLink&) = delete;

  Status start() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno_error("slow link: socket");
    listen_fd_ = UniqueFd(fd);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 16) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return errno_error("slow link: listen");
    }
    port_ = ntohs(a.sin_port);
    accept_thread_ = std::thread([this] { accept_loop(); });
    return Status::Ok();
  }

  void set_delay(std::chrono::milliseconds d) { delay_ms_.store(d.count()); }

  // The brick as the gateway reaches it through the link.
  ClientOptions client() const {
    ClientOptions o = brick_;
    o.endpoint = Endpoint{"127.0.0.1", port_};
    return o;
  }

  void stop() {
    if (!accept_thread_.joinable()) return;
    stopping_ = true;
    ::shutdown(listen_fd_.get(), SHUT_RDWR);
    accept_thread_.join();
    std::vector<std::thread> pumps;
    {
      std::lock_guard lock(mu_);
      for (const UniqueFd& s : sockets_) ::shutdown(s.get(), SHUT_RDWR);
      pumps.swap(pumps_);
    }
    for (std::thread& t : pumps) t.join();
  }

 private:
  void accept_loop() {
    while (!stopping_) {
      int client = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) return;
      int brick = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(brick_.endpoint.port);
      ::inet_pton(AF_INET, brick_.endpoint.host.c_str(), &a.sin_addr);
      if (brick < 0 || ::connect(brick, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        if (brick >= 0) ::close(brick);
        ::close(client);  // as a dead brick would: the connection ends
        continue;
      }
      int one = 1;
      ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ::setsockopt(brick, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard lock(mu_);
      sockets_.emplace_back(client);
      sockets_.emplace_back(brick);
      pumps_.emplace_back([this, client, brick] { pump(client, brick, false); });
      pumps_.emplace_back([this, client, brick] { pump(brick, client, true); });
    }
  }

  // Copies from `from` to `to` until either end closes, then closes both
  // directions of both.
  void pump(int from, int to, bool delayed) {
    std::vector<uint8_t> buf(1 << 16);
    for (;;) {
      ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
      if (n <= 0) break;
      if (long d = delayed ? delay_ms_.load() : 0; d > 0) std::this_thread::sleep_for(std::chrono::milliseconds(d));
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = ::send(to, buf.data() + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) break;
        off += w;
      }
      if (off < n) break;
    }
    ::shutdown(from, SHUT_RDWR);
    ::shutdown(to, SHUT_RDWR);
  }

  ClientOptions brick_;
  uint16_t port_ = 0;
  UniqueFd listen_fd_;
  std::atomic<bool> stopping_{false};
  std::atomic<long> delay_ms_{0};
  std::thread accept_thread_;
  std::mutex mu_;
  std::vector<UniqueFd> sockets_;  // under mu_; closed when the link is destroyed
  std::vector<std::thread> pumps_;  // under mu_
};

}  // namespace pbrick
