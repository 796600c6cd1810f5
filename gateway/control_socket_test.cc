// The daemon's control socket: a request's words reach the handler, its
// answer or error (errno and text) comes back, bad peers are answered or
// dropped, and no socket means ENOENT for the asker.
#include "gateway/control_socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

namespace pbrick {
namespace {

class ControlSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pbrick-control-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/ublk-0.sock";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_, path_;
};

TEST_F(ControlSocketTest, WordsReachTheHandlerAndItsAnswerComesBack) {
  std::vector<std::string> seen;
  auto s = ControlSocket::Listen(path_, [&](const std::vector<std::string>& w) -> Result<std::string> {
    seen = w;
    if (w.size() == 3 && w[0] == "replace") return std::string("brick 1 replaced");
    return Error(EINVAL, "expected: replace OLD NEW");
  });
  ASSERT_TRUE(s.ok()) << s.error().message();
  struct stat st{};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "only root may ask";

  auto ok = control_request(path_, {"replace", "10.0.0.1:7000", "10.0.0.3:7000"}, 2000);
  ASSERT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_EQ(*ok, "brick 1 replaced");
  EXPECT_EQ(seen, (std::vector<std::string>{"replace", "10.0.0.1:7000", "10.0.0.3:7000"}));

  auto bad = control_request(path_, {"frobnicate"}, 2000);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().errnum(), EINVAL);
  EXPECT_EQ(bad.error().context(), "expected: replace OLD NEW");

  // A peer that sends no line is dropped after its timeout, and the socket
  // serves the next one.
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path_.c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ::close(fd);  // gone without a line: answered with an error nobody reads
  EXPECT_TRUE(control_request(path_, {"replace", "a:1", "b:2"}, 2000).ok());

  s->reset();
  EXPECT_NE(::access(path_.c_str(), F_OK), 0) << "the socket file goes with it";
  auto none = control_request(path_, {"replace", "a:1", "b:2"}, 2000);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().errnum(), ENOENT);
}

int connect_to(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A peer dribbling its line a byte at a time gets the timeout once for the
// whole line, not once per byte; and a daemon stopping does not wait for
// such a peer.
TEST_F(ControlSocketTest, APeerSendingItsLineSlowlyIsDroppedAndDoesNotHoldTheStop) {
  auto s = ControlSocket::Listen(
      path_, [](const std::vector<std::string>&) -> Result<std::string> { return std::string("served"); }, 600);
  ASSERT_TRUE(s.ok()) << s.error().message();
  int fd = connect_to(path_);
  ASSERT_GE(fd, 0);
  const auto start = std::chrono::steady_clock::now();
  std::string answer;
  for (int k = 0; k < 40; k++) {  // 40 bytes, one each 100 ms: 4 s in all
    if (::send(fd, "r", 1, MSG_NOSIGNAL) != 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      answer.assign(buf, static_cast<size_t>(n));
      break;
    }
  }
  const auto took = std::chrono::steady_clock::now() - start;
  ::close(fd);
  EXPECT_EQ(answer.rfind("error " + std::to_string(ETIMEDOUT) + " ", 0), 0u) << answer;
  EXPECT_LT(took, std::chrono::milliseconds(2000)) << "answered only after the peer stopped sending";
  EXPECT_TRUE(control_request(path_, {"status"}, 2000).ok()) << "the next peer is served";

  // Stopping while a peer has sent half a line: at once, not after its
  // timeout (here the default, 5 s).
  auto slow = ControlSocket::Listen(
      dir_ + "/ublk-1.sock", [](const std::vector<std::string>&) -> Result<std::string> { return std::string(); });
  ASSERT_TRUE(slow.ok()) << slow.error().message();
  fd = connect_to(dir_ + "/ublk-1.sock");
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::send(fd, "rep", 3, MSG_NOSIGNAL), 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the socket's thread reads it
  const auto stopping = std::chrono::steady_clock::now();
  slow->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - stopping, std::chrono::milliseconds(1000));
  ::close(fd);
}

}  // namespace
}  // namespace pbrick
