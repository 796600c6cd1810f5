// The daemon's control socket: a request's words reach the handler, its
// answer or error (errno and text) comes back, bad peers are answered or
// dropped, and no socket means ENOENT for the asker.
#include "gateway/control_socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>

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

}  // namespace
}  // namespace pbrick
