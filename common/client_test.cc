#include "common/client.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/protocol.h"
#include "common/unique_fd.h"

namespace pbrick {
namespace {

TEST(EndpointTest, HostPortAndBracketedV6RoundTrip) {
  auto e = parse_endpoint("10.0.0.1:7000", "--target");
  ASSERT_TRUE(e.ok()) << e.error().message();
  EXPECT_EQ(e->host, "10.0.0.1");
  EXPECT_EQ(e->port, 7000);
  EXPECT_FALSE(e->is_unix());
  EXPECT_EQ(e->to_string(), "10.0.0.1:7000");
  auto v6 = parse_endpoint("[fd00::1]:7000", "--target");
  ASSERT_TRUE(v6.ok()) << v6.error().message();
  EXPECT_EQ(v6->host, "fd00::1");
  EXPECT_EQ(v6->to_string(), "[fd00::1]:7000");
}

TEST(EndpointTest, AUnixSocketIsAnAbsolutePath) {
  auto e = parse_endpoint("unix:/run/pbrick/b0.sock", "--listen");
  ASSERT_TRUE(e.ok()) << e.error().message();
  EXPECT_TRUE(e->is_unix());
  EXPECT_EQ(e->unix_path, "/run/pbrick/b0.sock");
  EXPECT_EQ(e->to_string(), "unix:/run/pbrick/b0.sock");
  sockaddr_un sun = unix_address(*e);
  EXPECT_EQ(sun.sun_family, AF_UNIX);
  EXPECT_STREQ(sun.sun_path, "/run/pbrick/b0.sock");
}

TEST(EndpointTest, BadAddressesNameTheFlagAndWhy) {
  struct Case {
    std::string text, why;
  };
  const std::string longest(sizeof(sockaddr_un::sun_path) - 1, 'p');
  for (const Case& c : {Case{"unix:b0.sock", "expected unix:/ABSOLUTE/PATH"},
                        Case{"unix:", "expected unix:/ABSOLUTE/PATH"},
                        Case{"unix:/" + longest, "a unix socket's path has at most 107 bytes"},
                        Case{"nowhere", "expected HOST:PORT"}, Case{"h:0", "port must be 1..65535"},
                        Case{":7000", "empty host"}}) {
    auto e = parse_endpoint(c.text, "--target");
    ASSERT_FALSE(e.ok()) << c.text;
    EXPECT_EQ(e.error().errnum(), EINVAL);
    EXPECT_EQ(e.error().context(), "--target: invalid address '" + c.text + "': " + c.why);
  }
  EXPECT_TRUE(parse_endpoint("unix:" + ("/" + longest.substr(1)), "--target").ok()) << "107 bytes fit";
}

// A brick that answers one HELLO with `reply`, on a unix socket in a
// directory of its own. With `answer_after`, it then answers every request
// with an empty reply of status 0, the first one that late.
class FakeBrick {
 public:
  // `answer_after`: every request after HELLO is answered, the first one
  // after that delay, with a header-only reply - or, for a MAP, with
  // `map_reply` when given.
  explicit FakeBrick(const proto::HelloReply& reply,
                     std::optional<std::chrono::milliseconds> answer_after = std::nullopt,
                     std::optional<proto::MapReply> map_reply = std::nullopt) {
    char tmpl[] = "/tmp/pbrick-fake-brick-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    path_ = dir_ + "/brick.sock";
    listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    EXPECT_EQ(::bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(listen_.get(), 1), 0);
    thread_ = std::thread([this, reply, answer_after, map_reply] {
      UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      auto read_exactly = [&](uint8_t* p, size_t len) {
        for (size_t got = 0; got < len;) {
          ssize_t n = ::read(c.get(), p + got, len - got);
          if (n <= 0) return false;
          got += static_cast<size_t>(n);
        }
        return true;
      };
      std::vector<uint8_t> hello(proto::kHeaderSize + proto::kHelloRequestSize);
      if (!read_exactly(hello.data(), hello.size())) return;
      auto h = proto::decode_header({hello.data(), proto::kHeaderSize}, /*expect_reply=*/false);
      if (!h) return;
      std::vector<uint8_t> out(proto::kHeaderSize + proto::hello_reply_size(reply));
      proto::FrameHeader rh;
      rh.opcode = proto::Opcode::kHello;
      rh.flags = proto::kFlagReply;
      rh.request_id = h->request_id;
      rh.payload_len = static_cast<uint32_t>(out.size() - proto::kHeaderSize);
      proto::encode_header(rh, out.data());
      proto::encode_hello_reply(reply, out.data() + proto::kHeaderSize);
      (void)!::write(c.get(), out.data(), out.size());
      for (bool first = true; answer_after; first = false) {
        uint8_t hdr[proto::kHeaderSize];
        if (!read_exactly(hdr, sizeof hdr)) return;
        auto req = proto::decode_header(hdr, /*expect_reply=*/false);
        if (!req) return;
        std::vector<uint8_t> payload(req->payload_len);
        if (!read_exactly(payload.data(), payload.size())) return;
        if (first) std::this_thread::sleep_for(*answer_after);
        proto::FrameHeader rep = *req;
        rep.flags = proto::kFlagReply;
        rep.payload_len = 0;
        std::vector<uint8_t> frame(proto::kHeaderSize);
        if (req->opcode == proto::Opcode::kMap && map_reply) {
          rep.payload_len = proto::kMapReplySize;
          frame.resize(proto::kHeaderSize + proto::kMapReplySize);
          proto::encode_map_reply(*map_reply, frame.data() + proto::kHeaderSize);
        }
        proto::encode_header(rep, frame.data());
        if (::write(c.get(), frame.data(), frame.size()) != static_cast<ssize_t>(frame.size())) return;
      }
      char byte;
      (void)!::read(c.get(), &byte, 1);  // until the client hangs up
    });
  }
  ~FakeBrick() {
    thread_.join();
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  ClientOptions options() const {
    ClientOptions o;
    o.endpoint.unix_path = path_;
    o.timeout_ms = 2000;
    return o;
  }

 private:
  std::string dir_, path_;
  UniqueFd listen_;
  std::thread thread_;
};

// docs/protocol.md §8.2 and §10: the client checks that the brick chose a
// version it offered and granted only features it offered.
TEST(BrickClientTest, AHelloReplyOutsideWhatWasOfferedIsRefused) {
  {
    proto::HelloReply r;
    r.version = 2;  // this client offers 1..1
    FakeBrick brick(r);
    auto c = BrickClient::Connect(brick.options());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.error().errnum(), EPROTONOSUPPORT) << c.error().message();
    EXPECT_NE(c.error().context().find("protocol version 2"), std::string::npos) << c.error().context();
  }
  {
    proto::HelloReply r;
    r.features = proto::kFeaturePersistRpc;  // this client offered no PERSIST
    FakeBrick brick(r);
    auto c = BrickClient::Connect(brick.options());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.error().errnum(), EPROTO) << c.error().message();
    EXPECT_NE(c.error().context().find("never offered"), std::string::npos) << c.error().context();
  }
  {
    proto::HelloReply r;  // version 1, nothing granted: a brick this client can use
    FakeBrick brick(r);
    auto c = BrickClient::Connect(brick.options());
    EXPECT_TRUE(c.ok()) << c.error().message();
  }
}

// A reply that comes after the client gave up waiting for it must not be
// taken for the reply to the next request on the connection: the client
// gives the connection up instead (ENOTCONN, which callers answer by
// connecting again), rather than fail every later request for a reply that
// does not match it.
TEST(BrickClientTest, ARequestThatTimedOutLeavesTheConnectionUnusable) {
  proto::HelloReply r;
  FakeBrick brick(r, std::chrono::milliseconds(600));
  ClientOptions o = brick.options();
  o.timeout_ms = 200;
  auto c = BrickClient::Connect(o);
  ASSERT_TRUE(c.ok()) << c.error().message();
  Status first = (*c)->unmap(0x200000);
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.error().errnum(), ETIMEDOUT) << first.error().message();
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // the late reply is in
  Status next = (*c)->unmap(0x400000);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.error().errnum(), ENOTCONN) << next.error().message();
  c->reset();
}

// A MAP reply that cannot be taken for what was asked - one that does not
// decode, or a mapping with other flags (read-only for a write, shared for
// an exclusive lock) - may still have mapped the block at the brick: the
// connection is given up (its mappings die with it) rather than used on.
TEST(BrickClientTest, AMapReplyThatIsNotWhatWasAskedLeavesTheConnectionUnusable) {
  proto::MapReply shared{7, proto::kMapWrite | proto::kMapShared, 0x10000, proto::kBlockSize};
  proto::MapReply zero_length{7, proto::kMapWrite, 0x10000, 0};
  for (const proto::MapReply& reply : {shared, zero_length}) {
    FakeBrick brick(proto::HelloReply{}, std::chrono::milliseconds(0), reply);
    auto c = BrickClient::Connect(brick.options());
    ASSERT_TRUE(c.ok()) << c.error().message();
    auto m = (*c)->map(0x200000, proto::kMapWrite);
    ASSERT_FALSE(m.ok());
    Status next = (*c)->unmap(0x200000);
    ASSERT_FALSE(next.ok());
    EXPECT_EQ(next.error().errnum(), ENOTCONN) << next.error().message();
    c->reset();
  }
}

}  // namespace
}  // namespace pbrick
